//! The connection to tidelogd: [`Client`] and its [`ClientOptions`].

use std::time::Duration;

use tidelog_proto::v1::access_client::AccessClient;
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::{CreateTopicRequest, DescribeTopicRequest, TopicConfig, TopicDescription};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};

/// Largest gRPC message sent or accepted, by every generated client of a [`Client`]: a
/// batch read may carry batches of up to 64 MiB (the format's limit), a read of
/// messages up to its 8 MiB budget plus one message of up to 16 MiB.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 80 * 1024 * 1024;

/// How a [`Client`] connects.
///
/// TLS: an `https://` URL speaks TLS to a tidelogd started with `--tls-cert` and
/// `--tls-key`. Its certificate is checked against [`ClientOptions::ca_pem`] (the
/// system's CAs when none is given); a broker with `--tls-client-ca` (mutual TLS) also
/// wants [`ClientOptions::identity`], whose subject CN becomes the principal unless a
/// token is sent as well. An address without a scheme (`host:port`) is `https://` when
/// TLS settings are given and `http://` otherwise; TLS settings with an explicit
/// `http://` URL are refused ([`Error::Tls`]), so a plaintext connection is never made
/// by mistake.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, ClientOptions};
/// let ca = std::fs::read("ca.pem").expect("the CA that signed tidelogd's certificate");
/// let client = Client::connect_with(
///     "https://broker.internal:7420",
///     ClientOptions::default().ca_pem(ca).token("tidelog_0123456789abcdef_..."),
/// )
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Sent as `authorization: Bearer <token>` on every call (tidelogd `--auth on`).
    pub token: Option<String>,
    /// How long to wait for the TCP connection before [`Error::Unreachable`].
    pub connect_timeout: Duration,
    /// Per-call timeout of unary calls (not of streams). `None` = none.
    pub request_timeout: Option<Duration>,
    /// HTTP/2 flow-control window of one stream, and of the whole connection: large
    /// enough that a subscription reading batches of a few MiB is not throttled by its
    /// own receive window. Default 8 MiB and 16 MiB (as `tidelog bench`).
    pub stream_window_bytes: u32,
    pub connection_window_bytes: u32,
    /// PEM of the CA that signed tidelogd's certificate (`https://` only); `None`
    /// trusts the system's CAs.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of this client's certificate and its key, for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            stream_window_bytes: 8 << 20,
            connection_window_bytes: 16 << 20,
            ca_pem: None,
            identity: None,
        }
    }
}

impl ClientOptions {
    /// These options with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// These options trusting the CA in `pem` for `https://` brokers.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// These options with a client certificate and its key (PEM), for mutual TLS.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Whether any TLS setting is given (a CA or a client certificate).
    pub fn tls_given(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// The rustls settings of an `https://` connection.
    fn tls_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// Adds the token to every call.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    value: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The transport every generated client runs on: the channel with the token
/// interceptor. [`Client::conn`] hands it out for generated clients this crate does not
/// name.
pub type Conn = InterceptedService<Channel, Credentials>;

/// A connection to one tidelogd. Cheap to clone: clones share the HTTP/2 connection,
/// which reconnects by itself when the broker comes back after a restart.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, ClientOptions};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let with_auth = Client::connect_with(
///     "http://127.0.0.1:7420",
///     ClientOptions::default().token("tidelog_0123456789abcdef_..."),
/// )
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    conn: Conn,
}

/// Refuses a URL whose host or port is not one (a port such as `7701x` would
/// otherwise be dialled as something else and reported as unreachable).
fn check_address(url: &str) -> Result<()> {
    let invalid = |reason: String| {
        Err(Error::InvalidUrl {
            url: url.to_string(),
            reason,
        })
    };
    let uri: tonic::codegen::http::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(error) => return invalid(error.to_string()),
    };
    let Some(authority) = uri.authority() else {
        return invalid("no host".into());
    };
    if authority.host().is_empty() {
        return invalid("no host".into());
    }
    // `Authority::port` is set only for a port that parses; a text after the last ':'
    // of the authority (outside an IPv6 [address]) that does not is refused here.
    let text = authority.as_str();
    let after_host = text.rsplit_once(']').map_or(text, |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && port.parse::<u16>().is_err()
    {
        return invalid(format!("the port {port:?} is not a number from 0 to 65535"));
    }
    Ok(())
}

impl Client {
    /// Connects to `url` (`http://host:port`; `host:port` is taken as `http://`).
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// The URL a [`Client`] connects to for `address` with `options`: kept when it has a
    /// scheme; `host:port` becomes `https://host:port` when TLS settings are given and
    /// `http://host:port` otherwise.
    ///
    /// ```
    /// use tidelog_client::{Client, ClientOptions};
    /// let plain = ClientOptions::default();
    /// assert_eq!(Client::url_for(" 127.0.0.1:7420 ", &plain), "http://127.0.0.1:7420");
    /// let tls = ClientOptions::default().ca_pem("-----BEGIN CERTIFICATE-----...");
    /// assert_eq!(Client::url_for("broker:7420", &tls), "https://broker:7420");
    /// assert_eq!(Client::url_for("http://broker:7420", &tls), "http://broker:7420");
    /// ```
    pub fn url_for(address: &str, options: &ClientOptions) -> String {
        let address = address.trim();
        if address.contains("://") {
            address.to_string()
        } else if options.tls_given() {
            format!("https://{address}")
        } else {
            format!("http://{address}")
        }
    }

