//! Deleting a topic when its files cannot be removed yet (out of file descriptors, an
//! I/O error): the delete stands (its directory left `topics/` durably), the call
//! succeeds, and the files go at a later retention pass, or at the next open.

use std::path::Path;
use std::sync::Arc;

use tidelog_storage::fs::{RefusedOp, RefusingFs};
use tidelog_storage::{Error, NewRecord, Store, StoreOptions, TopicConfig};

/// EMFILE, what `tidelogd` meets out of file descriptors.
const EMFILE: i32 = 24;

fn trash_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("trash")).unwrap().count()
}

#[test]
fn a_delete_whose_files_cannot_be_removed_yet_succeeds_and_they_go_later() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RefusingFs::default());
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

    fs.refuse(RefusedOp::RemoveDirAll, "", EMFILE);
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

    fs.allow_all();
    store.enforce_retention();
    assert_eq!(trash_entries(dir.path()), 0, "the next pass removed them");
    store.close().unwrap();
    drop(store);

    // Left at close: an open that cannot remove them still opens, the next one does.
    let store = open();
    store.delete_topic("gone").unwrap();
    store.close().unwrap();
    drop(store);
    fs.refuse(RefusedOp::RemoveDirAll, "", EMFILE);
    let _ = std::fs::create_dir(dir.path().join("trash").join("leftover-1"));
    let store = open();
    assert_eq!(trash_entries(dir.path()), 1);
    store.topic("kept").unwrap();
    fs.allow_all();
    store.enforce_retention();
    assert_eq!(trash_entries(dir.path()), 0);
}
