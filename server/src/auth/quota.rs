//! Quotas per principal (`tidelog quota`, the `Access/SetQuota` RPC): rates that slow
//! a principal down, and limits on the topics and partitions it creates.
//!
//! # Rates
//!
//! Publish bytes, consume bytes and requests per second, each paced on its own with
//! the generic cell rate algorithm (a leaky bucket kept as one instant): a principal
//! has a *theoretical arrival time* per kind; a charge of `n` units at rate `r` moves
//! it `n / r` seconds on from `max(it, now)`, and the caller waits for as long as it
//! then lies more than [`BURST`] ahead of now. So a principal may burst one second's
//! worth and is held to its rate after that, over all of its connections together.
//! One wait is at most [`MAX_WAIT`]: a request larger than that many seconds of quota
//! goes through after it (and what it was over is forgotten), so a tiny quota cannot
//! hold a call past a client's deadline for ever.
//!
//! Where the broker waits (Kafka's way: delay, never fail):
//! - requests: the auth layer, before the call runs; a PublishStream's reader, before
//!   each request;
//! - publish bytes: before the request is appended (a stream stops reading meanwhile,
//!   so HTTP/2 flow control pushes back on the client);
//! - consume bytes: a unary fetch before it answers; a server stream before its next
//!   delivery ([`super::Auth::guard`]).
//!
//! # Limits
//!
//! `topics_max` and `partitions_max` count the topics whose `topic.owner` is the
//! principal (the storage engine records who created a topic). Creations are checked
//! and made under one lock, so two racing creations cannot both pass the last slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidelog_storage::access::QuotaLimits;

/// How far ahead of now a principal's pace may run before it waits: one second of
/// its rate may come at once.
pub const BURST: Duration = Duration::from_secs(1);

/// The longest one wait.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Past this many principals, idle ones are forgotten before another is added.
const PRUNE_PAST: usize = 1024;

/// What a rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    PublishBytes = 0,
    ConsumeBytes = 1,
    Requests = 2,
}

impl QuotaKind {
    /// The `kind` label of the throttle metrics.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::PublishBytes => "publish_bytes",
            QuotaKind::ConsumeBytes => "consume_bytes",
            QuotaKind::Requests => "requests",
        }
    }

    /// Whether `limits` has a rate of this kind.
    pub fn is_limited(self, limits: &QuotaLimits) -> bool {
        self.rate(limits).is_some()
    }

    fn rate(self, limits: &QuotaLimits) -> Option<u64> {
        match self {
            QuotaKind::PublishBytes => limits.publish_bytes_per_sec,
            QuotaKind::ConsumeBytes => limits.consume_bytes_per_sec,
            QuotaKind::Requests => limits.requests_per_sec,
        }
    }
}

/// One principal's pace.
#[derive(Debug)]
struct Meter {
    /// The access state's generation `limits` were resolved at.
    generation: u64,
    limits: QuotaLimits,
    /// Theoretical arrival time per [`QuotaKind`].
    tat: [Option<Instant>; 3],
}

/// The paces of the principals that have a rate.
#[derive(Debug, Default)]
pub struct Pacer {
    meters: Mutex<HashMap<Arc<str>, Meter>>,
    /// Held while a topic or partition creation is checked against a limit and made.
    creations: tokio::sync::Mutex<()>,
    /// Held while a quota is read, merged with a change and written back.
    quota_changes: Mutex<()>,
}

impl Pacer {
    /// Serializes creations checked against topics_max and partitions_max.
    pub async fn lock_creations(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.creations.lock().await
    }

    /// Serializes SetQuota's read-merge-write.
    pub fn lock_quota_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.quota_changes.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Charges `units` of `kind` to `principal`, whose limits are `limits` as of the
    /// access state's `generation`; returns how long the caller must wait (zero when
    /// it need not).
    pub fn charge(
        &self,
        principal: &Arc<str>,
        generation: u64,
        limits: QuotaLimits,
        kind: QuotaKind,
        units: u64,
        now: Instant,
    ) -> Duration {
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        if meters.len() >= PRUNE_PAST && !meters.contains_key(principal) {
            drop_idle(&mut meters, now);
        }
        let meter = meters.entry(principal.clone()).or_insert(Meter {
            generation,
            limits,
            tat: [None; 3],
        });
        if meter.generation != generation {
            // The quota changed: start the paces again under the new limits.
            *meter = Meter {
                generation,
                limits,
                tat: [None; 3],
            };
        }
        let Some(rate) = kind.rate(&meter.limits) else {
            return Duration::ZERO;
        };
        let slot = &mut meter.tat[kind as usize];
        let (tat, wait) = pace(*slot, now, units, rate);
        *slot = Some(tat);
        wait
    }

    #[cfg(test)]
    fn prune(&self, now: Instant) {
        drop_idle(&mut self.meters.lock().unwrap(), now);
    }
}

