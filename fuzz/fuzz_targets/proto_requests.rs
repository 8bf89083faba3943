//! Decoded gRPC requests on their way into storage calls. Arbitrary bytes are decoded
//! with prost as one of the request types, then run through the server's own
//! conversion and validation functions (`tidelog_server::convert`, the partitioner,
//! the group-id check, the pure offset-reset computation) and on into the storage
//! encoders the broker would call next: the record batch a publish appends, the
//! topic.config file a create or alter writes, the offsets-log record a commit or an
//! executed reset writes.
//!
//! Never panics; every rejection is INVALID_ARGUMENT; whatever the server accepts the
//! storage layer accepts too and stores faithfully (decodes back to the same values).
//!
//! Input layout: byte 0 picks the request type, bytes 1..=16 are the broker-side
//! context (partition count, clock, log bounds, compression, ...), the rest is the
//! protobuf-encoded request.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tidelog_proto::v1::{
    AlterTopicConfigRequest, CommitOffsetsRequest, CreateTopicRequest, FetchRequest,
    PublishRequest, ResetOffsetsRequest, SubscribeRequest, reset_offsets_request::Spec,
};
use tidelog_server::consume::FETCH_WAIT_MAX;
use tidelog_server::groups::coordinator::validate_group_id;
use tidelog_server::groups::reset::{self, PartitionState, Target};
use tidelog_server::read::{READ_BYTES_MAX, READ_MESSAGES_MAX, ReadLimits};
use tidelog_server::{convert, partitioner};
use tidelog_storage::batch::{self, EncodeOptions};
use tidelog_storage::config::validate_topic_name;
use tidelog_storage::limits::{COMMIT_METADATA_BYTES_MAX, MESSAGE_BYTES_DEFAULT};
use tidelog_storage::offsets::{self, CommitEntry, OffsetOp, OffsetRecord};
use tidelog_storage::{Compression, NewRecord, TopicConfig};
use tonic::{Code, Status};

/// The broker-side facts a request meets: drawn from the input, not from the request.
#[derive(Debug, Clone, Copy)]
struct Context {
    /// The topic's partition count, 1..=10000.
    partitions: u32,
    /// The broker clock (ms since the epoch, never negative).
    now_ms: i64,
    compression: Compression,
    default_ttl_ms: Option<u64>,
    /// The topic's max_message_bytes: the default or something small.
    max_message_bytes: u64,
    /// The topic's priority levels, 0..=10.
    priority_levels: u8,
    /// One partition's state, for offset resets.
    partition: PartitionState,
}

impl Context {
    fn parse(bytes: &[u8; 16]) -> Context {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let log_start = u64::from(u16_at(8));
        let end = log_start + u64::from(u16_at(10));
        let flags = bytes[12];
        Context {
            partitions: u32::from(u16_at(0)) % 10_000 + 1,
            now_ms: (u64::from_le_bytes(bytes[..8].try_into().unwrap()) >> 17) as i64,
            compression: if flags & 1 == 0 {
                Compression::None
            } else {
                Compression::Zstd
            },
            // A topic's TTL is at most i64::MAX (TopicConfig::validate).
            default_ttl_ms: (flags & 2 != 0)
                .then_some((u64::from(bytes[13]) << (bytes[14] % 64)).min(i64::MAX as u64)),
            max_message_bytes: if flags & 4 == 0 {
                MESSAGE_BYTES_DEFAULT
            } else {
                u64::from(bytes[15]) + 1
            },
            priority_levels: bytes[11] % 11,
            partition: PartitionState {
                committed: (flags & 8 != 0).then_some(u64::from(u16_at(13))),
                log_start,
                end,
                offset_for_timestamp: (flags & 16 != 0)
                    .then_some(log_start + u64::from(bytes[15]).min(end - log_start)),
            },
        }
    }
}

