//! A whole segment fed to the recovery scanner: never panics, and every batch it
//! accepts as valid really is (CRC matches, offsets follow on), whether none, half or
//! all of the bytes are taken as fsynced before (the checkpoint's `durable_end`).
//!
//! Then the same bytes cut into up to three segments, with a checkpoint chosen from
//! the input, go through the recovery plan, with and without `force`: it never
//! panics, and its invariants hold: without `force` an opened partition loses no byte
//! the checkpoint says was fsynced; with `force` every such loss is reported; the end
//! it opens with lies inside the segment it names.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use tidelog_storage::batch::{self, BatchHeader};
use tidelog_storage::checkpoint::{self, Checkpoint};
use tidelog_storage::recovery::{
    self, Action, Content, IdIndexState, Observation, Observed, Outcome, PlanOptions,
};
use tidelog_storage::segment::{self, SegmentState};

fuzz_target!(|data: &[u8]| {
    scan_invariants(data);
    plan_invariants(data);
});

fn scan_invariants(data: &[u8]) {
    let len = data.len() as u64;
    for durable_end in [0, len / 2, len] {
        let report = segment::scan_durable(data, 0, SegmentState::new(0), durable_end);
        assert!(report.valid_bytes as usize <= data.len());
        // Walk what the scan accepted: each batch must parse, follow on and match its
        // CRC (unless reported as a corrupt batch, which reads refuse).
        let mut position = 0usize;
        let mut expected = 0u64;
        while position < report.valid_bytes as usize {
            let header = BatchHeader::parse(&data[position..]).expect("accepted batch parses");
            assert_eq!(header.base_offset, expected);
            let end = position + header.batch_length as usize;
            let corrupt = report
                .corrupt_batches
                .iter()
                .any(|c| c.position as usize == position);
            assert!(corrupt || batch::verify_crc(&data[position..end], &header));
            expected = header.next_offset();
            position = end;
        }
        assert_eq!(position as u64, report.valid_bytes);
        assert_eq!(report.state.summary.next_offset, expected);
    }
}

/// Up to three segments cut from `data` (after 12 control bytes), with bases that
/// follow on unless the control bytes ask for a gap, and a checkpoint somewhere.
fn plan_invariants(data: &[u8]) {
    let Some((control, rest)) = data.split_at_checked(12) else {
        return;
    };
    let count = 1 + usize::from(control[0] % 3);
    let mut cuts: Vec<usize> = control[1..count]
        .iter()
        .map(|&c| rest.len() * usize::from(c) / 256)
        .collect();
    cuts.sort_unstable();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(rest.len());
    let mut segments: Vec<(u64, &[u8])> = Vec::new();
    let mut base = 0u64;
    for (i, window) in bounds.windows(2).enumerate() {
        let bytes = &rest[window[0]..window[1]];
        let gap = u64::from(control[4 + i] % 4 == 0) * u64::from(control[4 + i]);
        base += gap;
        // Segment files are named by base: two never share one.
        if let Some(&(previous, _)) = segments.last() {
            base = base.max(previous + 1);
        }
        segments.push((base, bytes));
        // The next segment starts where this one's valid batches end (or past it).
        base = segment::scan(bytes, 0, SegmentState::new(base))
            .state
            .summary
            .next_offset;
    }
    let checkpoint = match control[8] % 4 {
        0 => None,
        pick => {
            let (segment_base, bytes) = segments[usize::from(pick) % segments.len()];
            let position = bytes.len() as u64 * u64::from(control[9]) / 128;
            Some(Checkpoint {
                sequence: 1,
                segment_base,
                position,
                next_offset: segment_base + u64::from(control[10]),
            })
        }
    };
    let dir = PathBuf::from("/fuzz");
    let observed: Vec<Observed> = segments
        .iter()
        .map(|&(base, bytes)| {
            let log_bytes = bytes.len() as u64;
            let trusted = checkpoint::trusted_bytes(checkpoint.as_ref(), base, log_bytes);
            Observed {
                base,
                path: segment::segment_path(&dir, base, segment::LOG_SUFFIX),
                log_bytes,
                content: Content::Scanned(segment::scan_durable(
                    bytes,
                    0,
                    SegmentState::new(base),
                    trusted,
                )),
                index_stale: control[11] & 1 == 1,
                id_index: match (control[11] >> 1) & 3 {
                    0 => IdIndexState::NotChecked,
                    1 => IdIndexState::Valid,
                    _ => IdIndexState::Invalid("damaged (fuzz)".into()),
                },
            }
        })
        .collect();
    let observation = Observation {
        dir: dir.clone(),
        checkpoint,
        segments: observed,
        leftovers: Vec::new(),
    };
    for force in [false, true] {
        let plan = recovery::plan(
            observation.clone(),
            PlanOptions {
                force,
                after_failed_fsync: control[11] & 2 == 2,
            },
        );
        let trusted_of = |base: u64| {
            let log_bytes = segments
                .iter()
                .find(|(b, _)| *b == base)
                .map_or(0, |(_, bytes)| bytes.len() as u64);
            checkpoint::trusted_bytes(checkpoint.as_ref(), base, log_bytes).min(log_bytes)
        };
        let removes_fsynced = plan.actions.iter().any(|action| match action {
            Action::CutTail { base, position, .. } => *position < trusted_of(*base),
            Action::Remove { base } => trusted_of(*base) > 0,
            _ => false,
        });
        match &plan.outcome {
            Outcome::Refused(_) => {
                assert!(!force, "a forced plan never refuses");
                assert!(plan.actions.is_empty(), "a refused plan does nothing");
            }
            Outcome::Open(recovered) => {
                if force {
                    assert!(
                        !removes_fsynced || plan.durable_data_lost,
                        "a forced plan removed fsynced bytes without reporting the loss"
                    );
                } else {
                    assert!(!removes_fsynced, "recovery removed fsynced bytes: {plan:?}");
                    assert!(!plan.durable_data_lost);
                }
                let end = recovered.end;
                assert!(end.offset >= end.segment_base);
                let segment_len = segments
                    .iter()
                    .find(|(b, _)| *b == end.segment_base)
                    .map(|(_, bytes)| bytes.len() as u64);
                if let Some(len) = segment_len {
                    assert!(end.position <= len, "end past its segment");
                } else {
                    assert!(
                        segments.is_empty(),
                        "the end names a segment that is not there"
                    );
                }
                if let Some(state) = &recovered.active {
                    assert_eq!(state.summary.next_offset, end.offset);
                    assert_eq!(state.summary.base_offset, end.segment_base);
                }
            }
        }
    }
}
