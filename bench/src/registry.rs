//! `registry`: push and pull ~1 GiB in blobs of mixed sizes against strait's registry and
//! Debian's `docker-registry` (CNCF distribution 2.8), with one client for both: a Rust
//! client here, 4 blobs in flight, speaking the protocol containers/image (skopeo, podman)
//! speaks: `POST` a session, `PATCH` the bytes, `PUT ?digest=`, then the manifest; pulls
//! `GET` the manifest and every blob. (skopeo itself spends ~30 ms of its own per blob, so
//! with it both registries measure the same.) Each round starts each registry afresh on an
//! empty root, so every push uploads everything; participants alternate.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::{free_port, median, require, spawn, wait_port};

#[derive(Serialize)]
pub struct RegistryRow {
    pub participant: String,
    pub push_mb_s: f64,
    pub pull_mb_s: f64,
    pub push: Vec<f64>,
    pub pull: Vec<f64>,
}

/// Blob sizes: (count, bytes). About 960 MiB in all, 661 layers; `quick` divides by 8.
fn blob_plan(quick: bool) -> Vec<(usize, usize)> {
    let scale = if quick { 8 } else { 1 };
    vec![
        (1, (256 << 20) / scale),
        (4, (64 << 20) / scale),
        (16, (16 << 20) / scale),
        (128, (1 << 20) / scale),
        (512, (128 << 10) / scale),
    ]
}

/// Random bytes wrapped as gzip with stored (uncompressed) deflate blocks: skopeo sees a
/// compressed layer and sends it as is, instead of spending the run compressing it.
fn gzip_stored(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut raw = vec![0u8; len];
    for chunk in raw.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(len + len / 60_000 * 5 + 64),
        flate2::Compression::none(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(&raw);
    encoder.finish().unwrap_or_default()
}

type Blob = (String, Arc<Vec<u8>>);

fn blobs(quick: bool) -> Vec<Blob> {
    let mut seed = 1;
    let mut blobs = Vec::new();
    for (count, size) in blob_plan(quick) {
        for _ in 0..count {
            let bytes = gzip_stored(size, seed);
            seed += 1;
            let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
            blobs.push((digest, Arc::new(bytes)));
        }
    }
    blobs
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

fn check(what: &str, response: &ureq::http::Response<ureq::Body>, want: u16) -> anyhow::Result<()> {
    if response.status().as_u16() != want {
        bail!("{what}: status {} (wanted {want})", response.status());
    }
    Ok(())
}

/// The absolute URL of a response's `Location` (registries may send a path).
fn location(base: &str, response: &ureq::http::Response<ureq::Body>) -> anyhow::Result<String> {
    let location = response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .context("no Location")?;
    Ok(if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        location.to_owned()
    })
}

fn push_blob(agent: &ureq::Agent, base: &str, (digest, bytes): &Blob) -> anyhow::Result<()> {
    let response = agent
        .post(format!("{base}/v2/bench/image/blobs/uploads/"))
        .send_empty()?;
    check("POST upload", &response, 202)?;
    let url = location(base, &response)?;
    let response = agent
        .patch(&url)
        .content_type("application/octet-stream")
        .send(&bytes[..])?;
    check("PATCH upload", &response, 202)?;
    let url = location(base, &response)?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let response = agent
        .put(format!("{url}{separator}digest={digest}"))
        .send_empty()?;
    check("PUT upload", &response, 201)
}

/// Runs `work` over `items` on 4 threads.
fn parallel<T: Sync>(
    items: &[T],
    work: impl Fn(&T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        work(item)?;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })
}

/// Pushes every blob and the manifest; returns seconds taken.
fn push(base: &str, blobs: &[Blob], manifest: &[u8]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let agent = agent();
    parallel(blobs, |blob| push_blob(&agent, base, blob))?;
    let response = agent
        .put(format!("{base}/v2/bench/image/manifests/v1"))
        .content_type("application/vnd.oci.image.manifest.v1+json")
        .send(manifest)?;
    check("PUT manifest", &response, 201)?;
    Ok(started.elapsed().as_secs_f64())
}

