//! `tidelog queue`: work queues over the broker's `Queues` service.
//!
//! | module | what |
//! |---|---|
//! | [`args`] | the command line, every value parsed and range-checked |
//! | [`admin`] | create, list, describe, alter, delete, purge, redrive |
//! | [`consume`] | `queue consume`: print deliveries, ack what was printed (through tidelog-client's `QueueConsumer`, as `work` and `bench queue`) |
//! | [`work`] | `queue work`: a command per message, ack on exit 0, nack otherwise |
//! | [`deliveries`] | `queue deliveries`: delivery events newest first, filtered, paged |
//!
//! Errors speak the CLI's terms: a broker refusal that names an API field
//! (`ack_deadline_ms`) is reported with the flag (`--ack-deadline`), and the hints name
//! `tidelog` commands, not RPCs.

mod admin;
mod args;
mod consume;
mod deliveries;
mod work;

pub use admin::queue_json;
pub use args::QueueCommand;

use tonic::{Code, Status};

use crate::client::Broker;
use crate::error::{CliError, CliResult};

pub async fn run(broker: &Broker, command: QueueCommand, json: bool) -> CliResult<()> {
    match command {
        QueueCommand::Consume(args) => consume::run(broker, args, json).await,
        QueueCommand::Work(args) => work::run(broker, args, json).await,
        QueueCommand::Deliveries(args) => deliveries::run(broker, args, json).await,
        command => admin::run(broker, command, json).await,
    }
}

/// Usage errors clap cannot express, found before connecting (exit 2).
pub fn validate(command: &QueueCommand) -> CliResult<()> {
    use tidelog_storage::queue::QueueConfig;
    let defaults = QueueConfig::defaults_for("");
    match command {
        QueueCommand::Create(args) => args
            .config
            .check((defaults.backoff_initial_ms, defaults.backoff_max_ms)),
        QueueCommand::Alter(args) if args.config.is_empty() => Err(CliError::usage(
            "nothing to change",
            "give at least one of --ack-deadline, --max-deliveries, --backoff (or \
             --backoff-initial / --backoff-max), --dead-letter-topic, --max-unacked, \
             --history-attempts, --history-retention",
        )),
        // The backoff in force is checked once it is known (admin::alter).
        QueueCommand::Work(args) => work::check_command(&args.command),
        _ => Ok(()),
    }
}

/// The error line for a refused queue call, in the CLI's terms. `context` says what
/// was being done (`creating queue "billing"`).
pub fn queue_error(broker: &Broker, context: &str, status: &Status) -> CliError {
    status_error(&broker.server, context, status)
}

/// [`queue_error`] for the broker at `server`.
fn status_error(server: &str, context: &str, status: &Status) -> CliError {
    let what = cli_terms(status.message());
    let todo = match status.code() {
        Code::NotFound if what.starts_with("queue") => "check the name (tidelog queue list)",
        Code::NotFound if what.starts_with("topic") => {
            "check the name (tidelog topic list), or create it with `tidelog topic create`"
        }
        Code::AlreadyExists => {
            "pick another name, or change its settings with `tidelog queue alter`"
        }
        Code::InvalidArgument => "fix the value and try again (see --help)",
        _ => return CliError::status(context, status, server),
    };
    if what.is_empty() {
        return CliError::status(context, status, server);
    }
    CliError::failure(format!("{context} failed: {what}"), todo).with_code(status.code())
}

/// The part of a broker message that says what went wrong (it goes on with what to
/// do in API terms after "; "), with API field names replaced by their flags.
fn cli_terms(message: &str) -> String {
    let what = message.split("; ").next().unwrap_or_default().trim();
    crate::terms::to_cli(&what.replace("invalid argument: ", ""))
}

/// An answer without the field the call exists for.
fn empty_answer(context: &str) -> CliError {
    CliError::failure(
        format!("{context} failed: the broker's answer is empty"),
        "check that tidelogd and tidelog are the same version",
    )
}

/// Ctrl-C or SIGTERM, as many times as they come. Listening starts when it is
/// created, so a signal during other work is not missed.
pub struct StopSignal {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    pub fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignal {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    pub async fn recv(&mut self) {
        async fn on(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    if signal.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "http://127.0.0.1:7420";

    #[test]
    fn refusals_name_flags_and_tidelog_commands() {
        let e = status_error(
            SERVER,
            "creating queue \"q\"",
            &Status::invalid_argument(
                "invalid argument: ack_deadline_ms 5 is outside 100..=43200000; fix the request, retrying it unchanged will fail again",
            ),
        );
        assert_eq!(
            e.to_string(),
            "error: creating queue \"q\" failed: --ack-deadline (ms) 5 is outside 100-43200000; fix the value and try again (see --help)"
        );
        let e = status_error(
            SERVER,
            "describing queue \"q\"",
            &Status::not_found("queue \"q\" not found"),
        );
        assert!(e.to_string().ends_with("(tidelog queue list)"), "{e}");
        let e = status_error(
            SERVER,
            "creating queue \"q\"",
            &Status::not_found(
                "topic \"t\" not found; check the name (Admin.ListTopics lists the topics) or create it with Admin.CreateTopic",
            ),
        );
        assert!(!e.to_string().contains("Admin."), "{e}");
        assert!(e.to_string().contains("tidelog topic create"), "{e}");
        assert_eq!(e.exit, crate::error::Exit::Failure);
    }
}
