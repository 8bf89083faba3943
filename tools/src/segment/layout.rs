//! Finding the partitions of a data directory and checking that no broker has it
//! open.
//!
//! ```text
//! DATA/LOCK                       held (flock) by a running tidelogd
//! DATA/topics/<topic>/<p>/        segments (.log .index .timeindex) and checkpoint
//! DATA/offsets/offsets.log        committed offsets of consumer groups
//! DATA/state/queues/queues.statelog   the work queues' state
//! DATA/state/history/<queue>/<ms>.history   a queue's delivery history
//! DATA/trash/                     topics being deleted (skipped)
//! ```

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use tidelog_storage::segment::{LOG_SUFFIX, parse_segment_name};

use crate::error::{CliError, CliResult};

/// How deep under the given directory partitions are looked for (DATA/topics/t/p).
const SEARCH_DEPTH_MAX: usize = 4;
const LOCK_FILE: &str = "LOCK";
const OFFSETS_LOG: &str = "offsets.log";
const QUEUES_LOG: &str = "queues.statelog";
const ACCESS_LOG: &str = "access.statelog";
/// The files of a topic directory besides its partitions: a directory holding one is a
/// topic's, whose files the broker's open checks.
const TOPIC_FILES: [&str; 3] = [
    tidelog_storage::store::TOPIC_CONFIG_FILE,
    tidelog_storage::store::TOPIC_OWNER_FILE,
    tidelog_storage::store::TOPIC_ID_FILE,
];
/// The directory topics live in (`DATA/topics`).
const TOPICS_DIR: &str = "topics";
/// Directories never searched: topics being deleted.
const SKIPPED_DIRS: [&str; 1] = ["trash"];

/// What lives under a directory.
#[derive(Debug, Default)]
pub struct Layout {
    /// Directories holding segments or a checkpoint, sorted.
    pub partitions: Vec<PathBuf>,
    /// State logs (consumer offsets, queue state, delivery history, access state),
    /// sorted by path.
    pub state_logs: Vec<StateLogFile>,
    /// Topic directories (holding `topic.config` and the like, or the partitions found
    /// in `DATA/topics/<topic>/`), sorted.
    pub topics: Vec<PathBuf>,
}

/// Which state a state log holds: each is the same CRC-framed record log
/// (storage/FORMAT.md, "State logs") with its own operations, and the broker treats
/// damage in each differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateLogKind {
    /// `offsets/offsets.log`: committed offsets of consumer groups.
    Offsets,
    /// `state/queues/queues.statelog`: every work queue's config, positions and
    /// unacked messages.
    Queues,
    /// `state/history/<queue>/<ms>.history`: a queue's delivery attempts.
    History,
    /// `state/access/access.statelog`: tokens, ACL rules and quotas (with `--auth`).
    Access,
}

impl StateLogKind {
    fn of_file_name(name: &str) -> Option<Self> {
        match name {
            OFFSETS_LOG => Some(Self::Offsets),
            QUEUES_LOG => Some(Self::Queues),
            ACCESS_LOG => Some(Self::Access),
            _ if name.ends_with(tidelog_storage::queue::history::files::HISTORY_FILE_SUFFIX) => {
                Some(Self::History)
            }
            _ => None,
        }
    }

    /// What an operator calls it, for example in "1 offsets log".
    pub fn noun(self) -> &'static str {
        match self {
            Self::Offsets => "offsets log",
            Self::Queues => "queue state log",
            Self::History => "delivery history file",
            Self::Access => "access state log",
        }
    }

    /// Its `kind` in JSON output.
    pub fn key(self) -> &'static str {
        match self {
            Self::Offsets => "offsets",
            Self::Queues => "queues",
            Self::History => "history",
            Self::Access => "access",
        }
    }

    /// What a cut of this kind of state log loses: the state recorded after the cut.
    pub fn lost_by_a_cut(self) -> &'static str {
        match self {
            Self::Offsets => "commits recorded after it are lost",
            Self::Queues => {
                "queue changes recorded after it are lost, so messages acked after it may be \
                 delivered again"
            }
            Self::History => "the delivery history after it is lost",
            Self::Access => {
                "tokens, rules and quotas recorded after it are lost (a token revoked or a rule \
                 removed after it is back)"
            }
        }
    }
}

