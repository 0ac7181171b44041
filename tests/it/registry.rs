//! The registry, driven by real clients: skopeo for whole images (multi-layer, a
//! two-platform index), raw HTTP for each protocol step the spec defines, and `strait
//! registry gc`. Images are made with umoci, so nothing comes from the network.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Registry, Strait, eventually};

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub(crate) fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub(crate) fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }
}

pub(crate) fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body.to_vec()).expect("request");
    let mut response = agent
        .run(request)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = if method == "HEAD" {
        Vec::new()
    } else {
        response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap_or_default()
    };
    Reply {
        status: response.status().as_u16(),
        headers,
        body,
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let output = child.wait_with_output().expect("sha256sum output");
    let text = String::from_utf8_lossy(&output.stdout);
    format!("sha256:{}", text.split_whitespace().next().expect("hash"))
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An OCI layout at `layout` with image `tag` made of one layer per entry of `layers`
/// (each a file `name` holding `bytes`), for `arch`.
pub(crate) fn make_image(layout: &Path, tag: &str, arch: &str, layers: &[(&str, Vec<u8>)]) {
    let layout_str = layout.to_str().expect("utf-8 path");
    if !layout.join("index.json").exists() {
        run("umoci", &["init", "--layout", layout_str]);
    }
    let image = format!("{layout_str}:{tag}");
    run("umoci", &["new", "--image", &image]);
    run(
        "umoci",
        &[
            "config",
            "--image",
            &image,
            "--architecture",
            arch,
            "--config.env",
            "GREETING=hi",
        ],
    );
    let work = tempfile::tempdir().expect("tempdir");
    for (i, (name, bytes)) in layers.iter().enumerate() {
        let dir = work.path().join(format!("layer{i}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), bytes).expect("write layer file");
        run(
            "umoci",
            &[
                "insert",
                "--image",
                &image,
                dir.to_str().expect("utf-8"),
                "/data",
            ],
        );
    }
}

pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible, reproducible.
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The OCI layout's blobs as (digest, bytes), sorted.
fn layout_blobs(layout: &Path, wanted: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut blobs: Vec<(String, Vec<u8>)> = wanted
        .iter()
        .map(|digest| {
            let hex = digest.trim_start_matches("sha256:");
            let bytes = std::fs::read(layout.join("blobs/sha256").join(hex))
                .unwrap_or_else(|e| panic!("blob {digest} missing from {}: {e}", layout.display()));
            (digest.clone(), bytes)
        })
        .collect();
    blobs.sort();
    blobs
}

/// The digest the layout's index.json gives `tag`.
fn layout_digest(layout: &Path, tag: &str) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index json");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no {tag} in index.json: {index}"))
        .to_owned()
}

/// Every blob an image manifest references, with the manifest itself.
fn image_blobs(layout: &Path, manifest_digest: &str) -> Vec<String> {
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(manifest_digest.trim_start_matches("sha256:")),
        )
        .expect("manifest blob"),
    )
    .expect("manifest json");
    let mut digests = vec![manifest_digest.to_owned()];
    digests.push(
        manifest["config"]["digest"]
            .as_str()
            .expect("config")
            .to_owned(),
    );
    for layer in manifest["layers"].as_array().expect("layers") {
        digests.push(layer["digest"].as_str().expect("layer").to_owned());
    }
    digests
}

fn skopeo(args: &[&str]) -> String {
    run("skopeo", args)
}

#[test]
fn skopeo_round_trip_of_a_multi_layer_image_is_bit_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("source");
    make_image(
        &source,
        "v1",
        "amd64",
        &[
            ("big", random_bytes(6 << 20, 1)),
            ("small", b"hello\n".to_vec()),
            ("medium", random_bytes(300 << 10, 2)),
        ],
    );
    let registry = Registry::start(&tmp.path().join("storage"));
    let reference = format!("docker://{}/team/app:v1", registry.host());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", source.display()),
        &reference,
    ]);

    let source_digest = layout_digest(&source, "v1");
    let inspect: Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &reference]))
            .expect("inspect json");
    assert_eq!(inspect["Digest"], source_digest.as_str());
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(3));
    assert_eq!(inspect["Env"], json!(["GREETING=hi"]));

    let back = tmp.path().join("back");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:v1", back.display()),
    ]);
    assert_eq!(layout_digest(&back, "v1"), source_digest);
    let wanted = image_blobs(&source, &source_digest);
    assert_eq!(wanted.len(), 5);
    let (sent, received) = (layout_blobs(&source, &wanted), layout_blobs(&back, &wanted));
    assert!(sent == received, "blobs differ after the round trip");

    // Pushing the same image again uploads nothing: every blob is already there.
    let uploads_before =
        registry_metric(&registry, "strait_registry_upload_duration_seconds_count");
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", source.display()),
        &format!("docker://{}/team/app:v1-again", registry.host()),
    ]);
    let uploads_after = registry_metric(&registry, "strait_registry_upload_duration_seconds_count");
    assert_eq!(
        uploads_before, uploads_after,
        "a re-push uploaded blobs again"
    );
    assert!(uploads_before >= 4.0, "uploads counted: {uploads_before}");
}

