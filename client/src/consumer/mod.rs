//! Consumers: [`Subscription`] (a plain subscription in batch form, to a topic or a
//! pattern), [`GroupMember`]
//! (a consumer-group member) and, in [`crate::queue`], the queue worker.

mod damage;
mod decode;
mod delivery;
mod fetch;
mod group;
mod start;
mod subscription;
mod views;

pub use damage::Damaged;
pub use fetch::{FetchOptions, Fetched};
pub use group::{AssignmentChange, Commit, GroupEvent, GroupMember, GroupOptions};
pub use start::{Reset, StartAt};
pub use subscription::{
    Event, PartitionProgress, PositionReset, ResetReason, SubscribeOptions, Subscription,
    TopicsChanged,
};
pub use views::{MessageView, Views};
