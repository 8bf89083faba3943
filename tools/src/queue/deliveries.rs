//! `tidelog queue deliveries QUEUE`: a queue's delivery events newest first
//! (`Queues.ListDeliveries`), one page, as a table or as JSON, with the cursor of the
//! next page.

use bytes::Bytes;
use serde_json::{Value, json};
use tidelog_proto::v1::{DeliveryFilter, Header, ListDeliveriesRequest};

use super::args::{DeliveryState, QueueDeliveriesArgs};
use super::queue_error;
use crate::client::Broker;
use crate::delivery;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, Table};
use crate::time::format_datetime_ms;

fn filter(state: DeliveryState) -> DeliveryFilter {
    match state {
        DeliveryState::All => DeliveryFilter::All,
        DeliveryState::Delivered => DeliveryFilter::Delivered,
        DeliveryState::Unacked => DeliveryFilter::Unacked,
        DeliveryState::Acked => DeliveryFilter::Acked,
        DeliveryState::Failed => DeliveryFilter::Failed,
        DeliveryState::Nacked => DeliveryFilter::Nacked,
        DeliveryState::TimedOut => DeliveryFilter::TimedOut,
        DeliveryState::Terminated => DeliveryFilter::Terminated,
        DeliveryState::DeadLettered => DeliveryFilter::DeadLettered,
        DeliveryState::Extended => DeliveryFilter::Extended,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(broker: &Broker, args: QueueDeliveriesArgs, json: bool) -> CliResult<()> {
    let now = now_ms();
    let context = format!("listing the deliveries of queue {:?}", args.name);
    let since_ms = args.since.map(|m| m.at_ms(now));
    let until_ms = args.until.map(|m| m.at_ms(now));
    if let (Some(since), Some(until)) = (since_ms, until_ms)
        && since > until
    {
        // The broker refuses it too, in its request's terms (since_ms, until_ms).
        return Err(CliError::usage(
            format!(
                "--since ({}) is after --until ({})",
                format_datetime_ms(since),
                format_datetime_ms(until)
            ),
            "give an earlier --since; a duration counts back from now (--since 2h --until 1h)",
        ));
    }
    let response = broker
        .queues()
        .list_deliveries(ListDeliveriesRequest {
            queue: args.name.clone(),
            filter: filter(args.state) as i32,
            since_ms,
            until_ms,
            header: args.header.clone().map(|(key, value)| Header {
                key,
                value: Bytes::from(value),
            }),
            limit: args.limit,
            cursor: args.cursor.clone().unwrap_or_default(),
            topic: args.topic.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| queue_error(broker, &context, &s))?
        .into_inner();
    let mut out = Stdout::new();
    if json {
        let events: Vec<Value> = response
            .deliveries
            .iter()
            .map(delivery::event_json)
            .collect();
        out.json(&json!({
            "queue": args.name,
            "deliveries": events,
            "next_cursor": (!response.next_cursor.is_empty()).then_some(&response.next_cursor),
        }))?;
        return out.flush();
    }
    if response.deliveries.is_empty() {
        out.line(if args.cursor.is_some() {
            "no more deliveries"
        } else {
            "no deliveries match (only events within the queue's history retention are kept)"
        })?;
    } else {
        let mut table = Table::new(&[
            "AT",
            ">PARTITION",
            ">OFFSET",
            "ID",
            ">ATTEMPT",
            "OUTCOME",
            "MEMBER",
            "REASON",
        ]);
        for event in &response.deliveries {
            table.row(delivery::event_row(event));
        }
        out.text(&table.render())?;
    }
    if !response.next_cursor.is_empty() {
        out.line(&format!("next page: --cursor {}", response.next_cursor))?;
    }
    out.flush()
}
