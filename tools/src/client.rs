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
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{CliError, CliResult, root_cause};

/// The default address of tidelogd.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7420";
/// How long to wait for the TCP connection before saying the broker is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest gRPC message accepted or sent: a fetch can carry many messages of up to
/// 16 MiB each, well above tonic's 4 MiB default.
const GRPC_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The TLS files given on the command line (`--ca-file`, `--cert`, `--key`).
#[derive(Debug, Clone, Default)]
pub struct TlsArgs {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    fn any(&self) -> bool {
        self.ca_file.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// The TLS configuration for `https://` servers, set once by `main`.
static TLS: OnceLock<(bool, ClientTlsConfig)> = OnceLock::new();

fn read_pem(flag: &str, path: &std::path::Path) -> CliResult<Vec<u8>> {
    let bytes =
        std::fs::read(path).map_err(|e| CliError::io(format!("{flag} {}", path.display()), &e))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(CliError::usage(
            format!("{flag} {} is not a PEM file", path.display()),
            "give the PEM file (-----BEGIN ...-----) the operator issued",
        ));
    }
    Ok(bytes)
}

/// Reads the TLS files every `https://` connection uses: the CA that signed
/// tidelogd's certificate (default: the system's CAs) and, for a broker that wants
/// client certificates (`tidelogd --tls-client-ca`), this client's certificate and
/// key.
pub fn set_tls(args: &TlsArgs) -> CliResult<()> {
    let mut config = ClientTlsConfig::new();
    match &args.ca_file {
        Some(path) => {
            config = config.ca_certificate(Certificate::from_pem(read_pem("--ca-file", path)?))
        }
        None => config = config.with_native_roots(),
    }
    match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(
                read_pem("--cert", cert)?,
                read_pem("--key", key)?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(CliError::usage(
                "--cert and --key go together",
                "give both (or TIDELOG_CERT and TIDELOG_KEY), or neither",
            ));
        }
    }
    crate::error::note_client_certificate(args.cert.is_some());
    let _ = TLS.set((args.any(), config));
    Ok(())
}

/// The endpoint for `server` (as given by the operator): `https://` with the TLS
/// files of [`set_tls`]. A server without a scheme is `https://` when TLS files
/// were given, `http://` otherwise.
pub fn endpoint(server: &str) -> CliResult<(String, Endpoint)> {
    let (tls_given, config) = TLS.get().cloned().unwrap_or_default();
    let url = if tls_given && !server.contains("://") {
        format!("https://{}", server.trim())
    } else {
        normalize_server(server)
    };
    let endpoint = Endpoint::from_shared(url.clone()).map_err(|_| {
        CliError::usage(
            format!("--server {server:?} is not an address"),
            format!("use a URL such as {DEFAULT_SERVER} (or set TIDELOG_SERVER)"),
        )
    })?;
    if url.starts_with("https://") {
        let endpoint = endpoint.tls_config(config).map_err(|e| {
            CliError::usage(
                format!("the TLS files cannot be used ({})", root_cause(&e)),
                "check --ca-file, --cert and --key (PEM; the key must be the certificate's)",
            )
        })?;
        Ok((url, endpoint))
    } else if tls_given {
        Err(CliError::usage(
            format!("--ca-file/--cert/--key were given but --server {server:?} is not https://"),
            "use an https:// address (or drop the TLS flags)",
        ))
    } else {
        Ok((url, endpoint))
    }
}

/// The error for a connection to `url` that failed with `error`.
pub fn connect_error(url: &str, error: &(dyn std::error::Error + 'static)) -> CliError {
    let cause = root_cause(error);
    match crate::error::tls_hint(&cause) {
        Some(hint) => CliError::failure(
            format!("cannot connect to tidelogd at {url} ({cause})"),
            hint,
        ),
        None => CliError::failure(
            format!("cannot reach tidelogd at {url} ({cause})"),
            "is it running? (--server / TIDELOG_SERVER)",
        ),
    }
}

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
        let (url, endpoint) = endpoint(server)?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| connect_error(&url, &e))?;
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
