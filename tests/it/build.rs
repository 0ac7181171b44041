//! `strait build`: images checked with real clients (umoci, skopeo), pushed to strait's own
//! registry, rebuilt for reproducibility, and refused on bad input.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Registry, STRAIT, free_port};

/// The result of one `strait build`.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The image digest: the last line of stdout.
    fn digest(&self) -> String {
        assert!(self.ok, "build failed:\n{}\n{}", self.stdout, self.stderr);
        let last = self.stdout.lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("sha256:"),
            "no digest line in {:?}",
            self.stdout
        );
        last
    }

    /// The stdout line starting with `prefix`.
    fn line(&self, prefix: &str) -> String {
        self.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{}\n{}", self.stdout, self.stderr))
            .to_string()
    }
}

/// Runs `strait build -f <dir>/strait-build.toml --cache-dir <cache> ARGS`.
fn build(dir: &Path, cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(STRAIT)
        .arg("build")
        .arg("-f")
        .arg(dir.join("strait-build.toml"))
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env_remove("STRAIT_REGISTRY_AUTH")
        .env_remove("SOURCE_DATE_EPOCH")
        .env("DOCKER_CONFIG", dir.join("no-docker-config"))
        .envs(env.iter().copied())
        .output()
        .expect("run strait build");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn touch(path: &Path, epoch: u64) {
    let status = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{epoch}"))
        .arg(path)
        .status()
        .expect("touch");
    assert!(status.success());
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `umoci unpack` of `layout:tag` into a new bundle; returns its rootfs.
fn unpack(layout: &Path, tag: &str, into: &Path) -> PathBuf {
    let image = format!("{}:{tag}", layout.display());
    run("umoci", &["unpack", "--image", &image, path_str(into)]);
    into.join("rootfs")
}

/// The layer digests of the manifest `layout:tag` names.
fn layout_layers(layout: &Path) -> Vec<String> {
    let index = json(&fs::read_to_string(layout.join("index.json")).expect("index.json"));
    let digest = index["manifests"][0]["digest"].as_str().expect("digest");
    let manifest = json(
        &fs::read_to_string(layout.join("blobs/sha256").join(&digest[7..])).expect("manifest"),
    );
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// A two-layer app: a binary-ish tree and a config directory with an owner and a mode.
fn app_tree(dir: &Path, mtime: u64) {
    write(
        &dir.join("dist/hello"),
        b"#!/bin/sh\necho \"$GREETING\"\n",
        0o775,
    );
    write(&dir.join("dist/lib/data.txt"), b"some data\n", 0o664);
    write(&dir.join("conf/app.conf"), b"port = 8080\n", 0o644);
    write(&dir.join("conf/old.bak"), b"stale\n", 0o644);
    for path in [
        "dist/hello",
        "dist/lib/data.txt",
        "conf/app.conf",
        "conf/old.bak",
    ] {
        touch(&dir.join(path), mtime);
    }
    fs::write(
        dir.join("strait-build.toml"),
        r#"base = "scratch"
entrypoint = ["/app/hello"]
cmd = ["--greet"]
env = { GREETING = "hi" }
workdir = "/app"
user = "1000:1000"
ports = [8080, "53/udp"]
labels = { "org.example.team" = "edge" }

[[layer]]
src = "dist/"
dest = "/app/"

[[layer]]
src = "conf/"
dest = "/etc/hello/"
mode = "0640"
owner = "1000:100"
exclude = ["*.bak"]
"#,
    )
    .expect("write config");
}

#[test]
fn the_minimal_config_builds_as_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(&dir.join("dist/hello"), b"#!/bin/sh\necho hi\n", 0o755);
    fs::write(
        dir.join("strait-build.toml"),
        "base = \"scratch\"\nentrypoint = [\"/app/hello\"]\nenv = { GREETING = \"hi\" }\n\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n",
    )
    .expect("write config");
    let out = dir.join("image");
    let run = build(dir, &dir.join("cache"), &["--oci-dir", path_str(&out)], &[]);
    let digest = run.digest();
    // The same on every machine and every build of strait: a change here means images
    // built before it no longer reproduce (see docs/builder.md, reproducibility rules).
    assert_eq!(
        digest,
        "sha256:8781de5bfe685ee995ccd1dea85d2faad0a623e5608a17758b0f44747aa58024"
    );
    let inspect = json(&run_skopeo_oci(&out, "latest", false));
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Env"], serde_json::json!(["GREETING=hi"]));
    let config = json(&run_skopeo_oci(&out, "latest", true));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/app/hello"])
    );
    let rootfs = unpack(&out, "latest", &dir.join("bundle"));
    assert_eq!(
        fs::read(rootfs.join("app/hello")).expect("hello"),
        b"#!/bin/sh\necho hi\n"
    );
}

fn run_skopeo_oci(layout: &Path, tag: &str, config: bool) -> String {
    let image = format!("oci:{}:{tag}", layout.display());
    let mut args = vec!["inspect"];
    if config {
        args.push("--config");
    }
    args.push(&image);
    run("skopeo", &args)
}

#[test]
fn oci_layout_unpacks_with_umoci_and_inspects_with_skopeo() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    app_tree(dir, 1_650_000_000);
    let out = dir.join("out/image");
    let run = build(
        dir,
        &dir.join("cache"),
        &["--oci-dir", path_str(&out), "--tag", "v1"],
        &[],
    );
    let digest = run.digest();
    assert_eq!(run.line("layers:"), "layers: 2 built, 0 cached");

    let layout = json(&fs::read_to_string(out.join("oci-layout")).expect("oci-layout"));
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index = json(&fs::read_to_string(out.join("index.json")).expect("index.json"));
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );

    let inspect = json(&run_skopeo_oci(&out, "v1", false));
    assert_eq!(inspect["Env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(inspect["Labels"]["org.example.team"], "edge");
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(2));
    let config = json(&run_skopeo_oci(&out, "v1", true));
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/app/hello"]));
    assert_eq!(c["Cmd"], serde_json::json!(["--greet"]));
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "53/udp": {}})
    );
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(2)
    );

    let rootfs = unpack(&out, "v1", &dir.join("bundle"));
    let meta =
        |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    // Modes normalised (0775 -> 0755, 0664 -> 0644), root-owned unless the layer says.
    assert_eq!(meta("app/hello").mode() & 0o7777, 0o755);
    assert_eq!(meta("app/lib/data.txt").mode() & 0o7777, 0o644);
    assert_eq!((meta("app/hello").uid(), meta("app/hello").gid()), (0, 0));
    assert_eq!(
        fs::read(rootfs.join("app/hello")).expect("read"),
        b"#!/bin/sh\necho \"$GREETING\"\n"
    );
    // The second layer: mode and owner as configured, *.bak excluded.
    let conf = meta("etc/hello/app.conf");
    assert_eq!(conf.mode() & 0o7777, 0o640);
    assert_eq!((conf.uid(), conf.gid()), (1000, 100));
    assert_eq!(
        (meta("etc/hello").uid(), meta("etc/hello").mode() & 0o7777),
        (1000, 0o755)
    );
    assert_eq!((meta("etc").uid(), meta("etc").mode() & 0o7777), (0, 0o755));
    assert!(!rootfs.join("etc/hello/old.bak").exists());
    assert_eq!(meta("app/hello").mtime(), 0);

    // Building again: both layers come from the cache, the digest is the same, and the
    // layout is replaced whole.
    let again = build(
        dir,
        &dir.join("cache"),
        &["--oci-dir", path_str(&out), "--tag", "v1"],
        &[],
    );
    assert_eq!(again.digest(), digest);
    assert_eq!(again.line("layers:"), "layers: 0 built, 2 cached");
    let leftovers: Vec<String> = fs::read_dir(dir.join("out"))
        .expect("read out")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["image"]);
}

