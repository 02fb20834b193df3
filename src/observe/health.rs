//! `/healthz` (the process is up), `/readyz` (policy loaded, breaker, Ollama reachable) and
//! `/metrics`.
//!
//! `/healthz` is open to every caller: Nginx and systemd probe it, and it says nothing. The
//! other two need no key but answer only the addresses in `observers`, and `/status` only
//! the gateway's own host (`trusted_proxies`): the admission middleware checks both.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use crate::context::request_ctx;
use crate::state::AppState;
use std::sync::atomic::Ordering;

use crate::errors::GatewayError;
use crate::observe::audit::rfc3339;
use crate::upstream::breaker::BreakerState;
use crate::upstream::client::Upstream;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/json"))
        .body(r#"{"status":"ok"}"#)
}

#[derive(Serialize)]
struct Ready<'a> {
    status: &'static str,
    policy: PolicyState<'a>,
    /// The worst breaker state over all backends.
    breaker: &'static str,
    ollama: OllamaState,
    backends: Vec<BackendReady>,
    /// With `rate_limit.backend: redis`: the slots shared with other gateways.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_slots: Option<SharedSlots>,
}

#[derive(Serialize)]
struct SharedSlots {
    /// Gateways sharing the slots, as the last heartbeat in Redis counted them.
    gateways: usize,
}

#[derive(Serialize)]
struct BackendReady {
    url: String,
    reachable: bool,
    breaker: &'static str,
    in_flight: usize,
    /// Models seen at the last refresh; -1 before the first.
    models: i64,
    /// The served models it has in memory (its `/api/ps`), by public name: requests for them
    /// go here first.
    loaded: Vec<String>,
    queue: QueueReady,
}

#[derive(Serialize)]
struct QueueReady {
    /// Slots taken (requests sent to this Ollama now).
    slots_in_use: usize,
    max_in_flight: usize,
    waiting: usize,
}

#[derive(Serialize)]
struct PolicyState<'a> {
    sha256: &'a str,
    loaded_at: String,
    last_reload_ok: bool,
    last_reload_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reload_error: Option<String>,
    /// Set when a reload has been reading or checking the file for longer than
    /// [`RELOAD_STUCK_AFTER`]: policy edits are not being applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    reload_stuck_since: Option<String>,
}

/// A reload reads at most 1 MiB and parses it in well under a second; one that takes this
/// long is stuck (a hung file system, say).
const RELOAD_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Serialize)]
struct OllamaState {
    reachable: bool,
}

pub async fn readyz(
    req: HttpRequest,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let p = &ctx.policy;
    // Probe every backend at once: a dead one must not make /readyz take N x the timeout.
    let all = state.backends.all(p);
    let probes = all
        .iter()
        .map(|(b, _)| upstream.probe(&b.url, p.upstream.timeout));
    let reachable_each = futures_util::future::join_all(probes).await;
    let mut backends = Vec::new();
    let mut worst = BreakerState::Closed;
    for ((b, _), reachable) in all.iter().zip(reachable_each) {
        let breaker = b.breaker.state();
        if breaker.as_gauge() > worst.as_gauge() {
            worst = breaker;
        }
        backends.push(BackendReady {
            url: b.url.clone(),
            reachable,
            breaker: breaker.as_str(),
            in_flight: b.in_flight(),
            models: b.model_count.load(Ordering::Relaxed),
            loaded: {
                let mut v: Vec<String> = b
                    .loaded_models()
                    .iter()
                    .flat_map(|up| p.models.public_names(up))
                    .map(str::to_owned)
                    .collect();
                v.sort();
                v.dedup();
                v
            },
            queue: {
                let (slots_in_use, waiting) = b.slots.load();
                QueueReady {
                    slots_in_use,
                    max_in_flight: p.max_in_flight(&b.url),
                    waiting,
                }
            },
        });
    }
    // Ready while at least one Ollama answers.
    let reachable = backends.iter().any(|b| b.reachable);
    // The fields /readyz shows, not the history.
    let reload = {
        let r = state.reload.lock().unwrap_or_else(|e| e.into_inner());
        crate::state::ReloadStatus {
            error: r.error.clone(),
            history: std::collections::VecDeque::new(),
            ..*r
        }
    };
    let body = Ready {
        status: if reachable { "ready" } else { "not_ready" },
        policy: PolicyState {
            sha256: &p.sha256,
            loaded_at: rfc3339(reload.loaded_at),
            last_reload_ok: reload.ok,
            last_reload_at: rfc3339(reload.at),
            last_reload_error: reload.error,
            reload_stuck_since: reload
                .in_progress_since
                .filter(|t| t.elapsed().is_ok_and(|d| d > RELOAD_STUCK_AFTER))
                .map(rfc3339),
        },
        breaker: worst.as_str(),
        ollama: OllamaState { reachable },
        backends,
        shared_slots: matches!(p.limit_backend, crate::policy::LimitBackend::Redis(_)).then(|| {
            SharedSlots {
                gateways: state.fleet.gateways(),
            }
        }),
    };
    let mut resp = if reachable {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    Ok(resp.json(body))
}

pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, GatewayError> {
    state.backend_gauges();
    state
        .metrics
        .ratelimit_tracked
        .set(i64::try_from(state.limiter.tracked()).unwrap_or(i64::MAX));
    Ok(HttpResponse::Ok()
        .insert_header((
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(state.metrics.render()))
}

#[derive(Serialize)]
struct Status<'a> {
    version: &'static str,
    policy: StatusPolicy<'a>,
    /// The last reloads, newest last.
    reloads: &'a std::collections::VecDeque<crate::state::ReloadEntry>,
}

#[derive(Serialize)]
struct StatusPolicy<'a> {
    path: String,
    sha256: &'a str,
    loaded_at: String,
    warnings: &'a [String],
    /// The running policy without secrets (`policy::view`).
    view: serde_json::Value,
}

/// `/status`: the running policy (redacted) and the reload history, for the operator on the
/// gateway's host (`qwen-gateway status`, `qwen-gateway check --against`).
pub async fn status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let p = &ctx.policy;
    let r = state.reload.lock().unwrap_or_else(|e| e.into_inner());
    let body = Status {
        version: env!("CARGO_PKG_VERSION"),
        policy: StatusPolicy {
            path: state.policy_path.display().to_string(),
            sha256: &p.sha256,
            loaded_at: rfc3339(r.loaded_at),
            warnings: &p.warnings,
            view: crate::policy::view::view(p),
        },
        reloads: &r.history,
    };
    let text = serde_json::to_string_pretty(&body).map_err(|_| GatewayError::Internal)?;
    drop(r);
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/json"))
        .body(text))
}
