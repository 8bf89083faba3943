//! `tidelog group`: list, describe, delete, reset-offsets.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tidelog_proto::v1::{
    DeleteGroupRequest, DeleteOffsetsRequest, DescribeGroupRequest, GroupDescription, GroupMember,
    GroupState, ListGroupsRequest, ListTopicsRequest, OffsetChange, PartitionLag,
    ResetOffsetsRequest, TopicPartitionOffset, reset_offsets_request as reset,
};

use crate::args::{GroupCommand, ResetMode, ResetOffsetsArgs};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, Table, note};
use crate::spec::{OffsetRow, TopicSpec, parse_offsets_csv, write_offsets_csv};

pub async fn run(broker: &Broker, command: GroupCommand, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    match command {
        GroupCommand::List => {
            let groups = broker
                .groups()
                .list_groups(ListGroupsRequest {})
                .await
                .map_err(|s| broker.error("listing groups", &s))?
                .into_inner()
                .groups;
            if json {
                let list: Vec<Value> = groups
                    .iter()
                    .map(|g| {
                        json!({"group_id": g.group_id, "state": state_name(g.state), "member_count": g.member_count})
                    })
                    .collect();
                out.json_pretty(&json!({ "groups": list }))?;
            } else if groups.is_empty() {
                out.line("no consumer groups")?;
            } else {
                let mut table = Table::new(&["GROUP", "STATE", ">MEMBERS"]);
                for g in &groups {
                    table.row(vec![
                        g.group_id.clone(),
                        state_name(g.state).into(),
                        g.member_count.to_string(),
                    ]);
                }
                out.text(&table.render())?;
            }
        }
        GroupCommand::Describe(args) => {
            let context = format!("describing group {:?}", args.group);
            let group = broker
                .groups()
                .describe_group(DescribeGroupRequest {
                    group_id: args.group.clone(),
                })
                .await
                .map_err(|s| broker.error(&context, &s))?
                .into_inner()
                .group
                .ok_or_else(|| {
                    CliError::failure(
                        format!("{context} failed: the broker's answer has no group"),
                        "check that tidelogd and tidelog are the same version",
                    )
                })?;
            if json {
                out.json_pretty(&group_json(&group))?;
            } else {
                out.text(&render_group(&group))?;
            }
        }
        GroupCommand::Delete(args) => {
            let context = format!("deleting group {:?}", args.group);
            broker
                .groups()
                .delete_group(DeleteGroupRequest {
                    group_id: args.group.clone(),
                })
                .await
                .map_err(|s| broker.error(&context, &s))?;
            if json {
                out.json_pretty(&json!({"deleted": args.group}))?;
            } else {
                out.line(&format!("deleted group {}", args.group))?;
            }
        }
        GroupCommand::DeleteOffsets(args) => {
            let context = format!(
                "deleting the offsets of group {:?} for topic {:?}",
                args.group, args.topic.topic
            );
            broker
                .groups()
                .delete_offsets(DeleteOffsetsRequest {
                    group_id: args.group.clone(),
                    topic: args.topic.topic.clone(),
                    partitions: args.topic.partitions.clone(),
                })
                .await
                .map_err(|s| broker.error(&context, &s))?;
            let partitions = if args.topic.partitions.is_empty() {
                "every partition".to_string()
            } else {
                let list: Vec<String> = args.topic.partitions.iter().map(u32::to_string).collect();
                let noun = if list.len() == 1 {
                    "partition"
                } else {
                    "partitions"
                };
                format!("{noun} {}", list.join(", "))
            };
            if json {
                out.json_pretty(&json!({
                    "group": args.group,
                    "topic": args.topic.topic,
                    "partitions": args.topic.partitions,
                    "deleted": true,
                }))?;
            } else {
                out.line(&format!(
                    "deleted the offsets of group {} for {} of {}",
                    args.group, partitions, args.topic.topic
                ))?;
            }
        }
        GroupCommand::ResetOffsets(args) => reset_offsets(broker, &args, json, &mut out).await?,
    }
    out.flush()
}

pub fn state_name(state: i32) -> &'static str {
    match GroupState::try_from(state) {
        Ok(GroupState::Empty) => "EMPTY",
        Ok(GroupState::Rebalancing) => "REBALANCING",
        Ok(GroupState::Stable) => "STABLE",
        _ => "UNKNOWN",
    }
}

