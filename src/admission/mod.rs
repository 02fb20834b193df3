//! Admission: the guards every route except the open ones passes before its handler runs.
//!
//! They are applied by the route table (`routes.rs`) as middleware on every guarded resource,
//! never by a call a handler must remember, and run the table's list of guards for the route's
//! access class (`steps.rs`, which `explain` walks too): the observers' or the operator's
//! addresses; or client IP allowlist, then API key (with per-IP throttling of failed keys),
//! then the rate limit, and for model-management routes an admin key. What they decide travels to the handler as an [`Admitted`] extractor, which fails
//! closed: a handler reached without admission (a route added outside the table's guarded
//! classes) answers 500, never serves.
//!
//! Body-level guards (size, JSON, prompt length, model access) need the body and run in the
//! handler's pipeline (`surface::pipeline`), the one handler of every model route.

pub mod auth;
pub mod client_ip;
pub mod steps;

use std::future::{Ready, ready};
use std::net::IpAddr;

use actix_web::body::BoxBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};

use crate::admission::auth::{AuthFailure, Principal, X_API_KEY, authenticate};
use crate::context::{RequestCtx, request_ctx};
use crate::errors::{Dialect, GatewayError};
use crate::limits::ratelimit::Decision;
use crate::limits::ratelimit::redis::{RedisLimiter, on_trouble};
use crate::policy::{Guard, LimitBackend};
use crate::state::AppState;
use steps::{Access, BodyGuards, Step, steps};

/// What admission decided: who is asking (when auth is on) and the rate-limit headers to send.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub principal: Option<Principal>,
    pub decision: Option<Decision>,
}

impl FromRequest for Admitted {
    type Error = GatewayError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<Admitted>().cloned().ok_or_else(|| {
            tracing::error!(
                path = req.path(),
                "A guarded handler was reached without admission."
            );
            GatewayError::Internal
        }))
    }
}

/// Middleware for routes that need a valid key (when auth is on).
pub async fn key(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    admit(req, next, Access::Key).await
}

/// Middleware for the listing routes (model lists, details, version): a valid key, and a
/// limit of their own, so that a UI loading its model list on every page view does not spend
/// the key's inference requests.
pub async fn listing(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    admit(req, next, Access::Listing).await
}

/// Middleware for model-management routes: a valid key marked `admin: true`.
pub async fn admin(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    admit(req, next, Access::Admin).await
}

/// Middleware for the observers' routes (`/readyz`, `/metrics`): addresses in `observers`.
pub async fn observer(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    admit(req, next, Access::Observer).await
}

/// Middleware for the operator's route (`/status`): addresses in `trusted_proxies`.
pub async fn operator(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    admit(req, next, Access::Operator).await
}

/// How many listing requests a key may make per inference request it is allowed.
pub const LISTING_FACTOR: u32 = 10;

/// Runs the admission part of the access class's guards ([`steps::steps`]), in the
/// table's order; the body guards are the handler's. What they decide goes to the handler as
/// [`Admitted`].
async fn admit(
    req: ServiceRequest,
    next: Next<BoxBody>,
    access: Access,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let ctx = request_ctx(req.request())?;
    let state = req
        .app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or(GatewayError::Internal)?;
    let redis = req
        .app_data::<web::Data<RedisLimiter>>()
        .cloned()
        .ok_or(GatewayError::Internal)?;
    let mut principal = None;
    let mut decision = None;
    for step in steps(access, BodyGuards::None) {
        match step {
            Step::Observer => by_address(&ctx, "observer", "observers", &ctx.policy.observers)?,
            Step::Operator => by_address(
                &ctx,
                "operator",
                "trusted_proxies",
                &ctx.policy.trusted_proxies,
            )?,
            Step::Whitelist => allowlist(&req, &ctx)?,
            Step::Key => principal = key_step(&req, &ctx, &state)?,
            Step::RateLimit => {
                decision = rate_limit(
                    &ctx,
                    &state,
                    &redis,
                    principal.as_ref(),
                    access == Access::Listing,
                )
                .await?;
            }
            Step::Admin => admin_step(&ctx, principal.as_ref())?,
            // The body guards: the handler's.
            Step::PromptLimit
            | Step::ModelAccess
            | Step::ModelVisible
            | Step::Clamps
            | Step::TokenLimit => {}
        }
    }
    req.extensions_mut().insert(Admitted {
        principal,
        decision,
    });
    next.call(req).await
}

