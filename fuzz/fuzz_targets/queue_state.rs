//! The queue state's operation decoder (`storage/src/queue/state/codec.rs`): any bytes
//! decode to operations or a typed error, never a panic and never an allocation sized
//! by the input; every decoded operation applies to the queues' state machine without
//! a panic (operations about queues, partitions or offsets that do not exist are
//! no-ops), and one that re-encodes decodes back to itself. Every kind is reached,
//! the release of a lease given back unseen (16) included (the seed `pattern` has
//! one), and the counted take (17) and the ahead counts (18) (the seed `counts`):
//! whatever they carry, each level's count of messages taken ahead stays within its
//! cursor's lead on the slowest cursor, and the ready count never underflows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::queue::{QueueOp, Queues};
use tidelog_storage::statelog::{LogOp, OpReader, StateMachine};

fuzz_target!(|data: &[u8]| {
    let mut reader = OpReader::new(data);
    let mut state = Queues::default();
    // Operations back to back, as in a record: stop at the first that does not decode.
    for _ in 0..64 {
        if reader.remaining() == 0 {
            break;
        }
        let Ok(op) = QueueOp::decode(&mut reader) else {
            break;
        };
        let mut encoded = Vec::new();
        if op.encode(&mut encoded).is_ok() {
            let mut again = OpReader::new(&encoded);
            assert_eq!(
                QueueOp::decode(&mut again).expect("re-encoded op decodes"),
                op
            );
            assert_eq!(again.remaining(), 0);
        }
        state.apply(op);
    }
    let pending: u64 = state
        .iter()
        .flat_map(|q| q.partitions.values())
        .map(|p| p.pending.len() as u64)
        .sum();
    assert_eq!(state.pending_total(), pending);
    for part in state.iter().flat_map(|q| q.partitions.values()) {
        assert_eq!(part.ahead.len(), part.cursors.len());
        let slowest = part.slowest();
        for (ahead, cursor) in part.ahead.iter().zip(&part.cursors) {
            assert!(*ahead <= cursor - slowest);
        }
        let end = part.cursors.iter().copied().max().unwrap_or(0);
        let (from, untaken) = part.untaken(0, end);
        assert!(from <= end && untaken <= end - from);
    }
});
