//! The command tree parses what the README and help show, and refuses the rest.

use super::*;
use crate::cli::{Cli, Command};
use clap::{CommandFactory, Parser};

#[test]
fn the_command_tree_is_consistent() {
    Cli::command().debug_assert();
    // Values reach their typed fields (a Vec<u8> field would be taken as many u8).
    let cli = Cli::try_parse_from(["tidelog", "produce", "t", "-D", "\\0"]).unwrap();
    let Command::Produce(args) = cli.command else {
        panic!("not produce")
    };
    assert_eq!(args.delimiter, Some(Delimiter(vec![0])));
}

#[test]
fn every_command_has_an_example() {
    fn walk(command: &clap::Command, path: &str) {
        let path = format!("{path} {}", command.get_name());
        if command.get_subcommands().next().is_none() {
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.contains("Examples:"), "{path} has no example");
        }
        for sub in command.get_subcommands() {
            walk(sub, &path);
        }
    }
    walk(&Cli::command(), "");
}

#[test]
fn limits_accept_off() {
    assert_eq!(duration_limit("off"), Ok(Limit::Off));
    assert_eq!(duration_limit("7d"), Ok(Limit::Value(7 * 86_400_000)));
    assert_eq!(duration_limit("0"), Ok(Limit::Off));
    assert_eq!(duration_limit("PT1H30M"), Ok(Limit::Value(5_400_000)));
    let error = duration_limit("10").unwrap_err();
    assert!(error.contains("10 has no unit"), "{error}");
    assert_eq!(size_limit("unlimited"), Ok(Limit::Off));
    assert_eq!(size_limit("10GiB"), Ok(Limit::Value(10 << 30)));
    // Kafka's "no limit".
    assert_eq!(duration_limit("-1"), Ok(Limit::Off));
    assert_eq!(size_limit("-1"), Ok(Limit::Off));
}

/// Negative values reach the flag's own parser, which says what is wrong, instead of
/// clap's "unexpected argument '-1'".
#[test]
fn negative_limits_are_refused_by_their_parsers() {
    let create = |flag: &str, value: &str| {
        Cli::try_parse_from(["tidelog", "topic", "create", "t", flag, value])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    for (flag, value, needle) in [
        ("--retention", "-1h", "cannot be negative"),
        ("--ttl", "-5m", "cannot be negative"),
        ("--retention-bytes", "-1GiB", "cannot be negative"),
        ("--segment-bytes", "-4KiB", "cannot be negative"),
        ("--max-message-bytes", "-1", "cannot be negative"),
        ("--queue-max-ready", "-3", "not a count"),
        ("--retention-bytes", "1.5", "not a whole number of bytes"),
    ] {
        let error = create(flag, value).unwrap_err();
        assert!(
            error.contains(flag) && error.contains(needle),
            "{flag} {value}: {error}"
        );
    }
    assert_eq!(create("--retention", "-1"), Ok(()));
    assert_eq!(create("--retention-bytes", "-1"), Ok(()));
}

#[test]
fn fsync_policies_parse() {
    assert_eq!(fsync("always"), Ok(Fsync::Always));
    assert_eq!(fsync("never"), Ok(Fsync::Never));
    assert_eq!(fsync("interval:10ms"), Ok(Fsync::IntervalMs(10)));
    assert_eq!(fsync("interval:1s"), Ok(Fsync::IntervalMs(1000)));
    assert!(fsync("interval:0").is_err());
    assert!(fsync("interval:10").is_err());
    assert!(fsync("sometimes").is_err());
}

#[test]
fn until_parses_an_offset_or_a_time() {
    assert_eq!(until("42"), Ok(Until::Offset(42)));
    assert_eq!(until("1970-01-01T00:00:01Z"), Ok(Until::TimestampMs(1000)));
    assert!(until("soon").is_err());
}

#[test]
fn start_positions_parse() {
    assert_eq!(from("earliest"), Ok(StartAt::Earliest));
    assert_eq!(from("latest"), Ok(StartAt::Latest));
    assert_eq!(from("42"), Ok(StartAt::Offset(42)));
    assert_eq!(from("1970-01-01T00:00:01Z"), Ok(StartAt::TimestampMs(1000)));
    assert!(from("yesterday").is_err());
    assert!(from("-5").is_err());
}

#[test]
fn delimiters_take_escapes() {
    assert_eq!(delimiter("\\0"), Ok(Delimiter(vec![0])));
    assert_eq!(delimiter("\\r\\n"), Ok(Delimiter(b"\r\n".to_vec())));
    assert_eq!(delimiter("\\x1e"), Ok(Delimiter(vec![0x1e])));
    assert_eq!(delimiter("|"), Ok(Delimiter(b"|".to_vec())));
    assert!(delimiter("").is_err());
    assert!(delimiter("\\q").is_err());
    assert!(delimiter("\\x1").is_err());
}

#[test]
fn headers_and_separators_parse() {
    assert_eq!(header("a=b=c"), Ok(("a".into(), "b=c".into())));
    assert_eq!(header("a="), Ok(("a".into(), String::new())));
    assert!(header("ab").is_err());
    assert!(header("=b").is_err());
    assert_eq!(separator("\\t"), Ok("\t".into()));
    assert!(separator("").is_err());
}

#[test]
fn reset_offsets_needs_exactly_one_mode() {
    let parse = |args: &[&str]| {
        Cli::try_parse_from(
            [
                "tidelog",
                "group",
                "reset-offsets",
                "--group",
                "g",
                "--topic",
                "t",
            ]
            .iter()
            .chain(args),
        )
    };
    assert!(parse(&["--to-earliest"]).is_ok());
    assert!(parse(&["--shift-by", "-5"]).is_ok());
    assert!(parse(&[]).is_err());
    assert!(parse(&["--to-earliest", "--to-latest"]).is_err());
    assert!(parse(&["--to-earliest", "--dry-run", "--execute"]).is_err());
    assert!(parse(&["--by-duration", "-PT5M"]).is_err());
    assert!(parse(&["--by-duration", "PT30M"]).is_ok());
    assert!(parse(&["--by-duration", "1h30m"]).is_ok());
    assert!(parse(&["--by-duration", "30"]).is_err());
}
