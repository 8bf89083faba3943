//! Small text formats of the group commands: the `--topic T[:P,P..]` scope of
//! `reset-offsets` and the `topic,partition,offset` CSV that `--export` writes and
//! `--from-file` reads (Kafka's format).

use std::fmt::Write as _;

use tidelog_storage::TopicId;

/// Most partitions one spec may expand to (a topic has at most 10,000).
const SPEC_PARTITIONS_MAX: usize = 10_000;

/// One `--topic` argument: a topic and, optionally, some of its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub topic: String,
    /// Sorted and without duplicates; empty = every partition of the topic.
    pub partitions: Vec<u32>,
}

/// Parses `topic`, `topic:0,2,5` or `topic:0-3,7` (ranges are inclusive).
pub fn parse_topic_spec(text: &str) -> Result<TopicSpec, String> {
    let (topic, list) = match text.split_once(':') {
        Some((topic, list)) => (topic, Some(list)),
        None => (text, None),
    };
    if topic.is_empty() {
        return Err(format!(
            "{text:?} has no topic name (use TOPIC or TOPIC:0,1,2)"
        ));
    }
    let mut partitions = Vec::new();
    if let Some(list) = list {
        if list.trim().is_empty() {
            return Err(format!(
                "{text:?} has a ':' but no partitions (use TOPIC:0,1,2 or TOPIC:0-3)"
            ));
        }
        for item in list.split(',') {
            let item = item.trim();
            let number = |s: &str| {
                s.trim().parse::<u32>().map_err(|_| {
                    format!(
                        "{s:?} in {text:?} is not a partition number (use TOPIC:0,1,2 or TOPIC:0-3)"
                    )
                })
            };
            match item.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (number(low)?, number(high)?);
                    if low > high {
                        return Err(format!("partition range {item:?} runs backwards"));
                    }
                    if (high - low) as usize >= SPEC_PARTITIONS_MAX {
                        return Err(format!("partition range {item:?} is too large"));
                    }
                    partitions.extend(low..=high);
                }
                None => partitions.push(number(item)?),
            }
            if partitions.len() > SPEC_PARTITIONS_MAX {
                return Err(format!("{text:?} names too many partitions"));
            }
        }
        partitions.sort_unstable();
        partitions.dedup();
    }
    Ok(TopicSpec {
        topic: topic.to_string(),
        partitions,
    })
}

/// One line of an offsets CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRow {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// The id of the topic the offset was read in (`--export` writes it); `None`:
    /// not checked when the offset is committed (files of Kafka's form, and those
    /// exported before topics had ids).
    pub topic_id: Option<TopicId>,
}

/// The header line of the form `--export` writes, whose fourth column is the topic's
/// id.
const HEADER_WITH_IDS: [&str; 4] = ["topic", "partition", "offset", "topic_id"];

/// Writes the header `topic,partition,offset,topic_id`, then a line per row: Kafka's
/// `topic,partition,offset` and the topic's id (16 lowercase hex digits, empty when
/// unknown), so a restore refuses a topic deleted and created again since.
pub fn write_offsets_csv(rows: &[OffsetRow]) -> String {
    let mut out = HEADER_WITH_IDS.join(",");
    out.push('\n');
    for row in rows {
        let id = row.topic_id.map(|id| id.to_string()).unwrap_or_default();
        let _ = writeln!(out, "{},{},{},{id}", row.topic, row.partition, row.offset);
    }
    out
}

