//! The access state's untrusted inputs: a record of the access log (tokens and rules)
//! and the `authorization` metadata / token text parsers. Never panics; a decoded record
//! re-encodes to bytes that decode to the same record; a parsed token prints back to a
//! text that parses to the same token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::access::{self, token};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((record, used))) = access::decode_record(data) {
        assert!(used <= data.len());
        let encoded = access::encode_record(&record).expect("a decoded record re-encodes");
        let (again, _) = access::decode_record(&encoded)
            .expect("re-encoded record decodes")
            .expect("complete");
        assert_eq!(again, record);
    }
    for parsed in [token::parse_authorization(data), token::parse_token(data)] {
        if let Ok(parsed) = parsed {
            let text = parsed.to_text();
            assert_eq!(token::parse_token(text.as_bytes()), Ok(parsed));
        }
    }
});
