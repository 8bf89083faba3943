//! The analysis behind `verify` and `repair`: every batch of every segment through
//! the storage engine's own validator ([`tidelog_storage::segment::scan`], the one
//! recovery uses), the indexes against the log, the id indexes (the engine's own check:
//! every entry against the ids in the log), the checkpoint against the segments, and
//! the consumer offsets log record by record.
//!
//! Findings are classified the way the broker's recovery treats them: a torn tail
//! (an incomplete last write past the checkpoint) is cut on open; anything else is
//! corruption the broker reports and `repair` only cuts with `--force`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tidelog_storage::OsFs;
use tidelog_storage::access::{Access, AccessOp};
use tidelog_storage::batch::BatchHeader;
use tidelog_storage::checkpoint::{self, Checkpoint};
use tidelog_storage::index::{self, SegmentSummary};
use tidelog_storage::offsets::{OffsetOp, Offsets};
use tidelog_storage::queue::history::HistoryEvent;
use tidelog_storage::queue::state::{QueueOp, Queues};
use tidelog_storage::recovery::{
    self, Action, Content, Depth, IdIndexState, Observation, Observed, PlanOptions, RecoveryPlan,
    Verdict,
};
use tidelog_storage::segment::{
    CorruptBatch, ID_INDEX_SUFFIX, INDEX_SUFFIX, ScanReport, TIME_INDEX_SUFFIX, segment_path,
};
use tidelog_storage::statelog::{self, ScanEnd, StateMachine};
use tidelog_storage::store::{
    TOPIC_CONFIG_FILE, read_topic_config, read_topic_id, read_topic_owner,
};

use super::layout::{StateLogFile, StateLogKind, segment_bases};
use crate::error::{CliError, CliResult};

/// Largest log file read whole: the longest segment file the engine writes.
pub const LOG_FILE_BYTES_MAX: u64 = tidelog_storage::limits::SEGMENT_FILE_BYTES_MAX;
/// Largest index file read.
const INDEX_FILE_BYTES_MAX: u64 = index::INDEX_FILE_BYTES_MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// A stable name for scripts: `torn_tail`, `corrupt_batch`, `index_corrupt`, ...
    pub kind: &'static str,
    pub file: PathBuf,
    pub position: Option<u64>,
    pub message: String,
}

impl Finding {
    fn error(kind: &'static str, file: &Path, position: Option<u64>, message: String) -> Self {
        Finding {
            severity: Severity::Error,
            kind,
            file: file.to_path_buf(),
            position,
            message,
        }
    }

    fn warning(kind: &'static str, file: &Path, position: Option<u64>, message: String) -> Self {
        Finding {
            severity: Severity::Warning,
            ..Finding::error(kind, file, position, message)
        }
    }

    /// `FILE at position N: message` (or `FILE: message`).
    pub fn line(&self) -> String {
        match self.position {
            Some(position) => format!(
                "{} at position {position}: {}",
                self.file.display(),
                self.message
            ),
            None => format!("{}: {}", self.file.display(), self.message),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "severity": match self.severity { Severity::Error => "error", Severity::Warning => "warning" },
            "kind": self.kind,
            "file": self.file.display().to_string(),
            "position": self.position,
            "message": self.message,
        })
    }
}

/// What a check of one partition directory found: the observation (every segment
/// scanned), the plan the broker's recovery would make of it, and the findings that
/// render the plan's verdicts and the index checks.
#[derive(Debug)]
pub struct PartitionCheck {
    pub dir: PathBuf,
    pub observation: Observation,
    pub plan: RecoveryPlan,
    pub findings: Vec<Finding>,
}

impl PartitionCheck {
    pub fn segment_count(&self) -> usize {
        self.observation.segments.len()
    }

    pub fn log_bytes(&self) -> u64 {
        self.observation.segments.iter().map(|s| s.log_bytes).sum()
    }

    fn scans(&self) -> impl Iterator<Item = &ScanReport> {
        self.observation
            .segments
            .iter()
            .filter_map(|s| match &s.content {
                Content::Scanned(report) => Some(report),
                Content::Summary(_) => None,
            })
    }

    pub fn batches(&self) -> u64 {
        self.scans().map(|r| r.batches).sum()
    }

    pub fn start_offset(&self) -> Option<u64> {
        self.observation.segments.first().map(|s| s.base)
    }

    pub fn next_offset(&self) -> Option<u64> {
        self.scans().last().map(|r| r.state.summary.next_offset)
    }

    /// Whether the broker's recovery would open the partition.
    pub fn broker_opens(&self) -> bool {
        matches!(self.plan.outcome, recovery::Outcome::Open(_))
    }
}

