//! Black-box test harness: starts the real `tidelogd` binary on `127.0.0.1:0` with a
//! temporary data directory and talks to it as any client would.
//!
//! ```no_run
//! # async fn example() {
//! let mut broker = tidelog_tests::TestBroker::start();
//! let mut admin = broker.admin().await;
//! // ... admin.create_topic(..) ...
//! broker.kill9();
//! broker.restart();
//! broker.stop(); // SIGTERM, asserts exit status 0
//! # }
//! ```
//!
//! Binaries are found through `TIDELOGD_BIN` / `TIDELOG_BIN`, else next to the test
//! executable's directory (`target/<profile>/`); if missing they are built once with
//! `cargo build` (using `$CARGO`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::groups_client::GroupsClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{CreateTopicRequest, DescribeTopicRequest, TopicConfig, TopicDescription};
use tonic::transport::Channel;

/// How long tidelogd may take to print its ready line (recovery included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGTERM'd tidelogd may take to exit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The path of a workspace binary: `$env_var`, else `target/<profile>/<name>` beside
/// the running test executable (which lives in `target/<profile>/deps/`), brought up
/// to date by `cargo build -p <package> --bin <name>` once per test process: `cargo
/// test -p tidelog-tests` alone does not rebuild other packages' binaries, and a
/// stale broker would test old code.
pub fn workspace_binary(env_var: &str, package: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(name);
    // One build at a time, so parallel tests do not all start cargo.
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "-p", package, "--bin", name]);
        // What cargo set for this test process (the package under test) must not reach
        // the build: ring's build script reruns when CARGO_MANIFEST_DIR or
        // CARGO_PKG_NAME differ from the last build's, which rebuilt rustls,
        // tidelog-server and tidelog-tools here (30-40 s) and again at the next build
        // from a shell.
        for (var, _) in std::env::vars_os() {
            if let Some(var) = var.to_str()
                && (var.starts_with("CARGO_PKG_")
                    || var.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        var,
                        "CARGO_CRATE_NAME"
                            | "CARGO_BIN_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "CARGO_RUSTC_CURRENT_DIR"
                            | "OUT_DIR"
                    ))
            {
                command.env_remove(var);
            }
        }
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            command.arg("--release");
        }
        let status = command.status().expect("running cargo build");
        assert!(status.success(), "cargo build of {name} failed");
        assert!(
            path.exists(),
            "{} missing after cargo build",
            path.display()
        );
        built.push(name.to_string());
    }
    path
}

/// The `tidelogd` binary.
pub fn tidelogd_bin() -> PathBuf {
    workspace_binary("TIDELOGD_BIN", "tidelog-server", "tidelogd")
}

/// The `tidelog` CLI binary.
pub fn tidelog_bin() -> PathBuf {
    workspace_binary("TIDELOG_BIN", "tidelog-tools", "tidelog")
}

/// A `Command` for the `tidelog` CLI (add the arguments, e.g. the broker's
/// [`TestBroker::endpoint`]).
pub fn tidelog_command() -> Command {
    Command::new(tidelog_bin())
}

/// A running tidelogd with its own data directory.
#[derive(Debug)]
pub struct TestBroker {
    child: Option<Child>,
    /// Data directory; kept across restarts, removed on drop.
    data: tempfile::TempDir,
    /// stderr of every run, appended (inside the temp dir, beside `data/`).
    log_path: PathBuf,
    extra_args: Vec<String>,
    grpc: SocketAddr,
    metrics: SocketAddr,
    /// Where the next start listens: port 0 (any free port) unless a restart asked
    /// for the same ports.
    listen: (SocketAddr, SocketAddr),
}

impl TestBroker {
    /// Starts tidelogd with default settings.
    pub fn start() -> TestBroker {
        TestBroker::start_with(&[])
    }

    /// Starts tidelogd with extra flags (e.g. `["--retention-interval", "100ms"]`).
    pub fn start_with(args: &[&str]) -> TestBroker {
        let data = tempfile::Builder::new()
            .prefix("tidelog-test-")
            .tempdir()
            .expect("creating a temp dir");
        let log_path = data.path().join("tidelogd.stderr.log");
        let mut broker = TestBroker {
            child: None,
            data,
            log_path,
            extra_args: args.iter().map(ToString::to_string).collect(),
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen: (
                SocketAddr::from(([127, 0, 0, 1], 0)),
                SocketAddr::from(([127, 0, 0, 1], 0)),
            ),
        };
        broker.spawn();
        broker
    }

