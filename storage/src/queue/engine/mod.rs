//! [`QueueEngine`]: the delivery engine of one queue, synchronous (no runtime) and
//! driven by its owner: the server calls [`QueueEngine::deliver`] when members have
//! credit, [`QueueEngine::settle`] for their answers, [`QueueEngine::tick`] when
//! [`QueueEngine::next_wakeup`] comes, and tells it when members join and leave.
//!
//! Every decision is appended to the store's queue state log before it takes effect
//! (a delivery is durable before it is handed out, a settlement before it is
//! answered), so a crash never loses an ack and never forgets an attempt. What lives
//! only in memory can be rebuilt from the durable state: the timers, the set of
//! redeliveries that are due, and which members are connected (none, after a
//! restart). Every lease made before [`QueueEngine::open`] went to a call or stream of
//! the broker's last run, which no longer exists: it is *restored*, given up at the
//! first [`QueueEngine::tick`] (as `member left`, its attempt counted) and the message
//! delivered again after its backoff, whoever has joined by then (a unary Receive's
//! member comes back under the same name with its next call); a settlement or release
//! of that attempt is stale from the open on.
//!
//! # Order of delivery
//!
//! Highest priority level first. Within a level, messages whose redelivery (or
//! deliver-at time) has come, oldest due first, then new messages from the log,
//! partitions taking turns. A new message whose deliver-at time is still ahead is taken
//! as delayed and delivered when its time comes.
//!
//! # Timers
//!
//! A lease runs until its deadline (an in-progress settlement moves it). When it passes
//! without a settlement, or the member holding it leaves, the delivery is given up: a
//! message that has used `max_deliveries` is dead-lettered (reason `deadline passed` or
//! `member left`), any other waits `backoff_ms(attempts)` and is then due again. A
//! message may have several timers set (an earlier attempt's deadline, a member's
//! leaving); one tick acts on a message once, whichever of them come due. A nack
//! makes it due after its own delay or the backoff; a nack of the last allowed
//! delivery dead-letters it with the nack's reason; a term dead-letters it at once.
//! A delivery its owner could not hand to the member (the member's call or
//! connection went first) is given back unseen with [`QueueEngine::release`]: due at
//! once, its attempt taken back, so it never counts towards `max_deliveries`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::admin::{DLQ_HEADERS_BYTES_MAX, dead_letter_record};
use super::history::{HistoryEvent, HistorySubmitted, Outcome, QueueHistory};
use super::state::{
    Hold, Pending, Queue, QueueConfig, QueueOp, QueuePartition, TakeCounts, Taken, truncate_utf8,
};
use crate::batch::Record;
use crate::config::TopicConfig;
use crate::error::{Error, Result};
use crate::filter::{Filter, Verdict};
use crate::partition::Partition;
use crate::queue::QueueHost;
use crate::topic::Topic;

mod settle;

pub use settle::SettleBatch;

/// Records a new-message scan examines in one partition and level per delivery round
/// at most, so a level far behind (or far ahead through other levels' messages) does
/// not hold the engine for long.
const SCAN_RECORDS_PER_ROUND: u32 = 4096;
/// Bytes one scan read asks for.
const SCAN_READ_BYTES: u64 = 4 << 20;
/// Deliveries one round makes at most (one state-log record).
const DELIVERIES_PER_ROUND_MAX: usize = 4096;
/// How long a partition's scan stopped at a damaged batch waits before reading it
/// again (it may have been passed by retention), in ms: a damaged batch is not read
/// again every delivery round.
pub const DAMAGE_RETRY_MS: i64 = 5_000;
/// Least time between two warnings of a queue's damaged batches in the log, in ms.
const DAMAGE_WARN_INTERVAL_MS: i64 = 30_000;

/// A message handed to a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub record: Record,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub deadline_ms: i64,
}

/// A partition whose new messages the queue stopped delivering at a damaged batch
/// (a CRC mismatch, a bad header: a read of it fails with [`Error::Corrupt`]), as
/// the log's readers stop there: what is before it was delivered, the other
/// partitions go on. See [`QueueEngine::damaged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub partition: u32,
    /// The first offset the queue has not taken there: the damaged batch's (or an
    /// expired message just before it).
    pub offset: u64,
    /// What the read found (the segment file and byte position).
    pub reason: String,
    /// When the queue stopped there (ms since the epoch).
    pub since_ms: i64,
}

/// A level's scan of one partition stopped at damage ([`QueueEngine::damaged`]).
#[derive(Debug, Clone)]
struct Stopped {
    damage: Damage,
    /// The damaged batch is not read again before this.
    retry_at_ms: i64,
}

/// What one member may take in a delivery round ([`QueueEngine::deliver_bounded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub member: String,
    /// Most deliveries.
    pub messages: u32,
    /// Most bytes of deliveries, by the round's size function (`u64::MAX`: no
    /// bound). The first delivery goes whatever its size.
    pub bytes: u64,
}

/// Who gets the next delivery of a round: the members in turns, one delivery each
/// per turn, each until its count or its byte budget is used.
#[derive(Debug)]
struct Turns {
    /// The turns, in order (at most [`DELIVERIES_PER_ROUND_MAX`]).
    order: std::vec::IntoIter<Arc<str>>,
    /// The member whose turn it is.
    current: Option<Arc<str>>,
    /// Per member with a budget: bytes left, and whether it has had a delivery.
    budgets: HashMap<Arc<str>, (u64, bool)>,
}

impl Turns {
    fn new(wants: &[(Arc<str>, u32, u64)]) -> Turns {
        let mut order: Vec<Arc<str>> = Vec::new();
        let mut left: Vec<(Arc<str>, u32)> = wants.iter().map(|w| (w.0.clone(), w.1)).collect();
        while order.len() < DELIVERIES_PER_ROUND_MAX && left.iter().any(|w| w.1 > 0) {
            for (member, want) in &mut left {
                if *want > 0 {
                    order.push(member.clone());
                    *want -= 1;
                }
            }
        }
        order.truncate(DELIVERIES_PER_ROUND_MAX);
        let budgets = wants
            .iter()
            .filter(|w| w.2 != u64::MAX)
            .map(|w| (w.0.clone(), (w.2, false)))
            .collect();
        let mut order = order.into_iter();
        let current = order.next();
        Turns {
            order,
            current,
            budgets,
        }
    }

    /// The member whose turn it is; None when the round is over.
    fn current(&self) -> Option<&Arc<str>> {
        self.current.as_ref()
    }

    /// Moves to the next turn of a member with budget left.
    fn advance(&mut self) {
        self.current = self
            .order
            .by_ref()
            .find(|m| self.budgets.get(m).is_none_or(|&(left, _)| left > 0));
    }

    /// The member a message of `size()` bytes goes to: the one whose turn it is if it
    /// fits its budget (its first delivery always fits), else the next that it fits.
    /// A member it does not fit is done for the round. None: it fits no one left.
    fn take(&mut self, size: impl FnOnce() -> u64) -> Option<Arc<str>> {
        let mut size = Some(size);
        let mut bytes = None;
        while let Some(member) = self.current.clone() {
            let Some((left, served)) = self.budgets.get_mut(&member) else {
                self.advance();
                return Some(member);
            };
            let need = *bytes.get_or_insert_with(|| size.take().map_or(0, |f| f()));
            if !*served || need <= *left {
                *left = left.saturating_sub(need);
                *served = true;
                self.advance();
                return Some(member);
            }
            // Done for this round: its later turns are passed over.
            *left = 0;
            self.advance();
        }
        None
    }
}

/// What a member says about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleAction {
    /// Done; `through` makes it a range (every offset from `offset` to `through` that
    /// the member holds).
    Ack { through: Option<u64> },
    /// Deliver again after `delay_ms` (None = the backoff).
    Nack {
        delay_ms: Option<u64>,
        reason: String,
    },
    /// Still working: the deadline moves to now + `extend_ms` (None = the ack deadline).
    InProgress { extend_ms: Option<u64> },
    /// Dead-letter it now.
    Term { reason: String },
}

/// One settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleRequest {
    pub partition: u32,
    pub offset: u64,
    /// The attempt being settled; 0 = the current one.
    pub attempt: u32,
    pub action: SettleAction,
}

/// The outcome of one settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Done: `settled` messages acked or dead-lettered (0 for a nack or an extension).
    Ok { settled: u64 },
    /// The message is not pending (never delivered, or settled already).
    NotFound(String),
    /// Another attempt is current, or another member holds it, or it is not delivered
    /// now.
    Stale(String),
    /// A delay or extension out of range.
    Invalid(String),
    /// A term, or a nack on the last attempt, whose dead letter the dead-letter topic
    /// refuses for good (see [`LetterFailure::ForGood`]): the message was released
    /// and waits for a redelivery instead.
    Refused(String),
    /// A term, or a nack on the last attempt, whose dead letter could not be written
    /// now (an I/O error, a poisoned dead-letter partition): nothing changed, the
    /// member still holds the delivery and may settle it again.
    Unavailable(String),
}

/// Counters since the engine started, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineCounters {
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    /// Leases given up because their deadline passed.
    pub timed_out: u64,
    /// Leases given up because their member left (disconnected, or a broker restart
    /// ended every lease of the run before).
    pub member_left: u64,
    pub dead_lettered_max_deliveries: u64,
    pub dead_lettered_term: u64,
    /// Dead-lettered because the queue was over its topic's caps.
    pub dead_lettered_overflow: u64,
    /// Messages removed by retention before the queue settled them.
    pub lost_to_retention: u64,
    /// Messages the queue's filter skipped (settled without a delivery).
    pub filtered: u64,
    /// Deliveries given back unseen ([`QueueEngine::release`]): made, never handed
    /// to their member, the attempt taken back.
    pub released: u64,
    /// Dead letters of the overflow pass that the dead-letter topic refused for good
    /// (the messages stay ready, see [`QueueEngine::enforce_caps`]).
    pub overflow_refused: u64,
    /// Of those, skipped because the filter reads JSON and the value is not JSON.
    pub filtered_not_json: u64,
    /// History events whose append failed (the decisions stand; see
    /// [`QueueHistory::failed`]), since the engine opened, as its history last
    /// counted them.
    pub history_failed_events: u64,
}

