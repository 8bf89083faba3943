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

use super::rpcs::{self, Route};
use super::{Auth, Caller};

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
        if !self.auth.is_enabled() {
            return Box::pin(self.inner.call(request));
        }
        let rpc = match rpcs::route(request.uri().path()) {
            Route::Open => return Box::pin(self.inner.call(request)),
            Route::AuthenticatedOnly | Route::Unknown => None,
            Route::Rpc(rpc) => Some(rpc),
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
                request.extensions_mut().insert::<Caller>(caller);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                let path = request.uri().path();
                tracing::warn!(
                    target: super::AUDIT_TARGET,
                    principal = "-",
                    rpc = path.strip_prefix("/tidelog.v1.").unwrap_or(path),
                    result = "UNAUTHENTICATED",
                    reason = status.message(),
                    "call refused"
                );
                let response = status.into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}
