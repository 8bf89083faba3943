//! `tidelog topic`: create, list, describe, alter, delete.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tidelog_proto::v1::{
    AlterTopicConfigRequest, Compression, CreatePartitionsRequest, CreateTopicRequest,
    DeleteTopicRequest, DescribeTopicRequest, FsyncPolicy, ListTopicsRequest, QueueOverflow,
    TopicConfig, TopicConfigUpdate, TopicDescription, fsync_policy,
};
use tidelog_storage::duration::format_duration_ms;

use crate::args::{CompressionArg, Fsync, Limit, TopicCommand, TopicConfigArgs};
use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, Table, note, render_pairs};
use crate::units::format_bytes;

pub async fn run(broker: &Broker, command: TopicCommand, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    match command {
        TopicCommand::Create(args) => {
            let context = format!("creating topic {:?}", args.name);
            let request = CreateTopicRequest {
                name: args.name.clone(),
                partitions: args.partitions,
                config: Some(create_config(&args.config)),
            };
            // Each partition is a directory and files fsynced by the broker: a thousand
            // take seconds, and a terminal should show that something is going on.
            let progress = spinner(&format!(
                "creating topic {} with {} partition{}",
                args.name,
                args.partitions,
                plural(args.partitions as usize)
            ));
            let created = broker.admin().create_topic(request).await;
            progress.finish_and_clear();
            let topic = match created {
                Err(status)
                    if args.if_not_exists && status.code() == tonic::Code::AlreadyExists =>
                {
                    note(&format!(
                        "topic {} exists already; left as it is (--if-not-exists)",
                        args.name
                    ));
                    if json {
                        let topic = describe(broker, &args.name).await?;
                        let topic = topic.ok_or_else(|| missing(&context))?;
                        out.json_pretty(&json!({"created": false, "topic": topic_json(&topic)}))?;
                    }
                    return out.flush();
                }
                created => created
                    .map_err(|s| broker.error(&context, &s))?
                    .into_inner()
                    .topic
                    .ok_or_else(|| missing(&context))?,
            };
            if json {
                out.json_pretty(&topic_json(&topic))?;
            } else {
                out.line(&format!(
                    "created topic {} with {} partition{}",
                    topic.name,
                    topic.partitions.len(),
                    plural(topic.partitions.len())
                ))?;
                out.text(&render_config(topic.config.as_ref()))?;
            }
        }
        TopicCommand::List(args) => {
            let topics = broker
                .admin()
                .list_topics(ListTopicsRequest {
                    include_internal: args.internal,
                })
                .await
                .map_err(|s| broker.error("listing topics", &s))?
                .into_inner()
                .topics;
            if json {
                let list: Vec<Value> = topics
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "topic_id": shown_id(t.topic_id),
                            "partitions": t.partitions,
                            "size_bytes": t.size_bytes,
                            "unavailable_partitions": t.unavailable_partitions,
                        })
                    })
                    .collect();
                out.json_pretty(&json!({ "topics": list }))?;
            } else if topics.is_empty() {
                out.line("no topics (create one with `tidelog topic create NAME`)")?;
            } else {
                let mut table = Table::new(&["TOPIC", ">PARTITIONS", ">SIZE"]);
                for t in &topics {
                    // An unavailable partition's size is unknown: the size is of the
                    // others, and says so.
                    let size = match t.unavailable_partitions {
                        0 => format_bytes(t.size_bytes),
                        n => format!(
                            "{} + {n} unavailable partition{}",
                            format_bytes(t.size_bytes),
                            plural(n as usize)
                        ),
                    };
                    table.row(vec![t.name.clone(), t.partitions.to_string(), size]);
                }
                out.text(&table.render())?;
            }
        }
        TopicCommand::Describe(args) => {
            let context = format!("describing topic {:?}", args.name);
            let topic = describe(broker, &args.name).await?;
            let topic = topic.ok_or_else(|| missing(&context))?;
            print_description(&mut out, &topic, json)?;
        }
        TopicCommand::Alter(args) => {
            let context = format!("altering topic {:?}", args.name);
            let update = alter_update(&args.config);
            let mut grown_from = None;
            if let Some(count) = args.partitions {
                let before = describe(broker, &args.name)
                    .await?
                    .map_or(0, |t| t.partitions.len());
                let progress = spinner(&format!(
                    "raising topic {} to {count} partitions",
                    args.name
                ));
                let grown = broker
                    .admin()
                    .create_partitions(CreatePartitionsRequest {
                        name: args.name.clone(),
                        partitions: count,
                    })
                    .await;
                progress.finish_and_clear();
                grown.map_err(|s| broker.error(&context, &s))?;
                grown_from = Some(before);
                // Said on stderr whatever the output format: it changes where data goes.
                note(&keys_move_warning(&args.name, before, count as usize));
            }
            let topic = if update == TopicConfigUpdate::default() {
                describe(broker, &args.name).await?
            } else {
                broker
                    .admin()
                    .alter_topic_config(AlterTopicConfigRequest {
                        name: args.name.clone(),
                        update: Some(update),
                    })
                    .await
                    .map_err(|s| broker.error(&context, &s))?
                    .into_inner()
                    .topic
            }
            .ok_or_else(|| missing(&context))?;
            if json {
                out.json_pretty(&topic_json(&topic))?;
            } else {
                out.line(&format!("altered topic {}", topic.name))?;
                let mut pairs = config_pairs(topic.config.as_ref());
                if let Some(before) = grown_from {
                    let grown = format!("{before} -> {}", topic.partitions.len());
                    pairs.insert(0, ("partitions", grown));
                }
                out.text(&render_pairs(&pairs))?;
            }
        }
        TopicCommand::Delete(args) => {
            let context = format!("deleting topic {:?}", args.name);
            let deleted = broker
                .admin()
                .delete_topic(DeleteTopicRequest {
                    name: args.name.clone(),
                })
                .await;
            match deleted {
                Err(status) if args.if_exists && status.code() == tonic::Code::NotFound => {
                    note(&format!(
                        "no topic {}; nothing deleted (--if-exists)",
                        args.name
                    ));
                    if json {
                        out.json_pretty(&json!({"deleted": Value::Null}))?;
                    }
                }
                deleted => {
                    deleted.map_err(|s| broker.error(&context, &s))?;
                    if json {
                        out.json_pretty(&json!({"deleted": args.name}))?;
                    } else {
                        out.line(&format!("deleted topic {}", args.name))?;
                    }
                }
            }
        }
    }
    out.flush()
}

