//! `tidelog queue consume`: print a queue's deliveries and ack each once printed.
//!
//! It reads through tidelog-client's [`QueueConsumer`] (the `Consume` stream), without
//! its reconnect: a broken stream is this command's error. Credit is what the printer
//! can take: at most [`WINDOW`] deliveries are unsettled at once, and with `-n N` no
//! more than N are ever asked for (the consumer's limit), so nothing is delivered that
//! will not be printed (a delivery taken and dropped would count as an attempt). Each
//! batch of deliveries the broker sent together is printed and flushed, then acked in
//! one Settle (`Delivery::ack_all`: consecutive offsets as ranges); the consumer gives
//! the credit back as the broker confirms the acks. It exits only after every ack was
//! answered.

use std::time::{Duration, Instant};

use serde_json::Value;
use tidelog_client::{Delivery, QueueConsumer, QueueConsumerOptions, Settle};
use tidelog_proto::v1::QueueDelivery;

use super::args::QueueConsumeArgs;
use super::{StopSignal, queue_error};
use crate::args::Format;
use crate::client::{Broker, broker_status};
use crate::consume::{LineFormat, message_json};
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, note};

/// Most deliveries held (printed or not, unacked) at once.
const WINDOW: u32 = 256;
/// Without --follow: stop once the queue delivered nothing for this long.
const QUIET_SPELL: Duration = Duration::from_secs(1);
/// Shown to the broker as the member's client id.
const CLIENT_ID: &str = "tidelog-cli";

struct Printer {
    out: Stdout,
    line: LineFormat,
}

impl Printer {
    fn print(&mut self, d: &QueueDelivery) -> CliResult<()> {
        let Some(m) = d.message.as_ref() else {
            return Ok(());
        };
        match self.line.format {
            Format::Json => self.out.json(&delivery_json(d)),
            Format::Text | Format::Base64 => {
                self.line
                    .write(&mut self.out, m, &format!(" attempt {}", d.attempt))
            }
        }
    }
}

/// A delivery as a JSON line: the message as `tidelog consume --json` prints it, plus
/// `attempt` and `deadline` (ms since the epoch).
pub fn delivery_json(d: &QueueDelivery) -> Value {
    let mut value = d
        .message
        .as_ref()
        .map_or_else(|| Value::Object(Default::default()), message_json);
    if let Value::Object(map) = &mut value {
        map.insert("attempt".into(), d.attempt.into());
        map.insert("deadline".into(), d.deadline_ms.into());
    }
    value
}

/// The options of the CLI's consumers: `credit` at once, `limit` in all, no
/// reconnect (a broken stream is the command's error, as it always was).
pub fn consumer_options(client_id: &str, credit: u32, limit: Option<u64>) -> QueueConsumerOptions {
    QueueConsumerOptions {
        client_id: client_id.to_string(),
        credit,
        limit,
        reconnect: false,
    }
}

/// The error for a consumer that failed or whose stream ended.
pub fn consumer_error(broker: &Broker, context: &str, error: &tidelog_client::Error) -> CliError {
    match error {
        tidelog_client::Error::Closed | tidelog_client::Error::LeaseLost { .. } => {
            CliError::failure(
                format!("{context} failed: the broker ended the stream"),
                "retry; if it persists, check the tidelogd log",
            )
        }
        error => match broker_status(error) {
            Some(status) => queue_error(broker, context, &status),
            None => broker.client_error(context, error),
        },
    }
}

/// Why a settlement failed: the stream's own error when the stream broke (a lost
/// lease says only that), else `error`.
pub async fn settle_failure(
    consumer: &mut QueueConsumer,
    error: tidelog_client::Error,
) -> tidelog_client::Error {
    if !matches!(error, tidelog_client::Error::LeaseLost { .. }) {
        return error;
    }
    // Without reconnect the consumer's next read is the stream's error.
    loop {
        match consumer.next_event().await {
            Err(stream_error) => return stream_error,
            Ok(_) => continue,
        }
    }
}

/// What the broker said when it refused a settlement (its own words, as before).
pub fn refusal_text(error: &tidelog_client::Error) -> String {
    match error {
        tidelog_client::Error::SettleRefused { message, .. }
        | tidelog_client::Error::InvalidArgument { message, .. } => message.clone(),
        error => error.to_string(),
    }
}

