//! Core proxy behaviour (issue 2): real upstreams and a real veer over sockets.

mod support;

use support::*;

#[tokio::test]
async fn forwards_to_the_only_pool() {
    let blue = upstream("blue").await;
    let veer = start_veer(&format!(
        "[pools.blue]\nbackends = [\"{}\"]\n[[routes]]\nname = \"web\"\nsplit = {{ blue = 1 }}\n",
        blue.addr
    ))
    .await;
    let got = get(&veer.url("/hello")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "blue");
    veer.shutdown().await;
}
