//! The one module that knows both the proto types (`tidelog_proto::v1`) and the
//! storage types (`tidelog_storage`): conversions in both directions, defaults and
//! checks of the API's values, and the mapping of storage errors to gRPC statuses.
//! Every other module talks to one side only through these functions.
//!
//! Status codes (the catalogue of the API):
//!
//! | storage error | gRPC status |
//! |---|---|
//! | NotFound (topic, group), TopicDeleted (while a call was in flight) | NOT_FOUND |
//! | AlreadyExists | ALREADY_EXISTS |
//! | InvalidArgument (bad name, config value, partition number) | INVALID_ARGUMENT |
//! | QueueOfOtherTopic (its topic named only to a caller who may describe it: [`status_seen_by`]) | INVALID_ARGUMENT |
//! | TooLarge (names the limit) | INVALID_ARGUMENT |
//! | OffsetOutOfRange (both bounds in the message) | OUT_OF_RANGE |
//! | Poisoned, Closed | UNAVAILABLE |
//! | Corrupt | DATA_LOSS |
//! | Io | INTERNAL |

use tidelog_proto::v1 as pb;
use tidelog_storage::{self as storage, Error};
use tonic::Status;

mod delivery;
mod message;
mod queue;
pub use delivery::*;
pub use message::*;
pub use queue::*;

/// Maps a storage error to the status a client sees; the message says what went
/// wrong and what to do about it.
pub fn status(error: &Error) -> Status {
    match error {
        Error::NotFound { what } => {
            let hint = if what.starts_with("topic") {
                "; check the name (Admin.ListTopics lists the topics) or create it with Admin.CreateTopic"
            } else {
                ""
            };
            Status::not_found(format!("{error}{hint}"))
        }
        Error::QueueOfOtherTopic {
            queue,
            queue_topic,
            topic,
        } => queue_of_other_topic(queue, Some(queue_topic), topic),
        Error::AlreadyExists { .. } => Status::already_exists(format!(
            "{error}; choose another name, or delete the existing one first"
        )),
        Error::InvalidArgument(_) => Status::invalid_argument(format!(
            "{error}; fix the request, retrying it unchanged will fail again"
        )),
        Error::TooLarge {
            limit_name, limit, ..
        } => {
            let hint = match *limit_name {
                // Already the largest a topic can have: raising it is no way out.
                "max_message_bytes" if *limit >= storage::limits::MESSAGE_BYTES_MAX => {
                    "; send a smaller message: 16 MiB is the largest max_message_bytes a topic can have"
                }
                "max_message_bytes" => {
                    "; send a smaller message or raise the topic's max_message_bytes (Admin.AlterTopicConfig, up to 16 MiB)"
                }
                _ => "; send fewer or smaller messages per request",
            };
            Status::invalid_argument(format!("{error}{hint}"))
        }
        Error::QueueFull { .. } => Status::resource_exhausted(format!(
            "{error}; retry later, add workers to the queue, or raise the cap (Admin.AlterTopicConfig)"
        )),
        Error::OffsetOutOfRange { .. } => Status::out_of_range(format!(
            "{error}; read from an offset in that range (the end is exclusive: reading at the end waits for new messages)"
        )),
        Error::Poisoned { .. } | Error::PartitionUnavailable { .. } => {
            Status::unavailable(error.to_string())
        }
        Error::Closed => crate::shutdown::unavailable("retry with backoff"),
        Error::TopicDeleted { .. } => Status::not_found(format!(
            "{error} while the call was in flight; create the topic again if it is still needed"
        )),
        Error::Corrupt { file, .. }
            if file
                .extension()
                .is_some_and(|e| e == storage::queue::history::files::HISTORY_FILE_EXTENSION) =>
        {
            Status::data_loss(format!(
                "{error}; a queue's delivery history file is damaged there: the queue's state and deliveries are not affected, only the history in that file is unreadable; an operator can move the file out of the data directory"
            ))
        }
        Error::Corrupt { .. } => Status::data_loss(format!(
            "{error}; the broker does not serve corrupt data: read on from the offset after the damaged batch (a group: `tidelog group reset-offsets --to-offset`), and have an operator inspect the data directory with `tidelog segment verify`"
        )),
        Error::Io { .. } => {
            // Logged here, so the answer's "logged" is true for every RPC.
            tracing::warn!(%error, "an I/O error answered as INTERNAL");
            if error.is_out_of_descriptors() {
                Status::internal(format!(
                    "{error}; the broker is out of file descriptors: retry later, and if it persists raise the broker's open-file limit (ulimit -n, systemd LimitNOFILE)"
                ))
            } else {
                Status::internal(format!(
                    "{error}; the broker logged it; retry later, and if it persists check the server's log and disk"
                ))
            }
        }
        // A history file a newer build wrote, met at runtime: not damage, and not
        // the caller's to retry; the text says to run the newer build.
        Error::WrittenByNewer { .. } => Status::failed_precondition(format!("{error}")),
        _ => Status::internal(format!("{error}")),
    }
}

