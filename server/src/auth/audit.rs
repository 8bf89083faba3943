//! The audit trail: one structured line for every refused call, every change of the
//! access state (tokens, rules, quotas) and every admin change (a topic, group or queue
//! created, altered, deleted or reset).
//!
//! Without `--audit-log` the lines go to the log (stderr) under the tracing target
//! [`AUDIT_TARGET`]. With it they go to that file instead, one JSON object per line:
//!
//! ```text
//! {"ts_ms":1764871200123,"event":"admin change","principal":"alice","rpc":"Admin/CreateTopic","operation":"create","resource":"topic:orders","result":"OK"}
//! ```
//!
//! Fields: `ts_ms` (Unix milliseconds), `event` (`call refused`, `access changed`,
//! `admin change`), `principal` (`-` when unknown), `rpc`, `operation`, `resource`,
//! `result` (`OK`, `UNCHANGED`, or the gRPC code name), and `detail` (why a call was
//! refused, or what an access change was) when there is one. The file is opened for
//! appending (created with mode 0600) and opened again on SIGHUP, so a rotated file is
//! let go. A line that cannot be written is reported in the log; the call it audits is
//! not failed for it.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The tracing target of the audit lines when they go to the log: `RUST_LOG` or
/// `--log-level` can route or silence it (`tidelog_audit=info`).
pub const AUDIT_TARGET: &str = "tidelog_audit";

/// One audit event.
#[derive(Debug, Clone, Copy)]
pub struct AuditLine<'a> {
    pub event: &'static str,
    pub principal: &'a str,
    pub rpc: &'a str,
    pub operation: &'a str,
    pub resource: &'a str,
    pub result: &'a str,
    pub detail: &'a str,
}

impl AuditLine<'_> {
    /// The line's JSON form, newline-terminated.
    pub fn to_json(&self, ts_ms: i64) -> Vec<u8> {
        let mut object = serde_json::json!({
            "ts_ms": ts_ms,
            "event": self.event,
            "principal": self.principal,
            "rpc": self.rpc,
            "operation": self.operation,
            "resource": self.resource,
            "result": self.result,
        });
        if !self.detail.is_empty() {
            object["detail"] = self.detail.into();
        }
        let mut line = object.to_string().into_bytes();
        line.push(b'\n');
        line
    }

    /// Writes the line to the log.
    fn trace(&self) {
        let AuditLine {
            event,
            principal,
            rpc,
            operation,
            resource,
            result,
            detail,
        } = *self;
        if event == EVENT_REFUSED {
            tracing::warn!(target: AUDIT_TARGET, principal, rpc, result, reason = detail, "call refused");
        } else if event == EVENT_ACCESS {
            tracing::info!(target: AUDIT_TARGET, principal, change = detail, result, "access changed");
        } else {
            tracing::info!(target: AUDIT_TARGET, principal, rpc, operation, resource, result, "admin change");
        }
    }
}

pub const EVENT_REFUSED: &str = "call refused";
pub const EVENT_ACCESS: &str = "access changed";
pub const EVENT_ADMIN: &str = "admin change";

/// Where audit lines go: the log, or a file (`--audit-log`).
#[derive(Debug, Default)]
pub struct AuditSink {
    file: Option<AuditFile>,
}

#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            format!(
                "cannot open the audit log {} for appending ({e}); fix the path or its \
                 directory's permissions, or leave out --audit-log to audit to stderr",
                path.display()
            )
        })
}

impl AuditSink {
    /// Lines to the log.
    pub fn log() -> Self {
        AuditSink::default()
    }

    /// Lines appended to `path` (created if missing).
    pub fn file(path: &Path) -> Result<Self, String> {
        Ok(AuditSink {
            file: Some(AuditFile {
                path: path.to_path_buf(),
                file: Mutex::new(open_append(path)?),
            }),
        })
    }

    /// Opens the file again (SIGHUP: after a rotation the new lines go to a new file).
    pub fn reopen(&self) -> Result<(), String> {
        if let Some(audit) = &self.file {
            let file = open_append(&audit.path)?;
            *audit.file.lock().unwrap_or_else(|e| e.into_inner()) = file;
        }
        Ok(())
    }

    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// Writes one line where lines go; `ts_ms` is its time (Unix ms) in the file.
    pub fn write(&self, line: &AuditLine<'_>, ts_ms: i64) {
        let Some(audit) = &self.file else {
            line.trace();
            return;
        };
        let bytes = line.to_json(ts_ms);
        let written = audit
            .file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&bytes);
        if let Err(error) = written {
            tracing::error!(
                path = %audit.path.display(),
                %error,
                "cannot write to the audit log; this line follows here instead"
            );
            line.trace();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(detail: &'a str, resource: &'a str) -> AuditLine<'a> {
        AuditLine {
            event: EVENT_ADMIN,
            principal: "alice",
            rpc: "Admin/CreateTopic",
            operation: "create",
            resource,
            result: "OK",
            detail,
        }
    }

    #[test]
    fn lines_are_one_json_object_each_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::file(&path).unwrap();
        // Quotes, newlines and non-ASCII in names stay inside their JSON string.
        sink.write(&line("", "topic:\"odd\"\nname"), 1_764_871_200_123);
        sink.write(&line("why ünïcode", "topic:orders"), 1_764_871_200_124);
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        sink.reopen().unwrap();
        sink.write(&line("", "topic:after"), 1_764_871_200_125);
        let rotated = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
        let lines: Vec<serde_json::Value> = rotated
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["resource"], "topic:\"odd\"\nname");
        assert!(lines[0].get("detail").is_none());
        assert_eq!(lines[1]["detail"], "why ünïcode");
        assert_eq!(lines[1]["principal"], "alice");
        assert_eq!(lines[1]["ts_ms"], 1_764_871_200_124i64);
        let fresh = std::fs::read_to_string(&path).unwrap();
        assert_eq!(fresh.lines().count(), 1);
        assert!(fresh.contains("topic:after"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn an_unwritable_path_is_refused_with_the_flag_named() {
        let error = AuditSink::file(Path::new("/nonexistent-dir/audit.log")).unwrap_err();
        assert!(error.contains("--audit-log"), "{error}");
    }
}
