//! Unit tests of the group coordinator: joins, rebalances, sessions, patterns.
use super::*;
use tidelog_storage::{ManualClock, StoreOptions, TopicConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    coordinator: Arc<GroupCoordinator>,
}

fn fixture(partitions: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let store = Store::open(
        dir.path(),
        StoreOptions {
            clock: clock.clone(),
            retention_interval: None,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    store
        .create_topic("t", partitions, TopicConfig::default())
        .unwrap();
    store.create_topic("u", 2, TopicConfig::default()).unwrap();
    let coordinator = Arc::new(GroupCoordinator::new(Arc::new(store), clock.clone()));
    Fixture {
        _dir: dir,
        clock,
        coordinator,
    }
}

fn request(member_id: &str, topic: &str, session_timeout_ms: u64) -> JoinRequest {
    JoinRequest {
        group_id: "g".into(),
        member_id: member_id.into(),
        subscription: Subscription::Topic(topic.into()),
        client_id: "app".into(),
        client_address: "127.0.0.1:1".into(),
        session_timeout_ms,
        filter: String::new(),
    }
}

/// Drains a control channel, returning the last Assign (and whether End came).
fn last_assign(joined: &mut Joined) -> (Option<(u64, Vec<u32>)>, Option<Status>) {
    let mut assign = None;
    let mut end = None;
    while let Ok(control) = joined.control.try_recv() {
        match control {
            Control::Assign {
                generation,
                partitions,
                ..
            } => assign = Some((generation, partitions.into_iter().map(|(_, p)| p).collect())),
            Control::End(status) => end = Some(status),
            Control::HandOver { .. } => {}
        }
    }
    (assign, end)
}

#[tokio::test]
async fn joins_and_leaves_rebalance_with_increasing_generations() {
    let f = fixture(6);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    assert!(a.member_id.starts_with("app-"));
    assert_eq!(last_assign(&mut a).0, Some((1, vec![0, 1, 2, 3, 4, 5])));
    let mut b = c.join(request("", "t", 0)).await.unwrap();
    let mut cc = c.join(request("", "t", 0)).await.unwrap();
    let (ga, pa) = last_assign(&mut a).0.unwrap();
    let (gb, pb) = last_assign(&mut b).0.unwrap();
    let (gc, pc) = last_assign(&mut cc).0.unwrap();
    assert_eq!((ga, gb, gc), (3, 3, 3));
    let mut all: Vec<u32> = [pa, pb, pc].concat();
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);

    c.stream_ended("g", &b.member_id, b.stream_id);
    let (ga, pa) = last_assign(&mut a).0.unwrap();
    let (gc, pc) = last_assign(&mut cc).0.unwrap();
    assert_eq!((ga, gc), (4, 4));
    assert_eq!(pa.len() + pc.len(), 6);
    assert_eq!(c.live_member_count("g"), 2);
    let view = c.describe_group("g").unwrap();
    assert_eq!(view.generation, 4);
    assert_eq!(view.status, GroupStatus::Rebalancing);
    for m in [&a, &cc] {
        c.assignment_delivered("g", &m.member_id, m.stream_id, 4);
    }
    assert_eq!(c.describe_group("g").unwrap().status, GroupStatus::Stable);
}

#[tokio::test]
async fn commit_rules_generation_member_and_ownership() {
    let f = fixture(4);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    let mut b = c.join(request("", "t", 0)).await.unwrap();
    let (generation, pa) = last_assign(&mut a).0.unwrap();
    let (_, pb) = last_assign(&mut b).0.unwrap();
    let own: Vec<(String, u32)> = pa.iter().map(|p| ("t".to_string(), *p)).collect();
    c.authorize_member_commit("g", &a.member_id, generation, &own)
        .unwrap();

    let stale = c
        .authorize_member_commit("g", &a.member_id, generation - 1, &own)
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    assert!(stale.message().contains("stale"), "{}", stale.message());
    // Both member refusals name the current generation, so a client can tell whether
    // an Assignment is coming; an unknown member gets none.
    let named = |status: &Status| {
        status
            .metadata()
            .get(tidelog_proto::GROUP_GENERATION_METADATA)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(named(&stale), Some(generation.to_string()));

    // A generation the broker never gave out is not "stale": it is ahead, and the
    // member is told to rejoin.
    let ahead = c
        .authorize_member_commit("g", &a.member_id, generation + 1, &own)
        .unwrap_err();
    assert_eq!(ahead.code(), tonic::Code::FailedPrecondition);
    assert!(!ahead.message().contains("stale"), "{}", ahead.message());
    assert!(
        ahead.message().contains(&format!(
            "generation {} of group \"g\" is ahead of the group's current generation {generation}",
            generation + 1
        )),
        "{}",
        ahead.message()
    );
    assert!(ahead.message().contains("rejoin"), "{}", ahead.message());
    assert_eq!(named(&ahead), Some(generation.to_string()));

    let foreign = vec![("t".to_string(), pb[0])];
    let err = c
        .authorize_member_commit("g", &a.member_id, generation, &foreign)
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(named(&err), Some(generation.to_string()));

    let err = c
        .authorize_member_commit("g", "nobody", generation, &own)
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(named(&err), None);
    let err = c
        .authorize_member_commit("other", &a.member_id, generation, &own)
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // Admin commits are refused while members are live.
    let err = c.require_no_live_members("g", "commit").unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // After a rebalance the old generation is stale.
    c.stream_ended("g", &b.member_id, b.stream_id);
    let err = c
        .authorize_member_commit("g", &a.member_id, generation, &own)
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let (new_generation, all) = last_assign(&mut a).0.unwrap();
    assert_eq!(all, vec![0, 1, 2, 3]);
    let every: Vec<(String, u32)> = all.iter().map(|p| ("t".to_string(), *p)).collect();
    c.authorize_member_commit("g", &a.member_id, new_generation, &every)
        .unwrap();

    c.stream_ended("g", &a.member_id, a.stream_id);
    c.require_no_live_members("g", "commit").unwrap();
}

#[tokio::test]
async fn partitions_kept_in_a_handover_window_may_be_committed_until_handed_over() {
    let f = fixture(4);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    let (_, all) = last_assign(&mut a).0.unwrap();
    assert_eq!(all, vec![0, 1, 2, 3]);
    let mut b = c.join(request("", "t", 0)).await.unwrap();
    let (generation, kept) = last_assign(&mut a).0.unwrap();
    let (_, taken) = last_assign(&mut b).0.unwrap();
    let revoked: Vec<(String, u32)> = taken.iter().map(|p| ("t".to_string(), *p)).collect();
    // Not kept: a commit of a revoked partition is refused.
    assert!(
        c.authorize_member_commit("g", &a.member_id, generation, &revoked)
            .is_err()
    );
    // Kept by a's task: allowed in the current generation only.
    c.set_revoking(
        "g",
        &a.member_id,
        a.stream_id,
        taken.iter().map(|p| ("t".to_string(), *p)).collect(),
    );
    c.authorize_member_commit("g", &a.member_id, generation, &revoked)
        .unwrap();
    assert!(
        c.authorize_member_commit("g", &a.member_id, generation - 1, &revoked)
            .is_err()
    );
    // Not for someone else, nor changed by a stale stream.
    c.set_revoking("g", &a.member_id, a.stream_id + 100, BTreeSet::new());
    c.authorize_member_commit("g", &a.member_id, generation, &revoked)
        .unwrap();
    let b_kept: Vec<(String, u32)> = kept.iter().map(|p| ("t".to_string(), *p)).collect();
    assert!(
        c.authorize_member_commit("g", &b.member_id, generation, &b_kept)
            .is_err()
    );
    // A commit tells the task to hand over; then the task clears the set.
    c.member_committed("g", &a.member_id, generation);
    let mut handed = None;
    while let Ok(control) = a.control.try_recv() {
        if let Control::HandOver { generation } = control {
            handed = Some(generation);
        }
    }
    assert_eq!(handed, Some(generation));
    c.set_revoking("g", &a.member_id, a.stream_id, BTreeSet::new());
    assert!(
        c.authorize_member_commit("g", &a.member_id, generation, &revoked)
            .is_err()
    );
    // Nothing kept: no HandOver is sent.
    c.member_committed("g", &a.member_id, generation);
    assert!(a.control.try_recv().is_err());
    // The end of the stream forgets what was kept.
    c.set_revoking(
        "g",
        &a.member_id,
        a.stream_id,
        taken.iter().map(|p| ("t".to_string(), *p)).collect(),
    );
    c.stream_ended("g", &a.member_id, a.stream_id);
    let _ = b;
}

#[tokio::test]
async fn session_timeout_keeps_partitions_until_expiry_and_reconnect_keeps_them() {
    let f = fixture(4);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 500)).await.unwrap();
    let mut b = c.join(request("", "t", 500)).await.unwrap();
    let (generation, pb) = last_assign(&mut b).0.unwrap();
    last_assign(&mut a);

    // b's stream ends: kept, no rebalance. An offset tool is refused, told how many
    // are connected and how long the kept one has left.
    c.stream_ended("g", &b.member_id, b.stream_id);
    assert_eq!(c.live_member_count("g"), 2);
    let refused = c.require_no_live_members("g", "ResetOffsets").unwrap_err();
    assert!(
        refused.message().contains(
            "has 2 live member(s); 1 of them disconnected and kept for a reconnect by their session timeout, the last for 1 s more"
        ),
        "{}",
        refused.message()
    );
    assert_eq!(last_assign(&mut a).0, None);
    assert_eq!(c.expire_sessions(), Some(1_000_000 + 500));

    // Reconnect within the timeout: same partitions, same generation.
    let mut b2 = c.join(request(&b.member_id, "t", 500)).await.unwrap();
    assert_eq!(b2.member_id, b.member_id);
    assert_eq!(last_assign(&mut b2).0, Some((generation, pb.clone())));
    assert_eq!(last_assign(&mut a).0, None);

    // Ends again, and this time the timeout passes.
    c.stream_ended("g", &b2.member_id, b2.stream_id);
    f.clock.advance_ms(499);
    c.expire_sessions();
    assert_eq!(c.live_member_count("g"), 2);
    f.clock.advance_ms(1);
    assert_eq!(c.expire_sessions(), None);
    assert_eq!(c.live_member_count("g"), 1);
    assert_eq!(
        last_assign(&mut a).0,
        Some((generation + 1, vec![0, 1, 2, 3]))
    );
}

