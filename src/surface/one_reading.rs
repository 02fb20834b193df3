//! One reading: the body the gateway checks is the body Ollama acts on.
//!
//! Ollama decodes request bodies with Go's `encoding/json`, which matches a JSON key to a
//! struct field case-insensitively with Unicode simple folding (`MODEL`, `Model`, `ſtream`
//! with U+017F, `Keep_Alive` with the Kelvin sign U+212A all read as the field), and lets the
//! last of several matching keys win. The gateway reads a key only as spelled. Two rules
//! close the gap, chosen over rebuilding each body from typed copies of Ollama's structs
//! because they keep every field Ollama knows and the gateway does not (new Ollama releases
//! add them often) and cost one walk over the keys:
//!
//! 1. Every key that Go would fold onto a field name of Ollama's request structs (the
//!    vocabulary below, from `api/types.go`, `openai/` and `anthropic/`) must be spelled
//!    exactly as that field, at every level Ollama decodes into a struct. Otherwise: 400 in
//!    the route's dialect, naming the field. Where Ollama decodes into a map or keeps raw
//!    JSON (`options`, a `format` schema, tool parameters and arguments, a `tool_use`'s
//!    `input`), keys are matched exactly by Ollama too, and any key goes.
//! 2. Exact duplicates (`"model":"a", ..., "model":"b"`) are settled by parsing into one
//!    value (the last wins, as in Go) and forwarding that value re-serialised, never the
//!    client's bytes: Go would otherwise merge a repeated object (`options` twice) that the
//!    gateway read once.

use serde_json::{Map, Value};

use crate::errors::GatewayError;

/// Field names of the request structs Ollama decodes on the forwarded routes (native chat,
/// generate, embed, embeddings; OpenAI completions, embeddings, Responses; Anthropic
/// Messages), at any level: a key folding onto one of them must be spelled as it.
const VOCABULARY: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "suffix",
    "system",
    "template",
    "context",
    "stream",
    "raw",
    "format",
    "keep_alive",
    "images",
    "options",
    "think",
    "truncate",
    "shift",
    "_debug_render_only",
    "logprobs",
    "top_logprobs",
    "tools",
    "role",
    "content",
    "thinking",
    "tool_calls",
    "tool_name",
    "tool_call_id",
    "id",
    "function",
    "index",
    "name",
    "arguments",
    "type",
    "items",
    "description",
    "parameters",
    "properties",
    "required",
    "input",
    "dimensions",
    "max_tokens",
    "max_output_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stop_sequences",
    "frequency_penalty",
    "presence_penalty",
    "stream_options",
    "include_usage",
    "response_format",
    "json_schema",
    "schema",
    "strict",
    "tool_choice",
    "reasoning",
    "reasoning_effort",
    "effort",
    "instructions",
    "text",
    "image_url",
    "url",
    "detail",
    "file_data",
    "filename",
    "file_id",
    "call_id",
    "output",
    "status",
    "summary",
    "encrypted_content",
    "previous_response_id",
    "parallel_tool_calls",
    "truncation",
    "metadata",
    "store",
    "user",
    "encoding_format",
    "source",
    "media_type",
    "data",
    "tool_use_id",
    "is_error",
    "signature",
    "budget_tokens",
    "input_schema",
    "cache_control",
    "background",
    "include",
    "max_tool_calls",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "output_config",
    "disable_parallel_tool_use",
    "num_ctx",
    "num_predict",
    "verbose",
];

/// Keys whose value Ollama decodes into a map, `any` or raw JSON: below them, keys are data
/// (option names, schema property names, tool arguments) matched exactly, if at all.
const OPAQUE: &[&str] = &[
    "options",
    "format",
    "arguments",
    "parameters",
    "properties",
    "input_schema",
    "schema",
    "metadata",
    "$defs",
    "cache_control",
];

/// One character as Go's `encoding/json` folds it for field matching: ASCII letters to upper
/// case, and the two non-ASCII letters whose fold set holds an ASCII one (U+017F LATIN SMALL
/// LETTER LONG S reads as `S`, U+212A KELVIN SIGN as `K`). Every other character stays, and so
/// can never match an ASCII field name.
fn go_fold(c: char) -> char {
    match c {
        'a'..='z' => c.to_ascii_uppercase(),
        '\u{17F}' => 'S',
        '\u{212A}' => 'K',
        _ => c,
    }
}

