//! Reading partitions for subscribers: the read limits every reader applies,
//! [`PartitionReader`] (follows partitions of one topic and yields Subscribe events)
//! and [`spawn_subscription`] (runs one into a bounded queue).
//!
//! Memory per Subscribe stream is bounded by [`SUBSCRIBE_QUEUE_EVENTS`] events of at
//! most `max_batch_bytes` each (one message can exceed it, up to the topic's
//! `max_message_bytes`): the reader task only reads the next batch once the queue has
//! room, and the queue only drains as fast as HTTP/2 flow control lets the client
//! receive. A slow subscriber therefore slows its own reader and nothing else.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tidelog_proto::v1::{
    ConsumedMessage, MessageBatch, PartitionPosition, PositionReset, Positioned, ResetPolicy,
    ResetReason, SubscribeResponse, subscribe_response::Event,
};
use tidelog_storage::{Error, Partition, Topic};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::AppState;
use crate::convert;

/// Messages per Fetch or batch when the client leaves it at 0.
pub const READ_MESSAGES_DEFAULT: u32 = 500;
/// Most messages per Fetch or batch, whatever the client asks.
pub const READ_MESSAGES_MAX: u32 = 10_000;
/// Bytes per Fetch or batch (soft) when the client leaves it at 0.
pub const READ_BYTES_DEFAULT: u64 = 1024 * 1024;
/// Largest byte budget per Fetch or batch (soft: one message may be larger).
pub const READ_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Events (message batches, resets) queued per Subscribe stream ahead of the client.
pub const SUBSCRIBE_QUEUE_EVENTS: usize = 4;
/// Reads in a row that only skip expired messages before a reader yields.
const EXPIRED_SKIPS_MAX: u32 = 64;

/// How much one read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    pub max_messages: u32,
    pub max_bytes: u64,
}

impl ReadLimits {
    /// The client's values (0 = default), capped at the server's maximums.
    pub fn from_request(max_messages: u32, max_bytes: u32) -> Self {
        ReadLimits {
            max_messages: match max_messages {
                0 => READ_MESSAGES_DEFAULT,
                n => n.min(READ_MESSAGES_MAX),
            },
            max_bytes: match max_bytes {
                0 => READ_BYTES_DEFAULT,
                n => u64::from(n).min(READ_BYTES_MAX),
            },
        }
    }
}

/// One partition a [`PartitionReader`] follows.
#[derive(Debug)]
struct Cursor {
    partition: Arc<Partition>,
    /// The next offset to deliver.
    position: u64,
    /// Poisoned: nothing will be appended until a restart, so stop waiting on it
    /// (its wait future resolves at once and would make the reader spin).
    parked: bool,
}

/// Follows a set of partitions of one topic from given positions and yields their
/// messages as [`SubscribeResponse`] events, waiting (without spinning) when all are
/// caught up. Used by the plain Subscribe and by consumer-group members.
///
/// - Each [`PartitionReader::next_event`] returns one event: a [`MessageBatch`] from
///   one partition (partitions take turns, so a busy one does not starve the others),
///   or a [`PositionReset`] when a position fell outside the log and the reset
///   policy moved it (counted in the `tidelog_position_resets` metric). With
///   `RESET_POLICY_ERROR` it returns OUT_OF_RANGE instead.
/// - It is cancel-safe: dropping the future (e.g. in `tokio::select!` against a
///   rebalance signal) loses nothing; positions only move when an event is returned.
/// - It ends with UNAVAILABLE when the broker shuts down, NOT_FOUND when the topic is
///   deleted, DATA_LOSS on a corrupt batch.
///
/// [`PartitionReader::positions`] gives the next offset of each partition after the
/// events returned so far (what an auto-commit would store).
#[derive(Debug)]
pub struct PartitionReader {
    state: Arc<AppState>,
    topic: Arc<Topic>,
    cursors: Vec<Cursor>,
    /// Index of the cursor that reads first next time (round robin).
    turn: usize,
    reset_policy: ResetPolicy,
    limits: ReadLimits,
    /// An event to return before any read (the Positioned event, when asked for).
    first: Option<SubscribeResponse>,
}

