//! Quotas per principal and the audit file, through the real binary with `--auth`:
//!
//! - a publish-bytes, a consume-bytes and a requests quota each hold a principal to its
//!   rate (after its one-second burst) by slowing it down, never failing it, and the
//!   throttle time shows in the metrics; a principal without a quota is not slowed;
//! - topics_max and partitions_max refuse creations past them (RESOURCE_EXHAUSTED
//!   naming the limit and the CLI flag that raises it), racing creations cannot both
//!   pass the last slot, and a deleted topic frees its slot;
//! - quotas and topic owners survive kill -9;
//! - `tidelog quota set|list|remove` and `topic describe`'s owner;
//! - `--audit-log FILE`: JSON lines for refused calls, access and admin changes, and a
//!   rotation by SIGHUP.

use std::time::{Duration, Instant};

use tidelog_proto::v1::access_client::AccessClient;
use tidelog_proto::v1::admin_client::AdminClient;
use tidelog_proto::v1::consumer_client::ConsumerClient;
use tidelog_proto::v1::publisher_client::PublisherClient;
use tidelog_proto::v1::{
    CreatePartitionsRequest, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest,
    ListQuotasRequest, ListTopicsRequest, Message, PublishRequest, QuotaLimits, RemoveQuotaRequest,
    SetQuotaRequest, StartPosition, SubscribeRequest, TopicConfig, start_position,
    subscribe_response::Event,
};
use tidelog_tests::{TestBroker, metric_value, tidelog_command};
use tonic::Code;

use crate::auth::{Conn, allow, bootstrap_token, create_token, with_token};

async fn conn(broker: &TestBroker, token: &str) -> Conn {
    with_token(&broker.channel().await, Some(token))
}

async fn set_quota(admin: &Conn, principal: &str, limits: QuotaLimits) {
    AccessClient::new(admin.clone())
        .set_quota(SetQuotaRequest {
            principal: principal.into(),
            limits: Some(limits),
        })
        .await
        .unwrap();
}

async fn create(conn: &Conn, name: &str, partitions: u32) -> Result<(), tonic::Status> {
    AdminClient::new(conn.clone())
        .create_topic(CreateTopicRequest {
            name: name.into(),
            partitions,
            config: Some(TopicConfig::default()),
        })
        .await
        .map(drop)
}

