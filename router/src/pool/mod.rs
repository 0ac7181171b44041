//! Upstream pools. [`balance`]: a service's eligible instances and how to pick among them
//! (lock-free), with the runtime state (outstanding requests, failures, ejections,
//! round-robin position) that survives table swaps. [`build`]: building them from a
//! snapshot, carrying that state over. [`connections`]: idle upstream HTTP/1 connections,
//! per worker thread.

pub mod balance;
pub mod build;
pub mod connections;

pub use balance::{Clock, Endpoint, EndpointState, Pool, PoolShared, Tried, fnv1a};
pub use build::PoolStates;
