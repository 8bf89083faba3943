//! What a producer sends ([`Record`]) and what a consumer receives ([`Message`]).

use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::{Header, NewRecord};

/// When the broker acknowledges a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Ack {
    /// As soon as the broker handed the batch to the partition's log, without reporting
    /// where it went (Kafka's `acks=0` as far as offsets go, but not blind): refusals
    /// (an unknown topic, a record too large, a lost connection past the delivery
    /// timeout) still fail the send, and the producer still keeps its window of batches
    /// in flight, so back-pressure works. The [`Delivered`] has no `offset` and
    /// `duplicate` is always false (the broker does not say).
    None,
    /// After the record is written to the partition's log (offsets assigned), before
    /// any fsync: a machine crash may lose it.
    Written,
    /// After an fdatasync covered it, whatever the topic's fsync policy. The default.
    #[default]
    Durable,
}

impl Ack {
    pub(crate) fn level(self) -> tidelog_proto::v1::AckLevel {
        match self {
            Ack::None => tidelog_proto::v1::AckLevel::None,
            Ack::Written => tidelog_proto::v1::AckLevel::Written,
            Ack::Durable => tidelog_proto::v1::AckLevel::Durable,
        }
    }
}

/// A record to publish: a value, and optionally a key, headers, an id, a TTL, a
/// timestamp, a partition, a queue delay and priority, and the ack level it waits for.
///
/// ```
/// use tidelog_client::{Ack, Record};
/// let record = Record::new("orders", "{\"total\": 12}")
///     .key("customer-42")
///     .header("type", "order")
///     .ttl_ms(60_000)
///     .id("order-1001")
///     .ack(Ack::Written);
/// assert_eq!(record.topic(), "orders");
/// ```
#[derive(Debug, Clone)]
pub struct Record {
    pub(crate) topic: String,
    pub(crate) partition: Option<u32>,
    pub(crate) ack: Ack,
    pub(crate) inner: NewRecord,
}

impl Record {
    /// A record for `topic` with `value` (which may be empty).
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Record {
        Record {
            topic: topic.into(),
            partition: None,
            ack: Ack::default(),
            inner: NewRecord::value(value),
        }
    }

    /// The key: decides the partition (Kafka's murmur2) unless one is set.
    pub fn key(mut self, key: impl Into<Bytes>) -> Record {
        let key: Bytes = key.into();
        self.inner.key = (!key.is_empty()).then_some(key);
        self
    }

    /// Adds a header (names need not be unique; order is kept).
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Record {
        self.inner.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// The message id (1 to 128 bytes). Within the topic's dedup window a second
    /// record with the same id is not stored again: its send resolves to the first's
    /// position with [`Delivered::duplicate`] set.
    pub fn id(mut self, id: impl Into<Bytes>) -> Record {
        self.inner.id = Some(id.into());
        self
    }

    /// Time to live in ms from now: from the broker's append time when no record of the
    /// batch has a timestamp or deliver-at of its own (the batch goes with relative
    /// times), else from the producer's clock. 0 = never expires, even on a
    /// topic with a default TTL.
    pub fn ttl_ms(mut self, ttl_ms: u64) -> Record {
        self.inner.ttl_ms = Some(ttl_ms);
        self
    }

    /// The record's timestamp (ms since the Unix epoch, >= 0). Default: when the
    /// producer encodes its batch.
    pub fn timestamp_ms(mut self, timestamp_ms: i64) -> Record {
        self.inner.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// Sends to this partition instead of the partitioner's choice.
    pub fn partition(mut self, partition: u32) -> Record {
        self.partition = Some(partition);
        self
    }

    /// Queues do not deliver it before this long from now (ms).
    pub fn delay_ms(mut self, delay_ms: u64) -> Record {
        self.inner.delay_ms = Some(delay_ms);
        self.inner.deliver_at_ms = None;
        self
    }

    /// Queues do not deliver it before this time (ms since the Unix epoch).
    pub fn deliver_at_ms(mut self, deliver_at_ms: i64) -> Record {
        self.inner.deliver_at_ms = Some(deliver_at_ms);
        self.inner.delay_ms = None;
        self
    }

    /// Queue delivery priority, below the topic's `priority_levels`.
    pub fn priority(mut self, priority: u8) -> Record {
        self.inner.priority = priority;
        self
    }

    /// When the broker acknowledges this record (default [`Ack::Durable`]). Records
    /// with different ack levels travel in different batches.
    pub fn ack(mut self, ack: Ack) -> Record {
        self.ack = ack;
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Bytes of id, key, value and headers (what the topic's `max_message_bytes`
    /// limits).
    pub fn size_bytes(&self) -> u64 {
        self.inner.payload_bytes()
    }
}

/// What the encoder reads of a record (`send_batch` encodes its records in place).
impl AsRef<NewRecord> for Record {
    fn as_ref(&self) -> &NewRecord {
        &self.inner
    }
}

/// Where a sent record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub partition: u32,
    /// The record's offset; `None` when it was sent with [`Ack::None`] (the broker
    /// stored it but reports no offsets at that level).
    pub offset: Option<u64>,
    /// The record's message id, when it carries one (the caller's, or one the producer
    /// attached: see [`crate::ProducerConfig::ids`]). In the answer of
    /// [`crate::Producer::send_batch`], only an id the producer attached: the caller's
    /// own ids are not repeated there.
    pub id: Option<Bytes>,
    /// The id was already stored within the topic's dedup window (a retry of a send the
    /// broker had stored): nothing new was appended and `offset` is the original's.
    /// Always false with [`Ack::None`].
    pub duplicate: bool,
}

/// A message as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic (shared by the messages of one stream: no copy per message).
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// The producer's timestamp, or the append time (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// When it expires; `None` = never.
    pub expires_at_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<Header>,
    pub id: Option<Bytes>,
    /// Queues do not deliver it before this time.
    pub deliver_at_ms: Option<i64>,
    pub priority: u8,
}

/// The messages of one delivery from one partition, in offset order: what
/// [`crate::Event::Messages`] and [`crate::GroupEvent::Messages`] carry. Never empty.
/// Read it as a slice (`for m in &messages`, `messages.len()`, `messages[0]`) or take
/// the messages out ([`Messages::into_vec`], `for m in messages`).
///
/// One value per delivery (up to the subscription's `max_batch_messages`) instead of
/// one event per message: the consumer decodes a delivery's batches straight into it,
/// and the reader walks it in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messages {
    topic: Arc<str>,
    partition: u32,
    messages: Vec<Message>,
}

impl Messages {
    /// `None` when `messages` is empty (a chunk always holds one at least).
    pub(crate) fn new(topic: Arc<str>, partition: u32, messages: Vec<Message>) -> Option<Messages> {
        (!messages.is_empty()).then_some(Messages {
            topic,
            partition,
            messages,
        })
    }

