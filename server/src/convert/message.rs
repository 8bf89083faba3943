//! Messages looked up by id ([`tidelog_storage::FoundMessage`]) and the statuses of a
//! lookup, between the API and the storage engine.

use bytes::Bytes;
use tidelog_proto::v1 as pb;
use tidelog_storage::{FoundMessage, msgid};
use tonic::Status;

use super::consumed_message;

/// The answer to a Messages.GetMessage that found `found`; the value is left out
/// unless `include_value` (its size still counts in `size_bytes`).
pub fn get_message_response(found: FoundMessage, include_value: bool) -> pb::GetMessageResponse {
    let size_bytes = found.record.payload_bytes();
    let mut message = consumed_message(found.partition, found.record);
    if !include_value {
        message.value = Bytes::new();
    }
    pb::GetMessageResponse {
        message: Some(message),
        size_bytes,
    }
}

/// NOT_FOUND for an id no message of `topic` carries, naming both (the id in its one
/// text form).
pub fn message_not_found(topic: &str, id: &[u8]) -> Status {
    Status::not_found(format!(
        "no message with id {} in topic {topic:?}; none was published with that id, or it expired or retention removed it",
        msgid::display(id)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_storage::Record;

    fn found() -> FoundMessage {
        FoundMessage {
            partition: 2,
            record: Record {
                offset: 41,
                timestamp_ms: 1_700_000_000_000,
                expires_at_ms: Some(1_700_000_060_000),
                key: Some(Bytes::from_static(b"k")),
                value: Bytes::from_static(b"value"),
                headers: vec![tidelog_storage::Header {
                    key: "h".into(),
                    value: Bytes::from_static(b"v"),
                }],
                id: Some(Bytes::from_static(b"order-1")),
                deliver_at_ms: None,
                priority: 0,
            },
        }
    }

    #[test]
    fn the_value_comes_only_on_request_and_the_size_always() {
        let with = get_message_response(found(), true);
        let message = with.message.unwrap();
        assert_eq!((message.partition, message.offset), (2, 41));
        assert_eq!(message.value, "value");
        assert_eq!(message.expires_at_ms, Some(1_700_000_060_000));
        assert_eq!(message.headers[0].key, "h");
        assert_eq!(with.size_bytes, 7 + 1 + 5 + 2);
        let without = get_message_response(found(), false);
        assert!(without.message.unwrap().value.is_empty());
        assert_eq!(without.size_bytes, with.size_bytes);
    }

    #[test]
    fn not_found_names_the_topic_and_the_id() {
        let status = message_not_found("orders", b"order-1");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("order-1"), "{status:?}");
        assert!(status.message().contains("\"orders\""), "{status:?}");
        let binary = message_not_found("orders", &[0, 1, 2]);
        assert!(binary.message().contains("0x000102"), "{binary:?}");
    }
}
