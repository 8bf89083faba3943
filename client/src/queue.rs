//! A queue worker: `Queues.Receive` leases deliveries to this worker, `Queues.Settle`
//! answers each one (ack, nack with a delay and a reason, in progress, term).

use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::settlement::{self, Action};
use tidelog_proto::v1::{QueueDelivery, ReceiveRequest, SettleRequest, Settlement};
use tonic::Code;

use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result};
use crate::record::Message;

/// Longest wait of one `Receive` call (the broker's limit).
const RECEIVE_WAIT_MAX: Duration = Duration::from_secs(30);
/// Most deliveries one `Receive` returns (the broker's limit).
const RECEIVE_MESSAGES_MAX: u32 = 1000;

/// A member of a queue: receives deliveries leased to it and settles them. On a queue
/// on a topic pattern the deliveries come from every topic it has taken
/// ([`Message::topic`] says which); settling names that topic for you.
///
/// Receive retries with backoff while the broker is away. A delivery not settled by
/// its deadline (or whose worker died) is delivered again, to any member, after the
/// queue's backoff: handlers should be idempotent, or check [`Delivery::attempt`].
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use std::time::Duration;
/// use tidelog_client::{Client, QueueWorker};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let worker = QueueWorker::new(&client, "emails", "worker-1");
/// for delivery in worker.receive(100, Duration::from_secs(5)).await? {
///     match delivery.message().value.is_empty() {
///         false => delivery.ack().await?,
///         true => delivery.term("empty body").await?,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct QueueWorker {
    client: Client,
    queue: String,
    member: String,
}

impl QueueWorker {
    /// A worker of `queue`, leasing deliveries under the name `member`.
    pub fn new(client: &Client, queue: &str, member: &str) -> QueueWorker {
        QueueWorker {
            client: client.clone(),
            queue: queue.to_string(),
            member: member.to_string(),
        }
    }

    /// Up to `max` deliveries (at most 1000), waiting up to `wait` (at most 30 s) for
    /// the first. Empty when none came. While the broker is unreachable it retries with
    /// backoff until `wait` has passed.
    pub async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<Delivery>> {
        // Each delivery names its topic (a queue on a topic pattern has many).
        let topic: Arc<str> = Arc::from("");
        let wait = wait.min(RECEIVE_WAIT_MAX);
        let deadline = tokio::time::Instant::now() + wait;
        let mut backoff = Backoff::default();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let request = ReceiveRequest {
                queue: self.queue.clone(),
                member: self.member.clone(),
                max_messages: max.clamp(1, RECEIVE_MESSAGES_MAX),
                max_wait_ms: left.as_millis() as u64,
            };
            match self.client.queues().receive(request).await {
                Ok(response) => {
                    return Ok(response
                        .into_inner()
                        .deliveries
                        .into_iter()
                        .filter_map(|d| Delivery::new(self, &topic, d))
                        .collect());
                }
                Err(status) => {
                    let error = Error::from_status("Receive", None, &status);
                    if !crate::error::retryable_status(&status) || left.is_zero() {
                        return Err(error);
                    }
                    tracing::debug!(%status, queue = self.queue, "receive failed; retrying");
                    tokio::time::sleep(backoff.next_delay().min(left)).await;
                }
            }
        }
    }

    async fn settle(
        &self,
        delivery: &Delivery,
        action: Action,
        through: Option<u64>,
    ) -> Result<u64> {
        let request = SettleRequest {
            queue: self.queue.clone(),
            settlements: vec![Settlement {
                topic: delivery.message.topic.to_string(),
                partition: delivery.message.partition,
                offset: delivery.message.offset,
                through_offset: through,
                attempt: delivery.attempt,
                action: Some(action),
            }],
        };
        let response = self
            .client
            .queues()
            .settle(request)
            .await
            .map_err(|s| Error::from_status("Settle", None, &s))?
            .into_inner();
        let Some(outcome) = response.outcomes.into_iter().next() else {
            return Err(Error::Broker {
                rpc: "Settle",
                code: Code::Internal,
                message: "no outcome for the settlement".into(),
            });
        };
        match Code::from_i32(outcome.code) {
            Code::Ok => Ok(outcome.settled),
            code @ (Code::FailedPrecondition | Code::NotFound) => Err(Error::SettleRefused {
                code,
                message: outcome.message,
            }),
            code => Err(Error::from_code("Settle", None, code, &outcome.message)),
        }
    }
}

/// One delivery of a message to a [`QueueWorker`], to settle before its deadline.
#[derive(Debug, Clone)]
pub struct Delivery {
    worker: QueueWorker,
    message: Message,
    attempt: u32,
    deadline_ms: i64,
}

impl Delivery {
    fn new(worker: &QueueWorker, topic: &Arc<str>, delivery: QueueDelivery) -> Option<Delivery> {
        Some(Delivery {
            worker: worker.clone(),
            message: Message::from_proto(topic, delivery.message?),
            attempt: delivery.attempt,
            deadline_ms: delivery.deadline_ms,
        })
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Which delivery of the message this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the lease ends unless settled or extended (ms since the Unix epoch).
    pub fn deadline_ms(&self) -> i64 {
        self.deadline_ms
    }

    /// Done: never delivered again. [`Error::SettleRefused`] when the delivery is
    /// stale (the message was delivered again since) or already settled.
    pub async fn ack(&self) -> Result<()> {
        self.worker
            .settle(self, Action::Ack(settlement::Ack {}), None)
            .await
            .map(|_| ())
    }

    /// Acks every offset from this message's through `through_offset` (inclusive) of
    /// its partition that this worker holds; returns how many were acked.
    pub async fn ack_through(&self, through_offset: u64) -> Result<u64> {
        self.worker
            .settle(self, Action::Ack(settlement::Ack {}), Some(through_offset))
            .await
    }

    /// Deliver it again after `delay` (`None` = the queue's backoff), noting `reason`.
    pub async fn nack(&self, delay: Option<Duration>, reason: &str) -> Result<()> {
        let nack = settlement::Nack {
            delay_ms: delay.map(|d| d.as_millis() as u64),
            reason: reason.to_string(),
        };
        self.worker
            .settle(self, Action::Nack(nack), None)
            .await
            .map(|_| ())
    }

    /// Still working: move the deadline to now + `extend` (`None` = the queue's ack
    /// deadline).
    pub async fn in_progress(&self, extend: Option<Duration>) -> Result<()> {
        let in_progress = settlement::InProgress {
            extend_ms: extend.map(|d| d.as_millis() as u64),
        };
        self.worker
            .settle(self, Action::InProgress(in_progress), None)
            .await
            .map(|_| ())
    }

    /// Give up: dead-letter it now with `reason`.
    pub async fn term(&self, reason: &str) -> Result<()> {
        let term = settlement::Term {
            reason: reason.to_string(),
        };
        self.worker
            .settle(self, Action::Term(term), None)
            .await
            .map(|_| ())
    }
}
