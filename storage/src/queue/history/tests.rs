//! Unit and model tests of the history files and queries (OsFs in a temporary
//! directory, [`ManualClock`]: nothing sleeps). The fault tests are in
//! `storage/tests/history.rs`.

use std::sync::Arc;

use proptest::prelude::*;

use super::files::{HISTORY_FILE_SPAN_MS, QueueHistory};
use super::query::{LIST_LIMIT_MAX, ListRequest, list_events, message_attempts};
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::fs::OsFs;

const DAY_MS: u64 = 24 * 3600 * 1000;

fn event(partition: u32, offset: u64, attempt: u32, at_ms: i64, outcome: Outcome) -> HistoryEvent {
    HistoryEvent {
        partition,
        offset,
        attempt,
        at_ms,
        outcome,
        deadline_ms: if outcome == Outcome::Delivered {
            at_ms + 30_000
        } else {
            0
        },
        member: format!("m{}", offset % 3).into(),
        reason: if outcome == Outcome::Nacked {
            "busy".into()
        } else {
            String::new()
        },
    }
}

fn history(dir: &std::path::Path, clock: &Arc<ManualClock>) -> QueueHistory {
    QueueHistory::new(Arc::new(OsFs), dir.join("q"), clock.clone())
}

/// Every page of a listing, following the cursors.
fn all_pages(
    history: &QueueHistory,
    limit: u32,
    cheap: impl Fn(&HistoryEvent) -> bool,
) -> Vec<HistoryEvent> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = list_events(
            history,
            &ListRequest {
                since_ms: i64::MIN,
                until_ms: i64::MAX,
                limit,
                cursor,
                queue_tag: 7,
            },
            &cheap,
            |_| Ok(true),
        )
        .unwrap();
        assert!(page.events.len() <= limit as usize);
        out.extend(page.events);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
    panic!("the listing never ended");
}

#[test]
fn a_messages_attempts_are_folded_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let history = history(dir.path(), &clock);
    let mut events = Vec::new();
    for attempt in 1..=4 {
        let at = 1_000_000 + i64::from(attempt) * 10;
        events.push(event(0, 5, attempt, at, Outcome::Delivered));
        events.push(event(0, 6, attempt, at, Outcome::Delivered));
        let end = if attempt == 4 {
            Outcome::Terminated
        } else {
            Outcome::Nacked
        };
        events.push(event(0, 5, attempt, at + 1, end));
    }
    events.push(event(0, 5, 4, 1_000_050, Outcome::DeadLettered));
    history.append(events, DAY_MS).unwrap();
    let attempts = message_attempts(&history, 0, 5, 0, 3).unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![2, 3, 4],
        "the newest 3 of 4 attempts"
    );
    assert_eq!(
        attempts[0].outcome,
        Some((Outcome::Nacked, 1_000_021, "busy".into()))
    );
    assert_eq!(attempts[0].delivered_ms, Some(1_000_020));
    assert_eq!(attempts[2].outcome.as_ref().unwrap().0, Outcome::Terminated);
    assert_eq!(attempts[2].dead_lettered, Some((1_000_050, String::new())));
    assert!(message_attempts(&history, 1, 5, 0, 10).unwrap().is_empty());
    assert!(
        message_attempts(&history, 0, 5, 2_000_000, 10)
            .unwrap()
            .is_empty(),
        "events before `since` are not reported"
    );
}

#[test]
fn files_roll_by_age_and_are_pruned_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(10 * DAY_MS as i64);
    let history = history(dir.path(), &clock);
    for hour in 0..5u64 {
        let now = clock.now_ms();
        history
            .append(vec![event(0, hour, 1, now, Outcome::Acked)], DAY_MS)
            .unwrap();
        clock.advance_ms(HISTORY_FILE_SPAN_MS);
    }
    assert_eq!(history.files().unwrap().len(), 5, "one file an hour");
    // Now is 6 hours after the first file began; with 3 hours of retention the files
    // that end before hour 3 go (hours 0, 1, 2).
    clock.advance_ms(HISTORY_FILE_SPAN_MS);
    let removed = history.prune(clock.now_ms(), 3 * 3600 * 1000).unwrap();
    assert_eq!(removed, 3);
    let left: Vec<u64> = all_pages(&history, 10, |_| true)
        .iter()
        .map(|e| e.offset)
        .collect();
    assert_eq!(left, vec![4, 3]);
    // Nothing is recorded with a retention of 0.
    history
        .append(vec![event(0, 9, 1, clock.now_ms(), Outcome::Acked)], 0)
        .unwrap();
    assert_eq!(all_pages(&history, 10, |_| true).len(), 2);
}

#[test]
fn a_reopened_history_goes_on_in_its_newest_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    {
        let history = history(dir.path(), &clock);
        history
            .append(vec![event(0, 1, 1, 1_000_000, Outcome::Delivered)], DAY_MS)
            .unwrap();
    }
    clock.advance_ms(1000);
    let history = history(dir.path(), &clock);
    history
        .append(vec![event(0, 1, 1, 1_001_000, Outcome::Acked)], DAY_MS)
        .unwrap();
    assert_eq!(history.files().unwrap().len(), 1);
    let attempts = message_attempts(&history, 0, 1, 0, 10).unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_ref().unwrap().0, Outcome::Acked);
}

