//! [`FaultyFs`]: a [`FileSystem`] for tests. It works on real files under one root
//! directory and simulates, seeded and reproducibly, what a power cut, a failing disk or
//! a full disk does to them.
//!
//! # What it tracks
//!
//! - Per file: its *durable image* (the contents as of its last successful `sync_data` or
//!   `sync_all`) and the writes and truncations made since, in order.
//! - Per directory: its durable listing (as of its last successful `sync_dir`) and the
//!   entries created, renamed or removed since, in order.
//!
//! Files and directories are known by inode, so a renamed file keeps its history and a
//! file removed from a directory whose removal was not synced comes back after a crash.
//! Whatever exists under the root when the `FaultyFs` is created counts as durable.
//!
//! # Faults
//!
//! - [`FaultyFs::crash`] rewrites the tree under the root to an image a power cut could
//!   leave ([`Unsynced::Lose`]: exactly the durable images and listings;
//!   [`Unsynced::KeepSome`]: also a seeded prefix of each file's unsynced writes, the
//!   first lost one possibly torn, and a prefix of each directory's unsynced changes).
//! - [`FaultyFs::power_off_after`]: after N more mutating operations every operation
//!   fails with EIO, as if the machine lost power there; then `crash` gives the image.
//!   Running a workload once and reading [`FaultyFs::ops`] gives the number of crash
//!   points to try.
//! - [`FaultyFs::fail_sync`]: the Nth matching fsync (of the chosen kinds, optionally
//!   only on paths containing a string) fails with EIO. As on Linux ("fsyncgate"), the
//!   writes it covered are then lost for good at the next crash, even if a later fsync
//!   of the same file succeeds.
//! - [`FaultyFs::set_capacity`] / [`FaultyFs::set_disk_full`]: writes that would grow
//!   the files under the root past a byte capacity are cut short where the space ends,
//!   then fail with ENOSPC; removing files frees space. Creating empty files, overwriting
//!   in place and shrinking always work. [`FaultyFs::set_full_for`] does the same for
//!   the files whose path contains a string, leaving the others room.
//! - [`FaultyFs::set_short_writes`]: one write in N writes only a seeded part of its
//!   bytes (and says so), as `pwrite` may.
//! - [`FaultyFs::set_open_fails`]: opening a file or directory whose path ends with a
//!   string fails with EMFILE, as when the process is out of file descriptors: opens,
//!   mappings, and the open before a directory fsync (which then runs no fsync).
//!
//! - [`FaultyFs::kill_process`]: the process dies but the machine stays up: what was
//!   written stays readable (and no more durable than it was), so a recovery that
//!   serves it must make it durable; a later `crash` shows whether it did.
//!
//! # Use
//!
//! ```
//! use std::sync::Arc;
//! use tidelog_storage::fs::{CrashOptions, FaultyFs, SyncFault, SyncKind};
//! use tidelog_storage::{NewRecord, Store, StoreOptions, TopicConfig};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let fs = FaultyFs::new(dir.path(), 42).unwrap();
//! let options = || StoreOptions {
//!     retention_interval: None,
//!     fs: Arc::new(fs.clone()),
//!     ..StoreOptions::default()
//! };
//! let store = Store::open(dir.path().join("data"), options()).unwrap();
//! let topic = store.create_topic("t", 1, TopicConfig::default()).unwrap();
//! let partition = topic.partition(0).unwrap().clone();
//! partition.append_durable(&[NewRecord::value("kept")]).unwrap();
//! partition.append(&[NewRecord::value("maybe lost")]).unwrap();
//!
//! // The next fdatasync of a segment fails: the partition is poisoned.
//! fs.fail_sync(SyncFault::nth(1).kinds(&[SyncKind::Data]).path_contains(".log"));
//! assert!(partition.append_durable(&[NewRecord::value("x")]).is_err());
//!
//! // Power cut: only what was synced (and dir-synced) is on disk afterwards.
//! drop((topic, partition));
//! store.simulate_crash();
//! fs.crash(CrashOptions::lose_unsynced()).unwrap();
//! let store = Store::open(dir.path().join("data"), options()).unwrap();
//! let partition = store.topic("t").unwrap().partition(0).unwrap().clone();
//! let read = partition.read(0, 10, u64::MAX).unwrap();
//! assert_eq!(read.records[0].value, "kept");
//! ```
//!
//! Mutating operations are: creating or truncating a file on open, `write_at`,
//! `set_len`, every sync, `create_dir`, `rename`, `remove_file`, `remove_dir_all`.
//! Reads, listings, metadata and mappings are not counted (they change nothing on disk)
//! but fail too once the power is off.
//!
//! # Limits of the model
//!
//! - Per file, unsynced writes reach the disk in the order they were made; files are
//!   independent of each other. A real disk may persist pages of one file out of order.
//! - A rename between two directories is an unlink in one and a link in the other; under
//!   [`Unsynced::KeepSome`] a crash may keep either half.
//! - No real fsync is ever issued: durability is what this type tracks, and the real
//!   files are the live (page-cache) view.
//! - Operations serialize on one lock; it is a test tool.
//! - The data-directory lock file works as on the real filesystem.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

