//! `tidelog message get TOPIC ID`: a message by its message id
//! (`Messages.GetMessage`), as a table of its metadata or as one JSON object;
//! `tidelog message status | history`: what a queue or group did with a message
//! (`Messages.GetDeliveryStatus`, `Messages.GetDeliveryHistory`).

use bytes::Bytes;
use serde_json::{Value, json};
use tidelog_proto::v1::{
    ConsumedMessage, GetDeliveryHistoryRequest, GetDeliveryStatusRequest, GetMessageRequest,
    GetMessageResponse, MessagePosition, get_delivery_history_request, get_delivery_status_request,
    get_delivery_status_response,
};
use tidelog_storage::msgid;

use crate::args::{
    MessageCommand, MessageGetArgs, MessageHistoryArgs, MessageRefArgs, MessageStatusArgs,
};
use crate::client::Broker;
use crate::delivery;
use crate::error::{CliError, CliResult};
use crate::output::Table;
use crate::output::{Stdout, base64, bytes_json, preview, render_pairs};
use crate::time::format_datetime_ms;
use crate::units::format_bytes;

/// Longest key or header value shown in the table before it is cut (`--json` shows
/// them whole).
const PREVIEW_BYTES: usize = 200;

pub async fn run(broker: &Broker, command: MessageCommand, json: bool) -> CliResult<()> {
    match command {
        MessageCommand::Get(args) => get(broker, &args, json).await,
        MessageCommand::Status(args) => status(broker, &args, json).await,
        MessageCommand::History(args) => history(broker, &args, json).await,
    }
}

/// The message as named: its id, or its position.
enum Named {
    Id(Bytes),
    Position(MessagePosition),
}

fn named(args: &MessageRefArgs) -> Named {
    match (&args.id, args.partition, args.offset) {
        (Some(id), _, _) => Named::Id(Bytes::from(id.0.clone())),
        (None, partition, offset) => Named::Position(MessagePosition {
            partition: partition.unwrap_or(0),
            offset: offset.unwrap_or(0),
        }),
    }
}

/// How the message is named in error contexts.
fn shown(args: &MessageRefArgs) -> String {
    match named(args) {
        Named::Id(id) => format!("message {} in topic {:?}", msgid::display(&id), args.topic),
        Named::Position(p) => format!(
            "the message at partition {} offset {} of topic {:?}",
            p.partition, p.offset, args.topic
        ),
    }
}

/// The rows every answer starts with: where the message is.
fn position_pairs(
    topic: &str,
    partition: u32,
    offset: u64,
    id: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        ("topic", topic.to_string()),
        (
            "id",
            if id.is_empty() {
                "(none)".into()
            } else {
                msgid::display(id)
            },
        ),
        ("partition", partition.to_string()),
        ("offset", offset.to_string()),
    ]
}

