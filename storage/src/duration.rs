//! The one duration grammar of tidelog: what tidelogd's settings (flags, environment,
//! TOML), the `tidelog` CLI's flags and hand-edited topic configs accept.
//!
//! ```text
//! duration := "0"                                  no time at all: off / forever / now,
//!                                                  as the setting documents
//!           | part+                                e.g. 250ms, 10s, 1h30m, 7d, 1.5s
//!           | "P" date? ("T" time)?                ISO-8601, e.g. PT30M, P1DT12H, PT0.5S
//! part     := number unit                          units strictly decreasing, each once
//! number   := digits ("." digits)?
//! unit     := "w" | "d" | "h" | "m" | "s" | "ms"   week, day, hour, minute, second, millisecond
//! date     := (digits "W")? (digits "D")?
//! time     := (digits "H")? (digits "M")? (digits ("." digits)? "S")?
//! ```
//!
//! - A number needs a unit: `10` is refused (was it 10 ms or 10 s?); only `0` may
//!   stand alone.
//! - The result is whole milliseconds: `1.5s` is 1500 ms, `0.5ms` is refused.
//! - The ISO-8601 form is case-insensitive, needs at least one part, and takes a
//!   fraction on seconds only (as Java's `Duration.parse`, and so Kafka's
//!   `--by-duration`). A day is 24 hours, a week 7 days. Durations are never
//!   negative.
//! - Surrounding whitespace is ignored; nothing else is.
//!
//! Pure: no I/O, no clock, no dependencies. Errors are [`DurationError`], whose
//! messages name the offending part but not the setting: the caller adds the flag
//! or key the operator typed.

use std::fmt;

/// Milliseconds per unit of the compact form, largest first.
const UNITS_MS: [(&str, u64); 6] = [
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Most digits after the point that can still name whole milliseconds (once trailing
/// zeros are dropped): the largest unit, a week, is 2^10 * 5^5 * 189 ms, so 10^k must
/// divide `fraction * 604_800_000`, which fails for every k above 18.
const FRACTION_DIGITS_MAX: usize = 18;

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing (or only whitespace) was given.
    Empty,
    /// A number other than 0 without a unit (`10`, or the `30` of `1h30`).
    MissingUnit { number: String },
    /// A unit without a number before it (`ms`, `h30m`).
    MissingNumber { unit: String },
    /// Letters that are not a unit (`5x`, `10sec`, `1H`).
    UnknownUnit { unit: String },
    /// A unit repeated or after a smaller one (`30m1h`, `1s1s`).
    UnitOrder { unit: String },
    /// A character that has no place in a duration (`1 h`, `+5s`, `5µs`).
    UnexpectedCharacter { character: char },
    /// Digits that do not form a number (`1..5s`, `5.s`).
    BadNumber { number: String },
    /// A leading minus: durations are never negative.
    Negative,
    /// The value is not a whole number of milliseconds (`0.5ms`, `PT0.0001S`).
    SubMillisecond,
    /// The value does not fit in 64 bits of milliseconds.
    TooLarge,
    /// A malformed ISO-8601 duration.
    Iso { why: &'static str },
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EXAMPLES: &str = "500ms, 30s, 5m, 1h30m, 7d or PT1H30M";
        match self {
            DurationError::Empty => write!(f, "no duration given; write one such as {EXAMPLES}"),
            DurationError::MissingUnit { number } => write!(
                f,
                "{number} has no unit; write {number}ms, {number}s, {number}m, {number}h or {number}d (only 0 may stand without one)"
            ),
            DurationError::MissingNumber { unit } => {
                write!(
                    f,
                    "unit {unit:?} has no number before it; write e.g. 5{unit}"
                )
            }
            DurationError::UnknownUnit { unit } => write!(
                f,
                "unknown unit {unit:?}; use ms, s, m, h, d or w (e.g. {EXAMPLES})"
            ),
            DurationError::UnitOrder { unit } => write!(
                f,
                "unit {unit:?} is repeated or comes after a smaller unit; write the largest first, each once (e.g. 1h30m)"
            ),
            DurationError::UnexpectedCharacter { character } => write!(
                f,
                "unexpected {character:?}; write digits and units only, e.g. {EXAMPLES}"
            ),
            DurationError::BadNumber { number } => {
                write!(f, "{number:?} is not a number; write e.g. {EXAMPLES}")
            }
            DurationError::Negative => write!(f, "a duration cannot be negative"),
            DurationError::SubMillisecond => {
                write!(
                    f,
                    "not a whole number of milliseconds (the finest unit is 1ms)"
                )
            }
            DurationError::TooLarge => write!(
                f,
                "too large (at most {} ms, about 584 million years)",
                u64::MAX
            ),
            DurationError::Iso { why } => write!(
                f,
                "not an ISO-8601 duration such as PT30M, PT6H, P1DT12H or PT0.5S ({why})"
            ),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration (see the module docs for the grammar) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    match text.as_bytes().first() {
        None => Err(DurationError::Empty),
        Some(b'-') => Err(DurationError::Negative),
        Some(b'P' | b'p') => parse_iso(&text[1..]),
        Some(_) if text.bytes().all(|b| b.is_ascii_digit()) => {
            if text.bytes().all(|b| b == b'0') {
                Ok(0)
            } else {
                Err(DurationError::MissingUnit {
                    number: text.to_string(),
                })
            }
        }
        Some(_) => parse_compact(text),
    }
}

/// Formats milliseconds exactly in the compact form with the largest units that fit,
/// weeks excepted (`7d` is what operators write): `7d`, `1h30m`, `2s500ms`; `0` for
/// zero. [`parse_duration_ms`] reads every output back to the same value.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0".into();
    }
    let mut rest = ms;
    let mut out = String::new();
    for (name, unit) in UNITS_MS.into_iter().skip(1) {
        let count = rest / unit;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(name);
            rest -= count * unit;
        }
    }
    out
}

