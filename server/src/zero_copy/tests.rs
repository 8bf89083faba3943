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
    // Every path the API's descriptor set has for these services: those answered here
    // are exactly the ones named above.
    let descriptors =
        prost_types::FileDescriptorSet::decode(tidelog_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut answered = Vec::new();
    for file in &descriptors.file {
        for service in &file.service {
            for method in &service.method {
                let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                if ConsumerService::method(&path).is_some()
                    || PublisherService::method(&path).is_some()
                {
                    answered.push(method.name().to_string());
                }
            }
        }
    }
    answered.sort();
    assert_eq!(
        answered,
        [
            "FetchBatches",
            "Publish",
            "PublishBatch",
            "PublishStream",
            "SubscribeBatches"
        ]
    );
}
