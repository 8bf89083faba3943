//! A delivery of stored batches made into what the consumer asked for: [`Views`] read
//! in place, or [`Messages`] decoded. `Subscription` and `GroupMember` make this one
//! choice the same way; what each does with a damaged batch is theirs.

use std::sync::Arc;

use tidelog_proto::v1::RecordBatches;

use super::decode::{decode_into, room_for};
use super::views::Views;
use crate::error::Result;
use crate::record::Messages;

/// One partition's delivery, as the consumer reads it.
pub(crate) enum Delivery {
    Views(Views),
    Messages(Messages),
}

/// Opens a delivery's batches (taken out of `delivery`, one partition's, read by the
/// broker at its `now_ms`) as views when `views` is set, else decodes them into
/// messages (room made for at most `max_messages`, the request's limit). Returns what
/// the batches before the first damaged one hold (`None` when nothing), and the damage:
/// the same [`crate::Error::Corrupt`] either way.
pub(crate) fn open_delivery(
    topic: &Arc<str>,
    delivery: &mut RecordBatches,
    views: bool,
    max_messages: u32,
) -> (Option<Delivery>, Result<()>) {
    let (partition, now_ms) = (delivery.partition, delivery.now_ms);
    let batches = std::mem::take(&mut delivery.batches);
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