pub use crate::rng::SeededRng;

use super::{
    DirEntry, FileSystem, FsFile, Metadata, OpenMode, SyncDirError, open_options, read_dir_std,
    read_file_std,
};

/// `EIO`, `EMFILE` and `ENOSPC` (the same numbers on Linux and the BSDs).
const EIO: i32 = 5;
const EMFILE: i32 = 24;
const ENOSPC: i32 = 28;

fn emfile() -> io::Error {
    io::Error::from_raw_os_error(EMFILE)
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(EIO)
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(ENOSPC)
}

/// The three ways to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// `FsFile::sync_data` (fdatasync).
    Data,
    /// `FsFile::sync_all` (fsync).
    All,
    /// `FileSystem::sync_dir`.
    Dir,
}

/// Which fsync [`FaultyFs::fail_sync`] fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFault {
    /// The matching sync that fails, counting from 1 from when the fault is armed.
    pub nth: u64,
    /// The kinds of sync that count.
    pub kinds: Vec<SyncKind>,
    /// Only syncs of paths containing this string count; `None`: every path.
    pub path_contains: Option<String>,
}

impl SyncFault {
    /// The `nth` sync of any kind on any path.
    pub fn nth(nth: u64) -> Self {
        SyncFault {
            nth,
            kinds: vec![SyncKind::Data, SyncKind::All, SyncKind::Dir],
            path_contains: None,
        }
    }

    /// Counts only these kinds.
    pub fn kinds(mut self, kinds: &[SyncKind]) -> Self {
        self.kinds = kinds.to_vec();
        self
    }

    /// Counts only syncs of paths that contain `part`.
    pub fn path_contains(mut self, part: impl Into<String>) -> Self {
        self.path_contains = Some(part.into());
        self
    }
}

/// What a crash does with what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsynced {
    /// All of it is lost: every file is its durable image, every directory its durable
    /// listing.
    Lose,
    /// Per file, a seeded prefix of the unsynced writes survives and the first lost one
    /// may be torn (a prefix of its bytes kept); per directory, a seeded prefix of the
    /// unsynced changes survives.
    KeepSome,
}

/// How [`FaultyFs::crash`] builds the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashOptions {
    /// Seeds every choice the crash makes.
    pub seed: u64,
    pub unsynced: Unsynced,
}

impl CrashOptions {
    /// Everything unsynced is lost.
    pub fn lose_unsynced() -> Self {
        CrashOptions {
            seed: 0,
            unsynced: Unsynced::Lose,
        }
    }

    /// Some unsynced writes survive, the last one possibly torn, chosen by `seed`.
    pub fn keep_some(seed: u64) -> Self {
        CrashOptions {
            seed,
            unsynced: Unsynced::KeepSome,
        }
    }
}

/// Counts of what the filesystem did, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Mutating operations completed.
    pub ops: u64,
    /// Syncs that succeeded.
    pub syncs: u64,
    pub failed_syncs: u64,
    pub short_writes: u64,
    /// Writes refused (or cut short) for lack of space.
    pub enospc: u64,
    pub crashes: u64,
}

/// A filesystem that simulates power cuts, fsync failures, a full disk and short writes
/// over real files under `root`. See the module docs. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct FaultyFs {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFs")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

type NodeId = u64;

