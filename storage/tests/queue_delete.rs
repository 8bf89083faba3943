//! Deleting a queue (or its topic) with its delivery history, while the queue's engine
//! still records decisions made before the delete: the delete stands once its state
//! change is durable, the deleted queue's history never reaches a queue created again
//! under its name, and history files that cannot be moved or removed yet do not fail
//! the delete (the retention passes finish the job). Through FaultyFs: a power cut at
//! every step; and a filesystem that refuses the history's removal (EIO, ENOSPC).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tidelog_storage::fs::{CrashOptions, FaultyFs, FileSystem, RefusedOp, RefusingFs};
use tidelog_storage::queue::history::query::{ListRequest, list_events};
use tidelog_storage::queue::history::{HistoryEvent, Outcome, QueueHistory};
use tidelog_storage::queue::{
    QueueConfig, QueueEngine, SettleAction, SettleRequest, StartAt, admin,
};
use tidelog_storage::{Error, ManualClock, NewRecord, Store, StoreOptions, TopicConfig};

mod common;
use common::work_queue;

const START_MS: i64 = 1_700_000_000_000;
const DAY_MS: u64 = 86_400_000;

fn open(
    fs: Arc<dyn FileSystem>,
    data: &Path,
    clock: &Arc<ManualClock>,
) -> Result<Arc<Store>, Error> {
    Store::open(
        data,
        StoreOptions {
            clock: clock.clone(),
            flush_threads: 1,
            retention_interval: None,
            fs,
            ..StoreOptions::default()
        },
    )
    .map(Arc::new)
}

/// Topic `jobs` with 4 messages.
fn topic(store: &Store) {
    let topic = store
        .create_topic("jobs", 1, TopicConfig::default())
        .unwrap();
    let records: Vec<NewRecord> = (0..4)
        .map(|i| NewRecord::value(Bytes::from(format!("job-{i}"))))
        .collect();
    topic
        .partition(0)
        .unwrap()
        .append_durable(&records)
        .unwrap();
}

/// Member `member` of queue `work` takes 2 messages and acks the first: 3 events.
fn work(store: &Arc<Store>, member: &str) {
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined(member);
    let delivered = engine.deliver(&[(member.into(), 2)]).unwrap();
    let first = &delivered[0].1[0];
    engine
        .settle(
            Some(member),
            &[SettleRequest {
                partition: 0,
                offset: first.record.offset,
                attempt: first.attempt,
                action: SettleAction::Ack { through: None },
            }],
        )
        .unwrap();
}

/// The members named by the events queue `work`'s history lists.
fn members_listed(history: &QueueHistory) -> Result<Vec<String>, Error> {
    Ok(list_events(
        history,
        &ListRequest {
            since_ms: i64::MIN,
            until_ms: i64::MAX,
            limit: 1000,
            cursor: None,
            queue_tag: 0,
        },
        |_| true,
        |_| Ok(true),
    )?
    .events
    .iter()
    .map(|e| e.member.to_string())
    .collect())
}

/// An event of a decision made before the delete, recorded after it (what an engine
/// in the middle of a call does).
fn stray() -> HistoryEvent {
    HistoryEvent {
        partition: 0,
        offset: 1,
        attempt: 1,
        at_ms: START_MS,
        outcome: Outcome::Acked,
        deadline_ms: 0,
        member: "old".into(),
        reason: String::new(),
    }
}

fn history_dir(data: &Path) -> std::path::PathBuf {
    data.join("state/history/work")
}

fn trash_entries(data: &Path) -> usize {
    std::fs::read_dir(data.join("trash")).unwrap().count()
}

/// The race the broker ran into: a queue's history handed out before its delete (an
/// engine in the middle of a call) records after the delete. Nothing may come of it:
/// no directory re-created, nothing listed by a queue created again under the name.
#[test]
fn a_history_held_across_the_delete_records_nothing_and_a_new_queue_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn FileSystem> = Arc::new(FaultyFs::new(dir.path(), 1).unwrap());
    let clock = ManualClock::new(START_MS);
    let store = open(fs, dir.path(), &clock).unwrap();
    topic(&store);
    work_queue(&store);
    work(&store, "old");
    let held = store.queue_history("work").unwrap();
    assert_eq!(members_listed(&held).unwrap().len(), 3);

    admin::delete_queue(&*store, "work").unwrap();
    assert!(!history_dir(dir.path()).exists());
    held.append(vec![stray()], DAY_MS)
        .expect("a deleted queue's late events are dropped quietly");
    assert!(
        !history_dir(dir.path()).exists(),
        "a late append re-created the deleted queue's history"
    );
    assert_eq!(
        trash_entries(dir.path()),
        0,
        "the moved history was removed"
    );

    work_queue(&store);
    assert_eq!(
        members_listed(&store.queue_history("work").unwrap()).unwrap(),
        Vec::<String>::new(),
        "a queue created again lists the deleted one's events"
    );
    work(&store, "new");
    let members = members_listed(&store.queue_history("work").unwrap()).unwrap();
    assert_eq!(members, vec!["new"; 3]);
    // The late append goes nowhere after a reopen either.
    held.append(vec![stray()], DAY_MS).unwrap();
    drop(held);
    store.close().unwrap();
    drop(store);
    let fs: Arc<dyn FileSystem> = Arc::new(FaultyFs::new(dir.path(), 2).unwrap());
    let store = open(fs, dir.path(), &clock).unwrap();
    let members = members_listed(&store.queue_history("work").unwrap()).unwrap();
    assert_eq!(members, vec!["new"; 3]);
}