/// Pulls the manifest and every blob it names; returns seconds taken.
fn pull(base: &str, total: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let agent = agent();
    let mut response = agent
        .get(format!("{base}/v2/bench/image/manifests/v1"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .call()?;
    check("GET manifest", &response, 200)?;
    let manifest: serde_json::Value = serde_json::from_slice(&response.body_mut().read_to_vec()?)?;
    let mut digests = vec![
        manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    for layer in manifest["layers"].as_array().context("no layers")? {
        digests.push(layer["digest"].as_str().unwrap_or_default().to_owned());
    }
    let received = std::sync::atomic::AtomicU64::new(0);
    parallel(&digests, |digest| {
        let mut response = agent
            .get(format!("{base}/v2/bench/image/blobs/{digest}"))
            .call()?;
        check("GET blob", &response, 200)?;
        let n = std::io::copy(&mut response.body_mut().as_reader(), &mut std::io::sink())?;
        received.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    })?;
    let received = received.into_inner();
    if received < total {
        bail!("pulled {received} bytes of {total}");
    }
    Ok(started.elapsed().as_secs_f64())
}

fn manifest(blobs: &[Blob], config: &Blob) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1.len()},
        "layers": blobs.iter().map(|(digest, bytes)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": bytes.len(),
        })).collect::<Vec<_>>(),
    }))?)
}

fn start(name: &str, strait_bin: &Path, root: &Path, port: u16) -> anyhow::Result<crate::Proc> {
    std::fs::create_dir_all(root)?;
    let proc = match name {
        "strait" | "strait-nofsync" => {
            let config = root.join("strait.toml");
            let fsync = name == "strait";
            std::fs::write(&config, format!("[registry]\nfsync = {fsync}\n"))?;
            spawn(
                "strait registry",
                Command::new(strait_bin)
                    .args(["registry", "serve", "--config"])
                    .arg(&config)
                    .arg("--addr")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--root")
                    .arg(root.join("data"))
                    .env("RUST_LOG", "warn"),
            )?
        }
        _ => {
            let config = root.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    root.join("data").display()
                ),
            )?;
            spawn(
                "docker-registry",
                Command::new("docker-registry").arg("serve").arg(&config),
            )?
        }
    };
    wait_port(port, name)?;
    Ok(proc)
}

pub fn scenario(quick: bool, dir: &Path, strait_bin: &Path) -> anyhow::Result<Vec<RegistryRow>> {
    require("docker-registry", "docker-registry")?;
    let mut blobs = blobs(quick);
    let config_bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": blobs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()},
    }))?;
    let config: Blob = (
        format!("sha256:{}", hex(&Sha256::digest(&config_bytes))),
        Arc::new(config_bytes),
    );
    let manifest = manifest(&blobs, &config)?;
    blobs.push(config);
    let total: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
    let mb = total as f64 / 1e6;
    eprintln!("registry: {mb:.0} MB in {} blobs", blobs.len());
    let rounds = if quick { 1 } else { 3 };
    let participants = ["docker-registry", "strait", "strait-nofsync"];
    let mut results: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 1..=rounds {
        for name in participants {
            let root = dir.join(format!("registry-{name}-{round}"));
            let port = free_port()?;
            let proc = start(name, strait_bin, &root, port)?;
            let base = format!("http://127.0.0.1:{port}");
            let push = push(&base, &blobs, &manifest)?;
            let pull = pull(&base, total)?;
            // Roots stay until the end: deleting a GiB of files right before the next
            // participant's run would slow its inode allocation (ext4 avoids reusing
            // recently freed inodes), a cost neither registry causes in service.
            drop(proc);
            // Untimed: flush what this participant left in the page cache, so that its
            // writeback does not land in the next participant's measurement.
            let _ = Command::new("sync").status();
            eprintln!(
                "round {round} {name}: push {:.0} MB/s, pull {:.0} MB/s",
                mb / push,
                mb / pull
            );
            let entry = results.entry(name).or_default();
            entry.0.push(mb / push);
            entry.1.push(mb / pull);
        }
    }
    Ok(participants
        .iter()
        .map(|name| {
            let (mut push, mut pull) = results.remove(name).unwrap_or_default();
            RegistryRow {
                participant: name.to_string(),
                push_mb_s: median(&mut push),
                pull_mb_s: median(&mut pull),
                push,
                pull,
            }
        })
        .collect())
}

pub fn print(rows: &[RegistryRow]) {
    println!("\n## registry (~1 GiB in 662 blobs, 4 in flight, push then pull, medians)\n");
    println!("| participant | push MB/s | pull MB/s |\n|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} |",
            r.participant, r.push_mb_s, r.pull_mb_s
        );
    }
    let get = |name: &str| rows.iter().find(|r| r.participant == name);
    for name in ["strait", "strait-nofsync"] {
        if let (Some(strait), Some(peer)) = (get(name), get("docker-registry")) {
            println!(
                "\n{name}/docker-registry push {:.2}, pull {:.2}",
                strait.push_mb_s / peer.push_mb_s.max(0.001),
                strait.pull_mb_s / peer.pull_mb_s.max(0.001)
            );
        }
    }
}
