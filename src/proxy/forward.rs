//! One pipeline for every model route the gateway forwards to Ollama's own implementation:
//! native `/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`, and OpenAI's
//! `/v1/embeddings`, `/v1/completions`.
//!
//! The path is the same for all: read the body (size limit), parse it, find the model, check it
//! against the key's models, count what the model will read against the prompt limit, rename
//! the model to Ollama's name, send, then stream the answer back line by line (or read it
//! whole) with the public name in place of Ollama's, metering the usage it reports. What
//! differs per route is a small description, [`Forward`].

use actix_web::http::Method;
use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use bytes::{BufMut, BytesMut};
use serde_json::Value;

use super::headers::{with_clamped_header, with_rate_headers, with_token_headers};
use super::native::{model_access, requested_model};
use super::openai::Usage;
use super::prompt::{
    Images, embed_inputs, prompt_completions, prompt_generate, prompt_input,
    prompt_legacy_embeddings, prompt_messages, prompt_native_chat, prompt_responses,
};
use super::request::{parse_object, read_body};
use super::stream::LineOutcome;
use super::stream::{self, Lines};
use super::stream_parts;
use super::upstream::{self, Call, Upstream};
use crate::admission::Admitted;
use crate::clamp::Clamped;
use crate::context::request_ctx;
use crate::errors::{Dialect, GatewayError};
use crate::policy::Guard;
use crate::state::AppState;

/// How a streamed answer comes from Ollama on this route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Native NDJSON, one JSON object per line, the last with `"done":true`.
    Ndjson,
    /// OpenAI SSE: `data: {...}` events, ending with `data: [DONE]`.
    Sse,
}

/// What differs between forwarded routes.
pub struct Forward {
    /// The route at Ollama (the same as ours).
    pub path: &'static str,
    pub framing: Framing,
    /// Whether an answer is streamed when the request does not say (`stream` absent): true on
    /// Ollama's native routes, false on OpenAI's.
    pub stream_default: bool,
    /// Whether the route can stream at all.
    pub streams: bool,
    /// Characters of text the model reads in this route's request body.
    pub prompt: fn(&Value) -> usize,
    /// Largest whole (non-streamed) answer accepted: a chat's is small; embeddings'
    /// (`limits.max_embed_answer_bytes`) grow with their batch.
    pub answer: Answer,
    /// The Ollama release that added the route, for the error when it is missing.
    pub since: &'static str,
    /// What marks a streamed answer's end (in an event or data line): what tells a complete
    /// answer from one cut short when Ollama's body ends.
    pub end_marker: &'static [u8],
    /// How the route ends a stream with an error.
    pub stream_errors: StreamErrors,
    /// Where the request clamps apply.
    pub clamp: ClampAt,
    /// Whether the body carries a conversation (`messages`, or Responses `input` items) that
    /// `limits.max_messages` bounds.
    pub conversation: bool,
    /// Whether `input` is a batch of embedding inputs (`limits.max_embed_inputs`).
    pub embeds: bool,
}

/// Where a route's body carries what the clamps bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClampAt {
    /// Native `options.num_ctx`, `keep_alive`, and `options.num_predict` when it generates.
    Native { generates: bool },
    /// An OpenAI or Anthropic output limit field (`max_tokens`, `max_output_tokens`).
    Output(&'static str),
    /// Nothing to bound (OpenAI embeddings).
    Nothing,
}

/// How a route's stream reports an error after it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrors {
    /// The surface's dialect (`GatewayError::stream_event`).
    Dialect,
    /// The Responses API's `event: error` with `{"type":"error","code","message","param"}`.
    Responses,
}

pub static API_CHAT: Forward = Forward {
    path: "/api/chat",
    framing: Framing::Ndjson,
    stream_default: true,
    streams: true,
    prompt: prompt_native_chat,
    answer: Answer::Text,
    since: "0.1.14",
    end_marker: b"\"done\":true",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Native { generates: true },
    embeds: false,
    conversation: true,
};

