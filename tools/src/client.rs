//! The CLI's side of the connection to tidelogd: the command line's `--server`,
//! `--token` / `TIDELOG_TOKEN` and `--ca-file` / `--cert` / `--tls-key` become
//! tidelog-client's [`ClientOptions`], and its connection errors become lines in CLI
//! terms. The connection itself (URL rules, TLS, the token interceptor, message
//! limits, HTTP/2 windows) is [`tidelog_client::Client`]: one client code path for
//! services, the CLI and `tidelog bench`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tidelog_client::{Client, ClientOptions};

use crate::error::{CliError, CliResult, tls_hint};

/// The default address of tidelogd.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7420";

/// The TLS files given on the command line (`--ca-file`, `--cert`, `--tls-key`).
#[derive(Debug, Clone, Default)]
pub struct TlsArgs {
    pub ca_file: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The token of `--token`, set once by `main` before any connection.
static TOKEN: OnceLock<Option<String>> = OnceLock::new();
/// The TLS files' contents, set once by `main` (commands that talk to a broker only).
static TLS: OnceLock<TlsPem> = OnceLock::new();

#[derive(Debug, Default)]
struct TlsPem {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Sets the token every connection sends (`authorization: Bearer <token>`); the
/// client checks it looks like a token before connecting, so a typo fails at once and
/// not as UNAUTHENTICATED later.
pub fn set_token(token: Option<&str>) {
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let _ = TOKEN.set(token);
}

fn read_pem(flag: &str, path: &Path) -> CliResult<Vec<u8>> {
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

/// Reads the TLS files every connection uses: the CA that signed tidelogd's
/// certificate (default: the system's CAs) and, for a broker that wants client
/// certificates (`tidelogd --tls-client-ca`), this client's certificate and key.
pub fn set_tls(args: &TlsArgs) -> CliResult<()> {
    let ca = match &args.ca_file {
        Some(path) => Some(read_pem("--ca-file", path)?),
        None => None,
    };
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some((read_pem("--cert", cert)?, read_pem("--tls-key", key)?)),
        (None, None) => None,
        _ => {
            return Err(CliError::usage(
                "--cert and --tls-key go together",
                "give both (or TIDELOG_CERT and TIDELOG_CERT_KEY), or neither",
            ));
        }
    };
    crate::error::note_client_certificate(identity.is_some());
    let _ = TLS.set(TlsPem { ca, identity });
    Ok(())
}

/// The client options of the command line.
fn options() -> ClientOptions {
    let mut options = ClientOptions {
        token: TOKEN.get().cloned().flatten(),
        ..ClientOptions::default()
    };
    if let Some(tls) = TLS.get() {
        options.ca_pem = tls.ca.clone();
        options.identity = tls.identity.clone();
    }
    options
}

/// A new connection to `server` (as the operator gave it) with the command line's
/// token and TLS files. A server without a scheme is `https://` when TLS files were
/// given, `http://` otherwise (tidelog-client's rule).
pub async fn connect(server: &str) -> CliResult<Client> {
    Client::connect_with(server, options())
        .await
        .map_err(|e| connect_error(server, e))
}

/// A connection error in CLI terms: the flag to fix, or the broker's state.
fn connect_error(server: &str, error: tidelog_client::Error) -> CliError {
    use tidelog_client::Error;
    match error {
        Error::InvalidUrl { .. } => CliError::usage(
            format!("--server {server:?} is not an address"),
            format!("use a URL such as {DEFAULT_SERVER} (or set TIDELOG_SERVER)"),
        ),
        Error::InvalidToken { reason } => CliError::usage(
            format!("--token / TIDELOG_TOKEN: {reason}"),
            "pass the token tidelog auth token create printed (tidelog_<id>_<secret>)",
        ),
        Error::Tls { url, .. } if url.starts_with("http://") => CliError::usage(
            format!(
                "--ca-file/--cert/--tls-key were given but --server {server:?} is not https://"
            ),
            "use an https:// address (or drop the TLS flags)",
        ),
        Error::Tls { url, reason } | Error::Unreachable { url, reason }
            if tls_hint(&reason).is_some() =>
        {
            let hint = tls_hint(&reason).unwrap_or_default();
            CliError::failure(
                format!("cannot connect to tidelogd at {url} ({reason})"),
                hint,
            )
        }
        Error::Tls { reason, .. } => CliError::usage(
            format!("the TLS files cannot be used ({reason})"),
            "check --ca-file, --cert and --tls-key (PEM; the key must be the certificate's)",
        ),
        Error::Unreachable { url, reason } => CliError::failure(
            format!("cannot reach tidelogd at {url} ({reason})"),
            "is it running? (--server / TIDELOG_SERVER)",
        ),
        other => CliError::failure(
            format!("cannot connect to tidelogd at {server} ({other})"),
            "check --server, --token and the TLS flags",
        ),
    }
}

/// A connected broker: tidelog-client's [`Client`] (its generated clients through
/// `Deref`: `broker.admin()`, `broker.publisher()`, ...) and the error lines of calls
/// on it.
#[derive(Debug, Clone)]
pub struct Broker {
    /// The URL as connected (for error messages).
    pub server: String,
    client: Client,
}

impl std::ops::Deref for Broker {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Broker {
    pub async fn connect(server: &str) -> CliResult<Broker> {
        let client = connect(server).await?;
        Ok(Broker {
            server: client.url().to_string(),
            client,
        })
    }

