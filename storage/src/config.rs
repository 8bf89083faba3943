//! Topic configuration: what each setting means, its bounds, and its file form.
//!
//! `DATA/topics/<topic>/topic.config` holds one `key=value` per line (Kafka's
//! properties style); `#` starts a comment. It is written atomically and validated on
//! every read like any other bytes from disk.

use std::fmt::Write as _;
use std::path::Path;

use crate::batch::Compression;
use crate::duration::parse_duration_ms;
use crate::error::{Error, Result};
use crate::limits::{
    DEDUP_WINDOW_MS_DEFAULT, DEDUP_WINDOW_MS_MAX, MESSAGE_BYTES_DEFAULT, MESSAGE_BYTES_MAX,
    PRIORITY_LEVELS_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
    TOPIC_NAME_BYTES_MAX, TOPIC_PARTITIONS_MAX,
};

/// The newest record features a topic's log may hold that this build reads: the
/// `record_features` value of `topic.config` (storage/FORMAT.md, "Topic config"). 1 =
/// ids that count up (record attribute bit 5). Every config this build writes states
/// it, and a topic opened with an older value (or none) has its file rewritten first,
/// before anything is appended: a build older than the feature refuses the key at
/// open, so it never misreads such records as corrupt. Raise it with each new record
/// feature an older reader would misread.
pub const RECORD_FEATURES: u64 = 1;

/// What a `topic.config` file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicFile {
    /// The partition count (fixed at creation, raised by `CreatePartitions`).
    pub partitions: u32,
    pub config: TopicConfig,
    /// Its `record_features` (0 when the line is absent: written before the key
    /// existed), at most [`RECORD_FEATURES`].
    pub record_features: u64,
}

/// When a partition's writes are made durable with fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Group commit: an fdatasync follows every write, shared by all the writes that
    /// arrived while the previous one ran. Readers see only durable data.
    #[default]
    Always,
    /// At most this many milliseconds after a write.
    IntervalMs(u64),
    /// Left to the operating system (and to segment rolls, which always sync).
    Never,
}

impl FsyncPolicy {
    /// Parses the file form: `always`, `never` or `interval:<ms>`, where the interval
    /// is a number of milliseconds (what [`TopicConfig::to_file`] writes, the unit
    /// being part of the format) or a duration with its unit in the one grammar of
    /// [`crate::duration`] (`interval:10ms`, `interval:1s`), for hand edits.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let interval = text.strip_prefix("interval:").ok_or_else(|| {
                    Error::invalid(format!(
                        "fsync policy {text:?} is not one of always, never, interval:<ms>"
                    ))
                })?;
                let ms = if !interval.is_empty() && interval.bytes().all(|b| b.is_ascii_digit()) {
                    interval.parse().map_err(|_| {
                        Error::invalid(format!("fsync interval {interval:?} is too large"))
                    })?
                } else {
                    parse_duration_ms(interval)
                        .map_err(|e| Error::invalid(format!("fsync interval {interval:?}: {e}")))?
                };
                if ms == 0 {
                    return Err(Error::invalid("fsync interval must be at least 1 ms"));
                }
                Ok(FsyncPolicy::IntervalMs(ms))
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval:{ms}"),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

/// How a producer wants its append acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckLevel {
    /// Do not wait at all.
    None,
    /// After the write reached the operating system (survives a process crash).
    Written,
    /// After an fdatasync covered it (survives a machine crash).
    #[default]
    Durable,
}

/// Per-topic settings. Every field can be altered after creation. The default keeps
/// data forever in 256 MiB segments, fsyncs always, and allows 1 MiB messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Delete the oldest sealed segments while the partition is larger than this.
    pub retention_bytes: Option<u64>,
    /// TTL for messages published without one.
    pub default_ttl_ms: Option<u64>,
    /// Roll to a new segment when the active one reaches this size.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one is older than this.
    pub segment_ms: Option<u64>,
    pub fsync: FsyncPolicy,
    /// Largest key + value + headers of one message.
    pub max_message_bytes: u64,
    pub compression: Compression,
    /// Priority levels queues honour: a message's priority must be below this. 0 (the
    /// default) and 1 both mean one level (every message priority 0).
    pub priority_levels: u8,
    /// Most ready messages any queue of the topic may hold (backpressure).
    pub queue_max_ready_messages: Option<u64>,
    /// Most ready bytes (of log) any queue of the topic may hold.
    pub queue_max_ready_bytes: Option<u64>,
    /// What happens past either cap.
    pub queue_overflow: QueueOverflow,
    /// How long a message id is remembered to refuse a second copy (see
    /// [`crate::dedup`]); `None` = off. Default 2 minutes, at most 7 days.
    pub dedup_window_ms: Option<u64>,
    /// The broker gives every message published without an id one of its own
    /// ([`crate::msgid`]'s time-ordered 16 bytes).
    pub assign_ids: bool,
}

