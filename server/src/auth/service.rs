//! The `Access` gRPC service: tokens and authorization rules. Changes are durable
//! (an fdatasync on the blocking pool) before the call answers.

use std::sync::Arc;

use tidelog_proto::v1::access_server::Access;
use tidelog_proto::v1::{
    self as pb, AclRule, AddAclRequest, AddAclResponse, CreateTokenRequest, CreateTokenResponse,
    ListAclsRequest, ListAclsResponse, ListQuotasRequest, ListQuotasResponse, ListTokensRequest,
    ListTokensResponse, RemoveAclRequest, RemoveAclResponse, RemoveQuotaRequest,
    RemoveQuotaResponse, RevokeTokenRequest, RevokeTokenResponse, SetQuotaRequest,
    SetQuotaResponse, TokenInfo, WhoAmIRequest, WhoAmIResponse,
};
use tidelog_storage::access::token;
use tidelog_storage::access::{
    AccessOp, DEFAULT_QUOTA_PRINCIPAL, Effect, Operation, Quota, QuotaLimits, ResourcePattern,
    Rule, StoredToken,
};
use tidelog_storage::limits::{ACCESS_DESCRIPTION_BYTES_MAX, ACCESS_QUOTAS_MAX, ACCESS_RULES_MAX};
use tonic::{Request, Response, Status};

use super::{Auth, Caller, Target, now_ms};

#[derive(Debug)]
pub struct AccessService {
    auth: Arc<Auth>,
}

impl AccessService {
    pub fn new(auth: Arc<Auth>) -> Self {
        AccessService { auth }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Auth) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let auth = self.auth.clone();
        tokio::task::spawn_blocking(move || f(&auth))
            .await
            .map_err(|e| Status::internal(format!("the access change task failed: {e}")))?
    }
}

fn token_info(token: &StoredToken) -> TokenInfo {
    TokenInfo {
        id: token::format_id(token.id),
        principal: token.principal.clone(),
        created_at_ms: token.created_at_ms,
        expires_at_ms: token.expires_at_ms.unwrap_or(0),
        description: token.description.clone(),
    }
}

fn rule_to_proto(rule: &Rule) -> AclRule {
    AclRule {
        principal: rule.principal.clone(),
        resource: rule.resource.to_string(),
        operation: rule.operation.map_or("*", Operation::name).to_string(),
        effect: rule.effect.name().to_string(),
    }
}

/// Reads a rule as the CLI and other clients send it; errors name the field.
pub fn rule_from_proto(rule: Option<AclRule>) -> Result<Rule, Status> {
    let rule = rule.ok_or_else(|| Status::invalid_argument("rule is missing"))?;
    let resource = ResourcePattern::parse(&rule.resource)
        .map_err(|e| Status::invalid_argument(format!("rule.resource: {e}")))?;
    let operation = match rule.operation.as_str() {
        "*" => None,
        name => Some(Operation::parse(name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "rule.operation {name:?} is not * or one of publish, consume, create, alter, \
                 delete, describe, group-commit, group-reset, admin"
            ))
        })?),
    };
    let effect = match rule.effect.as_str() {
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        other => {
            return Err(Status::invalid_argument(format!(
                "rule.effect {other:?} is not allow or deny"
            )));
        }
    };
    tidelog_storage::access::validate_principal(&rule.principal)
        .map_err(|e| Status::invalid_argument(format!("rule.principal: {e}")))?;
    Ok(Rule {
        principal: rule.principal,
        resource,
        operation,
        effect,
    })
}

/// The stored form of limits as the API shows them (unset = no limit).
pub fn limits_to_proto(limits: &QuotaLimits) -> pb::QuotaLimits {
    pb::QuotaLimits {
        publish_bytes_per_sec: limits.publish_bytes_per_sec,
        consume_bytes_per_sec: limits.consume_bytes_per_sec,
        requests_per_sec: limits.requests_per_sec,
        topics_max: limits.topics_max,
        partitions_max: limits.partitions_max,
    }
}

fn quota_to_proto(quota: &Quota) -> pb::Quota {
    pb::Quota {
        principal: quota.principal.clone(),
        limits: Some(limits_to_proto(&quota.limits)),
    }
}

/// `current` changed by a SetQuota request: an unset limit keeps its value, 0 removes
/// the limit.
pub fn merge_limits(current: QuotaLimits, change: &pb::QuotaLimits) -> QuotaLimits {
    let merge = |now: Option<u64>, change: Option<u64>| match change {
        None => now,
        Some(0) => None,
        Some(value) => Some(value),
    };
    QuotaLimits {
        publish_bytes_per_sec: merge(current.publish_bytes_per_sec, change.publish_bytes_per_sec),
        consume_bytes_per_sec: merge(current.consume_bytes_per_sec, change.consume_bytes_per_sec),
        requests_per_sec: merge(current.requests_per_sec, change.requests_per_sec),
        topics_max: merge(current.topics_max, change.topics_max),
        partitions_max: merge(current.partitions_max, change.partitions_max),
    }
}