pub async fn run(broker: &Broker, args: QueueConsumeArgs, json: bool) -> CliResult<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    let mut printer = Printer {
        out: Stdout::new(),
        line: LineFormat {
            format: if json { Format::Json } else { args.format },
            print_key: args.print_key,
            print_meta: args.print_meta,
            print_headers: args.print_headers,
            key_separator: args.key_separator.as_bytes().to_vec(),
            delimiter: b"\n".to_vec(),
        },
    };
    let context = format!("consuming queue {:?}", args.name);
    let limit = args.count.unwrap_or(u64::MAX);
    let options = consumer_options(CLIENT_ID, WINDOW, args.count);
    let mut consumer = QueueConsumer::open(broker, &args.name, options)
        .await
        .map_err(|e| consumer_error(broker, &context, &e))?;
    let mut printed = 0u64;
    let mut last_delivery = Instant::now();
    let mut stop = StopSignal::new();
    let mut stopping = false;
    let outcome: CliResult<()> = loop {
        if stopping || printed >= limit {
            break Ok(());
        }
        let quiet_until = last_delivery + QUIET_SPELL;
        let batch = tokio::select! {
            batch = consumer.next_batch() => batch,
            _ = tokio::time::sleep_until(quiet_until.into()), if !args.follow => {
                stopping = true;
                continue;
            }
            _ = stop.recv() => {
                stopping = true;
                continue;
            }
        };
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => break Err(consumer_error(broker, &context, &error)),
        };
        last_delivery = Instant::now();
        let mut acks = Vec::new();
        let mut unprinted = Vec::new();
        for d in batch {
            if printed >= limit {
                unprinted.push(d);
                continue;
            }
            printer.print(&d.to_proto())?;
            printed += 1;
            acks.push(d);
        }
        // Ack only what reached the reader: a failed flush leaves them unacked
        // (delivered again rather than lost).
        printer.out.flush()?;
        if let Err(error) = ack_printed(&mut consumer, &acks).await {
            break Err(consumer_error(broker, &context, &error));
        }
        // Taken past the limit (never, with the consumer's limit): give them back.
        if let Err(error) = give_back(&mut consumer, unprinted).await {
            break Err(consumer_error(broker, &context, &error));
        }
    };
    consumer.close().await;
    let flushed = printer.out.flush();
    outcome.and(flushed)
}

/// Nacks deliveries that will not be printed, to be delivered again at once.
async fn give_back(
    consumer: &mut QueueConsumer,
    deliveries: Vec<Delivery>,
) -> Result<(), tidelog_client::Error> {
    for d in deliveries {
        let settle = Settle::Nack {
            delay: Some(Duration::ZERO),
            reason: "tidelog queue consume stopped before printing it".into(),
        };
        match d.settle(settle).await {
            Ok(_) | Err(tidelog_client::Error::SettleRefused { .. }) => {}
            Err(error) => return Err(settle_failure(consumer, error).await),
        }
    }
    Ok(())
}

/// Acks the printed deliveries in one Settle; warns about those the broker no longer
/// held (their deadline passed: they come again).
async fn ack_printed(
    consumer: &mut QueueConsumer,
    acks: &[Delivery],
) -> Result<(), tidelog_client::Error> {
    if acks.is_empty() {
        return Ok(());
    }
    let count = acks.len() as u64;
    let ranges = match Delivery::ack_all(acks).await {
        Ok(ranges) => ranges,
        Err(error) => return Err(settle_failure(consumer, error).await),
    };
    let acked: u64 = ranges.iter().filter_map(|r| r.outcome.as_ref().ok()).sum();
    if acked < count {
        let why = ranges
            .iter()
            .find_map(|r| r.outcome.as_ref().err())
            .map(|e| format!(" ({})", refusal_text(e)))
            .unwrap_or_default();
        note(&format!(
            "warning: {} printed message{} could not be acked{why}: the ack deadline passed and the queue will deliver {} again",
            count - acked,
            if count - acked == 1 { "" } else { "s" },
            if count - acked == 1 { "it" } else { "them" },
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tidelog_proto::v1::ConsumedMessage;

    #[test]
    fn deliveries_are_json_lines_with_their_attempt() {
        let d = QueueDelivery {
            message: Some(ConsumedMessage {
                partition: 2,
                offset: 9,
                timestamp_ms: 1_000,
                value: Bytes::from_static(b"job"),
                ..ConsumedMessage::default()
            }),
            attempt: 3,
            deadline_ms: 31_000,
            receipt: String::new(),
        };
        assert_eq!(
            delivery_json(&d).to_string(),
            r#"{"partition":2,"offset":9,"timestamp":1000,"key":null,"value":"job","headers":[],"attempt":3,"deadline":31000}"#
        );
    }
}
