//! The model routes: one handler for every route that runs a model (`pipeline.rs`, over each
//! route's description in `forward.rs`), and the listing routes answered from every
//! backend's model list (`native.rs`, and `/v1/models` here).
//!
//! Admission (IP allowlist, key, rate limit) has run before any of them (`admission/`).

pub mod convert;
pub mod count_tokens;
pub mod forward;
pub mod headers;
pub mod native;
pub mod one_reading;
pub mod openai;
pub mod pipeline;
pub mod prompt;
pub mod public_names;
pub mod request;
pub mod stream;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::admission::Admitted;
use crate::context::request_ctx;
use crate::errors::GatewayError;
use crate::state::AppState;
use crate::upstream::client::Upstream;
use headers::with_rate_headers;
use openai::{ModelEntry, ModelList};

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
    ctx.audit.update(|r| {
        r.model = Some(crate::observe::audit::clip(
            &wanted,
            convert::MAX_MODEL_CHARS,
        ))
    });
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