#[tokio::test]
async fn takeover_aborts_the_old_stream_and_stale_end_is_ignored() {
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    let (generation, _) = last_assign(&mut a).0.unwrap();
    let mut a2 = c.join(request(&a.member_id, "t", 0)).await.unwrap();
    let (_, end) = last_assign(&mut a);
    assert_eq!(end.unwrap().code(), tonic::Code::Aborted);
    assert_eq!(last_assign(&mut a2).0, Some((generation, vec![0, 1])));
    // The old task reports its end: the member stays (it belongs to a2 now).
    c.stream_ended("g", &a.member_id, a.stream_id);
    assert_eq!(c.live_member_count("g"), 1);
    c.stream_ended("g", &a2.member_id, a2.stream_id);
    assert_eq!(c.live_member_count("g"), 0);
}

#[tokio::test]
async fn unknown_member_id_is_a_first_join() {
    let f = fixture(2);
    let c = &f.coordinator;
    let a = c.join(request("ghost-1", "t", 0)).await.unwrap();
    assert_ne!(a.member_id, "ghost-1");
    let long = "x".repeat(MEMBER_ID_BYTES_MAX + 1);
    let b = c.join(request(&long, "t", 0)).await.unwrap();
    assert_ne!(b.member_id, long);
}

#[tokio::test]
async fn members_on_two_topics_share_the_generation() {
    let f = fixture(3);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    let mut b = c.join(request("", "u", 0)).await.unwrap();
    assert_eq!(last_assign(&mut a).0, Some((2, vec![0, 1, 2])));
    assert_eq!(last_assign(&mut b).0, Some((2, vec![0, 1])));
    let view = c.describe_group("g").unwrap();
    assert_eq!(view.members.len(), 2);
    assert_eq!(view.partitions.len(), 5);
    assert!(
        view.partitions
            .iter()
            .all(|p| p.committed.is_none() && p.lag.is_none())
    );
}

