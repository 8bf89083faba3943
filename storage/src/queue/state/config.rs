//! [`QueueConfig`]: how a queue delivers, its bounds, and the queue-name rule.

use crate::error::{Error, Result};

/// Longest member id or client name kept in the state.
pub const MEMBER_BYTES_MAX: usize = 255;
/// Longest reason kept with a message (a longer one is cut at a character boundary).
pub const REASON_BYTES_MAX: usize = 1024;
/// Longest ack deadline, in-progress extension, nack delay or backoff: 12 hours.
pub const QUEUE_DELAY_MS_MAX: u64 = 12 * 3600 * 1000;
/// Shortest ack deadline.
pub const ACK_DEADLINE_MS_MIN: u64 = 100;
/// Most unsettled deliveries one member may hold.
pub const MAX_UNACKED_PER_MEMBER_MAX: u32 = 100_000;
/// Most delivery attempts of one message a history query reports.
pub const HISTORY_ATTEMPTS_MAX: u32 = 1_000;
/// Longest a queue keeps its delivery history: 90 days.
pub const HISTORY_RETENTION_MS_MAX: u64 = 90 * 24 * 3600 * 1000;
/// Attempts per message a history reports unless the queue says otherwise.
pub const HISTORY_ATTEMPTS_DEFAULT: u32 = 10;
/// How long a queue keeps its delivery history unless it says otherwise: 7 days.
pub const HISTORY_RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// Where a new queue starts in every partition. For a queue on a topic pattern, the
/// topics that match when it is created start here; a topic that matches later was
/// created after the queue, so it starts at its beginning (every message published
/// to it since the queue existed), or at the timestamp when one was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    /// The first message at or after this time (the end where there is none).
    TimestampMs(i64),
}

impl StartAt {
    /// Where a topic that matched a pattern queue's pattern only after the queue was
    /// created starts.
    pub fn for_later_topic(self) -> StartAt {
        match self {
            StartAt::Earliest | StartAt::Latest => StartAt::Earliest,
            at @ StartAt::TimestampMs(_) => at,
        }
    }
}

/// How a queue delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// Time a member has to settle a delivery.
    pub ack_deadline_ms: u64,
    /// Deliveries of one message before it is dead-lettered; 0 = unlimited.
    pub max_deliveries: u32,
    /// Wait before the first redelivery; doubles with every further attempt.
    pub backoff_initial_ms: u64,
    /// Longest wait before a redelivery.
    pub backoff_max_ms: u64,
    /// Where dead letters go.
    pub dead_letter_topic: String,
    /// Most unsettled deliveries one member holds.
    pub max_unacked_per_member: u32,
    /// Newest delivery attempts of one message its history reports (1 to
    /// [`HISTORY_ATTEMPTS_MAX`]).
    pub history_attempts: u32,
    /// How long delivery history is kept; 0 = the queue records none.
    pub history_retention_ms: u64,
    /// Only messages this filter ([`crate::filter`]) matches are delivered; the queue
    /// passes over the others as settled. Set when the queue is created, never
    /// altered (an alter keeps it).
    pub filter: Option<String>,
}

impl QueueConfig {
    /// The defaults for a queue on `topic`: 30 s deadline, 5 deliveries, backoff from
    /// 1 s to 5 min, dead letters to `<topic>.dlq`, 1,000 unacked per member, history of
    /// the newest 10 attempts per message kept 7 days.
    pub fn defaults_for(topic: &str) -> Self {
        QueueConfig {
            ack_deadline_ms: 30_000,
            max_deliveries: 5,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            dead_letter_topic: format!("{topic}.dlq"),
            max_unacked_per_member: 1_000,
            history_attempts: HISTORY_ATTEMPTS_DEFAULT,
            history_retention_ms: HISTORY_RETENTION_MS_DEFAULT,
            filter: None,
        }
    }

    /// Checks every value against its bounds; the message names the field.
    pub fn validate(&self) -> Result<()> {
        let within = |name: &str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{name} {value} is outside {min}..={max}"
                )))
            }
        };
        within(
            "ack_deadline_ms",
            self.ack_deadline_ms,
            ACK_DEADLINE_MS_MIN,
            QUEUE_DELAY_MS_MAX,
        )?;
        within(
            "backoff_initial_ms",
            self.backoff_initial_ms,
            0,
            QUEUE_DELAY_MS_MAX,
        )?;
        within(
            "backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_initial_ms,
            QUEUE_DELAY_MS_MAX,
        )?;
        within(
            "max_unacked_per_member",
            u64::from(self.max_unacked_per_member),
            1,
            u64::from(MAX_UNACKED_PER_MEMBER_MAX),
        )?;
        within(
            "history_attempts",
            u64::from(self.history_attempts),
            1,
            u64::from(HISTORY_ATTEMPTS_MAX),
        )?;
        within(
            "history_retention_ms",
            self.history_retention_ms,
            0,
            HISTORY_RETENTION_MS_MAX,
        )?;
        if let Some(filter) = &self.filter {
            crate::filter::Filter::parse(filter)
                .map_err(|e| Error::invalid(format!("filter {e}")))?;
        }
        crate::config::validate_topic_name(&self.dead_letter_topic).map_err(|e| {
            // The default (the topic's name, or a pattern queue's, plus ".dlq") can be
            // what passes the limit: say so, since the request may not have named it.
            let default = if self.dead_letter_topic.ends_with(".dlq") {
                " (if the request named none, this is the default: the queue's topic, or a pattern queue's name, plus \".dlq\"; name one that fits)"
            } else {
                ""
            };
            Error::invalid(format!("dead_letter_topic: {e}{default}"))
        })
    }

    /// The wait before delivering a message again after its `attempts`-th delivery
    /// failed: `backoff_initial_ms * 2^(attempts - 1)`, at most `backoff_max_ms`.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let doublings = attempts.saturating_sub(1).min(63);
        self.backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms)
    }

    /// Whether a message delivered `attempts` times has used all its deliveries.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_deliveries != 0 && attempts >= self.max_deliveries
    }
}

