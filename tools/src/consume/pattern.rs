//! `tidelog consume --topic-pattern REGEX`: one `Subscribe` stream by topic pattern.
//! It follows (a pattern has no end: topics created later that match are read too),
//! prints each message with its topic, and says on stderr when the set of topics read
//! changes. A stream the broker ends is an error: a pattern stream cannot resume each
//! topic's partitions where they stood (the broker starts topics it finds from their
//! start), so it is not reopened behind the reader's back.

use tidelog_proto::v1::{
    StartPosition, SubscribeRequest, TopicsChanged, start_position, subscribe_response,
};

use super::printer::Printer;
use super::start::{reset_note, reset_policy};
use super::stream::{StopSignal, next_status_event, stream_error};
use crate::cli::{ConsumeArgs, StartAt};
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
    let subscribed = broker
        .consumer()
        .subscribe(SubscribeRequest {
            topic_pattern: pattern.to_string(),
            start: Some(StartPosition {
                position: Some(position),
            }),
            reset_policy: reset_policy(args.offset_reset) as i32,
            filter: args.filter.clone().unwrap_or_default(),
            ..SubscribeRequest::default()
        })
        .await;
    let mut stream = match subscribed {
        Ok(stream) => stream.into_inner(),
        Err(status) => return Err(broker.error(&context, &status)),
    };
    let mut stop = StopSignal::new();
    loop {
        let event = tokio::select! {
            event = next_status_event(&mut stream) => event,
            _ = stop.recv() => return Ok(()),
        };
        match event {
            Err(status) => return Err(stream_error(broker, &context, &status, false)),
            Ok(None) => return Ok(()),
            Ok(Some(subscribe_response::Event::Batch(batch))) => {
                for m in &batch.messages {
                    printer.print(m)?;
                    if printer.done() {
                        return Ok(());
                    }
                }
                printer.out.flush()?;
            }
            Ok(Some(subscribe_response::Event::TopicsChanged(changed))) => {
                topics_note(pattern, &changed)
            }
            Ok(Some(subscribe_response::Event::PositionReset(reset))) => reset_note(&reset),
            Ok(Some(
                subscribe_response::Event::Positioned(_) | subscribe_response::Event::Assignment(_),
            )) => {}
        }
    }
}

/// Says on stderr which topics the pattern stream reads now.
fn topics_note(pattern: &str, changed: &TopicsChanged) {
    if changed.topics.is_empty() && changed.removed.is_empty() {
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
