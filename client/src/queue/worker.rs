//! A queue worker: `Queues.Receive` leases deliveries to this worker, `Queues.Settle`
//! answers each one (ack, nack with a delay and a reason, in progress, term).

use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::ReceiveRequest;

use super::route::Unary;
use super::{Delivery, Settler};
use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result};

/// Longest wait of one `Receive` call (the broker's limit).
const RECEIVE_WAIT_MAX: Duration = Duration::from_secs(30);
/// Most deliveries one `Receive` returns (the broker's limit).
const RECEIVE_MESSAGES_MAX: u32 = 1000;

/// A member of a queue on unary calls: receives deliveries leased to it
/// (`Queues.Receive`, a long poll) and settles them (`Queues.Settle`). For a
/// long-running worker, [`crate::QueueConsumer`] (one stream, credit, reconnects)
/// hands out the same [`Delivery`]. On a queue
/// on a topic pattern the deliveries come from every topic it has taken
/// ([`crate::Message::topic`] says which); settling names that topic for you.
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
                        .filter_map(|d| Delivery::new(Settler::Worker(self.route()), &topic, d))
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

    /// How its deliveries are settled: unary `Settle` calls naming this worker's queue.
    fn route(&self) -> Unary {
        Unary {
            client: self.client.clone(),
            queue: self.queue.clone(),
            member: self.member.clone(),
        }
    }
}
