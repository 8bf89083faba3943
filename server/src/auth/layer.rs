//! The tower layer in front of every gRPC service: with auth on, it resolves the
//! caller from the `authorization` metadata (or, with mutual TLS and no token, from
//! the connection's client certificate, [`crate::listener::ConnInfo`]) and refuses the call with UNAUTHENTICATED
//! before any handler runs; the [`Caller`] it resolved travels in the request's
//! extensions to [`super::Auth::authorize`]. With auth off it passes calls through.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;

use super::quota::QuotaKind;
use super::rpcs::{self, Route, Rpc};
use super::{AuditNote, Auth, Caller};

#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for AuthService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        // With auth off, only paths that may be a change are looked up (the hot paths
        // pass with one string test).
        let route =
            (self.auth.is_enabled() || rpcs::may_be_change(path)).then(|| rpcs::route(path));
        let change = match route {
            Some(Route::Rpc(rpc)) if rpc.is_change() => Some(rpc),
            _ => None,
        };
        let note = change.map(|_| {
            let note = AuditNote::default();
            request.extensions_mut().insert(note.clone());
            note
        });
        if !self.auth.is_enabled() {
            let future = self.inner.call(request);
            return match (change, note) {
                (Some(rpc), Some(note)) => {
                    audited(future, self.auth.clone(), "-".into(), rpc, note)
                }
                _ => Box::pin(future),
            };
        }
        let rpc = match route {
            Some(Route::Open) => return Box::pin(self.inner.call(request)),
            Some(Route::AuthenticatedOnly | Route::Unknown) | None => None,
            Some(Route::Rpc(rpc)) => Some(rpc),
        };
        let value = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let certificate = request
            .extensions()
            .get::<crate::listener::ConnInfo>()
            .and_then(|info| info.certificate_principal.clone());
        match self.auth.authenticate(value, certificate.as_ref(), rpc) {
            Ok(caller) => {
                let principal = caller.principal.clone();
                // Over its requests quota, the call waits before it runs.
                let charged = self.auth.charged(Some(&caller), QuotaKind::Requests, || 1);
                let waiting =
                    (!charged.wait.is_zero()).then(|| (self.auth.clone(), caller.clone(), charged));
                request.extensions_mut().insert::<Caller>(caller);
                let future = self.inner.call(request);
                let future: BoxFuture<_, _> = match (change, note) {
                    (Some(rpc), Some(note)) => {
                        audited(future, self.auth.clone(), principal, rpc, note)
                    }
                    _ => Box::pin(future),
                };
                match waiting {
                    None => future,
                    Some((auth, caller, charged)) => Box::pin(async move {
                        auth.wait_charged(Some(&caller), QuotaKind::Requests, charged)
                            .await;
                        future.await
                    }),
                }
            }
            Err(status) => {
                self.auth
                    .audit_unauthenticated(request.uri().path(), &status);
                let response = status.into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// `future` (a change RPC's call), followed by its audit line with the result. A call
/// refused by the rules has its "call refused" line already and gets no second one.
fn audited<F, ResBody, E>(
    future: F,
    auth: Arc<Auth>,
    principal: Arc<str>,
    rpc: &'static Rpc,
    note: AuditNote,
) -> BoxFuture<http::Response<ResBody>, E>
where
    F: Future<Output = Result<http::Response<ResBody>, E>> + Send + 'static,
{
    Box::pin(async move {
        let result = future.await;
        let code = match &result {
            // A unary call that failed answers its status in the headers; one that
            // succeeded has it in the trailers (OK).
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes())),
            Err(_) => tonic::Code::Internal,
        };
        if !matches!(
            code,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
        ) {
            auth.audit_admin_change(
                &principal,
                rpc,
                &note.resources(),
                tidelog_proto::code_name(code),
            );
        }
        result
    })
}
