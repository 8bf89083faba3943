//! Sizes and rates in human units: parsing what operators type (`10GiB`) and
//! formatting what the broker returns (`1.5 GiB`, `12.3k/s`). Durations have one
//! grammar for the whole project, in `tidelog_storage::duration`.

/// Parses a size: a number with an optional unit. `KiB`/`MiB`/`GiB`/`TiB` (and the
/// short `K`/`M`/`G`/`T`) are powers of 1024; `KB`/`MB`/`GB`/`TB` powers of 1000;
/// `B` or no unit is bytes. Units are case-insensitive; a fraction of a unit is
/// allowed (`1.5GiB`) and rounded to whole bytes, a fraction of a byte (`1.5`) is
/// refused; `_` may separate digits.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let cleaned: String = text.trim().chars().filter(|&c| c != '_').collect();
    let split = cleaned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(cleaned.len());
    let (number, unit) = cleaned.split_at(split);
    let unit = unit.trim();
    let not_a_size = || format!("{text:?} is not a size such as 4096, 256MiB or 10GiB");
    if cleaned.starts_with('-') {
        return Err(format!("{text:?}: a size cannot be negative"));
    }
    if number.is_empty() {
        return Err(not_a_size());
    }
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {text:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    if scale == 1
        && number
            .split_once('.')
            .is_some_and(|(_, f)| f.bytes().any(|b| b != b'0'))
    {
        return Err(format!(
            "{text:?} is not a whole number of bytes; give bytes without a fraction, or a unit (1.5KiB)"
        ));
    }
    scaled(number, scale)
        .ok_or_else(|| format!("{text:?} is not a size such as 4096, 256MiB or 10GiB"))
}

/// `number * scale` where `number` is decimal digits with at most one `.`; `None` if
/// it is not a number or the result does not fit in a `u64`.
fn scaled(number: &str, scale: u64) -> Option<u64> {
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_ok(whole) || !digits_ok(fraction) {
        return None;
    }
    if number.ends_with('.') {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut total = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        // At most 18 fraction digits keep 10^digits inside u64 and u128 products exact.
        let fraction = fraction.get(..fraction.len().min(18))?;
        let numerator: u128 = fraction.parse().ok()?;
        let denominator = 10u128.pow(fraction.len() as u32);
        let part = (numerator * u128::from(scale) + denominator / 2) / denominator;
        total = total.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(total)
}

/// Formats a byte count for humans: `512 B`, `4.0 KiB`, `1.5 GiB`; whole multiples
/// without a fraction (`256 MiB`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scale: u64 = 1;
    while unit + 1 < UNITS.len() && bytes / scale >= 1024 {
        scale *= 1024;
        unit += 1;
    }
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        format!("{:.1} {}", bytes as f64 / scale as f64, UNITS[unit])
    }
}

/// A rate for humans: `12.3k/s`, `1.20M/s`, `850/s`.
pub fn format_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M/s", per_second / 1e6)
    } else if per_second >= 1e4 {
        format!("{:.1}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256mib"), Ok(256 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert_eq!(parse_size(" 12 B "), Ok(12));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size("0.0001KiB"), Ok(0)); // rounded to whole bytes
        assert_eq!(parse_size("2.0"), Ok(2));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("1.2.3GiB").is_err());
        assert!(parse_size("-5").is_err());
        assert!(parse_size("5.").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        let error = parse_size("10XB").unwrap_err();
        assert!(error.contains("unknown size unit"), "{error}");
        for fraction_of_a_byte in ["1.5", "0.5B", "7.25 b"] {
            let error = parse_size(fraction_of_a_byte).unwrap_err();
            assert!(error.contains("not a whole number of bytes"), "{error}");
        }
        let error = parse_size("-1GiB").unwrap_err();
        assert!(error.contains("cannot be negative"), "{error}");
    }

    #[test]
    fn bytes_format_in_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1 KiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(256 << 20), "256 MiB");
        assert_eq!(format_bytes(10 << 30), "10 GiB");
        assert_eq!(format_bytes(3 << 50), "3 PiB");
    }

    #[test]
    fn rates_format_compactly() {
        assert_eq!(format_rate(850.2), "850/s");
        assert_eq!(format_rate(12_345.0), "12.3k/s");
        assert_eq!(format_rate(1_200_000.0), "1.20M/s");
    }
}
