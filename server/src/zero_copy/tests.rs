use super::*;

/// The paths answered here are the generated servers' (a misspelt one would quietly
/// go to tonic's server, with its copies).
#[test]
fn the_paths_answered_here_are_the_services_methods() {
    let consumer = <ConsumerServer<ConsumerService> as NamedService>::NAME;
    let publisher = <PublisherServer<PublisherService> as NamedService>::NAME;
    for method in ["FetchBatches", "SubscribeBatches"] {
        let path = format!("/{consumer}/{method}");
        assert!(ConsumerService::method(&path).is_some(), "{path}");
    }
    for method in ["Publish", "PublishBatch", "PublishStream"] {
        let path = format!("/{publisher}/{method}");
        assert!(PublisherService::method(&path).is_some(), "{path}");
    }
    for other in ["Fetch", "Subscribe", "ListOffsets"] {
        assert!(ConsumerService::method(&format!("/{consumer}/{other}")).is_none());
    }
    // The methods exist in the API's descriptor set.
    let descriptors = String::from_utf8_lossy(tidelog_proto::FILE_DESCRIPTOR_SET);
    for method in [
        "FetchBatches",
        "SubscribeBatches",
        "PublishBatch",
        "PublishStream",
    ] {
        assert!(descriptors.contains(method), "{method}");
    }
}
