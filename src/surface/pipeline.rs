//! The one handler of every model route (chat completions, native chat and generate,
//! embeddings, completions, Responses, Anthropic Messages), over the route's description
//! ([`Forward`]).
//!
//! Every route runs the same steps in the same order:
//! 1. read the body (size limit) the way the route reads it ([`Reading`]): a JSON object sent
//!    on to Ollama's own implementation, or an OpenAI chat completion translated to native
//!    chat; the shape limits (messages, images, embedding inputs) come with the reading;
//! 2. the body guards: prompt limit, the key's model access, the request clamps (report-only:
//!    worked out, not applied), the token quota's reservation;
//! 3. send what the guards checked (never the client's bytes), renamed to Ollama's model name;
//! 4. relay the answer line by line, or read it whole, under the public name, metering the
//!    usage Ollama reports; the headers the guards decided go on the answer in one place.
//!
//! What a route reads and sends differs only in step 1 and in the line handler of step 4.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::Method;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::convert;
use super::forward::{
    Answer, AnswerProbe, ClampAt, Forward, Framing, PassThrough, Reading, model_field, put_renamed,
};
use super::headers::Decided;
use super::native::{model_access, requested_model};
use super::openai::ChatRequest;
use super::prompt::{self, Images, embed_inputs, prompt_tokens_estimate};
use super::request::{parse_json, parse_object, read_body};
use super::stream;
use crate::admission::Admitted;
use crate::admission::auth::Principal;
use crate::admission::steps::{MODEL_BODY_STEPS, Step};
use crate::context::{RequestCtx, request_ctx};
use crate::errors::GatewayError;
use crate::limits::clamp::{Clamped, Clamps};
use crate::limits::meter::Meter;
use crate::policy::{ApiKey, Guard, Limits};
use crate::state::AppState;
use crate::upstream::backends::Lease;
use crate::upstream::client::{self, Call, QueueFor, Upstream};
use crate::upstream::ollama;

/// The actix route (POST) of a model route.
pub fn route(spec: &'static Forward) -> actix_web::Route {
    web::post().to(
        move |req: HttpRequest,
              payload: web::Payload,
              state: web::Data<AppState>,
              upstream: web::Data<Upstream>,
              admitted: Admitted| handle(req, payload, state, upstream, admitted, spec),
    )
}

/// A request as its route read it: what the guards look at, and the body Ollama will get.
struct Read {
    /// The model as the client named it.
    public: String,
    /// Characters of text the model reads.
    chars: usize,
    images: Images,
    stream: bool,
    body: Body,
}

enum Body {
    /// The object, sent on re-serialised.
    Json(Value),
    /// A chat completion translated to native chat.
    Chat {
        native: Box<ollama::ChatRequest>,
        include_usage: bool,
    },
}

impl Read {
    /// Step 1: parse the body as the route reads it, with the shape limits that come with it.
    fn of(spec: &Forward, body: &[u8], ctx: &RequestCtx) -> Result<Read, GatewayError> {
        let limits = &ctx.policy.limits;
        let read = match spec.reading {
            Reading::Json(count) => Read::json(spec, parse_object(body)?, count, ctx)?,
            Reading::ChatCompletions => Read::chat(parse_json(body)?, ctx)?,
        };
        media_guard(limits, read.images)?;
        ctx.audit.update(|r| {
            r.stream = read.stream;
            r.prompt_chars = Some(read.chars);
        });
        Ok(read)
    }

    fn json(
        spec: &Forward,
        v: Value,
        count: fn(&Value) -> usize,
        ctx: &RequestCtx,
    ) -> Result<Read, GatewayError> {
        let limits = &ctx.policy.limits;
        // limits.max_messages on every route that carries a conversation: native chat and
        // Anthropic `messages`, Responses `input` items.
        let turns = |f: &str| v.get(f).and_then(Value::as_array).map_or(0, Vec::len);
        if spec.conversation && turns("messages") + turns("input") > limits.max_messages {
            return Err(bad("too many messages in this request for this gateway"));
        }
        if spec.embeds && embed_inputs(&v) > limits.max_embed_inputs {
            return Err(bad("too many inputs in this request for this gateway"));
        }
        let stream = spec.streams
            && v.get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(spec.stream_default);
        Ok(Read {
            public: requested_model(&v, ctx)?.to_owned(),
            chars: count(&v),
            images: Images::in_body(&v),
            stream,
            body: Body::Json(v),
        })
    }

