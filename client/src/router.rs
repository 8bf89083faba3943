//! A message router in the spirit of Watermill: topics (or topic patterns) map to async
//! handlers, with retry-with-backoff and poison-to-dead-letter middleware.
//!
//! Each matched topic is read by one [`GroupMember`] of the router's group (so several
//! router processes share the partitions), with explicit commits after each message's
//! handling is settled: **at-least-once**. A pattern is matched against the topic list
//! client-side (`Admin.ListTopics`, every [`RouterConfig::rescan`]) and each matched
//! topic gets a member of its own (rather than one [`GroupMember::join_pattern`]
//! member), so topics ending in `.dlq` are never read (they are where poison goes) and
//! each topic's handler runs on its own task.
//!
//! A message's handling: the handler runs (on a task of its own: a panic counts as a
//! failure, with the panic's message as the reason); if it fails, it runs again after a backoff
//! (doubling from [`Retry::initial`] up to [`Retry::max`]) until [`Retry::attempts`]
//! runs failed; then the message is **poison**: it is published to the dead-letter topic
//! ([`RouterConfig::dead_letter`], default `<topic>.dlq`, created with 1 partition if
//! missing) with headers `x-dead-letter-reason` (the last error),
//! `x-dead-letter-topic`, `x-dead-letter-partition`, `x-dead-letter-offset` and
//! `x-dead-letter-attempts`, and committed. A dead-letter topic the router creates
//! takes messages as large as the routed topic's `max_message_bytes` plus the router's
//! headers (the reason is cut to [`REASON_BYTES_MAX`]), so poison at the size limit can
//! always be dead-lettered. When the dead-letter topic refuses the whole letter anyway
//! (it existed with a smaller limit), the letter goes without the message's value and
//! headers (and a key over 1 KiB), with `x-dead-letter-omitted` saying what was left
//! out: the headers still say where the message is in its topic. If the dead-letter
//! publish fails otherwise, the router stops with that error and the message is not
//! committed (it comes again).
//!
//! A letter without the message carries the reason (and the refusal) cut to
//! [`OMITTED_LETTER_REASON_BYTES_MAX`], so it fits a small dead-letter topic too.
//!
//! A topic a pattern matched that is deleted ends its route, not the router; a topic
//! of that name created later is routed anew. A route of a named topic ends the router
//! when the topic is deleted. While the broker is away (a restart) the routes' members
//! reconnect by themselves, rescans that fail are skipped, and a route that fails with
//! a retryable error ([`Error::is_retryable`]) starts again at the next rescan.
//!
//! Under `--auth`, `ListTopics` lists the topics the caller may describe. A pattern
//! route leaves out a topic the caller may not consume, or whose commits the group
//! refuses ([`Error::PermissionDenied`] from joining, reading or committing), as the
//! broker's own pattern subscriptions leave it out: the route's other topics go on,
//! the topic is logged once at warn with the reason and tried again at each rescan,
//! so a right granted later is picked up. (A topic whose commits are refused is read
//! again from its committed offset at each try, so its first messages are handled
//! again each time.) A [`Router::route`] naming such a topic is a configuration
//! error: the router fails with the [`Error::PermissionDenied`]; so does a refused
//! dead-letter publish, on any route.
//!
//! (The broker's pattern matching applies the same rights, but a pattern route cannot
//! use it, for the reasons above: one member would read every matched topic on one
//! stream, one slow topic holding up the others, and the dead-letter topics, which
//! [`RouterConfig::dead_letter`] may name as it likes, would be matched and read back.)
//!
//! When [`Router::run`] returns, each route's member has left the group (a member
//! whose stream just ends is kept for its session timeout, 10 s, waiting for a
//! reconnect, and nobody reads its partitions meanwhile): a router started again, or
//! the group's other routers, get the partitions at once. A route that ends and starts
//! again at a rescan leaves the same way.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidelog_proto::v1::{ListTopicsRequest, TopicConfig};
use tidelog_storage::pattern::TopicPattern;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::connection::Client;
use crate::consumer::{GroupMember, GroupOptions};
use crate::error::{Error, Result};
use crate::producer::{Producer, ProducerConfig};
use crate::record::{Message, Record};

