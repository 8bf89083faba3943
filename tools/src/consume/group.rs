//! `tidelog consume --group`: a tidelog-client `GroupMember` (`SubscribeBatches` with
//! a group, read through its `GroupEvent`s); the broker assigns partitions and starts
//! at the committed offsets. What is printed is committed with
//! the member's generation after each printed batch, when a rebalance takes partitions
//! away (inside the broker's handover window), and before leaving. Each commit names
//! every partition the member still holds ([`Member::held`]): the broker ends all of a
//! member's handover windows at its first accepted commit in the new generation. What
//! could not be committed is said on stderr and fails the run (exit 1).
//!
//! With `--topic-pattern` the member subscribes to every matching topic: positions
//! and commits are per (topic, partition), the Assignment names the matched topics
//! (a topic created later that matches comes in with a rebalance, a deleted one goes
//! out, each said on stderr). One topic is the same with that topic in every key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use std::sync::Arc;

use tidelog_client::{AssignmentChange, Commit, GroupEvent, GroupMember, GroupOptions};
use tidelog_proto::v1::{CommitOffsetsRequest, FetchOffsetsRequest, TopicPartitionOffset};

use super::damage::{DAMAGE_TODO, Damage, past_damaged_batch};
use super::printer::Printer;
use super::start::{client_reset_note, offsets_for_time, out_of_range_start};
use super::stream::{
    Reconnect, StopSignal, client_reset, client_status, reconnectable, stream_error,
};
use crate::args::{ConsumeArgs, StartAt};
use crate::client::{Broker, broker_status};
use crate::error::{CliError, CliResult};
use crate::output::note;
use crate::topic::describe;

/// Without `--follow`, a group member stops after this long without any event even
/// if positions could not prove it caught up (expired messages at the end of a
/// partition leave gaps no message fills).
const QUIET_SPELL: Duration = Duration::from_secs(2);
/// How long the broker keeps a partition a rebalance takes from this member, waiting
/// for the commit of what was printed, before its next owner starts anyway.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Shown to the broker as the member's client id.
const CLIENT_ID: &str = "tidelog-cli";

/// One partition of one topic.
type Tp = (String, u32);

/// What the member subscribes to.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    Topic(&'a str),
    Pattern(&'a str),
}

impl Source<'_> {
    /// The topic to ask FetchOffsets for: all of them for a pattern.
    fn offsets_topic(&self) -> Option<String> {
        match self {
            Source::Topic(name) => Some((*name).to_string()),
            Source::Pattern(_) => None,
        }
    }

    fn what(&self) -> String {
        match self {
            Source::Topic(name) => format!("topic {name:?}"),
            Source::Pattern(pattern) => format!("topic pattern {pattern:?}"),
        }
    }
}

/// A group member's view of its partitions.
#[derive(Debug, Default)]
struct Member {
    member_id: String,
    generation: u64,
    assigned: Vec<Tp>,
    /// With a pattern: the topics matched at the last Assignment.
    topics: BTreeSet<String>,
    /// Next offset per partition, as far as known (committed, reset, or printed).
    position: BTreeMap<Tp, u64>,
    /// End offsets seen at the last assignment (the target without --follow).
    end: BTreeMap<Tp, u64>,
    /// Offsets to commit: where reading goes on after what was printed (the batch's
    /// position, past expired messages, when the whole batch was printed).
    printed: BTreeMap<Tp, u64>,
    committed: BTreeMap<Tp, u64>,
    /// Partitions that reached `--until`: nothing more of them is printed.
    finished: BTreeSet<Tp>,
    /// Partitions a rebalance took away whose handover commit the group refused
    /// because it had moved on again (a member joined or left meanwhile): committed
    /// with the next Assignment (or any commit before it: [`Member::held`]), what was
    /// printed of them kept until then.
    handing_over: BTreeSet<Tp>,
    /// Partitions some of whose printed messages could not be committed (they moved
    /// on before the commit, or the final commit was refused): the group's next
    /// reader prints them again, and the run does not end with exit 0.
    given_up: BTreeSet<Tp>,
}

impl Member {
    fn caught_up(&self) -> bool {
        self.assigned.iter().all(|p| {
            matches!((self.position.get(p), self.end.get(p)), (Some(pos), Some(end)) if pos >= end)
        })
    }

    /// The partitions every commit names what was printed of: the assigned ones and
    /// those still to hand over. The broker ends the handover window of every
    /// partition a rebalance took from this member at the member's first accepted
    /// commit in the new generation, whether that commit names the partition or not:
    /// one that left a partition out would hand it over without what was printed.
    fn held(&self) -> Vec<Tp> {
        let mut held = self.assigned.clone();
        held.extend(self.handing_over.iter().cloned());
        held.sort();
        held.dedup();
        held
    }