/// Describes a topic; `Ok(None)` only if the broker answered without one.
pub async fn describe(broker: &Broker, name: &str) -> CliResult<Option<TopicDescription>> {
    let context = format!("describing topic {name:?}");
    Ok(broker
        .admin()
        .describe_topic(DescribeTopicRequest {
            name: name.to_string(),
        })
        .await
        .map_err(|s| broker.error(&context, &s))?
        .into_inner()
        .topic)
}

/// The warning after a partition count was raised: keyed messages go elsewhere now.
pub fn keys_move_warning(topic: &str, before: usize, after: usize) -> String {
    format!(
        "WARNING: topic {topic} went from {before} to {after} partitions: KEYS NOW MAP TO \
         DIFFERENT PARTITIONS (hash(key) % {after}, not % {before}). A key's messages published \
         from now on may go to another partition than its earlier ones, so per-key order holds \
         only among messages published before, and among those published after; consumer \
         groups rebalance to read the new partitions"
    )
}

/// A spinner with the elapsed time on stderr while a long call runs; hidden unless
/// stderr is a terminal.
pub fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(SPINNER_TICK);
    bar
}

/// How often a spinner redraws.
const SPINNER_TICK: std::time::Duration = std::time::Duration::from_millis(100);

fn missing(context: &str) -> CliError {
    CliError::failure(
        format!("{context} failed: the broker's answer has no topic"),
        "check that tidelogd and tidelog are the same version",
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn fsync_proto(policy: Fsync) -> FsyncPolicy {
    FsyncPolicy {
        policy: Some(match policy {
            Fsync::Always => fsync_policy::Policy::Always(fsync_policy::Always {}),
            Fsync::IntervalMs(ms) => fsync_policy::Policy::IntervalMs(ms),
            Fsync::Never => fsync_policy::Policy::Never(fsync_policy::Never {}),
        }),
    }
}

fn compression_proto(compression: CompressionArg) -> Compression {
    match compression {
        CompressionArg::None => Compression::None,
        CompressionArg::Zstd => Compression::Zstd,
    }
}

/// The config of a create request: `off` and absent both mean "no limit".
pub fn create_config(args: &TopicConfigArgs) -> TopicConfig {
    let limit = |l: Option<Limit>| match l {
        Some(Limit::Value(v)) => Some(v),
        Some(Limit::Off) | None => None,
    };
    TopicConfig {
        retention_ms: limit(args.retention),
        retention_bytes: limit(args.retention_bytes),
        default_ttl_ms: limit(args.ttl),
        segment_bytes: args.segment_bytes.unwrap_or(0),
        segment_ms: limit(args.segment_age),
        fsync: args.fsync.map(fsync_proto),
        max_message_bytes: args.max_message_bytes.unwrap_or(0),
        compression: args
            .compression
            .map_or(Compression::Unspecified, compression_proto) as i32,
        priority_levels: args.priority_levels.unwrap_or(0),
        queue_max_ready_messages: limit(args.queue_max_ready),
        queue_max_ready_bytes: limit(args.queue_max_ready_bytes),
        queue_overflow: args.queue_overflow.as_deref().map_or(0, queue_overflow),
        // Absent = the broker's default (2 minutes); off = 0.
        dedup_window_ms: args.dedup_window.map(|l| match l {
            Limit::Value(v) => v,
            Limit::Off => 0,
        }),
        assign_ids: args.assign_ids.unwrap_or(false),
    }
}

/// `--queue-overflow`'s value as the API's enum.
fn queue_overflow(name: &str) -> i32 {
    match name {
        "dead-letter-oldest" => QueueOverflow::DeadLetterOldest as i32,
        _ => QueueOverflow::Reject as i32,
    }
}

/// The update of an alter request: `off` is 0, which switches a limit off.
pub fn alter_update(args: &TopicConfigArgs) -> TopicConfigUpdate {
    let limit = |l: Option<Limit>| {
        l.map(|l| match l {
            Limit::Value(v) => v,
            Limit::Off => 0,
        })
    };
    TopicConfigUpdate {
        retention_ms: limit(args.retention),
        retention_bytes: limit(args.retention_bytes),
        default_ttl_ms: limit(args.ttl),
        segment_bytes: args.segment_bytes,
        segment_ms: limit(args.segment_age),
        fsync: args.fsync.map(fsync_proto),
        max_message_bytes: args.max_message_bytes,
        compression: args.compression.map(|c| compression_proto(c) as i32),
        priority_levels: args.priority_levels,
        queue_max_ready_messages: limit(args.queue_max_ready),
        queue_max_ready_bytes: limit(args.queue_max_ready_bytes),
        queue_overflow: args.queue_overflow.as_deref().map(queue_overflow),
        dedup_window_ms: limit(args.dedup_window),
        assign_ids: args.assign_ids,
    }
}

/// `always`, `interval:10ms`, `never` (as `--fsync` takes it).
pub fn fsync_name(policy: Option<&FsyncPolicy>) -> String {
    match policy.and_then(|p| p.policy) {
        Some(fsync_policy::Policy::Always(_)) | None => "always".into(),
        Some(fsync_policy::Policy::IntervalMs(ms)) => {
            format!("interval:{}", format_duration_ms(ms))
        }
        Some(fsync_policy::Policy::Never(_)) => "never".into(),
    }
}

fn compression_name(code: i32) -> &'static str {
    match Compression::try_from(code) {
        Ok(Compression::Zstd) => "zstd",
        Ok(Compression::None | Compression::Unspecified) => "none",
        Err(_) => "unknown",
    }
}

/// `reject` or `dead-letter-oldest` (as `--queue-overflow` takes it).
fn queue_overflow_name(code: i32) -> &'static str {
    match QueueOverflow::try_from(code) {
        Ok(QueueOverflow::DeadLetterOldest) => "dead-letter-oldest",
        Ok(QueueOverflow::Reject | QueueOverflow::Unspecified) => "reject",
        Err(_) => "unknown",
    }
}

