//! Authentication and authorization (tidelogd `--auth`).
//!
//! - [`rpcs`]: THE table of what each RPC needs (operation x resource kind).
//! - [`layer`]: the tower layer in front of every service: resolves the caller's
//!   principal from the `authorization` metadata (UNAUTHENTICATED when it cannot), puts a
//!   [`Caller`] (principal + the call's table row) into the request's extensions.
//! - [`Auth::authorize`]: the per-RPC check every handler calls with the resources the
//!   request names; PERMISSION_DENIED names the operation and the resource, and runs
//!   before any lookup, so it never tells whether the resource exists.
//! - [`Auth::guard`]: wraps a server stream so it re-checks its token and rules every
//!   [`RECHECK_INTERVAL`] and ends when they no longer hold.
//! - [`service`]: the `Access` gRPC service (tokens, rules and quotas).
//! - [`quota`]: the pacing of a principal's rates ([`Auth::charge`], [`Auth::throttle`])
//!   and its topic and partition limits ([`Auth::limits_of`]).
//!
//! With auth off, [`Auth`] is empty: the layer passes calls through after one branch,
//! `authorize` returns at once, and streams are not wrapped.
//!
//! Tokens: 8 random bytes of id and 32 of secret from the OS (getrandom); the broker
//! stores the SHA-256 of the secret (tidelog_storage::access) and compares in constant
//! time. The id is public; the secret is shown once.

pub mod audit;
pub mod layer;
pub mod quota;
pub mod rpcs;
pub mod service;

use std::future::Future as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tidelog_storage::access::token::{self, TokenText};
use tidelog_storage::access::{
    self, AccessLog, AccessOp, Decision, Effect, Operation, QuotaLimits, ResourceKind,
    ResourcePattern, Rule, StoredToken,
};
use tidelog_storage::{Error, OsFs, SystemClock};
use tokio_stream::Stream;
use tonic::{Request, Status};

use audit::{AuditLine, AuditSink, EVENT_ACCESS, EVENT_ADMIN, EVENT_REFUSED};
use quota::{Pacer, QuotaKind};
use rpcs::Rpc;

/// How often an open stream checks again that its token and rules still allow it.
pub const RECHECK_INTERVAL: Duration = Duration::from_millis(250);

/// The principal the bootstrap token authenticates.
pub const BOOTSTRAP_PRINCIPAL: &str = "admin";

/// Who is calling, resolved by [`layer`]; in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<str>,
    /// The token that authenticated the call; `None` when the principal is the
    /// subject of the connection's verified client certificate (mutual TLS).
    pub token_id: Option<u64>,
    pub expires_at_ms: Option<i64>,
    /// The call's row of [`rpcs::RPCS`]; `None` for calls that need no rule.
    pub rpc: Option<&'static Rpc>,
}

/// A resource a request names.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub kind: ResourceKind,
    pub name: &'a str,
}

impl<'a> Target<'a> {
    pub fn topic(name: &'a str) -> Self {
        Target {
            kind: ResourceKind::Topic,
            name,
        }
    }
    pub fn group(name: &'a str) -> Self {
        Target {
            kind: ResourceKind::Group,
            name,
        }
    }
    pub fn queue(name: &'a str) -> Self {
        Target {
            kind: ResourceKind::Queue,
            name,
        }
    }
    pub fn cluster() -> Self {
        Target {
            kind: ResourceKind::Cluster,
            name: "",
        }
    }
}

/// Authentication and authorization; empty when `--auth` is off.
#[derive(Debug, Default)]
pub struct Auth {
    enabled: Option<AccessLog>,
    /// Where audit events are counted (`tidelog_audit_events{result}`).
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The paces of principals with rate quotas.
    pacer: Pacer,
    /// Where audit lines go.
    audit: AuditSink,
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn storage_status(error: &Error) -> Status {
    match error {
        Error::InvalidArgument(message) => Status::invalid_argument(message.clone()),
        other => Status::unavailable(format!(
            "the access state cannot be written: {other}; restart tidelogd once the disk is fixed"
        )),
    }
}

impl Auth {
    /// Auth off.
    pub fn disabled() -> Self {
        Auth::default()
    }

