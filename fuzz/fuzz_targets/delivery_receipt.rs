//! A settlement's receipt (`Settlement.receipt`, text from the network): reading it
//! never panics, refuses what the broker does not make with one line that names
//! `QueueDelivery.receipt`, and what it accepts is within the longest receipt and
//! reads back the same once written again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_server::queues::receipt::{RECEIPT_BYTES_MAX, Receipt};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Receipt::parse(text) {
        Ok(receipt) => {
            assert!(text.len() <= RECEIPT_BYTES_MAX);
            assert!(!receipt.holder.is_empty());
            let again = Receipt::encode(receipt.run_ms, receipt.part, &receipt.holder);
            assert_eq!(Receipt::parse(&again), Ok(receipt));
        }
        Err(message) => {
            assert!(!message.contains('\n'), "{message}");
            assert!(message.contains("QueueDelivery.receipt"), "{message}");
        }
    }
});