fn quota_principal(principal: &str) -> Result<(), Status> {
    if principal == DEFAULT_QUOTA_PRINCIPAL {
        return Ok(());
    }
    tidelog_storage::access::validate_principal(principal).map_err(|e| {
        Status::invalid_argument(format!("principal: {e} (or * for the default quota)"))
    })
}

fn describe_limits(limits: &QuotaLimits) -> String {
    let parts: Vec<String> = [
        ("publish_bytes_per_sec", limits.publish_bytes_per_sec),
        ("consume_bytes_per_sec", limits.consume_bytes_per_sec),
        ("requests_per_sec", limits.requests_per_sec),
        ("topics_max", limits.topics_max),
        ("partitions_max", limits.partitions_max),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
    .collect();
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join(" ")
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        if request.description.len() > ACCESS_DESCRIPTION_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "description is {} bytes, over the limit of {ACCESS_DESCRIPTION_BYTES_MAX}",
                request.description.len()
            )));
        }
        let expires_at_ms = match request.ttl_ms {
            0 => None,
            ttl => Some(now_ms().saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))),
        };
        let principal = request.principal.clone();
        let created = self
            .blocking(move |auth| {
                auth.create_token(&request.principal, expires_at_ms, request.description)
            })
            .await;
        self.auth.audit_change(
            caller.as_ref(),
            &format!(
                "create token for {principal} ({})",
                created
                    .as_ref()
                    .map_or("-".to_string(), |(_, t)| token::format_id(t.id))
            ),
            &created.as_ref().map(|_| true).map_err(Clone::clone),
        );
        let (text, stored) = created?;
        Ok(Response::new(CreateTokenResponse {
            token: text,
            info: Some(token_info(&stored)),
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let log = self.auth.log().ok_or_else(super::auth_off)?;
        let tokens = log.read(|a| a.tokens().map(token_info).collect());
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let caller = request.extensions().get::<Caller>().cloned();
        let text = request.into_inner().id;
        let id = token::parse_id(&text)
            .or_else(|_| token::parse_token(text.as_bytes()).map(|t| t.id))
            .map_err(|_| {
                Status::invalid_argument(
                    "id must be a token id (16 hex digits, as tidelog auth token list shows) \
                     or a whole token",
                )
            })?;
        let existed = self
            .blocking(move |auth| auth.change(AccessOp::RevokeToken { id }))
            .await;
        self.auth.audit_change(
            caller.as_ref(),
            &format!("revoke token {}", token::format_id(id)),
            &existed,
        );
        let existed = existed?;
        if !existed {
            return Err(Status::not_found(format!(
                "no token has id {}",
                token::format_id(id)
            )));
        }
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn list_acls(
        &self,
        request: Request<ListAclsRequest>,
    ) -> Result<Response<ListAclsResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let log = self.auth.log().ok_or_else(super::auth_off)?;
        let rules = log.read(|a| a.rules().map(rule_to_proto).collect());
        Ok(Response::new(ListAclsResponse { rules }))
    }

    async fn add_acl(
        &self,
        request: Request<AddAclRequest>,
    ) -> Result<Response<AddAclResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let caller = request.extensions().get::<Caller>().cloned();
        let rule = rule_from_proto(request.into_inner().rule)?;
        let shown = rule_to_proto(&rule);
        let added = self
            .blocking(move |auth| {
                let log = auth.log().ok_or_else(super::auth_off)?;
                if log.read(|a| a.rule_count() >= ACCESS_RULES_MAX && !a.contains_rule(&rule)) {
                    return Err(Status::resource_exhausted(format!(
                        "the broker holds {ACCESS_RULES_MAX} rules, its limit; use prefixes \
                         or remove unused rules"
                    )));
                }
                auth.change(AccessOp::AddRule(rule))
            })
            .await;
        self.auth.audit_change(
            caller.as_ref(),
            &format!(
                "add rule {} {} {} on {}",
                shown.effect, shown.principal, shown.operation, shown.resource
            ),
            &added,
        );
        let added = added?;
        Ok(Response::new(AddAclResponse { added }))
    }

    async fn remove_acl(
        &self,
        request: Request<RemoveAclRequest>,
    ) -> Result<Response<RemoveAclResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let caller = request.extensions().get::<Caller>().cloned();
        let sent = request.into_inner().rule;
        let rule = match rule_from_proto(sent.clone()) {
            Ok(rule) => rule,
            // A rule an older broker accepted though it never matches (`topic:a*b`,
            // `cluster:x`) is removed as ListAcls shows it.
            Err(status) => self
                .auth
                .log()
                .and_then(|log| {
                    log.read(|a| a.rules().find(|r| Some(rule_to_proto(r)) == sent).cloned())
                })
                .ok_or(status)?,
        };
        let shown = rule_to_proto(&rule);
        let existed = self
            .blocking(move |auth| auth.change(AccessOp::RemoveRule(rule)))
            .await;
        self.auth.audit_change(
            caller.as_ref(),
            &format!(
                "remove rule {} {} {} on {}",
                shown.effect, shown.principal, shown.operation, shown.resource
            ),
            &existed,
        );
        let existed = existed?;
        if !existed {
            return Err(Status::not_found(format!(
                "no rule is {} {} {} on {}",
                shown.effect, shown.principal, shown.operation, shown.resource
            )));
        }
        Ok(Response::new(RemoveAclResponse {}))
    }

    async fn set_quota(
        &self,
        request: Request<SetQuotaRequest>,
    ) -> Result<Response<SetQuotaResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        quota_principal(&request.principal)?;
        let change = request.limits.unwrap_or_default();
        let principal = request.principal.clone();
        let set = self
            .blocking(move |auth| {
                let log = auth.log().ok_or_else(super::auth_off)?;
                // Read, merge and append as one: two changes racing on one quota
                // both apply.
                let _changing = auth.pacer.lock_quota_changes();
                let (current, count) = log.read(|a| {
                    (
                        a.quota(&request.principal).map(|q| q.limits),
                        a.quota_count(),
                    )
                });
                if current.is_none() && count >= ACCESS_QUOTAS_MAX {
                    return Err(Status::resource_exhausted(format!(
                        "the broker holds {ACCESS_QUOTAS_MAX} quotas, its limit; set a default \
                         quota for * or remove unused ones"
                    )));
                }
                let limits = merge_limits(current.unwrap_or_default(), &change);
                if limits.is_empty() {
                    let changed = match current {
                        Some(_) => auth.change(AccessOp::RemoveQuota {
                            principal: request.principal,
                        })?,
                        None => false,
                    };
                    return Ok((None, changed));
                }
                let quota = Quota {
                    principal: request.principal,
                    limits,
                };
                let changed = auth.change(AccessOp::SetQuota(quota.clone()))?;
                Ok((Some(quota), changed))
            })
            .await;
        self.auth.audit_change(
            caller.as_ref(),
            &format!(
                "set quota of {principal}: {}",
                set.as_ref()
                    .map_or("-".into(), |(quota, _)| describe_limits(
                        &quota.as_ref().map(|q| q.limits).unwrap_or_default()
                    ))
            ),
            &set.as_ref()
                .map(|(_, changed)| *changed)
                .map_err(Clone::clone),
        );
        let (quota, changed) = set?;
        Ok(Response::new(SetQuotaResponse {
            quota: quota.as_ref().map(quota_to_proto),
            changed,
        }))
    }

    async fn list_quotas(
        &self,
        request: Request<ListQuotasRequest>,
    ) -> Result<Response<ListQuotasResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let log = self.auth.log().ok_or_else(super::auth_off)?;
        let principal = request.into_inner().principal;
        if !principal.is_empty() {
            quota_principal(&principal)?;
        }
        let (quotas, effective) = log.read(|a| {
            (
                a.quotas().map(quota_to_proto).collect(),
                (!principal.is_empty()).then(|| limits_to_proto(&a.quota_for(&principal))),
            )
        });
        Ok(Response::new(ListQuotasResponse { quotas, effective }))
    }

    async fn remove_quota(
        &self,
        request: Request<RemoveQuotaRequest>,
    ) -> Result<Response<RemoveQuotaResponse>, Status> {
        self.auth.authorize(&request, &[Target::cluster()])?;
        let caller = request.extensions().get::<Caller>().cloned();
        let principal = request.into_inner().principal;
        quota_principal(&principal)?;
        let shown = principal.clone();
        let existed = self
            .blocking(move |auth| auth.change(AccessOp::RemoveQuota { principal }))
            .await;
        self.auth.audit_change(
            caller.as_ref(),
            &format!("remove quota of {shown}"),
            &existed,
        );
        if !existed? {
            return Err(Status::not_found(format!(
                "principal {shown} has no quota of its own (tidelog quota list shows them)"
            )));
        }
        Ok(Response::new(RemoveQuotaResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        self.auth.authorize(&request, &[])?;
        let caller = request.extensions().get::<Caller>();
        Ok(Response::new(WhoAmIResponse {
            principal: caller.map(|c| c.principal.to_string()).unwrap_or_default(),
            token_id: caller
                .and_then(|c| c.token_id)
                .map(token::format_id)
                .unwrap_or_default(),
            expires_at_ms: caller.and_then(|c| c.expires_at_ms).unwrap_or(0),
        }))
    }
}
