//! The headers the guards decided, added to an answer in one way: the rate limit's and the
//! token quota's `x-ratelimit-*`, and what the clamps changed (`x-qwen-gateway-clamped`).

use actix_web::http::header::HeaderName;

use crate::limits::quota::Decision;

pub(crate) fn with_rate_headers(
    resp: &mut actix_web::HttpResponseBuilder,
    decision: Option<Decision>,
) {
    if let Some(d) = decision {
        for (name, value) in d.headers() {
            resp.insert_header((name, value));
        }
    }
}

/// OpenAI's `x-ratelimit-*-tokens` headers, when a token quota applies.
pub(crate) fn with_token_headers(
    resp: &mut actix_web::HttpResponseBuilder,
    decision: Option<crate::limits::ratelimit::tokens::TokenDecision>,
) {
    if let Some(d) = decision {
        for (name, value) in d.headers() {
            resp.insert_header((name, value));
        }
    }
}

/// `x-qwen-gateway-clamped: num_ctx=32768, ...` when the request clamps changed a value.
pub(crate) fn with_clamped_header(
    resp: &mut actix_web::HttpResponseBuilder,
    clamped: &crate::limits::clamp::Clamped,
) {
    if let Some(h) = clamped.header() {
        resp.insert_header((HeaderName::from_static("x-qwen-gateway-clamped"), h));
    }
}

/// Everything the guards decided for the answer's headers, applied in one place.
pub(crate) struct Decided {
    pub rate: Option<Decision>,
    pub tokens: Option<crate::limits::ratelimit::tokens::TokenDecision>,
    pub clamped: crate::limits::clamp::Clamped,
}

impl Decided {
    pub(crate) fn apply(self, resp: &mut actix_web::HttpResponseBuilder) {
        with_rate_headers(resp, self.rate);
        with_token_headers(resp, self.tokens);
        with_clamped_header(resp, &self.clamped);
    }
}
