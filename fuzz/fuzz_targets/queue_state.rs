//! The queue state's operation decoder (`storage/src/queue/state/codec.rs`): any bytes
//! decode to operations or a typed error, never a panic and never an allocation sized
//! by the input; every decoded operation applies to the queues' state machine without
//! a panic (operations about queues, partitions or offsets that do not exist are
//! no-ops), and one that re-encodes decodes back to itself. Every kind is reached,
//! the release of a lease given back unseen (16) included (the seed has one).
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
});
