//! A topic: its partitions, its config and its dedup window, and the append paths
//! through the topic's message-id rules. The [`crate::store::Store`] creates, grows
//! and deletes topics; everything else reads and appends through a `Topic`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::batch::NewRecord;
use crate::client_batch::{BatchRules, CheckedBatch, ClientBatch, validate_batch};
use crate::config::TopicConfig;
use crate::dedup::{BatchPlaced, DedupWindow, Placed, window_decides};
use crate::error::{Error, Result};
use crate::idindex::SplitIds;
use crate::partition::{Partition, PartitionInfo, RunBatch};
use crate::topic_id::TopicId;

/// A topic: its partitions and config.
///
/// The partition list of a `Topic` never changes; raising the partition count
/// ([`Store::create_partitions`]) puts a new `Topic` in the store that shares the
/// existing partitions and the config, with the same [`Topic::is_same_topic`] identity.
/// A holder of the older value finds the new partitions through [`Store::topic`].
#[derive(Debug)]
pub struct Topic {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    /// Shared with the `Topic`s this one grew into, so an alter reaches every holder.
    pub(crate) config: Arc<RwLock<Arc<TopicConfig>>>,
    pub(crate) partitions: Vec<Arc<Partition>>,
    /// Which creation of the topic this is: a topic deleted and created again under
    /// the same name is another topic; one with more partitions is the same. In
    /// memory only: each open of the topic's files is another (see [`Topic::id`] for
    /// the durable identity).
    pub(crate) incarnation: u64,
    /// The topic's durable identity ([`TopicId`]).
    pub(crate) id: TopicId,
    /// The ids stored within the dedup window; shared with the `Topic`s this one grew
    /// into.
    pub(crate) dedup: Arc<DedupWindow>,
    /// The principal that created the topic, when one did (see
    /// [`crate::store::Store::create_topic_owned`]).
    pub(crate) owner: Option<Arc<str>>,
    /// Timestamps further ahead of the clock are refused ([`check_timestamps`]).
    pub(crate) max_timestamp_ahead_ms: Option<u64>,
}

/// The one rule of how far ahead of the broker's clock a message's timestamp may be
/// (`max_timestamp_ahead_ms`, tidelogd `--max-timestamp-ahead`): `newest_ms`, the
/// largest timestamp of what is appended, against `now_ms`.
fn check_timestamps(newest_ms: i64, now_ms: i64, max_ahead_ms: Option<u64>) -> Result<()> {
    let Some(max_ahead_ms) = max_ahead_ms else {
        return Ok(());
    };
    let ahead = newest_ms.saturating_sub(now_ms);
    if ahead <= i64::try_from(max_ahead_ms).unwrap_or(i64::MAX) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "timestamp {newest_ms} ms is {} ahead of the broker's clock, more than the {} it accepts (tidelogd --max-timestamp-ahead): check the producer's clock, or leave the timestamp unset for the broker's",
        crate::duration::format_duration_ms(ahead.unsigned_abs()),
        crate::duration::format_duration_ms(max_ahead_ms),
    )))
}

/// The principal in the bytes of a `topic.owner` file (untrusted: read from disk), if
/// they are one: 1-255 printable ASCII bytes without spaces, nothing else.
pub fn parse_owner(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|owner| crate::access::validate_principal(owner).is_ok())
}

/// How tidelog words a partition number a topic does not have, in the storage
/// engine's errors, the broker's refusals (`Publish`, `CommitOffsets`,
/// `ResetOffsets`, ...), the client's and the CLI's: `topic "orders" has 1 partition
/// (0); there is no partition 99`. The one place this wording lives.
pub fn no_such_partition(topic: &str, partition_count: usize, partition: u32) -> String {
    let has = match partition_count {
        0 => "no partitions".to_string(),
        1 => "1 partition (0)".to_string(),
        n => format!("{n} partitions (0-{})", n - 1),
    };
    format!("topic {topic:?} has {has}; there is no partition {partition}")
}

