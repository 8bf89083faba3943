//! Where reads stopped inside a batch, so that the next read from there goes on from
//! that record instead of walking (and, for a zstd batch, decompressing) the batch
//! from its first record again. Without it, reading through one batch of `n` records
//! `k` at a time walks `n * n / (2 * k)` records: a batch of a million records, which
//! any client may publish, took tens of seconds to read 500 at a time.
//!
//! A partition keeps one [`ResumePoints`]: one batch (the last one a read stopped
//! inside), and up to [`READ_RESUME_POINTS_MAX`] places in it, each the offset a read
//! returned as its next one and the [`Mark`] of the iterator there. A read that starts
//! at one of those offsets in that batch goes on from its mark; any other read walks
//! as before (readers in different batches take turns, each correct). The batch's CRC
//! is still checked by every read; what is kept is only where the walk was, and for a
//! zstd batch its decompressed records section (which the records a read returned
//! slice anyway): never more than one section per partition, forgotten after
//! [`READ_RESUME_IDLE_MS`] without use.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::batch::{BatchHeader, Mark};
use crate::limits::{READ_RESUME_IDLE_MS, READ_RESUME_POINTS_MAX};

/// Where a partition's reads stopped inside one batch (see the module docs).
#[derive(Debug, Default)]
pub struct ResumePoints {
    batch: Mutex<Option<ResumeBatch>>,
    /// Records the reads walked (looked at, returned or not), for tests and diagnosis:
    /// reading through a batch walks each record about once.
    walked: AtomicU64,
}

/// The batch the places are in.
#[derive(Debug)]
struct ResumeBatch {
    /// [`super::Segment::id`] of the segment holding it.
    segment: u64,
    /// Its position in that segment.
    at: u64,
    /// Its header: a place is only used for the very batch it was taken in.
    header: BatchHeader,
    /// Its decompressed records section when it is compressed; `None` when the read's
    /// own bytes of the batch are the section (nothing is kept of the mapping).
    section: Option<Bytes>,
    /// Least recently used first.
    places: Vec<Place>,
}

#[derive(Debug, Clone, Copy)]
struct Place {
    /// The next offset the read that stopped here returned: every record before
    /// `mark` has a lower offset, every one from it on this or a higher one.
    from: u64,
    mark: Mark,
    used_ms: i64,
}

/// A place to go on from: the section to read (`None`: the batch's own bytes) and the
/// mark in it.
pub(super) struct Resume {
    pub section: Option<Bytes>,
    pub mark: Mark,
}

impl ResumePoints {
    pub fn new() -> Self {
        ResumePoints::default()
    }

    /// Where a read from `from` in the batch at `at` of segment `segment` whose header
    /// is `header` can go on, if a read stopped there.
    pub(super) fn find(
        &self,
        segment: u64,
        at: u64,
        header: &BatchHeader,
        from: u64,
        now_ms: i64,
    ) -> Option<Resume> {
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        forget_idle(&mut batch, now_ms);
        let kept = batch.as_mut()?;
        if kept.segment != segment || kept.at != at || kept.header != *header {
            return None;
        }
        let index = kept.places.iter().position(|p| p.from == from)?;
        let mut place = kept.places.remove(index);
        place.used_ms = now_ms;
        kept.places.push(place);
        Some(Resume {
            section: kept.section.clone(),
            mark: place.mark,
        })
    }

    /// Remembers that a read stopped at `mark` in that batch and returned `from` as its
    /// next offset. A place in another batch replaces every place kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn keep(
        &self,
        segment: u64,
        at: u64,
        header: &BatchHeader,
        section: Option<&Bytes>,
        from: u64,
        mark: Mark,
        now_ms: i64,
    ) {
        let place = Place {
            from,
            mark,
            used_ms: now_ms,
        };
        let mut batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        match batch.as_mut() {
            Some(kept) if kept.segment == segment && kept.at == at && kept.header == *header => {
                kept.places.retain(|p| p.from != from);
                if kept.places.len() >= READ_RESUME_POINTS_MAX {
                    kept.places.remove(0);
                }
                kept.places.push(place);
            }
            _ => {
                *batch = Some(ResumeBatch {
                    segment,
                    at,
                    header: *header,
                    section: section.cloned(),
                    places: vec![place],
                });
            }
        }
    }

    /// Forgets the places no read used for [`READ_RESUME_IDLE_MS`] (and the section
    /// with the last of them).
    pub fn forget_idle(&self, now_ms: i64) {
        forget_idle(
            &mut self.batch.lock().unwrap_or_else(|e| e.into_inner()),
            now_ms,
        );
    }

    /// How many places are kept.
    pub fn len(&self) -> usize {
        let batch = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        batch.as_ref().map_or(0, |b| b.places.len())
    }

    /// Whether no place is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn count_walked(&self, records: u64) {
        if records > 0 {
            self.walked.fetch_add(records, Ordering::Relaxed);
        }
    }

    /// Records reads have walked so far (see [`ResumePoints`]).
    pub fn walked(&self) -> u64 {
        self.walked.load(Ordering::Relaxed)
    }
}

fn forget_idle(batch: &mut Option<ResumeBatch>, now_ms: i64) {
    if let Some(kept) = batch.as_mut() {
        kept.places
            .retain(|p| now_ms.saturating_sub(p.used_ms) < READ_RESUME_IDLE_MS);
        if kept.places.is_empty() {
            *batch = None;
        }
    }
}