    fn chat(mut chat: ChatRequest, ctx: &RequestCtx) -> Result<Read, GatewayError> {
        let max_messages = ctx.policy.limits.max_messages;
        ctx.audit.update(|r| {
            r.model = Some(crate::observe::audit::clip(
                &chat.model,
                convert::MAX_MODEL_CHARS,
            ));
        });
        convert::check_request(&chat, max_messages)?;
        let chars = convert::prompt_chars(&chat);
        let include_usage = chat
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let native = convert::to_ollama(&mut chat)?;
        convert::check_native_messages(&native, max_messages)?;
        let mut images = Images::default();
        for image in native.messages.iter().flat_map(|m| &m.images) {
            images.add_text(Some(image));
        }
        Ok(Read {
            public: chat.model,
            chars,
            images,
            stream: native.stream,
            body: Body::Chat {
                native: Box::new(native),
                include_usage,
            },
        })
    }

    /// Step 2's clamps, in force or (report-only) worked out on a copy and reported.
    fn clamp(
        &mut self,
        spec: &Forward,
        ctx: &RequestCtx,
        clamps: &Clamps,
    ) -> Result<Clamped, GatewayError> {
        let mut clamped = Clamped::default();
        let report = ctx.policy.reports(Guard::Clamps);
        match &mut self.body {
            Body::Json(v) => {
                let Some(obj) = v.as_object_mut() else {
                    return Ok(clamped);
                };
                let apply =
                    |obj: &mut serde_json::Map<String, Value>, c: &mut Clamped| match spec.clamp {
                        ClampAt::Native { generates } => clamps.native_body(obj, generates, c),
                        ClampAt::Output(field) => clamps.output_field(obj, field, c),
                        ClampAt::Nothing => Ok(()),
                    };
                if report {
                    let mut copy = obj.clone();
                    let mut would = Clamped::default();
                    report_clamps(ctx, apply(&mut copy, &mut would), &would);
                } else {
                    apply(obj, &mut clamped)?;
                }
            }
            Body::Chat { native, .. } => {
                // The output limit (every spelling, a default when absent), context and
                // keep_alive: the typed native request's fields.
                let asked_output = native
                    .options
                    .num_predict
                    .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
                let asked_ctx = native.options.num_ctx;
                let asked_keep = native.keep_alive.take();
                let clamp_all = |c: &mut Clamped| {
                    Ok::<_, GatewayError>((
                        clamps.output(asked_output, c)?,
                        clamps.num_ctx(asked_ctx, c)?,
                        clamps.keep_alive(asked_keep.as_ref(), c)?,
                    ))
                };
                if report {
                    let mut would = Clamped::default();
                    report_clamps(ctx, clamp_all(&mut would).map(|_| ()), &would);
                    native.keep_alive = asked_keep;
                } else {
                    let (num_predict, num_ctx, keep_alive) = clamp_all(&mut clamped)?;
                    native.options.num_predict = num_predict;
                    native.options.num_ctx = num_ctx;
                    native.keep_alive = keep_alive;
                }
            }
        }
        Ok(clamped)
    }

    /// The output limit the token reservation counts.
    fn output_limit(&self, spec: &Forward, clamps: &Clamps) -> Option<u64> {
        match &self.body {
            Body::Json(_) => {
                let generates = matches!(
                    spec.clamp,
                    ClampAt::Native { generates: true } | ClampAt::Output(_)
                );
                clamps.max_output_tokens.filter(|_| generates)
            }
            Body::Chat { native, .. } => native.options.num_predict,
        }
    }