fn rejected(status: &Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// Publish: ack level, partition choice, message conversion, then the record batch
/// each partition's append would write, decoded back.
fn publish(request: PublishRequest, context: &Context) {
    let ack = convert::ack_level(request.ack);
    if let Err(status) = &ack {
        return rejected(status);
    }
    let round_robin = partitioner::RoundRobin::default();
    let mut batches: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
    for (index, mut message) in request.messages.into_iter().enumerate() {
        let partition = match message.partition.take() {
            // The topic answers INVALID_ARGUMENT naming its range.
            Some(partition) if partition >= context.partitions => return,
            Some(partition) => partition,
            None if !message.key.is_empty() => {
                partitioner::partition_for_key(&message.key, context.partitions)
            }
            None => round_robin.next(context.partitions),
        };
        assert!(partition < context.partitions);
        match convert::new_record(index, message) {
            Ok(record) => batches.entry(partition).or_default().push(record),
            Err(status) => return rejected(&status),
        }
    }
    let options = EncodeOptions {
        now_ms: context.now_ms,
        default_ttl_ms: context.default_ttl_ms,
        compression: context.compression,
        max_message_bytes: context.max_message_bytes,
        priority_levels: context.priority_levels,
    };
    for records in batches.values() {
        let encoded = match batch::encode_batch(records, &options) {
            Ok(encoded) => encoded,
            Err(error) => return rejected(&convert::status(&error)),
        };
        assert_eq!(encoded.header.record_count as usize, records.len());
        let bytes = Bytes::from(encoded.bytes);
        let (header, decoded) = batch::decode_batch(&bytes).expect("an encoded batch decodes");
        assert_eq!(header.batch_length as usize, bytes.len());
        assert_eq!(decoded.len(), records.len());
        for (delta, (sent, stored)) in records.iter().zip(&decoded).enumerate() {
            assert_eq!(stored.offset, delta as u64);
            assert_eq!(stored.key, sent.key);
            assert_eq!(stored.value, sent.value);
            assert_eq!(stored.headers, sent.headers);
            assert_eq!(
                stored.timestamp_ms,
                sent.timestamp_ms.unwrap_or(context.now_ms)
            );
            let ttl = sent
                .ttl_ms
                .or(context.default_ttl_ms)
                .filter(|&ttl| ttl > 0);
            // A TTL that saturates at the end of time reads back as no expiry.
            let expiry = ttl
                .map(|ttl| {
                    context
                        .now_ms
                        .saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))
                })
                .filter(|&at| at != i64::MAX);
            assert_eq!(stored.expires_at_ms, expiry);
        }
    }
}

/// What the storage engine writes for a topic's config: topic.config, read back.
fn config_file_round_trip(partitions: u32, config: &TopicConfig) {
    config.validate().expect("an accepted config is valid");
    let round_trip = convert::topic_config_from_proto(Some(convert::topic_config_to_proto(config)))
        .expect("a described config is accepted back");
    assert_eq!(&round_trip, config);
    let text = config.to_file(partitions);
    let read = TopicConfig::from_file(&text, std::path::Path::new("topic.config"))
        .expect("topic.config reads back");
    assert_eq!((read.partitions, &read.config), (partitions, config));
}

fn create_topic(request: CreateTopicRequest) {
    let name_ok = validate_topic_name(&request.name).is_ok();
    let partitions = convert::partition_count(request.partitions);
    assert!(partitions >= 1);
    match convert::topic_config_from_proto(request.config) {
        Ok(config) => {
            if name_ok && partitions <= tidelog_storage::limits::TOPIC_PARTITIONS_MAX {
                config_file_round_trip(partitions, &config);
            }
        }
        Err(status) => rejected(&status),
    }
}

fn alter_topic_config(request: AlterTopicConfigRequest, context: &Context) {
    let _ = validate_topic_name(&request.name);
    let current = TopicConfig {
        default_ttl_ms: context.default_ttl_ms.filter(|&ttl| ttl > 0),
        compression: context.compression,
        ..convert::topic_config_from_proto(None).expect("defaults are valid")
    };
    let update = request.update;
    match convert::apply_config_update(&current, update.clone()) {
        Ok(next) => {
            config_file_round_trip(context.partitions, &next);
            // Applying the same update again changes nothing.
            let again = convert::apply_config_update(&next, update).expect("idempotent");
            assert_eq!(again, next);
        }
        Err(status) => rejected(&status),
    }
}

fn fetch(request: FetchRequest, context: &Context) {
    let _ = validate_topic_name(&request.topic);
    if let Err(status) = convert::filter(&request.filter) {
        return rejected(&status);
    }
    let limits = ReadLimits::from_request(request.max_messages, request.max_bytes);
    assert!((1..=READ_MESSAGES_MAX).contains(&limits.max_messages));
    assert!((1..=READ_BYTES_MAX).contains(&limits.max_bytes));
    let wait = std::time::Duration::from_millis(request.max_wait_ms).min(FETCH_WAIT_MAX);
    assert!(wait <= FETCH_WAIT_MAX);
    let _in_range = request.partition < context.partitions
        && (context.partition.log_start..=context.partition.end).contains(&request.offset);
}

fn subscribe(request: SubscribeRequest, context: &Context) {
    if let Err(status) = convert::reset_policy(request.reset_policy) {
        return rejected(&status);
    }
    if let Err(status) = convert::filter(&request.filter) {
        return rejected(&status);
    }
    let limits = ReadLimits::from_request(request.max_batch_messages, request.max_batch_bytes);
    assert!((1..=READ_MESSAGES_MAX).contains(&limits.max_messages));
    assert!((1..=READ_BYTES_MAX).contains(&limits.max_bytes));
    if let Some(group) = &request.group {
        if let Err(status) = validate_group_id(&group.group_id) {
            return rejected(&status);
        }
        return;
    }
    let mut seen = BTreeSet::new();
    for partition in &request.partitions {
        if !seen.insert(*partition) || *partition >= context.partitions {
            return;
        }
    }
}

