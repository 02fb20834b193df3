//! Talking to Ollama: one pooled keep-alive `awc` client per worker, time budgets, the
//! liveness probe, the circuit breaker, and upstream status -> [`GatewayError`].
//!
//! Budgets: a live Ollama sends no response headers until the model is loaded and the prompt
//! evaluated, which can take tens of seconds, and aborting makes it start over. So when no
//! headers arrive within `upstream.timeout_seconds`, the gateway probes `GET /api/version`
//! (same budget) while still waiting: a dead Ollama gets the client a 503 at once, a live one
//! is waited for up to `upstream.first_token_timeout_seconds` (then 504). Connection refused is
//! a 503 straight away. Causes are logged under the request id; bodies carry none of them.
//! With several backends (`backends`), a request that fails before its answer began moves on
//! to the next candidate.

use std::future::Future;
use std::time::{Duration, Instant};

use actix_web::http::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use actix_web::http::{Method, StatusCode, Uri};
use awc::error::{ConnectError, SendRequestError};
use bytes::Bytes;

use crate::context::X_REQUEST_ID;
use crate::errors::GatewayError;
use crate::policy::Policy;
use crate::state::AppState;
use crate::upstream::backends::{BackendState, Lease};
use crate::upstream::breaker::Admit;

/// The response type awc hands back; its body is read (non-stream) or streamed (SSE).
/// (awc is built without decompression: Ollama does not compress, and the gateway must not
/// pay for it.)
pub type UpstreamResponse = awc::ClientResponse;

const UA: &str = concat!("qwen-gateway/", env!("CARGO_PKG_VERSION"));

/// One per worker: awc clients are not `Send`, and a per-worker pool keeps connections local.
pub struct Upstream {
    client: awc::Client,
    /// Slots shared with other gateways through Redis (`fleet.rs`), on this worker's
    /// connection.
    shared: super::fleet::Slots,
}

