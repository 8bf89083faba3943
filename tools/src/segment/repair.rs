//! `tidelog segment repair`: the fixes recovery would make, made now and shown.
//!
//! Without `--force` only what the broker's own recovery cuts is cut: a torn tail
//! past the partition's checkpoint (with the segments after it), segments that
//! start past the end of a predecessor that lost its unsynced tail, and the torn
//! tail of a state log (consumer offsets, queue state, delivery history). Bad or missing
//! index files are rewritten from the log. Everything
//! else (a bad batch with intact ones after it, a gap between segments, damage in
//! fsynced data) is refused: with `--force` the log is cut at the first such place
//! and later segments are moved aside. A state log record a newer tidelogd wrote is not
//! damage (run that build): `--force` never cuts it, only `--discard-newer` does. Never
//! changed: a topic's own files (`topic.config`, `topic.owner`, `topic.id`). Bytes are never destroyed: a cut tail goes to
//! `<file>.torn-at-<position>`, a segment moved aside keeps its bytes under
//! `<file>.removed-by-repair`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use tidelog_storage::checkpoint::{self, CheckpointFile};
use tidelog_storage::partition::FSYNC_FAILED_MARKER;
use tidelog_storage::recovery::{self, Content, Outcome, PlanOptions, RecoveryPlan, Removal};
use tidelog_storage::segment::{
    ID_INDEX_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX, segment_path,
};
use tidelog_storage::{FileSystem, OsFs};

use super::check::{
    Finding, NOT_REPAIRED, PartitionCheck, Severity, StateLogCheck, WRITTEN_BY_NEWER,
    check_partition, check_state_log, check_topic,
};
use super::layout::{self, StateLogKind};
use super::progress::{byte_progress, total_log_bytes};
use crate::args::RepairArgs;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, note};

/// Kinds of finding that only `--force` may cut.
const NEEDS_FORCE: [&str; 4] = [
    "corrupt_batch",
    "offset_gap",
    "durable_data_damaged",
    "durable_data_lost",
];

/// What repair does about one partition or state log, and what it refuses.
#[derive(Debug)]
enum Plan {
    Partition {
        plan: Box<RecoveryPlan>,
        refused: Vec<Finding>,
        /// Offsets `[from, to)` that new messages will be given again.
        reused: Option<(u64, u64)>,
    },
    StateLog {
        path: PathBuf,
        kind: StateLogKind,
        /// Where to cut it, and its length.
        cut: Option<(u64, u64)>,
        /// Whether the cut is at a record a newer build wrote (`--discard-newer`).
        cuts_newer: bool,
        refused: Vec<Finding>,
    },
    /// A topic's own files: never changed; what the broker refuses is reported.
    Topic { refused: Vec<Finding> },
}

impl Plan {
    fn refused(&self) -> &[Finding] {
        match self {
            Plan::Partition { refused, .. }
            | Plan::StateLog { refused, .. }
            | Plan::Topic { refused } => refused,
        }
    }

    /// What it changes, as (human line, JSON); fsyncs change nothing and are left out.
    fn changes(&self) -> Vec<(String, Value)> {
        match self {
            Plan::Partition { plan, .. } => plan
                .actions
                .iter()
                .filter_map(|a| describe(&plan.dir, a))
                .collect(),
            Plan::StateLog {
                path,
                cut: Some((position, len)),
                ..
            } => vec![cut_change(path, *position, *len)],
            Plan::StateLog { cut: None, .. } | Plan::Topic { .. } => Vec::new(),
        }
    }
}

fn cut_change(file: &Path, position: u64, len: u64) -> (String, Value) {
    let side = recovery::side_name(file, &format!("torn-at-{position}"));
    (
        format!(
            "cut {} at position {position} ({} bytes kept in {})",
            file.display(),
            len - position,
            side.display()
        ),
        json!({
            "action": "cut",
            "file": file.display().to_string(),
            "position": position,
            "bytes": len - position,
            "side_file": side.display().to_string(),
        }),
    )
}