/// The longest `x-dead-letter-reason` a letter carries, in bytes (a handler's error can
/// be any length): a longer reason is cut at a character boundary.
pub const REASON_BYTES_MAX: usize = 1024;

/// The longest `x-dead-letter-reason` in a letter that leaves out the message (the
/// dead-letter topic refused the whole letter), in bytes; the topic's refusal in
/// `x-dead-letter-omitted` is cut to this too. So such a letter (without a key) fits
/// a dead-letter topic of `max_message_bytes` 1000 while the topics' names are under
/// 64 bytes each.
pub const OMITTED_LETTER_REASON_BYTES_MAX: usize = 256;

/// What the router's headers add to a letter at most: the reason, a topic name and
/// three numbers, with their keys. A dead-letter topic the router creates allows this
/// much more than the routed topic's `max_message_bytes`.
const LETTER_HEADERS_BYTES_MAX: u64 = 2048;

/// How a route's task ended: its topic, whether a pattern matched it, the outcome,
/// and whether an error came from reading the topic in the group (joining, reading,
/// committing) rather than from handling a message (its dead-letter publish).
type RouteEnd = (String, bool, Result<()>, bool);

/// How long a stopping route waits for its member to leave the group.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// The topics pattern routes leave out now (the caller may not consume them), each
/// warned of once until it is routed again.
type LeftOut = Arc<Mutex<BTreeSet<String>>>;

fn lock(left_out: &LeftOut) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
    left_out
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A key up to this size stays in a letter that leaves out the value and headers.
const OMITTED_LETTER_KEY_BYTES_MAX: usize = 1024;

/// What a handler returns: `Err` asks for a retry (and, after the last, dead-lettering).
pub type HandlerResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

type Handler =
    Arc<dyn Fn(Message) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

/// How often a failing message is tried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Runs of the handler in all (1 = no retry). Default 3.
    pub attempts: u32,
    /// Wait before the second run. Default 100 ms.
    pub initial: Duration,
    /// Longest wait between runs. Default 5 s.
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// How a [`Router`] runs.
#[derive(Clone)]
pub struct RouterConfig {
    /// The consumer group every route reads in.
    pub group: String,
    pub retry: Retry,
    /// The dead-letter topic of a topic. Default `<topic>.dlq`.
    pub dead_letter: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// How often patterns are matched against the topic list again. Default 1 s.
    pub rescan: Duration,
}

impl RouterConfig {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> RouterConfig {
        RouterConfig {
            group: group.into(),
            retry: Retry::default(),
            dead_letter: Arc::new(|topic| format!("{topic}.dlq")),
            rescan: Duration::from_secs(1),
        }
    }
}

enum Source {
    Topic(String),
    Pattern(TopicPattern),
}

/// Topics and patterns mapped to handlers.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, Router, RouterConfig};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let router = Router::new(&client, RouterConfig::new("billing"))
///     .route("orders", |message| async move {
///         println!("order {:?}", message.value);
///         Ok(())
///     })
///     .route_pattern(r"payments\..*", |message| async move {
///         if message.value.is_empty() {
///             return Err("empty payment".into()); // retried, then dead-lettered
///         }
///         Ok(())
///     })?;
/// router.run(tokio::signal::ctrl_c()).await?;
/// # Ok(()) }
/// ```
pub struct Router {
    client: Client,
    config: RouterConfig,
    routes: Vec<(Source, Handler)>,
}

impl Router {
    pub fn new(client: &Client, config: RouterConfig) -> Router {
        Router {
            client: client.clone(),
            config,
            routes: Vec::new(),
        }
    }