/// One state log file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLogFile {
    pub path: PathBuf,
    pub kind: StateLogKind,
}

impl Layout {
    /// Whether nothing tidelog wrote was found.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty() && self.state_logs.is_empty() && self.topics.is_empty()
    }
}

/// Bases of the segment logs in a partition directory, sorted.
pub fn segment_bases(dir: &Path) -> CliResult<Vec<u64>> {
    let mut bases = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| CliError::io(format!("listing {}", dir.display()), &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CliError::io(format!("listing {}", dir.display()), &e))?;
        if let Some(base) = parse_segment_name(&entry.file_name().to_string_lossy(), LOG_SUFFIX) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn is_partition_dir(dir: &Path) -> bool {
    dir.join(tidelog_storage::checkpoint::FILE_NAME).is_file()
        || segment_bases(dir).is_ok_and(|bases| !bases.is_empty())
}

/// Finds the partitions and state logs in `dir` (a data, topic or partition
/// directory).
pub fn discover(dir: &Path) -> CliResult<Layout> {
    let metadata =
        fs::metadata(dir).map_err(|e| CliError::io(format!("opening {}", dir.display()), &e))?;
    if !metadata.is_dir() {
        return Err(CliError::usage(
            format!("{} is not a directory", dir.display()),
            "give a data directory, or a topic or partition directory in it \
             (`tidelog segment dump` reads single files)",
        ));
    }
    let mut layout = Layout::default();
    walk(dir, 0, &mut layout)?;
    // The topic of each partition, given or found (`DATA/topics/<topic>/<p>`), even
    // when it lacks its files.
    for partition in &layout.partitions {
        if let Some(topic) = partition.parent().filter(|t| {
            t.parent()
                .and_then(Path::file_name)
                .is_some_and(|name| name == TOPICS_DIR)
        }) {
            layout.topics.push(topic.to_path_buf());
        }
    }
    layout.topics.sort_by_cached_key(|p| natural_key(p));
    layout.topics.dedup();
    layout.partitions.sort_by_cached_key(|p| natural_key(p));
    layout
        .state_logs
        .sort_by_cached_key(|f| natural_key(&f.path));
    Ok(layout)
}

/// One path component for sorting: a number (a partition) sorts by value, before
/// any name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Component {
    Number(u64),
    Name(std::ffi::OsString),
}

/// Sorts paths in natural order: topics/big/2 before topics/big/10.
fn natural_key(path: &Path) -> Vec<Component> {
    path.components()
        .map(|c| {
            let part = c.as_os_str();
            match part.to_str().and_then(|s| s.parse::<u64>().ok()) {
                Some(n) => Component::Number(n),
                None => Component::Name(part.to_os_string()),
            }
        })
        .collect()
}

fn walk(dir: &Path, depth: usize, layout: &mut Layout) -> CliResult<()> {
    if TOPIC_FILES.iter().any(|file| dir.join(file).is_file()) {
        layout.topics.push(dir.to_path_buf());
    }
    if is_partition_dir(dir) {
        layout.partitions.push(dir.to_path_buf());
        return Ok(());
    }
    if depth >= SEARCH_DEPTH_MAX {
        return Ok(());
    }
    let entries =
        fs::read_dir(dir).map_err(|e| CliError::io(format!("listing {}", dir.display()), &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CliError::io(format!("listing {}", dir.display()), &e))?;
        let name = entry.file_name();
        if SKIPPED_DIRS.iter().any(|s| name == *s) {
            continue;
        }
        let file_type = entry.file_type().ok();
        if file_type.is_some_and(|t| t.is_dir()) {
            walk(&entry.path(), depth + 1, layout)?;
        } else if file_type.is_some_and(|t| t.is_file())
            && let Some(kind) = name.to_str().and_then(StateLogKind::of_file_name)
        {
            layout.state_logs.push(StateLogFile {
                path: entry.path(),
                kind,
            });
        }
    }
    Ok(())
}

/// The data directory holding `dir` (the nearest ancestor with a LOCK file).
pub fn data_root(dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    dir.ancestors()
        .take(SEARCH_DEPTH_MAX + 1)
        .find(|d| d.join(LOCK_FILE).is_file())
        .map(Path::to_path_buf)
}

