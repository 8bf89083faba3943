//! What a client's first bytes say on a TLS port: a TLS handshake, or a plaintext
//! client that is told, in its own protocol (HTTP/2 GOAWAY or HTTP/1 400), to use TLS.
//! Shared by the gRPC listener and the metrics endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 client preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How much of it the first-bytes sniff asks for ("PRI * HTTP/2.0").
const H2_PREFACE_SNIFFED: usize = 14;
/// How long a plaintext client on the TLS port is given to read its answer.
const PLAINTEXT_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read from such a client while it reads its answer.
const PLAINTEXT_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// HTTP/2 error codes (RFC 9113, 7).
const H2_NO_ERROR: u32 = 0x0;
const H2_INADEQUATE_SECURITY: u32 = 0xc;
/// HTTP/2 frame types and flags (RFC 9113, 6).
const H2_HEADERS: u8 = 0x1;
const H2_SETTINGS: u8 = 0x4;
const H2_GOAWAY: u8 = 0x7;
const H2_END_STREAM: u8 = 0x1;
const H2_ACK: u8 = 0x1;
const H2_END_HEADERS: u8 = 0x4;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a plaintext client on the TLS port is told.
const PLAINTEXT_ON_TLS: &str = "tidelogd: this port speaks TLS; connect with https:// \
     (tidelog --server https://HOST:PORT --ca-file CA.pem)";

/// What a client's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS handshake record.
    Tls,
    /// Anything else; the client has been told, in its own protocol, to use TLS.
    Plaintext,
    /// The client closed before sending a byte, or the read failed.
    Nothing,
}

/// Looks at (peeks) the client's first bytes. A plaintext client is told in its own
/// protocol that the port wants TLS, so it fails with a message and not a bare reset.
pub async fn first_bytes(tcp: &mut TcpStream) -> FirstBytes {
    let mut first = [0u8; 16];
    let Ok(peeked) = tcp.peek(&mut first).await else {
        return FirstBytes::Nothing;
    };
    let first = &first[..peeked];
    match first.first() {
        Some(&TLS_HANDSHAKE_RECORD) => FirstBytes::Tls,
        None => FirstBytes::Nothing,
        Some(_) => {
            tell_plaintext_client(tcp, first).await;
            FirstBytes::Plaintext
        }
    }
}

async fn tell_plaintext_client(tcp: &mut TcpStream, first: &[u8]) {
    let start = &H2_PREFACE[..H2_PREFACE_SNIFFED];
    let http2 = start.starts_with(first) || first.starts_with(start);
    if http2 {
        answer_http2(tcp).await;
        return;
    }
    let answer = {
        let body = format!("{PLAINTEXT_ON_TLS}\n");
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let _ = tokio::time::timeout(PLAINTEXT_ANSWER_TIMEOUT, tcp.write_all(&answer)).await;
    // An HTTP/1 client reads the answer until the connection closes.
    linger(tcp, true).await;
}

/// A plaintext HTTP/2 (gRPC) client: our SETTINGS at once, so its handshake completes;
/// then its frames are read up to its first request, which is answered with a gRPC
/// status naming the problem (FAILED_PRECONDITION), and a GOAWAY carrying the same
/// text follows. A GOAWAY alone would race with the client's request: a client that
/// reads it before its call is on a stream reports only "connection closed". A client
/// that sends no request in time gets the GOAWAY alone (INADEQUATE_SECURITY).
async fn answer_http2(tcp: &mut TcpStream) {
    let _ = tokio::time::timeout(
        PLAINTEXT_ANSWER_TIMEOUT,
        tcp.write_all(&h2_frame(H2_SETTINGS, 0, 0, &[])),
    )
    .await;
    let mut received = Vec::new();
    let scan = tokio::time::timeout(PLAINTEXT_ANSWER_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match scan_h2_request(&received) {
                H2Scan::NeedMore if received.len() < PLAINTEXT_DRAIN_BYTES_MAX => {}
                H2Scan::NeedMore => return H2Scan::Invalid,
                done => return done,
            }
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return H2Scan::Invalid,
                Ok(read) => received.extend_from_slice(&chunk[..read]),
            }
        }
    })
    .await
    .unwrap_or(H2Scan::Invalid);
    let answer = match scan {
        H2Scan::Request(stream) => {
            // Its SETTINGS (the first frame after the preface) acknowledged, then the
            // answer on the stream of its request.
            let mut frames = h2_frame(H2_SETTINGS, H2_ACK, 0, &[]);
            frames.extend_from_slice(&h2_frame(
                H2_HEADERS,
                H2_END_STREAM | H2_END_HEADERS,
                stream,
                &grpc_refusal_headers(),
            ));
            frames.extend_from_slice(&h2_goaway(stream, H2_NO_ERROR));
            frames
        }
        H2Scan::NeedMore | H2Scan::Invalid => h2_goaway(0, H2_INADEQUATE_SECURITY),
    };
    let _ = tokio::time::timeout(PLAINTEXT_ANSWER_TIMEOUT, tcp.write_all(&answer)).await;
    // The client closes once it has read the answer (closing first races with its
    // reading it).
    linger(tcp, false).await;
}

