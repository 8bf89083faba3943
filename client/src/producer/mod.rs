//! The producer: batching, optional zstd, a bounded window of batches in flight on one
//! `PublishStream`, back-pressure, Kafka's partitioner, and retries across broken
//! connections.
//!
//! # How a record travels
//! [`Producer::send`] does the per-record work in the caller's task, under one short
//! lock: it picks the partition, checks the record, reserves its bytes in the
//! producer's buffer ([`ProducerConfig::buffer_bytes`]; when it is full, `send` waits:
//! that is the back-pressure) and adds it to the open batch of (topic, partition, ack
//! level). No channel message and no allocation per record: the producer's task is
//! woken once per batch. A batch is sealed when it reaches
//! [`ProducerConfig::batch_bytes`] or [`ProducerConfig::batch_records`], or, when the
//! window has room, after [`ProducerConfig::linger`]. A sealed batch is encoded once,
//! by the producer's task, in the log's own format
//! (`tidelog_storage::batch::encode_batch`, the one encoder, zstd-compressed if
//! [`ProducerConfig::compression`] says so), and sent as a `PublishStreamRequest.batch`;
//! at most [`ProducerConfig::in_flight`] batches wait for their answer at a time. The
//! broker answers in order with the batch's base offset; record `i` is at
//! `base_offset + i` (with [`Ack::None`](crate::Ack::None) the broker answers once the
//! batch is in the log, without offsets: [`Delivered::offset`] is `None`). The answer is kept once per batch, and each record's
//! [`DeliveryFuture`] resolves to its own [`Delivered`] from it.
//!
//! # Partitions
//! The producer knows each topic's partition count from DescribeTopic: it describes a
//! topic before its first record, again every [`ProducerConfig::metadata_max_age`]
//! (default 30 s), at once when a record names a partition past the known count (at
//! most once a second; the record is refused only if the fresh count has no such
//! partition), and when the broker says a partition does not exist. After
//! Admin.CreatePartitions, keyed records route by the new count within
//! `metadata_max_age`: per-key order holds among records sent after that (those sent
//! before may be in the key's old partition).
//!
//! A record's own [`Record::partition`] wins; else a keyed record goes to Kafka's
//! default partition, `(murmur2(key) & 0x7fffffff) % partitions` (the broker's
//! function, `tidelog_storage::partitioner`); else keyless records are **sticky**: they
//! all go to one partition until its batch is sealed, then to the next partition in
//! turn (Kafka's sticky partitioner, with round robin for the next choice), so
//! keyless traffic fills whole batches rather than many small ones.
//!
//! # Retries and duplicates
//! When the stream breaks (the broker restarted, the connection dropped, a batch
//! was answered `UNAVAILABLE`, or the oldest batch in flight reached
//! [`ProducerConfig::delivery_timeout`] without an answer on a stream still open, as
//! with a frozen broker), the producer reconnects with backoff and sends every
//! unanswered batch again, byte for byte and in order, until
//! [`ProducerConfig::delivery_timeout`] passes. A batch the broker had stored before
//! the break is then stored again **unless its records carry ids on a topic with a
//! dedup window**: with [`IdMode::Auto`] (the default) the producer gives every record
//! without an id a fresh time-ordered id on such topics (and on `assign_ids` topics),
//! so the resend is answered `duplicate` and each record resolves to its original
//! offset ([`Delivered::duplicate`]). That id is 16 bytes and counts toward the
//! topic's `max_message_bytes` like the record's own (id, key, value and headers): a
//! record within 16 bytes of the limit is refused by the producer, which says so. On
//! topics without a dedup window (or with [`IdMode::Never`]) retries are **at-least-once**: a record may be stored twice.
//! Records with their callers' own ids may meet ids stored before (a service sending
//! again after a restart): the broker deduplicates a batch whole and refuses one that
//! mixes stored and new ids, and the producer then sends that batch's records again
//! one per batch, so each old record resolves to its original and each new one is
//! stored (these go after what was already in flight to the partition).
//! Other refusals (`INVALID_ARGUMENT`, `NOT_FOUND`, ...) fail that batch's records and
//! are not retried.
//!
//! The broker remembers an id for the topic's `dedup_window_ms`, counted from when it
//! stored the first copy; a copy arriving later is stored again. So the producer sends
//! a batch with ids again only while less than the window less a margin has passed
//! since it **first sent** it (which is before the broker stored it). The margin is a
//! quarter of the window, at most 5 s: it covers the resend's way to the broker and a
//! broker clock ahead of the producer's (after a restart the broker times the ids it
//! reads back by the records' timestamps, which the producer sets). Past that, the
//! batch is not sent again: its records fail with [`Error::OutcomeUnknown`], whose
//! reason names the dedup window. So on a topic with a dedup window no record is
//! stored twice by the producer's retries, provided a resend reaches the broker within
//! the margin (a broker frozen after it accepted the resend may store it late).
//!
//! # When a record fails: stored or not
//! - [`Error::Timeout`]: the delivery timeout passed before the producer could send
//!   the record's batch (no connection): it is **not stored**. Send it again.
//! - [`Error::OutcomeUnknown`]: the batch was sent and never answered, and the
//!   delivery timeout or its dedup window (above) passed: the broker **may or may
//!   not** have stored it. The error carries the records' ids
//!   (`Error::OutcomeUnknown::ids`: a `send` record's id, or the ids the producer
//!   attached to a `send_batch`). On a topic with a dedup window, sending the same
//!   records again with those ids ([`Record::id`]) within the window (from when the
//!   first copy was stored) is safe: a stored one is answered `duplicate` with its
//!   original offset, a lost one is stored. Without ids, or after the window, a resend
//!   may store a record twice: read the partition to find out.

