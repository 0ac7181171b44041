//! Real processes for the integration tests: the built `strait` binary and a real
//! ZooKeeper from Debian's package. Each picks free loopback ports, waits for readiness,
//! and is killed on drop (a watchdog also kills it if the test binary itself dies).
//! A failing test prints the logs of what it started.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const STRAIT: &str = env!("CARGO_BIN_EXE_strait");

/// Polls `check` every 50 ms until it returns `Ok` or `timeout` passes; then panics with
/// the last error.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `dig @server -p port +time=2 +tries=1 args…`, its standard output. dig (BIND 9.18)
/// binds its UDP socket to port 0 with `SO_REUSEPORT`, and the kernel may then give it
/// the port strait's DNS sockets share (they are reuseport too, and the tests run as one
/// user): dig's query goes to itself and it prints "query response not set". Such a run
/// says nothing about strait, so it is run again from another port.
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut text = String::new();
    for _ in 0..5 {
        let output = Command::new("dig")
            .arg(format!("@{}", server.ip()))
            .args(["-p", &server.port().to_string(), "+time=2", "+tries=1"])
            .args(args)
            .output()
            .expect("run dig (Debian package dnsutils)");
        text = String::from_utf8_lossy(&output.stdout).into_owned();
        if !text.contains("query response not set") {
            break;
        }
    }
    text
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Starts `command` with a watchdog that kills it if this test process exits without
/// dropping its guard (e.g. killed by a timeout).
pub fn spawn_guarded(command: &mut Command) -> (Child, Child) {
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let watchdog = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "while kill -0 {parent} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 1; done; kill -9 {child} 2>/dev/null",
            parent = std::process::id(),
            child = child.id()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start watchdog");
    (child, watchdog)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A running `strait up`.
pub struct Strait {
    child: Option<Child>,
    watchdog: Child,
    pub admin: SocketAddr,
    /// The HTTP router's listener.
    pub http: SocketAddr,
    /// The first TLS listener, when one is configured.
    pub https: Option<SocketAddr>,
    /// The DNS server (UDP and TCP).
    pub dns: SocketAddr,
    /// The image registry.
    pub registry: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

pub struct StraitBuilder {
    args: Vec<String>,
    data_dir: Option<PathBuf>,
    config: Option<String>,
    env: Vec<(String, String)>,
    /// Run on the built-in demo config (no `--config`): the demo service and its route.
    demo: bool,
    /// Keep stdout (the demo's commands to try), else it is discarded.
    stdout: bool,
}

impl StraitBuilder {
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn store(self, url: &str) -> Self {
        self.arg("--store").arg(url)
    }

    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Runs `strait up` without `--config`, on the built-in demo config (with its demo
    /// service and route). Without this (or `config`), tests run on an empty config file:
    /// every default, and no demo.
    pub fn demo(mut self) -> Self {
        self.demo = true;
        self
    }

    /// Keeps what strait prints on stdout (`Strait::stdout_text`).
    pub fn capture_stdout(mut self) -> Self {
        self.stdout = true;
        self
    }

    /// Runs with this configuration file content.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The config file to run with: the test's, else an empty one (no demo) unless the
    /// test asked for the built-in demo config; `None`: no `--config`.
    fn config_text(&self) -> Option<&str> {
        match (&self.config, self.demo) {
            (Some(config), _) => Some(config),
            (None, true) => None,
            (None, false) => Some(""),
        }
    }

    /// `strait up` on `data_dir`, every listener on a free port unless the args name one.
    fn up_command(&self, data_dir: &Path) -> Command {
        let mut command = Command::new(STRAIT);
        command.arg("up").arg("--data-dir").arg(data_dir);
        for flag in [
            "--admin-addr",
            "--http-addr",
            "--dns-addr",
            "--registry-addr",
        ] {
            if !self.args.iter().any(|a| a == flag) {
                command.arg(flag).arg("127.0.0.1:0");
            }
        }
        command
    }

    pub fn start(self) -> Strait {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let mut command = self.up_command(&data_dir);
        command
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info,discovery=debug".into()),
            )
            .envs(self.env.clone())
            .stdin(Stdio::null())
            .stdout(if self.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        if let Some(config) = self.config_text() {
            let path = tmp.path().join("strait.toml");
            std::fs::write(&path, config).expect("write config");
            command.arg("--config").arg(path);
        }
        let (mut child, watchdog) = spawn_guarded(&mut command);
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let lines = Arc::clone(&stdout_lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().expect("stdout lock").push(line);
                }
            });
        }
        let (addr_tx, addr_rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    for (kind, marker) in [
                        ("admin", "admin API listening on "),
                        ("http", "HTTP router listening on "),
                        ("https", "HTTPS router listening on "),
                        ("dns", "DNS listening on "),
                        ("registry", "registry listening on "),
                    ] {
                        if let Some(addr) = line.split(marker).nth(1) {
                            let addr = addr.split_whitespace().next().unwrap_or_default();
                            let _ = addr_tx.send((kind, addr.parse::<SocketAddr>()));
                        }
                    }
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let mut strait = Strait {
            child: Some(child),
            watchdog,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            https: None,
            dns: SocketAddr::from(([127, 0, 0, 1], 0)),
            registry: None,
            log,
            stdout: stdout_lines,
            _tmp: Some(tmp),
        };
        // The router logs its listeners before the admin API's, which comes last.
        loop {
            match addr_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(("admin", Ok(addr))) => {
                    strait.admin = addr;
                    break;
                }
                Ok(("http", Ok(addr))) => strait.http = addr,
                Ok(("dns", Ok(addr))) => strait.dns = addr,
                Ok(("registry", Ok(addr))) => strait.registry = Some(addr),
                Ok((_, Ok(addr))) => {
                    strait.https.get_or_insert(addr);
                }
                other => panic!(
                    "strait did not report its listening addresses ({other:?}); log:\n{}",
                    strait.log_text()
                ),
            }
        }
        strait
    }

    /// Runs `strait up` expecting it to fail at start; returns its stderr.
    pub fn start_expecting_failure(self) -> String {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let mut command = self.up_command(&data_dir);
        command.args(&self.args).envs(self.env.clone());
        if let Some(config) = self.config_text() {
            let path = tmp.path().join("strait.toml");
            std::fs::write(&path, config).expect("write config");
            command.arg("--config").arg(path);
        }
        let output = command.output().expect("run strait");
        assert!(!output.status.success(), "strait up should have failed");
        String::from_utf8_lossy(&output.stderr).into_owned()
    }
}