/// `observers` or `trusted_proxies`: by the resolved client address alone, no key.
fn by_address(
    ctx: &RequestCtx,
    who: &str,
    field: &str,
    set: &client_ip::IpSet,
) -> Result<(), GatewayError> {
    if set.contains(ctx.client_ip) {
        return Ok(());
    }
    ctx.audit.update(|r| {
        r.reason = Some(format!("{who}: {} is not in {field}", ctx.client_ip));
    });
    Err(GatewayError::IpNotAllowed)
}

/// A key with `admin: true`, for model management.
fn admin_step(ctx: &RequestCtx, principal: Option<&Principal>) -> Result<(), GatewayError> {
    if principal.is_some_and(Principal::is_admin) {
        return Ok(());
    }
    ctx.audit.update(|r| {
        r.reason = Some(match principal {
            Some(p) => format!("admin: auth.keys[{}] has no admin: true", p.key_id()),
            None => "admin: model management needs an admin key".to_owned(),
        });
    });
    Err(GatewayError::AdminOnly)
}

/// Who a request is for the token quotas, the fair queue and per-key budgets: its key's id,
/// or its client address's bucket when auth is off (`ip:` + the /64 for IPv6). Key ids have
/// no `:`, so the two never meet.
pub fn caller(
    principal: Option<&crate::admission::auth::Principal>,
    client: IpAddr,
) -> std::sync::Arc<str> {
    match principal {
        Some(p) => p.key.id.clone(),
        None => std::sync::Arc::from(ip_bucket(client)),
    }
}

/// Whose rate limit applies, as the policy names it: a key's own, the default per key, or the
/// default per address (audit reasons and `explain`).
pub fn rate_scope(key: Option<&crate::policy::ApiKey>, client: IpAddr) -> String {
    match key {
        Some(k) if k.rate_limit.is_some() => format!("auth.keys[{}].rate_limit", k.id),
        Some(k) => format!("rate_limit for key {}", k.id),
        None => format!("rate_limit for address {client}"),
    }
}

