//! `qwen-gateway explain`: what the gateway would do with a described request under a policy
//! file, guard by guard, with the rule behind each decision and the final status.
//!
//! It walks the same decisions the server makes, in the same order, with the server's own
//! pieces: the route table, `client_ip::resolve`, `auth::authenticate`, the policy's prompt
//! limit and clamps. What it cannot know is live state (how much of a rate window or token
//! quota is spent, queue length, whether Ollama answers); those steps say what limit applies.

use std::net::IpAddr;

use actix_web::ResponseError as _;
use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::admission::auth::{Principal, authenticate};
use crate::errors::GatewayError;
use crate::policy::{ApiKey, Guard, Policy};
use crate::routes::{Access, BodyGuards, Step as GuardStep, table};

/// The request to explain, as Nginx would hand it to the gateway.
#[derive(Debug, Clone, Default)]
pub struct Described {
    /// The connecting peer (Nginx: 127.0.0.1).
    pub peer: Option<IpAddr>,
    pub x_forwarded_for: Option<String>,
    pub x_real_ip: Option<String>,
    /// The key itself (checked like the server does)...
    pub key: Option<String>,
    /// ...or only its id (the secret is not checked).
    pub key_id: Option<String>,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub prompt_chars: usize,
    /// The output limit the request asks for (`max_tokens`, `num_predict`, ...).
    pub max_tokens: Option<i64>,
}

/// One guard's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub guard: &'static str,
    pub decision: String,
}

#[derive(Debug)]
pub struct Explanation {
    pub steps: Vec<Step>,
    /// What the gateway would answer, if nothing live (a spent window, Ollama down) differs.
    pub status: u16,
    pub code: Option<&'static str>,
}

struct Walk<'a> {
    policy: &'a Policy,
    steps: Vec<Step>,
}

impl Walk<'_> {
    fn say(&mut self, guard: &'static str, decision: String) {
        self.steps.push(Step { guard, decision });
    }

    /// A refusal: final unless the guard is report-only.
    fn refuse(
        &mut self,
        guard: Guard,
        decision: String,
        err: GatewayError,
    ) -> Result<(), GatewayError> {
        if self.policy.reports(guard) {
            self.say(
                guard.name(),
                format!("{decision} -> would refuse, but report_only: served and reported"),
            );
            Ok(())
        } else {
            self.say(guard.name(), format!("{decision} -> REFUSED"));
            Err(err)
        }
    }
}

fn route_matches(pattern: &str, path: &str) -> bool {
    let (mut a, mut b) = (pattern.split('/'), path.split('/'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p.starts_with('{') || p == s => {}
            _ => return false,
        }
    }
}

pub fn explain(policy: &Policy, req: &Described) -> Explanation {
    let mut w = Walk {
        policy,
        steps: Vec::new(),
    };
    let outcome = walk(&mut w, req);
    let (status, code) = match &outcome {
        Ok(()) => (200, None),
        Err(e) => (e.status_code().as_u16(), Some(e.code())),
    };
    Explanation {
        steps: w.steps,
        status,
        code,
    }
}

fn headers(req: &Described) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |name: HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(name, v);
        }
    };
    if let Some(x) = &req.x_forwarded_for {
        put(HeaderName::from_static("x-forwarded-for"), x);
    }
    if let Some(x) = &req.x_real_ip {
        put(HeaderName::from_static("x-real-ip"), x);
    }
    if let Some(k) = &req.key {
        put(AUTHORIZATION, &format!("Bearer {k}"));
    }
    h
}

