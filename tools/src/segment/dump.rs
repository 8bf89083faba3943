//! `tidelog segment dump FILE`: what is in one file, batch by batch (kafka-dump-log's
//! job). The kind of file is told by its name.

use std::io::IsTerminal;
use std::path::Path;

use bytes::Bytes;
use serde_json::{Value, json};
use tidelog_storage::batch::{self, BatchHeader, FormatError, NEVER_EXPIRES, Record, RecordIter};
use tidelog_storage::checkpoint::{self, Checkpoint, SLOT_BYTES};
use tidelog_storage::index::{self, SegmentSummary};
use tidelog_storage::offsets::{OffsetOp, decode_record};
use tidelog_storage::segment::{LOG_SUFFIX, parse_segment_name};

use super::check::{LOG_FILE_BYTES_MAX, read_file};
use crate::args::DumpArgs;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, bytes_json, preview};
use crate::terms::range;
use crate::time::format_datetime_ms;

/// Largest index or checkpoint file read.
const SMALL_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// A segment log; the base offset when the name carries it.
    Log(Option<u64>),
    OffsetIndex,
    TimeIndex,
    Checkpoint,
    OffsetsLog,
}

fn kind_of(path: &Path) -> Option<FileKind> {
    let name = path.file_name()?.to_string_lossy().to_string();
    if name == tidelog_storage::offsets::LOG_FILE_NAME || name.starts_with("offsets.log.") {
        return Some(FileKind::OffsetsLog);
    }
    if name == checkpoint::FILE_NAME {
        return Some(FileKind::Checkpoint);
    }
    if name.ends_with(".timeindex") || name.contains(".timeindex.") {
        return Some(FileKind::TimeIndex);
    }
    if name.ends_with(".index") || name.contains(".index.") {
        return Some(FileKind::OffsetIndex);
    }
    if name.ends_with(".log") {
        return Some(FileKind::Log(parse_segment_name(&name, LOG_SUFFIX)));
    }
    // Side files of a repair or recovery: `<segment>.log.torn-at-N`, `.removed-by-repair`.
    if name.contains(".log.") {
        return Some(FileKind::Log(None));
    }
    None
}

/// Collects the problems of a dump; the first one is named in the exit line.
struct Problems {
    count: usize,
    first: Option<String>,
}

impl Problems {
    fn add(
        &mut self,
        out: &mut Stdout,
        json: bool,
        position: u64,
        message: String,
    ) -> CliResult<()> {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(format!("position {position}: {message}"));
        }
        if json {
            out.json(&json!({"type": "problem", "position": position, "message": message}))
        } else {
            out.line(&format!("problem  position {position}: {message}"))
        }
    }
}

pub fn run(args: &DumpArgs, json: bool) -> CliResult<()> {
    let path = &args.file;
    let kind = kind_of(path).ok_or_else(|| {
        CliError::usage(
            format!("cannot tell what kind of file {} is", path.display()),
            "dump takes a segment .log, a .index, a .timeindex, a checkpoint or an offsets.log",
        )
    })?;
    let mut out = Stdout::new();
    let mut problems = Problems {
        count: 0,
        first: None,
    };
    match kind {
        FileKind::Log(base) => dump_log(path, base, args, json, &mut out, &mut problems)?,
        FileKind::OffsetIndex | FileKind::TimeIndex => {
            dump_index(
                path,
                kind == FileKind::TimeIndex,
                json,
                &mut out,
                &mut problems,
            )?;
        }
        FileKind::Checkpoint => dump_checkpoint(path, json, &mut out, &mut problems)?,
        FileKind::OffsetsLog => dump_offsets_log(path, json, &mut out, &mut problems)?,
    }
    out.flush()?;
    match problems.first {
        None => Ok(()),
        Some(first) => Err(CliError::failure(
            format!(
                "{} has {} problem{}; first at {first}",
                path.display(),
                problems.count,
                if problems.count == 1 { "" } else { "s" }
            ),
            "run `tidelog segment verify` on its directory for the whole picture",
        )),
    }
}

fn timestamp(ms: i64) -> String {
    if ms == i64::MIN {
        "none".into()
    } else {
        format_datetime_ms(ms)
    }
}

fn expiry(ms: i64) -> String {
    if ms == NEVER_EXPIRES {
        "never".into()
    } else {
        timestamp(ms)
    }
}

fn expiry_json(ms: i64) -> Value {
    if ms == NEVER_EXPIRES || ms == i64::MIN {
        Value::Null
    } else {
        json!(ms)
    }
}

