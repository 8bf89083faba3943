//! Bytes that are no protobuf request, and gRPC frames that break the framing itself,
//! sent through the real gRPC port: each is refused with a status and the broker
//! keeps serving (issue 6). Raw calls go through [`RawCodec`] and [`raw_http2`].

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tidelog_proto::v1::{AckLevel, Message, PublishRequest, PublishStreamRequest, TopicConfig};
use tidelog_tests::{TestBroker, create_topic, describe_topic};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{Bystander, EVENT_TIMEOUT, Rng, assert_no_panic, rss_mib};

/// A codec that sends and receives raw bytes: lets a test put any bytes where a
/// protobuf request belongs.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A unary call to `path` whose request message is `body`, whatever it holds.
async fn raw_unary(channel: &Channel, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("channel not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// A call to a streaming method with raw request messages; the status it ends with.
async fn raw_streaming(channel: &Channel, path: &'static str, bodies: Vec<Bytes>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let call = grpc.streaming(
        tonic::Request::new(tokio_stream::iter(bodies)),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    );
    let mut stream = match tokio::time::timeout(EVENT_TIMEOUT, call)
        .await
        .expect("an answer")
    {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return Status::ok(""),
            Ok(Err(status)) => return status,
            Err(_) => panic!("{path}: no end within {EVENT_TIMEOUT:?}"),
        }
    }
}

/// An HTTP/2 gRPC request to `path` whose body is exactly `body` (length prefixes and
/// flags included, however wrong), sent on `channel`. Returns the grpc-status.
async fn raw_http2(channel: &Channel, path: &str, body: Vec<u8>) -> Code {
    use http_body_util::BodyExt;
    use tonic::codegen::{Service, http};
    let mut service = channel.clone();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .unwrap();
    std::future::poll_fn(|cx| Service::poll_ready(&mut service, cx))
        .await
        .expect("channel ready");
    let response = tokio::time::timeout(EVENT_TIMEOUT, Service::call(&mut service, request))
        .await
        .expect("an answer")
        .expect("an HTTP answer");
    let (parts, body) = response.into_parts();
    assert_eq!(parts.status, http::StatusCode::OK, "{path}: {parts:?}");
    let code = |headers: &http::HeaderMap| {
        headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
            .map(Code::from_i32)
    };
    if let Some(code) = code(&parts.headers) {
        return code; // a trailers-only answer
    }
    let collected = tokio::time::timeout(EVENT_TIMEOUT, body.collect())
        .await
        .expect("the body ends")
        .expect("a body");
    collected
        .trailers()
        .and_then(code)
        .unwrap_or_else(|| panic!("{path}: no grpc-status"))
}

