//! The validated, runtime form of `policy.yaml`.
//!
//! `PolicyFile` (file.rs) mirrors the YAML; `validate` (validate.rs) is the only way to turn it
//! into a [`Policy`], whose fields are already the types the request path needs: parsed IP
//! sets, hashed keys, durations, a header name. A `Policy` is immutable; the reload path builds
//! a new one off to the side and publishes it with one `ArcSwap::store`.

mod error;
mod file;
mod load;
pub mod reload;
pub mod source;
mod validate;
#[cfg(test)]
pub use load::with_guards_off;
pub mod view;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use sha2::{Digest, Sha256};

pub use error::PolicyError;
pub use file::PolicyFile;

use crate::admission::client_ip::IpSet;
pub use crate::limits::quota::{Quota, RedisLimits};

/// One accepted API key. Only the SHA-256 digest is kept in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Shared, not copied, by every request made with the key (audit line, metrics).
    pub id: Arc<str>,
    /// `key:<id>`: the identity its requests are rate-limited under.
    pub limit_identity: String,
    pub digest: [u8; 32],
    pub rate_limit: Option<Quota>,
    /// Public model names this key may use; `None` means any.
    pub models: Option<BTreeSet<String>>,
    /// May manage models (pull, push, create, copy, delete) through Ollama's native API.
    pub admin: bool,
    /// Bounds that override `limits` for this key.
    pub limits: KeyLimits,
    /// Requests in flight or waiting at once for this key; `None`: no bound.
    pub max_concurrent: Option<u32>,
    /// Share of the GPU relative to other keys in the fair queue.
    pub weight: u32,
    /// This key's token quotas, instead of the policy's `token_limit`.
    pub token_limit: Option<Vec<crate::limits::quota::TokenQuota>>,
    /// From then on the key is refused as expired.
    pub expires_at: Option<std::time::SystemTime>,
    /// Before then the key is refused as not yet valid (a rotation's new key, staged).
    pub not_before: Option<std::time::SystemTime>,
}

impl ApiKey {
    pub fn new(
        id: String,
        digest: [u8; 32],
        rate_limit: Option<Quota>,
        models: Option<BTreeSet<String>>,
    ) -> Self {
        ApiKey {
            limit_identity: format!("key:{id}"),
            id: id.into(),
            digest,
            rate_limit,
            models,
            admin: false,
            limits: KeyLimits::default(),
            max_concurrent: None,
            weight: 1,
            token_limit: None,
            expires_at: None,
            not_before: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    pub header: HeaderName,
    pub keys: Vec<Arc<ApiKey>>,
    /// Failed key attempts tolerated per client IP before it is throttled.
    pub failures: Quota,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_prompt_chars: usize,
    pub max_body_bytes: usize,
    pub max_messages: usize,
    /// Images in one request, on every surface.
    pub max_images: usize,
    /// Largest image (decoded bytes, estimated from its base64 length).
    pub max_image_bytes: usize,
    /// Inputs in one embeddings request.
    pub max_embed_inputs: usize,
    /// Largest embeddings answer read from Ollama (it is held whole to be checked).
    pub max_embed_answer_bytes: usize,
    /// Ollama `options` a non-admin key may set; others are dropped (or refused).
    pub allowed_options: crate::limits::ollama_options::OptionSet,
    /// The whole request body must arrive within this (slow-drip clients get 408).
    pub body_timeout: Duration,
    /// Largest context a request may ask for; `None`: any.
    pub max_num_ctx: Option<u64>,
    /// Largest output limit, in every spelling; a request without one gets it. `None`: any.
    pub max_output_tokens: Option<u64>,
    /// Longest `keep_alive` a request may set (`-1` and `0` need an admin key).
    pub max_keep_alive: Duration,
    /// Refuse over-limit values (400) instead of clamping them.
    pub refuse_over_limit: bool,
}

/// Per-key bounds; each `None` falls back to `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyLimits {
    pub max_prompt_chars: Option<usize>,
    pub max_num_ctx: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_keep_alive: Option<Duration>,
}

/// Per-model settings from `models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelSettings {
    /// The context a request for this model gets when it asks for none.
    pub num_ctx: Option<u64>,
    pub max_prompt_chars: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

/// One Ollama host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:11434`.
    pub url: String,
    /// Relative share of load among backends that serve a model.
    pub weight: u32,
    /// Requests sent to it at once (its `OLLAMA_NUM_PARALLEL`); the rest wait in the queue.
    pub max_in_flight: usize,
    /// Models it holds in memory at once (its `OLLAMA_MAX_LOADED_MODELS`), when known: a
    /// request that would load one more there while it is busy evicts a model in use.
    pub max_loaded_models: Option<usize>,
}

