//! The durable state log: a state machine kept in memory whose every change is an
//! operation appended, CRC-framed, to one file, made durable with group commit, replayed
//! on open and compacted into a snapshot when the file grows. One implementation for
//! every kind of broker state; consumer offsets ([`crate::offsets`]) are the first user.
//!
//! # Using it
//!
//! A user defines its operations and its state:
//!
//! ```text
//! impl LogOp for MyOp {                     // the bytes of one operation
//!     fn encode(&self, out: &mut Vec<u8>) -> Result<()>;     // kind byte first; refuses
//!     fn decode(r: &mut OpReader) -> Result<Self, DecodeError>;  // what decode refuses
//! }
//! impl StateMachine for MyState {
//!     type Op = MyOp;
//!     type Outcome = ..;                    // what apply reports to the appender
//!     const NAME: &'static str = "my state";
//!     fn apply(&mut self, op: MyOp) -> Self::Outcome;   // deterministic, infallible
//!     fn snapshot(&self, out: &mut SnapshotWriter) -> Result<()>;  // ops that rebuild it
//!     fn snapshot_bytes(&self) -> u64;      // about what snapshot writes
//! }
//! let log = StateLog::open(fs, &data.join("state/my/my.statelog"), MyState::default(),
//!                          clock, StateLogOptions::default())?;
//! log.append(vec![op1, op2])?;              // returns once durable and applied, atomic
//! log.read(|state| state.lookup(..));      // sees only durable state
//! log.compact()?;                           // also runs on its own
//! ```
//!
//! Rules for a machine: `apply` is a pure function of the state and the operation (it
//! never reads the clock or the disk: put times in the operations), so replay rebuilds
//! exactly the state that was served; `apply` cannot fail (validate in the caller before
//! appending, and treat an operation that no longer applies, such as deleting what is
//! gone, as a no-op that reports so in its outcome); `snapshot` emits operations that,
//! applied to an empty machine, rebuild the state, in ops of at most a few tens of KiB.
//!
//! Several machines in one data directory each have their own log file (and so their
//! own group commit, compaction and poisoning): `DATA/state/<name>/<name>.statelog` for
//! new ones; the consumer offsets keep `DATA/offsets/offsets.log`, whose bytes this
//! framing reads unchanged.
//!
//! # Adding an operation
//!
//! Kinds are per machine, `u8`, never reused. A new operation takes the next kind, its
//! fields are appended to the machine's table in its module docs and in
//! `storage/FORMAT.md`, its decoder checks every length against
//! [`OpReader::remaining`] (use [`OpReader::count`] for a repeated field), and its
//! round trip joins the machine's proptest. A build that does not know a kind refuses the
//! record rather than skipping it: a log written by a newer build is never half-applied
//! by an older one. Every decoder answers a kind it does not know with
//! [`OpReader::unknown_kind`], so the refusal is one rule for every machine: a whole
//! record (its checksum matched) of an unknown kind or a newer record version is
//! [`ScanEnd::Newer`], and the open fails with [`crate::Error::WrittenByNewer`] ("run
//! the newer build"), never as corruption, and nothing is cut. Changing an existing operation's
//! layout means a new kind; the old kind stays decodable as long as logs holding it may
//! exist (a compaction rewrites every live operation in the current kinds).
//!
//! # On-disk format
//!
//! A log file is a sequence of records with nothing between them and no file header
//! (the file's path says which machine it belongs to). All integers are little-endian.
//!
//! **Record**
//!
//! | at | size | field | rule |
//! |---:|---:|---|---|
//! | 0 | 4 | `body_len` u32 | `13 <= body_len <= STATE_RECORD_BODY_BYTES_MAX` (16 MiB) |
//! | 4 | 4 | `crc` u32 | CRC-32 (IEEE, as `crc32fast::hash`) of the `body_len` body bytes |
//! | 8 | `body_len` | body | below |
//!
//! **Body**
//!
//! | at | size | field | rule |
//! |---:|---:|---|---|
//! | 0 | 1 | `version` u8 | `1` |
//! | 1 | 8 | `written_at_ms` i64 | wall clock when the record was written (informational) |
//! | 9 | 4 | `op_count` u32 | `>= 1` |
//! | 13 | .. | `op_count` operations | each a `kind` u8 and its machine's fields; they end exactly at the end of the body |
//!
//! Helpers for fields: a `str16` is a `u16` byte length then that many bytes of UTF-8
//! ([`put_str16`], [`OpReader::str16`]); a `bytes16` the same for opaque bytes.
//!
//! # Commit protocol
//!
//! 1. [`StateLog::append`] encodes its operations outside any lock (an operation the
//!    machine refuses, or a call larger than one record, fails here with nothing
//!    written) and queues them with a ticket.
//! 2. If no thread holds the *writer role*, the caller takes it; otherwise it waits.
//!    The writer takes every queued call (whole calls, up to one record) and writes
//!    them as **one record with one `pwrite`** at the end of the file, then
//!    **one `fdatasync`**: every call that queued while the previous fdatasync ran is
//!    covered by this one (group commit).
//! 3. After the fdatasync returns, the writer applies the operations to the machine (a
//!    write lock held only for that), posts each call's outcomes and wakes the waiters.
//!    Readers therefore see only durable state: nothing a reader saw can be taken back
//!    by a crash.
//! 4. If the log has grown past `max(compact_min_bytes, compact_live_ratio x
//!    snapshot_bytes)`, the same writer compacts (below) before giving up the role.
//!
//! A failed `pwrite` (ENOSPC, EIO) is undone by cutting the file back to its previous
//! length; the calls it carried fail and the log goes on. If the cut itself fails, or
//! the **fdatasync fails**, the log is **poisoned**: the calls fail with
//! [`crate::Error::Poisoned`], so are all later appends, until the log is reopened. An
//! fsync is never retried (after a failed one Linux may drop the dirty pages and report
//! the next one clean) and nothing it covered is ever acknowledged or applied. Reads go
//! on from memory, which holds only acknowledged operations.
//!
//! # Compaction
//!
//! With the writer role held (so the state cannot change), the machine's
//! [`StateMachine::snapshot`] is written through a [`SnapshotWriter`] to `<log>.tmp`,
//! one record of about 1 MiB at a time (readers keep reading meanwhile); the file is
//! fsynced, renamed over the log, and the directory fsynced; then appends go to the new
//! file. A failure before the rename removes the temporary file and leaves the log as it
//! was; a failure after it poisons the log (the append handle points at the old file).
//!
//! # Crash analysis
//!
//! What a crash (power cut or `kill -9`) at each step leaves, and what the next open
//! makes of it. The open: delete a stale `<log>.tmp` (and fsync the directory); open or
//! create the log; fsync the directory; scan the log from byte 0; truncate a torn tail;
//! write the valid bytes again and fsync them; only then serve.
//!
//! | crash during | on disk after it | the next open |
//! |---|---|---|
//! | step 1 or 2 before the `pwrite` | the log as it was | replays it: the unwritten calls never happened (none was acknowledged) |
//! | the `pwrite` or the fdatasync | the log plus none, part or all of the new record, possibly with wrong bytes or zeros in its pages | a record that is incomplete, or whose length or CRC is wrong, and that is the last thing in the file, is a torn tail: cut. A whole record is kept: its calls were not acknowledged, but keeping them is allowed (the caller did not learn the outcome) |
//! | after the fdatasync | the record, durable | replayed; whether its callers were told or not |
//! | a failed fdatasync, then a crash | the record may or may not be on disk, even after a later successful fsync | the log was poisoned, so no call it covered was acknowledged; either outcome is allowed |
//! | compaction: writing or fsyncing `.tmp` | the old log, complete, and a partial `.tmp` | deletes `.tmp`, replays the old log |
//! | compaction: after the rename, before the dir fsync | the old or the new log under the name (both complete and fsynced), maybe `.tmp` | replays whichever it is: both hold the same state; the directory is fsynced before serving |
//! | the open's own rewrite and fsync | the same valid bytes | the same replay |
//!
//! One record per fdatasync means only the last record can be torn. So a damaged record
//! (incomplete, length out of range, CRC mismatch) is a torn tail **only if** no intact
//! record (one whose CRC matches) starts at any later byte and no more bytes follow its
//! start than one record can hold ([`RECORD_BYTES_MAX`]); otherwise it is corruption and
//! the open fails with [`crate::Error::Corrupt`] naming the file and position, leaving
//! the file untouched for an operator: nothing is cut silently. A record whose CRC
//! matches but whose body is malformed was written whole: corruption, never a torn
//! write, even at the end; one of an unknown kind or a newer version was written by a
//! newer build ([`ScanEnd::Newer`]): refused, not cut.
//!
//! Media assumptions: a completed `fdatasync` makes the file's data and size durable;
//! `fsync` of a directory makes its entries durable; `rename` is atomic; a crash may
//! persist any subset of the pages of an unsynced write, in any order (the CRC covers
//! the whole body, so any such mix is caught). As everywhere in tidelog, bytes that
//! were fsynced do not change afterwards (no bit rot protection beyond the CRC).
//!
//! # Memory
//!
//! The state itself is the machine's business (bound it by what is in flight, not by
//! history). The log adds: the queued calls (each caller's own operations); one record
//! being written (at most [`crate::limits::STATE_RECORD_BODY_BYTES_MAX`]); during replay
//! one buffer of `max(STATE_READ_CHUNK_BYTES, one record)`, never the whole file; during
//! compaction one snapshot record (about `STATE_SNAPSHOT_RECORD_BODY_BYTES`), never a
//! second copy of the state. Every length read from disk is checked against its limit
//! and against the bytes that remain before anything is allocated for it.
//!
//! Only one `StateLog` may have a file open at a time: the data directory's `LOCK`
//! ensures it for the broker; nothing in the log file itself does.