pub fn count(findings: &[Finding], severity: Severity) -> usize {
    findings.iter().filter(|f| f.severity == severity).count()
}

/// Reads a file whole, refusing one over `max` bytes.
pub fn read_file(path: &Path, max: u64) -> CliResult<Vec<u8>> {
    let size = fs::metadata(path)
        .map_err(|e| CliError::io(format!("reading {}", path.display()), &e))?
        .len();
    if size > max {
        return Err(CliError::failure(
            format!(
                "{} is {size} bytes, more than any file of this kind can be ({max})",
                path.display()
            ),
            "check that it is a tidelog file",
        ));
    }
    fs::read(path).map_err(|e| CliError::io(format!("reading {}", path.display()), &e))
}

/// Reads the partition's checkpoint: `Ok(None)` when there is none or no slot is
/// valid (the second case is also reported).
fn read_checkpoint(dir: &Path, findings: &mut Vec<Finding>) -> CliResult<Option<Checkpoint>> {
    let path = dir.join(checkpoint::FILE_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::io(format!("reading {}", path.display()), &e)),
    };
    let checkpoint = Checkpoint::decode_file(&bytes);
    if checkpoint.is_none() {
        findings.push(Finding::warning(
            "checkpoint_invalid",
            &path,
            None,
            "no valid checkpoint slot; the broker scans every segment on open".into(),
        ));
    }
    Ok(checkpoint)
}

/// Checks one partition directory: scans every segment, checks its index files, and
/// renders the verdicts of the broker's own recovery plan.
pub fn check_partition(dir: &Path, mut progress: impl FnMut(u64)) -> CliResult<PartitionCheck> {
    let mut findings = Vec::new();
    let checkpoint = read_checkpoint(dir, &mut findings)?;
    let bases = segment_bases(dir)?;
    let last_base = bases.last().copied();
    let mut index_findings = Vec::new();
    let mut inspect = |observed: &Observed, data: &[u8]| -> bool {
        progress(observed.log_bytes);
        let Content::Scanned(report) = &observed.content else {
            return false;
        };
        let valid = &data[..(report.valid_bytes as usize).min(data.len())];
        check_indexes(
            dir,
            observed.base,
            valid,
            report,
            Some(observed.base) == last_base,
            &mut index_findings,
        )
    };
    let observation = recovery::observe(&OsFs, dir, checkpoint, Depth::Full, Some(&mut inspect))
        .map_err(|e| CliError::failure(e.to_string(), "check the directory's permissions"))?;
    let plan = recovery::plan(observation.clone(), PlanOptions::default());
    findings.extend(verdict_findings(&plan));
    findings.extend(index_findings);
    Ok(PartitionCheck {
        dir: dir.to_path_buf(),
        observation,
        plan,
        findings,
    })
}

