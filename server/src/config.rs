//! tidelogd's settings. Each comes from, in order of precedence: a command-line flag,
//! an environment variable `TIDELOG_*`, a key of the TOML file given by `--config`,
//! then the built-in default. `tidelogd --help` lists them all.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use tidelog_storage::duration::parse_duration_ms;

/// Default gRPC address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7420";
/// Default Prometheus metrics address.
pub const METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:7421";
/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./data";
/// Default log filter.
pub const LOG_LEVEL_DEFAULT: &str = "info";
/// Default time between retention passes.
pub const RETENTION_INTERVAL_DEFAULT: &str = "30s";
/// Default for the largest gRPC request the server decodes: a 16 MiB message (the
/// largest `max_message_bytes` a topic can have) plus room for key, headers and
/// framing, with a second message of that size.
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 32 * 1024 * 1024;
/// Bounds on `max_request_bytes`: below 64 KiB even small batches fail; above 1 GiB
/// one request could hold a large share of the machine's memory.
pub const MAX_REQUEST_BYTES_MIN: usize = 64 * 1024;
pub const MAX_REQUEST_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Default cap on concurrent gRPC calls (HTTP/2 streams) per client connection: room
/// for a client that multiplexes a subscription per partition over one channel, while
/// one connection can pin at most a few tens of MiB (about 6.5 KiB per idle stream).
pub const MAX_STREAMS_PER_CONNECTION_DEFAULT: u32 = 4096;
/// Most `max_streams_per_connection` accepts.
pub const MAX_STREAMS_PER_CONNECTION_MAX: u32 = 65_536;
/// Default fsync threads (the storage engine's default).
pub const FLUSH_THREADS_DEFAULT: usize = 4;
/// Most fsync threads: one disk gains nothing from more.
pub const FLUSH_THREADS_MAX: usize = 64;
/// Name of the bootstrap admin token file inside the data directory.
pub const BOOTSTRAP_TOKEN_FILE_DEFAULT: &str = "bootstrap-admin.token";
/// Default cap on open gRPC connections in total; tidelogd raises its open-file
/// limit to the hard limit at start (each connection is one descriptor).
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// Default cap on open gRPC connections from one client IP address.
pub const MAX_CONNECTIONS_PER_IP_DEFAULT: usize = 1_000;
/// Most `max_connections` accepts.
pub const MAX_CONNECTIONS_MAX: usize = 1_000_000;
/// Default time allowed for in-flight calls to finish on shutdown.
pub const SHUTDOWN_TIMEOUT_DEFAULT: &str = "10s";
/// Default of `--max-timestamp-ahead` (Kafka 4.0's `log.message.timestamp.after.max.ms`).
pub const MAX_TIMESTAMP_AHEAD_DEFAULT: &str = "1h";

