//! Ollama's native listing and management routes: `/api/version`, `/api/tags`, `/api/ps`,
//! `/api/show`, and the admin-only model management routes.
//!
//! Lists are gathered from every backend and shown under public names only, filtered by the
//! key's `models`: a model the key may not use is absent from every list. Model management
//! (pull, push, create, copy, delete, blobs) is passed to Ollama as it is, for admin keys
//! (admission checks that), to the first backend that answers.

use std::collections::BTreeSet;

use actix_web::http::Method;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::headers::with_rate_headers;
use super::request::{parse_json, read_body};
use crate::admission::Admitted;
use crate::admission::auth::Principal;
use crate::context::{RequestCtx, request_ctx};
use crate::errors::GatewayError;
use crate::policy::{Guard, Policy};
use crate::state::AppState;
use crate::upstream::client::{self, Call, Upstream};

/// One Ollama model as a backend lists it (`/api/tags` or `/api/ps` entry), kept whole so
/// that every field Ollama sends reaches the client.
pub struct Listed {
    pub upstream_name: String,
    pub entry: Value,
}

/// Every backend's list at `path` (`/api/tags` or `/api/ps`). Backends that do not answer are
/// left out; none answering is the last backend's error.
pub async fn gather(
    state: &AppState,
    policy: &Policy,
    upstream: &Upstream,
    request_id: &str,
    path: &'static str,
) -> Result<Vec<Listed>, GatewayError> {
    let mut out: Vec<Listed> = Vec::new();
    let mut last_err = None;
    for (backend, _) in state.backends.all(policy) {
        let call = Call {
            method: Method::GET,
            path,
            body: None,
            request_id,
            model: None,
            queue: None,
            conversation: None,
        };
        let fetched = async {
            let mut resp = upstream.send_to(state, policy, &backend, &call).await?;
            client::read_json::<Value>(&mut resp, policy.upstream.timeout, client::TAGS_LIMIT)
                .await
                .map_err(|e| e.into_gateway_error(state))
        }
        .await;
        match fetched {
            Ok(v) => {
                let models = match v.get("models") {
                    Some(Value::Array(models)) => models.clone(),
                    _ => Vec::new(),
                };
                let names: Vec<String> = models
                    .iter()
                    .filter_map(|m| m.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect();
                if path == "/api/tags" {
                    backend.set_models(names.iter().cloned());
                }
                for (m, name) in models.into_iter().zip(names) {
                    if !out.iter().any(|l| l.upstream_name == name) {
                        out.push(Listed {
                            upstream_name: name,
                            entry: m,
                        });
                    }
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    if out.is_empty()
        && let Some(e) = last_err
    {
        return Err(e);
    }
    Ok(out)
}

/// Each listed model under each public name the key may use, sorted by public name.
pub fn visible<'a>(
    listed: &'a [Listed],
    policy: &'a Policy,
    principal: Option<&Principal>,
) -> Vec<(&'a str, &'a Listed)> {
    let allowed = principal.and_then(Principal::models);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for l in listed {
        for public in policy.models.public_names(&l.upstream_name) {
            if allowed.is_some_and(|a| !a.contains(public)) || !seen.insert(public) {
                continue;
            }
            out.push((public, l));
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}

/// A listed entry under its public name (`name` and `model` rewritten, no parent model).
fn renamed(public: &str, l: &Listed) -> Value {
    let mut e = l.entry.clone();
    super::public_names::scrub_details(&mut e);
    if let Some(obj) = e.as_object_mut() {
        obj.insert("name".to_owned(), Value::from(public));
        if obj.contains_key("model") {
            obj.insert("model".to_owned(), Value::from(public));
        }
    }
    e
}

async fn list(
    req: &HttpRequest,
    state: &AppState,
    upstream: &Upstream,
    admitted: Admitted,
    path: &'static str,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(req)?;
    let policy = &ctx.policy;
    let listed = gather(state, policy, upstream, &ctx.request_id, path).await?;
    let models: Vec<Value> = visible(&listed, policy, admitted.principal.as_ref())
        .into_iter()
        .map(|(public, l)| renamed(public, l))
        .collect();
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json; charset=utf-8"));
    with_rate_headers(&mut out, admitted.decision);
    if req.method() == Method::HEAD {
        return Ok(out.finish());
    }
    Ok(out.body(json!({ "models": models }).to_string()))
}

/// `GET|HEAD /api/tags`: the models the key may use, under their public names.
pub async fn tags(
    req: HttpRequest,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    list(&req, &state, &upstream, admitted, "/api/tags").await
}

/// `GET /api/ps`: the loaded models the key may use, under their public names.
pub async fn ps(
    req: HttpRequest,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    list(&req, &state, &upstream, admitted, "/api/ps").await
}

/// `GET|HEAD /api/version`: the version of the first backend that answers.
pub async fn version(
    req: HttpRequest,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let call = Call {
        method: Method::GET,
        path: "/api/version",
        body: None,
        request_id: &ctx.request_id,
        model: None,
        queue: None,
        conversation: None,
    };
    let (mut resp, _lease) = upstream.send(&state, policy, &call).await?;
    let v: Value = client::read_json(&mut resp, policy.upstream.timeout, 64 * 1024)
        .await
        .map_err(|e| e.into_gateway_error(&state))?;
    let version = v.get("version").cloned().unwrap_or(Value::Null);
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json; charset=utf-8"));
    with_rate_headers(&mut out, admitted.decision);
    if req.method() == Method::HEAD {
        return Ok(out.finish());
    }
    Ok(out.body(json!({ "version": version }).to_string()))
}

/// The public model a request body names (`model`, or the older `name`), recorded in the
/// audit line and checked for length.
pub fn requested_model<'b>(body: &'b Value, ctx: &RequestCtx) -> Result<&'b str, GatewayError> {
    let public = body
        .get("model")
        .or_else(|| body.get("name"))
        .and_then(Value::as_str)
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| GatewayError::BadRequest {
            message: "model is required".to_owned(),
        })?;
    ctx.audit.update(|r| {
        r.model = Some(crate::observe::audit::clip(
            public,
            super::convert::MAX_MODEL_CHARS,
        ));
    });
    if public.chars().count() > super::convert::MAX_MODEL_CHARS {
        return Err(GatewayError::BadRequest {
            message: format!(
                "model name too long, max {} characters",
                super::convert::MAX_MODEL_CHARS
            ),
        });
    }
    Ok(public)
}

/// Per-key model access, then the public name's Ollama name: 403 for a model the key may not
/// use, 404 for one the gateway does not serve. Every model route asks this.
pub fn model_access(
    public: &str,
    ctx: &RequestCtx,
    principal: Option<&Principal>,
) -> Result<String, GatewayError> {
    let key = principal.map(|p| &*p.key);
    if let Some(rule) = ctx.policy.model_refusal(key, public) {
        // Report-only: served as if allowed, below.
        ctx.refuse(
            Guard::Models,
            || rule,
            GatewayError::ModelNotAllowed {
                model: public.to_owned(),
            },
        )?;
    }
    ctx.policy
        .models
        .to_upstream(public)
        .map(str::to_owned)
        .ok_or_else(|| GatewayError::ModelNotFound {
            model: public.to_owned(),
        })
}

/// `POST /api/show`: a model's details, for a model the key may use, under its public name and
/// with nothing of Ollama's host in it (`public_names.rs`).
pub async fn show(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let body = read_body(&req, payload, &policy.limits).await?;
    let mut v: Value = parse_json(&body)?;
    super::one_reading::check(&v)?;
    let public = requested_model(&v, &ctx)?.to_owned();
    let up = model_access(&public, &ctx, admitted.principal.as_ref())?;
    if let Some(obj) = v.as_object_mut() {
        obj.remove("name");
        obj.insert("model".to_owned(), Value::from(up.as_str()));
    }
    let call = Call {
        method: Method::POST,
        path: "/api/show",
        body: Some(
            serde_json::to_vec(&v)
                .map_err(|_| GatewayError::Internal)?
                .into(),
        ),
        request_id: &ctx.request_id,
        model: Some(&public),
        queue: None,
        conversation: None,
    };
    let (mut resp, _lease) = upstream.send(&state, policy, &call).await?;
    let mut answer: Value =
        client::read_json(&mut resp, policy.upstream.timeout, client::TAGS_LIMIT)
            .await
            .map_err(|e| e.into_gateway_error(&state))?;
    if !admitted.principal.as_ref().is_some_and(|p| p.key.admin) {
        super::public_names::scrub_show(&mut answer, &up, &public);
    }
    let mut out = HttpResponse::Ok();
    out.insert_header((CONTENT_TYPE, "application/json; charset=utf-8"));
    with_rate_headers(&mut out, admitted.decision);
    Ok(out.body(answer.to_string()))
}

/// Model management for admin keys: the request goes to Ollama as it came (method, path,
/// query, body), and its answer (a progress stream for pull and push) comes back as it is.
pub async fn admin(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    upstream: web::Data<Upstream>,
    admitted: Admitted,
) -> Result<HttpResponse, GatewayError> {
    let ctx = request_ctx(&req)?;
    let policy = &ctx.policy;
    let body = read_body(&req, payload, &policy.limits).await?;
    let path = req
        .uri()
        .path_and_query()
        .map_or(req.path(), |pq| pq.as_str())
        .to_owned();
    let call = Call {
        method: req.method().clone(),
        path: &path,
        body: (!body.is_empty()).then(|| body.freeze()),
        request_id: &ctx.request_id,
        model: None,
        queue: None,
        conversation: None,
    };
    let (mut resp, lease) = upstream.send(&state, policy, &call).await?;
    let mut out = HttpResponse::Ok();
    if let Some(ct) = resp.headers().get(CONTENT_TYPE) {
        out.insert_header((CONTENT_TYPE, ct.clone()));
    }
    with_rate_headers(&mut out, admitted.decision);
    let payload = resp.take_payload();
    // The lease travels with the body: the backend counts the transfer as in flight.
    let body = futures_util::StreamExt::map(payload, move |chunk| {
        let _ = &lease;
        chunk.map_err(|_| actix_web::error::ErrorBadGateway("upstream body"))
    });
    Ok(out.streaming(body))
}
