//! `tidelog auth` (tokens), `tidelog acl` (authorization rules) and `tidelog quota`
//! (limits per principal), over the broker's `Access` service. Every command needs a
//! token allowed `admin` on `cluster` (`--token` / `TIDELOG_TOKEN`), except
//! `auth whoami`.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tidelog_proto::v1::{
    AclRule, AddAclRequest, CreateTokenRequest, ListAclsRequest, ListQuotasRequest,
    ListTokensRequest, Quota, QuotaLimits, RemoveAclRequest, RemoveQuotaRequest,
    RevokeTokenRequest, SetQuotaRequest, TokenInfo, WhoAmIRequest,
};
use tidelog_storage::access::ResourcePattern;
use tidelog_storage::duration::parse_duration_ms;

use crate::client::Broker;
use crate::error::{CliError, CliResult};
use crate::output::{Stdout, Table, render_pairs};
use crate::time::format_datetime_ms;
use crate::units::{format_bytes, parse_size};

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create, list and revoke tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the principal the broker sees for --token.
    #[command(
        after_help = "Examples:\n  tidelog auth whoami\n  TIDELOG_TOKEN=$(cat token) tidelog auth whoami --json"
    )]
    Whoami,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a principal; it is printed once (the broker keeps a hash).
    #[command(
        after_help = "Examples:\n  tidelog auth token create --principal svc-orders\n  tidelog auth token create --principal ci --ttl 12h --description 'CI runner' --json"
    )]
    Create {
        /// Who the token authenticates, e.g. svc-orders.
        #[arg(long)]
        principal: String,
        /// Lifetime, e.g. 30d or 12h; without it the token never expires.
        #[arg(long, value_name = "DURATION", value_parser = ttl)]
        ttl: Option<u64>,
        /// A note for operators, shown by `tidelog auth token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    #[command(
        after_help = "Examples:\n  tidelog auth token list\n  tidelog auth token list --json"
    )]
    List,
    /// Revoke a token by its id (as `list` shows it) or its text; calls with it fail at
    /// once, open streams within a second.
    #[command(after_help = "Examples:\n  tidelog auth token revoke 0123456789abcdef")]
    Revoke {
        /// The token id (16 hex digits) or the whole token.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// List every rule.
    #[command(after_help = "Examples:\n  tidelog acl list\n  tidelog acl list --json")]
    List,
    /// Add a rule (durable; applies to new calls at once, open streams within a second).
    #[command(
        after_help = "Examples:\n  tidelog acl add --principal svc-orders --resource 'topic:orders.*' --operation publish\n  tidelog acl add --principal '*' --resource topic:payroll --operation '*' --deny"
    )]
    Add(RuleArgs),
    /// Remove a rule equal to the one given.
    #[command(
        after_help = "Examples:\n  tidelog acl remove --principal svc-orders --resource 'topic:orders.*' --operation publish"
    )]
    Remove(RuleArgs),
}

#[derive(Debug, Args)]
pub struct RuleArgs {
    /// A principal, or * for everyone.
    #[arg(long)]
    principal: String,
    /// topic:NAME, topic:PREFIX*, topic:*, group:.., queue:.., *:PREFIX*, cluster, or *
    /// (a * only at the end).
    #[arg(long)]
    resource: String,
    /// publish, consume, create, alter, delete, describe, group-commit, group-reset,
    /// admin, or * for every operation.
    #[arg(long)]
    operation: String,
    /// A deny rule (deny wins over any allow) instead of an allow rule.
    #[arg(long)]
    deny: bool,
}

impl RuleArgs {
    fn rule(self) -> AclRule {
        AclRule {
            principal: self.principal,
            resource: self.resource,
            operation: self.operation,
            effect: if self.deny { "deny" } else { "allow" }.to_string(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set limits of a principal, or of * (the default of every principal without
    /// that limit of its own). Limits left out keep their value; `none` removes one.
    #[command(
        after_help = "Over a rate the broker slows the principal down (it delays its calls, \
publishes and deliveries) rather than failing it; creating topics or partitions past \
--topics or --partitions is refused.\n\nExamples:\n  tidelog quota set --principal svc-orders --publish-bytes 10MiB --requests 500\n  tidelog quota set --principal '*' --topics 20 --partitions 200\n  tidelog quota set --principal svc-orders --requests none"
    )]
    Set(QuotaArgs),
    /// List every quota; with --principal, also the limits that apply to it.
    #[command(
        after_help = "Examples:\n  tidelog quota list\n  tidelog quota list --principal svc-orders --json"
    )]
    List {
        /// Also show the limits that apply to this principal (its own, else *'s).
        #[arg(long)]
        principal: Option<String>,
    },
    /// Remove a principal's (or *'s) quota.
    #[command(after_help = "Examples:\n  tidelog quota remove --principal svc-orders")]
    Remove {
        /// The principal, or *.
        #[arg(long)]
        principal: String,
    },
}

