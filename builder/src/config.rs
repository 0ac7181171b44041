//! `strait-build.toml`: the file as written ([`BuildFile`]) and the validated plan it
//! turns into ([`Plan`]): templates expanded, paths resolved against the file's directory,
//! globs compiled, references parsed. Every error names the file, line, column and key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use config::{ConfigError, Source};
use globset::{GlobSet, GlobSetBuilder};
use oci::Reference;
use serde::Deserialize;
use toml::Spanned;

use crate::compress::Compression;

/// The build file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    /// `scratch` (the default) or an image reference.
    pub base: Option<Spanned<String>>,
    /// A documented layout: `static-binary` or `scripts`.
    pub template: Option<Spanned<String>>,
    /// `static-binary`: the executable to ship.
    pub binary: Option<Spanned<String>>,
    /// `scripts`: the directory of scripts.
    pub scripts: Option<Spanned<String>>,
    /// `scripts`: the interpreter in the base image, a path or a command line.
    pub interpreter: Option<StringOrList>,
    /// `scripts`: the script to run, relative to `scripts`.
    pub main: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Target platforms, `os/arch[/variant]`; default `linux/amd64`.
    pub platforms: Option<Spanned<Vec<Spanned<String>>>>,
    /// `gzip` (default) or `zstd`.
    pub compression: Option<Spanned<String>>,
    pub compression_level: Option<Spanned<i32>>,
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerFile {
    /// A file or directory, relative to the build file; `{os}`, `{arch}`, `{variant}` and
    /// `{platform}` are replaced per target platform.
    pub src: Spanned<String>,
    /// Absolute path in the image; a trailing `/` puts a single file inside it.
    pub dest: Spanned<String>,
    /// Mode of regular files (default: 0755 if executable by its owner, else 0644).
    pub mode: Option<Mode>,
    /// Mode of directories (default 0755).
    pub dir_mode: Option<Mode>,
    /// `uid:gid` (default `0:0`).
    pub owner: Option<Spanned<String>>,
    #[serde(default)]
    pub include: Vec<Spanned<String>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    /// Absolute paths in the image to delete from the layers below (the base image's):
    /// OCI whiteout entries in this layer.
    #[serde(default)]
    pub delete: Vec<Spanned<String>>,
    /// Store the sources' extended attributes (file capabilities, `user.*`), as PAX
    /// `SCHILY.xattr.*` records. Off by default: they are host state, not content.
    #[serde(default)]
    pub xattrs: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

/// A permission mode: a TOML integer (`0o755`) or an octal string (`"0755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mode such as 0o755 or \"0755\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Mode, E> {
                u32::try_from(v)
                    .ok()
                    .filter(|v| *v <= 0o7777)
                    .map(Mode)
                    .ok_or_else(|| E::custom(format!("mode {v:#o} is out of range (0 to 0o7777)")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Mode, E> {
                u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|v| *v <= 0o7777)
                    .map(Mode)
                    .ok_or_else(|| {
                        E::custom(format!("`{v}` is not an octal mode such as \"0755\""))
                    })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// An exposed port: `8080`, `"8080"`, `"8080/tcp"` or `"53/udp"`, kept as `port/proto`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port(pub String);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port such as 8080 or \"53/udp\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Port, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Port, E> {
                let (number, proto) = v.split_once('/').unwrap_or((v, "tcp"));
                let number_ok = number.parse::<u16>().is_ok_and(|n| n > 0);
                if !number_ok || !matches!(proto, "tcp" | "udp" | "sctp") {
                    return Err(E::custom(format!(
                        "`{v}` is not a port: use 1-65535, optionally with /tcp, /udp or /sctp"
                    )));
                }
                Ok(Port(format!("{number}/{proto}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A target platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(text: &str) -> Option<Platform> {
        let mut parts = text.split('/');
        let os = parts.next()?.to_string();
        let architecture = parts.next()?.to_string();
        let variant = parts.next().map(str::to_string);
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if parts.next().is_some()
            || !ok(&os)
            || !ok(&architecture)
            || variant.as_deref().is_some_and(|v| !ok(v))
        {
            return None;
        }
        Some(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// This platform as a descriptor carries it.
    pub fn to_spec(&self) -> oci::Platform {
        oci::platform::platform(&self.os, &self.architecture, self.variant.as_deref())
    }

    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The image the layers go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    Image(Reference),
}

/// Image settings layered over the base's.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub ports: BTreeSet<String>,
    pub labels: BTreeMap<String, String>,
}

/// One layer, validated.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// `src` as written (for history entries and messages).
    pub src_text: String,
    /// `dest` as written.
    pub dest_text: String,
    /// The source for each platform (the same path when `src` names no placeholder).
    pub src: BTreeMap<Platform, PathBuf>,
    /// The path in the image, without the leading `/`; ends with `/` for a directory.
    pub dest: String,
    pub mode: Option<u32>,
    pub dir_mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub include: Option<GlobSet>,
    pub exclude: Option<GlobSet>,
    /// Globs as written, part of the cache key.
    pub globs: Vec<String>,
    /// Paths to whiteout (no leading `/`, no trailing `/`).
    pub delete: Vec<String>,
    /// Whether the sources' extended attributes go into the layer.
    pub xattrs: bool,
}

/// A validated build.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PathBuf,
    pub base: Base,
    pub platforms: Vec<Platform>,
    pub layers: Vec<LayerPlan>,
    pub image: ImageSettings,
    pub compression: Compression,
}

/// Reads, parses and validates a build file.
/// `platforms`, when given, replaces the file's `platforms`.
pub fn load(path: &Path, platforms: Option<Vec<Platform>>) -> Result<Plan, ConfigError> {
    let source = Source::File(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        source_name: source.clone(),
        error,
    })?;
    let file: BuildFile = config::parse(source.clone(), &text)?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Checker {
        source,
        text: &text,
        dir: &dir,
        platforms,
    }
    .plan(file, path)
}

struct Checker<'a> {
    source: Source,
    text: &'a str,
    dir: &'a Path,
    platforms: Option<Vec<Platform>>,
}

impl Checker<'_> {
    fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        message: String,
    ) -> ConfigError {
        let (line, column) = span.map_or((0, 0), |s| config::line_column(self.text, s.start));
        ConfigError::Invalid {
            source_name: self.source.clone(),
            line,
            column,
            key: key.to_string(),
            message,
        }
    }

    fn plan(&self, file: BuildFile, path: &Path) -> Result<Plan, ConfigError> {
        let base = match &file.base {
            None => Base::Scratch,
            Some(base) if base.get_ref() == "scratch" => Base::Scratch,
            Some(base) => Base::Image(
                Reference::parse(base.get_ref())
                    .map_err(|e| self.error(Some(base.span()), "base", e.to_string()))?,
            ),
        };
        let platforms = match &file.platforms {
            _ if self.platforms.is_some() => self.platforms.clone().unwrap_or_default(),
            None => vec![Platform::linux_amd64()],
            Some(list) if list.get_ref().is_empty() => {
                return Err(self.error(
                    Some(list.span()),
                    "platforms",
                    "list at least one platform, e.g. \"linux/amd64\"".into(),
                ));
            }
            Some(list) => {
                let mut platforms = Vec::new();
                for (i, text) in list.get_ref().iter().enumerate() {
                    let platform = Platform::parse(text.get_ref()).ok_or_else(|| {
                        self.error(
                            Some(text.span()),
                            &format!("platforms[{i}]"),
                            format!("`{}` is not a platform: use os/arch[/variant], e.g. \"linux/arm64\"", text.get_ref()),
                        )
                    })?;
                    if platforms.contains(&platform) {
                        return Err(self.error(
                            Some(text.span()),
                            &format!("platforms[{i}]"),
                            format!("`{platform}` is listed twice"),
                        ));
                    }
                    platforms.push(platform);
                }
                platforms
            }
        };
        let compression = self.compression(&file)?;

        let mut image = ImageSettings {
            entrypoint: file.entrypoint.clone(),
            cmd: file.cmd.clone(),
            env: file.env.clone(),
            workdir: file.workdir.clone(),
            user: file.user.clone(),
            ports: file.ports.iter().map(|p| p.0.clone()).collect(),
            labels: file.labels.clone(),
        };
        for key in file.env.keys() {
            if key.is_empty() || key.contains('=') {
                return Err(self.error(
                    None,
                    &format!("env.{key}"),
                    "environment variable names cannot be empty or contain `=`".into(),
                ));
            }
        }
        let mut layers = Vec::new();
        self.template(&file, &base, &platforms, &mut image, &mut layers)?;
        for (i, layer) in file.layers.iter().enumerate() {
            layers.push(self.layer(i, layer, &platforms)?);
        }
        if matches!(base, Base::Scratch) && layers.is_empty() {
            return Err(self.error(
                None,
                "layer",
                "an image on `scratch` needs at least one [[layer]] (or a template)".into(),
            ));
        }
        Ok(Plan {
            file: path.to_path_buf(),
            base,
            platforms,
            layers,
            image,
            compression,
        })
    }

    fn compression(&self, file: &BuildFile) -> Result<Compression, ConfigError> {
        let level = file.compression_level.as_ref();
        let name = file
            .compression
            .as_ref()
            .map_or("gzip", |c| c.get_ref().as_str());
        let span = file.compression.as_ref().map(|c| c.span());
        let level_err = |range: &str| {
            self.error(
                level.map(|l| l.span()),
                "compression_level",
                format!("{name} levels are {range}"),
            )
        };
        match name {
            "gzip" => {
                let level = level.map_or(Compression::DEFAULT_GZIP_LEVEL, |l| *l.get_ref());
                if !(1..=12).contains(&level) {
                    return Err(level_err("1 to 12"));
                }
                Ok(Compression::Gzip {
                    level: level as u32,
                })
            }
            "zstd" => {
                let level = level.map_or(Compression::DEFAULT_ZSTD_LEVEL, |l| *l.get_ref());
                if !(1..=19).contains(&level) {
                    return Err(level_err("1 to 19"));
                }
                Ok(Compression::Zstd { level })
            }
            other => Err(self.error(
                span,
                "compression",
                format!("`{other}` is not a compression: use \"gzip\" or \"zstd\""),
            )),
        }
    }

    fn template(
        &self,
        file: &BuildFile,
        base: &Base,
        platforms: &[Platform],
        image: &mut ImageSettings,
        layers: &mut Vec<LayerPlan>,
    ) -> Result<(), ConfigError> {
        let template = file.template.as_ref();
        let name = template.map(|t| t.get_ref().as_str());
        let only_for = |key: &str, span: Option<std::ops::Range<usize>>, wanted: &str| {
            self.error(
                span,
                key,
                format!("`{key}` belongs to `template = \"{wanted}\"`"),
            )
        };
        if name != Some("static-binary")
            && let Some(binary) = &file.binary
        {
            return Err(only_for("binary", Some(binary.span()), "static-binary"));
        }
        if name != Some("scripts") {
            if let Some(scripts) = &file.scripts {
                return Err(only_for("scripts", Some(scripts.span()), "scripts"));
            }
            if file.interpreter.is_some() {
                return Err(only_for("interpreter", None, "scripts"));
            }
            if file.main.is_some() {
                return Err(only_for("main", None, "scripts"));
            }
        }
        let Some(template) = template else {
            return Ok(());
        };
        let missing = |key: &str| {
            self.error(
                Some(template.span()),
                key,
                format!("template `{}` needs `{key}`", template.get_ref()),
            )
        };
        match template.get_ref().as_str() {
            "static-binary" => {
                let binary = file.binary.as_ref().ok_or_else(|| missing("binary"))?;
                let name = Path::new(binary.get_ref())
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .filter(|n| !n.contains('{'))
                    .unwrap_or_else(|| "app".to_string());
                let dest = format!("/app/{name}");
                layers.push(self.layer_from(
                    "binary",
                    binary,
                    &Spanned::new(binary.span(), dest.clone()),
                    Some(0o755),
                    platforms,
                )?);
                image.entrypoint.get_or_insert_with(|| vec![dest]);
                image.user.get_or_insert_with(|| "65534:65534".to_string());
                Ok(())
            }
            "scripts" => {
                if matches!(base, Base::Scratch) {
                    return Err(self.error(
                        Some(template.span()),
                        "base",
                        "template `scripts` needs a `base` image that has the interpreter".into(),
                    ));
                }
                let scripts = file.scripts.as_ref().ok_or_else(|| missing("scripts"))?;
                let interpreter = match file
                    .interpreter
                    .as_ref()
                    .ok_or_else(|| missing("interpreter"))?
                {
                    StringOrList::One(one) => vec![one.clone()],
                    StringOrList::Many(many) => many.clone(),
                };
                let main = file.main.as_ref().ok_or_else(|| missing("main"))?;
                layers.push(self.layer_from(
                    "scripts",
                    scripts,
                    &Spanned::new(scripts.span(), "/app/".to_string()),
                    None,
                    platforms,
                )?);
                let mut entrypoint = interpreter;
                entrypoint.push(format!("/app/{}", main.trim_start_matches("./")));
                image.entrypoint.get_or_insert(entrypoint);
                image.workdir.get_or_insert_with(|| "/app".to_string());
                Ok(())
            }
            other => Err(self.error(
                Some(template.span()),
                "template",
                format!("`{other}` is not a template: use \"static-binary\" or \"scripts\""),
            )),
        }
    }

    fn layer_from(
        &self,
        key: &str,
        src: &Spanned<String>,
        dest: &Spanned<String>,
        mode: Option<u32>,
        platforms: &[Platform],
    ) -> Result<LayerPlan, ConfigError> {
        let layer = LayerFile {
            src: src.clone(),
            dest: dest.clone(),
            mode: mode.map(Mode),
            dir_mode: None,
            owner: None,
            include: Vec::new(),
            exclude: Vec::new(),
            delete: Vec::new(),
            xattrs: false,
        };
        self.layer_at(key, &layer, platforms)
    }

    fn layer(
        &self,
        index: usize,
        layer: &LayerFile,
        platforms: &[Platform],
    ) -> Result<LayerPlan, ConfigError> {
        self.layer_at(&format!("layer[{index}]"), layer, platforms)
    }

    fn layer_at(
        &self,
        key: &str,
        layer: &LayerFile,
        platforms: &[Platform],
    ) -> Result<LayerPlan, ConfigError> {
        let sub = |name: &str| {
            if key.starts_with("layer") {
                format!("{key}.{name}")
            } else {
                key.to_string()
            }
        };
        let dest_text = layer.dest.get_ref();
        let dest = normalize_dest(dest_text).ok_or_else(|| {
            self.error(
                Some(layer.dest.span()),
                &sub("dest"),
                format!("`{dest_text}` is not an absolute path in the image (it must start with `/` and have no `..`)"),
            )
        })?;
        let mut src = BTreeMap::new();
        for platform in platforms {
            let text = substitute(layer.src.get_ref(), platform);
            if text.contains(['{', '}']) {
                return Err(self.error(
                    Some(layer.src.span()),
                    &sub("src"),
                    format!(
                        "`{}`: the placeholders are {{os}}, {{arch}}, {{variant}} and {{platform}}",
                        layer.src.get_ref()
                    ),
                ));
            }
            let path = self.dir.join(&text);
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(self.error(
                    Some(layer.src.span()),
                    &sub("src"),
                    format!("`{text}` does not exist (looked for {})", path.display()),
                ));
            }
            src.insert(platform.clone(), path);
        }
        let (uid, gid) = match &layer.owner {
            None => (0, 0),
            Some(owner) => parse_owner(owner.get_ref()).ok_or_else(|| {
                self.error(
                    Some(owner.span()),
                    &sub("owner"),
                    format!(
                        "`{}` is not `uid:gid` (numbers, e.g. \"1000:1000\")",
                        owner.get_ref()
                    ),
                )
            })?,
        };
        let globs =
            |list: &[Spanned<String>], name: &str| -> Result<Option<GlobSet>, ConfigError> {
                if list.is_empty() {
                    return Ok(None);
                }
                let mut builder = GlobSetBuilder::new();
                for (i, glob) in list.iter().enumerate() {
                    // A glob without `/` matches at any depth, as in .gitignore.
                    let pattern = if glob.get_ref().contains('/') {
                        glob.get_ref().clone()
                    } else {
                        format!("**/{}", glob.get_ref())
                    };
                    let compiled = globset::GlobBuilder::new(&pattern)
                        .literal_separator(true)
                        .build()
                        .map_err(|e| {
                            self.error(
                                Some(glob.span()),
                                &format!("{}[{i}]", sub(name)),
                                format!("bad glob: {}", e.kind()),
                            )
                        })?;
                    builder.add(compiled);
                }
                builder
                    .build()
                    .map(Some)
                    .map_err(|e| self.error(None, &sub(name), e.to_string()))
            };
        let mut delete = Vec::new();
        for (i, path) in layer.delete.iter().enumerate() {
            let normalized = normalize_dest(path.get_ref())
                .map(|p| p.trim_end_matches('/').to_string())
                .filter(|p| {
                    !p.is_empty() && !p.rsplit('/').next().is_some_and(|n| n.starts_with(".wh."))
                });
            let Some(normalized) = normalized else {
                return Err(self.error(
                    Some(path.span()),
                    &format!("{}[{i}]", sub("delete")),
                    format!(
                        "`{}` is not a path to delete: it must be absolute, not `/`, with no `..` and no `.wh.` name",
                        path.get_ref()
                    ),
                ));
            };
            delete.push(normalized);
        }
        delete.sort();
        delete.dedup();
        let mut written = Vec::new();
        for g in &layer.include {
            written.push(format!("+{}", g.get_ref()));
        }
        for g in &layer.exclude {
            written.push(format!("-{}", g.get_ref()));
        }
        Ok(LayerPlan {
            src_text: layer.src.get_ref().clone(),
            dest_text: dest_text.clone(),
            src,
            dest,
            mode: layer.mode.map(|m| m.0),
            dir_mode: layer.dir_mode.map_or(0o755, |m| m.0),
            uid,
            gid,
            include: globs(&layer.include, "include")?,
            exclude: globs(&layer.exclude, "exclude")?,
            globs: written,
            delete,
            xattrs: layer.xattrs,
        })
    }
}

fn substitute(src: &str, platform: &Platform) -> String {
    src.replace("{os}", &platform.os)
        .replace("{arch}", &platform.architecture)
        .replace("{variant}", platform.variant.as_deref().unwrap_or(""))
        .replace("{platform}", &platform.to_string().replace('/', "-"))
}

fn parse_owner(text: &str) -> Option<(u32, u32)> {
    let (uid, gid) = text.split_once(':')?;
    Some((uid.parse().ok()?, gid.parse().ok()?))
}

/// `/app/` -> `app/`, `/app/x` -> `app/x`; `None` for relative paths and `..`.
fn normalize_dest(dest: &str) -> Option<String> {
    let rest = dest.strip_prefix('/')?;
    let dir = rest.is_empty() || rest.ends_with('/');
    let parts: Vec<&str> = rest
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return None;
    }
    let mut out = parts.join("/");
    if dir && !out.is_empty() {
        out.push('/');
    }
    Some(out)
}

#[cfg(test)]
mod tests;
