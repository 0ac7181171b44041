//! The image documents the builder writes: the image config (kept as JSON, so a base
//! image's fields we do not know survive: `oci_spec::image::ImageConfiguration` would drop
//! them), and [`canonical_json`], the one serialisation of every document whose digest
//! must not change.

use std::collections::HashMap;

use oci::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{ImageSettings, Platform};

/// An error building an OCI document (oci-spec's builders check required fields).
pub type SpecError = oci::oci_spec::OciSpecError;

/// An OCI image manifest (`schemaVersion` 2, `mediaType` set).
pub fn manifest(config: Descriptor, layers: Vec<Descriptor>) -> Result<ImageManifest, SpecError> {
    oci::oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
}

/// An OCI image index (`schemaVersion` 2, `mediaType` set).
pub fn index(manifests: Vec<Descriptor>) -> Result<ImageIndex, SpecError> {
    oci::oci_spec::image::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
}

/// One annotation, as a descriptor carries it.
pub fn annotation(key: &str, value: &str) -> HashMap<String, String> {
    [(key.to_string(), value.to_string())].into()
}

/// JSON with object keys in sorted order, whatever serde_json's map type is in this build.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    serde_json::to_vec(&sorted(value))
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sorted(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// `1970-01-01T00:00:00Z`-style UTC time of a Unix timestamp.
pub fn rfc3339(seconds: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// One new layer's contribution to the image config.
pub struct NewLayer {
    pub diff_id: Digest,
    pub created_by: String,
}

/// The image config: the base's (or an empty one for scratch), with our settings over it,
/// our layers' diff_ids appended and a history entry per layer.
pub fn image_config(
    base: Option<&Value>,
    settings: &ImageSettings,
    platform: &Platform,
    layers: &[NewLayer],
    created: u64,
) -> Value {
    let mut root = base.and_then(Value::as_object).cloned().unwrap_or_default();
    // Fields that describe the base's own build, not ours.
    for key in [
        "container",
        "container_config",
        "docker_version",
        "id",
        "parent",
    ] {
        root.remove(key);
    }
    let created = rfc3339(created);
    root.insert("created".into(), Value::String(created.clone()));
    root.insert(
        "architecture".into(),
        Value::String(platform.architecture.clone()),
    );
    root.insert("os".into(), Value::String(platform.os.clone()));
    match &platform.variant {
        Some(v) => {
            root.insert("variant".into(), Value::String(v.clone()));
        }
        None => {
            root.remove("variant");
        }
    }

    let mut config = root
        .remove("config")
        .and_then(|c| match c {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default();
    // Env: the base's, with ours overriding by name, in the base's order then ours.
    let mut env: Vec<String> = config
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for (key, value) in &settings.env {
        let item = format!("{key}={value}");
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            Some(existing) => *existing = item,
            None => env.push(item),
        }
    }
    if !env.is_empty() {
        config.insert("Env".into(), Value::from(env));
    }
    if let Some(entrypoint) = &settings.entrypoint {
        config.insert("Entrypoint".into(), Value::from(entrypoint.clone()));
        // As in a Dockerfile: a new entrypoint drops the base's cmd.
        if settings.cmd.is_none() {
            config.remove("Cmd");
        }
    }
    if let Some(cmd) = &settings.cmd {
        config.insert("Cmd".into(), Value::from(cmd.clone()));
    }
    if let Some(workdir) = &settings.workdir {
        config.insert("WorkingDir".into(), Value::String(workdir.clone()));
    }
    if let Some(user) = &settings.user {
        config.insert("User".into(), Value::String(user.clone()));
    }
    if !settings.ports.is_empty() {
        let mut ports = config
            .get("ExposedPorts")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for port in &settings.ports {
            ports.insert(port.clone(), Value::Object(Map::new()));
        }
        config.insert("ExposedPorts".into(), Value::Object(ports));
    }
    if !settings.labels.is_empty() {
        let mut labels = config
            .get("Labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in &settings.labels {
            labels.insert(k.clone(), Value::String(v.clone()));
        }
        config.insert("Labels".into(), Value::Object(labels));
    }
    root.insert("config".into(), Value::Object(config));

    let mut rootfs = root
        .remove("rootfs")
        .and_then(|r| match r {
            Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default();
    rootfs.insert("type".into(), Value::String("layers".into()));
    let mut diff_ids: Vec<Value> = rootfs
        .get("diff_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    diff_ids.extend(layers.iter().map(|l| Value::String(l.diff_id.to_string())));
    rootfs.insert("diff_ids".into(), Value::Array(diff_ids));
    root.insert("rootfs".into(), Value::Object(rootfs));

    let mut history: Vec<Value> = root
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for layer in layers {
        let mut item = Map::new();
        item.insert("created".into(), Value::String(created.clone()));
        item.insert("created_by".into(), Value::String(layer.created_by.clone()));
        history.push(Value::Object(item));
    }
    root.insert("history".into(), Value::Array(history));
    Value::Object(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(crate::tar::MAX_MTIME), "2242-03-16T12:56:31Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    /// The bytes of the documents whose digests name an image: key order, fields and
    /// their absence. (Written by the builder's own structs before it used oci-spec's; a
    /// change here changes every image digest.)
    #[test]
    fn manifest_and_index_bytes() {
        let layer = oci::Blob::new(MediaType::ImageLayerGzip, Digest::of(b"layer"), 5);
        let config = oci::Blob::new(MediaType::ImageConfig, Digest::of(b"{}"), 2);
        let m =
            manifest(config.into_descriptor(), vec![layer.into_descriptor()]).expect("manifest");
        let text = String::from_utf8(canonical_json(&m).expect("json")).expect("utf-8");
        expect_test::expect![[r#"{"config":{"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","mediaType":"application/vnd.oci.image.config.v1+json","size":2},"layers":[{"digest":"sha256:dac1d7cfa95021764849fd102524e141488c5e3a90f861dbb5a12d9ac8584f85","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":5}],"mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}"#]].assert_eq(&text);
        let entry = |arch: &str, variant: Option<&str>| {
            oci::Blob::new(MediaType::ImageManifest, Digest::of(arch.as_bytes()), 7)
                .with_platform(Some(
                    Platform::parse(&match variant {
                        Some(v) => format!("linux/{arch}/{v}"),
                        None => format!("linux/{arch}"),
                    })
                    .expect("platform")
                    .to_spec(),
                ))
                .into_descriptor()
        };
        let i = index(vec![entry("amd64", None), entry("arm", Some("v7"))]).expect("index");
        let text = String::from_utf8(canonical_json(&i).expect("json")).expect("utf-8");
        expect_test::expect![[r#"{"manifests":[{"digest":"sha256:5861314d7fccb39c2192173240eab44fa35ca66426201ca2acd0630a6258dd51","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"amd64","os":"linux"},"size":7},{"digest":"sha256:ddf7ff5ebd9d66ce161466c1c0262430fa04de32b0e420ee3f489e2e2112e386","mediaType":"application/vnd.oci.image.manifest.v1+json","platform":{"architecture":"arm","os":"linux","variant":"v7"},"size":7}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#]].assert_eq(&text);
        let mut top = oci::Blob::new(MediaType::ImageIndex, Digest::of(b"i"), 9).into_descriptor();
        top.set_annotations(Some(annotation(oci::media::REF_NAME, "latest")));
        let layout = index(vec![top]).expect("index");
        let text = String::from_utf8(canonical_json(&layout).expect("json")).expect("utf-8");
        expect_test::expect![[r#"{"manifests":[{"annotations":{"org.opencontainers.image.ref.name":"latest"},"digest":"sha256:de7d1b721a1e0632b7cf04edf5032c8ecffa9f9a08492152b926f1a5a7e765d7","mediaType":"application/vnd.oci.image.index.v1+json","size":9}],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#]].assert_eq(&text);
    }

    #[test]
    fn config_extends_base() {
        let base: Value = serde_json::json!({
            "architecture": "amd64", "os": "linux", "container": "abc",
            "config": {"Env": ["PATH=/usr/bin", "LANG=C"], "Cmd": ["sh"], "ExposedPorts": {"22/tcp": {}}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
            "history": [{"created_by": "base"}]
        });
        let settings = ImageSettings {
            entrypoint: Some(vec!["/app/run".into()]),
            env: [
                ("LANG".to_string(), "C.UTF-8".to_string()),
                ("A".to_string(), "1".to_string()),
            ]
            .into(),
            ports: ["8080/tcp".to_string()].into(),
            ..Default::default()
        };
        let layer = NewLayer {
            diff_id: Digest::of(b"x"),
            created_by: "strait build".into(),
        };
        let config = image_config(
            Some(&base),
            &settings,
            &Platform::linux_amd64(),
            &[layer],
            0,
        );
        let text = String::from_utf8(canonical_json(&config).expect("test")).expect("test");
        expect_test::expect![[r#"{"architecture":"amd64","config":{"Entrypoint":["/app/run"],"Env":["PATH=/usr/bin","LANG=C.UTF-8","A=1"],"ExposedPorts":{"22/tcp":{},"8080/tcp":{}}},"created":"1970-01-01T00:00:00Z","history":[{"created_by":"base"},{"created":"1970-01-01T00:00:00Z","created_by":"strait build"}],"os":"linux","rootfs":{"diff_ids":["sha256:aa","sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"],"type":"layers"}}"#]].assert_eq(&text);
    }
}