/// How far a plaintext HTTP/2 client's bytes got (see [`scan_h2_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Scan {
    /// The preface and whole frames so far, no request yet.
    NeedMore,
    /// The first request: a HEADERS frame opening this (odd, client) stream.
    Request(u32),
    /// Not an HTTP/2 client preface, or a HEADERS frame on a stream a client cannot open.
    Invalid,
}

/// Scans what a plaintext HTTP/2 client sent (untrusted bytes): the 24-byte client
/// preface, then frames (9-byte header, then the payload its length says) up to the
/// first HEADERS frame. Only frame headers are read; no payload is decoded.
pub fn scan_h2_request(bytes: &[u8]) -> H2Scan {
    let seen = bytes.len().min(H2_PREFACE.len());
    if bytes[..seen] != H2_PREFACE[..seen] {
        return H2Scan::Invalid;
    }
    let mut at = seen;
    loop {
        let Some(header) = bytes.get(at..at + 9) else {
            return H2Scan::NeedMore;
        };
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if header[3] == H2_HEADERS {
            return if stream % 2 == 1 {
                H2Scan::Request(stream)
            } else {
                H2Scan::Invalid
            };
        }
        at += 9 + length;
        if at > bytes.len() {
            return H2Scan::NeedMore;
        }
    }
}

/// The header block of a trailers-only gRPC response: `:status 200`, `content-type
/// application/grpc`, `grpc-status` FAILED_PRECONDITION (9) and `grpc-message` (HPACK
/// literals without indexing or Huffman coding, RFC 7541).
fn grpc_refusal_headers() -> Vec<u8> {
    // `:status: 200` is entry 8 of HPACK's static table.
    let mut block = vec![0x88];
    let mut literal = |name: &str, value: &[u8]| {
        block.push(0x00);
        hpack_length(&mut block, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_length(&mut block, value.len());
        block.extend_from_slice(value);
    };
    literal("content-type", b"application/grpc");
    literal("grpc-status", b"9");
    // grpc-message is percent-encoded: space and printable ASCII but '%' go as they are.
    let mut message = Vec::with_capacity(PLAINTEXT_ON_TLS.len());
    for &byte in PLAINTEXT_ON_TLS.as_bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            message.push(byte);
        } else {
            message.extend_from_slice(format!("%{byte:02X}").as_bytes());
        }
    }
    literal("grpc-message", &message);
    block
}

/// An HPACK string length with a 7-bit prefix, Huffman bit clear (RFC 7541, 5.1).
fn hpack_length(block: &mut Vec<u8>, length: usize) {
    if length < 127 {
        block.push(length as u8);
        return;
    }
    block.push(127);
    let mut rest = length - 127;
    while rest >= 128 {
        block.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    block.push(rest as u8);
}

/// GOAWAY(last stream, error code) with [`PLAINTEXT_ON_TLS`] as its debug data (clients
/// show the code, some the text).
fn h2_goaway(last_stream: u32, code: u32) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(PLAINTEXT_ON_TLS.as_bytes());
    h2_frame(H2_GOAWAY, 0, 0, &payload)
}

