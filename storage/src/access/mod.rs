//! Access control state: bearer tokens (stored only as hashes) and authorization rules,
//! kept durable on a [`StateLog`] at `DATA/state/access/access.statelog`
//! ([`ACCESS_STATE_PATH`]).
//!
//! This module knows no network and no hash function: the broker hashes a token's
//! secret (SHA-256) and stores the 32 bytes; [`token`] parses the text of a token and
//! of an `authorization` value, pure functions a fuzz target calls.
//!
//! # Model
//!
//! - A **token** belongs to a principal (a name such as `alice` or `svc-orders`): its
//!   id (random, public, the tokens' key), the SHA-256 of its secret, when it was
//!   created and when it expires (or never). Revoking a token removes it.
//! - A **rule** is `principal (or *) x resource pattern x operation (or *) -> allow |
//!   deny`. A resource pattern is a kind (topic, group, queue, cluster, or any) and a
//!   name, matched exactly or as a prefix (an empty prefix matches every name).
//! - [`Access::decide`]: a deny rule that matches wins; else an allow rule that matches
//!   allows; else nothing matched ([`Decision::NoRule`]) and the broker denies
//!   (default deny).
//!
//! # Operations
//!
//! State-log operations (see [`crate::statelog`] for the record framing and
//! `storage/FORMAT.md`). An operation is a `kind` u8, then its fields:
//!
//! | kind | name | fields after `kind` |
//! |---:|---|---|
//! | 1 | create-token | `id` u64, `principal` str16 (1..=255), `secret_sha256` 32 bytes, `created_at_ms` i64, `expires_at_ms` i64 (0 = never), `description` str16 (0..=256) |
//! | 2 | revoke-token | `id` u64 |
//! | 3 | add-rule | rule |
//! | 4 | remove-rule | rule |
//! | 5 | set-quota | `principal` str16 (1..=255, `*` = the default), `publish_bytes_per_sec` u64, `consume_bytes_per_sec` u64, `requests_per_sec` u64, `topics_max` u64, `partitions_max` u64 (each 0 = no limit) |
//! | 6 | remove-quota | `principal` str16 |
//!
//! **Rule**: `principal` str16 (1..=255, `*` = every principal), `effect` u8 (1 allow, 2
//! deny), `operation` u8 (0 every operation, else [`Operation`]'s code 1..=9),
//! `resource_kind` u8 (0 every kind, else [`ResourceKind`]'s code 1..=4), `match` u8 (1
//! exact, 2 prefix), `name` str16 (0..=255; at least 1 byte for an exact match).
//!
//! Applying: create-token inserts or replaces the token of that id; revoke-token removes
//! it (reports whether it existed); add-rule inserts (reports whether it was new);
//! remove-rule removes (reports whether it existed); set-quota inserts or replaces the
//! quota of that principal (reports whether it changed); remove-quota removes it
//! (reports whether it existed). A snapshot writes every token, every rule and every
//! quota. The number of tokens, rules and quotas is bounded by the broker before it
//! appends ([`crate::limits::ACCESS_TOKENS_MAX`], [`crate::limits::ACCESS_RULES_MAX`],
//! [`crate::limits::ACCESS_QUOTAS_MAX`]).
//!
//! # Quotas
//!
//! A [`Quota`] belongs to a principal or to `*`, the default. What a principal may use
//! is [`Access::quota_for`]: each limit from its own quota when that quota sets it,
//! else from `*`'s (per limit, as Kafka resolves a user's quota over its default).

pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::limits::{
    ACCESS_DESCRIPTION_BYTES_MAX, ACCESS_NAME_BYTES_MAX, ACCESS_PRINCIPAL_BYTES_MAX,
};
use crate::statelog::{
    self, DecodeError, LogOp, OPS_BYTES_MAX, OpReader, Record, SnapshotWriter, StateLog,
    StateLogOptions, StateMachine, put_str16,
};

/// Where the access state lives inside a data directory.
pub const ACCESS_STATE_PATH: &str = "state/access/access.statelog";

/// Bytes of a token secret's SHA-256.
pub const SECRET_HASH_BYTES: usize = 32;

