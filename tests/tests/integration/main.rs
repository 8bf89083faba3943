//! Black-box tests: the real tidelogd, spoken to as a client.

mod bad_requests;
mod bench;
mod bit_flips;
mod broker;
mod cli;
mod cli_damage;
mod cli_frictions;
mod dedup;
mod filters;
mod garbage;
mod groups;
mod kill9;
mod message_lookup;
mod message_metadata;
mod metrics_http;
mod positions;
mod queue_cli;
mod queues;
mod read_budget;
mod recovery;
mod retention_race;
mod signals;
mod soak;
mod stream_limits;
mod support;
mod torn;
