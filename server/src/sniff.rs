//! What a client's first bytes say on a TLS port: a TLS handshake, or a plaintext
//! client that is told, in its own protocol (HTTP/2 GOAWAY or HTTP/1 400), to use TLS.
//! Shared by the gRPC listener and the metrics endpoint.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the HTTP/2 client preface starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// How long a plaintext client on the TLS port is given to read its answer.
const PLAINTEXT_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read from such a client while it reads its answer.
const PLAINTEXT_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// HTTP/2 error code INADEQUATE_SECURITY (RFC 9113, 7).
const H2_INADEQUATE_SECURITY: u32 = 0xc;
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
    let http2 = H2_PREFACE.starts_with(first) || first.starts_with(H2_PREFACE);
    let answer = if http2 {
        // An empty SETTINGS frame, then GOAWAY(last stream 0, INADEQUATE_SECURITY) with
        // the message as its debug data (clients show the code, some the text).
        let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
        let length = u32::try_from(8 + PLAINTEXT_ON_TLS.len()).unwrap_or(8);
        frames.extend_from_slice(&length.to_be_bytes()[1..]);
        frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
        frames.extend_from_slice(&0u32.to_be_bytes());
        frames.extend_from_slice(&H2_INADEQUATE_SECURITY.to_be_bytes());
        frames.extend_from_slice(PLAINTEXT_ON_TLS.as_bytes());
        frames
    } else {
        let body = format!("{PLAINTEXT_ON_TLS}\n");
        format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let _ = tokio::time::timeout(PLAINTEXT_ANSWER_TIMEOUT, tcp.write_all(&answer)).await;
    // An HTTP/2 client closes once it has read the GOAWAY (closing first races with
    // its reading it); an HTTP/1 client reads the answer until the connection closes.
    linger(tcp, !http2).await;
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