fn registry_metric(registry: &Registry, name: &str) -> f64 {
    let text = send("GET", &registry.url("/metrics"), &[], b"").text_full();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Reply {
    fn text_full(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[test]
fn skopeo_copies_a_two_platform_index() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("source");
    make_image(
        &source,
        "amd64",
        "amd64",
        &[("bin", random_bytes(100_000, 3))],
    );
    make_image(
        &source,
        "arm64",
        "arm64",
        &[("bin", random_bytes(100_000, 4))],
    );
    // An index over both, added to the layout as tag `multi`.
    let entry = |tag: &str, arch: &str| {
        let digest = layout_digest(&source, tag);
        let path = source
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let size = std::fs::metadata(path).expect("manifest").len();
        json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
               "platform": {"architecture": arch, "os": "linux"}})
    };
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [entry("amd64", "amd64"), entry("arm64", "arm64")]});
    let index_bytes = serde_json::to_vec(&index).expect("index");
    let index_digest = sha256(&index_bytes);
    std::fs::write(
        source
            .join("blobs/sha256")
            .join(index_digest.trim_start_matches("sha256:")),
        &index_bytes,
    )
    .expect("write index");
    let layout_index_path = source.join("index.json");
    let mut layout_index: Value =
        serde_json::from_slice(&std::fs::read(&layout_index_path).expect("read")).expect("json");
    layout_index["manifests"]
        .as_array_mut()
        .expect("manifests")
        .push(
            json!({"mediaType": OCI_INDEX, "digest": index_digest, "size": index_bytes.len(),
                     "annotations": {"org.opencontainers.image.ref.name": "multi"}}),
        );
    std::fs::write(&layout_index_path, layout_index.to_string()).expect("write");

    let registry = Registry::start(&tmp.path().join("storage"));
    let reference = format!("docker://{}/multi/app:v1", registry.host());
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", source.display()),
        &reference,
    ]);
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &reference]);
    assert_eq!(
        sha256(raw.as_bytes()),
        index_digest,
        "the index changed on the way"
    );

    let back = tmp.path().join("back");
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:multi", back.display()),
    ]);
    assert_eq!(layout_digest(&back, "multi"), index_digest);
    for tag in ["amd64", "arm64"] {
        let digest = layout_digest(&source, tag);
        let wanted = image_blobs(&source, &digest);
        assert!(
            layout_blobs(&source, &wanted) == layout_blobs(&back, &wanted),
            "{tag} blobs differ"
        );
    }
    // Pulling one platform by digest works too.
    let arm = layout_digest(&source, "arm64");
    let reply = send(
        "GET",
        &registry.url(&format!("/v2/multi/app/manifests/{arm}")),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Docker-Content-Digest"), Some(arm.as_str()));
}

/// Pushes `bytes` as a blob of `repo` in one request; returns its digest.
pub(crate) fn push_blob(registry: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let reply = send(
        "POST",
        &registry.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    );
    assert_eq!(reply.status, 201, "monolithic upload: {}", reply.text());
    assert_eq!(
        reply.header("Location"),
        Some(format!("/v2/{repo}/blobs/{digest}").as_str())
    );
    digest
}

/// Pushes an image manifest over `config` and `layers`; returns (digest, bytes).
pub(crate) fn push_manifest(
    registry: &Registry,
    repo: &str,
    reference: &str,
    manifest: &Value,
) -> (String, Reply) {
    let bytes = serde_json::to_vec(manifest).expect("manifest");
    let reply = send(
        "PUT",
        &registry.url(&format!("/v2/{repo}/manifests/{reference}")),
        &[("Content-Type", OCI_MANIFEST)],
        &bytes,
    );
    (sha256(&bytes), reply)
}

pub(crate) fn image_manifest(config: &str, config_size: usize, layers: &[(&str, usize)]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": layers.iter().map(|(d, s)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})).collect::<Vec<_>>(),
    })
}

