//! Living with a subscription: the error a tidelog-client `Subscription` or
//! `GroupMember` ended with in the CLI's terms, the notes about a lost
//! and regained broker, the CLI's flags as the client's options, Ctrl-C / SIGTERM, and
//! `--until TIME` as a deadline.

use std::time::Duration;

use super::start::OUT_OF_RANGE_TODO;
use crate::args::{ResetPolicyArg, StartAt, Until};
use crate::client::{Broker, broker_status};
use crate::error::CliError;
use crate::output::note;
use crate::terms::to_cli;

/// The error for a stream the broker ended: an OUT_OF_RANGE under `--offset-reset
/// error` says what to do in the CLI's flags instead of the RPCs the broker names.
pub(super) fn stream_error(
    broker: &Broker,
    context: &str,
    status: &tonic::Status,
    group: bool,
) -> CliError {
    if status.code() != tonic::Code::OutOfRange {
        return broker.error(context, status);
    }
    // The broker's message is "<what>; <what to do in RPC terms>": keep the first part.
    let what = to_cli(status.message().split("; ").next().unwrap_or_default());
    let what = what.trim_end_matches(" and --offset-reset is error");
    let todo = if group {
        "move the group's offsets with `tidelog group reset-offsets`, or let --offset-reset earliest or latest move the position"
    } else {
        OUT_OF_RANGE_TODO
    };
    CliError::failure(
        format!("{context} failed: {what}, and --offset-reset is error"),
        todo,
    )
    .with_code(tonic::Code::OutOfRange)
}

/// The broker's status a tidelog-client error stands for; the client's own words as
/// UNAVAILABLE when the broker said nothing (a connection that broke). The client
/// reports OUT_OF_RANGE as `InvalidArgument`: the broker's message ("offset N is out of
/// range for T/P: ...") tells it apart, so `--offset-reset error` reads as it does on
/// the other paths.
pub(super) fn client_status(error: &tidelog_client::Error) -> tonic::Status {
    match broker_status(error) {
        Some(status)
            if status.code() == tonic::Code::InvalidArgument
                && status.message().contains(" is out of range for ") =>
        {
            tonic::Status::out_of_range(status.message())
        }
        Some(status) => status,
        None => tonic::Status::unavailable(error.to_string()),
    }
}

/// The error for a `Subscription` that failed, as [`stream_error`] words it.
pub(super) fn subscription_error(
    broker: &Broker,
    context: &str,
    error: &tidelog_client::Error,
) -> CliError {
    match broker_status(error) {
        Some(_) => stream_error(broker, context, &client_status(error), false),
        None => broker.client_error(context, error),
    }
}

/// `--from` as the client's start (earliest when not given).
pub(super) fn client_start(from: Option<StartAt>) -> tidelog_client::StartAt {
    match from.unwrap_or(StartAt::Earliest) {
        StartAt::Earliest => tidelog_client::StartAt::Earliest,
        StartAt::Latest => tidelog_client::StartAt::Latest,
        StartAt::Offset(offset) => tidelog_client::StartAt::Offset(offset),
        StartAt::TimestampMs(ms) => tidelog_client::StartAt::Timestamp(ms),
    }
}

/// `--offset-reset` as the client's reset policy.
pub(super) fn client_reset(arg: ResetPolicyArg) -> tidelog_client::Reset {
    match arg {
        ResetPolicyArg::Earliest => tidelog_client::Reset::Earliest,
        ResetPolicyArg::Latest => tidelog_client::Reset::Latest,
        ResetPolicyArg::Error => tidelog_client::Reset::Error,
    }
}

/// Whether a stream that ended with `status` is worth opening again after a pause:
/// the broker went away (a restart, a lost connection) or is stopping. A partition
/// recovery refused stays refused until an operator repairs it: not retried.
pub(super) fn reconnectable(status: &tonic::Status) -> bool {
    let message = status.message().to_ascii_lowercase();
    let transport = [
        "transport error",
        "connection refused",
        "connection reset",
        "connection closed",
        "broken pipe",
        "error trying to connect",
        "h2 protocol error",
        "error reading a body",
        "stream closed",
    ]
    .iter()
    .any(|needle| message.contains(needle));
    match status.code() {
        tonic::Code::Unavailable => !message.contains("recovery refused"),
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => transport,
        _ => false,
    }
}

/// The notes about a lost and regained broker while a tidelog-client `Subscription`
/// or `GroupMember` reconnects with backoff by itself (every `--follow`): one when the
/// stream breaks, one when reading goes on.
#[derive(Debug, Default)]
pub(super) struct Reconnect {
    /// The broker was lost and not regained yet.
    retrying: bool,
}

impl Reconnect {
    /// The stream ended with `status`: say so once.
    pub(super) fn lost(&mut self, status: &tonic::Status) {
        if !self.retrying {
            note(&format!(
                "warning: lost the broker ({}: {}); reconnecting with backoff (Ctrl-C stops)",
                crate::error::code_name(status.code()),
                to_cli(status.message())
            ));
            self.retrying = true;
        }
    }

    /// A stream delivered an event: connected again.
    pub(super) fn connected(&mut self) {
        if std::mem::take(&mut self.retrying) {
            note("note: reconnected to the broker; reading on");
        }
    }
}

/// With `--until TIME` and `--follow`: the moment the clock passes TIME.
pub(super) fn until_deadline(until: Option<Until>) -> Option<tokio::time::Instant> {
    let Some(Until::TimestampMs(ms)) = until else {
        return None;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let left = u64::try_from(ms.saturating_sub(now_ms)).unwrap_or(0);
    Some(tokio::time::Instant::now() + Duration::from_millis(left))
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C or SIGTERM: stop reading (a group member commits what it printed first).
/// Listening starts when it is created, so a signal that arrives while a batch is
/// being printed is not missed.
pub(super) struct StopSignal {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    pub(super) fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignal {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    pub(super) async fn recv(&mut self) {
        async fn on(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = on(&mut self.interrupt) => {}
            _ = on(&mut self.terminate) => {}
        }
    }
}