    /// The topic of every message here.
    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    /// The partition of every message here.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// One past the last message's offset: where the partition goes on once these
    /// are handled (what a commit of them names).
    pub fn next_offset(&self) -> u64 {
        self.messages
            .last()
            .map_or(0, |m| m.offset.saturating_add(1))
    }

    /// The messages, to keep or hand on.
    pub fn into_vec(self) -> Vec<Message> {
        self.messages
    }
}

impl std::ops::Deref for Messages {
    type Target = [Message];

    fn deref(&self) -> &[Message] {
        &self.messages
    }
}

impl IntoIterator for Messages {
    type Item = Message;
    type IntoIter = std::vec::IntoIter<Message>;

    fn into_iter(self) -> Self::IntoIter {
        self.messages.into_iter()
    }
}

impl<'a> IntoIterator for &'a Messages {
    type Item = &'a Message;
    type IntoIter = std::slice::Iter<'a, Message>;

    fn into_iter(self) -> Self::IntoIter {
        self.messages.iter()
    }
}

impl Message {
    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|h| h.key == name)
            .map(|h| &h.value)
    }

    pub(crate) fn from_record(
        topic: &Arc<str>,
        partition: u32,
        record: tidelog_storage::Record,
    ) -> Message {
        Message {
            topic: topic.clone(),
            partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            expires_at_ms: record.expires_at_ms,
            key: record.key,
            value: record.value,
            headers: record.headers,
            id: record.id,
            deliver_at_ms: record.deliver_at_ms,
            priority: record.priority,
        }
    }

    /// The message in the proto's shape (`ConsumedMessage`), for code that speaks the
    /// generated types (no key and an empty key are alike there, as are no id and an
    /// empty one).
    pub fn into_proto(self) -> tidelog_proto::v1::ConsumedMessage {
        tidelog_proto::v1::ConsumedMessage {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            expires_at_ms: self.expires_at_ms,
            key: self.key.unwrap_or_default(),
            value: self.value,
            headers: self
                .headers
                .into_iter()
                .map(|h| tidelog_proto::v1::Header {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
            id: self.id.unwrap_or_default(),
            deliver_at_ms: self.deliver_at_ms,
            priority: u32::from(self.priority),
            topic: self.topic.to_string(),
        }
    }

    pub(crate) fn from_proto(
        topic: &Arc<str>,
        message: tidelog_proto::v1::ConsumedMessage,
    ) -> Message {
        Message {
            topic: if message.topic.is_empty() {
                topic.clone()
            } else {
                Arc::from(message.topic)
            },
            partition: message.partition,
            offset: message.offset,
            timestamp_ms: message.timestamp_ms,
            expires_at_ms: message.expires_at_ms,
            key: (!message.key.is_empty()).then_some(message.key),
            value: message.value,
            headers: message
                .headers
                .into_iter()
                .map(|h| Header {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
            id: (!message.id.is_empty()).then_some(message.id),
            deliver_at_ms: message.deliver_at_ms,
            priority: u8::try_from(message.priority).unwrap_or(u8::MAX),
        }
    }
}