#[test]
fn chunked_uploads_follow_the_spec() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("storage"));
    let base = registry.url("");
    let data = random_bytes(3 << 20, 5);
    let digest = sha256(&data);

    let start = send("POST", &registry.url("/v2/chunks/blobs/uploads/"), &[], b"");
    assert_eq!(start.status, 202, "{}", start.text());
    assert_eq!(start.header("Range"), Some("0-0"));
    let location = start.header("Location").expect("Location").to_owned();
    assert!(
        location.starts_with("/v2/chunks/blobs/uploads/"),
        "{location}"
    );
    assert!(start.header("Docker-Upload-UUID").is_some());
    let upload = format!("{base}{location}");

    // First chunk, then an out-of-order one (416, nothing appended), then the next.
    let first = &data[..1 << 20];
    let reply = send(
        "PATCH",
        &upload,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &format!("0-{}", first.len() - 1)),
        ],
        first,
    );
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(
        reply.header("Range"),
        Some(format!("0-{}", first.len() - 1).as_str())
    );
    let skipped = send(
        "PATCH",
        &upload,
        &[("Content-Range", "2097152-3145727")],
        &data[2 << 20..],
    );
    assert_eq!(skipped.status, 416, "{}", skipped.text());
    let status = send("GET", &upload, &[], b"");
    assert_eq!(status.status, 204);
    assert_eq!(status.header("Range"), Some("0-1048575"));

    // A chunk without Content-Range is streamed on the end.
    let reply = send("PATCH", &upload, &[], &data[1 << 20..2 << 20]);
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.header("Range"), Some("0-2097151"));

    // Not visible before completion.
    let blob_url = registry.url(&format!("/v2/chunks/blobs/{digest}"));
    assert_eq!(send("HEAD", &blob_url, &[], b"").status, 404);

    // The last chunk comes with the PUT.
    let reply = send(
        "PUT",
        &format!("{upload}?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        &data[2 << 20..],
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("Docker-Content-Digest"), Some(digest.as_str()));
    let head = send("HEAD", &blob_url, &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("3145728"));
    let got = send("GET", &blob_url, &[], b"");
    assert!(got.body == data, "blob bytes differ");
    // The finished session is gone.
    assert_eq!(send("GET", &upload, &[], b"").status, 404);

    // Ranges.
    let part = send("GET", &blob_url, &[("Range", "bytes=10-19")], b"");
    assert_eq!(part.status, 206);
    assert_eq!(part.header("Content-Range"), Some("bytes 10-19/3145728"));
    assert_eq!(part.body, data[10..20]);
    let tail = send("GET", &blob_url, &[("Range", "bytes=-5")], b"");
    assert_eq!(tail.body, data[data.len() - 5..]);
    let beyond = send("GET", &blob_url, &[("Range", "bytes=9999999-")], b"");
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("Content-Range"), Some("bytes */3145728"));
}

#[test]
fn uploads_are_verified_and_cancellable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = tmp.path().join("storage");
    let registry = Registry::start(&storage);

    // Wrong digest: DIGEST_INVALID and nothing kept.
    let claimed = sha256(b"something else");
    let reply = send(
        "POST",
        &registry.url(&format!("/v2/v/blobs/uploads/?digest={claimed}")),
        &[],
        b"actual bytes",
    );
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error_code(), "DIGEST_INVALID");
    let actual = sha256(b"actual bytes");
    for digest in [&claimed, &actual] {
        let url = registry.url(&format!("/v2/v/blobs/{digest}"));
        assert_eq!(send("HEAD", &url, &[], b"").status, 404);
    }
    let leftovers = std::fs::read_dir(storage.join("uploads"))
        .expect("uploads")
        .count();
    assert_eq!(leftovers, 0, "a failed upload left its staging file");
    let blobs = walk_files(&storage.join("blobs"));
    assert!(blobs.is_empty(), "blobs after a failed upload: {blobs:?}");

    // Malformed and unsupported digests.
    for (digest, code) in [
        ("sha256:xyz", "DIGEST_INVALID"),
        ("md5:0123", "DIGEST_INVALID"),
    ] {
        let reply = send(
            "POST",
            &registry.url(&format!("/v2/v/blobs/uploads/?digest={digest}")),
            &[],
            b"x",
        );
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (400, code),
            "{digest}"
        );
    }

    // Cancel.
    let start = send("POST", &registry.url("/v2/v/blobs/uploads/"), &[], b"");
    let upload = registry.url(start.header("Location").expect("Location"));
    send("PATCH", &upload, &[], b"partial");
    assert_eq!(send("DELETE", &upload, &[], b"").status, 204);
    let gone = send("GET", &upload, &[], b"");
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (404, "BLOB_UPLOAD_UNKNOWN")
    );

    // An upload id of another repository, or not one of ours at all.
    let start = send("POST", &registry.url("/v2/v/blobs/uploads/"), &[], b"");
    let location = start.header("Location").expect("Location").to_owned();
    let foreign = location.replacen("/v2/v/", "/v2/w/", 1);
    assert_eq!(send("GET", &registry.url(&foreign), &[], b"").status, 404);
    let bogus = send(
        "GET",
        &registry.url("/v2/v/blobs/uploads/..%2f..%2fetc"),
        &[],
        b"",
    );
    assert_eq!(bogus.status, 404);
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files
}

