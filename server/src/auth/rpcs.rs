//! THE table: which operation on which kind of resource every RPC needs. The one place
//! that says so; [`super::layer`] finds a call's row by its path, and a handler names
//! only the resources (`Target::topic(&request.topic)`), never the operation.
//!
//! A test checks that every RPC of every tidelog service has a row, and the README's
//! "Security" table is this one.

use tidelog_storage::access::{Operation, ResourceKind};

use Operation::*;
use ResourceKind::*;

/// One RPC's needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Rpc {
    /// The gRPC path, `/tidelog.v1.Service/Method`.
    pub path: &'static str,
    /// The operation needed on each kind of resource the call names. Empty: being
    /// authenticated is enough.
    pub needs: &'static [(ResourceKind, Operation)],
}

impl Rpc {
    /// The operation this RPC needs on `kind`, if it names resources of that kind.
    pub fn operation_on(&self, kind: ResourceKind) -> Option<Operation> {
        self.needs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, op)| *op)
    }

    /// Whether the RPC changes a topic, group or queue (create, alter, delete,
    /// group-reset): an admin change, written to the audit log (Access changes have
    /// their own lines).
    pub fn is_change(&self) -> bool {
        self.change_operation().is_some()
    }

    /// The operation that makes this RPC a change, if it is one.
    pub fn change_operation(&self) -> Option<Operation> {
        self.needs
            .iter()
            .map(|(_, op)| *op)
            .find(|op| matches!(op, Create | Alter | Delete | GroupReset))
    }

    /// `Service/Method` without the package, for messages.
    pub fn name(&self) -> &'static str {
        self.path.strip_prefix("/tidelog.v1.").unwrap_or(self.path)
    }
}

const fn rpc(path: &'static str, needs: &'static [(ResourceKind, Operation)]) -> Rpc {
    Rpc { path, needs }
}