mod accumulator;
mod config;
mod front;
mod sender;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use accumulator::Limits;
pub use config::{BATCH_BYTES_MAX, IdMode, ProducerConfig};
use front::{Core, Front, Placed, RECORD_OVERHEAD_BYTES, Slot};

pub use tidelog_storage::Compression;

use crate::connection::Client;
use crate::error::{Error, Result};
use crate::record::{Delivered, Record};

/// Publishes records to tidelogd in batches. Clones share one task and one stream.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, Producer, ProducerConfig, Record};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let producer = Producer::new(&client, ProducerConfig::default());
/// // `send` waits only for buffer space; the returned future waits for the ack.
/// let ack = producer.send(Record::new("orders", "hello").key("customer-42")).await?;
/// let delivered = ack.await?;
/// println!("stored at partition {} offset {:?}", delivered.partition, delivered.offset);
/// producer.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    /// How `send_batch` compresses (`send`'s batches are encoded by the task).
    compression: Compression,
    core: Arc<Core>,
    /// To the producer's task; when every producer is dropped it closes, and the task
    /// sends what it holds and ends.
    commands: mpsc::UnboundedSender<sender::Command>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer on `client`'s connection; its task runs on the current tokio runtime.
    pub fn new(client: &Client, config: ProducerConfig) -> Producer {
        let buffer_bytes = config.buffer_bytes.clamp(1, u32::MAX as usize);
        if config.batch_bytes > BATCH_BYTES_MAX {
            tracing::warn!(
                batch_bytes = config.batch_bytes,
                max = BATCH_BYTES_MAX,
                "ProducerConfig::batch_bytes is over the most a batch may hold (a batch goes in one request, and the broker refuses requests over 32 MiB by default): capped at 16 MiB"
            );
        }
        let limits = Limits {
            max_bytes: config.batch_bytes.min(BATCH_BYTES_MAX),
            max_records: config
                .batch_records
                .min(tidelog_storage::limits::BATCH_RECORDS_MAX as usize),
            linger: config.linger,
        };
        let core = Arc::new(Core::new(Front::new(limits, config.ids, buffer_bytes)));
        let (commands, receiver) = mpsc::unbounded_channel();
        let compression = config.compression;
        tokio::spawn(describe_again(
            client.clone(),
            Arc::downgrade(&core),
            config.metadata_max_age,
        ));
        tokio::spawn(sender::run(client.clone(), config, core.clone(), receiver));
        Producer {
            shared: Arc::new(Shared {
                client: client.clone(),
                compression,
                core,
                commands,
            }),
        }
    }

    /// Hands `record` to the producer. Waits while the buffer is full (the window of
    /// batches in flight is full and the batches behind it have taken the buffer),
    /// and, for the first record of a topic, while the producer describes the topic;
    /// the returned future resolves once the broker acknowledged the record at its
    /// ack level, or failed it. Fails at once only with [`Error::Closed`].
    pub async fn send(&self, record: Record) -> Result<DeliveryFuture> {
        let core = &self.shared.core;
        let mut record = Some(record);
        let mut waiting = None;
        loop {
            let placed = {
                let mut front = core.front();
                if front.closed {
                    return Err(Error::Closed);
                }
                front.push(&mut record)
            };
            match placed {
                Placed::Added {
                    slot,
                    index,
                    id,
                    wake,
                } => {
                    if wake {
                        core.wake.notify_one();
                    }
                    return Ok(DeliveryFuture::waiting(slot, index, id));
                }
                Placed::Refused(error) => return Ok(DeliveryFuture::ready(Err(error))),
                Placed::UnknownTopic => {
                    let Some(topic) = record.as_ref().map(|r| r.topic.clone()) else {
                        return Err(Error::Closed);
                    };
                    match self.shared.client.describe_topic(&topic).await {
                        Ok(description) => core.front().learn(&description),
                        Err(error) => return Ok(DeliveryFuture::ready(Err(error))),
                    }
                }
                Placed::Full => wait_for_space(core, &mut waiting).await,
            }
        }
    }

    /// Reserves `bytes` of the buffer, waiting for space like `send`.
    async fn reserve(&self, bytes: usize) -> Result<()> {
        let core = &self.shared.core;
        let mut waiting = None;
        loop {
            {
                let mut front = core.front();
                if front.closed {
                    return Err(Error::Closed);
                }
                if front.reserve(bytes) {
                    return Ok(());
                }
            }
            wait_for_space(core, &mut waiting).await;
        }
    }

    /// Sends `records` as one batch to `partition` of `topic`, as they are (no
    /// partitioner, no linger, one ack for the batch), for callers that batch
    /// themselves; it goes through the same window, retries and ids as `send`, after
    /// what `send` gathered for that partition. The records are anything that holds a
    /// [`NewRecord`](tidelog_storage::NewRecord) ([`Record`]s, say: their own topic,
    /// partition and ack level are not looked at, and `Record::new("", value)` costs no
    /// allocation for the topic). Waits for buffer space like `send`; the future
    /// resolves to one [`Delivered`] per record, in order (without offsets with
    /// [`Ack::None`](crate::Ack::None)). A [`Delivered::id`] there is only an id the
    /// producer attached (a record that had none, on a topic that dedups or assigns
    /// ids): a record's own id is not repeated (the caller has it, at the same index),
    /// which spares two reference counts a record.
    ///
    /// The cheap way to send many records: they are checked and encoded where they
    /// lie, once, in the caller's task (the producer's task only sends the bytes), and
    /// answered with one ack. The caller keeps its records: a sender of many batches
    /// fills one vector again and again.
    pub async fn send_batch<R: AsRef<tidelog_storage::NewRecord>>(
        &self,
        topic: &str,
        partition: u32,
        ack: crate::record::Ack,
        records: &[R],
    ) -> Result<BatchDeliveryFuture> {
        let core = &self.shared.core;
        let buffer_bytes = core.front().buffer_bytes();
        let size: usize = records
            .iter()
            .map(|r| (r.as_ref().payload_bytes() as usize).saturating_add(RECORD_OVERHEAD_BYTES))
            .sum::<usize>()
            .min(buffer_bytes);
        self.reserve(size).await?;
        let checked = match self.check_batch(topic, partition, ack, records).await {
            Ok(checked) => checked,
            Err(error) => {
                core.give_back(size);
                return Ok(BatchDeliveryFuture::ready(Err(error)));
            }
        };
        let buffer = core.encode_buffer();
        let batch = match checked.encode(records, self.shared.compression, buffer) {
            Ok(batch) => batch,
            Err(error) => {
                core.give_back(size);
                return Ok(BatchDeliveryFuture::ready(Err(error)));
            }
        };
        let (reply, receiver) = oneshot::channel();
        let sent = self.shared.commands.send(sender::Command::Batch {
            batch,
            reply,
            reserved: size,
        });
        if sent.is_err() {
            core.give_back(size);
            return Err(Error::Closed);
        }
        Ok(BatchDeliveryFuture { receiver })
    }

    /// `send_batch`'s checks against the topic (described first if it is new to the
    /// producer) and the ids it attaches.
    async fn check_batch<R: AsRef<tidelog_storage::NewRecord>>(
        &self,
        topic: &str,
        partition: u32,
        ack: crate::record::Ack,
        records: &[R],
    ) -> Result<sender::CheckedBatch> {
        let core = &self.shared.core;
        if let Some(checked) =
            sender::check_batch(&mut core.front(), topic, partition, ack, records)
        {
            return checked;
        }
        let description = self.shared.client.describe_topic(topic).await?;
        core.front().learn(&description);
        sender::check_batch(&mut core.front(), topic, partition, ack, records).unwrap_or_else(
            || {
                Err(Error::TopicNotFound {
                    topic: topic.to_string(),
                })
            },
        )
    }

    /// Sends `record` and waits for its ack.
    pub async fn send_and_wait(&self, record: Record) -> Result<Delivered> {
        self.send(record).await?.await
    }

    /// Sends every open batch now (without waiting for its linger) and waits until
    /// everything handed to the producer before the call is answered.
    pub async fn flush(&self) -> Result<()> {
        let (reply, receiver) = oneshot::channel();
        self.shared
            .commands
            .send(sender::Command::Flush { reply })
            .map_err(|_| Error::Closed)?;
        receiver.await.map_err(|_| Error::Closed)
    }

    /// Flushes, then ends the producer's stream. Other clones of this producer fail
    /// with [`Error::Closed`] afterwards.
    pub async fn close(self) -> Result<()> {
        let (reply, receiver) = oneshot::channel();
        self.shared
            .commands
            .send(sender::Command::Close { reply })
            .map_err(|_| Error::Closed)?;
        // After the command: what was sent before it is drained by it.
        self.shared.core.front().closed = true;
        receiver.await.map_err(|_| Error::Closed)
    }
}

