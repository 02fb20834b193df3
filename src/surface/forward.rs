//! What differs between model routes: each route's description ([`Forward`]: how its body is
//! read, where its clamps apply, how its stream is framed and ends), and the line handler
//! that passes Ollama's own answers on under the public model name (`PassThrough`). The
//! handler all of them share is `pipeline.rs`.

use bytes::{BufMut, BytesMut};
use serde_json::Value;

use super::openai::Usage;
use super::prompt::{
    prompt_completions, prompt_generate, prompt_input, prompt_legacy_embeddings, prompt_messages,
    prompt_native_chat, prompt_responses,
};
use super::stream::{LineOutcome, Lines};
use crate::errors::{Dialect, GatewayError};

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
    /// How the gateway reads the route's body, and so what Ollama is sent.
    pub reading: Reading,
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

/// How a route's body is read.
#[derive(Debug, Clone, Copy)]
pub enum Reading {
    /// As a JSON object, checked and sent on to Ollama's own implementation of the route
    /// (re-serialised); the function counts the characters of text the model reads in it.
    Json(fn(&Value) -> usize),
    /// As an OpenAI chat completion (typed), translated by the gateway to native `/api/chat`
    /// and its answer translated back (`convert.rs`).
    ChatCompletions,
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

/// `/v1/chat/completions`: the gateway's own translation to native chat (`convert.rs`), whose
/// answer goes back as OpenAI SSE events or one `chat.completion`.
pub static V1_CHAT_COMPLETIONS: Forward = Forward {
    path: "/api/chat",
    framing: Framing::Sse,
    stream_default: false,
    streams: true,
    reading: Reading::ChatCompletions,
    answer: Answer::Text,
    since: "0.1.14",
    end_marker: b"",
    stream_errors: StreamErrors::Dialect,
    clamp: ClampAt::Native { generates: true },
    embeds: false,
    conversation: true,
};

pub static API_CHAT: Forward = Forward {
    path: "/api/chat",
    framing: Framing::Ndjson,
    stream_default: true,
    streams: true,
    reading: Reading::Json(prompt_native_chat),
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
    reading: Reading::Json(prompt_generate),
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
    reading: Reading::Json(prompt_input),
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
    reading: Reading::Json(prompt_legacy_embeddings),
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
    reading: Reading::Json(prompt_input),
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
    reading: Reading::Json(prompt_completions),
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
    reading: Reading::Json(prompt_responses),
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
    reading: Reading::Json(prompt_messages),
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
    /// Generated text: `client::ANSWER_LIMIT`.
    Text,
    /// Vectors, as large as the batch asks (1,000 inputs x 1,024 floats is ~20 MB as JSON):
    /// `limits.max_embed_answer_bytes`.
    Embeddings,
}

/// `"model":"<name>"` as Go's encoder writes it, for renaming in answers without parsing them.
pub(super) fn model_field(name: &str) -> Vec<u8> {
    let mut out = b"\"model\":".to_vec();
    crate::json_out::json_str(&mut out, name);
    out
}

/// Replaces every `from` in `line` with `to`, writing into `out`.
pub(super) fn put_renamed(line: &[u8], from: &[u8], to: &[u8], out: &mut BytesMut) {
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
pub(super) struct PassThrough {
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
    /// Lines of `spec`'s route, renamed from Ollama's name `up` to the public one.
    pub(super) fn new(spec: &'static Forward, up: &str, public: String, dialect: Dialect) -> Self {
        PassThrough {
            from: model_field(up),
            to: model_field(&public),
            spec,
            dialect,
            usage: Usage::default(),
            ended: false,
            held_event: None,
            responses: ResponsesSeen {
                // Only a Responses stream names its model in a failure of ours.
                model: match spec.stream_errors {
                    StreamErrors::Responses => public,
                    StreamErrors::Dialect => String::new(),
                },
                ..ResponsesSeen::default()
            },
        }
    }

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

/// What a whole answer says about itself: an error, and its token counts in each surface's
/// spelling. Every other field is skipped unread.
#[derive(serde::Deserialize)]
pub(super) struct AnswerProbe {
    pub(super) error: Option<serde::de::IgnoredAny>,
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
    pub(super) fn usage(&self) -> Usage {
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
