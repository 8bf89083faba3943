//! The store: one data directory holding topics, their partitions, and the consumer
//! offsets.
//!
//! ```text
//! DATA/
//!   LOCK                                  held while a store has the directory open
//!   topics/<topic>/topic.config           partitions and config (key=value)
//!   topics/<topic>/topic.owner            the principal that created it (optional)
//!   topics/<topic>/topic.id               its id (crate::topic_id::TopicId)
//!   topics/<topic>/<partition>/           segments (.log .index .timeindex), checkpoint
//!   offsets/                              the consumer offsets store
//!   state/queues/queues.statelog          the work queues' state (crate::queue)
//!   state/history/<queue>/<ms>.history    each queue's delivery history (crate::queue::history)
//!   trash/                                topics and deleted queues' histories being removed
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::{Clock, SystemClock};
use crate::config::{FsyncPolicy, RECORD_FEATURES, TopicConfig, TopicFile, validate_topic_name};
use crate::dedup::DedupWindow;
use crate::error::{Error, IoContext, Result};
use crate::flusher::Flusher;
use crate::fs::{FileSystem, FsFile, OpenMode, OsFs};
use crate::fsutil;
use crate::limits::{MAPPED_SEGMENTS_DEFAULT, SMALL_FILE_BYTES_MAX, TOPIC_PARTITIONS_MAX};
use crate::msgid::{self, IdGenerator};
use crate::offsets::OffsetStore;
use crate::partition::{FlushObserver, Partition, PartitionContext, RetentionOutcome};
use crate::queue::history::QueueHistory;
use crate::queue::validate_queue_name;
use crate::queue::{QueueHost, QueueOp, Queues};
use crate::segment::MappedSegments;
use crate::statelog::{StateLog, StateLogOptions};
use crate::topic::{Topic, next_incarnation};
use crate::topic_id::TopicId;

/// A topic's partition count and config (storage/FORMAT.md, "Topic config"); written
/// last when a topic is created.
pub const TOPIC_CONFIG_FILE: &str = "topic.config";
/// The principal that created the topic; written before [`TOPIC_CONFIG_FILE`].
pub const TOPIC_OWNER_FILE: &str = "topic.owner";
/// The topic's id ([`TopicId`]); written before [`TOPIC_CONFIG_FILE`].
pub const TOPIC_ID_FILE: &str = "topic.id";
/// How often the housekeeping thread looks for interval-policy flushes that are due.
const HOUSEKEEPING_TICK: Duration = Duration::from_millis(5);

/// How long `Store::open` tries for the `LOCK` before saying the directory is in use.
/// A lock released a moment ago can still be held for a while: a child process another
/// thread is starting has a copy of the descriptor (and so of the lock) until its
/// exec closes it.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// How a store runs.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub clock: Arc<dyn Clock>,
    /// Threads that fsync partitions. One disk gains little past a few.
    pub flush_threads: usize,
    /// Run retention this often on a background thread; `None` leaves it to the
    /// caller ([`Store::enforce_retention`]), as tests do.
    pub retention_interval: Option<Duration>,
    pub flush_observer: Option<Arc<dyn FlushObserver>>,
    /// Every file operation goes through this: [`OsFs`] (the default) in production,
    /// `FaultyFs` (the `testing` feature) in fault-injection tests.
    pub fs: Arc<dyn FileSystem>,
    /// Most segments kept mapped at once across the store; the least recently read
    /// lose their mapping first (see [`crate::segment::MappedSegments`]).
    pub mapped_segments_max: usize,
    /// Publishes of messages whose timestamp is further than this ahead of the clock
    /// are refused (`None`: any timestamp). A timestamp in the future would hold time
    /// retention of its segment and every later one until then.
    pub max_timestamp_ahead_ms: Option<u64>,
}

/// The default of [`StoreOptions::max_timestamp_ahead_ms`]: an hour, as Kafka's
/// `log.message.timestamp.after.max.ms` since 4.0.
pub const MAX_TIMESTAMP_AHEAD_DEFAULT_MS: u64 = 3_600_000;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            clock: Arc::new(SystemClock),
            flush_threads: 4,
            retention_interval: Some(Duration::from_secs(30)),
            flush_observer: None,
            fs: Arc::new(OsFs),
            mapped_segments_max: MAPPED_SEGMENTS_DEFAULT,
            max_timestamp_ahead_ms: Some(MAX_TIMESTAMP_AHEAD_DEFAULT_MS),
        }
    }
}

/// Where the work queues' state log lives, under the data directory.
pub const QUEUES_STATE_PATH: &str = "state/queues/queues.statelog";
/// Where each queue's delivery history directory lives, under the data directory.
pub const QUEUE_HISTORY_DIR: &str = "state/history";

/// Removes `DATA/state/history/<queue>` and fsyncs its parent. A name that fails the
/// queue-name rule (a damaged state log) names no history directory: nothing is removed.
fn remove_history_dir(fs: &dyn FileSystem, data: &Path, queue: &str) -> Result<()> {
    if validate_queue_name(queue).is_err() {
        return Ok(());
    }
    let parent = data.join(QUEUE_HISTORY_DIR);
    let dir = parent.join(queue);
    match fs.remove_dir_all(&dir) {
        Ok(()) => fsutil::sync_dir(fs, &parent),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}

/// Removes the history directories of queues that do not exist (a crash between a
/// queue's deletion and its history's), so a new queue of the same name starts empty.
fn remove_orphan_histories(fs: &dyn FileSystem, data: &Path, queues: &Queues) -> Result<()> {
    let parent = data.join(QUEUE_HISTORY_DIR);
    let entries = match fs.read_dir(&parent) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("listing {}", parent.display()), e)),
    };
    for entry in entries {
        let name = entry.name.to_string_lossy();
        if entry.is_dir && queues.get(&name).is_none() {
            tracing::info!(queue = %name, "removing the delivery history of a deleted queue");
            remove_history_dir(fs, data, &name)?;
        }
    }
    Ok(())
}

/// The delivery histories a store has opened, and what is left of deleted queues'.
#[derive(Debug, Default)]
struct Histories {
    /// Each queue's that recorded or was asked for some since the store opened (a
    /// summary each; the events stay on disk).
    open: HashMap<String, Arc<QueueHistory>>,
    /// Deleted queues whose history directory could not be moved to the trash yet (an
    /// I/O error): tried again at each retention pass and before a history of that
    /// name is handed out (which fails until it moved, so a queue created again under
    /// the name never sees the old events).
    left: BTreeSet<String>,
}