fn batch_json(position: u64, h: &BatchHeader, crc_ok: bool) -> Value {
    json!({
        "type": "batch",
        "position": position,
        "base_offset": h.base_offset,
        "last_offset": h.last_offset(),
        "record_count": h.record_count,
        "batch_length": h.batch_length,
        "crc": h.crc,
        "crc_ok": crc_ok,
        "compression": h.compression.name(),
        "first_timestamp": h.first_timestamp_ms,
        "max_timestamp": h.max_timestamp_ms,
        "max_expiry": expiry_json(h.max_expiry_ms),
        "records_length": h.records_length,
        "uncompressed_length": h.uncompressed_length,
    })
}

fn record_json(r: &Record) -> Value {
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|h| json!({"key": h.key, "value": bytes_json(&h.value)}))
        .collect();
    json!({
        "type": "record",
        "offset": r.offset,
        "timestamp": r.timestamp_ms,
        "expires_at": r.expires_at_ms,
        "key": r.key.as_ref().map(|k| bytes_json(k)),
        "value": bytes_json(&r.value),
        "headers": headers,
    })
}

fn record_line(r: &Record, max: usize) -> String {
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|h| format!("{}={}", h.key, preview(&h.value, max)))
        .collect();
    format!(
        "  record  offset {}  timestamp {}  expires {}  key {}  value {}{}",
        r.offset,
        format_datetime_ms(r.timestamp_ms),
        r.expires_at_ms
            .map_or_else(|| "never".into(), format_datetime_ms),
        r.key
            .as_ref()
            .map_or_else(|| "none".into(), |k| preview(k, max)),
        preview(&r.value, max),
        if headers.is_empty() {
            String::new()
        } else {
            format!("  headers [{}]", headers.join(", "))
        }
    )
}

fn dump_log(
    path: &Path,
    base: Option<u64>,
    args: &DumpArgs,
    json: bool,
    out: &mut Stdout,
    problems: &mut Problems,
) -> CliResult<()> {
    let data = Bytes::from(read_file(path, LOG_FILE_BYTES_MAX)?);
    let progress = if std::io::stdout().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        super::progress::byte_progress(data.len() as u64, "dumping")
    };
    let mut position = 0usize;
    let mut expected = base;
    let (mut batches, mut records) = (0u64, 0u64);
    while position < data.len() {
        let rest = data.slice(position..);
        let at = position as u64;
        let header = match BatchHeader::parse(&rest) {
            Ok(header) => header,
            Err(FormatError::Incomplete { .. }) => {
                let message = format!(
                    "torn tail: {} bytes after the last whole batch, too few for a batch header",
                    rest.len()
                );
                problems.add(out, json, at, message)?;
                break;
            }
            Err(FormatError::Invalid(reason)) => {
                let message = format!(
                    "unreadable batch header ({reason}); the {} bytes from here cannot be delimited",
                    rest.len()
                );
                problems.add(out, json, at, message)?;
                break;
            }
        };
        let length = header.batch_length as usize;
        if length > rest.len() {
            let message = format!(
                "torn tail: a batch of {length} bytes (offsets {}) is cut off after {} bytes",
                range(header.base_offset, header.last_offset()),
                rest.len()
            );
            problems.add(out, json, at, message)?;
            break;
        }
        let bytes = rest.slice(..length);
        let crc_ok = batch::verify_crc(&bytes, &header);
        if json {
            out.json(&batch_json(at, &header, crc_ok))?;
        } else {
            out.line(&format!(
                "batch  position {at}  offsets {}  records {}  bytes {length}  crc {:#010x} {}  \
                 compression {}  first-timestamp {}  max-timestamp {}  max-expiry {}",
                range(header.base_offset, header.last_offset()),
                header.record_count,
                header.crc,
                if crc_ok { "ok" } else { "MISMATCH" },
                header.compression.name(),
                format_datetime_ms(header.first_timestamp_ms),
                format_datetime_ms(header.max_timestamp_ms),
                expiry(header.max_expiry_ms),
            ))?;
        }
        if let Some(e) = expected
            && e != header.base_offset
        {
            let message = format!(
                "batch base offset {} where {e} was expected",
                header.base_offset
            );
            problems.add(out, json, at, message)?;
        }
        if !crc_ok {
            problems.add(
                out,
                json,
                at,
                "CRC mismatch: the batch's bytes are not the ones written".into(),
            )?;
        } else if args.records {
            match RecordIter::new(&bytes, &header) {
                Ok(iter) => {
                    for record in iter {
                        match record {
                            Ok(r) => {
                                records += 1;
                                if json {
                                    out.json(&record_json(&r))?;
                                } else {
                                    out.line(&record_line(&r, args.max_value_bytes))?;
                                }
                            }
                            Err(e) => {
                                problems.add(out, json, at, format!("undecodable record: {e}"))?;
                                break;
                            }
                        }
                    }
                }
                Err(e) => problems.add(out, json, at, format!("undecodable records: {e}"))?,
            }
        }
        batches += 1;
        expected = Some(header.next_offset());
        position += length;
        progress.set_position(position as u64);
    }
    progress.finish_and_clear();
    let summary = json!({
        "type": "summary",
        "file": path.display().to_string(),
        "bytes": data.len(),
        "batches": batches,
        "records": if args.records { Some(records) } else { None },
        "next_offset": expected,
        "problems": problems.count,
    });
    if json {
        out.json(&summary)
    } else {
        out.line(&format!(
            "summary  {} bytes  {batches} batch{}{}  next offset {}  {} problem{}",
            data.len(),
            if batches == 1 { "" } else { "es" },
            if args.records {
                format!("  {records} records")
            } else {
                String::new()
            },
            expected.map_or_else(|| "unknown".into(), |o| o.to_string()),
            problems.count,
            if problems.count == 1 { "" } else { "s" },
        ))
    }
}

