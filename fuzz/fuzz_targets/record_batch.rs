//! A record batch from disk or from the broker: any bytes decode to Ok or Err, never a
//! panic, and a batch that decodes has a matching CRC and records within its header's
//! offsets. A reader's decode of a returned batch (`client_batch::delivered_records`,
//! with the skip marks and the clock taken from the input's last bytes) delivers exactly
//! the decoded records it does not drop, or fails where decoding the whole batch fails
//! (a header key that is not UTF-8 on a dropped record aside: a reader checks only what
//! it delivers). Read in place (`open_returned`, `RecordIter::over_section`,
//! `for_each_delivered_view`, as tidelog-client's `Views` reads) it lends the same
//! records' bytes, or fails where that decode fails.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidelog_storage::batch::{self, BatchHeader, RecordIter};
use tidelog_storage::client_batch::{delivered_records, for_each_delivered_view, open_returned};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let decoded = batch::decode_batch(&bytes);
    if let Ok((header, records)) = &decoded {
        let whole = &data[..header.batch_length as usize];
        assert_eq!(batch::compute_crc(whole), header.crc);
        assert_eq!(records.len(), header.record_count as usize);
        for record in records {
            assert!(record.offset >= header.base_offset && record.offset <= header.last_offset());
        }
    }
    let _ = BatchHeader::parse(data);

    // The reader's side: the batch is the input whole (one batch expected); the skip
    // marks and clock come from its last bytes.
    let tail = |back: usize| data.len().checked_sub(back).map_or(0, |at| data[at]);
    let skip_front = u32::from(tail(1) % 8);
    let mut skip: Vec<u32> = (0..u32::from(tail(2) % 6))
        .map(|i| i * 3 + u32::from(tail(3) % 3))
        .collect();
    skip.sort_unstable();
    skip.dedup();
    let now_ms = if tail(4) & 1 == 0 { 0 } else { i64::MAX };
    let delivered = delivered_records(&bytes, skip_front, &skip, now_ms);
    // Read in place (tidelog-client's `Views`): the batch opened once, its section
    // walked again from the first record, each delivered record's headers checked. It
    // lends exactly what `delivered_records` makes, and fails where it fails.
    let lent = open_returned(&bytes).and_then(|(header, records)| {
        let mut again = RecordIter::over_section(records.section().clone(), &header);
        let mut lent = Vec::new();
        for_each_delivered_view(
            &mut again,
            header.base_offset,
            skip_front,
            &skip,
            now_ms,
            |records, view| {
                records.check_headers(view)?;
                let raw = records.raw(view);
                lent.push((view.offset, raw.key.map(<[u8]>::to_vec), raw.value.to_vec()));
                Ok(())
            },
        )?;
        Ok(lent)
    });
    match (&delivered, lent) {
        (Ok(got), Ok(lent)) => {
            let made: Vec<_> = got
                .iter()
                .map(|r| {
                    (
                        r.offset,
                        r.key.as_ref().map(|k| k.to_vec()),
                        r.value.to_vec(),
                    )
                })
                .collect();
            assert_eq!(made, lent);
        }
        (Err(_), Err(_)) => {}
        (made, lent) => panic!(
            "made {:?}, lent {:?}",
            made.as_ref().map(Vec::len),
            lent.map(|l| l.len())
        ),
    }
    match (delivered, decoded) {
        (Ok(got), Ok((header, records))) if header.batch_length as usize == data.len() => {
            let expected: Vec<_> = records
                .into_iter()
                .enumerate()
                .filter(|(index, record)| {
                    let delta = (record.offset - header.base_offset) as u32;
                    *index as u32 >= skip_front
                        && skip.binary_search(&delta).is_err()
                        && record.expires_at_ms.is_none_or(|at| at > now_ms)
                })
                .map(|(_, record)| record)
                .collect();
            assert_eq!(got, expected);
        }
        (Ok(_), Ok(_)) => panic!("delivered records from bytes longer than one batch"),
        (Ok(_), Err(error)) => assert!(error.to_string().contains("UTF-8"), "{error}"),
        (Err(error), Ok((header, _))) if header.batch_length as usize == data.len() => {
            panic!("a batch that decodes was refused: {error}")
        }
        (Err(_), _) => {}
    }
});
