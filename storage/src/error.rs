//! Errors by cause. Each variant is a different thing for the caller: an I/O failure
//! (retry later or page an operator), corruption (data loss: never served), a request
//! outside the log, a request over a limit, and so on. The server maps each to its own
//! gRPC status code; keep the variants apart.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Result alias used across the storage engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage engine.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed. `context` says which operation on which file.
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: Arc<io::Error>,
    },

    /// Bytes on disk are not what was written: a checksum mismatch, an impossible
    /// length, an offset out of sequence. Never served; reported with the file and
    /// byte position so an operator can inspect or repair it.
    #[error("corrupt data in {} at byte {position}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        position: u64,
        reason: String,
    },

    /// A read asked for an offset outside `[log_start, end)`.
    #[error(
        "offset {requested} is out of range for {partition}: the log holds offsets {log_start}..{end} (start inclusive, end exclusive)"
    )]
    OffsetOutOfRange {
        partition: String,
        requested: u64,
        log_start: u64,
        end: u64,
    },

    /// A message, batch or request is larger than a limit allows.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes ({limit_name})")]
    TooLarge {
        what: String,
        size: u64,
        limit: u64,
        limit_name: &'static str,
    },

    /// A topic, partition or consumer group does not exist.
    #[error("{what} not found")]
    NotFound { what: String },

    /// A request named a queue and a topic, and the queue consumes another topic. The
    /// server words it for its caller: the queue's topic is named only to a caller who
    /// may describe it.
    #[error("queue {queue:?} consumes topic {queue_topic:?}, not {topic:?}")]
    QueueOfOtherTopic {
        queue: String,
        /// The topic the queue consumes.
        queue_topic: String,
        /// The topic the request named.
        topic: String,
    },

    /// A topic (or other named object) already exists.
    #[error("{what} already exists")]
    AlreadyExists { what: String },

    /// A partition whose fsync failed refuses all writes until it is reopened and
    /// recovered: what the failed fsync covered may or may not be on disk.
    #[error(
        "partition {partition} is poisoned after a failed fsync ({cause}); it refuses writes until the broker is restarted and recovery has run"
    )]
    Poisoned { partition: String, cause: String },

    /// An argument is malformed: a bad name, a config value out of range, an empty batch.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Another process (a broker or a CLI command) holds the data directory's lock: one
    /// process at a time opens a store.
    #[error(
        "data directory {} is in use by another tidelog process; stop it or choose another directory",
        dir.display()
    )]
    DataDirInUse { dir: PathBuf },

    /// A file was written by a newer build and states a feature this build does not
    /// know (`topic.config`'s `record_features`; a state log record of an operation
    /// kind or record version this build does not know): not damage; run a build at
    /// least as new as the one that wrote it. Nothing is cut or rewritten.
    #[error(
        "{} was written by a newer tidelogd ({what}); upgrade to read it: this is not damage, run the tidelogd that wrote it (or a newer one) on this data directory",
        file.display()
    )]
    WrittenByNewer { file: PathBuf, what: String },

    /// The store is shutting down or closed.
    #[error("the storage engine is closed")]
    Closed,

    /// A publish would put a queue of the topic over the topic's caps on ready
    /// messages, and the topic's overflow policy is to refuse new messages
    /// ([`crate::queue::admin::admit`]).
    #[error(
        "queue {queue:?} on topic {topic:?} is full: it holds {ready_messages} ready messages ({ready_bytes} bytes) and this publish would pass the topic's {cap}"
    )]
    QueueFull {
        queue: String,
        topic: String,
        ready_messages: u64,
        ready_bytes: u64,
        /// Which cap, e.g. `queue_max_ready_messages 1000`.
        cap: String,
    },

    /// The partition's topic was deleted while the call was in flight.
    #[error("partition {partition} was deleted with its topic")]
    TopicDeleted { partition: String },

    /// Recovery refused to open the partition (durable data lost or damaged, an offset
    /// gap): the rest of the store serves, this partition refuses every call until an
    /// operator repairs it with the broker stopped. Its message holds
    /// [`PARTITION_UNAVAILABLE_MARK`], which tells clients this UNAVAILABLE from a
    /// broker that is restarting (retrying cannot help).
    #[error(
        "partition {partition} is unavailable: recovery refused to open it ({reason}); stop the broker and run `tidelog segment verify {dir}` to see why and `tidelog segment repair --force {dir}` to accept the loss, or restore the partition from a backup"
    )]
    PartitionUnavailable {
        partition: String,
        dir: String,
        reason: String,
    },
}

/// Words every [`Error::PartitionUnavailable`] message holds (and so the UNAVAILABLE
/// status the broker answers with): a client that finds them in an UNAVAILABLE
/// status knows the broker refused the call for a partition recovery refused to open,
/// not that it was away, and does not retry. The .proto's status-code table names them.
pub const PARTITION_UNAVAILABLE_MARK: &str = "is unavailable: recovery refused to open it";

impl Error {
    /// Wraps an I/O error with what was being done when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// A corruption error at `position` of `file`.
    pub fn corrupt(file: impl Into<PathBuf>, position: u64, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            position,
            reason: reason.into(),
        }
    }

    /// An invalid-argument error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// A not-found error naming the object.
    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound { what: what.into() }
    }

    /// Whether this is the process (EMFILE) or the system (ENFILE) out of file
    /// descriptors: not a disk problem, and mended by a higher open-file limit.
    pub fn is_out_of_descriptors(&self) -> bool {
        // EMFILE 24 and ENFILE 23, the same numbers on Linux and the BSDs.
        matches!(self, Error::Io { source, .. } if matches!(source.raw_os_error(), Some(23 | 24)))
    }
}

/// Adds context to `io::Result`s: `file.sync_data().ctx(|| format!("syncing {path}"))`.
pub(crate) trait IoContext<T> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_partition_says_the_words_clients_look_for() {
        let error = Error::PartitionUnavailable {
            partition: "t/0".into(),
            dir: "/d/topics/t/0".into(),
            reason: "data was lost on disk".into(),
        };
        assert!(
            error.to_string().contains(PARTITION_UNAVAILABLE_MARK),
            "{error}"
        );
    }
}
