//! Unit tests of the access state: decisions, the codec, replay. The fault tests are in
//! `storage/tests/access.rs`.

use super::*;
use crate::clock::ManualClock;
use crate::fs::OsFs;
use crate::statelog::Record;
use proptest::prelude::*;

fn rule(principal: &str, resource: &str, operation: Option<Operation>, effect: Effect) -> Rule {
    Rule {
        principal: principal.to_string(),
        resource: ResourcePattern::parse(resource).unwrap(),
        operation,
        effect,
    }
}

fn state(rules: &[Rule]) -> Access {
    let mut access = Access::default();
    for rule in rules {
        assert!(access.apply(AccessOp::AddRule(rule.clone())));
    }
    access
}

#[test]
fn deny_wins_prefixes_match_and_nothing_matching_is_no_rule() {
    use Operation::*;
    use ResourceKind::*;
    let access = state(&[
        rule("alice", "topic:orders.*", Some(Publish), Effect::Allow),
        rule("alice", "topic:orders.secret", None, Effect::Deny),
        rule("*", "topic:public", Some(Consume), Effect::Allow),
        rule("bob", "*", None, Effect::Allow),
        rule("bob", "group:*", Some(GroupReset), Effect::Deny),
        rule("admin", "cluster", Some(Admin), Effect::Allow),
    ]);
    assert_eq!(
        access.decide("alice", Publish, Topic, "orders.eu"),
        Decision::Allow
    );
    assert_eq!(
        access.decide("alice", Publish, Topic, "orders."),
        Decision::Allow
    );
    assert_eq!(
        access.decide("alice", Publish, Topic, "orders"),
        Decision::NoRule
    );
    assert_eq!(
        access.decide("alice", Consume, Topic, "orders.eu"),
        Decision::NoRule
    );
    assert_eq!(
        access.decide("alice", Publish, Queue, "orders.eu"),
        Decision::NoRule
    );
    assert_eq!(
        access.decide("alice", Publish, Topic, "orders.secret"),
        Decision::Deny
    );
    assert_eq!(
        access.decide("alice", Consume, Topic, "public"),
        Decision::Allow
    );
    assert_eq!(
        access.decide("carol", Consume, Topic, "public"),
        Decision::Allow
    );
    assert_eq!(
        access.decide("carol", Consume, Topic, "public2"),
        Decision::NoRule
    );
    assert_eq!(
        access.decide("bob", Delete, Queue, "anything"),
        Decision::Allow
    );
    assert_eq!(access.decide("bob", GroupReset, Group, "g"), Decision::Deny);
    assert_eq!(
        access.decide("bob", GroupCommit, Group, "g"),
        Decision::Allow
    );
    assert_eq!(access.decide("admin", Admin, Cluster, ""), Decision::Allow);
    assert_eq!(access.decide("admin", Admin, Topic, "x"), Decision::NoRule);
    // A principal named like a pattern is not a pattern.
    assert_eq!(
        access.decide("*", Publish, Topic, "orders.eu"),
        Decision::NoRule
    );
}

#[test]
fn patterns_parse_and_print_one_way() {
    for (text, shown) in [
        ("topic:orders", "topic:orders"),
        ("topic:orders.*", "topic:orders.*"),
        ("group:*", "group:*"),
        ("*:tmp-*", "*:tmp-*"),
        ("*", "*:*"),
        ("cluster", "cluster"),
        ("*:orders", "*:orders"),
    ] {
        let pattern = ResourcePattern::parse(text).unwrap();
        assert_eq!(pattern.to_string(), shown, "{text}");
        assert_eq!(ResourcePattern::parse(shown).unwrap(), pattern, "{text}");
    }
    for bad in [
        "orders",
        "topics:x",
        "topic:",
        &format!("topic:{}", "x".repeat(256)),
        // Could never match: refused, so a deny written so does not deny nothing.
        "topic:payroll*.eu",
        "topic:*payroll",
        "group:a**",
        "*:a*b*",
        "cluster:foo",
        "cluster:x*",
        "cluster:*",
    ] {
        let error = ResourcePattern::parse(bad).unwrap_err();
        assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        let names_the_grammar = !bad.starts_with("topic:x") && bad != "topic:";
        assert_eq!(
            error.contains(RESOURCE_GRAMMAR),
            names_the_grammar,
            "{bad}: {error}"
        );
    }
}