/// The delete, a late event of the deleted queue, and the queue created again and
/// worked: cut by a power cut at every filesystem operation.
fn delete_workload(store: &Arc<Store>) -> Result<(), Error> {
    let held = store.queue_history("work")?;
    admin::delete_queue(&**store, "work")?;
    let _ = held.append(vec![stray()], DAY_MS);
    admin::create_queue(
        &**store,
        "work",
        "jobs",
        StartAt::Earliest,
        QueueConfig::defaults_for("jobs"),
    )?;
    let mut engine = QueueEngine::open(store.clone(), "work")?;
    engine.member_joined("new");
    engine.deliver(&[("new".into(), 1)])?;
    Ok(())
}

#[test]
fn a_power_cut_at_every_step_of_a_delete_with_its_history() {
    let setup = |fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>| {
        let store = open(Arc::new(fs.clone()), data, clock).unwrap();
        topic(&store);
        work_queue(&store);
        work(&store, "old");
        store
    };
    let total = {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), 0).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = setup(&fs, dir.path(), &clock);
        let before = fs.ops();
        delete_workload(&store).unwrap();
        fs.ops() - before
    };
    assert!(
        total > 10,
        "the workload takes {total} filesystem operations"
    );
    for cut in 0..=total {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), cut).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = setup(&fs, dir.path(), &clock);
        fs.power_off_after(cut);
        let deleted = admin::queue_status(&*store, "work", START_MS).is_ok()
            && delete_workload(&store).is_ok();
        drop(store);
        let options = if cut % 3 == 0 {
            CrashOptions::keep_some(cut)
        } else {
            CrashOptions::lose_unsynced()
        };
        fs.crash(options).unwrap();
        let context = format!("power cut after {cut} of {total} operations");
        let store = open(Arc::new(fs.clone()), dir.path(), &clock)
            .unwrap_or_else(|e| panic!("{context}: the store does not open: {e}"));
        assert_eq!(
            trash_entries(dir.path()),
            0,
            "{context}: the open empties the trash"
        );
        let exists = admin::queue_status(&*store, "work", START_MS).is_ok();
        let members = if exists {
            members_listed(&store.queue_history("work").unwrap()).unwrap()
        } else {
            assert!(
                !history_dir(dir.path()).exists(),
                "{context}: the history of a deleted queue is left"
            );
            Vec::new()
        };
        // The old queue with all its history, or a new one with none of it.
        let old = members.iter().filter(|m| *m == "old").count();
        let new = members.iter().filter(|m| *m == "new").count();
        assert!((old == 3 && new == 0) || old == 0, "{context}: {members:?}");
        if deleted {
            assert!(
                exists && old == 0,
                "{context}: the workload ran, {members:?}"
            );
        }
        // A queue of that name (created again if need be) starts without the old events.
        if old == 3 {
            admin::delete_queue(&*store, "work").unwrap();
        }
        if old == 3 || !exists {
            work_queue(&store);
        }
        work(&store, "later");
        let members = members_listed(&store.queue_history("work").unwrap()).unwrap();
        assert!(
            !members.iter().any(|m| m == "old"),
            "{context}: {members:?}"
        );
    }
}