#[derive(Debug)]
enum HeadError {
    /// This process ran out of descriptors, ports or memory: the backend is not at fault.
    Local,
    Connect,
    Dead,
    FirstTokenTimeout,
    Broken,
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        let connector = awc::Connector::new()
            .timeout(connect_timeout)
            // No cap on pooled connections: one held stream per chat must never queue behind
            // another (awc's default is 100 per host).
            .limit(0);
        Upstream {
            client: awc::Client::builder()
                .connector(connector)
                .disable_timeout()
                // Ollama never redirects; following one would be an SSRF hole, and the
                // redirect layer costs a boxed future per request.
                .disable_redirects()
                .add_default_header((USER_AGENT, UA))
                .finish(),
            shared: super::fleet::Slots::default(),
        }
    }

    /// `GET /api/version` answers 200 within `budget`.
    pub async fn probe(&self, base: &str, budget: Duration) -> bool {
        self.probe_state(base, budget).await == Probe::Alive
    }

    async fn probe_state(&self, base: &str, budget: Duration) -> Probe {
        let req = self
            .client
            .get(format!("{base}/api/version"))
            .timeout(budget)
            .send();
        match tokio::time::timeout(budget, req).await {
            Ok(Ok(resp)) if resp.status().is_success() => Probe::Alive,
            Ok(Err(SendRequestError::Connect(ConnectError::Io(io)))) if local_shortage(&io) => {
                Probe::CannotTell
            }
            _ => Probe::Dead,
        }
    }

    async fn wait_for_head<F>(
        &self,
        fut: F,
        policy: &Policy,
        base: &str,
        started: Instant,
    ) -> Result<UpstreamResponse, HeadError>
    where
        F: Future<Output = Result<UpstreamResponse, SendRequestError>>,
    {
        let budget = policy.upstream.timeout;
        tokio::pin!(fut);
        tokio::select! {
            r = &mut fut => return r.map_err(classify),
            _ = tokio::time::sleep(budget) => {}
        }
        // No headers within the budget: is Ollama alive at all, or just busy loading?
        let probe = self.probe_state(base, budget);
        tokio::pin!(probe);
        let probed = tokio::select! {
            r = &mut fut => return r.map_err(classify),
            p = &mut probe => p,
        };
        match probed {
            Probe::Alive => {}
            Probe::Dead => return Err(HeadError::Dead),
            Probe::CannotTell => return Err(HeadError::Local),
        }
        let remaining = policy
            .upstream
            .first_token_timeout
            .saturating_sub(started.elapsed());
        tokio::select! {
            r = &mut fut => r.map_err(classify),
            _ = tokio::time::sleep(remaining) => Err(HeadError::FirstTokenTimeout),
        }
    }

    /// Sends a request to the best backend for `model`, and on a failure before the answer
    /// began (refused, dead, 5xx, busy, breaker open, model missing there) to the next one.
    /// Never retries after a 200 arrived: a half-sent answer is not replayed. The lease keeps
    /// the request counted against its backend; hold it as long as the answer streams.
    pub async fn send(
        &self,
        state: &AppState,
        policy: &Policy,
        call: &Call<'_>,
    ) -> Result<(UpstreamResponse, Lease), GatewayError> {
        let (request_id, model) = (call.request_id, call.model);
        let up_model = model.and_then(|m| policy.models.to_upstream(m));
        let started = Instant::now();
        let redis = match &policy.limit_backend {
            crate::policy::LimitBackend::Redis(cfg) if call.queue.is_some() => Some(cfg),
            _ => None,
        };
        // A conversation another gateway served: its backend, as Redis remembers it.
        if let (Some(cfg), Some(c)) = (redis, call.conversation)
            && state.backends.affine(c).is_none()
            && let Some(url) = self.shared.affine(cfg, c).await
            && let Some(b) = policy.backends.iter().find(|b| b.url == url)
        {
            state.backends.remember(c, &state.backends.get(b));
        }
        let candidates = state
            .backends
            .candidates_for(policy, up_model, call.conversation);
        let mut last: Option<GatewayError> = None;
        // One ticket per request against its key's max_concurrent, whatever the backend.
        let mut ticket = match &call.queue {
            Some(q) => Some(
                state
                    .per_key
                    .enter(&q.owner.key, q.max_concurrent)
                    .ok_or(GatewayError::TooManyConcurrent)?,
            ),
            None => None,
        };
        for candidate in candidates {
            let backend = candidate.backend;
            let mut lease = backend.lease();
            if let Some(q) = &call.queue {
                use crate::limits::queue::QueueError;
                // A busy backend with the model in memory is waited for only briefly while
                // another has a free slot (`upstream.warm_wait_seconds`); otherwise up to
                // `queue.max_wait_seconds` since the request began to wait.
                let last_moment = started + policy.upstream.max_wait;
                let deadline = if candidate.bounded {
                    (Instant::now() + policy.upstream.warm_wait).min(last_moment)
                } else {
                    last_moment
                };
                let limits = crate::limits::queue::QueueLimits {
                    max_in_flight: policy.max_in_flight(&backend.url),
                    max_waiting: policy.upstream.max_waiting,
                    max_waiting_per_key: policy.upstream.max_waiting_per_key,
                    max_wait: deadline.saturating_duration_since(Instant::now()),
                };
                let acquired = backend.slots.acquire(&q.owner, limits, &state.usage).await;
                let mut slot = match acquired {
                    Ok(slot) => slot,
                    Err(QueueError::Timeout) if candidate.bounded => continue,
                    Err(e) => {
                        state.metrics.upstream_error(match e {
                            QueueError::Full => "queue_full",
                            QueueError::KeyFull => "queue_key_full",
                            QueueError::Timeout => "queue_timeout",
                        });
                        let retry_after = Duration::from_secs(2);
                        return Err(match e {
                            QueueError::Full => GatewayError::QueueFull { retry_after },
                            QueueError::KeyFull => GatewayError::KeyQueueFull,
                            QueueError::Timeout => GatewayError::QueueTimeout { retry_after },
                        });
                    }
                };
                if let Some(cfg) = redis {
                    match self
                        .shared_slot(state, policy, cfg, &backend, q, deadline)
                        .await
                    {
                        Ok(held) => lease.hold_shared(held),
                        Err(GatewayError::QueueTimeout { .. }) if candidate.bounded => continue,
                        Err(e) => {
                            state.metrics.upstream_error("queue_timeout");
                            return Err(e);
                        }
                    }
                }
                slot.waited = started.elapsed();
                state.metrics.queue_wait.observe(slot.waited.as_secs_f64());
                lease.hold(slot, ticket.take());
            }
            // Why this backend, decided before it is marked warm below.
            let why = call.queue.as_ref().map(|_| {
                state
                    .backends
                    .why(policy, &backend, up_model, call.conversation)
            });
            // From now on Ollama loads the model there (if it has not already): the next
            // request for it goes there too rather than loading it on another backend, for
            // this gateway and (through Redis) the others.
            // (With one backend there is no choice to inform.)
            if let (Some(_), Some(m), true) = (&call.queue, up_model, policy.backends.len() > 1) {
                backend.mark_sent(m, Instant::now());
                if redis.is_some() {
                    state.fleet.warm(&backend.url, m);
                }
            }
            match self.send_to(state, policy, &backend, call).await {
                Ok(resp) => {
                    if let Some(why) = why {
                        state.metrics.backend_choice(why);
                        lease.set_choice(why);
                    }
                    if let Some(c) = call.conversation {
                        state.backends.remember(c, &backend);
                        if redis.is_some() {
                            state.fleet.affinity(c, &backend.url);
                        }
                    }
                    return Ok((resp, lease));
                }
                Err(e) if retryable(&e) => {
                    ticket = lease.take_ticket();
                    tracing::debug!(request_id, backend = %backend.url, code = e.code(), "Trying the next backend.");
                    // A "model not found" only wins when no backend had anything better to say.
                    if !matches!(e, GatewayError::ModelNotFound { .. }) || last.is_none() {
                        last = Some(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| GatewayError::ModelNotFound {
            model: model.unwrap_or_default().to_owned(),
        }))
    }

    /// A slot on `backend` counted across every gateway sharing Redis (`fleet.rs`): asked
    /// for every [`super::fleet::POLL`] until granted or `deadline`; while Redis cannot be
    /// asked, one of this gateway's local share.
    async fn shared_slot(
        &self,
        state: &AppState,
        policy: &Policy,
        cfg: &crate::limits::quota::RedisLimits,
        backend: &BackendState,
        q: &QueueFor,
        deadline: Instant,
    ) -> Result<super::fleet::Held, GatewayError> {
        use super::fleet::{Attempt, Held};
        let max = policy.max_in_flight(&backend.url);
        let keys = super::fleet::SlotKeys::new(cfg, &backend.url);
        let id = super::fleet::lease_id(&state.fleet);
        let priority = state.usage.recent(&q.owner.key) / f64::from(q.owner.weight.max(1));
        let mut told = false;
        loop {
            match self
                .shared
                .try_acquire(
                    &state.fleet,
                    cfg,
                    &keys,
                    max,
                    policy.upstream.slot_lease,
                    &id,
                    priority,
                )
                .await
            {
                Ok(Attempt::Got(held)) => return Ok(held),
                Ok(Attempt::Wait) => {}
                Err(trouble) => {
                    let share = state.fleet.local_share(max);
                    if !told {
                        told = true;
                        state
                            .metrics
                            .ratelimit_backend_errors
                            .get_or_create(&crate::observe::metrics::ResultLabels {
                                result: "local_share",
                            })
                            .inc();
                        if !matches!(
                            trouble,
                            crate::limits::ratelimit::redis::RedisTrouble::Backoff
                        ) {
                            tracing::warn!(?trouble, backend = %backend.url, share,
                                "Redis could not count the shared slots: this gateway's local share applies.");
                        }
                    }
                    if let Some(held) = Held::local(&backend.local_share, share) {
                        return Ok(held);
                    }
                }
            }
            if Instant::now() + super::fleet::POLL > deadline {
                return Err(GatewayError::QueueTimeout {
                    retry_after: Duration::from_secs(2),
                });
            }
            tokio::time::sleep(super::fleet::POLL).await;
        }
    }

    /// One attempt on one backend, under its breaker and the time budgets. Only a 200 comes
    /// back as `Ok`; everything else is already the client-facing error.
    pub async fn send_to(
        &self,
        state: &AppState,
        policy: &Policy,
        backend: &BackendState,
        call: &Call<'_>,
    ) -> Result<UpstreamResponse, GatewayError> {
        let (path, request_id, model) = (call.path, call.request_id, call.model);
        let breaker = &backend.breaker;
        let base = backend.url.as_str();
        let bp = policy.upstream.breaker;
        if let Admit::No { retry_after } = breaker.admit(policy.upstream.first_token_timeout) {
            state.metrics.upstream_error("breaker_open");
            return Err(GatewayError::UpstreamUnavailable { retry_after });
        }
        // The key whose request this is: its own failure budget here.
        let key = call.queue.as_ref().map(|q| {
            use std::hash::{BuildHasher as _, BuildHasherDefault};
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .hash_one(&*q.owner.key)
        });
        if let Some(retry_after) = key.and_then(|k| backend.key_budgets.refused(k)) {
            state.metrics.upstream_error("key_failure_budget");
            return Err(GatewayError::UpstreamUnavailable { retry_after });
        }
        let started = Instant::now();
        let uri = match &backend.chat_uri {
            Some(uri) if path == "/api/chat" => uri.clone(),
            _ => Uri::try_from(format!("{base}{path}")).map_err(|_| GatewayError::Internal)?,
        };
        let req = self
            .client
            .request(call.method.clone(), uri)
            .insert_header((X_REQUEST_ID, request_id));
        let head = match &call.body {
            Some(body) => {
                let req = req.insert_header((CONTENT_TYPE, "application/json"));
                self.wait_for_head(req.send_body(body.clone()), policy, base, started)
                    .await
            }
            None => self.wait_for_head(req.send(), policy, base, started).await,
        };
        let opened = |opened: bool| {
            if opened {
                tracing::error!(
                    request_id,
                    backend = base,
                    cooldown_s = bp.cooldown.as_secs_f64(),
                    "Circuit breaker opened: this Ollama failed {} times in a row.",
                    bp.failure_threshold
                );
            }
        };
        let fail = |kind: &'static str| {
            state.metrics.upstream_error(kind);
            opened(breaker.on_failure(bp.failure_threshold, bp.cooldown));
        };
        let mut resp = match head {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(request_id, error = ?e, backend = base, "Ollama request failed before its headers.");
                return Err(match e {
                    HeadError::Local => {
                        // Our own shortage, not the backend's: no breaker failure, no retry
                        // elsewhere (the next backend would meet the same shortage).
                        state.metrics.upstream_error("local_resources");
                        GatewayError::Overloaded
                    }
                    HeadError::Connect => {
                        fail("connect");
                        GatewayError::UpstreamUnavailable {
                            retry_after: Duration::from_secs(1),
                        }
                    }
                    HeadError::Dead => {
                        fail("probe_failed");
                        GatewayError::UpstreamUnavailable {
                            retry_after: Duration::from_secs(1),
                        }
                    }
                    HeadError::Broken => {
                        fail("protocol");
                        GatewayError::UpstreamFailed
                    }
                    HeadError::FirstTokenTimeout => {
                        // Ollama is alive (the probe answered), just slow: not a breaker failure.
                        state.metrics.upstream_error("first_token_timeout");
                        GatewayError::UpstreamTimeout
                    }
                });
            }
        };
        let status = resp.status();
        if status == StatusCode::OK {
            breaker.on_success();
            if let Some(k) = key {
                backend.key_budgets.succeeded(k);
            }
            return Ok(resp);
        }
        // Read a little of the error body for the log, never for the client, within the
        // upstream budget: an Ollama that sends error headers and then stalls must not hold
        // the client.
        let detail =
            match tokio::time::timeout(policy.upstream.timeout, resp.body().limit(4096)).await {
                Ok(Ok(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(Err(_)) => String::new(),
                Err(_) => "(error body did not arrive in time)".to_owned(),
            };
        // Debug-formatted: the upstream's text is quoted with its newlines and control
        // characters escaped, so a hostile body cannot forge a log line.
        tracing::warn!(request_id, backend = base, %status, detail = ?detail.trim(), "Ollama answered with an error.");
        match status {
            StatusCode::NOT_FOUND => {
                breaker.on_success();
                // Ollama answers a missing model with a JSON error, and a route it does not
                // have with gin's plain-text "404 page not found": an older Ollama.
                if !detail.trim_start().starts_with('{') {
                    state.metrics.upstream_error("route_missing");
                    return Err(GatewayError::UpstreamTooOld {
                        needs: "a newer version",
                    });
                }
                state.metrics.upstream_error("model_not_found");
                Err(GatewayError::ModelNotFound {
                    model: model.unwrap_or_default().to_owned(),
                })
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                // Busy means alive: overload never trips the breaker.
                breaker.on_success();
                state.metrics.upstream_error("busy");
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(Duration::from_secs(2), Duration::from_secs)
                    .min(MAX_RETRY_AFTER);
                Err(GatewayError::UpstreamBusy { retry_after })
            }
            s if s.is_server_error() => match key {
                // Ollama answered: the failure may be this key's request's doing. It counts
                // against the key's own budget, and against the breaker only with others'.
                Some(k) => {
                    state.metrics.upstream_error("status_5xx");
                    backend
                        .key_budgets
                        .failed(k, bp.failure_threshold, bp.cooldown);
                    opened(breaker.on_answered_failure(bp.failure_threshold, bp.cooldown, k));
                    Err(GatewayError::UpstreamFailed)
                }
                None => {
                    fail("status_5xx");
                    Err(GatewayError::UpstreamFailed)
                }
            },
            StatusCode::BAD_REQUEST => {
                breaker.on_success();
                state.metrics.upstream_error("status_400");
                Err(GatewayError::BadRequest {
                    message: "the model server rejected this request (an unsupported option, \
                              or a feature this model does not have)"
                        .to_owned(),
                })
            }
            _ => {
                // 403 from a Host/Origin check, 499, or anything unexpected: a deployment
                // problem, not something the client can fix.
                state.metrics.upstream_error("status_other");
                Err(GatewayError::UpstreamFailed)
            }
        }
    }
}

/// Why a JSON answer from Ollama could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    Timeout,
    Read,
    Invalid,
}

impl BodyError {
    /// The `upstream_errors_total{kind}` label.
    pub fn kind(self) -> &'static str {
        match self {
            BodyError::Timeout => "body_timeout",
            BodyError::Read => "body",
            BodyError::Invalid => "invalid_body",
        }
    }

    /// What the client is told: a slow body is a timeout, anything else a bad gateway.
    pub fn into_gateway_error(self, state: &AppState) -> GatewayError {
        state.metrics.upstream_error(self.kind());
        match self {
            BodyError::Timeout => GatewayError::UpstreamTimeout,
            BodyError::Read | BodyError::Invalid => GatewayError::UpstreamFailed,
        }
    }
}