/// The command line. Every setting is optional here so the file and the defaults
/// can fill in what flags and environment leave out.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "tidelogd",
    version,
    about = "tidelogd: the tidelog broker, a durable log-structured message broker with a gRPC API",
    long_about = "tidelogd: the tidelog broker, a durable log-structured message broker with a gRPC API.\n\n\
Settings come from flags, then environment variables (TIDELOG_*), then the TOML file given \
with --config (keys named like the flags with '_' for '-', e.g. data_dir = \"/var/lib/tidelog\"), \
then built-in defaults. Durations need a unit: 500ms, 30s, 5m, 1h30m, 7d, or ISO-8601 \
such as PT30S; a bare number other than 0 is refused.\n\n\
Once both sockets are bound tidelogd prints one line to stdout:\n  \
tidelogd ready grpc=ADDR metrics=ADDR data=DIR\n\
and logs to stderr. SIGINT or SIGTERM stops it gracefully (exit status 0). SIGHUP re-reads \
the TLS files and the metrics token (--tls-cert, --tls-key, --tls-client-ca, \
--metrics-token-file) for new connections, and opens the --audit-log file again; a file \
that does not load keeps the old ones."
)]
pub struct Cli {
    /// TOML file with settings (keys: data_dir, listen, metrics_listen, log_level,
    /// retention_interval, flush_threads, max_request_bytes, max_streams_per_connection,
    /// shutdown_timeout, max_timestamp_ahead, auth, auth_bootstrap_token_file, tls_cert, tls_key,
    /// tls_client_ca, metrics_token_file, max_connections, max_connections_per_ip,
    /// insecure_allow_network_plaintext, audit_log).
    #[arg(long, env = "TIDELOG_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Data directory: topics, segments and committed offsets [default: ./data]
    #[arg(long, env = "TIDELOG_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// gRPC listen address; port 0 picks a free port [default: 127.0.0.1:7420]
    #[arg(long, env = "TIDELOG_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Prometheus metrics listen address (serves GET /metrics); port 0 picks a free
    /// port [default: 127.0.0.1:7421]
    #[arg(long, env = "TIDELOG_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log filter, e.g. info, debug, or tidelog_server=debug,info. When neither this
    /// flag nor TIDELOG_LOG_LEVEL is given, RUST_LOG is used if set, then the file's
    /// log_level [default: info]
    #[arg(long, env = "TIDELOG_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Time between retention passes (segment deletion by retention_ms,
    /// retention_bytes and TTL), at least 1ms, e.g. 30s or 5m [default: 30s]
    #[arg(long, env = "TIDELOG_RETENTION_INTERVAL", value_name = "DURATION", value_parser = retention_interval_arg)]
    pub retention_interval: Option<Duration>,

    /// Threads that fsync partitions (group commit) [default: 4]
    #[arg(long, env = "TIDELOG_FLUSH_THREADS", value_name = "N")]
    pub flush_threads: Option<usize>,

    /// Largest gRPC request the server accepts, in bytes; larger requests fail with
    /// RESOURCE_EXHAUSTED before they reach a handler [default: 33554432 (32 MiB)]
    #[arg(long, env = "TIDELOG_MAX_REQUEST_BYTES", value_name = "BYTES")]
    pub max_request_bytes: Option<usize>,

    /// Most concurrent calls (HTTP/2 streams) one client connection may have open;
    /// clients queue further calls until one ends [default: 4096]
    #[arg(long, env = "TIDELOG_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub max_streams_per_connection: Option<u32>,

    /// How long shutdown waits for in-flight calls before closing anyway, e.g. 10s;
    /// 0 = do not wait [default: 10s]
    #[arg(long, env = "TIDELOG_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = shutdown_timeout_arg)]
    pub shutdown_timeout: Option<Duration>,

    /// Refuse a published message whose timestamp is further than this ahead of the
    /// broker's clock (a future timestamp holds time retention of its segment until
    /// then), e.g. 1h; `off` = any timestamp [default: 1h]
    #[arg(long, env = "TIDELOG_MAX_TIMESTAMP_AHEAD", value_name = "DURATION|off", value_parser = max_timestamp_ahead_arg)]
    pub max_timestamp_ahead: Option<MaxAhead>,

    /// Require a bearer token on every call (metadata `authorization: Bearer <token>`)
    /// and authorize it against the ACL rules (default deny). On the first start with
    /// no token stored, an admin token is written to --auth-bootstrap-token-file. See
    /// README "Security" [default: off]
    #[arg(long, env = "TIDELOG_AUTH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub auth: Option<bool>,

    /// Where the first start with --auth writes the bootstrap admin token (principal
    /// `admin`, allowed everything), readable only by tidelogd's user; never
    /// overwritten [default: DATA_DIR/bootstrap-admin.token]
    #[arg(long, env = "TIDELOG_AUTH_BOOTSTRAP_TOKEN_FILE", value_name = "FILE")]
    pub auth_bootstrap_token_file: Option<PathBuf>,

