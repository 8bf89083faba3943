//! Black-box tests: the real tidelogd, spoken to as a client.

mod bench;
mod broker;
mod cli;
mod groups;
mod metrics_http;
mod positions;
mod read_budget;
mod recovery;
mod reliability;
mod signals;
