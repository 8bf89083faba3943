//! The gRPC port's accept loop: connection limits, the TLS handshake, and the
//! connections handed to tonic (`serve_with_incoming_shutdown`).
//!
//! Each accepted TCP connection:
//! 1. takes a slot of [`ConnectionLimits`] (`--max-connections` in total,
//!    `--max-connections-per-ip` per client address), or is closed at once and
//!    counted in `tidelog_connections_refused{reason}`;
//! 2. with TLS, is handshaken on its own task (bounded by [`HANDSHAKE_TIMEOUT`]) with
//!    the configuration current at that moment ([`Security::grpc`]), so a SIGHUP
//!    reload applies to new connections and never touches open ones. A client that
//!    speaks plaintext HTTP/2 to the TLS port gets a GOAWAY whose debug text says to
//!    use TLS, an HTTP/1 client a `400` saying so; both are closed and counted;
//! 3. carries a [`ConnInfo`] (client address, and with mutual TLS the certificate's
//!    principal) that tonic puts in every request's extensions, where
//!    [`crate::auth::layer`] reads it.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::sniff::{FirstBytes, first_bytes, linger};
use crate::tls::Security;

/// Longest a client may take for its TLS handshake (and to send its first bytes).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted (handshaken) but not yet taken by the server.
const ACCEPTED_QUEUE_MAX: usize = 64;

/// Why a connection was refused: the `reason` label of
/// `tidelog_connections_refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `--max-connections`.
    Total,
    /// Over `--max-connections-per-ip` for the client's address.
    PerIp,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// Open connections in total and per client IP, against their limits.
#[derive(Debug)]
pub struct ConnectionLimits {
    total_max: usize,
    per_ip_max: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionLimits {
    pub fn new(total_max: usize, per_ip_max: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            total_max,
            per_ip_max,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for one connection from `ip`, given back when the slot drops.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *open;
        if *total >= self.total_max {
            return Err(Refusal::Total);
        }
        let from_ip = per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.per_ip_max {
            return Err(Refusal::PerIp);
        }
        *from_ip += 1;
        *total += 1;
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }

    /// Open connections: in total, and from `ip`.
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        (open.0, open.1.get(&ip).copied().unwrap_or(0))
    }
}

/// One connection's place within the limits.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_ip) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(from_ip) = per_ip.get_mut(&self.ip) {
            *from_ip -= 1;
            if *from_ip == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// What the server knows about a connection; in every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// With mutual TLS: the subject CN of the client's verified certificate (empty when
    /// it has no usable one: auth then refuses it naming the certificate).
    pub certificate_principal: Option<Arc<str>>,
}

/// The client address of a request (tonic's `remote_addr` does not know [`ConnInfo`]).
pub fn remote_addr<T>(request: &tonic::Request<T>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|info| info.remote)
        .or_else(|| request.remote_addr())
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A served connection: the stream, what is known about it, and its place.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    _place: Place,
}

/// A connection's slot within the limits, counted in `tidelog_connections_open` from
/// accept (its TLS handshake included) until it closes: the gauge counts what the
/// limits count.
struct Place {
    _slot: Slot,
    metrics: Arc<Metrics>,
}