#[test]
fn reproducible_across_copies_and_mtimes_and_one_change_changes_one_layer() {
    let one = tempfile::tempdir().expect("tempdir");
    let two = tempfile::tempdir().expect("tempdir");
    app_tree(one.path(), 1_600_000_000);
    app_tree(two.path(), 1_700_000_000);
    // Different permission bits within the same class (umask 002 vs 022) do not matter.
    fs::set_permissions(
        one.path().join("dist/hello"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let out_one = one.path().join("image");
    let out_two = two.path().join("image");
    let first = build(
        one.path(),
        &one.path().join("cache"),
        &["--oci-dir", path_str(&out_one)],
        &[],
    );
    let second = build(
        two.path(),
        &two.path().join("cache"),
        &["--oci-dir", path_str(&out_two)],
        &[],
    );
    assert_eq!(first.digest(), second.digest());
    assert_eq!(layout_layers(&out_one), layout_layers(&out_two));

    // SOURCE_DATE_EPOCH moves every timestamp, reproducibly.
    let dated = build(
        two.path(),
        &two.path().join("cache"),
        &[],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert_ne!(dated.digest(), first.digest());
    let dated_again = build(
        one.path(),
        &one.path().join("cache"),
        &[],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert_eq!(dated.digest(), dated_again.digest());
    // The latest time a tar header holds is fine; a second later is refused, not
    // silently written as 1970.
    let latest = build(
        one.path(),
        &one.path().join("cache"),
        &[],
        &[("SOURCE_DATE_EPOCH", "8589934591")],
    );
    latest.digest();
    for (value, message) in [
        ("8589934592", "the latest time a tar header holds"),
        ("soon", "is not a number of seconds"),
    ] {
        let refused = build(
            one.path(),
            &one.path().join("cache"),
            &[],
            &[("SOURCE_DATE_EPOCH", value)],
        );
        assert!(
            !refused.ok && refused.stderr.contains(message),
            "SOURCE_DATE_EPOCH={value}: {}",
            refused.stderr
        );
    }

    // One changed file: only its layer changes.
    write(&two.path().join("conf/app.conf"), b"port = 9090\n", 0o644);
    let changed = build(
        two.path(),
        &two.path().join("cache"),
        &["--oci-dir", path_str(&out_two)],
        &[],
    );
    assert_ne!(changed.digest(), first.digest());
    assert_eq!(changed.line("layers:"), "layers: 1 built, 1 cached");
    let before = layout_layers(&out_one);
    let after = layout_layers(&out_two);
    assert_eq!(before[0], after[0], "the unchanged layer kept its digest");
    assert_ne!(before[1], after[1], "the changed layer has a new digest");

    // zstd: another compressor is another blob, never a stale one from the cache.
    let config = fs::read_to_string(two.path().join("strait-build.toml")).expect("read");
    fs::write(
        two.path().join("strait-build.toml"),
        format!("compression = \"zstd\"\n{config}"),
    )
    .expect("write");
    let zstd_out = two.path().join("zstd");
    let zstd = build(
        two.path(),
        &two.path().join("cache"),
        &["--oci-dir", path_str(&zstd_out)],
        &[],
    );
    assert_eq!(zstd.line("layers:"), "layers: 2 built, 0 cached");
    let raw = json(&run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", zstd_out.display()),
        ],
    ));
    assert_eq!(
        raw["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    // Same tars (diff_ids), other blobs. (Debian's umoci cannot unpack zstd layers; the
    // unit tests decompress them.)
    let gzip_config = json(&run_skopeo_oci(&out_two, "latest", true));
    let zstd_config = json(&run_skopeo_oci(&zstd_out, "latest", true));
    assert_eq!(gzip_config["rootfs"], zstd_config["rootfs"]);
    let zstd_layers = layout_layers(&zstd_out);
    assert!(zstd_layers.iter().all(|l| !after.contains(l)));
}

#[test]
fn push_to_the_registry_then_only_changed_layers_are_uploaded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    app_tree(dir, 1_650_000_000);
    let registry = Registry::start(&dir.join("registry"));
    let target = format!("{}/team/hello:v1", registry.host());
    let cache = dir.join("cache");
    let first = build(dir, &cache, &["--push", &target], &[]);
    let digest = first.digest();
    assert_eq!(
        first.line("blobs:"),
        "blobs: 3 uploaded, 0 present, 0 mounted"
    );

    let inspect = json(&run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ],
    ));
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(inspect["Labels"]["org.example.team"], "edge");
    let config = json(&run(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ],
    ));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/app/hello"])
    );
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "53/udp": {}})
    );

    // Pulled back with skopeo and unpacked with umoci: the files, modes and owners.
    let pulled = dir.join("pulled");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{target}"),
            &format!("oci:{}:v1", pulled.display()),
        ],
    );
    let rootfs = unpack(&pulled, "v1", &dir.join("bundle"));
    let conf = fs::metadata(rootfs.join("etc/hello/app.conf")).expect("app.conf");
    assert_eq!(
        (conf.mode() & 0o7777, conf.uid(), conf.gid()),
        (0o640, 1000, 100)
    );
    let hello = fs::metadata(rootfs.join("app/hello")).expect("hello");
    assert_eq!((hello.mode() & 0o7777, hello.uid()), (0o755, 0));

    // Pushing the same image again uploads nothing.
    let again = build(dir, &cache, &["--push", &target], &[]);
    assert_eq!(again.digest(), digest);
    assert_eq!(
        again.line("blobs:"),
        "blobs: 0 uploaded, 3 present, 0 mounted"
    );

    // One changed file: that layer and the config are uploaded, the other layer is not.
    write(&dir.join("dist/lib/data.txt"), b"other data\n", 0o644);
    let target2 = format!("{}/team/hello:v2", registry.host());
    let changed = build(dir, &cache, &["--push", &target2], &[]);
    assert_ne!(changed.digest(), digest);
    assert_eq!(changed.line("layers:"), "layers: 1 built, 1 cached");
    assert_eq!(
        changed.line("blobs:"),
        "blobs: 2 uploaded, 1 present, 0 mounted"
    );
    let inspect = json(&run(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{target2}"),
        ],
    ));
    assert_eq!(inspect["Digest"], changed.digest().as_str());
}