const KIND_CREATE_TOKEN: u8 = 1;
const KIND_REVOKE_TOKEN: u8 = 2;
const KIND_ADD_RULE: u8 = 3;
const KIND_REMOVE_RULE: u8 = 4;
const KIND_SET_QUOTA: u8 = 5;
const KIND_REMOVE_QUOTA: u8 = 6;

/// The principal whose quota is every other principal's default.
pub const DEFAULT_QUOTA_PRINCIPAL: &str = "*";

/// Smallest encoded rule, for sizing estimates.
const RULE_FIXED_BYTES: usize = 2 + 1 + 1 + 1 + 1 + 2;
const TOKEN_FIXED_BYTES: usize = 8 + 2 + SECRET_HASH_BYTES + 8 + 8 + 2;
const QUOTA_FIXED_BYTES: usize = 2 + 5 * 8;

// The largest operation fits one record.
const _: () = assert!(
    1 + TOKEN_FIXED_BYTES + ACCESS_PRINCIPAL_BYTES_MAX + ACCESS_DESCRIPTION_BYTES_MAX
        <= OPS_BYTES_MAX
);
const _: () = assert!(ACCESS_PRINCIPAL_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(ACCESS_NAME_BYTES_MAX <= u16::MAX as usize);

/// What a caller does to a resource. The codes are stored: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Publish = 1,
    Consume = 2,
    Create = 3,
    Alter = 4,
    Delete = 5,
    Describe = 6,
    GroupCommit = 7,
    GroupReset = 8,
    Admin = 9,
}

impl Operation {
    /// Every operation, in code order.
    pub const ALL: [Operation; 9] = [
        Operation::Publish,
        Operation::Consume,
        Operation::Create,
        Operation::Alter,
        Operation::Delete,
        Operation::Describe,
        Operation::GroupCommit,
        Operation::GroupReset,
        Operation::Admin,
    ];

    /// The name operators type (`group-commit`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Publish => "publish",
            Operation::Consume => "consume",
            Operation::Create => "create",
            Operation::Alter => "alter",
            Operation::Delete => "delete",
            Operation::Describe => "describe",
            Operation::GroupCommit => "group-commit",
            Operation::GroupReset => "group-reset",
            Operation::Admin => "admin",
        }
    }

    /// The operation named `name`, as [`Operation::name`] writes it.
    pub fn parse(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| op.name() == name)
    }

    fn from_code(code: u8) -> Option<Operation> {
        Operation::ALL.into_iter().find(|op| *op as u8 == code)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of thing a resource is. The codes are stored: never reuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    Topic = 1,
    Group = 2,
    Queue = 3,
    /// The broker itself: tokens, rules, broker description. Its one name is `""`.
    Cluster = 4,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::Topic,
        ResourceKind::Group,
        ResourceKind::Queue,
        ResourceKind::Cluster,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::Topic => "topic",
            ResourceKind::Group => "group",
            ResourceKind::Queue => "queue",
            ResourceKind::Cluster => "cluster",
        }
    }

    pub fn parse(name: &str) -> Option<ResourceKind> {
        ResourceKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
    }

    fn from_code(code: u8) -> Option<ResourceKind> {
        ResourceKind::ALL
            .into_iter()
            .find(|kind| *kind as u8 == code)
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    Allow = 1,
    Deny = 2,
}

impl Effect {
    pub fn name(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// The resources a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourcePattern {
    /// `None`: every kind.
    pub kind: Option<ResourceKind>,
    /// Whether `name` is a prefix (`orders.` covers `orders.eu`; `""` covers all).
    pub prefix: bool,
    pub name: String,
}

impl ResourcePattern {
    /// Whether the pattern covers `name` of `kind`.
    pub fn matches(&self, kind: ResourceKind, name: &str) -> bool {
        self.kind.is_none_or(|k| k == kind)
            && if self.prefix {
                name.starts_with(&self.name)
            } else {
                name == self.name
            }
    }
}

/// Writes `topic:orders`, `topic:orders.*`, `*:*` (the CLI's form, which
/// [`ResourcePattern::parse`] reads).
impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.map_or("*", ResourceKind::name);
        if self.kind == Some(ResourceKind::Cluster) && self.prefix && self.name.is_empty() {
            return f.write_str("cluster");
        }
        write!(
            f,
            "{kind}:{}{}",
            self.name,
            if self.prefix { "*" } else { "" }
        )
    }
}