#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// A principal, or * for the default.
    #[arg(long)]
    principal: String,
    /// Bytes of publish requests per second, e.g. 10MiB; `none` removes the limit.
    #[arg(long, value_name = "SIZE|none", value_parser = size_limit)]
    publish_bytes: Option<u64>,
    /// Bytes of delivered messages per second (fetch, subscribe, groups, queues).
    #[arg(long, value_name = "SIZE|none", value_parser = size_limit)]
    consume_bytes: Option<u64>,
    /// Calls and stream requests per second.
    #[arg(long, value_name = "N|none", value_parser = count_limit)]
    requests: Option<u64>,
    /// Topics the principal may have created at once.
    #[arg(long, value_name = "N|none", value_parser = count_limit)]
    topics: Option<u64>,
    /// Partitions of the topics the principal created.
    #[arg(long, value_name = "N|none", value_parser = count_limit)]
    partitions: Option<u64>,
}

/// A limit as typed: `none` (sent as 0: remove the limit) or a size; a rate may end
/// in `/s`.
fn size_limit(text: &str) -> Result<u64, String> {
    match text {
        "none" => Ok(0),
        _ => match parse_size(text.strip_suffix("/s").unwrap_or(text))? {
            0 => Err("a limit of 0 would stop the principal; write none for no limit".into()),
            bytes => Ok(bytes),
        },
    }
}

fn count_limit(text: &str) -> Result<u64, String> {
    match text {
        "none" => Ok(0),
        _ => match text.strip_suffix("/s").unwrap_or(text).parse::<u64>() {
            Ok(0) => Err("a limit of 0 would stop the principal; write none for no limit".into()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("{text:?} is not a whole number or none")),
        },
    }
}

fn limits_json(limits: Option<&QuotaLimits>) -> Value {
    let limits = limits.cloned().unwrap_or_default();
    json!({
        "publish_bytes_per_sec": limits.publish_bytes_per_sec,
        "consume_bytes_per_sec": limits.consume_bytes_per_sec,
        "requests_per_sec": limits.requests_per_sec,
        "topics_max": limits.topics_max,
        "partitions_max": limits.partitions_max,
    })
}

fn quota_json(quota: &Quota) -> Value {
    json!({ "principal": quota.principal, "limits": limits_json(quota.limits.as_ref()) })
}

fn limits_row(principal: &str, limits: Option<&QuotaLimits>) -> Vec<String> {
    let limits = limits.cloned().unwrap_or_default();
    let bytes = |v: Option<u64>| v.map_or("-".into(), |v| format!("{}/s", format_bytes(v)));
    let count = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    vec![
        principal.to_string(),
        bytes(limits.publish_bytes_per_sec),
        bytes(limits.consume_bytes_per_sec),
        limits
            .requests_per_sec
            .map_or("-".into(), |v| format!("{v}/s")),
        count(limits.topics_max),
        count(limits.partitions_max),
    ]
}

const QUOTA_COLUMNS: [&str; 6] = [
    "PRINCIPAL",
    "PUBLISH",
    "CONSUME",
    "REQUESTS",
    "TOPICS",
    "PARTITIONS",
];

