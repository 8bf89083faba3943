//! Streams as a resource (issue 6): thousands of them on one connection, subscribers
//! that never read, the per-connection cap, and a client that provokes endless stream
//! resets. Memory stays bounded and other clients keep being served.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::start_position::{Earliest, Position};
use tidelog_proto::v1::subscribe_response::Event;
use tidelog_proto::v1::{
    AckLevel, Message, PublishRequest, StartPosition, SubscribeRequest, SubscribeResponse,
    TopicConfig,
};
use tidelog_tests::{TestBroker, create_topic, describe_topic, metric_value};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::support::{
    Bystander, EVENT_TIMEOUT, assert_no_panic, checked_value, consumer, next_event, rss_mib,
};

/// Opens a Subscribe stream on `topic` from its end (no group); the future owns what
/// it needs, so it can be spawned.
fn subscribe_from_end(
    channel: &Channel,
    topic: &str,
) -> impl Future<Output = Result<Streaming<SubscribeResponse>, Status>> + Send + use<> {
    let mut client = consumer(channel);
    let topic = topic.to_string();
    async move {
        client
            .subscribe(SubscribeRequest {
                topic,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Waits (bounded) until the broker reports `count` open streams of `kind`.
async fn wait_open_streams(broker: &TestBroker, kind: &str, expect: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let name = format!("tidelog_open_streams{{kind=\"{kind}\"}}");
    loop {
        let open = metric_value(&broker.metrics_text(), &name).unwrap_or(0.0);
        if expect(open) {
            return open;
        }
        assert!(Instant::now() < deadline, "{name} stuck at {open}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 2,000 Subscribe streams on one HTTP/2 connection, and subscribers that never read
/// a topic holding far more than their queues: memory stays bounded, every stream is
/// served, the streams go away when their clients do, and a client beside them keeps
/// being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_streams_and_stalled_subscribers_stay_bounded() {
    const STREAMS: usize = 2000;
    const STALLED: usize = 16;
    const BIG_MESSAGES: usize = 128;
    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    for topic in ["fanout", "big", "side"] {
        create_topic(&channel, topic, 1, TopicConfig::default()).await;
    }
    // 32 MiB that the stalled subscribers will not read.
    let mut publisher = PublisherClient::new(channel.clone());
    for chunk in 0..BIG_MESSAGES / 8 {
        let messages = (0..8)
            .map(|i| Message {
                value: checked_value((chunk * 8 + i) as u64, 256 * 1024),
                ..Default::default()
            })
            .collect();
        publisher
            .publish(PublishRequest {
                topic: "big".into(),
                messages,
                ack: AckLevel::Durable as i32,
            })
            .await
            .unwrap();
    }
    let bystander = Bystander::start(&broker, "side").await;
    let rss_before = rss_mib(&broker);

    // Thousands of streams on one connection.
    let shared = broker.channel().await;
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        opening.spawn(subscribe_from_end(&shared, "fanout"));
    }
    let mut streams = Vec::with_capacity(STREAMS);
    while let Some(opened) = opening.join_next().await {
        streams.push(opened.unwrap().expect("a subscribe among thousands"));
    }
    wait_open_streams(&broker, "subscribe", |open| open >= STREAMS as f64).await;
    let rss_streams = rss_mib(&broker);
    // Every one of them is served.
    let sent = Bytes::from_static(b"to all of them");
    publisher
        .publish(PublishRequest {
            topic: "fanout".into(),
            messages: vec![Message {
                value: sent.clone(),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        })
        .await
        .unwrap();
    for (index, stream) in streams.iter_mut().enumerate() {
        match next_event(stream).await {
            Ok(Some(Event::Batch(batch))) => assert_eq!(batch.messages[0].value, sent),
            other => panic!("stream {index}: {other:?}"),
        }
    }

    // Subscribers that never read, each on its own connection.
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let stream = consumer(&broker.channel().await)
            .subscribe(SubscribeRequest {
                topic: "big".into(),
                start: Some(StartPosition {
                    position: Some(Position::Earliest(Earliest {})),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        stalled.push(stream);
    }
    // Their readers fill their bounded queues and flow-control windows, then wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher
        .publish(PublishRequest {
            topic: "big".into(),
            messages: vec![Message {
                value: checked_value(u64::MAX, 1024),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publishing is not held up by stalled subscribers");
    let rss_stalled = rss_mib(&broker);

    // Clients going away close their streams on the broker too.
    drop(streams);
    drop(stalled);
    drop(shared);
    wait_open_streams(&broker, "subscribe", |open| open == 0.0).await;
    let rss_after = rss_mib(&broker);
    let (rounds, worst) = bystander.finish(Duration::from_secs(5)).await;
    println!(
        "streams: RSS (VmRSS, RssAnon) MiB before {rss_before:?}, with {STREAMS} streams on one connection {rss_streams:?}, \
         with {STALLED} stalled subscribers over 32 MiB {rss_stalled:?}, after {rss_after:?}; \
         bystander {rounds} rounds, worst {worst:?}"
    );
    // Generous bounds: a few KiB per stream, a few MiB per stalled subscriber.
    assert!(
        rss_streams.1 - rss_before.1 < 256.0,
        "{STREAMS} streams took {rss_before:?} -> {rss_streams:?} MiB"
    );
    assert!(
        rss_stalled.1 - rss_streams.1 < (STALLED * 8) as f64 + 64.0,
        "{STALLED} stalled subscribers took {rss_streams:?} -> {rss_stalled:?} MiB"
    );
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}

/// HTTP/2 frames written by hand: 9-byte header (length, type, flags, stream id).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// HTTP/2 frame types and flags the raw-frame tests use.
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FRAME_WINDOW_UPDATE: u8 = 0x8;

/// One frame read back: type, flags, stream id, payload.
struct RawFrame<'a> {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &'a [u8],
}

/// The whole frames at the start of `bytes`, and how many bytes they take (a frame
/// cut off at the end is left for more bytes).
fn h2_frames(bytes: &[u8]) -> (Vec<RawFrame<'_>>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let length = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]);
        let end = at + 9 + length as usize;
        if end > bytes.len() {
            break;
        }
        frames.push(RawFrame {
            kind: bytes[at + 3],
            flags: bytes[at + 4],
            stream: u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap()),
            payload: &bytes[at + 9..end],
        });
        at = end;
    }
    (frames, at)
}

/// A TCP connection to the broker's gRPC port that has sent the HTTP/2 preface and
/// an empty SETTINGS frame, as a client written from the spec starts.
async fn h2_open(broker: &TestBroker) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(broker.grpc_addr())
        .await
        .unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(FRAME_SETTINGS, 0, 0, &[]));
    socket.write_all(&out).await.unwrap();
    socket
}

/// What the broker announces to a client written from the HTTP/2 spec: a stream
/// window and a connection window of [`STREAM_WINDOW_BYTES`] and
/// [`CONNECTION_WINDOW_BYTES`] (their docs say why these sizes), and DATA frames of up
/// to [`MAX_FRAME_BYTES`] (the protocol's default is 16 KiB).
///
/// [`STREAM_WINDOW_BYTES`]: tidelog_proto::frames::STREAM_WINDOW_BYTES
/// [`CONNECTION_WINDOW_BYTES`]: tidelog_proto::frames::CONNECTION_WINDOW_BYTES
/// [`MAX_FRAME_BYTES`]: tidelog_proto::frames::MAX_FRAME_BYTES
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_announces_its_receive_windows_and_frame_size() {
    use tidelog_proto::frames::{CONNECTION_WINDOW_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES};
    use tokio::io::AsyncReadExt;
    const ACK: u8 = 0x1;
    const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
    const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
    // Every window starts at 65,535 bytes until SETTINGS or WINDOW_UPDATE change it.
    const PROTOCOL_WINDOW: u64 = 65_535;
    let mut broker = TestBroker::start();
    let mut socket = h2_open(&broker).await;

    let mut settings = None;
    let mut connection_window = PROTOCOL_WINDOW;
    let mut received = Vec::new();
    let mut at = 0;
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    // The server's SETTINGS come first; its connection WINDOW_UPDATE, if any, right
    // after. Read until the SETTINGS and the window are in, or the deadline.
    while settings.is_none() || connection_window == PROTOCOL_WINDOW {
        let mut chunk = vec![0u8; 4096];
        let read = tokio::time::timeout_at(deadline, socket.read(&mut chunk))
            .await
            .expect("the broker's SETTINGS and connection WINDOW_UPDATE within the timeout")
            .unwrap();
        assert!(
            read > 0,
            "the broker closed the connection after {received:?}"
        );
        received.extend_from_slice(&chunk[..read]);
        let (frames, used) = h2_frames(&received[at..]);
        for frame in frames {
            if frame.kind == FRAME_SETTINGS && frame.flags & ACK == 0 {
                let mut announced = std::collections::BTreeMap::new();
                for setting in frame.payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value = u32::from_be_bytes(setting[2..6].try_into().unwrap());
                    announced.insert(id, value);
                }
                settings = Some(announced);
            }
            if frame.kind == FRAME_WINDOW_UPDATE && frame.stream == 0 {
                let increment = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
                connection_window += u64::from(increment & 0x7fff_ffff);
            }
        }
        at += used;
    }
    let settings = settings.unwrap();
    assert_eq!(
        settings.get(&SETTINGS_INITIAL_WINDOW_SIZE),
        Some(&STREAM_WINDOW_BYTES),
        "SETTINGS: {settings:?}"
    );
    assert_eq!(
        settings.get(&SETTINGS_MAX_FRAME_SIZE),
        Some(&MAX_FRAME_BYTES),
        "SETTINGS: {settings:?}"
    );
    assert_eq!(connection_window, u64::from(CONNECTION_WINDOW_BYTES));
    drop(socket);
    broker.stop();
    assert_no_panic(&broker);
}

/// "MadeYouReset" (CVE-2025-8671): a client that makes the server reset stream after
/// stream (here malformed requests) costs the server work without counting against
/// the open-stream cap. tonic turns h2's limit on such
/// resets off; the broker turns it back on, so the connection is closed with GOAWAY
/// ENHANCE_YOUR_CALM while other clients keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_provoking_endless_stream_resets_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    const STREAMS: u32 = 4000;
    let mut broker = TestBroker::start();
    let channel = broker.channel().await;
    create_topic(&channel, "calm", 1, TopicConfig::default()).await;

    let mut socket = h2_open(&broker).await;
    let mut out = Vec::new();
    // HPACK: :method POST, :scheme http, :path / (static table), then `connection: x`
    // as a literal, a header HTTP/2 forbids: a malformed request, reset by the server.
    let mut request = vec![0x83, 0x86, 0x84, 0x00, 10];
    request.extend_from_slice(b"connection");
    request.extend_from_slice(&[1, b'x']);
    for index in 0..STREAMS {
        out.extend(h2_frame(
            FRAME_HEADERS,
            END_HEADERS | END_STREAM,
            2 * index + 1,
            &request,
        ));
    }
    // The server may stop reading once it has had enough: a failed write is fine.
    let (mut reader, mut writer) = socket.split();
    let write = async {
        let _ = writer.write_all(&out).await;
    };
    let read = async {
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let (_, received) = tokio::time::timeout(EVENT_TIMEOUT, async { tokio::join!(write, read) })
        .await
        .expect("the server must close a connection that keeps provoking resets");
    // GOAWAY's payload: the last stream id, then the error code.
    let goaway = h2_frames(&received)
        .0
        .iter()
        .filter(|frame| frame.kind == FRAME_GOAWAY)
        .map(|frame| u32::from_be_bytes(frame.payload[4..8].try_into().unwrap()))
        .next_back();
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));

    // Everyone else is still served.
    let description = describe_topic(&broker.channel().await, "calm").await;
    assert_eq!(description.partitions.len(), 1);
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}

/// A connection may have at most `--max-streams-per-connection` calls open (HTTP/2
/// SETTINGS_MAX_CONCURRENT_STREAMS): the client queues the next call until one ends,
/// and other connections are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_capped_and_the_next_call_waits_its_turn() {
    const CAP: usize = 8;
    let mut broker = TestBroker::start_with(&["--max-streams-per-connection", "8"]);
    let channel = broker.channel().await;
    create_topic(&channel, "capped", 1, TopicConfig::default()).await;
    let subscribe = |channel: &Channel| subscribe_from_end(channel, "capped");
    let shared = broker.channel().await;
    let mut streams = Vec::with_capacity(CAP);
    for _ in 0..CAP {
        streams.push(
            subscribe(&shared)
                .await
                .expect("a subscribe within the cap"),
        );
    }
    let queued = tokio::spawn(subscribe(&shared));
    // Another connection is served at once, past the one that is full.
    let _other = subscribe(&channel)
        .await
        .expect("a subscribe on another connection");
    wait_open_streams(&broker, "subscribe", |open| open == (CAP + 1) as f64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !queued.is_finished(),
        "a call past the cap must wait for a free stream"
    );
    assert_eq!(
        wait_open_streams(&broker, "subscribe", |_| true).await,
        (CAP + 1) as f64
    );
    // One ends: the queued call gets its stream.
    drop(streams.pop());
    let opened = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("the queued call opens once a stream is free")
        .unwrap();
    assert!(opened.is_ok(), "{opened:?}");
    wait_open_streams(&broker, "subscribe", |open| open == (CAP + 1) as f64).await;
    broker.stop();
    assert_no_panic(&broker);
}