impl Place {
    fn new(slot: Slot, metrics: &Arc<Metrics>) -> Self {
        metrics.connection_open(1);
        Place {
            _slot: slot,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.metrics.connection_open(-1);
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The stream of connections for tonic: accepts on `listener` until `shutdown`.
pub fn incoming(
    listener: TcpListener,
    security: Arc<Security>,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> impl Stream<Item = Result<Conn, io::Error>> {
    let (sender, receiver) = mpsc::channel(ACCEPTED_QUEUE_MAX);
    tokio::spawn(accept_loop(
        listener, security, limits, metrics, shutdown, sender,
    ));
    tokio_stream::StreamExt::map(ReceiverStream::new(receiver), Ok)
}

async fn accept_loop(
    listener: TcpListener,
    security: Arc<Security>,
    limits: Arc<ConnectionLimits>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    sender: mpsc::Sender<Conn>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "accepting a gRPC connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let place = match limits.acquire(remote.ip()) {
            Ok(slot) => Place::new(slot, &metrics),
            Err(refusal) => {
                metrics.connection_refused(refusal.reason());
                tracing::debug!(%remote, reason = refusal.reason(), "connection refused");
                // Dropping the socket closes it: the client sees the connection reset.
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let info = ConnInfo {
            remote: Some(remote),
            certificate_principal: None,
        };
        match security.grpc() {
            None => {
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info,
                    _place: place,
                };
                if sender.send(conn).await.is_err() {
                    return;
                }
            }
            Some(config) => {
                let sender = sender.clone();
                let metrics = metrics.clone();
                // The place is held through the handshake (and given back if it fails).
                tokio::spawn(async move {
                    let handshake = handshake(tcp, config);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok((tls, principal))) => {
                            let conn = Conn {
                                io: Io::Tls(Box::new(tls)),
                                info: ConnInfo {
                                    certificate_principal: principal,
                                    ..info
                                },
                                _place: place,
                            };
                            let _ = sender.send(conn).await;
                        }
                        Ok(Err(reason)) => {
                            metrics.connection_refused(reason);
                            tracing::debug!(%remote, reason, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.connection_refused("tls_handshake");
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// Handshakes `tcp`; returns the stream and the client certificate's principal, or
/// the `tidelog_connections_refused` reason.
async fn handshake(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
) -> Result<(TlsStream<TcpStream>, Option<Arc<str>>), &'static str> {
    match first_bytes(&mut tcp).await {
        FirstBytes::Tls => {}
        FirstBytes::Plaintext => return Err("plaintext_on_tls"),
        // Closed before a byte (a TCP probe), or a read error.
        FirstBytes::Nothing => return Err("tls_handshake"),
    }
    let tls = match tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .into_fallible()
        .await
    {
        Ok(tls) => tls,
        Err((error, mut tcp)) => {
            tracing::debug!(%error, "TLS handshake failed");
            // rustls has queued its alert (no certificate, unknown CA): let the client
            // read it rather than a reset.
            linger(&mut tcp, false).await;
            return Err("tls_handshake");
        }
    };
    let principal = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        // A verified certificate without a usable CN is kept as an empty principal, so
        // the refusal names the certificate rather than asking for one.
        .map(|leaf| Arc::from(crate::tls::certificate_principal(leaf).unwrap_or_default()));
    Ok((tls, principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_in_total_and_per_ip_and_give_back_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.acquire(a).unwrap();
        let a2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).unwrap_err(), Refusal::PerIp);
        let b1 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).unwrap_err(), Refusal::Total);
        assert_eq!(limits.open(a), (3, 2));
        drop(a1);
        assert_eq!(limits.open(a), (2, 1));
        let a3 = limits.acquire(a).unwrap();
        drop((a2, a3, b1));
        assert_eq!(limits.open(a), (0, 0));
        assert!(limits.open.lock().unwrap().1.is_empty());
    }

    proptest::proptest! {
        /// Any sequence of opens and closes: a slot is given exactly when both counts
        /// are under their limits, and the counts match a plain model.
        #[test]
        fn limits_match_a_model(
            total_max in 1usize..6,
            per_ip_max in 1usize..4,
            ops in proptest::collection::vec((0u8..4, proptest::bool::ANY, 0usize..8), 0..200),
        ) {
            let limits = ConnectionLimits::new(total_max, per_ip_max);
            let mut held: Vec<(IpAddr, Slot)> = Vec::new();
            for (ip, open, pick) in ops {
                let ip = IpAddr::from([10, 0, 0, ip]);
                if open {
                    let from_ip = held.iter().filter(|(i, _)| *i == ip).count();
                    let expected = if held.len() >= total_max {
                        Err(Refusal::Total)
                    } else if from_ip >= per_ip_max {
                        Err(Refusal::PerIp)
                    } else {
                        Ok(())
                    };
                    match limits.acquire(ip) {
                        Ok(slot) => {
                            proptest::prop_assert_eq!(expected, Ok(()));
                            held.push((ip, slot));
                        }
                        Err(refusal) => proptest::prop_assert_eq!(expected, Err(refusal)),
                    }
                } else if !held.is_empty() {
                    held.swap_remove(pick % held.len());
                }
                let from_ip = held.iter().filter(|(i, _)| *i == ip).count();
                proptest::prop_assert_eq!(limits.open(ip), (held.len(), from_ip));
            }
            held.clear();
            proptest::prop_assert!(limits.open.lock().unwrap().1.is_empty());
        }
    }
}
