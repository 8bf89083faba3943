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

use tidelog_benches::wire_batch;
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
    let (bytes, rules) = wire_batch(ids);
    for _ in 0..rounds {
        black_box(client_batch::validate_batch(black_box(&bytes), &rules).expect("valid"));
    }
}
