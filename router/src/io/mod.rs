//! Stream helpers under the paths: a relay's idle timeout, `splice(2)` relaying for TCP
//! routes, and a stream with bytes pushed back in front of it. They know nothing of HTTP
//! or of the routing table.

pub mod idle;
pub mod prefixed;
pub(crate) mod splice;