/// Describes the producer's topics again every `every` (and at once when the task
/// asks, after the broker said a partition does not exist), so records route by a
/// partition count that grew (Admin.CreatePartitions). Ends with the producer.
async fn describe_again(client: Client, core: std::sync::Weak<Core>, every: std::time::Duration) {
    let every = every.max(std::time::Duration::from_millis(10));
    loop {
        {
            let Some(core) = core.upgrade() else {
                return;
            };
            let notified = core.refresh.notified();
            tokio::pin!(notified);
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = &mut notified => {}
            }
        }
        let names = match core.upgrade() {
            Some(core) if !core.front().closed => core.front().topic_names(),
            _ => return,
        };
        for name in names {
            match client.describe_topic(&name).await {
                Ok(description) => match core.upgrade() {
                    Some(core) => core.front().learn(&description),
                    None => return,
                },
                // Deleted: the next publish says NOT_FOUND, and the producer forgets it.
                Err(error) => {
                    tracing::debug!(topic = %name, %error, "producer: describing the topic again failed")
                }
            }
        }
    }
}

/// One turn of a caller's wait for buffer space: the first registers for the wake-up
/// and returns at once (the caller tries again, so space given back in between is not
/// missed); the next waits for it.
async fn wait_for_space<'a>(
    core: &'a Core,
    waiting: &mut Option<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
) {
    match waiting.take() {
        None => {
            let mut notified = Box::pin(core.space.notified());
            notified.as_mut().enable();
            *waiting = Some(notified);
        }
        Some(notified) => notified.await,
    }
}