/// A recovery action in words and JSON, or `None` for fsyncs.
fn describe(dir: &Path, action: &recovery::Action) -> Option<(String, Value)> {
    use recovery::Action;
    Some(match action {
        Action::RemoveLeftover { path } => (
            format!(
                "remove {}, a replacement that never got renamed in",
                path.display()
            ),
            json!({"action": "remove_leftover", "file": path.display().to_string()}),
        ),
        Action::CutTail {
            base,
            position,
            log_bytes,
        } => cut_change(&segment_path(dir, *base, LOG_SUFFIX), *position, *log_bytes),
        Action::Remove { base } => {
            let log = segment_path(dir, *base, LOG_SUFFIX);
            (
                format!(
                    "move segment {} (and its indexes) aside to *.removed-by-repair",
                    log.display()
                ),
                json!({"action": "move_aside", "file": log.display().to_string()}),
            )
        }
        Action::WriteIndex { base, .. } => {
            let index = segment_path(dir, *base, INDEX_SUFFIX);
            (
                format!(
                    "rewrite {} and .{TIME_INDEX_SUFFIX} from the log",
                    index.display()
                ),
                json!({"action": "rewrite_index", "file": index.display().to_string()}),
            )
        }
        Action::WriteIdIndex { base } => {
            let file = segment_path(dir, *base, ID_INDEX_SUFFIX);
            (
                format!("rewrite {} from the ids in the log", file.display()),
                json!({"action": "rewrite_id_index", "file": file.display().to_string()}),
            )
        }
        Action::CreateSegment { base } => {
            let log = segment_path(dir, *base, LOG_SUFFIX);
            (
                format!("create the empty segment {}", log.display()),
                json!({"action": "create_segment", "file": log.display().to_string()}),
            )
        }
        Action::WriteCheckpoint { end } => {
            let file = dir.join(checkpoint::FILE_NAME);
            (
                format!(
                    "rewrite {} (segment {}, position {}, next offset {})",
                    file.display(),
                    end.segment_base,
                    end.position,
                    end.offset
                ),
                json!({
                    "action": "rewrite_checkpoint",
                    "file": file.display().to_string(),
                    "segment_base": end.segment_base,
                    "position": end.position,
                    "next_offset": end.offset,
                }),
            )
        }
        Action::Sync { .. } | Action::SyncDir => return None,
    })
}

/// Plans the repair of one partition: the broker's own recovery plan, with `force`
/// if asked.
fn plan_partition(check: &PartitionCheck, force: bool) -> Plan {
    let after_failed_fsync = check.dir.join(FSYNC_FAILED_MARKER).exists();
    let plan = recovery::plan(
        check.observation.clone(),
        PlanOptions {
            force,
            after_failed_fsync,
        },
    );
    let refused = if force {
        Vec::new()
    } else {
        check
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error && NEEDS_FORCE.contains(&f.kind))
            .cloned()
            .collect()
    };
    // The highest offset the partition ever gave out, as far as its files tell.
    let old_end = check
        .observation
        .segments
        .iter()
        .map(|s| match &s.content {
            Content::Summary(summary) => summary.next_offset,
            Content::Scanned(report) => report.state.summary.next_offset,
        })
        .chain(check.observation.checkpoint.map(|c| c.next_offset))
        .max();
    let reused = plan
        .end()
        .zip(old_end)
        .filter(|(end, old)| end.offset < *old)
        .filter(|_| plan.durable_data_lost)
        .map(|(end, old)| (end.offset, old));
    Plan::Partition {
        plan: Box::new(plan),
        refused,
        reused,
    }
}

/// What [`run`] may cut beyond what the broker's own recovery cuts.
#[derive(Debug, Clone, Copy, Default)]
struct Overrides {
    /// `--force`: damage before the tail.
    force: bool,
    /// `--discard-newer`: a state log record a newer build wrote.
    discard_newer: bool,
}

fn plan_state_log(check: &StateLogCheck, overrides: Overrides) -> Plan {
    let first = check
        .findings
        .iter()
        .find(|f| f.severity == Severity::Error);
    let whole = Some((check.valid_bytes, check.log_bytes));
    let newer = first.is_some_and(|f| f.kind == WRITTEN_BY_NEWER);
    let (cut, refused) = match first {
        None => (None, Vec::new()),
        // A whole record of a newer build is not damage: --force never cuts it.
        Some(_) if newer && overrides.discard_newer => (whole, Vec::new()),
        Some(first) if newer => (None, vec![first.clone()]),
        Some(_) if check.torn || overrides.force => (whole, Vec::new()),
        Some(first) => (None, vec![first.clone()]),
    };
    Plan::StateLog {
        path: check.path.clone(),
        kind: check.kind,
        cuts_newer: newer && cut.is_some(),
        cut,
        refused,
    }
}

fn storage_error(e: tidelog_storage::Error) -> CliError {
    CliError::failure(
        e.to_string(),
        "check the directory's permissions and the disk",
    )
}

