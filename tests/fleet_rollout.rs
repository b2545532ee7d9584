//! Fleet mode rollouts (SPEC §7) on a real 3-member etcd and real veer processes: one leader
//! walks the rollout, writes each step with its start time into the document before it takes
//! effect, a new leader resumes the same step with the same clock, and a deposed leader
//! writes nothing.

mod support;

use std::time::Duration;
use support::etcd::*;
use support::*;

/// `key = N` of the `[routes.rollout]` in the document (`None`: absent).
fn doc_int(doc: &str, key: &str) -> Option<i64> {
    let v: toml::Value = toml::from_str(doc).ok()?;
    v["routes"][0]["rollout"].get(key)?.as_integer()
}

fn doc_state(doc: &str) -> Option<String> {
    let v: toml::Value = toml::from_str(doc).ok()?;
    Some(
        v["routes"][0]["rollout"]
            .get("state")?
            .as_str()?
            .to_string(),
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn leaders(reps: &[&VeerProcess]) -> Vec<String> {
    let mut out = Vec::new();
    for r in reps {
        let s = status(r.admin).await;
        if s["cluster"]["is_leader"] == true {
            out.push(s["cluster"]["node"].as_str().unwrap().to_string());
        }
    }
    out
}

const ROLLOUT: &str = "[routes.rollout]  # walked by the fleet's leader\nto = \"green\"\nsteps = [10, 50, 100]\nstep_interval = \"6s\"\nmin_requests = 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_the_new_one_resumes_the_same_step_with_the_same_clock() {
    let bed = Bed::new().await;
    let mut reps = vec![
        bed.replica("a", "2s", ROLLOUT).await,
        bed.replica("b", "2s", ROLLOUT).await,
        bed.replica("c", "2s", ROLLOUT).await,
    ];
    let key = bed.doc_key();
    // Step 1 written by the leader, with its start time, before it takes effect.
    until("step 1 written", Duration::from_secs(10), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_int(&d, "step") == Some(1))
    })
    .await;
    let doc = bed.etcd.get(&key).unwrap();
    assert_eq!(doc_state(&doc).as_deref(), Some("progressing"), "{doc}");
    assert!(doc.contains("# walked by the fleet's leader"), "{doc}");
    let started = doc_int(&doc, "step_started_ms").expect("the step's start time is written");
    // Every replica serves the step; exactly one leads, at every sample.
    for r in &reps {
        until("the step is served", Duration::from_secs(1), || async {
            green_of(&status(r.admin).await) == 50
        })
        .await;
    }
    let all: Vec<&VeerProcess> = reps.iter().collect();
    for _ in 0..10 {
        assert_eq!(leaders(&all).await.len(), 1);
    }
    let leader = leaders(&all).await.remove(0);
    // kill -9 the leader mid-step.
    let i = ["a", "b", "c"].iter().position(|n| *n == leader).unwrap();
    let dead = reps.remove(i);
    dead.signal("KILL");
    let rest: Vec<&VeerProcess> = reps.iter().collect();
    let took = until("a new leader", Duration::from_secs(6), || async {
        let l = leaders(&rest).await;
        l.len() == 1 && l[0] != leader
    })
    .await;
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} (lease_ttl 2s + 2s)"
    );
    let new_leader = leaders(&rest).await.remove(0);
    let mut nl = rest[0];
    for r in &rest {
        if status(r.admin).await["cluster"]["node"] == new_leader.as_str() {
            nl = r;
        }
    }
    // Same step, same clock: its elapsed time counts from the step's written start (the
    // step lasts 6 s; the failover took less).
    let s = status(nl.admin).await;
    let ro = &s["routes"][0]["rollout"];
    assert_eq!(ro["state"], "progressing", "{ro}");
    assert_eq!(ro["step"], 1, "{ro}");
    let elapsed = ro["step_elapsed_ms"].as_f64().unwrap() as i64;
    let expect = now_ms() - started;
    assert!(
        (elapsed - expect).abs() < 500,
        "elapsed {elapsed} ms, but the step started {expect} ms ago: {ro}"
    );
    let doc = bed.etcd.get(&key).unwrap();
    assert_eq!(doc_int(&doc, "step"), Some(1), "{doc}");
    assert_eq!(
        doc_int(&doc, "step_started_ms"),
        Some(started),
        "the step's clock is kept"
    );
    // The rollout goes on as it would have: the next step starts one interval after step 1.
    until("step 2 written", Duration::from_secs(10), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_int(&d, "step") == Some(2))
    })
    .await;
    let doc = bed.etcd.get(&key).unwrap();
    let started2 = doc_int(&doc, "step_started_ms").unwrap();
    assert!(
        (6000..7000).contains(&(started2 - started)),
        "step 2 began {} ms after step 1",
        started2 - started
    );
    // A rollback on the new leader moves every replica back within 1 s.
    let r = admin_call(nl.admin, "POST", "/api/routes/web/rollout/abort", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    for r in &rest {
        let r = *r;
        until("rolled back everywhere", Duration::from_secs(1), || async {
            green_of(&status(r.admin).await) == 0
        })
        .await;
    }
    assert_eq!(
        doc_state(&bed.etcd.get(&key).unwrap()).as_deref(),
        Some("rolled_back")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_that_wakes_up_late_writes_nothing() {
    let bed = Bed::new().await;
    let fast = "[routes.rollout]\nto = \"green\"\nsteps = [10, 20, 30, 40, 50, 60, 100]\nstep_interval = \"1s\"\nmin_requests = 0\n";
    let reps = [
        bed.replica("a", "2s", fast).await,
        bed.replica("b", "2s", fast).await,
        bed.replica("c", "2s", fast).await,
    ];
    let key = bed.doc_key();
    until("the rollout runs", Duration::from_secs(10), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_int(&d, "step") == Some(1))
    })
    .await;
    let all: Vec<&VeerProcess> = reps.iter().collect();
    let leader = leaders(&all).await.remove(0);
    let i = ["a", "b", "c"].iter().position(|n| *n == leader).unwrap();
    let old = &reps[i];
    let others: Vec<&VeerProcess> = reps
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, r)| r)
        .collect();
    old.signal("STOP");
    until("another leader", Duration::from_secs(6), || async {
        let l = leaders(&others).await;
        l.len() == 1 && l[0] != leader
    })
    .await;
    let rev_before = bed.etcd.mod_revision(&key);
    // Past the TTL and a step of the new leader's, wake the old one.
    until(
        "the new leader takes a step",
        Duration::from_secs(4),
        || async { bed.etcd.mod_revision(&key) > rev_before },
    )
    .await;
    let log_at = old.stderr.lock().unwrap().len();
    let from_rev = bed.etcd.mod_revision(&key);
    old.signal("CONT");
    until("the rollout succeeds", Duration::from_secs(15), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_state(&d).as_deref() == Some("succeeded"))
    })
    .await;
    let s = status(old.admin).await;
    assert_eq!(s["cluster"]["is_leader"], false, "{s}");
    assert_eq!(green_of(&s), 100, "the old leader follows the fleet: {s}");
    let log = old.stderr.lock().unwrap()[log_at..].to_string();
    assert!(
        !log.contains("changed in the fleet document"),
        "the deposed leader wrote:\n{log}"
    );
    // The steps in the store's history never went back.
    let mut rev = bed.etcd.mod_revision(&key);
    let mut steps = Vec::new();
    while rev >= from_rev {
        let Some((mr, text)) = bed.etcd.get_at(&key, rev) else {
            break;
        };
        steps.push(doc_int(&text, "step").unwrap_or(0));
        rev = mr - 1;
    }
    steps.reverse();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_sums_the_fleet_so_a_rollout_no_single_replica_could_pass_succeeds() {
    let bed = Bed::new().await;
    // min_requests 35 per step; each replica gets ~40 requests a step, ~20 to green at 50%.
    let rollout = "[routes.rollout]\nto = \"green\"\nsteps = [50, 100]\nstep_interval = \"4s\"\nmin_requests = 35\n";
    let reps = [
        bed.replica("a", "3s", rollout).await,
        bed.replica("b", "3s", rollout).await,
        bed.replica("c", "3s", rollout).await,
    ];
    let key = bed.doc_key();
    until("step 0 written", Duration::from_secs(10), || async {
        bed.etcd.get(&key).is_some_and(|d| {
            doc_int(&d, "step") == Some(0) && doc_int(&d, "step_started_ms").is_some()
        })
    })
    .await;
    let all: Vec<&VeerProcess> = reps.iter().collect();
    let mut green_in_step0 = [0usize; 3];
    let mut step = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut samples = 0;
    while std::time::Instant::now() < deadline {
        for (i, r) in reps.iter().enumerate() {
            let g = get(&format!("http://{}/", r.addr)).await;
            assert_eq!(g.status, 200);
            if step == 0 && g.body == "green" {
                green_in_step0[i] += 1;
            }
        }
        samples += 1;
        if samples % 10 == 0 {
            assert_eq!(
                leaders(&all).await.len(),
                1,
                "exactly one leader at every sample"
            );
            let doc = bed.etcd.get(&key).unwrap();
            step = doc_int(&doc, "step").unwrap_or(0);
            if doc_state(&doc).as_deref() == Some("succeeded") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let doc = bed.etcd.get(&key).unwrap();
    assert_eq!(doc_state(&doc).as_deref(), Some("succeeded"), "{doc}");
    // No replica alone saw min_requests of green in step 0; the fleet did.
    assert!(green_in_step0.iter().all(|&n| n < 35), "{green_in_step0:?}");
    assert!(
        green_in_step0.iter().sum::<usize>() >= 35,
        "{green_in_step0:?}"
    );
    for r in &reps {
        until("green everywhere", Duration::from_secs(1), || async {
            green_of(&status(r.admin).await) == 100
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_lost_mid_rollout_takes_no_step_and_the_rollout_goes_on_when_it_is_back() {
    let mut bed = Bed::new().await;
    let rollout = "[routes.rollout]\nto = \"green\"\nsteps = [10, 50, 100]\nstep_interval = \"2s\"\nmin_requests = 0\n";
    let reps = [
        bed.replica("a", "2s", rollout).await,
        bed.replica("b", "2s", rollout).await,
    ];
    let key = bed.doc_key();
    until("step 1 written", Duration::from_secs(10), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_int(&d, "step") == Some(1))
    })
    .await;
    for r in &reps {
        until("step 1 served", Duration::from_secs(1), || async {
            green_of(&status(r.admin).await) == 50
        })
        .await;
    }
    bed.etcd.kill(1);
    bed.etcd.kill(2);
    // Twice the step interval without a quorum: every replica stays at step 1 and serves.
    let end = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < end {
        for r in &reps {
            assert_eq!(
                green_of(&status(r.admin).await),
                50,
                "a step was taken without the store"
            );
            assert_eq!(get(&format!("http://{}/", r.addr)).await.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bed.etcd.restart(1);
    bed.etcd.restart(2);
    bed.etcd.wait_healthy(Duration::from_secs(20)).await;
    until("the rollout succeeds", Duration::from_secs(15), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_state(&d).as_deref() == Some("succeeded"))
    })
    .await;
    for r in &reps {
        until("converged", Duration::from_secs(2), || async {
            green_of(&status(r.admin).await) == 100
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_takes_its_counts_away_and_the_leader_says_so() {
    let bed = Bed::new().await;
    // A gate that waits forever (min_requests out of reach), so the reason is visible.
    let rollout = "[routes.rollout]\nto = \"green\"\nsteps = [50, 100]\nstep_interval = \"1s\"\nmin_requests = 1000000\n";
    let mut reps = three_replicas(&bed, rollout).await;
    let key = step_0_written(&bed).await;
    let leader = {
        let all: Vec<&VeerProcess> = reps.iter().collect();
        leaders(&all).await.remove(0)
    };
    let li = ["a", "b", "c"].iter().position(|n| *n == leader).unwrap();
    let fi = (li + 1) % 3;
    let follower = ["a", "b", "c"][fi];
    // Traffic through the follower, counted by it and summed by the leader.
    let started = doc_int(&bed.etcd.get(&key).unwrap(), "step_started_ms").unwrap();
    let ckey = format!("{}/counters/{follower}", bed.prefix);
    until(
        "the follower counts the step",
        Duration::from_secs(3),
        || async {
            bed.etcd
                .get(&ckey)
                .is_some_and(|v| v.contains(&format!("\"started_ms\":{started}")))
        },
    )
    .await;
    for _ in 0..20 {
        get(&format!("http://{}/", reps[fi].addr)).await;
    }
    let leader_admin = reps[li].admin;
    until(
        "the leader sums the follower's counts",
        Duration::from_secs(5),
        || async {
            let g = &status(leader_admin).await["routes"][0]["rollout"]["gate"];
            g["requests"].as_u64().unwrap_or(0) + g["baseline"]["requests"].as_u64().unwrap_or(0)
                >= 20
        },
    )
    .await;
    reps.remove(fi).signal("KILL");
    let want = format!("replica {follower} left the fleet");
    until(
        "the gate's reason names the dead replica",
        Duration::from_secs(6),
        || async {
            status(leader_admin).await["routes"][0]["rollout"]["gate"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains(&want))
        },
    )
    .await;
}

/// The one leader among `reps`, once there is exactly one (a sample taken while a lease
/// changes hands may see none).
async fn the_leader(reps: &[&VeerProcess]) -> String {
    until("exactly one leader", Duration::from_secs(5), || async {
        leaders(reps).await.len() == 1
    })
    .await;
    leaders(reps).await.remove(0)
}

/// The replica that leads among `reps`, and one that does not.
async fn leader_and_follower(reps: &[VeerProcess]) -> (&VeerProcess, &VeerProcess) {
    let all: Vec<&VeerProcess> = reps.iter().collect();
    let leader = the_leader(&all).await;
    let mut l = None;
    let mut f = None;
    for r in reps {
        if status(r.admin).await["cluster"]["node"] == leader.as_str() {
            l = Some(r);
        } else {
            f.get_or_insert(r);
        }
    }
    (l.unwrap(), f.unwrap())
}

async fn rollout_of(r: &VeerProcess) -> serde_json::Value {
    status(r.admin).await["routes"][0]["rollout"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_actions_through_a_follower_are_written_to_the_document_and_the_leader_follows() {
    let bed = Bed::new().await;
    let rollout = "[routes.rollout]\nto = \"green\"\nsteps = [10, 50, 100]\nstep_interval = \"1s\"\nmin_requests = 0\napproval = true\napproval_timeout = \"60s\"\n";
    let reps = [
        bed.replica("a", "2s", rollout).await,
        bed.replica("b", "2s", rollout).await,
        bed.replica("c", "2s", rollout).await,
    ];
    let key = bed.doc_key();
    let doc_at = |state: &'static str, step: i64| {
        let (bed, key) = (&bed, key.clone());
        move || {
            let key = key.clone();
            async move {
                bed.etcd.get(&key).is_some_and(|d| {
                    doc_state(&d).as_deref() == Some(state) && doc_int(&d, "step") == Some(step)
                })
            }
        }
    };
    until(
        "step 0 awaits approval",
        Duration::from_secs(10),
        doc_at("awaiting_approval", 0),
    )
    .await;
    let (leader, follower) = leader_and_follower(&reps).await;
    let act = |what: &'static str| async move {
        admin_call(
            follower.admin,
            "POST",
            &format!("/api/routes/web/rollout/{what}"),
            "",
        )
        .await
    };

    // A manual split through the follower would fight the leader's rollout: 409, as on the
    // leader (SPEC §10), and nothing is written.
    let rev = bed.etcd.mod_revision(&key);
    let r = put_split(follower.admin, 50, 50).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("force=true"), "{}", r.body);
    assert_eq!(bed.etcd.mod_revision(&key), rev);

    // Pause through the follower: in the document when the answer comes, and the leader's
    // controller holds the rollout there.
    let r = act("pause").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["rollout"]["state"], "paused", "{}", r.body);
    assert_eq!(
        doc_state(&bed.etcd.get(&key).unwrap()).as_deref(),
        Some("paused")
    );
    until(
        "the leader holds the pause",
        Duration::from_secs(1),
        || async { rollout_of(leader).await["state"] == "paused" },
    )
    .await;
    let rev = bed.etcd.mod_revision(&key);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        bed.etcd.mod_revision(&key),
        rev,
        "a paused rollout took a step"
    );
    assert_eq!(rollout_of(leader).await["state"], "paused");
    // An action that does not fit the state: 409, nothing written.
    let r = act("approve").await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("paused"), "{}", r.body);
    assert_eq!(bed.etcd.mod_revision(&key), rev);

    // Resume, then approve through the follower once the step passed again.
    let r = act("resume").await;
    assert_eq!(r.status, 200, "{}", r.body);
    until(
        "step 0 awaits approval again",
        Duration::from_secs(5),
        doc_at("awaiting_approval", 0),
    )
    .await;
    let r = act("approve").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["rollout"]["step"], 1, "{}", r.body);
    let doc = bed.etcd.get(&key).unwrap();
    assert_eq!(doc_int(&doc, "step"), Some(1), "{doc}");
    assert!(
        doc.contains("# walked") || doc.contains("# the split"),
        "{doc}"
    );
    let started = doc_int(&doc, "step_started_ms").expect("the approved step's start is written");
    for r in &reps {
        until(
            "step 1 served everywhere",
            Duration::from_secs(1),
            || async { green_of(&status(r.admin).await) == 50 },
        )
        .await;
    }
    // The leader's controller walks step 1 on the clock the follower wrote.
    until("the leader runs step 1", Duration::from_secs(1), || async {
        let ro = rollout_of(leader).await;
        ro["state"] == "progressing" && ro["step"] == 1
    })
    .await;
    let ro = rollout_of(leader).await;
    let elapsed = ro["step_elapsed_ms"].as_f64().unwrap_or(-1e9) as i64;
    assert!(
        (elapsed - (now_ms() - started)).abs() < 500,
        "elapsed {elapsed} ms, but step 1 started {} ms ago: {ro}",
        now_ms() - started
    );

    // Abort through the follower: every replica back on blue within 1 s, and the leader
    // does not write over it.
    until(
        "step 1 awaits approval",
        Duration::from_secs(5),
        doc_at("awaiting_approval", 1),
    )
    .await;
    let r = act("abort").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["rollout"]["state"], "rolled_back", "{}", r.body);
    for r in &reps {
        until("rolled back everywhere", Duration::from_secs(1), || async {
            green_of(&status(r.admin).await) == 0
        })
        .await;
    }
    until(
        "the leader's controller ended",
        Duration::from_secs(1),
        || async { rollout_of(leader).await["state"] == "rolled_back" },
    )
    .await;
    // The leader reports it as the rollback it is: its reason, and its metric.
    let ro = rollout_of(leader).await;
    assert_eq!(
        ro["gate"]["reason"], "rolled back through another replica",
        "{ro}"
    );
    let m = admin_call(leader.admin, "GET", "/metrics", "").await.body;
    assert!(
        m.contains("veer_rollouts_total{result=\"rolled_back\",route=\"web\"} 1"),
        "{}",
        m.lines()
            .filter(|l| l.contains("veer_rollouts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let doc = bed.etcd.get(&key).unwrap();
    assert_eq!(doc_state(&doc).as_deref(), Some("rolled_back"), "{doc}");
    for r in &reps {
        assert_eq!(green_of(&status(r.admin).await), 0);
    }

    // Start it again through the follower: written as waiting, and the leader starts the
    // run from there (as it starts any), step 0 served everywhere.
    let r = act("start").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["rollout"]["state"], "waiting", "{}", r.body);
    until(
        "the leader started it",
        Duration::from_secs(2),
        doc_at("progressing", 0),
    )
    .await;
    for r in &reps {
        until(
            "step 0 served everywhere",
            Duration::from_secs(1),
            || async { green_of(&status(r.admin).await) == 10 },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_counts_its_own_share_of_the_step_from_the_start_and_the_others() {
    let bed = Bed::new().await;
    // A gate that waits (min_requests out of reach) on a long step, so the counts stay.
    let rollout = "[routes.rollout]\nto = \"green\"\nsteps = [50, 100]\nstep_interval = \"60s\"\nmin_requests = 1000000\n";
    let mut reps = three_replicas(&bed, rollout).await;
    let key = step_0_written(&bed).await;
    let started = doc_int(&bed.etcd.get(&key).unwrap(), "step_started_ms").unwrap();
    let all: Vec<&VeerProcess> = reps.iter().collect();
    let leader = the_leader(&all).await;
    let li = ["a", "b", "c"].iter().position(|n| *n == leader).unwrap();
    // 20 requests through each follower in the step, published by each.
    for (i, r) in reps.iter().enumerate() {
        if i == li {
            continue;
        }
        let node = ["a", "b", "c"][i];
        let ckey = format!("{}/counters/{node}", bed.prefix);
        until(
            "the follower counts the step",
            Duration::from_secs(3),
            || async {
                bed.etcd
                    .get(&ckey)
                    .is_some_and(|v| v.contains(&format!("\"started_ms\":{started}")))
            },
        )
        .await;
        for _ in 0..20 {
            assert_eq!(get(&format!("http://{}/", r.addr)).await.status, 200);
        }
        until(
            "the follower published 20",
            Duration::from_secs(3),
            || async {
                let v: serde_json::Value =
                    serde_json::from_str(&bed.etcd.get(&ckey).unwrap_or_default())
                        .unwrap_or_default();
                v["web"]["to"]["requests"].as_u64().unwrap_or(0)
                    + v["web"]["baseline"]["requests"].as_u64().unwrap_or(0)
                    >= 20
            },
        )
        .await;
    }
    reps.remove(li).signal("KILL");
    let rest: Vec<&VeerProcess> = reps.iter().collect();
    until("a new leader", Duration::from_secs(6), || async {
        let l = leaders(&rest).await;
        l.len() == 1 && l[0] != leader
    })
    .await;
    let new_leader = leaders(&rest).await.remove(0);
    let mut nl = rest[0];
    for r in &rest {
        if status(r.admin).await["cluster"]["node"] == new_leader.as_str() {
            nl = r;
        }
    }
    // The step it resumes is the same one, judged on its own 20 (counted while it followed)
    // plus the other replica's 20.
    let total = |g: &serde_json::Value| {
        g["requests"].as_u64().unwrap_or(0) + g["baseline"]["requests"].as_u64().unwrap_or(0)
    };
    until(
        "the new leader sums both shares of the step",
        Duration::from_secs(3),
        || async { total(&rollout_of(nl).await["gate"]) >= 40 },
    )
    .await;
    let ro = rollout_of(nl).await;
    assert_eq!(ro["step"], 0, "{ro}");
    assert!(total(&ro["gate"]) < 60, "counted more than was sent: {ro}");
    // Its own share goes on counting.
    for _ in 0..10 {
        get(&format!("http://{}/", nl.addr)).await;
    }
    until("its own requests count", Duration::from_secs(2), || async {
        total(&rollout_of(nl).await["gate"]) >= 50
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_during_a_store_outage_is_applied_on_the_leader_at_once_and_written_when_the_store_is_back(
) {
    // Green answers slowly: a latency breach fails the step fast without failing a request.
    let green = upstream_with(|req| async move {
        if req.uri().path() == "/" {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        respond(200, "green")
    })
    .await;
    let mut bed = Bed::with_green(green).await;
    let rollout = "[routes.rollout]\nto = \"green\"\nsteps = [50, 100]\nstep_interval = \"30s\"\nmin_requests = 10\nmax_p99 = \"50ms\"\n";
    let reps = [
        bed.replica("a", "6s", rollout).await,
        bed.replica("b", "6s", rollout).await,
        bed.replica("c", "6s", rollout).await,
    ];
    let key = bed.doc_key();
    until("step 0 written", Duration::from_secs(10), || async {
        bed.etcd.get(&key).is_some_and(|d| {
            doc_int(&d, "step") == Some(0) && doc_state(&d).as_deref() == Some("progressing")
        })
    })
    .await;
    for r in &reps {
        until("step 0 served", Duration::from_secs(1), || async {
            green_of(&status(r.admin).await) == 50
        })
        .await;
    }
    let (leader, follower) = leader_and_follower(&reps).await;
    // Quorum lost, then the step fails on the leader's traffic.
    bed.etcd.kill(1);
    bed.etcd.kill(2);
    let url = format!("http://{}/", leader.addr);
    let answers = futures_util::future::join_all((0..40).map(|_| get(&url))).await;
    assert!(answers.iter().all(|g| g.status == 200), "a request failed");
    let t0 = std::time::Instant::now();
    while green_of(&status(leader.admin).await) != 0 {
        if t0.elapsed() > Duration::from_secs(4) {
            panic!(
                "the leader did not roll back on its own: {}\n{}",
                rollout_of(leader).await,
                leader.stderr.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    assert_eq!(rollout_of(leader).await["state"], "rolled_back");
    // Its traffic left the canary at once; the others cannot know yet and keep serving.
    for _ in 0..10 {
        let g = get(&url).await;
        assert_eq!((g.status, g.body.as_str()), (200, "blue"), "after {took:?}");
    }
    assert_eq!(green_of(&status(follower.admin).await), 50);
    for r in &reps {
        assert_eq!(get(&format!("http://{}/", r.addr)).await.status, 200);
    }
    assert_eq!(
        doc_state(&bed.etcd.get_serializable(&key).unwrap_or_default()).as_deref(),
        Some("progressing"),
        "nothing could be written without a quorum"
    );
    // The store is back: the rollback is written and every replica converges.
    bed.etcd.restart(1);
    bed.etcd.restart(2);
    bed.etcd.wait_healthy(Duration::from_secs(20)).await;
    until(
        "the rollback is written",
        Duration::from_secs(10),
        || async {
            bed.etcd
                .get(&key)
                .is_some_and(|d| doc_state(&d).as_deref() == Some("rolled_back"))
        },
    )
    .await;
    for r in &reps {
        until("converged", Duration::from_secs(2), || async {
            green_of(&status(r.admin).await) == 0
        })
        .await;
        assert_eq!(get(&format!("http://{}/", r.addr)).await.status, 200);
    }
}

/// Replicas a, b and c (lease 2 s) with `rollout` in their seed config.
async fn three_replicas(bed: &Bed, rollout: &str) -> Vec<VeerProcess> {
    vec![
        bed.replica("a", "2s", rollout).await,
        bed.replica("b", "2s", rollout).await,
        bed.replica("c", "2s", rollout).await,
    ]
}

/// Wait until the leader has written step 0's start into the document; its key.
async fn step_0_written(bed: &Bed) -> String {
    let key = bed.doc_key();
    until("step 0 written", Duration::from_secs(10), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_int(&d, "step_started_ms").is_some())
    })
    .await;
    key
}

/// A "mirror" step (SPEC §11) is judged on the whole fleet's compared copies (SPEC §7), as
/// any other step on its requests: every copy here goes through a follower, so the leader
/// alone would wait for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_step_is_judged_on_the_copies_the_whole_fleet_compared() {
    let bed = Bed::new().await;
    // Blue and green answer differently: every copy differs, which max_diff_rate = 1 allows.
    let rollout = "[routes.mirror]\nto = \"green\"\ncompare = true\n\
        [routes.rollout]\nto = \"green\"\nsteps = [\"mirror\", 100]\nstep_interval = \"1s\"\n\
        min_requests = 30\nmax_diff_rate = 1.0\n";
    let reps = three_replicas(&bed, rollout).await;
    let key = step_0_written(&bed).await;
    let (leader, follower) = leader_and_follower(&reps).await;
    // Once the follower has applied the step (and so counts it).
    until(
        "the follower at the mirror step",
        Duration::from_secs(10),
        || async {
            let r = rollout_of(follower).await;
            r["state"] == "progressing" && r["step"] == 0 && r["step_started_ms"].is_u64()
        },
    )
    .await;
    // A follower shows the steps as the leader does.
    let r = rollout_of(follower).await;
    assert_eq!(
        (&r["steps"], &r["mirror_step"]),
        (
            &serde_json::json!(["mirror", 100]),
            &serde_json::json!(true)
        ),
        "{r}"
    );
    for _ in 0..40 {
        let g = get(&format!("http://{}/", follower.addr)).await;
        assert_eq!(
            (g.status, g.body.as_str()),
            (200, "blue"),
            "the mirror step moves nobody"
        );
    }
    until(
        "the mirror step passed",
        Duration::from_secs(20),
        || async {
            bed.etcd
                .get(&key)
                .is_some_and(|d| doc_int(&d, "step") == Some(1))
        },
    )
    .await;
    // The last step (100%) is judged on requests, the fleet's too: once the follower counts
    // that step.
    until("the follower at step 1", Duration::from_secs(5), || async {
        let r = rollout_of(follower).await;
        r["step"] == 1 && r["weight"] == 100
    })
    .await;
    for _ in 0..40 {
        assert_eq!(
            get(&format!("http://{}/", follower.addr)).await.body,
            "green"
        );
    }
    until("the rollout succeeded", Duration::from_secs(20), || async {
        bed.etcd
            .get(&key)
            .is_some_and(|d| doc_state(&d).as_deref() == Some("succeeded"))
    })
    .await;
    // The leader served none of those requests.
    let m = get(&format!("http://{}/metrics", leader.admin)).await.body;
    assert_eq!(
        metric_sample(
            &m,
            "veer_mirror_requests_total",
            &["route=\"web\"", "result=\"differ\""]
        )
        .unwrap_or(0.0),
        0.0,
        "{m}"
    );
    for r in &reps {
        until("green everywhere", Duration::from_secs(2), || async {
            green_of(&status(r.admin).await) == 100
        })
        .await;
    }
}
