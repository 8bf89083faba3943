//! Reading a queue's history: the attempts of one message ([`message_attempts`]) and a
//! page of events newest first ([`list_events`]). Both read files one at a time and
//! hold a bounded number of events, whatever the history's size.

use std::collections::{BTreeMap, VecDeque};

use crate::error::Result;

use super::cursor::ListCursor;
use super::event::{HistoryEvent, Outcome};
use super::files::{HistoryFile, QueueHistory};

/// Events of one file a listing holds at once (newest before a point), at least the
/// largest page.
pub const LIST_RING_EVENTS: usize = 1024;
/// History bytes one listing page reads at most before it returns what it has, with a
/// cursor to go on from.
pub const LIST_SCAN_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Candidates one listing page checks with the costly filter (a read of the message)
/// at most before it returns what it has, with a cursor.
pub const LIST_CHECKS_MAX: u32 = 10_000;
/// Largest listing page.
pub const LIST_LIMIT_MAX: u32 = 1000;
/// Listing page when the caller does not say.
pub const LIST_LIMIT_DEFAULT: u32 = 100;

const _: () = assert!(LIST_LIMIT_MAX as usize <= LIST_RING_EVENTS);

/// One delivery attempt of a message, as its history tells it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptRecord {
    /// 1 for the first delivery; 0 for a dead letter of a message never delivered.
    pub attempt: u32,
    /// Who held it.
    pub member: String,
    /// When it was delivered; `None` when the history lacks the delivery (past the
    /// age limit, or an overflow dead letter).
    pub delivered_ms: Option<i64>,
    /// The lease's last deadline (moved by extensions).
    pub deadline_ms: Option<i64>,
    /// In-progress extensions.
    pub extensions: u32,
    /// How the attempt ended (acked, nacked, deadline passed, member left, terminated)
    /// with its time and reason; `None` while it is in progress, or when a crash took
    /// the record of its end (as it may take an ack's answer).
    pub outcome: Option<(Outcome, i64, String)>,
    /// Dead-lettered after this attempt: when and why.
    pub dead_lettered: Option<(i64, String)>,
}

impl AttemptRecord {
    fn fold(&mut self, event: HistoryEvent) {
        if self.member.is_empty() {
            self.member = event.member.to_string();
        }
        match event.outcome {
            Outcome::Delivered => {
                if matches!(self.outcome, Some((Outcome::Released, ..))) {
                    // The attempt given back unseen is replaced by the delivery that
                    // took its number.
                    *self = AttemptRecord {
                        attempt: self.attempt,
                        member: event.member.to_string(),
                        ..AttemptRecord::default()
                    };
                }
                self.delivered_ms = Some(event.at_ms);
                self.deadline_ms = Some(event.deadline_ms);
            }
            Outcome::Extended => {
                self.extensions = self.extensions.saturating_add(1);
                self.deadline_ms = Some(event.deadline_ms);
            }
            Outcome::DeadLettered => self.dead_lettered = Some((event.at_ms, event.reason)),
            other => {
                if self.outcome.is_none() {
                    self.outcome = Some((other, event.at_ms, event.reason));
                }
            }
        }
    }
}

/// Whether `file` (followed by `next`) may hold events at or after `since_ms`.
fn may_reach(next: Option<&HistoryFile>, since_ms: i64) -> bool {
    next.is_none_or(|next| next.start_ms > since_ms)
}

/// The newest `keep` attempts of message (`partition`, `offset`), oldest first, from
/// the events recorded at or after `since_ms` (files that end before it are not read).
/// A message has no events after the one that settled it (acked or dead-lettered), so
/// the files after the one holding that event are not read either. Memory: `keep`
/// attempts; time: the history recorded from `since_ms` to the message's settlement
/// (or to now while it is unsettled).
pub fn message_attempts(
    history: &QueueHistory,
    partition: u32,
    offset: u64,
    since_ms: i64,
    keep: u32,
) -> Result<Vec<AttemptRecord>> {
    let files = history.files()?;
    let keep = (keep.max(1)) as usize;
    let mut attempts: BTreeMap<u32, AttemptRecord> = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        if !may_reach(files.get(i + 1), since_ms) {
            continue;
        }
        history.scan(file, |_, _, event| {
            if event.partition != partition || event.offset != offset || event.at_ms < since_ms {
                return;
            }
            let attempt = event.attempt;
            if attempts.len() == keep
                && !attempts.contains_key(&attempt)
                && attempts.keys().next().is_some_and(|&first| attempt < first)
            {
                return;
            }
            attempts
                .entry(attempt)
                .or_insert_with(|| AttemptRecord {
                    attempt,
                    ..AttemptRecord::default()
                })
                .fold(event);
            while attempts.len() > keep {
                attempts.pop_first();
            }
        })?;
    }
    Ok(attempts.into_values().collect())
}