/// What a topic does when one of its queues holds more ready messages than its caps
/// allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueOverflow {
    /// Refuse new publishes (RESOURCE_EXHAUSTED naming the full queue): discard new.
    #[default]
    Reject,
    /// Accept them, and dead-letter the queue's oldest ready messages with reason
    /// `overflow`: discard old.
    DeadLetterOldest,
}

impl QueueOverflow {
    pub fn name(self) -> &'static str {
        match self {
            QueueOverflow::Reject => "reject",
            QueueOverflow::DeadLetterOldest => "dead-letter-oldest",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reject" => Some(QueueOverflow::Reject),
            "dead-letter-oldest" => Some(QueueOverflow::DeadLetterOldest),
            _ => None,
        }
    }
}

impl Default for TopicConfig {
    fn default() -> Self {
        // As the gRPC API: no limit unless one is set (a JetStream stream's default).
        TopicConfig {
            retention_ms: None,
            retention_bytes: None,
            default_ttl_ms: None,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: None,
            fsync: FsyncPolicy::Always,
            max_message_bytes: MESSAGE_BYTES_DEFAULT,
            compression: Compression::None,
            priority_levels: 0,
            queue_max_ready_messages: None,
            queue_max_ready_bytes: None,
            queue_overflow: QueueOverflow::Reject,
            dedup_window_ms: Some(DEDUP_WINDOW_MS_DEFAULT),
            assign_ids: false,
        }
    }
}

impl TopicConfig {
    /// Whether the topic's queues dead-letter their oldest ready messages past a cap
    /// (`queue_overflow` is `DeadLetterOldest` and a cap is set): the one rule of when
    /// [`crate::queue::QueueEngine::enforce_caps`] has work, which must then look again
    /// whenever more of the topic becomes visible.
    pub fn dead_letters_over_caps(&self) -> bool {
        self.queue_overflow == QueueOverflow::DeadLetterOldest && self.has_queue_caps()
    }

    /// Whether the topic caps its queues' ready backlog (either cap).
    pub fn has_queue_caps(&self) -> bool {
        self.queue_max_ready_messages.is_some() || self.queue_max_ready_bytes.is_some()
    }

