//! A record of the consumer offsets log: never panics; a decoded record re-encodes to
//! bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::offsets;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((record, used))) = offsets::decode_record(data) {
        assert!(used <= data.len());
        let encoded = offsets::encode_record(&record).expect("a decoded record re-encodes");
        let (again, _) = offsets::decode_record(&encoded)
            .expect("re-encoded record decodes")
            .expect("complete");
        assert_eq!(again, record);
    }
});
