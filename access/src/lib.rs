//! strait's access control: who may change what.
//!
//! * [`config`]: the `[[team]]` and `[auth]` sections; overlapping team patterns are a
//!   configuration error naming both teams.
//! * [`patterns`]: host, name and listen-address patterns, covering and overlapping.
//! * [`policy`]: [`Identity`] (the admin, teams, anonymous) and [`Policy`], the rules for
//!   each kind of object; a refusal names the owner.
//! * [`token`]: admin API tokens (`strait_<id>_<secret>`; only a hash is kept).
//! * [`ldap`]: users and groups from a directory, cached for a bounded time.
//! * [`audit`]: the audit log of every write.
//!
//! The admin API (the binary) and the registry enforce it; neither needs to know how
//! teams are written down.

#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod ldap;
pub mod patterns;
pub mod policy;
pub mod token;

pub use config::{AuthConfig, ReadScope, Teams};
pub use policy::{Denied, Identity, Policy};