    /// Serve TLS on the gRPC and metrics ports with this PEM certificate chain (leaf
    /// first); needs --tls-key. Re-read on SIGHUP (new connections get the new
    /// files; open ones keep theirs; a bad file keeps the old ones and is logged)
    #[arg(
        long,
        env = "TIDELOG_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1)
    #[arg(
        long,
        env = "TIDELOG_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: every gRPC client must present a certificate signed by a CA in
    /// this PEM file; with --auth its subject CN is the caller's principal unless
    /// the call also carries a token (the token wins)
    #[arg(
        long,
        env = "TIDELOG_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Require `Authorization: Bearer <token>` on /metrics, the token being this
    /// file's one line (at least 16 characters); re-read on SIGHUP
    #[arg(long, env = "TIDELOG_METRICS_TOKEN_FILE", value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,

    /// Append the audit trail (refused calls, token, ACL and quota changes, topic,
    /// group and queue changes) to this file as JSON lines instead of the log; opened
    /// again on SIGHUP for rotation [default: the log, target tidelog_audit]
    #[arg(long, env = "TIDELOG_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,

    /// Most gRPC connections open at once; more are closed at accept and counted in
    /// tidelog_connections_refused{reason="max_connections"} [default: 10000]
    #[arg(long, env = "TIDELOG_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Most gRPC connections open at once from one client IP address [default: 1000]
    #[arg(long, env = "TIDELOG_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Listen on a non-loopback address without the protection such an address
    /// needs: for --listen, TLS (--tls-cert) and --auth; for --metrics-listen, TLS
    /// and --metrics-token-file. Without it tidelogd refuses such an address
    #[arg(long, env = "TIDELOG_INSECURE_ALLOW_NETWORK_PLAINTEXT", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_allow_network_plaintext: Option<bool>,
}

/// A duration flag or environment variable `env`, in the one grammar of
/// `tidelog_storage::duration`. clap names the flag in the error; when the value is
/// the environment variable's, the error names the variable too.
fn duration_arg(env: &str, text: &str) -> Result<Duration, String> {
    parse_duration_ms(text)
        .map(Duration::from_millis)
        .map_err(|e| {
            if std::env::var(env).is_ok_and(|value| value == text) {
                format!("{env}={text:?} in the environment: {e}")
            } else {
                e.to_string()
            }
        })
}

fn retention_interval_arg(text: &str) -> Result<Duration, String> {
    duration_arg("TIDELOG_RETENTION_INTERVAL", text)
}

fn shutdown_timeout_arg(text: &str) -> Result<Duration, String> {
    duration_arg("TIDELOG_SHUTDOWN_TIMEOUT", text)
}

/// `--max-timestamp-ahead`: a duration, or `off` (no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAhead(pub Option<Duration>);

fn max_timestamp_ahead_arg(text: &str) -> Result<MaxAhead, String> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(MaxAhead(None));
    }
    duration_arg("TIDELOG_MAX_TIMESTAMP_AHEAD", text).map(|d| MaxAhead(Some(d)))
}

/// The TOML file. Unknown keys are an error, so a typo does not pass silently.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub log_level: Option<String>,
    pub retention_interval: Option<String>,
    pub flush_threads: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub max_streams_per_connection: Option<u32>,
    pub shutdown_timeout: Option<String>,
    pub max_timestamp_ahead: Option<String>,
    pub auth: Option<bool>,
    pub auth_bootstrap_token_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub metrics_token_file: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub insecure_allow_network_plaintext: Option<bool>,
}

/// The effective settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// The tracing filter directive.
    pub log_level: String,
    pub retention_interval: Duration,
    pub flush_threads: usize,
    /// Largest decoded gRPC message (tonic's max decoding message size).
    pub max_request_bytes: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS announced to every client.
    pub max_streams_per_connection: u32,
    pub shutdown_timeout: Duration,
    /// Published timestamps further ahead of the clock are refused; `None`: any.
    pub max_timestamp_ahead: Option<Duration>,
    /// Whether calls need a token and are authorized (`--auth`).
    pub auth: bool,
    /// Where the bootstrap admin token goes on the first start with auth on.
    pub auth_bootstrap_token_file: PathBuf,
    /// TLS on both ports (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<crate::tls::TlsFiles>,
    /// The metrics port's bearer token file.
    pub metrics_token_file: Option<PathBuf>,
    /// The audit trail's file (`--audit-log`); `None`: the log.
    pub audit_log: Option<PathBuf>,
    /// Most gRPC connections in total.
    pub max_connections: usize,
    /// Most gRPC connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Whether a non-loopback listen address is allowed without TLS and auth.
    pub insecure_allow_network_plaintext: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::resolve(Cli::default(), FileSettings::default(), None)
            .expect("the built-in defaults are valid")
    }
}

