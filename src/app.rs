//! Process-wide state, the per-request context, the route table and the HTTP server.
//!
//! [`AppState`] is built once, before `HttpServer::new`, and shared by every worker: the policy
//! (`ArcSwap`), the rate limiters, the backends' breakers and the metrics. State created inside the
//! per-worker factory would be multiplied by the worker count (and so would every limit); only
//! the awc client and the Redis connection are per worker, by design.
//!
//! Middleware, in order, for every request: take one policy snapshot, settle the request id
//! and client IP, open the audit cell; after the handler, record status and error code, echo
//! `X-Request-Id`, and let the body carry the audit cell until the answer is fully sent.

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpResponse, HttpServer, web};
use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::audit::{self, AuditCell, AuditRecord, AuditSink};
use crate::backends::Backends;
use crate::errors::GatewayError;
use crate::health;
use crate::metrics::{BackendLabels, Metrics};
use crate::policy::Policy;
use crate::proxy::{self, upstream::Upstream};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::shutdown::Shutdown;
use crate::telemetry::{AuditWriter, LogLevel};

/// A constant: a header looked up by &str is parsed into a name on every call.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The outcome of the latest reload attempt, for `/readyz`.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub ok: bool,
    pub at: SystemTime,
    pub error: Option<String>,
    /// When the running policy was loaded.
    pub loaded_at: SystemTime,
    /// Set while a reload reads and checks the file: one that stays set is stuck.
    pub in_progress_since: Option<SystemTime>,
}

pub struct AppState {
    pub policy: ArcSwap<Policy>,
    pub policy_path: PathBuf,
    pub limiter: RateLimiter,
    pub auth_failures: RateLimiter,
    /// Per-backend state (breaker, load, models), surviving reloads.
    pub backends: Backends,
    pub metrics: Arc<Metrics>,
    /// Metrics and audit file, for every finished request.
    pub audit: Arc<AuditSink>,
    pub reload: Mutex<ReloadStatus>,
    pub log_level: LogLevel,
    /// Fires when the shutdown grace period is over.
    pub shutdown: Arc<Shutdown>,
}

impl AppState {
    pub fn new(
        policy: Policy,
        policy_path: PathBuf,
        log_level: LogLevel,
        audit: Option<AuditWriter>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        metrics.set_policy(&policy.sha256);
        let now = SystemTime::now();
        AppState {
            limiter: RateLimiter::with_counters(
                policy.max_tracked_clients,
                metrics.limiter_counters("requests"),
            ),
            auth_failures: RateLimiter::with_counters(
                policy.max_tracked_clients,
                metrics.limiter_counters("auth_failures"),
            ),
            policy: ArcSwap::from_pointee(policy),
            policy_path,
            backends: Backends::default(),
            audit: Arc::new(AuditSink::new(metrics.clone(), audit)),
            metrics,
            reload: Mutex::new(ReloadStatus {
                ok: true,
                at: now,
                error: None,
                loaded_at: now,
                in_progress_since: None,
            }),
            log_level,
            shutdown: Arc::new(Shutdown::default()),
        }
    }

    /// Brings the per-backend gauges up to date (called when metrics are read).
    pub fn backend_gauges(&self) {
        let policy = self.policy.load();
        let mut worst = 0;
        for (b, _) in self.backends.all(&policy) {
            let labels = BackendLabels {
                backend: b.url.clone(),
            };
            let st = b.breaker.state().as_gauge();
            worst = worst.max(st);
            self.metrics.backend_breaker.get_or_create(&labels).set(st);
            self.metrics
                .backend_in_flight
                .get_or_create(&labels)
                .set(i64::try_from(b.in_flight()).unwrap_or(i64::MAX));
            self.metrics
                .backend_up
                .get_or_create(&labels)
                .set(i64::from(b.up.load(std::sync::atomic::Ordering::Relaxed)));
        }
        self.metrics.breaker_state.set(worst);
    }
}