fn config_json(config: Option<&TopicConfig>) -> Value {
    let c = config.copied().unwrap_or_default();
    json!({
        "retention_ms": c.retention_ms,
        "retention_bytes": c.retention_bytes,
        "default_ttl_ms": c.default_ttl_ms,
        "segment_bytes": c.segment_bytes,
        "segment_ms": c.segment_ms,
        "fsync": fsync_name(c.fsync.as_ref()),
        "max_message_bytes": c.max_message_bytes,
        "compression": compression_name(c.compression),
        "priority_levels": c.priority_levels.max(1),
        // null = no limit (absent and 0 both mean that).
        "queue_max_ready_messages": c.queue_max_ready_messages.filter(|&n| n > 0),
        "queue_max_ready_bytes": c.queue_max_ready_bytes.filter(|&n| n > 0),
        "queue_overflow": queue_overflow_name(c.queue_overflow),
        "dedup_window_ms": c.dedup_window_ms.filter(|&w| w > 0),
        "assign_ids": c.assign_ids,
    })
}

pub fn topic_json(topic: &TopicDescription) -> Value {
    let partitions: Vec<Value> = topic
        .partitions
        .iter()
        .map(|p| {
            // An unavailable partition's offsets and size are unknown: null, not 0.
            let known = |n: u64| (!p.unavailable).then_some(n);
            json!({
                "partition": p.partition,
                "log_start_offset": known(p.log_start_offset),
                "end_offset": known(p.end_offset),
                "written_offset": known(p.written_offset),
                "size_bytes": known(p.size_bytes),
                "segment_count": known(u64::from(p.segment_count)),
                "poisoned": p.poisoned,
                "poison_reason": (!p.poison_reason.is_empty()).then_some(&p.poison_reason),
                "unavailable": p.unavailable,
                "unavailable_reason": (!p.unavailable_reason.is_empty()).then_some(&p.unavailable_reason),
            })
        })
        .collect();
    json!({
        "name": topic.name,
        "topic_id": shown_id(topic.topic_id),
        "owner": (!topic.owner.is_empty()).then_some(&topic.owner),
        "config": config_json(topic.config.as_ref()),
        "partitions": partitions,
    })
}

