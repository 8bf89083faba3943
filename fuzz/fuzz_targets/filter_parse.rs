//! A filter's text (from the network): the parser never panics and stays within its
//! limits; an error points inside the text; an accepted filter prints to text that
//! parses back to the same filter (when that text is within the length limit), and
//! evaluates on a few messages (JSON and not) without panicking.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidelog_storage::Header;
use tidelog_storage::filter::{FILTER_BYTES_MAX, Filter};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Filter::parse(text) {
        Ok(filter) => {
            assert!(text.len() <= FILTER_BYTES_MAX);
            let printed = filter.to_string();
            // The canonical text (spaces, escapes) may be longer than the limit.
            if printed.len() <= FILTER_BYTES_MAX {
                assert_eq!(Filter::parse(&printed).as_ref(), Ok(&filter), "{printed}");
            }
            let headers = [
                Header {
                    key: "type".into(),
                    value: Bytes::from_static(b"order"),
                },
                Header {
                    key: "n".into(),
                    value: Bytes::from_static(b"42"),
                },
            ];
            for value in [&br#"{"a":{"b":[1,"x",null]},"n":5}"#[..], b"not json", b""] {
                let _ = filter.evaluate(Some(b"eu-1"), &headers, value);
                let _ = filter.evaluate(None, &[], value);
            }
        }
        Err(error) => assert!(
            error.position <= text.len().max(FILTER_BYTES_MAX),
            "{error}"
        ),
    }
});
