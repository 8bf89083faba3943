//! Every maximum the engine enforces, with its unit last in the name and the reason
//! beside it. Sizes that come from disk or the network are checked against these
//! before anything is allocated.

/// Largest value + key + headers of one record that a topic may be configured to
/// accept. The per-topic `max_message_bytes` defaults lower.
pub const MESSAGE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Default per-topic message size limit (1 MiB, as Kafka's `message.max.bytes`).
pub const MESSAGE_BYTES_DEFAULT: u64 = 1024 * 1024;

/// Largest encoded record batch, header included. Bounds every allocation made while
/// reading a batch, including the buffer a zstd batch decompresses into.
pub const BATCH_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Most records in one batch. Bounds the record vector a decode allocates.
pub const BATCH_RECORDS_MAX: u32 = 1 << 20;

/// Most records a read reserves room for before it starts (16,384 records, about
/// 3 MiB): past it the record vector grows as it fills.
pub const READ_RESERVE_RECORDS_MAX: u64 = 16 * 1024;

/// Most places in one batch a partition remembers that reads stopped at
/// ([`crate::segment::ResumePoints`]): a few readers going through one large batch side
/// by side (fan-out queues, several subscribers) each go on where they stopped.
pub const READ_RESUME_POINTS_MAX: usize = 4;

/// A place a read stopped at that no read used for this long is forgotten, and with
/// the last one the decompressed records section of a zstd batch it held (at most
/// [`BATCH_BYTES_MAX`] per partition).
pub const READ_RESUME_IDLE_MS: i64 = 30_000;

/// Most headers on one record.
pub const RECORD_HEADERS_MAX: u32 = 1024;

/// Longest topic name (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Most partitions in one topic.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;

/// Segment size bounds. Index entries store positions as u32, so a segment (plus the
/// one batch that may overflow it) must stay below 4 GiB.
pub const SEGMENT_BYTES_MIN: u64 = 4 * 1024;
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Default bound on segments mapped at once across a store. Each mapping costs
/// address space and a kernel mapping entry (the default `vm.max_map_count` is 65530),
/// not memory: pages come from the page cache.
pub const MAPPED_SEGMENTS_DEFAULT: usize = 4096;

/// Longest a segment file can be: a full segment plus the one batch that may overflow
/// it. Every segment is mapped at this length (so the active one grows inside one
/// mapping), and offline tools read no log file longer.
pub const SEGMENT_FILE_BYTES_MAX: u64 = SEGMENT_BYTES_MAX + BATCH_BYTES_MAX;

/// One offset-index and time-index entry is written per this many log bytes.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;

/// Most entries in one index file. Bounds the entries vector a decode allocates: the
/// longest segment file has one entry per `INDEX_INTERVAL_BYTES` (272,384 of them);
/// the margin leaves room for a smaller interval later.
pub const INDEX_ENTRIES_MAX: u32 = 4 * 1024 * 1024;

/// Longest message id a producer may give a message (opaque bytes).
pub const MESSAGE_ID_BYTES_MAX: usize = 128;

/// A topic's dedup window when its config does not say: 2 minutes (JetStream's).
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 2 * 60 * 1000;
/// Longest dedup window: 7 days.
pub const DEDUP_WINDOW_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most message ids one segment holds, and so entries in one id index (`.idindex`,
/// 16 bytes each). A segment rolls before an append would take its ids past this,
/// as it rolls at `segment_bytes`: compression lets a segment hold far more records
/// than its size suggests, and this bounds the active segment's ids in memory and an
/// id index file (128 MiB at most) whatever the ratio.
pub const ID_INDEX_ENTRIES_MAX: u32 = 8 * 1024 * 1024;

/// Longest valid id index file (56-byte header, 16 bytes an id at most): nothing longer is
/// read or mapped.
pub const ID_INDEX_FILE_BYTES_MAX: u64 = 56 + 16 * ID_INDEX_ENTRIES_MAX as u64;

/// Most priority levels a topic may have; priorities run from 0 (lowest) to
/// `PRIORITY_LEVELS_MAX - 1`.
pub const PRIORITY_LEVELS_MAX: u8 = 10;

/// Longest consumer group id and commit metadata string.
pub const GROUP_ID_BYTES_MAX: usize = 255;
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;

/// Longest filter expression (`crate::filter`): it comes from the network, is parsed
/// once per subscription and kept for its life.
pub const FILTER_BYTES_MAX: usize = 4096;
/// Deepest nesting of a filter (parentheses and `!`): bounds the parser's and the
/// evaluator's recursion.
pub const FILTER_DEPTH_MAX: usize = 32;
/// Most nodes (conditions, `&&` / `||` / `!`, list values) in one filter: bounds the
/// memory a filter holds and the work one message costs.
pub const FILTER_NODES_MAX: usize = 512;
/// Most records one filtered read skips: a read under a filter that skips nearly
/// everything still returns (with `next_offset` past what it skipped) after this many,
/// so one read never holds its thread for long.
pub const FILTER_SCAN_RECORDS_MAX: u32 = 16 * 1024;
/// Most key, value and header bytes of skipped records one filtered read looks at
/// (the same purpose as `FILTER_SCAN_RECORDS_MAX`, for large messages). With a `json`
/// condition each of those bytes may be parsed: this bounds the time a read holds its
/// thread (tens of ms at serde_json's speed).
pub const FILTER_SCAN_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Largest value a filter parses as JSON: a longer one does not match a `json`
/// condition (as a value that is not JSON). Bounds the memory one evaluation takes
/// (a parsed JSON tree is several times its text).
pub const FILTER_JSON_VALUE_BYTES_MAX: usize = 1024 * 1024;

/// Longest topic pattern (`crate::pattern`): it comes from the network and is
/// compiled once per subscription, group member or queue.
pub const TOPIC_PATTERN_BYTES_MAX: usize = 1024;
/// Most bytes a topic pattern's compiled program may take (`regex`'s `size_limit`):
/// a pattern over it (`(\w{100}){100}`) is refused, not compiled for seconds.
pub const TOPIC_PATTERN_COMPILED_BYTES_MAX: usize = 256 * 1024;
/// Most bytes of lazy-DFA cache one topic pattern may use (`regex`'s
/// `dfa_size_limit`).
pub const TOPIC_PATTERN_DFA_BYTES_MAX: usize = 1024 * 1024;
/// Deepest nesting of a topic pattern (`regex`'s `nest_limit`): bounds the parser's
/// recursion.
pub const TOPIC_PATTERN_NEST_MAX: u32 = 32;

/// Largest config or checkpoint file read from disk.
pub const SMALL_FILE_BYTES_MAX: u64 = 64 * 1024;

const _: () = assert!(MESSAGE_BYTES_DEFAULT <= MESSAGE_BYTES_MAX);
// A filter's nesting is within its node count.
const _: () = assert!(FILTER_DEPTH_MAX <= FILTER_NODES_MAX);
// A filter fits a state-log string (str16) so a queue can keep it.
const _: () = assert!(FILTER_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(MESSAGE_BYTES_MAX < BATCH_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
// A full segment plus one maximal batch must be addressable by a u32 index position.
const _: () = assert!(SEGMENT_FILE_BYTES_MAX < u32::MAX as u64);
// Every entry the longest segment file can need fits the index bound.
const _: () = assert!(SEGMENT_FILE_BYTES_MAX / INDEX_INTERVAL_BYTES <= INDEX_ENTRIES_MAX as u64);
// A mapping of the longest segment file fits the address space of a 64-bit usize.
const _: () = assert!(SEGMENT_FILE_BYTES_MAX <= usize::MAX as u64);
// One batch's ids always fit a new segment, so a roll makes room for any append.
const _: () = assert!(ID_INDEX_ENTRIES_MAX >= BATCH_RECORDS_MAX);
// An id index is never longer than the longest segment file it describes.
const _: () = assert!(ID_INDEX_FILE_BYTES_MAX <= SEGMENT_FILE_BYTES_MAX);
// Relative offsets and positions in an entry are u32.
const _: () = assert!(SEGMENT_FILE_BYTES_MAX < u32::MAX as u64);

/// Largest body of one record of a durable state log (`statelog`; the consumer offsets
/// log is one). Bounds the allocation a replay makes from a length read off disk, what
/// one `StateLog::append` call may carry (its operations share one record), and so the
/// largest operation. For offsets: about 3,800 maximal commit entries in one call.
pub const STATE_RECORD_BODY_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// The consumer offsets log is a state log: its records have the same bound.
pub const OFFSET_RECORD_BODY_BYTES_MAX: u32 = STATE_RECORD_BODY_BYTES_MAX;

/// Bytes a state log reads from its file at a time while replaying it. Replay holds at
/// most `max(STATE_READ_CHUNK_BYTES, one whole record)` of the file in memory, whatever
/// the file's length.
pub const STATE_READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Target body size of the records a state-log compaction writes: the snapshot goes to
/// disk one record at a time, so a compaction holds about this much encoded state in
/// memory besides the live state itself, never a second copy of all of it.
pub const STATE_SNAPSHOT_RECORD_BODY_BYTES: usize = 1024 * 1024;

// A record's length, header included, fits in u32 and so in usize on every target.
const _: () = assert!((STATE_RECORD_BODY_BYTES_MAX as u64) + 8 <= u32::MAX as u64);
const _: () = assert!(STATE_SNAPSHOT_RECORD_BODY_BYTES <= STATE_RECORD_BODY_BYTES_MAX as usize);
const _: () = assert!(STATE_READ_CHUNK_BYTES <= STATE_RECORD_BODY_BYTES_MAX as usize);

/// Longest principal name (a token's owner or a certificate subject) in the access
/// state (`crate::access`).
pub const ACCESS_PRINCIPAL_BYTES_MAX: usize = 255;
/// Longest resource name or prefix in an authorization rule: the longest of the topic,
/// group and queue names.
pub const ACCESS_NAME_BYTES_MAX: usize = 255;
/// Longest free-form description of a token.
pub const ACCESS_DESCRIPTION_BYTES_MAX: usize = 256;
/// Tokens the broker keeps (they are all in memory; revoking one removes it).
pub const ACCESS_TOKENS_MAX: usize = 10_000;
/// Authorization rules the broker keeps; every call scans them, so they stay few.
pub const ACCESS_RULES_MAX: usize = 10_000;
/// Most quotas (one per principal, plus the default).
pub const ACCESS_QUOTAS_MAX: usize = 10_000;

const _: () = assert!(ACCESS_NAME_BYTES_MAX >= TOPIC_NAME_BYTES_MAX);
const _: () = assert!(ACCESS_NAME_BYTES_MAX >= GROUP_ID_BYTES_MAX);
