//! Process-wide state, built once before the server starts and shared by every worker.
//!
//! The policy (`ArcSwap`), the rate limiters, the backends' breakers and the metrics. State
//! created inside the per-worker app factory would be multiplied by the worker count (and so
//! would every limit); only the awc client and the Redis connection are per worker, by design.
//! Handlers and the upstream client depend on this module, never on the one that builds routes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::limits::ratelimit::RateLimiter;
use crate::observe::audit::AuditSink;
use crate::observe::metrics::{BackendLabels, Metrics};
use crate::observe::telemetry::{AuditWriter, LogLevel};
use crate::policy::Policy;
use crate::shutdown::Shutdown;
use crate::upstream::backends::Backends;

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
    /// The last [`HISTORY`] reloads, oldest first, for `/status`.
    pub history: std::collections::VecDeque<ReloadEntry>,
}

/// Reloads kept in the history.
pub const HISTORY: usize = 32;

/// One reload attempt, as `/status` and `qwen-gateway status` show it. Never a secret: key
/// ids and what changed, or the error (which names fields, never values).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadEntry {
    pub at: String,
    /// `startup`, `watcher` (a file event) or `SIGHUP`.
    pub trigger: &'static str,
    /// `loaded` (startup), `applied`, `rejected`, or `restored` (the file is back to the
    /// running policy after a rejected edit).
    pub result: &'static str,
    /// SHA-256 of the file read, when it could be read.
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// Changed settings that apply only after a restart.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ReloadStatus {
    pub fn record(&mut self, entry: ReloadEntry) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(entry);
    }
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
    /// Requests in flight or waiting per key (`max_concurrent`).
    pub per_key: Arc<crate::limits::queue::PerKey>,
    /// Token quotas' logs (`token_limit`), surviving reloads.
    pub tokens: Arc<crate::limits::ratelimit::tokens::TokenLimiter>,
    /// Each key's recent token use, which orders the fair queue (added to by each meter).
    pub usage: Arc<crate::limits::queue::Usage>,
    /// This gateway's part of the slots shared through Redis.
    pub fleet: crate::upstream::fleet::Fleet,
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
        metrics.reload_ok.set(1);
        metrics.set_key_expiry(&policy);
        let max_tracked = policy.max_tracked_clients;
        let now = SystemTime::now();
        let sha256 = policy.sha256.clone();
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
            usage: Arc::default(),
            fleet: crate::upstream::fleet::Fleet::default(),
            metrics,
            reload: Mutex::new(ReloadStatus {
                ok: true,
                at: now,
                error: None,
                loaded_at: now,
                in_progress_since: None,
                history: std::collections::VecDeque::from([ReloadEntry {
                    at: crate::observe::audit::rfc3339(now),
                    trigger: "startup",
                    result: "loaded",
                    sha256: Some(sha256),
                    changes: Vec::new(),
                    needs_restart: Vec::new(),
                    error: None,
                }]),
            }),
            log_level,
            shutdown: Arc::new(Shutdown::default()),
            per_key: Arc::default(),
            tokens: Arc::new(crate::limits::ratelimit::tokens::TokenLimiter::new(
                max_tracked,
            )),
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
            self.metrics
                .backend_loaded
                .get_or_create(&labels)
                .set(i64::try_from(b.loaded_models().len()).unwrap_or(i64::MAX));
            self.metrics
                .backend_queue
                .get_or_create(&labels)
                .set(i64::try_from(b.slots.load().1).unwrap_or(i64::MAX));
        }
        self.metrics.breaker_state.set(worst);
        // Keys come from the policy: a bounded label set.
        self.metrics.key_in_flight.clear();
        for (key, n) in self.per_key.snapshot() {
            self.metrics
                .key_in_flight
                .get_or_create(&crate::observe::metrics::KeyLabels {
                    key_id: key.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
