//! The handlers of the model routes: orchestration only.
//!
//! Admission (IP allowlist, key, rate limit) has run before any of them (`admission.rs`);
//! here come the body-level guards (size, JSON, prompt length, model access), then the
//! upstream call. Chat completions keep the gateway's own OpenAI -> native translation
//! (`convert.rs`); the other model routes go through one forwarding pipeline (`forward.rs`)
//! to Ollama's own implementation, and the listing routes are answered from every backend's
//! model list (`native.rs`).

pub mod convert;
pub mod count_tokens;
pub mod forward;
pub mod headers;
pub mod native;
pub mod ollama;
pub mod one_reading;
pub mod openai;
pub mod prompt;
pub mod public_names;
pub mod request;
pub mod stream;
pub mod upstream;

use prompt::prompt_tokens_estimate;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use crate::admission::Admitted;
use crate::backends::Lease;
use crate::context::{RequestCtx, request_ctx};
use crate::errors::GatewayError;
use crate::meter::Meter;
use crate::state::AppState;
use headers::{with_clamped_header, with_rate_headers, with_token_headers};
use openai::{ChatRequest, ModelEntry, ModelList};
use request::{parse_json, read_body};
use upstream::{Call, Upstream};

/// `limits.max_images` and `limits.max_image_bytes`, on every route that carries images.
pub(crate) fn media_guard(
    limits: &crate::policy::Limits,
    images: prompt::Images,
) -> Result<(), GatewayError> {
    if images.count > limits.max_images {
        return Err(GatewayError::BadRequest {
            message: "too many images in this request for this gateway".to_owned(),
        });
    }
    if images.largest_bytes > limits.max_image_bytes {
        return Err(GatewayError::BadRequest {
            message: "an image in this request is larger than this gateway accepts".to_owned(),
        });
    }
    Ok(())
}

/// The prompt limit that applies to this key and model: 400 `prompt_too_long` over it
/// (or, report-only, a note in the audit line).
pub(crate) fn prompt_guard(
    ctx: &RequestCtx,
    key: Option<&crate::policy::ApiKey>,
    model: &str,
    chars: usize,
) -> Result<(), GatewayError> {
    let (max, field) = ctx.policy.prompt_limit_rule(key, Some(model));
    if chars > max {
        ctx.refuse(
            crate::policy::Guard::PromptLimit,
            || format!("{chars} chars over {field} {max}"),
            GatewayError::PromptTooLong { max },
        )?;
    }
    Ok(())
}

/// What report-only clamps would have done: refused (with the message a client would have
/// read) or clamped (the fields and bounds). Nothing is recorded when they change nothing.
pub(crate) fn report_clamps(
    ctx: &RequestCtx,
    outcome: Result<(), GatewayError>,
    would: &crate::clamp::Clamped,
) {
    let note = match outcome {
        Err(e) => Some(format!("would refuse: {}", e.message())),
        Ok(()) => would.clamps().map(|h| format!("would clamp {h}")),
    };
    if let Some(note) = note {
        tracing::info!(request_id = %ctx.request_id, guard = "clamps", note = ?note,
            "A report-only guard would have changed this request; served as sent.");
        ctx.audit.update(|r| {
            r.would_refuse(crate::policy::Guard::Clamps, format!("clamps: {note}"));
        });
    }
}

