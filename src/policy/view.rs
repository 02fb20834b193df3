//! A redacted, structured view of a policy, and what changed between two.
//!
//! The view is what operators may see of a running policy (`/status`, `check --against`):
//! key ids with their limits, ranges, quotas, never a key or a key's hash, never a Redis URL
//! (it may hold a password). [`changes`] compares two policies for the reload history and the
//! reload log; unlike the view it also sees each key id's secrets, so a key rotated under the
//! same id is a change, reported without the secret.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{ApiKey, LimitBackend, Policy, Quota};

fn secs(d: Duration) -> Value {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        json!(d.as_secs())
    } else {
        json!(s)
    }
}

fn quota(q: Option<Quota>) -> Value {
    match q {
        None => Value::Null,
        Some(q) => json!(format!("{}/{}s", q.max_requests, q.window.as_secs())),
    }
}

fn token_quotas(list: &[crate::limits::ratelimit::tokens::TokenQuota]) -> Value {
    list.iter()
        .map(|t| json!(format!("{}/{}s", t.limit, t.window.as_secs())))
        .collect()
}

fn time(t: Option<std::time::SystemTime>) -> Value {
    t.map_or(Value::Null, |t| json!(crate::observe::audit::rfc3339(t)))
}

/// One key id's view. Several entries under one id (a rotation) are one client; the view
/// says how many secrets it has, not what they are.
fn key_view(entries: &[&ApiKey]) -> Value {
    let Some(k) = entries.first() else {
        return Value::Null;
    };
    let ApiKey {
        id: _,             // the map's key
        limit_identity: _, // derived from the id
        digest: _,         // never shown
        rate_limit,
        models,
        admin,
        limits,
        max_concurrent,
        weight,
        token_limit,
        expires_at: _, // over every entry of the id, below
        not_before: _,
    } = &**k;
    let super::KeyLimits {
        max_prompt_chars,
        max_num_ctx,
        max_output_tokens,
        max_keep_alive,
    } = *limits;
    json!({
        "secrets": entries.len(),
        "models": models.as_ref().map(|m| m.iter().collect::<Vec<_>>()),
        "admin": admin,
        "rate_limit": quota(*rate_limit),
        "token_limit": token_limit.as_deref().map(token_quotas),
        "max_concurrent": max_concurrent,
        "weight": weight,
        "limits": {
            "max_prompt_chars": max_prompt_chars,
            "max_num_ctx": max_num_ctx,
            "max_output_tokens": max_output_tokens,
            "max_keep_alive_seconds": max_keep_alive.map(secs),
        },
        "expires_at": time(entries.iter().filter_map(|k| k.expires_at).max()),
        "not_before": time(entries.iter().filter_map(|k| k.not_before).min()),
    })
}

/// Keys grouped by id, in id order.
fn keys_by_id(p: &Policy) -> BTreeMap<&str, Vec<&ApiKey>> {
    let mut out: BTreeMap<&str, Vec<&ApiKey>> = BTreeMap::new();
    if let Some(a) = &p.auth {
        for k in &a.keys {
            out.entry(&k.id).or_default().push(k);
        }
    }
    out
}

