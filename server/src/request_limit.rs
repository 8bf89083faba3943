//! Requests over `max_request_bytes` answered with RESOURCE_EXHAUSTED naming the
//! limit and the setting, instead of tonic's bare OUT_OF_RANGE.
//!
//! tonic checks the size of each request message while decoding it, before any
//! handler runs, and answers `OUT_OF_RANGE "Error, decoded message length too large:
//! found N bytes, the limit is: M bytes"`. The API's catalogue says a request over a
//! limit is RESOURCE_EXHAUSTED (or INVALID_ARGUMENT) with a message that names the
//! limit, so [`RequestLimitLayer`] rewrites that one status on its way out (unary
//! calls answer it in the response headers), and [`rewrite_status`] does the same
//! for a message inside a client stream, which the handler sees as an error.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;

/// What tonic's decoder says about an oversized message, as it appears in a
/// `Status` message and, percent-encoded, in the `grpc-message` header.
const TONIC_TOO_LARGE: &str = "decoded message length too large";
const TONIC_TOO_LARGE_ENCODED: &str = "decoded%20message%20length%20too%20large";

/// The status for a request over `limit` bytes (one wording, also
/// [`tidelog_proto::frames`]' when it refuses a message from its header).
pub fn too_large(limit: usize) -> Status {
    tidelog_proto::frames::too_large(limit)
}

fn message(limit: usize) -> String {
    too_large(limit).message().to_string()
}

/// Turns tonic's OUT_OF_RANGE for an oversized message into [`too_large`]; other
/// statuses pass unchanged.
pub fn rewrite_status(status: Status, limit: usize) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains(TONIC_TOO_LARGE) {
        too_large(limit)
    } else {
        status
    }
}

/// The tower layer: wraps the whole gRPC router.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimitLayer {
    limit: usize,
}

impl RequestLimitLayer {
    pub fn new(limit: usize) -> Self {
        RequestLimitLayer { limit }
    }
}

impl<S> tower_layer::Layer<S> for RequestLimitLayer {
    type Service = RequestLimit<S>;

    fn layer(&self, inner: S) -> RequestLimit<S> {
        RequestLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`RequestLimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequestLimit<S> {
    inner: S,
    limit: usize,
}

impl<S, Request, Body> tower_service::Service<Request> for RequestLimit<S>
where
    S: tower_service::Service<Request, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let response = self.inner.call(request);
        let limit = self.limit;
        Box::pin(async move {
            let mut response = response.await?;
            rewrite_headers(response.headers_mut(), limit);
            Ok(response)
        })
    }
}

fn rewrite_headers(headers: &mut http::HeaderMap, limit: usize) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains(TONIC_TOO_LARGE_ENCODED) || m.contains(TONIC_TOO_LARGE));
    if !(out_of_range && too_large) {
        return;
    }
    // grpc-message is percent-encoded; the message has no '%' or other characters
    // that need it besides spaces.
    let encoded = message(limit).replace(' ', "%20");
    if let Ok(value) = http::HeaderValue::from_str(&encoded) {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert("grpc-message", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_size_error_is_rewritten() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        );
        let rewritten = rewrite_status(tonic, 4);
        assert_eq!(rewritten.code(), tonic::Code::ResourceExhausted);
        assert!(rewritten.message().contains("--max-request-bytes"));
        let other = rewrite_status(Status::out_of_range("offset 9 is out of range"), 4);
        assert_eq!(other.code(), tonic::Code::OutOfRange);

        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("11"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "Error,%20decoded%20message%20length%20too%20large:%20found%209%20bytes",
            ),
        );
        rewrite_headers(&mut headers, 4);
        assert_eq!(headers["grpc-status"], "8");
        assert!(
            headers["grpc-message"]
                .to_str()
                .unwrap()
                .contains("limit%20of%204%20bytes")
        );
        let mut unrelated = http::HeaderMap::new();
        unrelated.insert("grpc-status", http::HeaderValue::from_static("11"));
        unrelated.insert("grpc-message", http::HeaderValue::from_static("offset"));
        rewrite_headers(&mut unrelated, 4);
        assert_eq!(unrelated["grpc-status"], "11");
    }
}