pub static API_GENERATE: Forward = Forward {
    path: "/api/generate",
    framing: Framing::Ndjson,
    stream_default: true,
    streams: true,
    prompt: prompt_generate,
    answer: Answer::Text,
    since: "0.1.0",
    end_marker: b"\"done\":true",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Native { generates: true },
    embeds: false,
    conversation: false,
};

pub static API_EMBED: Forward = Forward {
    path: "/api/embed",
    framing: Framing::Ndjson,
    stream_default: false,
    streams: false,
    prompt: prompt_input,
    answer: Answer::Embeddings,
    since: "0.3.0",
    end_marker: b"",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Native { generates: false },
    embeds: true,
    conversation: false,
};

pub static API_EMBEDDINGS: Forward = Forward {
    path: "/api/embeddings",
    framing: Framing::Ndjson,
    stream_default: false,
    streams: false,
    prompt: prompt_legacy_embeddings,
    answer: Answer::Embeddings,
    since: "0.1.26",
    end_marker: b"",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Native { generates: false },
    embeds: false,
    conversation: false,
};

pub static V1_EMBEDDINGS: Forward = Forward {
    path: "/v1/embeddings",
    framing: Framing::Sse,
    stream_default: false,
    streams: false,
    prompt: prompt_input,
    answer: Answer::Embeddings,
    since: "0.2.0",
    end_marker: b"",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Nothing,
    embeds: true,
    conversation: false,
};

pub static V1_COMPLETIONS: Forward = Forward {
    path: "/v1/completions",
    framing: Framing::Sse,
    stream_default: false,
    streams: true,
    prompt: prompt_completions,
    answer: Answer::Text,
    since: "0.2.0",
    end_marker: b"[DONE]",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Output("max_tokens"),
    embeds: false,
    conversation: false,
};

pub static V1_RESPONSES: Forward = Forward {
    path: "/v1/responses",
    framing: Framing::Sse,
    stream_default: false,
    streams: true,
    prompt: prompt_responses,
    answer: Answer::Text,
    since: "0.13.3",
    end_marker: b"response.completed",
    stream_errors: StreamErrors::Responses,
    clamp: ClampAt::Output("max_output_tokens"),
    embeds: false,
    conversation: true,
};

pub static V1_MESSAGES: Forward = Forward {
    path: "/v1/messages",
    framing: Framing::Sse,
    stream_default: false,
    streams: true,
    prompt: prompt_messages,
    answer: Answer::Text,
    since: "0.14.0",
    end_marker: b"message_stop",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Output("max_tokens"),
    embeds: false,
    conversation: true,
};

/// What a route's whole answer is, for its size bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Generated text: `upstream::ANSWER_LIMIT`.
    Text,
    /// Vectors, as large as the batch asks (1,000 inputs x 1,024 floats is ~20 MB as JSON):
    /// `limits.max_embed_answer_bytes`.
    Embeddings,
}

/// `"model":"<name>"` as Go's encoder writes it, for renaming in answers without parsing them.
fn model_field(name: &str) -> Vec<u8> {
    let mut out = b"\"model\":".to_vec();
    crate::json_out::json_str(&mut out, name);
    out
}

