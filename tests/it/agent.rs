//! The agent inside `strait up --services FILE`: checks move instances out of and back
//! into DNS answers and router traffic; TTL checks; maintenance; a killed process's
//! instances vanish from other routers on the same ZooKeeper.

use std::time::Duration;

use crate::harness::{Process, Strait, ZooKeeper, dig, eventually};
use crate::http::{Backend, Client};

fn dig_a(strait: &Strait, name: &str) -> Vec<String> {
    dig(strait.dns, &["+short", name, "A"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn services_file(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("services.toml");
    std::fs::write(&path, body).expect("write services file");
    path.display().to_string()
}

#[test]
fn http_check_moves_the_instance_out_of_and_back_into_dns_and_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start("web");
    let file = services_file(
        dir.path(),
        &format!(
            "[[service]]\nservice = \"web\"\nid = \"web-1\"\naddress = \"127.0.0.1\"\nport = {}\n\n\
             [[service.check]]\nkind = \"http\"\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 1\nfall = 2\n",
            backend.addr.port()
        ),
    );
    let strait = Strait::builder().arg("--services").arg(file).start();
    strait.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    // An HTTP check is moved by its own results only, not by a heartbeat.
    let (status, body) = strait.put("/v1/agent/checks/web-1:0/pass", "");
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let mut client = Client::new(strait.http);
    let healthy = |client: &mut Client| -> Result<(), String> {
        let dns = dig_a(&strait, "web.service.strait");
        let status = client
            .get("web.example.com", "/")
            .map_err(|e| e.to_string())?
            .status;
        if dns == ["127.0.0.1"] && status == 200 {
            Ok(())
        } else {
            Err(format!("dns {dns:?} http {status}"))
        }
    };
    eventually(Duration::from_secs(10), "the check to pass", || {
        healthy(&mut client)
    });

    backend.set_status(500);
    eventually(
        Duration::from_secs(10),
        "the failing check to remove it",
        || {
            let dns = dig_a(&strait, "web.service.strait");
            let status = client
                .get("web.example.com", "/")
                .map_err(|e| e.to_string())?
                .status;
            if dns.is_empty() && status == 503 {
                Ok(())
            } else {
                Err(format!("dns {dns:?} http {status}"))
            }
        },
    );
    let (_, instance) = strait.get("/v1/services/web/instances/web-1");
    assert_eq!(instance["health"], "critical");

    backend.set_status(200);
    eventually(Duration::from_secs(10), "recovery", || healthy(&mut client));

    // Maintenance drains it from both, whatever the checks say.
    let (status, body) = strait.put(
        "/v1/agent/services/web/web-1/maintenance",
        r#"{"enable":true}"#,
    );
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(10), "maintenance to drain it", || {
        let dns = dig_a(&strait, "web.service.strait");
        if dns.is_empty() {
            Ok(())
        } else {
            Err(format!("{dns:?}"))
        }
    });
    strait.put(
        "/v1/agent/services/web/web-1/maintenance",
        r#"{"enable":false}"#,
    );
    eventually(Duration::from_secs(10), "back from maintenance", || {
        healthy(&mut client)
    });
}

#[test]
fn ttl_check_needs_heartbeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = services_file(
        dir.path(),
        "[[service]]\nservice = \"job\"\nid = \"job-1\"\naddress = \"127.0.0.1\"\nport = 7000\n\n\
         [[service.check]]\nid = \"job-alive\"\nkind = \"ttl\"\nttl = \"1s\"\n",
    );
    let strait = Strait::builder().arg("--services").arg(file).start();
    let health = || {
        strait.get("/v1/services/job/instances/job-1").1["health"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    eventually(Duration::from_secs(10), "registered as critical", || {
        if health() == "critical" {
            Ok(())
        } else {
            Err(health())
        }
    });
    // As Consul's: a heartbeat passes the check at once (not after the default 5 s
    // interval and rise of 2), and the check fails when `ttl` goes by without one.
    let (status, _) = strait.put("/v1/agent/checks/job-alive/pass", "");
    assert_eq!(status, 200);
    eventually(Duration::from_secs(1), "passing after a heartbeat", || {
        if health() == "passing" {
            Ok(())
        } else {
            Err(health())
        }
    });
    let passed = std::time::Instant::now();
    eventually(
        Duration::from_secs(3),
        "critical once heartbeats stop",
        || {
            if health() == "critical" {
                Ok(())
            } else {
                Err(health())
            }
        },
    );
    assert!(
        passed.elapsed() >= Duration::from_millis(800),
        "critical before its ttl: {:?}",
        passed.elapsed()
    );
    assert_eq!(strait.put("/v1/agent/checks/nope/pass", "").0, 404);

    // A health written behind the agent's back is written over (anti-entropy).
    let (status, body) = strait.put(
        "/v1/services/job/instances/job-1/health",
        r#"{"health":"passing"}"#,
    );
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(10),
        "the agent to restore `critical`",
        || {
            if health() == "critical" {
                Ok(())
            } else {
                Err(health())
            }
        },
    );
}

#[test]
fn bad_services_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = services_file(
        dir.path(),
        "[[service]]\nservice = \"web\"\nid = \"w\"\naddress = \"127.0.0.1\"\nprot = 80\n",
    );
    let stderr = Strait::builder()
        .arg("--services")
        .arg(file)
        .start_expecting_failure();
    assert!(
        stderr.contains("services.toml:5:1") && stderr.contains("prot"),
        "{stderr}"
    );
}