    /// Connects with options (a token, timeouts, TLS); `url` as [`Client::url_for`]
    /// reads it.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
        let url = Client::url_for(url, &options);
        check_address(&url)?;
        let https = url.starts_with("https://");
        if !https && options.tls_given() {
            return Err(Error::Tls {
                url,
                reason: "a CA or a client certificate was given for an http:// address; \
                         use https://"
                    .into(),
            });
        }
        let value = match options
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            None => None,
            Some(text) => {
                tidelog_storage::access::token::parse_token(text.as_bytes()).map_err(|e| {
                    Error::InvalidToken {
                        reason: e.to_string(),
                    }
                })?;
                Some(
                    MetadataValue::try_from(format!("Bearer {text}")).map_err(|_| {
                        Error::InvalidToken {
                            reason: "not ASCII".into(),
                        }
                    })?,
                )
            }
        };
        let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| Error::InvalidUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(options.stream_window_bytes)
            .initial_connection_window_size(options.connection_window_bytes)
            // A stored batch of up to 1 MiB may come in one DATA frame, read without a
            // copy (crate::wire).
            .max_frame_size(tidelog_proto::frames::MAX_FRAME_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let Some(timeout) = options.request_timeout {
            endpoint = endpoint.timeout(timeout);
        }
        if https {
            endpoint = endpoint
                .tls_config(options.tls_config())
                .map_err(|e| Error::Tls {
                    url: url.clone(),
                    reason: root_cause(&e),
                })?;
        }
        let channel = endpoint.connect().await.map_err(|e| {
            let reason = root_cause(&e);
            // A broker that answered but whose certificate (or whose view of ours)
            // failed: retrying will not help, the settings must change.
            if https && reason.to_ascii_lowercase().contains("certificate") {
                Error::Tls {
                    url: url.clone(),
                    reason,
                }
            } else {
                Error::Unreachable {
                    url: url.clone(),
                    reason,
                }
            }
        })?;
        Ok(Client {
            url,
            conn: InterceptedService::new(channel, Credentials { value }),
        })
    }

    /// The broker's URL as connected.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The connection itself, for a generated client this crate does not name (each
    /// call carries the token). Set its message limits: tonic's default accepts 4 MiB.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The generated `Admin` client on this connection (every admin RPC).
    pub fn admin(&self) -> AdminClient<Conn> {
        AdminClient::new(self.conn.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The generated `Publisher` client on this connection.
    pub fn publisher(&self) -> PublisherClient<Conn> {
        PublisherClient::new(self.conn.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The generated `Consumer` client on this connection.
    pub fn consumer(&self) -> ConsumerClient<Conn> {
        ConsumerClient::new(self.conn.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The generated `Groups` client on this connection.
    pub fn groups(&self) -> GroupsClient<Conn> {
        GroupsClient::new(self.conn.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The generated `Queues` client on this connection.
    pub fn queues(&self) -> QueuesClient<Conn> {
        QueuesClient::new(self.conn.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The generated `Messages` client on this connection (lookups by id, delivery
    /// status and history).
    pub fn messages(&self) -> MessagesClient<Conn> {
        MessagesClient::new(self.conn.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// The generated `Access` client on this connection (tokens and ACLs).
    pub fn access(&self) -> AccessClient<Conn> {
        AccessClient::new(self.conn.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    /// Creates a topic (`Admin.CreateTopic`) and returns its description.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<TopicDescription> {
        let response = self
            .admin()
            .create_topic(CreateTopicRequest {
                name: name.to_string(),
                partitions,
                config: Some(config),
            })
            .await
            .map_err(|s| Error::from_status("CreateTopic", Some(name), &s))?;
        response.into_inner().topic.ok_or_else(|| Error::Broker {
            rpc: "CreateTopic",
            code: tonic::Code::Internal,
            message: "the answer has no topic".into(),
        })
    }

    /// Describes a topic (`Admin.DescribeTopic`): its configuration and partitions.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let response = self
            .admin()
            .describe_topic(DescribeTopicRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|s| Error::from_status("DescribeTopic", Some(name), &s))?;
        response.into_inner().topic.ok_or_else(|| Error::Broker {
            rpc: "DescribeTopic",
            code: tonic::Code::Internal,
            message: "the answer has no topic".into(),
        })
    }
}

/// The innermost cause of an error chain (a transport error's "connection refused").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_with_a_bad_port_is_not_a_url() {
        for address in ["127.0.0.1:7701x", "http://broker:99999", "http://:7420"] {
            let error = Client::connect(address).await.unwrap_err();
            assert!(
                matches!(error, Error::InvalidUrl { .. }),
                "{address}: {error}"
            );
        }
        assert!(check_address("http://127.0.0.1:7420").is_ok());
        assert!(check_address("https://[::1]:7420").is_ok());
        assert!(check_address("http://broker").is_ok());
    }
}