/// Gives every created or opened topic its own incarnation.
static NEXT_INCARNATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) fn next_incarnation() -> u64 {
    NEXT_INCARNATION.fetch_add(1, Ordering::Relaxed)
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's durable identity: the same across restarts and CreatePartitions,
    /// another for a topic of the same name created after this one was deleted.
    pub fn id(&self) -> TopicId {
        self.id
    }

    /// The principal that created the topic, if the broker knew one.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Whether `other` is this topic, possibly with more partitions since (rather than
    /// a topic of the same name created after this one was deleted).
    pub fn is_same_topic(&self, other: &Topic) -> bool {
        self.incarnation == other.incarnation
    }

    pub fn config(&self) -> Arc<TopicConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    /// The partition with this number; `InvalidArgument` naming the valid range if
    /// there is none ([`no_such_partition`]).
    pub fn partition(&self, id: u32) -> Result<&Arc<Partition>> {
        self.partitions
            .get(id as usize)
            .ok_or_else(|| Error::invalid(no_such_partition(&self.name, self.partitions.len(), id)))
    }

    /// Appends `records` to partition `partition` as one batch, through the topic's
    /// message-id rules: on a topic with `assign_ids` each record without an id gets
    /// one, and with a dedup window on, a record whose id was stored within the window
    /// is not appended again: its placement names the original (see [`crate::dedup`]).
    /// Records without ids on a topic without `assign_ids` go straight to
    /// [`Partition::append`].
    pub fn append(&self, partition: u32, records: Vec<NewRecord>) -> Result<Placed> {
        if let Some(newest) = records.iter().filter_map(|r| r.timestamp_ms).max() {
            check_timestamps(newest, self.dedup.now_ms(), self.max_timestamp_ahead_ms)?;
        }
        let config = self.config();
        self.dedup.append(
            &self.name,
            &self.partitions,
            partition,
            records,
            config.dedup_window_ms.unwrap_or(0),
            config.assign_ids,
        )
    }

    /// Validates `bytes`, one record batch a client built in the log's format, against
    /// this topic's rules ([`crate::client_batch::validate_batch`]: a malformed batch is
    /// `InvalidArgument` naming the reason, and nothing is appended) and appends it to
    /// partition `partition` as it came, with the log's base offset written in, under
    /// the topic's id rules ([`crate::dedup`]: a batch is deduplicated whole). Returns
    /// what was done and the batch's checked summary.
    pub fn append_batch(
        &self,
        partition: u32,
        bytes: Bytes,
    ) -> Result<(BatchPlaced, CheckedBatch)> {
        self.append_batches(partition, vec![bytes])
            .pop()
            .unwrap_or_else(|| Err(Error::invalid("an append of one batch returned no result")))
    }

    /// [`Topic::append_batch`] for several batches to one partition, in order, with
    /// one result a batch: [`Topic::append_batches_across`] with one partition.
    pub fn append_batches(
        &self,
        partition: u32,
        batches: Vec<Bytes>,
    ) -> Vec<Result<(BatchPlaced, CheckedBatch)>> {
        self.append_batches_across(batches.into_iter().map(|b| (partition, b)).collect())
    }

    /// [`Topic::append_batch`] for several batches, each to its partition, as they
    /// came (the requests of one PublishStream), with one result a batch, in order.
    /// Batches the dedup window has no say on (no window, or no ids) are written
    /// together with the others to their partition, in one `pwritev` a partition
    /// (`Partition::append_checked_run`): partitions are independent logs. A batch the
    /// window decides on goes through the window alone, after everything before it in
    /// `batches` is appended, to whichever partition: of two batches with one id, the
    /// first is kept. A malformed batch, or one to a partition the topic lacks, fails
    /// alone. Once a write fails, the batches after it in the same partition's run
    /// fail with its error.
    pub fn append_batches_across(
        &self,
        batches: Vec<(u32, Bytes)>,
    ) -> Vec<Result<(BatchPlaced, CheckedBatch)>> {
        let batches = batches
            .into_iter()
            .map(|(partition, bytes)| ClientBatch::new(partition, bytes))
            .collect();
        self.append_batches_admitted(batches, &mut |_, _| Ok(()))
    }

    /// [`Topic::append_batches_across`] for batches that may have relative times
    /// ([`ClientBatch::relative_times`]: moved to the append time), asking `admit`
    /// before each valid batch is taken, with the ready messages and payload bytes it
    /// would add (those due now: [`CheckedBatch::ready_records`]): its own and those of
    /// the batches before it not written yet. A batch
    /// `admit` refuses fails alone, with `admit`'s error (the broker's queue caps:
    /// [`crate::queue::admin::admit`]; a publish without caps admits all).
    pub fn append_batches_admitted(
        &self,
        batches: Vec<ClientBatch>,
        admit: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Vec<Result<(BatchPlaced, CheckedBatch)>> {
        let count = batches.len();
        let config = self.config();
        let now_ms = self.dedup.now_ms();
        let rules = BatchRules {
            now_ms,
            max_message_bytes: config.max_message_bytes,
            priority_levels: config.priority_levels,
            expiry_required: config.default_ttl_ms.is_some_and(|ttl| ttl > 0),
            relative_times: false,
        };
        let window_ms = config.dedup_window_ms.unwrap_or(0);
        let mut results: Vec<Option<Result<(BatchPlaced, CheckedBatch)>>> = Vec::new();
        results.resize_with(count, || None);
        // Batches waiting to be written together, a run per partition in the order the
        // partitions first came: (place in `batches`, bytes, verdict, ids).
        type Run = Vec<(usize, Bytes, CheckedBatch, SplitIds)>;
        let mut runs: Vec<(&Arc<Partition>, Run)> = Vec::new();
        let write_runs = |runs: &mut Vec<(&Arc<Partition>, Run)>,
                          results: &mut Vec<Option<Result<_>>>| {
            for (target, run) in runs.drain(..) {
                let batches = run
                    .iter()
                    .map(|(_, bytes, checked, ids)| RunBatch::checked(bytes.clone(), checked, ids))
                    .collect();
                let appended = target.append_checked_run(batches, now_ms);
                for ((place, _, checked, _), appended) in run.into_iter().zip(appended) {
                    results[place] = Some(appended.map(|appended| {
                        let placed = BatchPlaced {
                            appended: Some(appended),
                            duplicates: Vec::new(),
                        };
                        (placed, checked)
                    }));
                }
            }
        };
        // Messages and payload bytes of the batches in `runs` (not written yet).
        let mut waiting = (0u64, 0u64);
        for (place, batch) in batches.into_iter().enumerate() {
            let ClientBatch {
                partition,
                bytes,
                relative_times,
            } = batch;
            let rules = BatchRules {
                relative_times,
                ..rules
            };
            let checked = self.partition(partition).and_then(|target| {
                let checked = validate_batch(&bytes, &rules)
                    .map_err(|e| Error::invalid(format!("the record batch is malformed: {e}")))?;
                check_timestamps(
                    checked.header.max_timestamp_ms,
                    now_ms,
                    self.max_timestamp_ahead_ms,
                )?;
                let decides = window_decides(&checked, window_ms, config.assign_ids)?;
                // Taken with the batches before it still waiting in runs: what each adds
                // to the ready backlog now (delayed records wait).
                admit(
                    waiting.0 + u64::from(checked.ready_records),
                    waiting.1 + checked.ready_bytes,
                )?;
                Ok((target, checked, decides))
            });
            let checked = match checked {
                Ok((target, checked, false)) => {
                    let ids = checked.split_ids(&bytes);
                    let at = match runs.iter().position(|(t, _)| Arc::ptr_eq(t, target)) {
                        Some(at) => at,
                        None => {
                            runs.push((target, Vec::new()));
                            runs.len() - 1
                        }
                    };
                    waiting.0 += u64::from(checked.ready_records);
                    waiting.1 += checked.ready_bytes;
                    runs[at].1.push((place, bytes, checked, ids));
                    continue;
                }
                Ok((_, checked, true)) => Ok(checked),
                Err(error) => Err(error),
            };
            // What went before, to any partition, is appended before this batch is
            // decided on.
            write_runs(&mut runs, &mut results);
            waiting = (0, 0);
            results[place] = Some(checked.and_then(|checked| {
                let placed = self.dedup.append_batch(
                    &self.name,
                    &self.partitions,
                    partition,
                    bytes,
                    &checked,
                    now_ms,
                    window_ms,
                    config.assign_ids,
                )?;
                Ok((placed, checked))
            }));
        }
        write_runs(&mut runs, &mut results);
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(Error::invalid("a batch was not appended"))))
            .collect()
    }

    /// Whether the topic has a dedup window: a message whose id was stored within it
    /// is not stored again (see [`crate::dedup`]).
    pub fn deduplicates_ids(&self) -> bool {
        self.config().dedup_window_ms.unwrap_or(0) > 0
    }

    /// Ids the dedup window holds and the bytes it takes, for metrics.
    pub fn dedup_window_size(&self) -> (usize, usize) {
        (self.dedup.len(), self.dedup.memory_bytes())
    }

    pub fn info(&self) -> TopicInfo {
        TopicInfo {
            id: self.id,
            owner: self.owner.as_deref().map(str::to_string),
            name: self.name.clone(),
            config: (*self.config()).clone(),
            partitions: self.partitions.iter().map(|p| p.info()).collect(),
        }
    }
}

/// A topic as `describe` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    /// The topic's durable identity ([`Topic::id`]).
    pub id: TopicId,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionInfo>,
    /// The principal that created the topic, if known.
    pub owner: Option<String>,
}

impl TopicInfo {
    pub fn size_bytes(&self) -> u64 {
        self.partitions.iter().map(|p| p.size_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::no_such_partition;

    #[test]
    fn a_missing_partition_is_worded_with_the_partitions_the_topic_has() {
        assert_eq!(
            no_such_partition("orders", 1, 99),
            "topic \"orders\" has 1 partition (0); there is no partition 99"
        );
        assert_eq!(
            no_such_partition("orders", 3, 5),
            "topic \"orders\" has 3 partitions (0-2); there is no partition 5"
        );
        assert_eq!(
            no_such_partition("orders", 0, 0),
            "topic \"orders\" has no partitions; there is no partition 0"
        );
    }
}