fn walk(w: &mut Walk<'_>, req: &Described) -> Result<(), GatewayError> {
    let p = w.policy;
    let peer = req.peer.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let h = headers(req);
    let client = crate::admission::client_ip::resolve(peer, &h, &p.trusted_proxies);
    let how = if !p.trusted_proxies.contains(peer) {
        format!("the peer itself ({peer} is not in trusted_proxies: forwarded headers ignored)")
    } else if client == peer {
        format!("the peer {peer} (trusted, no usable forwarded address)")
    } else if req.x_forwarded_for.is_some() {
        format!("from X-Forwarded-For via trusted {peer}")
    } else {
        format!("from X-Real-IP via trusted {peer}")
    };
    w.say("client", format!("{client} ({how})"));

    let method = req.method.to_ascii_uppercase();
    let Some(route) = table()
        .into_iter()
        .find(|r| r.method.as_str() == method && route_matches(r.path, &req.path))
    else {
        w.say(
            "route",
            format!("{method} {} is not a route -> 404", req.path),
        );
        return Err(GatewayError::RouteNotFound {
            method,
            path: req.path.clone(),
        });
    };
    w.say(
        "route",
        format!("{method} {} ({:?} access)", route.path, route.access),
    );
    let mut principal: Option<Principal> = None;
    // The output limit the clamps leave, for the token estimate.
    let mut output = req.max_tokens.and_then(|n| u64::try_from(n).ok());
    // The route's guards, in the order the server runs them (`admission::steps`).
    for step in route.steps() {
        let key = principal.as_ref().map(|pr| &*pr.key);
        match step {
            GuardStep::Observer => {
                let ok = p.observers.contains(client);
                by_address(w, "observer", ok, client, "observers")?;
            }
            GuardStep::Operator => {
                let ok = p.trusted_proxies.contains(client);
                by_address(w, "operator", ok, client, "trusted_proxies")?;
            }
            GuardStep::Whitelist => whitelist(w, p, client)?,
            GuardStep::Key => principal = key_step(w, p, req, &h)?,
            GuardStep::RateLimit => rate_limit(w, p, key, client, route.access == Access::Listing),
            GuardStep::Admin => admin(w, key)?,
            GuardStep::PromptLimit
            | GuardStep::ModelAccess
            | GuardStep::ModelVisible
            | GuardStep::Clamps
            | GuardStep::TokenLimit => {
                let Some(model) = &req.model else {
                    w.say(
                        "model",
                        "no model given: body guards not explained".to_owned(),
                    );
                    return Ok(());
                };
                match step {
                    GuardStep::PromptLimit => prompt_limit(w, p, key, model, req.prompt_chars)?,
                    GuardStep::ModelVisible => model_visible(w, p, key, model)?,
                    GuardStep::Clamps => output = clamps(w, p, key, model, req.max_tokens, output)?,
                    GuardStep::TokenLimit => token_limit(w, p, key, req.prompt_chars, output),
                    _ => model_access(w, p, key, model)?,
                }
            }
        }
    }
    if route.body == BodyGuards::Model
        && let Some(model) = &req.model
    {
        backend_choice(w, p, model);
    }
    Ok(())
}

/// `whitelist`.
fn whitelist(w: &mut Walk<'_>, p: &Policy, client: IpAddr) -> Result<(), GatewayError> {
    match &p.whitelist {
        None => w.say(
            "whitelist",
            "off (whitelist.enabled: false): every address".to_owned(),
        ),
        Some(set) => match set.nets().iter().position(|n| n.contains(client)) {
            Some(i) => w.say(
                "whitelist",
                format!("{client} allowed by whitelist.ips[{i}] {}", set.nets()[i]),
            ),
            None => w.refuse(
                Guard::Whitelist,
                format!("{client} matches no range in whitelist.ips"),
                GatewayError::IpNotAllowed,
            )?,
        },
    }
    Ok(())
}