/// [`status`] for a caller who may describe only the topics `may_describe` allows (with
/// auth on): the one place where a storage error that names a topic the request did
/// not name (the topic of a queue) is worded for its caller, leaving out a topic the
/// caller may not describe.
pub fn status_seen_by(error: &Error, may_describe: impl Fn(&str) -> bool) -> Status {
    match error {
        Error::QueueOfOtherTopic {
            queue,
            queue_topic,
            topic,
        } => queue_of_other_topic(
            queue,
            may_describe(queue_topic).then_some(queue_topic),
            topic,
        ),
        other => status(other),
    }
}

/// `Result<T, storage::Error>` -> `Result<T, Status>`.
pub fn or_status<T>(result: storage::Result<T>) -> Result<T, Status> {
    result.map_err(|e| status(&e))
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

fn compression_from_proto(value: i32) -> Result<storage::Compression, Status> {
    match pb::Compression::try_from(value) {
        Ok(pb::Compression::Unspecified | pb::Compression::None) => Ok(storage::Compression::None),
        Ok(pb::Compression::Zstd) => Ok(storage::Compression::Zstd),
        Err(_) => Err(invalid(format!(
            "compression {value} is not a Compression value (1 = NONE, 2 = ZSTD)"
        ))),
    }
}

fn compression_to_proto(value: storage::Compression) -> pb::Compression {
    match value {
        storage::Compression::None => pb::Compression::None,
        storage::Compression::Zstd => pb::Compression::Zstd,
    }
}

fn fsync_from_proto(value: &pb::FsyncPolicy) -> Result<storage::FsyncPolicy, Status> {
    use pb::fsync_policy::Policy;
    match value.policy {
        None => Err(invalid(
            "fsync is set but none of always, interval_ms, never is: set exactly one",
        )),
        Some(Policy::Always(_)) => Ok(storage::FsyncPolicy::Always),
        Some(Policy::Never(_)) => Ok(storage::FsyncPolicy::Never),
        Some(Policy::IntervalMs(0)) => Err(invalid("fsync.interval_ms must be at least 1")),
        Some(Policy::IntervalMs(ms)) => Ok(storage::FsyncPolicy::IntervalMs(ms)),
    }
}

fn fsync_to_proto(value: storage::FsyncPolicy) -> pb::FsyncPolicy {
    use pb::fsync_policy::{Always, Never, Policy};
    pb::FsyncPolicy {
        policy: Some(match value {
            storage::FsyncPolicy::Always => Policy::Always(Always {}),
            storage::FsyncPolicy::IntervalMs(ms) => Policy::IntervalMs(ms),
            storage::FsyncPolicy::Never => Policy::Never(Never {}),
        }),
    }
}

/// An optional limit: absent or 0 = off, as in a TopicConfigUpdate, so a described
/// config can be sent back either way.
fn off_if_zero(value: Option<u64>) -> Option<u64> {
    value.filter(|&v| v != 0)
}

/// A topic's priority levels from the API (0 = one level), checked.
fn priority_levels(value: u32) -> Result<u8, Status> {
    u8::try_from(value)
        .ok()
        .filter(|&levels| levels <= storage::limits::PRIORITY_LEVELS_MAX)
        .ok_or_else(|| {
            invalid(format!(
                "priority_levels {value} is over the maximum of {}",
                storage::limits::PRIORITY_LEVELS_MAX
            ))
        })
}

/// A create request's config, with the API's defaults (which differ from the
/// storage engine's: absent retention and segment_ms mean "off").
pub fn topic_config_from_proto(
    config: Option<pb::TopicConfig>,
) -> Result<storage::TopicConfig, Status> {
    let config = config.unwrap_or_default();
    let result = storage::TopicConfig {
        retention_ms: off_if_zero(config.retention_ms),
        retention_bytes: off_if_zero(config.retention_bytes),
        default_ttl_ms: off_if_zero(config.default_ttl_ms),
        segment_bytes: match config.segment_bytes {
            0 => storage::limits::SEGMENT_BYTES_DEFAULT,
            bytes => bytes,
        },
        segment_ms: off_if_zero(config.segment_ms),
        fsync: match &config.fsync {
            None => storage::FsyncPolicy::Always,
            Some(policy) => fsync_from_proto(policy)?,
        },
        max_message_bytes: match config.max_message_bytes {
            0 => storage::limits::MESSAGE_BYTES_DEFAULT,
            bytes => bytes,
        },
        compression: compression_from_proto(config.compression)?,
        priority_levels: priority_levels(config.priority_levels)?,
        queue_max_ready_messages: off_if_zero(config.queue_max_ready_messages),
        queue_max_ready_bytes: off_if_zero(config.queue_max_ready_bytes),
        queue_overflow: queue_overflow_from_proto(config.queue_overflow)?,
        dedup_window_ms: match config.dedup_window_ms {
            None => Some(storage::limits::DEDUP_WINDOW_MS_DEFAULT),
            window => off_if_zero(window),
        },
        assign_ids: config.assign_ids,
    };
    or_status(result.validate())?;
    Ok(result)
}

/// Applies an AlterTopicConfig update to the current config.
pub fn apply_config_update(
    current: &storage::TopicConfig,
    update: Option<pb::TopicConfigUpdate>,
) -> Result<storage::TopicConfig, Status> {
    let Some(update) = update else {
        return Ok(current.clone());
    };
    // 0 switches a limit off.
    let mut next = current.clone();
    if let Some(ms) = update.retention_ms {
        next.retention_ms = off_if_zero(Some(ms));
    }
    if let Some(bytes) = update.retention_bytes {
        next.retention_bytes = off_if_zero(Some(bytes));
    }
    if let Some(ms) = update.default_ttl_ms {
        next.default_ttl_ms = off_if_zero(Some(ms));
    }
    if let Some(bytes) = update.segment_bytes {
        next.segment_bytes =
            off_if_zero(Some(bytes)).unwrap_or(storage::limits::SEGMENT_BYTES_DEFAULT);
    }
    if let Some(ms) = update.segment_ms {
        next.segment_ms = off_if_zero(Some(ms));
    }
    if let Some(policy) = &update.fsync {
        next.fsync = fsync_from_proto(policy)?;
    }
    if let Some(bytes) = update.max_message_bytes {
        next.max_message_bytes =
            off_if_zero(Some(bytes)).unwrap_or(storage::limits::MESSAGE_BYTES_DEFAULT);
    }
    if let Some(levels) = update.priority_levels {
        next.priority_levels = priority_levels(levels)?;
    }
    if let Some(max) = update.queue_max_ready_messages {
        next.queue_max_ready_messages = off_if_zero(Some(max));
    }
    if let Some(max) = update.queue_max_ready_bytes {
        next.queue_max_ready_bytes = off_if_zero(Some(max));
    }
    if let Some(overflow) = update.queue_overflow {
        next.queue_overflow = queue_overflow_from_proto(overflow)?;
    }
    if let Some(window) = update.dedup_window_ms {
        next.dedup_window_ms = off_if_zero(Some(window));
    }
    if let Some(assign) = update.assign_ids {
        next.assign_ids = assign;
    }
    if let Some(compression) = update.compression {
        next.compression = compression_from_proto(compression)?;
    }
    or_status(next.validate())?;
    Ok(next)
}

pub fn topic_config_to_proto(config: &storage::TopicConfig) -> pb::TopicConfig {
    pb::TopicConfig {
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        default_ttl_ms: config.default_ttl_ms,
        segment_bytes: config.segment_bytes,
        segment_ms: config.segment_ms,
        fsync: Some(fsync_to_proto(config.fsync)),
        max_message_bytes: config.max_message_bytes,
        compression: compression_to_proto(config.compression) as i32,
        priority_levels: u32::from(config.priority_levels),
        queue_max_ready_messages: config.queue_max_ready_messages,
        queue_max_ready_bytes: config.queue_max_ready_bytes,
        queue_overflow: match config.queue_overflow {
            storage::QueueOverflow::Reject => pb::QueueOverflow::Reject,
            storage::QueueOverflow::DeadLetterOldest => pb::QueueOverflow::DeadLetterOldest,
        } as i32,
        // 0 = off, as a create takes it (absent would mean the default there), so a
        // described config creates the same topic.
        dedup_window_ms: Some(config.dedup_window_ms.unwrap_or(0)),
        assign_ids: config.assign_ids,
    }
}

fn queue_overflow_from_proto(value: i32) -> Result<storage::QueueOverflow, Status> {
    match pb::QueueOverflow::try_from(value) {
        Ok(pb::QueueOverflow::Unspecified | pb::QueueOverflow::Reject) => {
            Ok(storage::QueueOverflow::Reject)
        }
        Ok(pb::QueueOverflow::DeadLetterOldest) => Ok(storage::QueueOverflow::DeadLetterOldest),
        Err(_) => Err(invalid(format!(
            "queue_overflow {value} is not a QueueOverflow value"
        ))),
    }
}

pub fn partition_description(info: &storage::PartitionInfo) -> pb::PartitionDescription {
    pb::PartitionDescription {
        partition: info.partition,
        log_start_offset: info.log_start,
        end_offset: info.end_offset,
        written_offset: info.written_offset,
        size_bytes: info.size_bytes,
        segment_count: info.segment_count,
        poisoned: info.poisoned.is_some(),
        poison_reason: info.poisoned.clone().unwrap_or_default(),
        unavailable: info.unavailable.is_some(),
        unavailable_reason: info.unavailable.clone().unwrap_or_default(),
    }
}

pub fn topic_description(info: &storage::TopicInfo) -> pb::TopicDescription {
    pb::TopicDescription {
        name: info.name.clone(),
        config: Some(topic_config_to_proto(&info.config)),
        partitions: info.partitions.iter().map(partition_description).collect(),
        owner: info.owner.clone().unwrap_or_default(),
        topic_id: info.id.get(),
    }
}

/// The one check of an offset's topic id (`FetchRequest.topic_id`,
/// `TopicPartitionOffset.topic_id`): FAILED_PRECONDITION when `sent` names another
/// topic of `topic`'s name, one deleted since, so an offset read in that topic is
/// never served from this one nor committed for it. `then` says what the call did
/// not do.
pub fn check_topic_id(topic: &storage::Topic, sent: u64, then: &str) -> Result<(), Status> {
    if topic.id().accepts_wire(sent) {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "topic {:?} was deleted and created again since the offset was read: the offset belongs to topic id {sent:016x}, the topic now has id {} and starts over ({then}); read again from its log_start_offset with its topic_id",
        topic.name(),
        topic.id(),
    )))
}

