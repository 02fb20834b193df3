//! `PolicyFile` -> `Policy`: defaults, every semantic check, and warnings.
//!
//! Errors carry the dotted key path (`auth.keys[1].key`), never a key's value. Defaults here
//! are the ones documented in `policy/policy.yaml`; change both together.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderName;

use super::file::{AuthFile, KeyLimitFile, KeyLimitsFile, ModelFile, PolicyFile, TokenLimitFile};
use super::{
    ApiKey, AuditPolicy, AuthPolicy, Backend, BreakerPolicy, KeyLimits, LimitBackend, Limits,
    ModelMap, ModelSettings, Policy, PolicyError, Quota, RedisLimits, UpstreamPolicy, digest,
};
use crate::admission::client_ip::{IpSet, parse_net};
use crate::limits::ollama_options::OptionSet;
use crate::limits::quota::TokenQuota;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:18789";
pub const DEFAULT_OLLAMA: &str = "http://127.0.0.1:11434";
pub const DEFAULT_MAX_PROMPT_CHARS: usize = 200_000;
/// 4 MiB: a 100,000-character prompt, or 32,768 CJK characters (3 bytes each), must reach the
/// prompt check and get its 400 rather than a 413; images in messages need room too.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Images a request may carry: each costs the model hundreds to thousands of tokens.
pub const DEFAULT_MAX_IMAGES: usize = 16;
/// Largest image: 4 MiB decoded, the size of the default body.
pub const DEFAULT_MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;
/// Inputs in one embeddings request: a RAG indexer's batch (LangChain sends 1,000).
pub const DEFAULT_MAX_EMBED_INPUTS: usize = 1_024;
/// 32 MiB: 1,024 inputs of 1,024-dimension vectors (~20 MB as JSON) fit.
pub const DEFAULT_MAX_EMBED_ANSWER_BYTES: usize = 32 << 20;
const MAX_WINDOW_SECS: u64 = 86_400;
/// Requests sent to one Ollama at once: Ollama's `OLLAMA_NUM_PARALLEL` chooses 4 or 1 by
/// available memory; set it to what yours uses.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

fn in_flight(key: &str, v: usize) -> Result<usize, PolicyError> {
    if !(1..=10_000).contains(&v) {
        return Err(PolicyError::invalid(key, "must be between 1 and 10000"));
    }
    Ok(v)
}
/// Keys expiring sooner than this are warned about at load and by `check`.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// The guards' sections, which must each be present and say `enabled:` explicitly.
pub const GUARD_SECTIONS: [&str; 3] = ["auth", "whitelist", "rate_limit"];

/// A policy cut anywhere before its end must not switch a guard off, so a guard is never off
/// by omission: its section and its `enabled` flag must both be written out.
fn guards_explicit(f: &PolicyFile, errors: &mut Vec<PolicyError>) {
    let enabled = [
        f.auth.as_ref().map(|a| a.enabled.is_some()),
        f.whitelist.as_ref().map(|w| w.enabled.is_some()),
        f.rate_limit.as_ref().map(|r| r.enabled.is_some()),
    ];
    for (section, state) in GUARD_SECTIONS.into_iter().zip(enabled) {
        match state {
            None => errors.push(PolicyError::MissingSection {
                section,
                reason: "section is missing: every policy must say whether this guard is on \
                         (write `enabled: false` to turn it off)",
            }),
            Some(false) => errors.push(PolicyError::MissingSection {
                section,
                reason: "section does not set `enabled`: write `enabled: true` or \
                         `enabled: false`",
            }),
            Some(true) => {}
        }
    }
}

/// The section's value, or `None` with its error kept: sections are validated
/// independently, so one run reports every broken section.
fn take<T>(errors: &mut Vec<PolicyError>, r: Result<T, PolicyError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

/// `PolicyFile` -> `Policy`: one function per section, every section checked even when
/// another failed; all errors are returned together.
pub fn validate(f: PolicyFile, sha256: String) -> Result<Policy, PolicyError> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    guards_explicit(&f, &mut errors);
    let e = &mut errors;
    let listen = take(e, validate_listen(f.listen.as_deref(), &mut warnings));
    let backends = take(e, validate_backends(&f));
    let log_level = take(e, validate_log_level(f.log_level.clone()));
    let rate = take(e, validate_rate_limit(f.rate_limit.unwrap_or_default()));
    let token_limit = take(
        e,
        f.token_limit
            .as_ref()
            .map_or(Ok(Vec::new()), |t| token_quotas("token_limit", t)),
    );
    let models = take(e, validate_models(f.models.unwrap_or_default()));
    let auth = take(
        e,
        validate_auth(f.auth.unwrap_or_default(), models.as_ref(), &mut warnings),
    );
    let whitelist = take(e, validate_whitelist(f.whitelist.unwrap_or_default()));
    let trusted_proxies = take(
        e,
        validate_trusted_proxies(f.trusted_proxies, &mut warnings),
    );
    let observers = take(
        e,
        match &f.observers {
            Some(list) => ip_set("observers", list),
            None => ip_set(
                "observers",
                &["127.0.0.1/32".to_owned(), "::1/128".to_owned()],
            ),
        },
    );
    let limits = take(e, validate_limits(f.limits.unwrap_or_default()));
    let upstream = take(
        e,
        validate_upstream(f.upstream.unwrap_or_default(), f.queue.unwrap_or_default()),
    );
    let audit = take(
        e,
        validate_audit(f.audit.unwrap_or_default(), &mut warnings),
    );
    let report_only = take(
        e,
        report_only(f.report_only.unwrap_or_default(), &mut warnings),
    );
    if let Some(e) = PolicyError::from_many(errors) {
        return Err(e);
    }
    let (
        Some(listen),
        Some(backends),
        Some(log_level),
        Some((rate_limit, limit_backend, max_tracked_clients)),
        Some(token_limit),
        Some(models),
        Some(auth),
        Some(whitelist),
        Some(trusted_proxies),
        Some(observers),
        Some(limits),
        Some(upstream),
        Some(audit),
        Some(report_only),
    ) = (
        listen,
        backends,
        log_level,
        rate,
        token_limit,
        models,
        auth,
        whitelist,
        trusted_proxies,
        observers,
        limits,
        upstream,
        audit,
        report_only,
    )
    else {
        // Every `None` above pushed its error, so this is not reached.
        return Err(PolicyError::invalid("policy", "could not be validated"));
    };
    if auth.is_none() {
        warnings.push(
            "auth is disabled: anyone who can reach the gateway can use the model".to_owned(),
        );
    }
    Ok(Policy {
        listen,
        backends,
        log_level,
        rate_limit,
        token_limit,
        limit_backend,
        max_tracked_clients,
        auth,
        whitelist,
        trusted_proxies,
        observers,
        limits,
        upstream,
        models,
        audit,
        shutdown_grace: Duration::from_secs(f.shutdown_grace_seconds.unwrap_or(30)),
        report_only,
        sha256,
        warnings,
        shape: Arc::default(),
    })
}

