//! `tidelog auth` (tokens) and `tidelog acl` (authorization rules), over the broker's
//! `Access` service. Every command needs a token allowed `admin` on `cluster`
//! (`--token` / `TIDELOG_TOKEN`), except `auth whoami`.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tidelog_proto::v1::{
    AclRule, AddAclRequest, CreateTokenRequest, ListAclsRequest, ListTokensRequest,
    RemoveAclRequest, RevokeTokenRequest, TokenInfo, WhoAmIRequest,
};
use tidelog_storage::duration::parse_duration_ms;

use crate::client::Broker;
use crate::error::CliResult;
use crate::output::{Stdout, Table, render_pairs};
use crate::time::format_datetime_ms;

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
    /// topic:NAME, topic:PREFIX*, topic:*, group:.., queue:.., *:PREFIX*, cluster, or *.
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