/// One HTTP/2 frame (RFC 9113, 4.1); payloads here are far below 2^24 bytes.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap_or(0);
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Reads what the client still sends until it closes (bounded in time and bytes),
/// having closed the sending side first when `close_first`: closing with unread bytes
/// would reset the connection, and the client would lose the last thing it was sent.
pub async fn linger(tcp: &mut TcpStream, close_first: bool) {
    let _ = tokio::time::timeout(PLAINTEXT_ANSWER_TIMEOUT, async {
        if close_first {
            let _ = tcp.shutdown().await;
        }
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < PLAINTEXT_DRAIN_BYTES_MAX {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_bytes(frames: &[(u8, u32, usize)]) -> Vec<u8> {
        let mut bytes = H2_PREFACE.to_vec();
        for &(kind, stream, length) in frames {
            bytes.extend_from_slice(&h2_frame(kind, 0, stream, &vec![7; length]));
        }
        bytes
    }

    #[test]
    fn the_first_request_is_found_behind_the_preface_and_other_frames() {
        let bytes = client_bytes(&[(H2_SETTINGS, 0, 18), (0x8, 0, 4), (H2_HEADERS, 3, 40)]);
        assert_eq!(scan_h2_request(&bytes), H2Scan::Request(3));
        // Every cut short of the HEADERS frame's header waits for more; from there on
        // the request is known (its header block is not needed).
        let headers_at = bytes.len() - 40 - 9;
        for cut in 0..bytes.len() {
            let expected = if cut < headers_at + 9 {
                H2Scan::NeedMore
            } else {
                H2Scan::Request(3)
            };
            assert_eq!(scan_h2_request(&bytes[..cut]), expected, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_a_client_opening_a_stream_is_invalid() {
        let mut wrong = H2_PREFACE.to_vec();
        wrong[3] = b'X';
        assert_eq!(scan_h2_request(&wrong), H2Scan::Invalid);
        assert_eq!(scan_h2_request(b"GET / HTTP/1.1\r\n"), H2Scan::Invalid);
        for stream in [0, 2] {
            let bytes = client_bytes(&[(H2_SETTINGS, 0, 0), (H2_HEADERS, stream, 5)]);
            assert_eq!(scan_h2_request(&bytes), H2Scan::Invalid, "stream {stream}");
        }
        // A frame that says it is 16 MiB long waits for its bytes (the caller stops
        // reading at its byte limit).
        let mut huge = client_bytes(&[]);
        huge.extend_from_slice(&[0xff, 0xff, 0xff, H2_SETTINGS, 0, 0, 0, 0, 0]);
        assert_eq!(scan_h2_request(&huge), H2Scan::NeedMore);
    }

    #[test]
    fn hpack_lengths_use_the_seven_bit_prefix_and_continue_past_it() {
        let encoded = |length: usize| {
            let mut block = Vec::new();
            hpack_length(&mut block, length);
            block
        };
        assert_eq!(encoded(10), vec![10]);
        assert_eq!(encoded(126), vec![126]);
        assert_eq!(encoded(127), vec![127, 0]);
        // RFC 7541, C.1.2 with a 7-bit prefix: 1337 = 127 + 1210 = 127 + 58 + 9 * 128.
        assert_eq!(encoded(1337), vec![127, 0x80 | 58, 9]);
    }

    #[test]
    fn the_refusal_is_a_trailers_only_grpc_response_with_the_message() {
        let block = grpc_refusal_headers();
        assert_eq!(block[0], 0x88, ":status 200 from the static table");
        let text = String::from_utf8_lossy(&block);
        for needle in [
            "content-type",
            "application/grpc",
            "grpc-status",
            "grpc-message",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
        assert!(
            text.ends_with(PLAINTEXT_ON_TLS),
            "nothing in it needs percent-encoding"
        );
    }
}