/// Pushes a small base image (a "tool" and a PATH) to `registry` as `base/tools:1`.
fn push_base(registry: &Registry, root: &Path) -> String {
    let base_dir = root.join("base");
    write(
        &base_dir.join("tools/greet"),
        b"#!/bin/sh\necho base\n",
        0o755,
    );
    write(&base_dir.join("tools/big.bin"), &vec![42u8; 300_000], 0o644);
    fs::write(
        base_dir.join("strait-build.toml"),
        "env = { PATH = \"/usr/local/bin:/usr/bin\", LANG = \"C\" }\ncmd = [\"greet\"]\nlabels = { tier = \"base\" }\n\n[[layer]]\nsrc = \"tools/\"\ndest = \"/usr/local/bin/\"\n",
    )
    .expect("write base config");
    let reference = format!("{}/base/tools:1", registry.host());
    build(
        &base_dir,
        &root.join("base-cache"),
        &["--push", &reference],
        &[],
    )
    .digest();
    reference
}

/// An app over `base`: `src/main.sh` as the layer `/app/`, with `top` and `layer` lines
/// added to its build file. Returns the app's directory.
fn app_on_base(root: &Path, base: &str, top: &str, layer: &str) -> PathBuf {
    let app = root.join("app");
    write(&app.join("src/main.sh"), b"echo app\n", 0o644);
    fs::write(
        app.join("strait-build.toml"),
        format!("base = \"{base}\"\n{top}\n[[layer]]\nsrc = \"src/\"\ndest = \"/app/\"\n{layer}"),
    )
    .expect("write app config");
    app
}

