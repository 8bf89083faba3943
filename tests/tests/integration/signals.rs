//! tidelogd with its stdout and stderr on a pipe whose reader has gone (issue 12, bug
//! 1): `tidelogd 2>&1 | head -1`, a log shipper that died, a closed terminal. Every
//! later write fails with EPIPE; the broker must still stop on SIGTERM and SIGINT
//! with status 0 and keep serving until then. A log line that cannot be written is
//! lost, never a reason to panic.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{AckLevel, FetchRequest, Message, PublishRequest, TopicConfig};
use tidelog_tests::{READY_TIMEOUT, STOP_TIMEOUT, create_topic, http_get, tidelogd_bin};
use tonic::transport::Channel;

/// A tidelogd whose stdout and stderr share one pipe, closed once the ready line was
/// read.
struct DeafBroker {
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    /// Removed on drop, after the process is gone.
    _data: tempfile::TempDir,
}

impl DeafBroker {
    fn start() -> DeafBroker {
        let data = tempfile::Builder::new()
            .prefix("tidelog-test-")
            .tempdir()
            .expect("creating a temp dir");
        let (reader, writer) = std::io::pipe().expect("creating a pipe");
        let mut command = Command::new(tidelogd_bin());
        command
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            // Info level: the broker logs on every topic creation, signal and stop.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(writer.try_clone().expect("duplicating the pipe"))
            .stderr(writer);
        let child = command.spawn().expect("starting tidelogd");
        // The command holds this process's copies of the write end: without them the
        // child is the only writer, as behind a shell pipeline.
        drop(command);
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(reader).lines();
            let ready = lines
                .by_ref()
                .map_while(Result::ok)
                .find(|line| line.starts_with("tidelogd ready "));
            // Close the only read end before anyone goes on: from here every write
            // of the broker to stdout or stderr fails with EPIPE.
            drop(lines);
            let _ = ready_tx.send(ready);
        });
        let mut broker = DeafBroker {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            _data: data,
        };
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(line)) => line,
            outcome => panic!(
                "tidelogd printed no ready line within {READY_TIMEOUT:?} ({outcome:?}); exit \
                 status so far: {:?}",
                broker.child.try_wait()
            ),
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in ready line {line:?}"))
        };
        broker.grpc = field("grpc=");
        broker.metrics = field("metrics=");
        broker
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connecting to tidelogd")
    }

    /// Sends `signal` (a `kill` name such as "TERM") and waits up to [`STOP_TIMEOUT`]
    /// for the exit; panics (after a SIGKILL) if the broker is still running then.
    fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -{signal} failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for tidelogd") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "tidelogd ignored SIG{signal} for {STOP_TIMEOUT:?} with its output on a \
                     broken pipe"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DeafBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_stops_the_broker_when_its_output_is_a_broken_pipe() {
    let mut broker = DeafBroker::start();
    let status = broker.signal_and_wait("TERM");
    assert!(
        status.success(),
        "tidelogd exited with {status} after SIGTERM"
    );
}

#[test]
fn sigint_stops_the_broker_when_its_output_is_a_broken_pipe() {
    let mut broker = DeafBroker::start();
    let status = broker.signal_and_wait("INT");
    assert!(
        status.success(),
        "tidelogd exited with {status} after SIGINT"
    );
}

// Two workers: the client's connection tasks go on running (and close the connection
// when the broker says goodbye) while this thread blocks waiting for the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_serves_while_its_output_is_a_broken_pipe() {
    let mut broker = DeafBroker::start();
    let channel = broker.channel().await;
    // Creating a topic logs at info level: that write fails.
    create_topic(&channel, "deaf", 1, TopicConfig::default()).await;
    let acks = PublisherClient::new(channel.clone())
        .publish(PublishRequest {
            topic: "deaf".into(),
            messages: (0..3)
                .map(|i| Message {
                    value: Bytes::from(format!("m{i}")),
                    ..Default::default()
                })
                .collect(),
            ack: AckLevel::Durable as i32,
        })
        .await
        .expect("publishing with a broken stderr")
        .into_inner()
        .acks;
    assert_eq!(acks.len(), 3);
    let fetched = ConsumerClient::new(channel)
        .fetch(FetchRequest {
            topic: "deaf".into(),
            partition: 0,
            offset: 0,
            ..Default::default()
        })
        .await
        .expect("fetching with a broken stderr")
        .into_inner();
    let values: Vec<&[u8]> = fetched.messages.iter().map(|m| &m.value[..]).collect();
    assert_eq!(values, [&b"m0"[..], b"m1", b"m2"]);
    let (status, body) = http_get(broker.metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tidelog_publish_messages_total{topic=\"deaf\"} 3"));
    let status = broker.signal_and_wait("TERM");
    assert!(
        status.success(),
        "tidelogd exited with {status} after SIGTERM"
    );
}
