//! The one error type of the CLI: a line for the operator and an exit code.
//!
//! Every failure ends as `error: <what failed>; <what to do>` on stderr, never a
//! backtrace. Exit codes: 0 ok, 1 an error reported by the broker or found in the
//! data, 2 a usage error (bad arguments).

use std::fmt;

use tonic::Code;

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The broker or the data said no (exit 1).
    Failure,
    /// The command line is wrong (exit 2).
    Usage,
    /// Nothing to report: stdout was closed by the reader (`| head`), exit 0.
    Quiet,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Quiet => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
        }
    }
}

/// A failure with the line to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub message: String,
    pub exit: Exit,
    /// The broker's gRPC status code, when the broker said no.
    pub code: Option<Code>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)
    }
}

pub type CliResult<T> = Result<T, CliError>;

impl CliError {
    /// `what` failed; `todo` says what to do about it.
    pub fn failure(what: impl fmt::Display, todo: impl fmt::Display) -> Self {
        CliError {
            message: format!("{what}; {todo}"),
            exit: Exit::Failure,
            code: None,
        }
    }

    /// A failure whose message already says what to do.
    pub fn plain(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            exit: Exit::Failure,
            code: None,
        }
    }

    /// Bad arguments (exit 2).
    pub fn usage(what: impl fmt::Display, todo: impl fmt::Display) -> Self {
        CliError {
            message: format!("{what}; {todo}"),
            exit: Exit::Usage,
            code: None,
        }
    }

    /// The same error, marked with the gRPC code the broker answered.
    pub fn with_code(self, code: Code) -> Self {
        CliError {
            code: Some(code),
            ..self
        }
    }

    /// The reader of stdout went away: stop quietly.
    pub fn quiet() -> Self {
        CliError {
            message: String::new(),
            exit: Exit::Quiet,
            code: None,
        }
    }

    /// An I/O error on a local file.
    pub fn io(context: impl fmt::Display, error: &std::io::Error) -> Self {
        let todo = match error.kind() {
            std::io::ErrorKind::NotFound => "check the path",
            std::io::ErrorKind::PermissionDenied => {
                "check the file permissions (or run as the broker's user)"
            }
            _ => "check the file and the disk",
        };
        CliError::failure(format!("{context}: {error}"), todo)
    }

    /// A gRPC status from the broker at `server`, while doing `context` (e.g.
    /// `creating topic "orders"`).
    pub fn status(context: &str, status: &tonic::Status, server: &str) -> Self {
        CliError {
            code: Some(status.code()),
            ..CliError::status_line(context, status, server)
        }
    }

    fn status_line(context: &str, status: &tonic::Status, server: &str) -> Self {
        let message = status.message().trim();
        // A status made by the client's transport ("transport error", "h2 protocol
        // error") says little by itself: its cause does (a TLS alert, a GOAWAY). A
        // status the broker sent has no source.
        let cause = std::error::Error::source(status).map(root_cause);
        let with_cause;
        let message = match &cause {
            Some(cause) if !message.contains(cause.as_str()) => {
                with_cause = format!("{message}: {cause}");
                with_cause.as_str()
            }
            _ => message,
        };
        let message = if message.is_empty() {
            code_name(status.code()).to_string()
        } else {
            crate::terms::to_cli(message)
        };
        // A TLS port answers a plaintext call with FAILED_PRECONDITION and its own text.
        if cause.is_some()
            || matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal
            )
            || message.contains("this port speaks TLS")
        {
            // Refused for want of a client certificate, the client sometimes sees the
            // connection closed before it reads the broker's alert.
            let closed_without_certificate = server.starts_with("https://")
                && message.contains("connection closed")
                && !has_client_certificate();
            let hint = tls_hint(&message).or(closed_without_certificate.then_some(
                "tidelogd closed the connection: if it requires client certificates \
                 (--tls-client-ca), pass --cert and --tls-key (or TIDELOG_CERT and TIDELOG_CERT_KEY)",
            ));
            if let Some(hint) = hint {
                return CliError::failure(
                    format!("{context} failed: cannot connect to tidelogd at {server} ({message})"),
                    hint,
                );
            }
        }
        let what = format!("{context} failed: {message}");
        let todo = match status.code() {
            Code::Unavailable => {
                if looks_like_transport(&message) && broke_during_call(&message) {
                    return CliError::failure(
                        format!(
                            "{context} failed: the connection to tidelogd at {server} broke during the call ({message}); a change it asked for may or may not have taken effect"
                        ),
                        "check with the matching describe or list command, then retry; is tidelogd running? (--server / TIDELOG_SERVER)",
                    );
                }
                if looks_like_transport(&message) {
                    return CliError::failure(
                        format!("{context} failed: cannot reach tidelogd at {server} ({message})"),
                        "is it running? (--server / TIDELOG_SERVER)",
                    );
                }
                "retry shortly; if it persists, check the tidelogd log (a poisoned partition needs a broker restart)"
            }
            Code::NotFound if context.contains("group") && !context.contains("topic") => {
                "check the name (tidelog group list)"
            }
            Code::NotFound if context.contains("topic") && !context.contains("group") => {
                "check the name (tidelog topic list)"
            }
            Code::NotFound => "check the names (tidelog topic list / tidelog group list)",
            Code::AlreadyExists => "pick another name, or change it with `tidelog topic alter`",
            Code::InvalidArgument => "fix the value and try again (see --help)",
            Code::FailedPrecondition => "stop the group's consumers first, then try again",
            Code::OutOfRange => {
                "pick a position within the partition's log start and end (tidelog topic describe)"
            }
            Code::DataLoss => {
                "stop tidelogd and run `tidelog segment verify` on its data directory"
            }
            Code::Internal | Code::Unknown => "check the tidelogd log for the cause",
            Code::DeadlineExceeded | Code::Cancelled => {
                "the request may or may not have taken effect; check, then retry"
            }
            Code::Unimplemented => "this tidelogd does not support it; upgrade the broker",
            Code::ResourceExhausted => "send less per request (smaller batches or messages)",
            Code::Unauthenticated | Code::PermissionDenied => "check the credentials",
            Code::Aborted => "another client took over; try again",
            Code::Ok => "nothing to do",
        };
        // The broker's messages usually say what to do already; do not say it twice.
        if message.contains("; ") || message.contains(" first") || message.contains("`tidelog ") {
            return CliError::plain(what);
        }
        CliError::failure(what, todo)
    }
}