#[test]
fn base_image_from_the_registry_is_pulled_once_and_mounted_on_push() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let registry = Registry::start(&root.join("registry"));
    let base = push_base(&registry, root);
    let app = app_on_base(
        root,
        &base,
        "entrypoint = [\"/bin/sh\", \"/app/main.sh\"]\nenv = { LANG = \"C.UTF-8\" }\n",
        "",
    );
    let cache = root.join("cache");
    let target = format!("{}/apps/web:1", registry.host());
    let first = build(&app, &cache, &["--push", &target], &[]);
    let digest = first.digest();
    assert_eq!(
        first.line("base blobs:"),
        "base blobs: 2 downloaded, 0 cached"
    );
    // The base layer is mounted from base/tools; our layer and config are uploaded.
    assert_eq!(
        first.line("blobs:"),
        "blobs: 2 uploaded, 0 present, 1 mounted"
    );

    // The rebuild finds the base's config and layer in the cache.
    let out = root.join("image");
    let second = build(&app, &cache, &["--oci-dir", path_str(&out)], &[]);
    assert_eq!(second.digest(), digest);
    assert_eq!(
        second.line("base blobs:"),
        "base blobs: 0 downloaded, 2 cached"
    );
    assert_eq!(second.line("layers:"), "layers: 0 built, 1 cached");

    // The config extends the base's: its env (ours overriding), its labels, its layers.
    let config = json(&run_skopeo_oci(&out, "latest", true));
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["LANG=C.UTF-8", "PATH=/usr/local/bin:/usr/bin"])
    );
    assert_eq!(config["config"]["Labels"]["tier"], "base");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "/app/main.sh"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        Value::Null,
        "a new entrypoint drops the base's cmd"
    );
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(config["history"].as_array().map(Vec::len), Some(2));
    let rootfs = unpack(&out, "latest", &root.join("bundle"));
    assert_eq!(
        fs::read(rootfs.join("usr/local/bin/greet")).expect("greet"),
        b"#!/bin/sh\necho base\n"
    );
    assert_eq!(
        fs::read(rootfs.join("app/main.sh")).expect("main.sh"),
        b"echo app\n"
    );
}

#[test]
fn templates_and_multi_platform_index() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(&dir.join("bin/amd64/hello"), b"amd64 binary", 0o755);
    write(&dir.join("bin/arm64/hello"), b"arm64 binary", 0o755);
    // The five-line config of a static binary, for two platforms.
    fs::write(
        dir.join("strait-build.toml"),
        "template = \"static-binary\"\nbinary = \"bin/{arch}/hello\"\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\nports = [8080]\nenv = { RUST_LOG = \"info\" }\n",
    )
    .expect("write config");
    let out = dir.join("image");
    let run_ = build(dir, &dir.join("cache"), &["--oci-dir", path_str(&out)], &[]);
    let digest = run_.digest();
    assert_eq!(run_.line("layers:"), "layers: 2 built, 0 cached");
    let raw = json(&run(
        "skopeo",
        &["inspect", "--raw", &format!("oci:{}:latest", out.display())],
    ));
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    let platforms: Vec<String> = raw["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or(""),
                m["platform"]["architecture"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    let arm = json(&run(
        "skopeo",
        &[
            "--override-arch",
            "arm64",
            "inspect",
            "--config",
            &format!("oci:{}:latest", out.display()),
        ],
    ));
    assert_eq!(arm["architecture"], "arm64");
    assert_eq!(
        arm["config"]["Entrypoint"],
        serde_json::json!(["/app/hello"])
    );
    assert_eq!(arm["config"]["User"], "65534:65534");

    // Pushed as an index, by the same digest.
    let registry = Registry::start(&dir.join("registry"));
    let target = format!("{}/multi/hello:1", registry.host());
    let pushed = build(dir, &dir.join("cache"), &["--push", &target], &[]);
    assert_eq!(pushed.digest(), digest);
    assert_eq!(
        pushed.line("blobs:"),
        "blobs: 4 uploaded, 0 present, 0 mounted"
    );
    let remote = json(&run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ],
    ));
    assert_eq!(remote, raw);

    // That index as a base: the build picks the platform's manifest and inherits its config.
    let app = dir.join("on-index");
    write(&app.join("extra/note.txt"), b"note", 0o644);
    fs::write(
        app.join("strait-build.toml"),
        format!(
            "base = \"{target}\"\nplatforms = [\"linux/arm64\"]\n\n[[layer]]\nsrc = \"extra/\"\ndest = \"/etc/\"\n"
        ),
    )
    .expect("write config");
    let image = app.join("image");
    let on_index = build(
        &app,
        &dir.join("cache2"),
        &["--oci-dir", path_str(&image)],
        &[],
    );
    on_index.digest();
    assert_eq!(
        on_index.line("base blobs:"),
        "base blobs: 2 downloaded, 0 cached"
    );
    let config = json(&run_skopeo_oci(&image, "latest", true));
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/app/hello"])
    );
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(2)
    );
    let rootfs = unpack(&image, "latest", &app.join("bundle"));
    assert_eq!(
        fs::read(rootfs.join("app/hello")).expect("hello"),
        b"arm64 binary"
    );
    assert_eq!(
        fs::read(rootfs.join("etc/note.txt")).expect("note"),
        b"note"
    );
}