pub async fn run_quota(broker: &Broker, command: QuotaCommand, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    let mut client = broker.access();
    match command {
        QuotaCommand::Set(args) => {
            let response = client
                .set_quota(SetQuotaRequest {
                    principal: args.principal.clone(),
                    limits: Some(QuotaLimits {
                        publish_bytes_per_sec: args.publish_bytes,
                        consume_bytes_per_sec: args.consume_bytes,
                        requests_per_sec: args.requests,
                        topics_max: args.topics,
                        partitions_max: args.partitions,
                    }),
                })
                .await
                .map_err(|s| broker.error(&format!("setting the quota of {}", args.principal), &s))?
                .into_inner();
            if json {
                out.json_pretty(&json!({
                    "quota": response.quota.as_ref().map(quota_json),
                    "changed": response.changed,
                }))?;
            } else {
                match &response.quota {
                    Some(quota) => {
                        let mut table = Table::new(&QUOTA_COLUMNS);
                        table.row(limits_row(&quota.principal, quota.limits.as_ref()));
                        out.text(&table.render())?;
                    }
                    None => out.line(&format!("{} has no limits now", args.principal))?,
                }
                if !response.changed {
                    out.line("(unchanged)")?;
                }
            }
        }
        QuotaCommand::List { principal } => {
            let response = client
                .list_quotas(ListQuotasRequest {
                    principal: principal.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| broker.error("listing quotas", &s))?
                .into_inner();
            if json {
                let mut value = json!({
                    "quotas": response.quotas.iter().map(quota_json).collect::<Vec<_>>(),
                });
                if let Some(principal) = &principal {
                    value["effective"] = json!({
                        "principal": principal,
                        "limits": limits_json(response.effective.as_ref()),
                    });
                }
                out.json_pretty(&value)?;
            } else {
                let mut table = Table::new(&QUOTA_COLUMNS);
                for quota in &response.quotas {
                    table.row(limits_row(&quota.principal, quota.limits.as_ref()));
                }
                out.text(&table.render())?;
                if let Some(principal) = &principal {
                    out.line(&format!("\nlimits that apply to {principal}:"))?;
                    let mut table = Table::new(&QUOTA_COLUMNS);
                    table.row(limits_row(principal, response.effective.as_ref()));
                    out.text(&table.render())?;
                }
            }
        }
        QuotaCommand::Remove { principal } => {
            client
                .remove_quota(RemoveQuotaRequest {
                    principal: principal.clone(),
                })
                .await
                .map_err(|s| broker.error(&format!("removing the quota of {principal}"), &s))?;
            if json {
                out.json_pretty(&json!({ "removed": true }))?;
            } else {
                out.line("removed")?;
            }
        }
    }
    out.flush()
}

fn ttl(text: &str) -> Result<u64, String> {
    match parse_duration_ms(text).map_err(|e| e.to_string())? {
        0 => Err("a ttl of 0 would expire at once; leave --ttl out for no expiry".into()),
        ms => Ok(ms),
    }
}

fn expires(ms: i64) -> String {
    if ms == 0 {
        "never".into()
    } else {
        format_datetime_ms(ms)
    }
}

fn token_json(info: &TokenInfo) -> Value {
    json!({
        "id": info.id,
        "principal": info.principal,
        "created_at_ms": info.created_at_ms,
        "expires_at_ms": (info.expires_at_ms != 0).then_some(info.expires_at_ms),
        "description": info.description,
    })
}

fn rule_json(rule: &AclRule) -> Value {
    json!({
        "principal": rule.principal,
        "resource": rule.resource,
        "operation": rule.operation,
        "effect": rule.effect,
    })
}

pub async fn run_auth(broker: &Broker, command: AuthCommand, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    let mut client = broker.access();
    match command {
        AuthCommand::Token(TokenCommand::Create {
            principal,
            ttl,
            description,
        }) => {
            let created = client
                .create_token(CreateTokenRequest {
                    principal,
                    ttl_ms: ttl.unwrap_or(0),
                    description,
                })
                .await
                .map_err(|s| broker.error("creating the token", &s))?
                .into_inner();
            let info = created.info.unwrap_or_default();
            if json {
                let mut value = token_json(&info);
                value["token"] = Value::String(created.token);
                out.json_pretty(&value)?;
            } else {
                out.line(&created.token)?;
                out.line("")?;
                out.text(&render_pairs(&[
                    ("id", info.id.clone()),
                    ("principal", info.principal.clone()),
                    ("expires", expires(info.expires_at_ms)),
                ]))?;
                out.line("")?;
                out.line("The token is shown only now: store it (the broker keeps only a hash).")?;
                out.line("Allow it something with: tidelog acl add --principal ... --resource ... --operation ...")?;
            }
        }
        AuthCommand::Token(TokenCommand::List) => {
            let tokens = client
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(|s| broker.error("listing tokens", &s))?
                .into_inner()
                .tokens;
            if json {
                out.json_pretty(&Value::Array(tokens.iter().map(token_json).collect()))?;
            } else {
                let mut table =
                    Table::new(&["ID", "PRINCIPAL", "CREATED", "EXPIRES", "DESCRIPTION"]);
                for info in &tokens {
                    table.row(vec![
                        info.id.clone(),
                        info.principal.clone(),
                        format_datetime_ms(info.created_at_ms),
                        expires(info.expires_at_ms),
                        info.description.clone(),
                    ]);
                }
                out.text(&table.render())?;
            }
        }
        AuthCommand::Token(TokenCommand::Revoke { id }) => {
            client
                .revoke_token(RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(|s| broker.error("revoking the token", &s))?;
            if json {
                out.json_pretty(&json!({ "revoked": true }))?;
            } else {
                out.line("revoked")?;
            }
        }
        AuthCommand::Whoami => {
            let me = client
                .who_am_i(WhoAmIRequest {})
                .await
                .map_err(|s| broker.error("asking who the token is", &s))?
                .into_inner();
            if json {
                out.json_pretty(&json!({
                    "principal": me.principal,
                    "token_id": me.token_id,
                    "expires_at_ms": (me.expires_at_ms != 0).then_some(me.expires_at_ms),
                }))?;
            } else if me.principal.is_empty() {
                out.line("authentication is off on this broker (tidelogd without --auth)")?;
            } else {
                out.text(&render_pairs(&[
                    ("principal", me.principal.clone()),
                    ("token", me.token_id.clone()),
                    ("expires", expires(me.expires_at_ms)),
                ]))?;
            }
        }
    }
    out.flush()
}

pub async fn run_acl(broker: &Broker, command: AclCommand, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    let mut client = broker.access();
    match command {
        AclCommand::List => {
            let rules = client
                .list_acls(ListAclsRequest {})
                .await
                .map_err(|s| broker.error("listing ACL rules", &s))?
                .into_inner()
                .rules;
            if json {
                out.json_pretty(&Value::Array(rules.iter().map(rule_json).collect()))?;
            } else {
                let mut table = Table::new(&["EFFECT", "PRINCIPAL", "OPERATION", "RESOURCE"]);
                for rule in &rules {
                    table.row(vec![
                        rule.effect.clone(),
                        rule.principal.clone(),
                        rule.operation.clone(),
                        rule.resource.clone(),
                    ]);
                }
                out.text(&table.render())?;
            }
        }
        AclCommand::Add(args) => {
            // Checked here too, by the broker's reader, for an error in flag terms. (Not
            // for remove: a rule an older broker accepted is removed as listed.)
            ResourcePattern::parse(&args.resource).map_err(|e| {
                CliError::usage(
                    format!("--resource: {e}"),
                    "pass one of those, e.g. --resource 'topic:orders.*'",
                )
            })?;
            let added = client
                .add_acl(AddAclRequest {
                    rule: Some(args.rule()),
                })
                .await
                .map_err(|s| broker.error("adding the ACL rule", &s))?
                .into_inner()
                .added;
            if json {
                out.json_pretty(&json!({ "added": added }))?;
            } else {
                out.line(if added {
                    "added"
                } else {
                    "the rule existed already"
                })?;
            }
        }
        AclCommand::Remove(args) => {
            client
                .remove_acl(RemoveAclRequest {
                    rule: Some(args.rule()),
                })
                .await
                .map_err(|s| broker.error("removing the ACL rule", &s))?;
            if json {
                out.json_pretty(&json!({ "removed": true }))?;
            } else {
                out.line("removed")?;
            }
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_units_rates_and_none() {
        assert_eq!(size_limit("10MiB"), Ok(10 << 20));
        assert_eq!(size_limit("1MB/s"), Ok(1_000_000));
        assert_eq!(size_limit("none"), Ok(0));
        assert!(size_limit("0").unwrap_err().contains("none"));
        assert!(size_limit("lots").is_err());
        assert_eq!(count_limit("500/s"), Ok(500));
        assert_eq!(count_limit("none"), Ok(0));
        assert!(count_limit("0").is_err());
        assert!(count_limit("-1").is_err());
    }
}