/// The identity a failed-key counter is kept under: the address, or its /64 for IPv6, where
/// one client typically owns the whole prefix.
pub fn ip_bucket(ip: IpAddr) -> String {
    match ip {
        // Once or twice per request, so not through `format!`.
        IpAddr::V4(v4) => {
            let mut s = Vec::with_capacity(18);
            s.extend_from_slice(b"ip:");
            crate::admission::client_ip::push_ipv4(&mut s, v4);
            // Only ASCII was written.
            String::from_utf8(s).unwrap_or_default()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The IP allowlist: first, so a request from a refused address learns nothing about keys
/// and costs no upstream connection.
fn allowlist(req: &ServiceRequest, ctx: &RequestCtx) -> Result<(), GatewayError> {
    let policy = &ctx.policy;
    if let Some(allow) = &policy.whitelist
        && !allow.contains(ctx.client_ip)
    {
        let refused = ctx.refuse(
            Guard::Whitelist,
            || format!("{} matches no range in whitelist.ips", ctx.client_ip),
            GatewayError::IpNotAllowed,
        );
        if refused.is_err() {
            // For the operator only: whose valid key was refused for its address (the answer
            // is the same whatever the key).
            if let Some(auth) = &policy.auth
                && let Ok(p) = authenticate(req.headers(), auth, None)
            {
                ctx.audit.update(|r| r.key_id = Some(p.key_id().clone()));
            }
        }
        refused?;
    }
    Ok(())
}

/// The API key (with the failed-key throttle per address); `None` when auth is off (or,
/// report-only, a refused key). Also names the key and the user in the audit line.
fn key_step(
    req: &ServiceRequest,
    ctx: &RequestCtx,
    state: &AppState,
) -> Result<Option<Principal>, GatewayError> {
    let policy = &ctx.policy;
    let principal = match &policy.auth {
        None => None,
        Some(auth) => {
            // Anthropic clients send the key in `x-api-key`, whatever `auth.header_key` is.
            let also = (ctx.dialect == Dialect::Anthropic).then_some(&X_API_KEY);
            match authenticate(req.headers(), auth, also) {
                // A valid key is served whatever its address's failed attempts: one user
                // mistyping a key in a shared chat UI must not lock out everyone behind it.
                Ok(p) => Some(p),
                // A real key outside its validity: not a guess, so not counted as one.
                // Report-only: served as without a key, and not counted as a failure.
                Err(why)
                    if matches!(why, AuthFailure::Expired | AuthFailure::NotYetValid)
                        || policy.reports(Guard::Auth) =>
                {
                    ctx.refuse(Guard::Auth, || why.rule().to_owned(), why.refusal())?;
                    None
                }
                Err(why) => {
                    // Repeated bad keys from one address: refused as throttled, uncounted.
                    let bucket = ip_bucket(ctx.client_ip);
                    let throttle = state.auth_failures.peek(&bucket, auth.failures);
                    if !throttle.allowed {
                        ctx.audit.update(|r| {
                            r.reason = Some(format!(
                                "auth: {} failed keys in {}s from {} (auth.max_failures)",
                                auth.failures.max_requests,
                                auth.failures.window.as_secs(),
                                ctx.client_ip
                            ));
                        });
                        return Err(GatewayError::AuthThrottled {
                            retry_after: throttle.retry_after(),
                        });
                    }
                    state.auth_failures.record(&bucket, auth.failures);
                    tracing::debug!(request_id = %ctx.request_id, client_ip = %ctx.client_ip, ?why, "Rejected an API key.");
                    ctx.audit
                        .update(|r| r.reason = Some(format!("auth: {}", why.rule())));
                    return Err(why.refusal());
                }
            }
        }
    };
    let user_id = req
        .headers()
        .get(&policy.audit.user_id_header)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_owned);
    ctx.audit.update(|r| {
        r.key_id = principal.as_ref().map(|p| p.key_id().clone());
        r.user_id = user_id;
    });
    Ok(principal)
}

/// The rate limit: the key's own, or the default per key or per address; listing routes
/// count apart, at [`LISTING_FACTOR`] times the limit.
async fn rate_limit(
    ctx: &RequestCtx,
    state: &AppState,
    redis: &RedisLimiter,
    principal: Option<&Principal>,
    listing_route: bool,
) -> Result<Option<Decision>, GatewayError> {
    let policy = &ctx.policy;
    let quota = principal
        .and_then(Principal::rate_limit)
        .or(policy.rate_limit);
    let decision = match quota {
        None => None,
        Some(q) => {
            let by_ip;
            let mut identity = match principal {
                Some(p) => p.key.limit_identity.as_str(),
                None => {
                    by_ip = ip_bucket(ctx.client_ip);
                    by_ip.as_str()
                }
            };
            let listing;
            let q = if listing_route {
                listing = format!("list:{identity}");
                identity = listing.as_str();
                crate::policy::Quota {
                    max_requests: q.max_requests.saturating_mul(LISTING_FACTOR),
                    window: q.window,
                }
            } else {
                q
            };
            let decided = match &policy.limit_backend {
                LimitBackend::Memory => Some(state.limiter.check(identity, q)),
                LimitBackend::Redis(cfg) => match redis.check(cfg, identity, q).await {
                    Ok(d) => Some(d),
                    Err(trouble) => {
                        on_trouble(&state.metrics, cfg, &trouble, &ctx.request_id, "rate limit")?;
                        None
                    }
                },
            };
            match decided {
                Some(d) if !d.allowed => {
                    ctx.refuse(
                        Guard::RateLimit,
                        || {
                            let scope = rate_scope(principal.map(|p| &*p.key), ctx.client_ip);
                            let listing = if listing_route {
                                " (listing routes: x10)"
                            } else {
                                ""
                            };
                            format!(
                                "{scope} {}/{}s{listing}",
                                q.max_requests,
                                q.window.as_secs()
                            )
                        },
                        GatewayError::RateLimited(d),
                    )?;
                    None
                }
                other => other,
            }
        }
    };
    Ok(decision)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn v6_failures_bucket_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(ip_bucket(a), ip_bucket(b));
        assert_eq!(ip_bucket("10.0.255.1".parse().unwrap()), "ip:10.0.255.1");
    }
}
