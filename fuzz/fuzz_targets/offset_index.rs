//! An `.index` file: never panics; accepted entries are strictly increasing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::index;

fuzz_target!(|data: &[u8]| {
    if let Ok((summary, entries)) = index::decode_offset_index(data) {
        for pair in entries.windows(2) {
            assert!(pair[0].relative_offset < pair[1].relative_offset);
            assert!(pair[0].position < pair[1].position);
        }
        for entry in &entries {
            assert!(u64::from(entry.position) < summary.log_bytes);
        }
    }
});
