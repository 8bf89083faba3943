//! The broker-wide shutdown signal.
//!
//! gRPC graceful shutdown waits for every in-flight call to finish, but Subscribe
//! streams and long polls would never finish by themselves. Each such call therefore
//! also waits on this signal and ends once it fires: streams (Subscribe, group
//! members, PublishStream, queue Consume) with the UNAVAILABLE of [`unavailable`], long
//! polls (Fetch, queue Receive) with what they have.

use tokio::sync::watch;
use tonic::Status;

/// The status of a call ended because the broker is shutting down: UNAVAILABLE (a
/// client retries it), every such call in the same words, `then` saying what to do.
pub fn unavailable(then: &str) -> Status {
    Status::unavailable(format!("the broker is shutting down; {then}"))
}

/// A one-shot, cloneable shutdown flag that can be awaited.
#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: std::sync::Arc<watch::Sender<bool>>,
    receiver: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (sender, receiver) = watch::channel(false);
        Shutdown {
            sender: std::sync::Arc::new(sender),
            receiver,
        }
    }

    /// Starts the shutdown. Idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once [`Shutdown::trigger`] has been called (at once if it has been).
    pub async fn wait(&self) {
        let mut receiver = self.receiver.clone();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[tokio::test]
    async fn wait_returns_after_trigger() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        });
        shutdown.trigger();
        waiter.await.unwrap();
        assert!(shutdown.is_triggered());
        // Already triggered: returns at once.
        shutdown.wait().await;
    }
}