fn htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    use std::io::Write;
    let mut child = Command::new(STRAIT)
        .args(["registry", "passwd", user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("strait registry passwd");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write password");
    let output = child.wait_with_output().expect("wait");
    assert!(output.status.success());
    let path = dir.join("htpasswd");
    fs::write(&path, &output.stdout).expect("write htpasswd");
    path
}

#[test]
fn push_with_credentials_through_the_token_flow() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    app_tree(dir, 1_650_000_000);
    let file = htpasswd(dir, "ci", "s3cret-pass");
    let registry = Registry::start_with(&dir.join("registry"), &["--htpasswd", path_str(&file)]);
    let target = format!("{}/secure/app:v1", registry.host());
    let cache = dir.join("cache");
    let out = dir.join("image");

    // No credentials: refused, with the reference named, and no layout written.
    let refused = build(
        dir,
        &cache,
        &["--push", &target, "--oci-dir", path_str(&out)],
        &[],
    );
    assert!(!refused.ok, "push without credentials succeeded");
    assert!(
        refused.stderr.contains(&format!("pushing {target}"))
            && refused.stderr.contains("credentials"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists());

    // Wrong password: refused.
    let wrong = build(dir, &cache, &["--push", &target, "--user", "ci:nope"], &[]);
    assert!(!wrong.ok);
    assert!(
        wrong.stderr.contains("authentication failed"),
        "{}",
        wrong.stderr
    );

    // --user, through the Bearer token flow.
    let pushed = build(
        dir,
        &cache,
        &["--push", &target, "--user", "ci:s3cret-pass"],
        &[],
    );
    let digest = pushed.digest();
    assert_eq!(
        pushed.line("blobs:"),
        "blobs: 3 uploaded, 0 present, 0 mounted"
    );

    // Docker's config.json `auths`, and the environment variable.
    let docker = dir.join("docker");
    fs::create_dir_all(&docker).expect("mkdir");
    fs::write(
        docker.join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"Y2k6czNjcmV0LXBhc3M=\"}}}}}}",
            registry.host()
        ),
    )
    .expect("write docker config");
    let target2 = format!("{}/secure/app:v2", registry.host());
    let via_docker = build(
        dir,
        &cache,
        &["--push", &target2],
        &[("DOCKER_CONFIG", path_str(&docker))],
    );
    assert_eq!(via_docker.digest(), digest);
    assert_eq!(
        via_docker.line("blobs:"),
        "blobs: 0 uploaded, 3 present, 0 mounted"
    );
    let via_env = build(
        dir,
        &cache,
        &["--push", &target2],
        &[("STRAIT_REGISTRY_AUTH", "ci:s3cret-pass")],
    );
    assert_eq!(via_env.digest(), digest);

    // A docker credential helper named by `credHelpers` (docker's protocol: the server on
    // stdin, JSON on stdout); one that fails is an error naming it.
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    let asked = dir.join("helper-asked");
    write(
        &bin.join("docker-credential-strait-test"),
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\ncat > {}\necho '{{\"ServerURL\":\"x\",\"Username\":\"ci\",\"Secret\":\"s3cret-pass\"}}'\n",
            asked.display()
        )
        .as_bytes(),
        0o755,
    );
    write(
        &bin.join("docker-credential-broken"),
        b"#!/bin/sh\necho 'keychain locked' >&2\nexit 1\n",
        0o755,
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let helpers = dir.join("docker-helpers");
    fs::create_dir_all(&helpers).expect("mkdir");
    fs::write(
        helpers.join("config.json"),
        format!(
            "{{\"auths\": {{\"{host}\": {{}}}}, \"credHelpers\": {{\"{host}\": \"strait-test\"}}}}",
            host = registry.host()
        ),
    )
    .expect("write docker config");
    let target3 = format!("{}/secure/app:v3", registry.host());
    let via_helper = build(
        dir,
        &cache,
        &["--push", &target3],
        &[
            ("DOCKER_CONFIG", path_str(&helpers)),
            ("PATH", path.as_str()),
        ],
    );
    assert_eq!(via_helper.digest(), digest);
    assert_eq!(
        fs::read_to_string(&asked).expect("the helper ran"),
        registry.host()
    );
    fs::write(helpers.join("config.json"), "{\"credsStore\": \"broken\"}")
        .expect("write docker config");
    let broken = build(
        dir,
        &cache,
        &["--push", &target3],
        &[
            ("DOCKER_CONFIG", path_str(&helpers)),
            ("PATH", path.as_str()),
        ],
    );
    assert!(!broken.ok, "a failing helper must fail the push");
    assert!(
        broken
            .stderr
            .contains("docker-credential-broken get failed")
            && broken.stderr.contains("keychain locked"),
        "{}",
        broken.stderr
    );
}