/// The redacted view of `p`. Every struct is destructured without `..`: a field added to the
/// policy does not compile until the view (and so `/status`, `check --against` and the
/// reload diff) says something of it, or says here why not.
pub fn view(p: &Policy) -> Value {
    let Policy {
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
        shutdown_grace,
        report_only,
        // Identify the file, not its meaning: in /status beside the view.
        sha256: _,
        warnings: _,
        shape: _,
    } = p;
    let nets = |s: &crate::admission::client_ip::IpSet| -> Value {
        s.nets().iter().map(|n| json!(n.to_string())).collect()
    };
    let auth = auth.as_ref().map(|a| {
        let super::AuthPolicy {
            header,
            keys: _, // by id, below: never a key or its hash
            failures,
        } = a;
        let keys: Map<String, Value> = keys_by_id(p)
            .into_iter()
            .map(|(id, entries)| (id.to_owned(), key_view(&entries)))
            .collect();
        json!({
            "header": header.as_str(),
            "failures": quota(Some(*failures)),
            "keys": keys,
        })
    });
    let super::Limits {
        max_prompt_chars,
        max_body_bytes,
        max_messages,
        max_images,
        max_image_bytes,
        max_embed_inputs,
        max_embed_answer_bytes,
        allowed_options,
        body_timeout,
        max_num_ctx,
        max_output_tokens,
        max_keep_alive,
        refuse_over_limit,
    } = *limits;
    let super::UpstreamPolicy {
        timeout,
        first_token_timeout,
        stream_idle_timeout,
        max_stream,
        model_refresh,
        breaker,
        max_waiting,
        max_waiting_per_key,
        max_wait,
        routing,
        warm_wait,
        slot_lease,
    } = *upstream;
    let super::AuditPolicy {
        dir,
        user_id_header,
    } = audit;
    json!({
        "listen": listen.to_string(),
        "backends": backends.iter().map(|b| {
            let super::Backend { url, weight, max_in_flight, max_loaded_models } = b;
            json!({"url": url, "weight": weight, "max_in_flight": max_in_flight,
                   "max_loaded_models": max_loaded_models})
        }).collect::<Vec<_>>(),
        "log_level": log_level,
        "auth": auth,
        "whitelist": whitelist.as_ref().map(nets),
        "trusted_proxies": nets(trusted_proxies),
        "observers": nets(observers),
        "rate_limit": quota(*rate_limit),
        "rate_limit_backend": match limit_backend {
            LimitBackend::Memory => json!("memory"),
            LimitBackend::Redis(r) => {
                let crate::limits::quota::RedisLimits {
                    url: _, // it may hold a password
                    timeout,
                    fail_open,
                    key_prefix,
                } = r;
                json!({
                    "backend": "redis",
                    "failure": if *fail_open { "open" } else { "closed" },
                    "timeout_ms": u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    "key_prefix": key_prefix,
                })
            }
        },
        "max_tracked_clients": max_tracked_clients,
        "token_limit": token_quotas(token_limit),
        "limits": {
            "max_prompt_chars": max_prompt_chars,
            "max_body_bytes": max_body_bytes,
            "max_messages": max_messages,
            "max_images": max_images,
            "max_image_bytes": max_image_bytes,
            "max_embed_inputs": max_embed_inputs,
            "max_embed_answer_bytes": max_embed_answer_bytes,
            "allowed_options": allowed_options.names().collect::<Vec<_>>(),
            "body_timeout_seconds": secs(body_timeout),
            "max_num_ctx": max_num_ctx,
            "max_output_tokens": max_output_tokens,
            "max_keep_alive_seconds": secs(max_keep_alive),
            "over_limit": if refuse_over_limit { "refuse" } else { "clamp" },
        },
        "upstream": {
            "timeout_seconds": secs(timeout),
            "first_token_timeout_seconds": secs(first_token_timeout),
            "stream_idle_timeout_seconds": secs(stream_idle_timeout),
            "max_stream_seconds": secs(max_stream),
            "model_refresh_seconds": secs(model_refresh),
            "routing": match routing {
                super::Routing::CacheAware => "cache_aware",
                super::Routing::LeastBusy => "least_busy",
            },
            "warm_wait_seconds": secs(warm_wait),
            "slot_lease_seconds": secs(slot_lease),
            "breaker": {
                "failure_threshold": breaker.failure_threshold,
                "cooldown_seconds": secs(breaker.cooldown),
            },
        },
        "queue": {
            "max_waiting": max_waiting,
            "max_waiting_per_key": max_waiting_per_key,
            "max_wait_seconds": secs(max_wait),
        },
        // With each model's settings, so that a reload changing only a model's num_ctx or
        // prompt limit is seen as a change.
        "models": models.entries().iter().map(|(public, up)| {
            let s = models.settings(public);
            let value = if s == crate::policy::ModelSettings::default() {
                json!(up)
            } else {
                json!({"name": up, "num_ctx": s.num_ctx, "max_prompt_chars": s.max_prompt_chars})
            };
            (public.clone(), value)
        }).collect::<serde_json::Map<String, Value>>(),
        "audit": {
            "dir": dir.as_ref().map(|d| d.display().to_string()),
            "user_id_header": user_id_header.as_str(),
        },
        "shutdown_grace_seconds": secs(*shutdown_grace),
        "report_only": report_only.iter().map(|g| g.name()).collect::<Vec<_>>(),
    })
}

