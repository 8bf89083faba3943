//! `tidelog consume --follow` without a group: a tidelog-client
//! [`Subscription`] (`SubscribeBatches`) from the start position. The subscription
//! reconnects after the broker went away (the CLI says so on stderr); a damaged
//! partition is named, dropped, and the others are read on.

use std::collections::BTreeSet;

use tidelog_client::{Event, SubscribeOptions, Subscription};

use super::damage::{Damage, damage_error};
use super::printer::Printer;
use super::start::client_reset_note;
use super::stream::{
    Reconnect, StopSignal, client_reset, client_start, client_status, sleep_until_opt,
    subscription_error, until_deadline,
};
use crate::args::ConsumeArgs;
use crate::client::Broker;
use crate::error::CliResult;

pub(super) async fn consume_follow(
    broker: &Broker,
    args: &ConsumeArgs,
    printer: &mut Printer,
) -> CliResult<()> {
    let context = format!("subscribing to topic {:?}", args.topic);
    let mut partitions = args.partition.clone();
    partitions.sort_unstable();
    partitions.dedup();
    let options = SubscribeOptions {
        partitions,
        start: client_start(args.from),
        reset: client_reset(args.offset_reset),
        filter: args.filter.clone().unwrap_or_default(),
        ..SubscribeOptions::default()
    };
    let until_clock = until_deadline(printer.until);
    let mut stop = StopSignal::new();
    let mut subscription = tokio::select! {
        opened = Subscription::open(broker, &args.topic, options) => {
            opened.map_err(|error| subscription_error(broker, &context, &error))?
        }
        _ = stop.recv() => return Ok(()),
    };
    let mut damaged: Vec<Damage> = Vec::new();
    // Partitions that reached --until: their later messages are not printed.
    let mut finished: BTreeSet<u32> = subscription
        .positions()
        .iter()
        .filter(|(_, next)| printer.reached_until(**next))
        .map(|((_, partition), _)| *partition)
        .collect();
    let mut backoff = Reconnect::default();
    let no_topic: std::sync::Arc<str> = std::sync::Arc::from("");
    loop {
        if !subscription.positions().is_empty()
            && subscription
                .positions()
                .keys()
                .all(|(_, p)| finished.contains(p))
        {
            return damage_error(&args.topic, &damaged);
        }
        // What was received is printed first; the wait (and with it the stop signal
        // and the --until clock) is set up once per delivery, not per message.
        let event = match subscription.try_next_event() {
            Some(event) => Ok(event),
            None => tokio::select! {
                event = subscription.next_event() => event,
                _ = stop.recv() => return damage_error(&args.topic, &damaged),
                _ = sleep_until_opt(until_clock) => return damage_error(&args.topic, &damaged),
            },
        };
        match event {
            Ok(Event::Messages(messages)) => {
                for mut message in messages {
                    if finished.contains(&message.partition) {
                        break;
                    }
                    // One topic: its name is not printed with each message (nor copied
                    // into each one).
                    message.topic = no_topic.clone();
                    let m = message.into_proto();
                    if printer.past_until(&m) {
                        finished.insert(m.partition);
                        break;
                    }
                    printer.print(&m)?;
                    if printer.done() {
                        return damage_error(&args.topic, &damaged);
                    }
                }
            }
            Ok(Event::Progress(progress)) => {
                if printer.reached_until(progress.next_offset) {
                    finished.insert(progress.partition);
                }
                // A pipe reader (`| grep`) sees each batch as it arrives.
                printer.out.flush()?;
            }
            Ok(Event::PositionReset(reset)) => client_reset_note(&reset),
            Ok(Event::Disconnected { error }) => {
                // The broker restarted (or is stopping): the subscription opens the
                // stream again from where every partition stood, as kcat and `nats
                // sub` do.
                printer.out.flush()?;
                backoff.lost(&client_status(&error));
            }
            Ok(Event::Reconnected) => backoff.connected(),
            Ok(_) => {}
            Err(error) if error.is_data_loss() => {
                // Which partition is damaged: the one whose next read fails. Drop it
                // and go on with the others from where each stood.
                printer.out.flush()?;
                let found = subscription
                    .damaged()
                    .await
                    .map_err(|e| broker.client_error(&context, &e))?;
                if found.is_empty() {
                    return Err(subscription_error(broker, &context, &error));
                }
                for found in found {
                    let status = client_status(&found.error);
                    let damage = Damage::new(found.partition, found.offset, &status);
                    damage.warn(&args.topic);
                    // A one-topic subscription always lets a partition go.
                    let _ = subscription.drop_partition(&found.topic, found.partition);
                    damaged.push(damage);
                }
                if subscription.positions().is_empty() {
                    return damage_error(&args.topic, &damaged);
                }
            }
            Err(error) => return Err(subscription_error(broker, &context, &error)),
        }
    }
}
