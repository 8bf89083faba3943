//! The broker speaks its API (RPC names, request fields, half-open offset ranges); an
//! operator at the command line should read the CLI's commands and flags. [`to_cli`]
//! rewrites a broker message with one table, [`TRANSLATIONS`], and writes its ranges in
//! the CLI's one notation ([`range`]).
//!
//! A test reads the broker's sources and fails if an RPC name appears there that the
//! table does not translate, so a new hint in the broker cannot reach an operator in
//! gRPC terms unnoticed.

/// API phrases and what the CLI says instead, longest (most specific) first: the
/// first matching phrase wins over a shorter one inside it.
pub const TRANSLATIONS: &[(&str, &str)] = &[
    // Whole hints, where the CLI has a better sentence than a word-by-word rewrite.
    (
        "check the name (Admin.ListTopics lists the topics) or create it with Admin.CreateTopic",
        "check the name (`tidelog topic list`) or create it with `tidelog topic create`",
    ),
    (
        "raise the topic's max_message_bytes (Admin.AlterTopicConfig, up to 16 MiB)",
        "raise the topic's limit (`tidelog topic alter TOPIC --max-message-bytes SIZE`, up to 16MiB)",
    ),
    (
        "move the group with Groups.ResetOffsets or subscribe with reset_policy EARLIEST or LATEST",
        "move the group's offsets with `tidelog group reset-offsets`, or let --offset-reset \
         earliest or latest move the position",
    ),
    (
        "rejoin the group (Subscribe) and commit with the new member id",
        "run the consumer again (it joins the group anew)",
    ),
    (
        "reconnect with the same member_id to keep the partitions",
        "run the consumer again once it is back",
    ),
    (
        "read from an offset in that range (the end is exclusive: reading at the end waits for \
         new messages)",
        "read from an offset in that range (--from; reading at the end with --follow waits for \
         new messages)",
    ),
    (
        "fix the request, retrying it unchanged will fail again",
        "fix the value (see --help)",
    ),
    ("(leave it unset for no limit)", "(`off` for no limit)"),
    (
        "name the topic whose deliveries to list (`topic`)",
        "name the topic whose deliveries to list (--topic)",
    ),
    (
        "the grammar is in the Filters section of the README and the .proto",
        "the grammar is in `tidelog consume --help` and the README (Filters)",
    ),
    (
        "read on from the offset after the damaged batch (a group: `tidelog group reset-offsets \
         --to-offset`)",
        "read on from the offset after the damaged batch (--from; a group: `tidelog group \
         reset-offsets --to-offset`)",
    ),
    // RPCs: the command that makes the call.
    ("Admin.CreateTopic", "`tidelog topic create`"),
    ("Admin.DeleteTopic", "`tidelog topic delete`"),
    ("Admin.ListTopics", "`tidelog topic list`"),
    ("Admin.DescribeTopic", "`tidelog topic describe`"),
    ("Admin.AlterTopicConfig", "`tidelog topic alter`"),
    (
        "Admin.CreatePartitions",
        "`tidelog topic alter --partitions`",
    ),
    ("Admin.DescribeBroker", "`tidelog broker describe`"),
    ("Publisher.PublishStream", "`tidelog produce`"),
    ("Publisher.Publish", "`tidelog produce`"),
    ("Consumer.Subscribe", "`tidelog consume`"),
    ("Consumer.Fetch", "`tidelog consume`"),
    ("Consumer.ListOffsets", "`tidelog consume --from`"),
    ("Groups.CommitOffsets", "a group commit"),
    ("Groups.FetchOffsets", "`tidelog group describe`"),
    ("Groups.ListGroups", "`tidelog group list`"),
    ("Groups.DescribeGroup", "`tidelog group describe`"),
    ("Groups.DeleteGroup", "`tidelog group delete`"),
    ("Groups.DeleteOffsets", "`tidelog group delete-offsets`"),
    (
        "Groups.ResetOffsets with execute",
        "`tidelog group reset-offsets --execute`",
    ),
    ("Groups.ResetOffsets", "`tidelog group reset-offsets`"),
    ("Queues.CreateQueue", "`tidelog queue create`"),
    ("Queues.AlterQueue", "`tidelog queue alter`"),
    ("Queues.DeleteQueue", "`tidelog queue delete`"),
    ("Queues.ListQueues", "`tidelog queue list`"),
    ("Queues.DescribeQueue", "`tidelog queue describe`"),
    ("Queues.PurgeQueue", "`tidelog queue purge`"),
    ("Queues.RedriveQueue", "`tidelog queue redrive`"),
    ("Queues.Consume", "`tidelog queue consume`"),
    ("Queues.Receive", "`tidelog queue consume`"),
    ("Queues.Settle", "`tidelog queue consume`"),
    ("Queues.ListDeliveries", "`tidelog queue deliveries`"),
    ("Messages.GetMessage", "`tidelog message get`"),
    ("Messages.GetDeliveryStatus", "`tidelog message status`"),
    ("Messages.GetDeliveryHistory", "`tidelog message history`"),
    // Request fields: the flag that sets them.
    ("filter at byte", "--filter at byte"),
    ("reset_policy is ERROR", "--offset-reset is error"),
    (
        "reset_policy EARLIEST or LATEST",
        "--offset-reset earliest or latest",
    ),
    ("reset_policy", "--offset-reset"),
    ("max_message_bytes", "--max-message-bytes"),
    ("retention_bytes", "--retention-bytes"),
    ("history_retention_ms", "--history-retention (ms)"),
    ("history_attempts", "--history-attempts"),
    // Queue settings, and ListDeliveries' refusals of a cursor (the message begins
    // with the field).
    ("cursor is not one", "--cursor is not one"),
    ("cursor was returned", "--cursor was returned"),
    ("ack_deadline_ms", "--ack-deadline (ms)"),
    ("max_deliveries", "--max-deliveries"),
    ("backoff_initial_ms", "--backoff-initial (ms)"),
    ("backoff_max_ms", "--backoff-max (ms)"),
    ("dead_letter_topic", "--dead-letter-topic"),
    ("max_unacked_per_member", "--max-unacked"),
    ("retention_ms", "--retention"),
    ("default_ttl_ms", "--ttl"),
    ("segment_bytes", "--segment-bytes"),
    ("segment_ms", "--segment-age"),
    ("priority_levels", "--priority-levels"),
    ("dedup_window_ms", "--dedup-window (ms)"),
    ("queue_max_ready_messages", "--queue-max-ready"),
    ("queue_max_ready_bytes", "--queue-max-ready-bytes"),
    ("end_offset", "end"),
    (
        "pass next_cursor exactly as it came, or start again without a cursor",
        "pass the --cursor a page printed exactly as it came, or leave --cursor out",
    ),
    ("start again without a cursor", "leave --cursor out"),
    (
        "exactly one of `id` and `position`",
        "ID, or --partition and --offset",
    ),
    ("exactly one of `queue` and `group`", "--queue or --group"),
];

