//! `tidelog queue consume`: print a queue's deliveries and ack each once printed.
//!
//! Credit is what the printer can take: at most [`WINDOW`] deliveries are unsettled at
//! once, and with `-n N` no more than N are ever asked for, so nothing is delivered
//! that will not be printed (a delivery taken and dropped would count as an attempt).
//! Each Deliveries event is printed and flushed, then acked in one Settle (consecutive
//! offsets as ranges); credit comes back as the broker confirms the acks. On exit the
//! stream ends only after every ack was answered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tidelog_proto::v1::QueueDelivery;

use super::args::QueueConsumeArgs;
use super::session::{Session, SessionError, SessionEvent, ack_ranges, nack, position};
use super::{StopSignal, queue_error};
use crate::args::Format;
use crate::client::Broker;
use crate::consume::{LineFormat, message_json};
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, note};

/// Most deliveries held (printed or not, unacked) at once.
const WINDOW: u64 = 256;
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

/// The error for a stream that failed or ended.
pub fn session_error(broker: &Broker, context: &str, error: SessionError) -> CliError {
    match error {
        SessionError::Status(status) => queue_error(broker, context, &status),
        SessionError::Ended => CliError::failure(
            format!("{context} failed: the broker ended the stream"),
            "retry; if it persists, check the tidelogd log",
        ),
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
    let first_credit = WINDOW.min(limit);
    let mut session = Session::open(broker.queues(), &args.name, CLIENT_ID, first_credit as u32)
        .await
        .map_err(|e| session_error(broker, &context, e))?;
    let mut credit_given = first_credit;
    let mut printed = 0u64;
    // Settle request id -> messages it acks.
    let mut waiting: HashMap<u64, u64> = HashMap::new();
    let mut last_delivery = Instant::now();
    let mut stop = StopSignal::new();
    let mut stopping = false;
    let outcome: CliResult<()> = loop {
        if (stopping || printed >= limit) && waiting.is_empty() {
            break Ok(());
        }
        let quiet_until = last_delivery + QUIET_SPELL;
        let event = tokio::select! {
            event = session.next() => event,
            _ = tokio::time::sleep_until(quiet_until.into()), if !args.follow && !stopping => {
                stopping = true;
                continue;
            }
            _ = stop.recv(), if !stopping => {
                stopping = true;
                continue;
            }
        };
        match event {
            Err(error) => break Err(session_error(broker, &context, error)),
            Ok(None) => {
                break Err(session_error(broker, &context, SessionError::Ended));
            }
            Ok(Some(SessionEvent::Deliveries(batch))) => {
                last_delivery = Instant::now();
                let mut acks = Vec::new();
                let mut unprinted = Vec::new();
                for d in &batch.deliveries {
                    if stopping || printed >= limit {
                        unprinted.push(d);
                        continue;
                    }
                    printer.print(d)?;
                    printed += 1;
                    acks.push(position(d));
                }
                // Ack only what reached the reader: a failed flush leaves them unacked
                // (delivered again rather than lost).
                printer.out.flush()?;
                if !acks.is_empty() {
                    let count = acks.len() as u64;
                    let id = session
                        .settle(ack_ranges(&mut acks))
                        .await
                        .map_err(|e| session_error(broker, &context, e))?;
                    waiting.insert(id, count);
                }
                if !unprinted.is_empty() {
                    // Taken while stopping: give them back at once.
                    let nacks = unprinted
                        .iter()
                        .map(|d| {
                            nack(
                                d,
                                Some(0),
                                "tidelog queue consume stopped before printing it".into(),
                            )
                        })
                        .collect();
                    let id = session
                        .settle(nacks)
                        .await
                        .map_err(|e| session_error(broker, &context, e))?;
                    waiting.insert(id, 0);
                }
            }
            Ok(Some(SessionEvent::Settled(settled))) => {
                let Some(count) = waiting.remove(&settled.request_id) else {
                    continue;
                };
                let acked: u64 = settled
                    .outcomes
                    .iter()
                    .filter(|o| o.code == 0)
                    .map(|o| o.settled)
                    .sum();
                if acked < count {
                    let why = settled
                        .outcomes
                        .iter()
                        .find(|o| o.code != 0)
                        .map(|o| format!(" ({})", o.message))
                        .unwrap_or_default();
                    note(&format!(
                        "warning: {} printed message{} could not be acked{why}: the ack deadline passed and the queue will deliver {} again",
                        count - acked,
                        if count - acked == 1 { "" } else { "s" },
                        if count - acked == 1 { "it" } else { "them" },
                    ));
                }
                if !stopping && count > 0 {
                    let more = count.min(limit.saturating_sub(credit_given));
                    credit_given += more;
                    session
                        .credit(more as u32)
                        .await
                        .map_err(|e| session_error(broker, &context, e))?;
                }
            }
        }
    };
    let flushed = printer.out.flush();
    outcome.and(flushed)
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
        };
        assert_eq!(
            delivery_json(&d).to_string(),
            r#"{"partition":2,"offset":9,"timestamp":1000,"key":null,"value":"job","headers":[],"attempt":3,"deadline":31000}"#
        );
    }
}
