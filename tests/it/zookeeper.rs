//! The ZooKeeper store against a real ZooKeeper server: several strait processes on one
//! ensemble, fail-static while it is down, resync when it is back, session expiry,
//! killed processes, and propagation latency.

use std::time::Duration;

use crate::harness::{Strait, ZooKeeper, eventually, signal};

const INSTANCE: &str = r#"{"address":"127.0.0.1","port":9000}"#;

fn wait_ready(strait: &Strait) {
    eventually(
        Duration::from_secs(30),
        "strait to sync with ZooKeeper",
        || {
            let (status, body) = strait.get("/v1/snapshot");
            if status == 200 && body["connected"] == true {
                Ok(())
            } else {
                Err(body.to_string())
            }
        },
    );
    assert_eq!(
        crate::harness::http_text(&strait.url("/readyz"), None).0,
        200
    );
}

fn wait_ids(strait: &Strait, service: &str, expected: &[&str], what: &str) {
    eventually(Duration::from_secs(20), what, || {
        let ids = strait.instance_ids(service);
        if ids == expected {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    });
}

fn zk_config(url: &str, session_timeout: &str) -> String {
    format!("[store]\nurl = \"{url}\"\nsession_timeout = \"{session_timeout}\"\n")
}

#[test]
fn registration_through_a_is_seen_by_b() {
    let zk = ZooKeeper::shared();
    let url = zk.url("a-sees-b");
    let a = Strait::builder().store(&url).start();
    let b = Strait::builder().store(&url).start();
    wait_ready(&a);
    wait_ready(&b);

    let (status, body) = a.put("/v1/services/web/instances/web-1", INSTANCE);
    assert_eq!(status, 200, "{body}");
    let (status, body) = b.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    assert_eq!(status, 200, "{body}");
    wait_ids(&b, "web", &["web-1"], "B to see A's instance");
    eventually(Duration::from_secs(10), "A to see B's route", || {
        let (_, routes) = a.get("/v1/routes");
        if routes["routes"]["web"]["service"] == "web" {
            Ok(())
        } else {
            Err(routes.to_string())
        }
    });

    // Health changes and deregistrations flow the same way, from either side.
    let (status, _) = b.put(
        "/v1/services/web/instances/web-1/health",
        r#"{"health":"critical"}"#,
    );
    assert_eq!(status, 200);
    eventually(
        Duration::from_secs(10),
        "A to see the health change",
        || {
            let (_, instance) = a.get("/v1/services/web/instances/web-1");
            if instance["health"] == "critical" {
                Ok(())
            } else {
                Err(instance.to_string())
            }
        },
    );
    assert_eq!(a.delete("/v1/services/web/instances/web-1").0, 204);
    wait_ids(&b, "web", &[], "B to see the deregistration");
    assert_eq!(a.delete("/v1/routes/web").0, 204);
    eventually(
        Duration::from_secs(10),
        "B to see the route removed",
        || {
            let (status, _) = b.get("/v1/routes/web");
            if status == 404 {
                Ok(())
            } else {
                Err(format!("{status}"))
            }
        },
    );
}

#[test]
fn instance_owned_by_another_process_is_a_conflict() {
    let zk = ZooKeeper::shared();
    let url = zk.url("conflict");
    let a = Strait::builder().store(&url).start();
    let b = Strait::builder().store(&url).start();
    wait_ready(&a);
    wait_ready(&b);
    assert_eq!(a.put("/v1/services/web/instances/web-1", INSTANCE).0, 200);
    // Re-registering through the owner updates in place.
    assert_eq!(
        a.put(
            "/v1/services/web/instances/web-1",
            r#"{"address":"127.0.0.1","port":9001}"#
        )
        .0,
        200
    );
    let (status, body) = b.put("/v1/services/web/instances/web-1", INSTANCE);
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("registered by another strait process"),
        "{body}"
    );
}

#[test]
fn graceful_stop_removes_instances_at_once_and_kill_after_session_timeout() {
    let zk = ZooKeeper::shared();
    let url = zk.url("owner-dies");
    let config = zk_config(&url, "2s");
    let mut graceful = Strait::builder().config(&config).start();
    let mut killed = Strait::builder().config(&config).start();
    let observer = Strait::builder().config(&config).start();
    for s in [&graceful, &killed, &observer] {
        wait_ready(s);
    }
    graceful.put("/v1/services/web/instances/graceful", INSTANCE);
    killed.put("/v1/services/web/instances/killed", INSTANCE);
    wait_ids(&observer, "web", &["graceful", "killed"], "both instances");

    graceful.stop();
    wait_ids(
        &observer,
        "web",
        &["killed"],
        "the gracefully stopped process's instance to go",
    );

    killed.kill();
    // Still there right after the kill (the session outlives the TCP connection)...
    assert_eq!(observer.instance_ids("web"), ["killed"]);
    // ...and gone once the 2s session expires.
    wait_ids(
        &observer,
        "web",
        &[],
        "the killed process's session to expire",
    );
}