#[tokio::test]
async fn list_and_describe_include_committed_only_groups() {
    let f = fixture(2);
    let c = &f.coordinator;
    assert!(c.describe_group("g").is_none());
    c.store
        .offsets()
        .commit("g", &[("t".into(), 1, 0, String::new())])
        .unwrap();
    let list = c.list_groups();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, GroupStatus::Empty);
    let view = c.describe_group("g").unwrap();
    // Every partition of the topic it committed on, committed or not.
    assert_eq!(view.partitions.len(), 2);
    assert_eq!(view.partitions[1].lag, Some(0));
    assert_eq!(view.partitions[0].committed, None);
    assert_eq!(c.snapshot().len(), 1);
}

/// Hunt finding: an empty group that committed one partition of a topic described
/// only that partition, so its total lag hid the messages of the others.
#[tokio::test]
async fn describe_lists_every_partition_of_a_topic_including_those_never_committed() {
    let f = fixture(3);
    let c = &f.coordinator;
    let t = c.store.topic("t").unwrap();
    for partition in 0..3 {
        let records: Vec<_> = (0..20)
            .map(|i| tidelog_storage::NewRecord::value(format!("{partition}-{i}")))
            .collect();
        t.partition(partition)
            .unwrap()
            .append_durable(&records)
            .unwrap();
    }
    c.store
        .offsets()
        .commit("g", &[("t".into(), 0, 3, String::new())])
        .unwrap();
    let view = c.describe_group("g").unwrap();
    assert_eq!(view.status, GroupStatus::Empty);
    let rows: Vec<_> = view
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed, p.lag, p.lag_from_log_start))
        .collect();
    assert_eq!(
        rows,
        vec![
            (0, Some(3), Some(17), None),
            (1, None, None, Some(20)),
            (2, None, None, Some(20)),
        ]
    );

    // A member of another topic brings every partition of its topic too.
    let mut a = c.join(request("", "u", 0)).await.unwrap();
    last_assign(&mut a);
    let view = c.describe_group("g").unwrap();
    let listed: Vec<_> = view
        .partitions
        .iter()
        .map(|p| (p.topic.as_str(), p.partition))
        .collect();
    assert_eq!(
        listed,
        vec![("t", 0), ("t", 1), ("t", 2), ("u", 0), ("u", 1)]
    );
}

