//! `tidelog segment repair`: the fixes recovery would make, made now and shown.
//!
//! Without `--force` only what the broker's own recovery cuts is cut: a torn tail
//! past the partition's checkpoint (with the segments after it), segments that
//! start past the end of a predecessor that lost its unsynced tail, and the torn
//! tail of the offsets log. Bad or missing index files are rewritten from the log. Everything
//! else (a bad batch with intact ones after it, a gap between segments, damage in
//! fsynced data) is refused: with `--force` the log is cut at the first such place
//! and later segments are moved aside. Bytes are never destroyed: a cut tail goes to
//! `<file>.torn-at-<position>`, a segment moved aside keeps its bytes under
//! `<file>.removed-by-repair`.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tidelog_storage::checkpoint::{self, CheckpointFile, is_unsynced_gap};
use tidelog_storage::fsutil;
use tidelog_storage::index;
use tidelog_storage::segment::{
    INDEX_SUFFIX, LOG_SUFFIX, SegmentState, TIME_INDEX_SUFFIX, scan, segment_path,
};

use super::check::{
    Finding, LOG_FILE_BYTES_MAX, OffsetsLogCheck, PartitionCheck, Severity, check_offsets_log,
    check_partition, read_file,
};
use super::layout;
use crate::cli::RepairArgs;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, note};

/// One change to the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep bytes `[position, end)` of `file` in a side file and truncate it there.
    Cut {
        file: PathBuf,
        position: u64,
        bytes: u64,
    },
    /// Rename a segment's files out of the way (`.removed-by-repair`).
    MoveAside { log: PathBuf },
    /// Write both index files of a segment from its log.
    RewriteIndex { dir: PathBuf, base: u64 },
    /// Point the checkpoint at the end of what is left.
    RewriteCheckpoint {
        dir: PathBuf,
        segment_base: u64,
        position: u64,
        next_offset: u64,
    },
}

impl Action {
    fn describe(&self) -> String {
        match self {
            Action::Cut {
                file,
                position,
                bytes,
            } => format!(
                "cut {} at position {position} ({bytes} bytes kept in {})",
                file.display(),
                side_name(file, &format!("torn-at-{position}")).display()
            ),
            Action::MoveAside { log } => format!(
                "move segment {} (and its indexes) aside to *.removed-by-repair",
                log.display()
            ),
            Action::RewriteIndex { dir, base } => format!(
                "rewrite {} and .{TIME_INDEX_SUFFIX} from the log",
                segment_path(dir, *base, INDEX_SUFFIX).display()
            ),
            Action::RewriteCheckpoint {
                dir,
                segment_base,
                position,
                next_offset,
            } => format!(
                "rewrite {} (segment {segment_base}, position {position}, next offset {next_offset})",
                dir.join(checkpoint::FILE_NAME).display()
            ),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Action::Cut {
                file,
                position,
                bytes,
            } => json!({
                "action": "cut",
                "file": file.display().to_string(),
                "position": position,
                "bytes": bytes,
                "side_file": side_name(file, &format!("torn-at-{position}")).display().to_string(),
            }),
            Action::MoveAside { log } => json!({
                "action": "move_aside",
                "file": log.display().to_string(),
            }),
            Action::RewriteIndex { dir, base } => json!({
                "action": "rewrite_index",
                "file": segment_path(dir, *base, INDEX_SUFFIX).display().to_string(),
            }),
            Action::RewriteCheckpoint {
                dir,
                segment_base,
                position,
                next_offset,
            } => json!({
                "action": "rewrite_checkpoint",
                "file": dir.join(checkpoint::FILE_NAME).display().to_string(),
                "segment_base": segment_base,
                "position": position,
                "next_offset": next_offset,
            }),
        }
    }
}

/// What to do about one partition, and what is refused.
#[derive(Debug, Default)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub refused: Vec<Finding>,
}

/// Kinds of finding that only `--force` may cut.
const NEEDS_FORCE: [&str; 4] = [
    "corrupt_batch",
    "offset_gap",
    "durable_data_damaged",
    "durable_data_lost",
];