/// The resources a rule may name, for errors: what [`ResourcePattern::parse`] reads.
pub const RESOURCE_GRAMMAR: &str = "a resource is topic:NAME, topic:PREFIX*, topic:*, the \
     same with group: or queue:, *:NAME or *:PREFIX* (any kind), cluster (the broker \
     itself), or * (everything)";

impl ResourcePattern {
    /// Reads `KIND:NAME` (exact), `KIND:PREFIX*` (prefix), `KIND:*` (every name) with
    /// `KIND` topic, group, queue or `*` (any kind), `cluster`, or `*` (everything):
    /// [`RESOURCE_GRAMMAR`], the one reader of a rule's resource as clients write it
    /// (the broker's AddAcl and RemoveAcl, the CLI's `acl add`). Refuses what could
    /// never match, so a deny written so cannot silently deny nothing: a `*` anywhere
    /// but at the end of the name, and a name after `cluster:` (the cluster has none).
    /// (Rules read back from the access state are checked by `validate_rule` only: one
    /// an older broker stored stays loadable.)
    pub fn parse(text: &str) -> std::result::Result<ResourcePattern, String> {
        if text == "*" {
            return Ok(ResourcePattern {
                kind: None,
                prefix: true,
                name: String::new(),
            });
        }
        if text == "cluster" {
            return Ok(ResourcePattern {
                kind: Some(ResourceKind::Cluster),
                prefix: true,
                name: String::new(),
            });
        }
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!(
                "resource {text:?} has no kind (KIND:NAME); {RESOURCE_GRAMMAR}"
            ));
        };
        let kind = match kind {
            "*" => None,
            "cluster" => {
                return Err(format!(
                    "resource {text:?} names the cluster, which has no names: write cluster \
                     alone; {RESOURCE_GRAMMAR}"
                ));
            }
            other => Some(ResourceKind::parse(other).ok_or_else(|| {
                format!(
                    "resource {text:?} has kind {other:?}, not topic, group, queue or *; \
                     {RESOURCE_GRAMMAR}"
                )
            })?),
        };
        let (prefix, name) = match name.strip_suffix('*') {
            Some(prefix) => (true, prefix),
            None => (false, name),
        };
        if name.contains('*') {
            return Err(format!(
                "resource {text:?} has a * that does not end it (a * means every name \
                 that starts with what comes before it); {RESOURCE_GRAMMAR}"
            ));
        }
        let pattern = ResourcePattern {
            kind,
            prefix,
            name: name.to_string(),
        };
        validate_pattern(&pattern).map_err(|e| match e {
            Error::InvalidArgument(message) => format!("resource {text:?}: {message}"),
            other => other.to_string(),
        })?;
        Ok(pattern)
    }
}

/// One authorization rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// A principal's name, or `*` for every principal.
    pub principal: String,
    pub resource: ResourcePattern,
    /// `None`: every operation.
    pub operation: Option<Operation>,
    pub effect: Effect,
}

impl Rule {
    fn matches(
        &self,
        principal: &str,
        operation: Operation,
        kind: ResourceKind,
        name: &str,
    ) -> bool {
        (self.principal == "*" || self.principal == principal)
            && self.operation.is_none_or(|op| op == operation)
            && self.resource.matches(kind, name)
    }
}

/// A token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Public id, the first part of the token's text.
    pub id: u64,
    pub principal: String,
    pub secret_sha256: [u8; SECRET_HASH_BYTES],
    pub created_at_ms: i64,
    /// `None`: never expires.
    pub expires_at_ms: Option<i64>,
    pub description: String,
}

/// What one principal may use (or, for [`DEFAULT_QUOTA_PRINCIPAL`], every principal
/// without a limit of its own). `None`: no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quota {
    /// A principal's name, or `*` for the default.
    pub principal: String,
    pub limits: QuotaLimits,
}

