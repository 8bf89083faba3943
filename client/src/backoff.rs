//! Exponential backoff with jitter, for reconnecting after the broker went away.

use std::time::Duration;

use tidelog_storage::rng::SeededRng;

/// Delays between reconnect attempts: `initial`, doubling up to `max`, each scaled
/// by a random factor in [0.5, 1.0) so clients that lost the same broker do not come
/// back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: SeededRng,
}

/// The default first delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// The default longest delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            next: initial,
            rng: SeededRng::new(tidelog_storage::msgid::process_seed()),
        }
    }

    /// The next delay (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = 500 + self.rng.below(500); // per mille
        base * u32::try_from(jitter).unwrap_or(1000) / 1000
    }

    /// Sleeps the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_max_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        for (delay, base) in delays.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            assert!(*delay >= Duration::from_millis(base / 2), "{delays:?}");
            assert!(*delay < Duration::from_millis(base), "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(100));
    }
}