    /// The conversation's fingerprint, for affinity (only worked out with several backends).
    fn conversation(&self, spec: &Forward, caller: &str) -> Option<u64> {
        match &self.body {
            Body::Json(v) if spec.answer == Answer::Text => {
                prompt::conversation(caller, &self.public, prompt::conversation_parts(v))
            }
            Body::Json(_) => None,
            Body::Chat { native, .. } => prompt::conversation_of(
                caller,
                &self.public,
                native.messages.iter().take(2),
                prompt::feed_json,
            ),
        }
    }

    /// Step 3: what goes to Ollama is what the guards read and checked, re-serialised under
    /// Ollama's name for the model: never the client's bytes, in which a repeated key would
    /// read differently in Go (one_reading.rs).
    fn upstream_body(&mut self, up: &str) -> Result<Bytes, GatewayError> {
        let bytes = match &mut self.body {
            Body::Json(v) => {
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("model".to_owned(), Value::from(up));
                }
                serde_json::to_vec(v)
            }
            Body::Chat { native, .. } => {
                native.model.clear();
                native.model.push_str(up);
                serde_json::to_vec(native)
            }
        };
        bytes.map(Bytes::from).map_err(|_| GatewayError::Internal)
    }
}

fn bad(message: &str) -> GatewayError {
    GatewayError::BadRequest {
        message: message.to_owned(),
    }
}

