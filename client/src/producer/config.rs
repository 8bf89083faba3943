//! How a producer is set up: [`ProducerConfig`] and [`IdMode`] (re-exported by
//! `producer`; the front and the task read them from here).

use std::time::Duration;

use tidelog_storage::Compression;

/// When records get message ids from the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdMode {
    /// On topics with a dedup window or `assign_ids`, records without an id get one
    /// (16 bytes, time-ordered, the broker's own layout), so retries cannot duplicate.
    #[default]
    Auto,
    /// Every record without an id gets one.
    Always,
    /// Only the ids callers set; retries are at-least-once.
    Never,
}

/// Largest [`ProducerConfig::batch_bytes`]: half the broker's default request limit
/// (`--max-request-bytes`, 32 MiB), leaving room for a batch's framing and the
/// request around it (and for one record over the size, alone in its batch).
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How a [`Producer`](crate::Producer) batches, sends and retries.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch is sealed when its records' bytes reach this. Default 256 KiB; at most
    /// [`BATCH_BYTES_MAX`] (16 MiB): a larger value is capped there by
    /// [`Producer::new`](crate::Producer::new), with a warning. Each batch goes in one
    /// request, and the broker refuses a request over its `--max-request-bytes`
    /// (default 32 MiB) with RESOURCE_EXHAUSTED, failing every record of it: on a broker
    /// started with a lower limit keep this well below that limit.
    pub batch_bytes: usize,
    /// ... or when it holds this many records. Default 10,000.
    pub batch_records: usize,
    /// ... or when it has waited this long and the window has room. Default 5 ms.
    pub linger: Duration,
    /// Compression of each batch (the broker stores it as sent). Default none.
    pub compression: Compression,
    /// Batches sent and not yet answered, at most. Default 8.
    pub in_flight: usize,
    /// Bytes of records accepted and not yet acknowledged, at most: `send` waits
    /// beyond it. Default 64 MiB.
    pub buffer_bytes: usize,
    /// Message ids for retries without duplicates. Default [`IdMode::Auto`].
    pub ids: IdMode,
    /// How long a record may wait for its ack while the broker is unreachable or
    /// silent before it fails: with [`Error::Timeout`](crate::Error::Timeout) (not
    /// stored) when its batch was never sent, with
    /// [`Error::OutcomeUnknown`](crate::Error::OutcomeUnknown) (may be stored) when it
    /// was sent and not answered. On a topic with a dedup window a batch sent and
    /// unanswered is given up sooner, when the window (less a margin) passed since it
    /// was first sent (see "Retries and duplicates" in the producer module's docs, `client/src/producer/mod.rs`).
    /// Default 2 minutes.
    pub delivery_timeout: Duration,
    /// First and longest reconnect delay. Default 50 ms and 2 s.
    pub backoff: (Duration, Duration),
    /// How often the producer describes each topic it sends to again (Kafka's
    /// `metadata.max.age.ms`), so that after Admin.CreatePartitions keyed records
    /// route by the new partition count within this time: per-key order holds among
    /// records sent after that. It also describes a topic again at once when a
    /// record names a partition past the count it knows (at most once a second) or
    /// the broker says a partition does not exist. Default 30 s.
    pub metadata_max_age: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 256 * 1024,
            batch_records: 10_000,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            in_flight: 8,
            buffer_bytes: 64 * 1024 * 1024,
            ids: IdMode::Auto,
            delivery_timeout: Duration::from_secs(120),
            backoff: (crate::backoff::BACKOFF_INITIAL, crate::backoff::BACKOFF_MAX),
            metadata_max_age: Duration::from_secs(30),
        }
    }
}