/// How a backend is chosen among those that serve a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Where the work is cheapest: the conversation's backend (its prompt is cached there),
    /// then a backend with the model in memory, then one that must load it (one that would
    /// evict a model in use last), busy ones after free ones.
    CacheAware,
    /// Fewest requests in flight per unit of weight, ignoring loaded models and
    /// conversations (the gateway's routing before issue 21; kept for comparison).
    LeastBusy,
}

/// Where rate-limit counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitBackend {
    /// In this process (one gateway).
    Memory,
    /// In Redis, shared by every gateway using the same URL and prefix.
    Redis(RedisLimits),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamPolicy {
    /// Connect and liveness-probe budget; also how long to wait for headers before probing.
    pub timeout: Duration,
    /// How long a live Ollama may take to send its first byte (model load + prompt eval).
    pub first_token_timeout: Duration,
    /// Longest silence between two streamed chunks.
    pub stream_idle_timeout: Duration,
    /// Longest a streamed answer may last in all: a stream that never ends is cut.
    pub max_stream: Duration,
    /// How often each backend's model list (`/api/tags`) is refreshed.
    pub model_refresh: Duration,
    pub breaker: BreakerPolicy,
    /// Requests waiting for a backend at most, and for how long.
    pub max_waiting: usize,
    /// Of `max_waiting`, one key's share at most.
    pub max_waiting_per_key: usize,
    pub max_wait: Duration,
    pub routing: Routing,
    /// Longest a request waits for a busy backend that has its model in memory (or its
    /// conversation's prompt) while another backend has a free slot but would have to load
    /// the model.
    pub warm_wait: Duration,
    /// With `rate_limit.backend: redis`, a slot on a backend is a lease in Redis, renewed
    /// while its request runs: a gateway that dies frees its slots within this time.
    pub slot_lease: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPolicy {
    pub dir: Option<PathBuf>,
    pub user_id_header: HeaderName,
}

/// Public model name -> Ollama model name. Empty means "pass names through unchanged".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelMap {
    public_to_upstream: BTreeMap<String, String>,
    settings: BTreeMap<String, ModelSettings>,
}

impl ModelMap {
    pub fn new(map: BTreeMap<String, String>) -> Self {
        ModelMap {
            public_to_upstream: map,
            settings: BTreeMap::new(),
        }
    }

    pub fn with_settings(mut self, settings: BTreeMap<String, ModelSettings>) -> Self {
        self.settings = settings;
        self
    }

    /// A public model's settings (defaults when it has none).
    pub fn settings(&self, public: &str) -> ModelSettings {
        self.settings.get(public).copied().unwrap_or_default()
    }

    pub fn is_passthrough(&self) -> bool {
        self.public_to_upstream.is_empty()
    }

    /// The Ollama name for a public name, or `None` when the gateway does not serve it.
    pub fn to_upstream<'a>(&'a self, public: &'a str) -> Option<&'a str> {
        if self.is_passthrough() {
            return Some(public);
        }
        self.public_to_upstream.get(public).map(String::as_str)
    }

    /// Public names under which an Ollama model is offered.
    pub fn public_names<'a>(&'a self, upstream: &'a str) -> Vec<&'a str> {
        if self.is_passthrough() {
            return vec![upstream];
        }
        self.public_to_upstream
            .iter()
            .filter(|(_, up)| same_model(up, upstream))
            .map(|(public, _)| public.as_str())
            .collect()
    }

    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.public_to_upstream
    }
}

/// Ollama reports `qwen3:latest` for a model pulled as `qwen3`.
fn same_model(configured: &str, reported: &str) -> bool {
    configured == reported
        || (!configured.contains(':') && reported.strip_suffix(":latest") == Some(configured))
}

/// The whole validated policy. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub listen: SocketAddr,
    /// The Ollama hosts (`ollama_api` is the one-backend form).
    pub backends: Vec<Backend>,
    pub log_level: String,
    pub rate_limit: Option<Quota>,
    /// Each key's token quotas (per minute, per day); empty: none.
    pub token_limit: Vec<crate::limits::quota::TokenQuota>,
    pub limit_backend: LimitBackend,
    pub max_tracked_clients: u64,
    pub auth: Option<AuthPolicy>,
    pub whitelist: Option<IpSet>,
    pub trusted_proxies: IpSet,
    /// Who may read `/readyz` and `/metrics` (key ids, token counts, backends, reload
    /// errors): by the resolved client address.
    pub observers: IpSet,
    pub limits: Limits,
    pub upstream: UpstreamPolicy,
    pub models: ModelMap,
    pub audit: AuditPolicy,
    pub shutdown_grace: Duration,
    /// Guards that report instead of enforce.
    pub report_only: BTreeSet<Guard>,
    /// SHA-256 of the file's bytes, hex: identifies the policy in logs, metrics and /readyz.
    pub sha256: String,
    /// Things that load but deserve an operator's attention (plaintext keys, open ranges).
    pub warnings: Vec<String>,
    /// What the file wrote, field by field: a reload that would take something of it away
    /// waits for the file to stay unchanged (`reload.rs`).
    pub shape: Arc<yaml::Shape>,
}