/// Everything a handler needs to know about the request, settled once by the middleware.
pub struct RequestCtx {
    /// The one policy snapshot this request sees from start to end.
    pub policy: Arc<Policy>,
    pub request_id: String,
    pub client_ip: IpAddr,
    pub audit: Rc<AuditCell>,
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
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

/// The response body, carrying the audit cell until the last byte is out (or the client left).
struct AuditedBody {
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

async fn gate(
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
    let client_ip = crate::client_ip::resolve(peer, req.headers(), &policy.trusted_proxies);
    let request_id = request_id(&req);
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
    }));

    // A request still waiting for its answer when the shutdown grace ends gets a 503 rather
    // than a dropped connection.
    let shutdown = state.shutdown.clone();
    let called = tokio::select! {
        r = next.call(req) => r,
        () = shutdown.cut() => Err(GatewayError::Interrupted.into()),
    };
    let mut res = match called {
        Ok(res) => res,
        // Errors from extractors or the framework still get the envelope and an audit line.
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            audit.update(|r| r.status = status);
            return Err(e);
        }
    };
    let status = res.status().as_u16();
    let code = res
        .response()
        .error()
        .and_then(|e| e.as_error::<GatewayError>())
        .map(GatewayError::code);
    audit.update(|r| {
        r.status = status;
        if r.error.is_none() {
            r.error = code;
        }
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

async fn not_found() -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::RouteNotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::MethodNotAllowed)
}

/// Body-extractor errors (never used with our handlers, but any future `web::Json`) answer in
/// the OpenAI envelope, not actix's plain text.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|err, _| {
        GatewayError::BadRequest {
            message: format!("invalid JSON body: {err}"),
        }
        .into()
    })
}

/// The application: routes and middleware, in one place. `main` and the tests both use it.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/chat/completions")
            .route(web::post().to(proxy::chat_completions))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/models")
            .route(web::get().to(proxy::models))
            .default_service(web::to(method_not_allowed)),
    )
    .service(web::resource("/healthz").route(web::get().to(health::healthz)))
    .service(web::resource("/readyz").route(web::get().to(health::readyz)))
    .service(web::resource("/metrics").route(web::get().to(health::metrics)));
}

/// SIGTERM or SIGINT: stop accepting and let requests finish; when the grace period is over,
/// cut what is still running (streams end with an error event, waiting requests get 503).
async fn stop_on_signal(
    handle: actix_web::dev::ServerHandle,
    shutdown: Arc<Shutdown>,
    grace: Duration,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot listen for SIGTERM/SIGINT.");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        grace_s = grace.as_secs(),
        "Stopping: no new connections; in-flight requests may finish."
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let stop = handle.stop(true);
    tokio::pin!(stop);
    tokio::select! {
        () = &mut stop => return,
        () = tokio::time::sleep(grace) => {}
    }
    tracing::warn!("Shutdown grace period over: cutting the requests still running.");
    shutdown.cut_now();
    stop.await;
}

/// Binds, serves until SIGTERM/SIGINT, drains in-flight requests for the grace period.
pub async fn run(state: Arc<AppState>, workers: Option<usize>) -> anyhow::Result<()> {
    let policy = state.policy.load_full();
    let data = web::Data::from(state.clone());
    let connect_timeout = policy.upstream.timeout;
    let server = HttpServer::new(move || {
        // Runs on each worker thread, inside its runtime.
        audit::start_flusher();
        App::new()
            .app_data(data.clone())
            // Per worker by design: awc clients are !Send and pool connections per thread.
            .app_data(web::Data::new(Upstream::new(connect_timeout)))
            .app_data(web::Data::new(RedisLimiter::default()))
            .app_data(json_config())
            .configure(configure)
            .default_service(web::to(not_found))
            .wrap(from_fn(gate))
    })
    .backlog(1024)
    // A client that closes its connection is noticed at once, whatever its request is doing
    // (waiting for Ollama's first byte, or a stream with nothing to send): the request is
    // dropped, and with it the upstream request, so Ollama stops generating for nobody.
    // (HTTP clients do not half-close and wait; Nginx never does.)
    .h1_allow_half_closed(false)
    // Signals are ours (below): the end of the grace period must cut streams cleanly.
    .disable_signals()
    // Streamed answers are many small writes; Nagle's algorithm would hold each one back
    // until the client acknowledged the previous.
    .tcp_nodelay(true)
    .client_request_timeout(Duration::from_secs(10))
    .keep_alive(Duration::from_secs(75))
    // A little past the grace period: streams cut at its end need a moment to send their
    // error event.
    .shutdown_timeout(policy.shutdown_grace.as_secs() + 2)
    .workers(workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())))
    .bind(policy.listen)
    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", policy.listen))?;
    for addr in server.addrs() {
        tracing::info!(%addr, backends = policy.backends.len(), policy_sha256 = %policy.sha256, "Listening on {addr}.");
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let server = server.run();
    actix_web::rt::spawn(stop_on_signal(
        server.handle(),
        state.shutdown.clone(),
        policy.shutdown_grace,
    ));
    server.await?;
    tracing::info!("Stopped: in-flight requests finished or the grace period ended.");
    Ok(())
}
