//! Checking what the consumers received, so a fast but wrong broker cannot look good.
//!
//! While consuming, each consumer keeps a [`PartitionCheck`] per partition. Per
//! message it checks the payload's checksum, that the message sits in the partition
//! it was sent to, that offsets only go up, and that each producer's sequence goes
//! up by exactly one. It records what it saw as *runs*: ranges of consecutive
//! offsets, with each producer's first and last sequence within the run.
//!
//! At the end [`merge`] lays the runs of a partition (from one consumer, or from all
//! consumers that shared the partition) side by side and checks that they tile the
//! expected offset range exactly once (no offset missing, none delivered twice) and
//! that each producer's sequences continue across runs, start at 0 when the bench
//! wrote the partition itself, and end at the count the producers were acked for.
//!
//! With a filter (`bench consume --filter`) the bench knows which sequences match (a
//! [`Matches`] table over the `bench-pct` header, sequence mod 100): each message must
//! be one of them, offsets and each producer's sequences only go up, no offset comes
//! twice, and each producer's count is exactly the matching part of what it was acked
//! for. Gaps are what the filter skipped.

use std::collections::BTreeMap;

use super::payload::{Header, open};
use crate::terms::half_open;

/// Error messages kept for the report (all are counted).
pub const ERRORS_KEPT: usize = 20;

/// Counted errors with the first few messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Errors {
    pub count: u64,
    pub first: Vec<String>,
}

impl Errors {
    pub fn push(&mut self, message: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.len() < ERRORS_KEPT {
            self.first.push(message());
        }
    }