#[test]
fn tokens_replace_revoke_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_700_000_000_000);
    let log = open(Arc::new(OsFs), dir.path(), clock.clone()).unwrap();
    let token = StoredToken {
        id: 7,
        principal: "alice".into(),
        secret_sha256: [9; 32],
        created_at_ms: 1,
        expires_at_ms: Some(2),
        description: "ci".into(),
    };
    let admin = rule("admin", "cluster", Some(Operation::Admin), Effect::Allow);
    log.append(vec![
        AccessOp::CreateToken(token.clone()),
        AccessOp::CreateToken(StoredToken {
            id: 8,
            expires_at_ms: None,
            ..token.clone()
        }),
        AccessOp::AddRule(admin.clone()),
    ])
    .unwrap();
    assert!(!log.append_one(AccessOp::AddRule(admin.clone())).unwrap());
    assert!(log.append_one(AccessOp::RevokeToken { id: 8 }).unwrap());
    assert!(!log.append_one(AccessOp::RevokeToken { id: 8 }).unwrap());
    let bytes = log.read(|a| a.snapshot_bytes());
    drop(log);
    let log = open(Arc::new(OsFs), dir.path(), clock.clone()).unwrap();
    log.read(|a| {
        assert_eq!(a.token(7), Some(&token));
        assert_eq!(a.token(8), None);
        assert_eq!(a.rules().collect::<Vec<_>>(), [&admin]);
        assert_eq!(a.snapshot_bytes(), bytes);
    });
    log.compact().unwrap();
    drop(log);
    let log = open(Arc::new(OsFs), dir.path(), clock).unwrap();
    log.read(|a| {
        assert_eq!(a.token_count(), 1);
        assert_eq!(a.rule_count(), 1);
        assert_eq!(a.snapshot_bytes(), bytes);
    });
}

#[test]
fn a_principal_s_quota_falls_back_to_the_default_limit_by_limit() {
    let mut access = Access::default();
    assert!(access.quota_for("alice").is_empty());
    let default = QuotaLimits {
        publish_bytes_per_sec: Some(1000),
        topics_max: Some(5),
        ..QuotaLimits::default()
    };
    assert!(access.apply(AccessOp::SetQuota(Quota {
        principal: DEFAULT_QUOTA_PRINCIPAL.into(),
        limits: default,
    })));
    let own = QuotaLimits {
        publish_bytes_per_sec: Some(10),
        requests_per_sec: Some(3),
        ..QuotaLimits::default()
    };
    let alice = Quota {
        principal: "alice".into(),
        limits: own,
    };
    assert!(access.apply(AccessOp::SetQuota(alice.clone())));
    // Setting the same quota again changes nothing.
    assert!(!access.apply(AccessOp::SetQuota(alice)));
    assert_eq!(
        access.quota_for("alice"),
        QuotaLimits {
            publish_bytes_per_sec: Some(10),
            requests_per_sec: Some(3),
            topics_max: Some(5),
            ..QuotaLimits::default()
        }
    );
    assert_eq!(access.quota_for("bob"), default);
    assert!(access.apply(AccessOp::RemoveQuota {
        principal: "*".into()
    }));
    assert!(!access.apply(AccessOp::RemoveQuota {
        principal: "*".into()
    }));
    assert_eq!(access.quota_for("alice"), own);
    assert!(access.quota_for("bob").is_empty());
    assert_eq!(access.quota_count(), 1);
}

#[test]
fn invalid_operations_are_refused_before_anything_is_written() {
    let bad = [
        AccessOp::AddRule(Rule {
            principal: String::new(),
            ..rule("a", "topic:x", None, Effect::Allow)
        }),
        AccessOp::AddRule(Rule {
            principal: "with space".into(),
            ..rule("a", "topic:x", None, Effect::Allow)
        }),
        AccessOp::AddRule(Rule {
            resource: ResourcePattern {
                kind: None,
                prefix: false,
                name: String::new(),
            },
            ..rule("a", "topic:x", None, Effect::Allow)
        }),
        AccessOp::CreateToken(StoredToken {
            id: 1,
            principal: "a".into(),
            secret_sha256: [0; 32],
            created_at_ms: 0,
            expires_at_ms: None,
            description: "d".repeat(257),
        }),
        AccessOp::SetQuota(Quota {
            principal: "alice".into(),
            limits: QuotaLimits {
                requests_per_sec: Some(0),
                ..QuotaLimits::default()
            },
        }),
        AccessOp::RemoveQuota {
            principal: String::new(),
        },
    ];
    for op in bad {
        let mut out = Vec::new();
        assert!(op.encode(&mut out).is_err(), "{op:?}");
    }
}

fn any_name() -> impl Strategy<Value = String> {
    "[a-z*.]{0,12}"
}

fn any_rule() -> impl Strategy<Value = Rule> {
    (
        "[a-z]{1,8}|\\*",
        proptest::option::of(0usize..4),
        any::<bool>(),
        any_name(),
        proptest::option::of(0usize..9),
        any::<bool>(),
    )
        .prop_map(|(principal, kind, prefix, name, op, deny)| Rule {
            principal,
            resource: ResourcePattern {
                kind: kind.map(|k| ResourceKind::ALL[k]),
                prefix: prefix || name.is_empty(),
                name,
            },
            operation: op.map(|o| Operation::ALL[o]),
            effect: if deny { Effect::Deny } else { Effect::Allow },
        })
}

