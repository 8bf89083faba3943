//! `tidelog segment ...`: offline dump, verify and repair of data files.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum SegmentCommand {
    /// Print the contents of a .log, .index, .timeindex, checkpoint or offsets.log file.
    #[command(
        after_help = "Examples:\n  tidelog segment dump DATA/topics/orders/0/00000000000000000000.log\n  tidelog segment dump DATA/topics/orders/0/00000000000000000000.log --records\n  tidelog segment dump DATA/topics/orders/0/00000000000000000000.timeindex\n\nWith --json, one JSON object per line (batch, record, entry, summary)."
    )]
    Dump(DumpArgs),

    /// Check every batch CRC and every index of a data directory (or a topic or partition directory).
    #[command(
        after_help = "Examples:\n  tidelog segment verify /var/lib/tidelog\n  tidelog segment verify /var/lib/tidelog/topics/orders/0 --json\n\nExit 0 when clean, 1 when a problem was found (each is named with its file and byte position).\nRun it with tidelogd stopped: a broker writing the active segment looks like a torn tail."
    )]
    Verify(DirArgs),

    /// Cut torn tails (keeping the cut bytes in a side file) and rebuild bad indexes.
    #[command(
        after_help = "Examples:\n  tidelog segment repair /var/lib/tidelog --dry-run\n  tidelog segment repair /var/lib/tidelog\n  tidelog segment repair /var/lib/tidelog/topics/orders/0 --force\n\nA torn tail (an incomplete last write) is cut; the bytes go to <segment>.log.torn-at-<position>.\nCorruption before the tail is refused unless --force, which cuts the log at the first bad\nbatch and moves later segments aside (*.removed-by-repair); the messages there are lost."
    )]
    Repair(RepairArgs),
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The file to dump.
    pub file: PathBuf,

    /// Also print every record of each batch.
    #[arg(long)]
    pub records: bool,

    /// Bytes of each key and value shown in the human format.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_value_bytes: usize,
}

#[derive(Debug, Args)]
pub struct DirArgs {
    /// Data directory, or a topic or partition directory in it.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Data directory, or a topic or partition directory in it.
    pub dir: PathBuf,

    /// Also cut at corruption before the tail (losing the messages after it).
    #[arg(long)]
    pub force: bool,

    /// Also cut a state log at a record a newer tidelogd wrote, to go back to this build
    /// without that build or a backup (the state recorded from there on is lost; its
    /// bytes are kept aside).
    #[arg(long)]
    pub discard_newer: bool,

    /// Only say what would be done.
    #[arg(long)]
    pub dry_run: bool,
}