    /// Partitions printed of and not committed, among `partitions`.
    fn uncommitted<'a>(&self, partitions: impl IntoIterator<Item = &'a Tp>) -> Vec<Tp> {
        partitions
            .into_iter()
            .filter(|tp| {
                self.printed
                    .get(*tp)
                    .is_some_and(|p| self.committed.get(*tp) != Some(p))
            })
            .cloned()
            .collect()
    }

    /// Another member owns these now: should one come back, it starts from the
    /// group's committed offset, not from what this member printed long ago.
    fn forget<'a>(&mut self, partitions: impl IntoIterator<Item = &'a Tp>) {
        for tp in partitions {
            self.printed.remove(tp);
            self.position.remove(tp);
            self.committed.remove(tp);
            self.handing_over.remove(tp);
        }
    }

    /// Printed messages of `partitions` will not be committed: said now, and the run
    /// fails at its end ([`Member::given_up`]).
    fn give_up(&mut self, partitions: &[Tp], why: &str) {
        if partitions.is_empty() {
            return;
        }
        note(&format!(
            "warning: partition{} {} {why}; what was printed of them and not committed will be delivered again to the group's next reader",
            if partitions.len() == 1 { "" } else { "s" },
            partitions
                .iter()
                .map(|(topic, p)| format!("{topic}/{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.given_up.extend(partitions.iter().cloned());
        self.forget(partitions);
    }

    /// With a pattern: the topics an Assignment names are those the pattern still
    /// matches; the others were deleted, with their offsets (a commit naming them
    /// would fail whole), so what this member knew of them goes.
    fn keep_topics(&mut self, topics: &[String]) {
        let live: BTreeSet<&str> = topics.iter().map(String::as_str).collect();
        let kept = |tp: &Tp| live.contains(tp.0.as_str());
        self.printed.retain(|tp, _| kept(tp));
        self.position.retain(|tp, _| kept(tp));
        self.committed.retain(|tp, _| kept(tp));
        self.assigned.retain(|tp| kept(tp));
        self.handing_over.retain(|tp| kept(tp));
    }

    /// Every assigned partition reached `--until`.
    fn all_finished(&self) -> bool {
        !self.assigned.is_empty() && self.assigned.iter().all(|p| self.finished.contains(p))
    }
}

pub(super) async fn consume_group(
    broker: &Broker,
    args: &ConsumeArgs,
    group: &str,
    printer: &mut Printer,
) -> CliResult<()> {
    let source = match &args.topic_pattern {
        Some(pattern) => Source::Pattern(pattern),
        None => Source::Topic(&args.topic),
    };
    let context = format!("consuming {} as group {group:?}", source.what());
    // --from with a group: where partitions without a committed offset start
    // (kafka-console-consumer's --from-beginning), as the reset policy for earliest
    // and latest, or committed before joining for an offset or a time.
    let reset = match args.from {
        Some(StartAt::Earliest) => tidelog_client::Reset::Earliest,
        Some(StartAt::Latest) => tidelog_client::Reset::Latest,
        Some(start) => {
            let Source::Topic(topic) = source else {
                return Err(CliError::usage(
                    "--from OFFSET or a date-time with --topic-pattern and --group: a group on a pattern has no one topic to start",
                    "use --from earliest or --from latest, or move the group first with `tidelog group reset-offsets --topic-pattern REGEX`",
                ));
            };
            seed_group_start(broker, args, group, topic, start).await?;
            client_reset(args.offset_reset)
        }
        None => client_reset(args.offset_reset),
    };
    let options = GroupOptions {
        commit: Commit::Explicit,
        // Zero: the member leaves as soon as its stream ends, so a run that ends or
        // is killed frees its partitions at once (no session to wait out).
        session_timeout: Duration::ZERO,
        handover_timeout: HANDOVER_TIMEOUT,
        client_id: CLIENT_ID.into(),
        reset,
        filter: args.filter.clone().unwrap_or_default(),
        ..GroupOptions::new(group)
    };
    let mut stop = StopSignal::new();
    let joined = tokio::select! {
        joined = async {
            match source {
                Source::Topic(topic) => GroupMember::join(broker, topic, options).await,
                Source::Pattern(pattern) => GroupMember::join_pattern(broker, pattern, options).await,
            }
        } => joined,
        _ = stop.recv() => return Ok(()),
    };
    let mut gm = joined.map_err(|error| group_error(broker, &context, &error))?;
    let mut member = Member::default();
    let first = Assigned {
        member_id: gm.assignment().0.to_string(),
        generation: gm.assignment().1,
        assigned: gm.assigned().map(|(t, p)| (t.to_string(), p)).collect(),
        topics: gm.topics().iter().map(|(t, _)| t.to_string()).collect(),
    };
    if let Source::Pattern(pattern) = source {
        topics_note(pattern, &member, &first.topics);
    }
    on_assignment(broker, group, source, &mut member, first).await?;
    let mut backoff = Reconnect::default();
    // On one topic the name is not printed with each message (nor copied into each).
    let no_topic: Arc<str> = Arc::from("");
    // Partitions of the delivery being printed that were not printed to its end
    // (--until).
    let mut cut: BTreeSet<Tp> = BTreeSet::new();
    let outcome = loop {
        if !args.follow && member.caught_up() {
            break Ok(());
        }
        if member.all_finished() {
            break Ok(());
        }
        // What was received is printed first; the wait (with the stop signal and the
        // quiet spell) is set up once per delivery, not per message.
        let event = match gm.try_next_event() {
            Some(event) => Ok(event),
            None => tokio::select! {
                event = gm.next_event() => event,
                _ = tokio::time::sleep(QUIET_SPELL), if !args.follow => break Ok(()),
                _ = stop.recv() => break Ok(()),
            },
        };
        match event {
            // The broker ended the stream (and the membership): every printed batch
            // was committed when it was printed.
            Err(error) if error.is_data_loss() => {
                let status = client_status(&error);
                break Err(group_damage_error(broker, group, &gm, &status).await);
            }
            Err(error) => break Err(group_error(broker, &context, &error)),
            Ok(GroupEvent::Disconnected { error }) => {
                if matches!(error, tidelog_client::Error::Closed) {
                    break Ok(());
                }
                let status = client_status(&error);
                if !(args.follow && reconnectable(&status)) {
                    break Err(group_error(broker, &context, &error));
                }
                // The broker restarted: the member joins again (the same member id,
                // which the broker keeps or treats as a first join) once it is back.
                printer.out.flush()?;
                backoff.lost(&status);
                cut.clear();
            }
            Ok(GroupEvent::Reconnected) => backoff.connected(),
            Ok(GroupEvent::Assigned(change)) => {
                let assigned = Assigned::from(change);
                if let Source::Pattern(pattern) = source {
                    topics_note(pattern, &member, &assigned.topics);
                }
                hand_over(broker, group, source, &mut gm, &mut member, &assigned).await;
                if let Err(e) = on_assignment(broker, group, source, &mut member, assigned).await {
                    break Err(e);
                }
            }
            Ok(GroupEvent::PositionReset(reset)) => {
                client_reset_note(&reset);
                let tp = (reset.topic.to_string(), reset.partition);
                member.position.insert(tp.clone(), reset.to_offset);
                // Where the group reads next: committed with what is printed, so a
                // group that starts at `latest` goes on from there next time.
                member.printed.insert(tp, reset.to_offset);
            }
            Ok(GroupEvent::Messages(messages)) => {
                let tp = (messages.topic().to_string(), messages.partition());
                let first = messages[0].offset;
                // One past the last message printed of this delivery.
                let mut printed = None;
                let mut done = false;
                for mut message in messages {
                    if member.finished.contains(&tp) {
                        cut.insert(tp.clone());
                        break;
                    }
                    if let Source::Topic(_) = source {
                        message.topic = no_topic.clone();
                    }
                    let m = message.into_proto();
                    if printer.past_until(&m) {
                        member.finished.insert(tp.clone());
                        cut.insert(tp.clone());
                        // The group goes on here next time, even when nothing of the
                        // partition was printed.
                        member.printed.entry(tp.clone()).or_insert(m.offset);
                        break;
                    }
                    if let Err(e) = printer.print(&m) {
                        if let Some(at) = printed {
                            member.position.insert(tp.clone(), at);
                            member.printed.insert(tp.clone(), at);
                        }
                        let resume = printed.or_else(|| member.printed.get(&tp).copied());
                        gm.set_position(&tp.0, tp.1, resume.unwrap_or(first));
                        // Commit what did reach the reader, then report.
                        let _ = final_commit(broker, group, source, &mut gm, &mut member, printer)
                            .await;
                        return Err(e);
                    }
                    printed = Some(m.offset + 1);
                    if printer.done() {
                        done = true;
                        break;
                    }
                }
                if done || cut.contains(&tp) {
                    // Not printed to the delivery's end: a commit the member makes by
                    // itself (a handover) must not pass what was not printed.
                    let resume = printed.or_else(|| member.printed.get(&tp).copied());
                    gm.set_position(&tp.0, tp.1, resume.unwrap_or(first));
                }
                if let Some(at) = printed {
                    member.position.insert(tp.clone(), at);
                    member.printed.insert(tp, at);
                }
                if done {
                    break Ok(());
                }
            }
            Ok(GroupEvent::Progress(progress)) => {
                // Printed to the delivery's end: go on (and commit) from where the
                // broker says the partition stands, past expired messages never
                // delivered, not from "last offset + 1".
                let tp = (progress.topic.to_string(), progress.partition);
                if !cut.remove(&tp) && member.assigned.contains(&tp) {
                    member.position.insert(tp.clone(), progress.next_offset);
                    member.printed.insert(tp.clone(), progress.next_offset);
                    if printer.reached_until(progress.next_offset) {
                        member.finished.insert(tp);
                    }
                }
                // Unknown how much of a failed flush reached the reader: leave it
                // uncommitted (delivered again rather than lost).
                printer.out.flush()?;
                // Printed: commit now, so an error, a crash or a rebalance a moment
                // later does not deliver these again.
                if let Err(refused) = commit_held(&mut gm, broker, group, &mut member).await {
                    // FAILED_PRECONDITION: a rebalance is under way; the commit made
                    // when its Assignment arrives covers these messages.
                    if refused.code != tonic::Code::FailedPrecondition {
                        commit_warning(&refused.error);
                    }
                }
            }
            Ok(_) => {}
        }
    };
    let committed = final_commit(broker, group, source, &mut gm, &mut member, printer).await;
    outcome.and(committed)
}

/// The error a group member failed with, in the CLI's terms (an OUT_OF_RANGE under
/// `--offset-reset error` says which flags move the position).
fn group_error(broker: &Broker, context: &str, error: &tidelog_client::Error) -> CliError {
    match broker_status(error) {
        Some(_) => stream_error(broker, context, &client_status(error), true),
        None => broker.client_error(context, error),
    }
}

/// An assignment as the CLI keeps it.
#[derive(Debug)]
struct Assigned {
    member_id: String,
    generation: u64,
    /// Sorted.
    assigned: Vec<Tp>,
    /// With a pattern: every topic it matches now.
    topics: Vec<String>,
}

impl From<AssignmentChange> for Assigned {
    fn from(change: AssignmentChange) -> Assigned {
        Assigned {
            member_id: change.member_id,
            generation: change.generation,
            assigned: change
                .assigned
                .iter()
                .map(|(t, p)| (t.to_string(), *p))
                .collect(),
            topics: change.topics,
        }
    }
}

/// Says on stderr how the topics a pattern member reads changed.
fn topics_note(pattern: &str, member: &Member, topics: &[String]) {
    let now: BTreeSet<String> = topics.iter().cloned().collect();
    let first = member.member_id.is_empty();
    if now.is_empty() && (first || !member.topics.is_empty()) {
        note(&format!(
            "note: no topic matches --topic-pattern {pattern:?} yet; waiting for one to be created"
        ));
        return;
    }
    let added: Vec<&str> = now.difference(&member.topics).map(String::as_str).collect();
    let removed: Vec<&str> = member.topics.difference(&now).map(String::as_str).collect();
    if !added.is_empty() {
        note(&format!(
            "note: the group reads topics {}",
            added.join(", ")
        ));
    }
    if !removed.is_empty() {
        note(&format!(
            "note: topics {} are no longer matched (deleted): no longer read",
            removed.join(", ")
        ));
    }
}

/// `--from OFFSET|TIME` with a group: commits that start, as a tool, for the
/// partitions the group has no committed offset for, before joining. An offset outside
/// a partition's offsets follows --offset-reset there, as without a group
/// ([`out_of_range_start`]). A group with live members refuses a tool's commit: then
/// --from does not apply (said on stderr) and those partitions start by
/// --offset-reset.
async fn seed_group_start(
    broker: &Broker,
    args: &ConsumeArgs,
    group: &str,
    topic: &str,
    start: StartAt,
) -> CliResult<()> {
    let context = format!("starting group {group:?} on topic {topic:?}");
    let committed: std::collections::BTreeSet<u32> = broker
        .groups()
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.to_string(),
            topic: Some(topic.to_string()),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner()
        .offsets
        .into_iter()
        .map(|c| c.partition)
        .collect();
    let description = describe(broker, topic).await?.unwrap_or_default();
    let fresh: Vec<u32> = description
        .partitions
        .iter()
        .map(|p| p.partition)
        .filter(|p| !committed.contains(p))
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let by_time = match start {
        StartAt::TimestampMs(ms) => Some(offsets_for_time(broker, topic, &fresh, ms).await?),
        _ => None,
    };
    let mut offsets: Vec<TopicPartitionOffset> = Vec::new();
    for p in description
        .partitions
        .iter()
        .filter(|p| fresh.contains(&p.partition))
    {
        let (log_start, end) = (p.log_start_offset, p.end_offset);
        let offset = match start {
            StartAt::Offset(o) if o < log_start || o > end => {
                out_of_range_start(args, p.partition, o, log_start, end)?
            }
            StartAt::Offset(o) => o,
            _ => by_time
                .as_ref()
                .and_then(|m| m.get(&p.partition).copied())
                .unwrap_or(end),
        };
        offsets.push(TopicPartitionOffset {
            topic: topic.to_string(),
            partition: p.partition,
            offset,
            metadata: String::new(),
            topic_id: 0,
        });
    }
    let committed = broker
        .groups()
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.to_string(),
            member_id: String::new(),
            generation: None,
            offsets,
        })
        .await;
    match committed {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            note(&format!(
                "note: group {group} has live members, so --from does not apply; partitions \
                 without a committed offset start by --offset-reset"
            ));
            Ok(())
        }
        Err(status) => Err(broker.error(&context, &status)),
    }
}