/// `auth`: the key, by its secret (checked as the server does) or by its id alone.
fn key_step(
    w: &mut Walk<'_>,
    p: &Policy,
    req: &Described,
    h: &HeaderMap,
) -> Result<Option<Principal>, GatewayError> {
    let principal: Option<Principal> = match &p.auth {
        None => {
            w.say(
                "auth",
                "off (auth.enabled: false): no key needed".to_owned(),
            );
            None
        }
        Some(auth) => match (&req.key, &req.key_id) {
            (_, Some(id)) => match auth.keys.iter().find(|k| &*k.id == id.as_str()) {
                Some(k) => {
                    w.say(
                        "auth",
                        format!("key id `{id}` (given by id: its secret is not checked)"),
                    );
                    validity(w, k)?;
                    Some(Principal { key: k.clone() })
                }
                None => {
                    w.refuse(
                        Guard::Auth,
                        format!("no key has the id `{id}`"),
                        GatewayError::InvalidApiKey,
                    )?;
                    None
                }
            },
            (Some(_), None) => match authenticate(h, auth, None) {
                Ok(pr) => {
                    w.say("auth", format!("key id `{}`", pr.key_id()));
                    Some(pr)
                }
                Err(why) => {
                    w.refuse(Guard::Auth, why.rule().to_owned(), why.refusal())?;
                    None
                }
            },
            (None, None) => {
                w.refuse(
                    Guard::Auth,
                    "no key was given".to_owned(),
                    GatewayError::InvalidApiKey,
                )?;
                None
            }
        },
    };
    Ok(principal)
}

/// `rate_limit` (its live count is the server's).
fn rate_limit(w: &mut Walk<'_>, p: &Policy, key: Option<&ApiKey>, client: IpAddr, listing: bool) {
    let quota = key.and_then(|k| k.rate_limit).or(p.rate_limit);
    match quota {
        None => w.say("rate_limit", "off".to_owned()),
        Some(q) => {
            let (max, note) = if listing {
                (
                    q.max_requests
                        .saturating_mul(crate::admission::LISTING_FACTOR),
                    " (listing routes: 10x, counted apart)",
                )
            } else {
                (q.max_requests, "")
            };
            let whose = crate::admission::rate_scope(key, client);
            let mode = if p.reports(Guard::RateLimit) {
                "; report_only: over it is served and reported"
            } else {
                "; over it: 429 with Retry-After"
            };
            w.say(
                "rate_limit",
                format!("{max}/{}s by {whose}{note}{mode}", q.window.as_secs()),
            );
        }
    }
}

/// A key with `admin: true`, for model management.
fn admin(w: &mut Walk<'_>, key: Option<&ApiKey>) -> Result<(), GatewayError> {
    if key.is_some_and(|k| k.admin) {
        w.say("admin", "the key has admin: true".to_owned());
        Ok(())
    } else {
        w.say(
            "admin",
            "model management needs a key with admin: true -> REFUSED".to_owned(),
        );
        Err(GatewayError::AdminOnly)
    }
}

/// The prompt limit of this key and model.
fn prompt_limit(
    w: &mut Walk<'_>,
    p: &Policy,
    key: Option<&ApiKey>,
    model: &str,
    chars: usize,
) -> Result<(), GatewayError> {
    let (max, field) = p.prompt_limit_rule(key, Some(model));
    if chars > max {
        w.refuse(
            Guard::PromptLimit,
            format!("{chars} chars over {field} {max}"),
            GatewayError::PromptTooLong { max },
        )
    } else {
        w.say(
            "prompt_limit",
            format!("{chars} chars within {field} {max}"),
        );
        Ok(())
    }
}

/// One entry of the model list: a model the key may not use is not found.
fn model_visible(
    w: &mut Walk<'_>,
    p: &Policy,
    key: Option<&ApiKey>,
    model: &str,
) -> Result<(), GatewayError> {
    if let Some(rule) = p.model_refusal(key, model) {
        w.say(
            "models",
            format!("{rule}: not in this key's model list -> 404"),
        );
        return Err(GatewayError::ModelNotFound {
            model: model.to_owned(),
        });
    }
    model_access(w, p, key, model)
}

