//! `tidelog consume`: print messages.
//!
//! Three ways to read, chosen by the flags:
//! - no group, no `--follow`: reads of each partition through tidelog-client's
//!   `Client::fetch` (`FetchBatches`), from the start position up to the end offsets
//!   seen at the start; exact and finite.
//! - no group, `--follow`: a tidelog-client `Subscription` (`SubscribeBatches`) from
//!   the start position; it reconnects after a broker restart, and a partition with a
//!   damaged batch is dropped while the others are read on.
//! - `--group`: a tidelog-client `GroupMember` (`SubscribeBatches` with a group); the
//!   broker assigns partitions and starts at the committed offsets, and the CLI
//!   commits exactly what it printed (`GroupMember::commit_offsets`). What is printed is committed with the member's
//!   generation after each printed batch (so a stream the broker ends with an error,
//!   or a crash, repeats nothing that was committed), when a rebalance takes partitions
//!   away (inside the broker's handover window, before the next owner starts), and
//!   before leaving. Without `--follow` reading stops when every assigned partition
//!   reached its end offset, or after a quiet spell.
//!
//! - `--topic-pattern`: a tidelog-client `Subscription` by pattern
//!   (`SubscribeBatches` with `topic_pattern`) over every matching topic, including
//!   those created later; always follows, and after the broker went away subscribes
//!   again from where every (topic, partition) stood. With `--group` the member joins
//!   the group on the pattern (see [`group`]).
//!
//! The module's parts, each importing only those before it: [`printer`] (formats),
//! [`damage`] (DATA_LOSS), [`start`] (where reading starts), [`stream`] (a stream or
//! subscription: errors, reconnecting, signals), then the ways to read: [`fetch`],
//! [`follow`], [`group`], [`pattern`].

mod damage;
mod fetch;
mod follow;
mod group;
mod pattern;
mod printer;

pub use printer::{LineFormat, message_json};
mod start;
mod stream;

use crate::args::ConsumeArgs;
use crate::client::Broker;
use crate::error::CliResult;

pub async fn run(broker: &Broker, args: ConsumeArgs, json: bool) -> CliResult<()> {
    let mut printer = printer::Printer::new(&args, json);
    if args.count == Some(0) {
        return Ok(());
    }
    let result = match (&args.topic_pattern, args.topic.is_empty()) {
        (Some(_), false) => Err(crate::error::CliError::usage(
            "both TOPIC and --topic-pattern were given",
            "give one: a topic name, or --topic-pattern REGEX",
        )),
        (None, true) => Err(crate::error::CliError::usage(
            "no topic given",
            "name a TOPIC, or read several with --topic-pattern REGEX",
        )),
        (Some(_), true) if args.group.is_some() => Ok(()),
        (Some(p), true) => pattern::consume_pattern(broker, &args, p, &mut printer).await,
        (None, false) => Ok(()),
    };
    if result.is_err() || (args.topic_pattern.is_some() && args.group.is_none()) {
        let flushed = printer.out.flush();
        return result.and(flushed);
    }
    let result = match (&args.group, args.follow) {
        (Some(group), _) => group::consume_group(broker, &args, group, &mut printer).await,
        (None, false) => fetch::consume_fetch(broker, &args, &mut printer).await,
        (None, true) => follow::consume_follow(broker, &args, &mut printer).await,
    };
    // Whatever was printed reaches the reader even when reading failed.
    let flushed = printer.out.flush();
    result.and(flushed)
}