#[test]
fn an_upload_survives_a_crash_but_never_shows_partially() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut registry = Registry::start(&tmp.path().join("storage"));
    let data = random_bytes(2 << 20, 6);
    let digest = sha256(&data);
    let start = send("POST", &registry.url("/v2/crash/blobs/uploads/"), &[], b"");
    let location = start.header("Location").expect("Location").to_owned();
    let reply = send("PATCH", &registry.url(&location), &[], &data[..1 << 20]);
    assert_eq!(reply.status, 202);

    // Something complete beside it: an image pushed before the crash.
    let config = push_blob(&registry, "crash", b"{}");
    let manifest = image_manifest(&config, 2, &[]);
    let (image, reply) = push_manifest(&registry, "crash", "kept", &manifest);
    assert_eq!(reply.status, 201);

    // An upload as a strait from before owner records left it: no record.
    let legacy = send("POST", &registry.url("/v2/crash/blobs/uploads/"), &[], b"")
        .header("Location")
        .expect("Location")
        .to_owned();
    let legacy_id = legacy.rsplit('/').next().expect("id").to_owned();
    std::fs::remove_file(tmp.path().join("storage/upload-owners").join(&legacy_id))
        .expect("remove the owner record");

    registry.kill_and_restart();
    // The first repository to ask claims the legacy upload; it is then its own.
    assert_eq!(send("GET", &registry.url(&legacy), &[], b"").status, 204);
    let other = legacy.replacen("/v2/crash/", "/v2/hijack/", 1);
    assert_eq!(send("GET", &registry.url(&other), &[], b"").status, 404);
    assert_eq!(send("DELETE", &registry.url(&legacy), &[], b"").status, 204);
    let kept = send("GET", &registry.url("/v2/crash/manifests/kept"), &[], b"");
    assert_eq!(
        (kept.status, sha256(&kept.body)),
        (200, image),
        "restart lost the image"
    );
    assert_eq!(
        send(
            "GET",
            &registry.url(&format!("/v2/crash/blobs/{config}")),
            &[],
            b""
        )
        .body,
        b"{}"
    );
    let blob_url = registry.url(&format!("/v2/crash/blobs/{digest}"));
    assert_eq!(send("HEAD", &blob_url, &[], b"").status, 404);
    // It is still the repository's own: another cannot look at it, append to it or
    // complete it, after the restart as before.
    let elsewhere = location.replacen("/v2/crash/", "/v2/hijack/", 1);
    assert_ne!(elsewhere, location);
    // (Small bodies: the refusal comes before a large one would be read.)
    for (method, url, body) in [
        ("GET", elsewhere.clone(), &b""[..]),
        ("PATCH", elsewhere.clone(), &b"x"[..]),
        ("PUT", format!("{elsewhere}?digest={digest}"), &b"x"[..]),
    ] {
        let reply = send(method, &registry.url(&url), &[], body);
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (404, "BLOB_UPLOAD_UNKNOWN"),
            "{method} from another repository"
        );
    }
    // The session resumes where it was (the hash is recomputed from the staged bytes).
    let status = send("GET", &registry.url(&location), &[], b"");
    assert_eq!(
        (status.status, status.header("Range")),
        (204, Some("0-1048575"))
    );
    let reply = send(
        "PUT",
        &registry.url(&format!("{location}?digest={digest}")),
        &[],
        &data[1 << 20..],
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert!(send("GET", &blob_url, &[], b"").body == data);
    let metrics = send("GET", &registry.url("/metrics"), &[], b"").text_full();
    assert!(
        metrics.contains("\nstrait_registry_uploads_in_progress 0\n"),
        "a resumed upload that completed is no longer in progress: {metrics}"
    );
}

