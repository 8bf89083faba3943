//! Which partition a stream's `DATA_LOSS` came from: the broker never serves a damaged
//! batch and ends the stream, without naming the partition in a field. Each
//! partition's next read is tried alone (one `FetchBatches` of one message); the ones
//! failing with `DATA_LOSS` are the damaged ones. [`crate::Subscription::damaged`] and
//! [`crate::GroupMember::damaged`] ask here.

use std::sync::Arc;

use super::fetch::FetchOptions;
use crate::connection::Client;
use crate::error::{Error, Result};

/// A partition whose next read fails on a damaged batch ([`crate::Subscription::damaged`],
/// [`crate::GroupMember::damaged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The position whose read failed: the damaged batch holds it (or the first
    /// message after it).
    pub offset: u64,
    /// What the broker said (`DATA_LOSS`).
    pub error: Error,
}

/// The partitions of `positions` (topic, partition, the offset read next) whose read
/// there fails with `DATA_LOSS`, in the order given.
pub(crate) async fn probe(
    client: &Client,
    positions: impl IntoIterator<Item = (Arc<str>, u32, u64)>,
) -> Result<Vec<Damaged>> {
    let mut found = Vec::new();
    let one = FetchOptions {
        max_messages: 1,
        ..FetchOptions::default()
    };
    for (topic, partition, offset) in positions {
        match client.fetch(&topic, partition, offset, &one).await {
            Err(error) if error.is_data_loss() => found.push(Damaged {
                topic,
                partition,
                offset,
                error,
            }),
            // Anything else is that partition's own story, told when it is read.
            _ => {}
        }
    }
    Ok(found)
}
