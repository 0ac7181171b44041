//! The embedded store: persistence across restarts, ephemeral instances, leases held by
//! a real process that is then killed, and the data-directory lock.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{STRAIT, Strait, eventually};

#[test]
fn routes_survive_restart_and_instances_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut strait = Strait::builder().data_dir(&data).start();
    strait.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    strait.put(
        "/v1/routes/api",
        r#"{"host":"api.example.com","path":{"prefix":"/v1"},"service":"api"}"#,
    );
    strait.delete("/v1/routes/api");
    strait.put(
        "/v1/services/web/instances/w1",
        r#"{"address":"127.0.0.1","port":80}"#,
    );
    let (_, before) = strait.get("/v1/snapshot");
    strait.kill(); // no clean shutdown: persistence must not depend on one
    assert!(
        std::fs::metadata(data.join("routes.log")).is_ok_and(|m| m.len() > 0),
        "the writes are in the log"
    );

    let mut strait = Strait::builder().data_dir(&data).start();
    let (_, after) = strait.get("/v1/snapshot");
    assert_eq!(after["routes"], before["routes"], "routes survive a crash");
    assert!(after["routes"]["api"].is_null());
    assert_eq!(
        after["services"],
        serde_json::json!({}),
        "instances are ephemeral"
    );
    assert!(
        after["revision"].as_u64() >= Some(2),
        "revision does not go back below the persisted one: {after}"
    );
    // A clean stop folds the log into routes.json, all a rolled-back older strait reads.
    strait.stop();
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("routes.json")).expect("routes.json"))
            .expect("json");
    assert_eq!(file["routes"]["web"]["host"], "web.example.com", "{file}");
    assert!(file["routes"]["api"].is_null());
    assert_eq!(
        std::fs::metadata(data.join("routes.log"))
            .expect("log")
            .len(),
        0,
        "emptied"
    );
}

#[test]
fn corrupt_routes_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(
        data.join("routes.json"),
        b"{\"format\":1,\"revision\":3,\"rou",
    )
    .expect("write");
    let stderr = Strait::builder().data_dir(&data).start_expecting_failure();
    assert!(stderr.contains("corrupt routes file"), "{stderr}");
    assert_eq!(
        std::fs::read(data.join("routes.json")).expect("read"),
        b"{\"format\":1,\"revision\":3,\"rou",
        "the file is left for the operator"
    );
}

/// Route writes are appended to `routes.log`; a damaged record that is not the last (so
/// not a write cut off by a crash) stops startup, and the log is left for the operator.
#[test]
fn corrupt_routes_log_is_refused_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut strait = Strait::builder().data_dir(&data).start();
    for name in ["a", "b"] {
        strait.put(
            &format!("/v1/routes/{name}"),
            &format!(r#"{{"host":"{name}.example.com","service":"web"}}"#),
        );
    }
    strait.kill();
    let log = data.join("routes.log");
    let mut bytes = std::fs::read(&log).expect("read log");
    let at = bytes
        .windows(13)
        .position(|w| w == b"a.example.com")
        .expect("the first write is in the log");
    bytes[at] = b'z';
    std::fs::write(&log, &bytes).expect("write");
    let stderr = Strait::builder().data_dir(&data).start_expecting_failure();
    assert!(stderr.contains("corrupt routes log at line 1"), "{stderr}");
    assert_eq!(std::fs::read(&log).expect("read"), bytes, "left as it was");
}

#[test]
fn one_process_per_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let _first = Strait::builder().data_dir(&data).start();
    let stderr = Strait::builder().data_dir(&data).start_expecting_failure();
    assert!(
        stderr.contains("in use by another strait process"),
        "{stderr}"
    );
}

/// `strait svc register --ttl` holds a lease while it runs; killed with SIGKILL, it stops
/// renewing and the instance expires. Stopped with SIGTERM, it revokes at once.
#[test]
fn killed_owner_instances_expire() {
    let strait = Strait::builder().start();
    let admin = format!("http://{}", strait.admin);
    let hold = |id: &str| {
        Command::new(STRAIT)
            .args([
                "svc",
                "register",
                "web",
                id,
                "127.0.0.1:9000",
                "--ttl",
                // Renewed every ttl/3: 2 s leaves room for a CI machine busy with other
                // tests (1 s expired a renewal once, and the holder exits non-zero then).
                "2s",
                "--admin",
                &admin,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strait svc register")
    };
    let mut killed = hold("killed");
    let graceful = hold("graceful");
    eventually(Duration::from_secs(10), "both registrations", || {
        let ids = strait.instance_ids("web");
        if ids.len() == 2 {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    });
    // Alive and renewing: still there after two TTLs.
    std::thread::sleep(Duration::from_millis(4200));
    assert_eq!(strait.instance_ids("web"), ["graceful", "killed"]);

    killed.kill().expect("kill");
    killed.wait().expect("wait");
    eventually(
        Duration::from_secs(8),
        "the killed owner's instance to expire",
        || {
            let ids = strait.instance_ids("web");
            if ids == ["graceful"] {
                Ok(())
            } else {
                Err(format!("{ids:?}"))
            }
        },
    );

    crate::harness::signal(graceful.id(), "TERM");
    let output = graceful.wait_with_output().expect("wait");
    assert!(
        output.status.success(),
        "svc register exits cleanly on SIGTERM: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        strait.instance_ids("web").is_empty(),
        "revoked at once on SIGTERM"
    );
}
