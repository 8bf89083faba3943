//! An `.idindex` file: never panics; an accepted one is sorted, in bounds, agrees with
//! its header, encodes back to the same bytes, and every entry is found by its hash.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidelog_storage::idindex;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = idindex::decode_header(data);
    let Ok((header, table)) = idindex::decode(&bytes) else {
        return;
    };
    assert_eq!(idindex::decode_header(data).ok(), Some(header));
    assert_eq!(table.len() as u64, u64::from(header.entry_count));
    let span = header.next_offset - header.base_offset;
    let entries: Vec<_> = table.iter().collect();
    for pair in entries.windows(2) {
        assert!((pair[0].hash, pair[0].relative_offset) < (pair[1].hash, pair[1].relative_offset));
    }
    for entry in &entries {
        assert!(u64::from(entry.relative_offset) < span);
        assert!(u64::from(entry.position) < header.log_bytes);
        assert!(table.candidates(entry.hash).any(|c| c == *entry));
    }
    let mut again = entries.clone();
    let encoded = idindex::encode(
        header.base_offset,
        header.log_bytes,
        header.next_offset,
        header.incomplete(),
        &mut again,
    );
    assert_eq!(encoded, data);
});