/// The recovery plan's verdicts, in words an operator acts on.
fn verdict_findings(plan: &RecoveryPlan) -> Vec<Finding> {
    let mut findings = Vec::new();
    let count = plan.segments.len();
    for (i, s) in plan.segments.iter().enumerate() {
        let path = &s.path;
        let (base, log_bytes, trusted) = (s.base, s.log_bytes, s.trusted);
        match &s.verdict {
            Verdict::Trusted | Verdict::Intact | Verdict::Corrupt | Verdict::AfterTheEnd => {}
            Verdict::UnsyncedGap { expected } => findings.push(Finding::error(
                "unsynced_segments",
                path,
                Some(0),
                format!(
                    "segment starts at offset {base} but the previous one ends at {expected}: \
                     the previous segment lost its unsynced tail in a crash, so nothing from \
                     here on was acknowledged durable; the broker drops this and later \
                     segments on open (`tidelog segment repair` moves them aside)"
                ),
            )),
            Verdict::OffsetGap { expected } => findings.push(Finding::error(
                "offset_gap",
                path,
                Some(0),
                format!(
                    "segment starts at offset {base} but the previous one ends at {expected}; \
                     the broker refuses to open this partition (`tidelog segment repair \
                     --force` moves this and later segments aside)"
                ),
            )),
            Verdict::DurableDataLost { fsynced } => findings.push(Finding::error(
                "durable_data_lost",
                path,
                Some(log_bytes),
                format!(
                    "segment is {log_bytes} bytes but the checkpoint says {fsynced} were \
                     fsynced: data was lost on disk; the broker serves this partition as \
                     unavailable (`tidelog segment repair --force` accepts the loss)"
                ),
            )),
            Verdict::DurableDataDamaged { position, reason } => findings.push(Finding::error(
                "durable_data_damaged",
                path,
                Some(*position),
                format!(
                    "{reason} in data that was fsynced before (the checkpoint vouches for \
                     {trusted} bytes); the broker serves this partition as unavailable \
                     (`tidelog segment repair --force` cuts the log here, losing {} bytes)",
                    log_bytes - position
                ),
            )),
            Verdict::TornTail { position, reason } if i + 1 == count => {
                findings.push(Finding::error(
                    "torn_tail",
                    path,
                    Some(*position),
                    format!(
                        "torn tail: {reason} ({} bytes after the last whole batch); the broker \
                         cuts it on open, `tidelog segment repair` cuts it now and keeps the \
                         bytes",
                        log_bytes - position
                    ),
                ))
            }
            Verdict::TornTail { position, reason } => findings.push(Finding::error(
                "torn_segment",
                path,
                Some(*position),
                format!(
                    "torn tail: {reason} ({} bytes) in a segment that later segments follow, \
                     past the checkpoint, so nothing after it was acknowledged durable; the \
                     broker cuts it and drops {} later segment(s) on open \
                     (`tidelog segment repair` does the same, keeping the bytes)",
                    log_bytes - position,
                    count - i - 1
                ),
            )),
        }
        for corrupt in &s.corrupt {
            findings.push(Finding::error(
                "corrupt_batch",
                path,
                Some(corrupt.position),
                format!(
                    "{} in the batch holding offsets {}; an intact batch follows or it was \
                     fsynced before, so this is corruption inside the log, not a torn write \
                     (reads of these offsets fail with DATA_LOSS; `tidelog segment repair \
                     --force` cuts the log here)",
                    corrupt.reason,
                    crate::terms::half_open(corrupt.base_offset, corrupt.next_offset)
                ),
            ));
        }
    }
    // An id index the plan writes again is derived data gone missing or stale, not
    // damage to messages: a warning.
    for action in &plan.actions {
        let Action::WriteIdIndex { base } = action else {
            continue;
        };
        let reason = plan
            .segments
            .iter()
            .find(|s| s.base == *base)
            .and_then(|s| match &s.id_index {
                IdIndexState::Invalid(reason) => Some(reason.as_str()),
                _ => None,
            })
            .unwrap_or("invalid");
        let kind = if reason == "missing" {
            "id_index_missing"
        } else {
            "id_index_invalid"
        };
        findings.push(Finding::warning(
            kind,
            &segment_path(&plan.dir, *base, ID_INDEX_SUFFIX),
            None,
            format!(
                "id index {reason}; rebuildable from the log: the broker writes it again \
                 where it finds it unusable, on open or at the first lookup by id that \
                 meets it (`tidelog segment repair` writes it now), and lookups by message \
                 id stay exact meanwhile"
            ),
        ));
    }
    if let (true, Some(c)) = (plan.checkpoint_segment_missing, plan.checkpoint) {
        findings.push(Finding::error(
            "durable_data_lost",
            &plan.dir.join(checkpoint::FILE_NAME),
            None,
            format!(
                "the checkpoint names segment {} (offset {}), which is missing: fsynced data \
                 is gone; the broker serves this partition as unavailable (`tidelog segment \
                 repair --force` accepts the loss)",
                c.segment_base, c.next_offset
            ),
        ));
    }
    findings
}

/// Where each batch of the valid bytes starts, with its base offset and the running
/// maximum timestamp up to and including it. Like the engine's scan, a batch that
/// failed its CRC (at a position in `corrupt`) does not count towards the timestamp.
fn batch_boundaries(valid: &[u8], corrupt: &[CorruptBatch]) -> Vec<(u64, u64, i64)> {
    let mut out = Vec::new();
    let mut position = 0usize;
    let mut max_timestamp = i64::MIN;
    while let Some(rest) = valid.get(position..).filter(|r| !r.is_empty()) {
        let Ok(header) = BatchHeader::parse(rest) else {
            break;
        };
        if !corrupt.iter().any(|c| c.position == position as u64) {
            max_timestamp = max_timestamp.max(header.max_timestamp_ms);
        }
        out.push((position as u64, header.base_offset, max_timestamp));
        position += header.batch_length as usize;
    }
    out
}

