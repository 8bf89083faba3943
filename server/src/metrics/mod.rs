//! Prometheus metrics (prometheus-client) and the `/metrics` HTTP endpoint, which
//! answers in OpenMetrics or the classic text format as the scraper asks (see
//! [`crate::exposition`]). Every metric has help text.
//!
//! Counters and histograms are updated where things happen (publish, fetch, every
//! RPC, every group commit through [`FlushObserver`]). Gauges that describe state the
//! storage engine already holds (end offset, log start, size per partition) and the
//! consumer-group gauges are computed at scrape time, so they are never stale and
//! cost nothing between scrapes.
//!
//! Metric names (counters' samples get `_total` appended by the encoder; in the
//! classic format their HELP and TYPE lines carry it too):
//!
//! | name | type | labels |
//! |---|---|---|
//! | tidelog_publish_messages / _bytes | counter | topic |
//! | tidelog_publish_duplicates (ids within the dedup window, not stored again) | counter | topic |
//! | tidelog_dedup_window_ids, _bytes | gauge | topic |
//! | tidelog_fetch_messages / _bytes (Fetch and Subscribe deliveries) | counter | topic |
//! | tidelog_partition_end_offset, _log_start_offset, _size_bytes (left out for an unavailable partition) | gauge | topic, partition |
//! | tidelog_partition_unavailable, _poisoned (0 or 1) | gauge | topic, partition |
//! | tidelog_fsync_duration_seconds | histogram | |
//! | tidelog_group_commit_appends, tidelog_group_commit_bytes | histogram | |
//! | tidelog_rpc_duration_seconds | histogram | method |
//! | tidelog_rpc_errors | counter | method, code |
//! | tidelog_open_streams | gauge | kind (publish, subscribe) |
//! | tidelog_retention_deleted_segments / _bytes / _messages | counter | topic |
//! | tidelog_position_resets | counter | topic, reason |
//! | tidelog_message_lookups | counter | topic, result (found, not_found) |
//! | tidelog_delivery_lookups (status, history and listing calls answered) | counter | call (status, history, list), result (ok, not_found, invalid_argument, error) |
//! | tidelog_filtered_messages (skipped by a server-side filter, never sent) | counter | kind (fetch, subscribe, group, queue) |
//! | tidelog_filter_not_json_messages (of those: a JSON field on a value that is not JSON) | counter | kind |
//! | tidelog_consumer_group_lag | gauge | group, topic, partition |
//! | tidelog_consumer_group_members | gauge | group |
//! | tidelog_queue_ready, _delayed, _unacked, _waiting, _oldest_unacked_age_seconds | gauge | queue |
//! | tidelog_queue_delivered, _redelivered, _acked, _nacked, _timed_out, _member_left, _lost_to_retention | counter | queue |
//! | tidelog_queue_dead_lettered | counter | queue, reason (max_deliveries, term, overflow) |
//! | tidelog_queue_ack_latency_seconds | histogram | queue |
//! | tidelog_connections_open (gRPC connections holding a place within the connection limits: served, or in their TLS handshake) | gauge | |
//! | tidelog_connections_refused (closed at accept or in the TLS handshake) | counter | reason (max_connections, max_connections_per_ip, plaintext_on_tls, tls_handshake) |
//! | tidelog_audit_events (audit lines written: refused calls, access and admin changes) | counter | result (OK, UNCHANGED, or the gRPC code name) |
//! | tidelog_quota_throttle_seconds (time calls and streams were held back by a quota) | counter | principal, kind (publish_bytes, consume_bytes, requests) |
//! | tidelog_quota_throttled (calls and stream items held back by a quota) | counter | principal, kind |
//! | tidelog_quota_limit_refusals (topic or partition creations refused by topics_max or partitions_max) | counter | principal, kind (topics, partitions) |
//! | tidelog_tls_reloads (SIGHUP re-reads of the TLS files and the metrics token) | counter | result (ok, error) |

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tidelog_proto::v1::ResetReason;
use tidelog_storage::{FlushObserver, RetentionOutcome, Store};

use crate::exposition::{Format, to_classic};

mod http;
mod scrape;