/// Every tidelog RPC. List calls (ListTopics, ListGroups, ListQueues) return only what
/// the caller may describe. A queue reads its topic: CreateQueue also needs consume on
/// the topic. A queue writes its dead letters: see [`DEAD_LETTER_TOPIC`]. RedriveQueue
/// writes letters back: it needs publish on every topic it may write to (the queue's
/// topic, or each topic a pattern queue has taken), checked as topics the broker found
/// ([`super::Auth::check_found`]).
///
/// Group and queue RPCs that show or move a topic's offsets need a right on the topic
/// too, as Kafka's OffsetFetch, OffsetCommit and DescribeGroups do: a topic the request
/// names is checked with the group or queue (PERMISSION_DENIED, the same for a topic
/// that does not exist); topics that come from a pattern or from the group's or
/// queue's state are left out silently when the caller may not do the row's operation
/// on them. Moving offsets (CommitOffsets, ResetOffsets, DeleteOffsets) needs consume,
/// as reading the topic would; showing them, describe.
pub static RPCS: &[Rpc] = &[
    rpc("/tidelog.v1.Admin/CreateTopic", &[(Topic, Create)]),
    rpc("/tidelog.v1.Admin/DeleteTopic", &[(Topic, Delete)]),
    rpc("/tidelog.v1.Admin/ListTopics", &[(Topic, Describe)]),
    rpc("/tidelog.v1.Admin/DescribeTopic", &[(Topic, Describe)]),
    rpc("/tidelog.v1.Admin/AlterTopicConfig", &[(Topic, Alter)]),
    rpc("/tidelog.v1.Admin/CreatePartitions", &[(Topic, Alter)]),
    rpc("/tidelog.v1.Admin/DescribeBroker", &[(Cluster, Describe)]),
    rpc("/tidelog.v1.Publisher/Publish", &[(Topic, Publish)]),
    rpc("/tidelog.v1.Publisher/PublishStream", &[(Topic, Publish)]),
    rpc("/tidelog.v1.Publisher/PublishBatch", &[(Topic, Publish)]),
    rpc("/tidelog.v1.Consumer/Fetch", &[(Topic, Consume)]),
    rpc("/tidelog.v1.Consumer/FetchBatches", &[(Topic, Consume)]),
    rpc(
        "/tidelog.v1.Consumer/SubscribeBatches",
        &[(Topic, Consume), (Group, Consume)],
    ),
    rpc(
        "/tidelog.v1.Consumer/Subscribe",
        &[(Topic, Consume), (Group, Consume)],
    ),
    rpc("/tidelog.v1.Consumer/ListOffsets", &[(Topic, Describe)]),
    rpc(
        "/tidelog.v1.Groups/CommitOffsets",
        &[(Group, GroupCommit), (Topic, Consume)],
    ),
    rpc(
        "/tidelog.v1.Groups/FetchOffsets",
        &[(Group, Describe), (Topic, Describe)],
    ),
    rpc("/tidelog.v1.Groups/ListGroups", &[(Group, Describe)]),
    rpc(
        "/tidelog.v1.Groups/DescribeGroup",
        &[(Group, Describe), (Topic, Describe)],
    ),
    rpc("/tidelog.v1.Groups/DeleteGroup", &[(Group, Delete)]),
    rpc(
        "/tidelog.v1.Groups/DeleteOffsets",
        &[(Group, GroupReset), (Topic, Consume)],
    ),
    rpc(
        "/tidelog.v1.Groups/ResetOffsets",
        &[(Group, GroupReset), (Topic, Consume)],
    ),
    rpc(
        "/tidelog.v1.Queues/CreateQueue",
        &[(Queue, Create), (Topic, Consume)],
    ),
    rpc(
        "/tidelog.v1.Queues/AlterQueue",
        &[(Queue, Alter), (Topic, Describe)],
    ),
    rpc("/tidelog.v1.Queues/DeleteQueue", &[(Queue, Delete)]),
    rpc(
        "/tidelog.v1.Queues/ListQueues",
        &[(Queue, Describe), (Topic, Describe)],
    ),
    rpc(
        "/tidelog.v1.Queues/DescribeQueue",
        &[(Queue, Describe), (Topic, Describe)],
    ),
    rpc("/tidelog.v1.Queues/PurgeQueue", &[(Queue, Delete)]),
    rpc(
        "/tidelog.v1.Queues/RedriveQueue",
        &[(Queue, Alter), (Topic, Publish)],
    ),
    rpc("/tidelog.v1.Queues/Consume", &[(Queue, Consume)]),
    rpc("/tidelog.v1.Queues/Receive", &[(Queue, Consume)]),
    rpc("/tidelog.v1.Queues/Settle", &[(Queue, Consume)]),
    rpc(
        "/tidelog.v1.Queues/ListDeliveries",
        &[(Queue, Describe), (Topic, Describe)],
    ),
    rpc("/tidelog.v1.Messages/GetMessage", &[(Topic, Consume)]),
    rpc(
        "/tidelog.v1.Messages/GetDeliveryStatus",
        &[(Topic, Describe), (Queue, Describe), (Group, Describe)],
    ),
    rpc(
        "/tidelog.v1.Messages/GetDeliveryHistory",
        &[(Topic, Describe), (Queue, Describe)],
    ),
    rpc("/tidelog.v1.Access/CreateToken", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/ListTokens", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/RevokeToken", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/ListAcls", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/AddAcl", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/RemoveAcl", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/WhoAmI", &[]),
    rpc("/tidelog.v1.Access/SetQuota", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/ListQuotas", &[(Cluster, Admin)]),
    rpc("/tidelog.v1.Access/RemoveQuota", &[(Cluster, Admin)]),
];

/// `Queues.ListDeliveries` with a `header` filter: testing header values reads the
/// messages' content, which needs consume on the topic (as Fetch and GetMessage do).
/// Without one it needs describe, as GetDeliveryHistory, which shows the same events
/// and message ids of one message. Not in [`RPCS`]: the layer finds the row above, the
/// handler checks this one on top when the request has a header filter.
pub static LIST_DELIVERIES_BY_HEADER: Rpc = rpc(
    "/tidelog.v1.Queues/ListDeliveries",
    &[(Queue, Describe), (Topic, Consume)],
);

/// A group member that asks for auto-commit (a `GroupMembership.auto_commit_interval_ms`
/// above 0) moves its group's offsets as CommitOffsets does: it needs group-commit on
/// the group too (consume on its topics it has already). Not in [`RPCS`]: the handler
/// checks this row on top of Subscribe's (or SubscribeBatches') before the member
/// joins, and the stream re-checks it while it is open ([`super::Auth::guard_with`]).
pub static SUBSCRIBE_AUTO_COMMIT: Rpc =
    rpc("/tidelog.v1.Consumer/Subscribe", &[(Group, GroupCommit)]);

/// [`SUBSCRIBE_AUTO_COMMIT`] for SubscribeBatches.
pub static SUBSCRIBE_BATCHES_AUTO_COMMIT: Rpc = rpc(
    "/tidelog.v1.Consumer/SubscribeBatches",
    &[(Group, GroupCommit)],
);

/// The auto-commit row of the Subscribe or SubscribeBatches call `rpc`.
pub fn auto_commit_row(rpc: Option<&Rpc>) -> &'static Rpc {
    match rpc {
        Some(rpc) if rpc.path == SUBSCRIBE_BATCHES_AUTO_COMMIT.path => {
            &SUBSCRIBE_BATCHES_AUTO_COMMIT
        }
        _ => &SUBSCRIBE_AUTO_COMMIT,
    }
}