/// A change to a file since its last sync.
#[derive(Debug)]
enum Change {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A change to a directory since its last sync.
#[derive(Debug)]
enum DirChange {
    Link(OsString, NodeId),
    Unlink(OsString),
    Rename(OsString, OsString),
}

#[derive(Debug)]
enum Node {
    File {
        durable: Vec<u8>,
        unsynced: Vec<Change>,
    },
    Dir {
        durable: BTreeMap<OsString, NodeId>,
        unsynced: Vec<DirChange>,
    },
}

#[derive(Debug)]
struct ArmedSyncFault {
    fault: SyncFault,
    seen: u64,
}

#[derive(Debug)]
struct State {
    /// Bumped by every crash; handles from an earlier epoch fail with EIO.
    epoch: u64,
    nodes: HashMap<NodeId, Node>,
    next_node: NodeId,
    /// Live files and directories by the real (device, inode).
    live: HashMap<(u64, u64), NodeId>,
    root_node: NodeId,
    rng: Rng,
    /// Mutating operations since creation or the last crash.
    ops: u64,
    power_off_at: Option<u64>,
    powered_off: bool,
    sync_fault: Option<ArmedSyncFault>,
    short_write_one_in: Option<u64>,
    capacity: Option<u64>,
    /// Files whose path contains this take no more bytes ([`FaultyFs::set_full_for`]).
    full_for: Option<String>,
    /// Bytes in the files known to this filesystem.
    used: u64,
    stats: FaultStats,
    /// File syncs wait while this is set ([`FaultyFs::hold_syncs`]).
    syncs_held: bool,
    /// Opening a path that ends with this fails with EMFILE ([`FaultyFs::set_open_fails`]).
    open_fails_for: Option<String>,
    /// Opens refused that way.
    open_failures: u64,
}

impl State {
    /// Starts tracking the tree under `root`, all of it taken as durable.
    fn boot(root: PathBuf, epoch: u64, rng: Rng, stats: FaultStats) -> io::Result<State> {
        let mut state = State {
            epoch,
            nodes: HashMap::new(),
            next_node: 0,
            live: HashMap::new(),
            root_node: 0,
            rng,
            ops: 0,
            power_off_at: None,
            powered_off: false,
            sync_fault: None,
            short_write_one_in: None,
            capacity: None,
            full_for: None,
            used: 0,
            stats,
            syncs_held: false,
            open_fails_for: None,
            open_failures: 0,
        };
        state.root_node = state.register(&root)?;
        Ok(state)
    }

    /// Fails with EMFILE if opening `path` must fail ([`FaultyFs::set_open_fails`]).
    fn check_open(&mut self, path: &Path) -> io::Result<()> {
        if self
            .open_fails_for
            .as_ref()
            .is_some_and(|end| path.to_string_lossy().ends_with(end.as_str()))
        {
            self.open_failures += 1;
            return Err(emfile());
        }
        Ok(())
    }

    fn alive(&self, epoch: u64) -> io::Result<()> {
        if self.powered_off || epoch != self.epoch {
            return Err(eio());
        }
        Ok(())
    }

    fn op_done(&mut self) {
        self.ops += 1;
        self.stats.ops += 1;
        if self.power_off_at.is_some_and(|at| self.ops >= at) {
            self.powered_off = true;
        }
    }

    fn new_node(&mut self, key: (u64, u64), node: Node) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        self.live.insert(key, id);
        self.nodes.insert(id, node);
        id
    }

    /// The node of the file or directory at `path`. One this filesystem has not seen
    /// (it existed before, or was made behind its back) is taken as durable as it is.
    fn register(&mut self, path: &Path) -> io::Result<NodeId> {
        let metadata = std::fs::symlink_metadata(path)?;
        let key = (metadata.dev(), metadata.ino());
        if let Some(&id) = self.live.get(&key) {
            return Ok(id);
        }
        if metadata.is_dir() {
            let id = self.new_node(
                key,
                Node::Dir {
                    durable: BTreeMap::new(),
                    unsynced: Vec::new(),
                },
            );
            let mut listing = BTreeMap::new();
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                listing.insert(entry.file_name(), self.register(&entry.path())?);
            }
            if let Some(Node::Dir { durable, .. }) = self.nodes.get_mut(&id) {
                *durable = listing;
            }
            Ok(id)
        } else {
            let data = std::fs::read(path)?;
            self.used += data.len() as u64;
            Ok(self.new_node(
                key,
                Node::File {
                    durable: data,
                    unsynced: Vec::new(),
                },
            ))
        }
    }

    fn dir_change(&mut self, dir: &Path, change: DirChange) -> io::Result<()> {
        let id = self.register(dir)?;
        match self.nodes.get_mut(&id) {
            Some(Node::Dir { unsynced, .. }) => {
                unsynced.push(change);
                Ok(())
            }
            _ => Err(io::Error::other(format!(
                "{} is not a directory known to FaultyFs",
                dir.display()
            ))),
        }
    }

    fn file_change(&mut self, id: NodeId, change: Change) {
        if let Some(Node::File { unsynced, .. }) = self.nodes.get_mut(&id) {
            unsynced.push(change);
        }
    }

    /// Counts a sync of `kind` on `path` against the armed fault; true if it must fail.
    fn sync_fails(&mut self, kind: SyncKind, path: &Path) -> bool {
        let Some(armed) = self.sync_fault.as_mut() else {
            return false;
        };
        let matches = armed.fault.kinds.contains(&kind)
            && armed
                .fault
                .path_contains
                .as_ref()
                .is_none_or(|part| path.to_string_lossy().contains(part.as_str()));
        if !matches {
            return false;
        }
        armed.seen += 1;
        if armed.seen < armed.fault.nth {
            return false;
        }
        self.sync_fault = None;
        self.stats.failed_syncs += 1;
        true
    }

    /// A successful sync of a file: its unsynced changes become durable.
    fn sync_file(&mut self, id: NodeId) {
        if let Some(Node::File { durable, unsynced }) = self.nodes.get_mut(&id) {
            for change in unsynced.drain(..) {
                apply(durable, &change);
            }
        }
        self.stats.syncs += 1;
        self.op_done();
    }

    /// A failed sync of a file: what it covered is lost (the kernel marked the pages
    /// clean without writing them).
    fn lose_unsynced(&mut self, id: NodeId) {
        if let Some(Node::File { unsynced, .. }) = self.nodes.get_mut(&id) {
            unsynced.clear();
        }
    }

    /// Bytes that may still be added to the file at `path` before the capacity is
    /// reached.
    fn room(&self, path: &Path) -> Option<u64> {
        if self
            .full_for
            .as_ref()
            .is_some_and(|part| path.to_string_lossy().contains(part.as_str()))
        {
            return Some(0);
        }
        self.capacity
            .map(|capacity| capacity.saturating_sub(self.used))
    }
}