/// What a listing page asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    /// Events at or after this time only (and never before the age limit).
    pub since_ms: i64,
    /// Events at or before this time only.
    pub until_ms: i64,
    /// Events at most (1 to [`LIST_LIMIT_MAX`]).
    pub limit: u32,
    /// Where the previous page stopped.
    pub cursor: Option<ListCursor>,
    /// The queue's cursor tag ([`super::queue_tag`]).
    pub queue_tag: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// Newest first (in the order they were recorded).
    pub events: Vec<HistoryEvent>,
    /// Where the next page begins; `None` when the history has nothing older.
    pub next: Option<ListCursor>,
}

/// A page of events newest first: those that pass `cheap` (run on every event read,
/// no I/O) and then `costly` (run newest first on candidates, at most
/// [`LIST_CHECKS_MAX`] per page; it may read the message). A page may hold fewer than
/// `limit` events when a budget ran out (its cursor goes on from there), and the last
/// page has no cursor.
pub fn list_events(
    history: &QueueHistory,
    request: &ListRequest,
    cheap: impl Fn(&HistoryEvent) -> bool,
    mut costly: impl FnMut(&HistoryEvent) -> Result<bool>,
) -> Result<EventPage> {
    let limit = request.limit.clamp(1, LIST_LIMIT_MAX) as usize;
    let files = history.files()?;
    let mut events = Vec::new();
    let mut scanned_bytes = 0u64;
    let mut checks = 0u32;
    let cursor_at = |file: &HistoryFile, position: u64, index: u32| ListCursor {
        queue_tag: request.queue_tag,
        file_start_ms: file.start_ms,
        position,
        index,
    };
    for (i, file) in files.iter().enumerate().rev() {
        if let Some(cursor) = &request.cursor
            && file.start_ms > cursor.file_start_ms
        {
            continue;
        }
        if file.start_ms > request.until_ms {
            continue;
        }
        if !may_reach(files.get(i + 1), request.since_ms) {
            break;
        }
        if scanned_bytes >= LIST_SCAN_BYTES_MAX {
            // Go on with this file next time.
            return Ok(EventPage {
                events,
                next: Some(cursor_at(file, u64::MAX, u32::MAX)),
            });
        }
        // Events strictly before (position, index) in this file are still to list.
        let mut upper = match &request.cursor {
            Some(cursor) if cursor.file_start_ms == file.start_ms => {
                (cursor.position, cursor.index)
            }
            _ => (u64::MAX, u32::MAX),
        };
        loop {
            let mut ring: VecDeque<(u64, u32, HistoryEvent)> = VecDeque::new();
            let mut overflowed = false;
            let mut file_bytes = 0u64;
            history.scan(file, |position, index, event| {
                file_bytes = file_bytes.max(position);
                if (position, index) >= upper
                    || event.at_ms < request.since_ms
                    || event.at_ms > request.until_ms
                    || !cheap(&event)
                {
                    return;
                }
                if ring.len() == LIST_RING_EVENTS {
                    ring.pop_front();
                    overflowed = true;
                }
                ring.push_back((position, index, event));
            })?;
            scanned_bytes = scanned_bytes.saturating_add(file_bytes.max(1));
            while let Some((position, index, event)) = ring.pop_back() {
                upper = (position, index);
                if checks >= LIST_CHECKS_MAX {
                    return Ok(EventPage {
                        events,
                        // This one was not checked: it comes first next time.
                        next: Some(cursor_at(file, position, index.saturating_add(1))),
                    });
                }
                checks += 1;
                if costly(&event)? {
                    events.push(event);
                    if events.len() == limit {
                        return Ok(EventPage {
                            events,
                            next: Some(cursor_at(file, position, index)),
                        });
                    }
                }
            }
            if !overflowed || scanned_bytes >= LIST_SCAN_BYTES_MAX {
                if overflowed {
                    return Ok(EventPage {
                        events,
                        next: Some(cursor_at(file, upper.0, upper.1)),
                    });
                }
                break;
            }
        }
    }
    Ok(EventPage { events, next: None })
}
