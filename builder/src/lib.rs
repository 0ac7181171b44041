//! The image builder: turns a small TOML config into a reproducible OCI image, written to
//! an OCI layout directory or pushed to a registry. Work in progress.

use std::path::PathBuf;

/// `strait build` arguments.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Build configuration.
    #[arg(short = 'f', long = "file", default_value = "strait-build.toml")]
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the builder is not implemented yet")]
    NotImplemented,
}

/// Runs `strait build`.
pub fn build_command(_args: BuildArgs) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
