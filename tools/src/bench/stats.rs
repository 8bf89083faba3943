//! Figures: latency histograms (HDR, microseconds), per-actor results and totals
//! computed the way Iggy reports them (total messages / slowest actor's time).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Highest latency the histograms hold (longer ones are recorded as this): 1 hour.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Bytes in a megabyte as the MB/s figures count them (decimal, as Iggy and Kafka do).
pub const MB: f64 = 1e6;

/// A latency histogram in microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            histogram: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .expect("the histogram bounds are valid"),
        }
    }

    /// Records one latency (clamped to 1 µs .. 1 h).
    pub fn record(&mut self, latency: Duration) {
        self.record_us_n(duration_us(latency), 1);
    }

    /// Records `count` samples of `us` microseconds.
    pub fn record_us_n(&mut self, us: u64, count: u64) {
        let us = us.clamp(1, LATENCY_MAX_US);
        // Within bounds by the clamp, so this cannot fail.
        let _ = self.histogram.record_n(us, count);
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// The percentiles, or `None` without samples.
    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.histogram.is_empty() {
            return None;
        }
        let h = &self.histogram;
        Some(Percentiles {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

pub fn duration_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "mean_us": (self.mean_us * 10.0).round() / 10.0,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "p99_9_us": self.p999_us,
            "max_us": self.max_us,
        })
    }
}

/// A latency for a table cell: `850us`, `3.42ms`, `1.25s`.
pub fn format_latency_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// Producer or consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Producer,
    Consumer,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        }
    }
}

/// What one producer or consumer did.
#[derive(Debug, Clone)]
pub struct ActorResult {
    pub role: Role,
    pub id: u32,
    pub messages: u64,
    /// Payload bytes (message values).
    pub bytes: u64,
    /// From the actor's start to its last ack (producer) or message (consumer).
    pub elapsed: Duration,
    /// Publish -> ack per request (producers), publish -> receive per message
    /// (consumers of an e2e run); empty otherwise.
    pub latency: Latency,
    /// Publish requests sent (producers).
    pub requests: u64,
}

impl ActorResult {
    pub fn new(role: Role, id: u32) -> ActorResult {
        ActorResult {
            role,
            id,
            messages: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            latency: Latency::new(),
            requests: 0,
        }
    }

    pub fn messages_per_s(&self) -> f64 {
        per_second(self.messages as f64, self.elapsed)
    }

    pub fn mb_per_s(&self) -> f64 {
        per_second(self.bytes as f64 / MB, self.elapsed)
    }
}

/// `amount / elapsed`, 0 for no time.
pub fn per_second(amount: f64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 { amount / seconds } else { 0.0 }
}

/// The figures of a group of actors.
#[derive(Debug, Clone)]
pub struct Totals {
    pub actors: usize,
    pub messages: u64,
    pub bytes: u64,
    /// The slowest actor's time: the total's rate is per this (Iggy's definition).
    pub slowest: Duration,
    pub latency: Latency,
    /// Sum of each actor's own rate (for comparison; >= the total rate).
    pub sum_of_rates: f64,
}

impl Totals {
    pub fn of(actors: &[ActorResult]) -> Totals {
        let mut latency = Latency::new();
        for actor in actors {
            latency.add(&actor.latency);
        }
        Totals {
            actors: actors.len(),
            messages: actors.iter().map(|a| a.messages).sum(),
            bytes: actors.iter().map(|a| a.bytes).sum(),
            slowest: actors
                .iter()
                .map(|a| a.elapsed)
                .max()
                .unwrap_or(Duration::ZERO),
            latency,
            sum_of_rates: actors.iter().map(ActorResult::messages_per_s).sum(),
        }
    }

    pub fn messages_per_s(&self) -> f64 {
        per_second(self.messages as f64, self.slowest)
    }

    pub fn mb_per_s(&self) -> f64 {
        per_second(self.bytes as f64 / MB, self.slowest)
    }

