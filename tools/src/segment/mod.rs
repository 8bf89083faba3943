//! `tidelog segment`: offline tools on a data directory (with tidelogd stopped).
//!
//! - `dump FILE`: the batches (and records) of a `.log`, the entries of a `.index` /
//!   `.timeindex`, the slots of a `checkpoint`, the records of an `offsets.log`.
//! - `verify DIR`: every batch CRC, every index, the checkpoints, the state logs
//!   (consumer offsets, queue state, delivery history, access state) and each topic's
//!   own files (`topic.config`, `topic.owner`, `topic.id`, with the store's readers);
//!   exit 1 naming file and position when something is wrong.
//! - `repair DIR`: cuts torn tails into side files and rewrites bad indexes; cuts at
//!   corruption before the tail only with `--force`.

mod check;
mod dump;
mod layout;
mod progress;
mod repair;

use std::path::Path;

use serde_json::{Value, json};

use crate::args::SegmentCommand;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, note};
use crate::units::format_bytes;
use check::{
    Finding, NOT_REPAIRED, Severity, WRITTEN_BY_NEWER, check_partition, check_state_log,
    check_topic, count,
};
use layout::StateLogKind;
use progress::{byte_progress, total_log_bytes};

pub fn run(command: SegmentCommand, json: bool) -> CliResult<()> {
    match command {
        SegmentCommand::Dump(args) => dump::run(&args, json),
        SegmentCommand::Verify(args) => verify(&args.dir, json),
        SegmentCommand::Repair(args) => repair::run(&args, json),
    }
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn verify(dir: &Path, json: bool) -> CliResult<()> {
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
        note(&format!(
            "warning: a running tidelogd holds {}; active segments may change while they are \
             read and look torn (stop the broker for an exact answer)",
            root.display()
        ));
    }
    let progress = byte_progress(total_log_bytes(&layout.partitions), "verifying");
    let mut partitions = Vec::new();
    for partition in &layout.partitions {
        partitions.push(check_partition(partition, |bytes| progress.inc(bytes))?);
    }
    let mut state_logs = Vec::new();
    for file in &layout.state_logs {
        state_logs.push(check_state_log(file)?);
    }
    let topics: Vec<check::TopicCheck> = layout.topics.iter().map(|t| check_topic(t)).collect();
    progress.finish_and_clear();
    // A topic file the store refuses stops the broker: none of its partitions opens.
    let topic_opens = |partition: &Path| {
        topics
            .iter()
            .find(|t| Some(t.dir.as_path()) == partition.parent())
            .is_none_or(check::TopicCheck::broker_opens)
    };

    let all_findings: Vec<&Finding> = topics
        .iter()
        .flat_map(|t| &t.findings)
        .chain(partitions.iter().flat_map(|p| &p.findings))
        .chain(state_logs.iter().flat_map(|o| &o.findings))
        .collect();
    let errors = all_findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = all_findings.len() - errors;
    let segments: usize = partitions.iter().map(|p| p.segment_count()).sum();
    let bytes: u64 = partitions.iter().map(|p| p.log_bytes()).sum();

    let mut out = Stdout::new();
    if json {
        let partition_list: Vec<Value> = partitions
            .iter()
            .map(|p| {
                json!({
                    "dir": p.dir.display().to_string(),
                    "segments": p.segment_count(),
                    "batches": p.batches(),
                    "log_bytes": p.log_bytes(),
                    "start_offset": p.start_offset(),
                    "next_offset": p.next_offset(),
                    // Whether tidelogd would open it (else it serves it as unavailable).
                    "broker_opens": p.broker_opens() && topic_opens(&p.dir),
                    "problems": p.findings.iter().map(Finding::to_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let log_json = |o: &check::StateLogCheck| {
            json!({
                "file": o.path.display().to_string(),
                "kind": o.kind.key(),
                "records": o.records,
                "log_bytes": o.log_bytes,
                "problems": o.findings.iter().map(Finding::to_json).collect::<Vec<_>>(),
            })
        };
        let offsets_list: Vec<Value> = state_logs
            .iter()
            .filter(|o| o.kind == StateLogKind::Offsets)
            .map(|o| {
                json!({
                    "file": o.path.display().to_string(),
                    "records": o.records,
                    "log_bytes": o.log_bytes,
                    "problems": o.findings.iter().map(Finding::to_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        out.json_pretty(&json!({
            "dir": dir.display().to_string(),
            "clean": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "partitions": partition_list,
            "topics": topics.iter().map(|t| json!({
                "dir": t.dir.display().to_string(),
                "broker_opens": t.broker_opens(),
                "problems": t.findings.iter().map(Finding::to_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            // Kept for scripts written before the other state logs were checked.
            "offsets_logs": offsets_list,
            "state_logs": state_logs.iter().map(log_json).collect::<Vec<_>>(),
        }))?;
    } else {
        let status = |findings: &[Finding]| {
            if count(findings, Severity::Error) > 0 {
                "FAILED"
            } else if findings.is_empty() {
                "ok"
            } else {
                "WARN"
            }
        };
        // Topics whose files are fine get no line: their partitions follow.
        for t in topics.iter().filter(|t| !t.findings.is_empty()) {
            out.line(&format!(
                "{:<6}  {}  topic files",
                status(&t.findings),
                t.dir.display()
            ))?;
            print_findings(&mut out, &t.findings)?;
        }
        for p in &partitions {
            let offsets = match (p.start_offset(), p.next_offset()) {
                (Some(start), Some(next)) => {
                    format!("offsets {}", crate::terms::half_open(start, next))
                }
                _ => "no segments".into(),
            };
            out.line(&format!(
                "{:<6}  {}  {}, {}, {}, {}",
                status(&p.findings),
                p.dir.display(),
                plural(p.segment_count(), "segment"),
                match p.batches() {
                    1 => "1 batch".to_string(),
                    n => format!("{n} batches"),
                },
                offsets,
                format_bytes(p.log_bytes())
            ))?;
            print_findings(&mut out, &p.findings)?;
        }
        for o in &state_logs {
            out.line(&format!(
                "{:<6}  {}  {}, {}",
                status(&o.findings),
                o.path.display(),
                plural(o.records as usize, "record"),
                format_bytes(o.log_bytes)
            ))?;
            print_findings(&mut out, &o.findings)?;
        }
        out.line(&format!(
            "verified {} ({}, {}){}: {}, {}",
            plural(partitions.len(), "partition"),
            plural(segments, "segment"),
            format_bytes(bytes),
            state_logs_text(&state_logs),
            plural(errors, "error"),
            plural(warnings, "warning"),
        ))?;
    }
    out.flush()?;
    if errors > 0 {
        let mut kinds: Vec<&str> = all_findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.kind)
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        let first = all_findings
            .iter()
            .find(|f| f.severity == Severity::Error)
            .map(|f| f.line())
            .unwrap_or_default();
        return Err(CliError::failure(
            format!(
                "{} in {} ({}); first: {first}",
                plural(errors, "problem"),
                dir.display(),
                kinds.join(", ")
            ),
            what_to_do(dir, &kinds),
        ));
    }
    Ok(())
}

/// What to do about errors of `kinds`: repair only for what it mends; a file a newer
/// tidelogd wrote is not damage, and --force is never offered for it.
fn what_to_do(dir: &Path, kinds: &[&str]) -> String {
    let mut advice = Vec::new();
    if kinds.iter().any(|k| !NOT_REPAIRED.contains(k)) {
        advice.push(format!(
            "`tidelog segment repair {}` cuts torn tails and rewrites indexes (--force for \
             corruption)",
            dir.display()
        ));
    }
    if kinds.contains(&WRITTEN_BY_NEWER) {
        advice.push(format!(
            "what a newer tidelogd wrote is not damage: run that build (or a newer one) on {}, \
             or restore a copy taken before the upgrade; repair leaves it as it is, except that \
             `--discard-newer` cuts a state log there (losing the state recorded from there on)",
            dir.display()
        ));
    }
    if kinds
        .iter()
        .any(|k| NOT_REPAIRED.contains(k) && *k != WRITTEN_BY_NEWER)
    {
        advice.push(
            "correct or restore the topic files named (each problem says how); repair does not \
             change them"
                .to_string(),
        );
    }
    advice.join("; ")
}

/// " and 1 offsets log, 1 queue state log and 3 delivery history files", or nothing.
fn state_logs_text(logs: &[check::StateLogCheck]) -> String {
    let parts: Vec<String> = [
        StateLogKind::Offsets,
        StateLogKind::Queues,
        StateLogKind::History,
        StateLogKind::Access,
    ]
    .into_iter()
    .map(|kind| (kind, logs.iter().filter(|l| l.kind == kind).count()))
    .filter(|(_, n)| *n > 0)
    .map(|(kind, n)| plural(n, kind.noun()))
    .collect();
    match parts.as_slice() {
        [] => String::new(),
        [one] => format!(" and {one}"),
        [init @ .., last] => format!(" and {} and {last}", init.join(", ")),
    }
}

fn print_findings(out: &mut Stdout, findings: &[Finding]) -> CliResult<()> {
    for f in findings {
        let label = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.line(&format!("  {label}: {}", f.line()))?;
    }
    Ok(())
}