pub use http::serve;
use scrape::ScrapeSources;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabels {
    pub topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcErrorLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicReasonLabels {
    topic: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallResultLabels {
    call: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicResultLabels {
    topic: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLagLabels {
    group: String,
    topic: String,
    partition: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrincipalKindLabels {
    principal: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

/// Consumer lag of one group on one partition, for the scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    /// end_offset - committed offset (0 when the commit is ahead).
    pub lag: u64,
}

/// What the consumer-group gauges show at one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMetricsSnapshot {
    /// Live members per group: (group, member count).
    pub members: Vec<(String, u64)>,
    /// Lag per group and partition that has a committed offset.
    pub lags: Vec<GroupLag>,
}

/// Implemented by the group coordinator: read at every scrape for the
/// `tidelog_consumer_group_*` gauges. Keep it cheap (no I/O).
pub trait GroupMetricsSource: Send + Sync + std::fmt::Debug {
    fn group_metrics(&self) -> GroupMetricsSnapshot;
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueReasonLabels {
    queue: String,
    reason: &'static str,
}

/// One queue's state and counters at one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueMetrics {
    pub queue: String,
    pub ready: u64,
    pub delayed: u64,
    pub unacked: u64,
    pub waiting: u64,
    pub oldest_unacked_age_ms: u64,
    /// Since the queue's engine started (the broker's start, or the queue's first use).
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub timed_out: u64,
    pub member_left: u64,
    pub dead_lettered_max_deliveries: u64,
    pub dead_lettered_term: u64,
    pub dead_lettered_overflow: u64,
    /// Deliveries given back unseen (never handed to their member).
    pub released: u64,
    /// Messages retention deleted before the queue settled them.
    pub lost_to_retention: u64,
    /// Overflow dead letters the dead-letter topic refused for good.
    pub overflow_refused: u64,
    /// Delivery-history events that could not be written (the queue went on).
    pub history_failed_events: u64,
    /// Partitions whose deliveries the queue stopped at a damaged batch.
    pub damaged_partitions: u64,
}

/// Implemented by the queue manager: read at every scrape for the `tidelog_queue_*`
/// metrics. Keep it cheap (no I/O).
pub trait QueueMetricsSource: Send + Sync + std::fmt::Debug {
    fn queue_metrics(&self) -> Vec<QueueMetrics>;
}

/// A queue metric: name, help and how to read it off a [`QueueMetrics`].
type QueueField<T> = (&'static str, &'static str, fn(&QueueMetrics) -> T);

/// The `reason` label values of `tidelog_queue_dead_lettered`.
pub const DEAD_LETTER_REASONS: [&str; 3] = ["max_deliveries", "term", "overflow"];

/// The `kind` label values of `tidelog_filtered_messages`: what read with the filter.
pub const FILTER_KINDS: [&str; 4] = ["fetch", "subscribe", "group", "queue"];

/// The `result` label values of `tidelog_message_lookups`.
pub const LOOKUP_RESULTS: [&str; 2] = ["found", "not_found"];

/// The `call` label values of `tidelog_delivery_lookups`.
pub const DELIVERY_LOOKUP_CALLS: [&str; 3] = ["status", "history", "list"];

/// The `reason` label values of `tidelog_position_resets`.
pub const RESET_REASONS: [&str; 4] = [
    "below_log_start",
    "above_end_offset",
    "no_committed_offset",
    "topic_recreated",
];

/// A reset's `reason` label: one of [`RESET_REASONS`].
fn reset_label(reason: ResetReason) -> &'static str {
    match reason {
        ResetReason::BelowLogStart => RESET_REASONS[0],
        ResetReason::AboveEndOffset => RESET_REASONS[1],
        ResetReason::NoCommittedOffset | ResetReason::Unspecified => RESET_REASONS[2],
        ResetReason::TopicRecreated => RESET_REASONS[3],
    }
}

/// The `reason` label of `tidelog_retention_deleted_segments`: every record past its
/// TTL, older than `retention_ms`, over `retention_bytes`.
pub const RETENTION_REASONS: [&str; 3] = ["ttl", "time", "size"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn ack_latency_histogram() -> Histogram {
    // 1 ms to ~9 hours.
    Histogram::new(exponential_buckets(0.001, 2.0, 25))
}

fn rpc_histogram() -> Histogram {
    // 100 µs to ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Every metric the broker exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    publish_messages: Family<TopicLabels, Counter>,
    publish_bytes: Family<TopicLabels, Counter>,
    publish_duplicates: Family<TopicLabels, Counter>,
    fetch_messages: Family<TopicLabels, Counter>,
    fetch_bytes: Family<TopicLabels, Counter>,
    rpc_duration: HistogramFamily<MethodLabels>,
    rpc_errors: Family<RpcErrorLabels, Counter>,
    open_streams: Family<StreamLabels, Gauge>,
    retention_segments: Family<TopicReasonLabels, Counter>,
    retention_bytes: Family<TopicLabels, Counter>,
    retention_messages: Family<TopicLabels, Counter>,
    position_resets: Family<TopicReasonLabels, Counter>,
    message_lookups: Family<TopicResultLabels, Counter>,
    delivery_lookups: Family<CallResultLabels, Counter>,
    filtered_messages: Family<KindLabels, Counter>,
    filter_not_json: Family<KindLabels, Counter>,
    queue_ack_latency: HistogramFamily<QueueLabels>,
    connections_open: Gauge,
    connections_refused: Family<ReasonLabels, Counter>,
    tls_reloads: Family<ResultLabels, Counter>,
    audit_events: Family<ResultLabels, Counter>,
    quota_throttle_seconds: Family<PrincipalKindLabels, Counter<f64, AtomicU64>>,
    quota_throttled: Family<PrincipalKindLabels, Counter>,
    quota_limit_refusals: Family<PrincipalKindLabels, Counter>,
    flush: Arc<FlushMetrics>,
    sources: Arc<ScrapeSources>,
}

/// Histograms fed by the storage engine's group commits.
#[derive(Debug)]
struct FlushMetrics {
    fsync_seconds: Histogram,
    appends: Histogram,
    bytes: Histogram,
}

impl FlushObserver for FlushMetrics {
    fn on_flush(&self, duration: Duration, appends: u64, bytes: u64) {
        self.fsync_seconds.observe(duration.as_secs_f64());
        self.appends.observe(appends as f64);
        self.bytes.observe(bytes as f64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let flush = Arc::new(FlushMetrics {
            // 50 µs to ~26 s.
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 20)),
            appends: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            // 256 B to 128 MiB.
            bytes: Histogram::new(exponential_buckets(256.0, 2.0, 20)),
        });
        let sources = Arc::new(ScrapeSources::default());
        let metrics = Metrics {
            publish_messages: Family::default(),
            publish_bytes: Family::default(),
            publish_duplicates: Family::default(),
            fetch_messages: Family::default(),
            fetch_bytes: Family::default(),
            rpc_duration: Family::new_with_constructor(rpc_histogram),
            rpc_errors: Family::default(),
            open_streams: Family::default(),
            retention_segments: Family::default(),
            retention_bytes: Family::default(),
            retention_messages: Family::default(),
            position_resets: Family::default(),
            message_lookups: Family::default(),
            delivery_lookups: Family::default(),
            filtered_messages: Family::default(),
            filter_not_json: Family::default(),
            queue_ack_latency: Family::new_with_constructor(ack_latency_histogram),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            tls_reloads: Family::default(),
            audit_events: Family::default(),
            quota_throttle_seconds: Family::default(),
            quota_throttled: Family::default(),
            quota_limit_refusals: Family::default(),
            flush: flush.clone(),
            sources: sources.clone(),
            registry: Registry::default(),
        };
        registry.register(
            "tidelog_publish_messages",
            "Messages appended, by topic",
            metrics.publish_messages.clone(),
        );
        registry.register(
            "tidelog_publish_bytes",
            "Key, value and header bytes appended, by topic",
            metrics.publish_bytes.clone(),
        );
        registry.register(
            "tidelog_publish_duplicates",
            "Messages not appended because their id was stored within the topic's dedup window",
            metrics.publish_duplicates.clone(),
        );
        registry.register(
            "tidelog_fetch_messages",
            "Messages delivered by Fetch and Subscribe, by topic",
            metrics.fetch_messages.clone(),
        );
        registry.register(
            "tidelog_fetch_bytes",
            "Key, value and header bytes delivered by Fetch and Subscribe, by topic",
            metrics.fetch_bytes.clone(),
        );
        registry.register(
            "tidelog_rpc_duration_seconds",
            "Time to answer a unary RPC, or the life of a streaming one, by method",
            metrics.rpc_duration.clone(),
        );
        registry.register(
            "tidelog_rpc_errors",
            "RPCs (or requests inside a publish stream) that failed, by method and gRPC status code",
            metrics.rpc_errors.clone(),
        );
        registry.register(
            "tidelog_open_streams",
            "Open PublishStream (kind=publish) and Subscribe (kind=subscribe) streams",
            metrics.open_streams.clone(),
        );
        registry.register(
            "tidelog_retention_deleted_segments",
            "Segments deleted by retention or TTL, by topic and reason (ttl: every message expired; time: retention_ms; size: retention_bytes)",
            metrics.retention_segments.clone(),
        );
        registry.register(
            "tidelog_retention_deleted_bytes",
            "Log bytes deleted by retention or TTL, by topic",
            metrics.retention_bytes.clone(),
        );
        registry.register(
            "tidelog_retention_deleted_messages",
            "Messages in segments deleted by retention or TTL (expired ones included), by topic",
            metrics.retention_messages.clone(),
        );
        registry.register(
            "tidelog_position_resets",
            "Consumer positions moved by a reset policy, by topic and reason",
            metrics.position_resets.clone(),
        );
        for kind in FILTER_KINDS {
            // Every kind from the start, so a rate over them never starts mid-way.
            metrics
                .filtered_messages
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
            metrics
                .filter_not_json
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
        }
        registry.register(
            "tidelog_filtered_messages",
            "Messages a server-side filter skipped (never sent), by what read them: fetch, subscribe, group (a member's stream) or queue",
            metrics.filtered_messages.clone(),
        );
        registry.register(
            "tidelog_filter_not_json_messages",
            "Messages skipped because the filter reads a JSON field and the value is not JSON, by kind (also in tidelog_filtered_messages)",
            metrics.filter_not_json.clone(),
        );
        registry.register(
            "tidelog_message_lookups",
            "Messages.GetMessage lookups by id that were answered, by topic and result (found, not_found)",
            metrics.message_lookups.clone(),
        );
        registry.register(
            "tidelog_delivery_lookups",
            "Delivery status, history and listing calls answered (GetDeliveryStatus, GetDeliveryHistory, ListDeliveries), by call and result",
            metrics.delivery_lookups.clone(),
        );
        registry.register(
            "tidelog_queue_ack_latency_seconds",
            "Time from a queue's delivery to its durable ack, by queue",
            metrics.queue_ack_latency.clone(),
        );
        registry.register(
            "tidelog_fsync_duration_seconds",
            "Duration of one group commit (fdatasync of a partition)",
            flush.fsync_seconds.clone(),
        );
        registry.register(
            "tidelog_group_commit_appends",
            "Appends made durable by one group commit",
            flush.appends.clone(),
        );
        registry.register(
            "tidelog_group_commit_bytes",
            "Bytes made durable by one group commit",
            flush.bytes.clone(),
        );
        registry.register(
            "tidelog_connections_open",
            "gRPC connections holding a place within the connection limits (served, or in their TLS handshake)",
            metrics.connections_open.clone(),
        );
        registry.register(
            "tidelog_connections_refused",
            "gRPC connections closed at accept (over --max-connections or \
             --max-connections-per-ip) or in the TLS handshake (a plaintext client, a \
             failed handshake), by reason",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "tidelog_tls_reloads",
            "Re-reads of the TLS files and the metrics token on SIGHUP, by result (error: \
             the old configuration stays)",
            metrics.tls_reloads.clone(),
        );
        registry.register(
            "tidelog_audit_events",
            "Audit lines written (refused calls, access changes, admin changes), by result: \
             OK, UNCHANGED, or the gRPC code name",
            metrics.audit_events.clone(),
        );
        registry.register(
            "tidelog_quota_throttle_seconds",
            "Time calls and streams of a principal were held back by its quota, by kind: \
             publish_bytes, consume_bytes, requests",
            metrics.quota_throttle_seconds.clone(),
        );
        registry.register(
            "tidelog_quota_throttled",
            "Calls and stream items of a principal held back by its quota, by kind",
            metrics.quota_throttled.clone(),
        );
        registry.register(
            "tidelog_quota_limit_refusals",
            "Topic and partition creations refused by a principal's topics_max or \
             partitions_max, by kind: topics, partitions",
            metrics.quota_limit_refusals.clone(),
        );
        registry.register_collector(Box::new(sources));
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A gRPC connection opened (`+1`) or closed (`-1`).
    pub fn connection_open(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    /// A gRPC connection refused for `reason` (see [`crate::listener::Refusal`]).
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A reload of the TLS files on SIGHUP, `ok` or not.
    pub fn tls_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// An audit line written with `result`.
    pub fn audit_event(&self, result: &'static str) {
        self.audit_events
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A principal held back `wait` by its `kind` quota.
    pub fn quota_throttled(&self, principal: &str, kind: &'static str, wait: Duration) {
        let labels = PrincipalKindLabels {
            principal: principal.to_string(),
            kind,
        };
        self.quota_throttle_seconds
            .get_or_create(&labels)
            .inc_by(wait.as_secs_f64());
        self.quota_throttled.get_or_create(&labels).inc();
    }

    /// A creation refused by a principal's `kind` limit (topics or partitions).
    pub fn quota_limit_refused(&self, principal: &str, kind: &'static str) {
        self.quota_limit_refusals
            .get_or_create(&PrincipalKindLabels {
                principal: principal.to_string(),
                kind,
            })
            .inc();
    }

    /// The observer to pass in `StoreOptions::flush_observer`.
    pub fn flush_observer(&self) -> Arc<dyn FlushObserver> {
        self.flush.clone()
    }

    /// Lets the scrape read partition state from `store`. Later calls are ignored.
    pub fn set_store(&self, store: &Arc<Store>) {
        let _ = self.sources.store.set(Arc::downgrade(store));
    }

    /// Lets the scrape read the consumer-group gauges. Later calls are ignored.
    pub fn set_group_source(&self, source: Weak<dyn GroupMetricsSource>) {
        let _ = self.sources.groups.set(source);
    }

    /// Lets the scrape read the queue metrics. Later calls are ignored.
    pub fn set_queue_source(&self, source: Weak<dyn QueueMetricsSource>) {
        let _ = self.sources.queues.set(source);
    }

    /// Delivery-to-ack times of `queue`, in ms.
    pub fn queue_acked(&self, queue: &str, latencies_ms: &[u64]) {
        if latencies_ms.is_empty() {
            return;
        }
        let histogram = self.queue_ack_latency.get_or_create(&QueueLabels {
            queue: queue.to_string(),
        });
        for &ms in latencies_ms {
            histogram.observe(ms as f64 / 1000.0);
        }
    }

    pub fn published(&self, topic: &str, messages: u64, bytes: u64) {
        let labels = TopicLabels {
            topic: topic.to_string(),
        };
        self.publish_messages
            .get_or_create(&labels)
            .inc_by(messages);
        self.publish_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Messages of a publish that were duplicates within the dedup window.
    pub fn duplicates(&self, topic: &str, messages: u64) {
        if messages == 0 {
            return;
        }
        self.publish_duplicates
            .get_or_create(&TopicLabels {
                topic: topic.to_string(),
            })
            .inc_by(messages);
    }

    pub fn fetched(&self, topic: &str, messages: u64, bytes: u64) {
        if messages == 0 {
            return;
        }
        let labels = TopicLabels {
            topic: topic.to_string(),
        };
        self.fetch_messages.get_or_create(&labels).inc_by(messages);
        self.fetch_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Messages a filter skipped while reading for `kind` (one of [`FILTER_KINDS`]).
    pub fn filtered(&self, kind: &'static str, filtered: tidelog_storage::filter::Filtered) {
        if filtered.skipped == 0 {
            return;
        }
        let labels = KindLabels { kind };
        self.filtered_messages
            .get_or_create(&labels)
            .inc_by(filtered.skipped);
        if filtered.not_json > 0 {
            self.filter_not_json
                .get_or_create(&labels)
                .inc_by(filtered.not_json);
        }
    }

    /// Records one RPC's duration and, if it failed, its status code.
    pub fn rpc_finished(&self, method: &'static str, started: Instant, error: Option<tonic::Code>) {
        self.rpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        if let Some(code) = error {
            self.rpc_error(method, code);
        }
    }

    /// Counts one failed RPC (or failed request in a stream).
    pub fn rpc_error(&self, method: &'static str, code: tonic::Code) {
        self.rpc_errors
            .get_or_create(&RpcErrorLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// Counts an open stream of `kind` until the guard is dropped.
    pub fn open_stream(self: &Arc<Self>, kind: &'static str) -> StreamGuard {
        self.open_streams
            .get_or_create(&StreamLabels { kind })
            .inc();
        StreamGuard {
            metrics: self.clone(),
            kind,
        }
    }

    pub fn retention(&self, topic: &str, outcome: &RetentionOutcome) {
        if outcome.segments_deleted == 0 {
            return;
        }
        let labels = TopicLabels {
            topic: topic.to_string(),
        };
        let by_reason = [
            outcome.segments_expired,
            outcome.segments_too_old,
            outcome.segments_over_size,
        ];
        for (reason, segments) in RETENTION_REASONS.into_iter().zip(by_reason) {
            if segments > 0 {
                self.retention_segments
                    .get_or_create(&TopicReasonLabels {
                        topic: topic.to_string(),
                        reason,
                    })
                    .inc_by(u64::from(segments));
            }
        }
        self.retention_bytes
            .get_or_create(&labels)
            .inc_by(outcome.bytes_deleted);
        self.retention_messages
            .get_or_create(&labels)
            .inc_by(outcome.records_deleted);
    }

    /// Counts a position moved by a reset policy, or from a topic deleted and
    /// created again, labelled by its reason ([`RESET_REASONS`]).
    pub fn position_reset(&self, topic: &str, reason: ResetReason) {
        self.position_resets
            .get_or_create(&TopicReasonLabels {
                topic: topic.to_string(),
                reason: reset_label(reason),
            })
            .inc();
    }

    /// Counts a lookup by message id in `topic` that found the message or not.
    pub fn message_lookup(&self, topic: &str, found: bool) {
        self.message_lookups
            .get_or_create(&TopicResultLabels {
                topic: topic.to_string(),
                result: LOOKUP_RESULTS[usize::from(!found)],
            })
            .inc();
    }

    /// Counts a delivery status (`call` "status"), history ("history") or listing
    /// ("list") call by how it ended.
    pub fn delivery_lookup(&self, call: &'static str, code: Option<tonic::Code>) {
        debug_assert!(DELIVERY_LOOKUP_CALLS.contains(&call));
        let result = match code {
            None => "ok",
            Some(tonic::Code::NotFound) => "not_found",
            Some(tonic::Code::InvalidArgument) => "invalid_argument",
            Some(_) => "error",
        };
        self.delivery_lookups
            .get_or_create(&CallResultLabels { call, result })
            .inc();
    }

    /// Forgets the series of a deleted queue that are kept here (the others are read
    /// from the queues at each scrape, so they go with it), so they stop being
    /// exported and a queue created again under the name starts without them.
    pub fn forget_queue(&self, queue: &str) {
        self.queue_ack_latency.remove(&QueueLabels {
            queue: queue.to_string(),
        });
    }

    /// Forgets the per-topic series of a deleted topic, so they stop being exported.
    pub fn forget_topic(&self, topic: &str) {
        let labels = TopicLabels {
            topic: topic.to_string(),
        };
        for family in [
            &self.publish_messages,
            &self.publish_bytes,
            &self.fetch_messages,
            &self.fetch_bytes,
            &self.retention_bytes,
            &self.retention_messages,
        ] {
            family.remove(&labels);
        }
        for (family, reasons) in [
            (&self.position_resets, &RESET_REASONS[..]),
            (&self.retention_segments, &RETENTION_REASONS[..]),
        ] {
            for &reason in reasons {
                family.remove(&TopicReasonLabels {
                    topic: topic.to_string(),
                    reason,
                });
            }
        }
        for result in LOOKUP_RESULTS {
            self.message_lookups.remove(&TopicResultLabels {
                topic: topic.to_string(),
                result,
            });
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# encoding the metrics failed");
        }
        out
    }

    /// The text of every metric in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Classic => to_classic(&self.encode()),
        }
    }
}

/// Decrements the open-stream gauge when the stream ends, however it ends.
#[derive(Debug)]
pub struct StreamGuard {
    metrics: Arc<Metrics>,
    kind: &'static str,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics
            .open_streams
            .get_or_create(&StreamLabels { kind: self.kind })
            .dec();
    }
}

pub use tidelog_proto::code_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_flushes_show_up_in_the_text() {
        let metrics = Arc::new(Metrics::new());
        metrics.published("orders", 3, 30);
        metrics.fetched("orders", 2, 20);
        metrics.rpc_finished("Publish", Instant::now(), Some(tonic::Code::NotFound));
        metrics.position_reset("orders", ResetReason::BelowLogStart);
        metrics.message_lookup("orders", true);
        metrics.message_lookup("orders", false);
        metrics.message_lookup("orders", false);
        metrics.retention(
            "orders",
            &RetentionOutcome {
                segments_deleted: 3,
                segments_expired: 1,
                segments_over_size: 2,
                bytes_deleted: 300,
                records_deleted: 30,
                ..RetentionOutcome::default()
            },
        );
        metrics
            .flush_observer()
            .on_flush(Duration::from_millis(3), 5, 4096);
        let guard = metrics.open_stream("subscribe");
        let text = metrics.encode();
        for expected in [
            "tidelog_publish_messages_total{topic=\"orders\"} 3",
            "tidelog_publish_bytes_total{topic=\"orders\"} 30",
            "tidelog_fetch_messages_total{topic=\"orders\"} 2",
            "tidelog_rpc_errors_total{method=\"Publish\",code=\"NOT_FOUND\"} 1",
            "tidelog_position_resets_total{topic=\"orders\",reason=\"below_log_start\"} 1",
            "tidelog_fsync_duration_seconds_count 1",
            "tidelog_group_commit_appends_sum 5.0",
            "tidelog_open_streams{kind=\"subscribe\"} 1",
            "tidelog_retention_deleted_segments_total{topic=\"orders\",reason=\"ttl\"} 1",
            "tidelog_retention_deleted_segments_total{topic=\"orders\",reason=\"size\"} 2",
            "tidelog_retention_deleted_messages_total{topic=\"orders\"} 30",
            "tidelog_message_lookups_total{topic=\"orders\",result=\"found\"} 1",
            "tidelog_message_lookups_total{topic=\"orders\",result=\"not_found\"} 2",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
        assert!(!text.contains("reason=\"time\""), "{text}");
        metrics.forget_topic("orders");
        assert!(!metrics.encode().contains("orders"));
        drop(guard);
        assert!(
            metrics
                .encode()
                .contains("tidelog_open_streams{kind=\"subscribe\"} 0")
        );
    }

    #[derive(Debug)]
    struct FixedGroups;
    impl GroupMetricsSource for FixedGroups {
        fn group_metrics(&self) -> GroupMetricsSnapshot {
            GroupMetricsSnapshot {
                members: vec![("billing".into(), 2)],
                lags: vec![GroupLag {
                    group: "billing".into(),
                    topic: "orders".into(),
                    partition: 1,
                    lag: 7,
                }],
            }
        }
    }

    #[test]
    fn scrape_time_gauges_read_store_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(
                dir.path(),
                tidelog_storage::StoreOptions {
                    retention_interval: None,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let topic = store
            .create_topic("orders", 2, tidelog_storage::TopicConfig::default())
            .unwrap();
        topic.partitions()[1]
            .append_durable(&[tidelog_storage::NewRecord::value("x")])
            .unwrap();
        let metrics = Metrics::new();
        metrics.set_store(&store);
        let groups: Arc<dyn GroupMetricsSource> = Arc::new(FixedGroups);
        metrics.set_group_source(Arc::downgrade(&groups));
        let text = metrics.encode();
        for expected in [
            "tidelog_partition_end_offset{topic=\"orders\",partition=\"1\"} 1",
            "tidelog_partition_end_offset{topic=\"orders\",partition=\"0\"} 0",
            "tidelog_partition_log_start_offset{topic=\"orders\",partition=\"1\"} 0",
            "tidelog_consumer_group_lag{group=\"billing\",topic=\"orders\",partition=\"1\"} 7",
            "tidelog_consumer_group_members{group=\"billing\"} 2",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
        store.close().unwrap();
    }

    /// Checks what `promtool check metrics` checks first: every sample of the classic
    /// `text` belongs to a family with a `# TYPE` and a non-empty `# HELP` line.
    fn assert_every_sample_has_help(text: &str) {
        let mut helped = std::collections::HashSet::new();
        let mut types = std::collections::HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(!help.trim().is_empty(), "{family} has an empty help text");
                helped.insert(family);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (family, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                types.insert(family, kind);
            } else if !line.is_empty() {
                assert!(!line.starts_with('#'), "{line:?} is not classic text");
                let name = line.split(['{', ' ']).next().unwrap_or("");
                let family = ["", "_bucket", "_sum", "_count"]
                    .into_iter()
                    .find_map(|suffix| {
                        let family = name.strip_suffix(suffix)?;
                        let kind = *types.get(family)?;
                        (suffix.is_empty() || kind == "histogram" || kind == "summary")
                            .then_some(family)
                    });
                let family = family.unwrap_or_else(|| panic!("{name}: no TYPE in\n{text}"));
                assert!(helped.contains(family), "{name}: no HELP in\n{text}");
            }
        }
    }

    #[test]
    fn every_metric_has_help_text_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(
                dir.path(),
                tidelog_storage::StoreOptions {
                    retention_interval: None,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        store
            .create_topic("orders", 1, tidelog_storage::TopicConfig::default())
            .unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.set_store(&store);
        let groups: Arc<dyn GroupMetricsSource> = Arc::new(FixedGroups);
        metrics.set_group_source(Arc::downgrade(&groups));
        // One sample in every family.
        metrics.published("orders", 1, 1);
        metrics.fetched("orders", 1, 1);
        metrics.rpc_finished("Fetch", Instant::now(), Some(tonic::Code::NotFound));
        metrics.position_reset("orders", ResetReason::BelowLogStart);
        metrics.message_lookup("orders", true);
        metrics.delivery_lookup("list", Some(tonic::Code::InvalidArgument));
        metrics.retention(
            "orders",
            &RetentionOutcome {
                segments_deleted: 1,
                segments_expired: 1,
                bytes_deleted: 1,
                records_deleted: 1,
                ..RetentionOutcome::default()
            },
        );
        metrics
            .flush_observer()
            .on_flush(Duration::from_millis(1), 1, 1);
        let _guard = metrics.open_stream("publish");
        metrics.connection_refused("max_connections");
        metrics.tls_reload(true);
        metrics.audit_event("OK");

        let classic = metrics.encode_as(Format::Classic);
        assert_every_sample_has_help(&classic);
        for family in [
            "tidelog_publish_messages_total counter",
            "tidelog_rpc_errors_total counter",
            "tidelog_fsync_duration_seconds histogram",
            "tidelog_partition_end_offset gauge",
            "tidelog_consumer_group_lag gauge",
        ] {
            assert!(
                classic.contains(&format!("# TYPE {family}\n")),
                "{family}: {classic}"
            );
        }
        assert!(!classic.contains("# EOF"));

        let openmetrics = metrics.encode_as(Format::OpenMetrics);
        let lines: Vec<&str> = openmetrics.lines().collect();
        let mut families = 0;
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                families += 1;
                let family = rest.split(' ').next().unwrap_or("");
                let help = i
                    .checked_sub(1)
                    .and_then(|j| lines[j].strip_prefix(&format!("# HELP {family} ")));
                assert!(
                    help.is_some_and(|h| !h.trim().is_empty()),
                    "{family} has no help text"
                );
            }
        }
        assert_eq!(families, 31, "a family was added or lost:\n{openmetrics}");
        assert_eq!(lines.last(), Some(&"# EOF"));
        store.close().unwrap();
    }
}