#[test]
fn fail_static_while_zookeeper_is_down_then_resync() {
    let mut zk = ZooKeeper::start();
    let url = zk.url("fail-static");
    let a = Strait::builder().config(&zk_config(&url, "20s")).start();
    let b = Strait::builder().config(&zk_config(&url, "20s")).start();
    wait_ready(&a);
    wait_ready(&b);
    a.put("/v1/services/web/instances/web-1", INSTANCE);
    a.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    wait_ids(&b, "web", &["web-1"], "B to see web-1");
    eventually(Duration::from_secs(10), "B to see the route", || {
        let (status, _) = b.get("/v1/routes/web");
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{status}"))
        }
    });

    zk.stop();
    eventually(
        Duration::from_secs(20),
        "B to report disconnected",
        || match b.metric("strait_discovery_store_connected") {
            Some(0.0) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // Fail static: the last snapshot is still served, and it says how stale it is.
    std::thread::sleep(Duration::from_millis(1200));
    let (_, snapshot) = b.get("/v1/snapshot");
    assert_eq!(snapshot["connected"], false);
    assert!(
        snapshot["age_seconds"].as_f64().unwrap_or(0.0) >= 1.0,
        "{snapshot}"
    );
    assert_eq!(b.instance_ids("web"), ["web-1"]);
    assert_eq!(snapshot["routes"]["web"]["service"], "web");
    assert!(
        b.metric("strait_discovery_snapshot_age_seconds")
            .unwrap_or(0.0)
            >= 1.0
    );
    // Writes fail clearly and lose nothing.
    let (status, body) = a.put("/v1/services/web/instances/web-2", INSTANCE);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "unavailable");

    zk.restart();
    wait_ready(&a);
    wait_ready(&b);
    assert_eq!(b.metric("strait_discovery_store_connected"), Some(1.0));
    let (_, snapshot) = b.get("/v1/snapshot");
    assert_eq!(snapshot["age_seconds"], 0.0);
    // New changes flow again.
    assert_eq!(a.put("/v1/services/web/instances/web-2", INSTANCE).0, 200);
    wait_ids(
        &b,
        "web",
        &["web-1", "web-2"],
        "B to see a registration made after the outage",
    );
    assert!(b.metric("strait_discovery_resyncs_total").unwrap_or(0.0) >= 2.0);
}

/// A process frozen longer than its session timeout (a GC pause, a stalled VM) loses its
/// session; when it thaws it must start a new one and re-create its own instances.
#[test]
fn session_expiry_recreates_own_instances() {
    let zk = ZooKeeper::shared();
    let url = zk.url("expiry");
    let a = Strait::builder().config(&zk_config(&url, "1s")).start();
    let b = Strait::builder().config(&zk_config(&url, "1s")).start();
    wait_ready(&a);
    wait_ready(&b);
    assert_eq!(a.put("/v1/services/web/instances/web-1", INSTANCE).0, 200);
    assert_eq!(
        a.put(
            "/v1/services/web/instances/web-1/health",
            r#"{"health":"warning"}"#
        )
        .0,
        200
    );
    wait_ids(&b, "web", &["web-1"], "B to see web-1");

    signal(a.pid(), "STOP");
    let expired =
        std::panic::catch_unwind(|| wait_ids(&b, "web", &[], "A's session to expire while frozen"));
    signal(a.pid(), "CONT");
    assert!(expired.is_ok(), "A's session did not expire");

    wait_ids(
        &b,
        "web",
        &["web-1"],
        "A to re-create its instance in a new session",
    );
    let (_, instance) = b.get("/v1/services/web/instances/web-1");
    assert_eq!(
        instance["health"], "warning",
        "re-created with its latest health"
    );
    assert!(
        a.log_text().contains("starting a new one"),
        "A noticed the expiry"
    );

    // Changes made through B to A's instances outlast A's next session: a drained
    // instance stays drained, a deleted one stays deleted.
    assert_eq!(a.put("/v1/services/web/instances/web-2", INSTANCE).0, 200);
    wait_ids(&b, "web", &["web-1", "web-2"], "B to see web-2");
    assert_eq!(
        b.put(
            "/v1/services/web/instances/web-1/health",
            r#"{"health":"maintenance"}"#
        )
        .0,
        200
    );
    assert_eq!(b.delete("/v1/services/web/instances/web-2").0, 204);
    wait_ids(&a, "web", &["web-1"], "A to see web-2 deleted");
    eventually(Duration::from_secs(10), "A to see web-1 drained", || {
        let (_, instance) = a.get("/v1/services/web/instances/web-1");
        (instance["health"] == "maintenance")
            .then_some(())
            .ok_or(instance.to_string())
    });
    signal(a.pid(), "STOP");
    let expired = std::panic::catch_unwind(|| {
        wait_ids(&b, "web", &[], "A's session to expire again while frozen")
    });
    signal(a.pid(), "CONT");
    assert!(expired.is_ok(), "A's session did not expire");
    wait_ids(&b, "web", &["web-1"], "A to re-create web-1 only");
    let (_, instance) = b.get("/v1/services/web/instances/web-1");
    assert_eq!(instance["health"], "maintenance", "still drained");
    std::thread::sleep(Duration::from_millis(500));
    wait_ids(&b, "web", &["web-1"], "web-2 still deleted");
}

