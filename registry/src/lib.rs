//! The OCI Distribution v1.1 registry. Work in progress.

pub mod cli;