/// Replaces every `from` in `line` with `to`, writing into `out`.
fn put_renamed(line: &[u8], from: &[u8], to: &[u8], out: &mut BytesMut) {
    let mut rest = line;
    while let Some(i) = memchr::memmem::find(rest, from) {
        out.put_slice(&rest[..i]);
        out.put_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.put_slice(rest);
}

/// Token counts in one answer object, wherever the surface puts them: native
/// `prompt_eval_count`/`eval_count`, OpenAI `usage.prompt_tokens`/`completion_tokens`,
/// Responses and Anthropic `usage.input_tokens`/`output_tokens`. Counts only grow: an
/// Anthropic stream reports input tokens first and output tokens at its end.
fn usage_in(v: &Value, usage: &mut Usage) {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
    let mut seen = |p: Option<u64>, c: Option<u64>| {
        if let Some(p) = p {
            usage.prompt_tokens = usage.prompt_tokens.max(p);
        }
        if let Some(c) = c {
            usage.completion_tokens = usage.completion_tokens.max(c);
        }
    };
    seen(num(v, "prompt_eval_count"), num(v, "eval_count"));
    // OpenAI (`prompt_tokens`), Responses and Anthropic (`input_tokens`), at the top level or
    // inside the response or message an event carries.
    for holder in [Some(v), v.get("response"), v.get("message")]
        .into_iter()
        .flatten()
    {
        if let Some(u) = holder.get("usage") {
            seen(
                num(u, "prompt_tokens").or_else(|| num(u, "input_tokens")),
                num(u, "completion_tokens").or_else(|| num(u, "output_tokens")),
            );
        }
    }
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
}

/// Passes Ollama's lines on with the public model name, watching for the end, errors and
/// usage.
struct PassThrough {
    from: Vec<u8>,
    to: Vec<u8>,
    spec: &'static Forward,
    dialect: Dialect,
    usage: Usage,
    /// The answer's last line or event has been seen.
    ended: bool,
    /// An SSE `event:` line, held until its `data:` line shows whether it is a failure.
    held_event: Option<Vec<u8>>,
    /// Responses streams: what a `response.failed` event of ours must continue.
    responses: ResponsesSeen,
}

/// What a Responses stream has said of itself so far: the response's id and creation time
/// (from `response.created`) and the last `sequence_number`. A failure ends the stream as
/// OpenAI does, with a `response.failed` event that continues the numbering and carries the
/// error in `response.error`: the OpenAI SDK's stream helper and Codex show that message
/// (an `error` event numbered 0 read to them as "stream closed before response.completed").
#[derive(Debug, Default)]
struct ResponsesSeen {
    /// The public model name, for the failed response.
    model: String,
    id: Option<String>,
    created_at: u64,
    sequence: Option<u64>,
}

impl ResponsesSeen {
    fn see(&mut self, json: &[u8]) {
        const SEQ: &[u8] = b"\"sequence_number\":";
        if let Some(i) = memchr::memmem::find(json, SEQ) {
            let digits = json[i + SEQ.len()..]
                .iter()
                .skip_while(|b| b.is_ascii_whitespace())
                .take_while(|b| b.is_ascii_digit())
                .try_fold(0u64, |n, b| {
                    n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
                });
            if let Some(n) = digits {
                self.sequence = Some(self.sequence.map_or(n, |s| s.max(n)));
            }
        }
        if self.id.is_none() && memchr::memmem::find(json, b"\"response.created\"").is_some() {
            #[derive(serde::Deserialize)]
            struct Created {
                response: CreatedResponse,
            }
            #[derive(serde::Deserialize)]
            struct CreatedResponse {
                id: String,
                #[serde(default)]
                created_at: u64,
            }
            if let Ok(c) = serde_json::from_slice::<Created>(json) {
                self.id = Some(c.response.id);
                self.created_at = c.response.created_at;
            }
        }
    }

    /// `event: response.failed`, numbered after the last event seen.
    fn failed_event(&self, err: &GatewayError, out: &mut BytesMut) {
        let id = self
            .id
            .clone()
            .unwrap_or_else(|| format!("resp_{}", crate::ids::hex128()));
        let event = serde_json::json!({
            "type": "response.failed",
            "sequence_number": self.sequence.map_or(0, |s| s + 1),
            "response": {
                "id": id,
                "object": "response",
                "created_at": self.created_at,
                "status": "failed",
                "error": {"code": "server_error", "message": err.message()},
                "incomplete_details": null,
                "model": self.model,
                "output": [],
                "parallel_tool_calls": true,
                "tool_choice": "auto",
                "tools": [],
            },
        });
        out.put_slice(b"event: response.failed\ndata: ");
        out.put_slice(event.to_string().as_bytes());
        out.put_slice(b"\n\n");
    }
}

impl PassThrough {
    fn put(&self, line: &[u8], out: &mut BytesMut) {
        if self.from == self.to {
            out.put_slice(line);
        } else {
            put_renamed(line, &self.from, &self.to, out);
        }
        out.put_u8(b'\n');
    }
}

/// Ollama's own failure report in a line's JSON: a native `{"error":...}`, an OpenAI
/// `{"error":{...}}`, a Responses `response.failed` or `error` event.
fn is_failure(json: &[u8]) -> bool {
    json.starts_with(b"{\"error\"")
        || memchr::memmem::find(json, b"\"type\":\"response.failed\"").is_some()
        || memchr::memmem::find(json, b"\"type\":\"error\"").is_some()
}

impl Lines for PassThrough {
    fn on_line(&mut self, line: &[u8], out: &mut BytesMut) -> LineOutcome {
        let marker = self.spec.end_marker;
        let json = match self.spec.framing {
            Framing::Ndjson => line.trim_ascii(),
            Framing::Sse => {
                if line.starts_with(b"event:") {
                    if !marker.is_empty() && memchr::memmem::find(line, marker).is_some() {
                        self.ended = true;
                    }
                    self.held_event = Some(line.to_vec());
                    return LineOutcome::Continue;
                }
                match line.strip_prefix(b"data:") {
                    Some(data) => data.trim_ascii(),
                    None => {
                        // Blank separators, `id:`, `retry:` and comments go through as they
                        // are; anything else is not SSE (an HTML error page, say), and what
                        // is not SSE is never relayed.
                        let l = line.trim_ascii();
                        if !(l.is_empty()
                            || l.starts_with(b"id:")
                            || l.starts_with(b"retry:")
                            || l.starts_with(b":"))
                        {
                            return LineOutcome::Invalid;
                        }
                        out.put_slice(line);
                        out.put_u8(b'\n');
                        return LineOutcome::Continue;
                    }
                }
            }
        };
        if json.is_empty() {
            out.put_slice(line);
            out.put_u8(b'\n');
            return LineOutcome::Continue;
        }
        // Only well-formed JSON objects are relayed (and SSE's `[DONE]`): a broken or hostile
        // upstream's text never reaches the client as if it were Ollama's answer.
        if json != b"[DONE]" && !json.starts_with(b"{") {
            return LineOutcome::Invalid;
        }
        // Ollama's own error (its text can carry paths and library detail): never passed on;
        // the stream ends with the gateway's error event instead.
        if is_failure(json) {
            self.held_event = None;
            return LineOutcome::Failed;
        }
        if let Some(event) = self.held_event.take() {
            out.put_slice(&event);
            out.put_u8(b'\n');
        }
        if self.spec.stream_errors == StreamErrors::Responses {
            self.responses.see(json);
        }
        if json == b"[DONE]" {
            self.ended = true;
            self.put(line, out);
            return LineOutcome::Continue;
        }
        let last =
            self.spec.framing == Framing::Ndjson && memchr::memmem::find(json, marker).is_some();
        if last || memchr::memmem::find(json, b"\"usage\"").is_some() {
            match serde_json::from_slice::<Value>(json) {
                Ok(v) => usage_in(&v, &mut self.usage),
                Err(_) => return LineOutcome::Invalid,
            }
        } else if json != b"[DONE]"
            && serde_json::from_slice::<serde::de::IgnoredAny>(json).is_err()
        {
            // A syntax check that builds nothing: cheaper than the tree the usage needs.
            return LineOutcome::Invalid;
        }
        if self.spec.framing == Framing::Sse
            && !marker.is_empty()
            && memchr::memmem::find(json, marker).is_some()
        {
            self.ended = true;
        }
        self.put(line, out);
        if last {
            self.ended = true;
            return LineOutcome::Done(self.usage);
        }
        // An SSE stream is complete when Ollama's body ends after its last event.
        LineOutcome::Continue
    }

    fn at_end(&mut self) -> Option<Usage> {
        self.ended.then_some(self.usage)
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn error_event(&self, err: &GatewayError, out: &mut BytesMut) {
        match self.spec.stream_errors {
            StreamErrors::Dialect => err.stream_event(self.dialect, out),
            StreamErrors::Responses => self.responses.failed_event(err, out),
        }
    }
}

/// The actix route (POST) of a forwarded route.
pub fn route(spec: &'static Forward) -> actix_web::Route {
    web::post().to(
        move |req: HttpRequest,
              payload: web::Payload,
              state: web::Data<AppState>,
              upstream: web::Data<Upstream>,
              admitted: Admitted| forward(req, payload, state, upstream, admitted, spec),
    )
}

/// The forwarded-route handler; `spec` says what differs per route.
pub async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
    spec: &'static Forward,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let body = read_body(&req, payload, &policy.limits).await?;
    let mut v = parse_object(&body)?;
    // limits.max_messages on every route that carries a conversation, not only on chat
    // completions: native chat and Anthropic `messages`, Responses `input` items.
    let turns = |f: &str| v.get(f).and_then(Value::as_array).map_or(0, Vec::len);
    if spec.conversation && turns("messages") + turns("input") > policy.limits.max_messages {
        return Err(GatewayError::BadRequest {
            message: "too many messages in this request for this gateway".to_owned(),
        });
    }
    let images = Images::in_body(&v);
    super::media_guard(&policy.limits, images)?;
    if spec.embeds && embed_inputs(&v) > policy.limits.max_embed_inputs {
        return Err(GatewayError::BadRequest {
            message: "too many inputs in this request for this gateway".to_owned(),
        });
    }
    let stream = spec.streams
        && v.get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(spec.stream_default);
    ctx.audit.update(|r| r.stream = stream);
    let chars = (spec.prompt)(&v);
    ctx.audit.update(|r| r.prompt_chars = Some(chars));
    // In the chat route's order: the prompt limit, then the key's model access.
    let public = requested_model(&v, &ctx)?.to_owned();
    let key = admitted.principal.as_ref().map(|p| &*p.key);
    super::prompt_guard(&ctx, key, &public, chars)?;
    let up = model_access(&public, &ctx, admitted.principal.as_ref())?;
    let clamps = policy.clamps(key, &public);
    let mut clamped = Clamped::default();
    let apply = |obj: &mut serde_json::Map<String, Value>, clamped: &mut Clamped| match spec.clamp {
        ClampAt::Native { generates } => clamps.native_body(obj, generates, clamped),
        ClampAt::Output(field) => clamps.output_field(obj, field, clamped),
        ClampAt::Nothing => Ok(()),
    };
    if let Some(obj) = v.as_object_mut() {
        if policy.reports(Guard::Clamps) {
            // Report-only: the clamps run on a copy; the request goes on as the client sent it.
            let mut copy = obj.clone();
            let mut would = Clamped::default();
            super::report_clamps(&ctx, apply(&mut copy, &mut would), &would);
        } else {
            apply(obj, &mut clamped)?;
        }
    }
    let generates = matches!(
        spec.clamp,
        ClampAt::Native { generates: true } | ClampAt::Output(_)
    );
    let (meter, tokens) = super::reserve_tokens(
        &req,
        &state,
        &ctx,
        admitted.principal.as_ref(),
        chars,
        images.count,
        clamps.max_output_tokens.filter(|_| generates),
    )
    .await?;
    // What goes to Ollama is what the gateway read and checked, re-serialised: never the
    // client's bytes, in which a repeated key would read differently in Go (one_reading.rs).
    let renamed = public != up;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".to_owned(), Value::from(up.as_str()));
    }
    drop(body);
    let upstream_body: bytes::Bytes = serde_json::to_vec(&v)
        .map_err(|_| GatewayError::Internal)?
        .into();
    let queue = super::queue_for(&ctx, admitted.principal.as_ref());
    // Affinity chooses between backends: with one there is nothing to remember.
    let conversation = (spec.answer == Answer::Text && policy.backends.len() > 1)
        .then(|| {
            super::prompt::conversation(
                &queue.owner.key,
                &public,
                super::prompt::conversation_parts(&v),
            )
        })
        .flatten();
    let call = Call {
        method: Method::POST,
        path: spec.path,
        body: Some(upstream_body),
        request_id: &ctx.request_id,
        model: Some(&public),
        queue: Some(queue),
        conversation,
    };
    let sent = std::time::Instant::now();
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

    if stream {
        let lines = PassThrough {
            from: model_field(&up),
            to: model_field(&public),
            spec,
            dialect: ctx.dialect,
            usage: Usage::default(),
            ended: false,
            held_event: None,
            responses: ResponsesSeen {
                // Only a Responses stream names its model in a failure of ours.
                model: match spec.stream_errors {
                    StreamErrors::Responses => public.clone(),
                    StreamErrors::Dialect => String::new(),
                },
                ..ResponsesSeen::default()
            },
        };
        let content_type = match spec.framing {
            Framing::Ndjson => "application/x-ndjson",
            Framing::Sse => "text/event-stream",
        };
        let body = stream::relay(
            resp.take_payload(),
            lines,
            stream_parts(&state, &ctx, lease, meter),
        );
        let mut out = HttpResponse::Ok();
        out.insert_header((CONTENT_TYPE, content_type))
            .insert_header((CACHE_CONTROL, "no-cache"))
            .insert_header((HeaderName::from_static("x-accel-buffering"), "no"));
        with_rate_headers(&mut out, admitted.decision);
        with_token_headers(&mut out, tokens);
        with_clamped_header(&mut out, &clamped);
        return Ok(out.streaming(body));
    }

    let bytes = upstream::read_body(
        &mut resp,
        policy.upstream.first_token_timeout,
        match spec.answer {
            Answer::Text => upstream::ANSWER_LIMIT,
            Answer::Embeddings => policy.limits.max_embed_answer_bytes,
        },
    )
    .await
    .map_err(|e| e.into_gateway_error(&state))?;
    drop(lease);
    ctx.audit.update(|r| r.upstream = Some(sent.elapsed()));
    // The answer is checked and its counts read by a typed read that skips everything else
    // (a tree of a 30 MB embeddings answer would take several times its size), then goes
    // back as Ollama wrote it, with the model's name replaced where Go's encoder wrote it.
    let probe: AnswerProbe = serde_json::from_slice(&bytes)
        .map_err(|_| upstream::BodyError::Invalid.into_gateway_error(&state))?;
    if probe.error.is_some() {
        state.metrics.upstream_error("error_body");
        return Err(GatewayError::UpstreamFailed);
    }
    let usage = probe.usage();
    let answer = if renamed {
        let mut out = BytesMut::with_capacity(bytes.len() + public.len());
        put_renamed(&bytes, &model_field(&up), &model_field(&public), &mut out);
        out.freeze()
    } else {
        bytes
    };
    ctx.audit.update(|r| {
        r.prompt_tokens = Some(usage.prompt_tokens);
        r.completion_tokens = Some(usage.completion_tokens);
    });
    meter.counted(Some(usage.prompt_tokens), Some(usage.completion_tokens));
    drop(meter);
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json; charset=utf-8"));
    with_rate_headers(&mut out, admitted.decision);
    with_token_headers(&mut out, tokens);
    with_clamped_header(&mut out, &clamped);
    Ok(out.body(answer))
}