/// The stable JSON form of an error, printed on stderr when `--json` is given:
/// `{"error": {"message": ..., "exit_code": 1, "grpc_code": "NOT_FOUND"}}`, every key
/// always present (`grpc_code` is null unless the broker answered with a status).
pub fn error_json(message: &str, exit: Exit, code: Option<Code>) -> serde_json::Value {
    serde_json::json!({
        "error": {
            "message": message,
            "exit_code": exit.code(),
            "grpc_code": code.map(code_name),
        }
    })
}

/// True when an UNAVAILABLE status came from the transport (no connection) rather
/// than from the broker (shutting down, poisoned partition).
fn looks_like_transport(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "transport error",
        "connection refused",
        "tcp connect error",
        "connection reset",
        "broken pipe",
        "dns error",
        "connection closed",
        "error trying to connect",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// True when a transport failure broke a call under way (the connection reset or
/// closed after it was sent) rather than keeping it from being sent (no connection):
/// the broker may have carried it out.
fn broke_during_call(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    let never_sent = [
        "connection refused",
        "tcp connect error",
        "dns error",
        "error trying to connect",
    ];
    let broke = [
        "connection reset",
        "broken pipe",
        "connection closed",
        "stream closed",
    ];
    !never_sent.iter().any(|needle| message.contains(needle))
        && broke.iter().any(|needle| message.contains(needle))
}

/// What to do about a TLS failure, from its message (`None`: not a TLS failure).
pub fn tls_hint(message: &str) -> Option<&'static str> {
    let hints: [(&[&str], &str); 7] = [
        (
            &[
                "UnknownIssuer",
                "invalid peer certificate: Other",
                "BadSignature",
            ],
            "tidelogd's certificate is not trusted: pass --ca-file (or TIDELOG_CA_FILE) with \
             the CA certificate that signed it",
        ),
        (
            &["NotValidForName", "not valid for name"],
            "tidelogd's certificate does not hold the host in --server: connect by a name or \
             IP address the certificate lists",
        ),
        (
            &["Expired", "NotValidYet"],
            "a certificate is outside its validity period: check the clocks, or have the \
             operator renew it (tidelogd re-reads its files on SIGHUP)",
        ),
        (
            &["CertificateRequired"],
            "tidelogd requires a client certificate (--tls-client-ca): pass --cert and --tls-key \
             (or TIDELOG_CERT and TIDELOG_CERT_KEY)",
        ),
        (
            &[
                "UnknownCA",
                "BadCertificate",
                "alert: DecryptError",
                "CertificateUnknown",
            ],
            "tidelogd does not accept this client certificate (not signed by its \
             --tls-client-ca): pass a --cert and --tls-key it trusts",
        ),
        (
            &["InvalidContentType", "corrupt message"],
            "tidelogd at this address does not speak TLS: use an http:// --server",
        ),
        (
            &["this port speaks TLS", "inadequate security"],
            "tidelogd there speaks TLS: use --server https://HOST:PORT, with --ca-file if its \
             certificate is not signed by a system CA",
        ),
    ];
    hints
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| message.contains(n)))
        .map(|(_, hint)| *hint)
}

pub use tidelog_proto::code_name;