/// `part+` with units strictly decreasing.
fn parse_compact(text: &str) -> Result<u64, DurationError> {
    let mut rest = text;
    let mut total: u64 = 0;
    // Index in UNITS_MS of the smallest unit seen so far; the next must be after it.
    let mut next_unit = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            // Either the text ended after a number, or a character that is neither a
            // digit, '.' nor a letter follows (a space, '+', 'µ').
            return Err(match after.chars().next() {
                Some(character) => DurationError::UnexpectedCharacter { character },
                None => DurationError::MissingUnit {
                    number: number.to_string(),
                },
            });
        }
        let index = UNITS_MS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(|| DurationError::UnknownUnit {
                unit: unit.to_string(),
            })?;
        if number.is_empty() {
            return Err(DurationError::MissingNumber {
                unit: unit.to_string(),
            });
        }
        if index < next_unit {
            return Err(DurationError::UnitOrder {
                unit: unit.to_string(),
            });
        }
        next_unit = index + 1;
        let part = scaled(number, UNITS_MS[index].1)?;
        total = total.checked_add(part).ok_or(DurationError::TooLarge)?;
        rest = after;
    }
    Ok(total)
}

/// `P` already consumed: `[nW][nD][T[nH][nM][n[.f]S]]`, case-insensitive.
fn parse_iso(text: &str) -> Result<u64, DurationError> {
    let upper = text.to_ascii_uppercase();
    let (date, time) = match upper.split_once('T') {
        Some((_, "")) => {
            return Err(DurationError::Iso {
                why: "T must be followed by hours, minutes or seconds",
            });
        }
        Some((date, time)) => (date, Some(time)),
        None => (upper.as_str(), None),
    };
    let mut total: u64 = 0;
    let mut parts = 0;
    let mut section = |section: &str, units: &[(char, u64)]| -> Result<(), DurationError> {
        let mut rest = section;
        let mut next_unit = 0;
        while !rest.is_empty() {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ','))
                .unwrap_or(rest.len());
            let (number, after) = rest.split_at(end);
            let Some(unit) = after.chars().next() else {
                return Err(DurationError::Iso {
                    why: "a number without a unit letter",
                });
            };
            let position = units[next_unit..]
                .iter()
                .position(|&(u, _)| u == unit)
                .ok_or(DurationError::Iso {
                    why: "unknown or out-of-order unit (P then W, D; T then H, M, S)",
                })?;
            let (_, scale) = units[next_unit + position];
            next_unit += position + 1;
            if number.is_empty() {
                return Err(DurationError::Iso {
                    why: "a unit letter without a number",
                });
            }
            if unit != 'S' && number.contains(['.', ',']) {
                return Err(DurationError::Iso {
                    why: "only seconds may have a fraction",
                });
            }
            let part = scaled(&number.replace(',', "."), scale)?;
            total = total.checked_add(part).ok_or(DurationError::TooLarge)?;
            parts += 1;
            rest = &after[unit.len_utf8()..];
        }
        Ok(())
    };
    section(date, &[('W', 7 * 86_400_000), ('D', 86_400_000)])?;
    if let Some(time) = time {
        section(time, &[('H', 3_600_000), ('M', 60_000), ('S', 1_000)])?;
    }
    if parts == 0 {
        return Err(DurationError::Iso {
            why: "no weeks, days, hours, minutes or seconds",
        });
    }
    Ok(total)
}