fn apply(image: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        Change::SetLen(len) => image.resize(*len as usize, 0),
    }
}

fn split(path: &Path) -> io::Result<(&Path, OsString)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name.to_os_string())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no parent directory", path.display()),
        )),
    }
}

/// (device, inode) keys and total file bytes of everything under `path`.
fn walk(path: &Path, keys: &mut Vec<(u64, u64)>, bytes: &mut u64) -> io::Result<()> {
    let metadata = std::fs::symlink_metadata(path)?;
    keys.push((metadata.dev(), metadata.ino()));
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            walk(&entry?.path(), keys, bytes)?;
        }
    } else {
        *bytes += metadata.len();
    }
    Ok(())
}

/// Builds the crash image of a file.
fn file_image(durable: &[u8], unsynced: &[Change], mode: Unsynced, rng: &mut Rng) -> Vec<u8> {
    let mut image = durable.to_vec();
    if mode == Unsynced::Lose || unsynced.is_empty() {
        return image;
    }
    let kept = rng.below(unsynced.len() as u64 + 1) as usize;
    for change in &unsynced[..kept] {
        apply(&mut image, change);
    }
    if let Some(Change::Write { offset, data }) = unsynced.get(kept) {
        // Half the time the first lost write is lost whole, else a prefix survives.
        let torn = match rng.below(2) {
            0 => 0,
            _ => rng.below(data.len() as u64 + 1) as usize,
        };
        if torn > 0 {
            apply(
                &mut image,
                &Change::Write {
                    offset: *offset,
                    data: data[..torn].to_vec(),
                },
            );
        }
    }
    image
}

/// One entry of the tree a crash leaves: a directory (`None`) or a file's bytes.
type Planned = (PathBuf, Option<Vec<u8>>);

/// Works out the tree a crash leaves.
struct Planner<'a> {
    state: &'a State,
    mode: Unsynced,
    rng: Rng,
    /// Each file's image, made once even if it has two names.
    images: HashMap<NodeId, Vec<u8>>,
    /// Directories on the current path (a guard against cycles).
    visiting: HashSet<NodeId>,
    /// What to create, parents first.
    plan: Vec<Planned>,
}

impl Planner<'_> {
    /// Adds what the directory `id` (at `relative` under the root) holds after a crash.
    fn dir(&mut self, id: NodeId, relative: &Path) {
        let Some(Node::Dir { durable, unsynced }) = self.state.nodes.get(&id) else {
            return;
        };
        if !self.visiting.insert(id) {
            return;
        }
        let mut listing = durable.clone();
        if self.mode == Unsynced::KeepSome && !unsynced.is_empty() {
            let kept = self.rng.below(unsynced.len() as u64 + 1) as usize;
            for change in &unsynced[..kept] {
                match change {
                    DirChange::Link(name, node) => {
                        listing.insert(name.clone(), *node);
                    }
                    DirChange::Unlink(name) => {
                        listing.remove(name);
                    }
                    DirChange::Rename(from, to) => {
                        if let Some(node) = listing.remove(from) {
                            listing.insert(to.clone(), node);
                        }
                    }
                }
            }
        }
        for (name, child) in listing {
            let path = relative.join(&name);
            match self.state.nodes.get(&child) {
                Some(Node::Dir { .. }) => {
                    self.plan.push((path.clone(), None));
                    self.dir(child, &path);
                }
                Some(Node::File { durable, unsynced }) => {
                    let (mode, rng) = (self.mode, &mut self.rng);
                    let image = self
                        .images
                        .entry(child)
                        .or_insert_with(|| file_image(durable, unsynced, mode, rng))
                        .clone();
                    self.plan.push((path, Some(image)));
                }
                None => {}
            }
        }
        self.visiting.remove(&id);
    }
}