/// Whether Go's decoder would take `key` for the field named `field` (ASCII).
fn folds_to(key: &str, field: &str) -> bool {
    let mut k = key.chars();
    for f in field.chars() {
        match k.next() {
            Some(c) if go_fold(c) == go_fold(f) => {}
            _ => return false,
        }
    }
    k.next().is_none()
}

/// The field a key stands for in Ollama's reading, when it is not spelled as that field.
fn misspelled(key: &str) -> Option<&'static str> {
    if VOCABULARY.contains(&key) {
        return None;
    }
    // Only a key of ASCII letters, digits, `_`, `$` and the two folding letters can fold
    // onto a field name; the rest is skipped without a scan of the vocabulary.
    let candidate = key.chars().all(|c| {
        c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '\u{17F}' || c == '\u{212A}'
    });
    if !candidate {
        return None;
    }
    VOCABULARY.iter().copied().find(|f| folds_to(key, f))
}

/// Checks a request body (a JSON object) by rule 1 above: `Ok` when every key Ollama would
/// read as a field is spelled as it.
pub fn check(body: &Value) -> Result<(), GatewayError> {
    walk(body, false)
}

fn walk(v: &Value, opaque: bool) -> Result<(), GatewayError> {
    match v {
        Value::Object(map) => walk_object(map, opaque),
        Value::Array(items) => items.iter().try_for_each(|i| walk(i, opaque)),
        _ => Ok(()),
    }
}

fn walk_object(map: &Map<String, Value>, opaque: bool) -> Result<(), GatewayError> {
    if opaque {
        // Ollama matches nothing in here by folding; nothing below it either.
        return Ok(());
    }
    // Anthropic's tool_use blocks carry the call's arguments in `input`, a map.
    let tool_use = map
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.ends_with("tool_use"));
    for (key, value) in map {
        if let Some(field) = misspelled(key) {
            return Err(GatewayError::BadRequest {
                message: format!(
                    "a key of the request reads as the field `{field}` but is not spelled as \
                     it; send `{field}` exactly, once"
                ),
            });
        }
        let below_opaque = OPAQUE.contains(&key.as_str()) || (tool_use && key == "input");
        walk(value, below_opaque)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn go_folds_case_and_the_two_unicode_letters() {
        assert!(folds_to("MODEL", "model"));
        assert!(folds_to("Keep_Alive", "keep_alive"));
        assert!(folds_to("option\u{17F}", "options"));
        assert!(folds_to("\u{212A}eep_alive", "keep_alive"));
        assert!(folds_to("me\u{17F}\u{17F}ages", "messages"));
        assert!(!folds_to("models", "model"));
        assert!(!folds_to("modél", "model"));
        assert!(!folds_to("keep-alive", "keep_alive"));
    }

    #[test]
    fn twins_and_folded_spellings_are_refused_at_every_struct_level() {
        for body in [
            json!({"model": "a", "MODEL": "b"}),
            json!({"model": "a", "Keep_Alive": -1}),
            json!({"model": "a", "option\u{17F}": {"num_ctx": 131072}}),
            json!({"model": "a", "messages": [{"role": "user", "Content": "x"}]}),
            json!({"model": "a", "INPUT": "x"}),
            json!({"model": "a", "messages": [{"role": "assistant", "tool_calls": [{"function": {"Name": "f", "arguments": {}}}]}]}),
            json!({"model": "a", "input": [{"type": "message", "Content": "x"}]}),
        ] {
            assert!(check(&body).is_err(), "{body}");
        }
    }

    #[test]
    fn data_keys_below_maps_are_free() {
        let body = json!({
            "model": "a",
            "options": {"NUM_CTX": 1, "Temperature": 0.5},
            "format": {"type": "object", "properties": {"Name": {"type": "string"}}},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"Model": {"type": "string"}}}}}],
            "messages": [
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"Model": "x"}}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"Text": "y"}}]}
            ],
            "unknownField": true
        });
        assert!(check(&body).is_ok());
    }
}