/// What a whole answer says about itself: an error, and its token counts in each surface's
/// spelling. Every other field is skipped unread.
#[derive(serde::Deserialize)]
struct AnswerProbe {
    error: Option<serde::de::IgnoredAny>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    usage: Option<UsageProbe>,
}

#[derive(serde::Deserialize)]
struct UsageProbe {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl AnswerProbe {
    fn usage(&self) -> Usage {
        let u = self.usage.as_ref();
        let prompt = self
            .prompt_eval_count
            .or_else(|| u.and_then(|u| u.prompt_tokens.or(u.input_tokens)))
            .unwrap_or(0);
        let completion = self
            .eval_count
            .or_else(|| u.and_then(|u| u.completion_tokens.or(u.output_tokens)))
            .unwrap_or(0);
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str], spec: &'static Forward) -> (String, Vec<LineOutcome>, Usage) {
        let mut p = PassThrough {
            from: model_field("up/m:1"),
            to: model_field("pub"),
            spec,
            dialect: Dialect::Ollama,
            usage: Usage::default(),
            ended: false,
            held_event: None,
            responses: ResponsesSeen::default(),
        };
        let mut out = BytesMut::new();
        let outcomes = lines
            .iter()
            .map(|l| p.on_line(l.as_bytes(), &mut out))
            .collect();
        (
            String::from_utf8(out.to_vec()).unwrap_or_default(),
            outcomes,
            p.usage,
        )
    }

