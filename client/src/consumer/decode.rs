//! The one decode of the stored batches a consumer receives (`Subscription`,
//! `GroupMember`, `Client::fetch`), into [`Message`]s.

use std::collections::VecDeque;
use std::sync::Arc;

use tidelog_proto::v1::StoredRecordBatch;
use tidelog_storage::client_batch::for_each_delivered;

use crate::error::{Error, Result};
use crate::record::Message;

/// Decodes one stored batch and appends the records to deliver (all of them, or none
/// when the batch is damaged).
pub(crate) fn decode_into(
    topic: &Arc<str>,
    partition: u32,
    batch: &StoredRecordBatch,
    now_ms: i64,
    out: &mut VecDeque<Message>,
) -> Result<()> {
    decode_as(topic, partition, batch, now_ms, out, |message| message)
}

/// [`decode_into`] with each message wrapped by `wrap` as it is appended (a queue of
/// events holds them without moving each message once more).
pub(crate) fn decode_as<T>(
    topic: &Arc<str>,
    partition: u32,
    batch: &StoredRecordBatch,
    now_ms: i64,
    out: &mut VecDeque<T>,
    wrap: impl Fn(Message) -> T,
) -> Result<()> {
    let before = out.len();
    for_each_delivered(
        &batch.batch,
        batch.skip_front,
        &batch.skip,
        now_ms,
        |record| {
            out.push_back(wrap(Message::from_record(topic, partition, record)));
        },
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
