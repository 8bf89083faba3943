//! `tidelog`: the operator's CLI for tidelogd and its data files.
//!
//! | module | what |
//! |---|---|
//! | [`cli`] | the command tree (clap) and the parsing of every value |
//! | [`topic`], [`produce`], [`consume`], [`group`], [`queue`] | commands that talk to the broker |
//! | [`segment`] | offline dump / verify / repair of a data directory |
//! | [`bench`] | `tidelog bench produce / consume / e2e`: load with validation |
//! | [`units`], [`time`], [`spec`], [`output`] | pure parsers and formatters |
//! | [`client`], [`error`] | the connection, and the one-line errors with exit codes |
//!
//! Exit codes: 0 ok, 1 an error from the broker or in the data, 2 bad arguments.
#![deny(unsafe_code)]

mod bench;
mod cli;
mod client;
mod consume;
mod error;
mod group;
mod output;
mod produce;
mod queue;
mod segment;
mod spec;
mod time;
mod topic;
mod units;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, GroupCommand, TopicCommand};
use crate::client::Broker;
use crate::error::{CliError, CliResult, Exit};
use crate::output::note;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
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
        note(&format!(
            "error: tidelog hit a bug ({what}{at}); please report it with the command line"
        ));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(Exit::Usage.code()));
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if error.exit != Exit::Quiet {
                note(&error.to_string());
            }
            ExitCode::from(error.exit.code())
        }
    }
}

fn run(cli: Cli) -> CliResult<()> {
    let Cli {
        server,
        json,
        command,
    } = cli;
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
            Command::Queue(command) => queue::run(&broker, command, json).await,
            Command::Segment(_) | Command::Bench(_) => Ok(()),
        }
    })
}

/// Usage errors clap cannot express, found before connecting (exit 2).
fn validate(command: &Command) -> CliResult<()> {
    match command {
        Command::Topic(TopicCommand::Create(args)) if args.partitions == 0 => Err(CliError::usage(
            "--partitions 0 is not a partition count",
            "give 1 to 10000",
        )),
        Command::Topic(TopicCommand::Alter(args))
            if topic::alter_update(&args.config) == Default::default() =>
        {
            Err(CliError::usage(
                "nothing to change",
                "give at least one of --retention, --retention-bytes, --ttl, --segment-bytes, \
                 --segment-age, --fsync, --max-message-bytes, --compression",
            ))
        }
        Command::Group(GroupCommand::ResetOffsets(args)) => {
            let scoped = !args.topics.is_empty() || args.all_topics;
            match (&args.mode.from_file, scoped) {
                (Some(_), true) => Err(CliError::usage(
                    "--from-file takes its topics and partitions from the file",
                    "drop --topic / --all-topics",
                )),
                (None, false) => Err(CliError::usage(
                    "no partitions to reset",
                    "give --topic TOPIC[:P,P..] (repeatable) or --all-topics",
                )),
                _ => Ok(()),
            }
        }
        Command::Queue(command) => queue::validate(command),
        _ => Ok(()),
    }
}