/// `builder::resolve`, the library call that names a tag's manifest digest (for
/// deploying by digest), against strait's registry (anonymous pull, credentials set up).
#[test]
fn resolve_names_the_digest_a_tag_was_pushed_as() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    app_tree(dir, 1_650_000_000);
    let file = htpasswd(dir, "ci", "s3cret-pass");
    let registry = Registry::start_with(&dir.join("registry"), &["--htpasswd", path_str(&file)]);
    let target = format!("{}/deploy/app:v1", registry.host());
    let pushed = build(
        dir,
        &dir.join("cache"),
        &["--push", &target, "--user", "ci:s3cret-pass"],
        &[],
    );
    let digest = pushed.digest();

    let access = builder::access(false, &[], Some("ci:s3cret-pass"), None).expect("access");
    let (reference, resolved) = builder::resolve(&target, &access).expect("resolve the tag");
    assert_eq!(reference.repository, "deploy/app");
    assert_eq!(resolved.digest.as_str(), digest);
    assert_eq!(
        resolved.media_type.to_string(),
        "application/vnd.oci.image.manifest.v1+json"
    );
    let pinned = format!("{}/deploy/app@{digest}", registry.host());
    let (_, by_digest) = builder::resolve(&pinned, &access).expect("resolve the digest");
    assert_eq!(by_digest, resolved);

    let missing = builder::resolve(&format!("{}/deploy/app:v9", registry.host()), &access)
        .expect_err("no such tag");
    // A HEAD: the status, no error body.
    assert!(
        missing.to_string().ends_with("manifest deploy/app:v9: 404"),
        "{missing}"
    );
    assert!(builder::resolve("Not/A:ref:", &access).is_err());
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(&dir.join("dist/hello"), b"hi", 0o755);
    let registry = Registry::start(&dir.join("registry"));
    let dead = format!("127.0.0.1:{}", free_port());
    let s = |t: &str| t.to_string();
    let cases: Vec<(&str, String, Vec<String>, Vec<String>)> = vec![
        (
            "missing src",
            "base = \"scratch\"\n\n[[layer]]\nsrc = \"nope/\"\ndest = \"/app/\"\n".into(),
            vec![],
            vec![s("strait-build.toml:4:7"), s("layer[0].src"), s("`nope/` does not exist")],
        ),
        (
            "unknown key",
            "base = \"scratch\"\nentrypont = [\"/x\"]\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n".into(),
            vec![],
            vec![s("strait-build.toml:2:1"), s("unknown field `entrypont`")],
        ),
        (
            "bad base reference",
            "base = \"UPPER/case\"\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n".into(),
            vec![],
            vec![s("strait-build.toml:1:8"), s("key `base`"), s("invalid image reference `UPPER/case`")],
        ),
        (
            "bad push reference",
            "[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n".into(),
            vec!["--push".into(), "127.0.0.1:5000/Bad:tag".into()],
            vec![s("invalid image reference `127.0.0.1:5000/Bad:tag`")],
        ),
        (
            "unreachable registry",
            "[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n".into(),
            vec!["--push".into(), format!("{dead}/app:v1")],
            vec![format!("pushing {dead}/app:v1"), s("cannot reach")],
        ),
        (
            "missing base image",
            format!("base = \"{}/nope/base:1\"\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n", registry.host()),
            vec![],
            vec![format!("base image {}/nope/base:1", registry.host()), s("404")],
        ),
        (
            "unreachable base registry",
            format!("base = \"{dead}/base:1\"\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n"),
            vec![],
            vec![format!("base image {dead}/base:1"), s("cannot reach")],
        ),
    ];
    for (name, config, args, wanted) in cases {
        fs::write(dir.join("strait-build.toml"), config).expect("write config");
        let out = dir.join("out").join("image");
        fs::create_dir_all(dir.join("out")).expect("mkdir");
        let mut all: Vec<&str> = vec!["--oci-dir", path_str(&out)];
        all.extend(args.iter().map(String::as_str));
        let run = build(dir, &dir.join("cache"), &all, &[]);
        assert!(!run.ok, "{name}: succeeded:\n{}", run.stdout);
        for w in wanted {
            assert!(
                run.stderr.contains(w.as_str()),
                "{name}: `{w}` not in:\n{}",
                run.stderr
            );
        }
        let left: Vec<_> = fs::read_dir(dir.join("out"))
            .expect("read out")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{name}: left {left:?}");
    }

    // An existing directory that is not a layout is not replaced.
    fs::write(
        dir.join("strait-build.toml"),
        "[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n",
    )
    .expect("write config");
    let precious = dir.join("precious");
    write(&precious.join("notes.txt"), b"keep me", 0o644);
    let run = build(
        dir,
        &dir.join("cache"),
        &["--oci-dir", path_str(&precious)],
        &[],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("is not an OCI image layout"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read(precious.join("notes.txt")).expect("notes"),
        b"keep me"
    );
}

/// Hard-linked source files become one file and a hard link in the layer: umoci unpacks
/// them as one inode, and the content is stored once.
#[test]
fn hard_links_are_stored_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // Incompressible, so a second copy would show in the layer's size.
    let content: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write(&dir.join("dist/bin/tool"), &content, 0o755);
    fs::hard_link(dir.join("dist/bin/tool"), dir.join("dist/bin/tool-alias")).expect("link");
    fs::hard_link(dir.join("dist/bin/tool"), dir.join("dist/a-first")).expect("link");
    fs::write(
        dir.join("strait-build.toml"),
        "base = \"scratch\"\n\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n",
    )
    .expect("write config");
    let out = dir.join("image");
    build(dir, &dir.join("cache"), &["--oci-dir", path_str(&out)], &[]).digest();
    let layers = layout_layers(&out);
    let layer_size = fs::metadata(out.join("blobs/sha256").join(&layers[0][7..]))
        .expect("layer")
        .len();
    assert!(
        layer_size < content.len() as u64 * 3 / 2,
        "the content is stored more than once: {layer_size} bytes"
    );
    let rootfs = unpack(&out, "latest", &dir.join("bundle"));
    let paths = ["app/a-first", "app/bin/tool", "app/bin/tool-alias"];
    let inodes: Vec<u64> = paths
        .iter()
        .map(|p| fs::metadata(rootfs.join(p)).expect("unpacked").ino())
        .collect();
    assert!(
        inodes.iter().all(|&i| i == inodes[0]),
        "not one inode: {inodes:?}"
    );
    for path in paths {
        assert_eq!(fs::read(rootfs.join(path)).expect("read"), content);
    }
}