impl EngineCounters {
    /// Adds `other`'s counts (the engines of a queue on a topic pattern, one per
    /// topic, reported as one queue).
    pub fn add(&mut self, other: &EngineCounters) {
        self.delivered += other.delivered;
        self.redelivered += other.redelivered;
        self.acked += other.acked;
        self.nacked += other.nacked;
        self.timed_out += other.timed_out;
        self.member_left += other.member_left;
        self.dead_lettered_max_deliveries += other.dead_lettered_max_deliveries;
        self.dead_lettered_term += other.dead_lettered_term;
        self.dead_lettered_overflow += other.dead_lettered_overflow;
        self.lost_to_retention += other.lost_to_retention;
        self.filtered += other.filtered;
        self.released += other.released;
        self.overflow_refused += other.overflow_refused;
        self.filtered_not_json += other.filtered_not_json;
        self.history_failed_events += other.history_failed_events;
    }
}

/// Why a timer was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A lease's deadline: check whether it was settled or extended.
    Deadline,
    /// A waiting or delayed message becomes due.
    Due,
}

/// The delivery engine of one queue. See the module docs.
#[derive(Debug)]
pub struct QueueEngine {
    store: Arc<dyn QueueHost>,
    name: String,
    /// (time, kind, partition, offset).
    timers: BTreeSet<(i64, Timer, u32, u64)>,
    /// Due for (re)delivery now: (highest level first: `u8::MAX - level`, due time,
    /// partition, offset).
    due: BTreeSet<(u8, i64, u32, u64)>,
    /// Connected members and how many deliveries each holds.
    members: HashMap<Arc<str>, u64>,
    /// Leases made before the engine opened, by (partition, offset): their attempt.
    /// Given up whoever has joined (see the module docs); one stays here only while
    /// its dead letter cannot be written (a passing failure, retried by the tick).
    restored: HashMap<(u32, u64), u32>,
    /// When its queue was created: it acts only on the queue of its name created then
    /// ([`QueueEngine::this`]).
    created_ms: i64,
    /// The partition a new-message scan starts with next (turns).
    next_partition: usize,
    /// Per (partition, level), the position where [`QueueEngine::take_delayed`] last
    /// stopped at a due message, and until when that message stays due (its expiry:
    /// an expired head is passed over): not scanned again while the level's position
    /// is there and the time is before it.
    ahead_blocked: HashMap<(u32, u8), (u64, i64)>,
    /// Per partition, the log start whose recount of the counts taken ahead failed
    /// (damage, or retention moving on) and when to try it again
    /// ([`QueueEngine::follow_retention`]).
    recount_retry: HashMap<u32, (u64, i64)>,
    /// The last delivery round stopped because a higher level had more of the log to
    /// look at: deliver again at once (there may be nothing new to wait for).
    behind: bool,
    pub counters: EngineCounters,
    /// Delivery-to-ack times (ms) not yet taken by [`QueueEngine::take_ack_latencies`].
    ack_latencies_ms: Vec<u64>,
    /// The queue's filter, parsed once: (its text, the filter).
    filter: Option<(String, Arc<Filter>)>,
    /// Whether history events are only submitted by the calls (their owner waits,
    /// see [`QueueEngine::defer_history`]).
    history_deferred: bool,
    /// Submitted history not yet waited for, in order.
    history_submitted: Vec<(Arc<QueueHistory>, HistorySubmitted)>,
    /// Per (partition, level), where its scan stopped at a damaged batch.
    stopped: BTreeMap<(u32, u8), Stopped>,
    /// When damage was last warned of in the log.
    damage_warned_ms: Option<i64>,
}

/// History events an engine call submitted: durable once [`HistoryWait::wait`]
/// returns `Ok`.
#[derive(Debug, Default)]
#[must_use = "submitted events are written only when someone waits for them"]
pub struct HistoryWait(Vec<(Arc<QueueHistory>, HistorySubmitted)>);

impl HistoryWait {
    /// Waits until every event is durable. A failure is counted and logged by its
    /// history ([`QueueHistory::failed`]) and returned (the first, after all were
    /// waited for); the calls that recorded them stand whatever it is.
    pub fn wait(self) -> Result<()> {
        let mut outcome = Ok(());
        for (history, submitted) in self.0 {
            let events = QueueHistory::submitted_events(&submitted);
            let waited = history.wait(submitted);
            if let Err(error) = &waited {
                history.failed(events, error);
            }
            if outcome.is_ok() {
                outcome = waited;
            }
        }
        outcome
    }
}

/// Ack latencies kept for the metrics between two scrapes at most.
const ACK_LATENCIES_KEPT_MAX: usize = 65_536;

impl QueueEngine {
    /// The engine of queue `name`, its timers rebuilt from the durable state. Every
    /// lease is restored (see the module docs): given up at the first
    /// [`QueueEngine::tick`], its settlements stale. Nothing is written: an engine
    /// opened and dropped unused changes nothing.
    pub fn open(store: Arc<dyn QueueHost>, name: &str) -> Result<QueueEngine> {
        let queue = store
            .queues()
            .read(|q| q.get(name).cloned())
            .ok_or_else(|| Error::not_found(format!("queue {name:?}")))?;
        let now = store.clock().now_ms();
        let mut engine = QueueEngine {
            store,
            name: name.to_string(),
            created_ms: queue.created_ms,
            timers: BTreeSet::new(),
            due: BTreeSet::new(),
            members: HashMap::new(),
            restored: HashMap::new(),
            next_partition: 0,
            behind: false,
            ahead_blocked: HashMap::new(),
            recount_retry: HashMap::new(),
            counters: EngineCounters::default(),
            ack_latencies_ms: Vec::new(),
            filter: None,
            history_deferred: false,
            history_submitted: Vec::new(),
            stopped: BTreeMap::new(),
            damage_warned_ms: None,
        };
        for (&partition, part) in &queue.partitions {
            for (offset, pending) in part.pending.iter() {
                let timer = match pending.hold {
                    Hold::Leased { .. } => {
                        engine
                            .restored
                            .insert((partition, offset), pending.attempts);
                        (now, Timer::Deadline, partition, offset)
                    }
                    Hold::Waiting { due_ms } | Hold::Delayed { due_ms } => {
                        (due_ms, Timer::Due, partition, offset)
                    }
                };
                engine.timers.insert(timer);
            }
        }
        Ok(engine)
    }