    /// Checks every value against its bounds.
    pub fn validate(&self) -> Result<()> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(Error::invalid(format!(
                "segment_bytes {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        if !(1..=MESSAGE_BYTES_MAX).contains(&self.max_message_bytes) {
            return Err(Error::invalid(format!(
                "max_message_bytes {} is outside 1..={MESSAGE_BYTES_MAX}",
                self.max_message_bytes
            )));
        }
        for (name, value) in [
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
            ("default_ttl_ms", self.default_ttl_ms),
            ("segment_ms", self.segment_ms),
            ("queue_max_ready_messages", self.queue_max_ready_messages),
            ("queue_max_ready_bytes", self.queue_max_ready_bytes),
            ("dedup_window_ms", self.dedup_window_ms),
        ] {
            if value == Some(0) {
                return Err(Error::invalid(format!(
                    "{name} must be positive (leave it unset for no limit)"
                )));
            }
            if let Some(v) = value.filter(|&v| v > i64::MAX as u64) {
                return Err(Error::invalid(format!(
                    "{name} {v} is over the maximum of {}",
                    i64::MAX
                )));
            }
        }
        if let Some(window) = self.dedup_window_ms
            && window > DEDUP_WINDOW_MS_MAX
        {
            return Err(Error::invalid(format!(
                "dedup_window_ms {window} is over the maximum of {DEDUP_WINDOW_MS_MAX} (7 days)"
            )));
        }
        if self.priority_levels > PRIORITY_LEVELS_MAX {
            return Err(Error::invalid(format!(
                "priority_levels {} is over the maximum of {PRIORITY_LEVELS_MAX}",
                self.priority_levels
            )));
        }
        if let FsyncPolicy::IntervalMs(0) = self.fsync {
            return Err(Error::invalid("fsync interval must be at least 1 ms"));
        }
        Ok(())
    }

    /// The file form, with the partition count (fixed at creation) first.
    pub fn to_file(&self, partitions: u32) -> String {
        let mut out = String::from("# tidelog topic config, format 1\n");
        let optional = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        let _ = writeln!(out, "partitions={partitions}");
        let _ = writeln!(out, "record_features={RECORD_FEATURES}");
        let _ = writeln!(out, "retention_ms={}", optional(self.retention_ms));
        let _ = writeln!(out, "retention_bytes={}", optional(self.retention_bytes));
        let _ = writeln!(out, "default_ttl_ms={}", optional(self.default_ttl_ms));
        let _ = writeln!(out, "segment_bytes={}", self.segment_bytes);
        let _ = writeln!(out, "segment_ms={}", optional(self.segment_ms));
        let _ = writeln!(out, "fsync={}", self.fsync);
        let _ = writeln!(out, "max_message_bytes={}", self.max_message_bytes);
        let _ = writeln!(out, "compression={}", self.compression.name());
        let _ = writeln!(out, "dedup_window_ms={}", optional(self.dedup_window_ms));
        if self.assign_ids {
            let _ = writeln!(out, "assign_ids=true");
        }
        if self.priority_levels > 0 {
            let _ = writeln!(out, "priority_levels={}", self.priority_levels);
        }
        if self.has_queue_caps() {
            let _ = writeln!(
                out,
                "queue_max_ready_messages={}",
                optional(self.queue_max_ready_messages)
            );
            let _ = writeln!(
                out,
                "queue_max_ready_bytes={}",
                optional(self.queue_max_ready_bytes)
            );
        }
        // The policy is kept whether or not a cap is set yet (an operator may choose it
        // first and set the caps later).
        if self.queue_max_ready_messages.is_some()
            || self.queue_max_ready_bytes.is_some()
            || self.queue_overflow != QueueOverflow::Reject
        {
            let _ = writeln!(out, "queue_overflow={}", self.queue_overflow.name());
        }
        out
    }

    /// Parses the file form read from `path`: `WrittenByNewer` when it states record
    /// features newer than [`RECORD_FEATURES`] (whatever else it holds: a newer build
    /// may have added keys too), `Corrupt` when it is not a valid config.
    pub fn from_file(text: &str, path: &Path) -> Result<TopicFile> {
        if let Some(features) = newer_record_features(text) {
            return Err(Error::WrittenByNewer {
                file: path.to_path_buf(),
                what: format!(
                    "record_features={features}; this build reads logs with record_features up to {RECORD_FEATURES}"
                ),
            });
        }
        Self::parse_file(text).map_err(|e| Error::corrupt(path, 0, e.to_string()))
    }

    fn parse_file(text: &str) -> Result<TopicFile> {
        let mut config = TopicConfig::default();
        let mut partitions = None;
        let mut record_features = 0;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| Error::invalid(format!("line {} is not key=value", number + 1)))?;
            let (key, value) = (key.trim(), value.trim());
            let number_of = |value: &str| -> Result<u64> {
                value
                    .parse()
                    .map_err(|_| Error::invalid(format!("{key}={value} is not a number")))
            };
            let optional = |value: &str| -> Result<Option<u64>> {
                if value == "none" {
                    Ok(None)
                } else {
                    number_of(value).map(Some)
                }
            };
            match key {
                "partitions" => partitions = Some(number_of(value)?),
                // Above RECORD_FEATURES is refused before (newer_record_features).
                "record_features" => record_features = number_of(value)?,
                "retention_ms" => config.retention_ms = optional(value)?,
                "retention_bytes" => config.retention_bytes = optional(value)?,
                "default_ttl_ms" => config.default_ttl_ms = optional(value)?,
                "segment_bytes" => config.segment_bytes = number_of(value)?,
                "segment_ms" => config.segment_ms = optional(value)?,
                "fsync" => config.fsync = FsyncPolicy::parse(value)?,
                "max_message_bytes" => config.max_message_bytes = number_of(value)?,
                "queue_max_ready_messages" => config.queue_max_ready_messages = optional(value)?,
                "dedup_window_ms" => config.dedup_window_ms = optional(value)?,
                "assign_ids" => {
                    config.assign_ids = match value {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(Error::invalid(format!(
                                "assign_ids={value} is not true or false"
                            )));
                        }
                    }
                }
                "queue_max_ready_bytes" => config.queue_max_ready_bytes = optional(value)?,
                "queue_overflow" => {
                    config.queue_overflow = QueueOverflow::parse(value).ok_or_else(|| {
                        Error::invalid(format!("unknown queue_overflow {value:?}"))
                    })?
                }
                "priority_levels" => {
                    config.priority_levels = u8::try_from(number_of(value)?).map_err(|_| {
                        Error::invalid(format!("priority_levels={value} is out of range"))
                    })?
                }
                "compression" => {
                    config.compression = Compression::parse(value)
                        .ok_or_else(|| Error::invalid(format!("unknown compression {value:?}")))?
                }
                _ => return Err(Error::invalid(format!("unknown setting {key:?}"))),
            }
        }
        let partitions = partitions.ok_or_else(|| Error::invalid("partitions is missing"))?;
        let partitions = u32::try_from(partitions)
            .ok()
            .filter(|p| (1..=TOPIC_PARTITIONS_MAX).contains(p))
            .ok_or_else(|| Error::invalid(format!("partitions={partitions} is out of range")))?;
        config.validate()?;
        Ok(TopicFile {
            partitions,
            config,
            record_features,
        })
    }
}