/// A gRPC frame: flag, big-endian length, payload.
fn frame(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Bytes that are not a valid protobuf request, sent where every request type
/// belongs, and gRPC frames that break the framing itself: each is refused with a
/// status (INTERNAL for undecodable bytes, as gRPC prescribes; RESOURCE_EXHAUSTED
/// for a declared length over the limit), nothing panics, and the broker keeps
/// serving on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_and_broken_frames_are_refused() {
    let mut broker = TestBroker::start_with(&["--max-request-bytes", "1048576"]);
    let channel = broker.channel().await;
    create_topic(&channel, "raw", 1, TopicConfig::default()).await;
    let bystander = Bystander::start(&broker, "raw").await;
    let rss_before = rss_mib(&broker);

    let mut rng = Rng::new(0x6a_4ba6e);
    let mut garbage: Vec<(String, Bytes)> = vec![
        ("a truncated varint".into(), Bytes::from_static(b"\x08")),
        ("an overlong varint".into(), Bytes::from_static(&[0xff; 11])),
        (
            "a string field with invalid UTF-8".into(),
            Bytes::from_static(b"\x0a\x02\xff\xfe"),
        ),
        (
            "a length far past the end".into(),
            Bytes::from_static(b"\x0a\xff\xff\xff\xff\x0f"),
        ),
        ("field number 0".into(), Bytes::from_static(b"\x00\x01")),
        ("wire type 7".into(), Bytes::from_static(b"\x0f\x01")),
        (
            "an unterminated group".into(),
            Bytes::from_static(b"\x0b\x08\x01"),
        ),
        (
            "100,000 nested groups".into(),
            Bytes::from(vec![0x0b; 100_000]),
        ),
    ];
    for len in [1, 7, 64, 4096, 200_000] {
        garbage.push((format!("{len} random bytes"), Bytes::from(rng.bytes(len))));
    }
    let unary = [
        "/tidelog.v1.Admin/CreateTopic",
        "/tidelog.v1.Admin/AlterTopicConfig",
        "/tidelog.v1.Admin/DescribeTopic",
        "/tidelog.v1.Publisher/Publish",
        "/tidelog.v1.Consumer/Fetch",
        "/tidelog.v1.Groups/CommitOffsets",
        "/tidelog.v1.Groups/ResetOffsets",
        "/tidelog.v1.Groups/FetchOffsets",
    ];
    let mut refused = 0;
    for path in unary {
        for (what, bytes) in &garbage {
            // Random bytes can happen to decode; then the request is merely invalid.
            if let Err(status) = raw_unary(&channel, path, bytes.clone()).await {
                assert_ne!(status.code(), Code::Unknown, "{path} {what}: {status:?}");
                refused += 1;
            }
        }
        // The nested groups never decode.
        let status = raw_unary(&channel, path, garbage[7].1.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{path}: {status:?}");
    }
    for path in [
        "/tidelog.v1.Consumer/Subscribe",
        "/tidelog.v1.Publisher/PublishStream",
    ] {
        for (what, bytes) in &garbage[..8] {
            let status = raw_streaming(&channel, path, vec![bytes.clone()]).await;
            assert_eq!(status.code(), Code::Internal, "{path} {what}: {status:?}");
        }
    }
    // A PublishStream with a good request, then garbage: the good one is answered,
    // then the stream ends INTERNAL.
    use prost::Message as _;
    let good = PublishStreamRequest {
        batch: None,
        request_id: 1,
        request: Some(PublishRequest {
            topic: "raw".into(),
            messages: vec![Message {
                value: Bytes::from_static(b"ok"),
                ..Default::default()
            }],
            ack: AckLevel::Durable as i32,
        }),
    };
    let status = raw_streaming(
        &channel,
        "/tidelog.v1.Publisher/PublishStream",
        vec![Bytes::from(good.encode_to_vec()), garbage[0].1.clone()],
    )
    .await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    // Broken framing, below the codec.
    let publish = "/tidelog.v1.Publisher/Publish";
    let frames = [
        (
            "compressed flag without grpc-encoding",
            frame(1, 5, b"hello"),
            Code::Internal,
        ),
        ("flag byte 7", frame(7, 0, b""), Code::Internal),
        (
            "a declared length of 4 GiB",
            frame(0, u32::MAX, b"abc"),
            Code::ResourceExhausted,
        ),
        (
            "a declared length past the end of the body",
            frame(0, 100, b"0123456789"),
            Code::Internal,
        ),
        ("a 3-byte body", vec![0, 0, 0], Code::Internal),
        ("an empty body", Vec::new(), Code::Internal),
    ];
    for (what, body, code) in frames {
        assert_eq!(raw_http2(&channel, publish, body).await, code, "{what}");
    }
    // An unknown method and service are UNIMPLEMENTED.
    assert_eq!(
        raw_http2(&channel, "/tidelog.v1.Publisher/Nope", frame(0, 0, b"")).await,
        Code::Unimplemented
    );
    assert_eq!(
        raw_http2(&channel, "/nope.Nope/Nope", frame(0, 0, b"")).await,
        Code::Unimplemented
    );

    // The same connection still works.
    describe_topic(&channel, "raw").await;
    let rss_after = rss_mib(&broker);
    bystander.finish(Duration::from_secs(5)).await;
    println!(
        "garbage: {refused} undecodable unary requests refused; RSS {rss_before:?} -> {rss_after:?} MiB"
    );
    assert!(refused >= unary.len() * 8, "{refused}");
    assert!(
        rss_after.0 - rss_before.0 < 256.0,
        "{rss_before:?} -> {rss_after:?}"
    );
    assert!(broker.is_running());
    broker.stop();
    assert_no_panic(&broker);
}