    /// The error line for a failed call.
    pub fn error(&self, context: &str, status: &tonic::Status) -> CliError {
        CliError::status(context, status, &self.server)
    }

    /// The error line for a failed call made through tidelog-client's wrappers: what
    /// the broker said reads as [`Broker::error`] makes it read (the status is put back
    /// together from the error), the rest as the client's own words.
    pub fn client_error(&self, context: &str, error: &tidelog_client::Error) -> CliError {
        match broker_status(error) {
            Some(status) => self.error(context, &status),
            None => CliError::failure(
                format!("{context} failed: {error}"),
                "check --server and the tidelogd log",
            ),
        }
    }
}

/// The broker's status a client error stands for, when the broker said it.
pub fn broker_status(error: &tidelog_client::Error) -> Option<tonic::Status> {
    use tidelog_client::Error;
    use tonic::Status;
    Some(match error {
        Error::TopicNotFound { topic } => Status::not_found(format!(
            "topic {topic:?} does not exist; check the name (Admin.ListTopics lists the topics) \
             or create it with Admin.CreateTopic"
        )),
        Error::NotFound { message, .. } => Status::not_found(message.clone()),
        Error::InvalidArgument { message, .. } => Status::invalid_argument(message.clone()),
        Error::Unauthenticated { message } => Status::unauthenticated(message.clone()),
        Error::PermissionDenied { message } => Status::permission_denied(message.clone()),
        Error::Unavailable { message, .. } | Error::PartitionUnavailable { message, .. } => {
            Status::unavailable(message.clone())
        }
        Error::Rebalanced { message } => Status::failed_precondition(message.clone()),
        Error::SettleRefused { code, message } | Error::Broker { code, message, .. } => {
            Status::new(*code, message.clone())
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_client::Error;

    #[test]
    fn connection_errors_name_the_flag_to_fix() {
        let e = connect_error(
            "http://[bad",
            Error::InvalidUrl {
                url: "http://[bad".into(),
                reason: "invalid authority".into(),
            },
        );
        assert_eq!(e.exit, crate::error::Exit::Usage);
        assert!(
            e.message
                .contains("--server \"http://[bad\" is not an address")
        );
        let e = connect_error(
            "h:1",
            Error::Tls {
                url: "http://h:1".into(),
                reason: "a CA was given for an http:// address".into(),
            },
        );
        assert!(e.message.contains("is not https://"), "{e}");
        let e = connect_error(
            "https://h:1",
            Error::Tls {
                url: "https://h:1".into(),
                reason: "invalid peer certificate: UnknownIssuer".into(),
            },
        );
        assert_eq!(e.exit, crate::error::Exit::Failure);
        assert!(e.message.contains("--ca-file"), "{e}");
        let e = connect_error(
            "127.0.0.1:1",
            Error::Unreachable {
                url: "http://127.0.0.1:1".into(),
                reason: "Connection refused (os error 111)".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "error: cannot reach tidelogd at http://127.0.0.1:1 (Connection refused (os error \
             111)); is it running? (--server / TIDELOG_SERVER)"
        );
        let e = connect_error(
            "h:1",
            Error::InvalidToken {
                reason: "no tidelog_ prefix".into(),
            },
        );
        assert_eq!(e.exit, crate::error::Exit::Usage);
        assert!(e.message.starts_with("--token / TIDELOG_TOKEN: "), "{e}");
    }
}