impl Strait {
    pub fn builder() -> StraitBuilder {
        StraitBuilder {
            args: Vec::new(),
            data_dir: None,
            config: None,
            env: Vec::new(),
            demo: false,
            stdout: false,
        }
    }

    /// What strait printed on stdout so far (with `capture_stdout`).
    pub fn stdout_text(&self) -> String {
        self.stdout.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        status.success(),
                        "strait exited with {status}; log:\n{}",
                        self.log_text()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    kill(&mut child);
                    panic!(
                        "strait did not stop within 10s of SIGTERM; log:\n{}",
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Waits for the process to exit by itself (e.g. after handing over to an upgrade).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                kill(&mut child);
                panic!(
                    "strait did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http(self, "GET", path, None, None)
    }

    pub fn put(&self, path: &str, body: &str) -> (u16, Value) {
        http(self, "PUT", path, Some(body), None)
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        http(self, "DELETE", path, None, None)
    }

    /// A metric's value from `/metrics` (first sample whose name and labels start with `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = http_text(&self.url("/metrics"), None).1;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    pub fn metrics_text(&self) -> String {
        http_text(&self.url("/metrics"), None).1
    }

    /// The ids of the instances of `service` in this strait's snapshot.
    pub fn instance_ids(&self, service: &str) -> Vec<String> {
        let (_, snapshot) = self.get("/v1/snapshot");
        snapshot["services"][service]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["id"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Strait {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
        kill(&mut self.watchdog);
        if std::thread::panicking() {
            eprintln!(
                "--- strait log (admin {}) ---\n{}\n---",
                self.admin,
                self.log_text()
            );
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// One admin API request; returns status and JSON body (`null` if empty, a string if not JSON).
pub fn http(
    strait: &Strait,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let url = strait.url(path);
    let agent = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match (method, body) {
        ("GET", _) => {
            let r = agent.get(&url);
            match &auth {
                Some(a) => r.header("authorization", a.as_str()).call(),
                None => r.call(),
            }
        }
        ("DELETE", _) => {
            let r = agent.delete(&url);
            match &auth {
                Some(a) => r.header("authorization", a.as_str()).call(),
                None => r.call(),
            }
        }
        (m, b) => {
            let r = if m == "PUT" {
                agent.put(&url)
            } else {
                agent.post(&url)
            };
            let r = match &auth {
                Some(a) => r.header("authorization", a.as_str()),
                None => r,
            };
            r.content_type("application/json")
                .send(b.unwrap_or_default())
        }
    };
    let mut response = response.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// `PUT url` with an empty JSON body; returns the status and body text.
pub fn http_put(url: &str) -> (u16, String) {
    let mut response = agent()
        .put(url)
        .content_type("application/json")
        .send("{}")
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

pub fn http_text(url: &str, token: Option<&str>) -> (u16, String) {
    let request = agent().get(url);
    let request = match token {
        Some(t) => request.header("authorization", format!("Bearer {t}")),
        None => request,
    };
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// Runs the strait CLI; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(STRAIT)
        .args(args)
        .output()
        .expect("run strait");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A real ZooKeeper server (Debian's `zookeeper` package) on a free loopback port.
pub struct ZooKeeper {
    child: Option<(Child, Child)>,
    pub port: u16,
    dir: tempfile::TempDir,
}

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

impl ZooKeeper {
    /// A server of its own, for tests that stop or restart it.
    pub fn start() -> ZooKeeper {
        assert!(
            Path::new(ZOOKEEPER_JAR).exists(),
            "{ZOOKEEPER_JAR} is missing: install Debian's `zookeeper` package (scripts/test does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "tickTime=200\ninitLimit=10\nsyncLimit=5\ndataDir={data}\nclientPort={port}\n\
             clientPortAddress=127.0.0.1\nadmin.enableServer=false\nminSessionTimeout=400\n\
             maxSessionTimeout=60000\n4lw.commands.whitelist=ruok,srvr\n",
            data = dir.path().join("data").display()
        );
        std::fs::create_dir_all(dir.path().join("data")).expect("zk data dir");
        std::fs::write(dir.path().join("zoo.cfg"), config).expect("zoo.cfg");
        let mut zk = ZooKeeper {
            child: None,
            port,
            dir,
        };
        zk.restart();
        zk
    }

    /// One server shared by the tests of this run; each test uses its own chroot.
    pub fn shared() -> &'static ZooKeeper {
        static SHARED: OnceLock<ZooKeeper> = OnceLock::new();
        SHARED.get_or_init(ZooKeeper::start)
    }

    /// A `zk://` store URL with a chroot unique to `test`.
    pub fn url(&self, test: &str) -> String {
        format!("zk://127.0.0.1:{}/strait-test/{test}", self.port)
    }

    /// Starts the server again (same port and data) after `stop`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "ZooKeeper already running");
        let log = std::fs::File::create(self.dir.path().join("zookeeper.log")).expect("zk log");
        let mut command = Command::new("java");
        command
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(ZOOKEEPER_JAR)
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(spawn_guarded(&mut command));
        let port = self.port;
        eventually(Duration::from_secs(60), "ZooKeeper to answer ruok", || {
            use std::io::{Read, Write};
            let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            stream.write_all(b"ruok").map_err(|e| e.to_string())?;
            let mut answer = String::new();
            stream
                .read_to_string(&mut answer)
                .map_err(|e| e.to_string())?;
            if answer == "imok" {
                Ok(())
            } else {
                Err(format!("answered {answer:?}"))
            }
        });
    }

    /// Stops the server (SIGKILL, like a crash or a partition: clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some((mut child, mut watchdog)) = self.child.take() {
            kill(&mut child);
            kill(&mut watchdog);
        }
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `command` (logging at info to a piped stderr, kept in memory), waits for the
/// line containing `marker` and returns the address that follows it. Panics with the log
/// when none comes within 30 s.
fn spawn_logged(
    command: &mut Command,
    marker: &'static str,
) -> (Child, Child, SocketAddr, Arc<Mutex<Vec<String>>>) {
    command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (mut child, watchdog) = spawn_guarded(command);
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = mpsc::channel();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split(marker).nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or_default();
                    let _ = addr_tx.send(addr.parse::<SocketAddr>());
                }
                log.lock().expect("log lock").push(line);
            }
        });
    }
    match addr_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(addr)) => (child, watchdog, addr, log),
        other => {
            let (mut child, mut watchdog) = (child, watchdog);
            kill(&mut child);
            kill(&mut watchdog);
            panic!(
                "{command:?} did not log `{marker}` ({other:?}); log:\n{}",
                log.lock().map(|l| l.join("\n")).unwrap_or_default()
            )
        }
    }
}

/// A running `strait registry serve` (the registry alone) on a free port.
pub struct Registry {
    process: Process,
    pub addr: SocketAddr,
    pub root: PathBuf,
    args: Vec<String>,
}

impl Registry {
    /// Serves storage `root` (created if missing), anonymous push on loopback.
    pub fn start(root: &Path) -> Registry {
        Registry::start_with(root, &[])
    }