/// Whether a running tidelogd holds the data directory's lock. The lock is taken
/// and released at once when it is free.
pub fn broker_holds_lock(root: &Path) -> bool {
    let Ok(file) = File::options()
        .read(true)
        .write(true)
        .open(root.join(LOCK_FILE))
    else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(fs::TryLockError::WouldBlock) => true,
        Err(fs::TryLockError::Error(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_sort_in_natural_order() {
        let mut paths: Vec<PathBuf> = [
            "d/topics/big/10",
            "d/topics/big/2",
            "d/topics/a/1",
            "d/topics/big/1",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        paths.sort_by_cached_key(|p| natural_key(p));
        let sorted: Vec<PathBuf> = [
            "d/topics/a/1",
            "d/topics/big/1",
            "d/topics/big/2",
            "d/topics/big/10",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, sorted);
    }

    #[test]
    fn partitions_and_state_logs_are_found_and_trash_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in [
            "topics/a/0",
            "topics/a/1",
            "topics/b/0",
            "trash/c/0",
            "offsets",
            "state/queues",
            "state/history/jobs",
            "state/history/mail",
        ] {
            fs::create_dir_all(root.join(p)).unwrap();
        }
        for p in ["topics/a/0", "topics/a/1", "topics/b/0", "trash/c/0"] {
            File::create(root.join(p).join("00000000000000000000.log")).unwrap();
        }
        for p in [
            "offsets/offsets.log",
            "state/queues/queues.statelog",
            "state/history/jobs/00000000001700000000000.history",
            "state/history/jobs/00000000001700003600000.history",
            "state/history/mail/00000000001700000000000.history",
            "state/history/mail/notes.txt",
        ] {
            File::create(root.join(p)).unwrap();
        }
        File::create(root.join("topics/a/0/notes.log")).unwrap();
        let layout = discover(root).unwrap();
        let relative: Vec<_> = layout
            .partitions
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            relative,
            ["topics/a/0", "topics/a/1", "topics/b/0"].map(PathBuf::from)
        );
        let logs: Vec<_> = layout
            .state_logs
            .iter()
            .map(|f| (f.path.strip_prefix(root).unwrap().to_path_buf(), f.kind))
            .collect();
        assert_eq!(
            logs,
            [
                ("offsets/offsets.log", StateLogKind::Offsets),
                (
                    "state/history/jobs/00000000001700000000000.history",
                    StateLogKind::History
                ),
                (
                    "state/history/jobs/00000000001700003600000.history",
                    StateLogKind::History
                ),
                (
                    "state/history/mail/00000000001700000000000.history",
                    StateLogKind::History
                ),
                ("state/queues/queues.statelog", StateLogKind::Queues),
            ]
            .map(|(p, k)| (PathBuf::from(p), k))
        );

        // Topics: those of the partitions, and a directory holding topic files.
        assert_eq!(
            layout.topics,
            vec![root.join("topics/a"), root.join("topics/b")]
        );
        fs::create_dir_all(root.join("topics/c")).unwrap();
        File::create(root.join("topics/c/topic.config")).unwrap();
        assert_eq!(discover(root).unwrap().topics[2], root.join("topics/c"));

        // The state directory on its own.
        let layout = discover(&root.join("state/queues")).unwrap();
        assert_eq!(layout.state_logs.len(), 1);
        assert!(layout.partitions.is_empty() && layout.topics.is_empty());

        // A partition directory on its own, with its topic.
        let layout = discover(&root.join("topics/a/1")).unwrap();
        assert_eq!(layout.partitions, vec![root.join("topics/a/1")]);
        assert_eq!(layout.topics, vec![root.join("topics/a")]);
        assert_eq!(segment_bases(&root.join("topics/a/0")).unwrap(), vec![0]);
    }

    #[test]
    fn a_free_lock_is_not_held() {
        let dir = tempfile::tempdir().unwrap();
        File::create(dir.path().join(LOCK_FILE)).unwrap();
        fs::create_dir_all(dir.path().join("topics/t/0")).unwrap();
        assert_eq!(
            data_root(&dir.path().join("topics/t/0")),
            dir.path().canonicalize().ok()
        );
        assert!(!broker_holds_lock(dir.path()));
        let held = File::options()
            .write(true)
            .open(dir.path().join(LOCK_FILE))
            .unwrap();
        held.try_lock().unwrap();
        assert!(broker_holds_lock(dir.path()));
    }
}
