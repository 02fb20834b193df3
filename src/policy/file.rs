//! Wire structs that mirror `policy.yaml` exactly: serde only, no logic.
//!
//! Every struct denies unknown fields, because a typo in a security policy (`whitelsit:`) must
//! be an error, not a silently disabled guard. Optional fields are `Option` here; defaults are
//! applied in `validate.rs`, which is the only way to turn these into a runtime `Policy`.
//! The field documentation for operators lives in `policy/policy.yaml`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub listen: Option<String>,
    pub ollama_api: Option<String>,
    pub backends: Option<Vec<BackendFile>>,
    pub log_level: Option<String>,
    pub rate_limit: Option<RateLimitFile>,
    pub auth: Option<AuthFile>,
    pub whitelist: Option<WhitelistFile>,
    pub trusted_proxies: Option<Vec<String>>,
    pub observers: Option<Vec<String>>,
    pub limits: Option<LimitsFile>,
    pub upstream: Option<UpstreamFile>,
    pub queue: Option<QueueFile>,
    pub token_limit: Option<TokenLimitFile>,
    pub models: Option<BTreeMap<String, ModelFile>>,
    pub audit: Option<AuditFile>,
    pub shutdown_grace_seconds: Option<u64>,
    pub report_only: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub enabled: Option<bool>,
    pub max_requests: Option<u32>,
    pub window_seconds: Option<u64>,
    pub max_tracked_clients: Option<u64>,
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    pub redis_timeout_ms: Option<u64>,
    pub redis_failure: Option<String>,
    pub redis_key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    pub url: String,
    pub weight: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub max_loaded_models: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitFile {
    pub max_requests: u32,
    pub window_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub enabled: Option<bool>,
    pub header_key: Option<String>,
    pub valid_keys: Option<Vec<String>>,
    pub keys: Option<Vec<NamedKeyFile>>,
    pub max_failures: Option<u32>,
    pub failure_window_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedKeyFile {
    pub id: String,
    pub key: String,
    pub rate_limit: Option<KeyLimitFile>,
    pub models: Option<Vec<String>>,
    pub admin: Option<bool>,
    pub limits: Option<KeyLimitsFile>,
    pub max_concurrent: Option<u32>,
    pub weight: Option<u32>,
    pub token_limit: Option<TokenLimitFile>,
    pub expires_at: Option<String>,
    pub not_before: Option<String>,
}

/// Per-key bounds that override `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimitsFile {
    pub max_prompt_chars: Option<usize>,
    pub max_num_ctx: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_keep_alive_seconds: Option<u64>,
}

/// A `models` entry: the Ollama name, or the name with per-model settings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ModelFile {
    Name(String),
    Full(ModelEntryFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntryFile {
    pub name: String,
    pub num_ctx: Option<u64>,
    pub max_prompt_chars: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhitelistFile {
    pub enabled: Option<bool>,
    pub ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_prompt_chars: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_messages: Option<usize>,
    pub max_images: Option<usize>,
    pub max_image_bytes: Option<usize>,
    pub max_embed_inputs: Option<usize>,
    pub max_embed_answer_bytes: Option<usize>,
    pub allowed_options: Option<Vec<String>>,
    pub body_timeout_seconds: Option<f64>,
    pub max_num_ctx: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_keep_alive_seconds: Option<u64>,
    pub over_limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub timeout_seconds: Option<f64>,
    pub first_token_timeout_seconds: Option<f64>,
    pub stream_idle_timeout_seconds: Option<f64>,
    pub max_stream_seconds: Option<f64>,
    pub model_refresh_seconds: Option<f64>,
    pub max_in_flight: Option<usize>,
    pub routing: Option<String>,
    pub warm_wait_seconds: Option<f64>,
    pub slot_lease_seconds: Option<f64>,
    pub breaker: Option<BreakerFile>,
}

/// Tokens (prompt + completion) per key per minute and per day.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitFile {
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    pub max_waiting: Option<usize>,
    pub max_waiting_per_key: Option<usize>,
    pub max_wait_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    pub failure_threshold: Option<u32>,
    pub cooldown_seconds: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFile {
    pub dir: Option<String>,
    pub user_id_header: Option<String>,
}