    /// With extra `strait registry serve` arguments (e.g. `--htpasswd FILE`).
    pub fn start_with(root: &Path, args: &[&str]) -> Registry {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let process = Registry::spawn(root, "127.0.0.1:0", &args);
        Registry {
            addr: process.addr,
            process,
            root: root.to_path_buf(),
            args,
        }
    }

    fn spawn(root: &Path, addr: &str, args: &[String]) -> Process {
        let root = root.to_str().expect("utf-8 root");
        let mut all = vec!["registry", "serve", "--addr", addr, "--root", root];
        all.extend(args.iter().map(String::as_str));
        Process::start(&all, "registry listening on ")
    }

    /// `127.0.0.1:PORT`, as image references name it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL, then start again on the same port and storage.
    pub fn kill_and_restart(&mut self) {
        self.process.kill();
        self.process = Registry::spawn(&self.root, &self.addr.to_string(), &self.args);
        self.addr = self.process.addr;
    }
}

/// Another `strait` command (e.g. `strait agent`) that logs "<marker> ADDR" once it serves.
pub struct Process {
    child: Option<Child>,
    watchdog: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn start(args: &[&str], marker: &'static str) -> Process {
        Process::start_with_env(args, marker, &[])
    }

    /// As `start`, with these environment variables set.
    pub fn start_with_env(args: &[&str], marker: &'static str, env: &[(&str, String)]) -> Process {
        let mut command = Command::new(STRAIT);
        command.args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let (child, watchdog, addr, log) = spawn_logged(&mut command, marker);
        Process {
            child: Some(child),
            watchdog,
            addr,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }

    /// SIGTERM and wait (up to 10 s) for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(status.success(), "exit {status}; log:\n{}", self.log_text());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill(&mut child);
            panic!("did not stop within 10s; log:\n{}", self.log_text());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
        kill(&mut self.watchdog);
        if std::thread::panicking() {
            eprintln!("--- process log ---\n{}", self.log_text());
        }
    }
}
