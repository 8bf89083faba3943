//! A `.timeindex` file: never panics; accepted timestamps never decrease.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::index;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, entries)) = index::decode_time_index(data) {
        for pair in entries.windows(2) {
            assert!(pair[0].timestamp_ms <= pair[1].timestamp_ms);
            assert!(pair[0].relative_offset < pair[1].relative_offset);
        }
    }
});
