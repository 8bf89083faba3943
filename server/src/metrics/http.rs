//! The `/metrics` HTTP endpoint: a small HTTP/1.1 responder with bounded reads that
//! answers in OpenMetrics or the classic text format as the scraper asks; over TLS
//! when tidelogd has `--tls-cert` (HTTPS, no client certificate asked), and only to a
//! scraper with the bearer token when it has `--metrics-token-file` (others get
//! `401 Unauthorized`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Metrics;
use crate::exposition::Format;
use crate::shutdown::Shutdown;
use crate::tls::Security;

/// Longest request head the metrics endpoint reads; a scraper sends a few hundred
/// bytes.
const HTTP_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a metrics connection may take to send its request.
const HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Metrics connections served at once; more wait in the accept queue.
const HTTP_CONNECTIONS_MAX: usize = 16;

/// Serves `GET /metrics` on `listener` until `shutdown`: a small HTTP/1.1 responder,
/// one request per connection, with bounded reads. The format follows the `Accept`
/// header ([`Format::negotiate`]); `HEAD /metrics` answers the same headers without
/// the body. Other paths are 404, other methods 405.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    security: Arc<Security>,
    shutdown: Shutdown,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = shutdown.wait() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                let security = security.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(error) = tokio::time::timeout(
                        HTTP_REQUEST_TIMEOUT,
                        handle(stream, &metrics, &security),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "request took too long",
                        ))
                    }) {
                        tracing::debug!(%error, "metrics connection failed");
                    }
                });
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Handshakes TLS when configured, then answers one request.
async fn handle(stream: TcpStream, metrics: &Metrics, security: &Security) -> std::io::Result<()> {
    match security.metrics() {
        None => handle_http(stream, metrics, security).await,
        Some(config) => {
            let mut stream = stream;
            if crate::sniff::first_bytes(&mut stream).await != crate::sniff::FirstBytes::Tls {
                return Ok(());
            }
            let stream = tokio_rustls::TlsAcceptor::from(config)
                .accept(stream)
                .await?;
            handle_http(stream, metrics, security).await
        }
    }
}

async fn handle_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    metrics: &Metrics,
    security: &Security,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; HTTP_REQUEST_BYTES_MAX];
    let mut filled = 0;
    let head_end = loop {
        if let Some(end) = find_head_end(&buffer[..filled]) {
            break end;
        }
        if filled == buffer.len() {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            return Ok(());
        }
        filled += read;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let header = |wanted: &str| -> Vec<&str> {
        head.lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.trim())
            .collect()
    };
    if !security.metrics_authorized(header("authorization").first().copied()) {
        return respond(
            &mut stream,
            "401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"tidelogd metrics\"",
            "this endpoint needs Authorization: Bearer <token> (tidelogd --metrics-token-file)\n",
        )
        .await;
    }
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            // Several Accept headers make one list (RFC 9110, 5.3).
            let accept = header("accept");
            let format =
                Format::negotiate((!accept.is_empty()).then(|| accept.join(",")).as_deref());
            let body = metrics.encode_as(format);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                format.content_type(),
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            if method == "GET" {
                stream.write_all(body.as_bytes()).await?;
            }
            stream.shutdown().await
        }
        ("GET" | "HEAD", _) => {
            respond(&mut stream, "404 Not Found", "not found: try /metrics\n").await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "only GET /metrics\n").await,
    }
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn http_endpoint_negotiates_the_format_and_answers_404() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.published("t", 1, 1);
        let shutdown = Shutdown::new();
        let security = Arc::new(Security::plaintext());
        let server = tokio::spawn(serve(listener, metrics, security, shutdown.clone()));
        let request = |head: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(format!("{head}Host: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let openmetrics = request(
            "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
        )
        .await;
        assert!(openmetrics.starts_with("HTTP/1.1 200 OK"), "{openmetrics}");
        assert!(openmetrics.contains(
            "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ));
        assert!(openmetrics.contains("# TYPE tidelog_publish_messages counter\n"));
        assert!(openmetrics.contains("tidelog_publish_messages_total{topic=\"t\"} 1"));
        assert!(openmetrics.trim_end().ends_with("# EOF"));

        let classic = request("GET /metrics HTTP/1.1\r\nAccept: */*\r\n").await;
        assert!(classic.starts_with("HTTP/1.1 200 OK"), "{classic}");
        assert!(classic.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(classic.contains("# TYPE tidelog_publish_messages_total counter\n"));
        assert!(classic.contains("tidelog_publish_messages_total{topic=\"t\"} 1"));
        assert!(!classic.contains("# EOF"));

        let head = request("HEAD /metrics HTTP/1.1\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(head.ends_with("\r\n\r\n"), "HEAD answered a body: {head}");

        assert!(
            request("GET /other HTTP/1.1\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        shutdown.trigger();
        server.await.unwrap();
    }
}