/// Every model route's handler; `spec` says what differs per route.
pub async fn handle(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
    spec: &'static Forward,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let Admitted {
        principal,
        decision,
    } = admitted;
    let key = principal.as_ref().map(|p| &*p.key);

    // 1. Read.
    let body = read_body(&req, payload, &policy.limits).await?;
    let mut read = Read::of(spec, &body, &ctx)?;
    drop(body);

    // 2. The body guards, in the table's order (`admission::steps`, which `explain` walks).
    let clamps = policy.clamps(key, &read.public);
    // Who the request is for the token quota and the queue, worked out once.
    let caller = crate::admission::caller(principal.as_ref(), ctx.client_ip);
    let (mut up, mut clamped, mut reserved) = (None, Clamped::default(), None);
    for step in MODEL_BODY_STEPS {
        match step {
            Step::PromptLimit => prompt_guard(&ctx, key, &read.public, read.chars)?,
            Step::ModelAccess => up = Some(model_access(&read.public, &ctx, principal.as_ref())?),
            Step::Clamps => clamped = read.clamp(spec, &ctx, &clamps)?,
            Step::TokenLimit => {
                reserved = Some(
                    reserve_tokens(
                        &req,
                        &state,
                        &ctx,
                        principal.as_ref(),
                        &caller,
                        &read,
                        read.output_limit(spec, &clamps),
                    )
                    .await?,
                );
            }
            // Admission's, before the handler.
            Step::Observer
            | Step::Operator
            | Step::Whitelist
            | Step::Key
            | Step::RateLimit
            | Step::Admin
            | Step::ModelVisible => {}
        }
    }
    let (Some(up), Some((meter, tokens))) = (up, reserved) else {
        return Err(GatewayError::Internal);
    };
    let decided = Decided {
        rate: decision,
        tokens,
        clamped,
    };

    // 3. Send.
    let queue = queue_for(caller, principal.as_ref());
    // Affinity chooses between backends: with one there is nothing to remember.
    let conversation = (policy.backends.len() > 1)
        .then(|| read.conversation(spec, &queue.owner.key))
        .flatten();
    let call = Call {
        method: Method::POST,
        path: spec.path,
        body: Some(read.upstream_body(&up)?),
        request_id: &ctx.request_id,
        model: Some(&read.public),
        queue: Some(queue),
        conversation,
    };
    let sent = Instant::now();
    let (mut resp, lease) = match upstream.send(&state, policy, &call).await {
        Err(GatewayError::UpstreamTooOld { .. }) => {
            return Err(GatewayError::UpstreamTooOld { needs: spec.since });
        }
        other => other?,
    };
    ctx.audit.update(|r| {
        r.upstream = Some(sent.elapsed());
        r.queue = lease.waited();
        r.backend_choice = lease.choice();
    });
    // Ollama has the request: from here on it pays at least its prompt.
    meter.sent();

    // 4. Answer.
    let Read {
        public,
        body,
        stream,
        ..
    } = read;
    if stream {
        let parts = stream_parts(&state, &ctx, lease, meter);
        let payload = resp.take_payload();
        let mut out = HttpResponse::Ok();
        out.insert_header((
            CONTENT_TYPE,
            match spec.framing {
                Framing::Ndjson => "application/x-ndjson",
                Framing::Sse => "text/event-stream",
            },
        ))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .insert_header((HeaderName::from_static("x-accel-buffering"), "no"));
        decided.apply(&mut out);
        // Only the body stream is kept for the life of the stream: the response head (its
        // header map, ~3 KB) would otherwise be held by every open stream.
        return Ok(match body {
            Body::Json(_) => out.streaming(stream::relay(
                payload,
                PassThrough::new(spec, &up, public, ctx.dialect),
                parts,
            )),
            Body::Chat { include_usage, .. } => {
                let translator = convert::SseTranslator::new(
                    convert::completion_id(),
                    unix_now(),
                    public,
                    include_usage,
                );
                out.streaming(stream::relay(payload, translator, parts))
            }
        });
    }

    let limit = match spec.answer {
        Answer::Text => client::ANSWER_LIMIT,
        Answer::Embeddings => policy.limits.max_embed_answer_bytes,
    };
    let bytes = client::read_body(&mut resp, policy.upstream.first_token_timeout, limit)
        .await
        .map_err(|e| e.into_gateway_error(&state))?;
    drop(lease);
    ctx.audit.update(|r| r.upstream = Some(sent.elapsed()));
    let (answer, usage, content_type) = match body {
        Body::Json(_) => {
            // Checked and its counts read by a typed read that skips everything else (a tree
            // of a 30 MB embeddings answer would take several times its size), then sent back
            // as Ollama wrote it, with the model's name replaced where Go's encoder wrote it.
            let probe: AnswerProbe = serde_json::from_slice(&bytes)
                .map_err(|_| client::BodyError::Invalid.into_gateway_error(&state))?;
            if probe.error.is_some() {
                state.metrics.upstream_error("error_body");
                return Err(GatewayError::UpstreamFailed);
            }
            let answer = if public == up {
                bytes
            } else {
                let mut out = BytesMut::with_capacity(bytes.len() + public.len());
                put_renamed(&bytes, &model_field(&up), &model_field(&public), &mut out);
                out.freeze()
            };
            (answer, probe.usage(), "application/json; charset=utf-8")
        }
        Body::Chat { .. } => {
            let chunk: ollama::ChatChunk = serde_json::from_slice(&bytes)
                .map_err(|_| client::BodyError::Invalid.into_gateway_error(&state))?;
            if chunk.error.is_some() {
                state.metrics.upstream_error("error_body");
                return Err(GatewayError::UpstreamFailed);
            }
            let json =
                convert::completion_json(&chunk, &convert::completion_id(), unix_now(), &public);
            (
                Bytes::from(json),
                convert::usage_of(&chunk),
                "application/json",
            )
        }
    };
    ctx.audit.update(|r| {
        r.prompt_tokens = Some(usage.prompt_tokens);
        r.completion_tokens = Some(usage.completion_tokens);
    });
    meter.counted(Some(usage.prompt_tokens), Some(usage.completion_tokens));
    drop(meter);
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, content_type));
    decided.apply(&mut out);
    Ok(out.body(answer))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `limits.max_images` and `limits.max_image_bytes`, on every route that carries images.
pub(crate) fn media_guard(limits: &Limits, images: Images) -> Result<(), GatewayError> {
    if images.count > limits.max_images {
        return Err(bad("too many images in this request for this gateway"));
    }
    if images.largest_bytes > limits.max_image_bytes {
        return Err(bad(
            "an image in this request is larger than this gateway accepts",
        ));
    }
    Ok(())
}

