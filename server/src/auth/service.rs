//! The `Access` gRPC service: tokens and authorization rules. Changes are durable
//! (an fdatasync on the blocking pool) before the call answers.

use std::sync::Arc;

use tidelog_proto::v1::access_server::Access;
use tidelog_proto::v1::{
    AclRule, AddAclRequest, AddAclResponse, CreateTokenRequest, CreateTokenResponse,
    ListAclsRequest, ListAclsResponse, ListTokensRequest, ListTokensResponse, RemoveAclRequest,
    RemoveAclResponse, RevokeTokenRequest, RevokeTokenResponse, TokenInfo, WhoAmIRequest,
    WhoAmIResponse,
};
use tidelog_storage::access::token;
use tidelog_storage::access::{AccessOp, Effect, Operation, ResourcePattern, Rule, StoredToken};
use tidelog_storage::limits::{ACCESS_DESCRIPTION_BYTES_MAX, ACCESS_RULES_MAX};
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
        let rule = rule_from_proto(request.into_inner().rule)?;
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