/// Plans the repair of one partition.
pub fn plan_partition(check: &PartitionCheck, force: bool) -> Plan {
    let mut plan = Plan::default();
    let segments = &check.segments;
    // Where the log must end: (segment index, cut position or None = drop whole
    // segment), the first place in log order that is not intact.
    let mut cut: Option<(usize, Option<u64>)> = None;
    let mut expected: Option<u64> = None;
    for (i, s) in segments.iter().enumerate() {
        if let Some(e) = expected.filter(|&e| e != s.base) {
            if force || is_unsynced_gap(check.checkpoint.as_ref(), e, s.base) {
                cut = Some((i, None));
                break;
            }
        } else if let Some(first) = s.scan.corrupt_batches.first() {
            if force {
                cut = Some((i, Some(first.position)));
                break;
            }
        } else if let Some(torn) = &s.scan.torn_tail {
            // Past the checkpoint nothing was acknowledged durable: recovery cuts
            // it (and drops later segments) too.
            let safe = torn.position >= s.trusted;
            if safe || force {
                cut = Some((i, Some(torn.position)));
                break;
            }
        }
        expected = Some(s.scan.state.summary.next_offset);
    }
    if !force {
        plan.refused = check
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error && NEEDS_FORCE.contains(&f.kind))
            .cloned()
            .collect();
    }

    let kept = match cut {
        Some((i, None)) => i,
        Some((i, Some(_))) => i + 1,
        None => segments.len(),
    };
    if let Some((i, Some(position))) = cut {
        let s = &segments[i];
        plan.actions.push(Action::Cut {
            file: s.path.clone(),
            position,
            bytes: s.log_bytes - position,
        });
    }
    for s in segments.iter().skip(kept) {
        plan.actions.push(Action::MoveAside {
            log: s.path.clone(),
        });
    }
    for (i, s) in segments.iter().enumerate().take(kept) {
        let truncated = matches!(cut, Some((c, Some(_))) if c == i);
        if truncated || s.index_needs_rewrite {
            plan.actions.push(Action::RewriteIndex {
                dir: check.dir.clone(),
                base: s.base,
            });
        }
    }
    // The new end of the log, and whether the checkpoint points past it.
    if let Some(last) = segments.get(..kept).and_then(|k| k.last()) {
        let (length, next) = match cut {
            Some((c, Some(position))) if c + 1 == kept => (position, None),
            _ => (last.log_bytes, Some(last.scan.state.summary.next_offset)),
        };
        if let Some(c) = &check.checkpoint {
            let beyond =
                c.segment_base > last.base || (c.segment_base == last.base && c.position > length);
            if beyond && (force || cut.is_some()) {
                plan.actions.push(Action::RewriteCheckpoint {
                    dir: check.dir.clone(),
                    segment_base: last.base,
                    position: length,
                    // Filled in when the cut segment is rescanned.
                    next_offset: next.unwrap_or(u64::MAX),
                });
            }
        }
    }
    plan
}

fn plan_offsets_log(check: &OffsetsLogCheck, force: bool) -> Plan {
    let mut plan = Plan::default();
    let Some(first) = check
        .findings
        .iter()
        .find(|f| f.severity == Severity::Error)
    else {
        return plan;
    };
    if check.torn || force {
        plan.actions.push(Action::Cut {
            file: check.path.clone(),
            position: check.valid_bytes,
            bytes: check.log_bytes - check.valid_bytes,
        });
    } else {
        plan.refused.push(first.clone());
    }
    plan
}

/// `file` with `.suffix` appended to its name.
fn side_name(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    file.with_file_name(name)
}

/// A side-file name not yet taken (`.1`, `.2`, ... appended if needed).
fn free_name(path: PathBuf) -> PathBuf {
    if !path.exists() {
        return path;
    }
    (1..)
        .map(|n| side_name(&path, &n.to_string()))
        .find(|p| !p.exists())
        .unwrap_or(path)
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> CliError {
    move |e| CliError::io(context, &e)
}

fn storage_error(e: tidelog_storage::Error) -> CliError {
    CliError::failure(
        e.to_string(),
        "check the directory's permissions and the disk",
    )
}

/// Copies bytes `[position, end)` to a side file, then truncates `file` there.
fn cut_file(file: &Path, position: u64) -> CliResult<PathBuf> {
    let side = free_name(side_name(file, &format!("torn-at-{position}")));
    let mut source = File::open(file).map_err(io_error(format!("opening {}", file.display())))?;
    source
        .seek(SeekFrom::Start(position))
        .map_err(io_error(format!("reading {}", file.display())))?;
    let mut target =
        File::create_new(&side).map_err(io_error(format!("creating {}", side.display())))?;
    std::io::copy(&mut source, &mut target).map_err(io_error(format!(
        "copying the tail of {} to {}",
        file.display(),
        side.display()
    )))?;
    target
        .sync_all()
        .map_err(io_error(format!("fsyncing {}", side.display())))?;
    let log = OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(io_error(format!("opening {}", file.display())))?;
    log.set_len(position)
        .map_err(io_error(format!("truncating {}", file.display())))?;
    log.sync_all()
        .map_err(io_error(format!("fsyncing {}", file.display())))?;
    fsutil::sync_dir(fsutil::parent_dir(file)).map_err(storage_error)?;
    Ok(side)
}

fn move_aside(log: &Path) -> CliResult<()> {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = log.with_extension(suffix);
        if path.exists() {
            let target = free_name(side_name(&path, "removed-by-repair"));
            fs::rename(&path, &target).map_err(io_error(format!(
                "renaming {} to {}",
                path.display(),
                target.display()
            )))?;
        }
    }
    fsutil::sync_dir(fsutil::parent_dir(log)).map_err(storage_error)
}