    #[test]
    fn native_lines_are_renamed_and_metered() {
        let (out, outcomes, usage) = run(
            &[
                r#"{"model":"up/m:1","message":{"content":"hi"},"done":false}"#,
                r#"{"model":"up/m:1","done":true,"prompt_eval_count":7,"eval_count":3}"#,
            ],
            &API_CHAT,
        );
        assert!(!out.contains("up/m:1"), "{out}");
        assert_eq!(out.matches("\"model\":\"pub\"").count(), 2);
        assert_eq!(outcomes[0], LineOutcome::Continue);
        assert!(matches!(outcomes[1], LineOutcome::Done(_)));
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 3));
    }

    #[test]
    fn upstream_errors_are_never_passed_on() {
        let (out, outcomes, _) = run(
            &[r#"{"error":"CUDA error at /srv/ollama/x.cu"}"#],
            &API_CHAT,
        );
        assert!(out.is_empty());
        assert_eq!(outcomes[0], LineOutcome::Failed);
    }

    #[test]
    fn sse_events_keep_their_framing_and_usage_is_read() {
        let (out, _, usage) = run(
            &[
                r#"data: {"id":"c","model":"up/m:1","choices":[{"text":"a"}]}"#,
                "",
                r#"data: {"id":"c","model":"up/m:1","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#,
                "",
                "data: [DONE]",
                "",
            ],
            &V1_COMPLETIONS,
        );
        assert_eq!(out.matches("\n\n").count(), 3, "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        assert!(!out.contains("up/m:1"));
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (4, 2));
    }

    #[test]
    fn anthropic_events_are_metered_and_a_failed_event_is_held_back() {
        let (out, _, usage) = run(
            &[
                "event: message_start",
                r#"data: {"type":"message_start","message":{"model":"up/m:1","usage":{"input_tokens":9,"output_tokens":1}}}"#,
                "",
                "event: message_delta",
                r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#,
                "",
                "event: message_stop",
                r#"data: {"type":"message_stop"}"#,
                "",
            ],
            &V1_MESSAGES,
        );
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 5));
        assert!(
            out.contains("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            "{out}"
        );
        let (out, outcomes, _) = run(
            &[
                "event: response.failed",
                r#"data: {"response":{"error":{"message":"/srv/x"}},"type":"response.failed"}"#,
            ],
            &V1_RESPONSES,
        );
        assert!(out.is_empty(), "{out}");
        assert_eq!(outcomes[1], LineOutcome::Failed);
    }

    #[test]
    fn a_failed_responses_stream_ends_with_response_failed_numbered_on() {
        let mut p = PassThrough {
            from: model_field("up/m:1"),
            to: model_field("pub"),
            spec: &V1_RESPONSES,
            dialect: Dialect::OpenAi,
            usage: Usage::default(),
            ended: false,
            held_event: None,
            responses: ResponsesSeen {
                model: "pub".to_owned(),
                ..ResponsesSeen::default()
            },
        };
        let mut out = BytesMut::new();
        for line in [
            "event: response.created",
            r#"data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_7","created_at":42,"model":"up/m:1","status":"in_progress"}}"#,
            "",
            "event: response.output_text.delta",
            r#"data: {"type":"response.output_text.delta","sequence_number":5,"delta":"hi"}"#,
            "",
        ] {
            p.on_line(line.as_bytes(), &mut out);
        }
        let mut end = BytesMut::new();
        p.error_event(&GatewayError::UpstreamTimeout, &mut end);
        let text = String::from_utf8(end.to_vec()).unwrap_or_default();
        let data = text
            .strip_prefix("event: response.failed\ndata: ")
            .unwrap_or_default();
        let v: Value = serde_json::from_str(data.trim()).unwrap_or_default();
        assert_eq!(v["type"], "response.failed", "{text}");
        assert_eq!(v["sequence_number"], 6);
        assert_eq!(v["response"]["id"], "resp_7");
        assert_eq!(v["response"]["status"], "failed");
        assert_eq!(v["response"]["model"], "pub");
        assert_eq!(
            v["response"]["error"]["message"],
            GatewayError::UpstreamTimeout.message()
        );
    }
}