mod log;
mod record;
mod scan;
mod snapshot;

pub use log::{StateLog, Ticket};
pub use record::{
    BODY_FIXED_BYTES, DecodeError, LogOp, OPS_BYTES_MAX, OpReader, RECORD_BYTES_MAX,
    RECORD_HEADER_BYTES, RECORD_VERSION, Record, decode_record, encode_record, put_bytes16,
    put_str16,
};
pub(crate) use scan::scan_file_prefix;
pub use scan::{Scan, ScanEnd, scan_image};
pub use snapshot::SnapshotWriter;

use crate::error::Result;

/// A state kept durable by a [`StateLog`]: what its operations are and how they change
/// it. See the module docs for the rules.
pub trait StateMachine: Send + Sync + 'static {
    /// A change, as it is stored.
    type Op: LogOp;

    /// What applying an operation reports to the caller that appended it (for
    /// example whether a deleted thing existed).
    type Outcome: Send + 'static;

    /// Names the state in errors and logs, for example `"consumer offsets"`.
    const NAME: &'static str;

    /// Applies one durable operation. Deterministic and infallible: replay calls it
    /// for every operation in the log, in order.
    fn apply(&mut self, op: Self::Op) -> Self::Outcome;

    /// Writes operations that, applied in order to an empty machine, rebuild this state.
    fn snapshot(&self, out: &mut SnapshotWriter<'_>) -> Result<()>;

    /// About how many bytes [`StateMachine::snapshot`] would write (operations only),
    /// kept up to date cheaply: the log compacts when it grows to a multiple of this.
    fn snapshot_bytes(&self) -> u64;
}

/// When a [`StateLog`] compacts on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLogOptions {
    /// The log is never compacted automatically below this size.
    pub compact_min_bytes: u64,
    /// Above `compact_min_bytes`, the log is compacted once it is larger than this many
    /// times the snapshot's size.
    pub compact_live_ratio: u64,
}

impl Default for StateLogOptions {
    /// 1 MiB and 4: replay reads at most about four times the live state.
    fn default() -> Self {
        StateLogOptions {
            compact_min_bytes: 1024 * 1024,
            compact_live_ratio: 4,
        }
    }
}

/// What a [`StateLog`] did since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateLogStats {
    /// Records written by appends; each was one `pwrite` and one `fdatasync`.
    pub records: u64,
    /// Append calls those records carried (`appends / records` is the group-commit
    /// batch size).
    pub appends: u64,
    /// Compactions that completed.
    pub compactions: u64,
}

#[cfg(test)]
mod tests;
