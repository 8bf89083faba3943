//! Topic patterns: a regular expression (the `regex` crate's syntax) that a topic name
//! must match as a whole, so `orders\..*` matches `orders.eu` and not `old-orders.eu`.
//! A pattern comes from the network (Subscribe, groups, the CLI), so it is bounded
//! before and while it is compiled: [`TOPIC_PATTERN_BYTES_MAX`] of text, at most
//! [`TOPIC_PATTERN_COMPILED_BYTES_MAX`] for the compiled program and
//! [`TOPIC_PATTERN_DFA_BYTES_MAX`] for the lazy DFA's cache, and
//! [`TOPIC_PATTERN_NEST_MAX`] levels of nesting. The `regex` crate matches in time
//! linear in the name (no backtracking), and names are at most
//! [`TOPIC_NAME_BYTES_MAX`](crate::limits::TOPIC_NAME_BYTES_MAX) bytes, so a pattern
//! that compiled costs little per topic; one that would not compile within the
//! limits is refused with a [`PatternError`] (INVALID_ARGUMENT on the wire).
//!
//! Pure: no I/O, no clock. Fuzzed by `fuzz/fuzz_targets/topic_pattern.rs`.

use std::fmt;

use regex::{Regex, RegexBuilder};

use crate::limits::{
    TOPIC_PATTERN_BYTES_MAX, TOPIC_PATTERN_COMPILED_BYTES_MAX, TOPIC_PATTERN_DFA_BYTES_MAX,
    TOPIC_PATTERN_NEST_MAX,
};

/// A parsed topic pattern, matched against whole topic names.
#[derive(Clone)]
pub struct TopicPattern {
    /// As the client wrote it (shown by describe).
    text: String,
    /// `^(?:text)$`.
    anchored: Regex,
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TopicPattern").field(&self.text).finish()
    }
}

impl PartialEq for TopicPattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for TopicPattern {}

/// Why a pattern was refused, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PatternError {}

/// Levels of nesting the anchors around a pattern add (`^(?:…)$`: a concatenation and
/// a group), so that the limit applies to the text as written.
const ANCHOR_NEST_LEVELS: u32 = 2;

fn builder(text: &str, nest_limit: u32) -> RegexBuilder {
    let mut builder = RegexBuilder::new(text);
    builder
        .size_limit(TOPIC_PATTERN_COMPILED_BYTES_MAX)
        .dfa_size_limit(TOPIC_PATTERN_DFA_BYTES_MAX)
        .nest_limit(nest_limit);
    builder
}

fn refused(error: regex::Error) -> PatternError {
    let message = match error {
        regex::Error::CompiledTooBig(limit) => format!(
            "is too complex: it compiles to more than {limit} bytes; use a simpler pattern (fewer or smaller repetitions such as {{n}}, fewer Unicode classes such as \\w)"
        ),
        // The syntax error's own text points at the spot over several lines: keep it
        // on one line.
        other => {
            let text = other.to_string();
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .collect();
            format!("is not a valid regular expression: {}", lines.join(" | "))
        }
    };
    PatternError { message }
}