/// Hunt finding: a member whose stream ended (a consumer killed with -9) looked like
/// any other until its session timeout removed it.
#[tokio::test]
async fn describe_shows_a_disconnected_member_and_the_time_its_session_has_left() {
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    let mut b = c.join(request("", "t", 30_000)).await.unwrap();
    last_assign(&mut a);
    last_assign(&mut b);
    let expiry = |view: &GroupView| {
        view.members
            .iter()
            .map(|m| (m.member_id.clone(), m.session_expires_in_ms))
            .collect::<BTreeMap<_, _>>()
    };
    let view = c.describe_group("g").unwrap();
    assert_eq!(expiry(&view)[&a.member_id], None);
    assert_eq!(expiry(&view)[&b.member_id], None);

    c.stream_ended("g", &b.member_id, b.stream_id);
    f.clock.advance_ms(5_500);
    let view = c.describe_group("g").unwrap();
    assert_eq!(view.members.len(), 2);
    assert_eq!(expiry(&view)[&a.member_id], None);
    assert_eq!(expiry(&view)[&b.member_id], Some(24_500));

    // Past the deadline but before the reaper looked: kept, 0 left.
    f.clock.advance_ms(30_000);
    assert_eq!(
        expiry(&c.describe_group("g").unwrap())[&b.member_id],
        Some(0)
    );
    c.expire_sessions();
    assert_eq!(c.describe_group("g").unwrap().members.len(), 1);
}

