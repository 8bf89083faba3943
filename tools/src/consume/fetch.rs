//! `tidelog consume` without a group or `--follow`: reads of each partition through
//! tidelog-client's [`tidelog_client::Client::fetch`] (`FetchBatches`, whole stored
//! batches decoded client-side), from the start position up to the end offsets seen
//! at the start; exact and finite.

use tidelog_client::FetchOptions;

use super::damage::{Damage, Unavailable, damage_error, unavailable_error};
use super::printer::Printer;
use super::start::{offsets_for_time, out_of_range_start, topic_and_partitions};
use crate::args::{ConsumeArgs, StartAt};
use crate::client::{Broker, broker_status};
use crate::error::CliResult;

/// Most messages asked for per fetch.
const FETCH_MESSAGES_MAX: u32 = 10_000;

pub(super) async fn consume_fetch(
    broker: &Broker,
    args: &ConsumeArgs,
    printer: &mut Printer,
) -> CliResult<()> {
    let (topic, partitions) = topic_and_partitions(broker, args).await?;
    // A partition recovery refused to open has no offsets to read from: it is named
    // at once, the others are read, and the command fails at the end naming it.
    let unavailable: Vec<Unavailable> = topic
        .partitions
        .iter()
        .filter(|p| p.unavailable && partitions.contains(&p.partition))
        .map(|p| Unavailable::new(p.partition, &p.unavailable_reason))
        .collect();
    let readable: Vec<u32> = partitions
        .iter()
        .copied()
        .filter(|p| !unavailable.iter().any(|u| u.partition == *p))
        .collect();
    let by_time = match args.from {
        Some(StartAt::TimestampMs(ms)) if !readable.is_empty() => {
            Some(offsets_for_time(broker, &args.topic, &readable, ms).await?)
        }
        _ => None,
    };
    let mut damaged = Vec::new();
    for &partition in &partitions {
        if let Some(refused) = unavailable.iter().find(|u| u.partition == partition) {
            refused.warn(&args.topic);
            continue;
        }
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
            let options = FetchOptions {
                max_messages: left.min(u64::from(FETCH_MESSAGES_MAX)) as u32,
                filter: args.filter.clone().unwrap_or_default(),
                // The topic described above: if it is deleted and created again
                // while this reads, the read stops rather than going on in the new one.
                topic_id: topic.topic_id,
                ..FetchOptions::default()
            };
            let response = match broker.fetch(&args.topic, partition, offset, &options).await {
                Ok(response) => response,
                Err(error) => match broker_status(&error) {
                    // The messages before the damage were printed; the other partitions
                    // are read on, and the damage is reported at the end.
                    Some(status) if status.code() == tonic::Code::DataLoss => {
                        let damage = Damage::new(partition, offset, &status);
                        damage.warn(&args.topic);
                        damaged.push(damage);
                        break;
                    }
                    _ => return Err(broker.client_error(&context, &error)),
                },
            };
            let mut reached_until = false;
            for message in response.messages.into_iter().filter(|m| m.offset < end) {
                // One topic: its name is not printed with each message.
                let mut m = message.into_proto();
                m.topic.clear();
                if printer.past_until(&m) {
                    reached_until = true;
                    break;
                }
                printer.print(&m)?;
                if printer.done() {
                    unavailable_error(&args.topic, &unavailable)?;
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
    unavailable_error(&args.topic, &unavailable)?;
    damage_error(&args.topic, &damaged)
}