/// Where a prompt limit is set: `auth.keys[id].limits`, `models[name]` or `limits`.
#[derive(Debug, Clone, Copy)]
pub enum LimitField<'a> {
    Key(&'a str),
    Model(&'a str),
    Limits,
}

impl std::fmt::Display for LimitField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitField::Key(id) => write!(f, "auth.keys[{id}].limits.max_prompt_chars"),
            LimitField::Model(m) => write!(f, "models[{m}].max_prompt_chars"),
            LimitField::Limits => f.write_str("limits.max_prompt_chars"),
        }
    }
}

/// A guard that can be switched to report-only (`report_only:` in the policy): it still
/// decides, but a refusal is recorded (audit `report_only`, metric, log) and the request is
/// served. Admin-only routes and the failed-key throttle's counting are not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Guard {
    Whitelist,
    Auth,
    RateLimit,
    TokenLimit,
    Models,
    PromptLimit,
    Clamps,
}

impl Guard {
    pub const ALL: [Guard; 7] = [
        Guard::Whitelist,
        Guard::Auth,
        Guard::RateLimit,
        Guard::TokenLimit,
        Guard::Models,
        Guard::PromptLimit,
        Guard::Clamps,
    ];

    /// The name used in `report_only:`, audit lines and the `guard` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Guard::Whitelist => "whitelist",
            Guard::Auth => "auth",
            Guard::RateLimit => "rate_limit",
            Guard::TokenLimit => "token_limit",
            Guard::Models => "models",
            Guard::PromptLimit => "prompt_limit",
            Guard::Clamps => "clamps",
        }
    }

    pub fn parse(name: &str) -> Option<Guard> {
        Guard::ALL.into_iter().find(|g| g.name() == name)
    }
}

pub const DEFAULT_PATH: &str = "/etc/qwen-gateway/policy.yaml";

impl Policy {
    /// A backend's `max_loaded_models`, when the policy knows it.
    pub fn max_loaded_models(&self, url: &str) -> Option<usize> {
        self.backends
            .iter()
            .find(|b| b.url == url)
            .and_then(|b| b.max_loaded_models)
    }

    /// A backend's `max_in_flight` (1 for a URL the policy does not name).
    pub fn max_in_flight(&self, url: &str) -> usize {
        self.backends
            .iter()
            .find(|b| b.url == url)
            .map_or(1, |b| b.max_in_flight)
    }

    /// The prompt limit for a request: the key's own, else the model's, else `limits`.
    pub fn prompt_limit(&self, key: Option<&ApiKey>, model: Option<&str>) -> usize {
        self.prompt_limit_rule(key, model).0
    }

