//! `tidelog queue work QUEUE -- CMD ARGS...`: a worker that runs a command per message.
//!
//! One tidelog-client [`QueueConsumer`] (the `Consume` stream, without its reconnect:
//! a broken stream is this command's error); its credit is the number of free slots
//! (`--concurrency`), given back as each settlement is answered, so the worker never
//! holds a message it has not started. Each delivery runs the command in
//! its own process group with the value on stdin and the message's coordinates in
//! its environment; exit 0 acks the delivery (of its attempt), anything else nacks it
//! with the command's status and the end of its stderr as the reason, and the queue
//! redelivers it after its backoff or dead-letters it after its max deliveries. A
//! command that runs past half the ack deadline gets an in-progress settlement every
//! half deadline, so the queue does not give it to another worker meanwhile.
//!
//! Stopping (Ctrl-C, SIGTERM, `-n`, `--stop-when-idle`): no more credit, the running
//! commands finish and are settled, and the stream ends once every settlement was
//! answered (durable). A second signal kills the running commands (they are nacked).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tidelog_client::{Delivery, QueueConsumer, Settle, Settled};
use tidelog_proto::v1::QueueDelivery;
use tidelog_storage::queue::state::REASON_BYTES_MAX;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::StopSignal;
use super::admin::describe;
use super::args::QueueWorkArgs;
use super::consume::{consumer_error, consumer_options, refusal_text, settle_failure};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, note};

/// Shown to the broker as the member's client id.
const CLIENT_ID: &str = "tidelog-worker";
/// After a command exited, how long to wait for the rest of its stderr (a child it
/// left behind may hold the pipe open).
const STDERR_DRAIN: Duration = Duration::from_secs(2);
/// Bytes of a command's stderr kept for the nack reason: the last 1 KiB.
const STDERR_TAIL_BYTES: usize = 1024;

/// Usage check before connecting: the command exists.
pub fn check_command(command: &[OsString]) -> CliResult<()> {
    let Some(program) = command.first() else {
        return Err(CliError::usage(
            "no command to run",
            "give it after --, e.g. tidelog queue work billing -- ./charge.sh",
        ));
    };
    if find_program(program).is_none() {
        let name = program.to_string_lossy();
        let todo = if program.as_bytes().contains(&b'/') {
            "check the path (it must be an executable file)".to_string()
        } else {
            format!("check the name, or give its path (./{name})")
        };
        return Err(CliError::usage(
            format!(
                "command {name:?} not found{}",
                if program.as_bytes().contains(&b'/') {
                    ""
                } else {
                    " in PATH"
                }
            ),
            todo,
        ));
    }
    Ok(())
}

/// The file `program` names: itself when it has a '/', else the first match in PATH.
fn find_program(program: &OsStr) -> Option<std::path::PathBuf> {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let path = Path::new(program);
        return executable(path).then(|| path.to_path_buf());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|path| executable(path))
}

/// Bytes as an environment value: as they are when UTF-8 without NUL, else hex.
fn env_text(bytes: &[u8]) -> OsString {
    if std::str::from_utf8(bytes).is_ok() && !bytes.contains(&0) {
        OsString::from_vec(bytes.to_vec())
    } else {
        let mut hex = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        OsString::from(hex)
    }
}

/// `TIDELOG_HEADER_<KEY>`: the key upper-cased, anything but ASCII letters and digits
/// as `_`.
fn header_var(key: &str) -> String {
    let mut name = String::from("TIDELOG_HEADER_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// The environment a command gets for `delivery`.
fn environment(queue: &str, topic: &str, delivery: &QueueDelivery) -> Vec<(String, OsString)> {
    let mut env = vec![
        ("TIDELOG_QUEUE".to_string(), OsString::from(queue)),
        ("TIDELOG_TOPIC".to_string(), OsString::from(topic)),
        (
            "TIDELOG_ATTEMPT".to_string(),
            OsString::from(delivery.attempt.to_string()),
        ),
        (
            "TIDELOG_DEADLINE_MS".to_string(),
            OsString::from(delivery.deadline_ms.to_string()),
        ),
    ];
    let Some(m) = delivery.message.as_ref() else {
        return env;
    };
    env.push((
        "TIDELOG_PARTITION".into(),
        OsString::from(m.partition.to_string()),
    ));
    env.push((
        "TIDELOG_OFFSET".into(),
        OsString::from(m.offset.to_string()),
    ));
    env.push((
        "TIDELOG_TIMESTAMP_MS".into(),
        OsString::from(m.timestamp_ms.to_string()),
    ));
    if !m.id.is_empty() {
        env.push(("TIDELOG_MESSAGE_ID".into(), env_text(&m.id)));
    }
    if !m.key.is_empty() {
        env.push(("TIDELOG_KEY".into(), env_text(&m.key)));
    }
    // Later headers with the same variable name win.
    for h in &m.headers {
        env.push((header_var(&h.key), env_text(&h.value)));
    }
    env
}

/// How a command ended.
#[derive(Debug)]
enum Ended {
    Exited(ExitStatus),
    /// It could not be started.
    NotStarted(std::io::Error),
}

impl Ended {
    fn success(&self) -> bool {
        matches!(self, Ended::Exited(status) if status.success())
    }

    /// `exit status 3`, `killed by signal 9`, `could not start: ...`.
    fn describe(&self) -> String {
        match self {
            Ended::Exited(status) => match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "ended".into(),
            },
            Ended::NotStarted(error) => format!("could not start the command: {error}"),
        }
    }

    /// The key of the exit-code histogram in the summary.
    fn code_key(&self) -> String {
        match self {
            Ended::Exited(status) => match (status.code(), status.signal()) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "unknown".into(),
            },
            Ended::NotStarted(_) => "not started".into(),
        }
    }
}