#[test]
fn killed_agent_instances_vanish_from_other_routers() {
    let zk = ZooKeeper::shared();
    let url = zk.url("agent-killed");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = services_file(
        dir.path(),
        "[[service]]\nservice = \"api\"\nid = \"api-1\"\naddress = \"127.0.0.1\"\nport = 7001\n",
    );
    let config = format!("[store]\nurl = \"{url}\"\nsession_timeout = \"2s\"\n");
    let mut agent_host = Strait::builder()
        .config(&config)
        .arg("--services")
        .arg(file)
        .start();
    let observer = Strait::builder().config(&config).start();
    eventually(
        Duration::from_secs(15),
        "the observer to see the agent's instance",
        || {
            let ids = observer.instance_ids("api");
            if ids == ["api-1"] {
                Ok(())
            } else {
                Err(format!("{ids:?}"))
            }
        },
    );
    agent_host.kill();
    eventually(
        Duration::from_secs(15),
        "the killed agent's instance to vanish",
        || {
            let ids = observer.instance_ids("api");
            if ids.is_empty() {
                Ok(())
            } else {
                Err(format!("{ids:?}"))
            }
        },
    );
}

/// A TTL-checked `api` instance: passing only while its app heartbeats the agent.
fn ttl_service(dir: &std::path::Path) -> String {
    services_file(
        dir,
        "[[service]]\nservice = \"api\"\nid = \"api-1\"\naddress = \"127.0.0.1\"\nport = 7001\n\n\
         [[service.check]]\nid = \"api-ttl\"\nkind = \"ttl\"\nttl = \"30s\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n",
    )
}

fn health_of(strait: &Strait, service: &str, id: &str) -> Option<String> {
    let (_, snapshot) = strait.get("/v1/snapshot");
    snapshot["services"][service]
        .as_array()?
        .iter()
        .find(|i| i["id"] == id)
        .and_then(|i| i["health"].as_str().map(str::to_owned))
}

fn agent_pass(agent: &Process, check: &str) -> u16 {
    let (status, _) =
        crate::harness::http_put(&agent.url(&format!("/v1/agent/checks/{check}/pass")));
    status
}