/// The request's meter: its estimated tokens (everything it carries, plus its output limit)
/// reserved against its key's token quotas (`token_limit`), in this process or, with
/// `rate_limit.backend: redis`, in Redis for every gateway; settled when the meter, which
/// travels with the answer, is dropped (`meter.rs`). The decision is `None` when no quota
/// applies.
pub(crate) async fn reserve_tokens(
    req: &HttpRequest,
    state: &AppState,
    ctx: &RequestCtx,
    principal: Option<&crate::auth::Principal>,
    prompt_chars: usize,
    images: usize,
    output_limit: Option<u64>,
) -> Result<(Meter, Option<crate::ratelimit::tokens::TokenDecision>), GatewayError> {
    let policy = &ctx.policy;
    // Everything the request carries: its text (a native `context`'s token ids included),
    // its images at their documented cost, and its output limit.
    let prompt_estimate = prompt_tokens_estimate(prompt_chars)
        + images as u64 * crate::ratelimit::tokens::IMAGE_TOKENS;
    let estimate = prompt_estimate + output_limit.unwrap_or(0);
    let meter = |reservation| {
        Meter::new(
            state.usage.clone(),
            principal.map(|p| p.key.id.clone()),
            reservation,
            prompt_estimate,
        )
    };
    let quotas = principal
        .and_then(|p| p.key.token_limit.as_deref())
        .unwrap_or(&policy.token_limit);
    if quotas.is_empty() {
        return Ok((meter(None), None));
    }
    let identity = crate::admission::caller(principal, ctx.client_ip);
    let reserved = match &policy.limit_backend {
        crate::policy::LimitBackend::Memory => state.tokens.reserve(&identity, quotas, estimate),
        crate::policy::LimitBackend::Redis(cfg) => {
            let redis = req
                .app_data::<web::Data<crate::ratelimit::redis::RedisLimiter>>()
                .cloned()
                .ok_or(GatewayError::Internal)?;
            let keys = crate::ratelimit::redis::RedisLimiter::token_keys(cfg, &identity, quotas);
            match redis.reserve_tokens(cfg, &keys, quotas, estimate).await {
                Ok(Ok((held, d))) => Ok((
                    crate::ratelimit::tokens::Reservation::redis(redis, cfg.clone(), keys, held),
                    d,
                )),
                Ok(Err(d)) => Err(d),
                Err(trouble) => {
                    crate::ratelimit::redis::on_trouble(
                        &state.metrics,
                        cfg,
                        &trouble,
                        &ctx.request_id,
                        "token quota",
                    )?;
                    return Ok((meter(None), None));
                }
            }
        }
    };
    match reserved {
        Ok((reservation, decision)) => Ok((meter(Some(reservation)), Some(decision))),
        Err(decision) => {
            let scope = match principal {
                Some(p) if p.key.token_limit.is_some() => {
                    format!("auth.keys[{}].token_limit", p.key.id)
                }
                Some(p) => format!("token_limit for key {}", p.key.id),
                None => format!("token_limit for address {}", ctx.client_ip),
            };
            ctx.refuse(
                crate::policy::Guard::TokenLimit,
                || format!("{scope}: an estimated {estimate} tokens do not fit"),
                GatewayError::TokenLimited(decision),
            )?;
            Ok((meter(None), None))
        }
    }
}

/// Who a model request queues as: its key (with the key's weight and `max_concurrent`), or
/// its client address when auth is off.
pub(crate) fn queue_for(
    ctx: &RequestCtx,
    principal: Option<&crate::auth::Principal>,
) -> upstream::QueueFor {
    upstream::QueueFor {
        owner: crate::queue::Owner {
            key: crate::admission::caller(principal, ctx.client_ip),
            weight: principal.map_or(1, |p| p.key.weight),
        },
        max_concurrent: principal.and_then(|p| p.key.max_concurrent),
    }
}