fn summary_line(kind: &str, s: &SegmentSummary, entries: usize) -> String {
    format!(
        "{kind}  base-offset {}  log-bytes {}  next-offset {}  max-timestamp {}  max-expiry {}  entries {entries}",
        s.base_offset,
        s.log_bytes,
        s.next_offset,
        timestamp(s.max_timestamp_ms),
        expiry(s.max_expiry_ms),
    )
}

fn summary_json(kind: &str, s: &SegmentSummary, entries: usize) -> Value {
    json!({
        "type": kind,
        "base_offset": s.base_offset,
        "log_bytes": s.log_bytes,
        "next_offset": s.next_offset,
        "max_timestamp": if s.max_timestamp_ms == i64::MIN { None } else { Some(s.max_timestamp_ms) },
        "max_expiry": expiry_json(s.max_expiry_ms),
        "entries": entries,
    })
}

fn dump_index(
    path: &Path,
    time: bool,
    json: bool,
    out: &mut Stdout,
    problems: &mut Problems,
) -> CliResult<()> {
    let bytes = read_file(path, SMALL_FILE_BYTES_MAX)?;
    if time {
        match index::decode_time_index(&bytes) {
            Ok((summary, entries)) => {
                if json {
                    out.json(&summary_json("time_index", &summary, entries.len()))?;
                } else {
                    out.line(&summary_line("time-index", &summary, entries.len()))?;
                }
                for e in entries {
                    let offset = summary.base_offset + u64::from(e.relative_offset);
                    if json {
                        out.json(&json!({"type": "entry", "timestamp": e.timestamp_ms, "relative_offset": e.relative_offset, "offset": offset}))?;
                    } else {
                        out.line(&format!(
                            "entry  timestamp {}  relative-offset {}  offset {offset}",
                            format_datetime_ms(e.timestamp_ms),
                            e.relative_offset
                        ))?;
                    }
                }
            }
            Err(e) => problems.add(out, json, 0, format!("unreadable time index: {e}"))?,
        }
    } else {
        match index::decode_offset_index(&bytes) {
            Ok((summary, entries)) => {
                if json {
                    out.json(&summary_json("offset_index", &summary, entries.len()))?;
                } else {
                    out.line(&summary_line("offset-index", &summary, entries.len()))?;
                }
                for e in entries {
                    let offset = summary.base_offset + u64::from(e.relative_offset);
                    if json {
                        out.json(&json!({"type": "entry", "relative_offset": e.relative_offset, "offset": offset, "position": e.position}))?;
                    } else {
                        out.line(&format!(
                            "entry  relative-offset {}  offset {offset}  position {}",
                            e.relative_offset, e.position
                        ))?;
                    }
                }
            }
            Err(e) => problems.add(out, json, 0, format!("unreadable offset index: {e}"))?,
        }
    }
    Ok(())
}