/// Not a timing assertion: counts that every write propagated, and prints the latency
/// distribution B observed (ZooKeeper mtime -> B's snapshot) for the issue note.
#[test]
fn propagation_latency_is_reported() {
    let zk = ZooKeeper::shared();
    let url = zk.url("propagation");
    let a = Strait::builder().store(&url).start();
    let b = Strait::builder().store(&url).start();
    wait_ready(&a);
    wait_ready(&b);
    const N: usize = 200;
    for i in 0..N {
        let (status, body) = a.put(&format!("/v1/services/load/instances/i-{i}"), INSTANCE);
        assert_eq!(status, 200, "{body}");
        // Spread the writes so each one is its own event, not one coalesced batch.
        std::thread::sleep(Duration::from_millis(2));
    }
    eventually(Duration::from_secs(20), "B to see all instances", || {
        let n = b.instance_ids("load").len();
        if n == N {
            Ok(())
        } else {
            Err(format!("{n} of {N}"))
        }
    });
    let count = b
        .metric("strait_discovery_propagation_seconds_count")
        .unwrap_or(0.0);
    assert!(count >= N as f64, "B measured {count} propagations");
    let text = b.metrics_text();
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("strait_discovery_propagation_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"} ")?;
            Some((le.parse().unwrap_or(f64::INFINITY), rest.parse().ok()?))
        })
        .collect();
    let quantile = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map_or(f64::INFINITY, |(le, _)| *le)
    };
    eprintln!(
        "zookeeper propagation A->B over {count} writes: p50 <= {}s, p99 <= {}s (histogram bucket bounds; ms clock)",
        quantile(0.5),
        quantile(0.99)
    );

    // The router's "store write -> table live" histogram: a deletion, seconds after the
    // last write, is not measured as old as that write (it has no write time to read).
    let router_sum = || {
        b.metric("strait_router_propagation_seconds_sum")
            .unwrap_or(0.0)
    };
    std::thread::sleep(Duration::from_secs(3));
    let before = router_sum();
    assert_eq!(a.delete("/v1/services/load/instances/i-0").0, 204);
    eventually(Duration::from_secs(10), "B to see the deletion", || {
        let n = b.instance_ids("load").len();
        if n == N - 1 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let added = router_sum() - before;
    assert!(
        added < 1.0,
        "a deletion measured as {added} s old (the previous write's age)"
    );
}

/// `--upgrade` on ZooKeeper: the instances the old process's session owned are re-created
/// under the new process's session, so they outlive the old process (a second strait on
/// the ensemble still sees them after it exits) and go with the new one.
#[test]
fn upgrade_moves_instances_to_the_new_session() {
    let zk = ZooKeeper::shared();
    let url = zk.url("upgrade");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (admin, http, dns, registry) = (
        crate::harness::free_port(),
        crate::harness::free_port(),
        crate::harness::free_port(),
        crate::harness::free_port(),
    );
    let start = |upgrade: bool| {
        let mut builder = Strait::builder().store(&url).data_dir(&data);
        for (flag, port) in [
            ("--admin-addr", admin),
            ("--http-addr", http),
            ("--dns-addr", dns),
            ("--registry-addr", registry),
        ] {
            builder = builder.arg(flag).arg(format!("127.0.0.1:{port}"));
        }
        if upgrade {
            builder = builder.arg("--upgrade");
        }
        builder.start()
    };
    let mut old = start(false);
    wait_ready(&old);
    let observer = Strait::builder().store(&url).start();
    wait_ready(&observer);
    let (status, body) = old.put("/v1/services/web/instances/w1", INSTANCE);
    assert_eq!(status, 200, "{body}");
    wait_ids(&observer, "web", &["w1"], "the observer to see w1");

    // The observer must never see w1 missing: adoption replaces each node in one
    // transaction.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let missing = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = {
        let (watching, missing) = (watching.clone(), missing.clone());
        let url = observer.url("/v1/services/web");
        std::thread::spawn(move || {
            while watching.load(std::sync::atomic::Ordering::SeqCst) {
                let (_, body) = crate::harness::http_text(&url, None);
                if !body.contains("\"w1\"") {
                    missing.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let new = start(true);
    let status = old.wait_for_exit(Duration::from_secs(40));
    assert!(status.success(), "old strait exited with {status}");
    std::thread::sleep(Duration::from_millis(500));
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    watcher.join().expect("watcher");
    assert_eq!(
        missing.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the observer saw w1 missing during the upgrade"
    );
    // The old session is closed now; w1 lives on under the new one.
    std::thread::sleep(Duration::from_millis(500));
    wait_ids(&observer, "web", &["w1"], "w1 to outlive the old process");
    wait_ids(&new, "web", &["w1"], "the new process to hold w1");
    // Owned by the new process: it goes when the new process stops.
    let mut new = new;
    new.stop();
    wait_ids(&observer, "web", &[], "w1 to go with the new process");
}
