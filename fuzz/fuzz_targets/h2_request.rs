//! The bytes a plaintext HTTP/2 client sends to a TLS port, scanned up to its first
//! request (`tidelog_server::sniff::scan_h2_request`): never panics, names only a
//! stream a client may open, and reads the bytes front to back, so a prefix never
//! decides otherwise than the whole (a request found in a prefix is the request of
//! the whole; a prefix found invalid makes the whole invalid).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_server::sniff::{H2Scan, scan_h2_request};

fuzz_target!(|data: &[u8]| {
    let whole = scan_h2_request(data);
    if let H2Scan::Request(stream) = whole {
        assert_eq!(stream % 2, 1, "a client opens odd streams");
        assert!(stream <= 0x7fff_ffff);
    }
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        match scan_h2_request(&data[..cut]) {
            H2Scan::Request(stream) => assert_eq!(whole, H2Scan::Request(stream)),
            H2Scan::Invalid => assert_eq!(whole, H2Scan::Invalid),
            H2Scan::NeedMore => {}
        }
    }
});
