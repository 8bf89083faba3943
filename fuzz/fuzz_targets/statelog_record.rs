//! The state log's record decoder and log scan, with a small operation type that uses
//! every `OpReader` field kind (str16, bytes16, counted items):
//! - decoding never panics; a decoded record re-encodes to bytes that decode to it;
//! - a scan of any bytes never panics; its valid prefix scans clean with the same
//!   records; it ends where the valid bytes end; a torn tail is never longer than one
//!   record; and a clean scan covers every byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::statelog::{
    self, DecodeError, LogOp, OpReader, RECORD_BYTES_MAX, Record, ScanEnd, put_bytes16, put_str16,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum FuzzOp {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
    Many { items: Vec<u64> },
}

impl LogOp for FuzzOp {
    fn encode(&self, out: &mut Vec<u8>) -> tidelog_storage::Result<()> {
        match self {
            FuzzOp::Put { key, value } => {
                out.push(1);
                put_str16(out, key);
                put_bytes16(out, value);
            }
            FuzzOp::Delete { key } => {
                out.push(2);
                put_str16(out, key);
            }
            FuzzOp::Many { items } => {
                out.push(3);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for item in items {
                    out.extend_from_slice(&item.to_le_bytes());
                }
            }
        }
        Ok(())
    }

    fn decode(reader: &mut OpReader<'_>) -> Result<Self, DecodeError> {
        match reader.u8("kind")? {
            1 => Ok(FuzzOp::Put {
                key: reader.str16("key", 1, 64)?,
                value: reader.bytes16("value", 0, 1024)?.to_vec(),
            }),
            2 => Ok(FuzzOp::Delete {
                key: reader.str16("key", 1, 64)?,
            }),
            3 => {
                let count = reader.count("items", 1, 8)?;
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(reader.u64("item")?);
                }
                Ok(FuzzOp::Many { items })
            }
            kind => Err(reader.unknown_kind(kind)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((record, used))) = statelog::decode_record::<FuzzOp>(data) {
        assert!(used <= data.len());
        let encoded = statelog::encode_record(&record).expect("a decoded record re-encodes");
        assert_eq!(encoded.len(), used);
        let (again, _) = statelog::decode_record::<FuzzOp>(&encoded)
            .expect("re-encoded record decodes")
            .expect("complete");
        assert_eq!(again, record);
    }

    let mut records: Vec<Record<FuzzOp>> = Vec::new();
    let scan = statelog::scan_image::<FuzzOp>(data, |_, record| records.push(record));
    let len = data.len() as u64;
    assert!(scan.valid_len <= len);
    assert_eq!(scan.file_bytes, len);
    assert_eq!(scan.records, records.len() as u64);
    match &scan.end {
        ScanEnd::Clean => assert_eq!(scan.valid_len, len),
        ScanEnd::Torn { position, .. } => {
            assert_eq!(*position, scan.valid_len);
            assert!(len - position <= RECORD_BYTES_MAX as u64);
        }
        ScanEnd::Corrupt { position, .. } | ScanEnd::Newer { position, .. } => {
            assert_eq!(*position, scan.valid_len)
        }
    }
    let mut again = Vec::new();
    let prefix = data.get(..scan.valid_len as usize).unwrap_or_default();
    let rescan = statelog::scan_image::<FuzzOp>(prefix, |_, record| again.push(record));
    assert_eq!(rescan.end, ScanEnd::Clean);
    assert_eq!(again, records);
});