fn validate_listen(
    listen: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<SocketAddr, PolicyError> {
    let listen = parse_listen(listen.unwrap_or(DEFAULT_LISTEN))?;
    if listen.ip().is_unspecified() {
        warnings.push(format!(
            "listen {listen} accepts connections on every interface; behind a local Nginx, \
             127.0.0.1:{} is enough",
            listen.port()
        ));
    }
    Ok(listen)
}

/// `ollama_api` (one Ollama) or `backends` (several), with `upstream.max_in_flight` as each
/// backend's default.
fn validate_backends(f: &PolicyFile) -> Result<Vec<Backend>, PolicyError> {
    let default_in_flight = in_flight(
        "upstream.max_in_flight",
        f.upstream
            .as_ref()
            .and_then(|u| u.max_in_flight)
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT),
    )?;
    let backends = match (&f.ollama_api, &f.backends) {
        (Some(_), Some(_)) => {
            return Err(PolicyError::invalid(
                "backends",
                "set either ollama_api (one Ollama) or backends (several), not both",
            ));
        }
        (Some(one), None) => vec![Backend {
            url: parse_ollama("ollama_api", one)?,
            weight: 1,
            max_in_flight: default_in_flight,
            max_loaded_models: None,
        }],
        (None, None) => vec![Backend {
            url: parse_ollama("ollama_api", DEFAULT_OLLAMA)?,
            weight: 1,
            max_in_flight: default_in_flight,
            max_loaded_models: None,
        }],
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(PolicyError::invalid("backends", "needs at least one entry"));
            }
            let mut out: Vec<Backend> = Vec::new();
            for (i, b) in list.iter().enumerate() {
                let url = parse_ollama(&format!("backends[{i}].url"), &b.url)?;
                if out.iter().any(|o| o.url == url) {
                    return Err(PolicyError::invalid(
                        format!("backends[{i}].url"),
                        "names a backend listed before it",
                    ));
                }
                let weight = b.weight.unwrap_or(1);
                if !(1..=1000).contains(&weight) {
                    return Err(PolicyError::invalid(
                        format!("backends[{i}].weight"),
                        "must be between 1 and 1000",
                    ));
                }
                let max_in_flight = in_flight(
                    &format!("backends[{i}].max_in_flight"),
                    b.max_in_flight.unwrap_or(default_in_flight),
                )?;
                let max_loaded_models = match b.max_loaded_models {
                    Some(0) => {
                        return Err(PolicyError::invalid(
                            format!("backends[{i}].max_loaded_models"),
                            "must be > 0",
                        ));
                    }
                    other => other,
                };
                out.push(Backend {
                    url,
                    weight,
                    max_in_flight,
                    max_loaded_models,
                });
            }
            out
        }
    };
    Ok(backends)
}

fn validate_log_level(level: Option<String>) -> Result<String, PolicyError> {
    let log_level = level.unwrap_or_else(|| "info".to_owned());
    if !["trace", "debug", "info", "warn", "error"].contains(&log_level.as_str()) {
        return Err(PolicyError::invalid(
            "log_level",
            "must be one of trace, debug, info, warn, error",
        ));
    }
    Ok(log_level)
}

/// The default request limit, where it is counted, and how many identities are tracked.
fn validate_rate_limit(
    rl: super::file::RateLimitFile,
) -> Result<(Option<Quota>, LimitBackend, u64), PolicyError> {
    let rate_limit = if rl.enabled.unwrap_or(false) {
        Some(quota(
            "rate_limit",
            rl.max_requests.unwrap_or(30),
            rl.window_seconds.unwrap_or(60),
        )?)
    } else {
        None
    };
    let limit_backend = match rl.backend.as_deref().unwrap_or("memory") {
        "memory" => {
            if rl.redis_url.is_some() {
                return Err(PolicyError::invalid(
                    "rate_limit.redis_url",
                    "is set but rate_limit.backend is memory",
                ));
            }
            LimitBackend::Memory
        }
        "redis" => {
            let url = rl.redis_url.clone().ok_or_else(|| {
                PolicyError::invalid("rate_limit.redis_url", "is required with backend: redis")
            })?;
            // rediss:// (TLS) is refused rather than accepted and failed at run time: the
            // Redis client is built without TLS (Redis sits next to the gateways).
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                return Err(PolicyError::invalid(
                    "rate_limit.redis_url",
                    "must start with redis:// or unix:// (TLS to Redis is not supported)",
                ));
            }
            let timeout_ms = rl.redis_timeout_ms.unwrap_or(50);
            if !(1..=10_000).contains(&timeout_ms) {
                return Err(PolicyError::invalid(
                    "rate_limit.redis_timeout_ms",
                    "must be between 1 and 10000",
                ));
            }
            let fail_open = match rl.redis_failure.as_deref().unwrap_or("open") {
                "open" => true,
                "closed" => false,
                _ => {
                    return Err(PolicyError::invalid(
                        "rate_limit.redis_failure",
                        "must be open or closed",
                    ));
                }
            };
            let key_prefix = rl
                .redis_key_prefix
                .clone()
                .unwrap_or_else(|| "qwen-gateway:rl:".to_owned());
            LimitBackend::Redis(RedisLimits {
                url,
                timeout: Duration::from_millis(timeout_ms),
                fail_open,
                key_prefix,
            })
        }
        _ => {
            return Err(PolicyError::invalid(
                "rate_limit.backend",
                "must be memory or redis",
            ));
        }
    };
    let max_tracked_clients = rl.max_tracked_clients.unwrap_or(100_000);
    if !(100..=10_000_000).contains(&max_tracked_clients) {
        return Err(PolicyError::invalid(
            "rate_limit.max_tracked_clients",
            "must be between 100 and 10000000",
        ));
    }
    Ok((rate_limit, limit_backend, max_tracked_clients))
}