    /// Messages of `topic` go to `handler`. A topic the caller may not consume (or
    /// commit in the group) fails [`Router::run`] with [`Error::PermissionDenied`].
    pub fn route<F, Fut>(mut self, topic: &str, handler: F) -> Router
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.routes
            .push((Source::Topic(topic.to_string()), boxed(handler)));
        self
    }

    /// Messages of every topic whose whole name matches `pattern` (the proto's "Topic
    /// patterns" syntax) go to `handler`, except the topics the caller may not consume
    /// (or commit in the group), which are left out until the right is granted (see
    /// the module's text). [`Error::InvalidArgument`] for a bad pattern.
    pub fn route_pattern<F, Fut>(mut self, pattern: &str, handler: F) -> Result<Router>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let pattern = TopicPattern::parse(pattern).map_err(|e| Error::InvalidArgument {
            rpc: "Router::route_pattern",
            message: e.to_string(),
        })?;
        self.routes.push((Source::Pattern(pattern), boxed(handler)));
        Ok(self)
    }

    /// Runs the routes until `shutdown` resolves (then returns `Ok`) or a route fails
    /// for good (a dead-letter publish failed, a topic was deleted, ...).
    ///
    /// Either way every route's member leaves the group before `run` returns (see the
    /// module's text), so a router started again gets its partitions at once.
    pub async fn run(self, shutdown: impl Future<Output = impl Sized>) -> Result<()> {
        let producer = Producer::new(&self.client, ProducerConfig::default());
        let mut tasks: JoinSet<RouteEnd> = JoinSet::new();
        let (stop, stopping) = watch::channel(false);
        let left_out: LeftOut = Arc::default();
        let outcome = self
            .route_until(shutdown, &producer, &mut tasks, &stopping, &left_out)
            .await;
        // Every route leaves the group (each within LEAVE_TIMEOUT); a route that
        // has not by then is ended without.
        let _ = stop.send(true);
        let ended = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(2 * LEAVE_TIMEOUT, ended).await;
        tasks.shutdown().await;
        outcome?;
        producer.close().await
    }

    /// The body of [`Router::run`]: starts and watches the routes until `shutdown`
    /// resolves or one fails for good.
    async fn route_until(
        &self,
        shutdown: impl Future<Output = impl Sized>,
        producer: &Producer,
        tasks: &mut JoinSet<RouteEnd>,
        stopping: &watch::Receiver<bool>,
        left_out: &LeftOut,
    ) -> Result<()> {
        let mut started: BTreeSet<String> = BTreeSet::new();
        let mut rescan = tokio::time::interval(self.config.rescan);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = rescan.tick() => {
                    let topics = match self.matched_topics().await {
                        Ok(topics) => topics,
                        // The broker is away (restarting): the routes' members
                        // reconnect by themselves; the next rescan tries again.
                        Err(error) if error.is_retryable() => {
                            tracing::debug!(%error, "ListTopics failed; rescanning later");
                            continue;
                        }
                        Err(error) => return Err(error),
                    };
                    // A topic left out that is gone is warned of again if it comes back.
                    lock(left_out).retain(|left| topics.iter().any(|(topic, _, _)| topic == left));
                    for (topic, handler, matched) in topics {
                        if started.insert(topic.clone()) {
                            let route = RouteTask {
                                client: self.client.clone(),
                                config: self.config.clone(),
                                producer: producer.clone(),
                                topic: topic.clone(),
                                handler,
                                left_out: left_out.clone(),
                            };
                            let stopping = stopping.clone();
                            tasks.spawn(async move {
                                let (outcome, in_group) = route.run(stopping).await;
                                (topic, matched, outcome, in_group)
                            });
                        }
                    }
                }
                Some(ended) = tasks.join_next() => {
                    match ended {
                        Ok((_, _, Ok(()), _)) => {}
                        // A topic a pattern matched was deleted: its route ends, and a
                        // topic created under its name later is routed anew.
                        Ok((topic, true, Err(Error::TopicNotFound { topic: gone }), _))
                            if gone == topic =>
                        {
                            tracing::info!(topic, "a routed topic was deleted; its route ends");
                            started.remove(&topic);
                        }
                        // A topic a pattern matched that the caller may not consume
                        // (or commit in the group): left out, as the broker's pattern
                        // subscriptions leave it out, and tried again at the next
                        // rescan, so a right granted later is picked up. (A refused
                        // dead-letter publish is not this: it ends the router.)
                        Ok((topic, true, Err(Error::PermissionDenied { message }), true)) => {
                            let newly = lock(left_out).insert(topic.clone());
                            if newly {
                                tracing::warn!(topic, reason = message, "a topic the pattern matches is left out of its route: the caller may not read it in the group; it is tried again at each rescan");
                            } else {
                                tracing::debug!(topic, reason = message, "a topic the pattern matches is still left out");
                            }
                            started.remove(&topic);
                        }
                        // Joining while the broker was away, a dead-letter publish
                        // that timed out, ...: what the route had not committed comes
                        // again when it starts over at the next rescan.
                        Ok((topic, _, Err(error), _)) if error.is_retryable() => {
                            tracing::warn!(topic, %error, "a route failed; it starts again at the next rescan");
                            started.remove(&topic);
                        }
                        Ok((_, _, Err(error), _)) => return Err(error),
                        Err(join) => {
                            return Err(Error::Broker {
                                rpc: "Router",
                                code: tonic::Code::Internal,
                                message: format!("a route's task ended: {join}"),
                            })
                        }
                    }
                }
            }
        }
    }

    /// Every (topic, handler, whether a pattern matched it) the routes name now.
    async fn matched_topics(&self) -> Result<Vec<(String, Handler, bool)>> {
        let needs_list = self
            .routes
            .iter()
            .any(|(s, _)| matches!(s, Source::Pattern(_)));
        let listed: Vec<String> = if needs_list {
            self.client
                .admin()
                .list_topics(ListTopicsRequest {
                    include_internal: false,
                })
                .await
                .map_err(|s| Error::from_status("ListTopics", None, &s))?
                .into_inner()
                .topics
                .into_iter()
                .map(|t| t.name)
                .collect()
        } else {
            Vec::new()
        };
        let mut out = Vec::new();
        for (source, handler) in &self.routes {
            match source {
                Source::Topic(topic) => out.push((topic.clone(), handler.clone(), false)),
                Source::Pattern(pattern) => out.extend(
                    listed
                        .iter()
                        .filter(|t| !t.ends_with(".dlq") && pattern.matches(t))
                        .map(|t| (t.clone(), handler.clone(), true)),
                ),
            }
        }
        Ok(out)
    }
}

