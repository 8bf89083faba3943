//! A queue member's `Consume` stream: the Open handshake, credit, settlements with
//! request ids, and the broker's events.
//!
//! The requests go through a bounded channel the stream reads from; the broker answers
//! each Settle with one Settled event (matched by `request_id`) once the outcome is
//! durable. Dropping the session ends the stream: the broker then delivers what this
//! member still holds to other members (after its backoff).

use crate::client::Conn;
use tidelog_proto::v1::queue_consume_request::{Credit, Open, Request, Settle};
use tidelog_proto::v1::queue_consume_response::{Deliveries, Event, Settled};
use tidelog_proto::v1::queues_client::QueuesClient;
use tidelog_proto::v1::settlement::{Ack, Action, InProgress, Nack};
use tidelog_proto::v1::{QueueConfig, QueueConsumeRequest, QueueDelivery, Settlement};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Requests queued for the stream before `send` waits.
const REQUESTS_QUEUED_MAX: usize = 256;

/// What went wrong on the stream.
#[derive(Debug)]
pub enum SessionError {
    /// The broker refused the stream or ended it with this status.
    Status(Status),
    /// The stream ended without a status (the broker closed it).
    Ended,
}

/// An event from the broker after the Opened answer.
#[derive(Debug)]
pub enum SessionEvent {
    Deliveries(Deliveries),
    Settled(Settled),
}

/// An open Consume stream.
#[derive(Debug)]
pub struct Session {
    requests: mpsc::Sender<QueueConsumeRequest>,
    events: Streaming<tidelog_proto::v1::QueueConsumeResponse>,
    /// The id the broker gave this member.
    pub member_id: String,
    /// The queue's effective config.
    pub config: QueueConfig,
    next_request_id: u64,
}

impl Session {
    /// Opens a stream on `queue` with `credit` deliveries allowed, and waits for the
    /// broker's Opened answer.
    pub async fn open(
        mut client: QueuesClient<Conn>,
        queue: &str,
        client_id: &str,
        credit: u32,
    ) -> Result<Session, SessionError> {
        let (requests, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
        // The broker reads the Open before it answers the call.
        requests
            .send(QueueConsumeRequest {
                request: Some(Request::Open(Open {
                    queue: queue.to_string(),
                    client_id: client_id.to_string(),
                    credit,
                })),
            })
            .await
            .map_err(|_| SessionError::Ended)?;
        let mut events = client
            .consume(ReceiverStream::new(rx))
            .await
            .map_err(SessionError::Status)?
            .into_inner();
        loop {
            match events.message().await.map_err(SessionError::Status)? {
                Some(response) => {
                    if let Some(Event::Opened(opened)) = response.event {
                        return Ok(Session {
                            requests,
                            events,
                            member_id: opened.member_id,
                            config: opened.config.unwrap_or_default(),
                            next_request_id: 1,
                        });
                    }
                }
                None => return Err(SessionError::Ended),
            }
        }
    }

    /// The queue's ack deadline in ms.
    pub fn ack_deadline_ms(&self) -> u64 {
        self.config.ack_deadline_ms.unwrap_or(30_000)
    }

    async fn send(&self, request: Request) -> Result<(), SessionError> {
        self.requests
            .send(QueueConsumeRequest {
                request: Some(request),
            })
            .await
            .map_err(|_| SessionError::Ended)
    }

    /// Allows `messages` more deliveries.
    pub async fn credit(&self, messages: u32) -> Result<(), SessionError> {
        if messages == 0 {
            return Ok(());
        }
        self.send(Request::Credit(Credit { messages })).await
    }

    /// Sends settlements; returns the request id their Settled answer will carry.
    pub async fn settle(&mut self, settlements: Vec<Settlement>) -> Result<u64, SessionError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.send(Request::Settle(Settle {
            request_id,
            settlements,
        }))
        .await?;
        Ok(request_id)
    }