#[test]
fn standalone_agent_through_the_admin_api_holds_a_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = ttl_service(dir.path());
    let strait = Strait::builder().start();
    let admin = format!("http://{}", strait.admin);
    let mut agent = Process::start(
        &[
            "agent",
            "--services",
            &file,
            "--admin",
            &admin,
            "--addr",
            "127.0.0.1:0",
            "--lease-ttl",
            "2s",
        ],
        "agent API listening on ",
    );
    eventually(
        Duration::from_secs(10),
        "the agent's instance, critical until a heartbeat",
        || {
            let health = health_of(&strait, "api", "api-1");
            (health.as_deref() == Some("critical"))
                .then_some(())
                .ok_or(format!("{health:?}"))
        },
    );
    assert_eq!(agent_pass(&agent, "api-ttl"), 200);
    assert_eq!(agent_pass(&agent, "no-such-check"), 404);
    eventually(
        Duration::from_secs(10),
        "the heartbeat to make it passing",
        || {
            let health = health_of(&strait, "api", "api-1");
            (health.as_deref() == Some("passing"))
                .then_some(())
                .ok_or(format!("{health:?}"))
        },
    );
    // Alive longer than its lease TTL: the lease is renewed.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        health_of(&strait, "api", "api-1").as_deref(),
        Some("passing")
    );
    // Through the admin API too, a health written behind the agent's back is written over.
    let (status, body) = strait.put(
        "/v1/services/api/instances/api-1/health",
        r#"{"health":"critical"}"#,
    );
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(10),
        "the agent to restore `passing`",
        || {
            let health = health_of(&strait, "api", "api-1");
            (health.as_deref() == Some("passing"))
                .then_some(())
                .ok_or(format!("{health:?}"))
        },
    );

    // Killed: nothing renews the lease, the instance expires.
    agent.kill();
    eventually(
        Duration::from_secs(10),
        "the killed agent's instance to expire",
        || {
            let health = health_of(&strait, "api", "api-1");
            health.is_none().then_some(()).ok_or(format!("{health:?}"))
        },
    );

    // A clean stop removes it at once (the lease is revoked).
    let mut agent = Process::start(
        &[
            "agent",
            "--services",
            &file,
            "--admin",
            &admin,
            "--addr",
            "127.0.0.1:0",
            "--lease-ttl",
            "60s",
        ],
        "agent API listening on ",
    );
    eventually(Duration::from_secs(10), "the instance again", || {
        health_of(&strait, "api", "api-1")
            .map(drop)
            .ok_or("absent".to_owned())
    });
    agent.stop();
    let ids = strait.instance_ids("api");
    assert!(
        ids.is_empty(),
        "still registered after a clean stop: {ids:?}"
    );
}

#[test]
fn standalone_agent_on_zookeeper_owns_ephemeral_instances() {
    let zk = ZooKeeper::shared();
    let url = zk.url("standalone-agent");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = ttl_service(dir.path());
    let config = format!("[store]\nurl = \"{url}\"\n");
    let observer = Strait::builder().config(&config).start();
    let mut agent = Process::start(
        &[
            "agent",
            "--services",
            &file,
            "--store",
            &url,
            "--session-timeout",
            "2s",
            "--addr",
            "127.0.0.1:0",
        ],
        "agent API listening on ",
    );
    assert_eq!(agent_pass(&agent, "api-ttl"), 200);
    eventually(
        Duration::from_secs(15),
        "the observer to see it passing",
        || {
            let health = health_of(&observer, "api", "api-1");
            (health.as_deref() == Some("passing"))
                .then_some(())
                .ok_or(format!("{health:?}"))
        },
    );
    agent.kill();
    eventually(
        Duration::from_secs(15),
        "the killed agent's session to expire",
        || {
            let ids = observer.instance_ids("api");
            ids.is_empty().then_some(()).ok_or(format!("{ids:?}"))
        },
    );
}

#[test]
fn standalone_agent_refuses_the_embedded_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = ttl_service(dir.path());
    let (ok, _, stderr) = crate::harness::cli(&[
        "agent",
        "--services",
        &file,
        "--store",
        "embedded",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert!(!ok);
    assert!(stderr.contains("cannot use the embedded store"), "{stderr}");
}
