//! `tidelog`: the operator's CLI for tidelogd and its data files.
//!
//! | module | what |
//! |---|---|
//! | [`cli`] | the command tree (clap) and the parsing of every value |
//! | [`topic`], [`produce`], [`consume`], [`group`], [`broker`], [`queue`], [`message`] | commands that talk to the broker |
//! | [`segment`] | offline dump / verify / repair of a data directory |
//! | [`bench`] | `tidelog bench produce / consume / e2e`: load with validation |
//! | [`units`], [`time`], [`spec`], [`output`] | pure parsers and formatters |
//! | [`terms`] | the broker's messages in the CLI's commands and flags; the one range notation |
//! | [`client`], [`error`] | the command line's connection flags mapped to tidelog-client's `ClientOptions`, and the one-line errors with exit codes |
//!
//! Exit codes: 0 ok, 1 an error from the broker or in the data, 2 bad arguments. With
//! `--json` an error is one JSON object on stderr (see [`error::error_json`]).
#![deny(unsafe_code)]

mod access;
mod args;
mod bench;
mod broker;
mod cli;
mod client;
mod consume;
mod delivery;
mod error;
mod group;
mod message;
mod output;
mod produce;
mod queue;
mod segment;
mod spec;
mod terms;
use tidelog_storage::datetime as time;
mod topic;
mod units;

use std::process::ExitCode;

use clap::Parser;
use tidelog_storage::limits::TOPIC_PARTITIONS_MAX;

use crate::args::{GroupCommand, TopicCommand};
use crate::cli::{Cli, Command};
use crate::client::Broker;
use crate::error::{CliError, CliResult, Exit, error_json};
use crate::output::note;

fn main() -> ExitCode {
    // Known before parsing, so that usage errors are JSON too.
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(move |info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message =
            format!("tidelog hit a bug ({what}{at}); please report it with the command line");
        if json {
            note(&error_json(&message, Exit::Failure, None).to_string());
        } else {
            note(&format!("error: {message}"));
        }
    }));
    // The hook said exit code 1 (a failure): the process says the same, not Rust's 101.
    std::panic::catch_unwind(|| parse_and_run(json))
        .unwrap_or_else(|_| ExitCode::from(Exit::Failure.code()))
}

/// Parses the command line and runs the command: the exit code and, on an error, its
/// line (or JSON object, with `--json`) on stderr.
fn parse_and_run(json: bool) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = u8::try_from(e.exit_code()).unwrap_or(Exit::Usage.code());
            if json && code == Exit::Usage.code() {
                // clap's first paragraph says what is wrong; the rest is usage help.
                let rendered = e.render().to_string();
                let message = rendered
                    .lines()
                    .take_while(|line| !line.trim().is_empty())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim_start_matches("error: ")
                    .to_string();
                note(&error_json(&message, Exit::Usage, None).to_string());
            } else {
                // --help and --version print to stdout and succeed; usage errors exit 2.
                let _ = e.print();
            }
            return ExitCode::from(code);
        }
    };
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.exit {
                Exit::Quiet => {}
                _ if json => note(&error_json(&error.message, error.exit, error.code).to_string()),
                _ => note(&error.to_string()),
            }
            ExitCode::from(error.exit.code())
        }
    }
}

fn run(cli: Cli) -> CliResult<()> {
    let Cli {
        server,
        token,
        ca_file,
        cert,
        tls_key,
        key_before_command,
        json,
        command,
    } = cli;
    let key = tls_key.or(key_before_command);
    client::set_token(token.as_deref());
    if !matches!(command, Command::Segment(_) | Command::Completions(_)) {
        client::set_tls(&client::TlsArgs { ca_file, cert, key })?;
    }
    if let Command::Completions(args) = command {
        // Offline: the command tree is all it needs.
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(args.shell, &mut command, "tidelog", &mut script);
        // Through Stdout, so `| head` ends it quietly.
        let mut out = output::Stdout::new();
        out.write(&script)?;
        return out.flush();
    }
    if let Command::Segment(command) = command {
        // Offline: no broker, no runtime.
        return segment::run(command, json);
    }
    if let Command::Bench(command) = command {
        // Its own multi-threaded runtime: the load generators use every core.
        return bench::run(command, &server, json);
    }
    validate(&command)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::failure(
                format!("cannot start the async runtime: {e}"),
                "check the system's limits",
            )
        })?;
    runtime.block_on(async move {
        let broker = Broker::connect(&server).await?;
        match command {
            Command::Topic(command) => topic::run(&broker, command, json).await,
            Command::Produce(args) => produce::run(&broker, args, json).await,
            Command::Consume(args) => consume::run(&broker, args, json).await,
            Command::Group(command) => group::run(&broker, command, json).await,
            Command::Broker(command) => broker::run(&broker, command, json).await,
            Command::Queue(command) => queue::run(&broker, command, json).await,
            Command::Message(command) => message::run(&broker, command, json).await,
            Command::Auth(command) => access::run_auth(&broker, command, json).await,
            Command::Acl(command) => access::run_acl(&broker, command, json).await,
            Command::Quota(command) => access::run_quota(&broker, command, json).await,
            Command::Segment(_) | Command::Bench(_) | Command::Completions(_) => Ok(()),
        }
    })
}

/// The flags of `topic alter`, read from its clap definition so a new setting is
/// listed without a second list to keep.
fn alter_flags() -> Vec<String> {
    let command = <args::TopicAlterArgs as clap::Args>::augment_args(clap::Command::new("alter"));
    command
        .get_arguments()
        .filter_map(|arg| arg.get_long())
        .map(|long| format!("--{long}"))
        .collect()
}

/// Usage errors clap cannot express, found before connecting (exit 2).
fn validate(command: &Command) -> CliResult<()> {
    match command {
        Command::Topic(TopicCommand::Create(args))
            if !(1..=TOPIC_PARTITIONS_MAX).contains(&args.partitions) =>
        {
            Err(CliError::usage(
                format!("--partitions {} is not a partition count", args.partitions),
                format!("give 1 to {TOPIC_PARTITIONS_MAX}"),
            ))
        }
        Command::Topic(TopicCommand::Alter(args))
            if args.partitions.is_none()
                && topic::alter_update(&args.config) == Default::default() =>
        {
            Err(CliError::usage(
                "nothing to change",
                format!("give at least one of {}", alter_flags().join(", ")),
            ))
        }
        Command::Topic(TopicCommand::Alter(args))
            if args
                .partitions
                .is_some_and(|n| !(1..=TOPIC_PARTITIONS_MAX).contains(&n)) =>
        {
            Err(CliError::usage(
                format!(
                    "--partitions {} is not a partition count",
                    args.partitions.unwrap_or_default()
                ),
                format!("give 1 to {TOPIC_PARTITIONS_MAX}"),
            ))
        }
        Command::Group(GroupCommand::ResetOffsets(args)) => {
            let scoped = !args.topics.is_empty() || args.all_topics || args.topic_pattern.is_some();
            match (&args.mode.from_file, scoped) {
                (Some(_), true) => Err(CliError::usage(
                    "--from-file takes its topics and partitions from the file",
                    "drop --topic / --all-topics / --topic-pattern",
                )),
                (None, false) => Err(CliError::usage(
                    "no partitions to reset",
                    "give --topic TOPIC[:P,P..] (repeatable), --topic-pattern REGEX or --all-topics",
                )),
                _ => Ok(()),
            }
        }
        Command::Queue(command) => queue::validate(command),
        _ => Ok(()),
    }
}