/// Carries a plan out. A partition's recovery plan runs through the engine's own
/// executor: side copies and cuts first, then segments moved aside, indexes, and last
/// the checkpoint.
fn execute(plan: &Plan) -> CliResult<()> {
    let fs: Arc<dyn FileSystem> = Arc::new(OsFs);
    match plan {
        Plan::Partition { plan, .. } => {
            if matches!(plan.outcome, Outcome::Refused(_)) {
                return Ok(());
            }
            let mut checkpoint =
                CheckpointFile::open(fs.clone(), &plan.dir).map_err(storage_error)?;
            recovery::execute(&*fs, plan, Removal::MoveAside, &mut checkpoint)
                .map_err(storage_error)
        }
        Plan::StateLog {
            path,
            cut: Some((position, len)),
            ..
        } => recovery::cut_file(&*fs, path, *position, *len)
            .map(drop)
            .map_err(storage_error),
        Plan::StateLog { cut: None, .. } | Plan::Topic { .. } => Ok(()),
    }
}

/// `(topic, partition)` of a partition directory (`DATA/topics/<topic>/<partition>`).
fn topic_partition(dir: &Path) -> Option<(String, u32)> {
    let partition = dir.file_name()?.to_str()?.parse().ok()?;
    let topic = dir.parent()?.file_name()?.to_str()?.to_string();
    Some((topic, partition))
}