impl TopicPattern {
    /// Parses and compiles `text` within the limits. The pattern must match a whole
    /// topic name: it is compiled as `^(?:text)$`, after checking that `text` is a
    /// regular expression on its own (so `a)|(b` cannot escape the anchors).
    pub fn parse(text: &str) -> Result<TopicPattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError {
                message: "is empty; give a regular expression such as orders\\..*".into(),
            });
        }
        if text.len() > TOPIC_PATTERN_BYTES_MAX {
            return Err(PatternError {
                message: format!(
                    "is {} bytes long; the most is {TOPIC_PATTERN_BYTES_MAX}",
                    text.len()
                ),
            });
        }
        builder(text, TOPIC_PATTERN_NEST_MAX)
            .build()
            .map_err(refused)?;
        let anchored = builder(
            &format!("^(?:{text})$"),
            TOPIC_PATTERN_NEST_MAX + ANCHOR_NEST_LEVELS,
        )
        .build()
        .map_err(refused)?;
        Ok(TopicPattern {
            text: text.to_string(),
            anchored,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches the pattern as a whole.
    pub fn matches(&self, topic: &str) -> bool {
        self.anchored.is_match(topic)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The nesting limit applies to the pattern as written: the anchors the broker puts
    /// around it take none of it, and a refusal quotes nothing the user did not write
    /// (hunt 10d: 30 groups followed by `.*` were refused, quoting `^(?:…)$`).
    #[test]
    fn the_nesting_limit_is_of_the_pattern_as_written() {
        for suffix in ["", ".*", "|b"] {
            let mut deepest = 0;
            for depth in 1..40 {
                let text = format!("{}lim{}{suffix}", "(".repeat(depth), ")".repeat(depth));
                let as_written = builder(&text, TOPIC_PATTERN_NEST_MAX).build().is_ok();
                match TopicPattern::parse(&text) {
                    Ok(_) => {
                        assert!(as_written, "{text}");
                        deepest = depth;
                    }
                    Err(error) => {
                        assert!(!as_written, "{text}: {error}");
                        assert!(!error.message.contains("(?:"), "{error}");
                    }
                }
            }
            assert!(deepest >= 29, "{suffix:?}: {deepest}");
        }
    }

    #[test]
    fn matches_whole_names_only() {
        let p = TopicPattern::parse(r"orders\..*").unwrap();
        assert!(p.matches("orders.eu"));
        assert!(p.matches("orders."));
        assert!(!p.matches("orders"));
        assert!(!p.matches("old-orders.eu"));
        assert!(!p.matches("ordersXeu"));
        let p = TopicPattern::parse("a|b").unwrap();
        assert!(p.matches("a") && p.matches("b"));
        assert!(!p.matches("ab") && !p.matches("xa"));
        assert_eq!(p.as_str(), "a|b");
    }

    #[test]
    fn a_pattern_cannot_escape_the_anchors() {
        // As `^(?:a)|(b)$` this would match any name containing b.
        let error = TopicPattern::parse("a)|(b").unwrap_err();
        assert!(
            error.message.contains("not a valid regular expression"),
            "{error}"
        );
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for (text, expected) in [
            ("", "is empty"),
            ("(", "not a valid regular expression"),
            ("[z-a]", "not a valid regular expression"),
            (&"a".repeat(TOPIC_PATTERN_BYTES_MAX + 1), "bytes long"),
        ] {
            let error = TopicPattern::parse(text).unwrap_err();
            assert!(error.message.contains(expected), "{text:?}: {error}");
            assert!(!error.message.contains('\n'), "{error:?}");
        }
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(TopicPattern::parse(&deep).is_err());
        let at_limit = format!(
            "{}a{}",
            "(".repeat(TOPIC_PATTERN_NEST_MAX as usize / 2),
            ")".repeat(TOPIC_PATTERN_NEST_MAX as usize / 2)
        );
        assert!(TopicPattern::parse(&at_limit).is_ok());
    }

    #[test]
    fn abusive_patterns_are_refused_quickly() {
        for text in [
            r"(\w{100}){100}",
            "((a{100}){100}){100}",
            r"[\p{L}\p{N}]{1000}",
            "(abc|def|ghi){5000}",
            &"(x{1000})".repeat(100),
        ] {
            let started = Instant::now();
            let error = TopicPattern::parse(text).unwrap_err();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{text:?} took {:?}",
                started.elapsed()
            );
            assert!(error.message.contains("too complex"), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_longest_allowed_pattern_compiles_and_matches_fast() {
        // A pattern at the length limit that compiles, matched against the longest name.
        let alternatives: Vec<String> = (0..).map(|i| format!("t{i}")).take(200).collect();
        let mut text = alternatives.join("|");
        text.truncate(TOPIC_PATTERN_BYTES_MAX);
        let text = text.trim_end_matches(|c| c != '|').trim_end_matches('|');
        let p = TopicPattern::parse(text).unwrap();
        let name = "t".repeat(crate::limits::TOPIC_NAME_BYTES_MAX);
        let started = Instant::now();
        for _ in 0..1000 {
            assert!(!p.matches(&name));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(p.matches("t17"));
    }
}