/// The output limit's clamp; returns the limit sent on (`asked` when report-only refuses).
fn clamps(
    w: &mut Walk<'_>,
    p: &Policy,
    key: Option<&ApiKey>,
    model: &str,
    asked: Option<i64>,
    output: Option<u64>,
) -> Result<Option<u64>, GatewayError> {
    let clamps = p.clamps(key, model);
    let mut noted = crate::limits::clamp::Clamped::default();
    match clamps.output(asked, &mut noted) {
        Err(e) => {
            w.refuse(Guard::Clamps, format!("output limit: {}", e.message()), e)?;
            Ok(output)
        }
        Ok(n) => {
            w.say(
                "clamps",
                match (noted.clamps(), n) {
                    (Some(h), _) => format!("clamped: {h}"),
                    (None, Some(n)) => format!("output limit {n} tokens"),
                    (None, None) => "no output limit".to_owned(),
                },
            );
            Ok(n)
        }
    }
}

/// The token quotas: what applies (what is left of them is live state).
fn token_limit(
    w: &mut Walk<'_>,
    p: &Policy,
    key: Option<&ApiKey>,
    prompt_chars: usize,
    output: Option<u64>,
) {
    let quotas = key
        .and_then(|k| k.token_limit.as_deref())
        .unwrap_or(&p.token_limit);
    if quotas.is_empty() {
        w.say("token_limit", "off".to_owned());
        return;
    }
    // As the model routes reserve: the prompt's estimate, plus the output limit sent on.
    let estimate = crate::limits::ratelimit::tokens::prompt_tokens_estimate(prompt_chars)
        + output.unwrap_or(0);
    let list: Vec<String> = quotas
        .iter()
        .map(|q| format!("{}/{}s", q.limit, q.window.as_secs()))
        .collect();
    // The server reserves at most a whole quota, so one request always fits an empty
    // window; what is left of each window is live state.
    let capped = if quotas.iter().any(|q| estimate > q.limit) {
        " (more than a whole quota: it reserves the whole quota, so it is served only when \
         that window is empty)"
    } else {
        ""
    };
    let mode = if p.reports(Guard::TokenLimit) {
        "; report_only: over it is served and reported"
    } else {
        "; over what is left: 429 with Retry-After"
    };
    w.say(
        "token_limit",
        format!(
            "an estimated {estimate} tokens against {}{capped}{mode}",
            list.join(", ")
        ),
    );
}

/// Which rule chooses the backend (which backends hold the model in memory, or served the
/// conversation, is live state `explain` does not know: `/readyz` shows it).
fn backend_choice(w: &mut Walk<'_>, p: &Policy, model: &str) {
    let shared = match &p.limit_backend {
        crate::policy::LimitBackend::Redis(_) => format!(
            "; slots counted across every gateway sharing Redis (leases of {} s)",
            p.upstream.slot_lease.as_secs()
        ),
        crate::policy::LimitBackend::Memory => "; slots counted by this gateway".to_owned(),
    };
    let decision = match (p.backends.as_slice(), p.upstream.routing) {
        ([one], _) => format!(
            "one backend, {} ({} slots, fair queue){shared}",
            one.url, one.max_in_flight
        ),
        (all, crate::policy::Routing::LeastBusy) => format!(
            "routing least_busy over {} backends: fewest requests in flight per weight{shared}",
            all.len()
        ),
        (all, crate::policy::Routing::CacheAware) => format!(
            "routing cache_aware over {} backends that list {model}: the conversation's backend \
             (affinity), else one with the model in memory (warm), a busy one waited for at \
             most {} s while another has a free slot, else one with a free slot that must load \
             it (cold), else the busy ones (queue), one that would evict a model in use \
             last{shared}",
            all.len(),
            p.upstream.warm_wait.as_secs_f64()
        ),
    };
    w.say("backend", decision);
}

