//! Date-times in the forms operators type: RFC 3339 / ISO-8601
//! (`2026-11-23T10:15:00.250+01:00`). Everything is milliseconds since the Unix epoch,
//! UTC; no time-zone database is needed because a date-time without an offset is read
//! as UTC. Durations (`1h30m`, `PT30M`) have one grammar for the whole project, in
//! `tidelog_storage::duration`.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian), after Howard
/// Hinnant's `days_from_civil`.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A cursor over the ASCII bytes of a date-time.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Exactly `count` decimal digits.
    fn digits(&mut self, count: usize) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + count)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.at += count;
        Some(
            digits
                .iter()
                .fold(0, |value, &d| value * 10 + u32::from(d - b'0')),
        )
    }

    fn done(&self) -> bool {
        self.at == self.bytes.len()
    }
}

/// Parses `YYYY-MM-DD[THH:mm[:SS[.fff]]][Z|±hh:mm|±hhmm|±hh]` into milliseconds since
/// the Unix epoch. `T` may also be `t` or a space; a fraction may have 1 to 9 digits
/// (kept to milliseconds); no offset means UTC.
pub fn parse_datetime_ms(text: &str) -> Result<i64, String> {
    let bad = |why: &str| {
        format!(
            "{text:?} is not a date-time such as 2026-11-23T10:15:00Z or \
             2026-11-23T10:15:00.250+01:00 ({why})"
        )
    };
    let mut c = Cursor {
        bytes: text.trim().as_bytes(),
        at: 0,
    };
    let year = c.digits(4).ok_or_else(|| bad("the year needs 4 digits"))?;
    let month = (c.eat(b'-').then(|| c.digits(2)).flatten())
        .ok_or_else(|| bad("expected -MM after the year"))?;
    let day = (c.eat(b'-').then(|| c.digits(2)).flatten())
        .ok_or_else(|| bad("expected -DD after the month"))?;
    let year = i64::from(year);
    if !(1..=12).contains(&month) {
        return Err(bad("month must be 01 to 12"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such day in that month"));
    }
    let (mut hour, mut minute, mut second, mut millis) = (0, 0, 0, 0);
    if c.eat(b'T') || c.eat(b't') || c.eat(b' ') {
        hour = c.digits(2).ok_or_else(|| bad("expected HH after T"))?;
        minute = (c.eat(b':').then(|| c.digits(2)).flatten())
            .ok_or_else(|| bad("expected :mm after the hour"))?;
        if c.eat(b':') {
            second = c.digits(2).ok_or_else(|| bad("expected SS after :"))?;
            if c.eat(b'.') || c.eat(b',') {
                let start = c.at;
                while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                    c.at += 1;
                }
                let fraction = &c.bytes[start..c.at];
                if fraction.is_empty() || fraction.len() > 9 {
                    return Err(bad("a fraction of a second needs 1 to 9 digits"));
                }
                millis = fraction
                    .iter()
                    .chain(b"00".iter())
                    .take(3)
                    .fold(0, |value, &d| value * 10 + u32::from(d - b'0'));
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(bad("time out of range"));
        }
    }
    let offset_minutes: i64 = match c.peek() {
        None => 0,
        Some(b'Z' | b'z') => {
            c.at += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            c.at += 1;
            let hours = c
                .digits(2)
                .ok_or_else(|| bad("expected hh in the offset"))?;
            let minutes = if c.eat(b':') {
                c.digits(2)
                    .ok_or_else(|| bad("expected mm in the offset"))?
            } else {
                c.digits(2).unwrap_or(0)
            };
            if hours > 23 || minutes > 59 {
                return Err(bad("offset out of range"));
            }
            let total = i64::from(hours * 60 + minutes);
            if sign == b'-' { -total } else { total }
        }
        Some(_) => return Err(bad("unexpected characters")),
    };
    if !c.done() {
        return Err(bad("unexpected characters at the end"));
    }
    let days = days_from_civil(year, month, day);
    let seconds =
        days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second)
            - offset_minutes * 60;
    Ok(seconds * 1_000 + i64::from(millis))
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.sssZ`.
pub fn format_datetime_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second, millis) = (
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000,
    );
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_day_numbers_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn date_times_parse_with_and_without_offsets() {
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_datetime_ms("1970-01-01"), Ok(0));
        assert_eq!(
            parse_datetime_ms("2026-11-23T10:15:30.250Z"),
            Ok(1_795_428_930_250)
        );
        // No offset means UTC.
        assert_eq!(
            parse_datetime_ms("2026-11-23T10:15:30.250"),
            parse_datetime_ms("2026-11-23T10:15:30.250Z")
        );
        assert_eq!(
            parse_datetime_ms("2026-11-23T11:15:30.250+01:00"),
            Ok(1_795_428_930_250)
        );
        assert_eq!(
            parse_datetime_ms("2026-11-23T05:15:30.25-0500"),
            Ok(1_795_428_930_250)
        );
        assert_eq!(
            parse_datetime_ms("2026-11-23t10:15z"),
            Ok(1_795_428_900_000)
        );
        assert_eq!(
            parse_datetime_ms("2026-11-23 10:15:30+00"),
            Ok(1_795_428_930_000)
        );
        // Fractions are cut to milliseconds.
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00.123456789Z"), Ok(123));
        assert_eq!(parse_datetime_ms("1970-01-01T00:00:00.5Z"), Ok(500));
        assert_eq!(
            parse_datetime_ms("2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
    }

    #[test]
    fn bad_date_times_are_refused() {
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-29",
            "2026-04-31T00:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:60Z",
            "2026-11-23T10:15:30.Z",
            "2026-11-23T10:15:30Q",
            "2026-11-23T10:15:30+25:00",
            "2026-11-23T10",
            "26-11-23",
            "1700000000000",
        ] {
            assert!(parse_datetime_ms(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn date_times_format_and_parse_back() {
        assert_eq!(format_datetime_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_datetime_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_datetime_ms(1_795_428_930_250),
            "2026-11-23T10:15:30.250Z"
        );
        for ms in [0, 1, -86_400_001, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(parse_datetime_ms(&format_datetime_ms(ms)), Ok(ms));
        }
    }
}