/// Tells apart the trash names of directories moved in the same nanosecond.
static TRASH_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where a deleted topic's or queue history's directory goes: `trash/<nanos>-<seq>.<kind>`,
/// a name of at most 48 bytes whatever the topic's or queue's name (a 249-byte topic
/// name would not fit in a file name with a suffix), never the same twice.
fn trash_path(data: &Path, kind: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    data.join("trash").join(format!(
        "{nanos:020}-{}.{kind}",
        TRASH_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes create / delete / alter so two cannot race on one directory.
    admin: Mutex<()>,
    /// Serializes queue redrives: each reads its position, publishes, then commits it.
    redrives: Mutex<()>,
    /// Serializes the changes of queue definitions (see `QueueHost::queue_changes`);
    /// taken after `admin` when both are held.
    queue_changes: Mutex<()>,
    /// Held shared by [`Store::commit_offsets`] from its topic check to its write, and
    /// exclusively by a topic's delete from the topic leaving the map to its offsets'
    /// removal: a commit lands before a delete (which removes it) or not at all.
    topic_deletes: RwLock<()>,
    offsets: OffsetStore,
    /// Every work queue's state.
    queues: StateLog<Queues>,
    /// The delivery histories, locked by every step that creates or deletes queues and
    /// by every lookup of a history (see [`Store::change_queues`]).
    histories: Mutex<Histories>,
    flusher: Mutex<Flusher>,
    context: PartitionContext,
    closed: AtomicBool,
    /// The trash holds something a removal failed on: tried again at each retention
    /// pass.
    trash_left: AtomicBool,
    /// Holds the `LOCK` file's advisory lock while open.
    _lock_file: Arc<dyn FsFile>,
}

/// The storage engine: open one per data directory.
#[derive(Debug)]
pub struct Store {
    inner: Arc<Inner>,
    housekeeping: Mutex<Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>>,
}

impl Store {
    /// How many partition directories the data directory `dir` holds, counted without
    /// opening anything (for an error's advice when the open itself failed: each
    /// partition keeps two files open). 0 when it cannot be listed.
    pub fn partitions_on_disk(dir: impl AsRef<Path>) -> usize {
        let Ok(topics) = std::fs::read_dir(dir.as_ref().join("topics")) else {
            return 0;
        };
        topics
            .flatten()
            .filter_map(|topic| std::fs::read_dir(topic.path()).ok())
            .flat_map(|partitions| partitions.flatten())
            .filter(|entry| {
                entry.file_type().is_ok_and(|t| t.is_dir())
                    && entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .count()
    }

    /// Opens (creating if needed) the data directory and recovers every partition.
    /// Fails if another process has it open.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let fs = options.fs.clone();
        for sub in ["", "topics", "offsets", "trash"] {
            let path = dir.join(sub);
            if !fs
                .try_exists(&path)
                .ctx(|| format!("looking for {}", path.display()))?
            {
                fs.create_dir_all(&path)
                    .ctx(|| format!("creating {}", path.display()))?;
                fsutil::sync_dir(&*fs, fsutil::parent_dir(&path))?;
            }
        }
        let lock_path = dir.join("LOCK");
        let lock_file = fs
            .open(&lock_path, OpenMode::Create)
            .ctx(|| format!("opening {}", lock_path.display()))?;
        let waiting_since = Instant::now();
        while !lock_file
            .try_lock()
            .ctx(|| format!("locking {}", lock_path.display()))?
        {
            if waiting_since.elapsed() >= LOCK_WAIT {
                return Err(Error::DataDirInUse {
                    dir: dir.to_path_buf(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Finish deletions a crash interrupted (what cannot be removed now is tried
        // again at each retention pass: nothing reads the trash).
        let trash_left = !empty_trash(&*fs, &dir);

        let flusher = Flusher::start(options.flush_threads)?;
        let context = PartitionContext {
            fs: fs.clone(),
            clock: options.clock.clone(),
            flusher: flusher.queue(),
            observer: options.flush_observer.clone(),
            mapped: Arc::new(MappedSegments::new(options.mapped_segments_max)),
            ids: Arc::new(IdGenerator::new(msgid::process_seed())),
            max_timestamp_ahead_ms: options.max_timestamp_ahead_ms,
        };
        let offsets = OffsetStore::open(fs.clone(), &dir.join("offsets"), options.clock.clone())?;
        let queues = StateLog::open(
            fs.clone(),
            &dir.join(QUEUES_STATE_PATH),
            Queues::default(),
            options.clock.clone(),
            StateLogOptions::default(),
        )?;
        queues.read(|q| remove_orphan_histories(&*fs, &dir, q))?;
        let mut topics = BTreeMap::new();
        let topics_dir = dir.join("topics");
        for entry in fs
            .read_dir(&topics_dir)
            .ctx(|| format!("listing {}", topics_dir.display()))?
        {
            let name = entry.name.to_string_lossy().into_owned();
            let path = topics_dir.join(&entry.name);
            if validate_topic_name(&name).is_err() || !entry.is_dir {
                tracing::warn!(entry = %path.display(), "ignoring an entry that is not a topic");
                continue;
            }
            match open_topic(&path, &name, &context)? {
                Some(topic) => {
                    topics.insert(name, Arc::new(topic));
                }
                None => {
                    // Created but never finished (no config written): remove it.
                    tracing::warn!(topic = %name, "removing a topic whose creation did not finish");
                    fs.remove_dir_all(&path)
                        .ctx(|| format!("removing {}", path.display()))?;
                }
            }
        }
        // What was just found (topics, their removal, the trash emptied) may be known
        // to the page cache only, if the process before died between creating an entry
        // and fsyncing its directory: make it durable before serving it.
        for path in [&topics_dir, &dir.join("trash"), &dir] {
            fsutil::sync_dir(&*fs, path)?;
        }
        let inner = Arc::new(Inner {
            dir,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            redrives: Mutex::new(()),
            queue_changes: Mutex::new(()),
            topic_deletes: RwLock::new(()),
            offsets,
            queues,
            histories: Mutex::new(Histories::default()),
            flusher: Mutex::new(flusher),
            context,
            closed: AtomicBool::new(false),
            trash_left: AtomicBool::new(trash_left),
            _lock_file: lock_file,
        });
        let housekeeping = start_housekeeping(Arc::downgrade(&inner), options.retention_interval)?;
        let store = Store {
            inner,
            housekeeping: Mutex::new(Some(housekeeping)),
        };
        store.forget_gone_topics();
        // History past its retention goes now, not only at the first retention pass or
        // the queue's next delivery (an idle queue may have none for long).
        store.inner.prune_histories();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The consumer offsets store.
    pub fn offsets(&self) -> &OffsetStore {
        &self.inner.offsets
    }

    /// The work queues' durable state (see [`crate::queue`]).
    pub fn queues(&self) -> &StateLog<Queues> {
        &self.inner.queues
    }

    /// Queue `name`'s delivery history (see [`crate::queue::history`]), whether or not
    /// the queue exists (for reading). The name must pass the queue-name rule (it
    /// names a directory: never `..` or a path).
    pub fn queue_history(&self, name: &str) -> Result<Arc<QueueHistory>> {
        self.inner.history(&mut self.inner.lock_histories(), name)
    }

    /// Queue `name`'s delivery history to record its decisions in, or None when the
    /// queue created at `created_ms` does not exist (it was deleted, and perhaps
    /// created again under the name: its decisions made before are not recorded, nor
    /// into the new queue's history). Looked up in one step with [`Store::change_queues`], so a history
    /// handed out here is either closed by the queue's deletion or belongs to a queue
    /// that exists after it.
    pub fn live_queue_history(
        &self,
        name: &str,
        created_ms: i64,
    ) -> Result<Option<Arc<QueueHistory>>> {
        let mut histories = self.inner.lock_histories();
        if self
            .inner
            .queues
            .read(|q| q.get(name).is_none_or(|q| q.created_ms != created_ms))
        {
            return Ok(None);
        }
        self.inner.history(&mut histories, name).map(Some)
    }

    /// Appends `ops`, operations that create or delete queues, to the queue state, and
    /// takes their delivery history from the queues they delete. Returns their
    /// outcomes.
    ///
    /// Once the append is durable the delete stands, and this returns its outcomes
    /// whatever happens to the history after: in the same step for anyone appending
    /// history or creating a queue (both wait for it), each deleted queue's open
    /// history is closed (a decision made before the delete records nothing any
    /// more) and its directory is renamed into `trash/`, so a queue created again
    /// under the name starts with an empty history; then the directory is removed.
    /// A rename that fails is tried again at each retention pass and before a history
    /// of that name is handed out (which fails until it moved); a removal that fails
    /// is left in the trash, which the retention passes empty. A crash before the
    /// rename is durable leaves the directory of a queue that does not exist, which
    /// the next open removes.
    pub fn change_queues(&self, ops: Vec<QueueOp>) -> Result<Vec<u64>> {
        let deleted: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                QueueOp::Delete { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let mut trashed = Vec::new();
        let outcomes = {
            let mut histories = self.inner.lock_histories();
            let outcomes = self.inner.queues.append(ops)?;
            for name in deleted {
                if let Some(history) = histories.open.remove(&name) {
                    history.close();
                }
                match self.inner.move_history_to_trash(&name) {
                    Ok(moved) => trashed.extend(moved),
                    Err(error) => {
                        tracing::warn!(
                            queue = %name,
                            %error,
                            "deleted queue; its delivery history could not be moved to the trash yet: the retention passes try again (a queue of that name has no history until then)"
                        );
                        histories.left.insert(name);
                    }
                }
            }
            outcomes
        };
        for path in trashed {
            self.inner.remove_trashed(&path);
        }
        Ok(outcomes)
    }

    /// Segments holding a memory mapping now (bounded by `mapped_segments_max`).
    pub fn mapped_segments(&self) -> usize {
        self.inner.context.mapped.count()
    }

    /// The clock the store reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.context.clock
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        self.create_topic_owned(name, partitions, config, None)
    }

    /// Creates a topic with `partitions` partitions, recording `owner` (the principal
    /// that created it, for the broker's per-principal topic limits) in its
    /// `topic.owner` file.
    pub fn create_topic_owned(
        &self,
        name: &str,
        partitions: u32,
        config: TopicConfig,
        owner: Option<&str>,
    ) -> Result<Arc<Topic>> {
        self.check_open()?;
        if let Some(owner) = owner {
            crate::access::validate_principal(owner)?;
        }
        validate_topic_name(name)?;
        if !(1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
            return Err(Error::invalid(format!(
                "a topic needs 1 to {TOPIC_PARTITIONS_MAX} partitions, not {partitions}"
            )));
        }
        config.validate()?;
        let _admin = self.admin()?;
        if self.read_topics().contains_key(name) {
            return Err(Error::AlreadyExists {
                what: format!("topic {name:?}"),
            });
        }
        // A deleted topic's commits and queues went with it, unless that failed or a
        // crash came first (the delete stands once its directory left `topics/`): a
        // topic created again under the name never starts from them.
        self.forget_topic_state(name)?;
        let fs = &*self.inner.context.fs;
        let dir = self.inner.dir.join("topics").join(name);
        if fs
            .try_exists(&dir)
            .ctx(|| format!("looking for {}", dir.display()))?
        {
            fs.remove_dir_all(&dir)
                .ctx(|| format!("removing stale {}", dir.display()))?;
        }
        fs.create_dir(&dir)
            .ctx(|| format!("creating {}", dir.display()))?;
        let config = Arc::new(config);
        let id = TopicId::random();
        let partitions = open_partitions(name, id, &dir, partitions, &config, &self.inner.context)?;
        if let Some(owner) = owner {
            fsutil::replace_file(fs, &dir.join(TOPIC_OWNER_FILE), owner.as_bytes())?;
        }
        fsutil::replace_file(fs, &dir.join(TOPIC_ID_FILE), id.to_file().as_bytes())?;
        fsutil::sync_dir(fs, &dir)?;
        // Written last: a topic without its config file did not finish being created.
        fsutil::write_file_atomically(
            fs,
            &dir.join(TOPIC_CONFIG_FILE),
            config.to_file(partitions.len() as u32).as_bytes(),
        )?;
        fsutil::sync_dir(fs, fsutil::parent_dir(&dir))?;
        let topic = Arc::new(Topic {
            name: name.to_string(),
            dir,
            config: Arc::new(RwLock::new(config)),
            partitions,
            incarnation: next_incarnation(),
            id,
            dedup: Arc::new(DedupWindow::new(
                self.inner.context.clock.clone(),
                self.inner.context.ids.clone(),
            )),
            owner: owner.map(Arc::from),
            max_timestamp_ahead_ms: self.inner.context.max_timestamp_ahead_ms,
        });
        self.inner
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), topic.clone());
        tracing::info!(
            topic = name,
            partitions = topic.partitions.len(),
            "created topic"
        );
        Ok(topic)
    }

    /// Deletes a topic, its data, its committed offsets and its queues.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let _admin = self.admin()?;
        let _deleting = self
            .inner
            .topic_deletes
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let topic = self
            .inner
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .ok_or_else(|| Error::not_found(format!("topic {name:?}")))?;
        for partition in &topic.partitions {
            partition.abandon_deleted();
        }
        let trash = trash_path(&self.inner.dir, "topic");
        let fs = &*self.inner.context.fs;
        if let Err(error) = fs
            .rename(&topic.dir, &trash)
            .ctx(|| format!("moving {} to the trash", topic.dir.display()))
        {
            // Nothing was deleted: the topic is served again from its files, as a
            // restart would find it (its streams have ended; clients subscribe again).
            self.restore_topic(name, &topic.dir);
            return Err(error);
        }
        fsutil::sync_dir(fs, &self.inner.dir.join("topics"))?;
        // The topic is deleted (its directory left `topics/` durably above): what
        // follows does not undo it, and its files go whatever becomes of the rest.
        let rest = self.forget_topic_state(name);
        // Its files going is housekeeping. A removal that fails (out of file
        // descriptors, an I/O error) does not undo or fail the delete; the retention
        // passes try again. Mappings held by readers keep their files alive after this.
        if self.inner.remove_trashed(&trash) {
            tracing::info!(topic = name, "deleted topic");
        }
        rest
    }

    /// Removes what the topic `name` left in the groups' offsets and the queues (the
    /// queues on it, with their histories), durably; nothing to write when it left
    /// nothing. The one rule for a deleted topic's state: run by its delete, again when
    /// a topic of its name is created (a delete whose removal failed), and at open for
    /// every topic that is gone (a crash between a delete and its removal).
    fn forget_topic_state(&self, name: &str) -> Result<()> {
        self.inner.offsets.delete_topic(name)?;
        let on_topic: Vec<QueueOp> = self.inner.queues.read(|queues| {
            queues
                .iter()
                .filter(|q| q.topic == name)
                .map(|q| QueueOp::Delete {
                    name: q.name.clone(),
                })
                .collect()
        });
        if !on_topic.is_empty() {
            self.change_queues(on_topic)?;
        }
        Ok(())
    }

    /// At open: forgets the state of topics that are gone (see
    /// [`Store::forget_topic_state`]). One that fails is logged and left to the
    /// creation of a topic of its name; the store opens all the same.
    fn forget_gone_topics(&self) {
        let mut gone: std::collections::BTreeSet<String> = self.inner.offsets.topics();
        self.inner.queues.read(|queues| {
            gone.extend(queues.iter().map(|q| q.topic.clone()));
        });
        let topics = self.read_topics();
        gone.retain(|name| !topics.contains_key(name));
        drop(topics);
        for name in gone {
            match self.forget_topic_state(&name) {
                Ok(()) => tracing::info!(
                    topic = %name,
                    "removed the offsets and queues a deleted topic left (its delete was interrupted)"
                ),
                Err(error) => tracing::warn!(
                    topic = %name,
                    %error,
                    "the offsets and queues a deleted topic left could not be removed; creating a topic of its name removes them"
                ),
            }
        }
    }

    /// Commits `commits` for `group`, each on the topic the caller checked it against
    /// (its partition and offset): if one of those topics was deleted since, or deleted
    /// and created again under its name, nothing is written and the commit fails with
    /// NotFound. So a commit checked against a topic never lands on the new topic of
    /// its name (where the group would start past messages it never read).
    pub fn commit_offsets(
        &self,
        group: &str,
        commits: &[(Arc<Topic>, u32, u64, String)],
    ) -> Result<()> {
        let _no_delete = self
            .inner
            .topic_deletes
            .read()
            .unwrap_or_else(|e| e.into_inner());
        for (topic, _, _, _) in commits {
            let current = self.topic(topic.name()).ok();
            if !current.is_some_and(|current| current.is_same_topic(topic)) {
                return Err(Error::not_found(format!(
                    "topic {:?} the commit was checked against (deleted meanwhile; nothing was committed)",
                    topic.name()
                )));
            }
        }
        let named: Vec<(String, u32, u64, String)> = commits
            .iter()
            .map(|(topic, partition, offset, metadata)| {
                (
                    topic.name().to_string(),
                    *partition,
                    *offset,
                    metadata.clone(),
                )
            })
            .collect();
        self.inner.offsets.commit(group, &named)
    }

    /// Serves again a topic whose delete failed before its directory left `topics/`
    /// (called with the admin lock held). What cannot be opened now is opened at the
    /// next start, as it would have been.
    fn restore_topic(&self, name: &str, dir: &Path) {
        match open_topic(dir, name, &self.inner.context) {
            Ok(Some(topic)) => {
                self.inner
                    .topics
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_string(), Arc::new(topic));
                tracing::warn!(
                    topic = name,
                    "the topic's delete failed; it is served again"
                );
            }
            Ok(None) => {}
            Err(error) => tracing::error!(
                topic = name,
                %error,
                "the topic's delete failed and it could not be opened again: it is served again after a restart"
            ),
        }
    }

    /// Replaces a topic's config. The partition count cannot change here.
    pub fn alter_topic(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>> {
        self.check_open()?;
        config.validate()?;
        let _admin = self.admin()?;
        let topic = self.topic(name)?;
        let levels = config.priority_levels.max(1);
        // Held from the check to the new config's taking effect: a queue created in
        // between would take the old levels (`queue::admin::create_queue` holds it too).
        let queue_changes = self
            .inner
            .queue_changes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if levels > topic.config().priority_levels.max(1) {
            crate::queue::admin::check_levels_raise(self, name, levels)?;
        }
        fsutil::write_file_atomically(
            &*self.inner.context.fs,
            &topic.dir.join(TOPIC_CONFIG_FILE),
            config.to_file(topic.partitions.len() as u32).as_bytes(),
        )?;
        let config = Arc::new(config);
        let to_sync: Vec<_> = topic
            .partitions
            .iter()
            .filter_map(|partition| Some((partition, partition.set_config(config.clone())?)))
            .collect();
        let window_changed = topic.config().dedup_window_ms != config.dedup_window_ms;
        *topic.config.write().unwrap_or_else(|e| e.into_inner()) = config;
        drop(queue_changes);
        if window_changed {
            // Read back from the log at the next publish with an id.
            topic.dedup.reset();
        }
        // A switch to `fsync = always` returns once what readers saw is durable, so
        // from then on they see only durable data. The flushes run together; one that
        // fails poisons its partition as any failed fsync does (or, failing before its
        // fsync ran, is tried again): the new policy is in effect all the same.
        let mut failed = None;
        for (partition, end) in to_sync {
            if let Err(error) = partition.wait_durable_blocking(end - 1) {
                tracing::error!(topic = name, partition = partition.id(), %error, "switching to fsync = always, the flush of what readers saw failed");
                failed.get_or_insert(error);
            }
        }
        match failed {
            None => Ok(topic),
            // A failed fsync says so itself (the partition is poisoned).
            Some(Error::Io { context, source }) => Err(Error::Io {
                context: format!(
                    "{context}, to make what readers of topic {name:?} saw durable (fsync = always is in effect; the flush is tried again)"
                ),
                source,
            }),
            Some(error) => Err(error),
        }
    }

    /// Raises the partition count of topic `name` to `count` (only up). Returns the
    /// topic with its new partitions; the value held before keeps its list (see
    /// [`Topic`]).
    ///
    /// Crash safety: the new partition directories are created and their directory
    /// fsynced first; the topic's config file, which holds the count, is replaced
    /// atomically last. A crash before that leaves directories past the recorded count,
    /// which never held a message: the topic opens with its old count, and the next
    /// call removes them and starts again.
    pub fn create_partitions(&self, name: &str, count: u32) -> Result<Arc<Topic>> {
        self.check_open()?;
        let _admin = self.admin()?;
        let topic = self.topic(name)?;
        let current = topic.partitions.len() as u32;
        if count <= current {
            return Err(Error::invalid(format!(
                "topic {name:?} has {current} partition{}; the count only grows, ask for more than {current}",
                if current == 1 { "" } else { "s" }
            )));
        }
        if count > TOPIC_PARTITIONS_MAX {
            return Err(Error::invalid(format!(
                "a topic has at most {TOPIC_PARTITIONS_MAX} partitions, not {count}"
            )));
        }
        let fs = &*self.inner.context.fs;
        for id in current..count {
            let dir = topic.dir.join(id.to_string());
            if fs
                .try_exists(&dir)
                .ctx(|| format!("looking for {}", dir.display()))?
            {
                // Left by an attempt a crash cut short: the count never included it.
                fs.remove_dir_all(&dir)
                    .ctx(|| format!("removing unfinished {}", dir.display()))?;
            }
        }
        let config = topic.config();
        let added = (current..count)
            .map(|id| {
                Partition::open(
                    name,
                    topic.id,
                    id,
                    &topic.dir.join(id.to_string()),
                    config.clone(),
                    self.inner.context.clone(),
                )
            })
            .collect::<Result<Vec<_>>>();
        let added = match added {
            Ok(added) => added,
            Err(error) => {
                // Out of file descriptors, say: the count never included what was made
                // of them. Removed now (a start removes what this cannot).
                for id in current..count {
                    let dir = topic.dir.join(id.to_string());
                    if let Err(removal) = fs.remove_dir_all(&dir)
                        && removal.kind() != std::io::ErrorKind::NotFound
                    {
                        tracing::warn!(topic = name, partition = id, error = %removal, "a partition the failed CreatePartitions made is left for the next start to remove");
                    }
                }
                return Err(error);
            }
        };
        let recorded = fsutil::sync_dir(fs, &topic.dir).and_then(|()| {
            fsutil::write_file_atomically(
                fs,
                &topic.dir.join(TOPIC_CONFIG_FILE),
                config.to_file(count).as_bytes(),
            )
        });
        if let Err(error) = recorded {
            for partition in &added {
                partition.abandon_deleted();
            }
            return Err(error);
        }
        let mut partitions = topic.partitions.clone();
        partitions.extend(added);
        let grown = Arc::new(Topic {
            name: topic.name.clone(),
            dir: topic.dir.clone(),
            config: topic.config.clone(),
            partitions,
            incarnation: topic.incarnation,
            id: topic.id,
            dedup: topic.dedup.clone(),
            owner: topic.owner.clone(),
            max_timestamp_ahead_ms: topic.max_timestamp_ahead_ms,
        });
        self.inner
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), grown.clone());
        tracing::info!(topic = name, from = current, to = count, "added partitions");
        Ok(grown)
    }

    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.inner.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The topic named `name`, or `NotFound`.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.read_topics()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("topic {name:?}")))
    }

    /// Every topic, by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.read_topics().values().cloned().collect()
    }

    /// Runs retention on every partition now, and deletes every queue's delivery
    /// history files past its `history_retention`.
    pub fn enforce_retention(&self) -> Vec<(String, u32, RetentionOutcome)> {
        enforce_retention(&self.inner)
    }

    /// The admin lock (topic creation, deletion, alteration, new partitions), once the
    /// store is known open under it: [`Store::close`] marks the store closed under the
    /// same lock, so a topic is either created before the close (and closed by it) or
    /// refused, never created behind it with partitions nobody closes or flushes (an
    /// append to one would wait for durability forever).
    fn admin(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        let admin = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
        self.check_open()?;
        Ok(admin)
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Flushes every partition, writes their checkpoints and index files, and stops
    /// the background threads. A store closed this way reopens without scanning.
    pub fn close(&self) -> Result<()> {
        // Under the admin lock: no topic is being created meanwhile (see `admin`).
        let topics = {
            let _admin = self.inner.admin.lock().unwrap_or_else(|e| e.into_inner());
            if self.inner.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            self.topics()
        };
        self.stop_housekeeping();
        // Partitions are independent files: closed by a few threads at once, so a
        // store of thousands of partitions (several fsyncs each) stops in a fraction
        // of the time one by one takes.
        let partitions: Vec<(&str, &Arc<Partition>)> = topics
            .iter()
            .flat_map(|t| t.partitions().iter().map(move |p| (t.name.as_str(), p)))
            .collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_error = Mutex::new(None);
        let workers = partitions.len().clamp(1, CLOSE_THREADS_MAX);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while let Some((topic, partition)) =
                        partitions.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        if let Err(error) = partition.close() {
                            tracing::error!(partition = %format!("{topic}/{}", partition.id()), %error, "closing partition failed");
                            first_error
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .get_or_insert(error);
                        }
                    }
                });
            }
        });
        self.stop_flushers();
        let first_error = first_error
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        first_error.map_or(Ok(()), Err)
    }
}

