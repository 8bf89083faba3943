//! `tidelog consume --topic-pattern REGEX` without a group: a tidelog-client
//! [`Subscription`] by pattern (`SubscribeBatches` with `topic_pattern`). It follows (a
//! pattern has no end: topics created later that match are read too), prints each
//! message with its topic, and says on stderr when the set of topics read changes.
//! When the broker goes away (a restart) the subscription opens the stream again,
//! with backoff, from where every (topic, partition) stood (partitions it never saw
//! are new to it and start at their log start), as the one-topic `--follow` does.

use tidelog_client::{Event, SubscribeOptions, Subscription, TopicsChanged};

use super::printer::Printer;
use super::start::client_reset_note;
use super::stream::{
    Reconnect, StopSignal, client_reset, client_start, client_status, subscription_error,
};
use crate::args::ConsumeArgs;
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::note;

pub(super) async fn consume_pattern(
    broker: &Broker,
    args: &ConsumeArgs,
    pattern: &str,
    printer: &mut Printer,
) -> CliResult<()> {
    if let Err(error) = tidelog_storage::TopicPattern::parse(pattern) {
        return Err(CliError::usage(
            format!("--topic-pattern {error}"),
            r"give a regular expression that matches whole topic names, e.g. --topic-pattern 'orders\..*'",
        ));
    }
    let context = format!("subscribing to topic pattern {pattern:?}");
    let options = SubscribeOptions {
        start: client_start(args.from),
        reset: client_reset(args.offset_reset),
        filter: args.filter.clone().unwrap_or_default(),
        ..SubscribeOptions::default()
    };
    let mut stop = StopSignal::new();
    let mut subscription = tokio::select! {
        opened = Subscription::open_pattern(broker, pattern, options) => {
            opened.map_err(|error| subscription_error(broker, &context, &error))?
        }
        _ = stop.recv() => return Ok(()),
    };
    let mut backoff = Reconnect::default();
    loop {
        // What was received is printed first; the wait is set up once per delivery.
        let event = match subscription.try_next_event() {
            Some(event) => Ok(event),
            None => tokio::select! {
                event = subscription.next_event() => event,
                _ = stop.recv() => return Ok(()),
            },
        };
        match event {
            Ok(Event::Messages(messages)) => {
                for message in messages {
                    printer.print(&message.into_proto())?;
                    if printer.done() {
                        return Ok(());
                    }
                }
            }
            // A pipe reader sees each batch as it arrives.
            Ok(Event::Progress(_)) => printer.out.flush()?,
            Ok(Event::TopicsChanged(changed)) => topics_note(pattern, &changed),
            Ok(Event::PositionReset(reset)) => client_reset_note(&reset),
            Ok(Event::Disconnected { error }) => {
                printer.out.flush()?;
                backoff.lost(&client_status(&error));
            }
            Ok(Event::Reconnected) => backoff.connected(),
            Ok(_) => {}
            Err(error) => return Err(subscription_error(broker, &context, &error)),
        }
    }
}

/// Says on stderr which topics the pattern stream reads now.
fn topics_note(pattern: &str, changed: &TopicsChanged) {
    if changed.topics.is_empty() && changed.removed.is_empty() && changed.added.is_empty() {
        note(&format!(
            "note: no topic matches --topic-pattern {pattern:?} yet; waiting for one to be created"
        ));
        return;
    }
    if !changed.added.is_empty() {
        note(&format!(
            "note: reading topics {}",
            changed.added.join(", ")
        ));
    }
    if !changed.removed.is_empty() {
        note(&format!(
            "note: topics {} were deleted: no longer read",
            changed.removed.join(", ")
        ));
    }
}
