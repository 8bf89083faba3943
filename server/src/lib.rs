//! tidelog-server: the gRPC broker over the tidelog storage engine (binary `tidelogd`).
//!
//! Codemap:
//! - [`config`]: settings from flags, environment (`TIDELOG_*`) and a TOML file.
//! - [`convert`]: the one module that knows both proto and storage types, and maps
//!   `tidelog_storage::Error` to `tonic::Status`. Nothing else imports both.
//! - [`auth`]: `--auth`: the RPC table (operation x resource per RPC), the layer that
//!   resolves a caller's principal from its bearer token, the per-RPC check, the
//!   re-check of open streams, and the `Access` service (tokens, ACL rules).
//! - [`admin`], [`publish`], [`consume`]: the `Admin`, `Publisher` and `Consumer`
//!   services.
//! - [`deadline`]: a call's `grpc-timeout`, and how long a long poll (Fetch,
//!   FetchBatches, Receive) may wait within it.
//! - [`batch`]: record batches on the wire: `PublishBatch` (and batch requests on
//!   `PublishStream`), `FetchBatches`, `SubscribeBatches`; storage validates and reads,
//!   this module only moves the bytes.
//! - [`zero_copy`]: the `Consumer` and `Publisher` services as the server adds them:
//!   `FetchBatches` and `SubscribeBatches` responses sent as pieces (the stored
//!   batches slices of the segments), `Publish`, `PublishBatch` and `PublishStream`
//!   requests decoded from the HTTP/2 chunks they came in; other methods go to tonic's
//!   generated servers.
//! - [`read`]: the read limits every reader applies, [`read::read_round`] (the one loop
//!   that reads partitions for every subscriber: batch budget, turns among partitions,
//!   expired messages skipped) and [`read::PartitionReader`], the plain Subscribe
//!   around it. Imported by [`consume`] and [`groups`], importing neither.
//! - [`queues`]: work queues: a runtime per queue in use around the storage engine's
//!   delivery engine (settlements that arrive together combined into one fsync), and
//!   the `Queues` service (with `ListDeliveries`, a queue's delivery events newest
//!   first; a Consume stream's Settle messages pipelined, answered in order).
//! - [`messages`]: the `Messages` service: a message by its id, and its delivery status
//!   in a queue or group and its history in a queue (the lookups run on the blocking
//!   pool: they may read and rebuild id index files and read history files).
//! - [`groups`]: consumer groups (coordinator and the `Groups` service; a member
//!   subscribes to one topic or a topic pattern, partitions are assigned per (topic,
//!   partition); a member's task reads those it owns through [`read::read_round`],
//!   like a plain Subscribe).
//! - [`log_writer`]: the writer under the logs; a line stderr refuses is dropped, so a
//!   broken log pipe never stops serving or shutting down.
//! - [`metrics`]: Prometheus metrics and the `/metrics` HTTP endpoint.
//! - [`exposition`]: the endpoint's two text formats (OpenMetrics, classic 0.0.4) and
//!   the choice between them by the `Accept` header.
//! - [`request_limit`]: oversized requests answered RESOURCE_EXHAUSTED naming the limit.
//! - [`shutdown`]: the signal every long-lived call watches so the broker can stop.
//! - [`tls`]: `--tls-cert/--tls-key/--tls-client-ca` and `--metrics-token-file`: the
//!   rustls configurations and the metrics token, re-read on SIGHUP (a bad file keeps
//!   the old ones), and the principal of a client certificate (its subject CN).
//! - [`listener`]: the gRPC accept loop: connection limits (total, per client IP),
//!   the TLS handshake on its own task, plaintext clients told to use TLS, and the
//!   [`listener::ConnInfo`] (client address, certificate principal) of each request.
//! - [`server`]: binds the sockets, wires the services, runs until shutdown; sets the
//!   HTTP/2 guards tonic leaves off (streams per connection, provoked resets).
//!
//! Invariants: storage calls that fsync (create/delete topic, retention, close) run on
//! the blocking pool; appends (a short `pwrite`) and reads (from `mmap`) run inline in
//! async code. Every stream a client opens is bounded: a subscriber's queue holds a
//! few batches, a publish stream a fixed number of requests in flight, and a
//! connection at most `max_streams_per_connection` streams.
#![deny(unsafe_code)]

use std::sync::Arc;

use tidelog_storage::Store;

pub mod admin;
pub mod auth;
pub mod batch;
pub mod config;
pub mod consume;
pub mod convert;
pub mod deadline;
pub mod exposition;
pub mod groups;
pub mod listener;
pub mod log_writer;
pub mod messages;
pub mod metrics;
pub mod partitioner;
pub mod publish;
pub mod queues;
pub mod read;
pub mod request_limit;
pub mod server;
pub mod shutdown;
pub mod sniff;
pub mod tls;
pub mod zero_copy;

/// What every service shares. Handed around as `Arc<AppState>`.
#[derive(Debug)]
pub struct AppState {
    /// The storage engine: topics, partitions, committed offsets.
    pub store: Arc<Store>,
    /// Counters, gauges and histograms served on `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The broker's effective settings.
    pub config: Arc<config::Settings>,
    /// The consumer-group coordinator.
    pub groups: Arc<groups::GroupCoordinator>,
    /// The work queues in use.
    pub queues: Arc<queues::QueueManager>,
    /// Fires when the broker starts shutting down: long polls answer, streams end
    /// with UNAVAILABLE, so in-flight calls can finish and the server can stop.
    pub shutdown: shutdown::Shutdown,
    /// Authentication and authorization (`--auth`); empty when off.
    pub auth: Arc<auth::Auth>,
    /// Round-robin counter for messages with neither key nor partition.
    pub round_robin: partitioner::RoundRobin,
    /// Wakes plain subscriptions when topics or partitions are created or deleted.
    pub topic_changes: read::TopicChanges,
}
