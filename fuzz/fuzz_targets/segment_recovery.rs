//! A whole segment fed to the recovery scanner: never panics, and every batch it
//! accepts as valid really is (CRC matches, offsets follow on), whether none, half or
//! all of the bytes are taken as fsynced before (the checkpoint's `durable_end`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::batch::{self, BatchHeader};
use tidelog_storage::segment::{self, SegmentState};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    for durable_end in [0, len / 2, len] {
        let report = segment::scan_durable(data, 0, SegmentState::new(0), durable_end);
        assert!(report.valid_bytes as usize <= data.len());
        // Walk what the scan accepted: each batch must parse, follow on and match its
        // CRC (unless reported as a corrupt batch, which reads refuse).
        let mut position = 0usize;
        let mut expected = 0u64;
        while position < report.valid_bytes as usize {
            let header = BatchHeader::parse(&data[position..]).expect("accepted batch parses");
            assert_eq!(header.base_offset, expected);
            let end = position + header.batch_length as usize;
            let corrupt = report
                .corrupt_batches
                .iter()
                .any(|c| c.position as usize == position);
            assert!(corrupt || batch::verify_crc(&data[position..end], &header));
            expected = header.next_offset();
            position = end;
        }
        assert_eq!(position as u64, report.valid_bytes);
        assert_eq!(report.state.summary.next_offset, expected);
    }
});
