//! A topic config file: never panics; an accepted config is valid and round-trips. The
//! same bytes as a `topic.owner` file: never panics; an accepted owner is a principal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::TopicConfig;

fuzz_target!(|data: &[u8]| {
    if let Some(owner) = tidelog_storage::topic::parse_owner(data) {
        assert!(tidelog_storage::access::validate_principal(owner).is_ok());
        assert_eq!(owner.as_bytes(), data);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((partitions, config)) = TopicConfig::from_file(text) {
        config.validate().expect("accepted config is valid");
        let again = TopicConfig::from_file(&config.to_file(partitions)).expect("round trip");
        assert_eq!(again, (partitions, config));
    }
});
