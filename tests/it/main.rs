//! strait's integration tests: the real binary, real ZooKeeper, real HTTP clients.

mod admin_api;
mod agent;
mod build;
mod cli;
mod conformance;
mod deploy;
mod dns;
mod docs;
mod embedded;
mod harness;
mod http;
mod pump;
mod registry;
mod reliability;
mod router;
mod tcp;
mod tidy;
mod tls;
mod upgrade;
mod upstream_tls;
mod zookeeper;
