//! `tidelog consume` without a group or `--follow`: unary `Fetch` per partition, from
//! the start position up to the end offsets seen at the start; exact and finite.

use tidelog_proto::v1::FetchRequest;

use super::damage::{Damage, damage_error};
use super::printer::Printer;
use super::start::{offsets_for_time, out_of_range_start, topic_and_partitions};
use crate::args::{ConsumeArgs, StartAt};
use crate::client::Broker;
use crate::error::CliResult;

/// Most messages asked for per fetch.
const FETCH_MESSAGES_MAX: u32 = 10_000;

pub(super) async fn consume_fetch(
    broker: &Broker,
    args: &ConsumeArgs,
    printer: &mut Printer,
) -> CliResult<()> {
    let (topic, partitions) = topic_and_partitions(broker, args).await?;
    let by_time = match args.from {
        Some(StartAt::TimestampMs(ms)) => {
            Some(offsets_for_time(broker, &args.topic, &partitions, ms).await?)
        }
        _ => None,
    };
    let mut consumer = broker.consumer();
    let mut damaged = Vec::new();
    for &partition in &partitions {
        let Some(state) = topic.partitions.iter().find(|p| p.partition == partition) else {
            continue;
        };
        let (log_start, end) = (state.log_start_offset, state.end_offset);
        let mut offset = match args.from.unwrap_or(StartAt::Earliest) {
            StartAt::Earliest => log_start,
            StartAt::Latest => end,
            StartAt::Offset(o) if o < log_start || o > end => {
                out_of_range_start(args, partition, o, log_start, end)?
            }
            StartAt::Offset(o) => o,
            StartAt::TimestampMs(_) => by_time
                .as_ref()
                .and_then(|m| m.get(&partition).copied())
                .unwrap_or(end),
        };
        let context = format!("fetching from {}/{partition}", args.topic);
        while offset < end && !printer.done() {
            let left = printer
                .limit
                .map_or(u64::MAX, |limit| limit - printer.printed);
            let fetched = consumer
                .fetch(FetchRequest {
                    topic: args.topic.clone(),
                    partition,
                    offset,
                    max_messages: left.min(u64::from(FETCH_MESSAGES_MAX)) as u32,
                    max_bytes: 0,
                    max_wait_ms: 0,
                    filter: args.filter.clone().unwrap_or_default(),
                })
                .await;
            let response = match fetched {
                Ok(response) => response.into_inner(),
                // The messages before the damage were printed; the other partitions
                // are read on, and the damage is reported at the end.
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    let damage = Damage::new(partition, offset, &status);
                    damage.warn(&args.topic);
                    damaged.push(damage);
                    break;
                }
                Err(status) => return Err(broker.error(&context, &status)),
            };
            let mut reached_until = false;
            for m in response.messages.iter().filter(|m| m.offset < end) {
                if printer.past_until(m) {
                    reached_until = true;
                    break;
                }
                printer.print(m)?;
                if printer.done() {
                    return damage_error(&args.topic, &damaged);
                }
            }
            if reached_until || printer.reached_until(response.next_offset) {
                break;
            }
            if response.next_offset <= offset {
                break; // nothing more is readable below `end`
            }
            offset = response.next_offset;
        }
        if printer.done() {
            break;
        }
    }
    damage_error(&args.topic, &damaged)
}
