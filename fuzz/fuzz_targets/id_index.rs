//! An `.idindex` file (version 1 or 2): never panics; an accepted one is sorted, in
//! bounds, agrees with its header, encodes back to the same bytes (as version 2), and
//! every entry is found by its hash and every id of every run by its prefix and
//! suffix.
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
    assert_eq!(table.run_count() as u64, u64::from(header.run_count));
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
    let runs: Vec<_> = table.runs().collect();
    for run in &runs {
        assert!(run.count as usize >= idindex::RUN_IDS_MIN);
        assert!(u64::from(run.relative_offset) + u64::from(run.count) <= span);
        // The last suffix may be u64::MAX (the seed `runs` has one): add count - 1.
        for suffix in [run.first, run.first + (u64::from(run.count) - 1)] {
            let found = table.run_candidates(run.prefix, suffix, 0);
            let relative = run.relative_offset + (suffix - run.first) as u32;
            assert!(
                found
                    .iter()
                    .any(|e| e.relative_offset == relative && e.position == run.position)
            );
            assert!(
                found
                    .windows(2)
                    .all(|p| p[0].relative_offset >= p[1].relative_offset)
            );
        }
    }
    let (mut again, mut again_runs) = (entries.clone(), runs.clone());
    let encoded = idindex::encode(
        header.base_offset,
        header.log_bytes,
        header.next_offset,
        header.incomplete(),
        &mut again,
        &mut again_runs,
    );
    if header.version == idindex::VERSION {
        assert_eq!(encoded, data);
    } else {
        let (_, reread) = idindex::decode(&Bytes::from(encoded)).expect("re-encoded index decodes");
        assert_eq!(reread.iter().collect::<Vec<_>>(), entries);
    }
});
