//! The OCI distribution-spec conformance suite (Go, Ginkgo; it cannot be built here),
//! ported workflow by workflow. Each check carries the suite's own wording, so a failure
//! names the case it maps to. Run against `strait registry serve`.

use serde_json::{Value, json};

use crate::harness::Registry;
use crate::registry::{
    OCI_INDEX, OCI_MANIFEST, Reply, image_manifest, push_blob, push_manifest, random_bytes, send,
    sha256,
};

/// Asserts one conformance case.
macro_rules! case {
    ($name:literal, $ok:expr, $reply:expr) => {
        assert!(
            $ok,
            "conformance case failed: {}\n  response: {} {}",
            $name,
            $reply.status,
            $reply.text()
        )
    };
}

struct Fixture {
    registry: Registry,
    _tmp: tempfile::TempDir,
    config: String,
    config_bytes: Vec<u8>,
    layer: String,
    layer_bytes: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let registry = Registry::start(&tmp.path().join("storage"));
        let config_bytes =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer_bytes = random_bytes(4096, 42);
        Fixture {
            registry,
            _tmp: tmp,
            config: sha256(&config_bytes),
            config_bytes,
            layer: sha256(&layer_bytes),
            layer_bytes,
        }
    }

    fn url(&self, path: &str) -> String {
        self.registry.url(path)
    }

    fn manifest(&self) -> Value {
        image_manifest(
            &self.config,
            self.config_bytes.len(),
            &[(&self.layer, self.layer_bytes.len())],
        )
    }

    fn push_image(&self, repo: &str, tag: &str) -> String {
        push_blob(&self.registry, repo, &self.config_bytes);
        push_blob(&self.registry, repo, &self.layer_bytes);
        let (digest, reply) = push_manifest(&self.registry, repo, tag, &self.manifest());
        assert_eq!(reply.status, 201, "setup push: {}", reply.text());
        digest
    }
}

fn get(url: &str) -> Reply {
    send("GET", url, &[], b"")
}
fn head(url: &str) -> Reply {
    send("HEAD", url, &[], b"")
}

#[test]
fn pull() {
    let f = Fixture::new();
    let digest = f.push_image("conformance/pull", "tagtest0");
    let missing = sha256(b"nonexistent");

    let r = head(&f.url(&format!("/v2/conformance/pull/blobs/{missing}")));
    case!(
        "HEAD request to nonexistent blob should result in 404 response",
        r.status == 404,
        r
    );
    let r = head(&f.url(&format!("/v2/conformance/pull/blobs/{}", f.config)));
    case!(
        "HEAD request to existing blob should yield 200",
        r.status == 200 && r.header("Content-Length") == Some(&f.config_bytes.len().to_string()),
        r
    );
    let r = get(&f.url(&format!("/v2/conformance/pull/blobs/{missing}")));
    case!(
        "GET nonexistent blob should result in 404 response",
        r.status == 404 && r.error_code() == "BLOB_UNKNOWN",
        r
    );
    let r = get(&f.url(&format!("/v2/conformance/pull/blobs/{}", f.layer)));
    case!(
        "GET request to existing blob URL should yield 200",
        r.status == 200 && r.body == f.layer_bytes,
        r
    );

    let r = head(&f.url("/v2/conformance/pull/manifests/nonexistent"));
    case!(
        "HEAD request to nonexistent manifest should return 404",
        r.status == 404,
        r
    );
    let r = head(&f.url(&format!("/v2/conformance/pull/manifests/{digest}")));
    case!(
        "HEAD request to manifest[0] path (digest) should yield 200 response",
        r.status == 200 && r.header("Docker-Content-Digest") == Some(digest.as_str()),
        r
    );
    let r = head(&f.url("/v2/conformance/pull/manifests/tagtest0"));
    case!(
        "HEAD request to manifest path (tag) should yield 200 response",
        r.status == 200 && r.header("Docker-Content-Digest") == Some(digest.as_str()),
        r
    );
    let r = get(&f.url("/v2/conformance/pull/manifests/nonexistent"));
    case!(
        "GET nonexistent manifest should return 404",
        r.status == 404 && r.error_code() == "MANIFEST_UNKNOWN",
        r
    );
    let r = get(&f.url(&format!("/v2/conformance/pull/manifests/{digest}")));
    case!(
        "GET request to manifest[0] path (digest) should yield 200 response",
        r.status == 200 && sha256(&r.body) == digest,
        r
    );
    let r = get(&f.url("/v2/conformance/pull/manifests/tagtest0"));
    case!(
        "GET request to manifest path (tag) should yield 200 response",
        r.status == 200
            && sha256(&r.body) == digest
            && r.header("Content-Type") == Some(OCI_MANIFEST),
        r
    );

    let r = send(
        "PUT",
        &f.url("/v2/conformance/pull/manifests/sha256:totallywrong"),
        &[("Content-Type", OCI_MANIFEST)],
        b"{\"schemaVersion\": 2}",
    );
    let codes = [
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    ];
    case!(
        "400 response body should contain OCI-conforming JSON message",
        r.status == 400
            && codes.contains(&r.error_code().as_str())
            && r.json()["errors"][0]["message"].is_string(),
        r
    );
}

