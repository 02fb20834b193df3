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
    } = *upstream;
    let super::AuditPolicy {
        dir,
        user_id_header,
    } = audit;
    json!({
        "listen": listen.to_string(),
        "backends": backends.iter().map(|b| {
            let super::Backend { url, weight, max_in_flight } = b;
            json!({"url": url, "weight": weight, "max_in_flight": max_in_flight})
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
}