    /// The next event; `Ok(None)` when the broker ended the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<SessionEvent>, SessionError> {
        loop {
            match self.events.message().await.map_err(SessionError::Status)? {
                Some(response) => match response.event {
                    Some(Event::Deliveries(deliveries)) => {
                        return Ok(Some(SessionEvent::Deliveries(deliveries)));
                    }
                    Some(Event::Settled(settled)) => {
                        return Ok(Some(SessionEvent::Settled(settled)));
                    }
                    Some(Event::Opened(_)) | None => {}
                },
                None => return Ok(None),
            }
        }
    }
}

/// (topic, partition, offset) of a delivery (a queue on a topic pattern delivers
/// from many topics).
pub fn position(delivery: &QueueDelivery) -> (String, u32, u64) {
    delivery
        .message
        .as_ref()
        .map_or((String::new(), 0, 0), |m| {
            (m.topic.clone(), m.partition, m.offset)
        })
}

/// Acks of `offsets` (any order, duplicates ignored): one settlement per run of
/// consecutive offsets of a topic's partition (`through_offset` for runs longer than
/// one). A member only acks what it holds, so a run acks exactly the deliveries it
/// names.
pub fn ack_ranges(offsets: &mut [(String, u32, u64)]) -> Vec<Settlement> {
    offsets.sort_unstable();
    let mut settlements: Vec<Settlement> = Vec::new();
    let mut run: Option<(&str, u32, u64, u64)> = None;
    let flush = |run: (&str, u32, u64, u64), settlements: &mut Vec<Settlement>| {
        let (topic, partition, first, last) = run;
        settlements.push(Settlement {
            topic: topic.to_string(),
            partition,
            offset: first,
            through_offset: (last > first).then_some(last),
            attempt: 0,
            action: Some(Action::Ack(Ack {})),
        });
    };
    for (topic, partition, offset) in offsets.iter() {
        let (partition, offset) = (*partition, *offset);
        run = match run {
            Some((t, p, first, last)) if t == topic && p == partition && offset <= last + 1 => {
                Some((t, p, first, last.max(offset)))
            }
            Some(done) => {
                flush(done, &mut settlements);
                Some((topic, partition, offset, offset))
            }
            None => Some((topic, partition, offset, offset)),
        };
    }
    if let Some(done) = run {
        flush(done, &mut settlements);
    }
    settlements
}

/// An ack of one delivery, of its attempt.
pub fn ack(delivery: &QueueDelivery) -> Settlement {
    let (topic, partition, offset) = position(delivery);
    Settlement {
        topic,
        partition,
        offset,
        through_offset: None,
        attempt: delivery.attempt,
        action: Some(Action::Ack(Ack {})),
    }
}

/// A nack of one delivery: delivered again after `delay_ms` (None: the backoff).
pub fn nack(delivery: &QueueDelivery, delay_ms: Option<u64>, reason: String) -> Settlement {
    Settlement {
        action: Some(Action::Nack(Nack { delay_ms, reason })),
        ..ack(delivery)
    }
}

/// More time for one delivery: its deadline moves to now + the ack deadline.
pub fn in_progress(delivery: &QueueDelivery) -> Settlement {
    Settlement {
        action: Some(Action::InProgress(InProgress { extend_ms: None })),
        ..ack(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_offsets_become_ranges_per_partition() {
        let mut offsets: Vec<(String, u32, u64)> = [
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
        .map(|(t, p, o)| (t.to_string(), p, o))
        .collect();
        let ranges: Vec<(String, u32, u64, Option<u64>)> = ack_ranges(&mut offsets)
            .iter()
            .map(|s| (s.topic.clone(), s.partition, s.offset, s.through_offset))
            .collect();
        let a = |p, o, t| ("a".to_string(), p, o, t);
        assert_eq!(
            ranges,
            vec![
                a(0, 1, Some(3)),
                a(0, 9, None),
                a(1, 5, Some(7)),
                ("b".to_string(), 0, 4, None)
            ]
        );
        assert!(ack_ranges(&mut []).is_empty());
    }
}
