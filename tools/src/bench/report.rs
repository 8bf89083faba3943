//! The bench's results: a human table or one JSON document with every parameter and
//! figure.

use serde_json::{Value, json};

use super::Outcome;
use super::args::Kind;
use super::stats::{ActorResult, MB, Totals, actor_json, format_latency_us, round2};
use crate::args::{AckArg, CompressionArg};
use crate::error::CliResult;
use crate::output::{Stdout, Table};
use crate::topic::fsync_name;
use crate::units::format_rate;

pub fn print(outcome: &Outcome, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    if json {
        out.json_pretty(&document(outcome))?;
    } else {
        out.text(&human(outcome))?;
    }
    out.flush()
}

fn ack_name(ack: AckArg) -> &'static str {
    match ack {
        AckArg::None => "none",
        AckArg::Written => "written",
        AckArg::Durable => "durable",
    }
}

fn compression_name(compression: i32) -> &'static str {
    match tidelog_proto::v1::Compression::try_from(compression) {
        Ok(tidelog_proto::v1::Compression::Zstd) => "zstd",
        _ => "none",
    }
}

fn plural(n: u64, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

fn read_mode(outcome: &Outcome) -> String {
    let args = &outcome.args;
    let how = if args.group {
        "consumer group"
    } else if args.fetch {
        "unary fetch"
    } else {
        "subscribe stream"
    };
    let split = if args.group {
        "partitions assigned by the broker"
    } else if args.fanout {
        "each reads every partition"
    } else {
        "partitions divided among them"
    };
    format!("{how}, {split}, up to {} per batch", args.read_batch)
}

fn publish_mode(outcome: &Outcome) -> String {
    let args = &outcome.args;
    let transport = if args.stream {
        format!("stream ({} in flight)", args.in_flight)
    } else {
        "unary".to_string()
    };
    let amount = match args.duration {
        Some(ms) => format!("for {:.1}s", ms as f64 / 1e3),
        None => format!("{} messages", args.messages),
    };
    let rate = args
        .rate
        .map(|r| format!(", target {}", format_rate(r as f64)))
        .unwrap_or_default();
    format!(
        "{} B messages ({} payload), {} per request, {transport}, ack {}, {amount}{rate}",
        args.message_size,
        match args.payload {
            super::payload::FillerKind::Random => "random",
            super::payload::FillerKind::Json => "JSON-like",
        },
        args.batch,
        ack_name(args.ack)
    )
}

fn row(table: &mut Table, name: String, figures: &Totals) {
    let mut cells = vec![
        name,
        figures.messages.to_string(),
        format!("{:.1}", figures.bytes as f64 / MB),
        format!("{:.2}", figures.slowest.as_secs_f64()),
        format_rate(figures.messages_per_s())
            .trim_end_matches("/s")
            .to_string(),
        format!("{:.2}", figures.mb_per_s()),
    ];
    if let Some(p) = figures.latency.percentiles() {
        for us in [p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us] {
            cells.push(format_latency_us(us));
        }
    }
    table.row(cells);
}

fn actor_rows(table: &mut Table, actors: &[ActorResult], label: &str) {
    if actors.len() > 1 {
        for a in actors {
            let name = format!("{} {}", a.role.name(), a.id);
            row(table, name, &Totals::of(std::slice::from_ref(a)));
        }
    }
    row(table, format!("{label} total"), &Totals::of(actors));
}

fn human(outcome: &Outcome) -> String {
    let args = &outcome.args;
    let topic = &outcome.topic;
    let config = topic.config.unwrap_or_default();
    let mut text = format!(
        "tidelog bench {} against {}\ntopic {} ({}, {}, fsync {}, compression {}{})\n",
        outcome.kind.name(),
        outcome.server,
        topic.name,
        if outcome.topic_created {
            "created"
        } else {
            "existing"
        },
        plural(topic.partitions.len() as u64, "partition"),
        fsync_name(config.fsync.as_ref()),
        compression_name(config.compression),
        if outcome.topic_deleted {
            "; deleted at the end"
        } else {
            ""
        },
    );
    if outcome.kind.produces() || outcome.prefill.is_some() {
        text.push_str(&format!(
            "{}{}: {}\n",
            if outcome.prefill.is_some() {
                "filled by "
            } else {
                ""
            },
            plural(u64::from(args.producers), "producer"),
            publish_mode(outcome)
        ));
    }
    if let Some(prefill) = &outcome.prefill {
        text.push_str(&format!(
            "  filled {} messages in {:.2}s ({}; not part of the figures below)\n",
            prefill.messages,
            prefill.slowest.as_secs_f64(),
            format_rate(prefill.messages_per_s())
        ));
    }
    if outcome.kind.consumes() {
        text.push_str(&format!(
            "{}: {}\n",
            plural(u64::from(args.consumers), "consumer"),
            read_mode(outcome)
        ));
    }
    text.push('\n');
    let mut table = Table::new(&[
        "ACTOR",
        ">MESSAGES",
        ">MB",
        ">SECONDS",
        ">MSG/S",
        ">MB/S",
        ">P50",
        ">P90",
        ">P99",
        ">P99.9",
        ">MAX",
    ]);
    if !outcome.producers.is_empty() {
        actor_rows(&mut table, &outcome.producers, "producers");
    }
    if !outcome.consumers.is_empty() {
        actor_rows(&mut table, &outcome.consumers, "consumers");
    }
    text.push_str(&table.render());
    text.push_str(
        "\nMB = 10^6 payload bytes; a total is all messages / the slowest actor's time.\n",
    );
    if let Some(filter) = &args.filter {
        let consumers = Totals::of(&outcome.consumers);
        let seconds = consumers.slowest.as_secs_f64();
        text.push_str(&format!(
            "filter {filter}: {} of {} log messages matched; consumers went through the log at {} (log messages / the slowest consumer's time)\n",
            consumers.messages,
            outcome.log_messages,
            format_rate(outcome.log_messages as f64 / seconds.max(1e-6)),
        ));
    }
    let mut latency = Vec::new();
    if !outcome.producers.is_empty() {
        latency.push(if args.rate.is_some() {
            "producers: publish -> ack per request, from the time it was due at the target rate"
        } else {
            "producers: publish -> ack per request"
        });
    }
    if outcome.kind == Kind::E2e {
        latency.push("consumers: publish -> receive per message");
    }
    if !latency.is_empty() {
        text.push_str(&format!("latency: {}\n", latency.join("; ")));
    }
    if outcome.validation.is_empty() {
        if outcome.kind.consumes() {
            text.push_str(&format!(
                "validation: ok, {} messages checked (count, order per partition and producer, checksums)\n",
                outcome.checked
            ));
        } else {
            text.push_str("validation: ok (one ack per message, consecutive offsets in the partition sent to)\n");
        }
    } else {
        text.push_str(&format!(
            "validation: FAILED, {}:\n",
            plural(outcome.validation.count, "error")
        ));
        for message in &outcome.validation.first {
            text.push_str(&format!("  - {message}\n"));
        }
        if outcome.validation.count > outcome.validation.first.len() as u64 {
            text.push_str("  - ...\n");
        }
    }
    if let Some(cpu) = outcome.client_cpu_seconds {
        let wall = outcome.wall.as_secs_f64();
        text.push_str(&format!(
            "client CPU: {cpu:.2}s user+sys in {wall:.2}s wall ({:.0}% of one core)\n",
            100.0 * cpu / wall.max(1e-3)
        ));
    }
    text
}

fn totals_json(actors: &[ActorResult]) -> Value {
    if actors.is_empty() {
        return Value::Null;
    }
    json!({
        "actors": actors.iter().map(actor_json).collect::<Vec<_>>(),
        "total": Totals::of(actors).json(),
    })
}

pub fn document(outcome: &Outcome) -> Value {
    let args = &outcome.args;
    let config = outcome.topic.config.unwrap_or_default();
    json!({
        "command": format!("bench {}", outcome.kind.name()),
        "server": outcome.server,
        "run_id": format!("{:08x}", outcome.run),
        "parameters": {
            "producers": args.producers,
            "consumers": args.consumers,
            "partitions": outcome.topic.partitions.len(),
            "message_size": args.message_size,
            "batch": args.batch,
            "stream": args.stream,
            "in_flight": args.stream.then_some(args.in_flight),
            "ack": ack_name(args.ack),
            "fsync": fsync_name(config.fsync.as_ref()),
            "compression": match args.compression {
                CompressionArg::None => "none",
                CompressionArg::Zstd => "zstd",
            },
            "payload": match args.payload {
                super::payload::FillerKind::Random => "random",
                super::payload::FillerKind::Json => "json",
            },
            "messages": args.duration.is_none().then_some(args.messages),
            "duration_ms": args.duration,
            "rate": args.rate,
            "group": args.group,
            "fanout": args.fanout,
            "fetch": args.fetch,
            "read_batch": args.read_batch,
            "filter": args.filter,
            "idle_timeout_ms": args.idle_timeout,
            "client_threads": args.client_threads,
        },
        "topic": {
            "name": outcome.topic.name,
            "partitions": outcome.topic.partitions.len(),
            "created": outcome.topic_created,
            "deleted": outcome.topic_deleted,
            "fsync": fsync_name(config.fsync.as_ref()),
            "compression": compression_name(config.compression),
        },
        "group": outcome.group,
        "prefill": outcome.prefill.as_ref().map(Totals::json),
        "producers": totals_json(&outcome.producers),
        "consumers": totals_json(&outcome.consumers),
        "log": outcome.kind.consumes().then(|| {
            let seconds = Totals::of(&outcome.consumers).slowest.as_secs_f64();
            json!({
                "messages": outcome.log_messages,
                "messages_per_s": round2(outcome.log_messages as f64 / seconds.max(1e-6)),
            })
        }),
        "validation": {
            "ok": outcome.validation.is_empty(),
            "messages_checked": outcome.checked,
            "errors": outcome.validation.count,
            "first_errors": outcome.validation.first,
        },
        "wall_seconds": round2(outcome.wall.as_secs_f64()),
        "client_cpu_seconds": outcome.client_cpu_seconds.map(round2),
    })
}