#[tokio::test]
async fn topic_deleted_and_shutdown_end_open_streams() {
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    c.topic_deleted("t");
    assert_eq!(last_assign(&mut a).1.unwrap().code(), tonic::Code::NotFound);
    let mut b = c.join(request("", "u", 0)).await.unwrap();
    // Both tasks "end" on their own once told; simulate that.
    let coordinator = c.clone();
    let (ga, gb) = (
        (a.member_id.clone(), a.stream_id),
        (b.member_id.clone(), b.stream_id),
    );
    let shutdown = tokio::spawn(async move {
        coordinator.shutdown(Duration::from_secs(5)).await;
    });
    tokio::task::yield_now().await;
    assert_eq!(
        last_assign(&mut b).1.unwrap().code(),
        tonic::Code::Unavailable
    );
    c.stream_ended("g", &ga.0, ga.1);
    c.stream_ended("g", &gb.0, gb.1);
    shutdown.await.unwrap();
    let err = c.join(request("", "t", 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

fn pattern_request(pattern: &str, access: Option<TopicAccess>) -> JoinRequest {
    JoinRequest {
        subscription: Subscription::Pattern {
            pattern: Arc::new(TopicPattern::parse(pattern).unwrap()),
            allowed: access,
        },
        ..request("", "", 0)
    }
}

/// Drains a control channel: the last Assign's (generation, partitions, topics).
fn last_pattern_assign(joined: &mut Joined) -> Option<(u64, Vec<TopicPartition>, Vec<String>)> {
    let mut assign = None;
    while let Ok(control) = joined.control.try_recv() {
        if let Control::Assign {
            generation,
            partitions,
            topics,
        } = control
        {
            assign = Some((generation, partitions, topics.into_keys().collect()));
        }
    }
    assign
}

fn tps(list: &[(&str, u32)]) -> Vec<TopicPartition> {
    list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
}

#[tokio::test]
async fn pattern_members_share_each_topic_with_members_of_that_topic() {
    let f = fixture(2);
    let c = &f.coordinator;
    f.coordinator
        .store
        .create_topic("orders.eu", 2, TopicConfig::default())
        .unwrap();
    // Matches orders.eu only: the pattern is anchored, "t" and "u" stay out.
    let mut a = c.join(pattern_request(r"orders\..*", None)).await.unwrap();
    let (_, pa, topics) = last_pattern_assign(&mut a).unwrap();
    assert_eq!(pa, tps(&[("orders.eu", 0), ("orders.eu", 1)]));
    assert_eq!(topics, vec!["orders.eu".to_string()]);
    // A member of orders.eu by name shares it; one of "t" takes "t" alone.
    let mut b = c.join(request("", "orders.eu", 0)).await.unwrap();
    let mut t = c.join(request("", "t", 0)).await.unwrap();
    let (ga, pa, _) = last_pattern_assign(&mut a).unwrap();
    let (gb, pb, _) = last_pattern_assign(&mut b).unwrap();
    let (gt, pt, _) = last_pattern_assign(&mut t).unwrap();
    assert_eq!((ga, gb), (gt, gt));
    assert_eq!(pa.len() + pb.len(), 2);
    assert_eq!(pa.len(), 1);
    assert_eq!(pt, tps(&[("t", 0), ("t", 1)]));
    // A commit names the topic: a's partition of orders.eu, not b's nor t's.
    c.authorize_member_commit("g", &a.member_id, ga, &pa)
        .unwrap();
    assert!(
        c.authorize_member_commit("g", &a.member_id, ga, &pb)
            .is_err()
    );
    assert!(
        c.authorize_member_commit("g", &a.member_id, ga, &pt)
            .is_err()
    );
    let view = c.describe_group("g").unwrap();
    let member = view
        .members
        .iter()
        .find(|m| m.member_id == a.member_id)
        .unwrap();
    assert_eq!(member.topic_pattern, r"orders\..*");
    assert_eq!(member.topic, "");
    assert_eq!(member.topics.len(), 1);
}

#[tokio::test]
async fn a_rescan_takes_in_new_topics_and_drops_deleted_ones() {
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c.join(pattern_request(r"orders\..*", None)).await.unwrap();
    let mut b = c.join(pattern_request(r"orders\..*", None)).await.unwrap();
    let (g0, pa, topics) = last_pattern_assign(&mut a).unwrap();
    assert!(pa.is_empty() && topics.is_empty(), "nothing matches yet");
    last_pattern_assign(&mut b);
    // Nothing changed: no rebalance.
    c.rescan_topics();
    assert!(last_pattern_assign(&mut a).is_none());

    c.store
        .create_topic("orders.eu", 3, TopicConfig::default())
        .unwrap();
    c.store
        .create_topic("orders.us", 1, TopicConfig::default())
        .unwrap();
    c.store
        .create_topic("other", 1, TopicConfig::default())
        .unwrap();
    c.rescan_topics();
    let (g1, pa, ta) = last_pattern_assign(&mut a).unwrap();
    let (_, pb, _) = last_pattern_assign(&mut b).unwrap();
    assert!(g1 > g0);
    assert_eq!(ta, vec!["orders.eu".to_string(), "orders.us".to_string()]);
    let mut all: Vec<TopicPartition> = [pa, pb].concat();
    all.sort();
    assert_eq!(
        all,
        tps(&[
            ("orders.eu", 0),
            ("orders.eu", 1),
            ("orders.eu", 2),
            ("orders.us", 0)
        ])
    );

    // A deleted topic leaves the assignment; no stream is ended.
    c.store.delete_topic("orders.eu").unwrap();
    c.topic_deleted("orders.eu");
    let mut ended = false;
    let mut latest = None;
    while let Ok(control) = a.control.try_recv() {
        match control {
            Control::End(_) => ended = true,
            Control::Assign {
                partitions, topics, ..
            } => latest = Some((partitions, topics.into_keys().collect::<Vec<_>>())),
            Control::HandOver { .. } => {}
        }
    }
    assert!(!ended);
    let (pa, ta) = latest.unwrap();
    assert_eq!(ta, vec!["orders.us".to_string()]);
    let (_, pb, _) = last_pattern_assign(&mut b).unwrap();
    let mut all: Vec<TopicPartition> = [pa, pb].concat();
    all.sort();
    assert_eq!(all, tps(&[("orders.us", 0)]));

    // Recreated under the same name: a new incarnation, so a rebalance.
    c.store
        .create_topic("orders.us", 1, TopicConfig::default())
        .unwrap_err();
    c.store.delete_topic("orders.us").unwrap();
    c.store
        .create_topic("orders.us", 1, TopicConfig::default())
        .unwrap();
    c.rescan_topics();
    assert!(last_pattern_assign(&mut a).is_some());
}

#[tokio::test]
async fn access_leaves_out_topics_the_caller_may_not_consume() {
    let f = fixture(2);
    let c = &f.coordinator;
    for name in ["orders.eu", "orders.secret"] {
        c.store
            .create_topic(name, 1, TopicConfig::default())
            .unwrap();
    }
    let denied = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = denied.clone();
    let access =
        TopicAccess::new(move |topic| topic != "orders.secret" || !flag.load(Ordering::Relaxed));
    let mut a = c
        .join(pattern_request(r"orders\..*", Some(access)))
        .await
        .unwrap();
    let (_, pa, ta) = last_pattern_assign(&mut a).unwrap();
    assert_eq!(ta, vec!["orders.eu".to_string()]);
    assert_eq!(pa, tps(&[("orders.eu", 0)]));
    // The rule changes: the next rescan takes the topic in.
    denied.store(false, Ordering::Relaxed);
    c.rescan_topics();
    let (_, pa, _) = last_pattern_assign(&mut a).unwrap();
    assert_eq!(pa, tps(&[("orders.eu", 0), ("orders.secret", 0)]));
}

#[tokio::test]
async fn rejoining_with_another_subscription_rebalances() {
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 0)).await.unwrap();
    let (g0, _, _) = last_pattern_assign(&mut a).unwrap();
    let mut a2 = c.join(pattern_request("t|u", None)).await.unwrap();
    let _ = a2.member_id.clone();
    let mut a3 = c
        .join(JoinRequest {
            member_id: a.member_id.clone(),
            ..pattern_request("t|u", None)
        })
        .await
        .unwrap();
    let (g1, pa, ta) = last_pattern_assign(&mut a3).unwrap();
    assert!(g1 > g0 + 1, "the second join and the changed subscription");
    assert_eq!(ta, vec!["t".to_string(), "u".to_string()]);
    let (_, pa2, _) = last_pattern_assign(&mut a2).unwrap();
    assert_eq!(pa.len() + pa2.len(), 4);
}

#[test]
fn group_id_limits() {
    assert!(validate_group_id("").is_err());
    assert!(validate_group_id(&"g".repeat(GROUP_ID_BYTES_MAX)).is_ok());
    assert!(validate_group_id(&"g".repeat(GROUP_ID_BYTES_MAX + 1)).is_err());
}

/// The member's partitions of `topic` in its last Assign, and whether that Assign's
/// topic of that name is the store's current incarnation.
fn last_assign_of(
    joined: &mut Joined,
    store: &Store,
    topic: &str,
) -> Option<(u64, Vec<u32>, bool)> {
    let mut latest = None;
    while let Ok(control) = joined.control.try_recv() {
        if let Control::Assign {
            generation,
            partitions,
            topics,
        } = control
        {
            let current = match (topics.get(topic), store.topic(topic)) {
                (Some(assigned), Ok(now)) => assigned.is_same_topic(&now),
                _ => false,
            };
            let mine = partitions
                .into_iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, p)| p)
                .collect();
            latest = Some((generation, mine, current));
        }
    }
    latest
}

