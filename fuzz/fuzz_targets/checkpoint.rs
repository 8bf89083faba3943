//! The checkpoint file: never panics; a decoded checkpoint encodes back to its slot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::checkpoint::Checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Some(checkpoint) = Checkpoint::decode_file(data) {
        assert_eq!(Checkpoint::decode(&checkpoint.encode()), Some(checkpoint));
    }
});