pub fn run(args: &RepairArgs, json: bool) -> CliResult<()> {
    let dir = &args.dir;
    let layout = layout::discover(dir)?;
    if layout.is_empty() {
        return Err(CliError::failure(
            format!("no tidelog segments or state logs under {}", dir.display()),
            "give tidelogd's data directory, or a topic or partition directory in it",
        ));
    }
    if let Some(root) = layout::data_root(dir)
        && layout::broker_holds_lock(&root)
    {
        return Err(CliError::failure(
            format!("a running tidelogd holds {}", root.display()),
            "stop it first: repair must not change files the broker has open",
        ));
    }
    let overrides = Overrides {
        force: args.force,
        discard_newer: args.discard_newer,
    };
    let progress = byte_progress(total_log_bytes(&layout.partitions), "checking");
    let mut plans = Vec::new();
    for partition in &layout.partitions {
        let check = check_partition(partition, |bytes| progress.inc(bytes))?;
        plans.push(plan_partition(&check, overrides.force));
    }
    for topic in &layout.topics {
        let check = check_topic(topic);
        let refused = check
            .findings
            .into_iter()
            .filter(|f| f.severity == Severity::Error)
            .collect();
        plans.push(Plan::Topic { refused });
    }
    let mut committed = std::collections::BTreeMap::new();
    for file in &layout.state_logs {
        let check = check_state_log(file)?;
        committed.extend(check.committed.clone());
        plans.push(plan_state_log(&check, overrides));
    }
    progress.finish_and_clear();

    let changes: Vec<(String, Value)> = plans.iter().flat_map(Plan::changes).collect();
    let refused: Vec<&Finding> = plans.iter().flat_map(Plan::refused).collect();
    let newer_state_log_refused = plans.iter().any(|plan| {
        matches!(plan, Plan::StateLog { refused, .. }
            if refused.iter().any(|f| f.kind == WRITTEN_BY_NEWER))
    });
    // Offsets a forced cut gives out again, and the groups that already read past them.
    let mut reused = Vec::new();
    for plan in &plans {
        if let Plan::Partition {
            plan,
            reused: Some((from, to)),
            ..
        } = plan
        {
            let (topic, partition) = topic_partition(&plan.dir).unzip();
            let groups: Vec<(String, u64)> = committed
                .iter()
                .filter(|((_, t, p), offset)| {
                    Some(t) == topic.as_ref() && Some(*p) == partition && **offset > *from
                })
                .map(|((g, _, _), &offset)| (g.clone(), offset))
                .collect();
            reused.push((plan.dir.clone(), topic, partition, *from, *to, groups));
        }
    }
    if !args.dry_run {
        for plan in &plans {
            execute(plan)?;
        }
    }
    let mut out = Stdout::new();
    if json {
        out.json_pretty(&json!({
            "dir": dir.display().to_string(),
            "dry_run": args.dry_run,
            "actions": changes.iter().map(|(_, j)| j.clone()).collect::<Vec<_>>(),
            "refused": refused.iter().map(|f| f.to_json()).collect::<Vec<_>>(),
            "reused_offsets": reused.iter().map(|(dir, topic, partition, from, to, groups)| json!({
                "dir": dir.display().to_string(),
                "topic": topic,
                "partition": partition,
                "from": from,
                "to": to,
                "groups_past_the_new_end": groups.iter().map(|(g, o)| json!({"group": g, "committed_offset": o})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }))?;
    } else {
        let verb = if args.dry_run { "would" } else { "did" };
        for (line, _) in &changes {
            out.line(&format!("{verb}: {line}"))?;
        }
        for finding in &refused {
            out.line(&format!("refused: {}", finding.line()))?;
        }
        if changes.is_empty() && refused.is_empty() {
            out.line(&format!("nothing to repair in {}", dir.display()))?;
        }
    }
    out.flush()?;
    for plan in &plans {
        if let Plan::StateLog {
            path,
            kind,
            cut: Some((position, _)),
            cuts_newer: true,
            ..
        } = plan
        {
            let verb = if args.dry_run { "would cut" } else { "cut" };
            note(&format!(
                "WARNING: {verb} {} at byte {position}, a record a newer tidelogd wrote \
                 (--discard-newer): {}.",
                path.display(),
                kind.lost_by_a_cut()
            ));
        }
    }
    for (dir, topic, partition, from, to, groups) in &reused {
        let name = match (topic, partition) {
            (Some(t), Some(p)) => format!("{t}/{p}"),
            _ => dir.display().to_string(),
        };
        let mut text = format!(
            "WARNING: partition {name} loses offsets {} (fsynced data); new messages \
             will be given these offsets again, so a consumer that read past {from} would skip \
             them. Move every consumer of this partition back to {from} before it reads again.",
            crate::terms::half_open(*from, *to)
        );
        for (group, offset) in groups {
            text.push_str(&format!(
                "\n  group {group:?} has committed offset {offset}: after the repair run \
                 `tidelog group reset-offsets --group {group} --topic {}:{} --to-offset {from} --execute`",
                topic.as_deref().unwrap_or("TOPIC"),
                partition.map_or("P".to_string(), |p| p.to_string()),
            ));
        }
        note(&text);
    }
    if args.dry_run && !changes.is_empty() && !json {
        note("dry run: nothing was changed; run again without --dry-run to apply");
    }
    if let Some(first) = refused.first() {
        // --force is offered only for what it would cut.
        let forcible = refused.iter().any(|f| !NOT_REPAIRED.contains(&f.kind));
        let mut advice = Vec::new();
        if forcible {
            advice.push(
                "rerun with --force to cut the log there (the messages after it are lost, their \
                 bytes kept aside), or restore the partition from a backup"
                    .to_string(),
            );
        }
        if refused.iter().any(|f| f.kind == WRITTEN_BY_NEWER) {
            let discard = if newer_state_log_refused {
                " (without either, rerun with --discard-newer to cut the state log there: what \
                 it recorded from there on is lost, its bytes kept aside)"
            } else {
                ""
            };
            advice.push(format!(
                "what a newer tidelogd wrote is not damage and --force does not cut it: run \
                 that build (or a newer one) on {}, or restore a copy taken before the \
                 upgrade{discard}",
                dir.display()
            ));
        }
        if refused
            .iter()
            .any(|f| NOT_REPAIRED.contains(&f.kind) && f.kind != WRITTEN_BY_NEWER)
        {
            advice.push(
                "correct or restore the topic files named (each says how); repair does not \
                 change them"
                    .to_string(),
            );
        }
        let places = |noun: &str| match refused.len() {
            1 => format!("1 {noun}"),
            n => format!("{n} {noun}s"),
        };
        let summary = if forcible {
            format!("refused to cut {} before the tail", places("damaged place"))
        } else {
            format!("{} that repair does not change", places("problem"))
        };
        return Err(CliError::failure(
            format!("{summary}; first: {}", first.line()),
            advice.join("; "),
        ));
    }
    Ok(())
}

/// Where [`plan_state_log`] cuts a checked state log and the kinds it refuses: for the
/// tests of the check.
#[cfg(test)]
pub(super) fn plan_for_test(
    check: &StateLogCheck,
    force: bool,
    discard_newer: bool,
) -> (Option<(u64, u64)>, Vec<&'static str>) {
    let overrides = Overrides {
        force,
        discard_newer,
    };
    match plan_state_log(check, overrides) {
        Plan::StateLog { cut, refused, .. } => (cut, refused.iter().map(|f| f.kind).collect()),
        _ => unreachable!("a state log's plan"),
    }
}