/// Reads a whole JSON answer (at most `limit` bytes, within `budget`) and parses it.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    resp: &mut UpstreamResponse,
    budget: Duration,
    limit: usize,
) -> Result<T, BodyError> {
    let bytes = read_body(resp, budget, limit).await?;
    serde_json::from_slice(&bytes).map_err(|_| BodyError::Invalid)
}

/// Reads a whole answer (at most `limit` bytes, within `budget`).
pub async fn read_body(
    resp: &mut UpstreamResponse,
    budget: Duration,
    limit: usize,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(budget, resp.body().limit(limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(BodyError::Read),
        Err(_) => Err(BodyError::Timeout),
    }
}

/// A whole non-streamed answer: 128k tokens of text is well under 2 MiB.
pub const ANSWER_LIMIT: usize = 8 << 20;

/// Longest `Retry-After` passed on from Ollama: a broken or hostile upstream must not tell
/// clients to go away for a day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Model lists are small; anything near this is not a model list.
pub const TAGS_LIMIT: usize = 8 << 20;

/// Who a model request queues as, for the fair queue and `max_concurrent`.
pub struct QueueFor {
    pub owner: crate::limits::queue::Owner,
    pub max_concurrent: Option<u32>,
}

/// One request to Ollama: what to send, and for which public model (routing and messages).
pub struct Call<'a> {
    pub method: Method,
    /// Path and query at Ollama (`/api/chat`).
    pub path: &'a str,
    /// A JSON body; `None` sends no body.
    pub body: Option<Bytes>,
    pub request_id: &'a str,
    /// The public model name the request is for, when it is for one.
    pub model: Option<&'a str>,
    /// Work for the GPU: waits for a backend slot in the fair queue. `None`: sent at once
    /// (lists, details, model management).
    pub queue: Option<QueueFor>,
    /// The conversation this turn continues (`prompt::conversation`), for affinity.
    pub conversation: Option<u64>,
}

