//! Output: aligned tables for humans, JSON for scripts, and a stdout writer that
//! turns a closed pipe (`tidelog consume t | head`) into a quiet exit.

use std::io::{self, IsTerminal, Write};

use serde_json::{Value, json};

use crate::error::{CliError, CliResult};

/// A table of text cells. A header starting with `>` marks a right-aligned column
/// (the `>` is not printed): numbers and sizes line up on their last digit.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers
                .iter()
                .map(|h| h.trim_start_matches('>').to_string())
                .collect(),
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table with two spaces between columns and no trailing blanks.
    pub fn render(&self) -> String {
        let width = |cell: &str| cell.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for cells in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - width(cell);
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines (`retention  7d`) with the keys padded to one width.
pub fn render_pairs(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// The style of a progress bar over bytes: `{prefix} 12 MiB/1 GiB [===>  ] 80 MiB/s eta
/// 11s`. Its ETA is the average rate since the start applied to what is left, and
/// `-` for the first second (indicatif's own ETA starts from no data and read "16h").
pub fn byte_progress_style(prefix: &str) -> indicatif::ProgressStyle {
    let template = format!(
        "{prefix}{{bytes}}/{{total_bytes}} [{{bar:30}}] {{bytes_per_sec}} eta {{steady_eta}}"
    );
    indicatif::ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key(
            "steady_eta",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&eta_text(
                    state.pos(),
                    state.len().unwrap_or(0),
                    state.elapsed(),
                ));
            },
        )
        .progress_chars("=> ")
}

/// What is left at the average rate so far; `-` before a second has passed or any
/// byte was done.
pub fn eta_text(done: u64, total: u64, elapsed: std::time::Duration) -> String {
    if elapsed < std::time::Duration::from_secs(1) || done == 0 {
        return "-".into();
    }
    let left = total.saturating_sub(done) as f64;
    let seconds = left * elapsed.as_secs_f64() / done as f64;
    tidelog_storage::duration::format_duration_ms((seconds * 1000.0).round() as u64 / 1000 * 1000)
}

/// Writes to stdout. A reader that went away (EPIPE) ends the command quietly.
pub struct Stdout {
    out: io::BufWriter<io::Stdout>,
    /// Flush after every write when a person is watching.
    interactive: bool,
}