/// A group member's stream ended with DATA_LOSS: name the damaged partition and
/// offset, and how the group gets past it (the broker ends the whole membership, so
/// the other partitions wait for a group that no longer reads the damaged one).
async fn group_damage_error(
    broker: &Broker,
    group: &str,
    gm: &GroupMember,
    status: &tonic::Status,
) -> CliError {
    let found = gm
        .damaged()
        .await
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|d| {
            let damage = Damage::new(d.partition, d.offset, &client_status(&d.error));
            (d.topic, damage)
        });
    let Some((topic, damage)) = found else {
        return broker.error(&format!("consuming as group {group:?}"), status);
    };
    CliError::failure(
        format!(
            "partition {} of topic {topic:?} could not be read past offset {}: the batch there \
             is damaged (DATA_LOSS: {}); what was printed before it is committed",
            damage.partition, damage.offset, damage.cause
        ),
        format!(
            "{DAMAGE_TODO}; to skip it, move the group past the damaged batch: `tidelog group \
             reset-offsets --group {group} --topic {topic}:{} --to-offset {} --execute`",
            damage.partition,
            past_damaged_batch(&damage.cause).map_or("OFFSET".to_string(), |o| o.to_string())
        ),
    )
    .with_code(tonic::Code::DataLoss)
}