#[test]
fn manifests_tags_referrers_and_deletion() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("storage"));
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = push_blob(&registry, "m/app", config);
    let layer = random_bytes(1000, 7);
    let layer_digest = push_blob(&registry, "m/app", &layer);
    let manifest = image_manifest(
        &config_digest,
        config.len(),
        &[(&layer_digest, layer.len())],
    );

    // A manifest naming a blob the repository lacks is refused.
    let missing = sha256(b"never pushed");
    let bad = image_manifest(&config_digest, config.len(), &[(&missing, 12)]);
    let (_, reply) = push_manifest(&registry, "m/app", "bad", &bad);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    // ... and so is one whose blobs live in another repository only.
    let (_, reply) = push_manifest(&registry, "m/other", "v1", &manifest);
    assert_eq!(reply.error_code(), "MANIFEST_BLOB_UNKNOWN");
    // Not JSON; mediaType disagreeing with Content-Type; digest reference mismatch.
    let reply = send(
        "PUT",
        &registry.url("/v2/m/app/manifests/x"),
        &[("Content-Type", OCI_MANIFEST)],
        b"{not json",
    );
    assert_eq!(reply.error_code(), "MANIFEST_INVALID");
    let reply = send(
        "PUT",
        &registry.url("/v2/m/app/manifests/x"),
        &[("Content-Type", OCI_INDEX)],
        &serde_json::to_vec(&manifest).expect("json"),
    );
    assert_eq!(reply.error_code(), "MANIFEST_INVALID");
    let (_, reply) = push_manifest(&registry, "m/app", &missing, &manifest);
    assert_eq!(reply.error_code(), "DIGEST_INVALID");
    // Over the size limit (4 MiB): 413 from the head alone, before any body is read.
    let mut stream = std::net::TcpStream::connect(registry.addr).expect("connect");
    std::io::Write::write_all(
        &mut stream,
        format!(
            "PUT /v2/m/app/manifests/huge HTTP/1.1\r\nHost: {}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
            registry.host(),
            5 << 20
        )
        .as_bytes(),
    )
    .expect("send head");
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut head).expect("response");
    assert_eq!(&head, b"HTTP/1.1 413");

    // Tags.
    let mut digest = String::new();
    for tag in ["v3", "v1", "latest", "v2", "v10"] {
        let (d, reply) = push_manifest(&registry, "m/app", tag, &manifest);
        assert_eq!(reply.status, 201, "{}", reply.text());
        assert_eq!(reply.header("Docker-Content-Digest"), Some(d.as_str()));
        digest = d;
    }
    let by_tag = send("GET", &registry.url("/v2/m/app/manifests/v1"), &[], b"");
    assert_eq!(by_tag.header("Content-Type"), Some(OCI_MANIFEST));
    assert_eq!(sha256(&by_tag.body), digest);
    let head = send(
        "HEAD",
        &registry.url(&format!("/v2/m/app/manifests/{digest}")),
        &[],
        b"",
    );
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Content-Length"),
        Some(by_tag.body.len().to_string().as_str())
    );

    let page1 = send("GET", &registry.url("/v2/m/app/tags/list?n=2"), &[], b"");
    assert_eq!(
        page1.json(),
        json!({"name": "m/app", "tags": ["latest", "v1"]})
    );
    assert_eq!(
        page1.header("Link"),
        Some("</v2/m/app/tags/list?n=2&last=v1>; rel=\"next\"")
    );
    let page3 = send(
        "GET",
        &registry.url("/v2/m/app/tags/list?n=2&last=v2"),
        &[],
        b"",
    );
    assert_eq!(page3.json()["tags"], json!(["v3"]));
    assert_eq!(page3.header("Link"), None);
    let unknown = send("GET", &registry.url("/v2/nope/tags/list"), &[], b"");
    assert_eq!(
        (unknown.status, unknown.error_code().as_str()),
        (404, "NAME_UNKNOWN")
    );

    // Cross-repository mount, and a mount that cannot be done (falls back to an upload).
    let mount = send(
        "POST",
        &registry.url(&format!(
            "/v2/m/copy/blobs/uploads/?mount={layer_digest}&from=m/app"
        )),
        &[],
        b"",
    );
    assert_eq!(mount.status, 201, "{}", mount.text());
    let no_mount = send(
        "POST",
        &registry.url(&format!(
            "/v2/m/copy/blobs/uploads/?mount={missing}&from=m/app"
        )),
        &[],
        b"",
    );
    assert_eq!(no_mount.status, 202);
    let catalog = send("GET", &registry.url("/v2/_catalog"), &[], b"");
    assert_eq!(catalog.json(), json!({"repositories": ["m/app", "m/copy"]}));
    let catalog = send("GET", &registry.url("/v2/_catalog?n=1"), &[], b"");
    assert_eq!(catalog.json(), json!({"repositories": ["m/app"]}));
    assert_eq!(
        catalog.header("Link"),
        Some("</v2/_catalog?n=1&last=m/app>; rel=\"next\"")
    );

    // Referrers: an SBOM-like artifact whose subject is the image.
    let empty = push_blob(&registry, "m/app", b"{}");
    let sbom = push_blob(&registry, "m/app", b"{\"sbom\":true}");
    let subject_size = by_tag.body.len();
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom, "size": 13}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": subject_size},
        "annotations": {"org.example": "yes"},
    });
    let (artifact_digest, reply) = push_manifest(
        &registry,
        "m/app",
        &sha256(&serde_json::to_vec(&artifact).expect("json")),
        &artifact,
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("OCI-Subject"), Some(digest.as_str()));
    let referrers = send(
        "GET",
        &registry.url(&format!("/v2/m/app/referrers/{digest}")),
        &[],
        b"",
    );
    assert_eq!(referrers.status, 200);
    assert_eq!(referrers.header("Content-Type"), Some(OCI_INDEX));
    let listed = referrers.json();
    assert_eq!(listed["manifests"][0]["digest"], artifact_digest.as_str());
    assert_eq!(
        listed["manifests"][0]["artifactType"],
        "application/spdx+json"
    );
    assert_eq!(listed["manifests"][0]["annotations"]["org.example"], "yes");
    let filtered = send(
        "GET",
        &registry.url(&format!(
            "/v2/m/app/referrers/{digest}?artifactType=application/other"
        )),
        &[],
        b"",
    );
    assert_eq!(filtered.json()["manifests"], json!([]));
    assert_eq!(filtered.header("OCI-Filters-Applied"), Some("artifactType"));
    let none = send(
        "GET",
        &registry.url(&format!("/v2/m/app/referrers/{missing}")),
        &[],
        b"",
    );
    assert_eq!(
        (none.status, none.json()["manifests"].clone()),
        (200, json!([]))
    );

    // Deleting: a tag, then the artifact (its referrer entry goes), then the image by digest
    // (its tags go), then a blob.
    assert_eq!(
        send("DELETE", &registry.url("/v2/m/app/manifests/v10"), &[], b"").status,
        202
    );
    assert_eq!(
        send("GET", &registry.url("/v2/m/app/manifests/v10"), &[], b"").status,
        404
    );
    let url = registry.url(&format!("/v2/m/app/manifests/{artifact_digest}"));
    assert_eq!(send("DELETE", &url, &[], b"").status, 202);
    let referrers = send(
        "GET",
        &registry.url(&format!("/v2/m/app/referrers/{digest}")),
        &[],
        b"",
    );
    assert_eq!(referrers.json()["manifests"], json!([]));
    let url = registry.url(&format!("/v2/m/app/manifests/{digest}"));
    assert_eq!(send("DELETE", &url, &[], b"").status, 202);
    let gone = send("GET", &registry.url("/v2/m/app/manifests/latest"), &[], b"");
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    assert_eq!(
        send("GET", &registry.url("/v2/m/app/tags/list"), &[], b"").json()["tags"],
        json!([])
    );
    let blob = registry.url(&format!("/v2/m/app/blobs/{layer_digest}"));
    assert_eq!(send("DELETE", &blob, &[], b"").status, 202);
    let gone = send("GET", &blob, &[], b"");
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (404, "BLOB_UNKNOWN")
    );
    // Still mounted in the other repository.
    let kept = registry.url(&format!("/v2/m/copy/blobs/{layer_digest}"));
    assert_eq!(send("GET", &kept, &[], b"").body, layer);
}

