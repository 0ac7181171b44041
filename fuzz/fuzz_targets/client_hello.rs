//! The TLS ClientHello SNI parser used by TCP routes: any bytes, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = router::wire::client_hello::client_hello_sni(data);
});
