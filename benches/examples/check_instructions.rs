//! The broker's check of a published batch (`client_batch::validate_batch`) run ROUNDS
//! times over criterion's `wire/validate_batch_100B` batches (1,000 records of 100 B,
//! with and without 16-byte ids that count up), for counting its instructions, which
//! load on the machine does not move (this VM has no performance counters):
//!
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect='*validate_batch*' \
//!   target/release/examples/check_instructions 20 [ids]`
//!
//! The `Collected` total over 20 x 1,000 records is the instructions a record x 20,000.

use std::hint::black_box;

use bytes::Bytes;
use tidelog_benches::records;
use tidelog_storage::batch::{Compression, EncodeOptions, encode_batch};
use tidelog_storage::client_batch;

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: u32 = match args.next().map(|arg| arg.parse()) {
        None => 20,
        Some(Ok(rounds)) if rounds > 0 => rounds,
        Some(_) => {
            eprintln!("error: ROUNDS must be a positive number");
            std::process::exit(2);
        }
    };
    let ids = args.next().as_deref() == Some("ids");
    let now_ms = 1_700_000_000_000;
    let rules = client_batch::BatchRules {
        now_ms,
        max_message_bytes: 1 << 20,
        priority_levels: 1,
        expiry_required: false,
        relative_times: false,
    };
    let options = EncodeOptions {
        now_ms,
        default_ttl_ms: None,
        compression: Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 1,
    };
    let mut batch = records(1000, 100);
    for (n, record) in batch.iter_mut().enumerate() {
        record.timestamp_ms = Some(now_ms - 1000 + (n as i64 / 100));
        if ids {
            let mut id = [7u8; 16];
            id[8..].copy_from_slice(&(n as u64).to_be_bytes());
            record.id = Some(Bytes::copy_from_slice(&id));
        }
    }
    let bytes = Bytes::from(encode_batch(&batch, &options).expect("encode").bytes);
    for _ in 0..rounds {
        black_box(client_batch::validate_batch(black_box(&bytes), &rules).expect("valid"));
    }
}