/// Before leaving the group: flush what was printed and commit it, with every
/// partition still to hand over ([`Member::held`]). A commit refused for a rebalance
/// (a member joined or left a moment ago) is made again in the generation of the
/// Assignment that comes, as many times as the group moves on: the broker keeps the
/// partitions a rebalance takes from this member (what is received meanwhile is not
/// printed) until that commit or the end of the handover window. An error when
/// printed messages stay uncommitted (the group's next reader prints them again),
/// here or earlier in the run ([`Member::given_up`]).
async fn final_commit(
    broker: &Broker,
    group: &str,
    source: Source<'_>,
    gm: &mut GroupMember,
    member: &mut Member,
    printer: &mut Printer,
) -> CliResult<()> {
    // Only what reached the reader counts as printed.
    if printer.out.flush().is_err() {
        return Ok(());
    }
    // Where the member's own handover commits must stop on partitions whose messages
    // came after the refusal and were not printed.
    let mut unprinted: BTreeMap<Tp, u64> = BTreeMap::new();
    let mut rebalances = 0;
    loop {
        let refused = match commit_held(gm, broker, group, member).await {
            Ok(_) => break,
            Err(refused) => refused,
        };
        if refused.code != tonic::Code::FailedPrecondition {
            let lost = member.uncommitted(&member.held());
            member.give_up(
                &lost,
                &format!("were not committed ({})", refused.error.message),
            );
            break;
        }
        if gm.rebalance_pending() && rebalances < FINAL_COMMIT_REBALANCES_MAX {
            rebalances += 1;
            if let Some(assignment) = next_assignment(gm, member, &mut unprinted).await {
                if let Source::Pattern(_) = source {
                    member.keep_topics(&assignment.topics);
                }
                // What it takes away stays this member's to commit in its generation.
                let held = member.held();
                member.handing_over = held
                    .into_iter()
                    .filter(|tp| !assignment.assigned.contains(tp))
                    .collect();
                member.member_id = assignment.member_id;
                member.generation = assignment.generation;
                member.assigned = assignment.assigned;
                continue;
            }
        }
        // The broker ended the membership (a stream that ended with an error takes the
        // member with it, even when its last batch arrived just before), or no
        // Assignment came: commit as a tool, which the broker accepts only while the
        // group has no live member.
        if let Err(refused) = commit_as_tool(broker, group, source, member).await {
            let lost = member.uncommitted(&member.held());
            member.give_up(
                &lost,
                &format!("were not committed ({})", refused.error.message),
            );
        }
        break;
    }
    if member.given_up.is_empty() {
        return Ok(());
    }
    Err(CliError::failure(
        format!(
            "messages printed of partition{} {} as group {group:?} were not committed",
            if member.given_up.len() == 1 { "" } else { "s" },
            member
                .given_up
                .iter()
                .map(|(topic, p)| format!("{topic}/{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "the group's next reader prints them again (the warnings above say why); to skip \
         them, move the group with `tidelog group reset-offsets` once its members stopped",
    ))
}

/// Most rebalances the final commit follows before it gives up on the membership (16
/// members started together leave one after another: one rebalance each).
const FINAL_COMMIT_REBALANCES_MAX: usize = 64;

/// After a commit refused for a rebalance: the member's next Assignment, passing over
/// what comes before it (not printed: `unprinted` keeps where each such partition's
/// printing stopped, so a handover commit the member makes by itself does not pass
/// it); None when none comes within the handover window (the membership ended, or
/// the stream did).
async fn next_assignment(
    gm: &mut GroupMember,
    member: &Member,
    unprinted: &mut BTreeMap<Tp, u64>,
) -> Option<Assigned> {
    let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, gm.next_event()).await {
            Ok(Ok(GroupEvent::Assigned(change))) => return Some(Assigned::from(change)),
            Ok(Ok(GroupEvent::Disconnected { .. })) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(GroupEvent::Messages(messages))) => {
                let tp = (messages.topic().to_string(), messages.partition());
                let at = member.printed.get(&tp).copied();
                unprinted
                    .entry(tp)
                    .or_insert_with(|| at.unwrap_or(messages[0].offset));
            }
            Ok(Ok(_)) => {}
        }
        for ((topic, partition), &at) in unprinted.iter() {
            gm.set_position(topic, *partition, at);
        }
    }
}