impl Settings {
    /// Every setting with its effective value, by its config file key, sorted: what
    /// `Admin.DescribeBroker` reports. Durations are written with a unit, in the form
    /// the setting takes.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let duration = |d: Duration| {
            tidelog_storage::duration::format_duration_ms(
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            )
        };
        let mut settings = vec![
            ("auth", self.auth.to_string()),
            (
                "auth_bootstrap_token_file",
                self.auth_bootstrap_token_file.display().to_string(),
            ),
            ("data_dir", self.data_dir.display().to_string()),
            (
                "insecure_allow_network_plaintext",
                self.insecure_allow_network_plaintext.to_string(),
            ),
            ("flush_threads", self.flush_threads.to_string()),
            ("listen", self.listen.to_string()),
            ("log_level", self.log_level.clone()),
            ("max_connections", self.max_connections.to_string()),
            (
                "max_connections_per_ip",
                self.max_connections_per_ip.to_string(),
            ),
            (
                "metrics_token_file",
                path_or_none(self.metrics_token_file.as_deref()),
            ),
            ("audit_log", path_or_none(self.audit_log.as_deref())),
            (
                "tls_cert",
                path_or_none(self.tls.as_ref().map(|t| t.cert.as_path())),
            ),
            (
                "tls_client_ca",
                path_or_none(self.tls.as_ref().and_then(|t| t.client_ca.as_deref())),
            ),
            (
                "tls_key",
                path_or_none(self.tls.as_ref().map(|t| t.key.as_path())),
            ),
            ("max_request_bytes", self.max_request_bytes.to_string()),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection.to_string(),
            ),
            ("metrics_listen", self.metrics_listen.to_string()),
            ("retention_interval", duration(self.retention_interval)),
            ("shutdown_timeout", duration(self.shutdown_timeout)),
            (
                "max_timestamp_ahead",
                self.max_timestamp_ahead
                    .map_or_else(|| "off".to_string(), duration),
            ),
        ];
        settings.sort_unstable_by_key(|(name, _)| *name);
        settings
    }

    /// Reads the file named by `cli.config` (if any) and merges.
    pub fn load(cli: Cli) -> Result<Settings, String> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let rust_log = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
        Settings::resolve(cli, file, rust_log)
    }

    /// Merges flags/environment (`cli`, already merged by clap), the file and the
    /// defaults, and checks every value.
    pub fn resolve(
        cli: Cli,
        file: FileSettings,
        rust_log: Option<String>,
    ) -> Result<Settings, String> {
        // Flags and environment were parsed by clap; a file value is named by its key.
        let file_name = cli.config.as_ref().map_or_else(
            || "the config file".to_string(),
            |p| p.display().to_string(),
        );
        let from_file = |key: &str, text: Option<String>| -> Result<Option<Duration>, String> {
            text.map(|text| {
                parse_duration_ms(&text)
                    .map(Duration::from_millis)
                    .map_err(|e| format!("{file_name}: {key} = {text:?}: {e}"))
            })
            .transpose()
        };
        let parse_addr = |text: &str| -> SocketAddr {
            text.parse()
                .expect("built-in default addresses are valid socket addresses")
        };
        let default = |text: &str| {
            Duration::from_millis(
                parse_duration_ms(text).expect("built-in default durations are valid"),
            )
        };
        let retention_interval = match cli.retention_interval {
            Some(interval) => interval,
            None => from_file("retention_interval", file.retention_interval)?
                .unwrap_or_else(|| default(RETENTION_INTERVAL_DEFAULT)),
        };
        if retention_interval.is_zero() {
            return Err(
                "retention_interval (--retention-interval, TIDELOG_RETENTION_INTERVAL) must be at least 1ms"
                    .into(),
            );
        }
        let shutdown_timeout = match cli.shutdown_timeout {
            Some(timeout) => timeout,
            None => from_file("shutdown_timeout", file.shutdown_timeout)?
                .unwrap_or_else(|| default(SHUTDOWN_TIMEOUT_DEFAULT)),
        };
        let max_timestamp_ahead = match cli.max_timestamp_ahead {
            Some(MaxAhead(max)) => max,
            None => match file.max_timestamp_ahead {
                Some(text) if text.trim().eq_ignore_ascii_case("off") => None,
                text => Some(
                    from_file("max_timestamp_ahead", text)?
                        .unwrap_or_else(|| default(MAX_TIMESTAMP_AHEAD_DEFAULT)),
                ),
            },
        };
        let flush_threads = in_range(
            "flush_threads",
            cli.flush_threads
                .or(file.flush_threads)
                .unwrap_or(FLUSH_THREADS_DEFAULT),
            1..=FLUSH_THREADS_MAX,
        )?;
        let max_request_bytes = in_range(
            "max_request_bytes",
            cli.max_request_bytes
                .or(file.max_request_bytes)
                .unwrap_or(MAX_REQUEST_BYTES_DEFAULT),
            MAX_REQUEST_BYTES_MIN..=MAX_REQUEST_BYTES_MAX,
        )?;
        let max_streams_per_connection = in_range(
            "max_streams_per_connection",
            cli.max_streams_per_connection
                .or(file.max_streams_per_connection)
                .unwrap_or(MAX_STREAMS_PER_CONNECTION_DEFAULT),
            1..=MAX_STREAMS_PER_CONNECTION_MAX,
        )?;
        let data_dir: PathBuf = cli
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| DATA_DIR_DEFAULT.into());
        let insecure_allow_network_plaintext = cli
            .insecure_allow_network_plaintext
            .or(file.insecure_allow_network_plaintext)
            .unwrap_or(false);
        let listen = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| parse_addr(LISTEN_DEFAULT));
        let metrics_listen = cli
            .metrics_listen
            .or(file.metrics_listen)
            .unwrap_or_else(|| parse_addr(METRICS_LISTEN_DEFAULT));
        let auth = cli.auth.or(file.auth).unwrap_or(false);
        let tls_cert = cli.tls_cert.or(file.tls_cert);
        let tls_key = cli.tls_key.or(file.tls_key);
        let tls_client_ca = cli.tls_client_ca.or(file.tls_client_ca);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            (None, None) if tls_client_ca.is_none() => None,
            _ => {
                return Err(
                    "TLS needs both tls_cert and tls_key (--tls-cert, --tls-key);                      tls_client_ca only with them"
                        .into(),
                );
            }
        };
        let metrics_token_file = cli.metrics_token_file.or(file.metrics_token_file);
        let max_connections = in_range(
            "max_connections",
            cli.max_connections
                .or(file.max_connections)
                .unwrap_or(MAX_CONNECTIONS_DEFAULT),
            1..=MAX_CONNECTIONS_MAX,
        )?;
        let max_connections_per_ip = in_range(
            "max_connections_per_ip",
            cli.max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(MAX_CONNECTIONS_PER_IP_DEFAULT),
            1..=MAX_CONNECTIONS_MAX,
        )?;
        if !insecure_allow_network_plaintext {
            secure_enough(
                listen,
                metrics_listen,
                tls.is_some(),
                auth,
                metrics_token_file.is_some(),
            )?;
        }
        Ok(Settings {
            insecure_allow_network_plaintext,
            auth,
            tls,
            metrics_token_file,
            audit_log: cli.audit_log.or(file.audit_log),
            max_connections,
            max_connections_per_ip,
            auth_bootstrap_token_file: cli
                .auth_bootstrap_token_file
                .or(file.auth_bootstrap_token_file)
                .unwrap_or_else(|| data_dir.join(BOOTSTRAP_TOKEN_FILE_DEFAULT)),
            data_dir,
            listen,
            metrics_listen,
            log_level: cli
                .log_level
                .or(rust_log)
                .or(file.log_level)
                .unwrap_or_else(|| LOG_LEVEL_DEFAULT.into()),
            retention_interval,
            flush_threads,
            max_request_bytes,
            max_streams_per_connection,
            shutdown_timeout,
            max_timestamp_ahead,
        })
    }
}

