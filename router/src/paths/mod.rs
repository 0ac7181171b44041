//! The paths a connection or request takes, each composed from the layers below (wire,
//! pools, table, head writers, the request core) and knowing nothing of the front door:
//!
//! * [`pump`]: HTTP/1 clients of HTTP/1 services, the hot path;
//! * [`pump_h2`]: HTTP/2 clients of HTTP/1 services;
//! * [`upstream`]: talking HTTP/1.1 to an upstream, shared by those two;
//! * [`pingora_proxy`]: requests to HTTP/2 services, through pingora's proxy;
//! * [`tcp`]: TCP routes (layer 4);
//! * [`health`]: active health checks of the pools' instances.

pub mod health;
pub mod pingora_proxy;
pub mod pump;
pub mod pump_h2;
pub mod tcp;
pub mod upstream;