/// Checks both index files of a segment against its log. Returns whether they should
/// be rewritten.
fn check_indexes(
    dir: &Path,
    base: u64,
    valid: &[u8],
    report: &ScanReport,
    is_last: bool,
    findings: &mut Vec<Finding>,
) -> bool {
    let summary = &report.state.summary;
    let boundaries = batch_boundaries(valid, &report.corrupt_batches);
    let mut needs_rewrite = false;
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let path = segment_path(dir, base, suffix);
        let bytes = match fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The active segment gets its index files when it is sealed or the
                // broker shuts down cleanly; after a crash they are missing.
                if !is_last {
                    findings.push(Finding::warning(
                        "index_missing",
                        &path,
                        None,
                        "missing; the broker rebuilds it from the log on first read \
                         (`tidelog segment repair` writes it now)"
                            .into(),
                    ));
                    needs_rewrite = true;
                }
                continue;
            }
            Err(e) => {
                findings.push(Finding::error(
                    "io",
                    &path,
                    None,
                    format!("cannot read it: {e}"),
                ));
                continue;
            }
            Ok(m) if m.len() > INDEX_FILE_BYTES_MAX => {
                Err(format!("{} bytes is more than an index can hold", m.len()))
            }
            Ok(_) => fs::read(&path).map_err(|e| e.to_string()),
        };
        let decoded = bytes.and_then(|bytes| {
            if suffix == INDEX_SUFFIX {
                index::decode_offset_index(&bytes)
                    .map(|(s, entries)| {
                        let entries: Vec<(u64, u64, Option<i64>)> = entries
                            .iter()
                            .map(|e| (u64::from(e.relative_offset), u64::from(e.position), None))
                            .collect();
                        (s, entries)
                    })
                    .map_err(|e| e.to_string())
            } else {
                index::decode_time_index(&bytes)
                    .map(|(s, entries)| {
                        let entries: Vec<(u64, u64, Option<i64>)> = entries
                            .iter()
                            .map(|e| (u64::from(e.relative_offset), 0, Some(e.timestamp_ms)))
                            .collect();
                        (s, entries)
                    })
                    .map_err(|e| e.to_string())
            }
        });
        let (file_summary, entries) = match decoded {
            Ok(decoded) => decoded,
            Err(reason) => {
                findings.push(Finding::error(
                    "index_corrupt",
                    &path,
                    None,
                    format!(
                        "unreadable index ({reason}); the broker rebuilds it from the log, \
                         `tidelog segment repair` rewrites it now"
                    ),
                ));
                needs_rewrite = true;
                continue;
            }
        };
        if file_summary.log_bytes != summary.log_bytes {
            let message = format!(
                "index describes {} bytes of log but {} are valid; the broker ignores it and \
                 rebuilds it (`tidelog segment repair` rewrites it now)",
                file_summary.log_bytes, summary.log_bytes
            );
            if is_last {
                findings.push(Finding::warning("index_stale", &path, None, message));
            } else {
                findings.push(Finding::error("index_stale", &path, None, message));
            }
            needs_rewrite = true;
            continue;
        }
        if let Some(reason) = summary_mismatch(&file_summary, summary) {
            findings.push(Finding::error(
                "index_mismatch",
                &path,
                None,
                format!(
                    "index header disagrees with the log: {reason} (`tidelog segment repair` \
                     rewrites it)"
                ),
            ));
            needs_rewrite = true;
            continue;
        }
        for (n, &(relative, position, timestamp)) in entries.iter().enumerate() {
            let offset = base + relative;
            let found = boundaries
                .iter()
                .find(|&&(_, batch_base, _)| batch_base == offset);
            let problem = match (found, timestamp) {
                (None, _) => Some(format!(
                    "entry {n} names offset {offset}, where no batch starts"
                )),
                (Some(&(at, _, _)), None) if at != position => Some(format!(
                    "entry {n} puts offset {offset} at position {position}, but its batch is at {at}"
                )),
                (Some(&(_, _, max)), Some(ts)) if ts != max => Some(format!(
                    "entry {n} says the newest timestamp up to offset {offset} is {ts}, the log says {max}"
                )),
                _ => None,
            };
            if let Some(problem) = problem {
                findings.push(Finding::error(
                    "index_mismatch",
                    &path,
                    None,
                    format!(
                        "{problem}; reads through this index would fail (`tidelog segment repair` \
                         rewrites it)"
                    ),
                ));
                needs_rewrite = true;
                break;
            }
        }
    }
    needs_rewrite
}