/// `xattrs = true` keeps the sources' extended attributes: a file capability set with
/// `setcap` (needs root, as the test suite runs) survives umoci's unpack, and so does a
/// `user.*` attribute; without the key, neither is stored.
#[test]
fn xattrs_when_asked_keep_file_capabilities() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(&dir.join("dist/bin/server"), b"#!/bin/sh\n", 0o755);
    write(&dir.join("dist/notes"), b"notes\n", 0o644);
    run(
        "setcap",
        &[
            "cap_net_bind_service=+ep",
            path_str(&dir.join("dist/bin/server")),
        ],
    );
    rustix::fs::setxattr(
        dir.join("dist/notes"),
        "user.origin",
        b"ci\0job",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("setxattr");
    let config = |xattrs: bool| {
        let line = if xattrs { "xattrs = true\n" } else { "" };
        fs::write(
            dir.join("strait-build.toml"),
            format!("base = \"scratch\"\n\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n{line}"),
        )
        .expect("write config");
    };
    let user_origin = |rootfs: &Path| {
        let mut value = [0u8; 32];
        rustix::fs::getxattr(rootfs.join("app/notes"), "user.origin", &mut value[..])
            .ok()
            .map(|n| value[..n].to_vec())
    };

    config(true);
    let with = dir.join("with");
    let digest = build(
        dir,
        &dir.join("cache"),
        &["--oci-dir", path_str(&with)],
        &[],
    )
    .digest();
    let rootfs = unpack(&with, "latest", &dir.join("bundle-with"));
    let caps = run("getcap", &[path_str(&rootfs.join("app/bin/server"))]);
    assert!(caps.contains("cap_net_bind_service=ep"), "getcap: {caps:?}");
    assert_eq!(user_origin(&rootfs).as_deref(), Some(&b"ci\0job"[..]));
    // Reproducible like everything else: the same again from a fresh cache.
    let again = dir.join("again");
    let same = build(
        dir,
        &dir.join("cache2"),
        &["--oci-dir", path_str(&again)],
        &[],
    )
    .digest();
    assert_eq!(digest, same);

    config(false);
    let without = dir.join("without");
    let plain = build(
        dir,
        &dir.join("cache"),
        &["--oci-dir", path_str(&without)],
        &[],
    )
    .digest();
    assert_ne!(digest, plain);
    let rootfs = unpack(&without, "latest", &dir.join("bundle-without"));
    let caps = run("getcap", &[path_str(&rootfs.join("app/bin/server"))]);
    assert!(caps.trim().is_empty(), "getcap: {caps:?}");
    assert_eq!(user_origin(&rootfs), None);
}

/// A registry serving TLS with a private CA: `--ca-cert` makes the push go over verified
/// TLS (loopback included); a CA that did not sign the registry's certificate fails it.
#[test]
fn push_over_tls_to_a_registry_with_a_private_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    app_tree(dir, 1_650_000_000);
    crate::tls::make_ca(dir, "ca");
    crate::tls::make_ca(dir, "other-ca");
    let (cert, key) =
        crate::tls::make_leaf_with_san(dir, "ca", "registry", "127.0.0.1", "IP:127.0.0.1");
    let config = dir.join("registry.toml");
    fs::write(
        &config,
        format!("[registry.tls]\ncert = {cert:?}\nkey = {key:?}\n"),
    )
    .expect("config");
    let registry = Registry::start_with(&dir.join("registry"), &["--config", path_str(&config)]);
    let target = format!("{}/private/app:v1", registry.host());
    let cache = dir.join("cache");
    let ca = dir.join("ca.pem");

    let pushed = build(
        dir,
        &cache,
        &["--push", &target, "--ca-cert", path_str(&ca)],
        &[],
    );
    let digest = pushed.digest();
    let manifest = Command::new("curl")
        .args(["-s", "-S", "--fail", "--cacert", path_str(&ca)])
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!(
            "https://{}/v2/private/app/manifests/v1",
            registry.host()
        ))
        .output()
        .expect("curl");
    assert!(manifest.status.success(), "{manifest:?}");
    assert_eq!(format!("sha256:{}", sha256_hex(&manifest.stdout)), digest);

    // That image as the base of another, pushed to a second registry under the same CA:
    // `--ca-cert` covers the base's registry too, not only the one pushed to.
    let second = Registry::start_with(&dir.join("registry2"), &["--config", path_str(&config)]);
    let derived = dir.join("derived");
    write(&derived.join("extra/note.txt"), b"note", 0o644);
    fs::write(
        derived.join("strait-build.toml"),
        format!("base = \"{target}\"\n\n[[layer]]\nsrc = \"extra/\"\ndest = \"/etc/\"\n"),
    )
    .expect("write config");
    let derived_target = format!("{}/derived/app:v1", second.host());
    let on_private_base = build(
        &derived,
        &dir.join("cache-derived"),
        &["--push", &derived_target, "--ca-cert", path_str(&ca)],
        &[],
    );
    on_private_base.digest();
    assert_eq!(
        on_private_base.line("base blobs:"),
        "base blobs: 3 downloaded, 0 cached"
    );

    let wrong_ca = build(
        dir,
        &cache,
        &[
            "--push",
            &target,
            "--ca-cert",
            path_str(&dir.join("other-ca.pem")),
        ],
        &[],
    );
    assert!(
        !wrong_ca.ok,
        "a push verified against the wrong CA succeeded"
    );
    assert!(
        wrong_ca.stderr.contains(&format!("pushing {target}"))
            && wrong_ca
                .stderr
                .contains("its TLS certificate is not trusted")
            && wrong_ca.stderr.contains("UnknownIssuer"),
        "{}",
        wrong_ca.stderr
    );
    let no_pem = build(
        dir,
        &cache,
        &["--push", &target, "--ca-cert", path_str(&config)],
        &[],
    );
    assert!(!no_pem.ok);
    assert!(
        no_pem.stderr.contains("no PEM certificate"),
        "{}",
        no_pem.stderr
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    let output = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `delete` removes base-image files through OCI whiteouts: umoci's unpack of the result
/// has the app's files and the base's other files, but not the deleted one.
#[test]
fn delete_whites_out_base_image_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let registry = Registry::start(&root.join("registry"));
    let base = push_base(&registry, root);
    let app = app_on_base(root, &base, "", "delete = [\"/usr/local/bin/big.bin\"]\n");
    let out = root.join("image");
    build(
        &app,
        &root.join("cache"),
        &["--oci-dir", path_str(&out)],
        &[],
    )
    .digest();
    let rootfs = unpack(&out, "latest", &root.join("bundle"));
    assert_eq!(
        fs::read(rootfs.join("app/main.sh")).expect("app file"),
        b"echo app\n"
    );
    assert!(
        rootfs.join("usr/local/bin/greet").exists(),
        "the base's other file is gone too"
    );
    assert!(
        !rootfs.join("usr/local/bin/big.bin").exists(),
        "the deleted file is still there"
    );
    assert!(!rootfs.join("usr/local/bin/.wh.big.bin").exists());

    // A path the layer also adds: a clear error naming it, no layout written.
    app_on_base(root, &base, "", "delete = [\"/app/main.sh\"]\n");
    let contradiction = build(
        &app,
        &root.join("cache"),
        &["--oci-dir", path_str(&root.join("image2"))],
        &[],
    );
    assert!(!contradiction.ok);
    assert!(
        contradiction
            .stderr
            .contains("/app/main.sh: the layer both adds and deletes it"),
        "{}",
        contradiction.stderr
    );
    assert!(!root.join("image2").exists());
}