/// Threads [`Store::close`] closes partitions with.
const CLOSE_THREADS_MAX: usize = 8;

impl Store {
    fn stop_housekeeping(&self) {
        let running = self
            .housekeeping
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stop, thread)) = running {
            drop(stop);
            let _ = thread.join();
        }
    }

    fn stop_flushers(&self) {
        self.inner
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown();
    }

    /// Stops the store the way a killed process would: no flush, no checkpoint, no
    /// index files; what was written stays in the files (the page cache). For crash
    /// tests: reopening runs recovery. Test-only (the `testing` feature).
    #[cfg(any(test, feature = "testing"))]
    pub fn simulate_crash(self) {
        self.inner.closed.store(true, Ordering::Release);
        for topic in self.topics() {
            for partition in topic.partitions() {
                partition.abandon();
            }
        }
        self.stop_housekeeping();
        self.stop_flushers();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::error!(%error, "closing the store failed");
        }
    }
}

/// Removes the partition directories of topic `name` numbered from `count` on: left by
/// a CreatePartitions a crash or an error cut short (the config's count, written last,
/// never included them). A later grow would remove them too; a start does it so that
/// nothing (`tidelog segment verify`, the disk) counts them meanwhile.
fn remove_unrecorded_partitions(
    dir: &Path,
    name: &str,
    count: u32,
    context: &PartitionContext,
) -> Result<()> {
    let fs = &*context.fs;
    for entry in fs
        .read_dir(dir)
        .ctx(|| format!("listing {}", dir.display()))?
    {
        let Some(id) = entry
            .name
            .to_str()
            .and_then(|n| n.parse::<u32>().ok().filter(|id| id.to_string() == n))
            .filter(|id| *id >= count && entry.is_dir)
        else {
            continue;
        };
        let path = dir.join(&entry.name);
        tracing::warn!(
            topic = name,
            partition = id,
            "removing a partition a cut-short CreatePartitions left (the topic has {count})"
        );
        fs.remove_dir_all(&path)
            .ctx(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

/// A topic directory's `topic.config`, read and checked as [`Store::open`] reads it
/// ([`TopicConfig::from_file`]: [`Error::WrittenByNewer`] for record features newer
/// than this build's, [`Error::Corrupt`] for a file that is not a config). `None` when
/// there is none: a creation that never finished, whose directory the open removes.
/// Writes nothing: `tidelog segment verify` checks the file with it too.
pub fn read_topic_config(fs: &dyn FileSystem, dir: &Path) -> Result<Option<TopicFile>> {
    let config_path = dir.join(TOPIC_CONFIG_FILE);
    let Some(bytes) = fsutil::read_small_file(fs, &config_path, SMALL_FILE_BYTES_MAX)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::corrupt(&config_path, 0, "config file is not UTF-8"))?;
    TopicConfig::from_file(&text, &config_path).map(Some)
}

fn open_topic(dir: &Path, name: &str, context: &PartitionContext) -> Result<Option<Topic>> {
    let config_path = dir.join(TOPIC_CONFIG_FILE);
    let Some(TopicFile {
        partitions: partition_count,
        config,
        record_features,
    }) = read_topic_config(&*context.fs, dir)?
    else {
        return Ok(None);
    };
    if record_features < RECORD_FEATURES {
        // Before anything can append records an older build would misread: from here
        // on every older build refuses the file at open (storage/FORMAT.md, "Topic
        // config"). Atomic: a crash leaves the old file or the new one.
        fsutil::write_file_atomically(
            &*context.fs,
            &config_path,
            config.to_file(partition_count).as_bytes(),
        )?;
        tracing::info!(
            topic = name,
            from = record_features,
            to = RECORD_FEATURES,
            "recorded the topic's record features in its config; builds older than this one refuse the topic from now on"
        );
    }
    let config = Arc::new(config);
    let owner = read_topic_owner(&*context.fs, dir)?;
    let topic_id = read_or_give_id(dir, name, context)?;
    remove_unrecorded_partitions(dir, name, partition_count, context)?;
    // The config file and partition directories may be known to the page cache only.
    fsutil::sync_dir(&*context.fs, dir)?;
    // One partition that recovery refuses to open must not take the others down: it
    // is served as unavailable until an operator repairs it.
    let partitions = (0..partition_count)
        .map(|id| {
            let dir = dir.join(id.to_string());
            match Partition::open(name, topic_id, id, &dir, config.clone(), context.clone()) {
                Err(error @ Error::Corrupt { .. }) => Partition::open_unavailable(
                    name,
                    topic_id,
                    id,
                    &dir,
                    config.clone(),
                    context.clone(),
                    &error,
                ),
                opened => opened,
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Topic {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        config: Arc::new(RwLock::new(config)),
        partitions,
        incarnation: next_incarnation(),
        id: topic_id,
        dedup: Arc::new(DedupWindow::new(context.clock.clone(), context.ids.clone())),
        owner,
        max_timestamp_ahead_ms: context.max_timestamp_ahead_ms,
    }))
}

/// The topic's id from its `topic.id` file. A topic created before ids were kept has
/// none: it gets one here, durably, before anything can read it (a crash before the
/// write lands leaves no id, and the next open gives one; none was shown yet).
fn read_or_give_id(dir: &Path, name: &str, context: &PartitionContext) -> Result<TopicId> {
    if let Some(id) = read_topic_id(&*context.fs, dir)? {
        return Ok(id);
    }
    let id = TopicId::random();
    let path = dir.join(TOPIC_ID_FILE);
    fsutil::write_file_atomically(&*context.fs, &path, id.to_file().as_bytes())?;
    tracing::info!(topic = name, %id, "gave the topic an id (it was created by an older build)");
    Ok(id)
}

/// A topic directory's `topic.id`, read and checked as [`Store::open`] reads it
/// ([`TopicId::parse_file`]): [`Error::Corrupt`] for a file that is not an id, `None`
/// when there is none (a topic created before ids: the open gives it one). Writes
/// nothing: `tidelog segment verify` checks the file with it too.
pub fn read_topic_id(fs: &dyn FileSystem, dir: &Path) -> Result<Option<TopicId>> {
    let path = dir.join(TOPIC_ID_FILE);
    let Some(bytes) = fsutil::read_small_file(fs, &path, SMALL_FILE_BYTES_MAX)? else {
        return Ok(None);
    };
    TopicId::parse_file(&bytes).map(Some).ok_or_else(|| {
        Error::corrupt(
            &path,
            0,
            "the topic id file is not 16 lowercase hex digits: if it was damaged, remove it and start again; the topic gets a new id, and a consumer resuming with the old one reads the topic again from its start",
        )
    })
}

/// The principal in a topic directory's `topic.owner`, read and checked as
/// [`Store::open`] reads it ([`crate::topic::parse_owner`]): [`Error::Corrupt`] for a
/// file that is not a principal, `None` when there is none (topics created without an
/// authenticated caller have none). `tidelog segment verify` checks the file with it
/// too.
pub fn read_topic_owner(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Arc<str>>> {
    let path = dir.join(TOPIC_OWNER_FILE);
    let Some(bytes) = fsutil::read_small_file(fs, &path, SMALL_FILE_BYTES_MAX)? else {
        return Ok(None);
    };
    let owner = crate::topic::parse_owner(&bytes).ok_or_else(|| {
        Error::corrupt(
            &path,
            0,
            "the owner file is not a principal (1-255 printable ASCII characters): write the principal that created the topic into it (no newline), or remove the file (the topic then counts towards no principal's topic limits)",
        )
    })?;
    Ok(Some(Arc::from(owner)))
}

impl Inner {
    fn lock_histories(&self) -> std::sync::MutexGuard<'_, Histories> {
        self.histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue `name`'s history (see [`Store::queue_history`]), with the histories
    /// locked. Fails while the directory of a deleted queue of that name is still in
    /// its place (see [`Histories::left`]), after trying to move it once more.
    fn history(&self, histories: &mut Histories, name: &str) -> Result<Arc<QueueHistory>> {
        validate_queue_name(name)?;
        if histories.left.contains(name) {
            let moved = self.move_history_to_trash(name).map_err(|error| {
                Error::io(
                    format!("moving the delivery history of a deleted queue named {name:?} to the trash (tried again at each retention pass; until then a queue of that name has no history)"),
                    std::io::Error::other(error.to_string()),
                )
            })?;
            histories.left.remove(name);
            if let Some(path) = moved {
                self.remove_trashed(&path);
            }
        }
        let history = histories
            .open
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(QueueHistory::new(
                    self.context.fs.clone(),
                    self.dir.join(QUEUE_HISTORY_DIR).join(name),
                    self.context.clock.clone(),
                ))
            })
            .clone();
        Ok(history)
    }

    /// Renames `DATA/state/history/<queue>` into `trash/` and fsyncs both directories.
    /// Returns where it went, None when there was none. Tried again after a failure,
    /// it finishes what is left (the fsyncs).
    fn move_history_to_trash(&self, queue: &str) -> Result<Option<PathBuf>> {
        if validate_queue_name(queue).is_err() {
            return Ok(None);
        }
        let fs = &*self.context.fs;
        let parent = self.dir.join(QUEUE_HISTORY_DIR);
        let dir = parent.join(queue);
        let trash_dir = self.dir.join("trash");
        let trash = trash_path(&self.dir, "history");
        let moved = match fs.rename(&dir, &trash) {
            Ok(()) => Some(trash),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::io(
                    format!("moving {} to the trash", dir.display()),
                    e,
                ));
            }
        };
        if fs
            .try_exists(&parent)
            .ctx(|| format!("looking for {}", parent.display()))?
        {
            fsutil::sync_dir(fs, &parent)?;
        }
        if moved.is_some() {
            fsutil::sync_dir(fs, &trash_dir)?;
        }
        Ok(moved)
    }

    /// Removes `path` from the trash; what cannot be removed now stays for the
    /// retention passes. Returns whether it went.
    fn remove_trashed(&self, path: &Path) -> bool {
        match self.context.fs.remove_dir_all(path) {
            Ok(()) => true,
            Err(error) => {
                self.trash_left.store(true, Ordering::Release);
                tracing::warn!(
                    %error,
                    "could not remove {} (a deleted topic's or queue history's files) yet: the retention passes try again",
                    path.display()
                );
                false
            }
        }
    }

    /// Deletes every queue's delivery history files past its `history_retention`
    /// ([`QueueHistory::prune`], the rule the append path uses too), whether or not
    /// the queue delivered anything since: at open and at each retention pass, so an
    /// idle queue's old history goes as time passes, and a lowered retention
    /// (AlterQueue) takes effect at the next pass. Reads the queue definitions only:
    /// no queue engine is opened or woken. A failure is logged and tried again at the
    /// next pass.
    fn prune_histories(&self) {
        let now = self.context.clock.now_ms();
        let queues: Vec<(String, Arc<QueueHistory>, u64)> = {
            // Locked as a lookup of a history is: a queue deleted after this closes
            // the history handed out here, which then prunes nothing.
            let mut histories = self.lock_histories();
            let retentions: Vec<(String, u64)> = self.queues.read(|q| {
                q.iter()
                    .map(|queue| (queue.name.clone(), queue.config.history_retention_ms))
                    .collect()
            });
            let mut open = Vec::with_capacity(retentions.len());
            for (name, retention) in retentions {
                // A deleted namesake's directory is still in the way: no history yet
                // (the retention pass tries to move it first).
                if histories.left.contains(&name) {
                    continue;
                }
                match self.history(&mut histories, &name) {
                    Ok(history) => open.push((name, history, retention)),
                    Err(error) => {
                        tracing::warn!(queue = %name, %error, "could not prune the queue's delivery history; tried again at the next retention pass");
                    }
                }
            }
            open
        };
        // Each history under its own lock, not the store's: a slow directory fsync
        // holds up that queue's appends only.
        for (name, history, retention_ms) in queues {
            match history.prune(now, retention_ms) {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::debug!(queue = %name, removed, "deleted delivery history files past the queue's history retention")
                }
                Err(error) => {
                    tracing::warn!(queue = %name, %error, "could not delete the queue's delivery history files past its history retention; tried again at the next retention pass")
                }
            }
        }
    }

    /// Tries again to move the history directories of deleted queues that could not
    /// be moved at their deletion.
    fn retry_left_histories(&self) {
        let mut histories = self.lock_histories();
        let left: Vec<String> = histories.left.iter().cloned().collect();
        for name in left {
            match self.move_history_to_trash(&name) {
                Ok(moved) => {
                    histories.left.remove(&name);
                    if let Some(path) = moved {
                        self.remove_trashed(&path);
                    }
                    tracing::info!(queue = %name, "moved the delivery history of a deleted queue to the trash");
                }
                Err(error) => {
                    tracing::warn!(queue = %name, %error, "the delivery history of a deleted queue could not be moved to the trash; tried again at the next retention pass");
                }
            }
        }
    }
}