fn summary_mismatch(file: &SegmentSummary, log: &SegmentSummary) -> Option<String> {
    if file.base_offset != log.base_offset {
        return Some(format!(
            "base offset {} vs {}",
            file.base_offset, log.base_offset
        ));
    }
    if file.next_offset != log.next_offset {
        return Some(format!(
            "next offset {} vs {}",
            file.next_offset, log.next_offset
        ));
    }
    if file.max_timestamp_ms != log.max_timestamp_ms {
        return Some(format!(
            "max timestamp {} vs {}",
            file.max_timestamp_ms, log.max_timestamp_ms
        ));
    }
    if file.max_expiry_ms != log.max_expiry_ms {
        return Some(format!(
            "max expiry {} vs {}",
            file.max_expiry_ms, log.max_expiry_ms
        ));
    }
    None
}

/// The finding for a file a newer tidelogd wrote (a state log record of a kind or
/// version this build does not know, a topic.config with newer record features).
pub const WRITTEN_BY_NEWER: &str = "written_by_newer";

/// What to do about a file a newer tidelogd wrote: not damage, so nothing is cut.
const NEWER_ADVICE: &str = "the tidelogd that wrote it (or a newer one): this record was \
     written whole by a newer build (its checksum matched), not damaged; run that build on \
     this data directory, or restore a copy of it taken before the upgrade. Without either, \
     `tidelog segment repair --discard-newer` cuts the log here, losing the state recorded \
     from there on";

/// Kinds of finding `tidelog segment repair` never changes, with or without --force:
/// what a newer build wrote, and a topic's own files (each finding says what to do).
pub const NOT_REPAIRED: [&str; 4] = [
    WRITTEN_BY_NEWER,
    "topic_config_invalid",
    "topic_owner_invalid",
    "topic_id_invalid",
];

/// What a check of a topic directory's own files found.
#[derive(Debug)]
pub struct TopicCheck {
    pub dir: PathBuf,
    pub findings: Vec<Finding>,
}

impl TopicCheck {
    /// Whether the broker would start with this topic as it is.
    pub fn broker_opens(&self) -> bool {
        count(&self.findings, Severity::Error) == 0
    }
}

/// Checks a topic directory's `topic.config`, `topic.owner` and `topic.id` with the
/// store's own readers (the rules its open applies): a file it refuses stops the whole
/// broker at start, not only this topic.
pub fn check_topic(dir: &Path) -> TopicCheck {
    let mut findings = Vec::new();
    match read_topic_config(&OsFs, dir) {
        Ok(Some(_)) => {}
        Ok(None) => findings.push(Finding::warning(
            "topic_config_missing",
            &dir.join(TOPIC_CONFIG_FILE),
            None,
            "missing: a topic whose creation did not finish; tidelogd removes this directory \
             at start, with whatever its partitions hold"
                .into(),
        )),
        Err(e) => findings.push(topic_file_refused("topic_config_invalid", dir, e)),
    }
    if let Err(e) = read_topic_owner(&OsFs, dir) {
        findings.push(topic_file_refused("topic_owner_invalid", dir, e));
    }
    if let Err(e) = read_topic_id(&OsFs, dir) {
        findings.push(topic_file_refused("topic_id_invalid", dir, e));
    }
    TopicCheck {
        dir: dir.to_path_buf(),
        findings,
    }
}

/// The finding for a topic file the store's open refuses with `error`.
fn topic_file_refused(kind: &'static str, dir: &Path, error: tidelog_storage::Error) -> Finding {
    const REFUSED: &str = "tidelogd refuses to start (the whole broker, not only this topic) \
         until it is fixed; `tidelog segment repair` does not change it";
    match error {
        tidelog_storage::Error::WrittenByNewer { ref file, .. } => {
            Finding::error(WRITTEN_BY_NEWER, file, None, format!("{error}; {REFUSED}"))
        }
        tidelog_storage::Error::Corrupt {
            file,
            position,
            reason,
        } => {
            let fix = if kind == "topic_config_invalid" {
                "; correct the file (storage/FORMAT.md, \"Topic config\") or restore it from a \
                 backup"
            } else {
                ""
            };
            Finding::error(
                kind,
                &file,
                Some(position),
                format!("{reason}{fix}; {REFUSED}"),
            )
        }
        other => Finding::error("io", dir, None, format!("cannot read it: {other}")),
    }
}

/// What a check of a state log (offsets, queue state, delivery history or access
/// state) found.
#[derive(Debug)]
pub struct StateLogCheck {
    pub path: PathBuf,
    pub kind: StateLogKind,
    pub log_bytes: u64,
    pub records: u64,
    /// Bytes of whole, valid records from the start.
    pub valid_bytes: u64,
    /// Whether what follows `valid_bytes` is a torn tail (else corruption).
    pub torn: bool,
    pub findings: Vec<Finding>,
    /// For an offsets log: the committed offsets the valid records leave:
    /// (group, topic, partition) -> next offset to consume. Empty for other kinds.
    pub committed: BTreeMap<(String, String, u32), u64>,
}

