//! The one room with `unsafe` in it: mapping segment files read-only.
//!
//! Invariants that make the mappings sound (see memmap2's contract on `Mmap::map`):
//! - A mapped file is never truncated or rewritten in place while the process runs.
//!   Recovery truncates a torn tail before any mapping of that file exists; the
//!   only later shrink is rolling back a failed append, which removes bytes past the
//!   visible end that no reader slices (readers slice a mapping to the visible end
//!   before parsing it). Offline repair runs with the broker stopped.
//! - Retention deletes by unlinking: a mapping keeps the inode alive, so readers that
//!   hold a `Bytes` of it finish safely.
//! - `FaultyFs::crash` (tests) replaces every file with a new one instead of rewriting
//!   it in place, so mappings of the old files stay valid.
//! - The mapping may be longer than the file (an active segment grows into it), but
//!   no byte past the partition's visible end, which is never past the file's end, is
//!   read.
//! - An id index (`.idindex`) is mapped at the length its metadata gives just before,
//!   under its segment's id lock, which every writer of that file in the process also
//!   holds; writers replace it by renaming a new file over it (a new inode), so a
//!   mapping never outlives its file's length.

use std::fs::File;
use std::io;
use std::path::Path;

use bytes::Bytes;

/// Maps `len` bytes of the file at `path` read-only and returns them as `Bytes` that
/// keep the mapping alive for as long as any slice of them lives.
/// Callers add the context (which file, what for) to the error.
pub(crate) fn map_read_only(path: &Path, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let file = File::open(path)?;
    // SAFETY: the file is opened read-only and, per the module invariants, never
    // truncated or modified in place below the visible end while mapped; bytes are
    // only appended past it. Readers never access the mapping beyond the visible end,
    // so no access touches a page past the end of the file (which would raise SIGBUS).
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }?;
    Ok(Bytes::from_owner(map))
}