/// Removes everything in the data directory's `trash/` (deleted topics, and deleted
/// queues' histories). True when the trash is empty; what cannot be removed is logged
/// and left for the next try.
fn empty_trash(fs: &dyn FileSystem, dir: &Path) -> bool {
    let trash = dir.join("trash");
    let entries = match fs.read_dir(&trash) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(%error, "could not list {}; tried again at the next retention pass", trash.display());
            return false;
        }
    };
    let mut empty = true;
    for entry in entries {
        let path = trash.join(&entry.name);
        if let Err(error) = fs.remove_dir_all(&path) {
            tracing::warn!(%error, "could not remove {} (a deleted topic's files); tried again at the next retention pass", path.display());
            empty = false;
        }
    }
    empty
}

fn enforce_retention(inner: &Inner) -> Vec<(String, u32, RetentionOutcome)> {
    inner.retry_left_histories();
    inner.prune_histories();
    // Cleared before the trash is emptied: a removal failing meanwhile sets it again.
    if inner.trash_left.swap(false, Ordering::AcqRel) {
        if empty_trash(&*inner.context.fs, &inner.dir) {
            tracing::info!(
                "removed the files of deleted topics and queue histories left in the trash"
            );
        } else {
            inner.trash_left.store(true, Ordering::Release);
        }
    }
    let topics: Vec<_> = inner
        .topics
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let mut outcomes = Vec::new();
    for topic in topics {
        for partition in topic.partitions() {
            match partition.enforce_retention() {
                Ok(outcome) => outcomes.push((topic.name.clone(), partition.id(), outcome)),
                Err(error) => {
                    tracing::error!(topic = %topic.name, partition = partition.id(), %error, "retention failed")
                }
            }
        }
    }
    outcomes
}