fn dump_checkpoint(
    path: &Path,
    json: bool,
    out: &mut Stdout,
    problems: &mut Problems,
) -> CliResult<()> {
    let bytes = read_file(path, SMALL_FILE_BYTES_MAX)?;
    let current = Checkpoint::decode_file(&bytes);
    for (slot, chunk) in bytes.chunks(SLOT_BYTES).take(2).enumerate() {
        let decoded = Checkpoint::decode(chunk);
        let is_current = decoded.is_some() && decoded == current;
        match (decoded, json) {
            (Some(c), true) => out.json(&json!({
                "type": "slot", "slot": slot, "valid": true, "current": is_current,
                "sequence": c.sequence, "segment_base": c.segment_base,
                "position": c.position, "next_offset": c.next_offset,
            }))?,
            (Some(c), false) => out.line(&format!(
                "slot {slot}  sequence {}  segment {}  position {}  next-offset {}{}",
                c.sequence,
                c.segment_base,
                c.position,
                c.next_offset,
                if is_current { "  (current)" } else { "" }
            ))?,
            (None, true) => out.json(&json!({"type": "slot", "slot": slot, "valid": false}))?,
            (None, false) => out.line(&format!("slot {slot}  invalid (never written, or torn)"))?,
        }
    }
    if current.is_none() {
        problems.add(
            out,
            json,
            0,
            "no valid slot: the broker scans the whole partition on open".into(),
        )?;
    }
    Ok(())
}

fn dump_offsets_log(
    path: &Path,
    json: bool,
    out: &mut Stdout,
    problems: &mut Problems,
) -> CliResult<()> {
    let data = read_file(path, LOG_FILE_BYTES_MAX)?;
    let mut position = 0usize;
    while let Some(rest) = data.get(position..).filter(|r| !r.is_empty()) {
        let (record, used) = match decode_record(rest) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => {
                let message = format!(
                    "incomplete record: {} bytes at the end (a torn tail)",
                    rest.len()
                );
                problems.add(out, json, position as u64, message)?;
                break;
            }
            Err(e) => {
                problems.add(out, json, position as u64, format!("bad record: {e}"))?;
                break;
            }
        };
        if json {
            let ops: Vec<Value> = record.ops.iter().map(op_json).collect();
            out.json(&json!({"type": "record", "position": position, "written_at": record.written_at_ms, "ops": ops}))?;
        } else {
            out.line(&format!(
                "record  position {position}  written {}  ops {}",
                format_datetime_ms(record.written_at_ms),
                record.ops.len()
            ))?;
            for op in &record.ops {
                out.line(&format!("  {}", op_line(op)))?;
            }
        }
        position += used;
    }
    Ok(())
}

fn op_json(op: &OffsetOp) -> Value {
    match op {
        OffsetOp::Commit { group, entries } => json!({
            "op": "commit",
            "group": group,
            "entries": entries.iter().map(|e| json!({
                "topic": e.topic, "partition": e.partition, "offset": e.offset,
                "commit_timestamp": e.commit_timestamp_ms, "metadata": e.metadata,
            })).collect::<Vec<_>>(),
        }),
        OffsetOp::DeleteGroup { group } => json!({"op": "delete_group", "group": group}),
        OffsetOp::DeleteTopic { topic } => json!({"op": "delete_topic", "topic": topic}),
        OffsetOp::DeleteGroupOffsets {
            group,
            topic,
            partitions,
        } => {
            json!({"op": "delete_group_offsets", "group": group, "topic": topic, "partitions": partitions})
        }
    }
}

fn op_line(op: &OffsetOp) -> String {
    match op {
        OffsetOp::Commit { group, entries } => {
            let list: Vec<String> = entries
                .iter()
                .map(|e| format!("{}/{}={}", e.topic, e.partition, e.offset))
                .collect();
            format!("commit  group {group}  {}", list.join(" "))
        }
        OffsetOp::DeleteGroup { group } => format!("delete-group  {group}"),
        OffsetOp::DeleteTopic { topic } => format!("delete-topic  {topic}"),
        OffsetOp::DeleteGroupOffsets {
            group,
            topic,
            partitions,
        } => format!("delete-group-offsets  group {group}  {topic} {partitions:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_kinds_come_from_names() {
        let kind = |name: &str| kind_of(Path::new(name));
        assert_eq!(
            kind("d/00000000000000000042.log"),
            Some(FileKind::Log(Some(42)))
        );
        assert_eq!(
            kind("d/00000000000000000042.index"),
            Some(FileKind::OffsetIndex)
        );
        assert_eq!(
            kind("d/00000000000000000042.timeindex"),
            Some(FileKind::TimeIndex)
        );
        assert_eq!(kind("d/checkpoint"), Some(FileKind::Checkpoint));
        assert_eq!(kind("d/offsets.log"), Some(FileKind::OffsetsLog));
        assert_eq!(
            kind("d/00000000000000000042.log.torn-at-100"),
            Some(FileKind::Log(None))
        );
        assert_eq!(kind("d/other.log"), Some(FileKind::Log(None)));
        assert_eq!(kind("d/topic.config"), None);
    }
}