/// The secure defaults: a non-loopback gRPC address needs TLS and auth, a
/// non-loopback metrics address TLS and a metrics token; what is missing is named.
fn secure_enough(
    listen: SocketAddr,
    metrics_listen: SocketAddr,
    tls: bool,
    auth: bool,
    metrics_token: bool,
) -> Result<(), String> {
    for (name, addr, needs) in [
        (
            "listen",
            listen,
            [(tls, "TLS (--tls-cert, --tls-key)"), (auth, "--auth")],
        ),
        (
            "metrics_listen",
            metrics_listen,
            [
                (tls, "TLS (--tls-cert, --tls-key)"),
                (metrics_token, "--metrics-token-file"),
            ],
        ),
    ] {
        if addr.ip().is_loopback() {
            continue;
        }
        let missing: Vec<&str> = needs
            .iter()
            .filter(|(on, _)| !on)
            .map(|(_, what)| *what)
            .collect();
        if missing.is_empty() {
            continue;
        }
        let risk = if tls {
            "anyone who reaches the port could use it"
        } else {
            "tokens and messages would cross the network in clear"
        };
        return Err(format!(
            "refusing to listen on {addr} ({name}): it is not a loopback address and it \
             lacks {}, so {risk}. Add what is missing, or listen on 127.0.0.1 (and reach it \
             through an SSH tunnel), or accept the risk with \
             --insecure-allow-network-plaintext",
            missing.join(" and ")
        ));
    }
    Ok(())
}