/// The background thread: interval-policy flushes, and retention when configured.
fn start_housekeeping(
    inner: Weak<Inner>,
    retention_interval: Option<Duration>,
) -> Result<(crossbeam_channel::Sender<()>, JoinHandle<()>)> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let thread = std::thread::Builder::new()
        .name("tidelog-housekeeping".into())
        .spawn(move || {
            let mut last_retention = Instant::now();
            // Disconnection (the store closing) ends the loop; a timeout is a tick.
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(HOUSEKEEPING_TICK)
            {
                let Some(inner) = inner.upgrade() else { return };
                let topics: Vec<_> = inner
                    .topics
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for topic in &topics {
                    if let FsyncPolicy::IntervalMs(ms) = topic.config().fsync {
                        for partition in topic.partitions() {
                            if partition.interval_flush_due(ms) {
                                partition.request_flush();
                            }
                        }
                    }
                }
                if let Some(interval) = retention_interval
                    && last_retention.elapsed() >= interval
                {
                    enforce_retention(&inner);
                    last_retention = Instant::now();
                }
            }
        })
        .ctx(|| "starting the housekeeping thread")?;
    Ok((stop, thread))
}

/// Opens (creating or recovering) partitions `0..count` of topic `name` in `dir`.
fn open_partitions(
    name: &str,
    topic_id: TopicId,
    dir: &Path,
    count: u32,
    config: &Arc<TopicConfig>,
    context: &PartitionContext,
) -> Result<Vec<Arc<Partition>>> {
    (0..count)
        .map(|id| {
            Partition::open(
                name,
                topic_id,
                id,
                &dir.join(id.to_string()),
                config.clone(),
                context.clone(),
            )
        })
        .collect()
}

