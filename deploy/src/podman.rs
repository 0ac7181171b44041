//! The container engine: Debian's `podman`, driven through its command line (its stable
//! interface; the REST socket needs a service running). strait writes no runtime of its
//! own. Every call has a deadline; an error carries podman's own last line of stderr.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

/// Labels every container strait starts carries, so an agent that restarts finds (adopts)
/// its containers and removes its strays.
pub const LABEL_AGENT: &str = "io.strait.agent";
pub const LABEL_APP: &str = "io.strait.app";
pub const LABEL_DEPLOYMENT: &str = "io.strait.deployment";
pub const LABEL_SLOT: &str = "io.strait.slot";
pub const LABEL_INSTANCE: &str = "io.strait.instance";
pub const LABEL_PORT: &str = "io.strait.port";

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("cannot run `{binary}`: {error} (install podman, or set agent.podman)")]
    Spawn {
        binary: String,
        error: std::io::Error,
    },
    #[error("`podman {command}` took longer than {}", humantime::format_duration(*.after))]
    Timeout { command: String, after: Duration },
    #[error("`podman {command}` failed: {message}")]
    Failed { command: String, message: String },
    #[error("`podman {command}`: unexpected output: {error}")]
    Output { command: String, error: String },
}

/// What a container is doing, from `podman ps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    /// Created or exited: not running (`exit_code` says how it ended).
    Stopped,
    /// Paused, stopping, removing…: leave it alone this round.
    Other,
}

/// One container of this agent's.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub state: ContainerState,
    pub exit_code: i32,
    pub labels: BTreeMap<String, String>,
}

/// A container to start.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsEntry {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    state: String,
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
pub struct Podman {
    binary: PathBuf,
}

/// Short commands (list, start, remove) and pulls.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

impl Podman {
    pub fn new(binary: PathBuf) -> Podman {
        Podman { binary }
    }

    async fn run(&self, args: &[&str], timeout: Duration) -> Result<String, PodmanError> {
        let command = args.first().copied().unwrap_or_default().to_string();
        let mut child = Command::new(&self.binary);
        child
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(timeout, child.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                return Err(PodmanError::Spawn {
                    binary: self.binary.display().to_string(),
                    error,
                });
            }
            Err(_) => {
                return Err(PodmanError::Timeout {
                    command,
                    after: timeout,
                });
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .trim()
                .to_string();
            return Err(PodmanError::Failed {
                command,
                message: format!("{message} ({})", output.status),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Pulls `image` (pinned by digest). `tls_verify: false` for a plain-HTTP registry.
    /// Credentials (`user:password` for `registry`) go in an auth file only this user can
    /// read, never on the command line (every local user could read it in /proc).
    pub async fn pull(
        &self,
        image: &str,
        tls_verify: bool,
        credentials: Option<(&str, &str)>,
    ) -> Result<(), PodmanError> {
        let tls = format!("--tls-verify={tls_verify}");
        let mut args = vec!["pull".to_string(), "--quiet".into(), tls];
        let auth_file = match credentials {
            Some((registry, creds)) => {
                Some(
                    write_auth_file(registry, creds).map_err(|e| PodmanError::Failed {
                        command: "pull".into(),
                        message: format!("cannot write the auth file: {e}"),
                    })?,
                )
            }
            None => None,
        };
        if let Some(file) = &auth_file {
            args.push(format!("--authfile={}", file.path().display()));
        }
        args.push(image.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args, PULL_TIMEOUT).await.map(drop)
    }

    /// Starts a container on the host's network (it listens on the port in its env).
    pub async fn start_new(&self, spec: &RunSpec) -> Result<(), PodmanError> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--pull=never".into(),
            "--network=host".into(),
            format!("--name={}", spec.name),
        ];
        for (key, value) in &spec.labels {
            args.push(format!("--label={key}={value}"));
        }
        for (key, value) in &spec.env {
            args.push(format!("--env={key}={value}"));
        }
        args.push(spec.image.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args, COMMAND_TIMEOUT).await.map(drop)
    }

    /// Starts a stopped container again.
    pub async fn restart(&self, name: &str) -> Result<(), PodmanError> {
        self.run(&["start", name], COMMAND_TIMEOUT).await.map(drop)
    }

    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes a container.
    pub async fn remove(&self, name: &str, grace: Duration) -> Result<(), PodmanError> {
        let time = format!("--time={}", grace.as_secs());
        self.run(
            &["rm", "--force", "--ignore", time.as_str(), name],
            COMMAND_TIMEOUT + grace,
        )
        .await
        .map(drop)
    }

    /// Removes an image no container uses any more (best effort: in use is not an error).
    pub async fn remove_image(&self, image: &str) -> Result<(), PodmanError> {
        self.run(&["rmi", "--ignore", image], COMMAND_TIMEOUT)
            .await
            .map(drop)
    }

    /// The last lines a container wrote (for a failed deployment's reason).
    pub async fn logs_tail(&self, name: &str, lines: usize) -> String {
        let tail = format!("--tail={lines}");
        let mut child = Command::new(&self.binary);
        child
            .args(["logs", tail.as_str(), name])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(10), child.output()).await {
            Ok(Ok(output)) => {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            }
            _ => String::new(),
        }
    }

    /// This agent's containers (by label), running or not.
    pub async fn list(&self, agent: &str) -> Result<Vec<Container>, PodmanError> {
        let filter = format!("--filter=label={LABEL_AGENT}={agent}");
        let out = self
            .run(
                &["ps", "--all", filter.as_str(), "--format=json"],
                COMMAND_TIMEOUT,
            )
            .await?;
        parse_ps(&out).map_err(|error| PodmanError::Output {
            command: "ps".into(),
            error,
        })
    }
}

/// A temporary containers-auth.json (mode 0600) for one registry.
fn write_auth_file(registry: &str, credentials: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use base64::Engine as _;
    use std::io::Write as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(credentials);
    let body = serde_json::json!({"auths": {registry: {"auth": auth}}});
    // NamedTempFile is created 0600.
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(body.to_string().as_bytes())?;
    file.flush()?;
    Ok(file)
}

fn parse_ps(out: &str) -> Result<Vec<Container>, String> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<PsEntry> = serde_json::from_str(out).map_err(|e| e.to_string())?;
    Ok(entries
        .into_iter()
        .filter_map(|e| {
            let name = e.names.into_iter().next()?;
            let state = match e.state.as_str() {
                "running" => ContainerState::Running,
                "exited" | "created" | "stopped" | "configured" => ContainerState::Stopped,
                _ => ContainerState::Other,
            };
            Some(Container {
                name,
                state,
                exit_code: e.exit_code,
                labels: e.labels.unwrap_or_default(),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_output_is_read() {
        let out = r#"[{"Names":["strait-a-web-7-0"],"State":"exited","ExitCode":3,
            "Labels":{"io.strait.app":"web","io.strait.slot":"0"},"Id":"x"},
            {"Names":["b"],"State":"running","ExitCode":0,"Labels":null},
            {"Names":[],"State":"running"}]"#;
        let containers = parse_ps(out).expect("parse");
        assert_eq!(containers.len(), 2);
        assert_eq!(containers[0].name, "strait-a-web-7-0");
        assert_eq!(containers[0].state, ContainerState::Stopped);
        assert_eq!(containers[0].exit_code, 3);
        assert_eq!(containers[0].labels[LABEL_APP], "web");
        assert_eq!(containers[1].state, ContainerState::Running);
        assert!(parse_ps("").expect("empty").is_empty());
        assert!(parse_ps("not json").is_err());
    }
}