pub fn topic_summary(info: &storage::TopicInfo) -> pb::TopicSummary {
    pb::TopicSummary {
        name: info.name.clone(),
        partitions: info.partitions.len() as u32,
        size_bytes: info.size_bytes(),
        unavailable_partitions: info
            .partitions
            .iter()
            .filter(|p| p.unavailable.is_some())
            .count() as u32,
        topic_id: info.id.get(),
    }
}

/// The partition count of a create request (0 = 1).
pub fn partition_count(requested: u32) -> u32 {
    requested.max(1)
}

/// A published message as a record for the log. `index` is its position in the
/// request, for error messages.
#[inline]
pub fn new_record(index: usize, message: pb::Message) -> Result<storage::NewRecord, Status> {
    if let Some(timestamp) = message.timestamp_ms
        && timestamp < 0
    {
        return Err(invalid(format!(
            "message {index}: timestamp_ms {timestamp} is negative; send ms since the Unix epoch or leave it unset for the broker's time"
        )));
    }
    if message.headers.len() > storage::limits::RECORD_HEADERS_MAX as usize {
        return Err(invalid(format!(
            "message {index} has {} headers, over the limit of {} (RECORD_HEADERS_MAX)",
            message.headers.len(),
            storage::limits::RECORD_HEADERS_MAX
        )));
    }
    Ok(storage::NewRecord {
        key: (!message.key.is_empty()).then_some(message.key),
        value: message.value,
        headers: message
            .headers
            .into_iter()
            .map(|h| storage::Header {
                key: h.key,
                value: h.value,
            })
            .collect(),
        timestamp_ms: message.timestamp_ms,
        ttl_ms: message.ttl_ms,
        id: (!message.id.is_empty()).then_some(message.id),
        deliver_at_ms: message.deliver_at_ms,
        delay_ms: message.delay_ms,
        priority: u8::try_from(message.priority).unwrap_or(u8::MAX),
    })
}