/// Commits, without a member id, what this former member printed and did not commit,
/// where that moves the group's offset forward (another member that had the partition
/// since may have committed past it). The broker refuses it while the group has live
/// members: then their committed offsets stand.
async fn commit_as_tool(
    broker: &Broker,
    group: &str,
    source: Source<'_>,
    member: &Member,
) -> Result<(), Refused> {
    let refused = |status: tonic::Status| Refused {
        code: status.code(),
        error: broker.error(&format!("committing offsets of group {group:?}"), &status),
    };
    let current: BTreeMap<Tp, u64> = broker
        .groups()
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.to_string(),
            topic: source.offsets_topic(),
        })
        .await
        .map_err(refused)?
        .into_inner()
        .offsets
        .into_iter()
        .map(|c| ((c.topic, c.partition), c.offset))
        .collect();
    let offsets: Vec<TopicPartitionOffset> = member
        .printed
        .iter()
        .filter(|(tp, offset)| current.get(*tp).is_none_or(|c| c < *offset))
        .map(|((topic, partition), &offset)| TopicPartitionOffset {
            topic: topic.clone(),
            partition: *partition,
            offset,
            metadata: String::new(),
            topic_id: 0,
        })
        .collect();
    if offsets.is_empty() {
        return Ok(());
    }
    broker
        .groups()
        .commit_offsets(CommitOffsetsRequest {
            group_id: group.to_string(),
            member_id: String::new(),
            generation: None,
            offsets,
        })
        .await
        .map_err(refused)?;
    Ok(())
}

