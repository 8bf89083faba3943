//! Reads in batch form (`FetchBatches`, `SubscribeBatches`, a batch-form group
//! member): one partition's stored batches as they lie in its segments, and the
//! `RecordBatches` event that carries them. Here, under [`crate::read`], so the plain
//! reader ([`super::PartitionReader`]), the group member and [`crate::batch`] share
//! them without importing each other.

use tidelog_proto::v1::{
    PartitionPosition, RecordBatches, StoredRecordBatch, SubscribeBatchesResponse,
    subscribe_batches_response::Event,
};
use tidelog_storage::{BatchReadResult, Filter, Partition, StoredBatch};

use super::ReadLimits;

/// A stored batch as the proto carries it (its bytes stay a slice of the mapping).
pub fn stored(batch: StoredBatch) -> StoredRecordBatch {
    StoredRecordBatch {
        batch: batch.bytes,
        base_offset: batch.base_offset,
        record_count: batch.record_count,
        skip_front: batch.skip_front,
        skip: batch.skip,
    }
}

/// One batch-form read of `partition` from `offset`: what Fetch's, SubscribeBatches'
/// and a batch-form group member's reads all are.
pub fn read_partition(
    partition: &Partition,
    offset: u64,
    limits: ReadLimits,
    filter: Option<&Filter>,
) -> tidelog_storage::Result<BatchReadResult> {
    partition.read_batches(offset, limits.max_messages, limits.max_bytes, filter)
}

/// Whether a batch-form read of a partition from `from` goes out as a RecordBatches
/// event: when it returned batches, or when it moved past records it will never send
/// (expired, or refused by the filter), so the client learns, and can commit or resume
/// from, where the broker read for it. One rule for the plain SubscribeBatches reader
/// and the batch-form group member; each read covers a budget (or a filter's scan
/// limit), so this is at most one event per read.
pub fn goes_out(result: &BatchReadResult, from: u64) -> bool {
    !result.batches.is_empty() || result.next_offset != from
}

/// A read of one partition as the RecordBatches event of a SubscribeBatches stream;
/// `topic` names the partition's topic on a stream of several topics ("" otherwise).
pub fn record_batches(
    partition: &Partition,
    result: BatchReadResult,
    topic: &str,
) -> SubscribeBatchesResponse {
    let topic_id = partition.topic_id();
    let partition = partition.id();
    SubscribeBatchesResponse {
        event: Some(Event::Batches(RecordBatches {
            partition,
            batches: result.batches.into_iter().map(stored).collect(),
            position: Some(PartitionPosition {
                partition,
                next_offset: result.next_offset,
                end_offset: result.end_offset,
                topic: topic.to_string(),
                topic_id: topic_id.get(),
            }),
            now_ms: result.now_ms,
        })),
    }
}

/// Records the client receives (a batch's records less those it skips) and bytes of
/// `batches`, for the fetched metrics.
pub fn delivered(batches: &[StoredBatch]) -> (u64, u64) {
    batches.iter().fold((0, 0), |(records, bytes), b| {
        (
            records + u64::from(b.delivered()),
            bytes + b.bytes.len() as u64,
        )
    })
}
