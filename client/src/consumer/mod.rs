//! Consumers: [`Subscription`] (a plain subscription in batch form), [`GroupMember`]
//! (a consumer-group member) and, in [`crate::queue`], the queue worker.

mod decode;
mod fetch;
mod group;
mod start;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use tidelog_proto::v1::start_position::{Earliest, Latest, Position};
use tidelog_proto::v1::subscribe_request::PartitionStart;
use tidelog_proto::v1::{
    StartPosition, SubscribeBatchesResponse, SubscribeRequest, subscribe_batches_response,
};

pub use fetch::{FetchOptions, Fetched};
pub use group::{Commit, GroupMember, GroupOptions};
pub use start::{Reset, StartAt};

use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result, retryable_status};
use crate::record::Message;
use decode::decode_into;

/// How a [`Subscription`] reads.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Partitions to read; empty = all.
    pub partitions: Vec<u32>,
    pub start: StartAt,
    pub reset: Reset,
    /// A server-side filter (the proto's "Filters" grammar); empty = none.
    pub filter: String,
    /// Records per delivered set of batches; 0 = the broker's default.
    pub max_batch_messages: u32,
    /// Bytes of batches per delivery; 0 = the broker's default.
    pub max_batch_bytes: u32,
}

/// A subscription to one topic without a group, in batch form (`SubscribeBatches`):
/// the broker sends stored record batches as they lie in its segments and the client
/// decodes them (`tidelog_storage::client_batch::delivered_records`, dropping the
/// records the broker marks: the front ones before the requested offset, the ones the
/// filter refused, the expired ones).
///
/// Survives broker restarts: when the stream breaks it reconnects with backoff and
/// resumes every partition at the position after the last batch it received (the
/// broker's `next_offset`), so nothing is skipped and nothing is delivered twice.
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use tidelog_client::{Client, StartAt, SubscribeOptions, Subscription};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let options = SubscribeOptions { start: StartAt::Earliest, ..SubscribeOptions::default() };
/// let mut subscription = Subscription::open(&client, "orders", options).await?;
/// loop {
///     let message = subscription.next().await?;
///     println!("{} {}: {:?}", message.partition, message.offset, message.value);
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    topic: Arc<str>,
    options: SubscribeOptions,
    /// Per partition, where the next read starts (after the last batch received).
    positions: BTreeMap<u32, u64>,
    stream: Option<tonic::Streaming<SubscribeBatchesResponse>>,
    buffer: VecDeque<Message>,
    backoff: Backoff,
}

impl Subscription {
    /// Subscribes; returns once every partition's start is fixed (a message published
    /// after this returns is delivered even with [`StartAt::Latest`]).
    pub async fn open(
        client: &Client,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let mut subscription = Subscription {
            client: client.clone(),
            topic: Arc::from(topic),
            options,
            positions: BTreeMap::new(),
            stream: None,
            buffer: VecDeque::new(),
            backoff: Backoff::default(),
        };
        subscription.connect().await?;
        // The first event is Positioned: it fixes every partition's start.
        while subscription.positions.is_empty() {
            let Some(stream) = subscription.stream.as_mut() else {
                return Err(Error::Closed);
            };
            match stream.message().await {
                Ok(Some(event)) => subscription.event(event)?,
                Ok(None) => return Err(Error::Closed),
                Err(status) => {
                    return Err(Error::from_status("SubscribeBatches", Some(topic), &status));
                }
            }
        }
        Ok(subscription)
    }

    /// The next message, waiting for one to arrive. Reconnects when the broker goes
    /// away; fails only for what a retry cannot fix (the topic was deleted, a bad
    /// filter, a damaged batch). Cancel-safe: a `next` dropped before it returns loses
    /// no message.
    pub async fn next(&mut self) -> Result<Message> {
        loop {
            if let Some(message) = self.buffer.pop_front() {
                return Ok(message);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.backoff.wait().await;
                match self.connect().await {
                    Ok(()) => {}
                    Err(error) if error.is_retryable() => {}
                    Err(error) => return Err(error),
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(event)) => {
                    self.backoff.reset();
                    self.event(event)?;
                }
                Ok(None) => self.stream = None,
                Err(status) if retryable_status(&status) => {
                    tracing::debug!(%status, topic = &*self.topic, "subscription broke; reconnecting");
                    self.stream = None;
                }
                Err(status) => {
                    return Err(Error::from_status(
                        "SubscribeBatches",
                        Some(&self.topic),
                        &status,
                    ));
                }
            }
        }
    }

    /// Per partition, the offset the next read starts at: one past what has been
    /// received (buffered messages included). Save it to resume elsewhere.
    pub fn positions(&self) -> &BTreeMap<u32, u64> {
        &self.positions
    }

    async fn connect(&mut self) -> Result<()> {
        let mut request = SubscribeRequest {
            topic: self.topic.to_string(),
            reset_policy: self.options.reset.policy() as i32,
            max_batch_messages: self.options.max_batch_messages,
            max_batch_bytes: self.options.max_batch_bytes,
            filter: self.options.filter.clone(),
            ..SubscribeRequest::default()
        };
        if self.positions.is_empty() {
            request.partitions = self.options.partitions.clone();
            request.start = Some(start_position(self.options.start));
            request.send_positioned = true;
        } else {
            request.partition_starts = self
                .positions
                .iter()
                .map(|(&partition, &offset)| PartitionStart {
                    partition,
                    offset,
                    // One topic per subscription: the request's `topic` names it.
                    topic: String::new(),
                })
                .collect();
        }
        match self.client.consumer().subscribe_batches(request).await {
            Ok(response) => {
                self.stream = Some(response.into_inner());
                Ok(())
            }
            Err(status) => Err(Error::from_status(
                "SubscribeBatches",
                Some(&self.topic),
                &status,
            )),
        }
    }

    fn event(&mut self, event: SubscribeBatchesResponse) -> Result<()> {
        match event.event {
            Some(subscribe_batches_response::Event::Batches(batches)) => {
                let partition = batches.partition;
                for batch in &batches.batches {
                    decode_into(
                        &self.topic,
                        partition,
                        batch,
                        batches.now_ms,
                        &mut self.buffer,
                    )?;
                }
                if let Some(position) = batches.position {
                    self.positions
                        .insert(position.partition, position.next_offset);
                }
            }
            Some(subscribe_batches_response::Event::PositionReset(reset)) => {
                tracing::info!(
                    topic = &*self.topic,
                    partition = reset.partition,
                    to = reset.to_offset,
                    "position reset"
                );
                self.positions.insert(reset.partition, reset.to_offset);
            }
            Some(subscribe_batches_response::Event::Positioned(positioned)) => {
                for position in positioned.positions {
                    self.positions
                        .insert(position.partition, position.next_offset);
                }
            }
            // Group streams only; a Subscription has no group.
            Some(subscribe_batches_response::Event::Assignment(_)) | None => {}
        }
        Ok(())
    }
}

fn start_position(start: StartAt) -> StartPosition {
    StartPosition {
        position: Some(match start {
            StartAt::Earliest => Position::Earliest(Earliest {}),
            StartAt::Latest => Position::Latest(Latest {}),
            StartAt::Offset(offset) => Position::Offset(offset),
            StartAt::Timestamp(ms) => Position::TimestampMs(ms),
        }),
    }
}