/// Which member owns each (topic, partition).
fn owners(group: &GroupDescription) -> BTreeMap<(&str, u32), &str> {
    let mut owners = BTreeMap::new();
    for m in &group.members {
        for &p in &m.partitions {
            owners.insert((m.topic.as_str(), p), m.member_id.as_str());
        }
        // A member on a pattern: its partitions per matched topic.
        for t in &m.topics {
            for &p in &t.partitions {
                owners.insert((t.topic.as_str(), p), m.member_id.as_str());
            }
        }
    }
    owners
}

pub fn group_json(group: &GroupDescription) -> Value {
    let owners = owners(group);
    let members: Vec<Value> = group
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "client_address": m.client_address,
                "topic": m.topic,
                "partitions": m.partitions,
                "topic_pattern": m.topic_pattern,
                "topics": m.topics.iter().map(|t| json!({
                    "topic": t.topic,
                    "partitions": t.partitions,
                })).collect::<Vec<Value>>(),
                "filter": m.filter,
                "disconnected": m.disconnected,
                "session_expires_in_ms": m.session_expires_in_ms,
            })
        })
        .collect();
    let partitions: Vec<Value> = group
        .lags
        .iter()
        .map(|l| {
            // An unavailable partition's offsets are unknown: null, not 0.
            let known = |offset: u64| (!l.unavailable).then_some(offset);
            json!({
                "topic": l.topic,
                "partition": l.partition,
                "committed_offset": l.committed_offset,
                "log_start_offset": known(l.log_start_offset),
                "end_offset": known(l.end_offset),
                "lag": l.lag,
                "lag_from_log_start": l.lag_from_log_start,
                "deleted_unread": deleted_unread(l),
                "member_id": owners.get(&(l.topic.as_str(), l.partition)),
                "unavailable": l.unavailable,
                "unavailable_reason": l.unavailable_reason,
            })
        })
        .collect();
    let totals = LagTotals::of(group);
    json!({
        "group_id": group.group_id,
        "state": state_name(group.state),
        "generation": group.generation,
        "members": members,
        "partitions": partitions,
        "total_lag": totals.committed,
        "partitions_without_commit": totals.without_commit,
        "lag_without_commit": totals.without_commit_messages,
        "unavailable_partitions": group.lags.iter().filter(|l| l.unavailable).count(),
    })
}

/// A group's lag, kept apart by whether the partition has a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagTotals {
    /// Summed over the partitions with a committed offset (unavailable partitions,
    /// whose lag is unknown, are not in any of these).
    pub committed: u64,
    /// Partitions without a committed offset.
    pub without_commit: usize,
    /// Their messages from the log start (`lag_from_log_start` summed): what a
    /// member reads of them with `--offset-reset earliest`.
    pub without_commit_messages: u64,
}

impl LagTotals {
    pub fn of(group: &GroupDescription) -> LagTotals {
        let without: Vec<_> = group
            .lags
            .iter()
            .filter(|l| l.lag.is_none() && !l.unavailable)
            .collect();
        LagTotals {
            committed: group.lags.iter().filter_map(|l| l.lag).sum(),
            without_commit: without.len(),
            without_commit_messages: without.iter().map(|l| lag_from_log_start(l)).sum(),
        }
    }
}

/// A partition's messages from the log start, what the broker reports for one
/// without a commit (from a broker before `lag_from_log_start`: the same span).
fn lag_from_log_start(lag: &PartitionLag) -> u64 {
    lag.lag_from_log_start
        .unwrap_or_else(|| lag.end_offset.saturating_sub(lag.log_start_offset))
}

/// Messages between the group's commit and the log start: deleted (retention, or a
/// `delete-records`) before the group read them. 0 without a commit or at/above the
/// log start.
fn deleted_unread(lag: &PartitionLag) -> u64 {
    if lag.unavailable {
        return 0;
    }
    lag.committed_offset.map_or(0, |committed| {
        lag.log_start_offset.saturating_sub(committed)
    })
}

