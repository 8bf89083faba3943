//! A topic config file: never panics; an accepted config is valid and round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidelog_storage::TopicConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((partitions, config)) = TopicConfig::from_file(text) {
        config.validate().expect("accepted config is valid");
        let again = TopicConfig::from_file(&config.to_file(partitions)).expect("round trip");
        assert_eq!(again, (partitions, config));
    }
});
