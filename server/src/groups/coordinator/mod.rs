//! The group coordinator: who is in which group, which member owns which partition,
//! the generation, and the rules for commits, resets and deletes that depend on them.
//!
//! # Model
//!
//! A *member* is one Subscribe stream with group membership (plus, after that stream
//! ends, up to `session_timeout_ms` of grace in which a reconnect with the same
//! member id keeps its partitions). A member subscribes to one topic or to a topic
//! pattern ([`Subscription`]); members of a group may subscribe differently. The
//! coordinator assigns per `(topic, partition)`: each topic's partitions are split
//! among the members whose subscription includes it with the range assignor, and
//! one generation counter covers the whole group (as in Kafka), so any rebalance
//! makes every member's older generation stale.
//!
//! No assignment outlives its topic: [`GroupCoordinator::topic_deleted`] rebalances
//! every group with a member that read the deleted topic, a member kept by its
//! session timeout too (its partitions of it go, and the generation moves on, so a
//! commit made for the old incarnation is refused as stale);
//! [`GroupCoordinator::topic_created`] rebalances the groups with members subscribed
//! to the new topic; and a reconnect whose topics changed since the last rebalance
//! (gone, or another incarnation) rebalances instead of getting its old partitions
//! back.
//!
//! # Patterns
//!
//! A pattern member's topics are those the pattern matches (and, under `--auth`, the
//! member's caller may consume) at the last rebalance, kept in `Member::matched`.
//! [`GroupCoordinator::rescan_topics`] runs every [`TOPIC_RESCAN_INTERVAL`] (from the
//! session reaper's loop) and at once on CreateTopic / DeleteTopic / CreatePartitions:
//! when any pattern member's matched set (names, incarnations, partition counts)
//! differs from the store's, its group rebalances. So a new matching topic is
//! assigned within a second, and a deleted one leaves every Assignment without ending
//! a pattern member's stream (a member subscribed to that one topic by name still
//! ends with NOT_FOUND, as before patterns).
//!
//! # Invariants
//!
//! - **One reader per partition.** Delivery of a `(group, topic, partition)` needs
//!   its *lease*, a one-permit semaphore held by the member task that reads it. A
//!   revoked partition is released only after the old owner stopped reading it and
//!   (with auto-commit) committed its position; the new owner acquires the lease and
//!   only then reads the committed offset. So no message is delivered to two members
//!   of one generation, and an auto-committing group never skips or repeats.
//! - **Membership changes and offset administration do not interleave.** Joining a
//!   group takes [`GroupCoordinator::admin_gate`] shared; an admin commit, a reset or a
//!   delete takes it exclusively for its check ("no live members") and its write, so
//!   a consumer cannot join between the check and the write and start from offsets
//!   that are about to change.
//! - **Final commits precede departure.** A member task commits its position before it
//!   reports its stream's end, so once the coordinator lists a group as empty no late
//!   auto-commit can overwrite a reset.
//!
//! State lives behind one `std::sync::Mutex`, held only for short in-memory work and
//! never across an `.await` or an fsync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tidelog_storage::limits::GROUP_ID_BYTES_MAX;
use tidelog_storage::{Clock, Store, Topic, TopicPattern};
use tokio::sync::{Notify, RwLock, Semaphore, mpsc};
use tonic::Status;

use super::assignment::range_assign;
use crate::read::{TOPIC_RESCAN_INTERVAL, TopicAccess};

/// One partition of one topic: what the coordinator assigns and a member commits.
pub(crate) type TopicPartition = (String, u32);

/// What a member reads.
#[derive(Clone)]
pub(crate) enum Subscription {
    /// One topic, by name. Its deletion ends the member's stream with NOT_FOUND.
    Topic(String),
    /// Every topic the pattern matches (and `allowed` lets through), as they come and
    /// go.
    Pattern {
        pattern: Arc<TopicPattern>,
        allowed: Option<TopicAccess>,
    },
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subscription::Topic(topic) => write!(f, "Topic({topic:?})"),
            Subscription::Pattern { pattern, allowed } => write!(
                f,
                "Pattern({:?}, access checked: {})",
                pattern.as_str(),
                allowed.is_some()
            ),
        }
    }
}

impl Subscription {
    pub(crate) fn is_pattern(&self) -> bool {
        matches!(self, Subscription::Pattern { .. })
    }

    fn includes(&self, topic: &str) -> bool {
        match self {
            Subscription::Topic(name) => name == topic,
            Subscription::Pattern { pattern, allowed } => {
                pattern.matches(topic) && allowed.as_ref().is_none_or(|a| a.allows(topic))
            }
        }
    }

    /// Same topic, or same pattern text.
    fn same_as(&self, other: &Subscription) -> bool {
        match (self, other) {
            (Subscription::Topic(a), Subscription::Topic(b)) => a == b,
            (
                Subscription::Pattern { pattern: a, .. },
                Subscription::Pattern { pattern: b, .. },
            ) => a.as_str() == b.as_str(),
            _ => false,
        }
    }