/// The nack reason: how the command ended, then the end of its stderr, within the
/// broker's reason limit (the end is kept: that is where the error usually is).
fn nack_reason(ended: &Ended, stderr: &[u8]) -> String {
    let status = ended.describe();
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return status;
    }
    let room = REASON_BYTES_MAX.saturating_sub(status.len() + 2);
    let mut start = text.len().saturating_sub(room);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{status}: {}", &text[start..])
}

/// What a running command tells the worker.
///
/// The deliveries are boxed: a delivery holds its whole message, and the event travels
/// in the work loop's `Step` beside much smaller ones.
#[derive(Debug)]
enum JobEvent {
    /// Past half its deadline: ask for more time.
    Extend(Box<Delivery>),
    Done {
        delivery: Box<Delivery>,
        ended: Ended,
        stderr: Vec<u8>,
    },
}

/// What a command needs besides its delivery.
#[derive(Debug, Clone)]
struct JobSpec {
    program: OsString,
    args: Vec<OsString>,
    queue: String,
    topic: String,
    ack_deadline_ms: u64,
    /// The command's stdout goes to the worker's stderr (--json keeps stdout for the
    /// summary).
    stdout_to_stderr: bool,
    quiet: bool,
    bar: ProgressBar,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The topic a delivery is from: its own (a queue on a topic pattern has many; the
/// queue's topic is empty there), else the queue's.
fn delivery_topic<'a>(queue_topic: &'a str, delivery: &'a Delivery) -> &'a str {
    match &*delivery.message().topic {
        "" => queue_topic,
        topic => topic,
    }
}

/// Runs the command for one delivery; reports extensions and the end on `events`.
async fn run_job(
    spec: Arc<JobSpec>,
    delivery: Delivery,
    events: mpsc::UnboundedSender<JobEvent>,
    mut kill: watch::Receiver<bool>,
) {
    let value = delivery.message().value.clone();
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(environment(
            &spec.queue,
            delivery_topic(&spec.topic, &delivery),
            &delivery.to_proto(),
        ))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        // A terminal's Ctrl-C goes to the foreground process group: not to commands,
        // which finish while the worker stops.
        .process_group(0)
        .kill_on_drop(true);
    if spec.stdout_to_stderr {
        match std::io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => {
                command.stdout(Stdio::from(fd));
            }
            Err(_) => {
                command.stdout(Stdio::null());
            }
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = events.send(JobEvent::Done {
                delivery: Box::new(delivery),
                ended: Ended::NotStarted(error),
                stderr: Vec::new(),
            });
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin must not block the worker.
        tokio::spawn(async move {
            let _ = stdin.write_all(&value).await;
        });
    }
    let tail = Arc::new(Mutex::new(Vec::new()));
    let reader = child.stderr.take().map(|mut stderr| {
        let tail = tail.clone();
        let (bar, quiet) = (spec.bar.clone(), spec.quiet);
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            loop {
                let n = match stderr.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !quiet {
                    bar.suspend(|| {
                        let _ = std::io::stderr().write_all(&buffer[..n]);
                    });
                }
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > STDERR_TAIL_BYTES {
                    let cut = tail.len() - STDERR_TAIL_BYTES;
                    tail.drain(..cut);
                }
            }
        })
    });
    // First extension at half the time left, then every half deadline.
    let half = Duration::from_millis(spec.ack_deadline_ms / 2);
    let left = delivery.deadline_ms().saturating_sub(now_ms()).max(0) as u64;
    let mut extend_at = Instant::now() + Duration::from_millis(left.min(spec.ack_deadline_ms) / 2);
    let ended = loop {
        tokio::select! {
            status = child.wait() => break match status {
                Ok(status) => Ended::Exited(status),
                Err(error) => Ended::NotStarted(error),
            },
            _ = tokio::time::sleep_until(extend_at.into()) => {
                let _ = events.send(JobEvent::Extend(Box::new(delivery.clone())));
                extend_at = Instant::now() + half;
            }
            changed = kill.changed() => {
                if changed.is_err() || *kill.borrow() {
                    let _ = child.start_kill();
                }
            }
        }
    };
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
    }
    let stderr = tail.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _ = events.send(JobEvent::Done {
        delivery: Box::new(delivery),
        ended,
        stderr,
    });
}