    /// Auth on: opens the access state in `data_dir` (blocking: file I/O, fsyncs). When
    /// it holds no token, creates the bootstrap admin token and writes it to
    /// `bootstrap_file` (created new, mode 0600).
    pub fn open(data_dir: &Path, bootstrap_file: &Path) -> Result<Auth, String> {
        let log = access::open(Arc::new(OsFs), data_dir, Arc::new(SystemClock)).map_err(|e| {
            format!(
                "cannot open the access state in {}: {e}",
                data_dir.display()
            )
        })?;
        let auth = Auth {
            enabled: Some(log),
            metrics: None,
            pacer: Pacer::default(),
            audit: AuditSink::log(),
        };
        if auth
            .log()
            .is_some_and(|log| log.read(|a| a.token_count() == 0))
        {
            auth.bootstrap(bootstrap_file)?;
        }
        Ok(auth)
    }

    fn bootstrap(&self, file: &Path) -> Result<(), String> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let (text, info) = self
            .create_token(BOOTSTRAP_PRINCIPAL, None, "bootstrap admin token".into())
            .map_err(|s| format!("cannot create the bootstrap token: {}", s.message()))?;
        let rule = Rule {
            principal: BOOTSTRAP_PRINCIPAL.into(),
            resource: ResourcePattern::parse("*").expect("valid"),
            operation: None,
            effect: Effect::Allow,
        };
        self.change(AccessOp::AddRule(rule))
            .map_err(|s| format!("cannot add the bootstrap rule: {}", s.message()))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| {
                format!(
                    "cannot write the bootstrap admin token to {} ({e}); remove the file or \
                     pass another --auth-bootstrap-token-file, then start again",
                    file.display()
                )
            })?;
        out.write_all(format!("{text}\n").as_bytes())
            .and_then(|()| out.sync_all())
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
        tracing::warn!(
            file = %file.display(),
            token_id = %token::format_id(info.id),
            principal = BOOTSTRAP_PRINCIPAL,
            "auth is on and no token existed: wrote a bootstrap admin token; create your own \
             tokens and rules with it (tidelog auth, tidelog acl), then revoke it"
        );
        Ok(())
    }

    /// Counts audit events in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes audit lines to `sink` (`--audit-log`) rather than to the log.
    pub fn with_audit(mut self, sink: AuditSink) -> Self {
        self.audit = sink;
        self
    }

    /// Opens the audit file again (SIGHUP).
    pub fn reopen_audit(&self) -> Result<(), String> {
        self.audit.reopen()
    }

    /// One audit line for a call the layer refused (UNAUTHENTICATED) on `path`.
    pub fn audit_unauthenticated(&self, path: &str, status: &Status) {
        self.audit(
            AuditLine {
                event: EVENT_REFUSED,
                principal: "-",
                rpc: path.strip_prefix("/tidelog.v1.").unwrap_or(path),
                operation: "-",
                resource: "-",
                result: "",
                detail: status.message(),
            },
            "UNAUTHENTICATED",
        );
    }

    /// Counts `line` by its result and writes it where audit lines go: the one path
    /// of every audit line.
    fn audit(&self, line: AuditLine<'_>, result: &'static str) {
        self.count_audit(result);
        self.audit.write(&AuditLine { result, ..line }, now_ms());
    }

    fn count_audit(&self, result: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.audit_event(result);
        }
    }

    /// One audit line for a refused call.
    pub fn audit_denied(&self, caller: Option<&Caller>, status: &Status) {
        self.audit(
            AuditLine {
                event: EVENT_REFUSED,
                principal: caller.map_or("-", |c| &*c.principal),
                rpc: caller.and_then(|c| c.rpc).map_or("-", Rpc::name),
                operation: "-",
                resource: "-",
                result: "",
                detail: status.message(),
            },
            tidelog_proto::code_name(status.code()),
        );
    }

    /// One audit line for a change of the access state by `caller`.
    pub fn audit_change(
        &self,
        caller: Option<&Caller>,
        change: &str,
        result: &Result<bool, Status>,
    ) {
        let outcome = match result {
            Ok(true) => "OK",
            Ok(false) => "UNCHANGED",
            Err(status) => tidelog_proto::code_name(status.code()),
        };
        self.audit(
            AuditLine {
                event: EVENT_ACCESS,
                principal: caller.map_or("-", |c| &*c.principal),
                rpc: caller.and_then(|c| c.rpc).map_or("-", Rpc::name),
                operation: "admin",
                resource: "cluster",
                result: "",
                detail: change,
            },
            outcome,
        );
    }

    /// One audit line for an admin change (a topic, group or queue created, altered,
    /// deleted or reset; see [`rpcs::Rpc::is_change`]) once its answer is known.
    pub fn audit_admin_change(
        &self,
        principal: &str,
        rpc: &Rpc,
        resources: &[String],
        result: &'static str,
    ) {
        let resource = if resources.is_empty() {
            "-".to_string()
        } else {
            resources.join(",")
        };
        self.audit(
            AuditLine {
                event: EVENT_ADMIN,
                principal,
                rpc: rpc.name(),
                operation: rpc.change_operation().map_or("-", |op| op.name()),
                resource: &resource,
                result: "",
                detail: "",
            },
            result,
        );
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.is_some()
    }

    /// The limits that apply to `principal` (its own, else the default's, limit by
    /// limit) and the access state's generation; `None` when auth is off or no quota
    /// exists.
    pub fn limits_of(&self, principal: &str) -> Option<(u64, QuotaLimits)> {
        self.enabled
            .as_ref()?
            .read(|a| (a.quota_count() > 0).then(|| (a.generation(), a.quota_for(principal))))
    }

    /// Charges `units` (computed only when the caller has a `kind` rate) to the
    /// caller's quota; returns how long the caller must wait first (zero: not at all),
    /// counted in the throttle metrics. See [`quota`].
    pub fn charge(
        &self,
        caller: Option<&Caller>,
        kind: QuotaKind,
        units: impl FnOnce() -> usize,
    ) -> Duration {
        self.charged(caller, kind, units).wait
    }

    /// [`Auth::charge`], with what a wait needs to follow a change of the quota.
    pub(crate) fn charged(
        &self,
        caller: Option<&Caller>,
        kind: QuotaKind,
        units: impl FnOnce() -> usize,
    ) -> Charged {
        let none = Charged {
            wait: Duration::ZERO,
            generation: 0,
            units: 0,
        };
        let Some(caller) = caller else {
            return none;
        };
        let Some((generation, limits)) = self.limits_of(&caller.principal) else {
            return none;
        };
        if !kind.is_limited(&limits) {
            return none;
        }
        let units = units() as u64;
        let wait = self.pacer.charge(
            &caller.principal,
            generation,
            limits,
            kind,
            units,
            std::time::Instant::now(),
        );
        if !wait.is_zero()
            && let Some(metrics) = &self.metrics
        {
            metrics.quota_throttled(&caller.principal, kind.name(), wait);
        }
        Charged {
            wait,
            generation,
            units,
        }
    }

    /// [`Auth::charge`], then the wait. A quota changed or removed while it waits
    /// applies within [`RECHECK_INTERVAL`]: the units are charged again under the new
    /// limits (whose paces start afresh), and the wait becomes what those ask.
    pub async fn throttle(
        &self,
        caller: Option<&Caller>,
        kind: QuotaKind,
        units: impl FnOnce() -> usize,
    ) {
        let charged = self.charged(caller, kind, units);
        self.wait_charged(caller, kind, charged).await;
    }

    /// The wait of a [`Auth::charged`] charge, following changes of the quota (see
    /// [`Auth::throttle`]).
    pub(crate) async fn wait_charged(
        &self,
        caller: Option<&Caller>,
        kind: QuotaKind,
        mut charged: Charged,
    ) {
        let mut until = tokio::time::Instant::now() + charged.wait;
        while let Some(left) = until
            .checked_duration_since(tokio::time::Instant::now())
            .filter(|left| !left.is_zero())
        {
            tokio::time::sleep(left.min(RECHECK_INTERVAL)).await;
            let now_generation = caller
                .and_then(|c| self.limits_of(&c.principal))
                .map_or(0, |(generation, _)| generation);
            if now_generation != charged.generation {
                let units = charged.units;
                charged = self.charged(caller, kind, || units as usize);
                until = tokio::time::Instant::now() + charged.wait;
            }
        }
    }

    /// Held while a creation is checked against a principal's topics_max or
    /// partitions_max and made.
    pub async fn lock_creations(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.pacer.lock_creations().await
    }

    /// Waits out the caller's publish-bytes quota for `request` (before it is
    /// appended).
    pub async fn throttle_publish<T: prost::Message>(&self, request: &Request<T>) {
        self.throttle_request(request, QuotaKind::PublishBytes, || {
            request.get_ref().encoded_len()
        })
        .await;
    }

    /// Waits out the caller's consume-bytes quota for a unary answer that carries
    /// messages (before it is sent); an error answer is not charged.
    pub async fn throttle_answer<R, T: prost::Message>(
        &self,
        request: &Request<R>,
        answer: &Result<T, Status>,
    ) {
        if let Ok(answer) = answer {
            self.throttle_request(request, QuotaKind::ConsumeBytes, || answer.encoded_len())
                .await;
        }
    }

    /// [`Auth::throttle`] for the caller of `request`.
    pub async fn throttle_request<T>(
        &self,
        request: &Request<T>,
        kind: QuotaKind,
        units: impl FnOnce() -> usize,
    ) {
        self.throttle(request.extensions().get::<Caller>(), kind, units)
            .await;
    }

    pub fn log(&self) -> Option<&AccessLog> {
        self.enabled.as_ref()
    }

    /// Resolves the caller's principal from an `authorization` metadata value
    /// (`None`: missing) or else from the connection's verified client certificate
    /// (`certificate`: its subject CN, mutual TLS). A token, when sent, wins: a bad
    /// token is UNAUTHENTICATED even on a connection with a certificate.
    pub fn authenticate(
        &self,
        value: Option<&[u8]>,
        certificate: Option<&Arc<str>>,
        rpc: Option<&'static Rpc>,
    ) -> Result<Caller, Status> {
        let Some(log) = &self.enabled else {
            return Err(Status::internal("authenticate called with auth off"));
        };
        let Some(value) = value else {
            if let Some(principal) = certificate {
                access::validate_principal(principal).map_err(|e| {
                    Status::unauthenticated(format!(
                        "the client certificate's subject CN is not a usable principal ({e}); \
                         issue a certificate whose CN is 1-255 printable ASCII characters \
                         without spaces, or send a token"
                    ))
                })?;
                return Ok(Caller {
                    principal: principal.clone(),
                    token_id: None,
                    expires_at_ms: None,
                    rpc,
                });
            }
            return Err(Status::unauthenticated(
                "this broker requires a token (tidelogd --auth): pass --token or set \
                 TIDELOG_TOKEN, or send the metadata authorization: Bearer <token> (or, \
                 when tidelogd has --tls-client-ca, connect with a client certificate)",
            ));
        };
        let parsed = token::parse_authorization(value).map_err(|e| {
            Status::unauthenticated(format!("{e}; tokens look like tidelog_<id>_<secret>"))
        })?;
        let now = now_ms();
        log.read(|a| {
            let stored = a.token(parsed.id).ok_or_else(|| unknown_token(parsed.id))?;
            verify(stored, &parsed, now)?;
            Ok(Caller {
                principal: stored.principal.as_str().into(),
                token_id: Some(stored.id),
                expires_at_ms: stored.expires_at_ms,
                rpc,
            })
        })
    }

    /// Checks that the caller of `request` may do its RPC's operation on every target.
    /// Returns at once when auth is off.
    pub fn authorize<T>(&self, request: &Request<T>, targets: &[Target<'_>]) -> Result<(), Status> {
        if let Some(note) = request.extensions().get::<AuditNote>() {
            note.record(targets);
        }
        if self.enabled.is_none() {
            return Ok(());
        }
        self.check(request.extensions().get::<Caller>(), targets)
    }

    /// [`Auth::authorize`] for a caller taken out of its request (a stream's items).
    pub fn check(&self, caller: Option<&Caller>, targets: &[Target<'_>]) -> Result<(), Status> {
        let result = self.check_quietly(caller, targets);
        if let Err(status) = &result {
            self.audit_denied(caller, status);
        }
        result
    }

    fn check_quietly(&self, caller: Option<&Caller>, targets: &[Target<'_>]) -> Result<(), Status> {
        let Some(log) = &self.enabled else {
            return Ok(());
        };
        let Some(caller) = caller else {
            return Err(Status::permission_denied(
                "the call was not authenticated by the auth layer",
            ));
        };
        let now = now_ms();
        log.read(|a| {
            // The token may have been revoked or expired since the call started. (A
            // certificate was checked in the handshake; its rules are checked below.)
            if let Some(token_id) = caller.token_id {
                if a.token(token_id).is_none() {
                    return Err(unknown_token(token_id));
                }
                if let Some(expired) = caller.expires_at_ms.filter(|at| *at <= now) {
                    return Err(expired_token(token_id, expired));
                }
            }
            let rpc = caller
                .rpc
                .ok_or_else(|| Status::permission_denied("no RPC to authorize"))?;
            for target in targets {
                let operation = rpc.operation_on(target.kind).ok_or_else(|| {
                    Status::internal(format!(
                        "{} names a {} but the RPC table has no operation for it",
                        rpc.name(),
                        target.kind.name()
                    ))
                })?;
                if a.decide(&caller.principal, operation, target.kind, target.name)
                    != Decision::Allow
                {
                    return Err(denied(&caller.principal, operation, *target, rpc));
                }
            }
            Ok(())
        })
    }

    /// Whether the caller may see `target` (for list RPCs, which leave out what not).
    pub fn may<T>(&self, request: &Request<T>, target: Target<'_>) -> bool {
        self.may_caller(request.extensions().get::<Caller>(), target)
    }

    /// [`Auth::may`] for a caller taken out of its request. Writes no audit line: a
    /// list leaving something out is not a refused call.
    pub fn may_caller(&self, caller: Option<&Caller>, target: Target<'_>) -> bool {
        self.enabled.is_none() || self.check_quietly(caller, &[target]).is_ok()
    }

    /// Whether the caller may do its RPC's operation on topic `name`: the filter of
    /// topics that come from a pattern or from a group's or queue's state, which a
    /// description leaves out silently when the caller may not (see [`rpcs::RPCS`]).
    pub fn may_see_topic(&self, caller: Option<&Caller>, name: &str) -> bool {
        self.may_caller(caller, Target::topic(name))
    }

    /// [`Auth::check`] against `rpc`, a stricter row than the call's own, for a part of
    /// the request that needs more (see [`rpcs::LIST_DELIVERIES_BY_HEADER`]).
    pub fn check_as(
        &self,
        caller: Option<&Caller>,
        rpc: &'static Rpc,
        targets: &[Target<'_>],
    ) -> Result<(), Status> {
        if self.enabled.is_none() {
            return Ok(());
        }
        let caller = caller.map(|c| Caller {
            rpc: Some(rpc),
            ..c.clone()
        });
        self.check(caller.as_ref(), targets)
    }

    /// Checks that `caller` (of CreateQueue or AlterQueue) may have its queue's dead
    /// letters written to `topic`: publish on it, and create too when it does not
    /// `exist` yet (the first letter creates it). See [`rpcs::DEAD_LETTER_TOPIC`].
    pub fn check_dead_letter_topic(
        &self,
        caller: Option<&Caller>,
        topic: &str,
        exists: bool,
    ) -> Result<(), Status> {
        if self.enabled.is_none() {
            return Ok(());
        }
        let path = caller.and_then(|c| c.rpc).map_or("-", |r| r.path);
        let rows: Vec<&'static Rpc> = rpcs::DEAD_LETTER_TOPIC
            .iter()
            .filter(|row| row.path == path)
            .filter(|row| {
                !exists || row.operation_on(ResourceKind::Topic) != Some(Operation::Create)
            })
            .collect();
        if rows.is_empty() {
            // Never passes silently: an RPC without rows is a broker bug.
            return Err(Status::internal(format!(
                "{path} checked a dead-letter topic but the RPC table has no rows for it"
            )));
        }
        for row in rows {
            self.check_as(caller, row, &[Target::topic(topic)])
                .map_err(|status| {
                    if status.code() != tonic::Code::PermissionDenied {
                        return status;
                    }
                    Status::permission_denied(format!(
                        "{}; or name another dead-letter topic (dead_letter_topic): the \
                         queue's dead letters go there, by default to <topic>.dlq \
                         (<queue>.dlq for a topic pattern)",
                        status.message()
                    ))
                })?;
        }
        Ok(())
    }

    /// [`Auth::check`] for a resource the broker found rather than one the request
    /// names (the topic of a queue): a refusal says `what` ("the topic of queue q")
    /// instead of the name, so it tells nothing the caller may not describe.
    pub fn check_found(
        &self,
        caller: Option<&Caller>,
        target: Target<'_>,
        what: &str,
    ) -> Result<(), Status> {
        if self.may_caller(caller, target) {
            return Ok(());
        }
        let (principal, rpc) = match caller {
            Some(c) => (&*c.principal, c.rpc),
            None => ("-", None),
        };
        let operation = rpc
            .and_then(|r| r.operation_on(target.kind))
            .map_or("-", Operation::name);
        let status = Status::permission_denied(format!(
            "principal {principal} may not {operation} {what} ({}); an admin can allow it: \
             tidelog acl add --principal {principal} --operation {operation} --resource \
             {}:<its name>",
            rpc.map_or("-", Rpc::name),
            target.kind.name()
        ));
        self.audit_denied(caller, &status);
        Err(status)
    }

    /// Wraps a server stream so it ends with the status of the first failed re-check
    /// (token revoked or expired, a rule changed) within [`RECHECK_INTERVAL`]. With
    /// auth off the stream is returned as it is.
    ///
    /// The caller's consume-bytes quota paces the stream too: after a delivery over
    /// the rate, the next one waits.
    pub fn guard<S, T>(
        self: &Arc<Self>,
        caller: Option<Caller>,
        targets: Vec<(ResourceKind, String)>,
        stream: S,
    ) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: prost::Message + Send + 'static,
    {
        self.guard_with(caller, targets, None, stream)
    }

    /// [`Auth::guard`] that also re-checks `stricter`: resources under a stricter row
    /// than the call's own, for a part of the request that needs more (a group
    /// member's auto-commit, [`rpcs::SUBSCRIBE_AUTO_COMMIT`]), as [`Auth::check_as`].
    pub fn guard_with<S, T>(
        self: &Arc<Self>,
        caller: Option<Caller>,
        targets: Vec<(ResourceKind, String)>,
        stricter: Option<(&'static Rpc, Vec<(ResourceKind, String)>)>,
        stream: S,
    ) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
    where
        S: Stream<Item = Result<T, Status>> + Send + 'static,
        T: prost::Message + Send + 'static,
    {
        if self.enabled.is_none() {
            return Box::pin(stream);
        }
        let mut interval = tokio::time::interval(RECHECK_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Box::pin(Guarded {
            auth: self.clone(),
            caller,
            targets,
            stricter,
            interval,
            inner: Box::pin(stream),
            wait: None,
            done: false,
        })
    }

    /// Appends one change durably (blocking: an fdatasync).
    pub fn change(&self, op: AccessOp) -> Result<bool, Status> {
        let log = self.log().ok_or_else(auth_off)?;
        log.append_one(op).map_err(|e| storage_status(&e))
    }

    /// Creates a token; returns its text (shown once) and what is stored.
    pub fn create_token(
        &self,
        principal: &str,
        expires_at_ms: Option<i64>,
        description: String,
    ) -> Result<(String, StoredToken), Status> {
        let log = self.log().ok_or_else(auth_off)?;
        access::validate_principal(principal).map_err(|e| storage_status(&e))?;
        if log.read(|a| a.token_count()) >= tidelog_storage::limits::ACCESS_TOKENS_MAX {
            return Err(Status::resource_exhausted(format!(
                "the broker holds {} tokens, its limit; revoke unused ones first",
                tidelog_storage::limits::ACCESS_TOKENS_MAX
            )));
        }
        let mut id = [0u8; 8];
        let mut secret = [0u8; token::TOKEN_SECRET_BYTES];
        getrandom::fill(&mut id)
            .and_then(|()| getrandom::fill(&mut secret))
            .map_err(|e| Status::internal(format!("the OS gave no random bytes: {e}")))?;
        let text = TokenText {
            id: u64::from_le_bytes(id),
            secret,
        };
        let stored = StoredToken {
            id: text.id,
            principal: principal.to_string(),
            secret_sha256: sha256(&text.secret),
            created_at_ms: now_ms(),
            expires_at_ms,
            description,
        };
        self.change(AccessOp::CreateToken(stored.clone()))?;
        Ok((text.to_text(), stored))
    }
}

pub use audit::AUDIT_TARGET;

/// One charge of a quota: the wait it asks, and the quota's generation and the units
/// charged, to charge them again if the quota changes during the wait.
pub(crate) struct Charged {
    pub(crate) wait: Duration,
    generation: u64,
    units: u64,
}

/// The resources an admin change named, filled in by [`Auth::authorize`] (which every
/// handler calls with them) for the audit line the layer writes once the call is
/// answered. Only change RPCs carry one.
#[derive(Debug, Clone, Default)]
pub struct AuditNote(Arc<std::sync::Mutex<Vec<String>>>);

impl AuditNote {
    fn record(&self, targets: &[Target<'_>]) {
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for target in targets {
            names.push(format!("{}:{}", target.kind.name(), target.name));
        }
    }

    /// The resources recorded.
    pub fn resources(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn auth_off() -> Status {
    Status::failed_precondition(
        "authentication is off on this broker: start tidelogd with --auth to manage tokens and ACLs",
    )
}

fn verify(stored: &StoredToken, parsed: &TokenText, now: i64) -> Result<(), Status> {
    let hash = sha256(&parsed.secret);
    if !bool::from(hash.ct_eq(&stored.secret_sha256)) {
        // Same message as an unknown id: a wrong secret tells nothing more.
        return Err(unknown_token(parsed.id));
    }
    if let Some(at) = stored.expires_at_ms.filter(|at| *at <= now) {
        return Err(expired_token(stored.id, at));
    }
    Ok(())
}

fn unknown_token(id: u64) -> Status {
    Status::unauthenticated(format!(
        "token {} is not valid: unknown, revoked, or its secret is wrong; ask an admin for a \
         new one (tidelog auth token create)",
        token::format_id(id)
    ))
}

fn expired_token(id: u64, at_ms: i64) -> Status {
    Status::unauthenticated(format!(
        "token {} expired at {}; ask an admin for a new one (tidelog auth token create)",
        token::format_id(id),
        tidelog_storage::datetime::format_datetime_ms(at_ms)
    ))
}

fn denied(principal: &str, operation: Operation, target: Target<'_>, rpc: &Rpc) -> Status {
    let resource = if target.kind == ResourceKind::Cluster {
        "cluster".to_string()
    } else {
        format!("{}:{}", target.kind.name(), target.name)
    };
    Status::permission_denied(format!(
        "principal {principal} may not {operation} {resource} ({}); an admin can allow it: \
         tidelog acl add --principal {principal} --operation {operation} --resource {resource}",
        rpc.name()
    ))
}

/// A server stream that re-checks its caller every [`RECHECK_INTERVAL`].
struct Guarded<T> {
    auth: Arc<Auth>,
    caller: Option<Caller>,
    targets: Vec<(ResourceKind, String)>,
    /// Re-checked against a stricter row ([`Auth::guard_with`]).
    stricter: Option<(&'static Rpc, Vec<(ResourceKind, String)>)>,
    interval: tokio::time::Interval,
    inner: Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>,
    /// Set after a delivery over the caller's consume rate: the next one waits for it.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl<T> Guarded<T> {
    fn recheck(&self) -> Result<(), Status> {
        fn as_targets(targets: &[(ResourceKind, String)]) -> Vec<Target<'_>> {
            targets
                .iter()
                .map(|(kind, name)| Target { kind: *kind, name })
                .collect()
        }
        self.auth
            .check(self.caller.as_ref(), &as_targets(&self.targets))?;
        if let Some((rpc, targets)) = &self.stricter {
            self.auth
                .check_as(self.caller.as_ref(), rpc, &as_targets(targets))?;
        }
        Ok(())
    }
}

impl<T: prost::Message> Stream for Guarded<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        while self.interval.poll_tick(cx).is_ready() {
            if let Err(status) = self.recheck() {
                self.done = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        if let Some(wait) = self.wait.as_mut() {
            std::task::ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(item))) = &next {
            let wait = self
                .auth
                .charge(self.caller.as_ref(), QuotaKind::ConsumeBytes, || {
                    item.encoded_len()
                });
            if !wait.is_zero() {
                self.wait = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        next
    }
}