    /// The topics of `all` it includes, with their partition counts.
    fn matched(&self, all: &[Arc<Topic>]) -> Matched {
        all.iter()
            .filter(|t| self.includes(t.name()))
            .map(|t| (t.name().to_string(), (t.clone(), t.partitions().len())))
            .collect()
    }
}

/// A member's topics at the last rebalance: name -> (the topic, its partition count).
type Matched = BTreeMap<String, (Arc<Topic>, usize)>;

/// Whether two matched sets name the same incarnations with the same counts.
fn same_matched(a: &Matched, b: &Matched) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((na, (ta, ca)), (nb, (tb, cb)))| na == nb && ca == cb && ta.is_same_topic(tb))
}

/// Whether `member`'s topic `name` at its last rebalance differs from `now`, the
/// store's topic of that name now (`None`: there is none): it went, came, came back
/// as another incarnation (deleted and created again) or changed its partition count.
fn stale_on(member: &Member, name: &str, now: Option<&Arc<Topic>>) -> bool {
    let now = now.filter(|_| member.subscription.includes(name));
    match (member.matched.get(name), now) {
        (None, None) => false,
        (Some((mine, count)), Some(now)) => {
            !mine.is_same_topic(now) || *count != now.partitions().len()
        }
        _ => true,
    }
}

/// Longest session timeout a member may ask for; longer requests are capped. A
/// member kept this long after its stream ended blocks its partitions that long.
pub const SESSION_TIMEOUT_MS_MAX: u64 = 5 * 60 * 1000;
/// Longest member id the broker looks up; longer ones are unknown ids.
pub const MEMBER_ID_BYTES_MAX: usize = 255;
/// The session reaper looks at the clock at least this often.
pub const REAPER_TICK_MAX: Duration = Duration::from_secs(1);

/// What the coordinator tells a member's delivery task.
#[derive(Debug)]
pub(crate) enum Control {
    /// The member's partitions from this generation on. The task stops reading
    /// partitions not listed, then sends the Assignment event, then starts the new ones.
    Assign {
        generation: u64,
        /// Sorted.
        partitions: Vec<TopicPartition>,
        /// Every topic the member's subscription includes, by name (for a pattern
        /// member, those with no partition of its own too).
        topics: BTreeMap<String, Arc<Topic>>,
    },
    /// End the stream with this status (ABORTED when taken over, NOT_FOUND when the
    /// topic is deleted, UNAVAILABLE at shutdown).
    End(Status),
    /// The client committed in `generation`, so it has seen that generation's
    /// Assignment: hand over the partitions kept for it that were revoked by then.
    HandOver { generation: u64 },
}

/// A group's state as `DescribeGroup` and `ListGroups` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStatus {
    /// No live members; the group only has committed offsets.
    Empty,
    /// Some connected member has not been sent its latest assignment yet.
    Rebalancing,
    /// Every connected member has its assignment.
    Stable,
}

/// A live member as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub member_id: String,
    pub client_id: String,
    pub client_address: String,
    /// The member's one topic; empty for a pattern member.
    pub topic: String,
    /// The member's pattern; empty for a member of one topic.
    pub topic_pattern: String,
    /// Its partitions, sorted by topic then partition.
    pub partitions: Vec<TopicPartition>,
    /// Every topic it read at the last rebalance, with its partitions of each
    /// (possibly none), sorted.
    pub topics: Vec<(String, Vec<u32>)>,
    /// The filter of its stream, as the client wrote it; empty = none.
    pub filter: String,
    /// `None` while its Subscribe stream is open. After the stream ended (the client
    /// was killed, or lost its connection) the member is kept, partitions and all, for
    /// a reconnect: then how long until its session timeout removes it, in ms (0 =
    /// at the next look of the session reaper).
    pub session_expires_in_ms: Option<u64>,
}

/// The group's position on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLagView {
    pub topic: String,
    pub partition: u32,
    pub committed: Option<u64>,
    /// 0 when the partition is unavailable.
    pub log_start: u64,
    /// 0 when the partition is unavailable.
    pub end: u64,
    /// `end - committed` (0 when the commit is ahead); `None` without a commit, or
    /// when the partition is unavailable (its end is unknown).
    pub lag: Option<u64>,
    /// Without a commit: `end - log_start`, the messages the group has committed
    /// nothing past (a member starts there only with reset policy EARLIEST; LATEST
    /// skips them). `None` with a commit, or when the partition is unavailable.
    pub lag_from_log_start: Option<u64>,
    /// Why recovery refused to open the partition, when it did: its offsets and lag
    /// are unknown until it is repaired (shown as unavailable, never as 0).
    pub unavailable: Option<String>,
}

/// A group with its members and, per partition, committed offset and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub group_id: String,
    pub status: GroupStatus,
    pub generation: u64,
    /// Sorted by member id.
    pub members: Vec<MemberView>,
    /// Every partition of every topic the group has committed offsets on or a member
    /// reads (committed or not), sorted by topic then partition.
    pub partitions: Vec<PartitionLagView>,
}

/// One line of `ListGroups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummaryView {
    pub group_id: String,
    pub status: GroupStatus,
    pub member_count: u32,
}

