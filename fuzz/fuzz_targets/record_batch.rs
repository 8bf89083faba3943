//! A record batch from disk: any bytes decode to Ok or Err, never a panic, and a batch
//! that decodes has a matching CRC and records within its header's offsets.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidelog_storage::batch::{self, BatchHeader};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok((header, records)) = batch::decode_batch(&bytes) {
        let whole = &data[..header.batch_length as usize];
        assert_eq!(batch::compute_crc(whole), header.crc);
        assert_eq!(records.len(), header.record_count as usize);
        for record in &records {
            assert!(record.offset >= header.base_offset && record.offset <= header.last_offset());
        }
    }
    let _ = BatchHeader::parse(data);
});
