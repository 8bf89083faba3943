//! A delivery's way back to the member that received it: the unary `Queues.Settle`
//! of a [`super::QueueWorker`], or the `Consume` stream driver of a
//! [`super::QueueConsumer`] (a [`Link`] to it). [`super::Delivery`] settles through
//! these without knowing either member type.

use tidelog_proto::v1::{SettleRequest, Settlement, SettlementOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::connection::Client;
use crate::error::{Error, Result};

/// A worker's way back: unary `Queues.Settle` calls naming its queue.
#[derive(Debug, Clone)]
pub(super) struct Unary {
    pub(super) client: Client,
    pub(super) queue: String,
    pub(super) member: String,
}

impl Unary {
    /// One unary `Settle` of `settlements`: the outcome of each, once durable.
    pub(super) async fn settle(
        &self,
        settlements: Vec<Settlement>,
    ) -> Result<Vec<SettlementOutcome>> {
        let request = SettleRequest {
            queue: self.queue.clone(),
            settlements,
        };
        let response = self
            .client
            .queues()
            .settle(request)
            .await
            .map_err(|status| match Error::from_status("Settle", None, &status) {
                // No answer (the connection broke, the broker went away): it may have
                // applied the settlement before. Retrying is safe (see SETTLE_UNANSWERED).
                Error::Unavailable { rpc, message } => Error::Unavailable {
                    rpc,
                    message: format!("{message}; {SETTLE_UNANSWERED}"),
                },
                error => error,
            })?
            .into_inner();
        Ok(response.outcomes)
    }

    /// Whether `other` leases under the same name on the same queue.
    /// Whether both settle for the same member of the same queue.
    pub(super) fn same_member(&self, other: &Unary) -> bool {
        self.queue == other.queue && self.member == other.member
    }
}

/// A delivery's way back to the driver that received it.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) session: u64,
}

impl Link {
    /// A link to no driver (settling fails with [`Error::LeaseLost`]), for tests.
    #[cfg(test)]
    pub(super) fn detached() -> Link {
        let (commands, _) = mpsc::channel(1);
        Link {
            commands,
            session: 0,
        }
    }

    pub(super) fn same_session(&self, other: &Link) -> bool {
        self.session == other.session && self.commands.same_channel(&other.commands)
    }

    pub(super) async fn settle(
        &self,
        settlements: Vec<Settlement>,
        frees: Vec<u32>,
    ) -> Result<Vec<SettlementOutcome>> {
        let (reply, answer) = oneshot::channel();
        let command = Command {
            session: self.session,
            settlements,
            frees,
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(lease_lost(NOT_SENT_CLOSED));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(lease_lost(UNANSWERED_CLOSED)))
    }
}

/// A settlement never sent: the consumer was closed first.
pub(super) const NOT_SENT_CLOSED: &str = "the consumer it came from was closed or dropped, so the settlement was not sent; the broker takes the delivery back and delivers the message again (attempt + 1): drop this delivery and handle the redelivery";

/// A settlement sent, then the consumer closed before the broker answered.
/// What a unary `Settle` that got no answer tells ([`crate::Error::Unavailable`]): a
/// retry echoes the same receipt and attempt, so it settles that lease or nothing.
pub(super) const SETTLE_UNANSWERED: &str = "no answer came, so the settlement may or may not have been applied; retrying it is safe: it names the same lease (receipt and attempt), so it settles that delivery or is refused (NOT_FOUND: it was settled, by the first try; stale: the lease ended and the message is delivered again)";

pub(super) const UNANSWERED_CLOSED: &str = "the consumer was closed or dropped before the broker answered, so the settlement may or may not have been applied: if it was (an ack), the message is not delivered again; if not, the broker delivers it again (attempt + 1): handle a redelivery if one comes";

/// A settlement sent, then the stream broke before the broker answered.
pub(super) const UNANSWERED_BROKEN: &str = "the stream broke before the broker answered, so the settlement may or may not have been applied: if it was (an ack), the message is not delivered again; if not, the broker delivers it again (attempt + 1): handle a redelivery if one comes";

/// A settlement of a delivery whose stream broke before it was sent.
pub(super) const NOT_SENT_BROKEN: &str = "the stream it came on broke before the settlement was sent, and the broker took the delivery back: it delivers the message again (attempt + 1): drop this delivery and handle the redelivery";

pub(super) fn lease_lost(reason: &str) -> Error {
    Error::LeaseLost {
        reason: reason.to_string(),
    }
}

/// A settlement request for the driver.
#[derive(Debug)]
pub(super) struct Command {
    pub(super) session: u64,
    pub(super) settlements: Vec<Settlement>,
    /// Per settlement, the deliveries it settles for good (credit to give back).
    pub(super) frees: Vec<u32>,
    pub(super) reply: oneshot::Sender<Result<Vec<SettlementOutcome>>>,
}
