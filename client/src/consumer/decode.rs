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
        Error::damaged_batch(topic, partition, batch.base_offset, e)
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;
    use tidelog_storage::batch::{Compression, EncodeOptions, encode_batch};
    use tidelog_storage::{Header, NewRecord};

    use super::super::views::Views;
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
    /// what the broker marks: `skip_front` records, the offset deltas in `skip`. Every
    /// third record has a key, a header and an id; `zstd` compresses the batch.
    fn stored(
        base: u64,
        records: &[(usize, bool)],
        skip_front: u32,
        skip: Vec<u32>,
        zstd: bool,
    ) -> StoredRecordBatch {
        let records: Vec<NewRecord> = records
            .iter()
            .enumerate()
            .map(|(i, &(size, expires))| {
                let offset = base as usize + i;
                let extras = offset.is_multiple_of(3);
                NewRecord {
                    key: extras.then(|| Bytes::from(format!("key-{offset}"))),
                    value: Bytes::from(vec![offset as u8; size]),
                    headers: if extras {
                        vec![Header {
                            key: "n".into(),
                            value: Bytes::from(offset.to_string()),
                        }]
                    } else {
                        Vec::new()
                    },
                    id: extras.then(|| Bytes::from(format!("id-{offset}"))),
                    ttl_ms: expires.then_some(1),
                    ..NewRecord::default()
                }
            })
            .collect();
        let options = EncodeOptions {
            now_ms: NOW,
            default_ttl_ms: None,
            compression: if zstd {
                Compression::Zstd
            } else {
                Compression::None
            },
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
                (
                    prop::collection::vec((size(), any::<bool>(), any::<bool>()), 1..8),
                    0u32..4,
                    any::<bool>(),
                ),
                1..5,
            ),
        ) {
            let topic: Arc<str> = Arc::from("t");
            let mut out = Vec::new();
            let mut expected = Vec::new();
            let mut delivery = Vec::new();
            let mut base = 0u64;
            for (records, front, zstd) in &batches {
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
                let batch = stored(base, &flags, skip_front, skip, *zstd);
                decode_into(&topic, 3, &batch, NOW + 10, &mut out).expect("decode");
                delivery.push(batch);
                base += records.len() as u64;
            }
            // Read in place, the same delivery lends the same messages.
            let (views, opened) = Views::open(&topic, 3, delivery, NOW + 10);
            prop_assert!(opened.is_ok());
            let views = views.expect("batches");
            prop_assert_eq!((&**views.topic(), views.partition()), ("t", 3));
            let mut lent = Vec::new();
            views
                .for_each(|m| lent.push(m.to_message(&topic, 3)))
                .expect("checked");
            prop_assert_eq!(&lent, &out);
            let mut appended = Vec::new();
            views.append_to(&mut appended).expect("checked");
            prop_assert_eq!(&appended, &out);
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

    /// Ids that count up are stored once a batch (the others follow): lent, each is
    /// the right one, and a message made of a view owns it.
    #[test]
    fn ids_that_count_up_are_lent_and_owned_whole() {
        let ids: Vec<Bytes> = (0..3u64)
            .map(|n| {
                let mut id = [7u8; 16];
                id[8..].copy_from_slice(&(1_000 + n).to_be_bytes());
                Bytes::copy_from_slice(&id)
            })
            .collect();
        let records: Vec<NewRecord> = ids
            .iter()
            .map(|id| NewRecord {
                id: Some(id.clone()),
                ..NewRecord::value(Bytes::from_static(b"v"))
            })
            .collect();
        let options = EncodeOptions {
            now_ms: NOW,
            default_ttl_ms: None,
            compression: Compression::None,
            max_message_bytes: 1 << 20,
            priority_levels: 1,
        };
        let encoded = encode_batch(&records, &options).expect("encode");
        // One id stored, two that follow: the batch is smaller than three ids.
        assert!(encoded.bytes.len() < tidelog_storage::batch::HEADER_BYTES + 3 * 16);
        let batch = StoredRecordBatch {
            batch: Bytes::from(encoded.bytes),
            record_count: 3,
            ..StoredRecordBatch::default()
        };
        let topic: Arc<str> = Arc::from("t");
        let (views, opened) = Views::open(&topic, 0, vec![batch], NOW);
        opened.expect("good");
        let views = views.expect("one batch");
        let mut lent = Vec::new();
        let mut owned = Vec::new();
        views
            .for_each(|m| {
                lent.push(m.id.map(Bytes::copy_from_slice));
                owned.push(m.to_message(&topic, 0).id);
            })
            .expect("good");
        let expected: Vec<Option<Bytes>> = ids.into_iter().map(Some).collect();
        assert_eq!(lent, expected);
        assert_eq!(owned, expected);
    }

    /// A delivery of a good batch at 0 and a batch at 2 whose CRC fails.
    fn good_then_bad_crc() -> [StoredRecordBatch; 2] {
        let good = stored(0, &[(10, false), (20, false)], 0, Vec::new(), false);
        let mut bad = stored(2, &[(10, false), (20, false)], 0, Vec::new(), false);
        let mut bytes = bad.batch.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bad.batch = Bytes::from(bytes);
        [good, bad]
    }

    /// A damaged batch adds nothing: what the delivery decoded before it stays, the
    /// damaged batch's records do not come, and the error names the batch.
    #[test]
    fn a_damaged_batch_adds_nothing() {
        let topic: Arc<str> = Arc::from("t");
        let mut out = Vec::new();
        let [good, bad] = good_then_bad_crc();
        decode_into(&topic, 0, &good, NOW, &mut out).expect("decode");
        let error = decode_into(&topic, 0, &bad, NOW, &mut out).expect_err("damaged");
        assert!(error.to_string().contains("offset 2"), "{error}");
        assert_eq!(out.iter().map(|m| m.offset).collect::<Vec<_>>(), [0, 1]);
    }

    /// Views of a delivery with a batch whose CRC fails hold the batches before it,
    /// and opening them fails as the decode does.
    #[test]
    fn views_stop_before_a_batch_whose_crc_fails() {
        let topic: Arc<str> = Arc::from("t");
        let (views, opened) = Views::open(&topic, 0, Vec::from(good_then_bad_crc()), NOW);
        let error = opened.expect_err("damaged");
        assert!(matches!(error, Error::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("offset 2"), "{error}");
        let mut offsets = Vec::new();
        views
            .expect("the good batch")
            .for_each(|m| offsets.push(m.offset))
            .expect("good");
        assert_eq!(offsets, [0, 1]);
        // Nothing before the damage: no views at all.
        let [_, bad] = good_then_bad_crc();
        let (views, opened) = Views::open(&topic, 0, vec![bad], NOW);
        assert!(views.is_none() && opened.is_err());
    }

    /// A batch whose CRC holds but whose second record does not parse (only a broker
    /// bug sends one): reading it in place lends the first record, then fails naming
    /// the batch; so does making messages of it.
    #[test]
    fn a_record_that_does_not_parse_ends_the_walk_after_those_before() {
        let topic: Arc<str> = Arc::from("t");
        let mut batch = stored(
            5,
            &[(10, false), (20, false), (30, false)],
            0,
            Vec::new(),
            false,
        );
        let mut bytes = batch.batch.to_vec();
        let section = tidelog_storage::batch::HEADER_BYTES;
        // The first record's length (one varint byte), then its bytes; the second's
        // attributes follow its own length byte.
        let second = section + 1 + usize::from(bytes[section]);
        bytes[second + 1] = 0xff;
        let crc = tidelog_storage::batch::compute_crc(&bytes);
        let crc_at = tidelog_storage::batch::CRC_COVERS_FROM - 4;
        bytes[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        batch.batch = Bytes::from(bytes);
        let (views, opened) = Views::open(&topic, 0, vec![batch], NOW);
        opened.expect("the CRC holds");
        let views = views.expect("one batch");
        let mut offsets = Vec::new();
        let error = views
            .for_each(|m| offsets.push(m.offset))
            .expect_err("damaged");
        assert_eq!(offsets, [5]);
        assert!(error.to_string().contains("offset 5"), "{error}");
        assert!(error.to_string().contains("attributes"), "{error}");
        let mut messages = Vec::new();
        views.append_to(&mut messages).expect_err("damaged");
        assert_eq!(messages.iter().map(|m| m.offset).collect::<Vec<_>>(), [5]);
    }
}
