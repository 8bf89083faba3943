//! `tidelog consume --topic-pattern REGEX` without a group: one `Subscribe` stream by
//! topic pattern. It follows (a pattern has no end: topics created later that match
//! are read too), prints each message with its topic, and says on stderr when the set
//! of topics read changes. When the broker goes away (a restart) it subscribes again,
//! with backoff, from where every (topic, partition) stood (`partition_starts` naming
//! their topics; partitions it never saw are new to it and start at their log start),
//! as the one-topic `--follow` does.

use std::collections::{BTreeMap, BTreeSet};

use tidelog_proto::v1::{
    StartPosition, SubscribeRequest, TopicsChanged, start_position, subscribe_request,
    subscribe_response,
};

use super::printer::Printer;
use super::start::{reset_note, reset_policy};
use super::stream::{Reconnect, StopSignal, next_status_event, reconnectable, stream_error};
use crate::args::{ConsumeArgs, StartAt};
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
    let position = match args.from.unwrap_or(StartAt::Earliest) {
        StartAt::Earliest => start_position::Position::Earliest(start_position::Earliest {}),
        StartAt::Latest => start_position::Position::Latest(start_position::Latest {}),
        StartAt::Offset(o) => start_position::Position::Offset(o),
        StartAt::TimestampMs(ms) => start_position::Position::TimestampMs(ms),
    };
    let context = format!("subscribing to topic pattern {pattern:?}");
    // Where each (topic, partition) stands after what was printed or skipped.
    let mut positions: BTreeMap<(String, u32), u64> = BTreeMap::new();
    // The topics read, as the last TopicsChanged said.
    let mut topics: Option<BTreeSet<String>> = None;
    let mut stop = StopSignal::new();
    let mut backoff = Reconnect::default();
    loop {
        let (start, partition_starts) = if positions.is_empty() {
            (
                Some(StartPosition {
                    position: Some(position),
                }),
                Vec::new(),
            )
        } else {
            let starts = positions
                .iter()
                .map(
                    |((topic, partition), offset)| subscribe_request::PartitionStart {
                        partition: *partition,
                        offset: *offset,
                        topic: topic.clone(),
                    },
                )
                .collect();
            (None, starts)
        };
        let subscribed = broker
            .consumer()
            .subscribe(SubscribeRequest {
                topic_pattern: pattern.to_string(),
                start,
                partition_starts,
                reset_policy: reset_policy(args.offset_reset) as i32,
                filter: args.filter.clone().unwrap_or_default(),
                ..SubscribeRequest::default()
            })
            .await;
        let mut stream = match subscribed {
            Ok(stream) => stream.into_inner(),
            Err(status) if backoff.is_retrying() && reconnectable(&status) => {
                if !backoff.wait(&mut stop).await {
                    return Ok(());
                }
                continue;
            }
            Err(status) => return Err(broker.error(&context, &status)),
        };
        let ended = loop {
            let event = tokio::select! {
                event = next_status_event(&mut stream) => event,
                _ = stop.recv() => return Ok(()),
            };
            if event.is_ok() {
                backoff.connected();
            }
            match event {
                Err(status) => break status,
                Ok(None) => return Ok(()),
                Ok(Some(subscribe_response::Event::Batch(batch))) => {
                    for m in &batch.messages {
                        printer.print(m)?;
                        positions.insert((m.topic.clone(), m.partition), m.offset + 1);
                        if printer.done() {
                            return Ok(());
                        }
                    }
                    for p in &batch.positions {
                        positions.insert((p.topic.clone(), p.partition), p.next_offset);
                    }
                    printer.out.flush()?;
                }
                Ok(Some(subscribe_response::Event::TopicsChanged(changed))) => {
                    // Deleted topics are not resumed.
                    let now: BTreeSet<String> = changed.topics.iter().cloned().collect();
                    positions.retain(|(topic, _), _| now.contains(topic));
                    match &topics {
                        None => topics_note(pattern, &changed),
                        // After a reconnect: only what changed meanwhile.
                        Some(before) => topics_note(
                            pattern,
                            &TopicsChanged {
                                added: now.difference(before).cloned().collect(),
                                removed: before.difference(&now).cloned().collect(),
                                topics: changed.topics.clone(),
                            },
                        ),
                    }
                    topics = Some(now);
                }
                Ok(Some(subscribe_response::Event::PositionReset(reset))) => {
                    reset_note(&reset);
                    positions.insert((reset.topic.clone(), reset.partition), reset.to_offset);
                }
                Ok(Some(
                    subscribe_response::Event::Positioned(_)
                    | subscribe_response::Event::Assignment(_),
                )) => {}
            }
        };
        if !reconnectable(&ended) {
            return Err(stream_error(broker, &context, &ended, false));
        }
        // The broker restarted (or is stopping): subscribe again from where every
        // (topic, partition) stood.
        printer.out.flush()?;
        backoff.lost(&ended);
        if !backoff.wait(&mut stop).await {
            return Ok(());
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
