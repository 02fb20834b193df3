//! `POST /v1/messages/count_tokens`: Anthropic's token count, as the gateway estimates it.
//!
//! Claude Code's interactive mode asks it to manage its context. Ollama has no such route and
//! no tokenizer endpoint, so the answer is the gateway's own estimate, the same one the token
//! quotas reserve ([`super::prompt::prompt_tokens_estimate`] over what the prompt limit counts): an
//! estimate on the high side, never sent to the model. The route is guarded like the model
//! lists (allowlist, key, the listing rate limit: it is asked often and costs no GPU) plus the
//! key's model access; the prompt limit does not refuse it, since a client counting a long
//! conversation is about to shorten it.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};

use super::headers::with_rate_headers;
use super::native::{model_access, requested_model};
use super::prompt::prompt_messages;
use super::prompt::prompt_tokens_estimate;
use super::request::{parse_object, read_body};
use crate::admission::Admitted;
use crate::context::request_ctx;
use crate::errors::GatewayError;

pub async fn count_tokens(
    req: HttpRequest,
    payload: web::Payload,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let body = read_body(&req, payload, &ctx.policy.limits).await?;
    let v = parse_object(&body)?;
    let public = requested_model(&v, &ctx)?.to_owned();
    model_access(&public, &ctx, admitted.principal.as_ref())?;
    let chars = prompt_messages(&v);
    ctx.audit.update(|r| r.prompt_chars = Some(chars));
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json"));
    with_rate_headers(&mut out, admitted.decision);
    Ok(out.body(format!(
        "{{\"input_tokens\":{}}}",
        prompt_tokens_estimate(chars)
    )))
}