fn validate_whitelist(wl: super::file::WhitelistFile) -> Result<Option<IpSet>, PolicyError> {
    let whitelist = if wl.enabled.unwrap_or(false) {
        let ips = wl.ips.unwrap_or_default();
        if ips.is_empty() {
            return Err(PolicyError::invalid(
                "whitelist.ips",
                "is empty, which would refuse every client; set whitelist.enabled: false to \
                 allow every address",
            ));
        }
        Some(ip_set("whitelist.ips", &ips)?)
    } else {
        None
    };
    Ok(whitelist)
}

fn validate_trusted_proxies(
    list: Option<Vec<String>>,
    warnings: &mut Vec<String>,
) -> Result<IpSet, PolicyError> {
    let trusted_proxies = match list {
        Some(list) => ip_set("trusted_proxies", &list)?,
        None => ip_set(
            "trusted_proxies",
            &["127.0.0.1/32".to_owned(), "::1/128".to_owned()],
        )?,
    };
    if trusted_proxies.covers_everything() {
        warnings.push(
            "trusted_proxies covers every address: any client can choose its own IP with \
             X-Forwarded-For, which defeats the whitelist and per-IP limits"
                .to_owned(),
        );
    }
    Ok(trusted_proxies)
}

fn validate_limits(lf: super::file::LimitsFile) -> Result<Limits, PolicyError> {
    let limits = Limits {
        max_prompt_chars: lf.max_prompt_chars.unwrap_or(DEFAULT_MAX_PROMPT_CHARS),
        max_body_bytes: lf.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        max_messages: lf.max_messages.unwrap_or(1_000),
        max_images: lf.max_images.unwrap_or(DEFAULT_MAX_IMAGES),
        max_image_bytes: lf.max_image_bytes.unwrap_or(DEFAULT_MAX_IMAGE_BYTES),
        max_embed_inputs: lf.max_embed_inputs.unwrap_or(DEFAULT_MAX_EMBED_INPUTS),
        max_embed_answer_bytes: lf
            .max_embed_answer_bytes
            .unwrap_or(DEFAULT_MAX_EMBED_ANSWER_BYTES),
        allowed_options: match &lf.allowed_options {
            None => OptionSet::default(),
            Some(names) => OptionSet::parse(names.iter().map(String::as_str)).map_err(|n| {
                PolicyError::invalid(
                    "limits.allowed_options",
                    format!("{n:?} is not an option Ollama reads"),
                )
            })?,
        },
        body_timeout: seconds("limits.body_timeout_seconds", lf.body_timeout_seconds, 30.0)?,
        max_num_ctx: positive("limits.max_num_ctx", lf.max_num_ctx)?,
        max_output_tokens: positive(
            "limits.max_output_tokens",
            lf.max_output_tokens.or(Some(8_192)),
        )?,
        max_keep_alive: Duration::from_secs(
            positive("limits.max_keep_alive_seconds", lf.max_keep_alive_seconds)?.unwrap_or(1_800),
        ),
        refuse_over_limit: match lf.over_limit.as_deref().unwrap_or("clamp") {
            "clamp" => false,
            "refuse" => true,
            _ => {
                return Err(PolicyError::invalid(
                    "limits.over_limit",
                    "must be clamp or refuse",
                ));
            }
        },
    };
    if limits.max_prompt_chars == 0 {
        return Err(PolicyError::invalid(
            "limits.max_prompt_chars",
            "must be > 0",
        ));
    }
    if !(1024..=256 * 1024 * 1024).contains(&limits.max_body_bytes) {
        return Err(PolicyError::invalid(
            "limits.max_body_bytes",
            "must be between 1024 and 268435456",
        ));
    }
    if limits.max_messages == 0 {
        return Err(PolicyError::invalid("limits.max_messages", "must be > 0"));
    }
    if limits.max_embed_inputs == 0 {
        return Err(PolicyError::invalid(
            "limits.max_embed_inputs",
            "must be > 0",
        ));
    }
    if !(1 << 20..=1 << 30).contains(&limits.max_embed_answer_bytes) {
        return Err(PolicyError::invalid(
            "limits.max_embed_answer_bytes",
            "must be between 1048576 and 1073741824",
        ));
    }
    if limits.max_image_bytes == 0 {
        return Err(PolicyError::invalid(
            "limits.max_image_bytes",
            "must be > 0",
        ));
    }
    Ok(limits)
}

/// `upstream` and `queue`: timeouts, the breaker, the fair queue's bounds.
fn validate_upstream(
    uf: super::file::UpstreamFile,
    qf: super::file::QueueFile,
) -> Result<UpstreamPolicy, PolicyError> {
    let bf = uf.breaker.unwrap_or_default();
    let upstream = UpstreamPolicy {
        timeout: seconds("upstream.timeout_seconds", uf.timeout_seconds, 3.0)?,
        first_token_timeout: seconds(
            "upstream.first_token_timeout_seconds",
            uf.first_token_timeout_seconds,
            120.0,
        )?,
        stream_idle_timeout: seconds(
            "upstream.stream_idle_timeout_seconds",
            uf.stream_idle_timeout_seconds,
            60.0,
        )?,
        max_stream: seconds("upstream.max_stream_seconds", uf.max_stream_seconds, 3600.0)?,
        model_refresh: seconds(
            "upstream.model_refresh_seconds",
            uf.model_refresh_seconds,
            15.0,
        )?,
        max_waiting: qf.max_waiting.unwrap_or(256).min(1_000_000),
        // A quarter of the places by default: four keys can fill the queue, one cannot.
        max_waiting_per_key: match qf.max_waiting_per_key {
            Some(0) => {
                return Err(PolicyError::invalid(
                    "queue.max_waiting_per_key",
                    "must be > 0",
                ));
            }
            Some(n) => n,
            None => (qf.max_waiting.unwrap_or(256).min(1_000_000) / 4).max(1),
        },
        max_wait: seconds("queue.max_wait_seconds", qf.max_wait_seconds, 30.0)?,
        routing: match uf.routing.as_deref() {
            None | Some("cache_aware") => super::Routing::CacheAware,
            Some("least_busy") => super::Routing::LeastBusy,
            Some(_) => {
                return Err(PolicyError::invalid(
                    "upstream.routing",
                    "must be cache_aware or least_busy",
                ));
            }
        },
        warm_wait: match uf.warm_wait_seconds {
            Some(0.0) => Duration::ZERO,
            other => seconds("upstream.warm_wait_seconds", other, 3.0)?,
        },
        slot_lease: seconds("upstream.slot_lease_seconds", uf.slot_lease_seconds, 15.0)?,
        breaker: BreakerPolicy {
            failure_threshold: bf.failure_threshold.unwrap_or(5),
            cooldown: seconds(
                "upstream.breaker.cooldown_seconds",
                bf.cooldown_seconds,
                10.0,
            )?,
        },
    };
    if upstream.slot_lease < std::time::Duration::from_secs(1) {
        return Err(PolicyError::invalid(
            "upstream.slot_lease_seconds",
            "must be at least 1 (a lease is renewed every third of it)",
        ));
    }
    if upstream.first_token_timeout < upstream.timeout {
        return Err(PolicyError::invalid(
            "upstream.first_token_timeout_seconds",
            "must be at least upstream.timeout_seconds",
        ));
    }
    if upstream.breaker.failure_threshold == 0 {
        return Err(PolicyError::invalid(
            "upstream.breaker.failure_threshold",
            "must be > 0",
        ));
    }
    Ok(upstream)
}