/// The configuration as aligned `key  value` lines.
pub fn render_config(config: Option<&TopicConfig>) -> String {
    render_pairs(&config_pairs(config))
}

/// The configuration's `key  value` pairs, keyed by the flags that set them.
fn config_pairs(config: Option<&TopicConfig>) -> Vec<(&'static str, String)> {
    let c = config.copied().unwrap_or_default();
    let or = |value: Option<u64>, format: fn(u64) -> String, off: &str| {
        value.map_or_else(|| off.to_string(), format)
    };
    vec![
        (
            "retention",
            or(c.retention_ms, format_duration_ms, "forever"),
        ),
        (
            "retention-bytes",
            or(c.retention_bytes, format_bytes, "unlimited"),
        ),
        ("ttl", or(c.default_ttl_ms, format_duration_ms, "none")),
        ("segment-bytes", format_bytes(c.segment_bytes)),
        (
            "segment-age",
            or(c.segment_ms, format_duration_ms, "none (roll by size)"),
        ),
        ("fsync", fsync_name(c.fsync.as_ref())),
        ("max-message-bytes", format_bytes(c.max_message_bytes)),
        ("compression", compression_name(c.compression).to_string()),
        ("priority-levels", c.priority_levels.max(1).to_string()),
        (
            "queue-max-ready",
            or(
                c.queue_max_ready_messages.filter(|&n| n > 0),
                |n| n.to_string(),
                "unlimited",
            ),
        ),
        (
            "queue-max-ready-bytes",
            or(
                c.queue_max_ready_bytes.filter(|&n| n > 0),
                format_bytes,
                "unlimited",
            ),
        ),
        (
            "queue-overflow",
            queue_overflow_name(c.queue_overflow).to_string(),
        ),
        (
            "dedup-window",
            or(
                c.dedup_window_ms.filter(|&w| w > 0),
                format_duration_ms,
                "off",
            ),
        ),
        ("assign-ids", c.assign_ids.to_string()),
    ]
}

/// A topic id from the wire as tidelog writes it (16 hex digits, as in its `topic.id`
/// file); `None` for 0 (a broker that predates topic ids).
fn shown_id(id: u64) -> Option<String> {
    tidelog_storage::TopicId::from_wire(id).map(|id| id.to_string())
}

