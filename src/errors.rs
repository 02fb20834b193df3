//! The one client-facing error type, and the one place it becomes an HTTP answer.
//!
//! Every rejection and failure the gateway reports to a client is a [`GatewayError`]. Its
//! status, error `type`, `code` and message are decided in exhaustive matches below, so a new
//! variant cannot ship without an answer. Each surface reads errors in its own [`Dialect`]:
//! OpenAI's envelope, Anthropic's `{"type":"error",...}`, Ollama's `{"error":"..."}`; the
//! statuses and messages are the same in all three. Messages are written for a person using a chat
//! UI: they never carry upstream text, addresses, library names or `Debug` output. The cause of
//! a 5xx goes to the operational log under the request id instead.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::limits::quota::{Decision, TokenDecision};
pub use crate::limits::quota::{HeaderPair, ceil_secs};

/// Everything that can go wrong for a client, without the internal cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid api key")]
    InvalidApiKey,
    #[error("two different api keys")]
    AmbiguousApiKey,
    #[error("api key expired")]
    ExpiredApiKey,
    #[error("api key not valid yet")]
    ApiKeyNotYetValid,
    #[error("too many failed authentication attempts")]
    AuthThrottled { retry_after: Duration },
    #[error("client address not allowed")]
    IpNotAllowed,
    #[error("model not allowed for this key")]
    ModelNotAllowed { model: String },
    #[error("rate limit exceeded")]
    RateLimited(Decision),
    /// The key's token quota has no room for this request's estimate.
    #[error("token limit exceeded")]
    TokenLimited(TokenDecision),
    #[error("prompt too long")]
    PromptTooLong { max: usize },
    #[error("request body too large")]
    BodyTooLarge { max: usize },
    #[error("invalid request")]
    BadRequest { message: String },
    #[error("request body too slow")]
    RequestTimeout { seconds: f64 },
    #[error("unknown route")]
    RouteNotFound { method: String, path: String },
    /// A model-management route (pull, push, create, copy, delete, blobs) without an admin key.
    #[error("admin only")]
    AdminOnly,
    /// The Ollama behind the gateway does not have this route (it answered 404 for the route
    /// itself, not for a model): it is older than the version that added it.
    #[error("upstream too old")]
    UpstreamTooOld { needs: &'static str },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("model not found")]
    ModelNotFound { model: String },
    #[error("upstream unavailable")]
    UpstreamUnavailable { retry_after: Duration },
    #[error("upstream busy")]
    UpstreamBusy { retry_after: Duration },
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream error")]
    UpstreamFailed,
    #[error("rate limiter unavailable")]
    RateLimiterUnavailable,
    /// The key already has `max_concurrent` requests in flight or waiting.
    #[error("too many concurrent requests")]
    TooManyConcurrent,
    /// The key already has `queue.max_waiting_per_key` requests waiting for the backend.
    #[error("too many queued requests")]
    KeyQueueFull,
    /// The fair queue for the model server is full, or the wait ran past its bound.
    #[error("queue full")]
    QueueFull { retry_after: Duration },
    #[error("queue wait too long")]
    QueueTimeout { retry_after: Duration },
    /// The gateway itself ran out of a local resource (file descriptors, ports, memory) on
    /// the way to Ollama: not Ollama's fault, and never counted against a backend.
    #[error("gateway overloaded")]
    Overloaded,
    /// The shutdown grace period ended before the answer did.
    #[error("interrupted by shutdown")]
    Interrupted,
    #[error("internal error")]
    Internal,
}

/// Read by the OpenAI and Anthropic SDKs before their own retry rules.
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");

/// OpenAI's error envelope: `{"error":{"message","type","param","code"}}`.
#[derive(Serialize)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorBody<'a>,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: &'a str,
}

