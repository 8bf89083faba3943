//! Deleting a topic: names of every allowed length; a topic that cannot be moved away
//! (nothing is deleted); a commit checked before the delete; and files that cannot be removed
//! yet (out of file descriptors, an I/O error): the delete stands (its directory left
//! `topics/` durably), the call succeeds, and the files go at a later retention pass,
//! or at the next open.

use std::path::Path;
use std::sync::Arc;

use tidelog_storage::fs::{RefusedOp, RefusingFs};
use tidelog_storage::{Error, NewRecord, Placed, Store, StoreOptions, TopicConfig};

/// EMFILE, what `tidelogd` meets out of file descriptors.
const EMFILE: i32 = 24;

fn trash_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("trash")).unwrap().count()
}

/// A store in `dir` on `fs` (the real file system by default), without retention
/// passes of its own: the tests run them.
fn open_store(dir: &Path, fs: Option<&Arc<RefusingFs>>) -> Store {
    let mut options = StoreOptions {
        retention_interval: None,
        ..StoreOptions::default()
    };
    if let Some(fs) = fs {
        options.fs = fs.clone();
    }
    Store::open(dir, options).unwrap()
}

#[test]
fn a_delete_whose_files_cannot_be_removed_yet_succeeds_and_they_go_later() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RefusingFs::default());
    let open = || open_store(dir.path(), Some(&fs));
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

/// EIO, what a failing disk answers.
const EIO: i32 = 5;

#[test]
fn topics_with_names_of_any_allowed_length_can_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None);
    // 249 bytes, the longest name allowed: its trash name must still fit in 255 bytes.
    for name in ["a".to_string(), "b".repeat(236), "c".repeat(249)] {
        store
            .create_topic(&name, 2, TopicConfig::default())
            .unwrap();
        let topic = store.topic(&name).unwrap();
        topic
            .append(1, vec![NewRecord::value(b"v".to_vec()); 3])
            .unwrap();
        store
            .delete_topic(&name)
            .unwrap_or_else(|e| panic!("deleting a {}-byte topic name: {e}", name.len()));
        assert!(matches!(store.topic(&name), Err(Error::NotFound { .. })));
        assert_eq!(trash_entries(dir.path()), 0, "its files went");
        // Created again under the name, it starts empty.
        store
            .create_topic(&name, 1, TopicConfig::default())
            .unwrap();
        assert_eq!(
            store.topic(&name).unwrap().partitions()[0]
                .end_offset()
                .unwrap(),
            0
        );
    }
    store.close().unwrap();
}

#[test]
fn a_delete_that_cannot_move_the_topic_away_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RefusingFs::default());
    let open = || open_store(dir.path(), Some(&fs));
    let store = open();
    store
        .create_topic("held", 2, TopicConfig::default())
        .unwrap();
    store
        .topic("held")
        .unwrap()
        .append(1, vec![NewRecord::value(vec![b'x'; 3000]); 40])
        .unwrap();

    fs.refuse(RefusedOp::Rename, "held", EIO);
    let error = store
        .delete_topic("held")
        .expect_err("the topic's directory could not leave topics/");
    assert!(
        error.to_string().contains("moving"),
        "the error says what failed: {error}"
    );
    // Still there, with its messages, and writable: the same as after a restart.
    let topic = store
        .topic("held")
        .expect("a failed delete deletes nothing");
    assert_eq!(topic.partitions()[1].end_offset().unwrap(), 40);
    let read = topic.partitions()[1].read(0, 100, u64::MAX).unwrap();
    assert_eq!(read.records.len(), 40);
    let placed = topic
        .append(1, vec![NewRecord::value(b"after".to_vec())])
        .unwrap();
    assert!(
        matches!(placed, Placed::All(ref a) if a.base_offset == 40),
        "appended after the 40: {placed:?}"
    );

    fs.allow_all();
    store.delete_topic("held").unwrap();
    assert!(matches!(store.topic("held"), Err(Error::NotFound { .. })));
    store.close().unwrap();
    drop(store);
    let store = open();
    assert!(
        matches!(store.topic("held"), Err(Error::NotFound { .. })),
        "the second delete stands across a restart"
    );
}

#[test]
fn a_topic_created_again_never_inherits_its_deleted_namesakes_commits() {
    // A crash after a DeleteTopic's directory left `topics/` but before its offsets'
    // delete was durable (or that delete failing) leaves the old commits behind.
    let dir = tempfile::tempdir().unwrap();
    let open = || open_store(dir.path(), None);
    let store = open();
    store
        .create_topic("orders", 1, TopicConfig::default())
        .unwrap();
    store
        .offsets()
        .commit("billing", &[("orders".to_string(), 0, 500, String::new())])
        .unwrap();
    store.close().unwrap();
    drop(store);
    std::fs::rename(
        dir.path().join("topics").join("orders"),
        dir.path().join("trash").join("crashed-delete"),
    )
    .unwrap();

    let store = open();
    assert!(matches!(store.topic("orders"), Err(Error::NotFound { .. })));
    assert_eq!(
        store.offsets().fetch("billing", "orders", 0),
        None,
        "the open finishes the crashed delete: its commits go"
    );
    // What a delete whose removal of the offsets failed leaves while the broker runs
    // on: the creation removes it.
    store
        .offsets()
        .commit("billing", &[("orders".to_string(), 0, 500, String::new())])
        .unwrap();
    store
        .create_topic("orders", 1, TopicConfig::default())
        .unwrap();
    assert_eq!(
        store.offsets().fetch("billing", "orders", 0),
        None,
        "a new topic starts without the old topic's commits (the group would skip 500 messages)"
    );
}

#[test]
fn a_commit_checked_against_a_deleted_topic_never_lands_on_its_namesake() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), None);
    let commit = |topic: &Arc<tidelog_storage::Topic>, offset: u64| {
        store.commit_offsets("billing", &[(topic.clone(), 0, offset, String::new())])
    };
    store
        .create_topic("orders", 1, TopicConfig::default())
        .unwrap();
    let old = store.topic("orders").unwrap();
    commit(&old, 1).unwrap();
    store.delete_topic("orders").unwrap();
    store
        .create_topic("orders", 1, TopicConfig::default())
        .unwrap();
    let error = commit(&old, 500).expect_err("checked against the deleted topic");
    assert!(matches!(error, Error::NotFound { .. }), "{error}");
    assert_eq!(store.offsets().fetch("billing", "orders", 0), None);
    let new = store.topic("orders").unwrap();
    commit(&new, 0).unwrap();
    assert_eq!(
        store
            .offsets()
            .fetch("billing", "orders", 0)
            .map(|c| c.offset),
        Some(0)
    );
}