/// The ack of a [`Producer::send_batch`]: one [`Delivered`] per record, in order, with
/// only the ids the producer attached (see [`Producer::send_batch`]).
#[derive(Debug)]
#[must_use = "a batch is only known to be stored once its future resolves"]
pub struct BatchDeliveryFuture {
    receiver: oneshot::Receiver<Result<Vec<Delivered>>>,
}

impl BatchDeliveryFuture {
    /// A future that resolves to `result` at once (a batch refused before it was sent).
    fn ready(result: Result<Vec<Delivered>>) -> BatchDeliveryFuture {
        let (reply, receiver) = oneshot::channel();
        let _ = reply.send(result);
        BatchDeliveryFuture { receiver }
    }
}

impl Future for BatchDeliveryFuture {
    type Output = Result<Vec<Delivered>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(Error::Closed)))
    }
}

/// The ack of one sent record: resolves to where it was stored, or why it was not.
#[derive(Debug)]
#[must_use = "a send is only known to be stored once its DeliveryFuture resolves"]
pub struct DeliveryFuture {
    state: Delivery,
}

#[derive(Debug)]
enum Delivery {
    /// Decided when it was sent (refused, or the topic could not be described).
    Ready(Option<Result<Delivered>>),
    /// Record `index` of the batch whose outcome `slot` will hold.
    Waiting {
        slot: Arc<Slot>,
        index: usize,
        id: Option<Bytes>,
        /// Where this future's waker is in the slot's list, once it waited.
        waker_at: Option<usize>,
    },
}

impl DeliveryFuture {
    /// The error, when the record was refused by `send` itself and never sent (too
    /// large for the topic, a partition it does not have, the topic unknown, ...): a
    /// caller that stops at the first failure can stop at once, without awaiting.
    pub fn refused(&self) -> Option<&Error> {
        match &self.state {
            Delivery::Ready(Some(Err(error))) => Some(error),
            _ => None,
        }
    }

    fn ready(result: Result<Delivered>) -> DeliveryFuture {
        DeliveryFuture {
            state: Delivery::Ready(Some(result)),
        }
    }

    fn waiting(slot: Arc<Slot>, index: usize, id: Option<Bytes>) -> DeliveryFuture {
        DeliveryFuture {
            state: Delivery::Waiting {
                slot,
                index,
                id,
                waker_at: None,
            },
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivered>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            Delivery::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(Error::Closed))),
            Delivery::Waiting {
                slot,
                index,
                id,
                waker_at,
            } => slot.poll(*index, id, waker_at, cx),
        }
    }
}