/// A queue's dead-letter topic, at CreateQueue (named, or the default `<topic>.dlq` /
/// `<queue>.dlq`) and at an AlterQueue that changes it: the broker appends the queue's
/// dead letters there, and creates it at the first letter, so the caller needs what
/// publishing to it needs, and creating it too while it does not exist. Not in
/// [`RPCS`] (whose rows name one operation per kind of resource): the handlers check
/// these rows on top, [`super::Auth::check_dead_letter_topic`].
pub static DEAD_LETTER_TOPIC: [Rpc; 4] = [
    rpc("/tidelog.v1.Queues/CreateQueue", &[(Topic, Publish)]),
    rpc("/tidelog.v1.Queues/CreateQueue", &[(Topic, Create)]),
    rpc("/tidelog.v1.Queues/AlterQueue", &[(Topic, Publish)]),
    rpc("/tidelog.v1.Queues/AlterQueue", &[(Topic, Create)]),
];

/// Calls that need no credentials: the gRPC health check (load balancers and
/// orchestrators probe it without a token).
pub const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/"];

/// Services that need a valid token but no rule: server reflection (it shows the API,
/// never data).
pub const AUTHENTICATED_PREFIXES: &[&str] = &[
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// What the layer does with a call on `path`.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Open,
    AuthenticatedOnly,
    Rpc(&'static Rpc),
    /// No such RPC: refused after authentication (tonic would say UNIMPLEMENTED).
    Unknown,
}

/// What the method name of every change RPC starts with: a cheap test the layer makes
/// before it looks a path up (a test checks every [`Rpc::is_change`] passes it).
const CHANGE_METHOD_PREFIXES: [&str; 6] =
    ["Create", "Alter", "Delete", "Reset", "Purge", "Redrive"];

/// False for paths that are certainly not a change RPC (the hot paths: publish,
/// fetch, settle), without a table lookup.
pub fn may_be_change(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or("");
    CHANGE_METHOD_PREFIXES.iter().any(|p| method.starts_with(p))
}

pub fn route(path: &str) -> Route {
    if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return Route::Open;
    }
    if AUTHENTICATED_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return Route::AuthenticatedOnly;
    }
    match RPCS.iter().find(|rpc| rpc.path == path) {
        Some(rpc) => Route::Rpc(rpc),
        None => Route::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// Every method of every tidelog service, read from the descriptor set the broker
    /// serves, has exactly one row, and no row names a method that does not exist.
    #[test]
    fn change_rpcs_are_the_ones_that_create_alter_delete_or_reset() {
        let changes: Vec<&str> = RPCS
            .iter()
            .filter(|r| r.is_change())
            .map(Rpc::name)
            .collect();
        for rpc in RPCS.iter().filter(|r| r.is_change()) {
            assert!(may_be_change(rpc.path), "{}", rpc.path);
        }
        for name in [
            "Admin/CreateTopic",
            "Admin/DeleteTopic",
            "Admin/AlterTopicConfig",
            "Admin/CreatePartitions",
            "Groups/ResetOffsets",
            "Groups/DeleteOffsets",
            "Groups/DeleteGroup",
            "Queues/CreateQueue",
            "Queues/PurgeQueue",
        ] {
            assert!(changes.contains(&name), "{name}: {changes:?}");
        }
        for name in [
            "Publisher/Publish",
            "Consumer/Fetch",
            "Groups/CommitOffsets",
        ] {
            assert!(!changes.contains(&name), "{name}");
        }
        assert!(!may_be_change("/tidelog.v1.Publisher/Publish"));
        assert!(!may_be_change("/tidelog.v1.Queues/Settle"));
    }

    #[test]
    fn every_rpc_has_exactly_one_row() {
        let set =
            prost_types::FileDescriptorSet::decode(tidelog_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut paths = Vec::new();
        for file in &set.file {
            if file.package() != "tidelog.v1" {
                continue;
            }
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!("/tidelog.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
        assert!(paths.len() >= 40, "{paths:?}");
        for path in &paths {
            let rows = RPCS.iter().filter(|rpc| rpc.path == path).count();
            assert_eq!(rows, 1, "{path} has {rows} rows in RPCS");
        }
        for rpc in RPCS {
            assert!(
                paths.iter().any(|p| p == rpc.path),
                "{} is no RPC",
                rpc.path
            );
        }
        assert_eq!(paths.len(), RPCS.len());
    }

    #[test]
    fn routes() {
        assert_eq!(route("/grpc.health.v1.Health/Check"), Route::Open);
        assert_eq!(
            route("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Route::AuthenticatedOnly
        );
        assert!(matches!(
            route("/tidelog.v1.Publisher/Publish"),
            Route::Rpc(_)
        ));
        assert_eq!(route("/tidelog.v1.Publisher/Nope"), Route::Unknown);
        assert_eq!(route("/grpc.health.v1.HealthX/Check"), Route::Unknown);
    }
}