    pub fn extend(&mut self, other: Errors) {
        self.count += other.count;
        for message in other.first {
            if self.first.len() < ERRORS_KEPT {
                self.first.push(message);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Which sequence numbers mod 100 a filter matches (`bench consume --filter`).
pub type Matches = [bool; 100];

/// How many of the sequences `0..sent` match.
pub fn matching(matches: &Matches, sent: u64) -> u64 {
    let per_hundred = matches.iter().filter(|m| **m).count() as u64;
    let partial = (0..sent % 100).filter(|s| matches[*s as usize]).count() as u64;
    sent / 100 * per_hundred + partial
}

/// One producer's sequences within a run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    /// (run id, producer id).
    key: (u32, u32),
    first_sequence: u64,
    last_sequence: u64,
    /// Messages in the span.
    count: u64,
}

/// Consecutive offsets one consumer received from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    first_offset: u64,
    /// One past the last offset.
    next_offset: u64,
    spans: Vec<Span>,
}

/// What one consumer saw of one partition.
#[derive(Debug, Clone)]
pub struct PartitionCheck {
    pub partition: u32,
    /// Only messages of this bench run are expected (e2e, and consume of a topic the
    /// bench filled itself); `None` accepts any run.
    run_filter: Option<u32>,
    /// With a filter on the bench's own run: the sequences it matches.
    matches: Option<std::sync::Arc<Matches>>,
    runs: Vec<Run>,
    /// Index of the span the last message hit (producers send in batches, so the
    /// next message usually has the same producer).
    last_span: usize,
    /// Messages received, valid or not.
    pub messages: u64,
    /// Payload bytes received.
    pub bytes: u64,
    pub errors: Errors,
}

impl PartitionCheck {
    pub fn new(partition: u32, run_filter: Option<u32>) -> PartitionCheck {
        PartitionCheck {
            partition,
            run_filter,
            matches: None,
            runs: Vec::new(),
            last_span: 0,
            messages: 0,
            bytes: 0,
            errors: Errors::default(),
        }
    }

    /// Expects only the sequences `matches` selects (gaps are what a filter skipped).
    pub fn filtered(mut self, matches: Option<std::sync::Arc<Matches>>) -> Self {
        self.matches = matches;
        self
    }

    /// Checks one message at `offset`; returns its header if it is a valid bench
    /// message of the expected run (for latency).
    pub fn message(&mut self, offset: u64, value: &[u8]) -> Option<Header> {
        self.messages += 1;
        self.bytes += value.len() as u64;
        let partition = self.partition;
        match self.runs.last_mut() {
            Some(run) if offset == run.next_offset => run.next_offset += 1,
            Some(run) if offset < run.next_offset => {
                let last = run.next_offset - 1;
                self.errors.push(|| {
                    format!(
                        "partition {partition}: offset {offset} arrived after offset {last} (out of order or delivered twice)"
                    )
                });
                return None;
            }
            // The first message, or a gap (which merge reports unless another
            // consumer covered it).
            _ => {
                self.runs.push(Run {
                    first_offset: offset,
                    next_offset: offset + 1,
                    spans: Vec::new(),
                });
                self.last_span = 0;
            }
        }
        let header = match open(value) {
            Ok(header) => header,
            Err(error) => {
                self.errors
                    .push(|| format!("partition {partition} offset {offset}: {error}"));
                return None;
            }
        };
        if header.partition != partition {
            self.errors.push(|| {
                format!(
                    "partition {partition} offset {offset}: message was sent to partition {}",
                    header.partition
                )
            });
        }
        if let Some(run) = self.run_filter
            && header.run != run
        {
            self.errors.push(|| {
                format!(
                    "partition {partition} offset {offset}: message of another bench run ({:08x}, expected {run:08x})",
                    header.run
                )
            });
            return None;
        }
        if let Some(matches) = &self.matches
            && !matches[(header.sequence % 100) as usize]
        {
            let sequence = header.sequence;
            self.errors.push(|| {
                format!(
                    "partition {partition} offset {offset}: sequence {sequence} does not match the filter"
                )
            });
        }
        let key = (header.run, header.producer);
        let filtered = self.matches.is_some();
        let run = self
            .runs
            .last_mut()
            .expect("a run was just pushed or extended");
        let index = if run.spans.get(self.last_span).is_some_and(|s| s.key == key) {
            self.last_span
        } else if let Some(index) = run.spans.iter().position(|s| s.key == key) {
            index
        } else {
            run.spans.push(Span {
                key,
                first_sequence: header.sequence,
                last_sequence: header.sequence,
                count: 1,
            });
            self.last_span = run.spans.len() - 1;
            return Some(header);
        };
        self.last_span = index;
        let span = &mut run.spans[index];
        span.count += 1;
        let expected = span.last_sequence.wrapping_add(1);
        if filtered && header.sequence <= span.last_sequence {
            let (producer, got, last) = (header.producer, header.sequence, span.last_sequence);
            self.errors.push(|| {
                format!(
                    "partition {partition} offset {offset}: producer {producer} sequence {got} after {last} (duplicated or reordered messages)"
                )
            });
        } else if !filtered && header.sequence != expected {
            let (producer, got) = (header.producer, header.sequence);
            self.errors.push(|| {
                format!(
                    "partition {partition} offset {offset}: producer {producer} sequence {got}, expected {expected} (lost, duplicated or reordered messages)"
                )
            });
        }
        span.last_sequence = header.sequence;
        Some(header)
    }
}

/// What a partition should hold.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// First offset to be read.
    pub start: u64,
    /// One past the last offset to be read.
    pub end: u64,
    /// The bench's own run id when its producers wrote everything in the range:
    /// their sequences then start at 0 and end at the acked counts in `sent`.
    pub own_run: Option<u32>,
    /// Messages each producer (by id) was acked for in this partition.
    pub sent: BTreeMap<u32, u64>,
    /// With a filter on the bench's own run: the sequences it matches. Gaps are then
    /// expected; the counts are checked instead of the sequences' continuity.
    pub matches: Option<std::sync::Arc<Matches>>,
}

/// Checks that `checks` (of one partition) together cover the expected range once
/// and that every producer's sequence runs on across them; adds what is wrong to
/// `errors`.
pub fn merge(checks: &[&PartitionCheck], expected: &Expectation, errors: &mut Errors) {
    let Some(partition) = checks.first().map(|c| c.partition) else {
        if let Some(matches) = &expected.matches {
            let want: u64 = expected.sent.values().map(|&s| matching(matches, s)).sum();
            if want > 0 {
                errors.push(|| format!("{want} messages matching the filter were never delivered"));
            }
            return;
        }
        if expected.end > expected.start {
            errors.push(|| {
                format!(
                    "offsets {} were never delivered ({} messages)",
                    half_open(expected.start, expected.end),
                    expected.end - expected.start
                )
            });
        }
        return;
    };
    let mut runs: Vec<&Run> = checks.iter().flat_map(|c| c.runs.iter()).collect();
    runs.sort_by_key(|r| (r.first_offset, r.next_offset));
    let mut cursor = expected.start;
    let mut last_sequence: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut counts: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let filtered = expected.matches.is_some();
    for run in &runs {
        for span in &run.spans {
            *counts.entry(span.key).or_default() += span.count;
        }
        if filtered && run.first_offset >= cursor {
            // A gap is what the filter skipped.
        } else if run.first_offset > cursor {
            let (from, to) = (cursor, run.first_offset);
            errors.push(|| {
                format!(
                    "partition {partition}: offsets {} were never delivered ({} messages)",
                    half_open(from, to),
                    to - from
                )
            });
        } else if run.first_offset < cursor {
            let (from, to) = (run.first_offset, cursor.min(run.next_offset));
            errors.push(|| {
                format!(
                    "partition {partition}: offsets {} were delivered more than once",
                    half_open(from, to)
                )
            });
        }
        cursor = cursor.max(run.next_offset);
        if filtered {
            continue;
        }
        for span in &run.spans {
            match last_sequence.get(&span.key) {
                Some(&last) if span.first_sequence != last.wrapping_add(1) => {
                    let (producer, first) = (span.key.1, span.first_sequence);
                    errors.push(|| {
                        format!(
                            "partition {partition} offset {}: producer {producer} continues at sequence {first} after {last}",
                            run.first_offset
                        )
                    });
                }
                None if Some(span.key.0) == expected.own_run && span.first_sequence != 0 => {
                    let (producer, first) = (span.key.1, span.first_sequence);
                    errors.push(|| {
                        format!(
                            "partition {partition}: producer {producer}'s first message has sequence {first}, not 0 (earlier messages lost)"
                        )
                    });
                }
                _ => {}
            }
            last_sequence.insert(span.key, span.last_sequence);
        }
    }
    if let (Some(matches), Some(run)) = (&expected.matches, expected.own_run) {
        for (&producer, &sent) in &expected.sent {
            let want = matching(matches, sent);
            let seen = counts.get(&(run, producer)).copied().unwrap_or(0);
            if seen != want {
                errors.push(|| {
                    format!(
                        "partition {partition}: producer {producer} was acked for {sent} messages, {want} of which match the filter; consumers received {seen}"
                    )
                });
            }
        }
        if cursor > expected.end {
            let (from, to) = (expected.end, cursor);
            errors.push(|| {
                format!(
                    "partition {partition}: offsets {} lie past the expected end",
                    half_open(from, to)
                )
            });
        }
        return;
    }
    if cursor < expected.end {
        let (from, to) = (cursor, expected.end);
        errors.push(|| {
            format!(
                "partition {partition}: offsets {} were never delivered ({} messages)",
                half_open(from, to),
                to - from
            )
        });
    } else if cursor > expected.end {
        let (from, to) = (expected.end, cursor);
        errors.push(|| {
            format!(
                "partition {partition}: offsets {} lie past the expected end",
                half_open(from, to)
            )
        });
    }
    if let Some(run) = expected.own_run {
        for (&producer, &sent) in &expected.sent {
            let seen = last_sequence.get(&(run, producer)).map(|&last| last + 1);
            if sent > 0 && seen != Some(sent) {
                errors.push(|| {
                    format!(
                        "partition {partition}: producer {producer} was acked for {sent} messages, consumers saw {} of its sequence",
                        seen.map_or("none".to_string(), |s| half_open(0, s))
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::{FillerKind, HEADER_BYTES, Pool, fill};
    use super::*;

    const RUN: u32 = 0xabcd;

    fn message(producer: u32, partition: u32, sequence: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_BYTES + 20];
        let pool = Pool::new(FillerKind::Random, 9);
        let header = Header {
            run: RUN,
            producer,
            partition,
            sequence,
            sent_ns: 1,
        };
        fill(&mut bytes, &pool, sequence, &header);
        bytes
    }

    /// Two producers interleaved in batches of 3 into partition 0, offsets from 0.
    fn log(count: u64) -> Vec<(u64, Vec<u8>)> {
        let mut next = [0u64; 2];
        (0..count)
            .map(|offset| {
                let producer = ((offset / 3) % 2) as u32;
                let sequence = next[producer as usize];
                next[producer as usize] += 1;
                (offset, message(producer, 0, sequence))
            })
            .collect()
    }

    fn expectation(end: u64) -> Expectation {
        let mut sent = BTreeMap::new();
        // log(12): producer 0 has offsets 0-2, 6-8; producer 1 has 3-5, 9-11.
        sent.insert(0, end / 2);
        sent.insert(1, end / 2);
        Expectation {
            start: 0,
            end,
            own_run: Some(RUN),
            sent,
            matches: None,
        }
    }

    #[test]
    fn a_filtered_read_expects_exactly_the_matching_sequences() {
        // 400 messages from 2 producers (200 each); the filter keeps sequences 7 and
        // 50..=51 mod 100: 6 per producer.
        let mut matches = [false; 100];
        matches[7] = true;
        matches[50] = true;
        matches[51] = true;
        assert_eq!(matching(&matches, 200), 6);
        assert_eq!(matching(&matches, 151), 5);
        let matches = std::sync::Arc::new(matches);
        let log = log(400);
        let kept: Vec<_> = log
            .iter()
            .filter(|(_, value)| {
                let sequence = open(value).unwrap().sequence;
                matches[(sequence % 100) as usize]
            })
            .cloned()
            .collect();
        let expected = Expectation {
            matches: Some(matches.clone()),
            ..expectation(400)
        };
        let filtered = |messages: &[(u64, Vec<u8>)]| {
            let mut check = PartitionCheck::new(0, Some(RUN)).filtered(Some(matches.clone()));
            for (offset, value) in messages {
                check.message(*offset, value);
            }
            check
        };
        let check = filtered(&kept);
        assert!(check.errors.is_empty(), "{:?}", check.errors);
        let mut errors = Errors::default();
        merge(&[&check], &expected, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        // One lost: the count says so.
        let check = filtered(&kept[1..]);
        let mut errors = Errors::default();
        merge(&[&check], &expected, &mut errors);
        assert!(
            errors
                .first
                .iter()
                .any(|e| e.contains("6 of which match the filter; consumers received 5")),
            "{errors:?}"
        );
        // One that does not match, and one twice.
        let mut wrong = kept.clone();
        wrong.insert(1, log[14].clone());
        wrong.insert(3, kept[2].clone());
        let check = filtered(&wrong);
        assert!(
            check
                .errors
                .first
                .iter()
                .any(|e| e.contains("does not match the filter")),
            "{:?}",
            check.errors
        );
        assert!(check.errors.count >= 2, "{:?}", check.errors);
    }

    fn check(messages: &[(u64, Vec<u8>)]) -> PartitionCheck {
        let mut check = PartitionCheck::new(0, Some(RUN));
        for (offset, value) in messages {
            check.message(*offset, value);
        }
        check
    }

    #[test]
    fn a_complete_ordered_read_is_clean() {
        let log = log(12);
        let check = check(&log);
        assert!(check.errors.is_empty(), "{:?}", check.errors);
        assert_eq!(check.messages, 12);
        let mut errors = Errors::default();
        merge(&[&check], &expectation(12), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn consumers_that_split_a_partition_tile_it() {
        // A rebalance hands the partition over at offset 7.
        let log = log(12);
        let (a, b) = (check(&log[..7]), check(&log[7..]));
        let mut errors = Errors::default();
        merge(&[&b, &a], &expectation(12), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn a_lost_message_is_reported() {
        let mut log = log(12);
        log.remove(4);
        let check = check(&log);
        // A gap in the offsets starts a new run; no error yet.
        assert!(check.errors.is_empty(), "{:?}", check.errors);
        let mut errors = Errors::default();
        merge(&[&check], &expectation(12), &mut errors);
        assert!(
            errors
                .first
                .iter()
                .any(|e| e.contains("offsets 4 were never delivered")),
            "{errors:?}"
        );
        assert!(
            errors
                .first
                .iter()
                .any(|e| e.contains("continues at sequence 2 after 0")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_missing_tail_and_short_acks_are_reported() {
        let log = log(12);
        let check = check(&log[..10]);
        let mut errors = Errors::default();
        merge(&[&check], &expectation(12), &mut errors);
        assert!(
            errors.first.iter().any(|e| e.contains("offsets 10-11")),
            "{errors:?}"
        );
        assert!(
            errors
                .first
                .iter()
                .any(|e| e.contains("producer 1 was acked for 6 messages")),
            "{errors:?}"
        );
    }

    #[test]
    fn duplicates_and_reordering_are_reported() {
        let log = log(12);
        let mut twice = log.clone();
        twice.insert(5, log[4].clone());
        let check_twice = check(&twice);
        assert!(check_twice.errors.first[0].contains("offset 4 arrived after offset 4"));

        // The same offsets read by two consumers (e.g. a bad rebalance).
        let (a, b) = (check(&log[..8]), check(&log[6..]));
        let mut errors = Errors::default();
        merge(&[&a, &b], &expectation(12), &mut errors);
        assert!(
            errors
                .first
                .iter()
                .any(|e| e.contains("6-7 were delivered more than once")),
            "{errors:?}"
        );

        // A broker that swaps two values under consecutive offsets.
        let mut swapped = log.clone();
        let (v0, v1) = (swapped[0].1.clone(), swapped[1].1.clone());
        swapped[0].1 = v1;
        swapped[1].1 = v0;
        let c = check(&swapped);
        assert!(
            c.errors
                .first
                .iter()
                .any(|e| e.contains("producer 0 sequence 0, expected 2")),
            "{:?}",
            c.errors
        );
    }

    #[test]
    fn corruption_wrong_partition_and_foreign_runs_are_reported() {
        let log = log(3);
        let mut bad = log.clone();
        bad[1].1[HEADER_BYTES + 3] ^= 0x40;
        let c = check(&bad);
        // The corrupt message, and the gap it leaves in producer 0's sequence.
        assert_eq!(c.errors.count, 2);
        assert!(c.errors.first[0].contains("checksum"), "{:?}", c.errors);

        let mut c = PartitionCheck::new(1, Some(RUN));
        c.message(0, &message(0, 0, 0));
        assert!(c.errors.first[0].contains("was sent to partition 0"));

        let mut c = PartitionCheck::new(0, Some(RUN + 1));
        assert!(c.message(0, &message(0, 0, 0)).is_none());
        assert!(c.errors.first[0].contains("another bench run"));
        // Without a run filter, any run's messages are accepted.
        let mut c = PartitionCheck::new(0, None);
        assert!(c.message(0, &message(0, 0, 0)).is_some());
        assert!(c.errors.is_empty());
    }

    #[test]
    fn a_partition_nobody_read_is_all_missing() {
        let mut errors = Errors::default();
        merge(&[], &expectation(5), &mut errors);
        assert_eq!(errors.count, 1);
        let mut errors = Errors::default();
        merge(&[], &expectation(0), &mut errors);
        assert!(errors.is_empty());
    }

    #[test]
    fn errors_keep_the_first_few_and_count_all() {
        let mut errors = Errors::default();
        for i in 0..100 {
            errors.push(|| format!("e{i}"));
        }
        assert_eq!(errors.count, 100);
        assert_eq!(errors.first.len(), ERRORS_KEPT);
        let mut more = Errors::default();
        more.push(|| "x".into());
        errors.extend(more);
        assert_eq!(errors.count, 101);
    }
}