/// The prompt limit that applies to this key and model: 400 `prompt_too_long` over it
/// (or, report-only, a note in the audit line).
pub(crate) fn prompt_guard(
    ctx: &RequestCtx,
    key: Option<&ApiKey>,
    model: &str,
    chars: usize,
) -> Result<(), GatewayError> {
    let (max, field) = ctx.policy.prompt_limit_rule(key, Some(model));
    if chars > max {
        ctx.refuse(
            Guard::PromptLimit,
            || format!("{chars} chars over {field} {max}"),
            GatewayError::PromptTooLong { max },
        )?;
    }
    Ok(())
}

/// What report-only clamps would have done: refused (with the message a client would have
/// read) or clamped (the fields and bounds). Nothing is recorded when they change nothing.
fn report_clamps(ctx: &RequestCtx, outcome: Result<(), GatewayError>, would: &Clamped) {
    let note = match outcome {
        Err(e) => Some(format!("would refuse: {}", e.message())),
        Ok(()) => would.clamps().map(|h| format!("would clamp {h}")),
    };
    if let Some(note) = note {
        tracing::info!(request_id = %ctx.request_id, guard = "clamps", note = ?note,
            "A report-only guard would have changed this request; served as sent.");
        ctx.audit.update(|r| {
            r.would_refuse(Guard::Clamps, format!("clamps: {note}"));
        });
    }
}

/// The request's meter: its estimated tokens (everything it carries, plus its output limit)
/// reserved against its key's token quotas (`token_limit`), in this process or, with
/// `rate_limit.backend: redis`, in Redis for every gateway; settled when the meter, which
/// travels with the answer, is dropped (`meter.rs`). The decision is `None` when no quota
/// applies.
async fn reserve_tokens(
    req: &HttpRequest,
    state: &AppState,
    ctx: &RequestCtx,
    principal: Option<&Principal>,
    identity: &std::sync::Arc<str>,
    read: &Read,
    output_limit: Option<u64>,
) -> Result<
    (
        Meter,
        Option<crate::limits::ratelimit::tokens::TokenDecision>,
    ),
    GatewayError,
> {
    let policy = &ctx.policy;
    // Everything the request carries: its text (a native `context`'s token ids included),
    // its images at their documented cost, and its output limit.
    let prompt_estimate = prompt_tokens_estimate(read.chars)
        + read.images.count as u64 * crate::limits::ratelimit::tokens::IMAGE_TOKENS;
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
    let reserved = match &policy.limit_backend {
        crate::policy::LimitBackend::Memory => state.tokens.reserve(identity, quotas, estimate),
        crate::policy::LimitBackend::Redis(cfg) => {
            let redis = req
                .app_data::<web::Data<crate::limits::ratelimit::redis::RedisLimiter>>()
                .cloned()
                .ok_or(GatewayError::Internal)?;
            let keys =
                crate::limits::ratelimit::redis::RedisLimiter::token_keys(cfg, identity, quotas);
            match redis.reserve_tokens(cfg, &keys, quotas, estimate).await {
                Ok(Ok((held, d))) => Ok((
                    crate::limits::ratelimit::tokens::Reservation::redis(
                        redis,
                        cfg.clone(),
                        keys,
                        held,
                    ),
                    d,
                )),
                Ok(Err(d)) => Err(d),
                Err(trouble) => {
                    crate::limits::ratelimit::redis::on_trouble(
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
                Guard::TokenLimit,
                || format!("{scope}: an estimated {estimate} tokens do not fit"),
                GatewayError::TokenLimited(decision),
            )?;
            Ok((meter(None), None))
        }
    }
}

/// Who a model request queues as: its key (with the key's weight and `max_concurrent`), or
/// its client address when auth is off.
fn queue_for(caller: std::sync::Arc<str>, principal: Option<&Principal>) -> QueueFor {
    QueueFor {
        owner: crate::limits::queue::Owner {
            key: caller,
            weight: principal.map_or(1, |p| p.key.weight),
        },
        max_concurrent: principal.and_then(|p| p.key.max_concurrent),
    }
}

/// What every relayed stream holds besides its body and line handler.
fn stream_parts(
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
