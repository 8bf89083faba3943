//! tidelog-client: the Rust library a service uses to talk to tidelogd.
//!
//! | type | what it does | RPCs |
//! |---|---|---|
//! | [`Client`] | one HTTP/2 connection (token, TLS, timeouts) and the generated clients on it, for the RPCs this crate does not wrap | all |
//! | [`Producer`] | batches records by size and linger time, optional zstd, a bounded window of batches in flight, back-pressure, Kafka's partitioner, retries without duplicates on dedup topics | `PublishStream` (batch form) |
//! | [`Subscription`] | reads a topic, or every topic a pattern matches (including later ones), without a group, decoding stored batches client-side (or lending each record in place: [`SubscribeOptions::views`], [`Views`]); resumes after a broker restart; tells positions, resets, topic changes and lost connections as [`Event`]s; gets past damaged partitions ([`Subscription::damaged`]) | `SubscribeBatches` (+ `FetchBatches` to find damage) |
//! | [`Client::fetch`] | one read of a partition from an offset you keep, decoded client-side ([`Fetched`]) | `FetchBatches` |
//! | [`GroupMember`] | a consumer-group member on one topic or a topic pattern (topics created later join), with automatic or explicit commits (of what was returned, or exactly the positions given), decoding stored batches client-side; rejoins after a broker restart; tells deliveries' positions and end offsets, rebalances (revoked / added partitions), resets and lost connections as [`GroupEvent`]s | `SubscribeBatches` (group), `CommitOffsets` |
//! | [`QueueConsumer`] | a queue member on one stream: deliveries pushed as credit allows, credit given back as they are settled (at most [`QueueConsumerOptions::credit`] held), each [`Delivery`] settled (ack, nack with a delay, in progress, term) once durable; reconnects after a broker restart ([`Error::LeaseLost`] for a delivery of the broken stream); queues on a topic pattern | `Consume` |
//! | [`QueueWorker`] | receives queue deliveries and settles them (ack, nack, in progress, term) on unary calls | `Receive`, `Settle` |
//! | [`Router`] | topics or patterns -> async handlers, with retry-with-backoff and poison-to-dead-letter middleware | group members + a producer |
//!
//! The record batch is the wire unit both ways and there is one implementation of it:
//! the producer encodes with `tidelog_storage::batch::encode_batch` (the encoder the
//! broker's own log uses) and consumers decode with
//! `tidelog_storage::client_batch::delivered_records`; keys are routed with
//! `tidelog_storage::partitioner` (the broker's function).
//!
//! # Produce
//! ```no_run
//! # async fn example() -> Result<(), tidelog_client::Error> {
//! use tidelog_client::{Client, Compression, Producer, ProducerConfig, Record};
//! let client = Client::connect("http://127.0.0.1:7420").await?;
//! let config = ProducerConfig { compression: Compression::Zstd, ..ProducerConfig::default() };
//! let producer = Producer::new(&client, config);
//! let mut acks = Vec::new();
//! for i in 0..1000 {
//!     let record = Record::new("orders", format!("order {i}")).key(format!("customer-{}", i % 10));
//!     acks.push(producer.send(record).await?); // waits only when the buffer is full
//! }
//! for ack in acks {
//!     let delivered = ack.await?;
//!     assert!(delivered.offset.is_some()); // None only with Ack::None
//! }
//! producer.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Consume
//! ```no_run
//! # async fn example() -> Result<(), tidelog_client::Error> {
//! use tidelog_client::{Client, Commit, GroupMember, GroupOptions};
//! let client = Client::connect("http://127.0.0.1:7420").await?;
//! let options = GroupOptions { commit: Commit::Explicit, ..GroupOptions::new("billing") };
//! let mut member = GroupMember::join(&client, "orders", options).await?;
//! let message = member.next().await?;
//! println!("{:?}", message.value);
//! member.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # Work a queue
//! ```no_run
//! # async fn example() -> Result<(), tidelog_client::Error> {
//! use std::time::Duration;
//! use tidelog_client::{Client, QueueConsumer, QueueConsumerOptions};
//! let client = Client::connect("http://127.0.0.1:7420").await?;
//! let options = QueueConsumerOptions { credit: 32, ..QueueConsumerOptions::new("resizer-1") };
//! let mut consumer = QueueConsumer::open(&client, "thumbnails", options).await?;
//! loop {
//!     let delivery = consumer.next().await?;
//!     if delivery.message().value.is_empty() {
//!         delivery.term("no image").await?; // dead-lettered now
//!     } else if delivery.attempt() < 3 && delivery.message().value.starts_with(b"busy") {
//!         delivery.nack(Some(Duration::from_secs(10)), "busy").await?; // again in 10 s
//!     } else {
//!         delivery.ack().await?; // returns once the ack is durable; credit comes back
//!     }
//! }
//! # }
//! ```
//!
//! Every settlement returns once the broker made it durable (NATS JetStream's
//! `double_ack`, not its fire-and-forget `ack`). Awaited one after another as above, a
//! consumer settles one delivery per round trip and fsync (1-2k a second on a disk
//! whose fsync takes ~0.8 ms). To go faster, keep several settlements in flight:
//! handle deliveries concurrently, a task each (`examples/queue_consumer_concurrent.rs`;
//! the credit window bounds how many), or settle many in one request with
//! [`Delivery::ack_all`]. [`QueueConsumer`] never waits for one answer before sending
//! the next settlement, and the broker settles together, with one fsync, whatever
//! arrives from all of a queue's consumers while it makes the previous ones durable.
//! There is no ack that skips the answer: a refused ack, a lost lease or a failed
//! fsync is always some caller's error; a settlement whose future is dropped before
//! its answer may or may not have been made (the message may come again).
//!
//! # Delivery guarantees
//! - Producer retries are exactly-once in the log on topics with a dedup window (ids
//!   are attached, [`IdMode::Auto`]), at-least-once otherwise.
//! - [`Subscription`] resumes at the broker's `next_offset` after a restart: no gap, no
//!   repeat on one subscription.
//! - [`GroupMember`]: at-least-once, with [`Commit::Explicit`] and with
//!   [`Commit::Auto`] (the member commits what it returned, every interval, at
//!   rebalances and at [`GroupMember::close`]; never what it only received).
//! - [`QueueConsumer`] and [`QueueWorker`]: at-least-once. A delivery not settled by
//!   its deadline, nacked, or held when the stream broke is delivered again (attempt
//!   + 1); an answered settlement is durable (never undone by a broker crash).
//!
//! Runnable programs: `client/examples/` (`cargo run -p tidelog-client --example
//! produce -- http://127.0.0.1:7420 demo`).