impl FaultyFs {
    /// Tracks the tree under `root` (which must exist), taking what is there now as
    /// durable. `seed` drives short writes.
    pub fn new(root: impl Into<PathBuf>, seed: u64) -> io::Result<FaultyFs> {
        let root = root.into();
        let state = State::boot(root.clone(), 0, Rng::new(seed), FaultStats::default())?;
        Ok(FaultyFs {
            root,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The directory this filesystem tracks.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mutating operations completed since creation or the last crash.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Counters since creation.
    pub fn stats(&self) -> FaultStats {
        self.lock().stats
    }

    /// Cuts the power after `ops` more mutating operations complete (0: now). From then
    /// on every operation fails with EIO until [`FaultyFs::crash`].
    pub fn power_off_after(&self, ops: u64) {
        let mut state = self.lock();
        state.power_off_at = Some(state.ops + ops);
        if ops == 0 {
            state.powered_off = true;
        }
    }

    /// Whether the power is off.
    pub fn is_powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Arms one sync failure (replacing any armed before).
    pub fn fail_sync(&self, fault: SyncFault) {
        self.lock().sync_fault = Some(ArmedSyncFault { fault, seen: 0 });
    }

    /// Holds every file sync (fsync, fdatasync) until called again with `false`: a
    /// disk slow to sync, so written data stays not durable for as long as a test
    /// needs. The other operations go on.
    pub fn hold_syncs(&self, held: bool) {
        self.lock().syncs_held = held;
    }

    /// Opening a file or directory whose path ends with `end` fails with EMFILE ("Too
    /// many open files"), as when the process has used up its file descriptors: opens,
    /// mappings and the open a directory fsync starts with, which then fsyncs nothing
    /// (`None` lifts it; `Some("")` fails every open).
    pub fn set_open_fails(&self, end: Option<&str>) {
        self.lock().open_fails_for = end.map(str::to_string);
    }

    /// Opens refused by [`FaultyFs::set_open_fails`] since creation.
    pub fn open_failures(&self) -> u64 {
        self.lock().open_failures
    }

    /// One write in `one_in` is short (`None`: none are).
    pub fn set_short_writes(&self, one_in: Option<u64>) {
        self.lock().short_write_one_in = one_in.map(|n| n.max(1));
    }

    /// Limits the bytes the files under the root may hold (`None`: no limit).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Fills the disk (no write may add a byte) or lifts the limit.
    pub fn set_disk_full(&self, full: bool) {
        let mut state = self.lock();
        state.capacity = full.then_some(state.used);
    }

    /// Writes that would grow a file whose path contains `part` fail with ENOSPC, as on
    /// a full disk, while other files take bytes as before (`None` lifts it): the disk
    /// filling between one file's write and another's.
    pub fn set_full_for(&self, part: Option<&str>) {
        self.lock().full_for = part.map(str::to_string);
    }

    /// Bytes the files under the root hold now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    /// Ends the process that used this filesystem while the machine stays up (`kill -9`):
    /// everything written stays, synced or not, and is still only as durable as before;
    /// files opened before fail with EIO; the power comes back on if it was off and no
    /// fault stays armed. A later [`FaultyFs::crash`] shows what of it a power cut loses.
    pub fn kill_process(&self) {
        let mut state = self.lock();
        state.epoch += 1;
        state.powered_off = false;
        state.power_off_at = None;
        state.sync_fault = None;
        state.short_write_one_in = None;
        state.capacity = None;
        state.open_fails_for = None;
        state.ops = 0;
    }

    /// Rewrites the tree under the root to what a power cut at this moment could leave
    /// (see [`Unsynced`]), then starts over: everything on disk is durable, the power is
    /// on, no fault is armed, and files opened before fail with EIO.
    ///
    /// Every file is replaced by a new one, never rewritten in place, so mappings of the
    /// old files stay valid. Stop the engine first ([`crate::Store::simulate_crash`]).
    pub fn crash(&self, options: CrashOptions) -> io::Result<()> {
        let mut state = self.lock();
        let mut planner = Planner {
            state: &state,
            mode: options.unsynced,
            rng: Rng::new(options.seed),
            images: HashMap::new(),
            visiting: HashSet::new(),
            plan: Vec::new(),
        };
        planner.dir(state.root_node, Path::new(""));
        let plan = planner.plan;
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        for (relative, image) in plan {
            let path = self.root.join(relative);
            match image {
                None => std::fs::create_dir(&path)?,
                Some(bytes) => std::fs::write(&path, bytes)?,
            }
        }
        let mut stats = state.stats;
        stats.crashes += 1;
        let rng = state.rng.clone();
        *state = State::boot(self.root.clone(), state.epoch + 1, rng, stats)?;
        Ok(())
    }

    fn create_dir_locked(&self, state: &mut State, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)?;
        let id = state.register(path)?;
        let (parent, name) = split(path)?;
        state.dir_change(parent, DirChange::Link(name, id))?;
        state.op_done();
        Ok(())
    }
}

impl FileSystem for FaultyFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        let mut state = self.lock();
        let epoch = state.epoch;
        state.alive(epoch)?;
        state.check_open(path)?;
        let existing = match std::fs::symlink_metadata(path) {
            Ok(metadata) => Some((state.register(path)?, metadata.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let file = open_options(mode).open(path)?;
        let node = match existing {
            Some((id, old_len)) => {
                if mode == OpenMode::Truncate && old_len > 0 {
                    state.used = state.used.saturating_sub(old_len);
                    state.file_change(id, Change::SetLen(0));
                    state.op_done();
                }
                id
            }
            None => {
                let metadata = file.metadata()?;
                let id = state.new_node(
                    (metadata.dev(), metadata.ino()),
                    Node::File {
                        durable: Vec::new(),
                        unsynced: Vec::new(),
                    },
                );
                let (parent, name) = split(path)?;
                state.dir_change(parent, DirChange::Link(name, id))?;
                state.op_done();
                id
            }
        };
        Ok(Arc::new(FaultyFile {
            file,
            node,
            epoch,
            path: path.to_path_buf(),
            state: self.state.clone(),
        }))
    }

    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let state = self.lock();
        state.alive(state.epoch)?;
        read_file_std(path, limit)
    }

    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        let state = self.lock();
        state.alive(state.epoch)?;
        let metadata = std::fs::metadata(path)?;
        Ok(Metadata {
            len: metadata.len(),
            is_dir: metadata.is_dir(),
        })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let state = self.lock();
        state.alive(state.epoch)?;
        read_dir_std(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.alive(state.epoch)?;
        self.create_dir_locked(&mut state, path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.alive(state.epoch)?;
        let mut missing = Vec::new();
        let mut current = path;
        while !current.as_os_str().is_empty() && !current.try_exists()? {
            missing.push(current);
            match current.parent() {
                Some(parent) => current = parent,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            state.alive(state.epoch)?;
            self.create_dir_locked(&mut state, dir)?;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.alive(state.epoch)?;
        let id = state.register(from)?;
        let replaced = match std::fs::symlink_metadata(to) {
            Ok(metadata) => Some(metadata),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        std::fs::rename(from, to)?;
        if let Some(metadata) = replaced {
            state.live.remove(&(metadata.dev(), metadata.ino()));
            if !metadata.is_dir() {
                state.used = state.used.saturating_sub(metadata.len());
            }
        }
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        if from_dir == to_dir {
            state.dir_change(from_dir, DirChange::Rename(from_name, to_name))?;
        } else {
            state.dir_change(from_dir, DirChange::Unlink(from_name))?;
            state.dir_change(to_dir, DirChange::Link(to_name, id))?;
        }
        state.op_done();
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.alive(state.epoch)?;
        let metadata = std::fs::symlink_metadata(path)?;
        state.register(path)?;
        std::fs::remove_file(path)?;
        state.live.remove(&(metadata.dev(), metadata.ino()));
        state.used = state.used.saturating_sub(metadata.len());
        let (parent, name) = split(path)?;
        state.dir_change(parent, DirChange::Unlink(name))?;
        state.op_done();
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.alive(state.epoch)?;
        state.register(path)?;
        let mut keys = Vec::new();
        let mut bytes = 0;
        walk(path, &mut keys, &mut bytes)?;
        std::fs::remove_dir_all(path)?;
        for key in keys {
            state.live.remove(&key);
        }
        state.used = state.used.saturating_sub(bytes);
        let (parent, name) = split(path)?;
        state.dir_change(parent, DirChange::Unlink(name))?;
        state.op_done();
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> Result<(), SyncDirError> {
        let mut state = self.lock();
        state.alive(state.epoch).map_err(SyncDirError::Open)?;
        state.check_open(path).map_err(SyncDirError::Open)?;
        if state.sync_fails(SyncKind::Dir, path) {
            return Err(SyncDirError::Sync(eio()));
        }
        let listing = (|| -> io::Result<_> {
            let id = state.register(path)?;
            let mut listing = BTreeMap::new();
            for entry in std::fs::read_dir(path)? {
                let entry = entry?;
                listing.insert(entry.file_name(), state.register(&entry.path())?);
            }
            Ok((id, listing))
        })();
        let (id, listing) = listing.map_err(SyncDirError::Open)?;
        match state.nodes.get_mut(&id) {
            Some(Node::Dir { durable, unsynced }) => {
                *durable = listing;
                unsynced.clear();
            }
            _ => {
                return Err(SyncDirError::Open(io::Error::other(format!(
                    "{} is not a directory",
                    path.display()
                ))));
            }
        }
        state.stats.syncs += 1;
        state.op_done();
        Ok(())
    }

    fn map(&self, path: &Path, len: usize) -> io::Result<Bytes> {
        let mut state = self.lock();
        state.alive(state.epoch)?;
        state.check_open(path)?;
        crate::mmap::map_read_only(path, len)
    }
}

/// An open file of a [`FaultyFs`].
struct FaultyFile {
    file: File,
    node: NodeId,
    epoch: u64,
    /// The path it was opened by (for sync-fault filters).
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyFile")
            .field("path", &self.path)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl FaultyFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.alive(self.epoch)?;
        Ok(state)
    }

    fn sync(&self, kind: SyncKind) -> io::Result<()> {
        let mut state = self.lock()?;
        while state.syncs_held {
            drop(state);
            std::thread::sleep(std::time::Duration::from_millis(1));
            state = self.lock()?;
        }
        if state.sync_fails(kind, &self.path) {
            state.lose_unsynced(self.node);
            return Err(eio());
        }
        state.sync_file(self.node);
        Ok(())
    }
}

impl FsFile for FaultyFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut state = self.lock()?;
        let len = self.file.metadata()?.len();
        let mut count = buf.len();
        if let Some(room) = state.room(&self.path) {
            let fits = (len + room).saturating_sub(offset).min(count as u64) as usize;
            if fits < count {
                state.stats.enospc += 1;
                if fits == 0 {
                    return Err(enospc());
                }
                count = fits;
            }
        }
        if let Some(one_in) = state.short_write_one_in
            && count > 1
            && state.rng.below(one_in) == 0
        {
            count = 1 + state.rng.below(count as u64 - 1) as usize;
            state.stats.short_writes += 1;
        }
        let data = &buf[..count];
        let written = self.file.write_at(data, offset)?;
        let end = offset + written as u64;
        if end > len {
            state.used += end - len;
        }
        state.file_change(
            self.node,
            Change::Write {
                offset,
                data: data[..written].to_vec(),
            },
        );
        state.op_done();
        Ok(written)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let _state = self.lock()?;
        self.file.read_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync(SyncKind::Data)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync(SyncKind::All)
    }

    fn set_len(&self, new_len: u64) -> io::Result<()> {
        let mut state = self.lock()?;
        let len = self.file.metadata()?.len();
        if new_len > len
            && state
                .room(&self.path)
                .is_some_and(|room| new_len - len > room)
        {
            state.stats.enospc += 1;
            return Err(enospc());
        }
        self.file.set_len(new_len)?;
        state.used = (state.used + new_len).saturating_sub(len);
        state.file_change(self.node, Change::SetLen(new_len));
        state.op_done();
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let _state = self.lock()?;
        Ok(self.file.metadata()?.len())
    }

    fn try_lock(&self) -> io::Result<bool> {
        let _state = self.lock()?;
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// The generator's name inside this module.
type Rng = SeededRng;

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, FaultyFs) {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), 7).unwrap();
        (dir, fs)
    }

    #[test]
    fn a_crash_keeps_only_synced_data_and_synced_entries() {
        let (dir, fs) = setup();
        let root = dir.path();
        let a = fs.open(&root.join("a"), OpenMode::CreateNew).unwrap();
        a.write_all_at(b"durable", 0).unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(root).unwrap();
        a.write_all_at(b"-lost", 7).unwrap();
        let b = fs.open(&root.join("b"), OpenMode::CreateNew).unwrap();
        b.write_all_at(b"synced but not linked", 0).unwrap();
        b.sync_all().unwrap();
        fs.create_dir(&root.join("d")).unwrap();
        fs.crash(CrashOptions::lose_unsynced()).unwrap();
        assert_eq!(std::fs::read(root.join("a")).unwrap(), b"durable");
        assert!(!root.join("b").exists());
        assert!(!root.join("d").exists());
        // Old handles are dead.
        assert!(a.write_at(b"x", 0).is_err());
    }

    #[test]
    fn unsynced_removes_and_renames_are_undone() {
        let (dir, fs) = setup();
        let root = dir.path();
        for name in ["x", "y"] {
            let file = fs.open(&root.join(name), OpenMode::CreateNew).unwrap();
            file.write_all_at(name.as_bytes(), 0).unwrap();
            file.sync_all().unwrap();
        }
        fs.sync_dir(root).unwrap();
        fs.remove_file(&root.join("x")).unwrap();
        fs.rename(&root.join("y"), &root.join("z")).unwrap();
        fs.crash(CrashOptions::lose_unsynced()).unwrap();
        assert_eq!(std::fs::read(root.join("x")).unwrap(), b"x");
        assert_eq!(std::fs::read(root.join("y")).unwrap(), b"y");
        assert!(!root.join("z").exists());

        // Synced this time.
        fs.rename(&root.join("y"), &root.join("z")).unwrap();
        fs.sync_dir(root).unwrap();
        fs.crash(CrashOptions::lose_unsynced()).unwrap();
        assert!(!root.join("y").exists());
        assert_eq!(std::fs::read(root.join("z")).unwrap(), b"y");
    }

    #[test]
    fn keep_some_keeps_a_prefix_of_unsynced_writes_possibly_torn() {
        let mut seen = HashSet::new();
        for seed in 0..64 {
            let (dir, fs) = setup();
            let root = dir.path();
            let file = fs.open(&root.join("f"), OpenMode::CreateNew).unwrap();
            file.write_all_at(b"0123", 0).unwrap();
            file.sync_data().unwrap();
            fs.sync_dir(root).unwrap();
            file.write_all_at(b"4567", 4).unwrap();
            file.write_all_at(b"89", 8).unwrap();
            fs.crash(CrashOptions::keep_some(seed)).unwrap();
            let image = std::fs::read(root.join("f")).unwrap();
            assert!(b"0123456789".starts_with(&image), "{image:?}");
            assert!(image.len() >= 4);
            seen.insert(image.len());
        }
        assert!(seen.len() > 4, "too little variety: {seen:?}");
    }

    #[test]
    fn the_nth_sync_fails_and_loses_what_it_covered() {
        let (dir, fs) = setup();
        let root = dir.path();
        let file = fs.open(&root.join("f"), OpenMode::CreateNew).unwrap();
        fs.sync_dir(root).unwrap();
        fs.fail_sync(SyncFault::nth(2).kinds(&[SyncKind::Data]));
        file.write_all_at(b"one", 0).unwrap();
        file.sync_data().unwrap();
        file.write_all_at(b"two", 3).unwrap();
        assert_eq!(file.sync_data().unwrap_err().raw_os_error(), Some(EIO));
        file.write_all_at(b"three", 6).unwrap();
        file.sync_data().unwrap();
        assert_eq!(fs.stats().failed_syncs, 1);
        fs.crash(CrashOptions::lose_unsynced()).unwrap();
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"one\0\0\0three");
    }

    #[test]
    fn a_full_disk_cuts_writes_short_then_refuses_and_frees_space_on_remove() {
        let (dir, fs) = setup();
        let root = dir.path();
        let big = fs.open(&root.join("big"), OpenMode::CreateNew).unwrap();
        big.write_all_at(&[1; 100], 0).unwrap();
        fs.set_capacity(Some(150));
        let file = fs.open(&root.join("f"), OpenMode::CreateNew).unwrap();
        assert_eq!(file.write_at(&[2; 80], 0).unwrap(), 50);
        assert_eq!(
            file.write_at(&[2; 1], 50).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        // Overwriting in place needs no space.
        assert_eq!(file.write_at(&[3; 10], 0).unwrap(), 10);
        fs.remove_file(&root.join("big")).unwrap();
        file.write_all_at(&[4; 60], 50).unwrap();
        assert_eq!(fs.used_bytes(), 110);
        fs.set_disk_full(true);
        assert!(file.write_at(&[5], 110).is_err());
        fs.set_disk_full(false);
        file.write_all_at(&[5], 110).unwrap();
    }

    #[test]
    fn power_off_fails_everything_after_the_chosen_operation() {
        let (dir, fs) = setup();
        let root = dir.path();
        fs.power_off_after(2);
        let file = fs.open(&root.join("f"), OpenMode::CreateNew).unwrap();
        file.write_all_at(b"abc", 0).unwrap();
        assert!(fs.is_powered_off());
        assert!(file.sync_data().is_err());
        assert!(fs.sync_dir(root).is_err());
        assert!(fs.metadata(root).is_err());
        fs.crash(CrashOptions::lose_unsynced()).unwrap();
        assert!(!root.join("f").exists());
        assert!(!fs.is_powered_off());
        assert_eq!(fs.ops(), 0);
    }

    #[test]
    fn short_writes_are_short_but_write_all_completes() {
        let (dir, fs) = setup();
        let root = dir.path();
        fs.set_short_writes(Some(1));
        let file = fs.open(&root.join("f"), OpenMode::CreateNew).unwrap();
        let data: Vec<u8> = (0..200u8).collect();
        file.write_all_at(&data, 0).unwrap();
        assert!(fs.stats().short_writes > 0);
        assert_eq!(std::fs::read(root.join("f")).unwrap(), data);
    }
}
