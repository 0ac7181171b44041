//! The image builder: turns a small TOML config into a reproducible OCI image, written to
//! an OCI layout directory and/or pushed to a registry, without any daemon.
//!
//! - `config`: the build file and the validated [`config::Plan`] (templates expanded).
//! - `tar`: layer entries and the deterministic tar stream.
//! - `compress`: chunked, parallel, deterministic gzip/zstd.
//! - `cache`: content-addressed blobs and the input -> diff_id -> blob maps.
//! - `image`: the image config, and the one serialisation of manifests and indexes.
//! - `registry`: the Distribution API client (pull the base, push the result, resolve a
//!   reference to a digest: [`resolve`]).
//! - `layout`: the OCI layout output, written atomically.
//! - `build`: the steps in order.
//! - `error`: what `strait build` reports.
//!
//! The OCI types (descriptors, manifests, digests, references) are the `oci` crate's.

#![forbid(unsafe_code)]

mod build;
pub mod cache;
pub mod compress;
pub mod config;
pub mod digest;
mod error;
pub mod image;
pub mod layout;
mod progress;
pub mod registry;
pub mod tar;

use std::path::PathBuf;

pub use build::{Built, Options, PushSummary};
pub use error::Error;

use oci::Reference;

use crate::config::Platform;
use crate::registry::{Access, Credentials, Resolved};

/// `strait build` arguments.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Build configuration.
    #[arg(short = 'f', long = "file", default_value = "strait-build.toml")]
    pub file: PathBuf,
    /// Push the image to this reference (`registry/repository[:tag]`).
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Write the image as an OCI image layout directory (replaced whole, atomically).
    #[arg(long, value_name = "DIR")]
    pub oci_dir: Option<PathBuf>,
    /// The tag recorded in the OCI layout's index.json.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Speak plain HTTP to non-loopback registries (loopback ones always are, unless
    /// --ca-cert is given).
    #[arg(long)]
    pub insecure: bool,
    /// Trust these CA certificates (PEM) and speak TLS to every registry, loopback ones
    /// included (a private registry's CA); a base image's registry may also verify
    /// against the public roots.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Target platforms, overriding the file's `platforms` (e.g. `linux/amd64,linux/arm64`).
    #[arg(long, value_delimiter = ',')]
    pub platform: Vec<String>,
    /// Registry credentials `USER:PASSWORD` (else ~/.docker/config.json `auths`).
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "STRAIT_REGISTRY_AUTH",
        hide_env_values = true
    )]
    pub user: Option<String>,
    /// Cache directory (default `$XDG_CACHE_HOME/strait` or `~/.cache/strait`).
    #[arg(long, env = "STRAIT_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compression threads (default: the number of cores, at most 8).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `strait build`.
