//! What a `bench queue` run measured, and its human and JSON reports.

use serde_json::{Value, json};
use tidelog_proto::v1::QueueDescription;

use super::QueueBenchArgs;
use super::worker::WorkerOutcome;
use crate::bench::stats::{Latency, format_latency_us, round2};
use crate::bench::validate::Errors;
use crate::units::format_rate;

/// Everything a run measured.
#[derive(Debug)]
pub(super) struct QueueOutcome {
    pub(super) args: QueueBenchArgs,
    pub(super) server: String,
    pub(super) run: u32,
    pub(super) topic: String,
    pub(super) queue: String,
    pub(super) deleted: bool,
    /// Publishing: messages, seconds (the fill phase, or alongside with --live).
    pub(super) published: u64,
    pub(super) publish_seconds: f64,
    pub(super) workers: Vec<WorkerOutcome>,
    /// First worker start -> last confirmed ack.
    pub(super) seconds: f64,
    pub(super) client_cpu: Option<f64>,
    pub(super) broker_cpu: Option<f64>,
    pub(super) broker_pid: Option<u32>,
    pub(super) load_before: Value,
    pub(super) load_after: Value,
    pub(super) queue_after: Option<QueueDescription>,
    pub(super) validation: Errors,
}

impl QueueOutcome {
    pub(super) fn acked(&self) -> u64 {
        self.workers.iter().map(|w| w.acked).sum()
    }

    pub(super) fn acked_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.acked() as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub(super) fn ack_latency(&self) -> Latency {
        let mut latency = Latency::new();
        for w in &self.workers {
            latency.add(&w.ack_latency);
        }
        latency
    }

    pub(super) fn publish_latency(&self) -> Latency {
        let mut latency = Latency::new();
        for w in &self.workers {
            latency.add(&w.publish_latency);
        }
        latency
    }

    pub(super) fn due_lateness(&self) -> Latency {
        let mut latency = Latency::new();
        for w in &self.workers {
            latency.add(&w.due_lateness);
        }
        latency
    }

    /// Deliveries per Deliveries event, over all workers.
    pub(super) fn per_event(&self) -> f64 {
        let events: u64 = self.workers.iter().map(|w| w.events).sum();
        let delivered: u64 = self.workers.iter().map(|w| w.delivered).sum();
        if events == 0 {
            0.0
        } else {
            delivered as f64 / events as f64
        }
    }

    /// CPU µs per acked message.
    pub(super) fn cpu_us_per_message(&self, cpu: Option<f64>) -> Option<f64> {
        let acked = self.acked();
        cpu.filter(|_| acked > 0).map(|s| s * 1e6 / acked as f64)
    }
}