fn boxed<F, Fut>(handler: F) -> Handler
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |message| Box::pin(handler(message)))
}

/// One topic's loop: read, handle with retries, dead-letter poison, commit.
struct RouteTask {
    client: Client,
    config: RouterConfig,
    producer: Producer,
    topic: String,
    handler: Handler,
    left_out: LeftOut,
}

impl RouteTask {
    /// Joins, routes until the route fails or `stopping` turns true, then leaves.
    /// With an error, whether it came from reading the topic in the group (joining,
    /// reading, committing) rather than from handling a message.
    async fn run(self, mut stopping: watch::Receiver<bool>) -> (Result<()>, bool) {
        let options = GroupOptions::new(self.config.group.clone());
        let mut member = tokio::select! {
            joined = GroupMember::join(&self.client, &self.topic, options) => match joined {
                Ok(member) => member,
                Err(error) => return (Err(error), true),
            },
            _ = stopping.wait_for(|stop| *stop) => return (Ok(()), true),
        };
        if lock(&self.left_out).remove(&self.topic) {
            tracing::info!(
                topic = self.topic,
                "a topic left out of its route is routed now"
            );
        }
        let outcome = tokio::select! {
            outcome = self.route(&mut member) => outcome,
            _ = stopping.wait_for(|stop| *stop) => (Ok(()), true),
        };
        self.leave(member).await;
        outcome
    }

    /// See [`RouteTask::run`].
    async fn route(&self, member: &mut GroupMember) -> (Result<()>, bool) {
        loop {
            let message = match member.next().await {
                Ok(message) => message,
                Err(error) => return (Err(error), true),
            };
            if let Err(error) = self.handle(message).await {
                return (Err(error), false);
            }
            match member.commit().await {
                Ok(()) | Err(Error::Rebalanced { .. }) => {}
                Err(error) if error.is_retryable() => {}
                Err(error) => return (Err(error), true),
            }
        }
    }

    /// Ends `member`'s membership now rather than after its session timeout (a member
    /// whose stream ends is kept that long for a reconnect): [`GroupMember::close`],
    /// the one rule of leaving, within [`LEAVE_TIMEOUT`]. At best: a broker that is
    /// away drops the member by itself.
    async fn leave(&self, member: GroupMember) {
        match tokio::time::timeout(LEAVE_TIMEOUT, member.close()).await {
            Ok(Ok(())) => tracing::debug!(topic = self.topic, "the route's member left the group"),
            Ok(Err(error)) => {
                tracing::debug!(topic = self.topic, %error, "the route's member could not leave the group; its session timeout ends it")
            }
            Err(_) => {
                tracing::debug!(
                    topic = self.topic,
                    "leaving the group timed out; the member's session timeout ends it"
                )
            }
        }
    }