/// A new Assignment arrived: every message of the partitions it takes away came
/// before it and was printed. Commit them in the new generation while the broker
/// keeps them for this member (its handover window), which also hands them over, so
/// their next owner starts right after what was printed. Partitions of a topic a
/// pattern no longer matches (deleted) are forgotten, not committed.
async fn hand_over(
    broker: &Broker,
    group: &str,
    source: Source<'_>,
    gm: &mut GroupMember,
    member: &mut Member,
    assignment: &Assigned,
) {
    let assigned = &assignment.assigned;
    if let Source::Pattern(_) = source {
        member.keep_topics(&assignment.topics);
    }
    let previous = std::mem::take(&mut member.assigned);
    // Held: assigned until now, or taken away by an earlier rebalance and not
    // handed over yet.
    let earlier = std::mem::take(&mut member.handing_over);
    let mut held = previous.clone();
    held.extend(earlier.iter().cloned());
    held.sort();
    held.dedup();
    let revoked: Vec<Tp> = held
        .iter()
        .filter(|tp| !assigned.contains(tp))
        .cloned()
        .collect();
    member.generation = assignment.generation;
    if member.member_id.is_empty() {
        member.assigned = previous;
        return;
    }
    // With nothing taken away in this member's view a commit is made all the same (an
    // empty one if nothing is new): the client's GroupMember would otherwise make its
    // own handover commit, of what it returned, for partitions it still counts as
    // taken away, unknown to what this member records as committed.
    // Still assigned and revoked alike: one commit, all or nothing.
    let mut scope = held;
    scope.extend(assigned.iter().cloned());
    scope.sort();
    scope.dedup();
    // Refused in the group's current generation, a window has ended (this member's
    // output stalled): without the partitions of an earlier refused handover first
    // (theirs is the oldest), then without any it took away.
    let mut fallbacks: Vec<Vec<Tp>> = vec![Vec::new()];
    let earlier_lost = member.uncommitted(earlier.iter().filter(|tp| !assigned.contains(tp)));
    if !earlier_lost.is_empty() {
        fallbacks.push(earlier_lost);
    }
    let all_lost = member.uncommitted(&revoked);
    if fallbacks.last() != Some(&all_lost) {
        fallbacks.push(all_lost);
    }
    let mut outcome = Ok(0);
    let mut lost: &[Tp] = &[];
    for (i, dropped) in fallbacks.iter().enumerate() {
        lost = dropped.as_slice();
        let tried: Vec<Tp> = scope
            .iter()
            .filter(|tp| !dropped.contains(tp))
            .cloned()
            .collect();
        let committed = match commit(gm, broker, group, member, &tried).await {
            // Nothing new to commit: an empty commit ends the window at once.
            Ok(0) => empty_commit(gm, broker, group).await,
            other => other,
        };
        outcome = match committed {
            Ok(_) => Ok(0),
            Err(refused)
                if refused.code == tonic::Code::FailedPrecondition && gm.rebalance_pending() =>
            {
                // The group moved on again before this commit (a member joined or left
                // meanwhile): the broker keeps the revoked partitions for this member
                // until its window ends, so they are committed with the next
                // Assignment, in its generation (or by any commit before it: they
                // stay held), or are this member's own again if it gives them back.
                member.give_up(dropped, WINDOW_ENDED);
                member.handing_over = revoked
                    .iter()
                    .filter(|tp| !dropped.contains(tp))
                    .cloned()
                    .collect();
                member.assigned = previous;
                return;
            }
            Err(refused)
                if refused.code == tonic::Code::FailedPrecondition && i + 1 < fallbacks.len() =>
            {
                continue;
            }
            Err(refused) => Err(refused),
        };
        break;
    }
    match outcome {
        Ok(_) => member.give_up(lost, WINDOW_ENDED),
        Err(refused) => {
            let lost = member.uncommitted(&revoked);
            if lost.is_empty() {
                if refused.code != tonic::Code::FailedPrecondition {
                    commit_warning(&refused.error);
                }
            } else {
                member.give_up(
                    &lost,
                    &format!(
                        "moved to another member before the printed messages were committed ({})",
                        refused.error.message
                    ),
                );
            }
        }
    }
    member.forget(&revoked);
    member.assigned = previous;
}