/// Failures after which another backend may still answer: nothing reached the client yet.
/// A first-token timeout is not retried (the budget is spent, and the model was alive).
fn retryable(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamBusy { .. }
            | GatewayError::UpstreamFailed
            | GatewayError::ModelNotFound { .. }
            | GatewayError::UpstreamTooOld { .. }
    )
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Alive,
    Dead,
    /// The probe itself could not be sent for lack of local resources.
    CannotTell,
}

fn classify(e: SendRequestError) -> HeadError {
    match e {
        SendRequestError::Connect(ConnectError::Io(io)) if local_shortage(&io) => HeadError::Local,
        SendRequestError::Connect(_) => HeadError::Connect,
        _ => HeadError::Broken,
    }
}

/// Errors that say this host is out of something, whatever the peer: too many open files
/// (per process or system-wide), no local port or address, no buffer space or memory.
fn local_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Keeps every backend's model list fresh (`/api/tags` every `upstream.model_refresh_seconds`),
/// so requests go only to backends that have their model, and its loaded models (`/api/ps`),
/// so they go first to one that has it in memory. Nothing is polled on a request's path. Runs for the life of the process on
/// the main thread, with its own client.
pub async fn refresh_models(state: std::sync::Arc<AppState>) {
    let client = Upstream::new(Duration::from_secs(3));
    loop {
        let policy = state.policy.load_full();
        for (backend, _) in state.backends.all(&policy) {
            let budget = policy.upstream.timeout;
            let req = client
                .client
                .get(format!("{}/api/tags", backend.url))
                .timeout(budget)
                .send();
            let tags = match tokio::time::timeout(budget, req).await {
                Ok(Ok(mut resp)) if resp.status().is_success() => {
                    read_json::<super::ollama::Tags>(&mut resp, budget, TAGS_LIMIT)
                        .await
                        .ok()
                }
                _ => None,
            };
            // What it has in memory: a request for a loaded model starts at once, one for
            // another waits for a load (tens of seconds for a large model).
            if tags.is_some() {
                let ps = client
                    .client
                    .get(format!("{}/api/ps", backend.url))
                    .timeout(budget)
                    .send();
                if let Ok(Ok(mut resp)) = tokio::time::timeout(budget, ps).await
                    && resp.status().is_success()
                    && let Ok(ps) =
                        read_json::<super::ollama::Tags>(&mut resp, budget, TAGS_LIMIT).await
                {
                    backend.set_loaded(ps.models.into_iter().map(|m| m.name));
                }
            }
            let was_up = backend.up.load(std::sync::atomic::Ordering::Relaxed);
            match tags {
                Some(t) => {
                    backend.set_models(t.models.into_iter().map(|m| m.name));
                    backend.up.store(true, std::sync::atomic::Ordering::Relaxed);
                    if !was_up {
                        tracing::info!(backend = %backend.url, "Backend answers again.");
                    }
                }
                None => {
                    backend
                        .up
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    if was_up {
                        tracing::warn!(backend = %backend.url, "Backend did not answer its model refresh.");
                    }
                }
            }
        }
        tokio::time::sleep(policy.upstream.model_refresh).await;
    }
}