/// Checks a dead-letter topic a client names, as CreateQueue and an AlterQueue that
/// changes it do: the broker creates it at the first letter, so it follows the rule of a
/// topic a client creates ([`crate::config::validate_new_topic_name`], the reserved
/// `__` prefix included). Not part of [`QueueConfig::validate`], which replaying the
/// state runs too: a queue stored before the rule still loads (and its first letter
/// does not create such a topic: see the engine's `dead_letter_topic`).
pub fn validate_dead_letter_topic(name: &str) -> Result<()> {
    crate::config::validate_new_topic_name(name).map_err(|e| match e {
        Error::InvalidArgument(message) => Error::invalid(format!("dead_letter_topic: {message}")),
        other => other,
    })
}

/// Checks a queue name: the same rules as a topic name.
pub fn validate_queue_name(name: &str) -> Result<()> {
    crate::config::validate_topic_name(name).map_err(|e| match e {
        // The message, not the error's display (which adds "invalid argument: " again).
        Error::InvalidArgument(message) => {
            Error::invalid(message.replace("topic name", "queue name"))
        }
        other => other,
    })
}

/// Queue names starting with this are the per-topic queues of queues on a topic
/// pattern (`__pq.<queue>.<n>`); a client cannot name one (see
/// [`validate_new_queue_name`]).
pub const PATTERN_CHILD_PREFIX: &str = "__pq.";

/// Longest name of a queue on a topic pattern, so that its per-topic queues' names
/// (`__pq.<name>.<n>`) stay within the queue-name limit.
pub const PATTERN_QUEUE_NAME_BYTES_MAX: usize = 200;

/// The name of pattern queue `parent`'s `n`-th per-topic queue.
pub fn pattern_child_name(parent: &str, n: u32) -> String {
    format!("{PATTERN_CHILD_PREFIX}{parent}.{n}")
}

/// The pattern queue and number of per-topic queue `name`, if it is one.
pub fn pattern_child_parent(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(PATTERN_CHILD_PREFIX)?;
    let (parent, n) = rest.rsplit_once('.')?;
    if parent.is_empty() || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, n.parse().ok()?))
}

/// Checks the name of a queue a client creates: a queue name that does not start with
/// [`PATTERN_CHILD_PREFIX`] (the per-topic queues of pattern queues).
pub fn validate_new_queue_name(name: &str) -> Result<()> {
    validate_queue_name(name)?;
    if name.starts_with(PATTERN_CHILD_PREFIX) {
        return Err(Error::invalid(format!(
            "queue name {name:?} starts with {:?}, which names the per-topic queues of queues on a topic pattern; choose another name",
            PATTERN_CHILD_PREFIX
        )));
    }
    Ok(())
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QueueConfig {
        QueueConfig::defaults_for("jobs")
    }

    #[test]
    fn a_bad_queue_name_is_named_once_as_a_queue_name() {
        let error = validate_queue_name("q\"x").unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "invalid argument: queue name \"q\\\"x\" contains '\"'; use only letters, digits, '.', '_' and '-'"
        );
        let error = validate_queue_name("").unwrap_err().to_string();
        assert_eq!(error.matches("invalid argument").count(), 1, "{error}");
        assert!(error.contains("queue name must be"), "{error}");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = config();
        let waits: Vec<u64> = (1..=10).map(|a| config.backoff_ms(a)).collect();
        assert_eq!(
            waits,
            vec![
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000
            ]
        );
        assert_eq!(config.backoff_ms(u32::MAX), 300_000);
        assert!(!config.exhausted(4) && config.exhausted(5));
        let unlimited = QueueConfig {
            max_deliveries: 0,
            ..config
        };
        assert!(!unlimited.exhausted(u32::MAX));
    }

    #[test]
    fn configs_out_of_range_are_named() {
        for (change, field) in [
            (
                (|c: &mut QueueConfig| c.ack_deadline_ms = 10) as fn(&mut QueueConfig),
                "ack_deadline_ms",
            ),
            (|c| c.backoff_max_ms = 10, "backoff_max_ms"),
            (|c| c.max_unacked_per_member = 0, "max_unacked_per_member"),
            (|c| c.history_attempts = 0, "history_attempts"),
            (
                |c| c.history_retention_ms = HISTORY_RETENTION_MS_MAX + 1,
                "history_retention_ms",
            ),
            (|c| c.dead_letter_topic = "a b".into(), "dead_letter_topic"),
        ] {
            let mut config = config();
            change(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(field), "{error}");
        }
        // A topic name of 246 to 249 bytes is valid, its default dead-letter topic is
        // not: the refusal says the default is what is too long.
        let long = "t".repeat(247);
        crate::config::validate_topic_name(&long).unwrap();
        let error = QueueConfig::defaults_for(&long)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("dead_letter_topic") && error.contains("the default"),
            "{error}"
        );
    }
}
