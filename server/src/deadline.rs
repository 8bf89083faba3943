//! A call's deadline (the `grpc-timeout` header a client sets), and the one rule of how
//! long a long poll (Fetch's and FetchBatches' `max_wait_ms`, Receive's) may wait: what
//! it asks, capped, and short of the deadline by a margin, so its answer arrives in
//! time instead of the client giving up with DEADLINE_EXCEEDED. For Receive that
//! matters beyond the error: deliveries leased to a call whose client has given up
//! count an attempt no one saw.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// A long poll answers this much before the call's deadline.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// How long a long poll of a call with `metadata` may wait: `asked_ms`, at most `cap`,
/// and [`DEADLINE_MARGIN`] short of the call's deadline if it has one.
pub fn long_poll(metadata: &MetadataMap, asked_ms: u64, cap: Duration) -> Duration {
    let mut wait = Duration::from_millis(asked_ms).min(cap);
    if let Some(deadline) = grpc_timeout(metadata) {
        wait = wait.min(deadline.saturating_sub(DEADLINE_MARGIN));
    }
    wait
}

/// The call's deadline from the `grpc-timeout` header ("<digits><unit>", unit one of
/// H M S m u n), if the client set one.
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    // ASCII only, so the split below falls on a character boundary.
    if !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut metadata = MetadataMap::new();
        assert_eq!(grpc_timeout(&metadata), None);
        for (text, expected) in [
            ("5S", Duration::from_secs(5)),
            ("250m", Duration::from_millis(250)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
        ] {
            metadata.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(grpc_timeout(&metadata), Some(expected), "{text}");
        }
        metadata.insert("grpc-timeout", "xS".parse().unwrap());
        assert_eq!(grpc_timeout(&metadata), None);
    }

    #[test]
    fn a_long_poll_is_capped_and_ends_short_of_the_deadline() {
        let cap = Duration::from_secs(30);
        let mut metadata = MetadataMap::new();
        assert_eq!(long_poll(&metadata, 500, cap), Duration::from_millis(500));
        assert_eq!(long_poll(&metadata, u64::MAX, cap), cap);
        metadata.insert("grpc-timeout", "300m".parse().unwrap());
        assert_eq!(
            long_poll(&metadata, u64::MAX, cap),
            Duration::from_millis(280)
        );
        assert_eq!(long_poll(&metadata, 100, cap), Duration::from_millis(100));
        metadata.insert("grpc-timeout", "10m".parse().unwrap());
        assert_eq!(long_poll(&metadata, 100, cap), Duration::ZERO);
    }
}
