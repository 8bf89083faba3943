//! `/metrics` of the real broker as scrapers see it (issue 12): the format follows
//! the `Accept` header, and the `Content-Type` says which one it is. Prometheus asks
//! for OpenMetrics; curl, promtool pipelines and older agents get the classic text
//! format, in which a counter's HELP and TYPE lines carry the `_total` of its samples.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tidelog_proto::v1::{AckLevel, Message, PublishRequest, TopicConfig};
use tidelog_tests::TestBroker;

/// What Prometheus 2.42 sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One HTTP/1.1 request with `headers` (each `Name: value`); returns the status line,
/// the response headers (names lower-cased) and the body.
fn request(
    addr: SocketAddr,
    method: &str,
    headers: &[&str],
) -> (String, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a timeout");
    let mut head = format!("{method} /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .expect("sending the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn content_type(headers: &[(String, String)]) -> &str {
    headers
        .iter()
        .find(|(name, _)| name == "content-type")
        .map(|(_, value)| value.as_str())
        .expect("a Content-Type header")
}

#[tokio::test]
async fn metrics_content_type_follows_the_accept_header() {
    let broker = TestBroker::start();
    broker
        .create_topic("typed", 1, TopicConfig::default())
        .await;
    broker
        .publisher()
        .await
        .publish(PublishRequest {
            topic: "typed".into(),
            messages: vec![Message {
                value: "x".into(),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publishing");
    let addr = broker.metrics_addr();

    // Prometheus: OpenMetrics, which it parses with the counter's type.
    let (status, headers, body) = request(addr, "GET", &[&format!("Accept: {PROMETHEUS_ACCEPT}")]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        content_type(&headers),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        body.contains("# TYPE tidelog_publish_messages counter\n"),
        "{body}"
    );
    assert!(body.contains("tidelog_publish_messages_total{topic=\"typed\"} 1\n"));
    assert!(body.ends_with("# EOF\n"), "{body}");

    // No preference (curl): the classic text format, counters typed under `_total`.
    for accept in [
        None,
        Some("Accept: */*"),
        Some("Accept: text/plain;version=0.0.4"),
    ] {
        let (status, headers, body) = request(addr, "GET", accept.as_slice());
        assert_eq!(status, "HTTP/1.1 200 OK", "{accept:?}");
        assert_eq!(
            content_type(&headers),
            "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(
            body.contains(
                "# HELP tidelog_publish_messages_total Messages appended, by topic.\n\
                 # TYPE tidelog_publish_messages_total counter\n"
            ),
            "{accept:?}: {body}"
        );
        assert!(body.contains("tidelog_publish_messages_total{topic=\"typed\"} 1\n"));
        assert!(!body.contains("# EOF"), "{body}");
    }

    // `curl -I`: the same headers, no body.
    let (status, headers, body) = request(addr, "HEAD", &[]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        content_type(&headers),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(body, "");
}