const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// EIO moving (or removing) the history of a deleted queue: the delete stands and is
/// answered; a queue created again under the name is refused its history (never
/// shown the old events) until a retention pass moves the old one away.
#[test]
fn eio_on_the_history_removal_does_not_fail_the_delete_and_a_retention_pass_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RefusingFs::default());
    let clock = ManualClock::new(START_MS);
    let store = open(fs.clone(), dir.path(), &clock).unwrap();
    topic(&store);
    work_queue(&store);
    work(&store, "old");

    fs.refuse(RefusedOp::Rename, "state/history/work", EIO);
    fs.refuse(RefusedOp::RemoveDirAll, "state/history/work", EIO);
    admin::delete_queue(&*store, "work").expect("the delete stands");
    assert!(admin::queue_status(&*store, "work", START_MS).is_err());
    assert!(
        history_dir(dir.path()).exists(),
        "the refused directory stays"
    );
    work_queue(&store);
    let refused = store.queue_history("work").map(|h| members_listed(&h));
    assert!(
        !matches!(refused, Ok(Ok(ref members)) if !members.is_empty()),
        "a queue created again lists the deleted one's events: {refused:?}"
    );
    store.enforce_retention();
    assert!(history_dir(dir.path()).exists(), "still refused");

    fs.allow_all();
    store.enforce_retention();
    assert!(!history_dir(dir.path()).exists());
    assert_eq!(trash_entries(dir.path()), 0);
    assert_eq!(
        members_listed(&store.queue_history("work").unwrap()).unwrap(),
        Vec::<String>::new()
    );
    work(&store, "new");
    assert_eq!(
        members_listed(&store.queue_history("work").unwrap()).unwrap(),
        vec!["new"; 3]
    );
}

/// ENOSPC removing the history's files (moved into the trash): the delete stands, the
/// name is free for a new queue with an empty history at once, and a retention pass
/// removes the files.
#[test]
fn enospc_removing_the_history_leaves_it_in_the_trash_for_the_retention_passes() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RefusingFs::default());
    let clock = ManualClock::new(START_MS);
    let store = open(fs.clone(), dir.path(), &clock).unwrap();
    topic(&store);
    work_queue(&store);
    work(&store, "old");

    fs.refuse(RefusedOp::RemoveDirAll, "history", ENOSPC);
    admin::delete_queue(&*store, "work").expect("the delete stands");
    assert!(!history_dir(dir.path()).exists());
    assert_eq!(
        trash_entries(dir.path()),
        1,
        "the history waits in the trash"
    );
    work_queue(&store);
    assert_eq!(
        members_listed(&store.queue_history("work").unwrap()).unwrap(),
        Vec::<String>::new()
    );
    store.enforce_retention();
    assert_eq!(trash_entries(dir.path()), 1);
    fs.allow_all();
    store.enforce_retention();
    assert_eq!(trash_entries(dir.path()), 0, "the next pass removed it");
}

/// DeleteTopic of a topic whose queue's history cannot be removed: the delete stands
/// and is answered, and the topic's own files still go (not left in the trash for
/// ever).
#[test]
fn a_topic_delete_whose_queue_history_cannot_be_removed_succeeds_and_removes_the_topic_files() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RefusingFs::default());
    let clock = ManualClock::new(START_MS);
    let store = open(fs.clone(), dir.path(), &clock).unwrap();
    topic(&store);
    work_queue(&store);
    work(&store, "old");

    fs.refuse(RefusedOp::Rename, "state/history/work", EIO);
    fs.refuse(RefusedOp::RemoveDirAll, "state/history/work", EIO);
    store.delete_topic("jobs").expect("the delete stands");
    assert!(matches!(store.topic("jobs"), Err(Error::NotFound { .. })));
    assert!(admin::queue_status(&*store, "work", START_MS).is_err());
    assert_eq!(trash_entries(dir.path()), 0, "the topic's files went");
    fs.allow_all();
    store.enforce_retention();
    assert!(!history_dir(dir.path()).exists());
    assert_eq!(trash_entries(dir.path()), 0);
}