#[tokio::test]
async fn a_kept_member_loses_a_deleted_topic_and_gets_its_new_incarnation() {
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 60_000)).await.unwrap();
    let (g1, pa) = last_assign(&mut a).0.unwrap();
    assert_eq!(pa, vec![0, 1]);
    // Its stream ends; the session timeout keeps it.
    c.stream_ended("g", &a.member_id, a.stream_id);
    assert_eq!(c.live_member_count("g"), 1);

    c.store.delete_topic("t").unwrap();
    c.topic_deleted("t");
    let view = c.describe_group("g").unwrap();
    assert!(view.generation > g1, "the deletion rebalances: {view:?}");
    assert_eq!(view.members.len(), 1, "still kept for a reconnect");
    assert!(view.members[0].partitions.is_empty(), "{view:?}");

    c.store
        .create_topic("t", 4, TopicConfig::default())
        .unwrap();
    c.topic_created("t");
    let view = c.describe_group("g").unwrap();
    let g3 = view.generation;
    assert_eq!(view.members[0].partitions.len(), 4, "{view:?}");

    // A commit of the old incarnation's generation is stale, before and after the
    // re-creation.
    let old = c
        .authorize_member_commit("g", &a.member_id, g1, &[("t".to_string(), 0)])
        .unwrap_err();
    assert_eq!(old.code(), tonic::Code::FailedPrecondition);
    assert!(old.message().contains("stale"), "{}", old.message());

    // Reconnecting with its id: the new topic's partitions, its new incarnation.
    let mut a2 = c.join(request(&a.member_id, "t", 60_000)).await.unwrap();
    assert_eq!(a2.member_id, a.member_id);
    let (g, pa, current) = last_assign_of(&mut a2, &c.store, "t").unwrap();
    assert_eq!((g, pa, current), (g3, vec![0, 1, 2, 3], true));

    // A new member and the kept one split all four.
    c.stream_ended("g", &a2.member_id, a2.stream_id);
    let mut b = c.join(request("", "t", 0)).await.unwrap();
    let (_, pb, current) = last_assign_of(&mut b, &c.store, "t").unwrap();
    assert!(current);
    let view = c.describe_group("g").unwrap();
    let mut all: Vec<u32> = view
        .members
        .iter()
        .flat_map(|m| m.partitions.iter().map(|(_, p)| *p))
        .collect();
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2, 3], "{view:?}");
    assert_eq!(pb.len(), 2);
}