/// `number * scale` in whole milliseconds, where `number` is `digits[.digits]`.
fn scaled(number: &str, scale: u64) -> Result<u64, DurationError> {
    let bad = || DurationError::BadNumber {
        number: number.to_string(),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    if number.ends_with('.') {
        return Err(bad());
    }
    // Digits only, so the only failure is overflow.
    let whole: u64 = whole.parse().map_err(|_| DurationError::TooLarge)?;
    let mut total = whole.checked_mul(scale).ok_or(DurationError::TooLarge)?;
    let fraction = fraction.trim_end_matches('0');
    if !fraction.is_empty() {
        if fraction.len() > FRACTION_DIGITS_MAX {
            return Err(DurationError::SubMillisecond);
        }
        // Both below 10^18 and scale below 2^30: the product fits in a u128.
        let numerator = u128::from(fraction.parse::<u64>().map_err(|_| bad())?);
        let denominator = 10u128.pow(fraction.len() as u32);
        let product = numerator * u128::from(scale);
        if product % denominator != 0 {
            return Err(DurationError::SubMillisecond);
        }
        let part = u64::try_from(product / denominator).map_err(|_| DurationError::TooLarge)?;
        total = total.checked_add(part).ok_or(DurationError::TooLarge)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<u64, DurationError> {
        parse_duration_ms(text)
    }

    #[test]
    fn zero_alone_and_compact_parts() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse(" 0 "), Ok(0));
        assert_eq!(parse("000"), Ok(0));
        assert_eq!(parse("0ms"), Ok(0));
        assert_eq!(parse("0s"), Ok(0));
        assert_eq!(parse("250ms"), Ok(250));
        assert_eq!(parse("10s"), Ok(10_000));
        assert_eq!(parse("5m"), Ok(300_000));
        assert_eq!(parse("2h"), Ok(7_200_000));
        assert_eq!(parse("7d"), Ok(604_800_000));
        assert_eq!(parse("2w"), Ok(14 * 86_400_000));
        assert_eq!(parse("1h30m"), Ok(5_400_000));
        assert_eq!(parse("1m500ms"), Ok(60_500));
        assert_eq!(parse("1w2d3h4m5s6ms"), Ok(788_645_006));
        assert_eq!(parse("1.5s"), Ok(1_500));
        assert_eq!(parse("1.5h"), Ok(5_400_000));
        assert_eq!(parse("0.001s"), Ok(1));
        assert_eq!(parse("2.50s"), Ok(2_500));
        assert_eq!(parse("1.0ms"), Ok(1));
    }

    #[test]
    fn iso_8601_like_java() {
        assert_eq!(parse("PT15M"), Ok(900_000));
        assert_eq!(parse("PT6H"), Ok(21_600_000));
        assert_eq!(parse("PT1H30M"), Ok(5_400_000));
        assert_eq!(parse("P1D"), Ok(86_400_000));
        assert_eq!(parse("P1DT12H"), Ok(129_600_000));
        assert_eq!(parse("P1DT2H3M4S"), Ok(93_784_000));
        assert_eq!(parse("P2W"), Ok(14 * 86_400_000));
        assert_eq!(parse("PT0.5S"), Ok(500));
        assert_eq!(parse("PT1,25S"), Ok(1_250));
        assert_eq!(parse("pt1m"), Ok(60_000));
        assert_eq!(parse("PT0S"), Ok(0));
    }

    #[test]
    fn a_number_needs_a_unit() {
        for (text, number) in [("10", "10"), ("5", "5"), ("1h30", "30"), ("1.5", "1.5")] {
            assert_eq!(
                parse(text),
                Err(DurationError::MissingUnit {
                    number: number.into()
                }),
                "{text:?}"
            );
        }
        let message = parse("10").unwrap_err().to_string();
        assert!(message.contains("10 has no unit"), "{message}");
        assert!(message.contains("10s"), "{message}");
    }

    #[test]
    fn garbage_is_refused_with_its_reason() {
        use DurationError as E;
        let cases: &[(&str, DurationError)] = &[
            ("", E::Empty),
            ("   ", E::Empty),
            ("-5s", E::Negative),
            ("-PT6H", E::Negative),
            ("ms", E::MissingNumber { unit: "ms".into() }),
            ("h30m", E::MissingNumber { unit: "h".into() }),
            ("5x", E::UnknownUnit { unit: "x".into() }),
            ("10sec", E::UnknownUnit { unit: "sec".into() }),
            ("1H", E::UnknownUnit { unit: "H".into() }),
            ("5y", E::UnknownUnit { unit: "y".into() }),
            ("1 h", E::UnexpectedCharacter { character: ' ' }),
            ("+5s", E::UnexpectedCharacter { character: '+' }),
            ("5µs", E::UnexpectedCharacter { character: 'µ' }),
            ("1h 30m", E::UnexpectedCharacter { character: ' ' }),
            ("30m1h", E::UnitOrder { unit: "h".into() }),
            ("1s1s", E::UnitOrder { unit: "s".into() }),
            (
                "1..5s",
                E::BadNumber {
                    number: "1..5".into(),
                },
            ),
            (
                "5.s",
                E::BadNumber {
                    number: "5.".into(),
                },
            ),
            (
                ".5s",
                E::BadNumber {
                    number: ".5".into(),
                },
            ),
            ("0.5ms", E::SubMillisecond),
            ("1.0005s", E::SubMillisecond),
            ("PT0.0001S", E::SubMillisecond),
            ("1.0000000000000000000000001s", E::SubMillisecond),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).as_ref(), Err(expected), "{text:?}");
        }
        for iso in [
            "P", "PT", "P1H", "PT1D", "PT1M1H", "PT1.5M", "P1.5D", "PTS", "P1DT", "PT1H2", "PX",
            "P1D2W",
        ] {
            assert!(
                matches!(parse(iso), Err(DurationError::Iso { .. })),
                "{iso:?}: {:?}",
                parse(iso)
            );
        }
    }

    #[test]
    fn overflow_is_too_large_never_a_wrap() {
        use DurationError as E;
        let max = u64::MAX;
        assert_eq!(parse(&format!("{max}ms")), Ok(max));
        assert_eq!(
            parse(&format!("{}ms", u128::from(max) + 1)),
            Err(E::TooLarge)
        );
        assert_eq!(parse("99999999999999999999d"), Err(E::TooLarge));
        assert_eq!(parse("30000000000000w"), Err(E::TooLarge));
        assert_eq!(parse(&format!("1s{max}ms")), Err(E::TooLarge));
        assert_eq!(parse("P99999999999999999999D"), Err(E::TooLarge));
        assert_eq!(parse("P30000000000000W"), Err(E::TooLarge));
        assert_eq!(parse("30000000000000.5w"), Err(E::TooLarge));
    }

    #[test]
    fn formats_exactly_with_the_largest_units() {
        assert_eq!(format_duration_ms(0), "0");
        assert_eq!(format_duration_ms(250), "250ms");
        assert_eq!(format_duration_ms(10_000), "10s");
        assert_eq!(format_duration_ms(5_400_000), "1h30m");
        assert_eq!(format_duration_ms(7 * 86_400_000), "7d");
        assert_eq!(format_duration_ms(2_500), "2s500ms");
        assert_eq!(format_duration_ms(u64::MAX), "213503982334d14h25m51s615ms");
    }

    #[test]
    fn errors_read_as_sentences() {
        for text in [
            "",
            "10",
            "ms",
            "5x",
            "30m1h",
            "1..5s",
            "-1s",
            "0.5ms",
            "P",
            "99999999999999999999d",
        ] {
            let message = parse(text).unwrap_err().to_string();
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{text:?}: {message}"
            );
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_is_the_identity(ms in any::<u64>()) {
            prop_assert_eq!(parse(&format_duration_ms(ms)), Ok(ms));
        }

        #[test]
        fn compact_and_iso_forms_agree(
            d in 0u64..10_000, h in 0u64..24, m in 0u64..60, s in 0u64..60, ms in 0u64..1000
        ) {
            let expected = (((d * 24 + h) * 60 + m) * 60 + s) * 1000 + ms;
            let compact = format!("{d}d{h}h{m}m{s}s{ms}ms");
            let iso = format!("P{d}DT{h}H{m}M{s}.{ms:03}S");
            prop_assert_eq!(parse(&compact), Ok(expected));
            prop_assert_eq!(parse(&iso), Ok(expected));
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in ".{0,40}") {
            let _ = parse(&text);
        }

        #[test]
        fn duration_like_text_never_panics(text in "[-+PpTt0-9.,wdhmsWDHMS ]{0,24}") {
            if let Ok(ms) = parse(&text) {
                // Whatever parses formats back to the same value.
                prop_assert_eq!(parse(&format_duration_ms(ms)), Ok(ms));
            }
        }
    }
}
