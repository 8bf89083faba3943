//! gRPC messages read from HTTP/2 body chunks without joining them
//! (`tidelog_proto::frames::Messages`, what tidelogd decodes Publish, PublishBatch and
//! PublishStream with, and tidelog-client its SubscribeBatches and PublishStream
//! answers): any bytes, cut into chunks anywhere, give messages or a typed error, never
//! a panic; every message decoded is the one prost decodes from the same bytes joined.
#![no_main]

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Frame;
use libfuzzer_sys::fuzz_target;
use tidelog_proto::frames::{Messages, Trailers};
use tidelog_proto::v1::{PublishStreamRequest, SubscribeBatchesResponse};
use tokio_stream::Stream;
use tonic::Status;

/// A body of the given chunks, every one ready at once.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// Every item of `messages` (the body is always ready, so it never waits).
fn drain<M: prost::Message + Default>(mut messages: Messages<M>) -> Vec<Result<M, Status>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut messages).poll_next(&mut cx) {
            Poll::Ready(Some(item)) => out.push(item),
            Poll::Ready(None) => return out,
            Poll::Pending => panic!("a ready body left the decoder waiting"),
        }
    }
}

/// The frames of `bytes` as prost reads them joined: each message, until the first
/// that cannot be read.
fn joined<M: prost::Message + Default>(mut bytes: &[u8], max: usize) -> Vec<M> {
    let mut out = Vec::new();
    while bytes.len() >= 5 && bytes[0] == 0 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len > max || bytes.len() - 5 < len {
            break;
        }
        let Ok(message) = M::decode(&bytes[5..5 + len]) else {
            break;
        };
        out.push(message);
        bytes = &bytes[5 + len..];
    }
    out
}

fn check<M: prost::Message + Default + PartialEq + Clone + std::fmt::Debug>(
    chunks: &VecDeque<Bytes>,
    joined_bytes: &[u8],
    trailers: Trailers,
    max: usize,
) {
    let got = drain(Messages::<M>::new(
        tonic::body::Body::new(Chunks(chunks.clone())),
        trailers,
        max,
    ));
    // Messages up to the first error, then at most that error, then nothing.
    let ok: Vec<M> = got
        .iter()
        .map_while(|item| item.as_ref().ok().cloned())
        .collect();
    assert!(got.len() <= ok.len() + 1, "items after an error");
    let expected: Vec<M> = joined(joined_bytes, max);
    assert_eq!(ok[..], expected[..ok.len().min(expected.len())]);
    assert!(ok.len() <= expected.len());
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limit and how the rest is cut; the cuts come from the
    // bytes themselves, so the fuzzer steers them.
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let max = if pick & 1 == 0 { 1 << 20 } else { 64 };
    let step = usize::from(pick >> 1) + 1;
    let mut chunks = VecDeque::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = step.min(bytes.len() - at);
        chunks.push_back(Bytes::copy_from_slice(&bytes[at..at + len]));
        at += len;
    }
    check::<PublishStreamRequest>(&chunks, bytes, Trailers::Ignore, max);
    // As a response without trailers: it must end with an error, never quietly.
    check::<SubscribeBatchesResponse>(&chunks, bytes, Trailers::Status, max);
});
