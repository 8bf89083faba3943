//! A topic's durable identity, its `topic.id` file (storage/FORMAT.md, "Topic id"):
//! what tells a topic from another of the same name created after it was deleted.
//! Its own module so the topic and its partitions both name it.

/// A topic's durable identity (Kafka's topic id): drawn at random when the topic is
/// created and kept in its `topic.id` file (storage/FORMAT.md) for as long as the
/// topic lives, through restarts and CreatePartitions. A topic deleted and created
/// again under the same name gets another, so a position saved while reading one
/// (with its id) is never taken for a position in the other. Never 0 (the wire's
/// "no id": not checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(std::num::NonZeroU64);

impl TopicId {
    /// A new id: 64 bits from the process's random hash keys and the clock, so two
    /// topics of one name, in one process or across restarts, do not share one (the
    /// chance is 2^-64).
    pub fn random() -> TopicId {
        use std::hash::{BuildHasher, Hasher};
        static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        hasher.write_u128(now.as_nanos());
        hasher.write_u32(std::process::id());
        TopicId(std::num::NonZeroU64::new(hasher.finish()).unwrap_or(std::num::NonZeroU64::MIN))
    }

    /// The id as the wire carries it (never 0).
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The id the wire sent, if it names one (0 names none).
    pub fn from_wire(id: u64) -> Option<TopicId> {
        std::num::NonZeroU64::new(id).map(TopicId)
    }

    /// Whether an id a client sent (0: none, not checked) names this topic: false
    /// when it names another topic of the same name, one deleted since.
    pub fn accepts_wire(self, sent: u64) -> bool {
        sent == 0 || sent == self.get()
    }

    /// The contents of a `topic.id` file: 16 lowercase hex digits.
    pub fn to_file(self) -> String {
        self.to_string()
    }

    /// The id in the bytes of a `topic.id` file (untrusted: read from disk), if they
    /// are one: exactly 16 lowercase hex digits, optionally followed by one newline,
    /// not all zero.
    pub fn parse_file(bytes: &[u8]) -> Option<TopicId> {
        let digits = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if digits.len() != 16
            || !digits
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let text = std::str::from_utf8(digits).ok()?;
        u64::from_str_radix(text, 16)
            .ok()
            .and_then(TopicId::from_wire)
    }
}

impl std::fmt::Display for TopicId {
    /// 16 lowercase hex digits, as `topic.id` holds it and the CLI shows it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_goes_through_its_file_and_malformed_files_are_refused() {
        let id = TopicId::random();
        assert_eq!(TopicId::parse_file(id.to_file().as_bytes()), Some(id));
        assert_eq!(TopicId::parse_file(format!("{id}\n").as_bytes()), Some(id));
        assert_eq!(id.to_file().len(), 16);
        assert_eq!(TopicId::from_wire(id.get()), Some(id));
        assert_eq!(TopicId::from_wire(0), None);
        for bad in [
            &b""[..],
            b"0000000000000000",
            b"00000000000000001",
            b"000000000000001",
            b"00000000000000AB",
            b"000000000000000g",
            b" 000000000000001",
            b"0000000000000001\n\n",
            b"\xff\xfe00000000000001",
        ] {
            assert_eq!(TopicId::parse_file(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_drawn_one_after_another_differ() {
        let ids: std::collections::HashSet<TopicId> =
            (0..1000).map(|_| TopicId::random()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