    fn data_path(&self) -> PathBuf {
        self.data.path().join("data")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "tidelogd is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the log file");
        let mut child = Command::new(tidelogd_bin())
            .arg("--data-dir")
            .arg(self.data_path())
            .arg("--listen")
            .arg(self.listen.0.to_string())
            .arg("--metrics-listen")
            .arg(self.listen.1.to_string())
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting tidelogd");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads stdout for the life of the process so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("tidelogd ready ") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        self.child = Some(child);
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => panic!(
                "tidelogd printed no ready line within {READY_TIMEOUT:?}; its log:\n{}",
                self.log()
            ),
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in ready line {line:?}"))
        };
        self.grpc = field("grpc=");
        self.metrics = field("metrics=");
    }

    /// The process id of the running tidelogd (for `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited (it has not crashed or been killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// `http://127.0.0.1:PORT`, for clients and the CLI.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_path()
    }

    /// Everything tidelogd wrote to stderr so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connecting to tidelogd")
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn publisher(&self) -> PublisherClient<Channel> {
        PublisherClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn consumer(&self) -> ConsumerClient<Channel> {
        ConsumerClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn groups(&self) -> GroupsClient<Channel> {
        GroupsClient::new(self.channel().await)
    }

    /// [`create_topic`] on a new connection.
    pub async fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) {
        create_topic(&self.channel().await, name, partitions, config).await;
    }

    /// [`describe_topic`] on a new connection.
    pub async fn describe_topic(&self, name: &str) -> TopicDescription {
        describe_topic(&self.channel().await, name).await
    }

    /// The body of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}: {body}");
        body
    }

    /// SIGKILL: no flush, no checkpoint.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts tidelogd again on the same data directory (new ports).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Stops tidelogd (SIGTERM) and starts it again on the same data directory and the
    /// same ports, as a service manager restarts a broker: clients that reconnect to
    /// the address they had find it again.
    pub fn restart_on_the_same_ports(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.listen = (self.grpc, self.metrics);
        self.spawn();
    }

    /// SIGTERM, waits for the exit and asserts it was successful.
    ///
    /// This blocks the calling thread. In a `#[tokio::test]` on the default
    /// current-thread runtime, the test's clients cannot run meanwhile, so they never
    /// answer the broker's HTTP/2 goodbye (GOAWAY and its PING) and its graceful
    /// shutdown waits out its whole shutdown timeout (10 s) for them. A test that stops
    /// or restarts a broker while it holds a connection runs on a multi-thread runtime.
    pub fn stop(&mut self) -> ExitStatus {
        let status = self.terminate();
        assert!(
            status.success(),
            "tidelogd exited with {status} after SIGTERM; its log:\n{}",
            self.log()
        );
        status
    }

    /// SIGTERM and wait (up to [`STOP_TIMEOUT`], then SIGKILL and panic).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("tidelogd is not running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for tidelogd") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tidelogd did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Creates a topic; panics naming it if the broker refuses.
pub async fn create_topic(channel: &Channel, name: &str, partitions: u32, config: TopicConfig) {
    AdminClient::new(channel.clone())
        .create_topic(CreateTopicRequest {
            name: name.into(),
            partitions,
            config: Some(config),
        })
        .await
        .unwrap_or_else(|s| panic!("creating {name}: {s}"));
}

/// Describes a topic; panics naming it if the broker refuses.
pub async fn describe_topic(channel: &Channel, name: &str) -> TopicDescription {
    AdminClient::new(channel.clone())
        .describe_topic(DescribeTopicRequest { name: name.into() })
        .await
        .unwrap_or_else(|s| panic!("describing {name}: {s}"))
        .into_inner()
        .topic
        .expect("a description")
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as i64
}

/// A minimal HTTP/1.1 GET; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the first sample in Prometheus text `metrics` whose line starts with
/// `prefix` (metric name and labels), if any.
pub fn metric_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.starts_with(prefix)
                && line[prefix.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c == ' ' || c == '{')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A TCP proxy to the broker that can drop what the broker sends back (the requests
/// still reach it: a publish is stored and its answer lost), hold what clients send
/// (their requests, commits among them, wait in it while the broker's answers and
/// stream events still arrive), refuse new connections, and cut every connection
/// through it. A connection whose answers were dropped is out of step (its HTTP/2
/// frames were lost): cut it before letting answers through. Clones share it.
#[derive(Clone)]
pub struct FlakyProxy {
    addr: SocketAddr,
    state: std::sync::Arc<FlakyState>,
}

#[derive(Default)]
struct FlakyState {
    drop_answers: std::sync::atomic::AtomicBool,
    hold_requests: std::sync::atomic::AtomicBool,
    refuse: std::sync::atomic::AtomicBool,
    /// Both ends of every connection made through the proxy, for `cut`.
    sockets: Mutex<Vec<TcpStream>>,
}

impl FlakyProxy {
    pub fn start(target: SocketAddr) -> FlakyProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let state = std::sync::Arc::new(FlakyState::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else {
                    return;
                };
                if shared.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                {
                    let mut sockets = shared.sockets.lock().unwrap_or_else(|e| e.into_inner());
                    sockets.push(client.try_clone().expect("socket"));
                    sockets.push(server.try_clone().expect("socket"));
                }
                let (mut from_client, mut to_server) = (
                    client.try_clone().expect("socket"),
                    server.try_clone().expect("socket"),
                );
                let (mut from_server, mut to_client) = (server, client);
                let requests = shared.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf) {
                        while requests.hold_requests.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let answers = shared.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from_server.read(&mut buf) {
                        if answers.drop_answers.load(Ordering::SeqCst) {
                            continue;
                        }
                        if to_client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        FlakyProxy { addr, state }
    }

    /// `http://` and the proxy's address.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops (true) or passes on (false) what the broker sends back.
    pub fn drop_answers(&self, on: bool) {
        self.state
            .drop_answers
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds (true) or lets through (false) what the clients send.
    pub fn pause(&self, on: bool) {
        self.state
            .hold_requests
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes new connections at once (true), or passes them on (false).
    pub fn refuse(&self, on: bool) {
        self.state
            .refuse
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Shuts down every connection made through the proxy so far.
    pub fn cut(&self) {
        let sockets =
            std::mem::take(&mut *self.state.sockets.lock().unwrap_or_else(|e| e.into_inner()));
        for socket in sockets {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}