/// Why [`Member::give_up`]: the broker no longer keeps a partition a rebalance took
/// from this member for its commit (the handover window ended first, or was not kept).
const WINDOW_ENDED: &str = "moved to another member before the printed messages were committed (the broker no longer kept it for this member's commit)";

/// Commits what was printed of every partition the member holds ([`Member::held`]),
/// in its latest generation. When a partition of an earlier refused handover is why
/// the commit is refused in the group's current generation (its window has ended,
/// this member's output stalled), those partitions are given up and the rest
/// committed.
async fn commit_held(
    gm: &mut GroupMember,
    broker: &Broker,
    group: &str,
    member: &mut Member,
) -> Result<usize, Refused> {
    let held = member.held();
    let refused = match commit(gm, broker, group, member, &held).await {
        Ok(count) => {
            handed_over(member, count);
            return Ok(count);
        }
        Err(refused) => refused,
    };
    if refused.code != tonic::Code::FailedPrecondition || gm.rebalance_pending() {
        return Err(refused);
    }
    let lost = member.uncommitted(&member.handing_over);
    if lost.is_empty() {
        return Err(refused);
    }
    member.give_up(&lost, WINDOW_ENDED);
    let held = member.held();
    let count = commit(gm, broker, group, member, &held).await?;
    handed_over(member, count);
    Ok(count)
}

/// After a commit of `count` partitions in the member's latest generation: the
/// broker handed over every partition it kept for this member (one accepted commit
/// ends every window), so those still to hand over are another member's now.
fn handed_over(member: &mut Member, count: usize) {
    if count > 0 {
        let done: Vec<Tp> = member.handing_over.iter().cloned().collect();
        member.forget(&done);
    }
}