    /// The prompt limit and the policy field it comes from (for audit reasons and `explain`;
    /// named only when printed, so the per-request check allocates nothing).
    pub fn prompt_limit_rule<'a>(
        &'a self,
        key: Option<&'a ApiKey>,
        model: Option<&'a str>,
    ) -> (usize, LimitField<'a>) {
        if let Some(k) = key
            && let Some(max) = k.limits.max_prompt_chars
        {
            return (max, LimitField::Key(&k.id));
        }
        if let Some(m) = model
            && let Some(max) = self.models.settings(m).max_prompt_chars
        {
            return (max, LimitField::Model(m));
        }
        (self.limits.max_prompt_chars, LimitField::Limits)
    }

    /// Why a key may not use a public model (its `models` does not list it: 403), as every
    /// route that names a model decides it; `None`: it may. The server and `explain` both ask
    /// this, then `models.to_upstream` (404 when the gateway does not serve it), apart, since
    /// a report-only refusal goes on to the model.
    pub fn model_refusal(&self, key: Option<&ApiKey>, model: &str) -> Option<String> {
        let k = key?;
        let allowed = k.models.as_ref()?;
        (!allowed.contains(model))
            .then(|| format!("auth.keys[{}].models does not list {model}", k.id))
    }

    /// Whether `guard` only reports (`report_only:`) instead of refusing.
    pub fn reports(&self, guard: Guard) -> bool {
        self.report_only.contains(&guard)
    }

    /// The request clamps for a key (if any) and a public model.
    pub fn clamps(&self, key: Option<&ApiKey>, model: &str) -> crate::limits::clamp::Clamps {
        let kl = key.map(|k| k.limits).unwrap_or_default();
        crate::limits::clamp::Clamps {
            max_num_ctx: kl.max_num_ctx.or(self.limits.max_num_ctx),
            max_output_tokens: kl.max_output_tokens.or(self.limits.max_output_tokens),
            max_keep_alive: kl.max_keep_alive.unwrap_or(self.limits.max_keep_alive),
            refuse: self.limits.refuse_over_limit,
            default_num_ctx: self.models.settings(model).num_ctx,
            admin: key.is_some_and(|k| k.admin),
            allowed_options: self.limits.allowed_options,
        }
    }

    /// The dotted names of keys that changed between two policies and cannot be applied live.
    pub fn needs_restart(&self, new: &Policy) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.listen != new.listen {
            v.push("listen");
        }
        if self.audit.dir != new.audit.dir {
            v.push("audit.dir");
        }
        if self.shutdown_grace != new.shutdown_grace {
            v.push("shutdown_grace_seconds");
        }
        if self.max_tracked_clients != new.max_tracked_clients {
            v.push("rate_limit.max_tracked_clients");
        }
        // The probe and header budgets apply at once; the connect timeout is built into each
        // worker's client at start.
        if self.upstream.timeout != new.upstream.timeout {
            v.push("upstream.timeout_seconds (its connect timeout)");
        }
        v
    }

    /// The one-screen summary `qwen-gateway check` prints.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "listen:          {}", self.listen);
        let _ = writeln!(s, "backends:        {}", describe_backends(&self.backends));
        let _ = writeln!(s, "log_level:       {}", self.log_level);
        match &self.auth {
            Some(a) => {
                let ids: Vec<&str> = a.keys.iter().map(|k| &*k.id).collect();
                let _ = writeln!(
                    s,
                    "auth:            on, header {}, {} key(s): {}",
                    a.header,
                    a.keys.len(),
                    ids.join(", ")
                );
            }
            None => {
                let _ = writeln!(s, "auth:            OFF");
            }
        }
        let _ = writeln!(
            s,
            "whitelist:       {}",
            describe_set(self.whitelist.as_ref())
        );
        let _ = writeln!(
            s,
            "trusted_proxies: {}",
            describe_set(Some(&self.trusted_proxies))
        );
        let _ = writeln!(
            s,
            "rate_limit:      {} ({})",
            describe_quota(self.rate_limit),
            describe_limit_backend(&self.limit_backend)
        );
        let _ = writeln!(
            s,
            "limits:          prompt {} chars, body {} bytes, {} messages",
            self.limits.max_prompt_chars, self.limits.max_body_bytes, self.limits.max_messages
        );
        let _ = writeln!(
            s,
            "upstream:        connect/probe {:?}, first token {:?}, stream idle {:?}, stream max {:?}, breaker {} failures / {:?}",
            self.upstream.timeout,
            self.upstream.first_token_timeout,
            self.upstream.stream_idle_timeout,
            self.upstream.max_stream,
            self.upstream.breaker.failure_threshold,
            self.upstream.breaker.cooldown
        );
        if self.models.is_passthrough() {
            let _ = writeln!(s, "models:          pass-through");
        } else {
            for (public, up) in self.models.entries() {
                let _ = writeln!(s, "model:           {public} -> {up}");
            }
        }
        let _ = writeln!(
            s,
            "audit:           {}",
            self.audit
                .dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "OFF".to_owned())
        );
        let _ = writeln!(s, "sha256:          {}", self.sha256);
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

fn describe_set(set: Option<&IpSet>) -> String {
    match set {
        None => "off (every address allowed)".to_owned(),
        Some(s) => s
            .nets()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn describe_backends(b: &[Backend]) -> String {
    b.iter()
        .map(|b| format!("{} (weight {})", b.url, b.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_limit_backend(b: &LimitBackend) -> String {
    match b {
        LimitBackend::Memory => "in memory".to_owned(),
        LimitBackend::Redis(r) => format!(
            "redis, fail {}, timeout {:?}",
            if r.fail_open { "open" } else { "closed" },
            r.timeout
        ),
    }
}

fn describe_quota(q: Option<Quota>) -> String {
    match q {
        None => "off".to_owned(),
        Some(q) => format!("{} per {}s", q.max_requests, q.window.as_secs()),
    }
}

/// The policy's identity in logs, metrics and `/readyz`: SHA-256 of the file's bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<64 lowercase hex>` of a key, the form `auth` entries may use instead of plaintext.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

pub fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}
