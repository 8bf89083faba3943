//! A delivery of stored batches made into what the consumer asked for: [`Views`] read
//! in place, or [`Messages`] decoded. `Subscription` and `GroupMember` make this one
//! choice the same way; what each does with a damaged batch is theirs.

use std::sync::Arc;

use tidelog_proto::v1::StoredRecordBatch;

use super::decode::{decode_into, room_for};
use super::views::Views;
use crate::error::Result;
use crate::record::Messages;

/// One partition's delivery, as the consumer reads it.
pub(crate) enum Delivery {
    Views(Views),
    Messages(Messages),
}

/// Opens `batches` (one delivery of `partition` of `topic`, read by the broker at
/// `now_ms`) as views when `views` is set, else decodes them into messages (room made
/// for at most `max_messages`, the request's limit). Returns what the batches before
/// the first damaged one hold (`None` when nothing), and the damage: the same
/// [`crate::Error::Corrupt`] either way.
pub(crate) fn open_delivery(
    topic: &Arc<str>,
    partition: u32,
    batches: Vec<StoredRecordBatch>,
    now_ms: i64,
    views: bool,
    max_messages: u32,
) -> (Option<Delivery>, Result<()>) {
    if views {
        let (views, opened) = Views::open(topic, partition, batches, now_ms);
        return (views.map(Delivery::Views), opened);
    }
    let mut messages = room_for(&batches, max_messages);
    let mut decoded = Ok(());
    for batch in &batches {
        decoded = decode_into(topic, partition, batch, now_ms, &mut messages);
        if decoded.is_err() {
            break;
        }
    }
    let messages = Messages::new(topic.clone(), partition, messages);
    (messages.map(Delivery::Messages), decoded)
}
