//! The `/v1/` handlers: orchestration only.
//!
//! Order for every `/v1/` request, so a rejected request never reaches Ollama and costs no
//! upstream connection: client IP allowlist, then API key (with per-IP throttling of failed
//! keys), then the rate limit, then the body (size, JSON, prompt length, model access).

pub mod convert;
pub mod ollama;
pub mod openai;
pub mod stream;
pub mod upstream;

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use futures_util::StreamExt;

use crate::app::{AppState, RequestCtx};
use crate::auth::{AuthFailure, Principal, authenticate};
use crate::errors::GatewayError;
use crate::metrics::ResultLabels;
use crate::policy::{LimitBackend, Limits};
use crate::ratelimit::Decision;
use crate::ratelimit::redis::{RedisLimiter, RedisTrouble};
use openai::{ChatRequest, ModelEntry, ModelList};
use upstream::Upstream;

/// The identity a failed-key counter is kept under: the address, or its /64 for IPv6, where
/// one client typically owns the whole prefix.
fn ip_bucket(ip: IpAddr) -> String {
    match ip {
        // Once or twice per request, so not through `format!`.
        IpAddr::V4(v4) => {
            let mut s = Vec::with_capacity(18);
            s.extend_from_slice(b"ip:");
            crate::client_ip::push_ipv4(&mut s, v4);
            // Only ASCII was written.
            String::from_utf8(s).unwrap_or_default()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

pub fn request_ctx(req: &HttpRequest) -> Result<Rc<RequestCtx>, GatewayError> {
    req.extensions()
        .get::<Rc<RequestCtx>>()
        .cloned()
        .ok_or(GatewayError::Internal)
}

/// The guards every `/v1/` route passes: IP, key, rate limit.
async fn guard(
    req: &HttpRequest,
    ctx: &RequestCtx,
    state: &AppState,
    redis: &RedisLimiter,
) -> Result<(Option<Principal>, Option<Decision>), GatewayError> {
    let policy = &ctx.policy;
    if let Some(allow) = &policy.whitelist
        && !allow.contains(ctx.client_ip)
    {
        return Err(GatewayError::IpNotAllowed);
    }
    let principal = match &policy.auth {
        None => None,
        Some(auth) => {
            let bucket = ip_bucket(ctx.client_ip);
            let throttle = state.auth_failures.peek(&bucket, auth.failures);
            if !throttle.allowed {
                return Err(GatewayError::AuthThrottled {
                    retry_after: throttle.retry_after(),
                });
            }
            match authenticate(req.headers(), auth) {
                Ok(p) => Some(p),
                Err(why) => {
                    state.auth_failures.record(&bucket, auth.failures);
                    tracing::debug!(request_id = %ctx.request_id, client_ip = %ctx.client_ip, ?why, "Rejected an API key.");
                    return Err(match why {
                        AuthFailure::Ambiguous => GatewayError::AmbiguousApiKey,
                        AuthFailure::Missing | AuthFailure::Invalid => GatewayError::InvalidApiKey,
                    });
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

    let quota = principal
        .as_ref()
        .and_then(Principal::rate_limit)
        .or(policy.rate_limit);
    let decision = match quota {
        None => None,
        Some(q) => {
            let by_ip;
            let identity = match &principal {
                Some(p) => p.key.limit_identity.as_str(),
                None => {
                    by_ip = ip_bucket(ctx.client_ip);
                    by_ip.as_str()
                }
            };
            let decided = match &policy.limit_backend {
                LimitBackend::Memory => Some(state.limiter.check(identity, q)),
                LimitBackend::Redis(cfg) => match redis.check(cfg, identity, q).await {
                    Ok(d) => Some(d),
                    Err(trouble) => {
                        let result = if cfg.fail_open {
                            "fail_open"
                        } else {
                            "fail_closed"
                        };
                        state
                            .metrics
                            .ratelimit_backend_errors
                            .get_or_create(&ResultLabels { result })
                            .inc();
                        if !matches!(trouble, RedisTrouble::Backoff) {
                            tracing::warn!(request_id = %ctx.request_id, ?trouble, result,
                                "Redis could not check the rate limit.");
                        }
                        if !cfg.fail_open {
                            return Err(GatewayError::RateLimiterUnavailable);
                        }
                        None
                    }
                },
            };
            if let Some(d) = decided
                && !d.allowed
            {
                return Err(GatewayError::RateLimited(d));
            }
            decided
        }
    };
    Ok((principal, decision))
}

/// Reads the body within `limits.body_timeout_seconds` (a slow-drip client otherwise holds a
/// connection and its buffer for as long as it likes; Nginx in front buffers bodies, so only
/// direct clients meet this), refusing more than `limits.max_body_bytes` before buffering.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limits: &Limits,
) -> Result<web::BytesMut, GatewayError> {
    let read = read_body_unbounded(req, payload, limits.max_body_bytes);
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .map_err(|_| GatewayError::RequestTimeout {
            seconds: limits.body_timeout.as_secs_f64(),
        })?
}

async fn read_body_unbounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<web::BytesMut, GatewayError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(GatewayError::BodyTooLarge { max });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(max));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| GatewayError::BadRequest {
            message: "the request body could not be read".to_owned(),
        })?;
        if body.len() + chunk.len() > max {
            return Err(GatewayError::BodyTooLarge { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    if body.is_empty() {
        return Err(GatewayError::BadRequest {
            message: "the request body is empty; send a JSON object".to_owned(),
        });
    }
    // Fast path first; on failure parse again with path tracking, for a message that names
    // the field (`messages[0].content`).
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize::<_, T>(&mut *de);
    if let Ok(v) = parsed {
        // One valid object followed by more (`{...}xyz`, two objects) is refused, as the
        // fast path did.
        return de.end().map(|()| v).map_err(|e| GatewayError::BadRequest {
            message: format!("the request body is not valid JSON: {e}"),
        });
    }
    parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request: {inner}")
        } else {
            format!("invalid request at `{path}`: {inner}")
        };
        GatewayError::BadRequest { message }
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn with_rate_headers(resp: &mut actix_web::HttpResponseBuilder, decision: Option<Decision>) {
    if let Some(d) = decision {
        for (name, value) in d.headers() {
            resp.insert_header((name, value));
        }
    }
}

/// `POST /v1/chat/completions`, streamed or not.
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    redis: web::Data<RedisLimiter>,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let (principal, decision) = guard(&req, &ctx, &state, &redis).await?;

    let body = read_body(&req, payload, &policy.limits).await?;
    let chat: ChatRequest = parse_json(&body)?;
    let stream = chat.stream.unwrap_or(false);
    ctx.audit.update(|r| {
        r.model = Some(crate::audit::clip(&chat.model, convert::MAX_MODEL_CHARS));
        r.stream = stream;
    });
    convert::check_request(&chat, policy.limits.max_messages)?;
    let chars = convert::prompt_chars(&chat);
    ctx.audit.update(|r| r.prompt_chars = Some(chars));
    if chars > policy.limits.max_prompt_chars {
        return Err(GatewayError::PromptTooLong {
            max: policy.limits.max_prompt_chars,
        });
    }
    if let Some(allowed) = principal.as_ref().and_then(Principal::models)
        && !allowed.contains(&chat.model)
    {
        return Err(GatewayError::ModelNotAllowed { model: chat.model });
    }
    let upstream_model =
        policy
            .models
            .to_upstream(&chat.model)
            .ok_or_else(|| GatewayError::ModelNotFound {
                model: chat.model.clone(),
            })?;
    let native = convert::to_ollama(&chat, upstream_model)?;
    convert::check_native_messages(&native, policy.limits.max_messages)?;
    let native_body = serde_json::to_vec(&native).map_err(|_| GatewayError::Internal)?;

    let sent = Instant::now();
    let (mut resp, lease) = upstream
        .send(
            &state,
            policy,
            "/api/chat",
            Some(native_body.into()),
            &ctx.request_id,
            Some(&chat.model),
        )
        .await?;
    ctx.audit.update(|r| r.upstream = Some(sent.elapsed()));

    let id = convert::completion_id();
    let created = unix_now();
    if stream {
        let include_usage = chat
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let translator = convert::SseTranslator::new(id, created, chat.model, include_usage);
        // Only the body stream is kept for the life of the stream: the response head (its
        // header map, ~3 KB) would otherwise be held by every open stream.
        let body = stream::sse(
            resp.take_payload(),
            translator,
            policy.upstream.stream_idle_timeout,
            policy.upstream.max_stream,
            ctx.audit.clone(),
            state.metrics.clone(),
            lease,
            state.shutdown.clone(),
        );
        let mut out = HttpResponse::Ok();
        out.insert_header((CONTENT_TYPE, "text/event-stream"))
            .insert_header((CACHE_CONTROL, "no-cache"))
            .insert_header((HeaderName::from_static("x-accel-buffering"), "no"));
        with_rate_headers(&mut out, decision);
        return Ok(out.streaming(body));
    }

    // Non-stream: Ollama sends one JSON object when the whole answer is ready.
    let answer: ollama::ChatChunk = upstream::read_json(
        &mut resp,
        policy.upstream.first_token_timeout,
        upstream::ANSWER_LIMIT,
    )
    .await
    .map_err(|e| e.into_gateway_error(&state))?;
    ctx.audit.update(|r| r.upstream = Some(sent.elapsed()));
    if answer.error.is_some() {
        state.metrics.upstream_error("error_body");
        return Err(GatewayError::UpstreamFailed);
    }
    let usage = convert::usage_of(&answer);
    ctx.audit.update(|r| {
        r.prompt_tokens = Some(usage.prompt_tokens);
        r.completion_tokens = Some(usage.completion_tokens);
    });
    let json = convert::completion_json(&answer, &id, created, &chat.model);
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json"));
    with_rate_headers(&mut out, decision);
    Ok(out.body(json))
}

/// `GET /v1/models`: every backend's `/api/tags` under public names, filtered by the key's
/// `models`. Backends that do not answer are left out; none answering is a 503.
pub async fn models(
    req: HttpRequest,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    redis: web::Data<RedisLimiter>,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let (principal, decision) = guard(&req, &ctx, &state, &redis).await?;
    let mut tags: Vec<ollama::TagModel> = Vec::new();
    let mut last_err = None;
    for (backend, _) in state.backends.all(policy) {
        let fetched = async {
            let mut resp = upstream
                .send_to(
                    &state,
                    policy,
                    &backend,
                    "/api/tags",
                    None,
                    &ctx.request_id,
                    None,
                )
                .await?;
            upstream::read_json::<ollama::Tags>(
                &mut resp,
                policy.upstream.timeout,
                upstream::TAGS_LIMIT,
            )
            .await
            .map_err(|e| e.into_gateway_error(&state))
        }
        .await;
        match fetched {
            Ok(t) => {
                backend.set_models(t.models.iter().map(|m| m.name.clone()));
                tags.extend(t.models);
            }
            Err(e) => last_err = Some(e),
        }
    }
    if tags.is_empty()
        && let Some(e) = last_err
    {
        return Err(e);
    }
    let allowed = principal.as_ref().and_then(Principal::models);
    let mut data = Vec::new();
    for m in &tags {
        for public in policy.models.public_names(&m.name) {
            if allowed.is_some_and(|a| !a.contains(public)) {
                continue;
            }
            data.push(ModelEntry {
                id: public.to_owned(),
                object: "model",
                created: m
                    .modified_at
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .unwrap_or(0),
                owned_by: public
                    .rsplit_once('/')
                    .map_or("library", |(ns, _)| ns.rsplit('/').next().unwrap_or(ns))
                    .to_owned(),
            });
        }
    }
    data.sort_by(|a, b| a.id.cmp(&b.id));
    data.dedup_by(|a, b| a.id == b.id);
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json"));
    with_rate_headers(&mut out, decision);
    Ok(out.json(ModelList {
        object: "list",
        data,
    }))
}

/// Seconds since the epoch of `2025-05-04T17:37:44.706015396-07:00` (offset applied).
fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, se) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let tail = s.get(19..)?;
    let tz_at = tail.find(['Z', '+', '-']).map(|i| i + 19);
    let offset = match tz_at.and_then(|i| s.get(i..)) {
        Some(tz) if tz.starts_with('+') || tz.starts_with('-') => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let oh = tz.get(1..3)?.parse::<i64>().ok()?;
            let om = tz.get(4..6)?.parse::<i64>().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => 0,
    };
    let days = days_from_civil(y, mo, d);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se - offset).ok()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2025-05-04T17:37:44.706015396-07:00"),
            Some(1_746_405_464)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn v6_failures_bucket_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(ip_bucket(a), ip_bucket(b));
        assert_eq!(ip_bucket("10.0.255.1".parse().unwrap()), "ip:10.0.255.1");
    }
}
