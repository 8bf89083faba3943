//! The connection to tidelogd and the gRPC clients over it.

use std::time::Duration;

use std::sync::OnceLock;
use tidelog_proto::v1::access_client::AccessClient;
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::messages_client::MessagesClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::queues_client::QueuesClient;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CliError, CliResult, root_cause};

/// The default address of tidelogd.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7420";
/// How long to wait for the TCP connection before saying the broker is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest gRPC message accepted or sent: a fetch can carry many messages of up to
/// 16 MiB each, well above tonic's 4 MiB default.
const GRPC_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// A connection that carries the credentials (`--token` / `TIDELOG_TOKEN`) on every
/// call.
pub type Conn = InterceptedService<Channel, Credentials>;

/// The token given on the command line, set once by `main` before any connection.
static TOKEN: OnceLock<Option<MetadataValue<Ascii>>> = OnceLock::new();

/// Sets the token every connection sends (`authorization: Bearer <token>`); checks it
/// looks like a token, so a typo fails here and not as UNAUTHENTICATED later.
pub fn set_token(token: Option<&str>) -> CliResult<()> {
    let value = match token.map(str::trim).filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => {
            tidelog_storage::access::token::parse_token(text.as_bytes()).map_err(|e| {
                CliError::usage(
                    format!("--token / TIDELOG_TOKEN: {e}"),
                    "pass the token tidelog auth token create printed (tidelog_<id>_<secret>)",
                )
            })?;
            Some(
                MetadataValue::try_from(format!("Bearer {text}")).map_err(|_| {
                    CliError::usage("--token is not ASCII", "pass the token as printed")
                })?,
            )
        }
    };
    let _ = TOKEN.set(value);
    Ok(())
}

/// Adds the `authorization` metadata to every call, when a token was given.
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

/// `channel` with the command line's credentials.
pub fn authorized(channel: Channel) -> Conn {
    let value = TOKEN.get().cloned().flatten();
    InterceptedService::new(channel, Credentials { value })
}

/// A connected broker.
#[derive(Debug, Clone)]
pub struct Broker {
    /// The address as the operator gave it (for error messages).
    pub server: String,
    channel: Conn,
}

/// `host:port` becomes `http://host:port`; anything with a scheme is kept.
pub fn normalize_server(server: &str) -> String {
    let server = server.trim();
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

impl Broker {
    pub async fn connect(server: &str) -> CliResult<Broker> {
        let url = normalize_server(server);
        let endpoint = Endpoint::from_shared(url.clone()).map_err(|_| {
            CliError::usage(
                format!("--server {server:?} is not an address"),
                format!("use a URL such as {DEFAULT_SERVER} (or set TIDELOG_SERVER)"),
            )
        })?;
        if url.starts_with("https://") {
            return Err(CliError::usage(
                format!("--server {server:?} asks for TLS, which this build does not speak"),
                "use an http:// address",
            ));
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| {
                CliError::failure(
                    format!("cannot reach tidelogd at {url} ({})", root_cause(&e)),
                    "is it running? (--server / TIDELOG_SERVER)",
                )
            })?;
        Ok(Broker {
            server: url,
            channel: authorized(channel),
        })
    }

    pub fn admin(&self) -> AdminClient<Conn> {
        AdminClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn publisher(&self) -> PublisherClient<Conn> {
        PublisherClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn consumer(&self) -> ConsumerClient<Conn> {
        ConsumerClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn groups(&self) -> GroupsClient<Conn> {
        GroupsClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn queues(&self) -> QueuesClient<Conn> {
        QueuesClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn messages(&self) -> MessagesClient<Conn> {
        MessagesClient::new(self.channel.clone())
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    }

    pub fn access(&self) -> AccessClient<Conn> {
        AccessClient::new(self.channel.clone())
    }

    /// The error line for a failed call.
    pub fn error(&self, context: &str, status: &tonic::Status) -> CliError {
        CliError::status(context, status, &self.server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_get_a_scheme() {
        assert_eq!(normalize_server("127.0.0.1:7420"), "http://127.0.0.1:7420");
        assert_eq!(normalize_server(" http://h:1 "), "http://h:1");
    }
}