    /// Whether the lease of `partition`/`offset` at attempt `attempt` is a restored
    /// one (made before the engine opened): over, whoever holds it.
    fn restored(&self, partition: u32, offset: u64, attempt: u32) -> bool {
        self.restored.get(&(partition, offset)) == Some(&attempt)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's definition and cursors, without its pending messages: those are
    /// looked up one by one ([`QueueEngine::pending_of`], [`QueueEngine::pending_range`]),
    /// so a call costs what it touches, not a copy of the whole unacked window (which
    /// was a third of the broker's CPU with 4 members holding 1,000 each).
    /// This engine's queue in `queues`: the queue of its name that it opened, not one
    /// created again under the name after a delete (a runtime of the deleted queue
    /// may still run a step before it stops; it must neither act on nor record into
    /// the new queue).
    fn this<'q>(&self, queues: &'q super::Queues) -> Option<&'q Queue> {
        queues
            .get(&self.name)
            .filter(|queue| queue.created_ms == self.created_ms)
    }

    fn queue(&self) -> Result<Queue> {
        self.store
            .queues()
            .read(|q| self.this(q).map(Queue::without_pending))
            .ok_or_else(|| {
                Error::not_found(format!("queue {:?}", super::admin::public_name(&self.name)))
            })
    }

    /// The pending message at `offset` of `partition`, as the state log has it now.
    fn pending_of(&self, partition: u32, offset: u64) -> Option<Pending> {
        self.store.queues().read(|q| {
            self.this(q)?
                .partitions
                .get(&partition)?
                .pending
                .get(offset)
                .map(Cow::into_owned)
        })
    }

    /// The pending messages of `partition` from `first` to `last` (inclusive).
    fn pending_range(&self, partition: u32, first: u64, last: u64) -> Vec<(u64, Pending)> {
        self.store.queues().read(|q| {
            self.this(q)
                .and_then(|queue| queue.partitions.get(&partition))
                .map(|part| {
                    part.pending
                        .range(first..=last)
                        .map(|(offset, pending)| (offset, pending.into_owned()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// The queue's config now.
    pub fn config(&self) -> Result<QueueConfig> {
        self.store
            .queues()
            .read(|q| self.this(q).map(|q| q.config.clone()))
            .ok_or_else(|| {
                Error::not_found(format!("queue {:?}", super::admin::public_name(&self.name)))
            })
    }

    /// The parsed filter of `config`, parsed again only when its text changed.
    fn filter_of(&mut self, config: &QueueConfig) -> Result<Option<Arc<Filter>>> {
        let Some(text) = &config.filter else {
            return Ok(None);
        };
        if let Some((parsed_from, filter)) = &self.filter
            && parsed_from == text
        {
            return Ok(Some(filter.clone()));
        }
        let filter = Arc::new(Filter::parse(text).map_err(|e| {
            Error::invalid(format!(
                "queue {:?}: filter {e}",
                super::admin::public_name(&self.name)
            ))
        })?);
        self.filter = Some((text.clone(), filter.clone()));
        Ok(Some(filter))
    }

    /// Whether the queue's `filter` skips `record` (counted): the queue passes over it,
    /// and it is settled once the level's cursor is past it, never delivered nor
    /// dead-lettered.
    fn filter_skips(&mut self, filter: Option<&Filter>, record: &Record) -> bool {
        let Some(filter) = filter else {
            return false;
        };
        match filter.evaluate_record(record) {
            Verdict::Match => false,
            verdict => {
                self.counters.filtered += 1;
                if verdict == Verdict::NotJson {
                    self.counters.filtered_not_json += 1;
                }
                true
            }
        }
    }

    /// A member connected.
    pub fn member_joined(&mut self, member: &str) {
        self.members.entry(Arc::from(member)).or_insert(0);
    }

    /// A member left: its leases are given up now (in the next [`QueueEngine::tick`]).
    pub fn member_left(&mut self, member: &str) {
        if self.members.remove(member).is_none() {
            return;
        }
        let now = self.store.clock().now_ms();
        let held: Vec<(u32, u64)> = self.store.queues().read(|q| {
            self.this(q)
                .map(|queue| {
                    queue
                        .partitions
                        .iter()
                        .flat_map(|(&p, part)| {
                            part.pending.iter_undelayed().filter_map(move |(o, pending)| {
                                matches!(&pending.hold, Hold::Leased { member: m, .. } if **m == *member)
                                    .then_some((p, o))
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
        for (partition, offset) in held {
            self.timers
                .insert((now, Timer::Deadline, partition, offset));
        }
    }

    /// Gives back deliveries that were made to `member` but never handed to it (its
    /// Receive was cancelled, its stream's connection dropped before they went out):
    /// each `(partition, offset, attempt)` still leased to `member` at exactly that
    /// attempt goes back to ready at once, the attempt taken back (no backoff, not
    /// counted towards `max_deliveries`), with a `released` event in the history.
    /// Durable when this returns (one state-log append). Others (settled, given up,
    /// delivered again since, or restored: made before the engine opened) are left
    /// alone. Returns how many were released.
    ///
    /// If the broker dies before this, the lease stands until its deadline, and is
    /// given up (counted) at the restart like every other lease.
    pub fn release(&mut self, member: &str, deliveries: &[(u32, u64, u32)]) -> Result<u64> {
        let queue = self.queue()?;
        let now = self.store.clock().now_ms();
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let mut released = Vec::new();
        let mut seen = BTreeSet::new();
        for &(partition, offset, attempt) in deliveries {
            if !seen.insert((partition, offset)) {
                continue;
            }
            let Some(pending) = self.pending_of(partition, offset) else {
                continue;
            };
            let Hold::Leased { member: holder, .. } = &pending.hold else {
                continue;
            };
            if **holder != *member
                || pending.attempts != attempt
                || attempt == 0
                || self.restored(partition, offset, attempt)
            {
                continue;
            }
            ops.push(QueueOp::Release {
                name: self.name.clone(),
                partition,
                offset,
                attempt,
                due_ms: now,
            });
            events.push(HistoryEvent::new(
                partition,
                offset,
                attempt,
                now,
                Outcome::Released,
                0,
                holder,
                "",
            ));
            released.push((pending.level, partition, offset, attempt));
        }
        if ops.is_empty() {
            return Ok(0);
        }
        self.store.queues().append(ops)?;
        for &(level, partition, offset, attempt) in &released {
            // The counters tell of deliveries members got.
            self.counters.delivered = self.counters.delivered.saturating_sub(1);
            if attempt > 1 {
                self.counters.redelivered = self.counters.redelivered.saturating_sub(1);
            }
            // Ready at once: no backoff. (Its deadline timer finds it waiting: stale.)
            self.due.insert((u8::MAX - level, now, partition, offset));
        }
        let count = released.len() as u64;
        if let Some(held) = self.members.get_mut(member) {
            *held = held.saturating_sub(count);
        }
        self.counters.released += count;
        tracing::info!(queue = %self.name, member, released = count, "deliveries never handed to their member given back unseen");
        self.record(&queue.config, events);
        Ok(count)
    }

    /// Counts again, from the durable state, the deliveries each connected member
    /// holds (what [`QueueEngine::unacked`] answers and `max_unacked_per_member` is
    /// judged by). Every lease the engine makes or settles itself keeps the counts;
    /// an admin operation that settles leases behind it ([`super::admin::purge_queue`])
    /// does not, and its caller calls this afterwards: without it a purged member
    /// kept counting the deliveries it no longer holds, and one at its cap got
    /// nothing more. Leases restored from before the engine opened are not counted
    /// (as ever), nor those of members that left. Reads every pending message once.
    pub fn recount_held(&mut self) {
        let held: HashMap<Arc<str>, u64> = self.store.queues().read(|q| {
            let mut held: HashMap<Arc<str>, u64> = HashMap::new();
            let Some(queue) = self.this(q) else {
                return held;
            };
            for (&partition, part) in &queue.partitions {
                for (offset, pending) in part.pending.iter_undelayed() {
                    let Hold::Leased { member, .. } = &pending.hold else {
                        continue;
                    };
                    if !self.members.contains_key(member)
                        || self.restored(partition, offset, pending.attempts)
                    {
                        continue;
                    }
                    *held.entry(member.clone()).or_insert(0) += 1;
                }
            }
            held
        });
        for (member, count) in &mut self.members {
            *count = held.get(member).copied().unwrap_or(0);
        }
    }

    /// Deliveries `member` holds now.
    pub fn unacked(&self, member: &str) -> u64 {
        self.members.get(member).copied().unwrap_or(0)
    }

    /// When [`QueueEngine::tick`] has something to do next (ms since the epoch).
    pub fn next_wakeup(&self) -> Option<i64> {
        self.timers.first().map(|t| t.0)
    }

    /// Delivery-to-ack times (ms) since the last call, for the metrics.
    pub fn take_ack_latencies(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.ack_latencies_ms)
    }

    /// Whether the last [`QueueEngine::deliver`] stopped early because a higher
    /// priority level was still looking through the log: call it again at once.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// Messages due for (re)delivery now, waiting for a member.
    pub fn due_count(&self) -> usize {
        self.due.len()
    }

    /// Whether a redelivery is due now (so [`QueueEngine::deliver`] has something
    /// without reading the log).
    pub fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    /// Runs the timers that are due: gives up leases past their deadline (or of
    /// members that left), dead-lettering those that used every delivery, and marks
    /// waiting and delayed messages due. Dead letters are appended (and settled)
    /// before this returns.
    pub fn tick(&mut self) -> Result<()> {
        let now = self.store.clock().now_ms();
        let queue = self.queue()?;
        // A lease on a message retention deleted is dropped, not given up (counted
        // timed out, redelivered to find it gone). A topic deleted has nothing to drop.
        if let Ok(topic) = self.store.topic(&queue.topic) {
            self.drop_deleted(&topic)?;
        }
        let mut ops = Vec::new();
        let mut events = Vec::new();
        // Messages a timer of this tick has acted on. A message may have several
        // timers due at once (the deadline of an attempt a nack ended early and the
        // next attempt's, the one its member's leaving set), and each reads the state
        // as it was before this tick's operations: the first that fits the message's
        // hold acts on it, the others are stale. (Acting again gave a lease up twice,
        // its last attempt dead-lettered twice.)
        let mut acted: HashSet<(u32, u64)> = HashSet::new();
        while let Some(&(at, kind, partition, offset)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(pending) = self.pending_of(partition, offset) else {
                self.restored.remove(&(partition, offset));
                continue;
            };
            let pending = &pending;
            let fits = matches!(
                (&pending.hold, kind),
                (Hold::Leased { .. }, Timer::Deadline)
                    | (Hold::Waiting { .. } | Hold::Delayed { .. }, Timer::Due)
            );
            if !fits || !acted.insert((partition, offset)) {
                // A stale timer: the message moved on since it was set, or another
                // timer of this tick acted on it.
                continue;
            }
            match (&pending.hold, kind) {
                (
                    Hold::Leased {
                        member,
                        deadline_ms,
                    },
                    Timer::Deadline,
                ) => {
                    // A lease from before the engine opened: its member is gone even
                    // if one of that name has joined since.
                    let restored = self.restored(partition, offset, pending.attempts);
                    let member_gone = restored || !self.members.contains_key(member);
                    if *deadline_ms > now && !member_gone {
                        // Extended: look again at the new deadline.
                        self.timers
                            .insert((*deadline_ms, Timer::Deadline, partition, offset));
                        continue;
                    }
                    let reason = if member_gone {
                        "member left"
                    } else {
                        "deadline passed"
                    };
                    let outcome = if member_gone {
                        Outcome::MemberLeft
                    } else {
                        Outcome::DeadlinePassed
                    };
                    // The dead letter first: while it cannot be written for a passing
                    // cause, nothing changes and the lease is given up on a later tick.
                    let mut retry_reason = None;
                    let mut letter = None;
                    if queue.config.exhausted(pending.attempts) {
                        let reason = format!(
                            "{reason} after {} deliveries (max_deliveries {})",
                            pending.attempts, queue.config.max_deliveries
                        );
                        match self.dead_letter(&queue, partition, offset, pending, &reason) {
                            Ok(op) => letter = Some(op),
                            Err(error) => {
                                match self.dead_letter_failed(partition, offset, &error) {
                                    LetterFailure::ForGood(why) => retry_reason = Some(why),
                                    LetterFailure::Passing => continue,
                                }
                            }
                        }
                    }
                    // A restored lease was never counted for a member of this run.
                    if restored {
                        self.restored.remove(&(partition, offset));
                    } else if let Some(count) = self.members.get_mut(member) {
                        *count = count.saturating_sub(1);
                    }
                    if member_gone {
                        self.counters.member_left += 1;
                    } else {
                        self.counters.timed_out += 1;
                    }
                    events.push(HistoryEvent::new(
                        partition,
                        offset,
                        pending.attempts,
                        now,
                        outcome,
                        0,
                        member,
                        "",
                    ));
                    if let Some(op) = letter {
                        events.extend(dead_lettered_event(&op, pending.attempts, now, member));
                        if self.letter_written(&op) {
                            self.counters.dead_lettered_max_deliveries += 1;
                        }
                        ops.push(op);
                    } else {
                        let due = (*deadline_ms).min(now)
                            + queue.config.backoff_ms(pending.attempts) as i64;
                        let reason = retry_reason.unwrap_or_else(|| reason.to_string());
                        ops.push(QueueOp::Nack {
                            name: self.name.clone(),
                            partition,
                            offset,
                            due_ms: due,
                            reason,
                        });
                        // Judged against the state before this tick's operations: a
                        // redelivery due already goes straight to the due set.
                        if due <= now {
                            self.due
                                .insert((u8::MAX - pending.level, due, partition, offset));
                        } else {
                            self.timers.insert((due, Timer::Due, partition, offset));
                        }
                    }
                }
                (Hold::Waiting { due_ms } | Hold::Delayed { due_ms }, Timer::Due) => {
                    if *due_ms > now {
                        self.timers.insert((*due_ms, Timer::Due, partition, offset));
                    } else {
                        self.due
                            .insert((u8::MAX - pending.level, *due_ms, partition, offset));
                    }
                }
                // Stale: passed over above.
                _ => {}
            }
        }
        if !ops.is_empty() {
            self.store.queues().append(ops)?;
        }
        self.record(&queue.config, events);
        Ok(())
    }

    /// Makes up to `wants[i].1` deliveries to each member `wants[i].0`, in turns, and
    /// records them durably before returning them. Fewer (or none) when nothing is
    /// ready.
    pub fn deliver(&mut self, wants: &[(String, u32)]) -> Result<Vec<(String, Vec<Delivery>)>> {
        let wants: Vec<Want> = wants
            .iter()
            .map(|(member, messages)| Want {
                member: member.clone(),
                messages: *messages,
                bytes: u64::MAX,
            })
            .collect();
        self.deliver_bounded(&wants, &|_| 0)
    }

    /// [`QueueEngine::deliver`] with a byte budget per member: a member's deliveries
    /// add up to at most `want.bytes` by `size` (its first delivery always goes, so
    /// one message larger than the budget still goes out alone). A message that does
    /// not fit the member whose turn it is ends that member's share of the round and
    /// goes to the next member it fits; one that fits none is not taken (it stays
    /// ready, at the head of its partition and level, for the next round). `size` is
    /// called only for members with a budget (not `u64::MAX`).
    pub fn deliver_bounded(
        &mut self,
        wants: &[Want],
        size: &dyn Fn(&Record) -> u64,
    ) -> Result<Vec<(String, Vec<Delivery>)>> {
        self.behind = false;
        self.take_round(wants, size, false)
    }

    /// Takes, with no member asking, the new messages at the head of each partition
    /// and level whose deliver-at time is ahead: they wait as delayed (counted so,
    /// not as ready, by DescribeQueue and the backpressure caps) instead of counting
    /// as ready until a member's delivery round passes them. Each scan stops at the
    /// first message that is due (a member's round takes it) and, while the level's
    /// position stays there, is not made again. The queue's runtime calls it before
    /// each pass over the caps.
    pub fn take_delayed(&mut self) -> Result<()> {
        self.take_round(&[], &|_| 0, true).map(drop)
    }

    /// A delivery round ([`QueueEngine::deliver_bounded`]), or with `ahead` the round
    /// of [`QueueEngine::take_delayed`] (no member: delayed messages only).
    fn take_round(
        &mut self,
        wants: &[Want],
        size: &dyn Fn(&Record) -> u64,
        ahead: bool,
    ) -> Result<Vec<(String, Vec<Delivery>)>> {
        let mut queue = self.queue()?;
        let filter = self.filter_of(&queue.config)?;
        let topic = self.store.topic(&queue.topic)?;
        let now = self.store.clock().now_ms();
        let deadline = now.saturating_add(queue.config.ack_deadline_ms as i64);
        // Members in turns: a list of who gets the next delivery. A member's id is
        // one shared `Arc` for all its leases, their state and history (no copy per
        // message): the connected member's own where it has joined.
        let shared: Vec<(Arc<str>, u32, u64)> = wants
            .iter()
            .map(|want| {
                let shared = match self.members.get_key_value(want.member.as_str()) {
                    Some((shared, _)) => Arc::clone(shared),
                    None => Arc::from(want.member.as_str()),
                };
                (shared, want.messages, want.bytes)
            })
            .collect();
        let mut turns = Turns::new(&shared);
        let mut out: BTreeMap<Arc<str>, Vec<Delivery>> = BTreeMap::new();
        let mut ops = Vec::new();
        self.follow_retention(&mut queue, &topic, now, &mut ops)?;

        for level in (0..queue.levels).rev() {
            if turns.current().is_none() && !ahead {
                break;
            }
            // Redeliveries of this level whose time has come.
            while turns.current().is_some() {
                let rank = u8::MAX - level;
                let Some(&entry) = self
                    .due
                    .range((rank, i64::MIN, 0, 0)..)
                    .next()
                    .filter(|e| e.0 == rank)
                else {
                    break;
                };
                self.due.remove(&entry);
                let (_, _, partition, offset) = entry;
                let Some(pending) = self.pending_of(partition, offset) else {
                    continue;
                };
                if matches!(pending.hold, Hold::Leased { .. }) {
                    continue;
                }
                let record = match read_one(&topic, partition, offset) {
                    Ok(record) => record,
                    Err(error @ Error::Corrupt { .. }) => {
                        // Its batch was damaged since it was taken: it stays pending
                        // (the member holding it kept its copy) and is tried again
                        // later; the others are delivered on.
                        let at = now.saturating_add(DAMAGE_RETRY_MS);
                        self.timers.insert((at, Timer::Due, partition, offset));
                        self.warn_damage(partition, offset, &error, now, false);
                        continue;
                    }
                    Err(Error::PartitionUnavailable { .. }) => {
                        // Recovery refused to open its partition: it is not gone, it
                        // stays pending until the repair (a restart) and the others
                        // are delivered on.
                        let at = now.saturating_add(DAMAGE_RETRY_MS);
                        self.timers.insert((at, Timer::Due, partition, offset));
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                let Some(record) = record else {
                    // Retention removed it first.
                    self.counters.lost_to_retention += 1;
                    ops.push(QueueOp::Ack {
                        name: self.name.clone(),
                        partition,
                        ranges: vec![(offset, offset)],
                    });
                    continue;
                };
                let Some(member) = turns.take(|| size(&record)) else {
                    // Fits no member's budget this round: still due.
                    self.due.insert(entry);
                    break;
                };
                if pending.attempts > 0 {
                    self.counters.redelivered += 1;
                }
                ops.push(QueueOp::Lease {
                    name: self.name.clone(),
                    partition,
                    offset,
                    member: member.clone(),
                    deadline_ms: deadline,
                    at_ms: now,
                });
                self.timers
                    .insert((deadline, Timer::Deadline, partition, offset));
                out.entry(member).or_default().push(Delivery {
                    partition,
                    record,
                    attempt: pending.attempts + 1,
                    deadline_ms: deadline,
                });
            }
            // New messages of this level, partitions taking turns.
            let partitions = topic.partitions();
            let count = partitions.len();
            let mut caught_up = true;
            for step in 0..count {
                if turns.current().is_none() && !ahead {
                    break;
                }
                let index = (self.next_partition + step) % count;
                let partition = &partitions[index];
                let mut passed = Passed::new(&queue, partition.id(), level);
                let cursor = passed.from;
                let key = (partition.id(), level);
                if ahead
                    && self
                        .ahead_blocked
                        .get(&key)
                        .is_some_and(|&(at, until)| at == cursor && now < until)
                {
                    // Its head is a due message, as at the last look: a member's round
                    // takes it first.
                    caught_up = false;
                    continue;
                }
                let (cursor_to, taken, blocked) = self.scan(
                    &queue,
                    filter.as_deref(),
                    partition,
                    &mut passed,
                    now,
                    deadline,
                    (&mut turns, size),
                    &mut out,
                    ahead,
                )?;
                if let (Some(until), true) = (blocked, ahead) {
                    self.ahead_blocked.insert(key, (cursor_to, until));
                } else {
                    self.ahead_blocked.remove(&key);
                }
                // A partition stopped at damage has nothing more to look at for now.
                // An unavailable partition has nothing to deliver until it is repaired.
                caught_up &= partition.end_offset().is_ok_and(|end| cursor_to >= end)
                    || partition.unavailable().is_some()
                    || self.stopped.contains_key(&(partition.id(), level));
                if cursor_to > cursor || !taken.is_empty() {
                    ops.push(QueueOp::Take {
                        name: self.name.clone(),
                        partition: partition.id(),
                        level,
                        cursor_to,
                        at_ms: now,
                        taken,
                        counts: passed.into_counts(&mut queue, partition.id(), cursor_to),
                    });
                }
            }
            if !ahead {
                self.next_partition = self.next_partition.wrapping_add(1);
            }
            // Strict priority: a lower level waits until this level has looked at every
            // message stored so far (its scan budget ran out first: call again). Taking
            // delayed messages ahead keeps to it too: no level's position passes a
            // faster level's (the counts of what faster levels took rest on it).
            if !caught_up && ahead {
                break;
            }
            if !caught_up && turns.current().is_some() {
                self.behind = true;
                break;
            }
        }
        if !ops.is_empty() {
            self.store.queues().append(ops)?;
        }
        let events = out
            .iter()
            .flat_map(|(member, deliveries)| {
                deliveries.iter().map(move |d| {
                    HistoryEvent::new(
                        d.partition,
                        d.record.offset,
                        d.attempt,
                        now,
                        Outcome::Delivered,
                        d.deadline_ms,
                        member,
                        "",
                    )
                })
            })
            .collect();
        self.record(&queue.config, events);
        for (member, deliveries) in &out {
            *self.members.entry(member.clone()).or_insert(0) += deliveries.len() as u64;
            self.counters.delivered += deliveries.len() as u64;
            // Leases of this run now: no longer restored ones.
            if !self.restored.is_empty() {
                for d in deliveries {
                    self.restored.remove(&(d.partition, d.record.offset));
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(member, deliveries)| (member.to_string(), deliveries))
            .collect())
    }

    /// Scans `partition` from `cursor` for new messages of `level`: leases them to the
    /// members in turn, takes those whose deliver-at time is ahead as delayed, passes
    /// over those `filter` skips (they are settled once the cursor is past them).
    /// With `ahead` ([`QueueEngine::take_delayed`]) it goes on with no member to lease
    /// to, taking delayed messages only. A message whose TTL ends before its deliver-at
    /// time ([`Record::expires_before_due`]) is passed over like an expired one (the
    /// read leaves those out). Returns where the level's cursor moves, what was taken,
    /// and, when the scan stopped at a due message no member took, until when that
    /// message stays due (its expiry, `i64::MAX` without one).
    #[allow(
        clippy::too_many_arguments,
        reason = "the delivery round's state, threaded through one private helper"
    )]
    fn scan(
        &mut self,
        queue: &Queue,
        filter: Option<&Filter>,
        partition: &Arc<Partition>,
        passed: &mut Passed,
        now: i64,
        deadline: i64,
        (turns, size): (&mut Turns, &dyn Fn(&Record) -> u64),
        out: &mut BTreeMap<Arc<str>, Vec<Delivery>>,
        ahead: bool,
    ) -> Result<(u64, Vec<Taken>, Option<i64>)> {
        let id = partition.id();
        let level = passed.level;
        let mut position = passed.from;
        // A partition recovery refused to open has nothing to scan: its messages are
        // neither taken nor lost, the queue's cursor there waits for its repair.
        let Ok(log_start) = partition.log_start() else {
            return Ok((position, Vec::new(), None));
        };
        if position < log_start {
            // Retention deleted messages the queue had not taken: they are gone.
            self.counters.lost_to_retention += log_start - position;
            position = log_start;
        }
        let mut taken = Vec::new();
        let mut examined = 0u32;
        if self.waits_at_damage(id, level, position, now) {
            return Ok((position, taken, None));
        }
        let mut blocked = None;
        while (turns.current().is_some() || ahead)
            && examined < SCAN_RECORDS_PER_ROUND
            && partition.end_offset().is_ok_and(|end| position < end)
        {
            let read = match partition.read(
                position,
                SCAN_RECORDS_PER_ROUND - examined,
                SCAN_READ_BYTES,
            ) {
                Ok(read) => read,
                Err(Error::OffsetOutOfRange { log_start, .. }) if log_start > position => {
                    self.counters.lost_to_retention += log_start - position;
                    position = log_start;
                    continue;
                }
                // A damaged batch stops this partition only, as it stops the log's
                // readers: what was before it is taken, the other partitions go on.
                Err(error @ Error::Corrupt { .. }) => {
                    self.stop_at_damage(id, level, position, &error, now);
                    break;
                }
                Err(error) => return Err(error),
            };
            self.past_damage(id, level);
            let mut stopped_at = None;
            for record in read.records {
                examined += 1;
                let record_level = queue.level_of(record.priority);
                if record_level != level {
                    passed.see(record.offset, record_level);
                    continue;
                }
                if self.filter_skips(filter, &record) {
                    passed.see(record.offset, level);
                    continue;
                }
                let delayed = record.deliver_at_ms.is_some_and(|due| due > now);
                if turns.current().is_none() && !(ahead && delayed) {
                    stopped_at = Some(record.offset);
                    blocked = Some(record.expires_at_ms.unwrap_or(i64::MAX));
                    break;
                }
                let offset = record.offset;
                if delayed && record.expires_before_due() {
                    // Expired before it comes due: never delivered, passed over.
                    passed.see(offset, level);
                    continue;
                }
                match record.deliver_at_ms {
                    Some(due) if due > now => {
                        passed.see(offset, level);
                        self.timers.insert((due, Timer::Due, id, offset));
                        taken.push(Taken {
                            offset,
                            hold: Hold::Delayed { due_ms: due },
                        });
                    }
                    _ => {
                        let Some(member) = turns.take(|| size(&record)) else {
                            // Fits no member's budget: the next round starts here.
                            stopped_at = Some(offset);
                            blocked = Some(i64::MAX);
                            break;
                        };
                        passed.see(offset, level);
                        self.timers.insert((deadline, Timer::Deadline, id, offset));
                        taken.push(Taken {
                            offset,
                            hold: Hold::Leased {
                                member: member.clone(),
                                deadline_ms: deadline,
                            },
                        });
                        out.entry(member).or_default().push(Delivery {
                            partition: id,
                            record,
                            attempt: 1,
                            deadline_ms: deadline,
                        });
                    }
                }
            }
            position = match stopped_at {
                Some(offset) => offset,
                None => read.next_offset,
            };
            if stopped_at.is_some() || read.next_offset == read.end_offset {
                break;
            }
        }
        Ok((position, taken, blocked))
    }

    /// Applies the topic's backpressure caps when its overflow policy is to
    /// dead-letter the oldest: while the queue holds more ready messages (or bytes)
    /// than allowed, its oldest messages not yet taken, lowest priority first, go to the
    /// dead-letter topic with reason `overflow`. Returns how many went.
    ///
    /// A letter the dead-letter topic refuses for good (larger than its
    /// `max_message_bytes` allows) does not stop the others: its message stays ready
    /// (taken as waiting, due now, delivered to members like any other; counted in
    /// `overflow_refused` and logged), and the pass goes on past it. At most
    /// [`OVERFLOW_REFUSED_HELD_MAX`] such messages are held pending; past that the
    /// pass stops at a refused message (tried again next pass). A passing failure (an
    /// I/O error) fails the pass, which is tried again.
    pub fn enforce_caps(&mut self) -> Result<u64> {
        let topic_name = self
            .store
            .queues()
            .read(|q| self.this(q).map(|q| q.topic.clone()))
            .ok_or_else(|| {
                Error::not_found(format!("queue {:?}", super::admin::public_name(&self.name)))
            })?;
        let topic = self.store.topic(&topic_name)?;
        let config = topic.config();
        if !config.dead_letters_over_caps() {
            return Ok(0);
        }
        // Delayed messages taken and expired ones passed at the heads first: neither is
        // ready, and counting them would move live messages in their place.
        self.take_delayed()?;
        let mut queue = self.queue()?;
        let filter = self.filter_of(&queue.config)?;
        // The backlog counted below is exact only once the state follows retention.
        let mut follow = Vec::new();
        self.follow_retention(&mut queue, &topic, self.store.clock().now_ms(), &mut follow)?;
        if !follow.is_empty() {
            self.store.queues().append(follow)?;
        }
        let Some((messages, bytes)) = super::admin::backlog(
            &*self.store,
            &self.name,
            &topic,
            self.store.clock().now_ms(),
        )?
        else {
            return Ok(0);
        };
        let over_messages = config
            .queue_max_ready_messages
            .map_or(0, |max| messages.saturating_sub(max));
        let over_bytes = config
            .queue_max_ready_bytes
            .map_or(0, |max| bytes.saturating_sub(max));
        let mut excess = over_messages;
        if over_bytes > 0 && messages > 0 {
            // Messages that many bytes take, on average.
            excess = excess.max(over_bytes.div_ceil((bytes / messages).max(1)));
        }
        if excess == 0 {
            return Ok(0);
        }
        let cap = |max: Option<u64>| max.map_or_else(|| "off".to_string(), |m| m.to_string());
        let reason = format!(
            "overflow: queue {:?} held {messages} ready messages ({bytes} bytes), over its topic's caps (queue_max_ready_messages {}, queue_max_ready_bytes {})",
            super::admin::public_name(&self.name),
            cap(config.queue_max_ready_messages),
            cap(config.queue_max_ready_bytes)
        );
        let dlq = dead_letter_topic(&*self.store, &queue)?;
        let mut ops = Vec::new();
        let mut events = Vec::new();
        let now = self.store.clock().now_ms();
        let mut dropped = 0u64;
        // Dead-lettered, or passed over as the queue's filter skips them: both leave
        // the backlog.
        let mut settled = 0u64;
        // Messages whose letter the dead-letter topic refused for good, taken as
        // waiting (ready) this pass: their (level, partition, offset).
        let mut refused: Vec<(u8, u32, u64)> = Vec::new();
        // How many more refused messages the queue may hold pending (the bound).
        let mut room = OVERFLOW_REFUSED_HELD_MAX.saturating_sub(self.pending_count());
        for level in 0..queue.levels {
            for partition in topic.partitions() {
                if settled >= excess {
                    break;
                }
                let id = partition.id();
                let mut passed = Passed::new(&queue, id, level);
                // An unavailable partition is passed over: nothing of it can be read.
                let Ok(log_start) = partition.log_start() else {
                    continue;
                };
                let mut position = passed.from.max(log_start);
                let start = position;
                let mut letters: Vec<Letter> = Vec::new();
                while settled < excess
                    && partition.end_offset().is_ok_and(|end| position < end)
                    && !self.waits_at_damage(id, level, position, now)
                {
                    let want = (excess - settled).min(u64::from(SCAN_RECORDS_PER_ROUND)) as u32;
                    let read = match partition.read(position, want, SCAN_READ_BYTES) {
                        Ok(read) => read,
                        // Stops this partition's pass as it stops deliveries.
                        Err(error @ Error::Corrupt { .. }) => {
                            self.stop_at_damage(id, level, position, &error, now);
                            break;
                        }
                        Err(error) => return Err(error),
                    };
                    self.past_damage(id, level);
                    let mut next = read.next_offset;
                    for record in read.records {
                        if settled >= excess {
                            next = record.offset;
                            break;
                        }
                        let record_level = queue.level_of(record.priority);
                        passed.see(record.offset, record_level);
                        if record_level != level {
                            continue;
                        }
                        if self.filter_skips(filter.as_deref(), &record) {
                            settled += 1;
                            continue;
                        }
                        letters.push(Letter {
                            offset: record.offset,
                            event: HistoryEvent::new(
                                id,
                                record.offset,
                                0,
                                now,
                                Outcome::DeadLettered,
                                0,
                                &Arc::from(""),
                                &reason,
                            ),
                            record: dead_letter_record(
                                super::admin::public_name(&self.name),
                                &queue.topic,
                                id,
                                &record,
                                0,
                                0,
                                0,
                                &reason,
                            ),
                        });
                        settled += 1;
                    }
                    position = next;
                    if read.next_offset == read.end_offset {
                        break;
                    }
                }
                let mut taken = Vec::new();
                if !letters.is_empty() {
                    let target = dlq.partition(dead_letter_partition(&dlq, id))?;
                    let written = self.append_letters(target, &letters, &mut room)?;
                    if let Some(stop) = written.stopped_at {
                        // Out of room for refused messages: the level's cursor stops at
                        // the one that did not fit (the next pass starts there), and
                        // the counts are of the span before it (read again: rare).
                        position = stop;
                        passed = Passed::new(&queue, id, level);
                        count_span(&queue, partition, &mut passed, start, stop)?;
                    }
                    for (letter, outcome) in letters.into_iter().zip(written.outcomes) {
                        match outcome {
                            LetterWritten::Yes => {
                                events.push(letter.event);
                                dropped += 1;
                            }
                            LetterWritten::Refused => {
                                // Stays ready: taken as waiting (due now) and
                                // delivered to members like any other message.
                                taken.push(Taken {
                                    offset: letter.offset,
                                    hold: Hold::Waiting { due_ms: now },
                                });
                                refused.push((level, id, letter.offset));
                            }
                            LetterWritten::NotTried => {}
                        }
                    }
                }
                if position > start || !taken.is_empty() {
                    ops.push(QueueOp::Take {
                        name: self.name.clone(),
                        partition: id,
                        level,
                        cursor_to: position,
                        at_ms: self.store.clock().now_ms(),
                        taken,
                        counts: passed.into_counts(&mut queue, id, position),
                    });
                }
            }
        }
        if !ops.is_empty() {
            self.store.queues().append(ops)?;
        }
        for &(level, partition, offset) in &refused {
            self.due.insert((u8::MAX - level, now, partition, offset));
        }
        if !refused.is_empty() {
            self.counters.overflow_refused += refused.len() as u64;
            tracing::warn!(
                queue = %self.name,
                dead_letter_topic = %queue.config.dead_letter_topic,
                refused = refused.len(),
                "overflow: the dead-letter topic refused letters for good; their messages stay ready (raise the dead-letter topic's max_message_bytes, or purge the queue)"
            );
        }
        self.record(&queue.config, events);
        self.counters.dead_lettered_overflow += dropped;
        Ok(dropped)
    }

    /// The partitions whose new messages the queue stopped delivering at a damaged
    /// batch (each at the lowest offset a level's scan stopped at), as this engine
    /// found them: the rest of each was delivered up to there, the other partitions
    /// deliver on. A stop is forgotten once the batch reads again (`tidelog segment
    /// repair` mended it, or retention deleted it), tried again at most every
    /// [`DAMAGE_RETRY_MS`] while members want deliveries.
    pub fn damaged(&self) -> Vec<Damage> {
        let mut lowest: BTreeMap<u32, &Damage> = BTreeMap::new();
        for stopped in self.stopped.values() {
            let damage = &stopped.damage;
            let entry = lowest.entry(damage.partition).or_insert(damage);
            if damage.offset < entry.offset {
                *entry = damage;
            }
        }
        lowest.into_values().cloned().collect()
    }

    /// Whether `level`'s scan of `partition` from `position` waits at a damaged batch
    /// it stopped at before (read again only after [`DAMAGE_RETRY_MS`]). A stop at
    /// another offset is forgotten (retention moved the cursor past it).
    fn waits_at_damage(&mut self, partition: u32, level: u8, position: u64, now: i64) -> bool {
        let Some(stopped) = self.stopped.get(&(partition, level)) else {
            return false;
        };
        if stopped.damage.offset == position {
            return now < stopped.retry_at_ms;
        }
        self.past_damage(partition, level);
        false
    }

    /// `level`'s scan of `partition` stopped at `position`, where a read failed with
    /// `error` (damage).
    fn stop_at_damage(
        &mut self,
        partition: u32,
        level: u8,
        position: u64,
        error: &Error,
        now: i64,
    ) {
        let known = self
            .stopped
            .values()
            .any(|s| s.damage.partition == partition && s.damage.offset == position);
        let since_ms = self
            .stopped
            .get(&(partition, level))
            .filter(|s| s.damage.offset == position)
            .map_or(now, |s| s.damage.since_ms);
        self.stopped.insert(
            (partition, level),
            Stopped {
                damage: Damage {
                    partition,
                    offset: position,
                    reason: error.to_string(),
                    since_ms,
                },
                retry_at_ms: now.saturating_add(DAMAGE_RETRY_MS),
            },
        );
        self.warn_damage(partition, position, error, now, !known);
    }

    /// Warns of damage at `offset` of `partition` in the log: a `new` finding at
    /// most every [`DAMAGE_RETRY_MS`], one seen before at most every
    /// [`DAMAGE_WARN_INTERVAL_MS`].
    fn warn_damage(&mut self, partition: u32, offset: u64, error: &Error, now: i64, new: bool) {
        let interval = if new {
            DAMAGE_RETRY_MS
        } else {
            DAMAGE_WARN_INTERVAL_MS
        };
        if self
            .damage_warned_ms
            .is_some_and(|at| now.saturating_sub(at) < interval)
        {
            return;
        }
        self.damage_warned_ms = Some(now);
        tracing::warn!(
            queue = %self.name,
            partition,
            offset,
            %error,
            "a damaged batch stops this queue's deliveries from the partition at this offset; the other partitions deliver on (find the damage with `tidelog segment verify`, mend it with `tidelog segment repair` while the broker is stopped)"
        );
    }

    /// `level`'s scan of `partition` read on: a stop there is over.
    fn past_damage(&mut self, partition: u32, level: u8) {
        if let Some(stopped) = self.stopped.remove(&(partition, level)) {
            tracing::info!(
                queue = %self.name,
                partition,
                offset = stopped.damage.offset,
                "the queue reads on past a damaged batch (mended, or deleted by retention)"
            );
        }
    }

    /// Records `events` in the queue's delivery history, after the decisions they tell
    /// of are durable in the queue state (see [`super::history`] for the crash rule):
    /// durably before returning, or, with [`QueueEngine::defer_history`], submitted
    /// for the owner to wait for.
    /// Records the events of a decision the queue state already holds. A failure
    /// (a full disk, a history file poisoned by a failed fsync) does not undo or fail
    /// the decision: members got, or get, what it decided; the history lacks these
    /// events, as after a crash, and the failure is counted and logged
    /// ([`QueueHistory::failed`]).
    fn record(&mut self, config: &QueueConfig, events: Vec<HistoryEvent>) {
        if events.is_empty() {
            return;
        }
        let count = events.len();
        let history = match self.store.live_queue_history(&self.name, self.created_ms) {
            Ok(Some(history)) => history,
            // Deleted since it decided: no history to record them in.
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(queue = %self.name, %error, events = count, "the queue's delivery history could not be opened; the queue goes on without these events");
                return;
            }
        };
        let recorded = if self.history_deferred {
            history
                .submit(events, config.history_retention_ms)
                .map(|submitted| {
                    if let Some(submitted) = submitted {
                        self.history_submitted.push((history.clone(), submitted));
                    }
                })
        } else {
            history.append(events, config.history_retention_ms)
        };
        if let Err(error) = recorded {
            history.failed(count, &error);
        }
        self.counters.history_failed_events = history.failed_events();
    }

    /// With `deferred`, the calls that record history (deliver, settle, tick,
    /// enforce_caps) return once their decisions are durable in the queue state and
    /// their history events are submitted, not yet durable: the owner takes them with
    /// [`QueueEngine::take_history`] after each call and waits for them before it
    /// hands out deliveries or answers, after letting go of the engine. So the
    /// history's fsync of one call overlaps the queue state's fsync of the next, and
    /// a decision's events still follow its state (the crash rule holds).
    pub fn defer_history(&mut self, deferred: bool) {
        self.history_deferred = deferred;
    }

    /// The history events submitted since the last call (see
    /// [`QueueEngine::defer_history`]).
    pub fn take_history(&mut self) -> HistoryWait {
        HistoryWait(std::mem::take(&mut self.history_submitted))
    }

    /// Appends the dead letter of a pending message to the queue's dead-letter topic
    /// (creating it if needed), durably, and returns the operation that settles it: a
    /// [`QueueOp::DeadLetter`], or, when the message is gone (expired, or removed by
    /// retention, while it was held), a [`QueueOp::Ack`] that settles it without a
    /// letter (none was written, so none is recorded or counted; see
    /// [`QueueEngine::letter_written`]).
    fn dead_letter(
        &self,
        queue: &Queue,
        partition: u32,
        offset: u64,
        pending: &Pending,
        reason: &str,
    ) -> Result<QueueOp> {
        let reason = truncate_utf8(reason, super::state::REASON_BYTES_MAX).to_string();
        let topic = self.store.topic(&queue.topic)?;
        if let Some(record) = read_one(&topic, partition, offset)? {
            let letter = dead_letter_record(
                super::admin::public_name(&self.name),
                &queue.topic,
                partition,
                &record,
                pending.attempts,
                pending.first_delivery_ms,
                pending.last_delivery_ms,
                &reason,
            );
            let dlq = dead_letter_topic(&*self.store, queue)?;
            dlq.partition(dead_letter_partition(&dlq, partition))?
                .append_durable_allowing(&[letter], DLQ_HEADERS_BYTES_MAX)?;
        } else {
            return Ok(QueueOp::Ack {
                name: self.name.clone(),
                partition,
                ranges: vec![(offset, offset)],
            });
        }
        Ok(QueueOp::DeadLetter {
            name: self.name.clone(),
            partition,
            offset,
            reason,
        })
    }
}

impl QueueEngine {
    /// Whether `op`, from [`QueueEngine::dead_letter`], wrote a dead letter; if not,
    /// the message was gone and is counted as lost to retention, as a redelivery
    /// that finds it gone counts it.
    fn letter_written(&mut self, op: &QueueOp) -> bool {
        let written = matches!(op, QueueOp::DeadLetter { .. });
        if !written {
            self.counters.lost_to_retention += 1;
        }
        written
    }
}

impl QueueEngine {
    /// Drops the pending messages of the queue that retention deleted from `topic`
    /// ([`QueuePartition::deleted_pending`]: held by a member, waiting or delayed, below
    /// the log's start), durably (one append, only when there are some): each is
    /// settled without a dead letter (there is nothing left to write) and counted lost
    /// to retention, and a member holding one no longer counts it towards
    /// `max_unacked_per_member`. Its member's settlement of it is then NOT_FOUND saying
    /// retention deleted it ([`QueueEngine::deleted_by_retention`]). No history event
    /// is recorded; its delivery status says retention deleted it. Called as the
    /// engine follows retention ([`QueueEngine::follow_retention`]), before its timers
    /// run and before settlements are judged, so a lease on a deleted message never
    /// stays until its deadline. A partition recovery refused to open has nothing to
    /// drop.
    fn drop_deleted(&mut self, topic: &Topic) -> Result<()> {
        // Only the partitions whose lowest pending message is below the log's start
        // are read further: the cost of a call with nothing to drop is one look at
        // the state and at the bounds of the partitions holding pending messages.
        let firsts: Vec<(u32, u64)> = self.store.queues().read(|q| {
            self.this(q).map_or_else(Vec::new, |queue| {
                queue
                    .partitions
                    .iter()
                    .filter_map(|(&id, part)| Some((id, part.pending.first_offset()?)))
                    .collect()
            })
        });
        let starts: Vec<(u32, u64)> = firsts
            .into_iter()
            .filter_map(|(id, first)| {
                let start = topic.partition(id).ok()?.log_start().ok()?;
                (first < start).then_some((id, start))
            })
            .collect();
        if starts.is_empty() {
            return Ok(());
        }
        type Gone = Vec<(u32, Vec<(u64, Option<(Arc<str>, u32)>)>)>;
        let gone: Gone = self.store.queues().read(|q| {
            let Some(queue) = self.this(q) else {
                return Vec::new();
            };
            starts
                .iter()
                .filter_map(|&(id, start)| {
                    let gone: Vec<_> = queue
                        .partitions
                        .get(&id)?
                        .deleted_pending(start)
                        .map(|(offset, pending)| {
                            let holder = match &pending.hold {
                                Hold::Leased { member, .. } => {
                                    Some((member.clone(), pending.attempts))
                                }
                                _ => None,
                            };
                            (offset, holder)
                        })
                        .collect();
                    (!gone.is_empty()).then_some((id, gone))
                })
                .collect()
        });
        if gone.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(gone.len());
        for (partition, messages) in &gone {
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for &(offset, _) in messages {
                match ranges.last_mut() {
                    Some(last) if last.1 + 1 == offset => last.1 = offset,
                    _ => ranges.push((offset, offset)),
                }
            }
            ops.push(QueueOp::Ack {
                name: self.name.clone(),
                partition: *partition,
                ranges,
            });
        }
        self.store.queues().append(ops)?;
        let mut dropped = 0u64;
        for (partition, messages) in gone {
            for (offset, holder) in messages {
                dropped += 1;
                let Some((member, attempt)) = holder else {
                    continue;
                };
                // A restored lease was never counted for a member of this run.
                if self.restored(partition, offset, attempt) {
                    self.restored.remove(&(partition, offset));
                } else if let Some(count) = self.members.get_mut(&member) {
                    *count = count.saturating_sub(1);
                }
            }
        }
        self.counters.lost_to_retention += dropped;
        tracing::info!(queue = %self.name, dropped, "pending messages retention deleted dropped from the queue");
        Ok(())
    }

    /// The log start of `partition` when retention deleted `offset` there (it is below
    /// it), for the answer to a settlement of a message that is not pending.
    fn deleted_by_retention(&self, partition: u32, offset: u64) -> Option<u64> {
        let topic = self
            .store
            .queues()
            .read(|q| self.this(q).map(|queue| queue.topic.clone()))?;
        let start = self
            .store
            .topic(&topic)
            .ok()?
            .partition(partition)
            .ok()?
            .log_start()
            .ok()?;
        (offset < start).then_some(start)
    }

    /// Follows retention: first drops the pending messages it deleted
    /// ([`QueueEngine::drop_deleted`], appended at once). Then, in the engine's view of
    /// `queue` (a queue with priority levels), pushes the takes that make the state
    /// follow it onto `ops`: in each partition
    /// of `topic` where retention deleted the log past the slowest level's cursor,
    /// every level whose cursor it passed moves to the log's start, and the counts of
    /// what the faster levels took ahead ([`QueuePartition::ahead`]) become what they
    /// took from the log's start to their cursors, counted again over the log. Without
    /// it those counts keep the messages of the deleted span, which no scan passes any
    /// more to take off, and the ready count ([`QueuePartition::untaken`]) subtracts
    /// them from what is left (hunt 10c). The untaken messages of the deleted span are
    /// counted lost to retention. The first take carries the whole change of the
    /// counts, so a crash keeps the counts before or after, each exact for its
    /// cursors. It reads what the faster levels took past the log's start, once per
    /// cut past the slowest cursor (the slowest level's scan reads it again as it
    /// catches up); a read that fails (damage, or retention moving on) leaves the
    /// partition to the scans as before, tried again after [`DAMAGE_RETRY_MS`].
    fn follow_retention(
        &mut self,
        queue: &mut Queue,
        topic: &Topic,
        now: i64,
        ops: &mut Vec<QueueOp>,
    ) -> Result<()> {
        self.drop_deleted(topic)?;
        if queue.levels <= 1 {
            return Ok(());
        }
        for partition in topic.partitions() {
            let id = partition.id();
            let Ok(log_start) = partition.log_start() else {
                continue;
            };
            let part = view_partition(queue, id);
            let slowest = part.slowest();
            if slowest >= log_start
                || self
                    .recount_retry
                    .get(&id)
                    .is_some_and(|&(start, at)| start == log_start && now < at)
            {
                continue;
            }
            let (cursors, before) = (part.cursors.clone(), part.ahead.clone());
            // Each level's messages from the log's start to its cursor: all taken.
            let mut took = vec![0u64; cursors.len()];
            let top = cursors.iter().copied().max().unwrap_or(0);
            let counted = each_level(queue, partition, log_start, top, |offset, level| {
                let level = usize::from(level);
                if let (Some(&cursor), Some(took)) = (cursors.get(level), took.get_mut(level))
                    && offset < cursor
                {
                    *took += 1;
                }
            });
            match counted {
                Ok(()) => {
                    self.recount_retry.remove(&id);
                }
                Err(
                    Error::Corrupt { .. }
                    | Error::OffsetOutOfRange { .. }
                    | Error::PartitionUnavailable { .. },
                ) => {
                    let retry_at = now.saturating_add(DAMAGE_RETRY_MS);
                    self.recount_retry.insert(id, (log_start, retry_at));
                    continue;
                }
                Err(error) => return Err(error),
            }
            // The slowest first: its take sets every count, the others' change none.
            let mut passed: Vec<u8> = (0..queue.levels)
                .filter(|&level| cursors[usize::from(level)] < log_start)
                .collect();
            passed.sort_by_key(|&level| (cursors[usize::from(level)], level));
            for level in passed {
                let part = view_partition(queue, id);
                let ahead = part
                    .ahead
                    .iter()
                    .zip(&took)
                    .map(|(&ahead, &took)| took as i64 - ahead as i64)
                    .collect();
                let counts = TakeCounts {
                    from: part.cursors[usize::from(level)],
                    ahead,
                };
                part.take(level, log_start, Some(&counts));
                ops.push(QueueOp::Take {
                    name: self.name.clone(),
                    partition: id,
                    level,
                    cursor_to: log_start,
                    at_ms: now,
                    taken: Vec::new(),
                    counts: Some(counts),
                });
            }
            // The deleted span less what faster levels took there.
            let taken_there: u64 = before
                .iter()
                .zip(&took)
                .map(|(&ahead, &took)| ahead.saturating_sub(took))
                .sum();
            self.counters.lost_to_retention += (log_start - slowest).saturating_sub(taken_there);
        }
        Ok(())
    }
}

/// What one level's scan of one partition passed (the messages behind its new cursor,
/// counted by level), for the [`TakeCounts`] its take carries: they keep the state's
/// count of each level's messages taken ahead of the slowest level
/// ([`QueuePartition::ahead`]), so a queue's ready count is exact without reading the
/// log ([`QueuePartition::untaken`]).
#[derive(Debug)]
struct Passed {
    level: u8,
    /// The level's cursor in the engine's view of the state: where the scan starts
    /// (or at the log's start, if retention passed it).
    from: u64,
    /// Records below it move the slowest cursor if passed: the lowest of the other
    /// levels' cursors when this level is the slowest, else `from` (none do).
    cut: u64,
    /// This level's records passed.
    own: u64,
    /// Per level, its records passed below `cut`.
    below: Vec<u64>,
    /// Whether the queue has levels to count (a single-level queue's count is 0).
    counted: bool,
}

impl Passed {
    /// Counts for a scan of `level` in `partition`, from its cursor in `queue` (the
    /// engine's view, kept up to date with the takes of the same round).
    fn new(queue: &Queue, partition: u32, level: u8) -> Passed {
        let cursors = queue
            .partitions
            .get(&partition)
            .map(|p| p.cursors.clone())
            .unwrap_or_else(|| vec![0; usize::from(queue.levels.max(1))]);
        let from = cursors.get(usize::from(level)).copied().unwrap_or(0);
        let others = cursors
            .iter()
            .enumerate()
            .filter(|&(k, _)| k != usize::from(level))
            .map(|(_, &c)| c)
            .min();
        let slowest = others.is_none_or(|others| from <= others);
        Passed {
            level,
            from,
            cut: if slowest {
                others.unwrap_or(u64::MAX)
            } else {
                from
            },
            own: 0,
            below: vec![0; cursors.len()],
            counted: queue.levels > 1,
        }
    }

    /// The record at `offset`, of level `level`, is behind the scan's cursor now.
    fn see(&mut self, offset: u64, level: u8) {
        if level == self.level {
            self.own += 1;
        }
        if offset < self.cut
            && let Some(below) = self.below.get_mut(usize::from(level))
        {
            *below += 1;
        }
    }

    /// The take's counts (None for a single-level queue), and the engine's view of
    /// the state moved as the take moves it, for the next level's scan.
    fn into_counts(self, queue: &mut Queue, partition: u32, cursor_to: u64) -> Option<TakeCounts> {
        let counts = self.counted.then(|| {
            let mut ahead: Vec<i64> = self.below.iter().map(|&b| -(b as i64)).collect();
            if let Some(own) = ahead.get_mut(usize::from(self.level)) {
                *own += self.own as i64;
            }
            TakeCounts {
                from: self.from,
                ahead,
            }
        });
        view_partition(queue, partition).take(self.level, cursor_to, counts.as_ref());
        counts
    }
}

/// The engine's view of `partition` in `queue` (made as the state makes a partition
/// it has not seen: every cursor at 0).
fn view_partition(queue: &mut Queue, partition: u32) -> &mut QueuePartition {
    let levels = queue.levels.max(1);
    queue
        .partitions
        .entry(partition)
        .or_insert_with(|| QueuePartition::new(levels, 0))
}

/// Counts into `passed` every record of `partition` from `from` to `to` (what a scan
/// that stopped at `to` passed).
fn count_span(
    queue: &Queue,
    partition: &Partition,
    passed: &mut Passed,
    from: u64,
    to: u64,
) -> Result<()> {
    each_level(queue, partition, from, to, |offset, level| {
        passed.see(offset, level)
    })
}

/// Calls `f` with the offset and level of every record of `partition` from `from`
/// (or the log's start, if retention passed it) to `to`.
fn each_level(
    queue: &Queue,
    partition: &Partition,
    from: u64,
    to: u64,
    mut f: impl FnMut(u64, u8),
) -> Result<()> {
    let mut position = from.max(partition.log_start()?);
    while position < to {
        let read = partition.read(position, SCAN_RECORDS_PER_ROUND, SCAN_READ_BYTES)?;
        for record in &read.records {
            if record.offset >= to {
                return Ok(());
            }
            f(record.offset, queue.level_of(record.priority));
        }
        if read.next_offset == read.end_offset || read.next_offset <= position {
            break;
        }
        position = read.next_offset;
    }
    Ok(())
}

/// Messages whose overflow dead letter the dead-letter topic refused for good that a
/// queue holds pending (ready, waiting for a member) at most: past it, the overflow
/// pass stops at a refused message instead of taking it, so a dead-letter topic that
/// refuses every letter cannot turn the whole backlog into pending state (memory is
/// bounded by what is in flight, not by the backlog).
pub const OVERFLOW_REFUSED_HELD_MAX: u64 = 10_000;

/// One overflow dead letter of [`QueueEngine::enforce_caps`]: the message's offset,
/// the letter, and its history event (recorded if it is written).
struct Letter {
    offset: u64,
    record: crate::batch::NewRecord,
    event: HistoryEvent,
}

/// What became of one [`Letter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LetterWritten {
    Yes,
    /// Refused for good: its message is taken as waiting (ready).
    Refused,
    /// Not tried: the pass stopped before it.
    NotTried,
}

/// What [`QueueEngine::append_letters`] did: an outcome per letter, and the offset
/// the pass stopped at (out of room for refused messages), if it did.
struct LettersWritten {
    outcomes: Vec<LetterWritten>,
    stopped_at: Option<u64>,
}

impl QueueEngine {
    /// Pending messages of this queue now.
    fn pending_count(&self) -> u64 {
        self.store.queues().read(|q| {
            self.this(q).map_or(0, |queue| {
                queue
                    .partitions
                    .values()
                    .map(|p| p.pending.len() as u64)
                    .sum()
            })
        })
    }

    /// Appends `letters` (in offset order) to `target` durably, in batches; a batch
    /// the dead-letter topic refuses for good is tried letter by letter, so a letter
    /// it refuses (too large for it) does not keep the others out. A refused letter
    /// uses one of `room`; with none left the pass stops at it (it and the letters
    /// after it are not tried). A passing failure (I/O, a poisoned partition) is
    /// returned: the pass is tried again later (letters already written may then be
    /// written twice: dead letters are at least once).
    fn append_letters(
        &mut self,
        target: &Arc<Partition>,
        letters: &[Letter],
        room: &mut u64,
    ) -> Result<LettersWritten> {
        let records: Vec<crate::batch::NewRecord> =
            letters.iter().map(|l| l.record.clone()).collect();
        let mut outcomes = vec![LetterWritten::NotTried; letters.len()];
        let mut done = 0;
        for chunk in letter_batches(&records) {
            let first = done;
            done += chunk.len();
            let error = match target.append_durable_allowing(chunk, DLQ_HEADERS_BYTES_MAX) {
                Ok(_) => {
                    outcomes[first..done].fill(LetterWritten::Yes);
                    continue;
                }
                Err(error) if letter_refused_for_good(&error) => error,
                Err(error) => return Err(error),
            };
            tracing::debug!(queue = %self.name, %error, "an overflow batch was refused; trying its letters one by one");
            for i in first..done {
                match target.append_durable_allowing(&records[i..=i], DLQ_HEADERS_BYTES_MAX) {
                    Ok(_) => outcomes[i] = LetterWritten::Yes,
                    Err(error) if letter_refused_for_good(&error) => {
                        if *room == 0 {
                            return Ok(LettersWritten {
                                outcomes,
                                stopped_at: Some(letters[i].offset),
                            });
                        }
                        *room -= 1;
                        tracing::warn!(queue = %self.name, partition = letters[i].event.partition, offset = letters[i].offset, %error, "overflow dead letter refused for good; the message stays ready");
                        outcomes[i] = LetterWritten::Refused;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(LettersWritten {
            outcomes,
            stopped_at: None,
        })
    }
}

/// Whether the dead-letter topic refuses a letter for good (see
/// [`LetterFailure::ForGood`]): trying it again changes nothing.
fn letter_refused_for_good(error: &Error) -> bool {
    matches!(error, Error::TooLarge { .. } | Error::InvalidArgument(_))
}

/// Why a dead letter could not be written, for its caller to act on.
pub(super) enum LetterFailure {
    /// The dead-letter topic refuses it (too large for its `max_message_bytes`, too
    /// many headers, a name it cannot be created with): trying again changes nothing,
    /// so the message waits for a redelivery instead, with this reason, and stays
    /// pending (the operator raises the dead-letter topic's limit, or purges it).
    ForGood(String),
    /// An I/O error, a poisoned or closed partition: tried again
    /// [`DEAD_LETTER_RETRY_MS`] later, the message's state unchanged until then.
    Passing,
}

/// Wait before a dead letter that failed for a passing cause is tried again, in ms.
pub(super) const DEAD_LETTER_RETRY_MS: i64 = 1000;

impl QueueEngine {
    /// Judges a failed dead letter of `partition`/`offset` (logging it): for good or
    /// passing. A passing failure sets the timer that gives up the lease again later.
    pub(super) fn dead_letter_failed(
        &mut self,
        partition: u32,
        offset: u64,
        error: &Error,
    ) -> LetterFailure {
        let for_good = letter_refused_for_good(error);
        tracing::warn!(queue = %self.name, partition, offset, %error, for_good, "dead letter not written");
        if for_good {
            let why = format!("its dead letter was refused, so it is delivered again: {error}");
            return LetterFailure::ForGood(
                truncate_utf8(&why, super::state::REASON_BYTES_MAX).to_string(),
            );
        }
        let at = self
            .store
            .clock()
            .now_ms()
            .saturating_add(DEAD_LETTER_RETRY_MS);
        self.timers.insert((at, Timer::Deadline, partition, offset));
        LetterFailure::Passing
    }
}

/// The history's dead-lettered event of `op`, a [`QueueOp::DeadLetter`] from
/// [`QueueEngine::dead_letter`], for the delivery `attempt` that `member` held at
/// `now_ms`.
fn dead_lettered_event(
    op: &QueueOp,
    attempt: u32,
    now_ms: i64,
    member: &Arc<str>,
) -> Option<HistoryEvent> {
    let QueueOp::DeadLetter {
        partition,
        offset,
        reason,
        ..
    } = op
    else {
        return None;
    };
    Some(HistoryEvent::new(
        *partition,
        *offset,
        attempt,
        now_ms,
        Outcome::DeadLettered,
        0,
        member,
        reason,
    ))
}

/// Most dead letters appended as one batch, and most bytes (what
/// `max_message_bytes` counts) of the letters of one batch after its first: a batch
/// of large letters stays far below [`crate::limits::BATCH_BYTES_MAX`].
const LETTER_BATCH_RECORDS_MAX: usize = 1000;
const LETTER_BATCH_BYTES_MAX: u64 = 8 * 1024 * 1024;
const _: () = assert!(
    LETTER_BATCH_BYTES_MAX + crate::limits::MESSAGE_BYTES_MAX + DLQ_HEADERS_BYTES_MAX
        < crate::limits::BATCH_BYTES_MAX / 2
);

/// `letters` in batches of at most [`LETTER_BATCH_RECORDS_MAX`] records and about
/// [`LETTER_BATCH_BYTES_MAX`] bytes (each batch takes at least one letter).
fn letter_batches(letters: &[crate::batch::NewRecord]) -> Vec<&[crate::batch::NewRecord]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, letter) in letters.iter().enumerate() {
        let size = letter.payload_bytes();
        if i > start
            && (i - start >= LETTER_BATCH_RECORDS_MAX || bytes + size > LETTER_BATCH_BYTES_MAX)
        {
            batches.push(&letters[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < letters.len() {
        batches.push(&letters[start..]);
    }
    batches
}

/// The record at `offset` of `partition`, or None when it is gone (retention) or
/// expired.
fn read_one(topic: &Topic, partition: u32, offset: u64) -> Result<Option<Record>> {
    let partition = topic.partition(partition)?;
    let (log_start, end) = partition.bounds()?;
    if offset < log_start || offset >= end {
        return Ok(None);
    }
    let read = partition.read(offset, 1, 0)?;
    Ok(read.records.into_iter().find(|r| r.offset == offset))
}

/// `queue`'s dead-letter topic, created with one partition and
/// [`dead_letter_topic_config`] if missing (owned by no one: it counts towards no
/// principal's topic limit). Its own
/// topic is refused for good (InvalidArgument): each letter would be a new message of
/// the queue, a poison message written again at every last attempt for ever. So is
/// creating one whose name a client could not create
/// ([`crate::queue::validate_dead_letter_topic`]: the reserved `__` prefix). Create and
/// AlterQueue refuse such configs; a queue stored with one before they did sends such
/// messages back for redelivery instead, with this reason.
fn dead_letter_topic(store: &dyn QueueHost, queue: &Queue) -> Result<Arc<Topic>> {
    let name = queue.config.dead_letter_topic.as_str();
    if name == queue.topic {
        return Err(Error::invalid(format!(
            "dead_letter_topic {name:?} is the queue's own topic, whose dead letters it would deliver again for ever: set another with AlterQueue (tidelog queue alter --dead-letter-topic)"
        )));
    }
    match store.topic(name) {
        Ok(topic) => Ok(topic),
        Err(Error::NotFound { .. }) => match crate::queue::validate_dead_letter_topic(name)
            .map_err(|e| match e {
                Error::InvalidArgument(message) => Error::invalid(format!(
                    "{message}: set another with AlterQueue (tidelog queue alter --dead-letter-topic)"
                )),
                other => other,
            })
            .and_then(|()| store.create_topic(name, 1, dead_letter_topic_config(store, name)))
        {
            Ok(topic) => Ok(topic),
            Err(Error::AlreadyExists { .. }) => store.topic(name),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    }
}

/// The config of dead-letter topic `name` when the broker creates it: the defaults,
/// with `max_message_bytes` raised to the largest of the topics whose queues write
/// letters to it (a pattern queue's topics, or several queues naming one topic), so
/// any message its topic accepted can be dead-lettered (the letter's headers may pass
/// the limit by [`DLQ_HEADERS_BYTES_MAX`]). Sized once: a topic that exists is the
/// operator's to alter, whoever created it (see the README's "Dead letters and
/// redrive").
fn dead_letter_topic_config(store: &dyn QueueHost, name: &str) -> TopicConfig {
    let topics: BTreeSet<String> = store.queues().read(|q| {
        q.iter()
            .filter(|queue| queue.config.dead_letter_topic == name)
            .map(|queue| queue.topic.clone())
            .collect()
    });
    let mut config = TopicConfig::default();
    for topic in topics.iter().filter_map(|topic| store.topic(topic).ok()) {
        config.max_message_bytes = config
            .max_message_bytes
            .max(topic.config().max_message_bytes);
    }
    config
}

/// The dead-letter partition for a message of `partition`: the same number if the
/// dead-letter topic has it, else the last.
fn dead_letter_partition(dlq: &Topic, partition: u32) -> u32 {
    partition.min(dlq.partitions().len().saturating_sub(1) as u32)
}