/// `count` publishes of `messages` messages of `size` bytes each; returns how long.
async fn publish_all(
    conn: &Conn,
    topic: &str,
    count: usize,
    messages: usize,
    size: usize,
) -> Duration {
    let mut publisher = PublisherClient::new(conn.clone());
    let started = Instant::now();
    for _ in 0..count {
        publisher
            .publish(PublishRequest {
                topic: topic.into(),
                messages: (0..messages)
                    .map(|_| Message {
                        value: vec![b'q'; size].into(),
                        ..Message::default()
                    })
                    .collect(),
                ..PublishRequest::default()
            })
            .await
            .unwrap();
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_quotas_slow_a_principal_to_its_rate_and_never_fail_it() {
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = conn(&broker, &bootstrap_token(&broker)).await;
    create(&admin, "paced", 1).await.unwrap();
    for principal in ["alice", "bob"] {
        for operation in ["publish", "consume", "describe"] {
            allow(&admin, principal, "topic:paced", operation).await;
        }
    }
    let alice = conn(&broker, &create_token(&admin, "alice", 0).await).await;
    let bob = conn(&broker, &create_token(&admin, "bob", 0).await).await;
    const RATE: u64 = 1 << 20;
    set_quota(
        &admin,
        "alice",
        QuotaLimits {
            publish_bytes_per_sec: Some(RATE),
            consume_bytes_per_sec: Some(RATE),
            ..QuotaLimits::default()
        },
    )
    .await;

    // 3 MiB in 48 publishes of 16 x 4 KiB: one second of burst, then 2 s at the rate.
    let paced = publish_all(&alice, "paced", 48, 16, 4096).await;
    assert!(
        paced >= Duration::from_millis(1800),
        "3 MiB at 1 MiB/s with a 1 s burst took only {paced:?}"
    );
    // bob has no quota: the same is not slowed down (a generous bound, not a timing).
    let free = publish_all(&bob, "paced", 48, 16, 4096).await;
    assert!(free < paced, "bob {free:?} vs alice {paced:?}");

    // Consuming the 6 MiB: alice's deliveries are paced too, and all arrive.
    let mut stream = ConsumerClient::new(alice.clone())
        .subscribe(SubscribeRequest {
            topic: "paced".into(),
            partitions: vec![0],
            start: Some(StartPosition {
                position: Some(start_position::Position::Earliest(
                    start_position::Earliest {},
                )),
            }),
            ..SubscribeRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    let mut received = 0usize;
    while received < 2 * 48 * 16 {
        let response = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a delivery within 30 s")
            .expect("no error: a quota slows, never fails")
            .expect("the stream stays open");
        if let Some(Event::Batch(batch)) = response.event {
            received += batch.messages.len();
        }
    }
    let consumed = started.elapsed();
    assert_eq!(received, 2 * 48 * 16);
    assert!(
        consumed >= Duration::from_millis(3500),
        "6 MiB at 1 MiB/s with a 1 s burst took only {consumed:?}"
    );

    let metrics = broker.metrics_text();
    let throttled = |kind: &str| {
        metric_value(
            &metrics,
            &format!("tidelog_quota_throttle_seconds_total{{principal=\"alice\",kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    // The waits the pace imposed (less than the whole time over the burst when the
    // calls themselves took a while, as on a loaded machine).
    assert!(throttled("publish_bytes") >= 0.5, "{metrics}");
    assert!(throttled("consume_bytes") >= 1.0, "{metrics}");
    assert!(
        !metrics.contains("principal=\"bob\""),
        "bob was never throttled: {metrics}"
    );

    // A requests quota: 60 calls at 20/s take at least 2 s once the burst is spent.
    set_quota(
        &admin,
        "bob",
        QuotaLimits {
            requests_per_sec: Some(20),
            ..QuotaLimits::default()
        },
    )
    .await;
    let mut admin_client = AdminClient::new(bob.clone());
    let started = Instant::now();
    for _ in 0..60 {
        admin_client
            .describe_topic(DescribeTopicRequest {
                name: "paced".into(),
            })
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900),
        "60 calls at 20/s took only {elapsed:?}"
    );
    // Removing the quota lifts it at once.
    AccessClient::new(admin.clone())
        .remove_quota(RemoveQuotaRequest {
            principal: "bob".into(),
        })
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..60 {
        admin_client
            .describe_topic(DescribeTopicRequest {
                name: "paced".into(),
            })
            .await
            .unwrap();
    }
    assert!(started.elapsed() < elapsed, "the quota was removed");
}

/// A call already waiting on its quota follows a change of the quota: removed or raised
/// a second into a ten-second wait, the call goes on within about a second of the
/// change instead of waiting the old quota out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_removed_or_raised_during_a_wait_applies_to_the_waiting_call() {
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = conn(&broker, &bootstrap_token(&broker)).await;
    create(&admin, "paced", 1).await.unwrap();
    allow(&admin, "alice", "topic:paced", "publish").await;
    let alice = conn(&broker, &create_token(&admin, "alice", 0).await).await;
    for change in ["remove", "raise"] {
        // 10 B/s and a 1,000 B publish: 100 s of quota, held to the 10 s longest wait.
        set_quota(
            &admin,
            "alice",
            QuotaLimits {
                publish_bytes_per_sec: Some(10),
                ..QuotaLimits::default()
            },
        )
        .await;
        let waiting = {
            let alice = alice.clone();
            tokio::spawn(async move { publish_all(&alice, "paced", 1, 1, 1000).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let changed = Instant::now();
        if change == "remove" {
            AccessClient::new(admin.clone())
                .remove_quota(RemoveQuotaRequest {
                    principal: "alice".into(),
                })
                .await
                .unwrap();
        } else {
            set_quota(
                &admin,
                "alice",
                QuotaLimits {
                    publish_bytes_per_sec: Some(10 << 20),
                    ..QuotaLimits::default()
                },
            )
            .await;
        }
        let took = waiting.await.unwrap();
        let after = changed.elapsed();
        assert!(
            after < Duration::from_secs(5),
            "{change}: the waiting publish went on {after:?} after the change ({took:?} in all)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_partition_limits_refuse_creations_past_them_and_survive_kill_9() {
    let mut broker = TestBroker::start_with(&["--auth"]);
    let bootstrap = bootstrap_token(&broker);
    let admin = conn(&broker, &bootstrap).await;
    allow(&admin, "alice", "topic:a-*", "*").await;
    let token = create_token(&admin, "alice", 0).await;
    let alice = conn(&broker, &token).await;
    // The default for everyone: 2 topics, 5 partitions.
    set_quota(
        &admin,
        "*",
        QuotaLimits {
            topics_max: Some(2),
            partitions_max: Some(5),
            ..QuotaLimits::default()
        },
    )
    .await;
    create(&alice, "a-1", 2).await.unwrap();
    create(&alice, "a-2", 2).await.unwrap();
    let refused = create(&alice, "a-3", 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("topics_max")
            && refused
                .message()
                .contains("tidelog quota set --principal alice --topics"),
        "{}",
        refused.message()
    );
    AdminClient::new(alice.clone())
        .delete_topic(DeleteTopicRequest { name: "a-2".into() })
        .await
        .unwrap();
    let refused = create(&alice, "a-3", 4).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("partitions_max"),
        "{}",
        refused.message()
    );
    create(&alice, "a-3", 3).await.unwrap();
    // Growing a topic counts toward its owner too.
    let grown = AdminClient::new(alice.clone())
        .create_partitions(CreatePartitionsRequest {
            name: "a-1".into(),
            partitions: 3,
        })
        .await
        .unwrap_err();
    assert_eq!(grown.code(), Code::ResourceExhausted);
    // alice's own quota wins over the default, limit by limit.
    set_quota(
        &admin,
        "alice",
        QuotaLimits {
            topics_max: Some(4),
            partitions_max: Some(6),
            ..QuotaLimits::default()
        },
    )
    .await;
    let effective = AccessClient::new(admin.clone())
        .list_quotas(ListQuotasRequest {
            principal: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .effective
        .unwrap();
    assert_eq!(
        (effective.topics_max, effective.partitions_max),
        (Some(4), Some(6))
    );
    // Racing creations for the last partition: exactly one wins.
    let racers: Vec<_> = (0..6)
        .map(|i| {
            let alice = alice.clone();
            tokio::spawn(async move { create(&alice, &format!("a-race-{i}"), 1).await })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => won += 1,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert_eq!(won, 1, "2 + 3 partitions held; only one more fits under 6");
    let owner = AdminClient::new(admin.clone())
        .describe_topic(DescribeTopicRequest { name: "a-1".into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap()
        .owner;
    assert_eq!(owner, "alice");

    // kill -9: the quotas and the owners are durable.
    broker.kill9();
    broker.restart();
    let admin = conn(&broker, &bootstrap).await;
    let alice = conn(&broker, &token).await;
    let quotas = AccessClient::new(admin.clone())
        .list_quotas(ListQuotasRequest::default())
        .await
        .unwrap()
        .into_inner()
        .quotas;
    let principals: Vec<_> = quotas.iter().map(|q| q.principal.as_str()).collect();
    assert_eq!(principals, ["*", "alice"]);
    let refused = create(&alice, "a-after", 1).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let topics = AdminClient::new(alice)
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .topics
        .len();
    assert_eq!(topics, 3);
    // The bootstrap admin is under the default too, but owns nothing yet.
    create(&admin, "admins-own", 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_lists_and_removes_quotas_and_shows_a_topic_s_owner() {
    let broker = TestBroker::start_with(&["--auth"]);
    let admin = bootstrap_token(&broker);
    let cli = |args: &[&str]| {
        let output = tidelog_command()
            .args(["--server", &broker.endpoint()])
            .env("TIDELOG_TOKEN", &admin)
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (code, out, err) = cli(&[
        "quota",
        "set",
        "--principal",
        "svc-orders",
        "--publish-bytes",
        "10MiB",
        "--requests",
        "500/s",
        "--topics",
        "3",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("svc-orders") && out.contains("10 MiB/s") && out.contains("500/s"),
        "{out}"
    );
    let (code, _, err) = cli(&[
        "quota",
        "set",
        "--principal",
        "svc-orders",
        "--requests",
        "none",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = cli(&["quota", "list", "--principal", "svc-orders", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let limits = &listed["quotas"][0]["limits"];
    assert_eq!(limits["publish_bytes_per_sec"], 10 << 20);
    assert!(
        limits["requests_per_sec"].is_null(),
        "removed by none: {listed}"
    );
    assert_eq!(listed["effective"]["limits"]["topics_max"], 3);
    let (code, _, err) = cli(&["quota", "set", "--principal", "svc-orders", "--topics", "0"]);
    assert_eq!(code, Some(2), "0 is refused as a usage error: {err}");
    assert!(err.contains("none"), "{err}");
    let (code, _, err) = cli(&["quota", "set", "--principal", "has space", "--topics", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("principal"), "{err}");
    let (code, out, err) = cli(&["quota", "remove", "--principal", "svc-orders"]);
    assert_eq!((code, out.trim()), (Some(0), "removed"), "{err}");
    let (code, _, err) = cli(&["quota", "remove", "--principal", "svc-orders"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("has no quota"), "{err}");

    let (code, _, err) = cli(&["topic", "create", "owned"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = cli(&["topic", "describe", "owned"]);
    assert!(out.contains("created by admin"), "{out}");
    let (_, out, _) = cli(&["topic", "describe", "owned", "--json"]);
    let described: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(described["owner"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_file_gets_json_lines_and_is_reopened_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let broker = TestBroker::start_with(&["--auth", "--audit-log", path.to_str().unwrap()]);
    let admin = conn(&broker, &bootstrap_token(&broker)).await;
    create(&admin, "audited", 1).await.unwrap();
    set_quota(
        &admin,
        "alice",
        QuotaLimits {
            requests_per_sec: Some(100),
            ..QuotaLimits::default()
        },
    )
    .await;
    let nobody = conn(&broker, &create_token(&admin, "nobody", 0).await).await;
    create(&nobody, "sneaky", 1).await.unwrap_err();
    let anonymous = with_token(&broker.channel().await, None);
    AdminClient::new(anonymous.clone())
        .list_topics(ListTopicsRequest::default())
        .await
        .unwrap_err();

    let read = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    };
    let lines = read(&path);
    let has =
        |lines: &[serde_json::Value], event: &str, principal: &str, result: &str, what: &str| {
            lines.iter().any(|l| {
                l["event"] == event
                    && l["principal"] == principal
                    && l["result"] == result
                    && (l["resource"].as_str().is_some_and(|r| r.contains(what))
                        || l["detail"].as_str().is_some_and(|d| d.contains(what)))
            })
        };
    assert!(
        has(&lines, "admin change", "admin", "OK", "topic:audited"),
        "{lines:#?}"
    );
    assert!(
        has(
            &lines,
            "access changed",
            "admin",
            "OK",
            "set quota of alice"
        ),
        "{lines:#?}"
    );
    assert!(
        has(
            &lines,
            "call refused",
            "nobody",
            "PERMISSION_DENIED",
            "may not create topic:sneaky"
        ),
        "{lines:#?}"
    );
    assert!(
        has(
            &lines,
            "call refused",
            "-",
            "UNAUTHENTICATED",
            "requires a token"
        ),
        "{lines:#?}"
    );
    assert!(
        !broker.log().contains("admin change"),
        "with --audit-log the lines go to the file, not the log"
    );

    // Rotation: move the file away, SIGHUP, and new lines go to a new file.
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    let pid = broker.pid().unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    // The signal is handled asynchronously: topics created before it reach the old
    // file, the ones after it the new one.
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        create(&admin, &format!("after-{attempt}"), 1)
            .await
            .unwrap();
        if path.exists() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fresh = read(&path);
    assert!(!fresh.is_empty(), "SIGHUP opened a new file");
    assert!(
        fresh.iter().all(|l| l["event"] == "admin change"
            && l["resource"].as_str().unwrap().starts_with("topic:after-")),
        "{fresh:#?}"
    );
    let old = read(&rotated);
    assert!(
        old.len() >= lines.len(),
        "nothing was lost from the rotated file"
    );
    assert_eq!(old[..lines.len()], lines[..]);
}