fn short(v: &Value) -> String {
    match v {
        Value::Null => "none".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What differs between two views, one line per changed field (dotted path), key ids
/// added or removed named as such.
pub fn diff(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn walk(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for name in names {
                let child = if path.is_empty() {
                    name.clone()
                } else if path == "auth.keys" {
                    format!("auth.keys[{name}]")
                } else {
                    format!("{path}.{name}")
                };
                match (a.get(name), b.get(name)) {
                    (Some(x), Some(y)) => walk(&child, x, y, out),
                    (None, Some(_)) if path == "auth.keys" => {
                        out.push(format!("key added: {name}"));
                    }
                    (Some(_), None) if path == "auth.keys" => {
                        out.push(format!("key removed: {name}"));
                    }
                    (None, Some(y)) => out.push(format!("{child}: added, {}", short(y))),
                    (Some(x), None) => out.push(format!("{child}: removed (was {})", short(x))),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {} -> {}", short(a), short(b))),
        _ => {}
    }
}

/// What a reload from `old` to `new` changes, for the reload log and history: the views'
/// differences, and each key id whose secrets changed (a rotation) though its view did not.
pub fn changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = diff(&view(old), &view(new));
    // The Redis URL is never shown (it may hold a password), but a change of it is named.
    if let (LimitBackend::Redis(a), LimitBackend::Redis(b)) =
        (&old.limit_backend, &new.limit_backend)
        && a.url != b.url
    {
        out.push("rate_limit.redis_url: changed (not shown: it may hold a password)".to_owned());
    }
    let (a, b) = (keys_by_id(old), keys_by_id(new));
    for (id, entries) in &b {
        let Some(before) = a.get(id) else { continue };
        let digests =
            |e: &[&ApiKey]| -> BTreeSet<[u8; 32]> { e.iter().map(|k| k.digest).collect() };
        let (was, now) = (digests(before), digests(entries));
        if was != now {
            let added = now.difference(&was).count();
            let removed = was.difference(&now).count();
            out.push(format!(
                "auth.keys[{id}]: secret changed ({added} new, {removed} retired)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn load(s: &str) -> Policy {
        Policy::from_bytes(s.as_bytes(), Path::new("p.yaml")).unwrap()
    }

    const BASE: &str = "rate_limit: {enabled: true, max_requests: 30}\n\
        whitelist: {enabled: true, ips: [10.0.0.0/16]}\n\
        auth: {enabled: true, keys: [{id: alice, key: alice-secret-0001}, {id: bob, key: bob-secret-00001}]}\n";

    /// A reload that changes only a model's settings is a change, named (issue 20: it was
    /// logged as "no effective change" and showed nowhere).
    #[test]
    fn a_models_settings_are_in_the_diff() {
        let a = load(&format!(
            "{BASE}models: {{\"qwen3:32b\": {{name: q, num_ctx: 8192}}}}\n"
        ));
        let b = load(&format!(
            "{BASE}models: {{\"qwen3:32b\": {{name: q, num_ctx: 16384}}}}\n"
        ));
        let c = load(&format!(
            "{BASE}models: {{\"qwen3:32b\": {{name: q, num_ctx: 16384, max_prompt_chars: 900}}}}\n"
        ));
        let changes = changes(&a, &b).join("; ");
        assert!(
            changes.contains("models") && changes.contains("16384"),
            "{changes}"
        );
        let changes = super::changes(&b, &c).join("; ");
        assert!(changes.contains("900"), "{changes}");
    }

    #[test]
    fn view_never_holds_a_secret() {
        let p = load(
            "rate_limit: {enabled: true, backend: redis, redis_url: 'redis://:hunter2@r:6379'}\n\
             whitelist: {enabled: false}\n\
             auth: {enabled: true, keys: [{id: alice, key: alice-secret-0001}]}\n",
        );
        let text = view(&p).to_string();
        assert!(!text.contains("alice-secret"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let hash = hex::encode(p.auth.as_ref().unwrap().keys[0].digest);
        assert!(!text.contains(&hash[..16]), "{text}");
        assert!(text.contains("\"alice\""), "{text}");
    }

    #[test]
    fn changes_name_keys_ranges_limits_and_rotations() {
        let old = load(BASE);
        let new = load(
            "rate_limit: {enabled: true, max_requests: 10}\n\
             whitelist: {enabled: true, ips: [10.0.0.0/16, 192.168.1.0/24]}\n\
             auth: {enabled: true, keys: [{id: alice, key: alice-secret-0002}, {id: carol, key: carol-secret-001}]}\n",
        );
        let c = changes(&old, &new);
        assert!(c.contains(&"key added: carol".to_owned()), "{c:?}");
        assert!(c.contains(&"key removed: bob".to_owned()), "{c:?}");
        assert!(
            c.contains(&"rate_limit: 30/60s -> 10/60s".to_owned()),
            "{c:?}"
        );
        assert!(
            c.contains(
                &"whitelist: [\"10.0.0.0/16\"] -> [\"10.0.0.0/16\",\"192.168.1.0/24\"]".to_owned()
            ),
            "{c:?}"
        );
        assert!(
            c.contains(&"auth.keys[alice]: secret changed (1 new, 1 retired)".to_owned()),
            "{c:?}"
        );
        assert!(!c.join(" ").contains("secret-000"), "{c:?}");
        assert!(changes(&old, &load(BASE)).is_empty());
    }

    /// A policy that sets every field the file format has (each list with two entries, so an
    /// entry can be taken away; the second backend takes `upstream.max_in_flight`).
    const FULL: &str = r#"
listen: "127.0.0.1:18789"
backends:
  - {url: "http://10.0.0.1:11434", weight: 2, max_in_flight: 3, max_loaded_models: 2}
  - {url: "http://10.0.0.2:11434", weight: 1}
log_level: info
rate_limit: {enabled: true, max_requests: 30, window_seconds: 60, max_tracked_clients: 1000,
  backend: redis, redis_url: "redis://127.0.0.1:6379", redis_timeout_ms: 50,
  redis_failure: closed, redis_key_prefix: "qg:"}
auth:
  enabled: true
  header_key: X-Api-Key
  valid_keys: ["valid-key-secret-01", "valid-key-secret-02"]
  max_failures: 10
  failure_window_seconds: 60
  keys:
    - id: alice
      key: alice-secret-0001
      rate_limit: {max_requests: 5, window_seconds: 10}
      models: ["qwen3:32b", "llama"]
      admin: false
      limits: {max_prompt_chars: 1000, max_num_ctx: 4096, max_output_tokens: 100, max_keep_alive_seconds: 60}
      max_concurrent: 2
      weight: 3
      token_limit: {tokens_per_minute: 1000, tokens_per_day: 100000}
      expires_at: "2031-01-01T00:00:00Z"
      not_before: "2020-01-01T00:00:00Z"
    - {id: bob, key: bob-secret-00001, admin: true}
whitelist: {enabled: true, ips: ["10.0.0.0/16", "192.168.1.0/24"]}
trusted_proxies: ["127.0.0.1/32", "10.1.0.0/16"]
observers: ["127.0.0.1/32", "10.2.0.0/16"]
limits: {max_prompt_chars: 20000, max_body_bytes: 1048576, max_messages: 100, max_images: 4,
  max_image_bytes: 1048576, max_embed_inputs: 64, max_embed_answer_bytes: 1048576,
  allowed_options: [temperature, top_p], body_timeout_seconds: 30, max_num_ctx: 8192,
  max_output_tokens: 2048, max_keep_alive_seconds: 600, over_limit: clamp}
upstream: {timeout_seconds: 3, first_token_timeout_seconds: 100, stream_idle_timeout_seconds: 50,
  max_stream_seconds: 3000, model_refresh_seconds: 15, max_in_flight: 4, routing: cache_aware,
  warm_wait_seconds: 3, slot_lease_seconds: 15,
  breaker: {failure_threshold: 5, cooldown_seconds: 10}}
queue: {max_waiting: 100, max_waiting_per_key: 20, max_wait_seconds: 30}
token_limit: {tokens_per_minute: 5000, tokens_per_day: 500000}
models:
  "qwen3:32b": {name: "qwen3:32b-q4", num_ctx: 16384, max_prompt_chars: 30000}
  llama: "llama3.2:3b"
  mistral: "mistral:7b"
audit: {dir: "/var/log/qwen-gateway", user_id_header: X-User-Id}
shutdown_grace_seconds: 30
report_only: [prompt_limit, clamps]
"#;

    /// Another valid value for a leaf: numbers and durations up by one, booleans flipped,
    /// addresses and ranges moved, names lengthened; `None` when there is no other value.
    fn other(path: &str, v: &yaml_serde::Value) -> Option<yaml_serde::Value> {
        use yaml_serde::Value as Y;
        Some(match v {
            Y::Bool(b) => Y::Bool(!b),
            Y::Number(n) => Y::from(n.as_u64()? + 1),
            Y::String(s) => Y::String(match (path, s.as_str()) {
                (_, "info") => "debug".into(),
                (_, "clamp") => "refuse".into(),
                (_, "cache_aware") => "least_busy".into(),
                (_, "closed") => "open".into(),
                (_, "redis") => "memory".into(),
                (_, "temperature") => "top_k".into(),
                (_, "top_p") => "min_p".into(),
                (_, "clamps") => "token_limit".into(),
                (p, _) if p.contains(".models[") => "mistral".into(),
                (_, "127.0.0.1/32") => "127.0.0.2/32".into(),
                (_, "prompt_limit") => "models".into(),
                (_, "2031-01-01T00:00:00Z") => "2032-01-01T00:00:00Z".into(),
                (_, "2020-01-01T00:00:00Z") => "2021-01-01T00:00:00Z".into(),
                (_, "127.0.0.1:18789") => "127.0.0.1:18790".into(),
                (_, s) if s.starts_with("http://") => s.replace(":11434", ":11435"),
                (_, s) if s.starts_with("redis://") => s.replace(":6379", ":6380"),
                (_, s) if s.contains('/') && s.split('/').count() == 2 => s
                    .replace("/16", "/20")
                    .replace("/24", "/25")
                    .replace("/32", "/31"),
                (_, s) if s.starts_with('/') => format!("{s}-other"),
                (_, s) => format!("{s}x"),
            }),
            _ => return None,
        })
    }

    /// Every leaf of the document with its dotted path, and the document with that leaf
    /// changed (or, for a list's entry, the entry taken away).
    fn variants(doc: &yaml_serde::Value) -> Vec<(String, yaml_serde::Value)> {
        fn walk(
            node: &yaml_serde::Value,
            path: String,
            rebuild: &dyn Fn(yaml_serde::Value) -> yaml_serde::Value,
            out: &mut Vec<(String, yaml_serde::Value)>,
        ) {
            use yaml_serde::Value as Y;
            match node {
                Y::Mapping(m) => {
                    for (k, v) in m {
                        let name = k.as_str().unwrap_or("?").to_owned();
                        let m = m.clone();
                        let k = k.clone();
                        let sub = move |new: Y| {
                            let mut m = m.clone();
                            m.insert(k.clone(), new);
                            rebuild(Y::Mapping(m))
                        };
                        walk(v, format!("{path}.{name}"), &sub, out);
                    }
                }
                Y::Sequence(items) => {
                    for (i, v) in items.iter().enumerate() {
                        let mut fewer = items.clone();
                        fewer.remove(i);
                        out.push((format!("{path}[{i}] removed"), rebuild(Y::Sequence(fewer))));
                        let items = items.clone();
                        let sub = move |new: Y| {
                            let mut items = items.clone();
                            items[i] = new;
                            rebuild(Y::Sequence(items))
                        };
                        walk(v, format!("{path}[{i}]"), &sub, out);
                    }
                }
                leaf => {
                    if let Some(v) = other(&path, leaf) {
                        out.push((path, rebuild(v)));
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(doc, String::new(), &|d| d, &mut out);
        out
    }

    /// Every field of the file, changed in a policy that sets every field, is a named change
    /// in the reload diff (and so in `/status` and `check --against`): a field the view
    /// forgets cannot pass (issue 20).
    #[test]
    fn every_policy_field_changed_is_a_named_change() {
        let base = load(FULL);
        let doc: yaml_serde::Value = yaml_serde::from_str(FULL).unwrap();
        let (mut seen, mut refused) = (0, Vec::new());
        let mut silent = Vec::new();
        for (path, changed) in variants(&doc) {
            let text = yaml_serde::to_string(&changed).unwrap();
            let Ok(p) = Policy::from_bytes(text.as_bytes(), Path::new("p.yaml")) else {
                refused.push(path);
                continue;
            };
            seen += 1;
            if changes(&base, &p).is_empty() {
                silent.push(path);
            }
        }
        assert!(
            silent.is_empty(),
            "changes the diff does not name: {silent:?}"
        );
        // The variants are meant to be valid: a refused one tests nothing. The one exception:
        // `backend: memory` beside the redis_* fields is refused, as it should be.
        assert_eq!(
            refused,
            [".rate_limit.backend"],
            "variants the loader refused"
        );
        assert!(seen > 100, "{seen}");
    }
}