impl GatewayError {
    /// Short machine-readable code: the envelope's `code`, the audit line's `error`, and the
    /// `reason` label on metrics.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidApiKey => "invalid_api_key",
            GatewayError::AmbiguousApiKey => "ambiguous_api_key",
            GatewayError::ExpiredApiKey => "expired_api_key",
            GatewayError::ApiKeyNotYetValid => "api_key_not_yet_valid",
            GatewayError::AuthThrottled { .. } => "auth_throttled",
            GatewayError::IpNotAllowed => "ip_not_allowed",
            GatewayError::ModelNotAllowed { .. } => "model_not_allowed",
            GatewayError::RateLimited(_) => "rate_limit_exceeded",
            GatewayError::TokenLimited(_) => "token_limit_exceeded",
            // OpenAI's code for the same refusal: agents (OpenClaw, LangChain, Continue) take
            // it, and the message below, as "compact the conversation", not as a failure.
            GatewayError::PromptTooLong { .. } => "context_length_exceeded",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::BadRequest { .. } => "invalid_request",
            GatewayError::RequestTimeout { .. } => "request_timeout",
            GatewayError::RouteNotFound { .. } => "not_found",
            GatewayError::AdminOnly => "admin_only",
            GatewayError::UpstreamTooOld { .. } => "upstream_unsupported",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::ModelNotFound { .. } => "model_not_found",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
            GatewayError::UpstreamBusy { .. } => "upstream_busy",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::UpstreamFailed => "upstream_error",
            GatewayError::RateLimiterUnavailable => "rate_limiter_unavailable",
            GatewayError::TooManyConcurrent => "too_many_concurrent_requests",
            GatewayError::KeyQueueFull => "too_many_queued_requests",
            GatewayError::QueueFull { .. } => "queue_full",
            GatewayError::QueueTimeout { .. } => "queue_timeout",
            GatewayError::Interrupted => "interrupted",
            GatewayError::Overloaded => "gateway_overloaded",
            GatewayError::Internal => "internal_error",
        }
    }

    /// The guard and rule a refusal comes from, for the audit line's `reason` when the site
    /// that refused did not name a more precise one. Exhaustive, so a new variant names its
    /// rule here or does not compile.
    pub fn rule(&self) -> &'static str {
        match self {
            GatewayError::InvalidApiKey => "auth: no valid key",
            GatewayError::AmbiguousApiKey => "auth: two different keys",
            GatewayError::ExpiredApiKey => "auth: key expires_at passed",
            GatewayError::ApiKeyNotYetValid => "auth: key not_before ahead",
            GatewayError::AuthThrottled { .. } => "auth: max_failures per failure_window_seconds",
            GatewayError::IpNotAllowed => "whitelist: no range in whitelist.ips matches",
            GatewayError::ModelNotAllowed { .. } => "models: not in the key's models",
            GatewayError::RateLimited(_) => "rate_limit",
            GatewayError::TokenLimited(_) => "token_limit",
            GatewayError::PromptTooLong { .. } => "prompt_limit: limits.max_prompt_chars",
            GatewayError::BodyTooLarge { .. } => "limits.max_body_bytes",
            GatewayError::BadRequest { .. } => "request: not a valid request",
            GatewayError::RequestTimeout { .. } => "limits.body_timeout_seconds",
            GatewayError::RouteNotFound { .. } => "routes: no such route",
            GatewayError::AdminOnly => "admin: the key has no admin: true",
            GatewayError::UpstreamTooOld { .. } => "upstream: route needs a newer Ollama",
            GatewayError::MethodNotAllowed => "routes: method not allowed",
            GatewayError::ModelNotFound { .. } => "upstream: model not found",
            GatewayError::UpstreamUnavailable { .. } => "upstream: no backend available",
            GatewayError::UpstreamBusy { .. } => "upstream: backend busy",
            GatewayError::UpstreamTimeout => "upstream: timeout",
            GatewayError::UpstreamFailed => "upstream: failed answer",
            GatewayError::RateLimiterUnavailable => "rate_limit: redis unavailable",
            GatewayError::TooManyConcurrent => "concurrency: key max_concurrent",
            GatewayError::KeyQueueFull => "queue.max_waiting_per_key",
            GatewayError::QueueFull { .. } => "queue.max_waiting",
            GatewayError::QueueTimeout { .. } => "queue.max_wait_seconds",
            GatewayError::Overloaded => "gateway: local resources exhausted",
            GatewayError::Interrupted => "shutdown: shutdown_grace_seconds",
            GatewayError::Internal => "gateway: internal error",
        }
    }

    /// The `reason` label of `qwen_gateway_rejections_total`: which guard refused, or `None`
    /// for failures that are not refusals (upstream trouble, shutdown). Exhaustive, so a new
    /// variant cannot miss its metric.
    pub fn rejection(&self) -> Option<&'static str> {
        match self {
            GatewayError::InvalidApiKey
            | GatewayError::AmbiguousApiKey
            | GatewayError::ExpiredApiKey
            | GatewayError::ApiKeyNotYetValid
            | GatewayError::AuthThrottled { .. }
            | GatewayError::ModelNotAllowed { .. }
            | GatewayError::AdminOnly => Some("auth"),
            GatewayError::IpNotAllowed => Some("ip"),
            GatewayError::RateLimited(_)
            | GatewayError::TokenLimited(_)
            | GatewayError::TooManyConcurrent
            | GatewayError::KeyQueueFull => Some("rate"),
            GatewayError::PromptTooLong { .. } | GatewayError::BodyTooLarge { .. } => Some("size"),
            GatewayError::BadRequest { .. }
            | GatewayError::RequestTimeout { .. }
            | GatewayError::MethodNotAllowed
            | GatewayError::RouteNotFound { .. } => Some("invalid"),
            GatewayError::QueueFull { .. } | GatewayError::QueueTimeout { .. } => Some("queue"),
            GatewayError::UpstreamTooOld { .. }
            | GatewayError::ModelNotFound { .. }
            | GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamBusy { .. }
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamFailed
            | GatewayError::RateLimiterUnavailable
            | GatewayError::Overloaded
            | GatewayError::Interrupted
            | GatewayError::Internal => None,
        }
    }

    /// OpenAI's error `type` field.
    fn kind(&self) -> &'static str {
        match self {
            GatewayError::InvalidApiKey
            | GatewayError::AmbiguousApiKey
            | GatewayError::ExpiredApiKey
            | GatewayError::ApiKeyNotYetValid => "authentication_error",
            GatewayError::IpNotAllowed
            | GatewayError::ModelNotAllowed { .. }
            | GatewayError::AdminOnly => "permission_error",
            GatewayError::AuthThrottled { .. }
            | GatewayError::RateLimited(_)
            | GatewayError::TokenLimited(_)
            | GatewayError::TooManyConcurrent
            | GatewayError::KeyQueueFull => "rate_limit_error",
            GatewayError::QueueFull { .. } | GatewayError::QueueTimeout { .. } => "api_error",
            GatewayError::PromptTooLong { .. }
            | GatewayError::BodyTooLarge { .. }
            | GatewayError::BadRequest { .. }
            | GatewayError::RequestTimeout { .. }
            | GatewayError::MethodNotAllowed => "invalid_request_error",
            GatewayError::RouteNotFound { .. } | GatewayError::ModelNotFound { .. } => {
                "not_found_error"
            }
            GatewayError::UpstreamTooOld { .. } => "invalid_request_error",
            GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamBusy { .. }
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamFailed
            | GatewayError::RateLimiterUnavailable
            | GatewayError::Interrupted
            | GatewayError::Overloaded
            | GatewayError::Internal => "api_error",
        }
    }

    /// The sentence a chat user reads.
    pub fn message(&self) -> String {
        match self {
            GatewayError::InvalidApiKey => "invalid api key".to_owned(),
            GatewayError::ExpiredApiKey => "this api key has expired; ask for a new one".to_owned(),
            GatewayError::ApiKeyNotYetValid => "this api key is not valid yet".to_owned(),
            GatewayError::AmbiguousApiKey => {
                "two different api keys were sent (in two headers, or one header twice); send one"
                    .to_owned()
            }
            GatewayError::AuthThrottled { .. } => {
                "too many failed authentication attempts, try again later".to_owned()
            }
            GatewayError::IpNotAllowed => "your address is not allowed to use this API".to_owned(),
            GatewayError::ModelNotAllowed { model } => {
                format!("this api key may not use the model '{model}'")
            }
            GatewayError::RateLimited(_) => "rate limit exceeded, try again later".to_owned(),
            GatewayError::TokenLimited(_) => {
                "token quota exceeded for this api key, try again later".to_owned()
            }
            // The phrases agents match to start their own context handling ("prompt is too
            // long", Anthropic's; "maximum context length", OpenAI's). No policy value.
            GatewayError::PromptTooLong { .. } => "prompt is too long: the request is over the \
                maximum context length this gateway allows; shorten or compact the conversation"
                .to_owned(),
            GatewayError::BodyTooLarge { .. } => {
                "request body too large for this gateway".to_owned()
            }
            GatewayError::BadRequest { message } => message.clone(),
            GatewayError::RequestTimeout { .. } => {
                "the request body did not arrive in time".to_owned()
            }
            GatewayError::RouteNotFound { method, path } => {
                format!("Invalid URL ({method} {})", crate::json_out::clip(path, 256))
            }
            GatewayError::AdminOnly => {
                "model management (pull, push, create, copy, delete) needs an admin api key"
                    .to_owned()
            }
            GatewayError::UpstreamTooOld { needs } => format!(
                "the model server does not offer this API; it needs Ollama {needs} or newer"
            ),
            GatewayError::MethodNotAllowed => "method not allowed for this route".to_owned(),
            GatewayError::ModelNotFound { model } => format!("model '{model}' not found"),
            GatewayError::UpstreamUnavailable { .. } => {
                "the model server is not reachable right now, please try again shortly".to_owned()
            }
            GatewayError::UpstreamBusy { .. } => {
                "the model server is busy, please try again shortly".to_owned()
            }
            GatewayError::UpstreamTimeout => {
                "the model server did not answer in time, please try again".to_owned()
            }
            GatewayError::UpstreamFailed => {
                "the model server failed to answer, please try again".to_owned()
            }
            GatewayError::RateLimiterUnavailable => {
                "the gateway cannot check rate limits right now, please try again shortly"
                    .to_owned()
            }
            GatewayError::TooManyConcurrent => {
                "too many requests at once for this api key, wait for one to finish".to_owned()
            }
            GatewayError::KeyQueueFull => {
                "too many requests of this api key are waiting for the model, wait for one to finish"
                    .to_owned()
            }
            GatewayError::QueueFull { .. } => {
                "the model server is busy and its queue is full, please try again shortly"
                    .to_owned()
            }
            GatewayError::QueueTimeout { .. } => {
                "the model server was busy for too long, please try again shortly".to_owned()
            }
            GatewayError::Overloaded => {
                "the gateway is overloaded right now, please try again shortly".to_owned()
            }
            GatewayError::Interrupted => {
                "the gateway is restarting and could not finish this answer, please try again"
                    .to_owned()
            }
            GatewayError::Internal => "internal error".to_owned(),
        }
    }

    /// Whether a retry of the same request could get another answer. The OpenAI and
    /// Anthropic SDKs (and the agents built on them: Claude Code, Codex) retry 4xx/5xx answers
    /// with backoff for minutes unless `x-should-retry: false` says a retry cannot help; a
    /// wrong key, a refused model or a prompt over the limit stays refused. Where waiting
    /// helps, the answer carries `Retry-After` instead.
    pub fn retryable(&self) -> bool {
        !matches!(
            self.status_code().as_u16(),
            400 | 401 | 403 | 404 | 405 | 413 | 501
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::AuthThrottled { retry_after }
            | GatewayError::UpstreamUnavailable { retry_after }
            | GatewayError::UpstreamBusy { retry_after }
            | GatewayError::QueueFull { retry_after }
            | GatewayError::QueueTimeout { retry_after } => Some(*retry_after),
            GatewayError::TooManyConcurrent | GatewayError::KeyQueueFull => {
                Some(Duration::from_secs(1))
            }
            GatewayError::RateLimited(d) => Some(d.retry_after()),
            GatewayError::TokenLimited(d) => Some(d.reset),
            GatewayError::RateLimiterUnavailable
            | GatewayError::Interrupted
            | GatewayError::Overloaded => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The JSON body, also used as the payload of an SSE error event.
    pub fn envelope_json(&self) -> String {
        let message = self.message();
        let env = ErrorEnvelope {
            error: ErrorBody {
                message: &message,
                kind: self.kind(),
                param: None,
                code: self.code(),
            },
        };
        serde_json::to_string(&env).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"api_error","param":null,"code":"internal_error"}}"#
                .to_owned()
        })
    }
}

