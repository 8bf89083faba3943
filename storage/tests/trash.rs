//! Deleting a topic when its files cannot be removed yet (out of file descriptors, an
//! I/O error): the delete stands (its directory left `topics/` durably), the call
//! succeeds, and the files go at a later retention pass, or at the next open.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tidelog_storage::fs::{DirEntry, FileSystem, FsFile, Metadata, OpenMode, OsFs, SyncDirError};
use tidelog_storage::{Error, NewRecord, Store, StoreOptions, TopicConfig};

/// The real filesystem, but `remove_dir_all` fails with EMFILE while `refuse` is set.
#[derive(Debug, Default)]
struct NoRemoval {
    refuse: AtomicBool,
}

impl FileSystem for NoRemoval {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FsFile>> {
        OsFs.open(path, mode)
    }
    fn read_file(&self, path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        OsFs.read_file(path, limit)
    }
    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        OsFs.metadata(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        OsFs.read_dir(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(24)); // EMFILE
        }
        OsFs.remove_dir_all(path)
    }
    fn sync_dir(&self, path: &Path) -> Result<(), SyncDirError> {
        OsFs.sync_dir(path)
    }
    fn map(&self, path: &Path, len: usize) -> io::Result<Bytes> {
        OsFs.map(path, len)
    }
}

fn trash_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("trash")).unwrap().count()
}

#[test]
fn a_delete_whose_files_cannot_be_removed_yet_succeeds_and_they_go_later() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(NoRemoval::default());
    let open = || {
        Store::open(
            dir.path(),
            StoreOptions {
                fs: fs.clone(),
                retention_interval: None,
                ..StoreOptions::default()
            },
        )
        .unwrap()
    };
    let store = open();
    for name in ["gone", "kept"] {
        store.create_topic(name, 2, TopicConfig::default()).unwrap();
        let topic = store.topic(name).unwrap();
        topic
            .append(1, vec![NewRecord::value(vec![b'x'; 3000]); 40])
            .unwrap();
    }

    fs.refuse.store(true, Ordering::SeqCst);
    store
        .delete_topic("gone")
        .expect("the delete stands though its files stay for now");
    assert!(matches!(store.topic("gone"), Err(Error::NotFound { .. })));
    assert_eq!(trash_entries(dir.path()), 1, "the files wait in the trash");
    // A pass while removal still fails leaves them; the store goes on serving.
    store.enforce_retention();
    assert_eq!(trash_entries(dir.path()), 1);
    store.topic("kept").unwrap();
    // The same name can be created again meanwhile.
    store
        .create_topic("gone", 1, TopicConfig::default())
        .unwrap();

    fs.refuse.store(false, Ordering::SeqCst);
    store.enforce_retention();
    assert_eq!(trash_entries(dir.path()), 0, "the next pass removed them");
    store.close().unwrap();
    drop(store);

    // Left at close: an open that cannot remove them still opens, the next one does.
    let store = open();
    store.delete_topic("gone").unwrap();
    store.close().unwrap();
    drop(store);
    fs.refuse.store(true, Ordering::SeqCst);
    let _ = std::fs::create_dir(dir.path().join("trash").join("leftover-1"));
    let store = open();
    assert_eq!(trash_entries(dir.path()), 1);
    store.topic("kept").unwrap();
    fs.refuse.store(false, Ordering::SeqCst);
    store.enforce_retention();
    assert_eq!(trash_entries(dir.path()), 0);
}
