//! strait's integration tests: the real binary, real ZooKeeper, real HTTP clients.

mod admin_api;
mod agent;
mod build;
mod cli;
mod conformance;
mod deploy;
mod dns;
mod dns_knot;
mod docs;
mod embedded;
mod h2_abuse;
mod harness;
mod http;
mod ops;
mod pump;
mod registry;
mod reliability;
mod router;
mod tcp;
mod teams;
mod tidy;
mod tls;
mod ui;
mod upgrade;
mod upstream_tls;
mod zookeeper;