/// A record read from `partition`, as delivered to consumers. The key, value and
/// header values stay the `Bytes` the read returned (slices of the segment mapping
/// for uncompressed batches): nothing is copied here.
pub fn consumed_message(partition: u32, record: storage::Record) -> pb::ConsumedMessage {
    pb::ConsumedMessage {
        partition,
        offset: record.offset,
        timestamp_ms: record.timestamp_ms,
        expires_at_ms: record.expires_at_ms,
        key: record.key.unwrap_or_default(),
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .map(|h| pb::Header {
                key: h.key,
                value: h.value,
            })
            .collect(),
        id: record.id.unwrap_or_default(),
        deliver_at_ms: record.deliver_at_ms,
        priority: u32::from(record.priority),
        topic: String::new(),
    }
}

/// A request's ack level (UNSPECIFIED = DURABLE).
pub fn ack_level(value: i32) -> Result<storage::AckLevel, Status> {
    match pb::AckLevel::try_from(value) {
        Ok(pb::AckLevel::Unspecified | pb::AckLevel::Durable) => Ok(storage::AckLevel::Durable),
        Ok(pb::AckLevel::Written) => Ok(storage::AckLevel::Written),
        Ok(pb::AckLevel::None) => Ok(storage::AckLevel::None),
        Err(_) => Err(invalid(format!(
            "ack {value} is not an AckLevel (1 = NONE, 2 = WRITTEN, 3 = DURABLE)"
        ))),
    }
}

