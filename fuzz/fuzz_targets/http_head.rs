//! HTTP/1 request-head validation: any bytes, never a panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use router::wire::{HeadLimits, validate_head};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        max_bytes: 64 * 1024,
        max_headers: 100,
        head_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };
    let _ = validate_head(data, &limits);
});
