//! Stream helpers under the paths: a relay's idle timeout, `splice(2)` relaying for TCP
//! routes, a stream with bytes pushed back in front of it, an HTTP/2 connection's
//! stream whose ending frames are counted, and lingering close. They know nothing of the
//! routing table.

pub mod h2_watch;
pub mod idle;
pub mod linger;
pub mod prefixed;
pub(crate) mod splice;
