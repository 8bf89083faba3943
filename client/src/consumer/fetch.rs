//! [`Client::fetch`]: one read of one partition from an offset, in batch form
//! (`FetchBatches`), decoded client-side. The building block of a consumer that keeps
//! its own positions (a tool reading a range, a service storing offsets with its data):
//! read from `offset`, handle the messages, read again from
//! [`Fetched::next_offset`].

use std::sync::Arc;
use std::time::Duration;

use tidelog_proto::v1::FetchRequest;

use super::decode::{decode_into, room_for};
use crate::connection::Client;
use crate::error::{Error, Result};
use crate::record::Message;

/// How much one [`Client::fetch`] returns and how long it waits.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Most messages; 0 = the broker's default (500). The broker caps it (10,000).
    pub max_messages: u32,
    /// Soft limit on the bytes of the messages (their id, key, value and headers):
    /// at least one message comes back if one is there, however large. 0 = the
    /// broker's default (1 MiB); the broker caps it (8 MiB).
    pub max_bytes: u32,
    /// How long to wait for a message when none is there yet; zero = answer at once.
    pub max_wait: Duration,
    /// A server-side filter (the proto's "Filters" grammar); empty = none. A read may
    /// skip many messages and return none: follow [`Fetched::next_offset`].
    pub filter: String,
    /// The id of the topic `offset` was read in ([`Fetched::topic_id`] of the read
    /// before, or the proto's `TopicDescription.topic_id`); 0 = not checked. When the
    /// topic was deleted and created again since, the fetch fails with
    /// [`Error::Broker`] `FAILED_PRECONDITION` instead of reading the new topic from a
    /// position in the old one: start again from its log start.
    pub topic_id: u64,
}

/// What one [`Client::fetch`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The messages, in offset order; may be empty (nothing there yet, or a filter
    /// skipped what the read looked at).
    pub messages: Vec<Message>,
    /// Where the next read starts: past the messages returned and past what was
    /// skipped (expired, filtered out), never past a message not returned.
    pub next_offset: u64,
    /// The partition's oldest retained offset.
    pub log_start_offset: u64,
    /// The partition's end (the offset the next message will get).
    pub end_offset: u64,
    /// The id of the topic read (0 from a broker without topic ids): pass it in
    /// [`FetchOptions::topic_id`] with the next read's offset.
    pub topic_id: u64,
}

impl Client {
    /// Reads messages of `partition` of `topic` from `offset` (`FetchBatches`: whole
    /// stored batches, decoded here, dropping what the broker marks and what expired).
    /// An offset outside `[log_start_offset, end_offset]` fails with
    /// [`Error::InvalidArgument`] naming the range; a damaged batch at `offset` with
    /// [`Error::Broker`] `DATA_LOSS` (the broker never serves one).
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), tidelog_client::Error> {
    /// use tidelog_client::{Client, FetchOptions};
    /// let client = Client::connect("http://127.0.0.1:7420").await?;
    /// let mut offset = 0;
    /// let mut options = FetchOptions::default();
    /// loop {
    ///     let fetched = client.fetch("orders", 0, offset, &options).await?;
    ///     for message in &fetched.messages {
    ///         println!("{} {:?}", message.offset, message.value);
    ///     }
    ///     if fetched.next_offset == fetched.end_offset {
    ///         break; // read to the end
    ///     }
    ///     offset = fetched.next_offset;
    ///     // The offset belongs to this topic: a topic of the name created after it
    ///     // was deleted is refused rather than read from it.
    ///     options.topic_id = fetched.topic_id;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: &FetchOptions,
    ) -> Result<Fetched> {
        let request = FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_messages: options.max_messages,
            max_bytes: options.max_bytes,
            max_wait_ms: u64::try_from(options.max_wait.as_millis()).unwrap_or(u64::MAX),
            filter: options.filter.clone(),
            topic_id: options.topic_id,
        };
        let response = crate::wire::fetch_batches(self.conn(), request)
            .await
            .map_err(|status| Error::from_status("FetchBatches", Some(topic), &status))?;
        let name: Arc<str> = Arc::from(topic);
        let mut messages = room_for(&response.batches, options.max_messages);
        for batch in &response.batches {
            decode_into(&name, partition, batch, response.now_ms, &mut messages)?;
        }
        Ok(Fetched {
            messages,
            next_offset: response.next_offset,
            log_start_offset: response.log_start_offset,
            end_offset: response.end_offset,
            topic_id: response.topic_id,
        })
    }
}
