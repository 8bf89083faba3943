//! The two decoders of the delivery history (issue 14 item 4): the listing cursor's
//! text (from the network) and the history files' records (from disk).
//! - a cursor decodes or is refused with a reason, never a panic; a decoded cursor
//!   re-encodes to the same text;
//! - a history file image scans without a panic; its valid prefix scans clean with the
//!   same events; each decoded record re-encodes to the bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::queue::history::{HistoryEvent, ListCursor};
use tidelog_storage::statelog::{self, Record, ScanEnd};

fuzz_target!(|data: &[u8]| {
    // The cursor: the input as text, with the tag its own checksum would carry when
    // it is a cursor at all (so accepted cursors are reached, not only refusals).
    let text = String::from_utf8_lossy(data);
    for tag in [
        0u32,
        u32::from_le_bytes([
            data.get(1).copied().unwrap_or(0),
            data.get(2).copied().unwrap_or(0),
            data.get(3).copied().unwrap_or(0),
            data.get(4).copied().unwrap_or(0),
        ]),
    ] {
        if let Ok(cursor) = ListCursor::decode(&text, tag) {
            assert_eq!(cursor.encode(), text);
        }
    }
    if let Some(hex) = text.get(2..10)
        && let Ok(tag) = u32::from_str_radix(hex, 16)
        && let Ok(cursor) = ListCursor::decode(&text, tag.swap_bytes())
    {
        assert_eq!(cursor.encode(), text);
    }

    // The history file.
    if let Ok(Some((record, used))) = statelog::decode_record::<HistoryEvent>(data) {
        let encoded = statelog::encode_record(&record).expect("a decoded record re-encodes");
        assert_eq!(encoded.len(), used);
        assert_eq!(&encoded[..], &data[..used]);
    }
    let mut records: Vec<Record<HistoryEvent>> = Vec::new();
    let scan = statelog::scan_image::<HistoryEvent>(data, |_, record| records.push(record));
    assert!(scan.valid_len <= data.len() as u64);
    let mut again = Vec::new();
    let prefix = data.get(..scan.valid_len as usize).unwrap_or_default();
    let rescan = statelog::scan_image::<HistoryEvent>(prefix, |_, record| again.push(record));
    assert_eq!(rescan.end, ScanEnd::Clean);
    assert_eq!(again, records);
});
