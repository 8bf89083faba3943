//! The one decode of the stored batches a consumer receives (`Subscription`,
//! `GroupMember`, `Client::fetch`), into [`Message`]s.

use std::sync::Arc;

use tidelog_proto::v1::StoredRecordBatch;
use tidelog_storage::batch::BatchHeader;
use tidelog_storage::client_batch::for_each_delivered;

use crate::error::{Error, Result};
use crate::record::Message;

/// The most messages room is made for ahead of a decode when the request set no
/// limit (what a batch claims, an untrusted count, is capped; a larger delivery grows
/// the vector as it decodes).
const RESERVE_MESSAGES_DEFAULT: usize = 4096;

/// The most messages room is made for ahead of a decode at all: tidelogd reads at most
/// 10,000 messages a delivery, so a request that asks for more does not make a claim
/// (an untrusted count) reserve more.
const RESERVE_MESSAGES_MAX: usize = 10_000;

/// An empty vector with room for the messages of a delivery's `batches` (what their
/// untrusted record counts claim, capped at `asked`, the most messages the request
/// asked for, and [`RESERVE_MESSAGES_MAX`]; 0, none asked, caps at
/// [`RESERVE_MESSAGES_DEFAULT`]), so the decode of a delivery moves no message twice.
pub(crate) fn room_for(batches: &[StoredRecordBatch], asked: u32) -> Vec<Message> {
    let claimed = batches.iter().fold(0usize, |sum, batch| {
        sum.saturating_add(batch.record_count.saturating_sub(batch.skip_front) as usize)
    });
    let cap = match asked {
        0 => RESERVE_MESSAGES_DEFAULT,
        asked => (asked as usize).min(RESERVE_MESSAGES_MAX),
    };
    Vec::with_capacity(claimed.min(cap))
}