/// What a joining member asks for (validated by the caller).
#[derive(Debug, Clone)]
pub(crate) struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub subscription: Subscription,
    pub client_id: String,
    pub client_address: String,
    pub session_timeout_ms: u64,
    /// The stream's filter (for describe); empty = none.
    pub filter: String,
}

/// A successful join: the id actually used and the task's control channel.
#[derive(Debug)]
pub(crate) struct Joined {
    pub member_id: String,
    pub stream_id: u64,
    pub control: mpsc::UnboundedReceiver<Control>,
}

#[derive(Debug)]
enum Connection {
    /// A Subscribe stream is open for the member.
    Open {
        stream_id: u64,
        control: mpsc::UnboundedSender<Control>,
        /// The newest generation whose Assignment event the task has sent.
        delivered_generation: Option<u64>,
    },
    /// The stream ended at `since_ms` (coordinator clock); the member expires at
    /// `since_ms + session_timeout_ms` unless it reconnects.
    Gone { since_ms: i64 },
}

#[derive(Debug)]
struct Member {
    client_id: String,
    client_address: String,
    subscription: Subscription,
    /// The topics its subscription included at the last rebalance.
    matched: Matched,
    filter: String,
    session_timeout_ms: u64,
    /// Sorted.
    partitions: Vec<TopicPartition>,
    /// Revoked partitions the member's task still keeps for the client's commit (a
    /// handover window); the member may commit them in the current generation.
    revoking: BTreeSet<TopicPartition>,
    connection: Connection,
}

impl Member {
    /// When (coordinator clock, ms) the session timeout removes the member: `None`
    /// while its stream is open.
    fn expires_at_ms(&self) -> Option<i64> {
        match self.connection {
            Connection::Gone { since_ms } => {
                Some(since_ms.saturating_add(self.session_timeout_ms as i64))
            }
            Connection::Open { .. } => None,
        }
    }
}

#[derive(Debug, Default)]
struct Group {
    /// Bumped by every rebalance; kept while the group is empty so a generation is
    /// never reused within one broker run.
    generation: u64,
    members: BTreeMap<String, Member>,
}

impl Group {
    fn status(&self) -> GroupStatus {
        if self.members.is_empty() {
            return GroupStatus::Empty;
        }
        let behind = self.members.values().any(|m| match &m.connection {
            Connection::Open {
                delivered_generation,
                ..
            } => *delivered_generation != Some(self.generation),
            Connection::Gone { .. } => false,
        });
        if behind {
            GroupStatus::Rebalancing
        } else {
            GroupStatus::Stable
        }
    }
}

type LeaseKey = (String, String, u32);

#[derive(Debug, Default)]
struct State {
    groups: BTreeMap<String, Group>,
    /// One-permit semaphores, one per `(group, topic, partition)` that some task reads
    /// or waits for. An entry is dropped once only this map holds it.
    leases: HashMap<LeaseKey, Arc<Semaphore>>,
}

/// The consumer-group coordinator. One per broker, shared as `Arc`.
#[derive(Debug)]
pub struct GroupCoordinator {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// See the module docs: joins take it shared, offset administration exclusively.
    pub(crate) admin_gate: RwLock<()>,
    /// Wakes the session reaper when a member's stream ends.
    reaper_wake: Arc<Notify>,
    reaper_started: AtomicBool,
    /// Set by [`GroupCoordinator::shutdown`]: no new members, no session grace.
    shutting_down: AtomicBool,
    /// Member tasks still running, and a signal each time one ends.
    running_tasks: AtomicUsize,
    task_ended: Notify,
    next_stream_id: AtomicU64,
    next_member_seq: AtomicU64,
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock is a bug elsewhere; the maps are still consistent
    // enough to keep serving (every mutation completes before the guard drops).
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks a group id against the proto's limits (1 to 255 bytes).
pub fn validate_group_id(group_id: &str) -> Result<(), Status> {
    if group_id.is_empty() {
        return Err(Status::invalid_argument("group_id is required"));
    }
    if group_id.len() > GROUP_ID_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "group_id is {} bytes, over the limit of {GROUP_ID_BYTES_MAX} bytes",
            group_id.len()
        )));
    }
    Ok(())
}

