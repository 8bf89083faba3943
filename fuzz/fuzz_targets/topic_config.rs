//! A topic config file: never panics; an accepted config is valid, states no record
//! features newer than this build's, and round-trips (with this build's). The
//! same bytes as a `topic.owner` file: never panics; an accepted owner is a principal.
//! And as a `topic.id` file: never panics; an accepted id is not 0 and is written back
//! as the same 16 digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::TopicConfig;

fuzz_target!(|data: &[u8]| {
    if let Some(owner) = tidelog_storage::topic::parse_owner(data) {
        assert!(tidelog_storage::access::validate_principal(owner).is_ok());
        assert_eq!(owner.as_bytes(), data);
    }
    if let Some(id) = tidelog_storage::TopicId::parse_file(data) {
        assert_ne!(id.get(), 0);
        assert_eq!(id.to_file().as_bytes(), data.strip_suffix(b"\n").unwrap_or(data));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = std::path::Path::new("topic.config");
    if let Ok(read) = TopicConfig::from_file(text, path) {
        read.config.validate().expect("accepted config is valid");
        assert!(read.record_features <= tidelog_storage::RECORD_FEATURES);
        let again = TopicConfig::from_file(&read.config.to_file(read.partitions), path)
            .expect("round trip");
        assert_eq!(
            (again.partitions, &again.config),
            (read.partitions, &read.config)
        );
        assert_eq!(again.record_features, tidelog_storage::RECORD_FEATURES);
    }
});
