//! Typed configuration loading for strait.
//!
//! Each crate owns the struct for its own section (`#[serde(deny_unknown_fields)]`);
//! the binary composes them into one document. This crate only turns TOML text into
//! such a struct and, when that fails, into an error a person can act on: the file,
//! line and column, the dotted key, and what was wrong.
//!
//! It does no I/O beyond reading the one file it is given.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Where a configuration came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// Built into the binary (the demo config) or given inline.
    Builtin(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Builtin(name) => write!(f, "<{name}>"),
        }
    }
}

/// A configuration error that names the place and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: cannot read: {error}")]
    Read {
        source_name: Source,
        #[source]
        error: std::io::Error,
    },
    #[error("{}", format_invalid(.source_name, *.line, *.column, .key, .message))]
    Invalid {
        source_name: Source,
        /// 1-based; 0 when the position is unknown.
        line: usize,
        /// 1-based; 0 when the position is unknown.
        column: usize,
        /// Dotted path of the offending key, e.g. `store.url`; empty at the top level.
        key: String,
        message: String,
    },
}

fn format_invalid(
    source_name: &Source,
    line: usize,
    column: usize,
    key: &str,
    message: &str,
) -> String {
    let place = if line > 0 {
        format!("{source_name}:{line}:{column}")
    } else {
        source_name.to_string()
    };
    if key.is_empty() {
        format!("{place}: {message}")
    } else {
        format!("{place}: key `{key}`: {message}")
    }
}

impl ConfigError {
    /// The dotted key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            _ => None,
        }
    }

    /// (line, column), both 1-based, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line, column, .. } if *line > 0 => Some((*line, *column)),
            _ => None,
        }
    }
}

/// Reads and parses a TOML file into `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let source_name = Source::File(path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        source_name: source_name.clone(),
        error,
    })?;
    parse(source_name, &text)
}

/// Parses TOML text into `T`, attributing errors to `source_name`.
pub fn parse<T: DeserializeOwned>(source_name: Source, text: &str) -> Result<T, ConfigError> {
    let deserializer = match toml::Deserializer::parse(text) {
        Ok(deserializer) => deserializer,
        Err(error) => return Err(invalid(source_name, text, String::new(), &error)),
    };
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let key = key_path(error.path());
        invalid(source_name, text, key, error.inner())
    })
}

fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            Segment::Unknown => {}
        }
    }
    key
}

fn invalid(source_name: Source, text: &str, key: String, error: &toml::de::Error) -> ConfigError {
    let (line, column) = error
        .span()
        .map(|span| line_column(text, span.start))
        .unwrap_or((0, 0));
    let mut message = error.message().trim_end().to_string();
    // serde's "unknown field" message names the field but not what to do about it.
    if message.starts_with("unknown field") {
        message.push_str(" (remove it or check its spelling)");
    }
    ConfigError::Invalid {
        source_name,
        line,
        column,
        key,
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset: for errors a caller finds
/// after parsing, at a span it kept (`toml::Spanned`).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
