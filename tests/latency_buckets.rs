//! `veer_request_duration_seconds` resolves a proxy's latencies (issue 20 item 6): buckets
//! from 100 µs up, the metric's name and labels unchanged.

mod support;

use support::*;

#[tokio::test]
async fn duration_buckets_start_at_100_microseconds() {
    // An upstream that answers after 2 ms: its requests land between the 1 ms and 2.5 ms
    // bounds, so the sub-millisecond buckets are counted apart from them.
    let slow = upstream_with(|_req| async {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        respond(200, "ok")
    })
    .await;
    let veer = start_veer(&format!(
        "[pools.app]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ app = 1 }}\n",
        slow.addr
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(&veer.url("/")).await.status, 200);
    }
    let text = get(&veer.admin_url("/metrics")).await.body;
    let bucket = |le: &str| {
        metric_sample(
            &text,
            "veer_request_duration_seconds_bucket",
            &["route=\"web\"", "pool=\"app\"", &format!("le=\"{le}\"")],
        )
        .unwrap_or_else(|| panic!("no bucket le={le}:\n{text}"))
    };
    let bounds = [
        "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
        "0.25", "0.5", "1", "2.5", "5", "10", "30", "+Inf",
    ];
    let counts: Vec<f64> = bounds.iter().map(|b| bucket(b)).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    // Nothing answers a proxied request in under 2 ms here.
    assert_eq!(counts[..4], [0.0; 4], "{counts:?}");
    assert_eq!(counts[bounds.len() - 1], 10.0);
    veer.shutdown().await;
}