    pub fn json(&self) -> Value {
        json!({
            "actors": self.actors,
            "messages": self.messages,
            "payload_bytes": self.bytes,
            "slowest_seconds": self.slowest.as_secs_f64(),
            "messages_per_s": self.messages_per_s().round(),
            "mb_per_s": round2(self.mb_per_s()),
            "sum_of_actor_messages_per_s": self.sum_of_rates.round(),
            "latency": self.latency.percentiles().map(|p| p.json()),
        })
    }
}

pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub fn actor_json(actor: &ActorResult) -> Value {
    json!({
        "role": actor.role.name(),
        "id": actor.id,
        "messages": actor.messages,
        "payload_bytes": actor.bytes,
        "requests": actor.requests,
        "seconds": actor.elapsed.as_secs_f64(),
        "messages_per_s": actor.messages_per_s().round(),
        "mb_per_s": round2(actor.mb_per_s()),
        "latency": actor.latency.percentiles().map(|p| p.json()),
    })
}

/// CPU time (user + system) this process used so far; `None` where there is no
/// procfs.
pub fn process_cpu_seconds() -> Option<f64> {
    tidelog_storage::procstat::cpu_seconds(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut latency = Latency::new();
        assert!(latency.percentiles().is_none());
        for us in 1..=10_000u64 {
            latency.record(Duration::from_micros(us));
        }
        let p = latency.percentiles().unwrap();
        assert_eq!(p.count, 10_000);
        // 3 significant digits: within 0.1% of the exact quantile.
        let near =
            |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001 + 1.0;
        assert!(near(p.p50_us, 5_000), "{p:?}");
        assert!(near(p.p90_us, 9_000), "{p:?}");
        assert!(near(p.p99_us, 9_900), "{p:?}");
        assert!(near(p.p999_us, 9_990), "{p:?}");
        assert!(near(p.max_us, 10_000), "{p:?}");
        assert!((p.mean_us - 5_000.5).abs() < 10.0, "{p:?}");
    }

    #[test]
    fn out_of_range_samples_are_clamped_not_lost() {
        let mut latency = Latency::new();
        latency.record(Duration::ZERO);
        latency.record(Duration::from_secs(10 * 3600));
        latency.record_us_n(500, 3);
        let p = latency.percentiles().unwrap();
        assert_eq!(p.count, 5);
        assert!(p.max_us >= LATENCY_MAX_US * 999 / 1000);
        assert_eq!(p.p50_us, 500);
    }

    #[test]
    fn totals_divide_by_the_slowest_actor() {
        let mut a = ActorResult::new(Role::Producer, 0);
        a.messages = 1_000;
        a.bytes = 100_000;
        a.elapsed = Duration::from_secs(1);
        a.latency.record(Duration::from_millis(2));
        let mut b = ActorResult::new(Role::Producer, 1);
        b.messages = 1_000;
        b.bytes = 100_000;
        b.elapsed = Duration::from_secs(2);
        b.latency.record(Duration::from_millis(4));
        let totals = Totals::of(&[a.clone(), b.clone()]);
        assert_eq!(totals.messages, 2_000);
        assert_eq!(totals.slowest, Duration::from_secs(2));
        assert_eq!(totals.messages_per_s(), 1_000.0);
        assert!((totals.mb_per_s() - 0.1).abs() < 1e-9);
        assert_eq!(totals.sum_of_rates, 1_500.0);
        assert_eq!(totals.latency.percentiles().unwrap().count, 2);
        assert_eq!(a.messages_per_s(), 1_000.0);
        assert_eq!(b.mb_per_s(), 0.05);
        let empty = Totals::of(&[]);
        assert_eq!(empty.messages_per_s(), 0.0);
    }

    #[test]
    fn latencies_format_with_their_unit() {
        assert_eq!(format_latency_us(850), "850us");
        assert_eq!(format_latency_us(3_420), "3.42ms");
        assert_eq!(format_latency_us(1_250_000), "1.25s");
    }
}
