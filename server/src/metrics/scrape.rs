//! The scrape-time gauges: state the storage engine, the group coordinator and the
//! queues already hold (end offsets, sizes, lag, queue depths), read when a scraper
//! asks, so they are never stale and cost nothing between scrapes.

use std::sync::{OnceLock, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tidelog_storage::Store;

use super::{
    DEAD_LETTER_REASONS, GroupLabels, GroupLagLabels, GroupMetricsSource, PartitionLabels,
    QueueField, QueueLabels, QueueMetricsSource, QueueReasonLabels, TopicLabels,
};

/// Where the scrape-time gauges come from; set once the store and the group
/// coordinator exist (the store needs the flush observer first). Weak, so metrics
/// never keep the store open.
#[derive(Debug, Default)]
pub(super) struct ScrapeSources {
    pub(super) store: OnceLock<Weak<Store>>,
    pub(super) groups: OnceLock<Weak<dyn GroupMetricsSource>>,
    pub(super) queues: OnceLock<Weak<dyn QueueMetricsSource>>,
}

/// Clamps a u64 into a gauge's i64.
fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for ScrapeSources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(store) = self.store.get().and_then(Weak::upgrade) {
            let end: Family<PartitionLabels, Gauge> = Family::default();
            let start: Family<PartitionLabels, Gauge> = Family::default();
            let size: Family<PartitionLabels, Gauge> = Family::default();
            let unavailable: Family<PartitionLabels, Gauge> = Family::default();
            let poisoned: Family<PartitionLabels, Gauge> = Family::default();
            let window_ids: Family<TopicLabels, Gauge> = Family::default();
            let window_bytes: Family<TopicLabels, Gauge> = Family::default();
            for topic in store.topics() {
                let (ids, bytes) = topic.dedup_window_size();
                let labels = TopicLabels {
                    topic: topic.name().to_string(),
                };
                window_ids
                    .get_or_create(&labels)
                    .set(gauge_value(ids as u64));
                window_bytes
                    .get_or_create(&labels)
                    .set(gauge_value(bytes as u64));
                for partition in topic.partitions() {
                    let info = partition.info();
                    let labels = PartitionLabels {
                        topic: topic.name().to_string(),
                        partition: info.partition,
                    };
                    unavailable
                        .get_or_create(&labels)
                        .set(i64::from(info.unavailable.is_some()));
                    // A partition recovery refused to open has no offsets or size to
                    // show (unknown until it is repaired, not 0): its gauges are left
                    // out, and tidelog_partition_unavailable says why.
                    if info.unavailable.is_none() {
                        end.get_or_create(&labels).set(gauge_value(info.end_offset));
                        start
                            .get_or_create(&labels)
                            .set(gauge_value(info.log_start));
                        size.get_or_create(&labels)
                            .set(gauge_value(info.size_bytes));
                    }
                    poisoned
                        .get_or_create(&labels)
                        .set(i64::from(info.poisoned.is_some()));
                }
            }
            for (name, help, family) in [
                (
                    "tidelog_partition_end_offset",
                    "High watermark: one past the last message readers can see.",
                    &end,
                ),
                (
                    "tidelog_partition_log_start_offset",
                    "Lowest offset still stored.",
                    &start,
                ),
                (
                    "tidelog_partition_size_bytes",
                    "Bytes of the partition's log segments.",
                    &size,
                ),
                (
                    "tidelog_partition_unavailable",
                    "1 when recovery refused to open the partition (see describe and tidelog segment verify).",
                    &unavailable,
                ),
                (
                    "tidelog_partition_poisoned",
                    "1 when an fsync failed and the partition refuses writes until a restart.",
                    &poisoned,
                ),
            ] {
                family.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    family.metric_type(),
                )?)?;
            }
            for (name, help, family) in [
                (
                    "tidelog_dedup_window_ids",
                    "Message ids the topic's dedup window holds in memory (some may have expired since its last sweep; 0 after a restart until the topic's first publish with ids).",
                    &window_ids,
                ),
                (
                    "tidelog_dedup_window_bytes",
                    "Memory the topic's dedup window takes.",
                    &window_bytes,
                ),
            ] {
                family.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    family.metric_type(),
                )?)?;
            }
        }
        if let Some(groups) = self.groups.get().and_then(Weak::upgrade) {
            let snapshot = groups.group_metrics();
            let lag: Family<GroupLagLabels, Gauge> = Family::default();
            for entry in snapshot.lags {
                lag.get_or_create(&GroupLagLabels {
                    group: entry.group,
                    topic: entry.topic,
                    partition: entry.partition,
                })
                .set(gauge_value(entry.lag));
            }
            let members: Family<GroupLabels, Gauge> = Family::default();
            for (group, count) in snapshot.members {
                members
                    .get_or_create(&GroupLabels { group })
                    .set(gauge_value(count));
            }
            lag.encode(encoder.encode_descriptor(
                "tidelog_consumer_group_lag",
                "Messages between a group's committed offset and the partition's end offset.",
                None,
                lag.metric_type(),
            )?)?;
            members.encode(encoder.encode_descriptor(
                "tidelog_consumer_group_members",
                "Live members of a consumer group.",
                None,
                members.metric_type(),
            )?)?;
        }
        if let Some(queues) = self.queues.get().and_then(Weak::upgrade) {
            let gauges: [QueueField<i64>; 6] = [
                (
                    "tidelog_queue_ready",
                    "Messages a queue can deliver now: not taken yet, or due again.",
                    |q| gauge_value(q.ready),
                ),
                (
                    "tidelog_queue_delayed",
                    "Messages waiting for their deliver-at time.",
                    |q| gauge_value(q.delayed),
                ),
                (
                    "tidelog_queue_unacked",
                    "Deliveries held by members, not settled yet.",
                    |q| gauge_value(q.unacked),
                ),
                (
                    "tidelog_queue_waiting",
                    "Messages waiting for a redelivery (nacked, or given up) that is not due yet.",
                    |q| gauge_value(q.waiting),
                ),
                (
                    "tidelog_queue_oldest_unacked_age_seconds",
                    "Age of the oldest unsettled delivery.",
                    |q| gauge_value(q.oldest_unacked_age_ms / 1000),
                ),
                (
                    "tidelog_queue_damaged_partitions",
                    "Partitions whose deliveries the queue stopped at a damaged batch (what is before it was delivered, the other partitions deliver on): find it with `tidelog segment verify`, mend it with `tidelog segment repair`.",
                    |q| gauge_value(q.damaged_partitions),
                ),
            ];
            let counters: [QueueField<u64>; 10] = [
                (
                    "tidelog_queue_delivered",
                    "Deliveries made, first ones and redeliveries.",
                    |q| q.delivered,
                ),
                (
                    "tidelog_queue_redelivered",
                    "Deliveries of a message after its first.",
                    |q| q.redelivered,
                ),
                ("tidelog_queue_acked", "Messages acked (durably).", |q| {
                    q.acked
                }),
                ("tidelog_queue_nacked", "Nacks received.", |q| q.nacked),
                (
                    "tidelog_queue_timed_out",
                    "Deliveries given up because their ack deadline passed.",
                    |q| q.timed_out,
                ),
                (
                    "tidelog_queue_member_left",
                    "Deliveries given up because their member left (it disconnected, or a broker restart ended the leases of the run before).",
                    |q| q.member_left,
                ),
                (
                    "tidelog_queue_lost_to_retention",
                    "Messages retention deleted before the queue settled them (never taken, held by a member, or waiting): dropped without a dead letter.",
                    |q| q.lost_to_retention,
                ),
                (
                    "tidelog_queue_released",
                    "Deliveries never handed to their member (a Receive cancelled, a Consume connection dropped) given back unseen: ready again, the attempt not counted.",
                    |q| q.released,
                ),
                (
                    "tidelog_queue_overflow_refused",
                    "Oldest messages over the topic's queue caps whose dead letter the dead-letter topic refused for good: they stay ready.",
                    |q| q.overflow_refused,
                ),
                (
                    "tidelog_queue_history_failed_events",
                    "Delivery-history events that could not be written (a full disk, a history file poisoned by a failed fsync until the broker restarts): the queue went on, message status and history lack them.",
                    |q| q.history_failed_events,
                ),
            ];
            let snapshot = queues.queue_metrics();
            for (name, help, value) in gauges {
                let family: Family<QueueLabels, Gauge> = Family::default();
                for q in &snapshot {
                    family
                        .get_or_create(&QueueLabels {
                            queue: q.queue.clone(),
                        })
                        .set(value(q));
                }
                family.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    family.metric_type(),
                )?)?;
            }
            for (name, help, value) in counters {
                let family: Family<QueueLabels, Counter> = Family::default();
                for q in &snapshot {
                    family
                        .get_or_create(&QueueLabels {
                            queue: q.queue.clone(),
                        })
                        .inc_by(value(q));
                }
                family.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    family.metric_type(),
                )?)?;
            }
            let dead: Family<QueueReasonLabels, Counter> = Family::default();
            for q in &snapshot {
                for (reason, count) in DEAD_LETTER_REASONS.into_iter().zip([
                    q.dead_lettered_max_deliveries,
                    q.dead_lettered_term,
                    q.dead_lettered_overflow,
                ]) {
                    dead.get_or_create(&QueueReasonLabels {
                        queue: q.queue.clone(),
                        reason,
                    })
                    .inc_by(count);
                }
            }
            dead.encode(encoder.encode_descriptor(
                "tidelog_queue_dead_lettered",
                "Messages dead-lettered, by reason: max_deliveries (deadline, member left or nack on the last delivery), term, or overflow (the topic's queue caps).",
                None,
                dead.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