impl QueueHost for Store {
    fn queues(&self) -> &StateLog<Queues> {
        Store::queues(self)
    }

    fn queue_history(&self, name: &str) -> Result<Arc<QueueHistory>> {
        Store::queue_history(self, name)
    }

    fn live_queue_history(&self, name: &str, created_ms: i64) -> Result<Option<Arc<QueueHistory>>> {
        Store::live_queue_history(self, name, created_ms)
    }

    fn change_queues(&self, ops: Vec<QueueOp>) -> Result<Vec<u64>> {
        Store::change_queues(self, ops)
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        Store::topic(self, name)
    }

    fn create_topic(&self, name: &str, partitions: u32, config: TopicConfig) -> Result<Arc<Topic>> {
        Store::create_topic(self, name, partitions, config)
    }

    fn topics(&self) -> Vec<Arc<Topic>> {
        Store::topics(self)
    }

    fn offsets(&self) -> &OffsetStore {
        Store::offsets(self)
    }

    fn commit_offsets(
        &self,
        group: &str,
        commits: &[(Arc<Topic>, u32, u64, String)],
    ) -> Result<()> {
        Store::commit_offsets(self, group, commits)
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        Store::clock(self)
    }

    fn redrives(&self) -> &Mutex<()> {
        &self.inner.redrives
    }

    fn queue_changes(&self) -> &Mutex<()> {
        &self.inner.queue_changes
    }
}