/// The commit an accepted request turns into: encoded for the offsets log and read
/// back unchanged.
fn offsets_log_round_trip(group: &str, entries: Vec<CommitEntry>, now_ms: i64) {
    if entries.is_empty() {
        return;
    }
    let record = OffsetRecord {
        written_at_ms: now_ms,
        ops: vec![OffsetOp::Commit {
            group: group.to_string(),
            entries,
        }],
    };
    let encoded = offsets::encode_record(&record).expect("an accepted commit encodes");
    let (decoded, used) = offsets::decode_record(&encoded)
        .expect("an encoded commit decodes")
        .expect("complete");
    assert_eq!(used, encoded.len());
    assert_eq!(decoded, record);
}

fn commit_offsets(request: CommitOffsetsRequest, context: &Context) {
    if let Err(status) = validate_group_id(&request.group_id) {
        return rejected(&status);
    }
    let mut entries = Vec::with_capacity(request.offsets.len());
    for offset in request.offsets {
        if offset.metadata.len() > COMMIT_METADATA_BYTES_MAX {
            return;
        }
        // An invalid name is an unknown topic: NOT_FOUND before anything is stored.
        if validate_topic_name(&offset.topic).is_err() {
            return;
        }
        entries.push(CommitEntry {
            topic: offset.topic,
            partition: offset.partition,
            offset: offset.offset,
            commit_timestamp_ms: context.now_ms,
            metadata: offset.metadata,
        });
    }
    offsets_log_round_trip(&request.group_id, entries, context.now_ms);
}

fn reset_offsets(request: ResetOffsetsRequest, context: &Context) {
    if let Err(status) = validate_group_id(&request.group_id) {
        return rejected(&status);
    }
    let Some(spec) = request.spec else { return };
    let state = context.partition;
    let targets: Vec<(String, u32, Target, String)> = match spec {
        Spec::Explicit(explicit) => {
            if request.scope.is_some() {
                return;
            }
            let mut seen = BTreeSet::new();
            let mut targets = Vec::new();
            for entry in explicit.offsets {
                if !seen.insert((entry.topic.clone(), entry.partition))
                    || entry.metadata.len() > COMMIT_METADATA_BYTES_MAX
                    || validate_topic_name(&entry.topic).is_err()
                {
                    return;
                }
                targets.push((
                    entry.topic,
                    entry.partition,
                    Target::Offset(entry.offset),
                    entry.metadata,
                ));
            }
            targets
        }
        spec => {
            let target = match spec {
                Spec::ToEarliest(_) => Target::Earliest,
                Spec::ToLatest(_) => Target::Latest,
                Spec::ToOffset(offset) => Target::Offset(offset),
                Spec::ToDatetimeMs(ms) => reset::datetime_target(ms),
                Spec::ByDurationMs(ms) => reset::duration_target(context.now_ms, ms),
                Spec::ShiftBy(delta) => Target::ShiftBy(delta),
                Spec::ToCurrent(_) => Target::Current,
                Spec::Explicit(_) => unreachable!("handled above"),
            };
            vec![("t".to_string(), 0, target, String::new())]
        }
    };
    let mut entries = Vec::new();
    for (topic, partition, target, metadata) in targets {
        let Some(moved) = reset::new_offset(target, &state) else {
            assert!(
                state.committed.is_none() && matches!(target, Target::ShiftBy(_) | Target::Current)
            );
            continue;
        };
        let new_offset = moved.offset;
        assert!((state.log_start..=state.end).contains(&new_offset));
        // What was asked is reported exactly when it lay outside the log.
        if let Some(asked) = moved.clamped_from {
            assert_ne!(i128::from(asked), i128::from(new_offset));
            let asked = u64::try_from(asked).unwrap_or(0);
            assert_eq!(reset::clamp(asked, state.log_start, state.end), new_offset);
        }
        entries.push(CommitEntry {
            topic,
            partition,
            offset: new_offset,
            commit_timestamp_ms: context.now_ms,
            metadata,
        });
    }
    offsets_log_round_trip(&request.group_id, entries, context.now_ms);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((context, body)) = rest.split_first_chunk::<16>() else {
        return;
    };
    let context = Context::parse(context);
    let body = Bytes::copy_from_slice(body);
    match kind % 7 {
        0 => {
            if let Ok(request) = PublishRequest::decode(body) {
                publish(request, &context);
            }
        }
        1 => {
            if let Ok(request) = CreateTopicRequest::decode(body) {
                create_topic(request);
            }
        }
        2 => {
            if let Ok(request) = AlterTopicConfigRequest::decode(body) {
                alter_topic_config(request, &context);
            }
        }
        3 => {
            if let Ok(request) = FetchRequest::decode(body) {
                fetch(request, &context);
            }
        }
        4 => {
            if let Ok(request) = SubscribeRequest::decode(body) {
                subscribe(request, &context);
            }
        }
        5 => {
            if let Ok(request) = ResetOffsetsRequest::decode(body) {
                reset_offsets(request, &context);
            }
        }
        _ => {
            if let Ok(request) = CommitOffsetsRequest::decode(body) {
                commit_offsets(request, &context);
            }
        }
    }
});
