//! The queues' durable state: for every queue, which messages of its topic it has
//! settled, which it holds for members (with a deadline and an attempt count), and
//! which wait for a redelivery or for their deliver-at time. One [`StateMachine`](crate::statelog::StateMachine) on
//! the state log for every queue of the broker (`DATA/state/queues/queues.statelog`).
//! The delivery engine (the server) decides what happens; this module records it, so
//! a restart resumes exactly where the last durable decision left off.
//!
//! # Model
//!
//! Per queue and partition:
//! - one **cursor per priority level**: every message of that level below the cursor
//!   has been *taken* by the queue (and is pending, or settled);
//! - **pending** messages: taken and not yet settled, each `Leased` (to a member, until
//!   a deadline), `Waiting` (for a redelivery, until a due time) or `Delayed` (not yet
//!   delivered, until its deliver-at time), with its attempt count, its first and last
//!   delivery time and the last reason a member gave;
//! - every other message below the cursor of its own level is **settled**: acked,
//!   dead-lettered, purged, or skipped as expired.
//!
//! So the state costs what is in flight (pending messages), never the backlog: a queue
//! with a million ready messages and nothing delivered holds a few cursors. A message's
//! level is its priority, capped at the queue's top level; a queue's levels are fixed
//! when it is created (the topic's `priority_levels` then). The highest levels' cursors
//! run ahead through the log (skipping other levels' messages), which is how a new
//! priority-9 message is found behind a million priority-0 ones.
//!
//!
//! # Files
//!
//! - `config.rs`: [`QueueConfig`] (how a queue delivers), its bounds, the name rule.
//! - `pending.rs`: a partition's pending messages ([`Pending`], [`Hold`]) and
//!   [`PendingMap`], which keeps delayed messages never delivered in a compact form
//!   (the memory bound of 1,000,000 delayed messages).
//! - `model.rs`: the state's types ([`Queue`], [`QueuePartition`]) and the operations
//!   ([`QueueOp`]).
//! - `codec.rs`: the operations' bytes (the table is there).
//! - `machine.rs`: [`Queues`], the [`StateMachine`](crate::statelog::StateMachine) that
//!   applies them and writes its snapshot.
//!
//! Each imports only the files above it in this list (never this one), so no file
//! imports one that imports it back.

mod codec;
mod config;
mod machine;
mod model;
mod pending;
#[cfg(test)]
mod strategies;

pub use config::{
    ACK_DEADLINE_MS_MIN, HISTORY_ATTEMPTS_DEFAULT, HISTORY_ATTEMPTS_MAX,
    HISTORY_RETENTION_MS_DEFAULT, HISTORY_RETENTION_MS_MAX, MAX_UNACKED_PER_MEMBER_MAX,
    MEMBER_BYTES_MAX, PATTERN_CHILD_PREFIX, PATTERN_QUEUE_NAME_BYTES_MAX, QUEUE_DELAY_MS_MAX,
    QueueConfig, REASON_BYTES_MAX, StartAt, pattern_child_name, pattern_child_parent,
    truncate_utf8, validate_dead_letter_topic, validate_new_queue_name, validate_queue_name,
};
pub use machine::Queues;
pub use model::{PatternQueue, Queue, QueueOp, QueuePartition, TakeCounts, Taken};
pub use pending::{Hold, Pending, PendingMap};