fn print_description(out: &mut Stdout, topic: &TopicDescription, json: bool) -> CliResult<()> {
    if json {
        return out.json_pretty(&topic_json(topic));
    }
    out.line(&format!(
        "topic {}  ({} partition{}{}{})",
        topic.name,
        topic.partitions.len(),
        plural(topic.partitions.len()),
        shown_id(topic.topic_id).map_or(String::new(), |id| format!(", id {id}")),
        if topic.owner.is_empty() {
            String::new()
        } else {
            format!(", created by {}", topic.owner)
        }
    ))?;
    out.text(&render_config(topic.config.as_ref()))?;
    out.line("")?;
    let mut table = Table::new(&[
        ">PARTITION",
        ">LOG-START",
        ">END",
        ">UNSYNCED",
        ">MESSAGES",
        ">SIZE",
        ">SEGMENTS",
        "STATUS",
    ]);
    for p in &topic.partitions {
        if p.unavailable {
            // Its offsets and size are unknown until it is repaired.
            let unknown = || "?".to_string();
            table.row(vec![
                p.partition.to_string(),
                unknown(),
                unknown(),
                unknown(),
                unknown(),
                unknown(),
                unknown(),
                format!("unavailable: {}", p.unavailable_reason),
            ]);
            continue;
        }
        let status = if p.poisoned {
            format!("POISONED: {}", p.poison_reason)
        } else {
            "ok".into()
        };
        table.row(vec![
            p.partition.to_string(),
            p.log_start_offset.to_string(),
            p.end_offset.to_string(),
            p.written_offset.saturating_sub(p.end_offset).to_string(),
            p.end_offset.saturating_sub(p.log_start_offset).to_string(),
            format_bytes(p.size_bytes),
            p.segment_count.to_string(),
            status,
        ]);
    }
    out.text(&table.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_leaves_off_limits_absent_and_alter_sends_zero() {
        let args = TopicConfigArgs {
            retention: Some(Limit::Off),
            retention_bytes: Some(Limit::Value(10 << 30)),
            ttl: None,
            segment_bytes: Some(256 << 20),
            segment_age: None,
            fsync: Some(Fsync::IntervalMs(10)),
            max_message_bytes: None,
            compression: Some(CompressionArg::Zstd),
            priority_levels: Some(3),
            queue_max_ready: Some(Limit::Value(5_000)),
            queue_max_ready_bytes: Some(Limit::Off),
            queue_overflow: Some("dead-letter-oldest".into()),
            dedup_window: Some(Limit::Off),
            assign_ids: Some(true),
        };
        let create = create_config(&args);
        assert_eq!(
            create.dedup_window_ms,
            Some(0),
            "off is sent as 0, not as the default"
        );
        assert!(create.assign_ids);
        assert_eq!(
            create_config(&TopicConfigArgs::default()).dedup_window_ms,
            None
        );
        assert_eq!(create.priority_levels, 3);
        assert_eq!(create.queue_max_ready_messages, Some(5_000));
        assert_eq!(create.queue_max_ready_bytes, None);
        assert_eq!(
            create.queue_overflow,
            QueueOverflow::DeadLetterOldest as i32
        );
        assert_eq!(create.retention_ms, None);
        assert_eq!(create.retention_bytes, Some(10 << 30));
        assert_eq!(create.segment_bytes, 256 << 20);
        assert_eq!(create.max_message_bytes, 0);
        assert_eq!(create.compression, Compression::Zstd as i32);
        assert_eq!(fsync_name(create.fsync.as_ref()), "interval:10ms");

        let update = alter_update(&args);
        assert_eq!(update.retention_ms, Some(0));
        assert_eq!(update.default_ttl_ms, None);
        assert_eq!(update.max_message_bytes, None);
        assert_eq!(update.compression, Some(Compression::Zstd as i32));
        assert_eq!(update.dedup_window_ms, Some(0));
        assert_eq!(update.assign_ids, Some(true));
    }

    #[test]
    fn config_renders_in_human_units() {
        let config = TopicConfig {
            retention_ms: Some(7 * 86_400_000),
            retention_bytes: None,
            default_ttl_ms: Some(300_000),
            segment_bytes: 256 << 20,
            segment_ms: None,
            fsync: None,
            max_message_bytes: 1 << 20,
            compression: Compression::None as i32,
            priority_levels: 0,
            ..TopicConfig::default()
        };
        let text = render_config(Some(&config));
        assert!(text.contains("retention              7d\n"), "{text}");
        assert!(
            text.contains("retention-bytes        unlimited\n"),
            "{text}"
        );
        assert!(text.contains("ttl                    5m\n"), "{text}");
        assert!(text.contains("segment-bytes          256 MiB\n"), "{text}");
        assert!(text.contains("fsync                  always\n"), "{text}");
    }
}
