//! `tidelog queue create | list | describe | alter | delete | purge | redrive`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tidelog_proto::v1::{
    AlterQueueRequest, CreateQueueRequest, DeleteQueueRequest, DescribeQueueRequest,
    ListQueuesRequest, PurgeQueueRequest, QueueConfig, QueueDescription, RedriveQueueRequest,
    StartPosition, start_position,
};
use tidelog_storage::duration::format_duration_ms;

use super::args::{QueueCommand, QueueConfigArgs, QueueRedriveArgs, QueueStart};
use super::{empty_answer, queue_error};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, Table, render_pairs};

pub async fn run(broker: &Broker, command: QueueCommand, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    match command {
        QueueCommand::Create(args) => {
            let context = format!("creating queue {:?}", args.name);
            let start = match args.from {
                QueueStart::Earliest => {
                    start_position::Position::Earliest(start_position::Earliest {})
                }
                QueueStart::Latest => start_position::Position::Latest(start_position::Latest {}),
                QueueStart::TimestampMs(ms) => start_position::Position::TimestampMs(ms),
            };
            let queue = broker
                .queues()
                .create_queue(CreateQueueRequest {
                    name: args.name.clone(),
                    topic: args.topic.clone().unwrap_or_default(),
                    topic_pattern: args.topic_pattern.clone().unwrap_or_default(),
                    start: Some(StartPosition {
                        position: Some(start),
                    }),
                    config: Some(config_update(&args.config)),
                    filter: args.filter.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| queue_error(broker, &context, &s))?
                .into_inner()
                .queue
                .ok_or_else(|| empty_answer(&context))?;
            if json {
                out.json_pretty(&queue_json(&queue))?;
            } else {
                out.line(&format!(
                    "created queue {} on {} ({} ready)",
                    queue.name,
                    consumes(&queue),
                    queue.ready
                ))?;
                if !queue.filter.is_empty() {
                    out.line(&format!("filter: {}", queue.filter))?;
                }
                out.text(&render_config(queue.config.as_ref()))?;
            }
        }
        QueueCommand::List(args) => {
            let queues = broker
                .queues()
                .list_queues(ListQueuesRequest {
                    topic: args.topic.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| queue_error(broker, "listing queues", &s))?
                .into_inner()
                .queues;
            if json {
                let list: Vec<Value> = queues.iter().map(queue_json).collect();
                out.json_pretty(&json!({ "queues": list }))?;
            } else if queues.is_empty() {
                out.line(match args.topic {
                    Some(_) => "no queues on that topic",
                    None => "no queues (create one with `tidelog queue create NAME --topic TOPIC`)",
                })?;
            } else {
                let mut table = Table::new(&[
                    "QUEUE",
                    "TOPIC",
                    ">READY",
                    ">DELAYED",
                    ">UNACKED",
                    ">WAITING",
                    ">OLDEST-UNACKED",
                    ">MEMBERS",
                ]);
                for q in &queues {
                    table.row(vec![
                        q.name.clone(),
                        match q.topic_pattern.is_empty() {
                            true => q.topic.clone(),
                            false => format!("/{}/", q.topic_pattern),
                        },
                        q.ready.to_string(),
                        q.delayed.to_string(),
                        q.unacked.to_string(),
                        q.waiting.to_string(),
                        age(q.oldest_unacked_age_ms, q.unacked),
                        q.members.len().to_string(),
                    ]);
                }
                out.text(&table.render())?;
            }
        }
        QueueCommand::Describe(args) => {
            let queue = describe(broker, &args.name).await?;
            if json {
                out.json_pretty(&queue_json(&queue))?;
            } else {
                out.text(&render_queue(&queue))?;
            }
        }
        QueueCommand::Alter(args) => {
            let current = describe(broker, &args.name).await?;
            let config = current.config.clone().unwrap_or_default();
            args.config.check((
                config.backoff_initial_ms.unwrap_or(0),
                config.backoff_max_ms.unwrap_or(u64::MAX),
            ))?;
            let context = format!("altering queue {:?}", args.name);
            let queue = broker
                .queues()
                .alter_queue(AlterQueueRequest {
                    name: args.name.clone(),
                    config: Some(config_update(&args.config)),
                })
                .await
                .map_err(|s| queue_error(broker, &context, &s))?
                .into_inner()
                .queue
                .ok_or_else(|| empty_answer(&context))?;
            if json {
                out.json_pretty(&queue_json(&queue))?;
            } else {
                out.line(&format!("altered queue {}", queue.name))?;
                out.text(&render_config(queue.config.as_ref()))?;
            }
        }
        QueueCommand::Delete(args) => {
            let context = format!("deleting queue {:?}", args.name);
            broker
                .queues()
                .delete_queue(DeleteQueueRequest {
                    name: args.name.clone(),
                })
                .await
                .map_err(|s| queue_error(broker, &context, &s))?;
            if json {
                out.json_pretty(&json!({ "deleted": args.name }))?;
            } else {
                out.line(&format!("deleted queue {}", args.name))?;
            }
        }
        QueueCommand::Purge(args) => {
            let context = format!("purging queue {:?}", args.name);
            let purged = broker
                .queues()
                .purge_queue(PurgeQueueRequest {
                    name: args.name.clone(),
                })
                .await
                .map_err(|s| queue_error(broker, &context, &s))?
                .into_inner()
                .purged;
            if json {
                out.json_pretty(&json!({ "queue": args.name, "purged": purged }))?;
            } else {
                out.line(&format!(
                    "purged queue {}: {purged} message{} settled without delivery",
                    args.name,
                    plural(purged)
                ))?;
            }
        }
        QueueCommand::Redrive(args) => redrive(broker, &args, json, &mut out).await?,
        QueueCommand::Consume(_) | QueueCommand::Work(_) | QueueCommand::Deliveries(_) => {}
    }
    out.flush()
}

/// The queue, or an error naming it.
pub async fn describe(broker: &Broker, name: &str) -> CliResult<QueueDescription> {
    let context = format!("describing queue {name:?}");
    broker
        .queues()
        .describe_queue(DescribeQueueRequest { name: name.into() })
        .await
        .map_err(|s| queue_error(broker, &context, &s))?
        .into_inner()
        .queue
        .ok_or_else(|| empty_answer(&context))
}

/// The fields the flags set; the others stay absent (default, or unchanged).
fn config_update(args: &QueueConfigArgs) -> QueueConfig {
    let (backoff_initial_ms, backoff_max_ms) = args.backoff_bounds();
    QueueConfig {
        ack_deadline_ms: args.ack_deadline,
        max_deliveries: args.max_deliveries,
        backoff_initial_ms,
        backoff_max_ms,
        dead_letter_topic: args.dead_letter_topic.clone(),
        max_unacked_per_member: args.max_unacked,
        history_attempts: args.history_attempts,
        history_retention_ms: args.history_retention,
    }
}

/// Calls RedriveQueue until nothing is left, with a progress line on a terminal.
async fn redrive(
    broker: &Broker,
    args: &QueueRedriveArgs,
    json: bool,
    out: &mut Stdout,
) -> CliResult<()> {
    let queue = describe(broker, &args.name).await?;
    let dead_letter_topic = queue
        .config
        .as_ref()
        .and_then(|c| c.dead_letter_topic.clone())
        .unwrap_or_default();
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let context = format!("redriving the dead letters of queue {:?}", args.name);
    let started = Instant::now();
    let (mut moved, mut requests) = (0u64, 0u64);
    let mut remaining;
    loop {
        let answer = broker
            .queues()
            .redrive_queue(RedriveQueueRequest {
                name: args.name.clone(),
                max_messages: args.batch,
            })
            .await;
        let answer = match answer {
            Ok(answer) => answer.into_inner(),
            Err(status) => {
                bar.finish_and_clear();
                let error = queue_error(broker, &context, &status);
                if moved == 0 {
                    return Err(error);
                }
                return Err(CliError::plain(format!(
                    "{} ({moved} dead letter{} were moved back before it; run it again to go on)",
                    error.message,
                    plural(moved)
                )));
            }
        };
        requests += 1;
        moved += answer.moved;
        remaining = answer.remaining;
        bar.set_message(format!(
            "redrive {}: moved {moved} from {dead_letter_topic} to {}, {remaining} left",
            args.name, queue.topic
        ));
        if answer.moved == 0 || remaining == 0 {
            break;
        }
    }
    bar.finish_and_clear();
    if json {
        out.json_pretty(&json!({
            "queue": args.name,
            "topic": queue.topic,
            "dead_letter_topic": dead_letter_topic,
            "moved": moved,
            "remaining": remaining,
            "requests": requests,
            "seconds": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        }))?;
    } else {
        out.line(&format!(
            "moved {moved} dead letter{} of queue {} from {dead_letter_topic} back to {}",
            plural(moved),
            args.name,
            queue.topic
        ))?;
    }
    Ok(())
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// An age for a table: `-` when nothing is unacked, `850ms`, `12s`, `3m20s`.
fn age(ms: u64, unacked: u64) -> String {
    if unacked == 0 {
        return "-".into();
    }
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    format_duration_ms(ms / 1_000 * 1_000)
}

/// The backoff as `FIRST..LONGEST`.
fn backoff_text(config: &QueueConfig) -> String {
    let show = |ms: Option<u64>| ms.map_or_else(|| "-".into(), format_duration_ms);
    format!(
        "{}..{} (doubling)",
        show(config.backoff_initial_ms),
        show(config.backoff_max_ms)
    )
}

fn render_config(config: Option<&QueueConfig>) -> String {
    let Some(config) = config else {
        return String::new();
    };
    let show = |ms: Option<u64>| ms.map_or_else(|| "-".into(), format_duration_ms);
    render_pairs(&[
        ("ack deadline", show(config.ack_deadline_ms)),
        (
            "max deliveries",
            match config.max_deliveries {
                Some(0) => "unlimited".into(),
                Some(n) => n.to_string(),
                None => "-".into(),
            },
        ),
        ("backoff", backoff_text(config)),
        (
            "dead-letter topic",
            config.dead_letter_topic.clone().unwrap_or_default(),
        ),
        (
            "max unacked",
            config
                .max_unacked_per_member
                .map_or_else(|| "-".into(), |n| format!("{n} per member")),
        ),
        (
            "history",
            match (config.history_attempts, config.history_retention_ms) {
                (_, Some(0)) => "none kept".into(),
                (Some(n), Some(ms)) => {
                    format!("{n} attempts per message, kept {}", format_duration_ms(ms))
                }
                _ => "-".into(),
            },
        ),
    ])
}

/// What a queue consumes, for people: `topic orders`, or `topic pattern orders\..*
/// (2 topics: orders.eu, orders.us)`.
fn consumes(queue: &QueueDescription) -> String {
    if queue.topic_pattern.is_empty() {
        return format!("topic {}", queue.topic);
    }
    match queue.topics.len() {
        0 => format!(
            "topic pattern {} (no topic matches yet: waiting for one)",
            queue.topic_pattern
        ),
        n => format!(
            "topic pattern {} ({n} topic{}: {})",
            queue.topic_pattern,
            plural(n as u64),
            queue.topics.join(", ")
        ),
    }
}

fn render_queue(queue: &QueueDescription) -> String {
    let members = queue.members.len() as u64;
    let mut text = format!(
        "queue {}  {}  ({members} member{})\n\n",
        queue.name,
        consumes(queue),
        plural(members)
    );
    text.push_str(&render_pairs(&[
        ("ready", queue.ready.to_string()),
        ("delayed", queue.delayed.to_string()),
        ("unacked", queue.unacked.to_string()),
        ("waiting", queue.waiting.to_string()),
        (
            "oldest unacked",
            age(queue.oldest_unacked_age_ms, queue.unacked),
        ),
    ]));
    text.push('\n');
    text.push_str(&render_config(queue.config.as_ref()));
    if !queue.filter.is_empty() {
        text.push_str(&render_pairs(&[("filter", queue.filter.clone())]));
    }
    let pattern = !queue.topic_pattern.is_empty();
    // LAG as Kafka's: from the first offset not settled to the end. Acks out of order
    // settle messages inside it, so it bounds the unsettled ones from above.
    let mut headers = vec![">PARTITION", ">SETTLED-BELOW", ">END", ">LAG"];
    if pattern {
        headers.insert(0, "TOPIC");
    }
    let mut table = Table::new(&headers);
    for p in &queue.partitions {
        // An unavailable partition's end is unknown until it is repaired.
        let (end, lag) = if p.unavailable {
            ("?".to_string(), "?".to_string())
        } else {
            (
                p.end_offset.to_string(),
                p.end_offset.saturating_sub(p.settled_below).to_string(),
            )
        };
        let mut row = vec![
            p.partition.to_string(),
            p.settled_below.to_string(),
            end,
            lag,
        ];
        if pattern {
            row.insert(0, p.topic.clone());
        }
        table.row(row);
    }
    if !table.is_empty() {
        text.push('\n');
        text.push_str(&table.render());
    }
    for p in queue.partitions.iter().filter(|p| p.unavailable) {
        text.push_str(&format!(
            "\nunavailable: partition {} of topic {:?}: {}; the queue neither counts nor delivers its messages until it is repaired (the other partitions deliver on)\n",
            p.partition, p.topic, p.unavailable_reason
        ));
    }
    for p in &queue.partitions {
        let Some(offset) = p.damaged_at else {
            continue;
        };
        text.push_str(&format!(
            "\ndamaged: partition {} of topic {:?}: deliveries stop at offset {offset}, a damaged batch ({}); the other partitions deliver on. Find it with `tidelog segment verify`, mend it with `tidelog segment repair` (broker stopped)\n",
            p.partition, p.topic, p.damaged_reason
        ));
    }
    if !queue.members.is_empty() {
        let mut table = Table::new(&["MEMBER", "CLIENT-ID", ">UNACKED"]);
        for m in &queue.members {
            table.row(vec![
                m.member_id.clone(),
                m.client_id.clone(),
                m.unacked.to_string(),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

pub fn config_json(config: Option<&QueueConfig>) -> Value {
    let config = config.cloned().unwrap_or_default();
    json!({
        "ack_deadline_ms": config.ack_deadline_ms,
        "max_deliveries": config.max_deliveries,
        "backoff_initial_ms": config.backoff_initial_ms,
        "backoff_max_ms": config.backoff_max_ms,
        "dead_letter_topic": config.dead_letter_topic,
        "max_unacked_per_member": config.max_unacked_per_member,
        "history_attempts": config.history_attempts,
        "history_retention_ms": config.history_retention_ms,
    })
}

pub fn queue_json(queue: &QueueDescription) -> Value {
    let members: Vec<Value> = queue
        .members
        .iter()
        .map(|m| json!({"member_id": m.member_id, "client_id": m.client_id, "unacked": m.unacked}))
        .collect();
    let partitions: Vec<Value> = queue
        .partitions
        .iter()
        .map(|p| {
            json!({
                "topic": p.topic,
                "partition": p.partition,
                "settled_below": p.settled_below,
                // An unavailable partition's end is unknown: null, not 0.
                "end_offset": (!p.unavailable).then_some(p.end_offset),
                "damaged_at": p.damaged_at,
                "damaged_reason": p.damaged_at.map(|_| p.damaged_reason.clone()),
                "unavailable": p.unavailable,
                "unavailable_reason": p.unavailable.then(|| p.unavailable_reason.clone()),
            })
        })
        .collect();
    json!({
        "name": queue.name,
        "topic": queue.topic,
        "topic_pattern": queue.topic_pattern,
        "topics": queue.topics,
        "config": config_json(queue.config.as_ref()),
        "ready": queue.ready,
        "delayed": queue.delayed,
        "unacked": queue.unacked,
        "waiting": queue.waiting,
        "oldest_unacked_age_ms": queue.oldest_unacked_age_ms,
        "members": members,
        "partitions": partitions,
        "filter": queue.filter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidelog_proto::v1::{QueueMember, QueuePartition};

    fn sample() -> QueueDescription {
        QueueDescription {
            name: "billing".into(),
            topic: "orders".into(),
            config: Some(QueueConfig {
                ack_deadline_ms: Some(30_000),
                max_deliveries: Some(0),
                backoff_initial_ms: Some(1_000),
                backoff_max_ms: Some(300_000),
                dead_letter_topic: Some("orders.dlq".into()),
                max_unacked_per_member: Some(1000),
                history_attempts: Some(10),
                history_retention_ms: Some(604_800_000),
            }),
            ready: 7,
            delayed: 1,
            unacked: 2,
            waiting: 3,
            oldest_unacked_age_ms: 12_345,
            members: vec![QueueMember {
                member_id: "member-1".into(),
                client_id: "tidelog-cli".into(),
                unacked: 2,
            }],
            partitions: vec![QueuePartition {
                topic: "orders".into(),
                partition: 0,
                settled_below: 5,
                end_offset: 17,
                ..QueuePartition::default()
            }],
            filter: r#"header.type == "order""#.into(),
            topic_pattern: String::new(),
            topics: Vec::new(),
        }
    }

    #[test]
    fn a_queue_renders_for_people() {
        let text = render_queue(&sample());
        assert!(text.starts_with("queue billing  topic orders  (1 member)\n"));
        assert!(text.contains("oldest unacked  12s\n"), "{text}");
        assert!(text.contains("max deliveries     unlimited\n"), "{text}");
        assert!(
            text.contains("backoff            1s..5m (doubling)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "PARTITION  SETTLED-BELOW  END  LAG\n        0              5   17   12\n"
            ),
            "{text}"
        );
        assert!(text.contains("member-1  tidelog-cli        2\n"), "{text}");
    }

    #[test]
    fn a_queue_renders_for_scripts() {
        let value = queue_json(&sample());
        assert_eq!(value["config"]["max_deliveries"], 0);
        assert_eq!(value["partitions"][0]["end_offset"], 17);
        assert_eq!(value["members"][0]["unacked"], 2);
        assert_eq!(value["partitions"][0]["damaged_at"], Value::Null);
    }

    #[test]
    fn a_partition_stopped_at_damage_is_named_with_what_to_do() {
        let mut queue = sample();
        queue.partitions[0].damaged_at = Some(9);
        queue.partitions[0].damaged_reason = "corrupt data in /d/0.log at byte 12: crc".into();
        let text = render_queue(&queue);
        assert!(
            text.contains("damaged: partition 0 of topic \"orders\": deliveries stop at offset 9, a damaged batch (corrupt data in /d/0.log at byte 12: crc)"),
            "{text}"
        );
        assert!(text.contains("`tidelog segment repair`"), "{text}");
        let value = queue_json(&queue);
        assert_eq!(value["partitions"][0]["damaged_at"], 9);
        assert_eq!(
            value["partitions"][0]["damaged_reason"],
            "corrupt data in /d/0.log at byte 12: crc"
        );
    }

    #[test]
    fn an_unavailable_partition_is_marked_never_shown_as_empty() {
        let mut queue = sample();
        queue.partitions[0].unavailable = true;
        queue.partitions[0].end_offset = 0;
        queue.partitions[0].unavailable_reason =
            "partition 0 of topic orders is unavailable: recovery refused to open it".into();
        let text = render_queue(&queue);
        assert!(
            text.contains(
                "PARTITION  SETTLED-BELOW  END  LAG\n        0              5    ?    ?\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("unavailable: partition 0 of topic \"orders\": partition 0 of topic orders is unavailable: recovery refused to open it; the queue neither counts nor delivers"),
            "{text}"
        );
        let value = queue_json(&queue);
        assert_eq!(value["partitions"][0]["end_offset"], Value::Null);
        assert_eq!(value["partitions"][0]["unavailable"], true);
        assert_eq!(
            value["partitions"][0]["unavailable_reason"],
            "partition 0 of topic orders is unavailable: recovery refused to open it"
        );
        let available = queue_json(&sample());
        assert_eq!(available["partitions"][0]["unavailable"], false);
        assert_eq!(
            available["partitions"][0]["unavailable_reason"],
            Value::Null
        );
    }

    #[test]
    fn a_pattern_queue_names_its_pattern_and_topics() {
        let mut queue = sample();
        queue.topic = String::new();
        queue.topic_pattern = r"orders\..*".into();
        queue.topics = vec!["orders.eu".into(), "orders.us".into()];
        let text = render_queue(&queue);
        assert!(
            text.starts_with(
                "queue billing  topic pattern orders\\..* (2 topics: orders.eu, orders.us)  (1 member)\n"
            ),
            "{text}"
        );
        assert!(text.contains("TOPIC"), "{text}");
        queue.topics.clear();
        assert!(render_queue(&queue).contains("no topic matches yet"));
        assert_eq!(queue_json(&queue)["topic_pattern"], r"orders\..*");
    }

    #[test]
    fn ages_are_rounded_for_tables() {
        assert_eq!(age(0, 0), "-");
        assert_eq!(age(850, 1), "850ms");
        assert_eq!(age(200_500, 1), "3m20s");
    }
}