fn validate_audit(
    af: super::file::AuditFile,
    warnings: &mut Vec<String>,
) -> Result<AuditPolicy, PolicyError> {
    let audit = AuditPolicy {
        dir: af.dir.filter(|d| !d.trim().is_empty()).map(PathBuf::from),
        user_id_header: header_name(
            "audit.user_id_header",
            af.user_id_header.as_deref().unwrap_or("X-User-Id"),
        )?,
    };
    if audit.dir.is_none() {
        warnings.push("audit.dir is not set: no audit log is written".to_owned());
    }
    Ok(audit)
}

/// `report_only: [rate_limit, ...]`: guards that record what they would refuse and serve it.
fn report_only(
    names: Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<BTreeSet<super::Guard>, PolicyError> {
    let mut out = BTreeSet::new();
    for (i, name) in names.iter().enumerate() {
        let guard = super::Guard::parse(name).ok_or_else(|| {
            let known: Vec<&str> = super::Guard::ALL.iter().map(|g| g.name()).collect();
            PolicyError::invalid(
                format!("report_only[{i}]"),
                format!("must be one of {}", known.join(", ")),
            )
        })?;
        if !out.insert(guard) {
            return Err(PolicyError::invalid(
                format!("report_only[{i}]"),
                "names a guard listed before it",
            ));
        }
        warnings.push(format!(
            "report_only: the {} guard does not refuse; what it would refuse is served and \
             reported",
            guard.name()
        ));
    }
    Ok(out)
}

/// `:18789` (every interface, as in Go), `HOST:PORT`, `[v6]:PORT`.
fn parse_listen(s: &str) -> Result<SocketAddr, PolicyError> {
    let bad = || PolicyError::invalid("listen", "must be ':PORT', 'IP:PORT' or '[IPv6]:PORT'");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse().map_err(|_| bad())
}

fn parse_ollama(key: &str, s: &str) -> Result<String, PolicyError> {
    let bad = |why: &str| PolicyError::invalid(key, why);
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| bad("must start with http:// (Ollama speaks plain HTTP)"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(bad("must be http://HOST:PORT with no path"));
    }
    let uri: actix_web::http::Uri = format!("http://{rest}/")
        .parse()
        .map_err(|_| bad("is not a valid URL"))?;
    if uri.host().is_none() {
        return Err(bad("has no host"));
    }
    Ok(format!("http://{rest}"))
}

fn quota(key: &str, max_requests: u32, window_seconds: u64) -> Result<Quota, PolicyError> {
    if max_requests == 0 {
        return Err(PolicyError::invalid(
            format!("{key}.max_requests"),
            "must be > 0 (disable the limit with enabled: false)",
        ));
    }
    if max_requests > 1_000_000 {
        return Err(PolicyError::invalid(
            format!("{key}.max_requests"),
            "must be at most 1000000",
        ));
    }
    if window_seconds == 0 || window_seconds > MAX_WINDOW_SECS {
        return Err(PolicyError::invalid(
            format!("{key}.window_seconds"),
            format!("must be between 1 and {MAX_WINDOW_SECS}"),
        ));
    }
    Ok(Quota {
        max_requests,
        window: Duration::from_secs(window_seconds),
    })
}

fn seconds(key: &str, v: Option<f64>, default: f64) -> Result<Duration, PolicyError> {
    let v = v.unwrap_or(default);
    if !v.is_finite() || v <= 0.0 || v > 86_400.0 {
        return Err(PolicyError::invalid(
            key,
            "must be a number of seconds > 0 and <= 86400",
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn header_name(key: &str, v: &str) -> Result<HeaderName, PolicyError> {
    HeaderName::try_from(v)
        .map_err(|_| PolicyError::invalid(key, "must be a valid HTTP header name"))
}

fn ip_set(key: &str, items: &[String]) -> Result<IpSet, PolicyError> {
    let nets = items
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse_net(s).map_err(|reason| PolicyError::invalid(format!("{key}[{i}]"), reason))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(IpSet::new(nets))
}

fn validate_models(map: BTreeMap<String, ModelFile>) -> Result<ModelMap, PolicyError> {
    let mut names = BTreeMap::new();
    let mut settings = BTreeMap::new();
    for (public, entry) in map {
        if public.trim().is_empty() {
            return Err(PolicyError::invalid(
                "models",
                "a public model name is empty",
            ));
        }
        let upstream = match entry {
            ModelFile::Name(name) => name,
            ModelFile::Full(e) => {
                let s = ModelSettings {
                    num_ctx: positive(&format!("models.{public}.num_ctx"), e.num_ctx)?,
                    max_prompt_chars: positive(
                        &format!("models.{public}.max_prompt_chars"),
                        e.max_prompt_chars.map(|v| v as u64),
                    )?
                    .map(|v| v as usize),
                };
                settings.insert(public.clone(), s);
                e.name
            }
        };
        if upstream.trim().is_empty() {
            return Err(PolicyError::invalid(
                format!("models.{public}"),
                "the Ollama model name is empty",
            ));
        }
        names.insert(public, upstream);
    }
    Ok(ModelMap::new(names).with_settings(settings))
}

/// An optional count that must be > 0 when given.
fn positive(key: &str, v: Option<u64>) -> Result<Option<u64>, PolicyError> {
    match v {
        Some(0) => Err(PolicyError::invalid(key, "must be > 0")),
        other => Ok(other),
    }
}

/// `token_limit`: each given window a quota.
fn token_quotas(path: &str, f: &TokenLimitFile) -> Result<Vec<TokenQuota>, PolicyError> {
    let mut out = Vec::new();
    for (field, v, secs) in [
        ("tokens_per_minute", f.tokens_per_minute, 60),
        ("tokens_per_day", f.tokens_per_day, 86_400),
    ] {
        if let Some(limit) = positive(&format!("{path}.{field}"), v)? {
            out.push(TokenQuota {
                limit,
                window: Duration::from_secs(secs),
            });
        }
    }
    Ok(out)
}

fn key_limits(path: &str, f: Option<KeyLimitsFile>) -> Result<KeyLimits, PolicyError> {
    let f = f.unwrap_or_default();
    Ok(KeyLimits {
        max_prompt_chars: positive(
            &format!("{path}.limits.max_prompt_chars"),
            f.max_prompt_chars.map(|v| v as u64),
        )?
        .map(|v| v as usize),
        max_num_ctx: positive(&format!("{path}.limits.max_num_ctx"), f.max_num_ctx)?,
        max_output_tokens: positive(
            &format!("{path}.limits.max_output_tokens"),
            f.max_output_tokens,
        )?,
        max_keep_alive: positive(
            &format!("{path}.limits.max_keep_alive_seconds"),
            f.max_keep_alive_seconds,
        )?
        .map(Duration::from_secs),
    })
}

/// Keys shorter than this (or of few distinct characters) are warned about: the seed's
/// `prod-key-2024-qwen3` is a phrase, not 128 random bits.
const MIN_STRONG_KEY: usize = 32;

fn weak(key: &str) -> bool {
    let distinct: HashSet<char> = key.chars().collect();
    key.chars().count() < MIN_STRONG_KEY || distinct.len() < 12
}

/// The key `scripts/demo.sh` and the README use, public to anyone who read them.
pub(crate) const DEMO_KEY: &str = "demo-key-change-me";

/// A key entry is either `sha256:<64 hex>` or plaintext (warned about); the public demo key,
/// in either form, is warned about too (`check --deny-warnings` then fails).
fn key_digest(key: &str, path: &str, warnings: &mut Vec<String>) -> Result<[u8; 32], PolicyError> {
    let d = key_digest_of(key, path, warnings)?;
    if d == digest(DEMO_KEY.as_bytes()) {
        warnings.push(format!(
            "{path} is the public demo key from the README and scripts/demo.sh: anyone can \
             use it; replace it with one from `qwen-gateway gen-key`"
        ));
    }
    Ok(d)
}

fn key_digest_of(
    key: &str,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<[u8; 32], PolicyError> {
    if let Some(hexpart) = key.strip_prefix("sha256:") {
        let bytes = hex::decode(hexpart)
            .map_err(|_| PolicyError::invalid(path, "sha256: must be followed by 64 hex digits"))?;
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| PolicyError::invalid(path, "sha256: must be followed by 64 hex digits"));
    }
    if key.len() < 8 {
        return Err(PolicyError::invalid(
            path,
            "a key must be at least 8 characters",
        ));
    }
    if key.trim() != key {
        return Err(PolicyError::invalid(
            path,
            "a key must not start or end with spaces",
        ));
    }
    warnings.push(format!(
        "{path} is a plaintext key; store `qwen-gateway hash-key` output (sha256:...) instead"
    ));
    if weak(key) {
        warnings.push(format!(
            "{path} is short or guessable (under {MIN_STRONG_KEY} characters or few distinct \
             ones); make keys with `qwen-gateway gen-key`"
        ));
    }
    Ok(digest(key.as_bytes()))
}

fn validate_auth(
    af: AuthFile,
    // `None` when `models` itself is invalid: its names are then not checked here.
    models: Option<&ModelMap>,
    warnings: &mut Vec<String>,
) -> Result<Option<AuthPolicy>, PolicyError> {
    let header = header_name(
        "auth.header_key",
        af.header_key.as_deref().unwrap_or("X-Api-Key"),
    )?;
    let failures = quota(
        "auth",
        af.max_failures.unwrap_or(10),
        af.failure_window_seconds.unwrap_or(60),
    )
    .map_err(|e| match e {
        PolicyError::Invalid { key, reason } => PolicyError::Invalid {
            key: key
                .replace("auth.max_requests", "auth.max_failures")
                .replace("auth.window_seconds", "auth.failure_window_seconds"),
            reason,
        },
        other => other,
    })?;

    let mut keys = Vec::new();
    for (i, k) in af.valid_keys.unwrap_or_default().iter().enumerate() {
        let d = key_digest(k, &format!("auth.valid_keys[{i}]"), warnings)?;
        // A name for logs, limits and metrics that says nothing of the key: its position
        // (8 hex digits of its hash on /metrics were 32 bits to test guesses against).
        keys.push(ApiKey::new(format!("valid-key-{}", i + 1), d, None, None));
    }
    for (i, k) in af.keys.unwrap_or_default().into_iter().enumerate() {
        let path = format!("auth.keys[{i}]");
        let id_ok = !k.id.is_empty()
            && k.id.len() <= 64
            && k.id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !id_ok {
            return Err(PolicyError::invalid(
                format!("{path}.id"),
                "must be 1-64 characters of A-Z a-z 0-9 - _ .",
            ));
        }
        let d = key_digest(&k.key, &format!("{path}.key"), warnings)?;
        let rate_limit = k
            .rate_limit
            .map(
                |KeyLimitFile {
                     max_requests,
                     window_seconds,
                 }| {
                    quota(
                        &format!("{path}.rate_limit"),
                        max_requests,
                        window_seconds.unwrap_or(60),
                    )
                },
            )
            .transpose()?;
        let allowed = match k.models {
            None => None,
            Some(list) => {
                let mut set = BTreeSet::new();
                for (j, m) in list.into_iter().enumerate() {
                    if models.is_some_and(|models| models.to_upstream(&m).is_none()) {
                        return Err(PolicyError::invalid(
                            format!("{path}.models[{j}]"),
                            "is not one of the public names under `models`",
                        ));
                    }
                    set.insert(m);
                }
                Some(set)
            }
        };
        let time = |field: &str, v: Option<&String>| {
            v.map(|t| {
                crate::rfc3339::parse_time(t).ok_or_else(|| {
                    PolicyError::invalid(
                        format!("{path}.{field}"),
                        "must be an RFC 3339 timestamp, e.g. 2027-01-31T00:00:00Z",
                    )
                })
            })
            .transpose()
        };
        let expires_at = time("expires_at", k.expires_at.as_ref())?;
        let not_before = time("not_before", k.not_before.as_ref())?;
        if let (Some(nb), Some(exp)) = (not_before, expires_at)
            && nb >= exp
        {
            return Err(PolicyError::invalid(
                format!("{path}.not_before"),
                "must be before expires_at",
            ));
        }
        if let Some(exp) = expires_at {
            let now = std::time::SystemTime::now();
            match exp.duration_since(now) {
                Err(_) => warnings.push(format!("{path} (id {}) has expired", k.id)),
                Ok(left) if left < EXPIRY_WARNING => warnings.push(format!(
                    "{path} (id {}) expires in {} days; rotate it",
                    k.id,
                    left.as_secs() / 86_400
                )),
                Ok(_) => {}
            }
        }
        let limits = key_limits(&path, k.limits)?;
        let max_concurrent = positive(
            &format!("{path}.max_concurrent"),
            k.max_concurrent.map(u64::from),
        )?
        .map(|v| v as u32);
        let weight = k.weight.unwrap_or(1);
        if !(1..=1000).contains(&weight) {
            return Err(PolicyError::invalid(
                format!("{path}.weight"),
                "must be between 1 and 1000",
            ));
        }
        let mut key = ApiKey::new(k.id, d, rate_limit, allowed);
        key.admin = k.admin.unwrap_or(false);
        key.limits = limits;
        key.max_concurrent = max_concurrent;
        key.weight = weight;
        key.token_limit = k
            .token_limit
            .as_ref()
            .map(|t| token_quotas(&format!("{path}.token_limit"), t))
            .transpose()?;
        key.expires_at = expires_at;
        key.not_before = not_before;
        keys.push(key);
    }

    // One id may have several keys (a rotation: the old and the new key overlap), as long as
    // they are the same client to every limit and permission.
    let mut ids: BTreeMap<Arc<str>, usize> = BTreeMap::new();
    let mut digests = HashSet::new();
    for (i, k) in keys.iter().enumerate() {
        if let Some(&first) = ids.get(&k.id) {
            let f = &keys[first];
            if (
                f.rate_limit,
                &f.models,
                f.admin,
                f.limits,
                f.max_concurrent,
                f.weight,
            ) != (
                k.rate_limit,
                &k.models,
                k.admin,
                k.limits,
                k.max_concurrent,
                k.weight,
            ) {
                return Err(PolicyError::invalid(
                    "auth.keys",
                    format!(
                        "entry {i} shares its id with entry {first} but not its rate_limit, \
                         models, admin and limits (keys of one id are one client)"
                    ),
                ));
            }
        } else {
            ids.insert(k.id.clone(), i);
        }
        if !digests.insert(k.digest) {
            return Err(PolicyError::invalid(
                "auth",
                format!("the key of entry {i} is listed twice"),
            ));
        }
    }

    if !af.enabled.unwrap_or(false) {
        return Ok(None);
    }
    if keys.is_empty() {
        return Err(PolicyError::invalid(
            "auth.valid_keys",
            "auth is enabled but no keys are configured (auth.valid_keys or auth.keys)",
        ));
    }
    Ok(Some(AuthPolicy {
        header,
        keys: keys.into_iter().map(Arc::new).collect(),
        failures,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const ARTICLE: &str = r#"
listen: ":18789"
ollama_api: "http://localhost:11434"
log_level: "info"
rate_limit:
  enabled: true
  max_requests: 30
  window_seconds: 60
auth:
  enabled: true
  header_key: "X-Api-Key"
  valid_keys: ["prod-key-2024-qwen3"]
whitelist:
  enabled: true
  ips: ["127.0.0.1", "10.0.0.0/16"]
"#;

    /// Loads `s` with every guard section it does not write set to `enabled: false`.
    fn load(s: &str) -> Result<Policy, PolicyError> {
        load_exact(&crate::policy::with_guards_off(s))
    }

    fn load_exact(s: &str) -> Result<Policy, PolicyError> {
        Policy::from_bytes(s.as_bytes(), Path::new("policy.yaml"))
    }

    #[test]
    fn independent_errors_are_all_reported() {
        let e = load_exact(
            "rate_limit: {enabled: true, max_requests: 0}\n\
             auth: {enabled: true, keys: [{id: \"bad id\", key: aaaaaaaaaaaaaaaa}]}\n\
             whitelist: {enabled: true, ips: []}\n\
             limits: {over_limit: maybe}\n\
             upstream: {timeout_seconds: 10, first_token_timeout_seconds: 5}\n\
             report_only: [nothing]\n",
        )
        .err()
        .unwrap();
        let keys: Vec<String> = e
            .each()
            .iter()
            .map(|e| match e {
                PolicyError::Invalid { key, .. } => key.clone(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "rate_limit.max_requests",
                "auth.keys[0].id",
                "whitelist.ips",
                "limits.over_limit",
                "upstream.first_token_timeout_seconds",
                "report_only[0]"
            ],
            "{e}"
        );
        assert!(e.to_string().starts_with("6 problems: "), "{e}");
        // A missing guard section and a broken other one: both.
        let e =
            load_exact("auth: {enabled: false}\nwhitelist: {enabled: false}\nlog_level: loud\n")
                .err()
                .unwrap();
        assert_eq!(e.each().len(), 2, "{e}");
    }

    #[test]
    fn a_file_cut_anywhere_never_loads_with_a_guard_off() {
        // Every prefix of the article's file and of the shipped policy (cut at any byte)
        // either fails or keeps all three guards on, with the same ranges or fewer.
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/policy.yaml"),
        )
        .unwrap();
        for text in [ARTICLE, shipped.as_str()] {
            let loaded = cut_everywhere(text);
            assert!(loaded > 0, "no prefix loaded: the test would prove nothing");
        }
    }

    /// Loads every prefix of `text`; returns how many loaded.
    fn cut_everywhere(text: &str) -> usize {
        let full = load_exact(text).unwrap();
        let full_quota = full.rate_limit.map(|q| q.max_requests);
        let mut loaded = 0;
        for cut in (0..text.len()).filter(|&c| text.is_char_boundary(c)) {
            let Ok(p) = load_exact(&text[..cut]) else {
                continue;
            };
            loaded += 1;
            assert!(p.auth.is_some(), "auth off at cut {cut}");
            assert!(p.whitelist.is_some(), "whitelist off at cut {cut}");
            assert!(p.rate_limit.is_some(), "rate limit off at cut {cut}");
            for net in p
                .whitelist
                .as_ref()
                .map(|w| w.nets().to_vec())
                .unwrap_or_default()
            {
                assert!(
                    full.whitelist
                        .as_ref()
                        .is_some_and(|w| w.nets().contains(&net)),
                    "cut {cut} allows {net}"
                );
            }
            assert!(
                p.rate_limit.map(|q| q.max_requests) <= full_quota,
                "cut {cut}"
            );
            let keys = |p: &Policy| p.auth.as_ref().map(|a| a.keys.len()).unwrap_or(0);
            assert!(keys(&p) <= keys(&full), "cut {cut}");
        }
        loaded
    }

    #[test]
    fn value_errors_of_every_section_show_despite_a_type_error() {
        let yaml = "log_level: \"loud\"\nrate_limit: {enabled: true, max_requests: -5, window_seconds: 60}\nwhitelist: {enabled: true, ips: [\"10.0.0.300/8\"]}\nauth: {enabled: false}\n";
        let e = load(yaml).err().map(|e| e.to_string()).unwrap_or_default();
        for field in ["rate_limit.max_requests", "log_level", "whitelist.ips[0]"] {
            assert!(e.contains(field), "{field} not reported: {e}");
        }
    }

    #[test]
    fn valid_keys_ids_say_nothing_of_the_key() {
        let p = load(
            "auth: {enabled: true, valid_keys: [\"sha256:62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef\", \"a-plaintext-key-long-enough-000000001\"]}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<String> = p
            .auth
            .iter()
            .flat_map(|a| a.keys.iter().map(|k| k.id.to_string()))
            .collect();
        assert_eq!(ids, ["valid-key-1", "valid-key-2"]);
    }

    #[test]
    fn the_public_demo_key_is_warned_about_in_either_form() {
        let hash = format!("sha256:{}", hex::encode(digest(b"demo-key-change-me")));
        for key in ["demo-key-change-me", hash.as_str()] {
            let yaml = format!("auth: {{enabled: true, valid_keys: [\"{key}\"]}}\n");
            let p = load(&yaml).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                p.warnings.iter().any(|w| w.contains("public demo key")),
                "{key}: {:?}",
                p.warnings
            );
        }
        let shipped = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/policy.yaml"),
        )
        .unwrap_or_default();
        let p = load_exact(&shipped).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.warnings.iter().any(|w| w.contains("public demo key")));
    }

    #[test]
    fn key_times_are_strict_rfc_3339_and_named() {
        for bad in [
            "2026-02-31T00:00:00Z",
            "2026-12-31T00:00:00",
            "2026-12-31T00:00:00+99:99",
            "2026-12-31T00:00:00Zjunk",
        ] {
            let yaml = format!(
                "auth: {{enabled: true, keys: [{{id: a, key: \"sha256:{}\", expires_at: \"{bad}\"}}]}}\n",
                "0".repeat(64)
            );
            let e = load(&yaml).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("auth.keys[0].expires_at"), "{bad}: {e}");
            assert!(!e.contains(bad), "the value is never echoed: {e}");
        }
    }

    #[test]
    fn missing_guard_sections_are_named() {
        for (yaml, section) in [
            ("listen: ':1'\n", "auth"),
            ("auth: {enabled: false}\n", "whitelist"),
            (
                "auth: {enabled: false}\nwhitelist: {enabled: false}\n",
                "rate_limit",
            ),
            (
                "auth: {enabled: false}\nwhitelist: {ips: ['10.0.0.0/8']}\nrate_limit: {enabled: false}\n",
                "whitelist",
            ),
        ] {
            // Each file is refused, and the first section it lacks is named first.
            let err = load_exact(yaml).err();
            match err.as_ref().map(|e| e.each()).as_deref() {
                Some([PolicyError::MissingSection { section: s, .. }, ..]) => {
                    assert_eq!(*s, section)
                }
                other => panic!("{yaml}: expected MissingSection({section}), got {other:?}"),
            }
        }
        let msg = load_exact("whitelist: {enabled: false}\nrate_limit: {enabled: false}\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("`auth` section is missing"), "{msg}");
        assert!(msg.contains("enabled: false"), "{msg}");
    }

    #[test]
    fn article_config_loads_verbatim() {
        let p = load(ARTICLE).map_err(|e| e.to_string());
        let p = match p {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.listen.port(), 18789);
        assert_eq!(p.rate_limit.map(|q| q.max_requests), Some(30));
        assert_eq!(p.auth.as_ref().map(|a| a.keys.len()), Some(1));
        assert_eq!(p.limits.max_prompt_chars, 200_000);
        assert!(p.warnings.iter().any(|w| w.contains("plaintext")));
        assert!(!p.summary().contains("prod-key-2024-qwen3"));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_field() {
        let err = load("listen: ':1'\nrate_limt: {}\n")
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("rate_limt"));
        let err = load("auth: {enabled: true, valid_key: []}\n")
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("valid_key"));
    }

    #[test]
    fn bad_values_name_the_dotted_key() {
        let cases = [
            (
                "rate_limit: {enabled: true, max_requests: 0}",
                "rate_limit.max_requests",
            ),
            (
                "whitelist: {enabled: true, ips: ['10.0.0.0/99']}",
                "whitelist.ips[0]",
            ),
            ("listen: 'nope'", "listen"),
            ("ollama_api: 'https://x:1'", "ollama_api"),
            (
                "auth: {enabled: true, valid_keys: ['sha256:abc']}",
                "auth.valid_keys[0]",
            ),
            ("auth: {enabled: true}", "auth.valid_keys"),
            (
                "auth: {enabled: true, keys: [{id: a, key: aaaaaaaaaa}, {id: a, key: bbbbbbbbbb, admin: true}]}",
                "auth.keys",
            ),
            (
                "auth: {enabled: true, keys: [{id: a, key: aaaaaaaaaa, expires_at: '2027-13-01T00:00:00Z'}]}",
                "auth.keys[0].expires_at",
            ),
            (
                "auth: {enabled: true, keys: [{id: a, key: aaaaaaaaaa, expires_at: '2027-01-01T00:00:00Z', not_before: '2027-02-01T00:00:00Z'}]}",
                "auth.keys[0].not_before",
            ),
            (
                "upstream: {timeout_seconds: -1}",
                "upstream.timeout_seconds",
            ),
            ("log_level: loud", "log_level"),
            (
                "ollama_api: 'http://a:1'\nbackends: [{url: 'http://b:1'}]",
                "backends",
            ),
            (
                "backends: [{url: 'http://b:1'}, {url: 'http://b:1'}]",
                "backends[1].url",
            ),
            (
                "backends: [{url: 'http://b:1', weight: 0}]",
                "backends[0].weight",
            ),
            (
                "rate_limit: {enabled: false, backend: redis}",
                "rate_limit.redis_url",
            ),
            (
                "rate_limit: {enabled: false, backend: redis, redis_url: 'redis://x', redis_failure: maybe}",
                "rate_limit.redis_failure",
            ),
            (
                "rate_limit: {enabled: false, backend: etcd}",
                "rate_limit.backend",
            ),
            (
                "rate_limit: {enabled: false, backend: redis, redis_url: 'rediss://x'}",
                "rate_limit.redis_url",
            ),
            (
                "models: {a: b}\nauth: {enabled: true, keys: [{id: x, key: aaaaaaaaaa, models: [c]}]}",
                "auth.keys[0].models[0]",
            ),
        ];
        for (yaml, key) in cases {
            match load(yaml) {
                Err(PolicyError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: expected Invalid({key}), got {other:?}"),
            }
        }
    }

    #[test]
    fn warnings_for_open_trust_and_plaintext() {
        let p = load("trusted_proxies: ['0.0.0.0/0']\nlisten: ':1'\n").ok();
        let w = p.map(|p| p.warnings.join("\n")).unwrap_or_default();
        assert!(w.contains("trusted_proxies covers every address"), "{w}");
        assert!(w.contains("every interface"), "{w}");
        assert!(w.contains("auth is disabled"), "{w}");
    }

    #[test]
    fn rotation_expiry_and_weak_key_warnings() {
        // Two keys of one id (a rotation) with the same settings load; expiry is parsed.
        let p = load(
            "auth: {enabled: true, keys: [\
             {id: a, key: 'qgw_0123456789abcdef0123456789abcdefXYZ', expires_at: '2099-01-01T00:00:00Z'},\
             {id: a, key: 'qgw_fedcba9876543210fedcba9876543210ZYX', not_before: '2020-01-01T00:00:00+02:00'}]}",
        )
        .unwrap();
        let keys = &p.auth.as_ref().unwrap().keys;
        assert_eq!(keys.len(), 2);
        assert!(keys[0].expires_at.is_some() && keys[1].not_before.is_some());
        assert!(
            !p.warnings.iter().any(|w| w.contains("guessable")),
            "{:?}",
            p.warnings
        );
        // The seed's key is a phrase: warned about; an expired key too.
        let p = load(
            "auth: {enabled: true, keys: [{id: b, key: prod-key-2024-qwen3, expires_at: '2020-01-01T00:00:00Z'}]}",
        )
        .unwrap();
        let w = p.warnings.join("\n");
        assert!(w.contains("auth.keys[0].key is short or guessable"), "{w}");
        assert!(w.contains("has expired"), "{w}");
        assert!(
            !w.contains("prod-key-2024-qwen3"),
            "a warning quoted the key"
        );
    }

    #[test]
    fn settings_that_need_a_restart_are_named() {
        let a = load("listen: '127.0.0.1:1'\nupstream: {timeout_seconds: 3}").unwrap();
        let b = load("listen: '127.0.0.1:2'\nupstream: {timeout_seconds: 5}").unwrap();
        assert_eq!(
            a.needs_restart(&b),
            ["listen", "upstream.timeout_seconds (its connect timeout)"]
        );
        assert!(a.needs_restart(&a).is_empty());
    }

    #[test]
    fn listen_forms() {
        for (s, want) in [
            (":18789", "0.0.0.0:18789"),
            ("127.0.0.1:1", "127.0.0.1:1"),
            ("[::1]:8", "[::1]:8"),
            ("localhost:9", "127.0.0.1:9"),
        ] {
            assert_eq!(
                parse_listen(s).map(|a| a.to_string()).ok().as_deref(),
                Some(want)
            );
        }
    }

    #[test]
    fn hashed_and_named_keys() {
        let hashed = super::super::hash_key("s3cret-key-1");
        let y = format!(
            "auth: {{enabled: true, keys: [{{id: team-a, key: '{hashed}', rate_limit: {{max_requests: 5}}}}]}}"
        );
        let p = load(&y).ok();
        let key = p
            .as_ref()
            .and_then(|p| p.auth.as_ref())
            .map(|a| a.keys[0].clone());
        assert_eq!(key.as_ref().map(|k| &*k.id), Some("team-a"));
        assert_eq!(
            key.as_ref().map(|k| k.digest),
            Some(digest(b"s3cret-key-1"))
        );
        assert_eq!(
            key.and_then(|k| k.rate_limit).map(|q| q.max_requests),
            Some(5)
        );
    }

    #[test]
    fn shipped_policy_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/policy.yaml");
        if let Err(e) = Policy::load(&path) {
            panic!("policy/policy.yaml: {e}");
        }
    }
}