fn path_or_none(path: Option<&Path>) -> String {
    path.map_or_else(|| "none".to_string(), |p| p.display().to_string())
}

/// `value` if `range` holds it, else an error naming the setting and its bounds.
fn in_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<T, String> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{name} must be {} to {}, not {value}",
            range.start(),
            range.end()
        ))
    }
}

fn read_file(path: &Path) -> Result<FileSettings, String> {
    /// A settings file is a few hundred bytes; refuse to read something huge.
    const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
    let size = std::fs::metadata(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?
        .len();
    if size > CONFIG_FILE_BYTES_MAX {
        return Err(format!(
            "config file {} is {size} bytes, over the limit of {CONFIG_FILE_BYTES_MAX}",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Where a started broker listens: the addresses it bound and its data directory
/// (what the ready line prints and `Admin.DescribeBroker` reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
}

impl Bound {
    /// The machine-readable line printed to stdout once the broker accepts calls.
    pub fn ready_line(&self) -> String {
        format!(
            "tidelogd ready grpc={} metrics={} data={}",
            self.grpc,
            self.metrics,
            self.data_dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let settings = Settings::default();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:7420");
        assert_eq!(settings.metrics_listen.to_string(), "127.0.0.1:7421");
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.retention_interval, Duration::from_secs(30));
        assert_eq!(settings.log_level, "info");
        assert_eq!(settings.max_request_bytes, 32 << 20);
        assert_eq!(settings.max_streams_per_connection, 4096);
        assert_eq!(
            settings.max_timestamp_ahead,
            Some(Duration::from_secs(3600))
        );
    }

    /// `--max-timestamp-ahead`: a duration or `off`, from a flag or the file.
    #[test]
    fn max_timestamp_ahead_takes_a_duration_or_off() {
        let resolve = |args: &[&str], file: &str| {
            let cli = Cli::try_parse_from([&["tidelogd"], args].concat()).unwrap();
            Settings::resolve(cli, toml::from_str(file).unwrap(), None)
        };
        let ahead = |args: &[&str], file: &str| resolve(args, file).unwrap().max_timestamp_ahead;
        assert_eq!(
            ahead(&["--max-timestamp-ahead", "5m"], ""),
            Some(Duration::from_secs(300))
        );
        assert_eq!(ahead(&["--max-timestamp-ahead", "off"], ""), None);
        assert_eq!(
            ahead(&["--max-timestamp-ahead", "0"], ""),
            Some(Duration::ZERO)
        );
        assert_eq!(ahead(&[], "max_timestamp_ahead = \"off\""), None);
        assert_eq!(
            ahead(&[], "max_timestamp_ahead = \"2h\""),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            ahead(
                &["--max-timestamp-ahead", "10m"],
                "max_timestamp_ahead = \"off\""
            ),
            Some(Duration::from_secs(600))
        );
        let error = resolve(&[], "max_timestamp_ahead = \"5\"").unwrap_err();
        assert!(error.contains("max_timestamp_ahead = \"5\""), "{error}");
        assert!(Cli::try_parse_from(["tidelogd", "--max-timestamp-ahead", "soon"]).is_err());
        let effective = Settings::default().effective();
        assert!(
            effective.contains(&("max_timestamp_ahead", "1h".to_string())),
            "{effective:?}"
        );
    }

    #[test]
    fn flags_win_over_file_over_defaults() {
        let file: FileSettings = toml::from_str(
            "data_dir = \"/from/file\"\nlisten = \"127.0.0.1:9000\"\nretention_interval = \"5s\"\nlog_level = \"warn\"",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["tidelogd", "--listen", "127.0.0.1:9001"]).unwrap();
        let settings = Settings::resolve(cli, file.clone(), None).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(settings.data_dir, PathBuf::from("/from/file"));
        assert_eq!(settings.retention_interval, Duration::from_secs(5));
        assert_eq!(settings.log_level, "warn");
        // Every form of the one grammar, in flags and in the file.
        let cli = Cli::try_parse_from(["tidelogd", "--shutdown-timeout", "1m30s"]).unwrap();
        assert_eq!(
            Settings::resolve(cli, file.clone(), None)
                .unwrap()
                .shutdown_timeout,
            Duration::from_secs(90)
        );
        let iso: FileSettings =
            toml::from_str("retention_interval = \"PT1H30M\"\nshutdown_timeout = \"0\"").unwrap();
        let settings = Settings::resolve(Cli::default(), iso, None).unwrap();
        assert_eq!(settings.retention_interval, Duration::from_secs(5_400));
        assert_eq!(settings.shutdown_timeout, Duration::ZERO);
        // RUST_LOG beats the file, not the flag.
        let settings = Settings::resolve(Cli::default(), file, Some("debug".into())).unwrap();
        assert_eq!(settings.log_level, "debug");
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let unknown = toml::from_str::<FileSettings>("data_dri = \"x\"");
        assert!(unknown.is_err());
        for bad in ["soon", "5", "1h30"] {
            let error = Cli::try_parse_from(["tidelogd", "--retention-interval", bad])
                .unwrap_err()
                .to_string();
            assert!(error.contains("--retention-interval"), "{error}");
        }
        let error = Cli::try_parse_from(["tidelogd", "--shutdown-timeout", "10"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("10 has no unit"), "{error}");
        let cli = Cli::try_parse_from(["tidelogd", "--retention-interval", "0"]).unwrap();
        let error = Settings::resolve(cli, FileSettings::default(), None).unwrap_err();
        assert!(error.contains("at least 1ms"), "{error}");
        let file: FileSettings = toml::from_str("retention_interval = \"5\"").unwrap();
        let error = Settings::resolve(Cli::default(), file, None).unwrap_err();
        assert!(
            error.contains("retention_interval = \"5\": 5 has no unit"),
            "{error}"
        );
        let cli = Cli::try_parse_from(["tidelogd", "--max-request-bytes", "10"]).unwrap();
        let error = Settings::resolve(cli, FileSettings::default(), None).unwrap_err();
        assert!(error.contains("max_request_bytes"), "{error}");
        for streams in ["0", "65537"] {
            let cli =
                Cli::try_parse_from(["tidelogd", "--max-streams-per-connection", streams]).unwrap();
            let error = Settings::resolve(cli, FileSettings::default(), None).unwrap_err();
            assert_eq!(
                error,
                format!("max_streams_per_connection must be 1 to 65536, not {streams}")
            );
        }
        let file: FileSettings = toml::from_str("max_streams_per_connection = 8").unwrap();
        let settings = Settings::resolve(Cli::default(), file, None).unwrap();
        assert_eq!(settings.max_streams_per_connection, 8);
    }

    #[test]
    fn a_network_address_needs_the_loudly_named_flag() {
        for args in [
            vec!["tidelogd", "--listen", "0.0.0.0:7420"],
            vec!["tidelogd", "--metrics-listen", "[::]:7421"],
            vec!["tidelogd", "--listen", "10.1.2.3:7420", "--auth"],
        ] {
            let cli = Cli::try_parse_from(&args).unwrap();
            let error = Settings::resolve(cli, FileSettings::default(), None).unwrap_err();
            assert!(
                error.contains("refusing to listen")
                    && error.contains("--insecure-allow-network-plaintext")
                    && error.contains("lacks TLS (--tls-cert, --tls-key)")
                    && error.contains("in clear"),
                "{args:?}: {error}"
            );
        }
        // TLS without auth: the gRPC port still needs --auth; with both it listens.
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        let with_tls = |extra: &[&'static str]| {
            let mut args = vec!["tidelogd", "--listen", "0.0.0.0:7420"];
            args.extend_from_slice(&tls);
            args.extend_from_slice(extra);
            Settings::resolve(
                Cli::try_parse_from(&args).unwrap(),
                FileSettings::default(),
                None,
            )
        };
        let error = with_tls(&[]).unwrap_err();
        assert!(
            error.contains("lacks --auth") && error.contains("anyone who reaches"),
            "{error}"
        );
        let settings = with_tls(&["--auth"]).unwrap();
        assert_eq!(settings.tls.as_ref().unwrap().cert, PathBuf::from("c.pem"));
        // A network metrics port needs TLS and its token.
        let error = with_tls(&["--auth", "--metrics-listen", "0.0.0.0:7421"]).unwrap_err();
        assert!(error.contains("lacks --metrics-token-file"), "{error}");
        with_tls(&[
            "--auth",
            "--metrics-listen",
            "0.0.0.0:7421",
            "--metrics-token-file",
            "m.token",
        ])
        .unwrap();
        // Half a TLS configuration is refused by clap (flags) or resolve (file).
        assert!(Cli::try_parse_from(["tidelogd", "--tls-cert", "c.pem"]).is_err());
        let file: FileSettings = toml::from_str("tls_key = \"k.pem\"").unwrap();
        let error = Settings::resolve(Cli::default(), file, None).unwrap_err();
        assert!(error.contains("both tls_cert and tls_key"), "{error}");
        let cli = Cli::try_parse_from([
            "tidelogd",
            "--listen",
            "0.0.0.0:7420",
            "--insecure-allow-network-plaintext",
        ])
        .unwrap();
        let settings = Settings::resolve(cli, FileSettings::default(), None).unwrap();
        assert!(settings.insecure_allow_network_plaintext);
        let file: FileSettings = toml::from_str("listen = \"[::1]:7000\"\nauth = true").unwrap();
        let settings = Settings::resolve(Cli::default(), file, None).unwrap();
        assert!(settings.auth && !settings.insecure_allow_network_plaintext);
        assert_eq!(
            settings.auth_bootstrap_token_file,
            PathBuf::from("./data/bootstrap-admin.token")
        );
    }
}
