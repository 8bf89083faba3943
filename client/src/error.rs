//! Errors in the client's terms: what went wrong, which call or setting it concerns, and
//! whether trying again can help ([`Error::is_retryable`]).

use std::time::Duration;

use bytes::Bytes;
use tonic::Code;

/// What a client call can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The URL given to [`crate::Client::connect`] is not an address.
    InvalidUrl { url: String, reason: String },
    /// The TLS settings cannot be used: PEM that does not parse, a key that is not
    /// the certificate's, or TLS settings with an `http://` URL (see
    /// [`crate::ClientOptions`]).
    Tls { url: String, reason: String },
    /// The token given to [`crate::ClientOptions::token`] is not one tidelog prints.
    InvalidToken { reason: String },
    /// No broker answered at the address (refused, unresolvable, timed out).
    Unreachable { url: String, reason: String },
    /// The topic does not exist (`NOT_FOUND` from the broker).
    TopicNotFound { topic: String },
    /// Something else the call names does not exist (a queue, a group, a message).
    NotFound { rpc: &'static str, message: String },
    /// The broker refused the request as malformed or over a limit. Retrying the same
    /// request fails again.
    InvalidArgument { rpc: &'static str, message: String },
    /// A record the producer was given breaks a rule before it reaches the broker
    /// (too large for the topic, too many headers, a bad id, ...).
    InvalidRecord { reason: String },
    /// The call's credentials were refused: no token, or a token that is malformed,
    /// unknown, revoked or expired.
    Unauthenticated { message: String },
    /// The token's principal may not do this.
    PermissionDenied { message: String },
    /// The broker is starting, stopping, or the partition is poisoned. Retryable.
    Unavailable { rpc: &'static str, message: String },
    /// The broker refused the call because the partition is unavailable: recovery
    /// refused to open it (fsynced data lost or damaged on disk). The broker answered
    /// (UNAVAILABLE, with the words of
    /// [`tidelog_storage::error::PARTITION_UNAVAILABLE_MARK`]): nothing was stored or
    /// read there. Not retryable: it stays refused until an operator repairs it with
    /// the broker stopped (`tidelog segment verify`, `tidelog segment repair --force`).
    PartitionUnavailable { rpc: &'static str, message: String },
    /// A consumer-group call lost a race with a rebalance (`FAILED_PRECONDITION` on
    /// `CommitOffsets`): the partitions moved; drop the work of revoked partitions.
    Rebalanced { message: String },
    /// A queue settlement was refused: `FAILED_PRECONDITION` when the message was
    /// delivered again since (stale), `NOT_FOUND` when it is unknown or settled, or
    /// retention deleted it while it was held (the queue dropped the delivery; the
    /// message says so: nothing to retry).
    SettleRefused { code: Code, message: String },
    /// A settlement of a [`crate::QueueConsumer`]'s delivery could not be made: the
    /// stream it came on broke (the broker restarted, the connection dropped) or the
    /// consumer was closed, and the broker took the delivery back. The message is
    /// delivered again (attempt + 1). When the stream broke after the settlement was
    /// sent, the broker may have applied it: an ack then is not delivered again.
    LeaseLost { reason: String },
    /// A record could not be delivered within
    /// [`crate::ProducerConfig::delivery_timeout`] (the broker stayed unreachable) and
    /// was **not stored**: the producer never sent it (it waited for a connection).
    /// Records it sent and got no answer for fail with [`Error::OutcomeUnknown`].
    Timeout { what: String, after: Duration },
    /// The producer sent these records and got no answer, and gave up on them: they
    /// **may or may not be stored**. `reason` says why it gave up: the
    /// [`crate::ProducerConfig::delivery_timeout`] passed, or the topic's dedup window
    /// passed since it first sent them, so sending them again could store them twice
    /// (see "Retries and duplicates" in the producer module's docs, `client/src/producer/mod.rs`).
    ///
    /// `ids` are the records' message ids, for resending safely: for a record of
    /// [`crate::Producer::send`], one entry, its id (`None` when it has none); for a
    /// [`crate::Producer::send_batch`], per record in order, the id the producer
    /// attached (`None` for a record with its own id or none), empty when it attached
    /// none. On a topic with a dedup window, the same records sent again with the same
    /// ids ([`crate::Record::id`]) within the window (counted from when the broker
    /// stored the first copy) are answered with the stored originals
    /// ([`crate::Delivered::duplicate`]) instead of being stored twice; without ids,
    /// or after the window, a resend may store a record twice.
    OutcomeUnknown {
        what: String,
        reason: String,
        ids: Vec<Option<Bytes>>,
    },
    /// The producer or consumer was closed, or its background task ended.
    Closed,
    /// A batch the broker returned could not be decoded (a damaged batch: report it).
    Corrupt { reason: String },
    /// Any other status from the broker.
    Broker {
        rpc: &'static str,
        code: Code,
        message: String,
    },
}

impl Error {
    /// What a consumer reports for a damaged batch it received (the batch at
    /// `base_offset` of `topic`'s `partition`).
    pub(crate) fn damaged_batch(
        topic: &str,
        partition: u32,
        base_offset: u64,
        error: tidelog_storage::batch::FormatError,
    ) -> Error {
        Error::Corrupt {
            reason: format!(
                "topic {topic:?} partition {partition} batch at offset {base_offset}: {error}"
            ),
        }
    }

    /// The error a broker status means for `rpc` (the RPC's name, e.g. "PublishBatch"),
    /// with the topic it concerned for `NOT_FOUND`.
    pub(crate) fn from_status(
        rpc: &'static str,
        topic: Option<&str>,
        status: &tonic::Status,
    ) -> Error {
        Error::from_code(rpc, topic, status.code(), status.message())
    }

    pub(crate) fn from_code(
        rpc: &'static str,
        topic: Option<&str>,
        code: Code,
        message: &str,
    ) -> Error {
        let message = message.to_string();
        match code {
            Code::NotFound => match topic {
                // The topic is not there (or went), but not a resume whose partitions
                // the topic, deleted and created again, lacks: that says so itself.
                Some(topic) if message.contains("topic") && !message.contains("created again") => {
                    Error::TopicNotFound {
                        topic: topic.to_string(),
                    }
                }
                _ => Error::NotFound { rpc, message },
            },
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument { rpc, message },
            Code::Unauthenticated => Error::Unauthenticated { message },
            Code::PermissionDenied => Error::PermissionDenied { message },
            Code::Unavailable if partition_refused(code, &message) => {
                Error::PartitionUnavailable { rpc, message }
            }
            Code::Unavailable => Error::Unavailable { rpc, message },
            // tonic's words for a connection that broke under the call: the broker
            // went away, as far as the caller can tell.
            code if connection_broke(code, &message) => Error::Unavailable { rpc, message },
            code => Error::Broker { rpc, code, message },
        }
    }

    /// True for a damaged batch: `DATA_LOSS` from the broker (it never serves one), or
    /// a batch that does not decode here. Retrying reads the same bytes: see
    /// [`crate::Subscription::damaged`].
    pub fn is_data_loss(&self) -> bool {
        matches!(
            self,
            Error::Broker {
                code: Code::DataLoss,
                ..
            } | Error::Corrupt { .. }
        )
    }

    /// True when the same call may succeed later (the broker was unavailable or the
    /// connection broke), false when it would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Unreachable { .. } => true,
            Error::Broker { code, message, .. } => retryable_answer(*code, message),
            _ => false,
        }
    }
}

/// Codes after which a call is worth repeating: the broker was away or the transport
/// broke (tonic reports a reset connection as `UNKNOWN` or `INTERNAL` with an h2
/// error, `CANCELLED` when the server went away mid-stream).
pub(crate) fn retryable_code(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

/// Whether `code` and `message` are tonic's report of a connection that broke under
/// a call (`UNKNOWN` "transport error", `CANCELLED`, `INTERNAL` with an h2 or
/// connection error) rather than an answer of the broker.
fn connection_broke(code: Code, message: &str) -> bool {
    matches!(code, Code::Unknown | Code::Cancelled)
        || (code == Code::Internal && transport_words(message))
}

/// Whether a failed stream (or call) should be opened again after a backoff.
pub(crate) fn retryable_status(status: &tonic::Status) -> bool {
    retryable_answer(status.code(), status.message())
}

/// Whether a call that failed with `code` and `message` may succeed later: a
/// retryable code, or `INTERNAL` with the words of a broken connection; never a
/// partition the broker refused as unavailable ([`partition_refused`]).
fn retryable_answer(code: Code, message: &str) -> bool {
    (retryable_code(code) && !partition_refused(code, message))
        || (code == Code::Internal && transport_words(message))
}

/// Whether `code` and `message` are the broker's answer for a partition recovery
/// refused to open: UNAVAILABLE like a broker that is away, told apart by the words
/// the broker's message holds for it. Retrying cannot help until it is repaired.
pub(crate) fn partition_refused(code: Code, message: &str) -> bool {
    code == Code::Unavailable
        && message.contains(tidelog_storage::error::PARTITION_UNAVAILABLE_MARK)
}

/// Whether an `INTERNAL` status's message is tonic's or h2's word for a broken
/// connection.
fn transport_words(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "h2 protocol error",
        "transport",
        "connection",
        "broken pipe",
        "stream closed",
        "error reading a body",
        "error trying to connect",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::InvalidUrl { url, reason } => write!(
                f,
                "{url:?} is not a broker address ({reason}): use a URL such as http://127.0.0.1:7420"
            ),
            Error::Tls { url, reason } => write!(
                f,
                "the TLS settings for {url} cannot be used ({reason}): check ClientOptions::ca_pem and identity (PEM; the key must be the certificate's)"
            ),
            Error::InvalidToken { reason } => write!(
                f,
                "the token is not a tidelog token ({reason}): pass the text `tidelog auth token create` printed"
            ),
            Error::Unreachable { url, reason } => {
                write!(
                    f,
                    "cannot reach tidelogd at {url} ({reason}): is it running?"
                )
            }
            Error::TopicNotFound { topic } => write!(
                f,
                "topic {topic:?} does not exist: create it first (Admin.CreateTopic, `tidelog topic create`)"
            ),
            Error::NotFound { rpc, message } => write!(f, "{rpc}: not found: {message}"),
            Error::InvalidArgument { rpc, message } => write!(
                f,
                "{rpc} refused the request: {message} (retrying it unchanged fails again)"
            ),
            Error::InvalidRecord { reason } => {
                write!(f, "record refused by the producer: {reason}")
            }
            Error::Unauthenticated { message } => write!(
                f,
                "the broker refused the credentials: {message} (set ClientOptions::token)"
            ),
            Error::PermissionDenied { message } => write!(f, "not allowed: {message}"),
            Error::Unavailable { rpc, message } => {
                write!(
                    f,
                    "{rpc}: the broker is unavailable: {message} (retry with backoff)"
                )
            }
            Error::PartitionUnavailable { rpc, message } => write!(
                f,
                "{rpc} refused by the broker, nothing was stored or read there: {message} (not retryable until the partition is repaired)"
            ),
            Error::Rebalanced { message } => write!(
                f,
                "the group rebalanced: {message} (drop the work of partitions no longer assigned)"
            ),
            Error::SettleRefused { code, message } => write!(
                f,
                "settlement refused ({}): {message}",
                tidelog_proto::code_name(*code)
            ),
            // The reason says whether the settlement may have been applied (and so
            // whether a redelivery comes): see `queue::route`'s reasons.
            Error::LeaseLost { reason } => write!(f, "the delivery's lease was lost: {reason}"),
            Error::Timeout { what, after } => write!(
                f,
                "{what} not delivered within {after:?} (ProducerConfig::delivery_timeout): the broker stayed unreachable and the producer never sent it, so it is not stored; send it again once the broker is back"
            ),
            Error::OutcomeUnknown { what, reason, ids } => {
                write!(
                    f,
                    "{what} may or may not be stored (outcome unknown): {reason}"
                )?;
                if ids.iter().any(Option::is_some) {
                    write!(f, " (the error carries the records' ids)")?;
                }
                Ok(())
            }
            Error::Closed => write!(f, "the client was closed"),
            Error::Corrupt { reason } => write!(f, "the broker sent a damaged batch: {reason}"),
            Error::Broker { rpc, code, message } => {
                write!(
                    f,
                    "{rpc} failed ({}): {message}",
                    tidelog_proto::code_name(*code)
                )?;
                if connection_broke(*code, message) {
                    // tonic's words for a broken connection ("transport error", "h2
                    // protocol error") do not say what to do. (`from_code` makes them
                    // `Unavailable`; an `Error::Broker` built with them says it too.)
                    write!(
                        f,
                        " (the connection to the broker broke or it went away: retryable, retry with backoff)"
                    )?;
                } else if retryable_answer(*code, message) {
                    write!(f, " (retryable: try again)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_api_terms() {
        let status = tonic::Status::not_found("topic \"t\" does not exist");
        assert_eq!(
            Error::from_status("PublishBatch", Some("t"), &status),
            Error::TopicNotFound { topic: "t".into() }
        );
        let status = tonic::Status::unavailable("shutting down");
        let error = Error::from_status("PublishBatch", Some("t"), &status);
        assert!(error.is_retryable());
        assert!(error.to_string().contains("retry"));
        // A partition recovery refused to open is the broker's answer, not retryable.
        let status = tonic::Status::unavailable(format!(
            "partition t/0 {} (data was lost on disk); stop the broker and run `tidelog segment verify /d`",
            tidelog_storage::error::PARTITION_UNAVAILABLE_MARK
        ));
        let error = Error::from_status("PublishBatch", Some("t"), &status);
        assert!(
            matches!(error, Error::PartitionUnavailable { .. }),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        assert!(!retryable_status(&status));
        assert!(error.to_string().contains("nothing was stored"), "{error}");
        // A broken connection (a broker killed) is the broker unavailable.
        let status = tonic::Status::unknown("transport error");
        let error = Error::from_status("CommitOffsets", None, &status);
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        assert!(error.is_retryable());
        assert!(error.to_string().contains("retry"), "{error}");
        let status = tonic::Status::internal("h2 protocol error: error reading a body");
        let error = Error::from_status("Settle", None, &status);
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        assert!(error.is_retryable());
        assert!(error.to_string().contains("retry"), "{error}");
        // ABORTED is the broker's answer: retryable, said as it is.
        let status = tonic::Status::aborted("another consumer took over");
        let error = Error::from_status("Consume", None, &status);
        assert!(
            matches!(
                error,
                Error::Broker {
                    code: Code::Aborted,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.is_retryable());
        let status = tonic::Status::internal("an invariant broke");
        let error = Error::from_status("Settle", None, &status);
        assert!(!error.is_retryable() && !error.to_string().contains("retry"));
        let status = tonic::Status::invalid_argument("record 0 is too large");
        let error = Error::from_status("PublishBatch", None, &status);
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("record 0 is too large"));
    }
}