/// The `record_features` value of a config file's text when it is a number above
/// [`RECORD_FEATURES`].
fn newer_record_features(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| key.trim() == "record_features")
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .find(|&features| features > RECORD_FEATURES)
}

/// Topic names starting with this are reserved for the broker's internal topics: a
/// client may not create one, nor name one that the broker would create for it (a
/// queue's dead-letter topic). See [`validate_new_topic_name`].
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// Checks the name of a topic a client creates, or has the broker create for it (a
/// queue's dead-letter topic, created by its first letter): the one rule of both, a
/// [`validate_topic_name`] outside the reserved [`INTERNAL_TOPIC_PREFIX`] namespace.
pub fn validate_new_topic_name(name: &str) -> Result<()> {
    validate_topic_name(name)?;
    if name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(Error::invalid(format!(
            "topic name {name:?} starts with {INTERNAL_TOPIC_PREFIX:?}, which is reserved for internal topics; choose another name"
        )));
    }
    Ok(())
}

/// Checks a topic name: 1-249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(Error::invalid(format!(
            "topic name must be 1 to {TOPIC_NAME_BYTES_MAX} characters, not {}",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(Error::invalid("topic name cannot be '.' or '..'"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Error::invalid(format!(
            "topic name {name:?} contains {bad:?}; use only letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_round_trips() {
        let config = TopicConfig {
            retention_ms: None,
            retention_bytes: Some(10 << 30),
            default_ttl_ms: Some(300_000),
            segment_bytes: 1 << 20,
            segment_ms: None,
            fsync: FsyncPolicy::IntervalMs(10),
            max_message_bytes: 4096,
            compression: Compression::Zstd,
            priority_levels: 4,
            queue_max_ready_messages: Some(1_000_000),
            queue_max_ready_bytes: None,
            queue_overflow: QueueOverflow::DeadLetterOldest,
            dedup_window_ms: None,
            assign_ids: true,
        };
        let text = config.to_file(12);
        let read = TopicConfig::from_file(&text, Path::new("topic.config")).unwrap();
        assert_eq!((read.partitions, read.config), (12, config));
        assert_eq!(read.record_features, RECORD_FEATURES);
        // The overflow policy without a cap (found by fuzz/proto_requests).
        let config = TopicConfig {
            queue_max_ready_messages: None,
            queue_overflow: QueueOverflow::DeadLetterOldest,
            ..TopicConfig::default()
        };
        let text = config.to_file(1);
        let read = TopicConfig::from_file(&text, Path::new("topic.config")).unwrap();
        assert_eq!((read.partitions, read.config), (1, config));
        // The default stays out of the file.
        assert!(!TopicConfig::default().to_file(1).contains("queue_overflow"));
    }

    #[test]
    fn bad_config_files_are_refused() {
        for text in [
            "retention_ms=1",
            "partitions=0",
            "partitions=3\nsegment_bytes=1",
            "partitions=3\nbogus=1",
            "partitions=3\nfsync=sometimes",
            "partitions=3\nretention_ms=-5",
            "partitions=3\nretention_ms",
        ] {
            let error = TopicConfig::from_file(text, Path::new("topic.config")).unwrap_err();
            assert!(matches!(error, Error::Corrupt { .. }), "{text:?}: {error}");
        }
    }

    #[test]
    fn record_features_newer_than_this_build_are_refused_as_newer_not_corrupt() {
        let path = Path::new("t/topic.config");
        let newer = RECORD_FEATURES + 1;
        // Alone, and with a key this build does not know (a newer build's).
        for text in [
            format!("partitions=3\nrecord_features={newer}\n"),
            format!("partitions=3\nnew_setting=1\nrecord_features = {newer}\n"),
        ] {
            let error = TopicConfig::from_file(&text, path).unwrap_err();
            assert!(
                matches!(&error, Error::WrittenByNewer { file, .. } if file == path),
                "{text:?}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains("written by a newer tidelogd")
                    && message.contains("upgrade to read it")
                    && message.contains(&format!("record_features={newer}")),
                "{message}"
            );
        }
        // What this build knows, or none (a file from before the key).
        for (text, features) in [
            (
                format!("partitions=3\nrecord_features={RECORD_FEATURES}"),
                RECORD_FEATURES,
            ),
            ("partitions=3\nrecord_features=0".to_string(), 0),
            ("partitions=3".to_string(), 0),
        ] {
            let read = TopicConfig::from_file(&text, path).unwrap();
            assert_eq!(read.record_features, features, "{text:?}");
            assert_eq!(read.partitions, 3);
        }
        let error = TopicConfig::from_file("partitions=3\nrecord_features=many", path).unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    }

    #[test]
    fn fsync_policies_and_durations_parse() {
        assert_eq!(FsyncPolicy::parse("always").unwrap(), FsyncPolicy::Always);
        assert_eq!(
            FsyncPolicy::parse("interval:10ms").unwrap(),
            FsyncPolicy::IntervalMs(10)
        );
        assert_eq!(
            FsyncPolicy::parse("interval:2s").unwrap(),
            FsyncPolicy::IntervalMs(2000)
        );
        // The file form writes milliseconds without a unit.
        assert_eq!(
            FsyncPolicy::parse(&FsyncPolicy::IntervalMs(25).to_string()).unwrap(),
            FsyncPolicy::IntervalMs(25)
        );
        assert_eq!(
            FsyncPolicy::parse("interval:1h30m").unwrap(),
            FsyncPolicy::IntervalMs(5_400_000)
        );
        assert!(FsyncPolicy::parse("interval:0").is_err());
        assert!(FsyncPolicy::parse("interval:0ms").is_err());
        assert!(FsyncPolicy::parse("interval:7y").is_err());
        assert!(FsyncPolicy::parse("interval:").is_err());
    }

    #[test]
    fn topic_names_are_checked() {
        for good in ["a", "orders.v1", "A-b_c", &"x".repeat(249)] {
            validate_topic_name(good).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
            assert!(validate_new_topic_name(bad).is_err(), "{bad:?} accepted");
        }
        // Internal names are names, but not ones a client may have created.
        validate_topic_name("__x").unwrap();
        let reserved = validate_new_topic_name("__x").unwrap_err().to_string();
        assert!(
            reserved.contains("reserved for internal topics"),
            "{reserved}"
        );
        validate_new_topic_name("a__x").unwrap();
    }
}