/// What every relayed stream holds besides its body and line handler.
pub(crate) fn stream_parts(
    state: &AppState,
    ctx: &RequestCtx,
    lease: Lease,
    meter: Meter,
) -> stream::StreamParts {
    let policy = &ctx.policy;
    stream::StreamParts {
        meter,
        idle: policy.upstream.stream_idle_timeout,
        max_duration: policy.upstream.max_stream,
        audit: ctx.audit.clone(),
        metrics: state.metrics.clone(),
        lease,
        shutdown: state.shutdown.clone(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `POST /v1/chat/completions`, streamed or not.
pub async fn chat_completions(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let Admitted {
        principal,
        decision,
    } = admitted;

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
    let key = principal.as_ref().map(|p| &*p.key);
    prompt_guard(&ctx, key, &chat.model, chars)?;
    let upstream_model = native::model_access(&chat.model, &ctx, principal.as_ref())?;
    let mut native = convert::to_ollama(&chat, &upstream_model)?;
    convert::check_native_messages(&native, policy.limits.max_messages)?;
    let mut images = prompt::Images::default();
    for image in native.messages.iter().flat_map(|m| &m.images) {
        images.add_text(Some(image));
    }
    media_guard(&policy.limits, images)?;
    let image_count = images.count;
    // The request clamps: context, output limit (every spelling, a default when absent),
    // keep_alive.
    let clamps = policy.clamps(key, &chat.model);
    let mut clamped = crate::clamp::Clamped::default();
    let asked_output = native
        .options
        .num_predict
        .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let asked_ctx = native.options.num_ctx;
    let asked_keep = native.keep_alive.take();
    let clamp_all = |c: &mut crate::clamp::Clamped| {
        Ok::<_, GatewayError>((
            clamps.output(asked_output, c)?,
            clamps.num_ctx(asked_ctx, c)?,
            clamps.keep_alive(asked_keep.as_ref(), c)?,
        ))
    };
    if policy.reports(crate::policy::Guard::Clamps) {
        // Report-only: the clamps are worked out, not applied; the request goes on as sent.
        let mut would = crate::clamp::Clamped::default();
        report_clamps(&ctx, clamp_all(&mut would).map(|_| ()), &would);
        native.keep_alive = asked_keep;
    } else {
        let (num_predict, num_ctx, keep_alive) = clamp_all(&mut clamped)?;
        native.options.num_predict = num_predict;
        native.options.num_ctx = num_ctx;
        native.keep_alive = keep_alive;
    }
    let (meter, tokens) = reserve_tokens(
        &req,
        &state,
        &ctx,
        principal.as_ref(),
        chars,
        image_count,
        native.options.num_predict,
    )
    .await?;
    let native_body = serde_json::to_vec(&native).map_err(|_| GatewayError::Internal)?;

    let sent = Instant::now();
    let queue = queue_for(&ctx, principal.as_ref());
    // Affinity chooses between backends: with one there is nothing to remember.
    let conversation = (policy.backends.len() > 1)
        .then(|| {
            prompt::conversation_of(
                &queue.owner.key,
                &chat.model,
                native.messages.iter().take(2),
                prompt::feed_json,
            )
        })
        .flatten();
    let call = Call {
        method: actix_web::http::Method::POST,
        path: "/api/chat",
        body: Some(native_body.into()),
        request_id: &ctx.request_id,
        model: Some(&chat.model),
        queue: Some(queue),
        conversation,
    };
    let (mut resp, lease) = upstream.send(&state, policy, &call).await?;
    ctx.audit.update(|r| {
        r.upstream = Some(sent.elapsed());
        r.queue = lease.waited();
        r.backend_choice = lease.choice();
    });
    // Ollama has the request: from here on it pays at least its prompt.
    meter.sent();

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
        let body = stream::relay(
            resp.take_payload(),
            translator,
            stream_parts(&state, &ctx, lease, meter),
        );
        let mut out = HttpResponse::Ok();
        out.insert_header((CONTENT_TYPE, "text/event-stream"))
            .insert_header((CACHE_CONTROL, "no-cache"))
            .insert_header((HeaderName::from_static("x-accel-buffering"), "no"));
        with_rate_headers(&mut out, decision);
        with_token_headers(&mut out, tokens);
        with_clamped_header(&mut out, &clamped);
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
    meter.counted(Some(usage.prompt_tokens), Some(usage.completion_tokens));
    drop(meter);
    let json = convert::completion_json(&answer, &id, created, &chat.model);
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json"));
    with_rate_headers(&mut out, decision);
    with_token_headers(&mut out, tokens);
    with_clamped_header(&mut out, &clamped);
    Ok(out.body(json))
}

/// `GET /v1/models`: every backend's models under their public names, filtered by the key's
/// `models`. Backends that do not answer are left out; none answering is a 503.
pub async fn models(
    req: HttpRequest,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let listed = native::gather(&state, policy, &upstream, &ctx.request_id, "/api/tags").await?;
    let visible = native::visible(&listed, policy, admitted.principal.as_ref());
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json"));
    with_rate_headers(&mut out, admitted.decision);
    if asks_anthropic(&req) {
        let data: Vec<AnthropicModel> = visible
            .into_iter()
            .map(|(public, l)| anthropic_model(public, l))
            .collect();
        return Ok(out.json(AnthropicModelList {
            first_id: data.first().map(|m| m.id.clone()),
            last_id: data.last().map(|m| m.id.clone()),
            has_more: false,
            data,
        }));
    }
    let data: Vec<ModelEntry> = visible
        .into_iter()
        .map(|(public, l)| model_entry(public, l))
        .collect();
    Ok(out.json(ModelList {
        object: "list",
        data,
    }))
}

/// Anthropic's SDKs and Claude Code send `anthropic-version` on every request: their
/// `/v1/models` answer takes Anthropic's shape.
fn asks_anthropic(req: &HttpRequest) -> bool {
    req.headers().contains_key("anthropic-version")
}

/// Anthropic's model object (`GET /v1/models` with `anthropic-version`).
#[derive(serde::Serialize)]
struct AnthropicModel {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    display_name: String,
    /// RFC 3339, as Ollama's `modified_at` already is.
    created_at: String,
}

#[derive(serde::Serialize)]
struct AnthropicModelList {
    data: Vec<AnthropicModel>,
    has_more: bool,
    first_id: Option<String>,
    last_id: Option<String>,
}

fn anthropic_model(public: &str, l: &native::Listed) -> AnthropicModel {
    AnthropicModel {
        kind: "model",
        id: public.to_owned(),
        display_name: public.to_owned(),
        created_at: l
            .entry
            .get("modified_at")
            .and_then(serde_json::Value::as_str)
            .filter(|t| crate::rfc3339::parse(t).is_some())
            .unwrap_or("1970-01-01T00:00:00Z")
            .to_owned(),
    }
}

/// `GET /v1/models/{model}`: one model the key may use, as `/v1/models` lists it; 404 for
/// any other (a model the key may not use is not shown to exist).
pub async fn model(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let wanted = path.into_inner();
    ctx.audit
        .update(|r| r.model = Some(crate::audit::clip(&wanted, convert::MAX_MODEL_CHARS)));
    let listed = native::gather(&state, policy, &upstream, &ctx.request_id, "/api/tags").await?;
    let (public, l) = native::visible(&listed, policy, admitted.principal.as_ref())
        .into_iter()
        .find(|(public, _)| *public == wanted)
        .ok_or(GatewayError::ModelNotFound { model: wanted })?;
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json"));
    with_rate_headers(&mut out, admitted.decision);
    if asks_anthropic(&req) {
        return Ok(out.json(anthropic_model(public, l)));
    }
    Ok(out.json(model_entry(public, l)))
}

/// OpenAI's model object: `owned_by` is the namespace, `created` the modification time.
fn model_entry(public: &str, l: &native::Listed) -> ModelEntry {
    ModelEntry {
        id: public.to_owned(),
        object: "model",
        created: l
            .entry
            .get("modified_at")
            .and_then(serde_json::Value::as_str)
            .and_then(crate::rfc3339::parse)
            .unwrap_or(0),
        owned_by: public
            .rsplit_once('/')
            .map_or("library", |(ns, _)| ns.rsplit('/').next().unwrap_or(ns))
            .to_owned(),
    }
}