/// An unchanged tree is found by its files' stamps, without reading them; a file written
/// within the last two seconds is not trusted by its stamp (a same-size rewrite in the
/// same clock tick would keep it), so its content decides.
#[test]
fn unchanged_files_are_found_by_stamp_and_fresh_ones_by_content() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(&dir.join("dist/hello"), b"#!/bin/sh\necho hi\n", 0o755);
    fs::write(
        dir.join("strait-build.toml"),
        "base = \"scratch\"\n\n[[layer]]\nsrc = \"dist/\"\ndest = \"/app/\"\n",
    )
    .expect("write config");
    let cache = dir.join("cache");
    let stat_records = || {
        fs::read_dir(cache.join("stat"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let oci = dir.join("image");
    let args = ["--oci-dir", path_str(&oci)];

    // Just written: built, and no stamp recorded.
    let first = build(dir, &cache, &args, &[]);
    assert!(first.ok, "{}", first.stderr);
    assert_eq!(first.line("layers:"), "layers: 1 built, 0 cached");
    assert_eq!(stat_records(), 0);
    // The same files, hashed again: found by content, and now their stamps are recorded.
    std::thread::sleep(Duration::from_millis(2100));
    let second = build(dir, &cache, &args, &[]);
    assert_eq!(second.line("layers:"), "layers: 0 built, 1 cached");
    assert_eq!(second.digest(), first.digest());
    assert_eq!(stat_records(), 1);
    let third = build(dir, &cache, &args, &[]);
    assert_eq!(third.line("layers:"), "layers: 0 built, 1 cached");
    assert_eq!(third.digest(), first.digest());

    // That hit read no content: pointed at another layer in the cache, the stamp record
    // is believed, and the image is the other tree's.
    let other = tmp.path().join("other");
    write(&other.join("dist/hello"), b"#!/bin/sh\necho other\n", 0o755);
    fs::copy(
        dir.join("strait-build.toml"),
        other.join("strait-build.toml"),
    )
    .expect("copy");
    let other_image = build(
        &other,
        &cache,
        &["--oci-dir", path_str(&other.join("image"))],
        &[],
    );
    assert!(other_image.ok, "{}", other_image.stderr);
    let record = fs::read_dir(cache.join("stat"))
        .expect("stat dir")
        .next()
        .expect("one record")
        .expect("entry")
        .path();
    let ours = fs::read_to_string(&record).expect("record");
    let other_diff_id = fs::read_dir(cache.join("compressed"))
        .expect("compressed dir")
        .flat_map(|d| fs::read_dir(d.expect("entry").path()).expect("compressor dir"))
        .map(|e| format!("sha256:{}", e.expect("entry").file_name().to_string_lossy()))
        .find(|diff_id| *diff_id != ours.trim())
        .expect("the other layer's record");
    fs::write(&record, &other_diff_id).expect("point the record elsewhere");
    let believed = build(dir, &cache, &args, &[]);
    assert_eq!(believed.line("layers:"), "layers: 0 built, 1 cached");
    assert_eq!(believed.digest(), other_image.digest());

    // Rewritten with the same size: the stamp may not show it, the content does.
    write(&dir.join("dist/hello"), b"#!/bin/sh\necho HI\n", 0o755);
    let changed = build(dir, &cache, &args, &[]);
    assert_eq!(changed.line("layers:"), "layers: 1 built, 0 cached");
    assert_ne!(changed.digest(), first.digest());
}