/// The innermost message of an error chain (the one that names the cause, such as
/// "Connection refused (os error 111)").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Whether a client certificate was given (`--cert`), for the connection hints.
static CLIENT_CERTIFICATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Records whether `--cert`/`--tls-key` were given (set once, where the TLS settings are).
pub fn note_client_certificate(given: bool) {
    let _ = CLIENT_CERTIFICATE.set(given);
}

fn has_client_certificate() -> bool {
    CLIENT_CERTIFICATE.get().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_one_actionable_line() {
        let server = "http://127.0.0.1:7420";
        let e = CliError::status(
            "creating topic \"orders\"",
            &tonic::Status::already_exists("topic \"orders\" already exists"),
            server,
        );
        assert_eq!(e.exit, Exit::Failure);
        assert_eq!(
            e.to_string(),
            "error: creating topic \"orders\" failed: topic \"orders\" already exists; \
             pick another name, or change it with `tidelog topic alter`"
        );
        assert!(!e.to_string().contains('\n'));

        let e = CliError::status(
            "listing topics",
            &tonic::Status::unavailable("tcp connect error: Connection refused (os error 111)"),
            server,
        );
        assert!(
            e.to_string()
                .contains("cannot reach tidelogd at http://127.0.0.1:7420"),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("is it running? (--server / TIDELOG_SERVER)")
        );
        // A connection that broke under a call already sent: it may have taken effect.
        let e = CliError::status(
            "resetting the offsets of group \"billing\"",
            &tonic::Status::unavailable(
                "transport error: connection closed before message completed",
            ),
            server,
        );
        assert!(
            e.to_string().contains(
                "the connection to tidelogd at http://127.0.0.1:7420 broke during the call"
            ) && e.to_string().contains("may or may not have taken effect"),
            "{e}"
        );

        // A message that already says what to do is not extended.
        let e = CliError::status(
            "resetting offsets",
            &tonic::Status::failed_precondition(
                "group \"g\" has 1 live member; stop its consumers first",
            ),
            server,
        );
        assert_eq!(
            e.to_string(),
            "error: resetting offsets failed: group \"g\" has 1 live member; stop its consumers first"
        );

        let e = CliError::status("x", &tonic::Status::new(Code::Internal, ""), server);
        assert!(e.to_string().contains("failed: INTERNAL;"), "{e}");
    }

    #[test]
    fn broker_hints_are_said_in_cli_terms_once() {
        let server = "http://127.0.0.1:7420";
        let e = CliError::status(
            "describing group \"g\"",
            &tonic::Status::not_found(
                "group \"g\" not found: it has no live members and no committed offsets \
                 (Groups.ListGroups lists the groups)",
            ),
            server,
        );
        assert_eq!(
            e.to_string(),
            "error: describing group \"g\" failed: group \"g\" not found: it has no live \
             members and no committed offsets (`tidelog group list` lists the groups)"
        );
    }

    #[test]
    fn json_errors_have_one_shape() {
        let e = CliError::status(
            "describing topic \"t\"",
            &tonic::Status::not_found("topic \"t\" not found"),
            "http://x",
        );
        assert_eq!(e.code, Some(Code::NotFound));
        assert_eq!(
            error_json(&e.message, e.exit, e.code).to_string(),
            r#"{"error":{"message":"describing topic \"t\" failed: topic \"t\" not found; check the name (tidelog topic list)","exit_code":1,"grpc_code":"NOT_FOUND"}}"#
        );
        let usage = CliError::usage("bad", "fix it");
        assert_eq!(
            error_json(&usage.message, usage.exit, usage.code).to_string(),
            r#"{"error":{"message":"bad; fix it","exit_code":2,"grpc_code":null}}"#
        );
    }

    #[test]
    fn tls_failures_say_which_flag_to_pass() {
        for (message, flag) in [
            ("invalid peer certificate: UnknownIssuer", "--ca-file"),
            (
                "received fatal alert: CertificateRequired",
                "--cert and --tls-key",
            ),
            ("received fatal alert: UnknownCA", "--tls-client-ca"),
            (
                "received corrupt message of type InvalidContentType",
                "http://",
            ),
            (
                "connection error received: security properties do not meet minimum \
                 requirements (b\"tidelogd: this port speaks TLS; ...\")",
                "https://",
            ),
        ] {
            let hint = tls_hint(message).unwrap_or_else(|| panic!("no hint for {message}"));
            assert!(hint.contains(flag), "{message}: {hint}");
        }
        assert_eq!(tls_hint("Connection refused (os error 111)"), None);
    }

    #[test]
    fn exit_codes_follow_the_convention() {
        assert_eq!(CliError::usage("a", "b").exit.code(), 2);
        assert_eq!(CliError::failure("a", "b").exit.code(), 1);
        assert_eq!(CliError::quiet().exit.code(), 0);
    }
}
