//! OCI image-spec documents: descriptors, manifests, indexes, and the image config
//! (kept as JSON so a base image's fields we do not know survive).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{ImageSettings, Platform};
use crate::digest::Digest;

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlatformJson {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl From<&Platform> for PlatformJson {
    fn from(p: &Platform) -> Self {
        PlatformJson {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
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
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

/// Maps docker v2 media types of base-image blobs to their OCI equivalents (same bytes).
pub fn oci_media_type(media_type: &str) -> &str {
    match media_type {
        DOCKER_LAYER_GZIP => MEDIA_LAYER_GZIP,
        DOCKER_CONFIG => MEDIA_CONFIG,
        "application/vnd.docker.image.rootfs.diff.tar" => MEDIA_LAYER_TAR,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
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