/// A commit with no offsets: tells the broker this member saw its latest Assignment,
/// which ends its handover window.
async fn empty_commit(
    gm: &mut GroupMember,
    broker: &Broker,
    group: &str,
) -> Result<usize, Refused> {
    match gm.commit_offsets(&[]).await {
        Ok(()) => Ok(0),
        // A broker without handover windows has nothing to end.
        Err(tidelog_client::Error::InvalidArgument { .. }) => Ok(0),
        Err(error) => Err(refused(broker, group, &error)),
    }
}

/// Takes a new assignment: where each partition stands and where it ends.
async fn on_assignment(
    broker: &Broker,
    group: &str,
    source: Source<'_>,
    member: &mut Member,
    assignment: Assigned,
) -> CliResult<()> {
    member.member_id = assignment.member_id;
    member.generation = assignment.generation;
    member.topics = assignment.topics.into_iter().collect();
    member.assigned = assignment.assigned;
    let topics: BTreeSet<String> = member.assigned.iter().map(|(t, _)| t.clone()).collect();
    member.end.clear();
    for topic in topics {
        // A topic deleted a moment ago has no end to reach: the next Assignment
        // drops it.
        let Ok(Some(description)) = describe(broker, &topic).await else {
            continue;
        };
        for p in &description.partitions {
            member
                .end
                .insert((topic.clone(), p.partition), p.end_offset);
        }
    }
    let context = format!("fetching the committed offsets of group {group:?}");
    let committed = broker
        .groups()
        .fetch_offsets(FetchOffsetsRequest {
            group_id: group.to_string(),
            topic: source.offsets_topic(),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner()
        .offsets;
    for c in committed {
        let tp = (c.topic, c.partition);
        if member.assigned.contains(&tp) {
            // What this member printed of a partition it kept is checked against its
            // own commits, not the group's offset now: another member that had it in
            // between (an Assignment that took it away and the one that gave it back
            // came as one) committed past that, and re-committing it would move the
            // group back, or be refused.
            if !member.printed.contains_key(&tp) {
                member.committed.insert(tp.clone(), c.offset);
            }
            let position = member.position.entry(tp).or_insert(c.offset);
            *position = (*position).max(c.offset);
        }
    }
    Ok(())
}

/// A commit the broker refused, with its status code.
#[derive(Debug)]
struct Refused {
    code: tonic::Code,
    error: CliError,
}

fn commit_warning(error: &CliError) {
    note(&format!(
        "warning: {}; the uncommitted messages will be delivered again",
        error.message
    ));
}

/// The error of a refused commit, with its status code.
fn refused(broker: &Broker, group: &str, error: &tidelog_client::Error) -> Refused {
    Refused {
        code: client_status(error).code(),
        error: broker.client_error(&format!("committing offsets of group {group:?}"), error),
    }
}

/// Commits, with the member's current generation, what was printed on `partitions`
/// and not committed yet; returns how many partitions it committed.
async fn commit(
    gm: &mut GroupMember,
    broker: &Broker,
    group: &str,
    member: &mut Member,
    partitions: &[Tp],
) -> Result<usize, Refused> {
    let offsets: Vec<(&str, u32, u64)> = member
        .printed
        .iter()
        .filter(|(tp, offset)| partitions.contains(tp) && member.committed.get(*tp) != Some(offset))
        .map(|((topic, partition), &offset)| (topic.as_str(), *partition, offset))
        .collect();
    if offsets.is_empty() || member.member_id.is_empty() {
        return Ok(0);
    }
    match gm.commit_offsets(&offsets).await {
        Ok(()) => {
            let count = offsets.len();
            let done: Vec<(Tp, u64)> = offsets
                .into_iter()
                .map(|(topic, partition, offset)| ((topic.to_string(), partition), offset))
                .collect();
            member.committed.extend(done);
            Ok(count)
        }
        Err(error) => Err(refused(broker, group, &error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_caught_up_when_every_partition_reached_its_end() {
        let tp = |topic: &str, p: u32| (topic.to_string(), p);
        let mut member = Member {
            assigned: vec![tp("a", 0), tp("b", 0)],
            ..Member::default()
        };
        member.end.insert(tp("a", 0), 5);
        member.end.insert(tp("b", 0), 0);
        assert!(!member.caught_up());
        member.position.insert(tp("a", 0), 5);
        assert!(!member.caught_up(), "b/0's position is unknown");
        member.position.insert(tp("b", 0), 0);
        assert!(member.caught_up());
        member.assigned.clear();
        assert!(member.caught_up());
    }
}
