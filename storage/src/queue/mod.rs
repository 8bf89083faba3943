//! Work queues: a second way to consume a topic beside consumer groups. A queue is a
//! named, durable consumer of one topic (or of every topic a pattern matches: see
//! [`PatternQueue`]); its members share its messages, each message
//! going to one member at a time, which settles it (ack, nack, in progress, term). A
//! message not acked by its deadline, or nacked, is delivered again after a backoff,
//! until it has used `max_deliveries`; then it is appended to the queue's dead-letter
//! topic with the reason. Several queues on one topic each get every message.
//!
//! - [`state`]: the durable state ([`Queues`], a state-log machine) and its byte
//!   format: cursors per priority level and the pending (taken, unsettled) messages.
//! - [`engine`]: [`QueueEngine`], the synchronous delivery engine of one queue: what to
//!   deliver next (redeliveries that are due, then new messages, highest priority
//!   first, deliver-at times honoured), settlements, deadlines and backoff timers, dead
//!   letters. It decides with the store's clock and records every decision in the
//!   state log before it is acted on, so a crash resumes where the last durable
//!   decision left off. The server wraps one per queue in an async task.
//! - [`admin`]: create, alter, delete, purge, list, describe, redrive.
//! - [`history`]: each queue's delivery history on disk (attempts and outcomes, kept
//!   `history_retention`), read by message or listed newest first.
//! - [`inspect`]: a message's delivery status in a queue or group, its history, and a
//!   queue's deliveries listed with filters (read-only).

pub mod admin;
pub mod engine;
pub mod history;
pub mod inspect;
pub mod state;

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::TopicConfig;
use crate::error::Result;
use crate::offsets::OffsetStore;
use crate::statelog::StateLog;
use crate::topic::Topic;

pub use admin::{PatternSync, QueueStatus, StartAt};
pub use engine::{
    Damage, Delivery, HistoryWait, QueueEngine, SettleAction, SettleBatch, SettleOutcome,
    SettleRequest, Want,
};
pub use state::{
    Hold, PatternQueue, Pending, Queue, QueueConfig, QueueOp, QueuePartition, Queues, Taken,
    validate_dead_letter_topic, validate_new_queue_name, validate_queue_name,
};

/// What the queues need of the store that holds them: their state log and delivery
/// histories, the topics they read and dead-letter to, the groups' offsets (a redrive
/// reads the dead-letter topic as a group) and the clock. [`crate::store::Store`] is
/// the implementation; the queue code reaches the store only through this trait, so
/// the store (which opens the queues' state) and the queues do not import each other.
pub trait QueueHost: Send + Sync + std::fmt::Debug {
    /// The queues' state log.
    fn queues(&self) -> &StateLog<Queues>;
    /// Queue `name`'s delivery history, opened on first use (for reading).
    fn queue_history(&self, name: &str) -> Result<Arc<history::QueueHistory>>;
    /// Queue `name`'s delivery history to record its decisions in; None when the queue
    /// created at `created_ms` does not exist (see `Store::live_queue_history`).
    fn live_queue_history(
        &self,
        name: &str,
        created_ms: i64,
    ) -> Result<Option<Arc<history::QueueHistory>>>;
    /// Appends operations that create or delete queues to the queue state; a deleted
    /// queue's history goes with it (see `Store::change_queues`). Every creation and
    /// deletion of a queue goes through this, never through `queues().append`.
    fn change_queues(&self, ops: Vec<QueueOp>) -> Result<Vec<u64>>;
    /// Topic `name`, or `NotFound`.
    fn topic(&self, name: &str) -> Result<Arc<Topic>>;
    /// Every topic (queues on a topic pattern take the ones they match).
    fn topics(&self) -> Vec<Arc<Topic>>;
    /// Creates topic `name` (a dead-letter topic created when first needed).
    fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<Arc<Topic>>;
    /// The consumer groups' committed offsets.
    fn offsets(&self) -> &OffsetStore;
    /// Commits for `group`, each on the topic it was read from, or NotFound if one of
    /// them was deleted meanwhile ([`crate::Store::commit_offsets`]).
    fn commit_offsets(&self, group: &str, commits: &[(Arc<Topic>, u32, u64, String)])
    -> Result<()>;
    /// The store's clock: every queue decision is timed by it.
    fn clock(&self) -> &Arc<dyn Clock>;
    /// Held by each redrive ([`admin::redrive_queue`]) from reading its position to
    /// committing it, so two at once cannot both publish the same dead letters.
    fn redrives(&self) -> &std::sync::Mutex<()>;
    /// Held by every change of queue definitions in [`admin`] (create, alter, delete,
    /// a pattern queue's sync) from reading what it changes to appending the change,
    /// and by a raise of a topic's priority levels from its check to its new config:
    /// a change never builds on what another has just replaced (a pattern queue's new
    /// topic taking the config an AlterQueue replaced, a queue taking the levels a
    /// raise replaced).
    fn queue_changes(&self) -> &std::sync::Mutex<()>;
}