async fn status(broker: &Broker, args: &MessageStatusArgs, json: bool) -> CliResult<()> {
    let message = match named(&args.message) {
        Named::Id(id) => get_delivery_status_request::Message::Id(id),
        Named::Position(p) => get_delivery_status_request::Message::Position(p),
    };
    let consumer = match (&args.queue, &args.group) {
        (Some(queue), _) => get_delivery_status_request::Consumer::Queue(queue.clone()),
        (None, Some(group)) => get_delivery_status_request::Consumer::Group(group.clone()),
        (None, None) => {
            return Err(CliError::usage(
                "whose view?",
                "give --queue QUEUE or --group GROUP",
            ));
        }
    };
    let context = format!("looking up the delivery status of {}", shown(&args.message));
    let response = broker
        .messages()
        .get_delivery_status(GetDeliveryStatusRequest {
            topic: args.message.topic.clone(),
            message: Some(message),
            consumer: Some(consumer),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner();
    let mut out = Stdout::new();
    let mut rows = position_pairs(
        &args.message.topic,
        response.partition,
        response.offset,
        &response.id,
    );
    match &response.status {
        Some(get_delivery_status_response::Status::Queue(status)) => {
            if json {
                out.json(&json!({
                    "topic": args.message.topic,
                    "partition": response.partition,
                    "offset": response.offset,
                    "id": (!response.id.is_empty()).then(|| msgid::display(&response.id)),
                    "queue": delivery::queue_status_json(status),
                }))?;
            } else {
                rows.extend(delivery::queue_status_pairs(status));
                out.text(&render_pairs(&rows))?;
            }
        }
        Some(get_delivery_status_response::Status::Group(status)) => {
            if json {
                out.json(&json!({
                    "topic": args.message.topic,
                    "partition": response.partition,
                    "offset": response.offset,
                    "id": (!response.id.is_empty()).then(|| msgid::display(&response.id)),
                    "group": delivery::group_status_json(status),
                }))?;
            } else {
                rows.extend(delivery::group_status_pairs(status));
                out.text(&render_pairs(&rows))?;
            }
        }
        None => {
            return Err(CliError::failure(
                "the broker answered without a status",
                "check the tidelogd version (tidelog broker describe)",
            ));
        }
    }
    out.flush()
}

async fn history(broker: &Broker, args: &MessageHistoryArgs, json: bool) -> CliResult<()> {
    let message = match named(&args.message) {
        Named::Id(id) => get_delivery_history_request::Message::Id(id),
        Named::Position(p) => get_delivery_history_request::Message::Position(p),
    };
    let context = format!(
        "looking up the delivery history of {} in queue {:?}",
        shown(&args.message),
        args.queue
    );
    let response = broker
        .messages()
        .get_delivery_history(GetDeliveryHistoryRequest {
            topic: args.message.topic.clone(),
            message: Some(message),
            queue: args.queue.clone(),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner();
    let mut out = Stdout::new();
    if json {
        let attempts: Vec<Value> = response
            .attempts
            .iter()
            .map(delivery::attempt_json)
            .collect();
        out.json(&json!({
            "topic": args.message.topic,
            "partition": response.partition,
            "offset": response.offset,
            "id": (!response.id.is_empty()).then(|| msgid::display(&response.id)),
            "status": response.status.as_ref().map(delivery::queue_status_json),
            "attempts": attempts,
            "history_attempts": response.history_attempts,
            "history_retention_ms": response.history_retention_ms,
        }))?;
        return out.flush();
    }
    let mut rows = position_pairs(
        &args.message.topic,
        response.partition,
        response.offset,
        &response.id,
    );
    if let Some(status) = &response.status {
        rows.extend(delivery::queue_status_pairs(status));
    }
    out.text(&render_pairs(&rows))?;
    out.line("")?;
    if response.attempts.is_empty() {
        out.line(&format!(
            "no delivery attempts in the history (kept {}, at most {} attempts per message)",
            tidelog_storage::duration::format_duration_ms(response.history_retention_ms),
            response.history_attempts
        ))?;
    } else {
        let mut table = Table::new(&[">ATTEMPT", "MEMBER", "DELIVERED", "OUTCOME", "AT", "REASON"]);
        for attempt in &response.attempts {
            table.row(delivery::attempt_row(attempt));
        }
        out.text(&table.render())?;
    }
    out.flush()
}

async fn get(broker: &Broker, args: &MessageGetArgs, json: bool) -> CliResult<()> {
    let id = Bytes::from(args.id.0.clone());
    let shown = msgid::display(&id);
    let response = broker
        .messages()
        .get_message(GetMessageRequest {
            topic: args.topic.clone(),
            id: id.clone(),
            include_value: args.value,
        })
        .await
        .map_err(|s| {
            broker.error(
                &format!("looking up message {shown} in topic {:?}", args.topic),
                &s,
            )
        })?
        .into_inner();
    let Some(message) = response.message.as_ref() else {
        return Err(CliError::failure(
            format!("the broker answered the lookup of message {shown} without the message"),
            "check the tidelogd version (tidelog broker describe)",
        ));
    };
    let mut out = Stdout::new();
    if json {
        out.json(&message_json(&args.topic, &response, message, args.value))?;
    } else {
        out.text(&render_pairs(&pairs(&args.topic, &response, message)))?;
        if args.value {
            match std::str::from_utf8(&message.value) {
                Ok(text) => {
                    out.line(&format!(
                        "value ({}):",
                        format_bytes(message.value.len() as u64)
                    ))?;
                    out.line(text)?;
                }
                Err(_) => {
                    out.line(&format!(
                        "value ({}, not UTF-8, in base64):",
                        format_bytes(message.value.len() as u64)
                    ))?;
                    out.line(&base64(&message.value))?;
                }
            }
        }
    }
    out.flush()
}

/// The table rows of a found message.
fn pairs(
    topic: &str,
    response: &GetMessageResponse,
    message: &ConsumedMessage,
) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("topic", topic.to_string()),
        ("id", msgid::display(&message.id)),
        ("partition", message.partition.to_string()),
        ("offset", message.offset.to_string()),
        (
            "timestamp",
            format!(
                "{} ({})",
                format_datetime_ms(message.timestamp_ms),
                message.timestamp_ms
            ),
        ),
        (
            "expires",
            message.expires_at_ms.map_or_else(
                || "never".to_string(),
                |at| format!("{} ({at})", format_datetime_ms(at)),
            ),
        ),
        (
            "size",
            format!(
                "{} (id, key, value and headers)",
                format_bytes(response.size_bytes)
            ),
        ),
        (
            "key",
            if message.key.is_empty() {
                "(none)".to_string()
            } else {
                preview(&message.key, PREVIEW_BYTES)
            },
        ),
    ];
    if let Some(at) = message.deliver_at_ms {
        rows.push(("deliver-at", format!("{} ({at})", format_datetime_ms(at))));
    }
    if message.priority > 0 {
        rows.push(("priority", message.priority.to_string()));
    }
    if message.headers.is_empty() {
        rows.push(("headers", "(none)".to_string()));
    }
    for header in &message.headers {
        rows.push((
            "header",
            format!(
                "{}={}",
                preview(header.key.as_bytes(), PREVIEW_BYTES),
                preview(&header.value, PREVIEW_BYTES)
            ),
        ));
    }
    rows
}

/// The JSON form: every field always present (null when absent), the value only with
/// `--value`.
fn message_json(
    topic: &str,
    response: &GetMessageResponse,
    message: &ConsumedMessage,
    with_value: bool,
) -> Value {
    let headers: Vec<Value> = message
        .headers
        .iter()
        .map(|h| json!({"key": h.key, "value": bytes_json(&h.value)}))
        .collect();
    let mut object = json!({
        "topic": topic,
        "id": msgid::display(&message.id),
        "partition": message.partition,
        "offset": message.offset,
        "timestamp": message.timestamp_ms,
        "expires_at": message.expires_at_ms,
        "size_bytes": response.size_bytes,
        "key": if message.key.is_empty() { Value::Null } else { bytes_json(&message.key) },
        "headers": headers,
        "deliver_at": message.deliver_at_ms,
        "priority": message.priority,
    });
    if with_value && let Some(fields) = object.as_object_mut() {
        fields.insert("value".into(), bytes_json(&message.value));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_proto::v1::Header;

    fn response() -> GetMessageResponse {
        GetMessageResponse {
            message: Some(ConsumedMessage {
                partition: 1,
                offset: 42,
                timestamp_ms: 1_700_000_000_000,
                expires_at_ms: None,
                key: Bytes::new(),
                value: Bytes::from_static(&[0xff, 0x00]),
                headers: vec![Header {
                    key: "trace".into(),
                    value: Bytes::from_static(b"abc"),
                }],
                id: Bytes::from_static(b"order-17"),
                deliver_at_ms: None,
                priority: 0,
                topic: String::new(),
            }),
            size_bytes: 18,
        }
    }

    #[test]
    fn json_has_every_field_and_the_value_only_when_asked() {
        let response = response();
        let message = response.message.as_ref().unwrap();
        let without = message_json("orders", &response, message, false);
        assert_eq!(without["id"], "order-17");
        assert_eq!(without["offset"], 42);
        assert_eq!(without["expires_at"], Value::Null);
        assert_eq!(without["key"], Value::Null);
        assert_eq!(without["headers"][0]["value"], "abc");
        assert!(without.get("value").is_none());
        let with = message_json("orders", &response, message, true);
        assert_eq!(with["value"], json!({"base64": "/wA="}));
    }

    #[test]
    fn the_table_names_every_field() {
        let response = response();
        let rows = pairs("orders", &response, response.message.as_ref().unwrap());
        let row = |name: &str| {
            rows.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(row("offset"), "42");
        assert_eq!(row("expires"), "never");
        assert_eq!(row("key"), "(none)");
        assert!(row("timestamp").starts_with("2023-11-14T22:13:20.000Z"));
        assert_eq!(row("header"), "\"trace\"=\"abc\"");
    }
}
