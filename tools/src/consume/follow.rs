//! `tidelog consume --follow` without a group: one `Subscribe` stream from the start
//! position, subscribed again from where every partition stood after the broker went
//! away or a damaged partition was dropped.

use std::collections::BTreeMap;

use tidelog_proto::v1::{
    StartPosition, SubscribeRequest, start_position, subscribe_request, subscribe_response,
};

use super::damage::{Damage, damage_error, probe_damage};
use super::printer::Printer;
use super::start::{reset_note, reset_policy};
use super::stream::{
    Reconnect, StopSignal, next_status_event, reconnectable, sleep_until_opt, stream_error,
    until_deadline,
};
use crate::args::{ConsumeArgs, StartAt};
use crate::client::Broker;
use crate::error::CliResult;

pub(super) async fn consume_follow(
    broker: &Broker,
    args: &ConsumeArgs,
    printer: &mut Printer,
) -> CliResult<()> {
    let position = match args.from.unwrap_or(StartAt::Earliest) {
        StartAt::Earliest => start_position::Position::Earliest(start_position::Earliest {}),
        StartAt::Latest => start_position::Position::Latest(start_position::Latest {}),
        StartAt::Offset(o) => start_position::Position::Offset(o),
        StartAt::TimestampMs(ms) => start_position::Position::TimestampMs(ms),
    };
    let context = format!("subscribing to topic {:?}", args.topic);
    let mut partitions = args.partition.clone();
    partitions.sort_unstable();
    partitions.dedup();
    // Where each partition stands: from the Positioned event, then every batch's
    // positions. A resubscription (after a damaged partition is dropped) starts each
    // remaining partition there.
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let mut damaged: Vec<Damage> = Vec::new();
    // Partitions that reached --until: their later messages are not printed.
    let mut finished: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let until_clock = until_deadline(printer.until);
    let mut stop = StopSignal::new();
    let mut backoff = Reconnect::default();
    loop {
        let request = if positions.is_empty() {
            SubscribeRequest {
                topic: args.topic.clone(),
                partitions: partitions.clone(),
                start: Some(StartPosition {
                    position: Some(position),
                }),
                ..SubscribeRequest::default()
            }
        } else {
            SubscribeRequest {
                topic: args.topic.clone(),
                partition_starts: positions
                    .iter()
                    .map(|(&partition, &offset)| subscribe_request::PartitionStart {
                        partition,
                        offset,
                        topic: String::new(),
                    })
                    .collect(),
                ..SubscribeRequest::default()
            }
        };
        let subscribed = broker
            .consumer()
            .subscribe(SubscribeRequest {
                group: None,
                reset_policy: reset_policy(args.offset_reset) as i32,
                send_positioned: true,
                filter: args.filter.clone().unwrap_or_default(),
                ..request
            })
            .await;
        let mut stream = match subscribed {
            Ok(stream) => stream.into_inner(),
            Err(status) if backoff.is_retrying() && reconnectable(&status) => {
                if !backoff.wait(&mut stop).await {
                    return damage_error(&args.topic, &damaged);
                }
                continue;
            }
            Err(status) => return Err(broker.error(&context, &status)),
        };
        let ended = loop {
            if !positions.is_empty() && positions.keys().all(|p| finished.contains(p)) {
                return damage_error(&args.topic, &damaged);
            }
            let event = tokio::select! {
                event = next_status_event(&mut stream) => event,
                _ = stop.recv() => return damage_error(&args.topic, &damaged),
                _ = sleep_until_opt(until_clock) => return damage_error(&args.topic, &damaged),
            };
            if event.is_ok() {
                backoff.connected();
            }
            match event {
                Err(status) => break status,
                Ok(None) => return damage_error(&args.topic, &damaged),
                Ok(Some(subscribe_response::Event::Batch(batch))) => {
                    for m in &batch.messages {
                        if finished.contains(&m.partition) {
                            continue;
                        }
                        if printer.past_until(m) {
                            finished.insert(m.partition);
                            continue;
                        }
                        printer.print(m)?;
                        positions.insert(m.partition, m.offset + 1);
                        if printer.done() {
                            return damage_error(&args.topic, &damaged);
                        }
                    }
                    for p in &batch.positions {
                        if !finished.contains(&p.partition) {
                            positions.insert(p.partition, p.next_offset);
                        }
                    }
                    finished.extend(
                        positions
                            .iter()
                            .filter(|(_, next)| printer.reached_until(**next))
                            .map(|(p, _)| *p),
                    );
                    // A pipe reader (`| grep`) sees each batch as it arrives.
                    printer.out.flush()?;
                }
                Ok(Some(subscribe_response::Event::PositionReset(reset))) => {
                    reset_note(&reset);
                    positions.insert(reset.partition, reset.to_offset);
                }
                Ok(Some(subscribe_response::Event::Positioned(positioned))) => {
                    for p in &positioned.positions {
                        positions.insert(p.partition, p.next_offset);
                        if printer.reached_until(p.next_offset) {
                            finished.insert(p.partition);
                        }
                    }
                }
                Ok(Some(
                    subscribe_response::Event::Assignment(_)
                    | subscribe_response::Event::TopicsChanged(_),
                )) => {}
            }
        };
        if reconnectable(&ended) {
            // The broker restarted (or is stopping): subscribe again from where every
            // partition stood, as kcat and `nats sub` do.
            printer.out.flush()?;
            backoff.lost(&ended);
            if !backoff.wait(&mut stop).await {
                return damage_error(&args.topic, &damaged);
            }
            continue;
        }
        if ended.code() != tonic::Code::DataLoss || positions.is_empty() {
            return Err(stream_error(broker, &context, &ended, false));
        }
        // Which partition is damaged: the one whose next read fails. Drop it and go on
        // with the others from where each stood.
        printer.out.flush()?;
        let found = probe_damage(broker, &args.topic, &positions).await;
        if found.is_empty() {
            return Err(stream_error(broker, &context, &ended, false));
        }
        for damage in found {
            damage.warn(&args.topic);
            positions.remove(&damage.partition);
            damaged.push(damage);
        }
        if positions.is_empty() {
            return damage_error(&args.topic, &damaged);
        }
    }
}