pub fn build_command(args: BuildArgs) -> Result<(), Error> {
    let target = args.push.as_deref().map(Reference::parse).transpose()?;
    if let Some(target) = &target
        && target.digest.is_some()
    {
        return Err(Error::Usage(format!(
            "--push {target}: push to a tag, not a digest"
        )));
    }
    if !oci::names::is_tag(&args.tag) {
        return Err(Error::Usage(format!(
            "--tag `{}` is not a valid tag",
            args.tag
        )));
    }
    let platforms = args
        .platform
        .iter()
        .map(|p| {
            Platform::parse(p).ok_or_else(|| {
                Error::Usage(format!(
                    "--platform `{p}` is not a platform: use os/arch[/variant]"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let plan = config::load(&args.file, (!platforms.is_empty()).then_some(platforms))?;
    let options = Options {
        cache: cache::Cache::open(args.cache_dir.as_deref())?,
        mtime: source_date_epoch()?,
        threads: args
            .jobs
            .unwrap_or_else(compress::ParallelCompressor::<std::io::Sink>::default_threads)
            .max(1),
        access: access(
            args.insecure,
            &args.ca_cert,
            args.user.as_deref(),
            target.as_ref().map(|t| t.registry.as_str()),
        )?,
    };
    let mut progress = progress::Progress::new(args.quiet);
    let built = build::build(&plan, &options, &mut progress)?;
    if built.bytes_built > 0 && built.build_seconds > 0.0 {
        progress.line(&format!(
            "layers: {} in {:.2}s ({:.0} MiB/s)",
            progress::mib(built.bytes_built),
            built.build_seconds,
            built.bytes_built as f64 / built.build_seconds / (1024.0 * 1024.0)
        ));
    }
    let mut summary = None;
    if let Some(target) = &target {
        let pushed =
            build::push(&built, target, &options, &mut progress).map_err(|source| Error::Push {
                reference: target.to_string(),
                source,
            })?;
        progress.line(&format!("pushed {target}@{}", built.top.digest()));
        summary = Some(pushed);
    }
    // After the push, so a failed push leaves no layout behind either.
    if let Some(dir) = &args.oci_dir {
        layout::write(dir, &options.cache, &built.blobs, &built.top, &args.tag)?;
        progress.line(&format!("wrote {}:{}", dir.display(), args.tag));
    }
    build::report(&built, summary.as_ref());
    Ok(())
}

/// How to reach registries, from what `strait build` is given: `--insecure`, the
/// `--ca-cert` files, and `--user` (`USER:PASSWORD`, else docker's config), which goes
/// to `credentials_for` only when that is given (the registry `--push` names).
pub fn access(
    insecure: bool,
    ca_cert: &[PathBuf],
    user: Option<&str>,
    credentials_for: Option<&str>,
) -> Result<Access, Error> {
    let credentials = match user {
        Some(text) => Some(Credentials::parse(text).ok_or_else(|| {
            Error::Usage("--user / STRAIT_REGISTRY_AUTH must be USER:PASSWORD".into())
        })?),
        None => None,
    };
    Ok(Access {
        insecure,
        ca_certs: if ca_cert.is_empty() {
            None
        } else {
            Some(registry::Roots::load(ca_cert).map_err(Error::Usage)?)
        },
        credentials,
        credentials_for: credentials_for.map(str::to_string),
    })
}

/// Resolves an image reference (`[registry/]repository[:tag][@digest]`, with docker's
/// defaults: `docker.io`, `library/`, tag `latest`) to the digest and media type of the
/// manifest (or index) it names, asking its registry as `strait build --push` would:
/// plain HTTP to loopback registries unless `access` has CA certificates, Basic or the
/// Bearer token flow, OCI and docker manifest types accepted. Returns the parsed
/// reference too. Blocking; nothing is downloaded beyond the manifest, and that only
/// when the registry does not say the digest on a HEAD.
///
/// ```no_run
/// let access = builder::access(false, &[], None, None)?;
/// let (reference, resolved) = builder::resolve("127.0.0.1:5000/app:v1", &access)?;
/// println!("{reference}@{} ({})", resolved.digest, resolved.media_type);
/// # Ok::<(), builder::Error>(())
/// ```
pub fn resolve(reference: &str, access: &Access) -> Result<(Reference, Resolved), Error> {
    let reference = Reference::parse(reference)?;
    let resolved = registry::resolve(&reference, access).map_err(|source| Error::Resolve {
        reference: reference.to_string(),
        source,
    })?;
    Ok((reference, resolved))
}

/// `SOURCE_DATE_EPOCH` (seconds) or 0.
fn source_date_epoch() -> Result<u64, Error> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) if !text.trim().is_empty() => {
            let seconds: u64 = text.trim().parse().map_err(|_| {
                Error::Usage(format!(
                    "SOURCE_DATE_EPOCH=`{text}` is not a number of seconds"
                ))
            })?;
            // The tar header's 11 octal digits: every file gets exactly this time, and
            // no PAX record is needed for it.
            if seconds > tar::MAX_MTIME {
                return Err(Error::Usage(format!(
                    "SOURCE_DATE_EPOCH={seconds} is after {} (2242-03-16T12:56:31Z), the latest time a tar header holds",
                    tar::MAX_MTIME
                )));
            }
            Ok(seconds)
        }
        _ => Ok(0),
    }
}
