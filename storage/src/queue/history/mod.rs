//! A queue's delivery history: every attempt to deliver one of its messages (when, to
//! which member) and how the attempt ended (acked, nacked with a reason, deadline
//! passed, member left, terminated, dead-lettered), kept on disk for the queue's
//! `history_retention` and read back by message or as a listing, newest first.
//!
//! # Why its own files, on the state log's framing
//!
//! The queue state ([`super::state`]) holds what is in flight and nothing else, and its
//! state log is compacted into a snapshot of that. History is the opposite: it is
//! about what is *no longer* in flight (acked messages stay queryable for days), so
//! keeping it in a state machine would put days of deliveries in RAM, and in every
//! snapshot. Instead each queue has a directory of append-only **history files**,
//! `DATA/state/history/<queue>/<20-digit start ms>.history`:
//!
//! - each file is a state log ([`crate::statelog::StateLog`], reused as it is, not
//!   copied): CRC-framed records of [`HistoryEvent`] operations, one record and one
//!   fdatasync per append, torn-tail truncation at open, poisoning on a failed fsync,
//!   the FileSystem seam. Its in-memory machine is a two-number summary, and it is
//!   never compacted (its machine's `snapshot` refuses);
//! - a file is rolled at [`files::HISTORY_FILE_BYTES_ROLL`] (16 MiB) or after
//!   [`files::HISTORY_FILE_SPAN_MS`] (1 hour); files whose every event is older than
//!   the queue's `history_retention` are deleted whole, like segments under
//!   retention: by the store's retention passes (at open and every retention
//!   interval, every queue's, idle or not, without waking its engine) and at most
//!   once a minute by the append path, both through [`QueueHistory::prune`];
//! - readers scan files through the state log's own scanner (one 1 MiB chunk in
//!   memory at a time), the file being appended to only up to what is durable.
//!
//! So RAM holds one summary per queue in use, and history costs disk in proportion to
//! the deliveries of the retention period, never to the backlog (a message never
//! delivered has no history). A lookup for one message reads the files recorded from
//! the message's timestamp (less 5 minutes of slack for producer clocks) until the
//! event that settled it (nothing follows it); a listing page reads newest files first
//! and stops at its limit or at a budget.
//!
//! # When an event is recorded (the crash rule)
//!
//! The queue engine records a decision in the queue state log first (that is the
//! truth: deliveries, acks and dead letters are never lost or repeated by history),
//! then appends the matching events here durably, and only then answers the member.
//! The broker pipelines the two: a call's events are submitted once its decision is
//! durable ([`QueueHistory::submit`]), and the engine is let go while their fsync
//! runs, so the next decision's queue-state fsync overlaps it; the answer still waits
//! for both ([`QueueHistory::wait`]). Events are written in submission order (one
//! file's appends are queued in order, and a roll writes what was submitted to the
//! old file first), so the history never holds a decision the queue state has not.
//! A crash between the two leaves the queue state right and the history without the
//! last events: **the last attempt's outcome may be missing after a crash**, exactly
//! as an ack whose answer never arrived. Status ([`super::inspect`]) therefore reads
//! pending state from the queue state, and only settled messages' outcome (acked or
//! dead-lettered) from history. A failed fsync of a history file poisons this history
//! (every later append fails, never retried) until the broker restarts; ENOSPC fails
//! the one append and cuts the file back. Neither fails the engine's call: its
//! decision is durable already, so members get what it decided and the history lacks
//! those events, as after a crash ([`QueueHistory::failed`] counts and logs them).
//!
//! # Bounds
//!
//! `history_attempts` (default 10) bounds what a message's history reports: its
//! newest attempts. `history_retention` (default 7 days, 0 = record nothing) bounds
//! what is kept: events older are never reported and their files are deleted. A
//! listing page holds at most [`query::LIST_LIMIT_MAX`] events and reads at most
//! [`query::LIST_SCAN_BYTES_MAX`] bytes of history.
//!
//! - [`event`]: [`HistoryEvent`], [`Outcome`] and their bytes.
//! - [`files`]: [`QueueHistory`], one queue's directory: append, roll, prune, scan.
//! - [`cursor`]: the listing cursor's text (a fuzz entry point).
//! - [`query`]: a message's attempts, a page of events newest first.

pub mod cursor;
pub mod event;
pub mod files;
pub mod query;

pub use cursor::{CursorError, ListCursor, queue_tag};
pub use event::{HistoryEvent, Outcome};
pub use files::{HistorySubmitted, QueueHistory};
pub use query::{AttemptRecord, EventPage, ListRequest, list_events, message_attempts};

#[cfg(test)]
mod tests;