/// Forgets principals whose paces are all behind `now` (they owe nothing).
fn drop_idle(meters: &mut HashMap<Arc<str>, Meter>, now: Instant) {
    meters.retain(|_, meter| meter.tat.iter().flatten().any(|tat| *tat > now));
}

/// The generic cell rate algorithm: from the theoretical arrival time `tat` (none:
/// idle), `units` arriving at `now` at `rate` per second; returns the new `tat` and how
/// long the arrival must wait.
pub fn pace(tat: Option<Instant>, now: Instant, units: u64, rate: u64) -> (Instant, Duration) {
    // At most a day: far past MAX_WAIT, and within what a Duration holds.
    let cost = Duration::from_secs_f64((units as f64 / rate.max(1) as f64).min(86_400.0));
    let start = tat.map_or(now, |tat| tat.max(now));
    let next = start + cost;
    let ahead = next.saturating_duration_since(now);
    let wait = ahead.saturating_sub(BURST);
    if wait > MAX_WAIT {
        // Over the cap: wait the cap, and forget what lies beyond it.
        return (now + BURST + MAX_WAIT, MAX_WAIT);
    }
    (next, wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_of_one_second_passes_then_the_rate_holds() {
        let now = Instant::now();
        // 1000 bytes/s: the first 1000 bytes pass at once.
        let (tat, wait) = pace(None, now, 1000, 1000);
        assert_eq!(wait, Duration::ZERO);
        // 500 more at the same instant: half a second of wait.
        let (tat, wait) = pace(Some(tat), now, 500, 1000);
        assert_eq!(wait, Duration::from_millis(500));
        // After 2 s of quiet the pace is behind now: no wait again.
        let later = now + Duration::from_secs(2);
        let (_, wait) = pace(Some(tat), later, 1000, 1000);
        assert_eq!(wait, Duration::ZERO);
    }

    #[test]
    fn one_wait_is_capped_and_the_excess_forgotten() {
        let now = Instant::now();
        let (tat, wait) = pace(None, now, 1_000_000, 10);
        assert_eq!(wait, MAX_WAIT);
        assert_eq!(tat, now + BURST + MAX_WAIT);
        // Tiny or zero rates and huge charges neither panic nor overflow.
        let (_, wait) = pace(Some(tat), now, u64::MAX, 1);
        assert_eq!(wait, MAX_WAIT);
    }

    #[test]
    fn a_changed_quota_restarts_the_pace_and_unlimited_kinds_never_wait() {
        let pacer = Pacer::default();
        let alice: Arc<str> = "alice".into();
        let now = Instant::now();
        let limits = QuotaLimits {
            requests_per_sec: Some(1),
            ..QuotaLimits::default()
        };
        let charge = |generation, limits, kind, units| {
            pacer.charge(&alice, generation, limits, kind, units, now)
        };
        assert_eq!(charge(1, limits, QuotaKind::Requests, 1), Duration::ZERO);
        assert_eq!(
            charge(1, limits, QuotaKind::Requests, 1),
            Duration::from_secs(1)
        );
        assert_eq!(
            charge(1, limits, QuotaKind::PublishBytes, 1 << 40),
            Duration::ZERO
        );
        let raised = QuotaLimits {
            requests_per_sec: Some(1000),
            ..QuotaLimits::default()
        };
        assert_eq!(charge(2, raised, QuotaKind::Requests, 1), Duration::ZERO);
        pacer.prune(now + Duration::from_secs(5));
        assert!(pacer.meters.lock().unwrap().is_empty());
    }

    proptest! {
        /// Whatever the arrivals (each at most MAX_WAIT of quota), what a principal
        /// gets through by time t is at most its rate times (t + BURST).
        #[test]
        fn the_rate_bounds_what_passes(
            rate in 2_000u64..100_000,
            arrivals in proptest::collection::vec((0u64..50, 1u64..20_000), 1..200),
        ) {
            let start = Instant::now();
            let mut now = start;
            let mut tat = None;
            let mut passed = 0u128;
            let mut largest = 0u128;
            for (gap_ms, units) in arrivals {
                now += Duration::from_millis(gap_ms);
                let (next, wait) = pace(tat, now, units, rate);
                tat = Some(next);
                prop_assert!(wait <= MAX_WAIT);
                // The caller waits, then passes.
                now += wait;
                passed += u128::from(units);
                largest = largest.max(u128::from(units));
                let elapsed_us = now.duration_since(start).as_micros();
                let allowed = u128::from(rate) * (elapsed_us + 1_000_000) / 1_000_000 + largest + 1;
                prop_assert!(passed <= allowed, "passed {} > allowed {}", passed, allowed);
            }
        }

        #[test]
        fn under_the_rate_nothing_waits(rate in 10u64..10_000, n in 1usize..100) {
            let mut now = Instant::now();
            let mut tat = None;
            for _ in 0..n {
                // rate/10 units every 100 ms: exactly the rate.
                let (next, wait) = pace(tat, now, rate / 10, rate);
                prop_assert_eq!(wait, Duration::ZERO);
                tat = Some(next);
                now += Duration::from_millis(100);
            }
        }
    }
}
