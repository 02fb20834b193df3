//! Reading a request: its body within the size and time limits, then JSON as Ollama will
//! read it (`one_reading.rs`).

use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;

use super::one_reading;
use crate::errors::GatewayError;
use crate::policy::Limits;

/// Reads the body within `limits.body_timeout_seconds` (a slow-drip client otherwise holds a
/// connection and its buffer for as long as it likes; Nginx in front buffers bodies, so only
/// direct clients meet this), refusing more than `limits.max_body_bytes` before buffering.
pub(crate) async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limits: &Limits,
) -> Result<web::BytesMut, GatewayError> {
    let read = read_body_unbounded(req, payload, limits.max_body_bytes);
    tokio::time::timeout(limits.body_timeout, read)
        .await
        .map_err(|_| GatewayError::RequestTimeout {
            seconds: limits.body_timeout.as_secs_f64(),
        })?
}

async fn read_body_unbounded(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<web::BytesMut, GatewayError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(GatewayError::BodyTooLarge { max });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(max));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| GatewayError::BadRequest {
            message: "the request body could not be read".to_owned(),
        })?;
        if body.len() + chunk.len() > max {
            return Err(GatewayError::BodyTooLarge { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    if body.is_empty() {
        return Err(GatewayError::BadRequest {
            message: "the request body is empty; send a JSON object".to_owned(),
        });
    }
    // Fast path first; on failure parse again with path tracking, for a message that names
    // the field (`messages[0].content`).
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize::<_, T>(&mut *de);
    if let Ok(v) = parsed {
        // One valid object followed by more (`{...}xyz`, two objects) is refused, as the
        // fast path did.
        return de.end().map(|()| v).map_err(|e| GatewayError::BadRequest {
            message: format!("the request body is not valid JSON: {e}"),
        });
    }
    parsed.map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request: {inner}")
        } else {
            format!("invalid request at `{path}`: {inner}")
        };
        GatewayError::BadRequest { message }
    })
}

/// A body as Ollama will read it: a JSON object whose every key that Go's decoder would take
/// for a field is spelled as that field (`one_reading.rs`). The forwarded routes and
/// `count_tokens` start here.
pub(crate) fn parse_object(body: &[u8]) -> Result<serde_json::Value, GatewayError> {
    let v: serde_json::Value = parse_json(body)?;
    if !v.is_object() {
        return Err(GatewayError::BadRequest {
            message: "the request body must be a JSON object".to_owned(),
        });
    }
    one_reading::check(&v)?;
    Ok(v)
}
