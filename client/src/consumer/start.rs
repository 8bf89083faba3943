//! Where consumers start ([`StartAt`]) and what they do at a position outside the log
//! ([`Reset`]): shared by `Subscription` and `GroupMember`.

use tidelog_proto::v1::ResetPolicy;

/// Where a subscription starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest retained message.
    Earliest,
    /// Only messages published after the subscription is positioned. The default.
    #[default]
    Latest,
    /// This offset in every partition.
    Offset(u64),
    /// The first message at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

/// What to do when a position is out of range (retention deleted it, or a bad offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reset {
    /// To the log start (loses the fewest messages). The default.
    #[default]
    Earliest,
    /// To the end.
    Latest,
    /// Fail with [`crate::Error::InvalidArgument`] (`OUT_OF_RANGE`).
    Error,
}

impl Reset {
    pub(crate) fn policy(self) -> ResetPolicy {
        match self {
            Reset::Earliest => ResetPolicy::Earliest,
            Reset::Latest => ResetPolicy::Latest,
            Reset::Error => ResetPolicy::Error,
        }
    }
}