/// How a member shows in the STATUS column: connected, or kept by its session
/// timeout after its stream ended, with the seconds left (rounded up).
fn member_status(member: &GroupMember) -> String {
    match (member.disconnected, member.session_expires_in_ms) {
        (false, _) => "connected".into(),
        (true, Some(ms)) => format!("disconnected, leaves in {} s", ms.div_ceil(1000)),
        (true, None) => "disconnected".into(),
    }
}

fn render_group(group: &GroupDescription) -> String {
    let members = group.members.len();
    let disconnected = group.members.iter().filter(|m| m.disconnected).count();
    let mut text = format!(
        "group {}  state {}  generation {}  ({members} member{}{})\n",
        group.group_id,
        state_name(group.state),
        group.generation,
        if members == 1 { "" } else { "s" },
        if disconnected > 0 {
            format!(", {disconnected} disconnected")
        } else {
            String::new()
        }
    );
    let dash = || "-".to_string();
    let owners = owners(group);
    let mut table = Table::new(&[
        "TOPIC",
        ">PARTITION",
        ">COMMITTED",
        ">LOG-START",
        ">END",
        ">LAG",
        "MEMBER",
    ]);
    for l in &group.lags {
        if l.unavailable {
            // Its offsets are unknown until it is repaired (see the footnote).
            table.row(vec![
                l.topic.clone(),
                l.partition.to_string(),
                l.committed_offset.map_or_else(dash, |o| o.to_string()),
                "?".into(),
                "?".into(),
                "unavailable".into(),
                owners
                    .get(&(l.topic.as_str(), l.partition))
                    .map_or_else(dash, |m| m.to_string()),
            ]);
            continue;
        }
        table.row(vec![
            l.topic.clone(),
            l.partition.to_string(),
            l.committed_offset.map_or_else(dash, |o| o.to_string()),
            l.log_start_offset.to_string(),
            l.end_offset.to_string(),
            match (l.lag, l.committed_offset) {
                // Some of it was deleted unread: marked (see the footnote).
                (Some(lag), _) if deleted_unread(l) > 0 => format!("{lag}!"),
                (Some(lag), _) => lag.to_string(),
                // No commit: counted from the log start, marked (see the footnote).
                (None, None) => format!("{}*", lag_from_log_start(l)),
                (None, Some(_)) => dash(),
            },
            owners
                .get(&(l.topic.as_str(), l.partition))
                .map_or_else(dash, |m| m.to_string()),
        ]);
    }
    if !table.is_empty() {
        text.push('\n');
        text.push_str(&table.render());
        let totals = LagTotals::of(group);
        text.push_str(&format!("total lag {}", totals.committed));
        if totals.without_commit > 0 {
            let n = totals.without_commit;
            text.push_str(&format!(
                ", plus {} message{} on {n} partition{} without a commit (LAG marked *)\n\
                 * no commit: LAG counts from the log start; a member starts such a partition \
                 per its --offset-reset (earliest reads these messages, latest skips them)",
                totals.without_commit_messages,
                if totals.without_commit_messages == 1 {
                    ""
                } else {
                    "s"
                },
                if n == 1 { "" } else { "s" },
            ));
        }
        let deleted: Vec<u64> = group.lags.iter().map(deleted_unread).collect();
        let below = deleted.iter().filter(|&&n| n > 0).count();
        if below > 0 {
            let messages: u64 = deleted.iter().sum();
            text.push_str(&format!(
                "\n! the commit is below the log start on {below} partition{}: {messages} \
                 message{} of that lag {} deleted before the group read {}; a member goes on \
                 per its --offset-reset (earliest: from the log start)",
                if below == 1 { "" } else { "s" },
                if messages == 1 { "" } else { "s" },
                if messages == 1 { "was" } else { "were" },
                if messages == 1 { "it" } else { "them" },
            ));
        }
        for l in group.lags.iter().filter(|l| l.unavailable) {
            text.push_str(&format!(
                "\nunavailable: {}/{} (its offsets and lag are unknown, not in the total): {}",
                l.topic, l.partition, l.unavailable_reason
            ));
        }
        text.push('\n');
    }
    if members > 0 {
        let mut table = Table::new(&[
            "MEMBER",
            "STATUS",
            "CLIENT-ID",
            "ADDRESS",
            "TOPIC",
            "PARTITIONS",
        ]);
        let list = |partitions: &[u32]| {
            if partitions.is_empty() {
                "-".to_string()
            } else {
                partitions
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        for m in &group.members {
            if m.topic_pattern.is_empty() {
                table.row(vec![
                    m.member_id.clone(),
                    member_status(m),
                    m.client_id.clone(),
                    m.client_address.clone(),
                    match m.topic.is_empty() {
                        // Under --auth: a topic this token may not describe.
                        true => "(a topic you may not describe)".into(),
                        false => m.topic.clone(),
                    },
                    list(&m.partitions),
                ]);
                continue;
            }
            // A pattern member: the pattern, then one row per matched topic.
            table.row(vec![
                m.member_id.clone(),
                member_status(m),
                m.client_id.clone(),
                m.client_address.clone(),
                format!("pattern {}", m.topic_pattern),
                if m.topics.is_empty() {
                    "(no topic matches yet)".into()
                } else {
                    String::new()
                },
            ]);
            for t in &m.topics {
                table.row(vec![
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("  {}", t.topic),
                    list(&t.partitions),
                ]);
            }
        }
        text.push('\n');
        text.push_str(&table.render());
        for m in group.members.iter().filter(|m| !m.filter.is_empty()) {
            text.push_str(&format!("filter of {}: {}\n", m.member_id, m.filter));
        }
        if disconnected > 0 {
            text.push_str(
                "a disconnected member's stream ended (its consumer was killed or lost its \
                 connection); nobody reads its partitions until it reconnects, or until its \
                 session timeout ends and the group rebalances them\n",
            );
        }
    }
    text
}

/// The spec of every mode but `--from-file`.
fn spec_of(mode: &ResetMode) -> Option<reset::Spec> {
    Some(if mode.to_earliest {
        reset::Spec::ToEarliest(reset::ToEarliest {})
    } else if mode.to_latest {
        reset::Spec::ToLatest(reset::ToLatest {})
    } else if let Some(offset) = mode.to_offset {
        reset::Spec::ToOffset(offset)
    } else if let Some(ms) = mode.to_datetime {
        reset::Spec::ToDatetimeMs(ms)
    } else if let Some(ms) = mode.by_duration {
        reset::Spec::ByDurationMs(ms)
    } else if let Some(n) = mode.shift_by {
        reset::Spec::ShiftBy(n)
    } else if mode.to_current {
        reset::Spec::ToCurrent(reset::ToCurrent {})
    } else {
        return None;
    })
}

/// Several `--topic` flags naming one topic become one scope: all partitions if any
/// flag gave none, else the union.
pub fn merge_specs(specs: &[TopicSpec]) -> Vec<TopicSpec> {
    let mut merged: Vec<TopicSpec> = Vec::new();
    for spec in specs {
        match merged.iter_mut().find(|m| m.topic == spec.topic) {
            Some(m) if m.partitions.is_empty() || spec.partitions.is_empty() => {
                m.partitions.clear();
            }
            Some(m) => {
                m.partitions.extend(&spec.partitions);
                m.partitions.sort_unstable();
                m.partitions.dedup();
            }
            None => merged.push(spec.clone()),
        }
    }
    merged
}

async fn reset_call(
    broker: &Broker,
    request: ResetOffsetsRequest,
) -> CliResult<(Vec<OffsetChange>, bool)> {
    let context = format!(
        "{} offsets of group {:?}",
        if request.execute {
            "resetting"
        } else {
            "computing new"
        },
        request.group_id
    );
    let response = broker
        .groups()
        .reset_offsets(request)
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner();
    Ok((response.changes, response.executed))
}

/// The error of a `--from-file` reset the broker refused because a topic of the file
/// was deleted and created again since its offsets were exported: the rows whose id
/// is no longer their topic's, and what to do. `None` when no row is (the refusal was
/// of something else) or the topics cannot be listed.
async fn recreated_rows_error(
    broker: &Broker,
    path: &std::path::Path,
    rows: &[OffsetRow],
) -> Option<CliError> {
    let topics = broker
        .admin()
        .list_topics(ListTopicsRequest {
            include_internal: true,
        })
        .await
        .ok()?
        .into_inner()
        .topics;
    let stale: Vec<&OffsetRow> = rows
        .iter()
        .filter(|row| {
            let now = topics.iter().find(|t| t.name == row.topic);
            match (row.topic_id, now) {
                (Some(exported), Some(now)) => tidelog_storage::TopicId::from_wire(now.topic_id)
                    .is_some_and(|now| !now.accepts_wire(exported.get())),
                _ => false,
            }
        })
        .collect();
    if stale.is_empty() {
        return None;
    }
    let said: Vec<String> = stale
        .iter()
        .map(|row| {
            let exported = row.topic_id.map(|id| id.to_string()).unwrap_or_default();
            let now = topics
                .iter()
                .find(|t| t.name == row.topic)
                .map_or(0, |t| t.topic_id);
            format!(
                "row {},{},{},{exported} of {}: topic {:?} was deleted and created again since \
                 the export (its id was {exported}, now {now:016x}), so its offsets start over \
                 and offset {} would skip the new topic's first messages",
                row.topic,
                row.partition,
                row.offset,
                path.display(),
                row.topic,
                row.offset,
            )
        })
        .collect();
    let mut names: Vec<&str> = stale.iter().map(|row| row.topic.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let topic_flags: Vec<String> = names.iter().map(|t| format!("--topic {t}")).collect();
    Some(
        CliError::failure(
            format!("{}; nothing was committed", said.join("; ")),
            format!(
                "reset {} with {} --to-earliest (or another mode), or, to commit the saved \
                 offsets anyway, empty the topic_id field of {}",
                if names.len() == 1 { "it" } else { "them" },
                topic_flags.join(" "),
                if stale.len() == 1 {
                    "its row"
                } else {
                    "their rows"
                },
            ),
        )
        .with_code(tonic::Code::FailedPrecondition),
    )
}

async fn reset_offsets(
    broker: &Broker,
    args: &ResetOffsetsArgs,
    json: bool,
    out: &mut Stdout,
) -> CliResult<()> {
    let execute = args.execute;
    let group = args.group.clone();
    let request = |scope, spec, execute| ResetOffsetsRequest {
        group_id: group.clone(),
        scope,
        spec: Some(spec),
        execute,
    };
    let (mut changes, executed) = if let Some(path) = &args.mode.from_file {
        if !args.topics.is_empty() || args.all_topics || args.topic_pattern.is_some() {
            return Err(CliError::usage(
                "--from-file takes its topics and partitions from the file",
                "drop --topic / --all-topics / --topic-pattern",
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::io(format!("reading {}", path.display()), &e))?;
        let rows = parse_offsets_csv(&text, &args.group).map_err(|e| {
            CliError::failure(
                format!("{} is not an offsets CSV: {e}", path.display()),
                "give topic,partition,offset[,topic_id] lines (as --export writes them)",
            )
        })?;
        let offsets = rows
            .iter()
            .map(|r| TopicPartitionOffset {
                topic: r.topic.clone(),
                partition: r.partition,
                offset: r.offset,
                metadata: String::new(),
                topic_id: r.topic_id.map_or(0, tidelog_storage::TopicId::get),
            })
            .collect();
        let spec = reset::Spec::Explicit(reset::ExplicitOffsets { offsets });
        match reset_call(broker, request(None, spec, execute)).await {
            Err(error) if error.code == Some(tonic::Code::FailedPrecondition) => {
                return Err(recreated_rows_error(broker, path, &rows)
                    .await
                    .unwrap_or(error));
            }
            result => result?,
        }
    } else {
        let spec = spec_of(&args.mode).ok_or_else(|| {
            CliError::usage(
                "no reset mode",
                "give one of --to-earliest, --to-latest, --to-offset, --to-datetime, \
                 --by-duration, --shift-by, --to-current, --from-file",
            )
        })?;
        let specs = merge_specs(&args.topics);
        if let Some(pattern) = &args.topic_pattern {
            if let Err(error) = tidelog_storage::TopicPattern::parse(pattern) {
                return Err(CliError::usage(
                    format!("--topic-pattern {error}"),
                    r"give a regular expression that matches whole topic names, e.g. --topic-pattern 'orders\..*'",
                ));
            }
            let scope = reset::Scope::TopicPattern(reset::TopicPatternScope {
                topic_pattern: pattern.clone(),
            });
            reset_call(broker, request(Some(scope), spec, execute)).await?
        } else if args.all_topics {
            let scope = reset::Scope::AllTopics(reset::AllTopics {});
            reset_call(broker, request(Some(scope), spec, execute)).await?
        } else if specs.len() == 1 {
            let scope = reset::Scope::Topic(reset::TopicScope {
                topic: specs[0].topic.clone(),
                partitions: specs[0].partitions.clone(),
            });
            reset_call(broker, request(Some(scope), spec, execute)).await?
        } else if specs.is_empty() {
            return Err(CliError::usage(
                "no partitions to reset",
                "give --topic TOPIC[:P,P..] (repeatable), --topic-pattern REGEX or --all-topics",
            ));
        } else {
            // One scope per request: plan each topic by dry run, then commit the whole
            // plan in one explicit request, so the execute stays all-or-nothing.
            let mut plan = Vec::new();
            for s in &specs {
                let scope = reset::Scope::Topic(reset::TopicScope {
                    topic: s.topic.clone(),
                    partitions: s.partitions.clone(),
                });
                plan.extend(
                    reset_call(broker, request(Some(scope), spec.clone(), false))
                        .await?
                        .0,
                );
            }
            if execute && !plan.is_empty() {
                // The explicit request gets offsets already clamped: what the plan's
                // dry runs knew (the commit before, what was asked) is taken from them.
                let planned: BTreeMap<(String, u32), (Option<u64>, Option<i64>)> = plan
                    .iter()
                    .map(|c| {
                        let key = (c.topic.clone(), c.partition);
                        (key, (c.current_offset, c.clamped_from))
                    })
                    .collect();
                let offsets = plan
                    .iter()
                    .map(|c| TopicPartitionOffset {
                        topic: c.topic.clone(),
                        partition: c.partition,
                        offset: c.new_offset,
                        metadata: String::new(),
                        // The topic the plan was made on, or nothing is committed.
                        topic_id: c.topic_id,
                    })
                    .collect();
                let spec = reset::Spec::Explicit(reset::ExplicitOffsets { offsets });
                let (mut done, executed) = reset_call(broker, request(None, spec, true)).await?;
                for c in &mut done {
                    if let Some(&(before, asked)) = planned.get(&(c.topic.clone(), c.partition)) {
                        c.current_offset = before;
                        c.clamped_from = asked;
                    }
                }
                (done, executed)
            } else {
                (plan, false)
            }
        }
    };
    changes.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    // A pattern or --all-topics that names nothing is most likely a typo, or the wrong
    // group: say so, rather than "committed ... (0 partitions)".
    if changes.is_empty() {
        if let Some(pattern) = &args.topic_pattern {
            return Err(CliError::failure(
                format!(
                    "--topic-pattern {pattern:?} names no partition to reset for group {}",
                    args.group
                ),
                "check the pattern against `tidelog topic list` (it matches whole topic names); \
                 for --to-current and --shift-by only partitions with committed offsets count",
            ));
        }
        if args.all_topics {
            return Err(CliError::failure(
                format!(
                    "group {} has no committed offsets, so --all-topics names no partition",
                    args.group
                ),
                "check the group's name with `tidelog group list`, or name the topics with --topic",
            ));
        }
    }

    if args.export {
        let rows: Vec<OffsetRow> = changes
            .iter()
            .map(|c| OffsetRow {
                topic: c.topic.clone(),
                partition: c.partition,
                offset: c.new_offset,
                topic_id: tidelog_storage::TopicId::from_wire(c.topic_id),
            })
            .collect();
        out.text(&write_offsets_csv(&rows))?;
    } else if json {
        let list: Vec<Value> = changes
            .iter()
            .map(|c| {
                json!({
                    "topic": c.topic,
                    "topic_id": tidelog_storage::TopicId::from_wire(c.topic_id)
                        .map(|id| id.to_string()),
                    "partition": c.partition,
                    "current_offset": c.current_offset,
                    "new_offset": c.new_offset,
                    "clamped_from": c.clamped_from,
                })
            })
            .collect();
        out.json_pretty(&json!({"group_id": args.group, "executed": executed, "changes": list}))?;
    } else if changes.is_empty() {
        out.line(&format!(
            "no partitions to reset for group {} (for --to-current and --shift-by, only \
             partitions with committed offsets count)",
            args.group
        ))?;
    } else {
        let mut table = Table::new(&[
            "GROUP",
            "TOPIC",
            ">PARTITION",
            ">CURRENT-OFFSET",
            ">NEW-OFFSET",
        ]);
        for c in &changes {
            table.row(vec![
                args.group.clone(),
                c.topic.clone(),
                c.partition.to_string(),
                c.current_offset
                    .map_or_else(|| "-".into(), |o| o.to_string()),
                c.new_offset.to_string(),
            ]);
        }
        out.text(&table.render())?;
    }
    out.flush()?;
    if !json && !args.export {
        for c in &changes {
            if let Some(asked) = c.clamped_from {
                note(&clamped_note(c, asked));
            }
        }
    }
    if executed && !changes.is_empty() {
        note(&format!(
            "committed the new offsets of group {} ({} partition{})",
            args.group,
            changes.len(),
            if changes.len() == 1 { "" } else { "s" }
        ));
    } else if !json && !changes.is_empty() {
        note("dry run: nothing was committed; add --execute to commit these offsets");
    }
    Ok(())
}

/// What `tidelog` says of a partition whose reset was clamped to the log, as Kafka's
/// tool warns: the offset asked for, the bound it became, and why.
fn clamped_note(change: &OffsetChange, asked: i64) -> String {
    let (topic, partition, offset) = (&change.topic, change.partition, change.new_offset);
    if asked >= 0 && asked.unsigned_abs() > offset {
        format!(
            "{topic}/{partition}: offset {asked} is past the end of the log; set to the end, \
             {offset} (a commit past it would skip messages not yet written)"
        )
    } else if asked < 0 {
        format!(
            "{topic}/{partition}: offset {asked} is below 0 (the shift went past the first \
             offset); set to the log start, {offset}"
        )
    } else {
        format!(
            "{topic}/{partition}: offset {asked} is before the log start; set to the log \
             start, {offset} (the messages before it were deleted by retention)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topic: &str, partitions: &[u32]) -> TopicSpec {
        TopicSpec {
            topic: topic.into(),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn specs_of_one_topic_merge() {
        assert_eq!(
            merge_specs(&[spec("a", &[1]), spec("b", &[]), spec("a", &[0, 1])]),
            vec![spec("a", &[0, 1]), spec("b", &[])]
        );
        assert_eq!(
            merge_specs(&[spec("a", &[1]), spec("a", &[])]),
            vec![spec("a", &[])]
        );
    }

    /// A commit that retention left behind (below the log start) is marked: its lag
    /// counts messages the group will never read.
    #[test]
    fn a_commit_below_the_log_start_is_marked_with_what_was_deleted_unread() {
        let lag = |partition, committed, log_start, end| PartitionLag {
            topic: "orders".into(),
            partition,
            committed_offset: Some(committed),
            log_start_offset: log_start,
            end_offset: end,
            lag: Some(end - committed),
            lag_from_log_start: None,
            ..PartitionLag::default()
        };
        let group = GroupDescription {
            group_id: "late".into(),
            state: GroupState::Empty as i32,
            lags: vec![lag(0, 5, 240, 310), lag(1, 40, 40, 50)],
            ..GroupDescription::default()
        };
        let text = render_group(&group);
        assert!(
            text.contains("orders          0          5        240  310  305!  -\n"),
            "{text}"
        );
        assert!(
            text.contains("orders          1         40         40   50    10  -\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "! the commit is below the log start on 1 partition: 235 messages of that lag \
                 were deleted before the group read them"
            ),
            "{text}"
        );
        let value = group_json(&group);
        assert_eq!(value["partitions"][0]["deleted_unread"], 235);
        assert_eq!(value["partitions"][1]["deleted_unread"], 0);
        // Nothing below the log start: no mark, no footnote.
        let text = render_group(&GroupDescription {
            lags: vec![lag(1, 40, 40, 50)],
            ..group
        });
        assert!(!text.contains('!'), "{text}");
    }

    #[test]
    fn group_descriptions_show_owner_and_lag() {
        let group = GroupDescription {
            group_id: "billing".into(),
            state: GroupState::Stable as i32,
            generation: 3,
            members: vec![GroupMember {
                member_id: "m-1".into(),
                client_id: "cli".into(),
                client_address: "127.0.0.1:5000".into(),
                topic: "orders".into(),
                partitions: vec![0],
                filter: r#"key ^= "eu-""#.into(),
                ..GroupMember::default()
            }],
            lags: vec![
                PartitionLag {
                    topic: "orders".into(),
                    partition: 0,
                    committed_offset: Some(5),
                    log_start_offset: 0,
                    end_offset: 12,
                    lag: Some(7),
                    lag_from_log_start: None,
                    ..PartitionLag::default()
                },
                PartitionLag {
                    topic: "orders".into(),
                    partition: 1,
                    committed_offset: None,
                    log_start_offset: 0,
                    end_offset: 4,
                    lag: None,
                    lag_from_log_start: Some(4),
                    ..PartitionLag::default()
                },
            ],
        };
        let text = render_group(&group);
        assert!(text.starts_with("group billing  state STABLE  generation 3  (1 member)\n"));
        assert!(
            text.contains("orders          0          5          0   12    7  m-1\n"),
            "{text}"
        );
        // No commit: the partition's messages from the log start, marked, and the
        // total says how many such partitions and messages there are.
        assert!(
            text.contains("orders          1          -          0    4   4*  -\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "total lag 7, plus 4 messages on 1 partition without a commit (LAG marked *)\n\
                 * no commit: LAG counts from the log start; a member starts such a partition \
                 per its --offset-reset (earliest reads these messages, latest skips them)\n"
            ),
            "{text}"
        );
        assert!(text.contains("m-1     connected"), "{text}");
        let value = group_json(&group);
        assert!(text.contains("filter of m-1: key ^= \"eu-\"\n"), "{text}");
        assert_eq!(value["members"][0]["filter"], r#"key ^= "eu-""#);
        assert_eq!(value["total_lag"], 7);
        assert_eq!(value["partitions_without_commit"], 1);
        assert_eq!(value["partitions"][0]["member_id"], "m-1");
        assert_eq!(value["partitions"][1]["committed_offset"], Value::Null);
        assert_eq!(value["partitions"][1]["lag"], Value::Null);
        assert_eq!(value["partitions"][1]["lag_from_log_start"], 4);
        assert_eq!(value["partitions"][0]["lag_from_log_start"], Value::Null);
        assert_eq!(value["lag_without_commit"], 4);
        assert_eq!(value["state"], "STABLE");
        assert_eq!(value["members"][0]["disconnected"], false);
        assert_eq!(value["members"][0]["session_expires_in_ms"], Value::Null);
    }

    #[test]
    fn a_disconnected_member_shows_the_seconds_its_session_has_left() {
        let member = |id: &str, expires: Option<u64>| GroupMember {
            member_id: id.into(),
            client_id: "cli".into(),
            client_address: "127.0.0.1:5000".into(),
            topic: "orders".into(),
            partitions: vec![0],
            disconnected: expires.is_some(),
            session_expires_in_ms: expires,
            ..GroupMember::default()
        };
        let group = GroupDescription {
            group_id: "billing".into(),
            state: GroupState::Stable as i32,
            generation: 3,
            members: vec![member("m-1", None), member("m-2", Some(24_001))],
            lags: Vec::new(),
        };
        let text = render_group(&group);
        assert!(
            text.starts_with(
                "group billing  state STABLE  generation 3  (2 members, 1 disconnected)\n"
            ),
            "{text}"
        );
        assert!(text.contains("m-1     connected "), "{text}");
        assert!(
            text.contains("m-2     disconnected, leaves in 25 s "),
            "{text}"
        );
        assert!(text.contains("nobody reads its partitions"), "{text}");
        let value = group_json(&group);
        assert_eq!(value["members"][1]["disconnected"], true);
        assert_eq!(value["members"][1]["session_expires_in_ms"], 24_001);
        assert_eq!(value["members"][0]["disconnected"], false);
    }

    #[test]
    fn a_member_on_a_topic_the_token_may_not_describe_says_so() {
        let group = GroupDescription {
            group_id: "billing".into(),
            state: GroupState::Stable as i32,
            generation: 1,
            // What DescribeGroup answers under --auth for such a member.
            members: vec![GroupMember {
                member_id: "m-1".into(),
                ..GroupMember::default()
            }],
            lags: Vec::new(),
        };
        let text = render_group(&group);
        assert!(text.contains("(a topic you may not describe)"), "{text}");
    }
}