/// A subscription's reset policy (UNSPECIFIED = EARLIEST).
/// A request's `filter`: `None` when empty, the parsed filter otherwise, or
/// INVALID_ARGUMENT naming the byte position and what was expected there.
pub fn filter(text: &str) -> Result<Option<std::sync::Arc<storage::Filter>>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    storage::Filter::parse(text)
        .map(|filter| Some(std::sync::Arc::new(filter)))
        .map_err(|error| {
            invalid(format!(
                "filter {error}; the grammar is in the Filters section of the README and the .proto"
            ))
        })
}

/// A request's topic pattern (see "Topic patterns" in the .proto), compiled within
/// its limits: INVALID_ARGUMENT naming the field and what is wrong.
pub fn topic_pattern(
    field: &str,
    text: &str,
) -> Result<std::sync::Arc<storage::TopicPattern>, Status> {
    storage::TopicPattern::parse(text)
        .map(std::sync::Arc::new)
        .map_err(|error| invalid(format!("{field} {error}")))
}

pub fn reset_policy(value: i32) -> Result<pb::ResetPolicy, Status> {
    match pb::ResetPolicy::try_from(value) {
        Ok(pb::ResetPolicy::Unspecified) => Ok(pb::ResetPolicy::Earliest),
        Ok(policy) => Ok(policy),
        Err(_) => Err(invalid(format!(
            "reset_policy {value} is not a ResetPolicy (1 = EARLIEST, 2 = LATEST, 3 = ERROR)"
        ))),
    }
}

