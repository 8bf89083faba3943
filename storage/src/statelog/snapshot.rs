//! [`SnapshotWriter`]: what a state machine writes its snapshot through during a
//! compaction. Operations are packed into records of about
//! [`STATE_SNAPSHOT_RECORD_BODY_BYTES`] and each record goes to the compaction's file as
//! soon as it is full, so a snapshot never holds a second copy of the whole state.

use crate::error::{Error, Result};
use crate::limits::STATE_SNAPSHOT_RECORD_BODY_BYTES;

use super::record::{BODY_FIXED_BYTES, LogOp, assemble_record, check_ops_fit};

/// Room for operations in a snapshot record before it is written out.
const SNAPSHOT_OPS_BYTES: usize = STATE_SNAPSHOT_RECORD_BODY_BYTES - BODY_FIXED_BYTES;

/// Receives the operations that rebuild a machine's state; see
/// [`super::StateMachine::snapshot`].
pub struct SnapshotWriter<'a> {
    /// Writes one finished record.
    sink: &'a mut dyn FnMut(&[u8]) -> Result<()>,
    written_at_ms: i64,
    /// Operations of the record being filled, encoded back to back.
    ops: Vec<u8>,
    op_count: u32,
    /// The operation being encoded.
    scratch: Vec<u8>,
    /// Bytes handed to `sink` so far.
    written: u64,
}

impl<'a> SnapshotWriter<'a> {
    /// A writer whose records carry `written_at_ms` and go to `sink`.
    pub(crate) fn new(written_at_ms: i64, sink: &'a mut dyn FnMut(&[u8]) -> Result<()>) -> Self {
        SnapshotWriter {
            sink,
            written_at_ms,
            ops: Vec::new(),
            op_count: 0,
            scratch: Vec::new(),
            written: 0,
        }
    }

    /// Adds `op` to the snapshot.
    pub fn push<O: LogOp>(&mut self, op: &O) -> Result<()> {
        self.push_with(|out| op.encode(out))
    }

    /// Adds one operation that `encode` appends to the (empty) buffer it is given, kind
    /// byte first, exactly as its [`LogOp::encode`] would: for machines that write
    /// their snapshot straight from their state without building owned operations.
    /// Keep one operation well under [`STATE_SNAPSHOT_RECORD_BODY_BYTES`] (64 KiB is a
    /// good size), so records pack well.
    pub fn push_with(&mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
        self.scratch.clear();
        encode(&mut self.scratch)?;
        if self.scratch.is_empty() {
            return Err(Error::invalid("a snapshot operation encoded to no bytes"));
        }
        check_ops_fit("one snapshot operation", self.scratch.len())?;
        if self.op_count > 0 && self.ops.len() + self.scratch.len() > SNAPSHOT_OPS_BYTES {
            self.write_record()?;
        }
        self.ops.extend_from_slice(&self.scratch);
        self.op_count += 1;
        if self.ops.len() >= SNAPSHOT_OPS_BYTES {
            self.write_record()?;
        }
        Ok(())
    }

    fn write_record(&mut self) -> Result<()> {
        if self.op_count == 0 {
            return Ok(());
        }
        let record = assemble_record(
            self.written_at_ms,
            self.op_count,
            std::iter::once(self.ops.as_slice()),
        );
        (self.sink)(&record)?;
        self.written += record.len() as u64;
        self.ops.clear();
        self.op_count = 0;
        Ok(())
    }

    /// Writes the last record; returns the snapshot's length in bytes.
    pub(crate) fn finish(mut self) -> Result<u64> {
        self.write_record()?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::tests::TestOp;
    use super::super::scan::{ScanEnd, scan_image};
    use super::*;

    #[test]
    fn snapshot_records_stay_near_the_target_size_and_read_back() {
        let mut image = Vec::new();
        let mut records = 0;
        let mut sink = |record: &[u8]| {
            assert!(record.len() <= STATE_SNAPSHOT_RECORD_BODY_BYTES + 8);
            image.extend_from_slice(record);
            records += 1;
            Ok(())
        };
        let mut writer = SnapshotWriter::new(7, &mut sink);
        let count = 200_000u64;
        for i in 0..count {
            writer.push(&TestOp::Put(format!("key-{i}"), i)).unwrap();
        }
        let written = writer.finish().unwrap();
        assert!(records > 2, "{records} records");
        assert_eq!(written, image.len() as u64);

        let mut next = 0;
        let scan = scan_image::<TestOp>(&image, |_, record| {
            assert_eq!(record.written_at_ms, 7);
            for op in record.ops {
                assert_eq!(op, TestOp::Put(format!("key-{next}"), next));
                next += 1;
            }
        });
        assert_eq!(scan.end, ScanEnd::Clean);
        assert_eq!(next, count);
    }

    #[test]
    fn empty_snapshot_writes_nothing_and_bad_operations_are_refused() {
        let mut sink = |_: &[u8]| -> Result<()> { panic!("nothing to write") };
        let mut writer = SnapshotWriter::new(0, &mut sink);
        assert!(writer.push(&TestOp::Delete(String::new())).is_err());
        assert!(writer.push_with(|_| Ok(())).is_err());
        assert_eq!(writer.finish().unwrap(), 0);
    }

    #[test]
    fn a_failing_sink_fails_the_snapshot() {
        let mut sink = |_: &[u8]| -> Result<()> { Err(Error::invalid("disk full")) };
        let mut writer = SnapshotWriter::new(0, &mut sink);
        writer.push(&TestOp::Put("k".into(), 1)).unwrap();
        assert!(writer.finish().is_err());
    }
}