fn any_op() -> impl Strategy<Value = AccessOp> {
    prop_oneof![
        (
            any::<u64>(),
            "[!-~]{1,40}",
            any::<[u8; 32]>(),
            any::<i64>(),
            proptest::option::of(1i64..),
            ".{0,20}"
        )
            .prop_map(
                |(id, principal, secret_sha256, created_at_ms, expires_at_ms, description)| {
                    AccessOp::CreateToken(StoredToken {
                        id,
                        principal,
                        secret_sha256,
                        created_at_ms,
                        expires_at_ms,
                        description,
                    })
                }
            ),
        any::<u64>().prop_map(|id| AccessOp::RevokeToken { id }),
        any_rule().prop_map(AccessOp::AddRule),
        any_rule().prop_map(AccessOp::RemoveRule),
        any_quota().prop_map(AccessOp::SetQuota),
        "[a-z]{1,8}|\\*".prop_map(|principal| AccessOp::RemoveQuota { principal }),
    ]
}

fn any_quota() -> impl Strategy<Value = Quota> {
    let limit = || proptest::option::of(1u64..);
    (
        "[a-z]{1,8}|\\*",
        limit(),
        limit(),
        limit(),
        limit(),
        limit(),
    )
        .prop_map(
            |(principal, publish, consume, requests, topics, partitions)| Quota {
                principal,
                limits: QuotaLimits {
                    publish_bytes_per_sec: publish,
                    consume_bytes_per_sec: consume,
                    requests_per_sec: requests,
                    topics_max: topics,
                    partitions_max: partitions,
                },
            },
        )
}

proptest! {
    #[test]
    fn records_round_trip(ops in proptest::collection::vec(any_op(), 1..20), at: i64) {
        let record = Record { written_at_ms: at, ops };
        let bytes = encode_record(&record).unwrap();
        let (decoded, used) = decode_record(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(decoded, record);
    }

    /// Flipping any byte of a valid record is refused or decodes to something that
    /// encodes back to the same bytes: never a panic.
    #[test]
    fn damaged_records_never_panic(ops in proptest::collection::vec(any_op(), 1..5), flip: usize, to: u8) {
        let mut bytes = encode_record(&Record { written_at_ms: 1, ops }).unwrap();
        let at = flip % bytes.len();
        bytes[at] = to;
        if let Ok(Some((record, used))) = decode_record(&bytes) {
            prop_assert_eq!(encode_record(&record).unwrap(), bytes[..used].to_vec());
        }
    }

    /// The decision equals the rule's definition written out plainly.
    #[test]
    fn decide_is_deny_over_allow_over_nothing(
        rules in proptest::collection::vec(any_rule(), 0..12),
        principal in "[a-z]{1,3}",
        op in 0usize..9,
        kind in 0usize..4,
        name in "[a-z.]{0,6}",
    ) {
        let (op, kind) = (Operation::ALL[op], ResourceKind::ALL[kind]);
        let matching: Vec<&Rule> = rules.iter().filter(|r| {
            (r.principal == "*" || r.principal == principal)
                && r.operation.is_none_or(|o| o == op)
                && r.resource.kind.is_none_or(|k| k == kind)
                && if r.resource.prefix { name.starts_with(r.resource.name.as_str()) } else { name == r.resource.name }
        }).collect();
        let expected = if matching.iter().any(|r| r.effect == Effect::Deny) {
            Decision::Deny
        } else if matching.is_empty() {
            Decision::NoRule
        } else {
            Decision::Allow
        };
        let mut access = Access::default();
        for rule in rules {
            access.apply(AccessOp::AddRule(rule));
        }
        prop_assert_eq!(access.decide(&principal, op, kind, &name), expected);
    }
}

/// The fuzz target's seeds are valid inputs (a record with every operation kind, and a
/// Bearer value), so the fuzzer starts from the accepting paths.
#[test]
fn the_fuzz_seeds_decode() {
    let record = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/corpus/access_record/record"
    ));
    let (decoded, used) = decode_record(record).unwrap().unwrap();
    assert_eq!(used, record.len());
    assert_eq!(decoded.ops.len(), 4);
    assert_eq!(encode_record(&decoded).unwrap(), record.to_vec());
    let quotas = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/corpus/access_record/quota"
    ));
    let (decoded, _) = decode_record(quotas).unwrap().unwrap();
    let mut access = Access::default();
    for op in decoded.ops {
        access.apply(op);
    }
    assert_eq!(access.quota_for("svc-orders").requests_per_sec, Some(500));
    assert_eq!(access.quota_for("svc-orders").topics_max, Some(20));
    let bearer = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fuzz/corpus/access_record/bearer"
    ));
    assert_eq!(
        token::parse_authorization(bearer).unwrap().id,
        0x0123_4567_89ab_cdef
    );
}
