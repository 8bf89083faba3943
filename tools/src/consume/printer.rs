//! How `tidelog consume` prints a message: text (key, metadata and headers on
//! request), base64 or JSON lines, and when printing is done (`-n`, `--until`).

use serde_json::{Value, json};
use tidelog_proto::v1::ConsumedMessage;
use tidelog_storage::msgid;

use crate::args::{ConsumeArgs, Format, Until};
use crate::error::CliResult;
use crate::output::{Stdout, bytes_json};
use crate::time::format_datetime_ms;

/// How one message becomes output: the format and the text format's fields. Shared by
/// `tidelog consume` and `tidelog queue consume`.
pub struct LineFormat {
    pub format: Format,
    pub print_key: bool,
    pub print_meta: bool,
    pub print_headers: bool,
    pub key_separator: Vec<u8>,
    /// What follows each message in the text and base64 formats.
    pub delimiter: Vec<u8>,
}

impl LineFormat {
    /// Writes `m` to `out`; `meta` is appended to the metadata field (text formats).
    pub fn write(&self, out: &mut Stdout, m: &ConsumedMessage, meta: &str) -> CliResult<()> {
        match self.format {
            Format::Json => out.json(&message_json(m)),
            Format::Text | Format::Base64 => {
                let base64 = self.format == Format::Base64;
                let bytes = |b: &[u8]| -> Vec<u8> {
                    if base64 {
                        crate::output::base64(b).into_bytes()
                    } else {
                        b.to_vec()
                    }
                };
                let mut line = Vec::with_capacity(m.value.len() + m.key.len() + 48);
                if self.print_meta {
                    if !m.topic.is_empty() {
                        line.extend_from_slice(m.topic.as_bytes());
                        line.push(b'/');
                    }
                    line.extend_from_slice(
                        format!(
                            "{}:{} {}",
                            m.partition,
                            m.offset,
                            format_datetime_ms(m.timestamp_ms)
                        )
                        .as_bytes(),
                    );
                    if !m.id.is_empty() {
                        line.extend_from_slice(b" id=");
                        line.extend_from_slice(msgid::display(&m.id).as_bytes());
                    }
                    line.extend_from_slice(meta.as_bytes());
                    line.push(b'\t');
                }
                if self.print_key {
                    line.extend_from_slice(&bytes(&m.key));
                    line.extend_from_slice(&self.key_separator);
                }
                if self.print_headers {
                    line.extend_from_slice(headers_text(&m.headers).as_bytes());
                    line.push(b'\t');
                }
                line.extend_from_slice(&bytes(&m.value));
                line.extend_from_slice(&self.delimiter);
                out.write(&line)
            }
        }
    }
}

/// Prints messages in the chosen format.
pub(super) struct Printer {
    pub(super) out: Stdout,
    line: LineFormat,
    pub(super) printed: u64,
    pub(super) limit: Option<u64>,
    pub(super) until: Option<Until>,
}

impl Printer {
    /// A printer of the flags' format (`json` forces JSON lines).
    pub(super) fn new(args: &ConsumeArgs, json: bool) -> Self {
        Printer {
            out: Stdout::new(),
            line: LineFormat {
                format: if json { Format::Json } else { args.format },
                print_key: args.print_key,
                print_meta: args.print_meta,
                print_headers: args.print_headers,
                key_separator: args.key_separator.as_bytes().to_vec(),
                delimiter: args
                    .delimiter
                    .clone()
                    .map_or_else(|| b"\n".to_vec(), |d| d.0),
            },
            printed: 0,
            limit: args.count,
            until: args.until,
        }
    }

    pub(super) fn done(&self) -> bool {
        self.limit.is_some_and(|limit| self.printed >= limit)
    }

    /// Whether `m` is at or past `--until` (not printed; its partition is done).
    pub(super) fn past_until(&self, m: &ConsumedMessage) -> bool {
        match self.until {
            None => false,
            Some(Until::Offset(offset)) => m.offset >= offset,
            Some(Until::TimestampMs(ms)) => m.timestamp_ms >= ms,
        }
    }

