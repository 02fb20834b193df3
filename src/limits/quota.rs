//! What limits are and what they decided: the quotas (requests, tokens), where shared limits
//! live (Redis), the decisions with the `x-ratelimit-*` headers they answer with, and the
//! `Retry-After` arithmetic. A leaf: the policy, the limiters and the error mapping all speak
//! it, and it speaks none of them.

use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};

/// A header to add to an answer.
pub type HeaderPair = (HeaderName, HeaderValue);

/// "N requests per window". Used for the default limit, per-key limits and auth failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_requests: u32,
    pub window: Duration,
}

/// One quota: at most `limit` tokens in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenQuota {
    pub limit: u64,
    pub window: Duration,
}

/// Where shared limits live: `rate_limit.backend: redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLimits {
    pub url: String,
    pub timeout: Duration,
    /// Admit requests when Redis cannot be asked (true), or refuse them with 503 (false).
    pub fail_open: bool,
    pub key_prefix: String,
}

/// The outcome of one check, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the next request would be admitted (rejections) or until the window is empty.
    pub reset: Duration,
}

impl Decision {
    /// Whole seconds until a request would be admitted, at least the true wait.
    pub fn retry_after(&self) -> Duration {
        self.reset
    }

    /// OpenAI's `x-ratelimit-*` headers.
    pub fn headers(&self) -> [HeaderPair; 3] {
        [
            (
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset-requests"),
                HeaderValue::from_str(&go_duration(self.reset))
                    .unwrap_or(HeaderValue::from_static("1s")),
            ),
        ]
    }
}

/// What a check decided, with what the `x-ratelimit-*-tokens` headers report (of the tightest
/// quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the estimate would fit (refusals), or until the window is empty.
    pub reset: Duration,
}

impl TokenDecision {
    pub fn headers(&self) -> [HeaderPair; 3] {
        [
            (
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset-tokens"),
                HeaderValue::from_str(&go_duration(self.reset))
                    .unwrap_or(HeaderValue::from_static("1s")),
            ),
        ]
    }
}

/// `250ms`, `12s`, `1m0s`: the format OpenAI uses in `x-ratelimit-reset-*`.
/// Built by hand: it is on every admitted request's answer.
pub fn go_duration(d: Duration) -> String {
    let mut out = String::with_capacity(12);
    let mut n = itoa::Buffer::new();
    if d < Duration::from_secs(1) {
        out.push_str(n.format(d.as_millis().max(1)));
        out.push_str("ms");
        return out;
    }
    let secs = ceil_secs(d);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        out.push_str(n.format(h));
        out.push('h');
    }
    if h > 0 || m > 0 {
        out.push_str(n.format(m));
        out.push('m');
    }
    out.push_str(n.format(s));
    out.push('s');
    out
}

/// Whole seconds, rounded up and at least 1, for `Retry-After` (RFC 9110 delay-seconds).
pub fn ceil_secs(d: Duration) -> u64 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    whole.max(1)
}