#[test]
fn hostile_names_and_paths_stay_inside_the_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = tmp.path().join("storage");
    let registry = Registry::start(&storage);
    let digest = sha256(b"x");
    for (path, expected) in [
        ("/v2/UPPER/tags/list", 400),
        ("/v2/a/../../etc/tags/list", 400),
        ("/v2/a/..%2f..%2fetc/tags/list", 400),
        ("/v2/_private/tags/list", 400),
        ("/v2/a/_manifests/tags/list", 400),
        ("/v2/a/manifests/..%2f..%2fx", 400),
        ("/v2/a/manifests/sha256:..%2f..", 400),
        ("/v2/a/blobs/sha256:../../../etc/passwd", 404),
        ("/v2/a/blobs/sha512:abc", 400),
        ("/v2/a/referrers/notadigest", 400),
        ("/v2/a//b/tags/list", 400),
        ("/v2/../x/tags/list", 400),
        ("/v2/a/b-/tags/list", 400),
        (&*format!("/v2/{}/tags/list", "a".repeat(300)), 400),
        (
            &*format!("/v2/{}/tags/list", ["abcdefghij"; 26].join("/")),
            400,
        ),
        ("/v2/nothing-here", 404),
        ("/etc/passwd", 404),
    ] {
        let reply = send("GET", &registry.url(path), &[], b"");
        assert_eq!(reply.status, expected, "{path}: {}", reply.text());
        assert!(
            reply.json()["errors"][0]["code"].is_string(),
            "{path}: {}",
            reply.text()
        );
    }
    let reply = send(
        "PUT",
        &registry.url("/v2/a/manifests/..%2f..%2fescape"),
        &[("Content-Type", OCI_MANIFEST)],
        b"{}",
    );
    assert_eq!(reply.status, 400);
    let reply = send(
        "POST",
        &registry.url(&format!("/v2/a/blobs/uploads/?mount={digest}&from=../../x")),
        &[],
        b"",
    );
    assert_eq!(
        reply.status, 202,
        "an invalid mount source falls back to an upload"
    );
    assert!(!tmp.path().join("escape").exists());
    assert!(!tmp.path().join("x").exists());
    // The server is still fine.
    assert_eq!(send("GET", &registry.url("/v2/"), &[], b"").status, 200);
}