mod backoff;
mod connection;
mod consumer;
mod error;
mod producer;
mod queue;
mod record;
mod router;
mod wire;

pub use backoff::Backoff;
pub use connection::{Client, ClientOptions, Conn, GRPC_MESSAGE_BYTES_MAX};
pub use consumer::{
    AssignmentChange, Commit, Damaged, Event, FetchOptions, Fetched, GroupEvent, GroupMember,
    GroupOptions, MessageView, PartitionProgress, PositionReset, Reset, ResetReason, StartAt,
    SubscribeOptions, Subscription, TopicsChanged, Views,
};
pub use error::{Error, Result};
pub use producer::{
    BATCH_BYTES_MAX, BatchDeliveryFuture, Compression, DeliveryFuture, IdMode, Producer,
    ProducerConfig,
};
pub use queue::{
    Delivery, QueueConsumer, QueueConsumerOptions, QueueEvent, QueueWorker, RangeAck, Settle,
    Settled,
};
pub use record::{Ack, Delivered, Message, Messages, Record};
pub use router::{HandlerResult, Retry, Router, RouterConfig};
pub use tidelog_storage::Header;

/// The generated gRPC types and clients (`tidelog.v1`), for what this crate does not
/// wrap (admin calls, queue creation, ...): use them with [`Client::admin`] and friends.
pub use tidelog_proto::v1 as proto;