/// The broker's message in the CLI's terms: every phrase of [`TRANSLATIONS`]
/// replaced, every range in the one notation of [`range`].
pub fn to_cli(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 32);
    let mut rest = message;
    'scan: while !rest.is_empty() {
        for (api, cli) in TRANSLATIONS {
            if let Some(after) = rest.strip_prefix(api) {
                out.push_str(cli);
                rest = after;
                continue 'scan;
            }
        }
        if let Some((text, after)) = broker_range(rest) {
            out.push_str(&text);
            rest = after;
            continue;
        }
        let mut chars = rest.chars();
        let c = chars.next().unwrap_or_default();
        // A number's digits go out together, so "10..20" is never seen from its "0".
        if c.is_ascii_digit() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            out.push_str(&rest[..digits]);
            rest = &rest[digits..];
        } else {
            out.push(c);
            rest = chars.as_str();
        }
    }
    out
}

/// The CLI's one notation for a range of numbers (offsets, partitions, lines), both
/// ends included: `97-127`, `5` for one, `none` for an empty range (`first >
/// last`). It is the notation `--topic TOPIC:0-3` takes.
pub fn range(first: u64, last: u64) -> String {
    match first.cmp(&last) {
        std::cmp::Ordering::Less => format!("{first}-{last}"),
        std::cmp::Ordering::Equal => first.to_string(),
        std::cmp::Ordering::Greater => "none".into(),
    }
}

/// A half-open range `[start, end)` (a partition's log start and end offset) in the
/// notation of [`range`]: `none` when empty.
pub fn half_open(start: u64, end: u64) -> String {
    if end <= start {
        return "none".into();
    }
    range(start, end - 1)
}

