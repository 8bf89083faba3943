//! Progress on stderr over the bytes of segment files, for `verify`, `repair` and
//! `dump` (a module of its own so that they need nothing of `segment/mod.rs`).

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::ProgressBar;

/// A progress bar over `total` bytes on stderr, hidden unless stderr is a terminal.
pub(super) fn byte_progress(total: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(crate::output::byte_progress_style(&format!("{label} ")));
    bar
}

/// The bytes of the `.log` files in `dirs` (partition directories).
pub(super) fn total_log_bytes(dirs: &[PathBuf]) -> u64 {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
