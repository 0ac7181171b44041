//! strait's deployments: the middle of the pipeline (build → push → **deploy** → register
//! → route/DNS).
//!
//! * [`supervisor`]: on every host that runs containers, the agent's half: it runs the
//!   slots of each deployment that placement gives it through podman, registers each
//!   container as an instance of the app (health-checked by the agent), restarts what
//!   exits, drains and stops what is replaced, adopts what it left running.
//! * [`controller`]: in `strait up`, each deployment's rollout: start the new version
//!   beside the old, shift the route's weight in steps while watching the new version's
//!   health and 5xx share, then drain the old; or roll back.
//! * [`placement`]: zones and rendezvous hashing (no agent coordinates the others).
//! * [`api`]: `/v1/apps…` on the admin API. [`podman`]: the engine's command line.
//!   [`resolve`]: tags to digests.
//!
//! The records (apps, deployments) live in the discovery store (`discovery::apps`); the
//! agents find their work in its snapshots, as the router and DNS do.

#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod placement;
pub mod podman;
pub mod resolve;
pub mod supervisor;

pub use controller::{Controller, ControllerMetrics, DeployRequest, TrafficStats};
pub use supervisor::{Supervisor, SupervisorConfig, SupervisorMetrics};