/// A stream-level error status as carried inside a PublishStreamResponse.
pub fn error_status(status: &Status) -> pb::ErrorStatus {
    pb::ErrorStatus {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

/// A delivery as a queue member receives it: the message as every consumer sees it,
/// and its attempt. (Here rather than in `queue.rs`, which then needs nothing of this
/// module.)
/// A queue's delivery of a message of `topic`, with the `receipt` that names its lease.
pub fn queue_delivery(
    topic: &str,
    delivery: storage::queue::Delivery,
    receipt: String,
) -> pb::QueueDelivery {
    let mut message = consumed_message(delivery.partition, delivery.record);
    message.topic = topic.to_string();
    pb::QueueDelivery {
        message: Some(message),
        attempt: delivery.attempt,
        deadline_ms: delivery.deadline_ms,
        receipt,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use std::path::PathBuf;
    use tonic::Code;

    use super::*;

    #[test]
    fn every_storage_error_has_its_code() {
        let cases = [
            (Error::not_found("topic \"x\""), Code::NotFound),
            (
                Error::AlreadyExists {
                    what: "topic \"x\"".into(),
                },
                Code::AlreadyExists,
            ),
            (Error::invalid("bad name"), Code::InvalidArgument),
            (
                Error::QueueOfOtherTopic {
                    queue: "q".into(),
                    queue_topic: "a".into(),
                    topic: "b".into(),
                },
                Code::InvalidArgument,
            ),
            (
                Error::TooLarge {
                    what: "message 0".into(),
                    size: 10,
                    limit: 5,
                    limit_name: "max_message_bytes",
                },
                Code::InvalidArgument,
            ),
            (
                Error::OffsetOutOfRange {
                    partition: "t/0".into(),
                    requested: 9,
                    log_start: 2,
                    end: 5,
                },
                Code::OutOfRange,
            ),
            (
                Error::Poisoned {
                    partition: "t/0".into(),
                    cause: "EIO".into(),
                },
                Code::Unavailable,
            ),
            (Error::Closed, Code::Unavailable),
            (
                Error::TopicDeleted {
                    partition: "t/0".into(),
                },
                Code::NotFound,
            ),
            (
                Error::corrupt(PathBuf::from("/d/0.log"), 12, "crc"),
                Code::DataLoss,
            ),
            (
                Error::corrupt(
                    PathBuf::from("/d/state/history/q/00000000000000000001.history"),
                    12,
                    "crc",
                ),
                Code::DataLoss,
            ),
            (
                Error::io("reading", std::io::Error::other("boom")),
                Code::Internal,
            ),
            (
                Error::WrittenByNewer {
                    file: PathBuf::from("/d/state/history/q/00000000000000000001.history"),
                    what: "record kind 99".into(),
                },
                Code::FailedPrecondition,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(status(&error).code(), code, "{error}");
        }
    }

    #[test]
    fn out_of_range_names_both_bounds_and_too_large_the_limit() {
        let s = status(&Error::OffsetOutOfRange {
            partition: "t/0".into(),
            requested: 9,
            log_start: 2,
            end: 5,
        });
        assert!(s.message().contains("2..5"), "{}", s.message());
        let s = status(&Error::TooLarge {
            what: "message 0".into(),
            size: 10,
            limit: 5,
            limit_name: "max_message_bytes",
        });
        assert!(s.message().contains("max_message_bytes"), "{}", s.message());
    }

    #[test]
    fn create_defaults_follow_the_api() {
        let config = topic_config_from_proto(None).unwrap();
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.segment_ms, None);
        assert_eq!(config.segment_bytes, storage::limits::SEGMENT_BYTES_DEFAULT);
        assert_eq!(
            config.max_message_bytes,
            storage::limits::MESSAGE_BYTES_DEFAULT
        );
        assert_eq!(config.fsync, storage::FsyncPolicy::Always);
        assert_eq!(config.compression, storage::Compression::None);
        let round_trip = topic_config_from_proto(Some(topic_config_to_proto(&config))).unwrap();
        assert_eq!(round_trip, config);
    }

    #[test]
    fn zero_switches_a_limit_off_at_create_as_in_an_update() {
        let config = topic_config_from_proto(Some(pb::TopicConfig {
            retention_ms: Some(0),
            retention_bytes: Some(0),
            default_ttl_ms: Some(0),
            segment_ms: Some(0),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            (
                config.retention_ms,
                config.retention_bytes,
                config.default_ttl_ms,
                config.segment_ms
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn bad_config_values_are_invalid_argument() {
        for config in [
            pb::TopicConfig {
                priority_levels: 11,
                ..Default::default()
            },
            pb::TopicConfig {
                segment_bytes: 10,
                ..Default::default()
            },
            pb::TopicConfig {
                max_message_bytes: 1 << 30,
                ..Default::default()
            },
            pb::TopicConfig {
                compression: 9,
                ..Default::default()
            },
            pb::TopicConfig {
                fsync: Some(pb::FsyncPolicy { policy: None }),
                ..Default::default()
            },
            pb::TopicConfig {
                fsync: Some(pb::FsyncPolicy {
                    policy: Some(pb::fsync_policy::Policy::IntervalMs(0)),
                }),
                ..Default::default()
            },
        ] {
            let error = topic_config_from_proto(Some(config)).unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{config:?}");
        }
    }

    #[test]
    fn updates_change_only_what_is_set_and_zero_switches_off() {
        let current = storage::TopicConfig {
            retention_ms: Some(1000),
            segment_bytes: 1 << 20,
            ..topic_config_from_proto(None).unwrap()
        };
        let next = apply_config_update(
            &current,
            Some(pb::TopicConfigUpdate {
                retention_ms: Some(0),
                default_ttl_ms: Some(500),
                segment_bytes: Some(0),
                fsync: Some(pb::FsyncPolicy {
                    policy: Some(pb::fsync_policy::Policy::IntervalMs(10)),
                }),
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(next.retention_ms, None);
        assert_eq!(next.default_ttl_ms, Some(500));
        assert_eq!(next.segment_bytes, storage::limits::SEGMENT_BYTES_DEFAULT);
        assert_eq!(next.fsync, storage::FsyncPolicy::IntervalMs(10));
        assert_eq!(next.max_message_bytes, current.max_message_bytes);
        assert_eq!(apply_config_update(&current, None).unwrap(), current);
    }

    #[test]
    fn messages_convert_both_ways_without_losing_fields() {
        let message = pb::Message {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            headers: vec![pb::Header {
                key: "h".into(),
                value: Bytes::from_static(b"\x00"),
            }],
            timestamp_ms: Some(5),
            ttl_ms: Some(0),
            partition: None,
            id: Bytes::from_static(b"order-1"),
            deliver_at_ms: None,
            delay_ms: Some(60_000),
            priority: 3,
        };
        let record = new_record(0, message).unwrap();
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.ttl_ms, Some(0));
        assert_eq!(record.id.as_deref(), Some(&b"order-1"[..]));
        assert_eq!((record.delay_ms, record.priority), (Some(60_000), 3));
        assert_eq!(new_record(0, pb::Message::default()).unwrap().id, None);
        let keyless = new_record(1, pb::Message::default()).unwrap();
        assert_eq!(keyless.key, None);
        let bad = pb::Message {
            timestamp_ms: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            new_record(2, bad).unwrap_err().code(),
            Code::InvalidArgument
        );

        let stored = storage::Record {
            offset: 7,
            timestamp_ms: 5,
            expires_at_ms: None,
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from_static(b"v"),
            headers: vec![storage::Header {
                key: "h".into(),
                value: Bytes::from_static(b"\x00"),
            }],
            id: Some(Bytes::from_static(b"id")),
            deliver_at_ms: Some(9),
            priority: 2,
        };
        assert_eq!(stored.payload_bytes(), 6);
        let consumed = consumed_message(3, stored);
        assert_eq!((consumed.partition, consumed.offset), (3, 7));
        assert_eq!(consumed.headers[0].key, "h");
        assert_eq!(&consumed.id[..], b"id");
        assert_eq!((consumed.deliver_at_ms, consumed.priority), (Some(9), 2));
    }

    #[test]
    fn enums_default_and_reject_unknown_values() {
        assert_eq!(ack_level(0).unwrap(), storage::AckLevel::Durable);
        assert_eq!(ack_level(1).unwrap(), storage::AckLevel::None);
        assert_eq!(ack_level(42).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(reset_policy(0).unwrap(), pb::ResetPolicy::Earliest);
        assert_eq!(reset_policy(3).unwrap(), pb::ResetPolicy::Error);
        assert_eq!(reset_policy(-1).unwrap_err().code(), Code::InvalidArgument);
    }
}