/// What a Settle sent by the worker was for.
#[derive(Debug)]
enum Sent {
    Ack,
    Nack,
    Extend,
    /// Taken while stopping and given back.
    GiveBack,
}

/// The worker's figures.
#[derive(Debug, Default)]
struct Tally {
    started: u64,
    acked: u64,
    nacked: u64,
    dead_lettered: u64,
    /// Settlements the broker refused (stale, unknown).
    refused: u64,
    extended: u64,
    exit_codes: BTreeMap<String, u64>,
}

impl Tally {
    fn done(&self) -> u64 {
        self.acked + self.nacked + self.dead_lettered + self.refused
    }

    fn line(&self, queue: &str, running: usize) -> String {
        format!(
            "work {queue}: {} done ({} acked, {} nacked, {} dead-lettered{}), {running} running",
            self.done(),
            self.acked,
            self.nacked,
            self.dead_lettered,
            if self.refused > 0 {
                format!(", {} refused", self.refused)
            } else {
                String::new()
            }
        )
    }
}

/// (topic, partition, offset) of a delivery: what names a running command.
fn position(delivery: &Delivery) -> (String, u32, u64) {
    let m = delivery.message();
    (m.topic.to_string(), m.partition, m.offset)
}

/// Settles `delivery` on its own task (the loop reads on meanwhile) and reports the
/// answer as `sent` on `answers`.
fn settle_in_background(
    delivery: Delivery,
    settle: Settle,
    sent: Sent,
    answers: &mpsc::UnboundedSender<(Sent, Result<Settled, tidelog_client::Error>)>,
) {
    let answers = answers.clone();
    tokio::spawn(async move {
        let answer = delivery.settle(settle).await;
        let _ = answers.send((sent, answer));
    });
}

