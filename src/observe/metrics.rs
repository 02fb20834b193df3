//! Prometheus metrics: names and label sets in one place, rendered at `GET /metrics`.
//!
//! Built once at startup and shared by every worker. Label values are bounded: routes are the
//! fixed route table (unknown paths are "other"), key ids come from the policy, reasons and
//! kinds are fixed codes. A key itself never appears, only its id.

use std::cell::RefCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
    pub key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    pub key_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub guard: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabels {
    /// `requests` (the rate limit) or `auth_failures` (the failed-key throttle).
    pub limiter: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub sha256: String,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    /// Tells this instance's handles apart in the per-thread cache (tests build several).
    id: u64,
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistFamily<RouteLabels>,
    pub ttft: Histogram,
    pub queue_wait: Histogram,
    pub backend_queue: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    pub key_in_flight: Family<KeyLabels, Gauge<i64, AtomicI64>>,
    pub prompt_tokens: Family<KeyLabels, Counter>,
    pub completion_tokens: Family<KeyLabels, Counter>,
    pub rejections: Family<ReasonLabels, Counter>,
    pub report_only: Family<GuardLabels, Counter>,
    pub upstream_errors: Family<KindLabels, Counter>,
    pub breaker_state: Gauge<i64, AtomicI64>,
    pub backend_breaker: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    pub backend_in_flight: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    pub backend_up: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    pub backend_loaded: Family<BackendLabels, Gauge<i64, AtomicI64>>,
    pub backend_choices: Family<ReasonLabels, Counter>,
    /// The four children of `backend_choices`, made once: counted on every model request.
    choice_counters: [(&'static str, Counter); 4],
    pub ratelimit_backend_errors: Family<ResultLabels, Counter>,
    pub reloads: Family<ResultLabels, Counter>,
    pub policy_info: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    /// 1 while the policy file on disk is the one in force; 0 after a rejected reload, until
    /// a good file (or the old one) is back.
    pub reload_ok: Gauge<i64, AtomicI64>,
    pub in_flight: Gauge<i64, AtomicI64>,
    pub streams: Gauge<i64, AtomicI64>,
    pub ratelimit_tracked: Gauge<i64, AtomicI64>,
    pub ratelimit_evictions: Family<LimiterLabels, Counter>,
    pub key_expiry: Family<KeyLabels, Gauge<i64, AtomicI64>>,
    pub ratelimit_overflow: Family<LimiterLabels, Counter>,
    current_policy: Mutex<Option<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("qwen_gateway");
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let backend_choices: Family<ReasonLabels, Counter> = Family::default();
        let choice_counters = ["affinity", "warm", "cold", "least_busy"].map(|reason| {
            let counter = backend_choices
                .get_or_create(&ReasonLabels { reason })
                .clone();
            (reason, counter)
        });
        let m = Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            ttft: latency_histogram(),
            queue_wait: latency_histogram(),
            backend_queue: Family::default(),
            key_in_flight: Family::default(),
            prompt_tokens: Family::default(),
            completion_tokens: Family::default(),
            rejections: Family::default(),
            report_only: Family::default(),
            upstream_errors: Family::default(),
            breaker_state: Gauge::default(),
            backend_breaker: Family::default(),
            backend_in_flight: Family::default(),
            backend_up: Family::default(),
            backend_loaded: Family::default(),
            backend_choices,
            choice_counters,
            ratelimit_backend_errors: Family::default(),
            reloads: Family::default(),
            policy_info: Family::default(),
            reload_ok: Gauge::default(),
            in_flight: Gauge::default(),
            streams: Gauge::default(),
            ratelimit_tracked: Gauge::default(),
            ratelimit_evictions: Family::default(),
            key_expiry: Family::default(),
            ratelimit_overflow: Family::default(),
            current_policy: Mutex::new(None),
            registry: Registry::default(),
        };
        r.register(
            "requests",
            "Requests answered, by route, status and key id",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request start to the end of the response, by route",
            m.latency.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Time from request start to the first streamed chunk",
            m.ttft.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens reported by Ollama, by key id",
            m.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Completion tokens reported by Ollama, by key id",
            m.completion_tokens.clone(),
        );
        r.register(
            "rejections",
            "Requests refused, by reason (auth, ip, rate, size, invalid, queue)",
            m.rejections.clone(),
        );
        r.register(
            "report_only",
            "Requests a report-only guard would have refused (served), by guard",
            m.report_only.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures, by kind",
            m.upstream_errors.clone(),
        );
        r.register(
            "breaker_state",
            "Worst circuit breaker state over all backends: 0 closed, 1 open, 2 half-open",
            m.breaker_state.clone(),
        );
        r.register(
            "backend_breaker_state",
            "Circuit breaker state per backend: 0 closed, 1 open, 2 half-open",
            m.backend_breaker.clone(),
        );
        r.register(
            "backend_in_flight_requests",
            "Requests being served per backend",
            m.backend_in_flight.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time model requests waited in the fair queue for a backend slot",
            m.queue_wait.clone(),
        );
        r.register(
            "backend_queue_waiting",
            "Requests waiting in the fair queue per backend",
            m.backend_queue.clone(),
        );
        r.register(
            "key_in_flight_requests",
            "Model requests in flight or waiting per key id",
            m.key_in_flight.clone(),
        );
        r.register(
            "backend_up",
            "Whether the backend answered its last model refresh (1) or not (0)",
            m.backend_up.clone(),
        );
        r.register(
            "backend_choice",
            "Model requests by why their backend was chosen (affinity, warm, cold, least_busy)",
            m.backend_choices.clone(),
        );
        r.register(
            "backend_loaded_models",
            "Models the backend has in memory (its /api/ps at the last refresh)",
            m.backend_loaded.clone(),
        );
        r.register(
            "ratelimit_backend_errors",
            "Rate-limit checks Redis could not answer, by what the gateway did (fail_open, fail_closed)",
            m.ratelimit_backend_errors.clone(),
        );
        r.register(
            "policy_reloads",
            "Policy reload attempts, by result",
            m.reloads.clone(),
        );
        r.register(
            "policy_reload_ok",
            "1 while the policy file is the one in force, 0 after a rejected reload until fixed",
            m.reload_ok.clone(),
        );
        r.register(
            "policy_info",
            "The loaded policy, identified by the sha256 of its file (value 1)",
            m.policy_info.clone(),
        );
        r.register(
            "in_flight_requests",
            "Requests being served",
            m.in_flight.clone(),
        );
        r.register(
            "in_flight_streams",
            "Streamed answers being sent",
            m.streams.clone(),
        );
        r.register(
            "ratelimit_tracked_identities",
            "Identities with live rate-limit state",
            m.ratelimit_tracked.clone(),
        );
        r.register(
            "key_expiry_timestamp_seconds",
            "When each key id's last key expires (Unix time), for keys with expires_at",
            m.key_expiry.clone(),
        );
        r.register(
            "ratelimit_evictions",
            "Idle identities (empty logs) removed from a full limiter table to make room",
            m.ratelimit_evictions.clone(),
        );
        r.register(
            "ratelimit_overflow",
            "Checks that shared the overflow limit because the limiter table was full of live \
             identities",
            m.ratelimit_overflow.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The counters one limiter reports through.
    pub fn limiter_counters(
        &self,
        limiter: &'static str,
    ) -> crate::limits::ratelimit::LimiterCounters {
        let labels = LimiterLabels { limiter };
        crate::limits::ratelimit::LimiterCounters {
            evictions: self.ratelimit_evictions.get_or_create(&labels).clone(),
            overflow: self.ratelimit_overflow.get_or_create(&labels).clone(),
        }
    }

    pub fn set_policy(&self, sha256: &str) {
        let mut cur = self
            .current_policy
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = cur.take() {
            self.policy_info.remove(&PolicyLabels { sha256: old });
        }
        self.policy_info
            .get_or_create(&PolicyLabels {
                sha256: sha256.to_owned(),
            })
            .set(1);
        *cur = Some(sha256.to_owned());
    }

    /// Each key id's latest `expires_at`, so that rotation is planned, not discovered.
    pub fn set_key_expiry(&self, policy: &crate::policy::Policy) {
        self.key_expiry.clear();
        let Some(auth) = &policy.auth else { return };
        let mut latest: std::collections::BTreeMap<&str, i64> = Default::default();
        for k in &auth.keys {
            let Some(exp) = k.expires_at else { continue };
            let secs = exp
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let e = latest.entry(&k.id).or_insert(secs);
            *e = (*e).max(secs);
        }
        for (id, secs) in latest {
            self.key_expiry
                .get_or_create(&KeyLabels {
                    key_id: id.to_owned(),
                })
                .set(secs);
        }
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn report_only(&self, guard: crate::policy::Guard) {
        self.report_only
            .get_or_create(&GuardLabels {
                guard: guard.name(),
            })
            .inc();
    }

    pub fn backend_choice(&self, why: &'static str) {
        match self.choice_counters.iter().find(|(r, _)| *r == why) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.backend_choices
                    .get_or_create(&ReasonLabels { reason: why })
                    .inc();
            }
        }
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Counts one finished request: status counter, latency histogram and token counters.
    ///
    /// Runs once per request, so it goes through per-thread handles: `Family::get_or_create`
    /// clones the label set, hashes it with SipHash and takes the family's lock every time,
    /// which cost more than the rest of the bookkeeping together. Families never drop a
    /// series, so a cached handle stays the one `/metrics` renders.
    pub fn record_request(&self, done: &FinishedRequest<'_>) {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if local.owner != self.id {
                *local = LocalHandles {
                    owner: self.id,
                    ..LocalHandles::default()
                };
            }
            let LocalHandles {
                by_key, latency, ..
            } = &mut *local;
            let key = match by_key.get_mut(done.key_id) {
                Some(k) => k,
                None => by_key
                    .entry(done.key_id.into())
                    .or_insert_with(|| KeyHandles {
                        requests: Vec::new(),
                        prompt: self
                            .prompt_tokens
                            .get_or_create(&KeyLabels {
                                key_id: done.key_id.to_owned(),
                            })
                            .clone(),
                        completion: self
                            .completion_tokens
                            .get_or_create(&KeyLabels {
                                key_id: done.key_id.to_owned(),
                            })
                            .clone(),
                    }),
            };
            match key
                .requests
                .iter()
                .find(|(r, s, _)| *r == done.route && *s == done.status)
            {
                Some((_, _, c)) => {
                    c.inc();
                }
                None => {
                    let c = self
                        .requests
                        .get_or_create(&RequestLabels {
                            route: done.route,
                            status: done.status,
                            key_id: done.key_id.to_owned(),
                        })
                        .clone();
                    c.inc();
                    key.requests.push((done.route, done.status, c));
                }
            }
            if let Some(n) = done.prompt_tokens {
                key.prompt.inc_by(n);
            }
            if let Some(n) = done.completion_tokens {
                key.completion.inc_by(n);
            }
            let hist = match latency.iter().find(|(r, _)| *r == done.route) {
                Some((_, h)) => h,
                None => {
                    let h = self
                        .latency
                        .get_or_create(&RouteLabels { route: done.route })
                        .clone();
                    latency.push((done.route, h));
                    &latency[latency.len() - 1].1
                }
            };
            hist.observe(done.latency.as_secs_f64());
        });
        if let Some(t) = done.ttft {
            self.ttft.observe(t.as_secs_f64());
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What [`Metrics::record_request`] needs to know of a finished request.
pub struct FinishedRequest<'a> {
    pub route: &'static str,
    pub status: u16,
    /// Empty when the request had no key.
    pub key_id: &'a str,
    pub latency: Duration,
    pub ttft: Option<Duration>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

struct KeyHandles {
    /// (route, status) -> counter; a handful per key.
    requests: Vec<(&'static str, u16, Counter)>,
    prompt: Counter,
    completion: Counter,
}

#[derive(Default)]
struct LocalHandles {
    owner: u64,
    /// Key ids come from the policy, not from clients: a fast hash is enough here.
    by_key: foldhash::HashMap<Box<str>, KeyHandles>,
    latency: Vec<(&'static str, Histogram)>,
}

thread_local! {
    static LOCAL: RefCell<LocalHandles> = RefCell::new(LocalHandles::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: "/v1/chat/completions",
                status: 200,
                key_id: "team-a".into(),
            })
            .inc();
        m.set_policy("abc");
        m.set_policy("def");
        let text = m.render();
        assert!(text.contains("qwen_gateway_requests_total{route=\"/v1/chat/completions\",status=\"200\",key_id=\"team-a\"} 1"), "{text}");
        assert!(text.contains("qwen_gateway_policy_info{sha256=\"def\"} 1"));
        assert!(!text.contains("sha256=\"abc\""));
    }
}
