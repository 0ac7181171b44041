//! `build`: a ~200 MB tree made into a one-layer image by `strait build` and by umoci
//! (`init`, `new`, `insert`: the same layering), each from a cold cache; then the same
//! plus a push to strait's registry (umoci's image pushed by `skopeo copy`). Participants
//! alternate each round; every run starts from nothing (fresh cache, fresh layout, a fresh
//! registry for each push), so every layer is built, compressed and uploaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{free_port, median, require, spawn, wait_port};

#[derive(Serialize)]
pub struct BuildRow {
    pub participant: String,
    /// Median seconds to build the image into an OCI layout.
    pub build_s: f64,
    /// Median seconds to build it and push it to the registry.
    pub build_push_s: f64,
    /// Size of the compressed layer.
    pub layer_bytes: u64,
    pub build: Vec<f64>,
    pub build_push: Vec<f64>,
}

/// Copies regular files from the system's /usr (sorted, each ≤ 30 MB) until `target`
/// bytes: shared libraries, data and text, as an application tree would hold.
fn make_tree(dir: &Path, target: u64) -> anyhow::Result<(u64, usize)> {
    fn walk(
        src: &Path,
        rel: &Path,
        out: &Path,
        target: u64,
        total: &mut u64,
        files: &mut usize,
    ) -> anyhow::Result<()> {
        let Ok(read) = std::fs::read_dir(src) else {
            return Ok(());
        };
        let mut entries: Vec<_> = read.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if *total >= target {
                return Ok(());
            }
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let rel = rel.join(entry.file_name());
            if meta.is_dir() {
                walk(&entry.path(), &rel, out, target, total, files)?;
            } else if meta.is_file() && meta.len() <= 30 << 20 {
                let to = out.join(&rel);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if std::fs::copy(entry.path(), &to).is_ok() {
                    *total += meta.len();
                    *files += 1;
                }
            }
        }
        Ok(())
    }
    let mut total = 0;
    let mut files = 0;
    for root in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/share",
        "/usr/lib",
        "/usr/bin",
    ] {
        let name = root.trim_start_matches("/usr/").replace('/', "_");
        walk(
            Path::new(root),
            Path::new(&name),
            dir,
            target,
            &mut total,
            &mut files,
        )?;
    }
    if total < target / 2 {
        bail!("found only {total} bytes of files under /usr for the tree");
    }
    Ok((total, files))
}

fn timed(what: &str, command: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(seconds)
}

fn largest_blob(layout: &Path) -> u64 {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .map(|read| {
            read.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// One run of `name`; returns (seconds, layer bytes).
fn run(
    name: &str,
    strait: &Path,
    work: &Path,
    tree: &Path,
    push: Option<&str>,
) -> anyhow::Result<(f64, u64)> {
    std::fs::create_dir_all(work)?;
    let layout = work.join("layout");
    match name {
        "strait" => {
            let config = work.join("strait-build.toml");
            std::fs::write(
                &config,
                format!(
                    "base = \"scratch\"\nentrypoint = [\"/app/run\"]\n\n[[layer]]\nsrc = \"{}/\"\ndest = \"/app/\"\n",
                    tree.display()
                ),
            )?;
            let mut command = Command::new(strait);
            command
                .arg("build")
                .arg("-q")
                .arg("-f")
                .arg(&config)
                .arg("--cache-dir")
                .arg(work.join("cache"));
            match push {
                Some(reference) => command.args(["--push", reference]),
                None => command.arg("--oci-dir").arg(&layout),
            };
            let seconds = timed("strait build", &mut command)?;
            let blobs = work.join("cache");
            Ok((seconds, largest_blob(&blobs)))
        }
        _ => {
            let image = format!("{}:t", layout.display());
            let script = format!(
                "umoci init --layout '{layout}' && umoci new --image '{image}' && umoci insert --image '{image}' '{tree}' /app{push}",
                layout = layout.display(),
                tree = tree.display(),
                push = push
                    .map(|r| format!(
                        " && skopeo copy -q --dest-tls-verify=false 'oci:{image}' 'docker://{r}'"
                    ))
                    .unwrap_or_default(),
            );
            let seconds = timed("umoci", Command::new("sh").arg("-c").arg(script))?;
            Ok((seconds, largest_blob(&layout)))
        }
    }
}

pub fn scenario(quick: bool, dir: &Path, strait: &Path) -> anyhow::Result<Vec<BuildRow>> {
    require("umoci", "umoci")?;
    require("skopeo", "skopeo")?;
    let tree = dir.join("build-tree");
    let target = if quick { 25 << 20 } else { 200 << 20 };
    let (bytes, files) = make_tree(&tree, target)?;
    eprintln!(
        "build: a tree of {:.0} MB in {files} files",
        bytes as f64 / 1e6
    );

    let rounds = if quick { 1 } else { 5 };
    let participants = ["umoci", "strait"];
    let mut results: BTreeMap<&str, (Vec<f64>, Vec<f64>, u64)> = BTreeMap::new();
    for round in 1..=rounds {
        for name in participants {
            let work: PathBuf = dir.join(format!("build-{name}-{round}"));
            let (build, layer) = run(name, strait, &work.join("build"), &tree, None)?;
            // A registry of its own per push: with one shared registry, skopeo's blob-info
            // cache mounts the previous round's layer instead of uploading it.
            let port = free_port()?;
            let registry = spawn(
                "strait registry",
                Command::new(strait)
                    .args(["registry", "serve", "--addr"])
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--root")
                    .arg(work.join("registry")),
            )?;
            wait_port(port, "strait registry")?;
            let reference = format!("127.0.0.1:{port}/{name}/app:v1");
            let (build_push, _) = run(name, strait, &work.join("push"), &tree, Some(&reference))?;
            drop(registry);
            eprintln!("round {round} {name}: build {build:.2}s, build+push {build_push:.2}s");
            let entry = results.entry(name).or_default();
            entry.0.push(build);
            entry.1.push(build_push);
            entry.2 = layer;
            // The work directories go now: the next participant should not pay for them.
            let _ = std::fs::remove_dir_all(&work);
        }
    }
    Ok(participants
        .iter()
        .map(|name| {
            let (mut build, mut build_push, layer_bytes) = results.remove(name).unwrap_or_default();
            BuildRow {
                participant: name.to_string(),
                build_s: median(&mut build),
                build_push_s: median(&mut build_push),
                layer_bytes,
                build,
                build_push,
            }
        })
        .collect())
}

pub fn print(rows: &[BuildRow]) {
    println!("\n## build (~200 MB tree, one layer, cold cache, medians)\n");
    println!("| participant | build s | build+push s | layer MB |\n|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.2} | {:.1} |",
            r.participant,
            r.build_s,
            r.build_push_s,
            r.layer_bytes as f64 / 1e6
        );
    }
    let get = |name: &str| rows.iter().find(|r| r.participant == name);
    if let (Some(strait), Some(peer)) = (get("strait"), get("umoci")) {
        println!(
            "\numoci/strait build {:.2}x, build+push {:.2}x",
            peer.build_s / strait.build_s.max(0.001),
            peer.build_push_s / strait.build_push_s.max(0.001)
        );
    }
}