impl PartitionReader {
    /// A reader of `starts` (partition, first offset) of `topic`. A start outside a
    /// partition's log is handled by the reset policy on the first read, so callers
    /// can pass a remembered or committed offset as it is.
    pub fn new(
        state: Arc<AppState>,
        topic: Arc<Topic>,
        starts: &[(u32, u64)],
        reset_policy: ResetPolicy,
        limits: ReadLimits,
    ) -> Result<Self, Status> {
        let cursors = starts
            .iter()
            .map(|&(id, position)| {
                Ok(Cursor {
                    partition: convert::or_status(topic.partition(id))?.clone(),
                    position,
                    parked: false,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        Ok(PartitionReader {
            state,
            topic,
            cursors,
            turn: 0,
            reset_policy,
            limits,
            first: None,
        })
    }

    /// Makes the first event a [`Positioned`] naming every partition's start (a start
    /// out of range is then followed by its PositionReset).
    pub fn announce_positions(mut self) -> Self {
        let positions = self
            .cursors
            .iter()
            .map(|c| PartitionPosition {
                partition: c.partition.id(),
                next_offset: c.position,
                end_offset: c.partition.end_offset(),
            })
            .collect();
        self.first = Some(SubscribeResponse {
            event: Some(Event::Positioned(Positioned { positions })),
        });
        self
    }

    /// (partition, next offset to deliver) for every partition read.
    pub fn positions(&self) -> Vec<(u32, u64)> {
        self.cursors
            .iter()
            .map(|c| (c.partition.id(), c.position))
            .collect()
    }

    /// Waits for and returns the next event. Cancel-safe (see the type's docs).
    pub async fn next_event(&mut self) -> Result<SubscribeResponse, Status> {
        if let Some(event) = self.first.take() {
            return Ok(event);
        }
        let mut woke_empty = false;
        loop {
            if self.state.shutdown.is_triggered() {
                return Err(Status::unavailable(
                    "the broker is shutting down; subscribe again once it is back",
                ));
            }
            if !self.topic_still_exists() {
                return Err(Status::not_found(format!(
                    "topic {:?} was deleted",
                    self.topic.name()
                )));
            }
            let count = self.cursors.len();
            for step in 0..count {
                let index = (self.turn + step) % count;
                if let Some(event) = self.poll_cursor(index)? {
                    self.turn = (index + 1) % count;
                    return Ok(event);
                }
            }
            if woke_empty {
                // Woken with nothing to read: a partition was poisoned (its wait
                // resolves at once from now on). Stop waiting on such partitions.
                for cursor in &mut self.cursors {
                    if !cursor.parked && cursor.partition.poisoned().is_some() {
                        tracing::warn!(
                            topic = self.topic.name(),
                            partition = cursor.partition.id(),
                            "partition is poisoned: the subscription stops waiting for it"
                        );
                        cursor.parked = true;
                    }
                }
            }
            let mut waits: Vec<_> = self
                .cursors
                .iter()
                .filter(|c| !c.parked)
                .map(|c| c.partition.wait_for_data(c.position))
                .collect();
            let any_data = poll_fn(|cx| {
                for wait in &mut waits {
                    if Pin::new(wait).poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending
            });
            tokio::select! {
                _ = any_data => {}
                _ = self.state.shutdown.wait() => {}
            }
            woke_empty = true;
        }
    }

    fn topic_still_exists(&self) -> bool {
        self.state
            .store
            .topic(self.topic.name())
            .is_ok_and(|t| t.is_same_topic(&self.topic))
    }

    /// Reads the cursor's next batch, or applies the reset policy. `None` when it is
    /// caught up.
    fn poll_cursor(&mut self, index: usize) -> Result<Option<SubscribeResponse>, Status> {
        let limits = self.limits;
        let cursor = &mut self.cursors[index];
        for _ in 0..EXPIRED_SKIPS_MAX {
            let result =
                cursor
                    .partition
                    .read(cursor.position, limits.max_messages, limits.max_bytes);
            match result {
                Ok(result) if !result.records.is_empty() => {
                    cursor.position = result.next_offset;
                    let id = cursor.partition.id();
                    let bytes = result
                        .records
                        .iter()
                        .map(tidelog_storage::Record::payload_bytes)
                        .sum();
                    self.state.metrics.fetched(
                        self.topic.name(),
                        result.records.len() as u64,
                        bytes,
                    );
                    let messages: Vec<ConsumedMessage> = result
                        .records
                        .into_iter()
                        .map(|r| convert::consumed_message(id, r))
                        .collect();
                    return Ok(Some(SubscribeResponse {
                        event: Some(Event::Batch(MessageBatch {
                            messages,
                            positions: vec![PartitionPosition {
                                partition: id,
                                next_offset: result.next_offset,
                                end_offset: result.end_offset,
                            }],
                        })),
                    }));
                }
                // Only expired messages were skipped: look again from past them.
                Ok(result) if result.next_offset > cursor.position => {
                    cursor.position = result.next_offset;
                }
                Ok(_) => return Ok(None),
                Err(Error::OffsetOutOfRange {
                    requested,
                    log_start,
                    end,
                    ..
                }) => {
                    let (reason, label) = if requested < log_start {
                        (ResetReason::BelowLogStart, "below_log_start")
                    } else {
                        (ResetReason::AboveEndOffset, "above_end_offset")
                    };
                    let to_offset = match self.reset_policy {
                        ResetPolicy::Latest => end,
                        ResetPolicy::Error => {
                            return Err(convert::status(&Error::OffsetOutOfRange {
                                partition: format!(
                                    "{}/{}",
                                    self.topic.name(),
                                    cursor.partition.id()
                                ),
                                requested,
                                log_start,
                                end,
                            }));
                        }
                        ResetPolicy::Earliest | ResetPolicy::Unspecified => log_start,
                    };
                    cursor.position = to_offset;
                    self.state.metrics.position_reset(self.topic.name(), label);
                    return Ok(Some(SubscribeResponse {
                        event: Some(Event::PositionReset(PositionReset {
                            partition: cursor.partition.id(),
                            from_offset: Some(requested),
                            to_offset,
                            reason: reason as i32,
                        })),
                    }));
                }
                Err(error) => return Err(convert::status(&error)),
            }
        }
        Ok(None)
    }
}

/// Runs `reader` into a bounded queue until the client goes away or the reader
/// ends, and returns the receiving side as the response stream.
pub fn spawn_subscription(
    state: &Arc<AppState>,
    mut reader: PartitionReader,
) -> ReceiverStream<Result<SubscribeResponse, Status>> {
    let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE_EVENTS);
    let metrics = state.metrics.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let _guard = metrics.open_stream("subscribe");
        let mut final_error = None;
        loop {
            let event = tokio::select! {
                event = reader.next_event() => event,
                // The client went away while the reader waited for data.
                _ = tx.closed() => break,
            };
            if let Err(status) = &event {
                final_error = Some(status.code());
            }
            let end = event.is_err();
            if tx.send(event).await.is_err() || end {
                break;
            }
        }
        metrics.rpc_finished("Subscribe", started, final_error);
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limits_default_and_cap() {
        assert_eq!(
            ReadLimits::from_request(0, 0),
            ReadLimits {
                max_messages: READ_MESSAGES_DEFAULT,
                max_bytes: READ_BYTES_DEFAULT
            }
        );
        assert_eq!(
            ReadLimits::from_request(u32::MAX, u32::MAX),
            ReadLimits {
                max_messages: READ_MESSAGES_MAX,
                max_bytes: READ_BYTES_MAX
            }
        );
        assert_eq!(ReadLimits::from_request(3, 100).max_bytes, 100);
    }
}
