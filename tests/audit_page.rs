//! The audit trail on the status page (issue 20 item 2), in a real headless Chromium: the
//! header line names the last change, and the changes list shows GET /api/changes, newest
//! first, following new changes. Needs Debian's `chromium` (see tests/browser).

mod browser;
mod support;

use browser::Browser;
use std::time::Duration;
use support::*;

#[tokio::test]
async fn the_page_shows_the_last_change_and_the_changes_list() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let veer = start_veer(&blue_green(
        blue.addr,
        green.addr,
        "{ blue = 90, green = 10 }",
        "",
    ))
    .await;
    let r = admin_call(
        veer.admin,
        "PUT",
        "/api/routes/web/split",
        r#"{"blue": 60, "green": 40}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut page = Browser::open(&veer.admin_url("/")).await;
    let rows = "[...document.querySelectorAll('#changes-table tbody tr')].map(r => r.innerText)";
    let (v, _) = page
        .wait_for("the changes list", Duration::from_secs(10), rows, |v| {
            v.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;
    let row = v[0].as_str().unwrap();
    assert!(
        row.contains("admin")
            && row.contains("api")
            && row.contains("blue=90 green=10 -> blue=60 green=40"),
        "{row}"
    );
    let header = page
        .eval("document.getElementById('config').innerText")
        .await;
    assert!(
        header.as_str().unwrap().contains(
            "last change: route \"web\" split blue=90 green=10 -> blue=60 green=40 (by admin, "
        ),
        "{header}"
    );
    // A new change shows up on top.
    let r = admin_call(veer.admin, "POST", "/api/routes/web/swap", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (v, _) = page
        .wait_for("the swap in the list", Duration::from_secs(10), rows, |v| {
            v.as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    assert!(
        v[0].as_str()
            .unwrap()
            .contains("blue=60 green=40 -> blue=40 green=60"),
        "{v}"
    );
    page.close().await;
    veer.shutdown().await;
}
