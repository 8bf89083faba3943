//! Calls that carry record batches, made on the HTTP/2 connection without tonic's
//! client codec: requests go out as [`Pieces`] (a batch a producer sends is a chunk of
//! its own, not copied into an encode buffer) and the response's messages are decoded
//! by [`Messages`] from the chunks they arrive in (a stored batch inside one DATA frame
//! is a slice of it, not copied into a receive buffer; the client asks for frames of up
//! to [`tidelog_proto::frames::MAX_FRAME_BYTES`]). Everything else about
//! the call is the connection's: the token interceptor, the per-call timeout, the
//! reconnects.

use tidelog_proto::frames::{Messages, Pieces, PiecesBody, Trailers};
use tidelog_proto::v1::{
    FetchBatchesResponse, FetchRequest, PublishStreamRequest, PublishStreamResponse,
    SubscribeBatchesResponse, SubscribeRequest,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::{Code, Status};

use crate::connection::{Conn, GRPC_MESSAGE_BYTES_MAX};

/// `Consumer.SubscribeBatches`: the stream of its events.
pub async fn subscribe_batches(
    conn: Conn,
    request: SubscribeRequest,
) -> Result<Messages<SubscribeBatchesResponse>, Status> {
    let body = PiecesBody::request(tokio_stream::once(Pieces::message(&request)));
    call(conn, "/tidelog.v1.Consumer/SubscribeBatches", body).await
}

/// `Consumer.FetchBatches`: its one answer (the status follows it in the trailers).
pub async fn fetch_batches(
    conn: Conn,
    request: FetchRequest,
) -> Result<FetchBatchesResponse, Status> {
    let body = PiecesBody::request(tokio_stream::once(Pieces::message(&request)));
    let mut answers: Messages<FetchBatchesResponse> =
        call(conn, "/tidelog.v1.Consumer/FetchBatches", body).await?;
    let answer = answers
        .message()
        .await?
        .ok_or_else(|| Status::internal("the broker's FetchBatches response had no message"))?;
    match answers.message().await? {
        None => Ok(answer),
        Some(_) => Err(Status::internal(
            "the broker's FetchBatches response had more than one message",
        )),
    }
}

/// `Publisher.PublishStream`: `requests` as they come, and the stream of answers.
pub async fn publish_stream(
    conn: Conn,
    requests: impl Stream<Item = PublishStreamRequest> + Send + 'static,
) -> Result<Messages<PublishStreamResponse>, Status> {
    let body = PiecesBody::request(requests.map(Pieces::publish_stream_request));
    call(conn, "/tidelog.v1.Publisher/PublishStream", body).await
}

/// A call with the request messages of `body`: the response's messages, with the
/// call's status from its headers (a refusal) or its trailers (the last item of the
/// stream when not OK).
async fn call<M: prost::Message + Default>(
    mut conn: Conn,
    path: &'static str,
    body: PiecesBody,
) -> Result<Messages<M>, Status> {
    std::future::poll_fn(|cx| conn.poll_ready(cx))
        .await
        .map_err(|error| Status::from_error(error.into()))?;
    let mut http_request = http::Request::new(Body::new(body));
    *http_request.method_mut() = http::Method::POST;
    *http_request.uri_mut() = http::Uri::from_static(path);
    let headers = http_request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    let response = conn
        .call(http_request)
        .await
        .map_err(|error| Status::from_error(error.into()))?;
    let http_status = response.status();
    // A refusal comes as headers only (grpc-status in them).
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != Code::Ok {
            return Err(status);
        }
    } else if http_status != http::StatusCode::OK {
        return Err(from_http_status(http_status));
    }
    Ok(Messages::new(
        Body::new(response.into_body()),
        Trailers::Status,
        GRPC_MESSAGE_BYTES_MAX,
    ))
}

/// The gRPC code of an HTTP status that is not 200 (gRPC's "HTTP to gRPC status code
/// mapping").
fn from_http_status(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!("the broker answered HTTP status {status} instead of a gRPC response"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_as_grpc_says() {
        for (http, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (503, Code::Unavailable),
            (500, Code::Unknown),
        ] {
            let status = from_http_status(http::StatusCode::from_u16(http).unwrap());
            assert_eq!(status.code(), code, "{http}");
            assert!(status.message().contains(&http.to_string()));
        }
    }
}