#[test]
fn push() {
    let f = Fixture::new();
    let repo = "conformance/push";
    let data = random_bytes(10_000, 7);
    let digest = sha256(&data);

    // Blob Upload Streamed
    let r = send(
        "POST",
        &f.url(&format!("/v2/{repo}/blobs/uploads/")),
        &[],
        b"",
    );
    let location = f.url(r.header("Location").expect("Location"));
    let r = send(
        "PATCH",
        &location,
        &[("Content-Type", "application/octet-stream")],
        &data,
    );
    case!(
        "PATCH request with blob in body should yield 202 response",
        r.status == 202 && r.header("Location").is_some(),
        r
    );
    let location = f.url(r.header("Location").expect("Location"));
    let r = send("PUT", &format!("{location}?digest={digest}"), &[], b"");
    case!(
        "PUT request to session URL with digest should yield 201 response",
        r.status == 201
            && r.header("Location") == Some(format!("/v2/{repo}/blobs/{digest}").as_str()),
        r
    );

    // Blob Upload Monolithic
    let mono = random_bytes(5000, 8);
    let mono_digest = sha256(&mono);
    let r = get(&f.url(&format!("/v2/{repo}/blobs/{mono_digest}")));
    case!(
        "GET nonexistent blob should result in 404 response",
        r.status == 404,
        r
    );
    let r = send(
        "POST",
        &f.url(&format!("/v2/{repo}/blobs/uploads/?digest={mono_digest}")),
        &[("Content-Type", "application/octet-stream")],
        &mono,
    );
    case!(
        "POST request with digest and blob should yield a 201 or 202",
        r.status == 201 || r.status == 202,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/blobs/{mono_digest}")));
    case!(
        "GET request to blob URL from prior request should yield 200 or 404 based on response code",
        r.status == 200 && r.body == mono,
        r
    );
    let r = send(
        "POST",
        &f.url(&format!("/v2/{repo}/blobs/uploads/")),
        &[],
        b"",
    );
    case!(
        "POST request should yield a session ID",
        r.status == 202
            && r.header("Location")
                .is_some_and(|l| l.len() > format!("/v2/{repo}/blobs/uploads/").len()),
        r
    );
    let location = f.url(r.header("Location").expect("Location"));
    let r = send(
        "PUT",
        &format!("{location}?digest={}", f.config),
        &[("Content-Type", "application/octet-stream")],
        &f.config_bytes,
    );
    case!(
        "PUT upload of a blob should yield a 201 Response",
        r.status == 201,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/blobs/{}", f.config)));
    case!(
        "GET request to existing blob should yield 200 response",
        r.status == 200 && r.body == f.config_bytes,
        r
    );
    let r = send(
        "POST",
        &f.url(&format!("/v2/{repo}/blobs/uploads/")),
        &[],
        b"",
    );
    let location = f.url(r.header("Location").expect("Location"));
    let r = send(
        "PUT",
        &format!("{location}?digest={}", f.layer),
        &[("Content-Type", "application/octet-stream")],
        &f.layer_bytes,
    );
    case!(
        "PUT upload of a layer blob should yield a 201 Response",
        r.status == 201,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/blobs/{}", f.layer)));
    case!(
        "GET request to existing layer should yield 200 response",
        r.status == 200 && r.body == f.layer_bytes,
        r
    );

    // Blob Upload Chunked
    let chunked = random_bytes(3 * 1024, 9);
    let chunked_digest = sha256(&chunked);
    let (a, b, c) = (&chunked[..1024], &chunked[1024..2048], &chunked[2048..]);
    let r = send(
        "POST",
        &f.url(&format!("/v2/{repo}/blobs/uploads/")),
        &[],
        b"",
    );
    let location = f.url(r.header("Location").expect("Location"));
    let r = send(
        "PATCH",
        &location,
        &[("Content-Range", "0-1023"), ("Content-Length", "1024")],
        a,
    );
    case!(
        "PATCH request with first chunk should return 202",
        r.status == 202 && r.header("Range") == Some("0-1023"),
        r
    );
    let location = f.url(r.header("Location").expect("Location"));
    let r = send(
        "PATCH",
        &location,
        &[("Content-Range", "2048-3071"), ("Content-Length", "1024")],
        c,
    );
    case!(
        "PATCH request with second chunk out of order should return 416",
        r.status == 416,
        r
    );
    let r = send(
        "PATCH",
        &location,
        &[("Content-Range", "0-1023"), ("Content-Length", "1024")],
        a,
    );
    case!(
        "Retry previous blob chunk should return 416",
        r.status == 416,
        r
    );
    let r = get(&location);
    case!(
        "Get on stale blob upload should return 204 with a range and location",
        r.status == 204 && r.header("Range") == Some("0-1023") && r.header("Location").is_some(),
        r
    );
    let r = send(
        "PATCH",
        &location,
        &[("Content-Range", "1024-2047"), ("Content-Length", "1024")],
        b,
    );
    let r2 = send(
        "PATCH",
        &location,
        &[("Content-Range", "2048-3071"), ("Content-Length", "1024")],
        c,
    );
    case!(
        "PATCH request with the rest of the chunks should return 202",
        r.status == 202 && r2.status == 202 && r2.header("Range") == Some("0-3071"),
        r2
    );
    let r = send(
        "PUT",
        &format!("{location}?digest={chunked_digest}"),
        &[],
        b"",
    );
    case!(
        "PUT request with digest should return 201",
        r.status == 201
            && get(&f.url(&format!("/v2/{repo}/blobs/{chunked_digest}"))).body == chunked,
        r
    );

    // Cross-Repository Blob Mount
    let r = send(
        "POST",
        &f.url(&format!(
            "/v2/conformance/mount/blobs/uploads/?mount={mono_digest}"
        )),
        &[],
        b"",
    );
    case!(
        "Cross-mounting of a blob without the from argument should yield either 201 or 202",
        r.status == 201
            && r.header("Location")
                == Some(format!("/v2/conformance/mount/blobs/{mono_digest}").as_str()),
        r
    );
    let r = get(&f.url(&format!("/v2/conformance/mount/blobs/{mono_digest}")));
    case!(
        "GET request to test digest within cross-mount namespace should return 200",
        r.status == 200 && r.body == mono,
        r
    );
    let nonexistent = sha256(b"not here");
    let r = send(
        "POST",
        &f.url(&format!(
            "/v2/conformance/mount/blobs/uploads/?mount={nonexistent}&from={repo}"
        )),
        &[],
        b"",
    );
    case!(
        "Cross-mounting of nonexistent blob should yield 202",
        r.status == 202 && r.header("Location").is_some(),
        r
    );
    let r = send(
        "POST",
        &f.url(&format!(
            "/v2/conformance/mount2/blobs/uploads/?mount={digest}"
        )),
        &[],
        b"",
    );
    case!(
        "Cross-mounting without from, and automatic content discovery enabled should return a 201",
        r.status == 201,
        r
    );
    let r = send(
        "POST",
        &f.url(&format!(
            "/v2/conformance/mount3/blobs/uploads/?mount={digest}&from={repo}"
        )),
        &[],
        b"",
    );
    case!(
        "Cross-mounting of a blob with the from argument should return a 201",
        r.status == 201,
        r
    );

    // Manifest Upload
    let r = get(&f.url(&format!("/v2/{repo}/manifests/tagtest0")));
    case!(
        "GET nonexistent manifest should return 404",
        r.status == 404,
        r
    );
    let (manifest_digest, r) = push_manifest(&f.registry, repo, "tagtest0", &f.manifest());
    case!(
        "PUT should accept a manifest upload",
        r.status == 201
            && r.header("Location")
                == Some(format!("/v2/{repo}/manifests/{manifest_digest}").as_str()),
        r
    );
    let empty_config = push_blob(&f.registry, repo, b"{}");
    let no_layers = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_config, "size": 2},
        "layers": [],
    });
    let (_, r) = push_manifest(&f.registry, repo, "emptylayer", &no_layers);
    case!(
        "Registry should accept a manifest upload with no layers",
        r.status == 201,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/manifests/{manifest_digest}")));
    case!(
        "GET request to manifest URL (digest) should yield 200 response",
        r.status == 200 && sha256(&r.body) == manifest_digest,
        r
    );
}

#[test]
fn content_discovery() {
    let f = Fixture::new();
    let repo = "conformance/discovery";
    let tags = ["test3", "test0", "test10", "test2", "test1", "latest"];
    let mut digest = String::new();
    for tag in tags {
        digest = f.push_image(repo, tag);
    }
    let mut sorted: Vec<&str> = tags.to_vec();
    sorted.sort();

    let r = get(&f.url(&format!("/v2/{repo}/tags/list")));
    let listed: Vec<String> = serde_json::from_value(r.json()["tags"].clone()).unwrap_or_default();
    case!(
        "GET request to list tags should yield 200 response",
        r.status == 200 && listed.len() == tags.len(),
        r
    );
    case!(
        "GET tags list should be in lexical order",
        listed == sorted,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/tags/list?n=2")));
    case!(
        "GET number of tags should be limited by n",
        r.json()["tags"] == json!(sorted[..2]) && r.header("Link").is_some(),
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/tags/list?n=2&last={}", sorted[1])));
    case!(
        "GET start of tag is set by last parameter",
        r.json()["tags"] == json!(sorted[2..4]),
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/tags/list?n=0")));
    case!(
        "GET with n=0 should return an empty list",
        r.status == 200 && r.json()["tags"] == json!([]),
        r
    );

    // Referrers: two artifacts of different types refer to the image.
    let empty = push_blob(&f.registry, repo, b"{}");
    let mut artifacts = Vec::new();
    for (i, artifact_type) in [
        "application/vnd.example.sbom",
        "application/vnd.example.signature",
    ]
    .iter()
    .enumerate()
    {
        let payload = push_blob(&f.registry, repo, format!("payload {i}").as_bytes());
        let artifact = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": payload, "size": 9}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1},
        });
        let bytes = serde_json::to_vec(&artifact).expect("json");
        let (d, r) = push_manifest(&f.registry, repo, &sha256(&bytes), &artifact);
        assert_eq!(r.status, 201, "{}", r.text());
        artifacts.push(d);
    }
    let missing = sha256(b"no such subject");
    let r = get(&f.url(&format!("/v2/{repo}/referrers/{missing}")));
    case!(
        "GET request to nonexistent blob should result in empty 200 response",
        r.status == 200
            && r.json()["manifests"] == json!([])
            && r.header("Content-Type") == Some(OCI_INDEX),
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/referrers/{digest}")));
    let found: Vec<String> = r.json()["manifests"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|d| d["digest"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    case!(
        "GET request to existing blob should yield 200",
        r.status == 200 && found.len() == 2 && artifacts.iter().all(|a| found.contains(a)),
        r
    );
    let r = get(&f.url(&format!(
        "/v2/{repo}/referrers/{digest}?artifactType=application/vnd.example.sbom"
    )));
    case!(
        "GET request to existing blob with filter should yield 200",
        r.status == 200
            && r.json()["manifests"].as_array().map(Vec::len) == Some(1)
            && r.json()["manifests"][0]["digest"] == artifacts[0].as_str()
            && r.header("OCI-Filters-Applied") == Some("artifactType"),
        r
    );
}

#[test]
fn content_management() {
    let f = Fixture::new();
    let repo = "conformance/management";
    let digest = f.push_image(repo, "tagtest0");
    f.push_image(repo, "tagtest1");

    let r = send(
        "DELETE",
        &f.url(&format!("/v2/{repo}/manifests/tagtest0")),
        &[],
        b"",
    );
    case!(
        "DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)",
        r.status == 202,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/manifests/tagtest0")));
    case!(
        "GET request to deleted tag should yield 404",
        r.status == 404,
        r
    );
    let r = send(
        "DELETE",
        &f.url(&format!("/v2/{repo}/manifests/{digest}")),
        &[],
        b"",
    );
    case!(
        "DELETE request to manifest (digest) should yield 202 response unless already deleted",
        r.status == 202,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/manifests/{digest}")));
    case!(
        "GET request to deleted manifest URL should yield 404 response, unless delete is disallowed",
        r.status == 404,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/tags/list")));
    case!(
        "GET request to tags list after manifest delete drops its tags",
        r.json()["tags"] == json!([]),
        r
    );

    let r = send(
        "DELETE",
        &f.url(&format!("/v2/{repo}/blobs/{}", f.config)),
        &[],
        b"",
    );
    case!(
        "DELETE request to blob URL should yield 202 response",
        r.status == 202,
        r
    );
    let r = get(&f.url(&format!("/v2/{repo}/blobs/{}", f.config)));
    case!(
        "GET request to deleted blob URL should yield 404 response",
        r.status == 404,
        r
    );
}