#[test]
fn push_needs_credentials_pull_does_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let htpasswd = tmp.path().join("htpasswd");
    let output = Command::new(crate::harness::STRAIT)
        .args(["registry", "passwd", "ci"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"s3cret-pass\n")?;
            child.wait_with_output()
        })
        .expect("strait registry passwd");
    assert!(output.status.success());
    std::fs::write(&htpasswd, &output.stdout).expect("write htpasswd");

    let registry = Registry::start_with(
        &tmp.path().join("storage"),
        &["--htpasswd", htpasswd.to_str().expect("utf-8")],
    );
    let source = tmp.path().join("source");
    make_image(&source, "v1", "amd64", &[("f", random_bytes(50_000, 8))]);
    let reference = format!("docker://{}/secure/app:v1", registry.host());
    let src = format!("oci:{}:v1", source.display());

    // Without credentials: refused with a bearer challenge.
    let reply = send(
        "POST",
        &registry.url("/v2/secure/app/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (401, "UNAUTHORIZED")
    );
    let challenge = reply
        .header("WWW-Authenticate")
        .expect("challenge")
        .to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer realm=\"http://{}/token\",service=\"strait-registry\",scope=\"repository:secure/app:pull,push\"",
            registry.host()
        )
    );
    let refused = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", &src, &reference])
        .output()
        .expect("skopeo");
    assert!(
        !refused.status.success(),
        "push without credentials succeeded"
    );
    let wrong = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "ci:wrong",
            &src,
            &reference,
        ])
        .output()
        .expect("skopeo");
    assert!(
        !wrong.status.success(),
        "push with a wrong password succeeded"
    );

    // With them: skopeo goes through the token flow.
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "ci:s3cret-pass",
        &src,
        &reference,
    ]);
    // Anonymous pull.
    let inspect: Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &reference]))
            .expect("inspect");
    assert_eq!(inspect["Digest"], layout_digest(&source, "v1").as_str());
    // Basic auth works directly too (curl-style clients).
    let basic = format!("Basic {}", base64_encode(b"ci:s3cret-pass"));
    let reply = send(
        "POST",
        &registry.url("/v2/secure/app/blobs/uploads/"),
        &[("Authorization", &basic)],
        b"",
    );
    assert_eq!(reply.status, 202);
    // A token for pull only does not allow a push.
    let token = send(
        "GET",
        &registry.url("/token?service=strait-registry&scope=repository:secure/app:pull"),
        &[],
        b"",
    )
    .json();
    let bearer = format!("Bearer {}", token["token"].as_str().expect("token"));
    let reply = send(
        "POST",
        &registry.url("/v2/secure/app/blobs/uploads/"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(reply.status, 401);
    let reply = send(
        "GET",
        &registry.url("/v2/secure/app/tags/list"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(reply.json()["tags"], json!(["v1"]));
}

fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn gc_removes_untagged_content_and_keeps_what_is_tagged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = tmp.path().join("storage");
    let registry = Registry::start(&storage);
    let source = tmp.path().join("source");
    make_image(&source, "old", "amd64", &[("f", random_bytes(200_000, 9))]);
    make_image(&source, "new", "amd64", &[("f", random_bytes(200_000, 10))]);
    let host = registry.host();
    for tag in ["old", "new"] {
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", source.display()),
            &format!("docker://{host}/gc/app:{tag}"),
        ]);
    }
    // `old` loses its tag: its manifest and its unique layer become garbage.
    assert_eq!(
        send(
            "DELETE",
            &registry.url("/v2/gc/app/manifests/old"),
            &[],
            b""
        )
        .status,
        202
    );
    let old_digest = layout_digest(&source, "old");
    let old_blobs = image_blobs(&source, &old_digest);
    let old_layer = old_blobs.last().expect("layer").clone();

    let root = storage.to_str().expect("utf-8");
    let (ok, stdout, stderr) = crate::harness::cli(&[
        "registry",
        "gc",
        "--root",
        root,
        "--grace",
        "0s",
        "--dry-run",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("manifests: 1 kept, 1 removed"), "{stdout}");
    let layer_url = registry.url(&format!("/v2/gc/app/blobs/{old_layer}"));
    assert_eq!(
        send("HEAD", &layer_url, &[], b"").status,
        200,
        "dry run deleted"
    );

    // Within the grace period (the HEAD above just used it) nothing old is deleted.
    let (ok, stdout, _) = crate::harness::cli(&["registry", "gc", "--root", root, "--grace", "1h"]);
    assert!(ok);
    assert!(
        stdout.contains("blobs: ") && stdout.contains(" 0 removed"),
        "{stdout}"
    );

    let (ok, stdout, stderr) =
        crate::harness::cli(&["registry", "gc", "--root", root, "--grace", "0s"]);
    assert!(ok, "{stderr}");
    // Exactly the old image's own blobs go: its manifest, config and layer.
    assert!(
        stdout.contains("manifests: 1 kept, 1 removed; blobs: 3 kept, 3 removed"),
        "{stdout}"
    );
    let on_disk = walk_files(&storage.join("blobs"));
    let mut expected: Vec<String> = image_blobs(&source, &layout_digest(&source, "new"))
        .iter()
        .map(|d| d.trim_start_matches("sha256:").to_owned())
        .collect();
    let mut found: Vec<String> = on_disk
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    expected.sort();
    found.sort();
    assert_eq!(found, expected, "blobs left after gc");
    assert_eq!(send("HEAD", &layer_url, &[], b"").status, 404);
    let manifest_url = registry.url(&format!("/v2/gc/app/manifests/{old_digest}"));
    assert_eq!(send("GET", &manifest_url, &[], b"").status, 404);
    // The tagged image is whole: skopeo pulls every blob of it.
    let back = tmp.path().join("back");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/gc/app:new"),
        &format!("oci:{}:new", back.display()),
    ]);
    let new_digest = layout_digest(&source, "new");
    let wanted = image_blobs(&source, &new_digest);
    assert!(layout_blobs(&source, &wanted) == layout_blobs(&back, &wanted));
}

#[test]
fn strait_up_serves_the_registry_with_metrics() {
    let strait = Strait::builder().start();
    let addr = strait
        .registry
        .expect("strait up reports the registry address");
    let reply = send("GET", &format!("http://{addr}/v2/"), &[], b"");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
    let digest = sha256(b"blob");
    let reply = send(
        "POST",
        &format!("http://{addr}/v2/up/blobs/uploads/?digest={digest}"),
        &[],
        b"blob",
    );
    assert_eq!(reply.status, 201);
    eventually(
        Duration::from_secs(5),
        "registry metrics on the admin API",
        || {
            let text = strait.metrics_text();
            let line = text
            .lines()
            .find(|l| l.starts_with("strait_registry_requests_total{endpoint=\"upload\",method=\"POST\",status=\"201\"}"))
            .ok_or("no upload counter")?;
            (line.ends_with(" 1")).then_some(()).ok_or(line.to_owned())
        },
    );
}

