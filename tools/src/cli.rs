//! The command tree (clap derive): the top-level flags and the commands. Each
//! command's arguments and their value parsers are in `args` (shared with the code
//! that runs them); the subcommand trees of `queue`, `auth`, `acl` and `bench` live
//! with their commands.

use clap::{Parser, Subcommand};

use crate::args::*;
use crate::client::DEFAULT_SERVER;

const MAIN_EXAMPLES: &str = "\
Examples:
  tidelog topic create orders --partitions 3 --retention 7d
  printf 'a\\nb\\n' | tidelog produce orders
  tidelog consume orders --group billing -n 10
  tidelog group reset-offsets --group billing --topic orders --to-datetime 2026-11-23T00:00:00Z --execute
  tidelog segment verify /var/lib/tidelog
  tidelog completions bash > ~/.local/share/bash-completion/completions/tidelog

The broker address comes from --server or TIDELOG_SERVER (default http://127.0.0.1:7420);
an https:// address speaks TLS (--ca-file, and --cert/--tls-key for mutual TLS).
Exit codes: 0 ok, 1 error from the broker or the data, 2 bad arguments. With --json an
error is one JSON object on stderr: {\"error\": {\"message\", \"exit_code\", \"grpc_code\"}}.";

/// tidelog: operate a tidelogd broker and inspect its data files.
#[derive(Debug, Parser)]
#[command(
    name = "tidelog",
    version,
    about = "tidelog: operate a tidelogd broker and inspect its data files",
    after_help = MAIN_EXAMPLES,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Address of tidelogd.
    #[arg(
        long,
        global = true,
        env = "TIDELOG_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL"
    )]
    pub server: String,

    /// Bearer token for a broker started with --auth (tidelog_<id>_<secret>), sent as
    /// the authorization metadata of every call.
    #[arg(
        long,
        global = true,
        env = "TIDELOG_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// CA certificate (PEM) that signed tidelogd's certificate, for an https://
    /// --server [default: the system's CAs]
    #[arg(long, global = true, env = "TIDELOG_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for a tidelogd with --tls-client-ca (mutual TLS); its
    /// subject CN is the principal unless --token is also given
    #[arg(long, global = true, env = "TIDELOG_CERT", value_name = "FILE")]
    pub cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --cert. Not `--key`: that is `produce --key`, the
    /// message key (before the command, `tidelog --key FILE ...` still means this).
    /// Its variable is not TIDELOG_KEY either: `queue work` gives its command the
    /// message key there.
    #[arg(
        long,
        id = "tls_key",
        global = true,
        env = "TIDELOG_CERT_KEY",
        value_name = "FILE"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// The old name of --tls-key, taken before the command only (after it, `--key`
    /// is produce's message key).
    #[arg(
        long = "key",
        hide = true,
        conflicts_with = "tls_key",
        value_name = "FILE"
    )]
    pub key_before_command: Option<std::path::PathBuf>,

    /// Print JSON for scripts instead of tables; an error is then one JSON object on
    /// stderr: {"error": {"message": "...", "exit_code": 1, "grpc_code": "NOT_FOUND"}}.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, alter and delete topics.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog topic list\n  tidelog topic create orders --partitions 3 --retention 7d"
    )]
    Topic(TopicCommand),

    /// Publish lines from stdin or a file as messages.
    Produce(ProduceArgs),

    /// Print messages of a topic, optionally as a member of a consumer group.
    Consume(ConsumeArgs),

    /// List, describe and delete consumer groups; reset their offsets.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog group list\n  tidelog group describe billing\n  tidelog group reset-offsets --group billing --topic orders --to-earliest"
    )]
    Group(GroupCommand),

    /// Show the broker: version, addresses, data directory, effective settings.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog broker describe\n  tidelog broker describe --json"
    )]
    Broker(BrokerCommand),

    /// Work queues: create and inspect them, consume with acks, run a command per message.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog queue create billing --topic orders --from earliest\n  tidelog queue describe billing\n  tidelog queue work billing --concurrency 4 -- ./charge.sh"
    )]
    Queue(crate::queue::QueueCommand),
    /// Look a message up by its message id; its delivery status and history.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog message get orders order-17\n  tidelog message get orders 01JD3N6Z9M2Q8W4X7Y5V0T1R3S --value --json\n  tidelog message status orders order-17 --queue billing\n  tidelog message history orders order-17 --queue billing"
    )]
    Message(MessageCommand),

    /// Tokens for a broker started with --auth: create (printed once), list, revoke.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog auth token create --principal svc-orders --ttl 30d\n  tidelog auth token list\n  tidelog auth token revoke 0123456789abcdef\n  tidelog auth whoami"
    )]
    Auth(crate::access::AuthCommand),

    /// Authorization rules (ACLs): principal x resource x operation, allow or deny.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog acl add --principal svc-orders --resource 'topic:orders.*' --operation publish\n  tidelog acl add --principal '*' --resource topic:secret --operation '*' --deny\n  tidelog acl list"
    )]
    Acl(crate::access::AclCommand),

    /// Quotas per principal: publish/consume bytes and requests per second (the broker
    /// slows a principal down past them), and topics and partitions it may create.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog quota set --principal svc-orders --publish-bytes 10MiB --requests 500\n  tidelog quota set --principal '*' --topics 20\n  tidelog quota list"
    )]
    Quota(crate::access::QuotaCommand),

    /// Offline tools for a data directory (stop tidelogd first): dump, verify, repair.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog segment verify /var/lib/tidelog\n  tidelog segment dump /var/lib/tidelog/topics/orders/0/00000000000000000000.log --records"
    )]
    Segment(SegmentCommand),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  tidelog completions bash > ~/.local/share/bash-completion/completions/tidelog\n  tidelog completions zsh > \"${fpath[1]}/_tidelog\"\n  tidelog completions fish > ~/.config/fish/completions/tidelog.fish"
    )]
    Completions(CompletionsArgs),

    /// Benchmark a broker: produce, consume or end to end, with validation.
    #[command(
        subcommand,
        after_help = "Examples:\n  tidelog bench produce --producers 2 --stream\n  tidelog bench consume --messages 5M\n  tidelog bench e2e --stream --rate 100k --duration 20s\n\nThe whole scenario suite (builds, starts its own tidelogd, writes a table):\n  cargo run --release -p tidelog-benches --bin scenarios -- --quick   # ~1-2 min; --help lists every option"
    )]
    Bench(crate::bench::BenchCommand),
}