/// A range at the start of `text` as the broker writes it: `A..=B` (inclusive) or
/// `A..B` (end exclusive, with an optional "(start inclusive, end exclusive)" after
/// it). Returns it in the CLI's notation and the text after it.
fn broker_range(text: &str) -> Option<(String, &str)> {
    let number = |s: &str| -> Option<(u64, usize)> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        Some((s[..digits].parse().ok()?, digits))
    };
    let (first, used) = number(text)?;
    let after_first = &text[used..];
    let (inclusive, after_dots) = match after_first.strip_prefix("..=") {
        Some(after) => (true, after),
        None => (false, after_first.strip_prefix("..")?),
    };
    let (second, used) = number(after_dots)?;
    let mut after = &after_dots[used..];
    if inclusive {
        return Some((range(first, second), after));
    }
    for note in [" (start inclusive, end exclusive)", " (end exclusive)"] {
        if let Some(rest) = after.strip_prefix(note) {
            after = rest;
        }
    }
    if second <= first {
        return Some((format!("none, empty at {second}"), after));
    }
    Some((half_open(first, second), after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_translation_applies_and_leaves_no_api_term() {
        for (api, cli) in TRANSLATIONS {
            let translated = to_cli(&format!("before {api} after"));
            assert_eq!(translated, format!("before {cli} after"), "{api}");
            for term in [
                "Admin.",
                "Groups.",
                "Consumer.",
                "Publisher.",
                "Messages.",
                "reset_policy",
            ] {
                assert!(!translated.contains(term), "{api} -> {translated}");
            }
        }
    }

    #[test]
    fn the_issues_hints_read_in_cli_terms() {
        assert_eq!(
            to_cli(
                "topic \"x\" not found; check the name (Admin.ListTopics lists the topics) or \
                 create it with Admin.CreateTopic"
            ),
            "topic \"x\" not found; check the name (`tidelog topic list`) or create it with \
             `tidelog topic create`"
        );
        assert_eq!(
            to_cli(
                "offset 5 of ret/0 is below the log start and reset_policy is ERROR; move the \
                 group with Groups.ResetOffsets or subscribe with reset_policy EARLIEST or LATEST"
            ),
            "offset 5 of ret/0 is below the log start and --offset-reset is error; move the \
             group's offsets with `tidelog group reset-offsets`, or let --offset-reset earliest \
             or latest move the position"
        );
        assert_eq!(
            to_cli("start must be absent; move them with Groups.ResetOffsets"),
            "start must be absent; move them with `tidelog group reset-offsets`"
        );
        // Queues.ListDeliveries on a pattern queue (server/src/queues/service.rs).
        assert_eq!(
            to_cli(
                "queue \"all\" is on topic pattern \"o.*\": name the topic whose deliveries \
                 to list (`topic`)"
            ),
            "queue \"all\" is on topic pattern \"o.*\": name the topic whose deliveries to \
             list (--topic)"
        );
    }

    #[test]
    fn ranges_have_one_notation() {
        assert_eq!(range(97, 127), "97-127");
        assert_eq!(range(5, 5), "5");
        assert_eq!(range(6, 5), "none");
        assert_eq!(half_open(3000, 3010), "3000-3009");
        assert_eq!(half_open(3000, 3000), "none");
        assert_eq!(
            to_cli("the log holds offsets 7..7 (start inclusive, end exclusive)"),
            "the log holds offsets none, empty at 7"
        );
        assert_eq!(
            to_cli(
                "offset 5 is out of range for ret/0: the log holds offsets 3000..3010 (start \
                 inclusive, end exclusive); read"
            ),
            "offset 5 is out of range for ret/0: the log holds offsets 3000-3009; read"
        );
        assert_eq!(
            to_cli("CRC mismatch in the batch holding offsets 97..=127"),
            "CRC mismatch in the batch holding offsets 97-127"
        );
        assert_eq!(
            to_cli("topic \"t\" has partitions 0..3, not 5"),
            "topic \"t\" has partitions 0-2, not 5"
        );
        assert_eq!(
            to_cli("segment_bytes 10 is outside 4096..=1073741824"),
            "--segment-bytes 10 is outside 4096-1073741824"
        );
        // Not ranges: left alone.
        assert_eq!(to_cli("1.5 GiB, v1..x, 10.."), "1.5 GiB, v1..x, 10..");
    }

    /// Every RPC name the broker (or the storage engine under it) writes in its sources
    /// has a translation: a new hint naming an RPC fails here until the table has it.
    #[test]
    fn every_rpc_the_broker_names_is_translated() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names = std::collections::BTreeSet::new();
        let mut dirs = vec![root.join("server/src"), root.join("storage/src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text.lines() {
                    // Messages are in string literals: skip comments.
                    if line.trim_start().starts_with("//") {
                        continue;
                    }
                    for service in [
                        "Admin.",
                        "Publisher.",
                        "Consumer.",
                        "Groups.",
                        "Queues.",
                        "Messages.",
                    ] {
                        let mut rest = line;
                        while let Some(at) = rest.find(service) {
                            let after = &rest[at + service.len()..];
                            let method: String = after
                                .chars()
                                .take_while(char::is_ascii_alphanumeric)
                                .collect();
                            if method.starts_with(|c: char| c.is_ascii_uppercase()) {
                                names.insert(format!("{service}{method}"));
                            }
                            rest = after;
                        }
                    }
                }
            }
        }
        assert!(names.contains("Admin.CreateTopic"), "{names:?}");
        for name in names {
            assert!(
                !to_cli(&name).contains(&name),
                "the broker names {name} in a message, and terms.rs does not translate it"
            );
        }
    }
}