pub(super) fn load_text(load: &Value) -> String {
    let avg = load["loadavg"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| format!("{:.2}", v.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    match load["cpu_pressure_some_avg10"].as_f64() {
        Some(p) => format!("loadavg {avg}, cpu pressure some avg10 {p:.1}%"),
        None => format!("loadavg {avg}"),
    }
}

pub(super) fn human(outcome: &QueueOutcome) -> String {
    let args = &outcome.args;
    let mut text = format!(
        "tidelog bench queue against {}\ntopic and queue {} ({} partitions, fsync {}{}); queue: max unacked {} per member, ack deadline {}\n",
        outcome.server,
        outcome.topic,
        args.partitions,
        args.fsync.as_deref().unwrap_or("always"),
        if outcome.deleted {
            "; deleted at the end"
        } else {
            ""
        },
        args.max_unacked,
        tidelog_storage::duration::format_duration_ms(args.ack_deadline),
    );
    text.push_str(&format!(
        "{} producers: {} x {} B, {} per request, durable; {}\n",
        args.producers,
        outcome.published,
        args.size,
        args.batch,
        if args.live {
            format!(
                "published during the run in {:.2}s ({})",
                outcome.publish_seconds,
                format_rate(outcome.published as f64 / outcome.publish_seconds.max(1e-9))
            )
        } else {
            format!(
                "published first in {:.2}s ({}; not part of the figures below)",
                outcome.publish_seconds,
                format_rate(outcome.published as f64 / outcome.publish_seconds.max(1e-9))
            )
        }
    ));
    text.push_str(&format!(
        "{} workers: one Consume stream each, credit {}, every delivery event acked at once (ranges), acks durable\n\n",
        args.workers, args.credit
    ));
    let mut table = crate::output::Table::new(&[
        "WORKER",
        ">ACKED",
        ">EVENTS",
        ">PER-EVENT",
        ">SETTLES",
        ">REDELIVERED",
        ">P50",
        ">P99",
        ">MAX",
    ]);
    for w in &outcome.workers {
        let p = w.ack_latency.percentiles();
        table.row(vec![
            w.id.to_string(),
            w.acked.to_string(),
            w.events.to_string(),
            format!("{:.0}", w.delivered as f64 / (w.events.max(1)) as f64),
            w.settles.to_string(),
            w.redelivered.to_string(),
            p.map_or_else(|| "-".into(), |p| format_latency_us(p.p50_us)),
            p.map_or_else(|| "-".into(), |p| format_latency_us(p.p99_us)),
            p.map_or_else(|| "-".into(), |p| format_latency_us(p.max_us)),
        ]);
    }
    text.push_str(&table.render());
    text.push('\n');
    text.push_str(&format!(
        "deliver + ack: {} acked in {:.2}s = {} ({:.2} MB/s payload)\n",
        outcome.acked(),
        outcome.seconds,
        format_rate(outcome.acked_per_s()),
        outcome.acked_per_s() * args.size as f64 / 1e6
    ));
    if let Some(p) = outcome.ack_latency().percentiles() {
        text.push_str(&format!(
            "delivery -> durable ack: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
            format_latency_us(p.p50_us),
            format_latency_us(p.p90_us),
            format_latency_us(p.p99_us),
            format_latency_us(p.p999_us),
            format_latency_us(p.max_us)
        ));
    }
    if let Some(p) = outcome.due_lateness().percentiles() {
        text.push_str(&format!(
            "deliver-at time -> delivery: p50 {}  p90 {}  p99 {}  max {}\n",
            format_latency_us(p.p50_us),
            format_latency_us(p.p90_us),
            format_latency_us(p.p99_us),
            format_latency_us(p.max_us)
        ));
    }
    if let Some(p) = outcome.publish_latency().percentiles() {
        text.push_str(&format!(
            "publish -> delivery: p50 {}  p90 {}  p99 {}  max {}\n",
            format_latency_us(p.p50_us),
            format_latency_us(p.p90_us),
            format_latency_us(p.p99_us),
            format_latency_us(p.max_us)
        ));
    }
    text.push_str(&format!(
        "deliveries per event: {:.0} on average (largest {})\n",
        outcome.per_event(),
        outcome
            .workers
            .iter()
            .map(|w| w.largest_event)
            .max()
            .unwrap_or(0)
    ));
    let cpu = |label: &str, seconds: Option<f64>| match seconds {
        Some(s) => format!(
            "{label} CPU {s:.2}s ({:.2} us/message)",
            outcome.cpu_us_per_message(Some(s)).unwrap_or(0.0)
        ),
        None => format!("{label} CPU unknown"),
    };
    text.push_str(&format!(
        "{}; {}{}\n",
        cpu("client", outcome.client_cpu),
        cpu("broker", outcome.broker_cpu),
        match outcome.broker_pid {
            Some(pid) => format!(" (pid {pid})"),
            None => " (give --broker-pid)".into(),
        }
    ));
    text.push_str(&format!(
        "machine: before {}; after {}\n",
        load_text(&outcome.load_before),
        load_text(&outcome.load_after)
    ));
    if outcome.validation.is_empty() {
        text.push_str(&format!(
            "validation: ok, every one of {} messages acked exactly once, payloads intact, queue empty at the end\n",
            outcome.acked()
        ));
    } else {
        text.push_str(&format!(
            "validation: FAILED, {} error{}:\n",
            outcome.validation.count,
            if outcome.validation.count == 1 {
                ""
            } else {
                "s"
            }
        ));
        for message in &outcome.validation.first {
            text.push_str(&format!("  - {message}\n"));
        }
    }
    text
}

pub(super) fn document(outcome: &QueueOutcome) -> Value {
    let args = &outcome.args;
    let workers: Vec<Value> = outcome
        .workers
        .iter()
        .map(|w| {
            json!({
                "id": w.id,
                "delivered": w.delivered,
                "acked": w.acked,
                "redelivered": w.redelivered,
                "payload_bytes": w.bytes,
                "delivery_events": w.events,
                "largest_event": w.largest_event,
                "settle_requests": w.settles,
                "ack_latency": w.ack_latency.percentiles().map(|p| p.json()),
            })
        })
        .collect();
    json!({
        "command": "bench queue",
        "server": outcome.server,
        "run_id": format!("{:08x}", outcome.run),
        "parameters": {
            "workers": args.workers,
            "messages": args.messages,
            "message_size": args.size,
            "partitions": args.partitions,
            "producers": args.producers,
            "batch": args.batch,
            "live": args.live,
            "credit": args.credit,
            "max_unacked": args.max_unacked,
            "ack_deadline_ms": args.ack_deadline,
            "fsync": args.fsync.as_deref().unwrap_or("always"),
        },
        "topic": outcome.topic,
        "queue": outcome.queue,
        "deleted": outcome.deleted,
        "publish": {
            "messages": outcome.published,
            "seconds": round2(outcome.publish_seconds),
            "messages_per_s": (outcome.published as f64 / outcome.publish_seconds.max(1e-9)).round(),
            "timed": args.live,
        },
        "acked": outcome.acked(),
        "seconds": round2(outcome.seconds),
        "acked_per_s": outcome.acked_per_s().round(),
        "mb_per_s": round2(outcome.acked_per_s() * args.size as f64 / 1e6),
        "ack_latency": outcome.ack_latency().percentiles().map(|p| p.json()),
        "publish_to_delivery_latency": outcome.publish_latency().percentiles().map(|p| p.json()),
        "deliver_at_to_delivery_latency": outcome.due_lateness().percentiles().map(|p| p.json()),
        "deliveries_per_event": round2(outcome.per_event()),
        "workers": workers,
        "client_cpu_seconds": outcome.client_cpu.map(round2),
        "broker_cpu_seconds": outcome.broker_cpu.map(round2),
        "broker_pid": outcome.broker_pid,
        "client_cpu_us_per_message": outcome.cpu_us_per_message(outcome.client_cpu).map(round2),
        "broker_cpu_us_per_message": outcome.cpu_us_per_message(outcome.broker_cpu).map(round2),
        "machine_before": outcome.load_before,
        "machine_after": outcome.load_after,
        "queue_after": outcome.queue_after.as_ref().map(crate::queue::queue_json),
        "validation": {
            "ok": outcome.validation.is_empty(),
            "messages_checked": outcome.acked(),
            "errors": outcome.validation.count,
            "first_errors": outcome.validation.first,
        },
    })
}