/// The key's access to the model, as the server decides it ([`Policy::model_refusal`], then
/// the `models` map).
fn model_access(
    w: &mut Walk<'_>,
    p: &Policy,
    key: Option<&ApiKey>,
    model: &str,
) -> Result<(), GatewayError> {
    if let Some(rule) = p.model_refusal(key, model) {
        w.refuse(
            Guard::Models,
            rule,
            GatewayError::ModelNotAllowed {
                model: model.to_owned(),
            },
        )?;
    }
    match p.models.to_upstream(model) {
        Some(upstream) if upstream == model => {
            w.say("models", format!("model {model} allowed"));
        }
        Some(upstream) => w.say(
            "models",
            format!("model {model} allowed, sent to Ollama as {upstream}"),
        ),
        None => {
            w.say(
                "models",
                format!("{model} is not a public name under `models` -> 404"),
            );
            return Err(GatewayError::ModelNotFound {
                model: model.to_owned(),
            });
        }
    }
    Ok(())
}

/// The keyless routes: allowed or refused by the client's address alone.
fn by_address(
    w: &mut Walk<'_>,
    class: &'static str,
    ok: bool,
    client: IpAddr,
    sets: &str,
) -> Result<(), GatewayError> {
    if ok {
        w.say(class, format!("{client} is in {sets} -> allowed"));
        Ok(())
    } else {
        w.say(class, format!("{client} is not in {sets} -> REFUSED"));
        Err(GatewayError::IpNotAllowed)
    }
}

fn validity(w: &mut Walk<'_>, k: &ApiKey) -> Result<(), GatewayError> {
    let now = std::time::SystemTime::now();
    if k.not_before.is_some_and(|t| now < t) {
        return w.refuse(
            Guard::Auth,
            format!("auth.keys[{}].not_before is still ahead", k.id),
            GatewayError::ApiKeyNotYetValid,
        );
    }
    if k.expires_at.is_some_and(|t| now >= t) {
        return w.refuse(
            Guard::Auth,
            format!("auth.keys[{}].expires_at has passed", k.id),
            GatewayError::ExpiredApiKey,
        );
    }
    Ok(())
}

/// The explanation as `qwen-gateway explain` prints it.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    for s in &e.steps {
        out.push_str(&format!("{:<13} {}\n", s.guard, s.decision));
    }
    match e.code {
        None => out.push_str(&format!(
            "final         {} (sent on to Ollama; a spent rate window, token quota or queue, \
             or Ollama itself may still answer otherwise)\n",
            e.status
        )),
        Some(code) => out.push_str(&format!("final         {} {code}\n", e.status)),
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// `explain` walks each route's guards in the order of the one list the server runs
    /// (`admission::steps`): for an allowed request, the guards it names are that list.
    #[test]
    fn explain_walks_the_routes_guard_list() {
        let policy = Policy::from_bytes(
            b"auth: {enabled: true, keys: [{id: ops, key: ops-key-0123456789abcdef, admin: true}]}\n\
              whitelist: {enabled: true, ips: [127.0.0.1]}\n\
              rate_limit: {enabled: true, max_requests: 10, window_seconds: 60}\n\
              token_limit: {tokens_per_minute: 100000}\n",
            std::path::Path::new("p.yaml"),
        )
        .unwrap();
        for route in table() {
            let path = route
                .path
                .split('/')
                .map(|s| if s.starts_with('{') { "qwen3:32b" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let e = explain(
                &policy,
                &Described {
                    key: Some("ops-key-0123456789abcdef".to_owned()),
                    method: route.method.to_string(),
                    path: path.clone(),
                    model: Some("qwen3:32b".to_owned()),
                    prompt_chars: 10,
                    ..Described::default()
                },
            );
            assert_eq!(e.status, 200, "{path}: {:?}", e.steps);
            let walked: Vec<&str> = e
                .steps
                .iter()
                .map(|s| s.guard)
                .filter(|g| !matches!(*g, "client" | "route" | "backend"))
                .collect();
            let listed: Vec<&str> = route.steps().iter().map(|s| s.name()).collect();
            assert_eq!(walked, listed, "{} {path}", route.method);
        }
    }
}
