//! Fleet mode (SPEC §7) on a real 3-member etcd cluster and real veer processes: one config
//! document shared by every replica, API changes as compare-and-swap writes, fleet-wide
//! drains, one leader, and what a store outage does.

mod support;

use serde_json::Value;
use std::time::Duration;
use support::etcd::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_split_on_one_replica_is_served_by_all_within_a_second_and_keeps_comments() {
    let bed = Bed::new().await;
    let a = bed.replica("a", "3s", "").await;
    let b = bed.replica("b", "3s", "").await;
    let c = bed.replica("c", "3s", "").await;
    // A seeded the document from its file, comments and all.
    let doc = bed
        .etcd
        .get(&bed.doc_key())
        .expect("the document was seeded");
    assert!(doc.contains("# v1") && doc.contains("# the split"), "{doc}");
    assert!(
        !doc.contains("[cluster]") && !doc.contains("[server]"),
        "{doc}"
    );

    let r = put_split(a.admin, 10, 90).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let took = until(
        "B and C serve the split",
        Duration::from_secs(3),
        || async {
            green_of(&status(b.admin).await) == 90 && green_of(&status(c.admin).await) == 90
        },
    )
    .await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let doc = bed.etcd.get(&bed.doc_key()).unwrap();
    assert!(
        doc.contains("split = { blue = 10, green = 90 }  # the split, kept by API writes"),
        "{doc}"
    );
    assert!(doc.contains("# The fleet's pools"), "{doc}");
    // B's proxy sends traffic to green now.
    let counts = count_bodies(&format!("http://{}/", b.addr), 50, &[]).await;
    assert!(share(&counts, "green") > 0.7, "{counts:?}");
    // The status says who is who.
    let s = status(c.admin).await;
    assert_eq!(s["cluster"]["node"], "c");
    assert_eq!(s["cluster"]["store"], "up");
    assert_eq!(
        s["cluster"]["revision"].as_i64().unwrap(),
        bed.etcd.mod_revision(&bed.doc_key())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_splits_on_two_replicas_both_land_in_order() {
    let bed = Bed::new().await;
    let a = bed.replica("a", "3s", "").await;
    let b = bed.replica("b", "3s", "").await;
    let before = bed.etcd.mod_revision(&bed.doc_key());
    for round in 0..5u32 {
        let (ra, rb) = tokio::join!(
            put_split(a.admin, 30 + round, 70),
            put_split(b.admin, 60 + round, 40)
        );
        assert_eq!(ra.status, 200, "{}", ra.body);
        assert_eq!(rb.status, 200, "{}", rb.body);
    }
    // Every write is a revision of its own in the store's history: none overwrote another.
    let now = bed.etcd.mod_revision(&bed.doc_key());
    let mut seen = Vec::new();
    let mut rev = now;
    while rev > before {
        let (mr, text) = bed.etcd.get_at(&bed.doc_key(), rev).unwrap();
        if mr <= before {
            break;
        }
        seen.push(text);
        rev = mr - 1;
    }
    assert_eq!(seen.len(), 10, "ten writes, ten revisions");
    for round in 0..5u32 {
        for want in [
            format!("blue = {}, green = 70", 30 + round),
            format!("blue = {}, green = 40", 60 + round),
        ] {
            assert!(
                seen.iter().any(|t| t.contains(&want)),
                "{want} lost: {seen:?}"
            );
        }
    }
    // Both replicas end on the last revision.
    until(
        "both replicas on the last revision",
        Duration::from_secs(2),
        || async {
            status(a.admin).await["cluster"]["revision"] == now
                && status(b.admin).await["cluster"]["revision"] == now
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_through_one_replica_drains_the_backend_on_every_replica() {
    let bed = Bed::new().await;
    let a = bed.replica("a", "3s", "").await;
    let b = bed.replica("b", "3s", "").await;
    let c = bed.replica("c", "3s", "").await;
    let r = admin_call(
        b.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/drain", bed.blue.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let draining = |s: &Value| s["pools"]["blue"]["backends"][0]["draining"] == true;
    until(
        "every replica drains blue",
        Duration::from_secs(1),
        || async {
            draining(&status(a.admin).await)
                && draining(&status(b.admin).await)
                && draining(&status(c.admin).await)
        },
    )
    .await;
    // No replica sends it new requests (green, the fallback, takes them).
    let hits = bed.blue.hits();
    for v in [&a, &b, &c] {
        for _ in 0..10 {
            get(&format!("http://{}/", v.addr)).await;
        }
    }
    assert_eq!(bed.blue.hits(), hits, "a drained backend got requests");
    // Undrain through C: back everywhere.
    let r = admin_call(
        c.admin,
        "POST",
        &format!("/api/pools/blue/backends/{}/undrain", bed.blue.addr),
        "",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    until(
        "every replica restores blue",
        Duration::from_secs(1),
        || async { !draining(&status(a.admin).await) && !draining(&status(b.admin).await) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_revision_changes_nothing_on_any_replica_and_is_reported() {
    let bed = Bed::new().await;
    let a = bed.replica("a", "3s", "").await;
    let b = bed.replica("b", "3s", "").await;
    let good = bed.etcd.get(&bed.doc_key()).unwrap();
    let good_rev = bed.etcd.mod_revision(&bed.doc_key());
    // A route naming a pool that does not exist, written behind veer's back.
    let bad = good.replace(
        "split = { blue = 100, green = 0 }",
        "split = { blue = 50, red = 50 }",
    );
    bed.etcd
        .ctl_with_stdin(&["put", &bed.doc_key()], Some(&bad));
    for v in [&a, &b] {
        until(
            "the bad revision is reported",
            Duration::from_secs(2),
            || async { status(v.admin).await["cluster"]["document_error"].is_string() },
        )
        .await;
        let s = status(v.admin).await;
        assert_eq!(s["cluster"]["revision"], good_rev, "{s}");
        assert_eq!(green_of(&s), 0, "{s}");
        let err = s["cluster"]["document_error"].as_str().unwrap();
        assert!(err.contains(&format!("etcd:{}:", bed.doc_key())), "{err}");
        let m = get(&format!("http://{}/metrics", v.admin)).await.body;
        assert!(
            m.contains("veer_config_reloads_total{result=\"failure\"} 1"),
            "{m}"
        );
    }
    // Traffic is unchanged.
    let counts = count_bodies(&format!("http://{}/", a.addr), 20, &[]).await;
    assert_eq!(share(&counts, "blue"), 1.0, "{counts:?}");
    // A good revision after it is applied everywhere.
    bed.etcd.ctl_with_stdin(
        &["put", &bed.doc_key()],
        Some(&good.replace("blue = 100, green = 0", "blue = 0, green = 100")),
    );
    until(
        "a good revision is applied",
        Duration::from_secs(2),
        || async {
            green_of(&status(a.admin).await) == 100 && green_of(&status(b.admin).await) == 100
        },
    )
    .await;
    assert!(status(a.admin).await["cluster"]["document_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_leader_and_a_killed_leader_is_replaced_within_the_ttl() {
    let bed = Bed::new().await;
    let mut reps = vec![
        bed.replica("a", "2s", "").await,
        bed.replica("b", "2s", "").await,
        bed.replica("c", "2s", "").await,
    ];
    let leaders = |ss: &[Value]| {
        ss.iter()
            .filter(|s| s["cluster"]["is_leader"] == true)
            .map(|s| s["cluster"]["node"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    async fn all(reps: &[VeerProcess]) -> Vec<Value> {
        let mut out = Vec::new();
        for r in reps {
            out.push(status(r.admin).await);
        }
        out
    }
    until("one leader", Duration::from_secs(5), || async {
        leaders(&all(&reps).await).len() == 1
    })
    .await;
    // Sampled for a while: never two.
    for _ in 0..20 {
        let ss = all(&reps).await;
        assert!(leaders(&ss).len() <= 1, "{ss:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ss = all(&reps).await;
    let leader = leaders(&ss)[0].clone();
    assert!(
        ss.iter().all(|s| s["cluster"]["leader"] == leader.as_str()),
        "{ss:?}"
    );
    assert_eq!(
        ss[0]["cluster"]["nodes"].as_array().unwrap().len(),
        3,
        "{}",
        ss[0]
    );
    let m = get(&format!("http://{}/metrics", reps[0].admin)).await.body;
    assert!(m.contains("veer_cluster_store_up 1"), "{m}");
    assert!(m.contains("veer_cluster_leader "), "{m}");
    // kill -9 the leader: another one leads within lease_ttl + 2 s.
    let i = ["a", "b", "c"].iter().position(|n| *n == leader).unwrap();
    let dead = reps.remove(i);
    dead.signal("KILL");
    let took = until("a new leader", Duration::from_secs(6), || async {
        let ss = all(&reps).await;
        let l = leaders(&ss);
        l.len() == 1 && l[0] != leader
    })
    .await;
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_serves_the_last_config_refuses_changes_then_converges() {
    let mut bed = Bed::new().await;
    let a = bed.replica("a", "2s", "").await;
    let b = bed.replica("b", "2s", "").await;
    assert_eq!(put_split(a.admin, 50, 50).await.status, 200);
    until("b applied", Duration::from_secs(2), || async {
        green_of(&status(b.admin).await) == 50
    })
    .await;
    // One member down: nothing changes.
    bed.etcd.kill(0);
    assert_eq!(put_split(b.admin, 40, 60).await.status, 200);
    until("a applied", Duration::from_secs(3), || async {
        green_of(&status(a.admin).await) == 60
    })
    .await;
    // Quorum lost: requests keep flowing, readyz stays 200, API changes answer 503.
    bed.etcd.kill(1);
    until(
        "the replicas see the store down",
        Duration::from_secs(8),
        || async {
            status(a.admin).await["cluster"]["store"] == "down"
                && status(b.admin).await["cluster"]["store"] == "down"
        },
    )
    .await;
    let mut failed = 0;
    for v in [&a, &b] {
        for _ in 0..20 {
            if get(&format!("http://{}/", v.addr)).await.status != 200 {
                failed += 1;
            }
        }
        assert_eq!(get(&format!("http://{}/readyz", v.admin)).await.status, 200);
    }
    assert_eq!(failed, 0);
    let r = put_split(a.admin, 0, 100).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(json_of(&r)["error"], "cluster store unreachable");
    assert_eq!(green_of(&status(a.admin).await), 60, "nothing changed");
    until(
        "veer_cluster_store_up 0",
        Duration::from_secs(1),
        || async {
            get(&format!("http://{}/metrics", a.admin))
                .await
                .body
                .contains("veer_cluster_store_up 0")
        },
    )
    .await;
    // A replica restarted during the outage serves the fleet's config from its cache.
    let b_path = bed.path("b");
    b.signal("KILL");
    drop(b);
    let cache = std::fs::read_to_string(format!("{}.fleet-cache", b_path.display())).unwrap();
    assert!(cache.contains("green = 60"), "{cache}");
    let b = spawn_veer(&b_path).await;
    let s = status(b.admin).await;
    assert_eq!(green_of(&s), 60, "{s}");
    let counts = count_bodies(&format!("http://{}/", b.addr), 40, &[]).await;
    assert!(share(&counts, "green") > 0.3, "{counts:?}");
    // Quorum back: a change written meanwhile is served by everyone.
    bed.etcd.restart(0);
    bed.etcd.restart(1);
    bed.etcd.wait_healthy(Duration::from_secs(20)).await;
    until(
        "the replicas see the store up",
        Duration::from_secs(8),
        || async {
            status(a.admin).await["cluster"]["store"] == "up"
                && status(b.admin).await["cluster"]["store"] == "up"
        },
    )
    .await;
    assert_eq!(put_split(b.admin, 20, 80).await.status, 200);
    until("converged", Duration::from_secs(3), || async {
        green_of(&status(a.admin).await) == 80 && green_of(&status(b.admin).await) == 80
    })
    .await;
}

fn veer_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(veer_bin())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_push_refuses_a_bad_file_with_its_errors_and_applies_a_good_one_everywhere() {
    let bed = Bed::new().await;
    let a = bed.replica("a", "3s", "").await;
    let b = bed.replica("b", "3s", "").await;
    let local = bed.path("a");
    let local_s = local.to_str().unwrap();
    let rev = bed.etcd.mod_revision(&bed.doc_key());
    // A file with two errors: both printed as FILE:LINE:COL, nothing written.
    let bad = bed.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[pools.blue]\nbackends = [\"{}\"]\nlb = \"random\"\n\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 1, red = 1 }}\n",
            bed.blue.addr
        ),
    )
    .unwrap();
    let out = veer_cli(&[
        "cluster",
        "push",
        "--config",
        local_s,
        bad.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let bad_s = bad.display().to_string();
    assert!(stdout.contains(&format!("{bad_s}:3:")), "{stdout}");
    assert!(stdout.contains(&format!("{bad_s}:7:")), "{stdout}");
    assert_eq!(
        bed.etcd.mod_revision(&bed.doc_key()),
        rev,
        "nothing written"
    );
    // A good file: every replica applies it.
    let good = bed.dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "# pushed by hand\n[pools.blue]\nbackends = [\"{}\"]\n[pools.green]\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 25, green = 75 }}\n",
            bed.blue.addr, bed.green.addr
        ),
    )
    .unwrap();
    let out = veer_cli(&[
        "cluster",
        "push",
        "--config",
        local_s,
        good.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(
        "both replicas apply the push",
        Duration::from_secs(2),
        || async {
            green_of(&status(a.admin).await) == 75 && green_of(&status(b.admin).await) == 75
        },
    )
    .await;
    let out = veer_cli(&["cluster", "pull", "--config", local_s]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("# pushed by hand\n"));
    until("both replicas listed", Duration::from_secs(3), || async {
        let out = veer_cli(&["cluster", "status", "--config", local_s, "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["nodes"].as_array().is_some_and(|n| n.len() == 2) && v["leader"].is_string()
    })
    .await;
    let out = veer_cli(&["status", "--admin", &format!("http://{}", a.admin)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fleet: this replica is a"), "{text}");
}