pub async fn run(broker: &Broker, args: QueueWorkArgs, json: bool) -> CliResult<()> {
    let queue = describe(broker, &args.name).await?;
    let context = format!("working on queue {:?}", args.name);
    let limit = args.count.unwrap_or(u64::MAX);
    if limit == 0 {
        return Ok(());
    }
    let options = consumer_options(CLIENT_ID, args.concurrency, args.count);
    let mut consumer = QueueConsumer::open(broker, &args.name, options)
        .await
        .map_err(|e| consumer_error(broker, &context, &e))?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut command = args.command.clone().into_iter();
    let spec = Arc::new(JobSpec {
        program: command.next().unwrap_or_default(),
        args: command.collect(),
        queue: queue.name.clone(),
        topic: queue.topic.clone(),
        ack_deadline_ms: consumer.config().ack_deadline_ms.unwrap_or(30_000),
        stdout_to_stderr: json,
        quiet: args.quiet,
        bar: bar.clone(),
    });
    let started_at = Instant::now();
    let (events_tx, mut events) = mpsc::unbounded_channel::<JobEvent>();
    // Settlement answers; at most one per running command plus its extensions.
    let (answers_tx, mut answers) = mpsc::unbounded_channel();
    let (kill_tx, kill_rx) = watch::channel(false);
    let mut running: HashMap<(String, u32, u64), ()> = HashMap::new();
    // Settlements sent and not answered yet.
    let mut waiting = 0usize;
    let mut tally = Tally::default();
    let mut stop = StopSignal::new();
    let mut signals = 0u32;
    let mut stopping = false;
    let mut fatal: Option<CliError> = None;
    let mut last_activity = Instant::now();
    bar.set_message(tally.line(&queue.name, 0));

    /// One thing that happened.
    enum Step {
        Broker(Result<Vec<Delivery>, tidelog_client::Error>),
        Answer((Sent, Result<Settled, tidelog_client::Error>)),
        Job(JobEvent),
        Idle,
        Signal,
    }

    let outcome: CliResult<()> = loop {
        let over = stopping || tally.started >= limit;
        if over && running.is_empty() && waiting == 0 {
            break Ok(());
        }
        if stopping {
            // No more credit: the broker sends nothing more.
            consumer.drain();
        }
        let idle = args
            .stop_when_idle
            .filter(|_| running.is_empty() && waiting == 0 && !stopping)
            .map(|ms| last_activity + Duration::from_millis(ms));
        let step = tokio::select! {
            batch = consumer.next_batch() => Step::Broker(batch),
            Some(answer) = answers.recv() => Step::Answer(answer),
            Some(event) = events.recv() => Step::Job(event),
            _ = tokio::time::sleep_until(idle.unwrap_or_else(Instant::now).into()), if idle.is_some() => Step::Idle,
            _ = stop.recv() => Step::Signal,
        };
        match step {
            Step::Signal => {
                signals += 1;
                stopping = true;
                if signals == 1 && !running.is_empty() {
                    bar.suspend(|| {
                        note(&format!(
                            "stopping: waiting for {} running command{} (Ctrl-C again to kill {})",
                            running.len(),
                            if running.len() == 1 { "" } else { "s" },
                            if running.len() == 1 { "it" } else { "them" }
                        ))
                    });
                } else if signals >= 2 {
                    kill_tx.send_replace(true);
                }
            }
            Step::Idle => stopping = true,
            Step::Broker(Err(error)) => break Err(consumer_error(broker, &context, &error)),
            Step::Broker(Ok(batch)) => {
                last_activity = Instant::now();
                for delivery in batch {
                    if stopping || tally.started >= limit {
                        let settle = Settle::Nack {
                            delay: Some(Duration::ZERO),
                            reason: "the worker was stopping and did not run it".into(),
                        };
                        waiting += 1;
                        settle_in_background(delivery, settle, Sent::GiveBack, &answers_tx);
                        continue;
                    }
                    tally.started += 1;
                    running.insert(position(&delivery), ());
                    tokio::spawn(run_job(
                        spec.clone(),
                        delivery,
                        events_tx.clone(),
                        kill_rx.clone(),
                    ));
                }
            }
            Step::Answer((sent, answer)) => {
                waiting = waiting.saturating_sub(1);
                match (sent, answer) {
                    (_, Err(error @ tidelog_client::Error::LeaseLost { .. })) => {
                        let error = settle_failure(&mut consumer, error).await;
                        break Err(consumer_error(broker, &context, &error));
                    }
                    (Sent::Ack, Ok(_)) => tally.acked += 1,
                    (Sent::Nack, Ok(Settled::DeadLettered)) => tally.dead_lettered += 1,
                    (Sent::Nack, Ok(_)) => tally.nacked += 1,
                    (Sent::Extend, Ok(_)) => tally.extended += 1,
                    (Sent::GiveBack, _) => {}
                    (Sent::Ack | Sent::Nack, Err(error)) => {
                        tally.refused += 1;
                        bar.suspend(|| {
                            note(&format!(
                                "warning: the broker refused a settlement: {}",
                                refusal_text(&error)
                            ))
                        });
                    }
                    (Sent::Extend, Err(error)) => bar.suspend(|| {
                        note(&format!(
                            "warning: could not extend a deadline: {}",
                            refusal_text(&error)
                        ))
                    }),
                }
                bar.set_message(tally.line(&queue.name, running.len()));
            }
            Step::Job(JobEvent::Extend(delivery)) => {
                if running.contains_key(&position(&delivery)) {
                    waiting += 1;
                    let settle = Settle::InProgress { extend: None };
                    settle_in_background(*delivery, settle, Sent::Extend, &answers_tx);
                }
            }
            Step::Job(JobEvent::Done {
                delivery,
                ended,
                stderr,
            }) => {
                last_activity = Instant::now();
                running.remove(&position(&delivery));
                *tally.exit_codes.entry(ended.code_key()).or_insert(0) += 1;
                let (settle, sent) = if ended.success() {
                    (Settle::Ack, Sent::Ack)
                } else {
                    let reason = nack_reason(&ended, &stderr);
                    (
                        Settle::Nack {
                            delay: None,
                            reason,
                        },
                        Sent::Nack,
                    )
                };
                if let Ended::NotStarted(error) = &ended
                    && fatal.is_none()
                {
                    stopping = true;
                    fatal = Some(CliError::failure(
                        format!(
                            "{context} failed: could not start {:?}: {error}",
                            spec.program.to_string_lossy()
                        ),
                        "check the command and its permissions",
                    ));
                }
                waiting += 1;
                settle_in_background(*delivery, settle, sent, &answers_tx);
                bar.set_message(tally.line(&queue.name, running.len()));
            }
        }
    };
    bar.finish_and_clear();
    let member_id = consumer.member_id().to_string();
    // Ends the stream: the broker takes back whatever is still held.
    consumer.close().await;
    let seconds = started_at.elapsed().as_secs_f64();
    if json {
        let mut out = Stdout::new();
        out.json_pretty(&json!({
            "queue": queue.name,
            "topic": queue.topic,
            "member_id": member_id,
            "concurrency": args.concurrency,
            "messages": tally.done(),
            "acked": tally.acked,
            "nacked": tally.nacked,
            "dead_lettered": tally.dead_lettered,
            "refused": tally.refused,
            "extended": tally.extended,
            "exit_codes": tally.exit_codes,
            "seconds": (seconds * 100.0).round() / 100.0,
            "interrupted": signals > 0,
        }))?;
        out.flush()?;
    } else {
        note(&format!(
            "{} in {seconds:.1}s",
            tally.line(&queue.name, running.len())
        ));
    }
    outcome?;
    match fatal {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tidelog_proto::v1::{ConsumedMessage, Header};

    #[test]
    fn the_environment_names_the_message() {
        let delivery = QueueDelivery {
            message: Some(ConsumedMessage {
                partition: 3,
                offset: 41,
                timestamp_ms: 1_000,
                key: Bytes::from_static(b"user-7"),
                id: Bytes::from_static(&[0, 1, 0xab]),
                headers: vec![
                    Header {
                        key: "content-type".into(),
                        value: Bytes::from_static(b"text/plain"),
                    },
                    Header {
                        key: "trace".into(),
                        value: Bytes::from_static(&[0xff]),
                    },
                ],
                ..ConsumedMessage::default()
            }),
            attempt: 2,
            deadline_ms: 31_000,
            receipt: String::new(),
        };
        let env: BTreeMap<String, OsString> =
            environment("q", "orders", &delivery).into_iter().collect();
        let get = |k: &str| env.get(k).map(|v| v.to_string_lossy().into_owned());
        assert_eq!(get("TIDELOG_QUEUE").as_deref(), Some("q"));
        assert_eq!(get("TIDELOG_TOPIC").as_deref(), Some("orders"));
        assert_eq!(get("TIDELOG_PARTITION").as_deref(), Some("3"));
        assert_eq!(get("TIDELOG_OFFSET").as_deref(), Some("41"));
        assert_eq!(get("TIDELOG_ATTEMPT").as_deref(), Some("2"));
        assert_eq!(get("TIDELOG_KEY").as_deref(), Some("user-7"));
        assert_eq!(get("TIDELOG_MESSAGE_ID").as_deref(), Some("0001ab"));
        assert_eq!(
            get("TIDELOG_HEADER_CONTENT_TYPE").as_deref(),
            Some("text/plain")
        );
        assert_eq!(get("TIDELOG_HEADER_TRACE").as_deref(), Some("ff"));
    }

    #[test]
    fn nack_reasons_keep_the_end_of_stderr_within_the_limit() {
        let failed = Ended::Exited(ExitStatus::from_raw(3 << 8));
        assert_eq!(nack_reason(&failed, b""), "exit status 3");
        assert_eq!(nack_reason(&failed, b"  boom\n"), "exit status 3: boom");
        let long: Vec<u8> = b"x".repeat(5000).into_iter().chain(*b"END").collect();
        let reason = nack_reason(&failed, &long);
        assert!(reason.len() <= REASON_BYTES_MAX, "{}", reason.len());
        assert!(reason.starts_with("exit status 3: xxx") && reason.ends_with("END"));
        let killed = Ended::Exited(ExitStatus::from_raw(9));
        assert_eq!(nack_reason(&killed, b""), "killed by signal 9");
        // A cut inside a multi-byte character moves to the next boundary.
        let wide = "é".repeat(600);
        assert!(nack_reason(&failed, wide.as_bytes()).len() <= REASON_BYTES_MAX);
    }

    #[test]
    fn commands_are_found_in_path_or_by_path() {
        assert!(check_command(&[OsString::from("sh")]).is_ok());
        assert!(check_command(&[OsString::from("/bin/sh")]).is_ok());
        let missing = check_command(&[OsString::from("no-such-command-here")]).unwrap_err();
        assert!(missing.message.contains("not found in PATH"), "{missing}");
        assert!(check_command(&[OsString::from("./nope/x")]).is_err());
        assert!(check_command(&[]).is_err());
    }
}