/// Reads an offsets CSV: `topic,partition,offset` per line, or Kafka's multi-group
/// form `group,topic,partition,offset`, in which case only `group`'s lines are kept.
/// After the header `topic,partition,offset,topic_id` (as `--export` writes it), a
/// fourth column is the topic's id instead (empty: not checked). Blank lines, `#`
/// comments and the other header lines are skipped. A (topic, partition) may appear
/// only once.
pub fn parse_offsets_csv(text: &str, group: &str) -> Result<Vec<OffsetRow>, String> {
    let mut rows: Vec<OffsetRow> = Vec::new();
    let mut with_ids = false;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        match fields.as_slice() {
            ["topic", "partition", "offset", "topic_id"] => {
                with_ids = true;
                continue;
            }
            ["topic", "partition", "offset"] | ["group", "topic", "partition", "offset"] => {
                with_ids = false;
                continue;
            }
            _ => {}
        }
        let (topic, partition, offset, id) = match fields.as_slice() {
            [topic, partition, offset] => (*topic, *partition, *offset, ""),
            [topic, partition, offset, id] if with_ids => (*topic, *partition, *offset, *id),
            [row_group, topic, partition, offset] => {
                if offset.parse::<u64>().is_err()
                    && TopicId::parse_file(offset.as_bytes()).is_some()
                {
                    return Err(format!(
                        "line {line_number}: {offset:?} is a topic id, but no header line \
                         {} comes before it (without it, four columns are Kafka's \
                         group,topic,partition,offset)",
                        HEADER_WITH_IDS.join(",")
                    ));
                }
                if *row_group != group {
                    continue;
                }
                (*topic, *partition, *offset, "")
            }
            _ => {
                return Err(format!(
                    "line {line_number}: expected topic,partition,offset{} but found {} fields",
                    if with_ids { ",topic_id" } else { "" },
                    fields.len()
                ));
            }
        };
        if topic.is_empty() {
            return Err(format!("line {line_number}: the topic is empty"));
        }
        let partition: u32 = partition
            .parse()
            .map_err(|_| format!("line {line_number}: {partition:?} is not a partition number"))?;
        let offset: u64 = offset
            .parse()
            .map_err(|_| format!("line {line_number}: {offset:?} is not an offset"))?;
        let topic_id = match id {
            "" => None,
            id => Some(TopicId::parse_file(id.as_bytes()).ok_or_else(|| {
                format!(
                    "line {line_number}: {id:?} is not a topic id (16 lowercase hex digits, \
                     as --export writes it and `tidelog topic describe` shows it)"
                )
            })?),
        };
        if rows
            .iter()
            .any(|r| r.topic == topic && r.partition == partition)
        {
            return Err(format!(
                "line {line_number}: {topic} partition {partition} appears twice"
            ));
        }
        rows.push(OffsetRow {
            topic: topic.to_string(),
            partition,
            offset,
            topic_id,
        });
    }
    if rows.is_empty() {
        return Err("the file holds no topic,partition,offset lines".into());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(topic: &str, partitions: &[u32]) -> TopicSpec {
        TopicSpec {
            topic: topic.into(),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn topic_specs_parse_lists_and_ranges() {
        assert_eq!(parse_topic_spec("orders"), Ok(spec("orders", &[])));
        assert_eq!(parse_topic_spec("orders:2"), Ok(spec("orders", &[2])));
        assert_eq!(
            parse_topic_spec("orders:5,0,2"),
            Ok(spec("orders", &[0, 2, 5]))
        );
        assert_eq!(
            parse_topic_spec("orders:0-3,7"),
            Ok(spec("orders", &[0, 1, 2, 3, 7]))
        );
        assert_eq!(parse_topic_spec("a.b-c_d:1,1"), Ok(spec("a.b-c_d", &[1])));
        assert_eq!(parse_topic_spec("t: 1 , 2 "), Ok(spec("t", &[1, 2])));
    }

    #[test]
    fn bad_topic_specs_say_why() {
        for bad in [
            "",
            ":1",
            "t:",
            "t:x",
            "t:1,",
            "t:3-1",
            "t:-1",
            "t:0-4294967295",
        ] {
            assert!(parse_topic_spec(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn offsets_csv_round_trips() {
        let rows = vec![
            OffsetRow {
                topic: "orders".into(),
                partition: 0,
                offset: 10,
                topic_id: TopicId::from_wire(0x00ab_cdef_0123_4567),
            },
            OffsetRow {
                topic: "orders".into(),
                partition: 1,
                offset: 0,
                topic_id: TopicId::from_wire(0x00ab_cdef_0123_4567),
            },
            OffsetRow {
                topic: "audit.log".into(),
                partition: 7,
                offset: u64::MAX,
                topic_id: None,
            },
        ];
        let text = write_offsets_csv(&rows);
        assert_eq!(
            text.lines().take(2).collect::<Vec<_>>(),
            [
                "topic,partition,offset,topic_id",
                "orders,0,10,00abcdef01234567"
            ]
        );
        assert_eq!(parse_offsets_csv(&text, "g"), Ok(rows));
    }

    /// A small deterministic generator (xorshift64*), so a failing case can be rerun.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Property: any rows `write_offsets_csv` writes (random topics, partitions,
    /// offsets up to u64::MAX, ids or none, 0 to 40 rows) read back as themselves.
    #[test]
    fn random_offsets_csv_round_trips() {
        for seed in 1..=500u64 {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let count = (next(&mut state) % 41) as usize;
            let mut rows: Vec<OffsetRow> = Vec::new();
            while rows.len() < count {
                let topic = format!("t{}.x_{}", next(&mut state) % 5, next(&mut state) % 3);
                let partition = match next(&mut state) % 3 {
                    0 => u32::MAX,
                    _ => (next(&mut state) % 100) as u32,
                };
                if rows
                    .iter()
                    .any(|r| r.topic == topic && r.partition == partition)
                {
                    continue;
                }
                let offset = match next(&mut state) % 3 {
                    0 => u64::MAX,
                    1 => 0,
                    _ => next(&mut state),
                };
                rows.push(OffsetRow {
                    topic,
                    partition,
                    offset,
                    topic_id: TopicId::from_wire(next(&mut state) % 2 * next(&mut state)),
                });
            }
            let text = write_offsets_csv(&rows);
            if rows.is_empty() {
                assert!(parse_offsets_csv(&text, "g").is_err(), "seed {seed}");
            } else {
                assert_eq!(parse_offsets_csv(&text, "g"), Ok(rows), "seed {seed}");
            }
        }
    }

    /// Property: arbitrary text (pieces of real lines, separators, digits, ids, words,
    /// stray bytes) never panics the reader, and what it accepts is a set of rows with
    /// non-empty topics and no (topic, partition) twice.
    #[test]
    fn random_text_never_panics_the_offsets_csv_reader() {
        const PIECES: [&str; 18] = [
            "topic,partition,offset,topic_id",
            "topic,partition,offset",
            "group,topic,partition,offset",
            ",",
            "\n",
            "\r\n",
            "#",
            " ",
            "g",
            "orders",
            "0",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "00abcdef01234567",
            "0000000000000000",
            "\u{e9}\u{1f600}",
            "\0",
        ];
        for seed in 1..=3000u64 {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut text = String::new();
            for _ in 0..next(&mut state) % 40 {
                text.push_str(PIECES[(next(&mut state) % PIECES.len() as u64) as usize]);
            }
            if let Ok(rows) = parse_offsets_csv(&text, "g") {
                assert!(!rows.is_empty(), "seed {seed}: {text:?}");
                for (i, row) in rows.iter().enumerate() {
                    assert!(!row.topic.is_empty(), "seed {seed}: {text:?}");
                    assert!(
                        !rows[..i]
                            .iter()
                            .any(|r| r.topic == row.topic && r.partition == row.partition),
                        "seed {seed}: {text:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn offsets_csv_skips_headers_comments_and_other_groups() {
        let text = "topic,partition,offset\n# a comment\n\n orders , 1 , 5 \r\n";
        assert_eq!(
            parse_offsets_csv(text, "g"),
            Ok(vec![OffsetRow {
                topic: "orders".into(),
                partition: 1,
                offset: 5,
                topic_id: None,
            }])
        );
        let text = "group,topic,partition,offset\ng,orders,0,3\nother,orders,0,9\n";
        assert_eq!(
            parse_offsets_csv(text, "g"),
            Ok(vec![OffsetRow {
                topic: "orders".into(),
                partition: 0,
                offset: 3,
                topic_id: None,
            }])
        );
        // Ids after their header; a row without one (3 columns, or an empty 4th) is
        // not checked.
        let text = "topic,partition,offset,topic_id\norders,0,3,00abcdef01234567\n\
                    orders,1,4\norders,2,5,\n";
        let ids: Vec<Option<u64>> = parse_offsets_csv(text, "g")
            .unwrap()
            .iter()
            .map(|r| r.topic_id.map(TopicId::get))
            .collect();
        assert_eq!(ids, [Some(0x00ab_cdef_0123_4567), None, None]);
    }

    #[test]
    fn bad_offsets_csv_names_the_line() {
        let error = parse_offsets_csv("orders,0,1\norders,x,1\n", "g").unwrap_err();
        assert!(error.starts_with("line 2:"), "{error}");
        let error = parse_offsets_csv("orders,0\n", "g").unwrap_err();
        assert!(error.contains("expected topic,partition,offset"), "{error}");
        let error = parse_offsets_csv("orders,0,-1\n", "g").unwrap_err();
        assert!(error.contains("not an offset"), "{error}");
        let error = parse_offsets_csv("orders,0,1\norders,0,2\n", "g").unwrap_err();
        assert!(error.contains("twice"), "{error}");
        assert!(parse_offsets_csv("\n# nothing\n", "g").is_err());
        assert!(parse_offsets_csv(",0,1\n", "g").is_err());
        let with_ids = "topic,partition,offset,topic_id\n";
        for bad in [
            "0",
            "00ABCDEF01234567",
            "abcdef01234567",
            "0000000000000000",
        ] {
            let error =
                parse_offsets_csv(&format!("{with_ids}orders,0,1,{bad}\n"), "g").unwrap_err();
            assert!(
                error.contains("line 2: ") && error.contains("not a topic id"),
                "{error}"
            );
        }
        // Without the header, 4 columns are Kafka's group form: an id there is named,
        // not taken for an offset of another group and skipped.
        let error = parse_offsets_csv("orders,0,1,00abcdef01234567\n", "g").unwrap_err();
        assert!(error.contains("no header line"), "{error}");
    }
}