/// The limits of a [`Quota`]; every one optional (`None` = no limit). Rates are per
/// second over all of the principal's connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuotaLimits {
    /// Bytes of publish requests per second.
    pub publish_bytes_per_sec: Option<u64>,
    /// Bytes of fetched and delivered messages per second.
    pub consume_bytes_per_sec: Option<u64>,
    /// Calls and stream requests per second.
    pub requests_per_sec: Option<u64>,
    /// Topics the principal created that exist at once.
    pub topics_max: Option<u64>,
    /// Partitions of those topics.
    pub partitions_max: Option<u64>,
}

impl QuotaLimits {
    /// Each limit of `self`, or `fallback`'s where `self` has none.
    pub fn or(self, fallback: QuotaLimits) -> QuotaLimits {
        QuotaLimits {
            publish_bytes_per_sec: self
                .publish_bytes_per_sec
                .or(fallback.publish_bytes_per_sec),
            consume_bytes_per_sec: self
                .consume_bytes_per_sec
                .or(fallback.consume_bytes_per_sec),
            requests_per_sec: self.requests_per_sec.or(fallback.requests_per_sec),
            topics_max: self.topics_max.or(fallback.topics_max),
            partitions_max: self.partitions_max.or(fallback.partitions_max),
        }
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == QuotaLimits::default()
    }

    fn fields(&self) -> [Option<u64>; 5] {
        [
            self.publish_bytes_per_sec,
            self.consume_bytes_per_sec,
            self.requests_per_sec,
            self.topics_max,
            self.partitions_max,
        ]
    }
}

/// One change to the access state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessOp {
    CreateToken(StoredToken),
    RevokeToken { id: u64 },
    AddRule(Rule),
    RemoveRule(Rule),
    SetQuota(Quota),
    RemoveQuota { principal: String },
}

/// What the rules say about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// No rule matched: the broker denies (default deny).
    NoRule,
}

/// The access state: tokens by id and the rules.
#[derive(Debug, Default)]
pub struct Access {
    tokens: BTreeMap<u64, StoredToken>,
    rules: BTreeSet<Rule>,
    quotas: BTreeMap<String, Quota>,
    encoded_bytes: u64,
    /// Counts applied changes; a cache of a decision is valid while it is unchanged.
    generation: u64,
}

impl Access {
    /// What the rules say about `principal` doing `operation` on `name` of `kind`: a
    /// matching deny wins over any allow.
    pub fn decide(
        &self,
        principal: &str,
        operation: Operation,
        kind: ResourceKind,
        name: &str,
    ) -> Decision {
        let mut decision = Decision::NoRule;
        for rule in &self.rules {
            if rule.matches(principal, operation, kind, name) {
                match rule.effect {
                    Effect::Deny => return Decision::Deny,
                    Effect::Allow => decision = Decision::Allow,
                }
            }
        }
        decision
    }

