//! The per-partition recovery checkpoint: the point up to which the log is known
//! durable and valid, so recovery scans only what lies past it.
//!
//! The file `checkpoint` holds two 64-byte slots; each write goes to the slot the
//! previous one did not use, followed by fdatasync, so a torn write leaves the other
//! slot intact. The reader takes the valid slot with the highest sequence number.
//!
//! | offset | size | field            |
//! |-------:|-----:|------------------|
//! |      0 |    4 | magic `TLCP`     |
//! |      4 |    4 | version 1        |
//! |      8 |    8 | sequence         |
//! |     16 |    8 | segment base offset |
//! |     24 |    8 | position: bytes of that segment known durable |
//! |     32 |    8 | next offset at that position |
//! |     40 |   20 | reserved, zero   |
//! |     60 |    4 | CRC-32 of bytes `[0, 60)` |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::fs::{FileSystem, FsFile, OpenMode};
use crate::fsutil::{self, SyncFailure};

pub const FILE_NAME: &str = "checkpoint";
pub const SLOT_BYTES: usize = 64;
const MAGIC: [u8; 4] = *b"TLCP";
const VERSION: u32 = 1;

/// A durable point in a partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub sequence: u64,
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut slot = [0u8; SLOT_BYTES];
        slot[0..4].copy_from_slice(&MAGIC);
        slot[4..8].copy_from_slice(&VERSION.to_le_bytes());
        slot[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        slot[16..24].copy_from_slice(&self.segment_base.to_le_bytes());
        slot[24..32].copy_from_slice(&self.position.to_le_bytes());
        slot[32..40].copy_from_slice(&self.next_offset.to_le_bytes());
        let crc = crc32fast::hash(&slot[..60]);
        slot[60..64].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    /// Decodes one slot; `None` if it is not a valid checkpoint.
    pub fn decode(slot: &[u8]) -> Option<Checkpoint> {
        let slot: &[u8; SLOT_BYTES] = slot.get(..SLOT_BYTES)?.try_into().ok()?;
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(slot.get(at..at + 8)?.try_into().ok()?))
        };
        let crc = u32::from_le_bytes(slot[60..64].try_into().ok()?);
        let valid = slot[0..4] == MAGIC
            && slot[4..8] == VERSION.to_le_bytes()
            && crc32fast::hash(&slot[..60]) == crc;
        let checkpoint = Checkpoint {
            sequence: u64_at(8)?,
            segment_base: u64_at(16)?,
            position: u64_at(24)?,
            next_offset: u64_at(32)?,
        };
        (valid && checkpoint.next_offset >= checkpoint.segment_base).then_some(checkpoint)
    }

    /// The newest valid slot of a whole checkpoint file's bytes.
    pub fn decode_file(bytes: &[u8]) -> Option<Checkpoint> {
        bytes
            .chunks(SLOT_BYTES)
            .take(2)
            .filter_map(Checkpoint::decode)
            .max_by_key(|c| c.sequence)
    }
}

/// How many bytes of the segment starting at `base` (`log_bytes` long) a checkpoint
/// vouches for: whole segments before its segment, its position within its segment,
/// nothing after. Recovery trusts these bytes and scans the rest; `segment verify`
/// applies the same rule.
pub fn trusted_bytes(checkpoint: Option<&Checkpoint>, base: u64, log_bytes: u64) -> u64 {
    match checkpoint {
        Some(c) if base < c.segment_base => log_bytes,
        Some(c) if base == c.segment_base => c.position,
        _ => 0,
    }
}

/// Whether a segment starting at `base`, after one that ends at `expected`, is what a
/// crash leaves when the previous segment lost its unsynced tail while this newer
/// file kept its entry: it starts past that end and no checkpoint reached it. Nothing
/// from it on was acknowledged durable, so recovery drops it and every later segment.
pub fn is_unsynced_gap(checkpoint: Option<&Checkpoint>, expected: u64, base: u64) -> bool {
    base > expected && checkpoint.is_none_or(|c| c.segment_base < base)
}

/// Reads and writes one partition's checkpoint file.
#[derive(Debug)]
pub struct CheckpointFile {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    file: Option<Arc<dyn FsFile>>,
    last: Option<Checkpoint>,
}

impl CheckpointFile {
    /// Opens the file in `dir` through `fs`, reading the newest valid checkpoint if
    /// there is one.
    pub fn open(fs: Arc<dyn FileSystem>, dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        let last = match fs.read_file(&path, 2 * SLOT_BYTES as u64) {
            Ok(bytes) => Checkpoint::decode_file(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(crate::Error::io(format!("reading {}", path.display()), e)),
        };
        Ok(CheckpointFile {
            fs,
            path,
            file: None,
            last,
        })
    }

    pub fn last(&self) -> Option<Checkpoint> {
        self.last
    }

    /// Durably records that the log is valid up to `position` of segment
    /// `segment_base`, where the next offset is `next_offset`.
    pub fn write(&mut self, segment_base: u64, position: u64, next_offset: u64) -> Result<()> {
        self.try_write(segment_base, position, next_offset)
            .map_err(SyncFailure::into_error)
    }

    /// [`CheckpointFile::write`], saying whether an fsync failed or the checkpoint
    /// failed before any did (the file could not be opened or written: the previous
    /// checkpoint stands, in the other slot).
    pub(crate) fn try_write(
        &mut self,
        segment_base: u64,
        position: u64,
        next_offset: u64,
    ) -> Result<(), SyncFailure> {
        let sequence = self.last.map_or(1, |c| c.sequence + 1);
        let checkpoint = Checkpoint {
            sequence,
            segment_base,
            position,
            next_offset,
        };
        let file = match &self.file {
            Some(file) => file.clone(),
            None => {
                let existed = self
                    .fs
                    .try_exists(&self.path)
                    .ctx(|| format!("looking for {}", self.path.display()))
                    .map_err(SyncFailure::BeforeSync)?;
                let file = self
                    .fs
                    .open(&self.path, OpenMode::Create)
                    .ctx(|| format!("opening {}", self.path.display()))
                    .map_err(SyncFailure::BeforeSync)?;
                if !existed {
                    fsutil::try_sync_dir(&*self.fs, fsutil::parent_dir(&self.path))?;
                }
                self.file = Some(file.clone());
                file
            }
        };
        let slot = (sequence % 2) * SLOT_BYTES as u64;
        file.write_all_at(&checkpoint.encode(), slot)
            .ctx(|| format!("writing {}", self.path.display()))
            .map_err(SyncFailure::BeforeSync)?;
        file.sync_data()
            .ctx(|| format!("fsyncing {}", self.path.display()))
            .map_err(SyncFailure::Fsync)?;
        self.last = Some(checkpoint);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::OsFs;

    #[test]
    fn newest_valid_slot_wins_and_a_torn_slot_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = CheckpointFile::open(Arc::new(OsFs), dir.path()).unwrap();
        assert_eq!(file.last(), None);
        file.write(0, 100, 10).unwrap();
        file.write(0, 200, 20).unwrap();
        let reopened = CheckpointFile::open(Arc::new(OsFs), dir.path())
            .unwrap()
            .last()
            .unwrap();
        assert_eq!((reopened.position, reopened.next_offset), (200, 20));

        // Tear the newest slot: the previous checkpoint is used.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let newest = (reopened.sequence % 2) as usize * SLOT_BYTES;
        bytes[newest + 30] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let fallback = CheckpointFile::open(Arc::new(OsFs), dir.path())
            .unwrap()
            .last()
            .unwrap();
        assert_eq!((fallback.position, fallback.next_offset), (100, 10));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = Checkpoint::decode_file(&data);
        }
    }
}
