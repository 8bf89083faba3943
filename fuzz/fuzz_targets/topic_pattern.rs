//! A topic pattern's text (from the network): compiling it never panics and stays
//! within the limits (an accepted pattern is at most TOPIC_PATTERN_BYTES_MAX bytes),
//! an error is one line, and an accepted pattern matches names without panicking; a
//! literal pattern matches itself and not itself with a character more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::TopicPattern;
use tidelog_storage::limits::TOPIC_PATTERN_BYTES_MAX;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match TopicPattern::parse(text) {
        Ok(pattern) => {
            assert!(text.len() <= TOPIC_PATTERN_BYTES_MAX);
            for name in ["orders.eu", "t", "a-b_c.1", &"x".repeat(249), ""] {
                let _ = pattern.matches(name);
            }
            // Whole-name matching: the anchors hold whatever the pattern says.
            let escaped = format!("{}x", literal(text));
            if escaped.len() > 1 && pattern.matches(&escaped[..escaped.len() - 1]) {
                // A literal pattern matches itself and nothing longer.
                assert!(!pattern.matches(&escaped));
            }
        }
        Err(error) => assert!(!error.message.contains('\n'), "{error}"),
    }
});

/// `text` itself when it is a literal (letters, digits, `-`, `_` only), else empty.
fn literal(text: &str) -> &str {
    if text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        text
    } else {
        ""
    }
}