    pub fn token(&self, id: u64) -> Option<&StoredToken> {
        self.tokens.get(&id)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &StoredToken> {
        self.tokens.values()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn contains_rule(&self, rule: &Rule) -> bool {
        self.rules.contains(rule)
    }

    /// Changes applied since the state was opened (replay included).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The quota set for exactly `principal` (`*`: the default), if any.
    pub fn quota(&self, principal: &str) -> Option<&Quota> {
        self.quotas.get(principal)
    }

    /// Every quota, ordered by principal (`*` first).
    pub fn quotas(&self) -> impl Iterator<Item = &Quota> {
        self.quotas.values()
    }

    pub fn quota_count(&self) -> usize {
        self.quotas.len()
    }

    /// What `principal` may use: each limit of its own quota, else the default's.
    pub fn quota_for(&self, principal: &str) -> QuotaLimits {
        let own = self.quotas.get(principal).map(|q| q.limits);
        let default = self.quotas.get(DEFAULT_QUOTA_PRINCIPAL).map(|q| q.limits);
        own.unwrap_or_default().or(default.unwrap_or_default())
    }
}

fn token_bytes(token: &StoredToken) -> u64 {
    (1 + TOKEN_FIXED_BYTES + token.principal.len() + token.description.len()) as u64
}

fn rule_bytes(rule: &Rule) -> u64 {
    (1 + RULE_FIXED_BYTES + rule.principal.len() + rule.resource.name.len()) as u64
}

fn quota_bytes(quota: &Quota) -> u64 {
    (1 + QUOTA_FIXED_BYTES + quota.principal.len()) as u64
}

impl StateMachine for Access {
    type Op = AccessOp;
    /// Whether the operation changed something (a revoked token existed, an added rule
    /// was new, a removed rule existed, a set quota differs from the one it replaced, a
    /// removed quota existed).
    type Outcome = bool;
    const NAME: &'static str = "access control";

    fn apply(&mut self, op: AccessOp) -> bool {
        self.generation += 1;
        match op {
            AccessOp::CreateToken(token) => {
                self.encoded_bytes += token_bytes(&token);
                if let Some(old) = self.tokens.insert(token.id, token) {
                    self.encoded_bytes -= token_bytes(&old);
                }
                true
            }
            AccessOp::RevokeToken { id } => match self.tokens.remove(&id) {
                Some(old) => {
                    self.encoded_bytes -= token_bytes(&old);
                    true
                }
                None => false,
            },
            AccessOp::AddRule(rule) => {
                let bytes = rule_bytes(&rule);
                let new = self.rules.insert(rule);
                if new {
                    self.encoded_bytes += bytes;
                }
                new
            }
            AccessOp::RemoveRule(rule) => {
                let existed = self.rules.remove(&rule);
                if existed {
                    self.encoded_bytes -= rule_bytes(&rule);
                }
                existed
            }
            AccessOp::SetQuota(quota) => {
                self.encoded_bytes += quota_bytes(&quota);
                let changed = self.quotas.get(&quota.principal) != Some(&quota);
                if let Some(old) = self.quotas.insert(quota.principal.clone(), quota) {
                    self.encoded_bytes -= quota_bytes(&old);
                }
                changed
            }
            AccessOp::RemoveQuota { principal } => match self.quotas.remove(&principal) {
                Some(old) => {
                    self.encoded_bytes -= quota_bytes(&old);
                    true
                }
                None => false,
            },
        }
    }

    fn snapshot(&self, out: &mut SnapshotWriter<'_>) -> Result<()> {
        for token in self.tokens.values() {
            out.push(&AccessOp::CreateToken(token.clone()))?;
        }
        for rule in &self.rules {
            out.push(&AccessOp::AddRule(rule.clone()))?;
        }
        for quota in self.quotas.values() {
            out.push(&AccessOp::SetQuota(quota.clone()))?;
        }
        Ok(())
    }

    fn snapshot_bytes(&self) -> u64 {
        self.encoded_bytes
    }
}

// ---------------------------------------------------------------------------------------
// Codec
// ---------------------------------------------------------------------------------------

/// One decoded record of the access log.
pub type AccessRecord = Record<AccessOp>;

/// Decodes the access-log record at the start of `bytes`; never panics, whatever the
/// input (a fuzz entry point).
pub fn decode_record(
    bytes: &[u8],
) -> std::result::Result<Option<(AccessRecord, usize)>, DecodeError> {
    statelog::decode_record::<AccessOp>(bytes)
}

/// Encodes `record` as stored; refuses what the decoder would refuse.
pub fn encode_record(record: &AccessRecord) -> Result<Vec<u8>> {
    statelog::encode_record(record)
}

impl LogOp for AccessOp {
    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        validate_op(self)?;
        match self {
            AccessOp::CreateToken(token) => {
                out.push(KIND_CREATE_TOKEN);
                out.extend_from_slice(&token.id.to_le_bytes());
                put_str16(out, &token.principal);
                out.extend_from_slice(&token.secret_sha256);
                out.extend_from_slice(&token.created_at_ms.to_le_bytes());
                out.extend_from_slice(&token.expires_at_ms.unwrap_or(0).to_le_bytes());
                put_str16(out, &token.description);
            }
            AccessOp::RevokeToken { id } => {
                out.push(KIND_REVOKE_TOKEN);
                out.extend_from_slice(&id.to_le_bytes());
            }
            AccessOp::AddRule(rule) => {
                out.push(KIND_ADD_RULE);
                put_rule(out, rule);
            }
            AccessOp::RemoveRule(rule) => {
                out.push(KIND_REMOVE_RULE);
                put_rule(out, rule);
            }
            AccessOp::SetQuota(quota) => {
                out.push(KIND_SET_QUOTA);
                put_str16(out, &quota.principal);
                for limit in quota.limits.fields() {
                    out.extend_from_slice(&limit.unwrap_or(0).to_le_bytes());
                }
            }
            AccessOp::RemoveQuota { principal } => {
                out.push(KIND_REMOVE_QUOTA);
                put_str16(out, principal);
            }
        }
        Ok(())
    }

    fn decode(reader: &mut OpReader<'_>) -> std::result::Result<Self, DecodeError> {
        match reader.u8("operation kind")? {
            KIND_CREATE_TOKEN => {
                let id = reader.u64("token id")?;
                let principal = reader.str16("principal", 1, ACCESS_PRINCIPAL_BYTES_MAX)?;
                let mut secret_sha256 = [0u8; SECRET_HASH_BYTES];
                for byte in &mut secret_sha256 {
                    *byte = reader.u8("secret_sha256")?;
                }
                let created_at_ms = reader.i64("created_at_ms")?;
                let expires = reader.i64("expires_at_ms")?;
                let description = reader.str16("description", 0, ACCESS_DESCRIPTION_BYTES_MAX)?;
                let token = StoredToken {
                    id,
                    principal,
                    secret_sha256,
                    created_at_ms,
                    expires_at_ms: (expires != 0).then_some(expires),
                    description,
                };
                if let Err(e) = validate_principal(&token.principal) {
                    return Err(reader.malformed(e.to_string()));
                }
                Ok(AccessOp::CreateToken(token))
            }
            KIND_REVOKE_TOKEN => Ok(AccessOp::RevokeToken {
                id: reader.u64("token id")?,
            }),
            KIND_ADD_RULE => Ok(AccessOp::AddRule(read_rule(reader)?)),
            KIND_REMOVE_RULE => Ok(AccessOp::RemoveRule(read_rule(reader)?)),
            KIND_SET_QUOTA => {
                let principal = reader.str16("principal", 1, ACCESS_PRINCIPAL_BYTES_MAX)?;
                let mut limit = |name| reader.u64(name).map(|v| (v != 0).then_some(v));
                let limits = QuotaLimits {
                    publish_bytes_per_sec: limit("publish_bytes_per_sec")?,
                    consume_bytes_per_sec: limit("consume_bytes_per_sec")?,
                    requests_per_sec: limit("requests_per_sec")?,
                    topics_max: limit("topics_max")?,
                    partitions_max: limit("partitions_max")?,
                };
                if let Err(e) = validate_principal(&principal) {
                    return Err(reader.malformed(e.to_string()));
                }
                Ok(AccessOp::SetQuota(Quota { principal, limits }))
            }
            KIND_REMOVE_QUOTA => {
                let principal = reader.str16("principal", 1, ACCESS_PRINCIPAL_BYTES_MAX)?;
                if let Err(e) = validate_principal(&principal) {
                    return Err(reader.malformed(e.to_string()));
                }
                Ok(AccessOp::RemoveQuota { principal })
            }
            kind => Err(reader.unknown_kind(kind)),
        }
    }
}

fn put_rule(out: &mut Vec<u8>, rule: &Rule) {
    put_str16(out, &rule.principal);
    out.push(rule.effect as u8);
    out.push(rule.operation.map_or(0, |op| op as u8));
    out.push(rule.resource.kind.map_or(0, |kind| kind as u8));
    out.push(if rule.resource.prefix { 2 } else { 1 });
    put_str16(out, &rule.resource.name);
}

fn read_rule(reader: &mut OpReader<'_>) -> std::result::Result<Rule, DecodeError> {
    let principal = reader.str16("principal", 1, ACCESS_PRINCIPAL_BYTES_MAX)?;
    let effect = match reader.u8("effect")? {
        1 => Effect::Allow,
        2 => Effect::Deny,
        other => return Err(reader.malformed(format!("effect {other} is not 1 or 2"))),
    };
    let operation = match reader.u8("operation")? {
        0 => None,
        code => Some(
            Operation::from_code(code)
                .ok_or_else(|| reader.malformed(format!("operation {code} is not 0..=9")))?,
        ),
    };
    let kind = match reader.u8("resource_kind")? {
        0 => None,
        code => Some(
            ResourceKind::from_code(code)
                .ok_or_else(|| reader.malformed(format!("resource kind {code} is not 0..=4")))?,
        ),
    };
    let prefix = match reader.u8("match")? {
        1 => false,
        2 => true,
        other => return Err(reader.malformed(format!("match {other} is not 1 or 2"))),
    };
    let name = reader.str16("resource name", 0, ACCESS_NAME_BYTES_MAX)?;
    let rule = Rule {
        principal,
        resource: ResourcePattern { kind, prefix, name },
        operation,
        effect,
    };
    if let Err(e) = validate_rule(&rule) {
        return Err(reader.malformed(e.to_string()));
    }
    Ok(rule)
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// A principal is 1..=255 bytes of printable ASCII without spaces (`*` alone means every
/// principal in a rule).
pub fn validate_principal(principal: &str) -> Result<()> {
    if principal.is_empty() || principal.len() > ACCESS_PRINCIPAL_BYTES_MAX {
        return Err(Error::invalid(format!(
            "a principal must be 1..={ACCESS_PRINCIPAL_BYTES_MAX} bytes, got {}",
            principal.len()
        )));
    }
    if !principal.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "principal {principal:?} may hold only printable ASCII without spaces"
        )));
    }
    Ok(())
}