impl GroupCoordinator {
    /// A coordinator over `store`'s topics and offsets, reading time from `clock`.
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>) -> Self {
        GroupCoordinator {
            store,
            clock,
            state: Mutex::new(State::default()),
            admin_gate: RwLock::new(()),
            reaper_wake: Arc::new(Notify::new()),
            reaper_started: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            running_tasks: AtomicUsize::new(0),
            task_ended: Notify::new(),
            next_stream_id: AtomicU64::new(1),
            next_member_seq: AtomicU64::new(1),
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Starts the task that removes members whose session timeout has passed since
    /// their stream ended, and rebalances their groups. Idempotent: only the first
    /// call starts it (group-mode Subscribe calls it, so the broker need not). Must run
    /// within the tokio runtime. The task ends when the coordinator is dropped.
    pub fn spawn_session_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(coordinator) = weak.upgrade() else {
                    return;
                };
                let next_deadline_ms = coordinator.expire_sessions();
                coordinator.rescan_topics();
                let wait = match next_deadline_ms {
                    Some(deadline) => {
                        let remaining = deadline.saturating_sub(coordinator.now_ms()).max(1);
                        // The coordinator's clock may be a test clock that jumps: look
                        // again at least every REAPER_TICK_MAX.
                        Duration::from_millis(remaining as u64).min(REAPER_TICK_MAX)
                    }
                    None => REAPER_TICK_MAX,
                }
                // Pattern members' topics are looked at this often.
                .min(TOPIC_RESCAN_INTERVAL);
                let wake = coordinator.reaper_wake.clone();
                let woken = wake.notified();
                tokio::pin!(woken);
                // Register before dropping the strong reference, so a wake between the
                // two is not lost.
                woken.as_mut().enable();
                drop(coordinator);
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
        });
    }

    /// Removes members whose session timeout has run out, rebalancing their groups.
    /// Returns the earliest time (coordinator clock, ms) another member expires.
    pub(crate) fn expire_sessions(&self) -> Option<i64> {
        let now = self.now_ms();
        let mut state = lock(&self.state);
        let mut next: Option<i64> = None;
        let State { groups, .. } = &mut *state;
        for (group_id, group) in groups.iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter_map(|(id, member)| {
                    let deadline = member.expires_at_ms()?;
                    if deadline <= now {
                        Some(id.clone())
                    } else {
                        next = Some(next.map_or(deadline, |n| n.min(deadline)));
                        None
                    }
                })
                .collect();
            if expired.is_empty() {
                continue;
            }
            for id in &expired {
                group.members.remove(id);
                tracing::info!(group = %group_id, member = %id, "member's session timed out; it left the group");
            }
            self.rebalance(group_id, group);
        }
        next
    }

    /// Registers a member (new, reconnecting or taking over a stream) and queues its
    /// first Assignment on the returned control channel.
    pub(crate) async fn join(&self, request: JoinRequest) -> Result<Joined, Status> {
        let _gate = self.admin_gate.read().await;
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(crate::shutdown::unavailable(
                "reconnect to another broker or retry later",
            ));
        }
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let stream_id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let session_timeout_ms = request.session_timeout_ms.min(SESSION_TIMEOUT_MS_MAX);
        // Listed before our lock is taken (see `rescan_topics`).
        let all = self.store.topics();
        let mut state = lock(&self.state);
        let group = state.groups.entry(request.group_id.clone()).or_default();

        let known = !request.member_id.is_empty()
            && request.member_id.len() <= MEMBER_ID_BYTES_MAX
            && group.members.contains_key(&request.member_id);
        let member_id = if known {
            request.member_id.clone()
        } else {
            self.new_member_id(group, &request.client_id)
        };
        let connection = Connection::Open {
            stream_id,
            control: control_tx,
            delivered_generation: None,
        };

        if let Some(member) = group.members.get_mut(&member_id) {
            // A reconnect (or a takeover) of a member the group still holds.
            let old = std::mem::replace(&mut member.connection, connection);
            if let Connection::Open { control, .. } = old {
                // The old task may already be gone; then there is nobody to tell.
                let _ = control.send(Control::End(Status::aborted(format!(
                    "another Subscribe call took over member {member_id} of group {}",
                    request.group_id
                ))));
            }
            member.client_id = request.client_id;
            member.client_address = request.client_address;
            member.filter = request.filter;
            member.session_timeout_ms = session_timeout_ms;
            // The old stream's task is ending and drops what it kept.
            member.revoking.clear();
            let same = member.subscription.same_as(&request.subscription);
            // The new stream's caller decides what a pattern lets through.
            member.subscription = request.subscription;
            // Its topics as the last rebalance saw them may be gone, or be an older
            // incarnation of a topic deleted and created again: then its partitions
            // and generation are not to be handed out again.
            let topics_changed = !same_matched(&member.matched, &member.subscription.matched(&all));
            if !same {
                tracing::info!(group = %request.group_id, member = %member_id, "member rejoined with another subscription");
                self.rebalance_over(&request.group_id, group, &all);
            } else if topics_changed {
                tracing::info!(group = %request.group_id, member = %member_id, "member reconnected; its topics changed since the last rebalance");
                self.rebalance_over(&request.group_id, group, &all);
            } else {
                // Same partitions, same generation: no rebalance.
                let generation = group.generation;
                let partitions = member.partitions.clone();
                let topics = member
                    .matched
                    .iter()
                    .map(|(name, (topic, _))| (name.clone(), topic.clone()))
                    .collect();
                if let Connection::Open { control, .. } = &member.connection {
                    let _ = control.send(Control::Assign {
                        generation,
                        partitions,
                        topics,
                    });
                }
                tracing::info!(group = %request.group_id, member = %member_id, generation, "member reconnected");
            }
        } else {
            group.members.insert(
                member_id.clone(),
                Member {
                    client_id: request.client_id,
                    client_address: request.client_address,
                    subscription: request.subscription,
                    matched: Matched::new(),
                    filter: request.filter,
                    session_timeout_ms,
                    partitions: Vec::new(),
                    revoking: BTreeSet::new(),
                    connection,
                },
            );
            tracing::info!(group = %request.group_id, member = %member_id, "member joined");
            self.rebalance_over(&request.group_id, group, &all);
        }
        self.running_tasks.fetch_add(1, Ordering::AcqRel);
        Ok(Joined {
            member_id,
            stream_id,
            control: control_rx,
        })
    }

    /// A unique member id: the client id (if it is a plain name) plus 64 random bits,
    /// as Kafka does with a UUID. Random rather than a counter so an id a client kept
    /// from before a broker restart cannot collide with a new member's.
    fn new_member_id(&self, group: &Group, client_id: &str) -> String {
        let prefix = if !client_id.is_empty()
            && client_id.len() <= 64
            && client_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            client_id
        } else {
            "member"
        };
        loop {
            let seq = self.next_member_seq.fetch_add(1, Ordering::Relaxed);
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(seq);
            hasher.write_i64(self.now_ms());
            let id = format!("{prefix}-{:016x}", hasher.finish());
            if !group.members.contains_key(&id) {
                return id;
            }
        }
    }

    /// Recomputes every member's topics and every topic's assignment in `group`,
    /// bumps the generation and sends each connected member its new Assignment.
    fn rebalance(&self, group_id: &str, group: &mut Group) {
        self.rebalance_over(group_id, group, &self.store.topics());
    }

    /// [`GroupCoordinator::rebalance`] over the topic list `all`.
    fn rebalance_over(&self, group_id: &str, group: &mut Group, all: &[Arc<Topic>]) {
        group.generation += 1;
        // A deleted topic is in no member's matched set: no partitions to hand out;
        // a member of that one topic learns of the deletion from `topic_deleted` or
        // its reads.
        let mut by_topic: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
        for (id, member) in group.members.iter_mut() {
            member.matched = member.subscription.matched(all);
            for (name, (_, count)) in &member.matched {
                by_topic
                    .entry(name.clone())
                    .or_insert_with(|| (*count, Vec::new()))
                    .1
                    .push(id.clone());
            }
        }
        let mut assignment: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
        for (topic, (count, ids)) in by_topic {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            for (id, partitions) in range_assign(ids.iter().map(String::as_str), count) {
                assignment
                    .entry(id)
                    .or_default()
                    .extend(partitions.into_iter().map(|p| (topic.clone(), p)));
            }
        }
        let generation = group.generation;
        for (id, member) in &mut group.members {
            member.partitions = assignment.remove(id).unwrap_or_default();
            member.partitions.sort();
            if let Connection::Open { control, .. } = &member.connection {
                let _ = control.send(Control::Assign {
                    generation,
                    partitions: member.partitions.clone(),
                    topics: member
                        .matched
                        .iter()
                        .map(|(name, (topic, _))| (name.clone(), topic.clone()))
                        .collect(),
                });
            }
        }
        tracing::info!(group = %group_id, generation, members = group.members.len(), "rebalanced");
    }

    /// Rebalances every group in which some pattern member's topics changed (a
    /// matching topic appeared, went, was recreated or grew, or the caller's access
    /// to one changed). Called every [`TOPIC_RESCAN_INTERVAL`] and after topic
    /// administration.
    pub fn rescan_topics(&self) {
        let any_pattern = lock(&self.state)
            .groups
            .values()
            .any(|g| g.members.values().any(|m| m.subscription.is_pattern()));
        if !any_pattern {
            return;
        }
        // Listed before our lock is taken. (A rebalance does take the store's topic
        // lock inside ours; the store never calls the coordinator, so the order is
        // always ours, then the store's.)
        let all = self.store.topics();
        let mut state = lock(&self.state);
        for (group_id, group) in state.groups.iter_mut() {
            let changed = group.members.values().any(|m| {
                m.subscription.is_pattern()
                    && !same_matched(&m.matched, &m.subscription.matched(&all))
            });
            if changed {
                tracing::info!(group = %group_id, "a pattern member's topics changed");
                self.rebalance_over(group_id, group, &all);
            }
        }
    }

    /// The member task has sent the Assignment of `generation` on its stream.
    pub(crate) fn assignment_delivered(
        &self,
        group_id: &str,
        member_id: &str,
        stream_id: u64,
        generation: u64,
    ) {
        let mut state = lock(&self.state);
        let Some(member) = state
            .groups
            .get_mut(group_id)
            .and_then(|g| g.members.get_mut(member_id))
        else {
            return;
        };
        if let Connection::Open {
            stream_id: current,
            delivered_generation,
            ..
        } = &mut member.connection
            && *current == stream_id
        {
            *delivered_generation = Some(generation);
        }
    }

    /// The member task of `stream_id` has ended (after its final commit and after
    /// releasing its leases). The member leaves now, or after its session timeout.
    pub(crate) fn stream_ended(&self, group_id: &str, member_id: &str, stream_id: u64) {
        {
            let now = self.now_ms();
            let shutting_down = self.shutting_down.load(Ordering::Acquire);
            let mut state = lock(&self.state);
            let State { groups, leases } = &mut *state;
            // Leases nobody holds or waits for (only the map refers to them).
            leases.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
            if let Some(group) = groups.get_mut(group_id)
                && let Some(member) = group.members.get_mut(member_id)
                && matches!(member.connection, Connection::Open { stream_id: s, .. } if s == stream_id)
            {
                // The task dropped its leases, handover windows included.
                member.revoking.clear();
                if member.session_timeout_ms == 0 || shutting_down {
                    group.members.remove(member_id);
                    tracing::info!(group = %group_id, member = %member_id, "member left the group");
                    self.rebalance(group_id, group);
                } else {
                    member.connection = Connection::Gone { since_ms: now };
                    tracing::info!(group = %group_id, member = %member_id, session_timeout_ms = member.session_timeout_ms, "member's stream ended; keeping its partitions for a reconnect");
                    self.reaper_wake.notify_one();
                }
            }
        }
        self.running_tasks.fetch_sub(1, Ordering::AcqRel);
        self.task_ended.notify_waiters();
    }

    /// The lease of one partition of a group (see the module docs).
    pub(crate) fn lease(&self, group_id: &str, topic: &str, partition: u32) -> Arc<Semaphore> {
        lock(&self.state)
            .leases
            .entry((group_id.to_string(), topic.to_string(), partition))
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }

    /// Checks that `member_id` may commit `partitions` in `generation`.
    pub(crate) fn authorize_member_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: u64,
        partitions: &[TopicPartition],
    ) -> Result<(), Status> {
        let state = lock(&self.state);
        let Some(group) = state.groups.get(group_id) else {
            return Err(Status::failed_precondition(format!(
                "group {group_id:?} has no member {member_id:?}; rejoin the group (Subscribe) and commit with the new member id"
            )));
        };
        let Some(member) = group.members.get(member_id) else {
            return Err(Status::failed_precondition(format!(
                "group {group_id:?} has no member {member_id:?}; rejoin the group (Subscribe) and commit with the new member id"
            )));
        };
        if generation != group.generation {
            return Err(wrong_generation(group_id, generation, group.generation));
        }
        for tp @ (topic, partition) in partitions {
            let kept = member.partitions.binary_search(tp).is_ok() || member.revoking.contains(tp);
            if !kept {
                return Err(with_generation(
                    Status::failed_precondition(format!(
                        "partition {topic}/{partition} is not assigned to member {member_id:?} in generation {generation} of group {group_id:?}"
                    )),
                    group.generation,
                ));
            }
        }
        Ok(())
    }

    /// The member task of `stream_id` keeps these revoked partitions for its client's
    /// commit (see [`Control::HandOver`]); replaces the previous set.
    pub(crate) fn set_revoking(
        &self,
        group_id: &str,
        member_id: &str,
        stream_id: u64,
        partitions: BTreeSet<TopicPartition>,
    ) {
        let mut state = lock(&self.state);
        if let Some(member) = state
            .groups
            .get_mut(group_id)
            .and_then(|g| g.members.get_mut(member_id))
            && matches!(member.connection, Connection::Open { stream_id: s, .. } if s == stream_id)
        {
            member.revoking = partitions;
        }
    }

    /// A commit of `member_id` in `generation` succeeded (or was an empty one): its
    /// task may hand over the partitions it kept for that commit.
    pub(crate) fn member_committed(&self, group_id: &str, member_id: &str, generation: u64) {
        let state = lock(&self.state);
        if let Some(member) = state
            .groups
            .get(group_id)
            .and_then(|g| g.members.get(member_id))
            && !member.revoking.is_empty()
            && let Connection::Open { control, .. } = &member.connection
        {
            let _ = control.send(Control::HandOver { generation });
        }
    }

    /// The number of live members (connected or kept by their session timeout).
    #[cfg(test)]
    pub(crate) fn live_member_count(&self, group_id: &str) -> usize {
        lock(&self.state)
            .groups
            .get(group_id)
            .map_or(0, |g| g.members.len())
    }

    /// Refuses offset administration while the group has live members, saying how
    /// many are connected and, for those kept by their session timeout after their
    /// stream ended (a consumer killed), how long until the last one expires.
    pub(crate) fn require_no_live_members(&self, group_id: &str, what: &str) -> Result<(), Status> {
        let now = self.now_ms();
        let (count, kept, last_expiry_ms) = {
            let state = lock(&self.state);
            let Some(group) = state.groups.get(group_id) else {
                return Ok(());
            };
            let mut kept = 0;
            let mut last = now;
            for expiry in group.members.values().filter_map(Member::expires_at_ms) {
                kept += 1;
                last = last.max(expiry);
            }
            (group.members.len(), kept, last)
        };
        if count == 0 {
            return Ok(());
        }
        let todo = if kept == 0 {
            "stop its consumers first".to_string()
        } else {
            let seconds = ((last_expiry_ms - now).max(0) as u64).div_ceil(1000);
            format!(
                "{kept} of them disconnected and kept for a reconnect by their session timeout, the last for {seconds} s more: stop the connected consumers, wait for that, then try again"
            )
        };
        Err(Status::failed_precondition(format!(
            "{what} refused: group {group_id:?} has {count} live member(s); {todo}"
        )))
    }

    /// Forgets an empty group's in-memory state (after DeleteGroup). Returns whether
    /// there was any.
    pub(crate) fn forget_group(&self, group_id: &str) -> bool {
        let mut state = lock(&self.state);
        match state.groups.get(group_id) {
            Some(group) if group.members.is_empty() => {
                state.groups.remove(group_id);
                true
            }
            _ => false,
        }
    }

    /// Ends the streams of members subscribed to `topic` by name with NOT_FOUND, and
    /// rebalances every group with a member that read it, connected or kept by its
    /// session timeout (call after the topic was deleted). So the topic leaves every
    /// assignment, a commit in the generation of its old incarnation is refused as
    /// stale, and a member reconnecting with its id is not handed the old partitions
    /// again (nor, after a CreateTopic of the same name, the old topic).
    pub fn topic_deleted(&self, topic: &str) {
        // Listed before our lock is taken (see `rescan_topics`): a topic of that name
        // created since is taken in at once.
        let all = self.store.topics();
        let now = all.iter().find(|t| t.name() == topic);
        {
            let mut state = lock(&self.state);
            for (group_id, group) in state.groups.iter_mut() {
                for member in group.members.values() {
                    if matches!(&member.subscription, Subscription::Topic(name) if name == topic)
                        && let Connection::Open { control, .. } = &member.connection
                    {
                        // Before the rebalance's Assign: the task ends at this.
                        let _ = control.send(Control::End(Status::not_found(format!(
                            "topic {topic:?} was deleted; group {group_id:?} stopped reading it"
                        ))));
                    }
                }
                if group.members.values().any(|m| stale_on(m, topic, now)) {
                    tracing::info!(group = %group_id, topic, "a topic the group read was deleted");
                    self.rebalance_over(group_id, group, &all);
                }
            }
        }
        self.rescan_topics();
    }

    /// A topic was created: groups with members that subscribe to it (by name, or by
    /// a pattern that matches it) rebalance now rather than at their next reconnect
    /// or rescan.
    pub fn topic_created(&self, topic: &str) {
        let all = self.store.topics();
        let now = all.iter().find(|t| t.name() == topic);
        {
            let mut state = lock(&self.state);
            for (group_id, group) in state.groups.iter_mut() {
                if group.members.values().any(|m| stale_on(m, topic, now)) {
                    tracing::info!(group = %group_id, topic, "a topic the group subscribes to was created");
                    self.rebalance_over(group_id, group, &all);
                }
            }
        }
        self.rescan_topics();
    }

    /// Rebalances every group with members reading `topic` (call after its partition
    /// count grew), so the new partitions are assigned.
    pub fn topic_grew(&self, topic: &str) {
        let all = self.store.topics();
        let mut state = lock(&self.state);
        let groups: Vec<String> = state
            .groups
            .iter()
            .filter(|(_, group)| {
                group
                    .members
                    .values()
                    .any(|m| m.subscription.includes(topic) || m.matched.contains_key(topic))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for group_id in groups {
            if let Some(group) = state.groups.get_mut(&group_id) {
                self.rebalance_over(&group_id, group, &all);
            }
        }
    }

    /// Ends every member stream with UNAVAILABLE, refuses new members, and waits (up
    /// to `timeout`) until every member task has made its final commit and ended.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        {
            let state = lock(&self.state);
            for group in state.groups.values() {
                for member in group.members.values() {
                    if let Connection::Open { control, .. } = &member.connection {
                        let _ = control.send(Control::End(crate::shutdown::unavailable(
                            "reconnect to another broker or retry later",
                        )));
                    }
                }
            }
        }
        let wait_all = async {
            loop {
                let ended = self.task_ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.running_tasks.load(Ordering::Acquire) == 0 {
                    return;
                }
                ended.await;
            }
        };
        if tokio::time::timeout(timeout, wait_all).await.is_err() {
            tracing::warn!(
                tasks = self.running_tasks.load(Ordering::Acquire),
                "group member streams did not end in time"
            );
        }
    }

    /// Groups with live members or committed offsets, sorted by id.
    pub fn list_groups(&self) -> Vec<GroupSummaryView> {
        let committed: BTreeSet<String> = self.store.offsets().list_groups().into_iter().collect();
        let state = lock(&self.state);
        let mut ids = committed;
        ids.extend(
            state
                .groups
                .iter()
                .filter(|(_, g)| !g.members.is_empty())
                .map(|(id, _)| id.clone()),
        );
        ids.into_iter()
            .map(|group_id| {
                let (status, member_count) = state
                    .groups
                    .get(&group_id)
                    .map_or((GroupStatus::Empty, 0), |g| (g.status(), g.members.len()));
                GroupSummaryView {
                    group_id,
                    status,
                    member_count: u32::try_from(member_count).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    /// Describes a group; `None` if it has neither live members nor commits.
    ///
    /// Lists every partition of every topic the group has committed on or a member
    /// reads, so a partition the group never committed is not left out of its lag
    /// (its `lag_from_log_start` counts what it holds).
    pub fn describe_group(&self, group_id: &str) -> Option<GroupView> {
        let commits = self.store.offsets().fetch_group(group_id);
        let now = self.now_ms();
        let (status, generation, members) = {
            let state = lock(&self.state);
            match state.groups.get(group_id) {
                Some(group) => (
                    group.status(),
                    group.generation,
                    group
                        .members
                        .iter()
                        .map(|(id, m)| MemberView {
                            member_id: id.clone(),
                            client_id: m.client_id.clone(),
                            client_address: m.client_address.clone(),
                            topic: match &m.subscription {
                                Subscription::Topic(topic) => topic.clone(),
                                Subscription::Pattern { .. } => String::new(),
                            },
                            topic_pattern: match &m.subscription {
                                Subscription::Topic(_) => String::new(),
                                Subscription::Pattern { pattern, .. } => {
                                    pattern.as_str().to_string()
                                }
                            },
                            partitions: m.partitions.clone(),
                            topics: m
                                .matched
                                .keys()
                                .map(|name| {
                                    let mine = m
                                        .partitions
                                        .iter()
                                        .filter(|(t, _)| t == name)
                                        .map(|(_, p)| *p)
                                        .collect();
                                    (name.clone(), mine)
                                })
                                .collect(),
                            filter: m.filter.clone(),
                            session_expires_in_ms: m
                                .expires_at_ms()
                                .map(|at| at.saturating_sub(now).max(0) as u64),
                        })
                        .collect::<Vec<_>>(),
                ),
                None => (GroupStatus::Empty, 0, Vec::new()),
            }
        };
        if members.is_empty() && commits.is_empty() {
            return None;
        }
        // The topics: those with commits, and every topic a member reads (a pattern
        // member's matched topics, with no partition of its own too).
        let mut committed: BTreeMap<(String, u32), u64> = BTreeMap::new();
        let mut topic_names: BTreeSet<String> = BTreeSet::new();
        for member in &members {
            topic_names.extend(member.topics.iter().map(|(name, _)| name.clone()));
            topic_names.extend(member.partitions.iter().map(|(name, _)| name.clone()));
        }
        for (topic, partition, commit) in commits {
            topic_names.insert(topic.clone());
            committed.insert((topic, partition), commit.offset);
        }
        let mut partitions = Vec::new();
        for topic_name in topic_names {
            // Commits of a topic deleted a moment ago: nothing to measure against.
            let Ok(topic) = self.store.topic(&topic_name) else {
                continue;
            };
            for p in topic.partitions() {
                let partition = p.id();
                let committed = committed.get(&(topic_name.clone(), partition)).copied();
                let view = match p.bounds() {
                    Ok((log_start, end)) => PartitionLagView {
                        topic: topic_name.clone(),
                        partition,
                        committed,
                        log_start,
                        end,
                        lag: committed.map(|c| end.saturating_sub(c)),
                        lag_from_log_start: committed
                            .is_none()
                            .then(|| end.saturating_sub(log_start)),
                        unavailable: None,
                    },
                    Err(error) => PartitionLagView {
                        topic: topic_name.clone(),
                        partition,
                        committed,
                        log_start: 0,
                        end: 0,
                        lag: None,
                        lag_from_log_start: None,
                        unavailable: Some(error.to_string()),
                    },
                };
                partitions.push(view);
            }
        }
        Some(GroupView {
            group_id: group_id.to_string(),
            status,
            generation,
            members,
            partitions,
        })
    }

    /// Every group as [`GroupCoordinator::describe_group`] shows it, for metrics.
    pub fn snapshot(&self) -> Vec<GroupView> {
        self.list_groups()
            .into_iter()
            .filter_map(|g| self.describe_group(&g.group_id))
            .collect()
    }
}

/// The refusal of a member's commit in `generation` while the group is at `current`
/// (the one wording of it): an older generation is stale (a rebalance happened since);
/// a newer one was never given out by this broker run, so the client did not take it
/// from an Assignment.
fn wrong_generation(group_id: &str, generation: u64, current: u64) -> Status {
    let message = if generation < current {
        format!(
            "generation {generation} of group {group_id:?} is stale: the current generation is {current}; a rebalance happened, so drop the work of revoked partitions and commit with the generation of the latest Assignment"
        )
    } else {
        format!(
            "generation {generation} of group {group_id:?} is ahead of the group's current generation {current}: the broker never gave it out (it is not from an Assignment of this broker run); commit with the generation of the member's latest Assignment, or rejoin the group (Subscribe) and commit with the generation of the Assignment it gets"
        )
    };
    with_generation(Status::failed_precondition(message), current)
}

/// A commit refusal carrying the group's current generation
/// ([`tidelog_proto::GROUP_GENERATION_METADATA`]), so a client can tell "an Assignment
/// is on its way" from "this partition is not yours".
fn with_generation(mut status: Status, generation: u64) -> Status {
    if let Ok(value) = generation.to_string().parse() {
        status
            .metadata_mut()
            .insert(tidelog_proto::GROUP_GENERATION_METADATA, value);
    }
    status
}

#[cfg(test)]
mod tests;