#[tokio::test]
async fn a_reconnect_after_its_topic_came_back_is_assigned_the_new_incarnation() {
    // The coordinator was not told (the delete and create raced the reconnect): the
    // reconnect itself sees that its topic is another incarnation now.
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c.join(request("", "t", 60_000)).await.unwrap();
    let (g1, _) = last_assign(&mut a).0.unwrap();
    c.stream_ended("g", &a.member_id, a.stream_id);
    c.store.delete_topic("t").unwrap();
    c.store
        .create_topic("t", 3, TopicConfig::default())
        .unwrap();
    let mut a2 = c.join(request(&a.member_id, "t", 60_000)).await.unwrap();
    let (g, pa, current) = last_assign_of(&mut a2, &c.store, "t").unwrap();
    assert!(g > g1);
    assert_eq!((pa, current), (vec![0, 1, 2], true));
    assert!(
        c.authorize_member_commit("g", &a.member_id, g1, &[("t".to_string(), 0)])
            .is_err()
    );
}

#[tokio::test]
async fn a_kept_pattern_member_loses_a_deleted_topic_and_gets_its_new_incarnation() {
    let f = fixture(2);
    let c = &f.coordinator;
    let mut a = c
        .join(JoinRequest {
            session_timeout_ms: 60_000,
            ..pattern_request("t", None)
        })
        .await
        .unwrap();
    let (g1, pa, _) = last_pattern_assign(&mut a).unwrap();
    assert_eq!(pa, tps(&[("t", 0), ("t", 1)]));
    c.stream_ended("g", &a.member_id, a.stream_id);
    c.store.delete_topic("t").unwrap();
    c.topic_deleted("t");
    c.store
        .create_topic("t", 4, TopicConfig::default())
        .unwrap();
    c.topic_created("t");
    assert!(
        c.authorize_member_commit("g", &a.member_id, g1, &[("t".to_string(), 0)])
            .is_err()
    );
    let mut a2 = c
        .join(JoinRequest {
            member_id: a.member_id.clone(),
            session_timeout_ms: 60_000,
            ..pattern_request("t", None)
        })
        .await
        .unwrap();
    let (g, pa, current) = last_assign_of(&mut a2, &c.store, "t").unwrap();
    assert!(g > g1);
    assert_eq!((pa, current), (vec![0, 1, 2, 3], true));
}
