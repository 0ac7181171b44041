//! The status page (`/ui`) in Debian's Chromium, headless: driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`, no port, no extra crate), the page's
//! DOM read after its script ran, and a screenshot kept under
//! `target/test-artefacts/status-page/`. Also `--dump-dom`, as a person's one-liner would.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Strait, ZooKeeper, eventually, http};
use crate::ops::artefacts;

const CHROMIUM: &str = "chromium";

/// The flags known to work on these machines (no sandbox as root, no network beyond
/// loopback, nothing in the background), and a fresh profile.
fn chromium_command(profile: &std::path::Path) -> Command {
    let mut command = Command::new(CHROMIUM);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// `chromium --dump-dom` of `url` after its script had `budget_ms` of virtual time.
fn dump_dom(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let output = chromium_command(profile.path())
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium (Debian package chromium; scripts/test installs it)");
    assert!(
        output.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A headless Chromium driven over the DevTools protocol on a pipe: fd 3 carries
/// commands to it, fd 4 its answers, each message ending in a NUL byte.
struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
}

impl Browser {
    fn open(url: &str, log: &std::path::Path) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let inner = chromium_command(profile.path());
        let mut args: Vec<String> = inner
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        args.push("--remote-debugging-pipe".into());
        args.push(url.into());
        // The shell maps our pipes onto the descriptors Chromium expects (3 in, 4 out).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec {CHROMIUM} \"$@\" 3<&0 4>&1 0</dev/null 1>/dev/null 2>>'{}'",
                log.display()
            ))
            .arg("sh")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run chromium (Debian package chromium; scripts/test installs it)");
        let commands = child.stdin.take().expect("chromium's command pipe");
        let stdout = child.stdout.take().expect("chromium's answer pipe");
        let (tx, answers) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut message = Vec::new();
            while reader.read_until(0, &mut message).is_ok_and(|n| n > 0) {
                message.pop_if(|b| *b == 0);
                if let Ok(value) = serde_json::from_slice::<Value>(&message)
                    && tx.send(value).is_err()
                {
                    return;
                }
                message.clear();
            }
        });
        // The profile dir must outlive the browser: leak it into the child's lifetime.
        std::mem::forget(profile);
        let mut browser = Browser {
            child,
            commands,
            answers,
            next_id: 0,
            session: String::new(),
        };
        let target = eventually(Duration::from_secs(30), "a page target", || {
            let targets = browser.call("Target.getTargets", json!({}), false)?;
            targets["targetInfos"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["targetId"].as_str().map(str::to_string))
                .ok_or_else(|| format!("no page yet: {targets}"))
        });
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
                false,
            )
            .expect("attach to the page");
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    /// One command; its result, or the protocol's error.
    fn call(&mut self, method: &str, params: Value, in_page: bool) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if in_page {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .map_err(|e| format!("write to chromium: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .map_err(|e| format!("{method}: no answer from chromium: {e}"))?;
            if answer["id"] == id {
                return match answer.get("error") {
                    Some(error) => Err(format!("{method}: {error}")),
                    None => Ok(answer["result"].clone()),
                };
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
            true,
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// The page's DOM now, as HTML.
    fn dom(&mut self) -> Result<String, String> {
        self.eval("document.documentElement.outerHTML")
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    fn wait_for(&mut self, what: &str, needle: &str) -> String {
        eventually(Duration::from_secs(30), what, || {
            let dom = self.dom()?;
            if dom.contains(needle) {
                Ok(dom)
            } else {
                Err(format!("`{needle}` not in the DOM:\n{dom}"))
            }
        })
    }

    fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}), true)
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page honours the admin token as the API does: without one it shows only the
/// login form (the shell holds no data); given the token it polls the API with it and
/// shows a service registered meanwhile, then its health turning critical, live.
#[test]
fn status_page_shows_services_and_live_health_behind_the_token() {
    let token = "ui-test-token-0123456789";
    let strait = Strait::builder().env("STRAIT_ADMIN_TOKEN", token).start();
    let dir = artefacts("status-page");
    let register = |id: &str, port: u16| {
        let body =
            format!(r#"{{"address": "127.0.0.1", "port": {port}, "zone": "eu-1", "weight": 3}}"#);
        let (status, answer) = http(
            &strait,
            "PUT",
            &format!("/v1/services/web/instances/{id}"),
            Some(&body),
            Some(token),
        );
        assert_eq!(status, 200, "{answer}");
    };
    register("i1", 9001);
    let (status, _) = http(
        &strait,
        "PUT",
        "/v1/routes/web",
        Some(r#"{"host": "web.example", "service": "web"}"#),
        Some(token),
    );
    assert_eq!(status, 200);

    // Without the token: the form, no data.
    let dom = dump_dom(&strait.url("/ui"), 5000);
    assert!(
        dom.contains("<form id=\"login\">"),
        "login form not shown:\n{dom}"
    );
    assert!(
        !dom.contains("data-instance"),
        "data without a token:\n{dom}"
    );

    let mut browser = Browser::open(&strait.url("/ui"), &dir.join("chromium.log"));
    browser.wait_for("the login form", "<form id=\"login\">");
    browser
        .eval(&format!(
            "document.getElementById('token').value = '{token}'; \
             document.getElementById('login').requestSubmit(); true"
        ))
        .expect("log in");
    let dom = browser.wait_for(
        "web/i1 passing",
        r#"data-instance="web/i1" data-health="passing""#,
    );
    assert!(
        dom.contains("web.example"),
        "the route is not shown:\n{dom}"
    );
    assert!(dom.contains("eu-1"), "the zone is not shown:\n{dom}");
    // The instance's weight, and the store's state, revision and age from the API.
    assert!(
        dom.contains(r#"<td>eu-1</td><td>3</td>"#),
        "the weight is not shown:\n{dom}"
    );
    assert!(
        dom.contains(">connected<"),
        "the store is not shown connected:\n{dom}"
    );
    let overview_number = |id: &str| -> u64 {
        let start = dom
            .find(&format!(r#"id="{id}""#))
            .unwrap_or_else(|| panic!("no #{id}:\n{dom}"));
        let bold = &dom[start..];
        let value = &bold[bold.find("<b>").expect("<b>") + 3..bold.find("</b>").expect("</b>")];
        value
            .parse()
            .unwrap_or_else(|_| panic!("#{id} is not a number: {value:?}"))
    };
    assert!(overview_number("revision") >= 2, "two writes were made");
    assert!(overview_number("table") >= 1);
    assert!(dom.contains(r#"id="age" data-age=""#), "{dom}");
    assert!(dom.contains("propagation p50 / p99"), "{dom}");

    // Registered while the page is open: it appears without a reload.
    register("i2", 9002);
    browser.wait_for(
        "web/i2 appearing",
        r#"data-instance="web/i2" data-health="passing""#,
    );
    let (status, answer) = http(
        &strait,
        "PUT",
        "/v1/services/web/instances/i1/health",
        Some(r#"{"health": "critical"}"#),
        Some(token),
    );
    assert_eq!(status, 200, "{answer}");
    let dom = browser.wait_for(
        "web/i1 critical",
        r#"data-instance="web/i1" data-health="critical""#,
    );
    assert!(dom.contains("1/2 passing"), "{dom}");
    browser.screenshot(&dir.join("status.png"));
    // The token stays in the tab: no URL the page loaded carries it.
    let urls = browser
        .eval("performance.getEntriesByType('resource').map(e => e.name).concat([location.href]).join(' ')")
        .expect("resource URLs");
    assert!(
        !urls.as_str().unwrap_or_default().contains(token),
        "the token appeared in a URL: {urls}"
    );
}

/// What an SRE looks at when things go wrong, read with `--dump-dom` as a one-liner
/// would: a TLS listener's certificate with its expiry, and the store going away (the
/// ZooKeeper server stopped): the page says the router serves its last snapshot (fail
/// static), and says so no longer once the server is back.
#[test]
fn status_page_shows_certificate_expiry_and_fail_static() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::tls::make_ca(dir.path(), "ca");
    let (cert, key) = crate::tls::make_leaf(dir.path(), "ca", "site", &["site.example"]);
    let mut zk = ZooKeeper::start();
    let strait = Strait::builder()
        .store(&zk.url("ui_fail_static"))
        .config(&format!(
            "[[router.tls]]\naddr = \"127.0.0.1:0\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert.display(),
            key.display()
        ))
        .start();
    // A fresh server may refuse sessions for a moment after it answers `ruok`.
    eventually(Duration::from_secs(30), "a write through ZooKeeper", || {
        let (status, answer) = strait.put(
            "/v1/services/web/instances/i1",
            r#"{"address": "127.0.0.1", "port": 9001}"#,
        );
        (status == 200)
            .then_some(())
            .ok_or_else(|| answer.to_string())
    });
    // `/` sends a browser to the page.
    let redirect = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg(strait.url("/"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&redirect.stdout),
        format!("303 {}", strait.url("/ui"))
    );
    let dom = dump_dom(&strait.url("/ui"), 5000);
    assert!(dom.contains(r#"data-instance="web/i1""#), "{dom}");
    assert!(dom.contains(">connected<"), "{dom}");
    let row = dom
        .find("data-cert=")
        .map(|at| &dom[at..])
        .unwrap_or_else(|| panic!("no certificate row:\n{dom}"));
    let row = &row[..row.find("</tr>").expect("row end")];
    assert!(row.contains("site.example"), "{row}");
    // make_leaf's certificates are valid for two days: "in 48 h", with the date.
    assert!(row.contains(">in ") && !row.contains("expired"), "{row}");
    let month = utc_month_in(2);
    assert!(
        row.contains(&month),
        "the expiry date ({month}-..) is not shown: {row}"
    );

    zk.stop();
    eventually(
        Duration::from_secs(30),
        "the store reported disconnected",
        || {
            let (_, status) = strait.get("/v1/status");
            (status["store"]["connected"] == false)
                .then_some(())
                .ok_or_else(|| status.to_string())
        },
    );
    let dom = dump_dom(&strait.url("/ui"), 5000);
    assert!(
        dom.contains("serving the last snapshot (fail static)"),
        "fail static not shown:\n{dom}"
    );
    assert!(
        dom.contains(r#"data-instance="web/i1""#),
        "the last snapshot's instance is gone:\n{dom}"
    );

    zk.restart();
    eventually(Duration::from_secs(60), "the store reconnected", || {
        let (_, status) = strait.get("/v1/status");
        (status["store"]["connected"] == true)
            .then_some(())
            .ok_or_else(|| status.to_string())
    });
    let dom = dump_dom(&strait.url("/ui"), 5000);
    assert!(
        dom.contains(">connected<") && !dom.contains("fail static"),
        "{dom}"
    );
}

/// The UTC year and month `days` from now (`YYYY-MM`), the start of the expiry date the
/// page prints (`YYYY-MM-DD`; the day itself may move if the run straddles midnight).
fn utc_month_in(days: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let output = Command::new("date")
        .args(["-u", "-d", &format!("@{}", now + days * 86_400), "+%Y-%m"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
