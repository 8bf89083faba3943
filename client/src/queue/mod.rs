//! Work queues: a member receives deliveries leased to it and settles each one (ack,
//! nack with a delay and a reason, in progress, term).
//!
//! Two ways to be a member, with one [`Delivery`] type:
//! - [`QueueConsumer`] (`consumer.rs`): the `Queues.Consume` stream, credit-based push
//!   with credit given back automatically, reconnects with backoff; settlements travel
//!   on the stream and are matched to the broker's Settled answers by request id.
//! - [`QueueWorker`] (`worker.rs`): the unary `Queues.Receive` (long poll) and
//!   `Queues.Settle`, for callers that want no stream.
//!
//! A delivery settles through its way back to the member that received it
//! (`route.rs`), which knows neither member type.
//!
//! Settling never serialises a member: each [`Delivery::settle`] is its own request
//! (a stream's driver sends it at once and matches the answer by request id), so
//! deliveries handled concurrently have their settlements in flight together, and the
//! broker combines them into one fsync. Each call still returns only once its
//! settlement is durable (see the crate docs for the trade-off).

mod consumer;
mod route;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::settlement::{self, Action};
use tidelog_proto::v1::{QueueDelivery, Settlement, SettlementOutcome};
use tonic::Code;

use crate::error::{Error, Result};
use crate::record::Message;

pub use consumer::{QueueConsumer, QueueConsumerOptions, QueueEvent};
pub use worker::QueueWorker;

/// How a delivery is settled: through the member that received it.
#[derive(Debug, Clone)]
enum Settler {
    /// Unary `Settle` calls of a [`QueueWorker`].
    Worker(route::Unary),
    /// The `Consume` stream of a [`QueueConsumer`], in the session it came on.
    Stream(route::Link),
}

impl Settler {
    /// Sends `settlements` (each settling `frees[i]` of this member's deliveries for
    /// good, for the credit it gives back) and returns the broker's outcome of each,
    /// once durable.
    async fn settle(
        &self,
        settlements: Vec<Settlement>,
        frees: Vec<u32>,
    ) -> Result<Vec<SettlementOutcome>> {
        let count = settlements.len();
        let outcomes = match self {
            Settler::Worker(worker) => worker.settle(settlements).await?,
            Settler::Stream(link) => link.settle(settlements, frees).await?,
        };
        check_outcomes(count, outcomes)
    }

    fn same_member(&self, other: &Settler) -> bool {
        match (self, other) {
            (Settler::Worker(a), Settler::Worker(b)) => a.same_member(b),
            (Settler::Stream(a), Settler::Stream(b)) => a.same_session(b),
            _ => false,
        }
    }
}

/// The broker answers every settlement with one outcome, in order; anything else is
/// a broker defect, reported rather than guessed around.
fn check_outcomes(
    count: usize,
    outcomes: Vec<SettlementOutcome>,
) -> Result<Vec<SettlementOutcome>> {
    if outcomes.len() != count {
        return Err(Error::Broker {
            rpc: "Settle",
            code: Code::Internal,
            message: format!(
                "{} outcomes for {count} settlements: check that tidelogd and tidelog-client are the same version",
                outcomes.len()
            ),
        });
    }
    Ok(outcomes)
}

/// One settlement's outcome: how many offsets it settled, or why it was refused.
fn outcome_result(outcome: &SettlementOutcome) -> Result<u64> {
    match Code::from_i32(outcome.code) {
        Code::Ok => Ok(outcome.settled),
        code @ (Code::FailedPrecondition | Code::NotFound) => Err(Error::SettleRefused {
            code,
            message: outcome.message.clone(),
        }),
        code => Err(Error::from_code("Settle", None, code, &outcome.message)),
    }
}

/// What to do with a delivery ([`Delivery::settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Done: never delivered again.
    Ack,
    /// Deliver it again after `delay` (`None` = the queue's backoff), noting `reason`
    /// (kept with the message, and in its dead letter). At most 12 hours.
    Nack {
        delay: Option<Duration>,
        reason: String,
    },
    /// Still working: the deadline moves to now + `extend` (`None` = the queue's ack
    /// deadline). 100 ms to 12 hours.
    InProgress { extend: Option<Duration> },
    /// Give up: dead-letter it now, whatever its attempt count, with `reason`.
    Term { reason: String },
}

impl Settle {
    fn action(&self) -> Action {
        match self {
            Settle::Ack => Action::Ack(settlement::Ack {}),
            Settle::Nack { delay, reason } => Action::Nack(settlement::Nack {
                delay_ms: delay.map(duration_ms),
                reason: reason.clone(),
            }),
            Settle::InProgress { extend } => Action::InProgress(settlement::InProgress {
                extend_ms: extend.map(duration_ms),
            }),
            Settle::Term { reason } => Action::Term(settlement::Term {
                reason: reason.clone(),
            }),
        }
    }