/// Rescans a segment and writes its index files; returns its next offset.
fn rewrite_index(dir: &Path, base: u64) -> CliResult<u64> {
    let log = segment_path(dir, base, LOG_SUFFIX);
    let data = read_file(&log, LOG_FILE_BYTES_MAX)?;
    let report = scan(&data, 0, SegmentState::new(base));
    let state = &report.state;
    let offsets = index::encode_offset_index(&state.summary, &state.index.offsets);
    let times = index::encode_time_index(&state.summary, &state.index.times);
    fsutil::write_file_atomically(&segment_path(dir, base, INDEX_SUFFIX), &offsets)
        .map_err(storage_error)?;
    fsutil::write_file_atomically(&segment_path(dir, base, TIME_INDEX_SUFFIX), &times)
        .map_err(storage_error)?;
    Ok(state.summary.next_offset)
}

/// Applies a plan in a crash-safe order: side copies and truncation first, then
/// segments moved aside, indexes, and last the checkpoint.
fn execute(plan: &Plan) -> CliResult<()> {
    let mut next_offsets = std::collections::BTreeMap::new();
    for action in &plan.actions {
        match action {
            Action::Cut { file, position, .. } => {
                cut_file(file, *position)?;
            }
            Action::MoveAside { log } => move_aside(log)?,
            Action::RewriteIndex { dir, base } => {
                let next = rewrite_index(dir, *base)?;
                next_offsets.insert((dir.clone(), *base), next);
            }
            Action::RewriteCheckpoint {
                dir,
                segment_base,
                position,
                next_offset,
            } => {
                let next = match next_offsets.get(&(dir.clone(), *segment_base)) {
                    Some(&next) => next,
                    None if *next_offset != u64::MAX => *next_offset,
                    None => rewrite_index(dir, *segment_base)?,
                };
                let mut file = CheckpointFile::open(dir).map_err(storage_error)?;
                file.write(*segment_base, *position, next)
                    .map_err(storage_error)?;
            }
        }
    }
    Ok(())
}

pub fn run(args: &RepairArgs, json: bool) -> CliResult<()> {
    let dir = &args.dir;
    let layout = layout::discover(dir)?;
    if layout.partitions.is_empty() && layout.offsets_logs.is_empty() {
        return Err(CliError::failure(
            format!("no tidelog segments or offsets log under {}", dir.display()),
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
    let progress = super::byte_progress(super::total_log_bytes(&layout.partitions), "checking");
    let mut plans = Vec::new();
    for partition in &layout.partitions {
        let check = check_partition(partition, |bytes| progress.inc(bytes))?;
        plans.push(plan_partition(&check, args.force));
    }
    for path in &layout.offsets_logs {
        plans.push(plan_offsets_log(&check_offsets_log(path)?, args.force));
    }
    progress.finish_and_clear();

    let actions: Vec<&Action> = plans.iter().flat_map(|p| &p.actions).collect();
    let refused: Vec<&Finding> = plans.iter().flat_map(|p| &p.refused).collect();
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
            "actions": actions.iter().map(|a| a.to_json()).collect::<Vec<_>>(),
            "refused": refused.iter().map(|f| f.to_json()).collect::<Vec<_>>(),
        }))?;
    } else {
        let verb = if args.dry_run { "would" } else { "did" };
        for action in &actions {
            out.line(&format!("{verb}: {}", action.describe()))?;
        }
        for finding in &refused {
            out.line(&format!("refused: {}", finding.line()))?;
        }
        if actions.is_empty() && refused.is_empty() {
            out.line(&format!("nothing to repair in {}", dir.display()))?;
        }
    }
    out.flush()?;
    if args.dry_run && !actions.is_empty() && !json {
        note("dry run: nothing was changed; run again without --dry-run to apply");
    }
    if let Some(first) = refused.first() {
        return Err(CliError::failure(
            format!(
                "refused to cut {} before the tail; first: {}",
                if refused.len() == 1 {
                    "1 damaged place".to_string()
                } else {
                    format!("{} damaged places", refused.len())
                },
                first.line()
            ),
            "rerun with --force to cut the log there (the messages after it are lost, their bytes kept aside), or restore the partition from a backup",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn side_names_append_to_the_file_name() {
        assert_eq!(
            side_name(Path::new("/d/00000000000000000000.log"), "torn-at-12"),
            PathBuf::from("/d/00000000000000000000.log.torn-at-12")
        );
        assert_eq!(
            side_name(Path::new("offsets.log"), "torn-at-0"),
            PathBuf::from("offsets.log.torn-at-0")
        );
    }

    #[test]
    fn free_names_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log.torn-at-5");
        assert_eq!(free_name(path.clone()), path);
        File::create(&path).unwrap();
        assert_eq!(
            free_name(path.clone()),
            dir.path().join("a.log.torn-at-5.1")
        );
    }

    #[test]
    fn cutting_keeps_the_tail_in_a_side_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.log");
        fs::write(&file, b"0123456789").unwrap();
        let side = cut_file(&file, 6).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"012345");
        assert_eq!(fs::read(&side).unwrap(), b"6789");
        let mut text = String::new();
        File::open(&side)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "6789");
    }
}