    /// Whether a partition whose next offset is `next` has reached `--until OFFSET`.
    pub(super) fn reached_until(&self, next: u64) -> bool {
        matches!(self.until, Some(Until::Offset(offset)) if next >= offset)
    }

    pub(super) fn print(&mut self, m: &ConsumedMessage) -> CliResult<()> {
        self.line.write(&mut self.out, m, "")?;
        self.printed += 1;
        Ok(())
    }
}

/// Headers as one text field: `key=value` pairs joined by `,`, `-` for none. Bytes
/// that are not UTF-8 become `\xNN`; `\`, `,`, `=`, tab and newline are escaped, so
/// the field never splits a line or a pair.
pub fn headers_text(headers: &[tidelog_proto::v1::Header]) -> String {
    if headers.is_empty() {
        return "-".into();
    }
    fn escape(bytes: &[u8], out: &mut String) {
        for chunk in bytes.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    ',' => out.push_str("\\,"),
                    '=' => out.push_str("\\="),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    let mut out = String::new();
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        escape(h.key.as_bytes(), &mut out);
        out.push('=');
        escape(&h.value, &mut out);
    }
    out
}

/// One message as a JSON object: partition, offset, timestamp (ms), key (null when
/// empty), value, headers (in order, keys may repeat), and the message id (its text
/// form, `tidelog_storage::msgid`), deliver-at time and priority when it has them.
pub fn message_json(m: &ConsumedMessage) -> Value {
    let headers: Vec<Value> = m
        .headers
        .iter()
        .map(|h| json!({"key": h.key, "value": bytes_json(&h.value)}))
        .collect();
    let mut value = json!({
        "partition": m.partition,
        "offset": m.offset,
        "timestamp": m.timestamp_ms,
        "key": if m.key.is_empty() { Value::Null } else { bytes_json(&m.key) },
        "value": bytes_json(&m.value),
        "headers": headers,
    });
    if let Value::Object(map) = &mut value {
        if !m.topic.is_empty() {
            map.insert("topic".into(), m.topic.clone().into());
        }
        if !m.id.is_empty() {
            map.insert("id".into(), msgid::display(&m.id).into());
        }
        if let Some(at) = m.deliver_at_ms {
            map.insert("deliver_at_ms".into(), at.into());
        }
        if m.priority > 0 {
            map.insert("priority".into(), m.priority.into());
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tidelog_proto::v1::Header;

    #[test]
    fn messages_become_json_lines() {
        let m = ConsumedMessage {
            partition: 1,
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            expires_at_ms: None,
            key: Bytes::new(),
            value: Bytes::from_static(b"hello"),
            headers: vec![Header {
                key: "h".into(),
                value: Bytes::from_static(&[0xff]),
            }],
            ..ConsumedMessage::default()
        };
        assert_eq!(
            message_json(&m).to_string(),
            r#"{"partition":1,"offset":7,"timestamp":1700000000000,"key":null,"value":"hello","headers":[{"key":"h","value":{"base64":"/w=="}}]}"#
        );
        // Id, deliver-at time and priority only when the message has them.
        let m = ConsumedMessage {
            id: Bytes::from_static(b"order-17"),
            deliver_at_ms: Some(1_700_000_005_000),
            priority: 3,
            ..m
        };
        let json = message_json(&m);
        assert_eq!(json["id"], "order-17");
        assert_eq!(json["deliver_at_ms"], 1_700_000_005_000_i64);
        assert_eq!(json["priority"], 3);
    }

    #[test]
    fn headers_become_one_escaped_text_field() {
        let header = |key: &str, value: &[u8]| Header {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
        };
        assert_eq!(headers_text(&[]), "-");
        assert_eq!(
            headers_text(&[header("a", b"1"), header("k=v", b"x,y\tz\n\xff\\")]),
            "a=1,k\\=v=x\\,y\\tz\\n\\xff\\\\"
        );
    }
}