/// Decodes one stored batch and appends the records to deliver to `out` (all of them,
/// or none when the batch is damaged).
pub(crate) fn decode_into(
    topic: &Arc<str>,
    partition: u32,
    batch: &StoredRecordBatch,
    now_ms: i64,
    out: &mut Vec<Message>,
) -> Result<()> {
    let before = out.len();
    if let Ok(header) = BatchHeader::parse(&batch.batch) {
        out.reserve((header.record_count as usize).min(RESERVE_MESSAGES_DEFAULT));
    }
    for_each_delivered(
        &batch.batch,
        batch.skip_front,
        &batch.skip,
        now_ms,
        |record| out.push(Message::from_record(topic, partition, record)),
    )
    .map_err(|e| {
        out.truncate(before);
        Error::Corrupt {
            reason: format!(
                "topic {topic:?} partition {partition} batch at offset {}: {e}",
                batch.base_offset
            ),
        }
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use tidelog_storage::NewRecord;
    use tidelog_storage::batch::{Compression, EncodeOptions, encode_batch};

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn room_is_what_the_batches_claim_capped_by_the_request_and_the_broker() {
        let claim = |count: u32, skip_front: u32| StoredRecordBatch {
            record_count: count,
            skip_front,
            ..StoredRecordBatch::default()
        };
        let ten_batches: Vec<_> = (0..10).map(|_| claim(1_000, 0)).collect();
        // As many as claimed when the request allows them (no regrowth on decode).
        assert!(room_for(&ten_batches, 10_000).capacity() >= 10_000);
        assert!(room_for(&[claim(1_000, 400)], 10_000).capacity() >= 600);
        // The request's limit, and the broker's, cap an untrusted claim.
        let lying = [claim(u32::MAX, 0), claim(u32::MAX, 0)];
        assert!(room_for(&lying, 50).capacity() < 10_000);
        assert!(room_for(&lying, u32::MAX).capacity() < 20_000);
        assert!(room_for(&lying, 0).capacity() < 10_000);
    }

    /// One stored batch at `base` of records with these value sizes and expiries, and
    /// what the broker marks: `skip_front` records, the offset deltas in `skip`.
    fn stored(
        base: u64,
        records: &[(usize, bool)],
        skip_front: u32,
        skip: Vec<u32>,
    ) -> StoredRecordBatch {
        let records: Vec<NewRecord> = records
            .iter()
            .enumerate()
            .map(|(i, &(size, expires))| NewRecord {
                value: Bytes::from(vec![(base as usize + i) as u8; size]),
                ttl_ms: expires.then_some(1),
                ..NewRecord::default()
            })
            .collect();
        let options = EncodeOptions {
            now_ms: NOW,
            default_ttl_ms: None,
            compression: Compression::None,
            max_message_bytes: 2 << 20,
            priority_levels: 1,
        };
        let mut encoded = encode_batch(&records, &options).expect("encode");
        encoded.set_base_offset(base);
        StoredRecordBatch {
            batch: Bytes::from(encoded.bytes),
            base_offset: base,
            record_count: records.len() as u32,
            skip_front,
            skip,
        }
    }

    fn size() -> impl Strategy<Value = usize> {
        prop_oneof![8 => 0usize..300, 1 => 0usize..=(1 << 20)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A delivery's batches decode into one vector: every record not marked and
        /// not expired exactly once, in offset order, whole; none of the others.
        #[test]
        fn a_delivery_decodes_every_kept_record_once_in_order(
            batches in prop::collection::vec(
                (prop::collection::vec((size(), any::<bool>(), any::<bool>()), 1..8), 0u32..4),
                1..5,
            ),
        ) {
            let topic: Arc<str> = Arc::from("t");
            let mut out = Vec::new();
            let mut expected = Vec::new();
            let mut base = 0u64;
            for (records, front) in &batches {
                let skip_front = (*front).min(records.len() as u32);
                let skip: Vec<u32> = records
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, _, refused))| *refused)
                    .map(|(i, _)| i as u32)
                    .collect();
                for (i, (size, expires, refused)) in records.iter().enumerate() {
                    if i as u32 >= skip_front && !refused && !expires {
                        expected.push((base + i as u64, *size));
                    }
                }
                let flags: Vec<(usize, bool)> =
                    records.iter().map(|(s, e, _)| (*s, *e)).collect();
                let batch = stored(base, &flags, skip_front, skip);
                decode_into(&topic, 3, &batch, NOW + 10, &mut out).expect("decode");
                base += records.len() as u64;
            }
            let got: Vec<(u64, usize)> = out.iter().map(|m| (m.offset, m.value.len())).collect();
            prop_assert_eq!(got, expected);
            for m in &out {
                prop_assert_eq!(m.partition, 3);
                prop_assert!(m.value.iter().all(|&b| b == m.offset as u8));
            }
            let last = out.last().map(|m| m.offset + 1);
            let chunk = crate::record::Messages::new(topic.clone(), 3, out);
            prop_assert_eq!(chunk.as_ref().map(|c| c.next_offset()), last);
        }
    }

    /// A damaged batch adds nothing: what the delivery decoded before it stays, the
    /// damaged batch's records do not come, and the error names the batch.
    #[test]
    fn a_damaged_batch_adds_nothing() {
        let topic: Arc<str> = Arc::from("t");
        let mut out = Vec::new();
        let good = stored(0, &[(10, false), (20, false)], 0, Vec::new());
        decode_into(&topic, 0, &good, NOW, &mut out).expect("decode");
        let mut bad = stored(2, &[(10, false), (20, false)], 0, Vec::new());
        let mut bytes = bad.batch.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bad.batch = Bytes::from(bytes);
        let error = decode_into(&topic, 0, &bad, NOW, &mut out).expect_err("damaged");
        assert!(error.to_string().contains("offset 2"), "{error}");
        assert_eq!(out.iter().map(|m| m.offset).collect::<Vec<_>>(), [0, 1]);
    }
}
