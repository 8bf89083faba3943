//! The access state (tokens and authorization rules) under faults, through `FaultyFs`:
//!
//! 1. Crash points: a workload of token creations and revocations, rule additions and
//!    removals, compactions and reopens is cut after its k-th filesystem operation, for
//!    every k, and ended by a power cut (unsynced writes lost, or some kept with the last
//!    one torn) or a process kill. Every acknowledged change survives; the one in flight
//!    applies whole or not at all. `TIDELOG_FAULT_SEEDS=N` runs N seeds (default 3).
//! 2. EIO on the log's fdatasync: the change fails, is not applied, later changes are
//!    refused (poisoned), and a reopen recovers without it.
//! 3. ENOSPC: the change fails cleanly without poisoning; changes resume with room.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use tidelog_storage::access::{
    self, Access, AccessLog, AccessOp, Effect, Operation, Quota, QuotaLimits, ResourceKind,
    ResourcePattern, Rule, StoredToken,
};
use tidelog_storage::fs::{CrashOptions, FaultyFs, SeededRng as Rng, SyncFault, SyncKind};
use tidelog_storage::statelog::StateMachine;
use tidelog_storage::{Error, ManualClock, Result};

const START_MS: i64 = 1_700_000_000_000;
const WORKLOAD_STEPS: u64 = 30;

type Model = (
    BTreeMap<u64, StoredToken>,
    BTreeSet<Rule>,
    BTreeMap<String, Quota>,
);

fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

fn open(fs: &FaultyFs, dir: &Path) -> Result<AccessLog> {
    access::open(Arc::new(fs.clone()), dir, ManualClock::new(START_MS))
}

fn reopen(fs: &FaultyFs, dir: &Path, context: &str) -> AccessLog {
    open(fs, dir).unwrap_or_else(|e| panic!("{context}: reopening failed: {e}"))
}

fn dump(log: &AccessLog) -> Model {
    log.read(|a| {
        (
            a.tokens().map(|t| (t.id, t.clone())).collect(),
            a.rules().cloned().collect(),
            a.quotas()
                .map(|q| (q.principal.clone(), q.clone()))
                .collect(),
        )
    })
}

fn apply(model: &mut Model, op: AccessOp) {
    match op {
        AccessOp::CreateToken(token) => {
            model.0.insert(token.id, token);
        }
        AccessOp::RevokeToken { id } => {
            model.0.remove(&id);
        }
        AccessOp::AddRule(rule) => {
            model.1.insert(rule);
        }
        AccessOp::RemoveRule(rule) => {
            model.1.remove(&rule);
        }
        AccessOp::SetQuota(quota) => {
            model.2.insert(quota.principal.clone(), quota);
        }
        AccessOp::RemoveQuota { principal } => {
            model.2.remove(&principal);
        }
    }
}

fn random_rule(rng: &mut Rng) -> Rule {
    Rule {
        principal: ["alice", "bob", "*"][rng.below(3) as usize].to_string(),
        resource: ResourcePattern {
            kind: Some(ResourceKind::ALL[rng.below(4) as usize]),
            prefix: rng.below(2) == 0,
            name: format!("res-{}", rng.below(4)),
        },
        operation: Some(Operation::ALL[rng.below(9) as usize]),
        effect: if rng.below(3) == 0 {
            Effect::Deny
        } else {
            Effect::Allow
        },
    }
}

fn random_quota_principal(rng: &mut Rng) -> String {
    ["alice", "bob", "*"][rng.below(3) as usize].to_string()
}

fn random_op(rng: &mut Rng, step: u64) -> AccessOp {
    match rng.below(6) {
        0 => AccessOp::CreateToken(StoredToken {
            id: rng.below(6),
            principal: format!("user-{}", rng.below(3)),
            secret_sha256: [step as u8; 32],
            created_at_ms: START_MS + step as i64,
            expires_at_ms: (rng.below(2) == 0).then_some(START_MS + 1000),
            description: "x".repeat(rng.below(100) as usize),
        }),
        1 => AccessOp::RevokeToken { id: rng.below(6) },
        2 => AccessOp::AddRule(random_rule(rng)),
        3 => AccessOp::RemoveRule(random_rule(rng)),
        4 => {
            let principal = random_quota_principal(rng);
            let mut limit = || (rng.below(2) == 0).then(|| 1 + rng.below(1 << 20));
            AccessOp::SetQuota(Quota {
                principal,
                limits: QuotaLimits {
                    publish_bytes_per_sec: limit(),
                    consume_bytes_per_sec: limit(),
                    requests_per_sec: limit(),
                    topics_max: limit(),
                    partitions_max: limit(),
                },
            })
        }
        _ => AccessOp::RemoveQuota {
            principal: random_quota_principal(rng),
        },
    }
}

#[derive(Debug, Default)]
struct Ledger {
    acked: Model,
    in_flight: Option<Vec<AccessOp>>,
}

fn run_workload(
    fs: &FaultyFs,
    dir: &Path,
    seed: u64,
    ledger: &mut Ledger,
    slot: &mut Option<AccessLog>,
) -> Result<()> {
    let mut rng = Rng::new(seed);
    *slot = Some(open(fs, dir)?);
    for step in 0..WORKLOAD_STEPS {
        let log = slot.as_ref().expect("open");
        match rng.below(100) {
            0..=74 => {
                let ops: Vec<_> = (0..1 + rng.below(3))
                    .map(|_| random_op(&mut rng, step))
                    .collect();
                ledger.in_flight = Some(ops.clone());
                log.append(ops.clone())?;
                ledger.in_flight = None;
                for op in ops {
                    apply(&mut ledger.acked, op);
                }
            }
            75..=86 => log.compact()?,
            _ => {
                drop(slot.take());
                *slot = Some(open(fs, dir)?);
            }
        }
    }
    Ok(())
}