fn validate_pattern(pattern: &ResourcePattern) -> Result<()> {
    if pattern.name.len() > ACCESS_NAME_BYTES_MAX {
        return Err(Error::invalid(format!(
            "a resource name in a rule is at most {ACCESS_NAME_BYTES_MAX} bytes, got {}",
            pattern.name.len()
        )));
    }
    if !pattern.prefix && pattern.name.is_empty() {
        return Err(Error::invalid(
            "an exact resource name cannot be empty (write KIND:* for every name)",
        ));
    }
    Ok(())
}

fn validate_rule(rule: &Rule) -> Result<()> {
    validate_principal(&rule.principal)?;
    validate_pattern(&rule.resource)
}

fn validate_op(op: &AccessOp) -> Result<()> {
    match op {
        AccessOp::CreateToken(token) => {
            validate_principal(&token.principal)?;
            if token.description.len() > ACCESS_DESCRIPTION_BYTES_MAX {
                return Err(Error::invalid(format!(
                    "a token description is at most {ACCESS_DESCRIPTION_BYTES_MAX} bytes, got {}",
                    token.description.len()
                )));
            }
            if token.expires_at_ms == Some(0) {
                return Err(Error::invalid("expires_at_ms 0 is reserved for never"));
            }
            Ok(())
        }
        AccessOp::RevokeToken { .. } => Ok(()),
        AccessOp::AddRule(rule) | AccessOp::RemoveRule(rule) => validate_rule(rule),
        AccessOp::SetQuota(quota) => {
            validate_principal(&quota.principal)?;
            if quota.limits.fields().contains(&Some(0)) {
                return Err(Error::invalid(
                    "a quota limit of 0 is stored as no limit: leave the limit out instead",
                ));
            }
            Ok(())
        }
        AccessOp::RemoveQuota { principal } => validate_principal(principal),
    }
}

// ---------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------

/// The access state on its state log.
pub type AccessLog = StateLog<Access>;

/// Opens (creating it if needed) the access state of the data directory `data_dir`.
pub fn open(fs: Arc<dyn FileSystem>, data_dir: &Path, clock: Arc<dyn Clock>) -> Result<AccessLog> {
    StateLog::open(
        fs,
        &data_dir.join(ACCESS_STATE_PATH),
        Access::default(),
        clock,
        StateLogOptions::default(),
    )
}

#[cfg(test)]
mod tests;