#[derive(Debug, Clone)]
enum Step {
    /// Append events for these (offset, outcome code) pairs.
    Append(Vec<(u64, usize)>),
    /// Advance the clock.
    Advance(i64),
    /// Drop the history and open it again.
    Reopen,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec((0u64..20, 0usize..8), 1..40).prop_map(Step::Append),
        2 => (1i64..2 * HISTORY_FILE_SPAN_MS).prop_map(Step::Advance),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Pages followed by cursors list exactly the model's events, newest first, for
    /// any page size and filter; a message's attempts are the model's newest ones.
    #[test]
    fn listings_and_attempts_match_a_plain_vec(
        steps in prop::collection::vec(arb_step(), 1..30),
        limit in 1u32..=LIST_LIMIT_MAX.min(40),
        keep in 1u32..5,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let mut history = history(dir.path(), &clock);
        let mut model: Vec<HistoryEvent> = Vec::new();
        let mut settled = std::collections::BTreeSet::new();
        let mut attempt = 0u32;
        for step in steps {
            match step {
                Step::Append(items) => {
                    let now = clock.now_ms();
                    let mut events: Vec<HistoryEvent> = Vec::new();
                    for (offset, outcome) in items {
                        // As in a queue: nothing happens to a message once it is settled.
                        if settled.contains(&offset) {
                            continue;
                        }
                        let outcome = Outcome::ALL[outcome];
                        if matches!(outcome, Outcome::Acked | Outcome::DeadLettered) {
                            settled.insert(offset);
                        }
                        attempt += 1;
                        events.push(event((offset % 2) as u32, offset, attempt % 7, now, outcome));
                    }
                    if !events.is_empty() {
                        history.append(events.clone(), 90 * DAY_MS).unwrap();
                    }
                    model.extend(events);
                }
                Step::Advance(ms) => clock.advance_ms(ms),
                Step::Reopen => history = self::history(dir.path(), &clock),
            }
        }
        let newest_first: Vec<HistoryEvent> = model.iter().rev().cloned().collect();
        prop_assert_eq!(&all_pages(&history, limit, |_| true), &newest_first);
        let failed: Vec<HistoryEvent> = newest_first
            .iter()
            .filter(|e| e.outcome.is_failure())
            .cloned()
            .collect();
        prop_assert_eq!(all_pages(&history, limit, |e| e.outcome.is_failure()), failed);
        for offset in 0..20u64 {
            let mut expected: std::collections::BTreeMap<u32, AttemptRecord> = Default::default();
            for e in model.iter().filter(|e| e.offset == offset && e.partition == (offset % 2) as u32) {
                expected.entry(e.attempt).or_insert_with(|| AttemptRecord { attempt: e.attempt, ..Default::default() });
            }
            let got = message_attempts(&history, (offset % 2) as u32, offset, 0, keep).unwrap();
            let want: Vec<u32> = expected.keys().rev().take(keep as usize).rev().copied().collect();
            prop_assert_eq!(got.iter().map(|a| a.attempt).collect::<Vec<_>>(), want);
        }
    }
}

/// The fuzz seeds of `fuzz/fuzz_targets/delivery_history.rs` are what they claim: a
/// cursor that decodes (and one cut short), a history file of three records (and the
/// same with a torn tail).
#[test]
fn the_fuzz_seeds_decode_as_named() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/delivery_history");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let cursor = String::from_utf8(read("cursor")).unwrap();
    let decoded = ListCursor::decode(&cursor, 0x1234_5678).unwrap();
    assert_eq!((decoded.position, decoded.index), (4096, 3));
    assert_eq!(decoded.encode(), cursor);
    let cut = String::from_utf8(read("cursor-cut")).unwrap();
    assert!(ListCursor::decode(&cut, 0x1234_5678).is_err());
    let mut events = Vec::new();
    let scan = crate::statelog::scan_image::<HistoryEvent>(&read("history-file"), |_, r| {
        events.extend(r.ops)
    });
    assert_eq!(scan.end, crate::statelog::ScanEnd::Clean);
    assert_eq!(scan.records, 3);
    assert_eq!(events[3].reason, "busy");
    assert_eq!(events[5].outcome, Outcome::DeadLettered);
    let torn = crate::statelog::scan_image::<HistoryEvent>(&read("history-torn"), |_, _| {});
    assert!(matches!(torn.end, crate::statelog::ScanEnd::Torn { .. }));
    assert_eq!(torn.records, 2);
}

#[test]
fn the_file_suffix_is_the_extension_with_its_dot() {
    assert_eq!(
        super::files::HISTORY_FILE_SUFFIX,
        format!(".{}", super::files::HISTORY_FILE_EXTENSION)
    );
}

/// A page that checked its budget of candidates returns what it found with a cursor
/// that goes on at the first unchecked one: following the cursors finds every match.
#[test]
fn the_check_budget_ends_a_page_early_and_its_cursor_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let history = history(dir.path(), &clock);
    let events: Vec<HistoryEvent> = (0..25_000u64)
        .map(|o| event(0, o, 1, 1_000_000, Outcome::Delivered))
        .collect();
    history.append(events, DAY_MS).unwrap();
    let mut found = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        pages += 1;
        let page = list_events(
            &history,
            &ListRequest {
                since_ms: i64::MIN,
                until_ms: i64::MAX,
                limit: 1000,
                cursor,
                queue_tag: 7,
            },
            |_| true,
            |e| Ok(e.offset % 1000 == 7),
        )
        .unwrap();
        found.extend(page.events.iter().map(|e| e.offset));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<u64> = (0..25u64).rev().map(|k| k * 1000 + 7).collect();
    assert_eq!(found, expected);
    assert_eq!(pages, 3, "10,000 checks a page");
}