    async fn handle(&self, message: Message) -> Result<()> {
        let retry = self.config.retry;
        let mut backoff = Backoff::new(retry.initial, retry.max);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match run_handler(&self.handler, message.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= retry.attempts.max(1) => {
                    return self.dead_letter(message, attempt, &error).await;
                }
                Err(error) => {
                    tracing::debug!(topic = self.topic, offset = message.offset, attempt, %error, "handler failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    async fn dead_letter(&self, message: Message, attempts: u32, reason: &str) -> Result<()> {
        let topic = (self.config.dead_letter)(&message.topic);
        tracing::warn!(
            topic = &*message.topic,
            offset = message.offset,
            dead_letter = topic,
            reason,
            "poison message dead-lettered"
        );
        let whole = letter(&topic, &message, attempts, reason, None);
        match self.publish_letter(&topic, whole).await {
            // Over the dead-letter topic's limit: the letter says where the message is.
            Err(Error::InvalidRecord { reason: refused })
            | Err(Error::InvalidArgument {
                message: refused, ..
            }) => {
                let omitted = omitted(&message, &topic, &refused);
                tracing::warn!(
                    dead_letter = topic,
                    omitted,
                    "the dead-letter topic refused the whole letter; sending it without the message"
                );
                let reduced = letter(&topic, &message, attempts, reason, Some(omitted));
                self.publish_letter(&topic, reduced).await
            }
            other => other,
        }
    }

    /// Publishes `letter` to `topic`, creating the topic first if it does not exist.
    async fn publish_letter(&self, topic: &str, letter: Record) -> Result<()> {
        match self.producer.send_and_wait(letter.clone()).await {
            Err(Error::TopicNotFound { .. }) => {
                self.create_dead_letter_topic(topic).await?;
                self.producer.send_and_wait(letter).await.map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Creates the dead-letter topic `topic` (1 partition) with room for the largest
    /// message the routed topic takes plus the router's headers.
    async fn create_dead_letter_topic(&self, topic: &str) -> Result<()> {
        let routed = match self.client.describe_topic(&self.topic).await {
            Ok(description) => description.config.map_or(0, |c| c.max_message_bytes),
            Err(_) => 0,
        };
        let routed = match routed {
            0 => tidelog_storage::limits::MESSAGE_BYTES_DEFAULT,
            limit => limit,
        };
        let config = TopicConfig {
            max_message_bytes: (routed + LETTER_HEADERS_BYTES_MAX)
                .min(tidelog_storage::limits::MESSAGE_BYTES_MAX),
            ..TopicConfig::default()
        };
        match self.client.create_topic(topic, 1, config).await {
            Ok(_)
            | Err(Error::Broker {
                code: tonic::Code::AlreadyExists,
                ..
            }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// One run of `handler` on `message`, on a task of its own: a panic is the run's
/// failure (retried, then dead-lettered, like an `Err`), not the router's end. The
/// task is aborted if the route stops meanwhile.
async fn run_handler(handler: &Handler, message: Message) -> std::result::Result<(), String> {
    let mut run = JoinSet::new();
    run.spawn(handler(message));
    match run.join_next().await {
        Some(Ok(outcome)) => outcome.map_err(|error| error.to_string()),
        Some(Err(ended)) if ended.is_panic() => {
            let panic = ended.into_panic();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text panic payload".to_string());
            Err(format!("the handler panicked: {what}"))
        }
        Some(Err(ended)) => Err(format!("the handler's task ended: {ended}")),
        None => Err("the handler's task was not run".to_string()),
    }
}

/// The letter of `message` for dead-letter topic `topic`: the message's key, value and
/// headers after the router's, or, when `omitted` says what was left out, the router's
/// headers and that alone (and the key when it is small).
fn letter(
    topic: &str,
    message: &Message,
    attempts: u32,
    reason: &str,
    omitted: Option<String>,
) -> Record {
    let (value, reason) = match omitted {
        Some(_) => (
            bytes::Bytes::new(),
            cut(reason, OMITTED_LETTER_REASON_BYTES_MAX),
        ),
        None => (message.value.clone(), cut(reason, REASON_BYTES_MAX)),
    };
    let mut record = Record::new(topic, value)
        .header("x-dead-letter-reason", reason)
        .header("x-dead-letter-topic", message.topic.to_string())
        .header("x-dead-letter-partition", message.partition.to_string())
        .header("x-dead-letter-offset", message.offset.to_string())
        .header("x-dead-letter-attempts", attempts.to_string());
    let keep_key =
        |key: &bytes::Bytes| omitted.is_none() || key.len() <= OMITTED_LETTER_KEY_BYTES_MAX;
    if let Some(key) = message.key.as_ref().filter(|k| keep_key(k)) {
        record = record.key(key.clone());
    }
    match omitted {
        Some(omitted) => record = record.header("x-dead-letter-omitted", omitted),
        None => {
            for header in &message.headers {
                record = record.header(header.key.clone(), header.value.clone());
            }
        }
    }
    record
}

/// What a letter without the message leaves out, and why.
fn omitted(message: &Message, topic: &str, refused: &str) -> String {
    let headers: usize = message
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.len())
        .sum();
    let key = match message.key.as_ref() {
        Some(key) if key.len() > OMITTED_LETTER_KEY_BYTES_MAX => {
            format!(", the key ({} bytes)", key.len())
        }
        _ => String::new(),
    };
    format!(
        "the value ({} bytes), {} headers ({headers} bytes){key}: {topic} refused the whole letter ({}); \
         the message is at the headers' topic, partition and offset while retention keeps it",
        message.value.len(),
        message.headers.len(),
        cut(refused, OMITTED_LETTER_REASON_BYTES_MAX),
    )
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_cut_at_a_character_boundary_and_marked() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(1000); // 2,000 bytes
        let cut_reason = cut(&long, REASON_BYTES_MAX);
        assert!(cut_reason.len() <= REASON_BYTES_MAX, "{}", cut_reason.len());
        assert!(cut_reason.ends_with('…'));
        assert!(cut_reason.len() > REASON_BYTES_MAX - 8);
    }

    #[test]
    fn a_letter_without_the_message_fits_1000_bytes_with_a_long_reason() {
        let message = Message {
            topic: "t".repeat(63).into(),
            partition: u32::MAX,
            offset: u64::MAX,
            timestamp_ms: 0,
            expires_at_ms: None,
            key: None,
            value: bytes::Bytes::from(vec![0; 64 * 1024 * 1024]),
            headers: vec![
                tidelog_storage::Header {
                    key: "h".into(),
                    value: bytes::Bytes::from_static(b"v"),
                };
                1000
            ],
            id: None,
            deliver_at_ms: None,
            priority: 0,
        };
        let topic = "d".repeat(63);
        let omitted = omitted(&message, &topic, &"refused ".repeat(1000));
        let reason = "r".repeat(10_000);
        let letter = letter(&topic, &message, u32::MAX, &reason, Some(omitted));
        // With the 16-byte id a producer attaches on a topic that deduplicates.
        let size = letter.size_bytes() + 16;
        assert!(size <= 1000, "{size}");
    }

    #[test]
    fn the_router_headers_fit_their_allowance_at_their_largest() {
        let message = Message {
            topic: "t"
                .repeat(tidelog_storage::limits::TOPIC_NAME_BYTES_MAX)
                .into(),
            partition: u32::MAX,
            offset: u64::MAX,
            timestamp_ms: 0,
            expires_at_ms: None,
            key: None,
            value: bytes::Bytes::new(),
            headers: Vec::new(),
            id: None,
            deliver_at_ms: None,
            priority: 0,
        };
        let letter = letter("d", &message, u32::MAX, &"r".repeat(10_000), None);
        // An empty value and no key: the size is the router's headers.
        let headers = letter.size_bytes();
        assert!(headers <= LETTER_HEADERS_BYTES_MAX, "{headers}");
        assert!(
            headers > LETTER_HEADERS_BYTES_MAX / 2,
            "{headers}: the test is at the largest"
        );
    }
}