    /// Whether the delivery is no longer held once this is answered (everything but
    /// an extension).
    fn is_final(&self) -> bool {
        !matches!(self, Settle::InProgress { .. })
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a settlement did, once the broker made it durable ([`Delivery::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settled {
    /// Acked: never delivered again.
    Acked,
    /// Nacked: delivered again after the delay.
    Nacked,
    /// Nacked on its last allowed attempt (the queue's max deliveries), or termed:
    /// appended to the queue's dead-letter topic.
    DeadLettered,
    /// The deadline moved.
    Extended,
}

/// The outcome of one range of [`Delivery::ack_all`]: consecutive offsets of one
/// partition, acked by one settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeAck {
    pub topic: Arc<str>,
    pub partition: u32,
    /// First and last offset of the range (inclusive).
    pub first: u64,
    pub last: u64,
    /// How many of the deliveries given were in it.
    pub deliveries: u64,
    /// How many offsets the broker acked (fewer than `deliveries` when some were no
    /// longer this member's: their deadline passed), or why it refused the range.
    pub outcome: Result<u64>,
}

/// One delivery of a message to a [`QueueConsumer`] or a [`QueueWorker`], to settle
/// before its deadline. Settling returns once the broker has made the outcome durable.
///
/// A delivery dropped without a settlement is not given back at once: the broker
/// delivers it again after its deadline (to any member), and on a [`QueueConsumer`]
/// it keeps its unit of credit until the stream is opened again, as an unacked
/// message counts against a RabbitMQ channel's prefetch. A consumer that drops
/// deliveries unsettled runs out of credit; nack them instead (`nack` with
/// `Some(Duration::ZERO)` hands one back at once).
#[derive(Debug, Clone)]
pub struct Delivery {
    settler: Settler,
    message: Message,
    attempt: u32,
    deadline_ms: i64,
    /// Names the lease (QueueDelivery.receipt): every settlement of it echoes it.
    receipt: Arc<str>,
}

impl Delivery {
    fn new(settler: Settler, topic: &Arc<str>, delivery: QueueDelivery) -> Option<Delivery> {
        Some(Delivery {
            settler,
            message: Message::from_proto(topic, delivery.message?),
            attempt: delivery.attempt,
            deadline_ms: delivery.deadline_ms,
            receipt: Arc::from(delivery.receipt),
        })
    }

    /// The message. On a queue on a topic pattern, [`Message::topic`] says which topic
    /// it is from (settling names it for you).
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

    /// The delivery in the proto's shape, for code that speaks the generated types.
    pub fn to_proto(&self) -> QueueDelivery {
        QueueDelivery {
            message: Some(self.message.clone().into_proto()),
            attempt: self.attempt,
            deadline_ms: self.deadline_ms,
            receipt: self.receipt.to_string(),
        }
    }

    fn settlement(&self, action: Action, through: Option<u64>) -> Settlement {
        Settlement {
            topic: self.message.topic.to_string(),
            partition: self.message.partition,
            offset: self.message.offset,
            through_offset: through,
            attempt: self.attempt,
            receipt: self.receipt.to_string(),
            action: Some(action),
        }
    }

    /// Settles this delivery (of its attempt) and says what that did.
    ///
    /// Errors: [`Error::SettleRefused`] when the delivery is stale (its deadline passed
    /// and the message was delivered again) or already settled;
    /// [`Error::LeaseLost`] when the [`QueueConsumer`]'s stream it came on broke before
    /// the answer (the broker delivers it again); [`Error::InvalidArgument`] for a delay
    /// or extension out of range. From a [`QueueWorker`], a retryable
    /// [`Error::Unavailable`] when its `Settle` call got no answer (the broker went
    /// away): the outcome is unknown (the broker may have applied it); retrying is
    /// safe, as the retry names the same lease (receipt and attempt): it settles this
    /// delivery or is refused ([`Error::SettleRefused`]: `NOT_FOUND` when the first try
    /// settled it, stale when the lease ended and the message is delivered again).
    pub async fn settle(&self, settle: Settle) -> Result<Settled> {
        let settlement = self.settlement(settle.action(), None);
        let frees = vec![u32::from(settle.is_final())];
        let outcomes = self.settler.settle(vec![settlement], frees).await?;
        let settled = outcomes.first().map_or(Ok(0), outcome_result)?;
        Ok(match settle {
            Settle::Ack => Settled::Acked,
            Settle::Term { .. } => Settled::DeadLettered,
            Settle::Nack { .. } if settled > 0 => Settled::DeadLettered,
            Settle::Nack { .. } => Settled::Nacked,
            Settle::InProgress { .. } => Settled::Extended,
        })
    }

    /// Done: never delivered again. See [`Delivery::settle`] for the errors.
    pub async fn ack(&self) -> Result<()> {
        self.settle(Settle::Ack).await.map(|_| ())
    }

    /// Acks every offset from this message's through `through_offset` (inclusive) of
    /// its partition that this member holds; returns how many were acked.
    pub async fn ack_through(&self, through_offset: u64) -> Result<u64> {
        let settlement = self.settlement(Action::Ack(settlement::Ack {}), Some(through_offset));
        let outcomes = self.settler.settle(vec![settlement], vec![1]).await?;
        outcomes.first().map_or(Ok(0), outcome_result)
    }

    /// Deliver it again after `delay` (`None` = the queue's backoff), noting `reason`.
    /// On the message's last allowed attempt this dead-letters it
    /// ([`Delivery::settle`] tells which).
    pub async fn nack(&self, delay: Option<Duration>, reason: &str) -> Result<()> {
        let reason = reason.to_string();
        self.settle(Settle::Nack { delay, reason })
            .await
            .map(|_| ())
    }

    /// Still working: move the deadline to now + `extend` (`None` = the queue's ack
    /// deadline).
    pub async fn in_progress(&self, extend: Option<Duration>) -> Result<()> {
        self.settle(Settle::InProgress { extend }).await.map(|_| ())
    }

    /// Give up: dead-letter it now with `reason`.
    pub async fn term(&self, reason: &str) -> Result<()> {
        let reason = reason.to_string();
        self.settle(Settle::Term { reason }).await.map(|_| ())
    }

    /// Acks `deliveries` (all from one member, in any order) with one request:
    /// consecutive offsets of a partition go as one range (`through_offset`), a range
    /// of one names its attempt. One [`RangeAck`] per range, sorted by topic,
    /// partition and offset. A range acks the offsets of it this member holds now,
    /// whichever attempt (a message delivered to it again since is acked too).
    ///
    /// Errors: [`Error::InvalidArgument`] when the deliveries come from different
    /// members (or streams); the errors of [`Delivery::settle`] for the request as a
    /// whole (a refused range is in its [`RangeAck::outcome`]).
    pub async fn ack_all(deliveries: &[Delivery]) -> Result<Vec<RangeAck>> {
        let Some(first) = deliveries.first() else {
            return Ok(Vec::new());
        };
        if deliveries
            .iter()
            .any(|d| !d.settler.same_member(&first.settler))
        {
            return Err(Error::InvalidArgument {
                rpc: "Settle",
                message: "Delivery::ack_all was given deliveries of different members or streams: ack each member's own".into(),
            });
        }
        let ranges = ack_ranges(deliveries);
        let settlements = ranges
            .iter()
            .map(|r| Settlement {
                topic: r.topic.to_string(),
                partition: r.partition,
                offset: r.first,
                through_offset: (r.last > r.first).then_some(r.last),
                attempt: r.attempt,
                receipt: r.receipt.to_string(),
                action: Some(Action::Ack(settlement::Ack {})),
            })
            .collect();
        let frees = ranges
            .iter()
            .map(|r| u32::try_from(r.deliveries).unwrap_or(u32::MAX))
            .collect();
        let outcomes = first.settler.settle(settlements, frees).await?;
        Ok(ranges
            .into_iter()
            .zip(&outcomes)
            .map(|(r, outcome)| RangeAck {
                topic: r.topic,
                partition: r.partition,
                first: r.first,
                last: r.last,
                deliveries: r.deliveries,
                outcome: outcome_result(outcome),
            })
            .collect())
    }
}

/// A run of consecutive offsets of one partition among the deliveries acked together.
#[derive(Debug)]
struct Run {
    topic: Arc<str>,
    partition: u32,
    first: u64,
    last: u64,
    deliveries: u64,
    /// The delivery's attempt for a run of one offset; 0 (whichever is current) for a
    /// range, where the broker takes no attempt.
    attempt: u32,
    /// The receipt of its deliveries (a run holds deliveries of one receipt: of one
    /// queue, or topic, as it was when it delivered them).
    receipt: Arc<str>,
}

/// Runs of consecutive offsets per (topic, partition) and receipt, sorted; duplicates
/// count once.
fn ack_ranges(deliveries: &[Delivery]) -> Vec<Run> {
    let key = |d: &Delivery| {
        (
            d.message.topic.clone(),
            d.message.partition,
            d.receipt.clone(),
            d.message.offset,
        )
    };
    let mut sorted: Vec<&Delivery> = deliveries.iter().collect();
    sorted.sort_unstable_by_key(|d| key(d));
    sorted.dedup_by_key(|d| key(d));
    let offsets = sorted.into_iter().map(|d| {
        let m = &d.message;
        (&m.topic, m.partition, &d.receipt, m.offset, d.attempt)
    });
    let mut runs: Vec<Run> = Vec::new();
    for (topic, partition, receipt, offset, attempt) in offsets {
        match runs.last_mut() {
            Some(run)
                if run.topic == *topic
                    && run.partition == partition
                    && run.receipt == *receipt
                    && run.last.checked_add(1) == Some(offset) =>
            {
                run.last = offset;
                run.deliveries += 1;
                run.attempt = 0;
            }
            _ => runs.push(Run {
                topic: topic.clone(),
                partition,
                first: offset,
                last: offset,
                deliveries: 1,
                attempt,
                receipt: receipt.clone(),
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(topic: &str, partition: u32, offset: u64) -> Delivery {
        let message = tidelog_proto::v1::ConsumedMessage {
            topic: topic.into(),
            partition,
            offset,
            ..Default::default()
        };
        let proto = QueueDelivery {
            message: Some(message),
            attempt: 2,
            deadline_ms: 0,
            receipt: String::new(),
        };
        let settler = Settler::Stream(route::Link::detached());
        Delivery::new(settler, &Arc::from(""), proto).expect("a message")
    }

    #[test]
    fn consecutive_offsets_become_ranges_per_partition() {
        let deliveries: Vec<Delivery> = [
            ("a", 1, 7),
            ("a", 0, 3),
            ("a", 0, 1),
            ("a", 0, 2),
            ("a", 1, 5),
            ("a", 0, 2),
            ("a", 1, 6),
            ("a", 0, 9),
            // Another topic's partition 0 is another run.
            ("b", 0, 4),
        ]
        .into_iter()
        .map(|(t, p, o)| delivery(t, p, o))
        .collect();
        let runs: Vec<(String, u32, u64, u64, u64, u32)> = ack_ranges(&deliveries)
            .iter()
            .map(|r| {
                let t = r.topic.to_string();
                (t, r.partition, r.first, r.last, r.deliveries, r.attempt)
            })
            .collect();
        let a = |p, f, l, n, at| ("a".to_string(), p, f, l, n, at);
        assert_eq!(
            runs,
            vec![
                a(0, 1, 3, 3, 0),
                a(0, 9, 9, 1, 2),
                a(1, 5, 7, 3, 0),
                ("b".to_string(), 0, 4, 4, 1, 2)
            ]
        );
        assert!(ack_ranges(&[]).is_empty());
    }

    #[test]
    fn deliveries_of_different_receipts_never_share_a_range() {
        // A worker holding 0..=2 of a queue deleted and created again (receipt "old")
        // and 0..=2 of the new one ("new"): two ranges, each with its own receipt.
        let deliveries: Vec<Delivery> = ["new", "old"]
            .into_iter()
            .flat_map(|receipt| {
                (0..3).map(move |offset| {
                    let mut d = delivery("a", 0, offset);
                    d.receipt = Arc::from(receipt);
                    d
                })
            })
            .collect();
        let runs: Vec<(String, u64, u64, u64)> = ack_ranges(&deliveries)
            .iter()
            .map(|r| (r.receipt.to_string(), r.first, r.last, r.deliveries))
            .collect();
        assert_eq!(
            runs,
            [("new".to_string(), 0, 2, 3), ("old".to_string(), 0, 2, 3)]
        );
    }

    #[test]
    fn outcomes_map_to_errors_by_cause() {
        let outcome = |code: Code, settled| SettlementOutcome {
            code: code as i32,
            message: "m".into(),
            settled,
        };
        assert_eq!(outcome_result(&outcome(Code::Ok, 3)), Ok(3));
        assert!(matches!(
            outcome_result(&outcome(Code::FailedPrecondition, 0)),
            Err(Error::SettleRefused { .. })
        ));
        assert!(matches!(
            outcome_result(&outcome(Code::InvalidArgument, 0)),
            Err(Error::InvalidArgument { .. })
        ));
        // A code no broker sends is still an error, not a panic.
        let odd = SettlementOutcome {
            code: 9999,
            ..Default::default()
        };
        assert!(outcome_result(&odd).is_err());
        assert!(check_outcomes(2, vec![outcome(Code::Ok, 1)]).is_err());
    }
}