/// Replays a state log the way the broker does, with the engine's own scan
/// ([`statelog::scan_image`]) and the record type of its kind: a damaged record is a
/// torn tail only if no intact record follows it and no more bytes than one record
/// do; anything else is corruption. What the broker does about each is said in the
/// finding.
pub fn check_state_log(file: &StateLogFile) -> CliResult<StateLogCheck> {
    let path = &file.path;
    let data = read_file(path, LOG_FILE_BYTES_MAX)?;
    let mut committed = BTreeMap::new();
    let scan = match file.kind {
        StateLogKind::Offsets => {
            // The broker's own state machine replays what it would replay.
            let mut offsets = Offsets::default();
            let scan = statelog::scan_image::<OffsetOp>(&data, |_, record| {
                for op in record.ops {
                    offsets.apply(op);
                }
            });
            committed = offsets.committed();
            scan
        }
        StateLogKind::Queues => {
            let mut queues = Queues::default();
            statelog::scan_image::<QueueOp>(&data, |_, record| {
                for op in record.ops {
                    queues.apply(op);
                }
            })
        }
        StateLogKind::History => statelog::scan_image::<HistoryEvent>(&data, |_, _| {}),
        StateLogKind::Access => {
            let mut access = Access::default();
            statelog::scan_image::<AccessOp>(&data, |_, record| {
                for op in record.ops {
                    access.apply(op);
                }
            })
        }
    };
    let mut findings = Vec::new();
    let torn = matches!(scan.end, ScanEnd::Torn { .. });
    match scan.end {
        ScanEnd::Clean => {}
        ScanEnd::Torn { position, reason } => {
            let broker = match file.kind {
                StateLogKind::Offsets | StateLogKind::Queues | StateLogKind::Access => {
                    "the broker cuts it on open"
                }
                StateLogKind::History => {
                    "reads of the history stop there, and the broker cuts it if it goes on \
                     writing this file"
                }
            };
            findings.push(Finding::error(
                "torn_tail",
                path,
                Some(position),
                format!(
                    "torn tail: {reason}; {broker}; `tidelog segment repair` cuts it now and \
                     keeps the bytes"
                ),
            ));
        }
        ScanEnd::Corrupt { position, reason } => {
            let broker = match file.kind {
                StateLogKind::Offsets => "the broker refuses to open the offsets store",
                StateLogKind::Queues => {
                    "tidelogd refuses to start while the queue state is damaged"
                }
                StateLogKind::History => {
                    "`tidelog message history` and `tidelog queue deliveries` fail where they \
                     read this file"
                }
                StateLogKind::Access => {
                    "tidelogd --auth refuses to start while the access state is damaged"
                }
            };
            findings.push(Finding::error(
                "corrupt_record",
                path,
                Some(position),
                format!(
                    "{reason}; {broker} (`tidelog segment repair --force` cuts it here: {})",
                    file.kind.lost_by_a_cut()
                ),
            ));
        }
        ScanEnd::Newer { position, reason } => {
            let broker = match file.kind {
                StateLogKind::Offsets | StateLogKind::Queues => "tidelogd refuses to start",
                StateLogKind::History => {
                    "`tidelog message history` and `tidelog queue deliveries` fail where they \
                     read this file"
                }
                StateLogKind::Access => "tidelogd --auth refuses to start",
            };
            findings.push(Finding::error(
                WRITTEN_BY_NEWER,
                path,
                Some(position),
                format!("{reason}: {broker} until it runs {NEWER_ADVICE}"),
            ));
        }
    }
    Ok(StateLogCheck {
        path: path.clone(),
        kind: file.kind,
        log_bytes: data.len() as u64,
        records: scan.records,
        valid_bytes: scan.valid_len,
        torn,
        findings,
        committed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_storage::batch::{EncodeOptions, encode_batch, set_base_offset};
    use tidelog_storage::{Compression, NewRecord};

    /// The time index's running maximum leaves out a batch that failed its CRC, as the
    /// engine's scan does: otherwise verify would flag the index of every segment
    /// whose damaged batch held the newest timestamp.
    #[test]
    fn boundaries_leave_a_corrupt_batchs_timestamp_out_as_the_engine_does() {
        let mut log = Vec::new();
        for (base, timestamp_ms) in [(0, 100), (1, 300), (2, 200)] {
            let record = NewRecord {
                timestamp_ms: Some(timestamp_ms),
                ..NewRecord::value(vec![base as u8; 8])
            };
            let options = EncodeOptions {
                now_ms: 1_000,
                default_ttl_ms: None,
                compression: Compression::None,
                max_message_bytes: 1024,
                priority_levels: 0,
            };
            let mut bytes = encode_batch(&[record], &options).unwrap().bytes;
            set_base_offset(&mut bytes, base);
            log.extend_from_slice(&bytes);
        }
        let second = BatchHeader::parse(&log).unwrap().batch_length as usize;
        let second_length = BatchHeader::parse(&log[second..]).unwrap().batch_length as usize;
        let mut damaged = log.clone();
        damaged[second + second_length - 1] ^= 0x10; // the second batch's last value byte
        let report = tidelog_storage::segment::scan_durable(
            &damaged,
            0,
            tidelog_storage::segment::SegmentState::new(0),
            0,
        );
        assert_eq!(report.corrupt_batches.len(), 1, "{report:?}");
        assert_eq!(report.state.summary.max_timestamp_ms, 200);

        let times = |bytes, corrupt| -> Vec<i64> {
            batch_boundaries(bytes, corrupt)
                .iter()
                .map(|b| b.2)
                .collect()
        };
        assert_eq!(times(&log, &[]), vec![100, 300, 300]);
        assert_eq!(
            times(&damaged, &report.corrupt_batches),
            vec![100, 100, 200]
        );
    }

    /// verify classifies the offsets log as the broker's open does: clean, a torn tail
    /// (cut on open), or corruption (refused), and replays the committed offsets.
    #[test]
    fn offsets_log_verdicts_are_the_brokers() {
        let dir = tempfile::tempdir().unwrap();
        let clock = tidelog_storage::ManualClock::new(1_700_000_000_000);
        let store = tidelog_storage::OffsetStore::open(
            std::sync::Arc::new(tidelog_storage::OsFs),
            dir.path(),
            clock,
        )
        .unwrap();
        let commit = |offset| store.commit("g", &[("t".to_string(), 0, offset, String::new())]);
        commit(5).unwrap();
        let first_end = store.log_bytes() as usize;
        commit(7).unwrap();
        commit(9).unwrap();
        drop(store);
        let path = dir.path().join(tidelog_storage::offsets::LOG_FILE_NAME);
        let full = fs::read(&path).unwrap();
        let key = ("g".to_string(), "t".to_string(), 0);
        let file = StateLogFile {
            path: path.clone(),
            kind: StateLogKind::Offsets,
        };

        let clean = check_state_log(&file).unwrap();
        assert!(clean.findings.is_empty());
        assert_eq!((clean.records, clean.committed[&key]), (3, 9));

        fs::write(&path, &full[..full.len() - 1]).unwrap();
        let torn = check_state_log(&file).unwrap();
        assert!(torn.torn);
        assert_eq!(torn.findings[0].kind, "torn_tail");
        assert_eq!(torn.committed[&key], 7);

        let mut damaged = full.clone();
        damaged[first_end + 12] ^= 1;
        fs::write(&path, &damaged).unwrap();
        let corrupt = check_state_log(&file).unwrap();
        assert!(!corrupt.torn);
        assert_eq!(corrupt.findings[0].kind, "corrupt_record");
        assert_eq!(corrupt.valid_bytes, first_end as u64);
        assert_eq!(corrupt.committed[&key], 5);
    }

    /// A whole state log record of an operation kind this build does not know (what a
    /// newer tidelogd writes) is reported as written by a newer build, with what to do,
    /// never as corruption and never with --force; repair does not cut it, even with
    /// --force.
    #[test]
    fn a_state_log_record_of_a_newer_build_is_not_corruption_and_is_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        let clock = tidelog_storage::ManualClock::new(1_700_000_000_000);
        let store = tidelog_storage::OffsetStore::open(
            std::sync::Arc::new(tidelog_storage::OsFs),
            dir.path(),
            clock,
        )
        .unwrap();
        store
            .commit("g", &[("t".to_string(), 0, 5, String::new())])
            .unwrap();
        let valid = store.log_bytes();
        drop(store);
        let path = dir.path().join(tidelog_storage::offsets::LOG_FILE_NAME);
        /// An operation of a kind no build of this one knows, as a newer build would
        /// write one: framed and checksummed by the state log's own encoder.
        struct Newer;
        impl statelog::LogOp for Newer {
            fn encode(&self, out: &mut Vec<u8>) -> tidelog_storage::Result<()> {
                out.extend_from_slice(&[99; 9]);
                Ok(())
            }
            fn decode(reader: &mut statelog::OpReader<'_>) -> Result<Self, statelog::DecodeError> {
                Err(reader.malformed("never read"))
            }
        }
        let record = statelog::encode_record(&statelog::Record {
            written_at_ms: 0,
            ops: vec![Newer],
        })
        .unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&record);
        fs::write(&path, &bytes).unwrap();

        let file = StateLogFile {
            path: path.clone(),
            kind: StateLogKind::Offsets,
        };
        let check = check_state_log(&file).unwrap();
        assert_eq!(check.findings.len(), 1, "{:?}", check.findings);
        let finding = &check.findings[0];
        assert_eq!(
            (finding.kind, finding.severity, finding.position),
            (WRITTEN_BY_NEWER, Severity::Error, Some(valid))
        );
        assert!(
            finding.message.contains("operation kind 99")
                && finding.message.contains("tidelogd refuses to start")
                && finding.message.contains("the tidelogd that wrote it")
                && finding.message.contains("--discard-newer")
                && !finding.message.contains("corrupt")
                && !finding.message.contains("--force"),
            "{}",
            finding.message
        );
        assert!(!check.torn);
        for force in [false, true] {
            let plan = super::super::repair::plan_for_test(&check, force, false);
            assert_eq!(plan, (None, vec![WRITTEN_BY_NEWER]), "force {force}");
            // Only --discard-newer cuts it, at the record, to the end.
            let plan = super::super::repair::plan_for_test(&check, force, true);
            let len = bytes.len() as u64;
            assert_eq!(plan, (Some((valid, len)), vec![]), "force {force}");
        }
        // The broker's open agrees.
        let opened = tidelog_storage::OffsetStore::open(
            std::sync::Arc::new(tidelog_storage::OsFs),
            dir.path(),
            tidelog_storage::ManualClock::new(0),
        );
        assert!(
            matches!(opened, Err(tidelog_storage::Error::WrittenByNewer { .. })),
            "{opened:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    /// A topic's own files are checked with the store's rules: each file the store's
    /// open refuses (so tidelogd does not start) is an error saying so, and one the
    /// store opens is not.
    #[test]
    fn topic_files_the_store_refuses_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let options = || tidelog_storage::StoreOptions {
            retention_interval: None,
            ..tidelog_storage::StoreOptions::default()
        };
        let store = tidelog_storage::Store::open(&data, options()).unwrap();
        store
            .create_topic_owned(
                "t",
                1,
                tidelog_storage::TopicConfig::default(),
                Some("alice"),
            )
            .unwrap();
        drop(store);
        let topic = data.join("topics/t");
        let clean = check_topic(&topic);
        assert!(clean.findings.is_empty(), "{:?}", clean.findings);
        assert!(clean.broker_opens());

        let config = fs::read_to_string(topic.join("topic.config")).unwrap();
        let features = format!("record_features={}", tidelog_storage::RECORD_FEATURES);
        let newer = format!("record_features={}", tidelog_storage::RECORD_FEATURES + 1);
        let cases: [(&str, String, &str, &str); 4] = [
            (
                "topic.config",
                config.replace(&features, &newer),
                WRITTEN_BY_NEWER,
                "upgrade to read it",
            ),
            (
                "topic.config",
                format!("{config}bogus=1\n"),
                "topic_config_invalid",
                "bogus",
            ),
            (
                "topic.owner",
                "not a principal\n".into(),
                "topic_owner_invalid",
                "not a principal",
            ),
            (
                "topic.id",
                "zz\n".into(),
                "topic_id_invalid",
                "16 lowercase hex digits",
            ),
        ];
        for (name, contents, kind, words) in cases {
            let path = topic.join(name);
            let before = fs::read(&path).unwrap();
            fs::write(&path, &contents).unwrap();
            let check = check_topic(&topic);
            assert!(!check.broker_opens(), "{name}: {contents}");
            assert_eq!(check.findings.len(), 1, "{:?}", check.findings);
            let finding = &check.findings[0];
            assert_eq!((finding.kind, &finding.file), (kind, &path), "{finding:?}");
            assert!(
                finding.message.contains(words)
                    && finding.message.contains("tidelogd refuses to start")
                    && !finding.message.contains("--force"),
                "{}",
                finding.message
            );
            // The same rule as the broker's start.
            let opened = tidelog_storage::Store::open(&data, options());
            assert!(opened.is_err(), "{name}: the store opened {contents:?}");
            fs::write(&path, before).unwrap();
        }
        assert!(check_topic(&topic).findings.is_empty());
    }
}