impl Stdout {
    pub fn new() -> Self {
        let stdout = io::stdout();
        Stdout {
            interactive: stdout.is_terminal(),
            out: io::BufWriter::with_capacity(64 * 1024, stdout),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> CliResult<()> {
        self.out.write_all(bytes).map_err(stdout_error)?;
        if self.interactive {
            self.flush()?;
        }
        Ok(())
    }

    pub fn text(&mut self, text: &str) -> CliResult<()> {
        self.write(text.as_bytes())
    }

    pub fn line(&mut self, text: &str) -> CliResult<()> {
        self.out.write_all(text.as_bytes()).map_err(stdout_error)?;
        self.write(b"\n")
    }

    /// One JSON document (or one line of JSON lines).
    pub fn json(&mut self, value: &Value) -> CliResult<()> {
        self.line(&value.to_string())
    }

    /// A pretty JSON document, for commands that print one object.
    pub fn json_pretty(&mut self, value: &Value) -> CliResult<()> {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        self.line(&text)
    }

    pub fn flush(&mut self) -> CliResult<()> {
        self.out.flush().map_err(stdout_error)
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Stdout::new()
    }
}

fn stdout_error(error: io::Error) -> CliError {
    if error.kind() == io::ErrorKind::BrokenPipe {
        CliError::quiet()
    } else {
        CliError::io("writing to stdout", &error)
    }
}

/// A line for the operator on stderr (never fails, never panics).
pub fn note(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": "..."}`.
pub fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": base64(bytes) }),
    }
}

/// Standard base64 with padding (RFC 4648), for bytes that are not UTF-8.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (RFC 4648, padding optional; whitespace around it is
/// ignored). The error names the first bad character.
pub fn base64_decode(text: &[u8]) -> Result<Vec<u8>, String> {
    let text = text.trim_ascii();
    let text = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(text);
    let value = |c: u8, at: usize| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => {
                return Err(format!(
                    "byte {at} ({:?}) is not base64",
                    char::from(c).escape_default().to_string()
                ));
            }
        }
        .into())
    };
    if text.len() % 4 == 1 {
        return Err(format!("{} characters cannot be base64", text.len()));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for (index, chunk) in text.chunks(4).enumerate() {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c, index * 4 + i)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// A short printable preview of bytes for human dumps: UTF-8 with control characters
/// escaped, or hex for binary, cut at `max` bytes with the total length noted.
pub fn preview(bytes: &[u8], max: usize) -> String {
    let shown = &bytes[..bytes.len().min(max)];
    let mut out = String::from("\"");
    match std::str::from_utf8(shown) {
        Ok(text) => out.extend(text.chars().flat_map(char::escape_debug)),
        Err(e) if bytes.len() > max && e.error_len().is_none() => {
            // The cut landed inside a character: show the whole characters.
            let text = std::str::from_utf8(&shown[..e.valid_up_to()]).unwrap_or_default();
            out.extend(text.chars().flat_map(char::escape_debug));
        }
        Err(_) => {
            out.clear();
            out.push_str("0x");
            for b in shown {
                out.push_str(&format!("{b:02x}"));
            }
            if bytes.len() > max {
                out.push_str(&format!("... ({} bytes)", bytes.len()));
            }
            return out;
        }
    }
    out.push('"');
    if bytes.len() > max {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["TOPIC", ">PARTITIONS", ">SIZE"]);
        table.row(vec!["orders".into(), "3".into(), "1.5 GiB".into()]);
        table.row(vec!["a".into(), "12".into(), "0 B".into()]);
        assert_eq!(
            table.render(),
            "TOPIC   PARTITIONS     SIZE\n\
             orders           3  1.5 GiB\n\
             a               12      0 B\n"
        );
    }

    #[test]
    fn tables_pad_short_rows_and_trim_trailing_blanks() {
        let mut table = Table::new(&["A", "B"]);
        table.row(vec!["x".into()]);
        assert_eq!(table.render(), "A  B\nx\n");
        assert!(!table.is_empty());
    }

    #[test]
    fn pairs_line_up() {
        assert_eq!(
            render_pairs(&[("retention", "7d".into()), ("fsync", "always".into())]),
            "retention  7d\nfsync      always\n"
        );
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn the_eta_waits_for_a_rate_then_follows_the_average() {
        use std::time::Duration;
        // The first moments: no rate yet (indicatif's own read "16h").
        assert_eq!(eta_text(0, 1 << 30, Duration::from_millis(50)), "-");
        assert_eq!(eta_text(4096, 1 << 30, Duration::from_millis(900)), "-");
        assert_eq!(eta_text(0, 1 << 30, Duration::from_secs(3)), "-");
        // Half done in 10 s: 10 s left.
        assert_eq!(eta_text(500, 1000, Duration::from_secs(10)), "10s");
        assert_eq!(eta_text(100, 1000, Duration::from_secs(10)), "1m30s");
        assert_eq!(eta_text(1000, 1000, Duration::from_secs(10)), "0");
    }

    #[test]
    fn base64_decodes_what_it_encodes() {
        for plain in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(
                base64_decode(base64(plain.as_bytes()).as_bytes()),
                Ok(plain.into())
            );
        }
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(base64(&bytes).as_bytes()).unwrap(), bytes);
        assert_eq!(base64_decode(b"Zm9v\n"), Ok(b"foo".to_vec()));
        assert_eq!(base64_decode(b"Zg"), Ok(b"f".to_vec()));
        assert!(base64_decode(b"Zm9v!A").unwrap_err().contains("byte 4"));
        assert!(base64_decode(b"Z").is_err());
    }

    #[test]
    fn bytes_become_strings_or_base64() {
        assert_eq!(bytes_json(b"hello"), json!("hello"));
        assert_eq!(bytes_json(&[0xff, 0x00]), json!({"base64": "/wA="}));
    }

    #[test]
    fn previews_escape_and_cut() {
        assert_eq!(preview(b"hi\n", 10), "\"hi\\n\"");
        assert_eq!(preview(b"abcdef", 3), "\"abc\"... (6 bytes)");
        assert_eq!(preview(&[0xff, 0x01], 10), "0xff01");
        assert_eq!(preview("é".as_bytes(), 1), "\"\"... (2 bytes)");
    }
}