#[test]
fn tls_with_http2_over_alpn() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    crate::tls::make_ca(dir, "ca");
    let (cert, key) = crate::tls::make_leaf(dir, "ca", "registry", &["registry.test"]);
    let config = dir.join("strait.toml");
    std::fs::write(
        &config,
        format!("[registry.tls]\ncert = {cert:?}\nkey = {key:?}\n"),
    )
    .expect("config");
    let registry = Registry::start_with(
        &dir.join("storage"),
        &["--config", config.to_str().expect("utf-8")],
    );
    let port = registry.addr.port();
    let curl = |extra: &[&str], path: &str| {
        let output = Command::new("curl")
            .args(["-s", "-S", "--max-time", "5", "--cacert"])
            .arg(dir.join("ca.pem"))
            .arg("--resolve")
            .arg(format!("registry.test:{port}:127.0.0.1"))
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(extra)
            .arg(format!("https://registry.test:{port}{path}"))
            .output()
            .expect("curl");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, out) = curl(&[], "/v2/");
    assert!(ok, "{out}");
    assert!(out.ends_with("200 2"), "HTTP/2 over ALPN expected: {out}");
    let (ok, out) = curl(&["--http1.1"], "/v2/_catalog");
    assert!(ok, "{out}");
    assert!(out.ends_with("200 1.1"), "{out}");
    assert!(out.starts_with("{\"repositories\":[]}"), "{out}");
    // Plain HTTP on the TLS port is refused, not served.
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/v2/"))
        .output()
        .expect("curl");
    assert!(!plain.status.success() || plain.stdout.is_empty());
}

#[test]
fn concurrent_pushes_of_one_blob_and_one_tag_are_safe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = Registry::start(&tmp.path().join("storage"));
    let data = random_bytes(2 << 20, 11);
    let digest = sha256(&data);
    let config = push_blob(&registry, "race", b"{}");
    // Eight clients push the same blob, chunked, at once; then each tags its own manifest.
    let manifests: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let (registry, data, digest, config) = (&registry, &data, &digest, &config);
                scope.spawn(move || {
                    let start = send("POST", &registry.url("/v2/race/blobs/uploads/"), &[], b"");
                    let location = start.header("Location").expect("Location").to_owned();
                    for (n, chunk) in data.chunks(256 << 10).enumerate() {
                        let begin = n * (256 << 10);
                        let range = format!("{begin}-{}", begin + chunk.len() - 1);
                        let reply = send(
                            "PATCH",
                            &registry.url(&location),
                            &[("Content-Range", &range)],
                            chunk,
                        );
                        assert_eq!(reply.status, 202, "{}", reply.text());
                    }
                    let reply = send(
                        "PUT",
                        &registry.url(&format!("{location}?digest={digest}")),
                        &[],
                        b"",
                    );
                    assert_eq!(reply.status, 201, "{}", reply.text());
                    let mut manifest = image_manifest(config, 2, &[(digest, data.len())]);
                    manifest["annotations"] = json!({"writer": i.to_string()});
                    let (d, reply) = push_manifest(registry, "race", "latest", &manifest);
                    assert_eq!(reply.status, 201, "{}", reply.text());
                    d
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let blob = send(
        "GET",
        &registry.url(&format!("/v2/race/blobs/{digest}")),
        &[],
        b"",
    );
    assert!(blob.body == data, "the blob is not whole");
    // The tag names exactly one of the manifests written, intact.
    let latest = send("GET", &registry.url("/v2/race/manifests/latest"), &[], b"");
    assert!(
        manifests.contains(&sha256(&latest.body)),
        "tag points at an unknown manifest"
    );
    let uploads = std::fs::read_dir(tmp.path().join("storage/uploads"))
        .expect("uploads")
        .count();
    assert_eq!(uploads, 0, "staging files left behind");
}

#[test]
fn stale_uploads_expire() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("strait.toml");
    std::fs::write(&config, "[registry]\nupload_ttl = \"1s\"\n").expect("config");
    let registry = Registry::start_with(
        &tmp.path().join("storage"),
        &["--config", config.to_str().expect("utf-8")],
    );
    let start = send("POST", &registry.url("/v2/stale/blobs/uploads/"), &[], b"");
    let upload = registry.url(start.header("Location").expect("Location"));
    send("PATCH", &upload, &[], b"abandoned");
    eventually(
        Duration::from_secs(10),
        "the stale upload to expire",
        || {
            let reply = send("GET", &upload, &[], b"");
            (reply.status == 404)
                .then_some(())
                .ok_or(reply.status.to_string())
        },
    );
    let left = std::fs::read_dir(tmp.path().join("storage/uploads"))
        .expect("uploads")
        .count();
    assert_eq!(left, 0);
}