/// A power cut at every step of a topic's delete: after the restart the topic is there
/// with its queue and its group's offsets, or it is gone and so are they (the open
/// finishes a delete the cut interrupted). So a topic created again under the name
/// gets a queue of the old name afresh, from its own first message, and its group
/// starts without the old commits. Before, a cut between the topic's move to the
/// trash and the removal of its state left the queue, which then read the new topic
/// from the old topic's positions, and skipped its first messages.
#[test]
fn a_power_cut_at_every_step_of_a_topic_delete_leaves_no_queue_or_offsets_behind() {
    let setup = |fs: &FaultyFs, data: &Path, clock: &Arc<ManualClock>| {
        let store = open(Arc::new(fs.clone()), data, clock).unwrap();
        topic(&store);
        work_queue(&store);
        work(&store, "old");
        store
            .offsets()
            .commit("billing", &[("jobs".into(), 0, 3, String::new())])
            .unwrap();
        store
    };
    let total = {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), 0).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = setup(&fs, dir.path(), &clock);
        let before = fs.ops();
        store.delete_topic("jobs").unwrap();
        fs.ops() - before
    };
    assert!(total > 3, "the delete takes {total} filesystem operations");
    for cut in 0..=total {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(dir.path(), cut).unwrap();
        let clock = ManualClock::new(START_MS);
        let store = setup(&fs, dir.path(), &clock);
        fs.power_off_after(cut);
        let deleted = store.delete_topic("jobs").is_ok();
        drop(store);
        let options = if cut % 2 == 0 {
            CrashOptions::keep_some(cut)
        } else {
            CrashOptions::lose_unsynced()
        };
        fs.crash(options).unwrap();
        let context = format!("power cut after {cut} of {total} operations");
        let store = open(Arc::new(fs.clone()), dir.path(), &clock)
            .unwrap_or_else(|e| panic!("{context}: the store does not open: {e}"));
        let topic_there = store.topic("jobs").is_ok();
        let queue_there = admin::queue_status(&*store, "work", START_MS).is_ok();
        let offsets_there = store.offsets().fetch("billing", "jobs", 0).is_some();
        assert_eq!(
            (queue_there, offsets_there),
            (topic_there, topic_there),
            "{context}: topic {topic_there}, queue {queue_there}, offsets {offsets_there}"
        );
        if deleted {
            assert!(!topic_there, "{context}: the delete was answered");
        }
        if topic_there {
            continue;
        }
        // Created again: the queue of the old name starts at the new topic's start.
        topic(&store);
        assert!(
            store.offsets().fetch("billing", "jobs", 0).is_none(),
            "{context}"
        );
        work_queue(&store);
        let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
        engine.member_joined("new");
        let delivered = engine.deliver(&[("new".into(), 4)]).unwrap();
        let offsets: Vec<u64> = delivered[0].1.iter().map(|d| d.record.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2, 3], "{context}");
    }
}

/// A queue left on a topic that is gone (its delete's removal of the queues failed
/// while the broker ran on) is removed when a topic of the name is created, as the
/// offsets are: the new topic's queue starts afresh.
#[test]
fn creating_a_topic_removes_a_queue_a_deleted_namesake_left() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(Arc::new(tidelog_storage::OsFs), dir.path(), &clock).unwrap();
    topic(&store);
    store.delete_topic("jobs").unwrap();
    // What a failed removal leaves: a queue on the topic that went, past its checks.
    store
        .change_queues(vec![tidelog_storage::queue::QueueOp::Create {
            name: "work".into(),
            topic: "jobs".into(),
            config: QueueConfig::defaults_for("jobs"),
            levels: 1,
            created_ms: START_MS,
            cursors: vec![(0, vec![3])],
        }])
        .unwrap();
    topic(&store);
    assert!(
        admin::queue_status(&*store, "work", START_MS).is_err(),
        "the queue the deleted topic left is gone"
    );
    work_queue(&store);
    let mut engine = QueueEngine::open(store.clone(), "work").unwrap();
    engine.member_joined("new");
    assert_eq!(engine.deliver(&[("new".into(), 4)]).unwrap()[0].1.len(), 4);
}

/// An engine of a queue that was deleted and created again under its name (a runtime
/// of the old queue may run a step before it stops) acts on nothing of the new queue
/// and records nothing in its history: its calls find its queue gone. Before, it looked
/// its queue up by name: under load the new queue's history listed the old queue's
/// deliveries, and the old engine could lease and settle the new queue's messages.
#[test]
fn an_engine_of_a_deleted_queue_never_acts_on_a_new_queue_of_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let store = open(Arc::new(tidelog_storage::OsFs), dir.path(), &clock).unwrap();
    topic(&store);
    work_queue(&store);
    let mut old = QueueEngine::open(store.clone(), "work").unwrap();
    old.member_joined("old");
    assert_eq!(old.deliver(&[("old".into(), 1)]).unwrap()[0].1.len(), 1);
    admin::delete_queue(&*store, "work").unwrap();
    clock.advance_ms(1);
    work_queue(&store);
    // The old engine's every step finds its queue gone.
    assert!(matches!(
        old.deliver(&[("old".into(), 2)]),
        Err(Error::NotFound { .. })
    ));
    let settled = old.settle(
        Some("old"),
        &[SettleRequest {
            partition: 0,
            offset: 0,
            attempt: 1,
            action: SettleAction::Ack { through: None },
        }],
    );
    assert!(
        settled.is_err()
            || settled.as_ref().is_ok_and(|o| o
                .iter()
                .all(|o| !matches!(o, tidelog_storage::queue::SettleOutcome::Ok { .. }))),
        "{settled:?}"
    );
    let _ = old.tick();
    let _ = old.take_delayed();
    // The new queue has all four messages ready and an empty history.
    let status = admin::queue_status(&*store, "work", START_MS + 1).unwrap();
    assert_eq!((status.ready, status.unacked), (4, 0), "{status:?}");
    assert_eq!(
        members_listed(&store.queue_history("work").unwrap()).unwrap(),
        Vec::<String>::new()
    );
}
