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
//! A message's handling: the handler runs; if it fails, it runs again after a backoff
//! (doubling from [`Retry::initial`] up to [`Retry::max`]) until [`Retry::attempts`]
//! runs failed; then the message is **poison**: it is published to the dead-letter topic
//! ([`RouterConfig::dead_letter`], default `<topic>.dlq`, created with 1 partition if
//! missing) with headers `x-dead-letter-reason` (the last error),
//! `x-dead-letter-topic`, `x-dead-letter-partition`, `x-dead-letter-offset` and
//! `x-dead-letter-attempts`, and committed. If the dead-letter publish fails, the
//! router stops with that error and the message is not committed (it comes again).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::{ListTopicsRequest, TopicConfig};
use tidelog_storage::pattern::TopicPattern;
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::connection::Client;
use crate::consumer::{GroupMember, GroupOptions};
use crate::error::{Error, Result};
use crate::producer::{Producer, ProducerConfig};
use crate::record::{Message, Record};

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

    /// Messages of `topic` go to `handler`.
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
    /// patterns" syntax) go to `handler`. [`Error::InvalidArgument`] for a bad pattern.
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
    pub async fn run(self, shutdown: impl Future<Output = impl Sized>) -> Result<()> {
        let producer = Producer::new(&self.client, ProducerConfig::default());
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let mut started: BTreeSet<String> = BTreeSet::new();
        let mut rescan = tokio::time::interval(self.config.rescan);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = rescan.tick() => {
                    let topics = self.matched_topics().await?;
                    for (topic, handler) in topics {
                        if started.insert(topic.clone()) {
                            let route = RouteTask {
                                client: self.client.clone(),
                                config: self.config.clone(),
                                producer: producer.clone(),
                                topic,
                                handler,
                            };
                            tasks.spawn(route.run());
                        }
                    }
                }
                Some(ended) = tasks.join_next() => {
                    match ended {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => return Err(error),
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
        tasks.shutdown().await;
        producer.close().await
    }

    /// Every (topic, handler) the routes name now.
    async fn matched_topics(&self) -> Result<Vec<(String, Handler)>> {
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
                Source::Topic(topic) => out.push((topic.clone(), handler.clone())),
                Source::Pattern(pattern) => out.extend(
                    listed
                        .iter()
                        .filter(|t| !t.ends_with(".dlq") && pattern.matches(t))
                        .map(|t| (t.clone(), handler.clone())),
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
}

impl RouteTask {
    async fn run(self) -> Result<()> {
        let options = GroupOptions::new(self.config.group.clone());
        let mut member = GroupMember::join(&self.client, &self.topic, options).await?;
        loop {
            let message = member.next().await?;
            self.handle(message).await?;
            match member.commit().await {
                Ok(()) | Err(Error::Rebalanced { .. }) => {}
                Err(error) if error.is_retryable() => {}
                Err(error) => return Err(error),
            }
        }
    }

    async fn handle(&self, message: Message) -> Result<()> {
        let retry = self.config.retry;
        let mut backoff = Backoff::new(retry.initial, retry.max);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match (self.handler)(message.clone()).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= retry.attempts.max(1) => {
                    return self.dead_letter(message, attempt, &error.to_string()).await;
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
        let mut record = Record::new(&topic, message.value.clone())
            .header("x-dead-letter-reason", reason.to_string())
            .header("x-dead-letter-topic", message.topic.to_string())
            .header("x-dead-letter-partition", message.partition.to_string())
            .header("x-dead-letter-offset", message.offset.to_string())
            .header("x-dead-letter-attempts", attempts.to_string());
        if let Some(key) = &message.key {
            record = record.key(key.clone());
        }
        for header in &message.headers {
            record = record.header(header.key.clone(), header.value.clone());
        }
        match self.producer.send_and_wait(record.clone()).await {
            Err(Error::TopicNotFound { .. }) => {
                match self
                    .client
                    .create_topic(&topic, 1, TopicConfig::default())
                    .await
                {
                    Ok(_)
                    | Err(Error::Broker {
                        code: tonic::Code::AlreadyExists,
                        ..
                    }) => {}
                    Err(error) => return Err(error),
                }
                self.producer.send_and_wait(record).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }
}
