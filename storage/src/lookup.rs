//! Looking a message up by its message id across a topic: every partition's
//! [`Partition::find_by_id`](crate::Partition::find_by_id) (the active segment's ids in
//! memory, each sealed segment's in its `.idindex`), for the topic's whole retention.

use crate::batch::Record;
use crate::error::{Error, Result};
use crate::msgid;
use crate::topic::Topic;

/// A message found by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMessage {
    /// The partition it is in.
    pub partition: u32,
    /// The message: offset, timestamp, expiry, key, value, headers, id. Values of
    /// uncompressed batches are slices of the segment's mapping.
    pub record: Record,
}

impl Topic {
    /// The message of this topic whose id is `id`, among those readers can see that
    /// have not expired; `None` when no partition has one.
    ///
    /// When several messages carry the id (a topic without a dedup window stores a
    /// retried publish again), the newest is returned: in each partition the highest
    /// offset, and across partitions the latest timestamp (ties: the lowest partition).
    /// A partition that fails (unavailable, corrupt) does not hide a message found in
    /// another; when none is found its error is returned instead of `None`, since the
    /// message may be in it. Blocking: it may read and write files.
    pub fn find_by_id(&self, id: &[u8]) -> Result<Option<FoundMessage>> {
        msgid::check(id)?;
        let mut newest: Option<FoundMessage> = None;
        let mut failure: Option<Error> = None;
        for partition in self.partitions() {
            match partition.find_by_id(id) {
                Ok(Some(record)) => {
                    if newest
                        .as_ref()
                        .is_none_or(|n| record.timestamp_ms > n.record.timestamp_ms)
                    {
                        newest = Some(FoundMessage {
                            partition: partition.id(),
                            record,
                        });
                    }
                }
                Ok(None) => {}
                Err(error @ Error::TopicDeleted { .. }) => return Err(error),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        match (newest, failure) {
            (Some(found), _) => Ok(Some(found)),
            (None, Some(error)) => Err(error),
            (None, None) => Ok(None),
        }
    }
}
