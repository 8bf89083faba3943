//! tidelog-storage: the storage engine under the tidelog broker.
//!
//! An append-only, segmented commit log per partition. Producers append record
//! batches ([`batch`]); a group-commit flusher makes many appends durable with one
//! fdatasync; readers map segments with mmap and get payloads as [`bytes::Bytes`] that
//! point into the mapping. See `storage/FORMAT.md` for the bytes on disk and
//! `ARCHITECTURE.md` at the repository root for the codemap.
//!
//! Every file operation goes through [`fs::FileSystem`]: [`fs::OsFs`] in production,
//! `fs::FaultyFs` in tests that simulate power cuts, fsync failures and full disks.
//!
//! The `testing` cargo feature adds the test-only API: `FaultyFs`, `ManualClock` and
//! `Store::simulate_crash`. Production builds (tidelogd, the CLI) leave it off.
//!
//! This crate knows nothing of the network: no tokio, no gRPC. Waiting for new data or
//! for durability is exposed as plain `std::future::Future`s and blocking calls.
#![deny(unsafe_code)]

pub mod access;
pub mod batch;
pub mod checkpoint;
pub mod client_batch;
pub mod clock;
mod condition;
pub mod config;
pub mod datetime;
pub mod dedup;
pub mod duration;
pub mod error;
pub mod filter;
mod flusher;
pub mod fs;
pub mod fsutil;
pub mod idindex;
pub mod index;
pub mod limits;
pub mod lookup;
#[allow(unsafe_code)] // The one module allowed unsafe: mapping segment files (see its docs).
mod mmap;
pub mod msgid;
pub mod offsets;
pub mod partition;
pub mod partitioner;
pub mod pattern;
pub mod procstat;
mod progress;
pub mod queue;
pub mod recovery;
pub mod rng;
pub mod segment;
pub mod statelog;
pub mod store;
pub mod topic;
pub mod topic_id;

pub use batch::{Compression, Header, NewRecord, Record};
#[cfg(any(test, feature = "testing"))]
pub use clock::ManualClock;
pub use clock::{Clock, SystemClock};
pub use config::{AckLevel, FsyncPolicy, QueueOverflow, RECORD_FEATURES, TopicConfig, TopicFile};
pub use dedup::{BatchPlaced, Placed, Placement};
pub use error::{Error, Result};
pub use filter::{Filter, FilterError, Verdict};
#[cfg(any(test, feature = "testing"))]
pub use fs::FaultyFs;
pub use fs::{FileSystem, OsFs};
pub use lookup::FoundMessage;
pub use offsets::{CommittedOffset, OffsetStore};
pub use partition::{
    Appended, BatchReadResult, FlushObserver, Partition, PartitionInfo, ReadResult,
    RetentionOutcome,
};
pub use pattern::{PatternError, TopicPattern};
pub use progress::{LogEnd, WaitDurable, WaitForAnyData, WaitForData};
pub use segment::StoredBatch;
pub use store::{Store, StoreOptions};
pub use topic::{Topic, TopicInfo};
pub use topic_id::TopicId;
