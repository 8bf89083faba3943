//! A record batch from a client (PublishBatch): any bytes validate to Ok or a typed
//! Err, never a panic; a batch that validates decodes, with the records, ids and sizes
//! the validator reported, and checks out against the rules it was given. With
//! relative times (`BatchRules::relative_times`), the batch as stored (moved to the
//! append time) is what decodes and checks out, its CRC valid, each record's times
//! moved by the same shift as record 0's.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidelog_storage::batch;
use tidelog_storage::client_batch::{BatchRules, validate_batch};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the rules, the rest is the batch.
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let rules = BatchRules {
        now_ms: if pick & 1 == 0 { 0 } else { 1_700_000_000_000 },
        max_message_bytes: if pick & 2 == 0 { 1 << 20 } else { 64 },
        priority_levels: pick >> 4,
        expiry_required: pick & 4 != 0,
        relative_times: pick & 8 != 0,
    };
    let Ok(checked) = validate_batch(bytes, &rules) else {
        return;
    };
    assert_eq!(checked.moved, rules.relative_times);
    // The log writes its own base offset into what it stores (the client's is not
    // read, whatever it is): here 0, as the validator reads it.
    let mut stored = checked.as_stored(bytes);
    batch::set_base_offset(&mut stored, 0);
    let (header, records) =
        batch::decode_batch(&Bytes::from(stored.clone())).expect("a validated batch decodes");
    assert_eq!(header, checked.header);
    if checked.moved {
        assert_eq!(header.first_timestamp_ms, rules.now_ms);
        // The stored batch checks out as it is, and every time moved by one shift.
        let again = BatchRules {
            relative_times: false,
            ..rules
        };
        let stored_check = validate_batch(&stored, &again).expect("the stored batch validates");
        assert_eq!(stored_check.header, header);
        let mut sent = bytes.to_vec();
        batch::set_base_offset(&mut sent, 0);
        let (sent, sent_records) =
            batch::decode_batch(&Bytes::from(sent)).expect("a batch that moves decodes as sent");
        let shift = rules.now_ms.wrapping_sub(sent.first_timestamp_ms);
        let moved = |at: i64| at.wrapping_add(shift);
        for (got, was) in records.iter().zip(&sent_records) {
            assert_eq!(got.timestamp_ms, moved(was.timestamp_ms));
            assert_eq!(got.expires_at_ms, was.expires_at_ms.map(moved));
            assert_eq!(got.deliver_at_ms, was.deliver_at_ms.map(moved));
        }
    }
    assert_eq!(records.len(), header.record_count as usize);
    let ids: Vec<&[u8]> = records.iter().filter_map(|r| r.id.as_deref()).collect();
    let checked_ids: Vec<&[u8]> = checked.ids.iter().map(|i| checked.id(bytes, i)).collect();
    assert_eq!(ids, checked_ids);
    let payload: u64 = records.iter().map(|r| r.payload_bytes()).sum();
    assert_eq!(payload, checked.payload_bytes);
    for record in &records {
        assert!(record.payload_bytes() <= rules.max_message_bytes);
        assert!(record.timestamp_ms >= 0);
        assert!(record.timestamp_ms <= header.max_timestamp_ms);
        match record.expires_at_ms {
            Some(at) => assert!(at > rules.now_ms && at <= header.max_expiry_ms),
            None => assert!(!rules.expiry_required && header.max_expiry_ms == i64::MAX),
        }
    }
    assert_eq!(records[0].timestamp_ms, header.first_timestamp_ms);
});
