//! A delivery read in place: [`Views`] keeps the stored batches a consumer received
//! (their CRC checked) and lends each message to deliver as a
//! [`MessageView`], borrowed bytes and no allocation. [`crate::Messages`] makes a
//! [`crate::Message`] of each record instead: two shared-buffer reference counts (the
//! topic and the value) taken and later dropped, and about 200 bytes moved, a message.
//! A consumer that only reads the bytes (to forward, parse or count them) does without.

use std::sync::Arc;

use bytes::Bytes;
use tidelog_proto::v1::StoredRecordBatch;
use tidelog_storage::batch::{BatchHeader, FormatError, RawHeaders, RecordIter, RecordView};
use tidelog_storage::client_batch::{for_each_delivered_view, open_returned};

use crate::error::{Error, Result};
use crate::record::Message;
use tidelog_storage::Header;

/// The messages of one delivery from one partition, in offset order, read in place:
/// what [`crate::Event::Views`] carries when [`crate::SubscribeOptions::views`] is set
/// (and [`crate::GroupEvent::Views`] when [`crate::GroupOptions::views`] is).
///
/// Each batch's length, header and CRC were checked when it arrived (a zstd batch was
/// decompressed then, once); its records are checked as they are read, so a batch whose
/// CRC holds but whose records do not parse (which only a broker bug can send: it
/// validated them when they were published) fails [`Views::for_each`] with
/// [`crate::Error::Corrupt`] after the messages before the damage. A correct broker
/// sends no delivery without a message to deliver.
///
/// ```
/// # fn handle(views: &tidelog_client::Views) -> tidelog_client::Result<()> {
/// let mut bytes = 0;
/// views.for_each(|message| bytes += message.value.len())?;
/// println!("{bytes} bytes from {}/{}", views.topic(), views.partition());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Views {
    topic: Arc<str>,
    partition: u32,
    /// The broker's clock when it read the batches: records expired by then are not
    /// delivered.
    now_ms: i64,
    batches: Vec<Checked>,
}

/// One batch whose length, header and CRC were checked: its header, its records
/// section (decompressed) and what the broker marked to skip.
#[derive(Debug, Clone, PartialEq)]
struct Checked {
    header: BatchHeader,
    section: Bytes,
    skip_front: u32,
    skip: Vec<u32>,
}

impl Views {
    /// Opens a delivery's `batches` in order: the views of those before the first
    /// damaged one (`None` when there are none), and the damage, the same
    /// [`crate::Error::Corrupt`] decoding them into messages reports. Takes the batches
    /// whole: what the broker marked to skip moves into the views, no copy.
    pub(crate) fn open(
        topic: &Arc<str>,
        partition: u32,
        batches: Vec<StoredRecordBatch>,
        now_ms: i64,
    ) -> (Option<Views>, Result<()>) {
        let mut views = Views {
            topic: topic.clone(),
            partition,
            now_ms,
            batches: Vec::with_capacity(batches.len()),
        };
        let mut opened = Ok(());
        for batch in batches {
            match open_returned(&batch.batch) {
                Ok((header, records)) => views.batches.push(Checked {
                    header,
                    section: records.section().clone(),
                    skip_front: batch.skip_front,
                    skip: batch.skip,
                }),
                Err(error) => {
                    opened = Err(Error::damaged_batch(
                        topic,
                        partition,
                        batch.base_offset,
                        error,
                    ));
                    break;
                }
            }
        }
        ((!views.batches.is_empty()).then_some(views), opened)
    }

    pub fn topic(&self) -> &Arc<str> {
        &self.topic
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// One past the last record of the last batch: where a read after this delivery
    /// starts (past records at its end that are not delivered, if any).
    pub fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(0, |batch| batch.header.next_offset())
    }

    /// Calls `read` with each message to deliver, in offset order. A record that does
    /// not parse ends the walk with [`crate::Error::Corrupt`] (see [`Views`]).
    pub fn for_each(&self, mut read: impl FnMut(MessageView<'_>)) -> Result<()> {
        self.walk(|records, view| {
            records.check_headers(view)?;
            read(MessageView::new(records, view));
            Ok(())
        })
    }

    /// Appends the messages to deliver to `out` as owned [`Message`]s (what
    /// [`crate::Event::Messages`] would have held); on damage, those before it stay
    /// appended.
    pub fn append_to(&self, out: &mut Vec<Message>) -> Result<()> {
        self.walk(|records, view| {
            let record = records.record(view)?;
            out.push(Message::from_record(&self.topic, self.partition, record));
            Ok(())
        })
    }

    /// The one walk over the delivered records.
    fn walk(
        &self,
        mut deliver: impl FnMut(&RecordIter, &RecordView) -> std::result::Result<(), FormatError>,
    ) -> Result<()> {
        for batch in &self.batches {
            let mut records = RecordIter::over_section(batch.section.clone(), &batch.header);
            for_each_delivered_view(
                &mut records,
                batch.header.base_offset,
                batch.skip_front,
                &batch.skip,
                self.now_ms,
                &mut deliver,
            )
            .map_err(|error| {
                Error::damaged_batch(&self.topic, self.partition, batch.header.base_offset, error)
            })?;
        }
        Ok(())
    }
}

/// One message of a [`Views`], its bytes borrowed from the delivery's buffer.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    pub offset: u64,
    /// The producer's timestamp, or the append time (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// When it expires; `None` = never.
    pub expires_at_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub id: Option<&'a [u8]>,
    /// Queues do not deliver it before this time.
    pub deliver_at_ms: Option<i64>,
    pub priority: u8,
    headers: RawHeaders<'a>,
    /// The records section the borrowed bytes lie in, for [`MessageView::to_message`].
    section: &'a Bytes,
}

impl<'a> MessageView<'a> {
    fn new(records: &'a RecordIter, view: &'a RecordView) -> MessageView<'a> {
        let raw = records.raw(view);
        MessageView {
            offset: view.offset,
            timestamp_ms: view.timestamp_ms,
            expires_at_ms: view.expires_at_ms,
            key: raw.key,
            value: raw.value,
            id: records.id(view),
            deliver_at_ms: view.deliver_at_ms,
            priority: view.priority,
            headers: raw.headers(),
            section: records.section(),
        }
    }

    /// The message as an owned [`Message`] of `topic` and `partition` (the
    /// [`Views`]'): its key, value, header values and id share the delivery's buffer
    /// (a reference count, no copy), as [`Views::append_to`] makes them.
    pub fn to_message(&self, topic: &Arc<str>, partition: u32) -> Message {
        Message {
            topic: topic.clone(),
            partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            expires_at_ms: self.expires_at_ms,
            key: self.key.map(|key| self.share(key)),
            value: self.share(self.value),
            headers: self
                .headers
                .map(|(key, value)| Header {
                    key: key.to_owned(),
                    value: self.share(value),
                })
                .collect(),
            id: self.id.map(|id| self.share(id)),
            deliver_at_ms: self.deliver_at_ms,
            priority: self.priority,
        }
    }

    /// `bytes` as a slice of the records section when they lie in it; copied when they
    /// do not (an id that follows the one before is not stored).
    fn share(&self, bytes: &[u8]) -> Bytes {
        let section = self.section.as_ptr_range();
        let range = bytes.as_ptr_range();
        if !bytes.is_empty() && section.start <= range.start && range.end <= section.end {
            self.section.slice_ref(bytes)
        } else {
            Bytes::copy_from_slice(bytes)
        }
    }

    /// The headers in the order they were sent, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + use<'a> {
        self.headers
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.value_of(name)
    }
}
