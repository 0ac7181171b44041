//! strait's discovery: the data model, the store (embedded or ZooKeeper), snapshots,
//! leases and the discovery half of the admin API.
//!
//! Data flow: writers (admin API, agents) -> [`Store`] -> [`Snapshot`] published on a
//! watch channel -> consumers compile their own tables. Nothing here is on a request or
//! query path.

#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod apps;
pub mod dns;
pub mod lease;
pub mod model;
pub mod snapshot;
pub mod store;
pub mod tokens;

pub use lease::Leases;
pub use model::{Health, Instance, InstanceSpec, ModelError, Route};
pub use snapshot::Snapshot;
pub use store::{Handover, Store, StoreConfig, StoreError, StoreStatus, StoreUrl};