impl ResponseError for GatewayError {
    fn status_code(&self) -> StatusCode {
        match self {
            GatewayError::InvalidApiKey
            | GatewayError::AmbiguousApiKey
            | GatewayError::ExpiredApiKey
            | GatewayError::ApiKeyNotYetValid => StatusCode::UNAUTHORIZED,
            GatewayError::IpNotAllowed
            | GatewayError::ModelNotAllowed { .. }
            | GatewayError::AdminOnly => StatusCode::FORBIDDEN,
            GatewayError::UpstreamTooOld { .. } => StatusCode::NOT_IMPLEMENTED,
            GatewayError::AuthThrottled { .. }
            | GatewayError::RateLimited(_)
            | GatewayError::TokenLimited(_)
            | GatewayError::TooManyConcurrent
            | GatewayError::KeyQueueFull => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::QueueFull { .. } | GatewayError::QueueTimeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::PromptTooLong { .. } | GatewayError::BadRequest { .. } => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::RouteNotFound { .. } | GatewayError::ModelNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UpstreamUnavailable { .. }
            | GatewayError::UpstreamBusy { .. }
            | GatewayError::RateLimiterUnavailable
            | GatewayError::Interrupted
            | GatewayError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            GatewayError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.response(Dialect::OpenAi)
    }
}

/// Which API's conventions an error follows. Decided by the route, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// `{"error":{"message","type","param","code"}}`; SSE `data: {...}` mid-stream.
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`; SSE `event: error` mid-stream.
    Anthropic,
    /// `{"error":"message"}`; an NDJSON `{"error":...}` line mid-stream.
    Ollama,
}

impl Dialect {
    pub fn for_path(path: &str) -> Dialect {
        if path.starts_with("/api/") || path == "/api" {
            Dialect::Ollama
        } else if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

impl GatewayError {
    /// Anthropic's error `type` for the same status.
    fn anthropic_kind(&self) -> &'static str {
        match self.status_code().as_u16() {
            400 | 405 | 408 | 501 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    /// The error body in a surface's dialect.
    pub fn body(&self, dialect: Dialect) -> String {
        match dialect {
            Dialect::OpenAi => self.envelope_json(),
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.anthropic_kind(), "message": self.message()},
            })
            .to_string(),
            Dialect::Ollama => serde_json::json!({ "error": self.message() }).to_string(),
        }
    }

    /// The whole answer: status, `Retry-After` and rate-limit headers, body in `dialect`.
    pub fn response(&self, dialect: Dialect) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        resp.content_type("application/json");
        if !self.retryable() {
            resp.insert_header((X_SHOULD_RETRY, HeaderValue::from_static("false")));
        }
        if let Some(wait) = self.retry_after() {
            resp.insert_header((RETRY_AFTER, ceil_secs(wait)));
        }
        if let GatewayError::RateLimited(decision) = self {
            for (name, value) in decision.headers() {
                resp.insert_header((name, value));
            }
        }
        if let GatewayError::TokenLimited(decision) = self {
            for (name, value) in decision.headers() {
                resp.insert_header((name, value));
            }
        }
        resp.body(self.body(dialect))
    }

    /// What ends a stream that already began, in its surface's way: an SSE `data:` event
    /// (OpenAI), an SSE `event: error` (Anthropic), an NDJSON error line (Ollama).
    pub fn stream_event(&self, dialect: Dialect, out: &mut bytes::BytesMut) {
        use bytes::BufMut as _;
        match dialect {
            Dialect::OpenAi => {
                out.put_slice(b"data: ");
                out.put_slice(self.envelope_json().as_bytes());
                out.put_slice(b"\n\n");
            }
            Dialect::Anthropic => {
                out.put_slice(b"event: error\ndata: ");
                out.put_slice(self.body(dialect).as_bytes());
                out.put_slice(b"\n\n");
            }
            Dialect::Ollama => {
                out.put_slice(self.body(dialect).as_bytes());
                out.put_slice(b"\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_millis(59_001)), 60);
        assert_eq!(ceil_secs(Duration::from_secs(60)), 60);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }

    #[test]
    fn envelope_shape() {
        let e = GatewayError::PromptTooLong { max: 32768 };
        let v: serde_json::Value = serde_json::from_str(&e.envelope_json()).unwrap_or_default();
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("prompt is too long"), "{message}");
        assert!(message.contains("maximum context length"), "{message}");
        assert!(!message.contains("32768"), "no policy value: {message}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    }

    #[test]
    fn refusals_a_retry_cannot_change_say_so() {
        let no = GatewayError::InvalidApiKey.response(Dialect::Anthropic);
        assert_eq!(
            no.headers().get("x-should-retry").map(|v| v.as_bytes()),
            Some(&b"false"[..])
        );
        let busy = GatewayError::UpstreamBusy {
            retry_after: Duration::from_secs(2),
        }
        .response(Dialect::OpenAi);
        assert!(busy.headers().get("x-should-retry").is_none());
        assert!(busy.headers().get("retry-after").is_some());
    }
}