fn crash_point(seed: u64, crash_at: Option<u64>, ending: u64) -> (bool, u64) {
    let scratch = scratch_dir();
    let dir = scratch.path();
    let fs = FaultyFs::new(dir, seed).unwrap();
    if seed % 2 == 1 {
        fs.set_short_writes(Some(3));
    }
    if let Some(at) = crash_at {
        fs.power_off_after(at);
    }
    let mut ledger = Ledger::default();
    let mut slot = None;
    let outcome = run_workload(&fs, dir, seed, &mut ledger, &mut slot);
    let powered_off = fs.is_powered_off();
    if let Err(error) = &outcome {
        assert!(
            powered_off,
            "seed {seed} at {crash_at:?}: failed with the power on: {error}"
        );
    }
    drop(slot);
    let ops = fs.ops();
    let context = format!("seed {seed}, crash after op {crash_at:?}, ending {ending}");
    let mut allowed = vec![ledger.acked.clone()];
    if let Some(in_flight) = &ledger.in_flight {
        let mut with = ledger.acked.clone();
        for op in in_flight.iter().cloned() {
            apply(&mut with, op);
        }
        allowed.push(with);
    }
    match ending {
        0 | 1 => {
            let options = if ending == 1 {
                CrashOptions::keep_some(seed * 1_000_003 + crash_at.unwrap_or(0))
            } else {
                CrashOptions::lose_unsynced()
            };
            fs.crash(options).unwrap();
        }
        _ => fs.kill_process(),
    }
    let log = reopen(&fs, dir, &context);
    let shown = dump(&log);
    assert!(
        allowed.contains(&shown),
        "{context}: recovered {shown:?}, expected one of {allowed:?}"
    );
    drop(log);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    assert_eq!(
        dump(&reopen(&fs, dir, &context)),
        shown,
        "{context}: after a second power cut"
    );
    (powered_off, ops)
}

fn seeds() -> u64 {
    std::env::var("TIDELOG_FAULT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

#[test]
fn every_crash_point_keeps_every_acknowledged_token_rule_and_quota_change() {
    let mut points = 0;
    for seed in 0..seeds() {
        let (powered_off, total) = crash_point(seed, None, 0);
        assert!(!powered_off);
        assert!(
            total > 60,
            "the workload did too little: {total} operations"
        );
        for at in 1..=total {
            let (powered_off, _) = crash_point(seed, Some(at), at % 3);
            assert!(powered_off, "seed {seed}: op {at} of {total} never ran");
            points += 1;
        }
    }
    eprintln!("access state: {points} crash points checked");
}

fn admin_rule() -> Rule {
    Rule {
        principal: "admin".into(),
        resource: ResourcePattern::parse("cluster").unwrap(),
        operation: Some(Operation::Admin),
        effect: Effect::Allow,
    }
}

fn deny_rule() -> Rule {
    Rule {
        effect: Effect::Deny,
        ..admin_rule()
    }
}

#[test]
fn a_failed_fdatasync_refuses_the_change_and_poisons_until_reopened() {
    let scratch = scratch_dir();
    let dir = scratch.path();
    let fs = FaultyFs::new(dir, 1).unwrap();
    let log = open(&fs, dir).unwrap();
    log.append_one(AccessOp::AddRule(admin_rule())).unwrap();
    fs.fail_sync(
        SyncFault::nth(1)
            .kinds(&[SyncKind::Data])
            .path_contains("access.statelog"),
    );
    // A deny the broker did not acknowledge must not be enforced, nor the revocation
    // pretended.
    let failed = log.append_one(AccessOp::AddRule(deny_rule())).unwrap_err();
    assert!(matches!(failed, Error::Poisoned { .. }), "{failed}");
    assert!(matches!(
        log.append_one(AccessOp::RemoveRule(admin_rule())),
        Err(Error::Poisoned { .. })
    ));
    assert_eq!(dump(&log).1, BTreeSet::from([admin_rule()]));
    drop(log);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    let log = reopen(&fs, dir, "after EIO");
    assert_eq!(dump(&log).1, BTreeSet::from([admin_rule()]));
    log.append_one(AccessOp::AddRule(deny_rule())).unwrap();
    assert_eq!(
        log.read(|a| a.decide("admin", Operation::Admin, ResourceKind::Cluster, "")),
        access::Decision::Deny
    );
}

#[test]
fn a_full_disk_fails_changes_cleanly_and_they_resume_with_room() {
    let scratch = scratch_dir();
    let dir = scratch.path();
    let fs = FaultyFs::new(dir, 2).unwrap();
    let log = open(&fs, dir).unwrap();
    log.append_one(AccessOp::AddRule(admin_rule())).unwrap();
    let before = dump(&log);
    fs.set_disk_full(true);
    let failed = log
        .append_one(AccessOp::CreateToken(StoredToken {
            id: 1,
            principal: "alice".into(),
            secret_sha256: [1; 32],
            created_at_ms: START_MS,
            expires_at_ms: None,
            description: String::new(),
        }))
        .unwrap_err();
    assert!(
        !matches!(failed, Error::Poisoned { .. }),
        "ENOSPC must not poison: {failed}"
    );
    assert_eq!(dump(&log), before);
    log.check_writable().unwrap();
    fs.set_disk_full(false);
    log.append_one(AccessOp::RevokeToken { id: 1 }).unwrap();
    log.append_one(AccessOp::AddRule(deny_rule())).unwrap();
    let after = dump(&log);
    drop(log);
    fs.crash(CrashOptions::lose_unsynced()).unwrap();
    assert_eq!(dump(&reopen(&fs, dir, "after ENOSPC")), after);
    assert_eq!(Access::NAME, "access control");
}
