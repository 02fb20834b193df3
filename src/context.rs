//! The per-request context, settled once by the outermost middleware ([`gate`]) for every
//! request: one policy snapshot, the request id, the client IP, the audit cell and the error
//! dialect of the route.
//!
//! After the handler, `gate` records status and error code, renders any [`GatewayError`] in the
//! route's dialect (the one place errors become answers), echoes `X-Request-Id`, and lets the
//! body carry the audit cell until the answer is fully sent.

use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, ResponseError as _, web};
use bytes::Bytes;

use crate::errors::{Dialect, GatewayError};
use crate::observe::audit::{self, AuditCell, AuditRecord};
use crate::policy::Guard;
use crate::policy::Policy;
use crate::state::AppState;

/// A constant: a header looked up by &str is parsed into a name on every call.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Everything a handler needs to know about the request, settled once by the middleware.
pub struct RequestCtx {
    /// The one policy snapshot this request sees from start to end.
    pub policy: Arc<Policy>,
    pub request_id: String,
    pub client_ip: IpAddr,
    pub audit: Rc<AuditCell>,
    /// How this route's errors are written (OpenAI, Anthropic or Ollama).
    pub dialect: Dialect,
}

impl RequestCtx {
    /// A guard refuses this request with `err` because of `rule` (the policy field and what
    /// it holds, for the operator). In force: the rule becomes the audit line's `reason` and
    /// `err` is returned. Report-only (`report_only:` names the guard): the refusal is
    /// recorded (audit `report_only`, metric, log) and the request goes on.
    pub fn refuse(
        &self,
        guard: Guard,
        rule: impl FnOnce() -> String,
        err: GatewayError,
    ) -> Result<(), GatewayError> {
        let why = format!("{}: {}", guard.name(), rule());
        if self.policy.reports(guard) {
            tracing::info!(request_id = %self.request_id, guard = guard.name(), rule = ?why,
                "A report-only guard would have refused this request; served.");
            self.audit.update(|r| r.would_refuse(guard, why));
            Ok(())
        } else {
            self.audit.update(|r| r.reason = Some(why));
            Err(err)
        }
    }
}

/// The request's context, as the gate left it.
pub fn request_ctx(req: &HttpRequest) -> Result<Rc<RequestCtx>, GatewayError> {
    req.extensions()
        .get::<Rc<RequestCtx>>()
        .cloned()
        .ok_or(GatewayError::Internal)
}

/// The `route` label of metrics: one per route of the table, bounded whatever the client sends.
pub fn route_label(path: &str) -> &'static str {
    const EXACT: &[&str] = &[
        "/v1/chat/completions",
        "/v1/models",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/api/show",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/copy",
        "/api/delete",
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/",
    ];
    if let Some(p) = EXACT.iter().find(|p| **p == path) {
        return p;
    }
    if path.starts_with("/v1/models/") {
        "/v1/models/{model}"
    } else if path.starts_with("/api/blobs/") {
        "/api/blobs/{digest}"
    } else {
        "other"
    }
}

/// An inbound `X-Request-Id` is kept when it is short and plain; otherwise a new one is made.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(crate::ids::hex128)
}

/// The path as audited: at most 256 characters (a client picks it).
fn audit_path(path: &str) -> String {
    audit::clip(path, 256)
}

/// An error that renders in a given dialect (for errors that arrive as `Err`, whose answer
/// actix builds).
#[derive(Debug)]
struct InDialect {
    err: GatewayError,
    dialect: Dialect,
    /// Sent back as `x-request-id`, so a refused user can quote it and the operator find the
    /// audit line.
    request_id: String,
}

impl std::fmt::Display for InDialect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.err.fmt(f)
    }
}

impl actix_web::ResponseError for InDialect {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.err.status_code()
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        let mut res = self.err.response(self.dialect);
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            res.headers_mut().insert(X_REQUEST_ID, v);
        }
        res
    }
}

/// The response body, carrying the audit cell until the last byte is out (or the client left).
pub struct AuditedBody {
    inner: BoxBody,
    _audit: Rc<AuditCell>,
}

impl MessageBody for AuditedBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

pub async fn gate(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<AuditedBody>, actix_web::Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| actix_web::Error::from(GatewayError::Internal))?;
    let policy = state.policy.load_full();
    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let client_ip =
        crate::admission::client_ip::resolve(peer, req.headers(), &policy.trusted_proxies);
    let request_id = request_id(&req);
    let dialect = Dialect::for_path(req.path());
    let audit = Rc::new(AuditCell::new(
        AuditRecord {
            request_id: request_id.clone(),
            client_ip: Some(client_ip),
            method: req.method().clone(),
            path: audit_path(req.path()),
            route: route_label(req.path()),
            ..AuditRecord::default()
        },
        state.audit.clone(),
    ));
    req.extensions_mut().insert(Rc::new(RequestCtx {
        policy,
        request_id: request_id.clone(),
        client_ip,
        audit: audit.clone(),
        dialect,
    }));

    // A request still waiting for its answer when the shutdown grace ends gets a 503 rather
    // than a dropped connection.
    let shutdown = state.shutdown.clone();
    let called = tokio::select! {
        r = next.call(req) => r,
        () = shutdown.cut() => Err(GatewayError::Interrupted.into()),
    };
    // Every error becomes its answer here, in the route's dialect: errors from admission and
    // extractors (which arrive as `Err`) as well as a handler's (inside the response).
    let (mut res, error) = match called {
        Ok(res) => {
            let error = res
                .response()
                .error()
                .and_then(|e| e.as_error::<GatewayError>())
                .cloned();
            match error {
                Some(e) if dialect != Dialect::OpenAi => {
                    let res = res.into_response(e.response(dialect));
                    (res, Some(e))
                }
                other => (res, other),
            }
        }
        Err(e) => {
            let err = e.as_error::<GatewayError>().cloned().unwrap_or_else(|| {
                // The framework's own (a payload error, say): never its plain text.
                if e.as_response_error().status_code().is_client_error() {
                    GatewayError::BadRequest {
                        message: "the request could not be read".to_owned(),
                    }
                } else {
                    GatewayError::Internal
                }
            });
            let status = err.status_code().as_u16();
            audit.update(|r| r.refused(status, &err));
            // The request went to the failed service, so the answer is built by actix from
            // this error: rendered in the route's dialect.
            return Err(InDialect {
                err,
                dialect,
                request_id,
            }
            .into());
        }
    };
    let status = res.status().as_u16();
    let code = error.as_ref().map(GatewayError::code);
    audit.update(|r| match &error {
        Some(err) => r.refused(status, err),
        None => r.status = status,
    });
    if status >= 500 {
        tracing::warn!(request_id = %request_id, status, error = code.unwrap_or("unknown"), "Request failed.");
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(X_REQUEST_ID, v);
    }
    Ok(res.map_body(|_, inner| AuditedBody {
        inner,
        _audit: audit,
    }))
}
