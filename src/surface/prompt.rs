//! What the model reads in each route's request body, counted in characters: the text
//! `limits.max_prompt_chars` bounds and the token quotas estimate. A field the count skips is
//! a place to carry text past the limit, so the rule is: count every string Ollama hands the
//! model, and skip only media where a media part actually is.

use serde_json::Value;

pub(crate) use crate::limits::ratelimit::tokens::{CHARS_PER_TOKEN, prompt_tokens_estimate};

/// Characters of every string in a JSON value, object keys included: tool definitions,
/// schemas and tool-call arguments are text the model reads, whatever their keys are called
/// (an `images` key inside a schema is text, not an image).
pub fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.chars().count() + text_chars(v))
            .sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// The key holding the media of a content part, by the part's `type` as Ollama's decoders
/// switch on it (exact, case-sensitive): Anthropic `image` blocks, Responses `input_image`
/// and `input_file`, OpenAI `image_url` parts. Only there is a value media and not text;
/// images have bounds of their own (`limits.max_images`, `limits.max_image_bytes`).
fn media_key(part: &serde_json::Map<String, Value>) -> Option<&'static str> {
    match part.get("type").and_then(Value::as_str)? {
        "image" => Some("source"),
        "input_image" | "image_url" => Some("image_url"),
        "input_file" => Some("file_data"),
        _ => None,
    }
}

/// Characters of the string *values* in a conversation (keys such as `role` and `type` are
/// structure, not text the model reads as such), leaving out the media of media parts. Ids
/// count: the templates render tool-call ids, and a field the gateway skipped would be a
/// place to carry text past the limit.
pub fn conversation_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(conversation_chars).sum(),
        Value::Object(map) => {
            let media = media_key(map);
            map.iter()
                .map(|(k, v)| match k.as_str() {
                    k if Some(k) == media => 0,
                    // Structure: which kind of block, whose turn; prompt-cache hints.
                    "type" | "role" | "status" | "cache_control" => 0,
                    _ => conversation_chars(v),
                })
                .sum()
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

/// Images a request carries (each where a surface puts one), with the largest one's size.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Images {
    pub count: usize,
    /// Decoded bytes of the largest, estimated from its base64 text (3 bytes per 4).
    pub largest_bytes: usize,
}

impl Images {
    fn add(&mut self, v: &Value) {
        // An image is a base64 string, a data: URL, or (Anthropic) a source object whose
        // `data` is the base64.
        self.add_text(match v {
            Value::Object(source) => source.get("data").and_then(Value::as_str),
            other => other.as_str(),
        });
    }

    /// One image given as base64 or a data: URL (`None`: an image by reference).
    pub(crate) fn add_text(&mut self, text: Option<&str>) {
        self.count += 1;
        let len = text.map_or(0, |t| t.rsplit(',').next().map_or(0, str::len));
        self.largest_bytes = self.largest_bytes.max(len / 4 * 3);
    }

    /// The images of a body on any surface: native `images` (generate) and
    /// `messages[].images` (chat), and the media parts of `messages` and Responses `input`
    /// items, tool results included.
    pub fn in_body(v: &Value) -> Images {
        let mut images = Images::default();
        let mut native = |list: Option<&Value>| {
            for i in list.and_then(Value::as_array).into_iter().flatten() {
                images.add(i);
            }
        };
        native(v.get("images"));
        for m in v
            .get("messages")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            native(m.get("images"));
        }
        for f in ["messages", "input"] {
            if let Some(v) = v.get(f) {
                images.parts(v);
            }
        }
        images
    }

    fn parts(&mut self, v: &Value) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| self.parts(i)),
            Value::Object(map) => match media_key(map) {
                Some(k) => {
                    let media = map.get(k).unwrap_or(&Value::Null);
                    // OpenAI's `image_url` part nests the URL: {"image_url":{"url":...}}.
                    self.add(media.get("url").unwrap_or(media));
                }
                None => map.values().for_each(|v| self.parts(v)),
            },
            _ => {}
        }
    }
}

/// Inputs of an embeddings request: a list's length, or one.
pub fn embed_inputs(v: &Value) -> usize {
    match v.get("input") {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Null) | None => 0,
        Some(_) => 1,
    }
}

/// Feeds what is written to a hasher, so a value can be hashed as its JSON without the text.
struct HashWriter<'h>(&'h mut std::collections::hash_map::DefaultHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::hash::Hasher::write(self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Characters of a bare prompt (`/api/generate`, `/v1/completions`) that name its
/// conversation: a prompt that grows turn by turn keeps its start.
const PROMPT_PREFIX: usize = 2_000;

/// A conversation's fingerprint, for routing its next turn to the backend whose cache holds
/// its prompt: who asks, the model, and what stays the same from turn to turn at the start of
/// the prompt (the system prompt or instructions and the first two messages or input items;
/// or the start of a bare prompt). `None`: nothing that continues (an embedding, an empty
/// body).
pub fn conversation<'a>(
    caller: &str,
    model: &str,
    parts: impl IntoIterator<Item = &'a Value>,
) -> Option<u64> {
    use std::hash::Hash as _;
    conversation_of(caller, model, parts, |h, part| {
        match part {
            Value::String(s) => {
                let end = s
                    .char_indices()
                    .nth(PROMPT_PREFIX)
                    .map_or(s.len(), |(i, _)| i);
                s[..end].hash(h);
            }
            other => serde_json::to_writer(HashWriter(h), other).ok()?,
        }
        Some(())
    })
}

/// [`conversation`] over any parts, each fed to the hasher by `feed`.
pub fn conversation_of<T>(
    caller: &str,
    model: &str,
    parts: impl IntoIterator<Item = T>,
    mut feed: impl FnMut(&mut std::collections::hash_map::DefaultHasher, T) -> Option<()>,
) -> Option<u64> {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    caller.hash(&mut h);
    model.hash(&mut h);
    let mut any = false;
    for part in parts {
        any = true;
        feed(&mut h, part)?;
    }
    any.then(|| h.finish())
}

/// A serialisable part, fed to the hasher as its JSON.
pub fn feed_json<T: serde::Serialize>(
    h: &mut std::collections::hash_map::DefaultHasher,
    part: T,
) -> Option<()> {
    serde_json::to_writer(HashWriter(h), &part).ok()
}

/// The parts of a forwarded body that start its conversation.
pub fn conversation_parts(v: &Value) -> Vec<&Value> {
    let mut parts: Vec<&Value> = ["system", "instructions"]
        .iter()
        .filter_map(|f| v.get(*f))
        .collect();
    for f in ["messages", "input"] {
        match v.get(f) {
            Some(Value::Array(items)) => parts.extend(items.iter().take(2)),
            Some(s @ Value::String(_)) => parts.push(s),
            _ => {}
        }
    }
    if let Some(p) = v.get("prompt") {
        parts.push(p);
    }
    parts
}

fn fields_chars(v: &Value, fields: &[&str]) -> usize {
    fields
        .iter()
        .filter_map(|f| v.get(*f))
        .map(text_chars)
        .sum()
}

/// Native chat: each message's text (content, thinking, tool name and call id, tool calls
/// with their arguments), the tool definitions and a JSON schema in `format`. A message's
/// `images` are its media.
pub(crate) fn prompt_native_chat(v: &Value) -> usize {
    let messages: usize = v
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    fields_chars(
                        m,
                        &[
                            "content",
                            "thinking",
                            "tool_name",
                            "tool_call_id",
                            "tool_calls",
                        ],
                    )
                })
                .sum()
        })
        .unwrap_or(0);
    messages + fields_chars(v, &["tools", "format"])
}

/// Native generate: prompt, suffix (fill-in-the-middle), system prompt, template, schema,
/// and the `context` of an earlier answer: token ids the model reads before the prompt, each
/// counted as the characters of one token in the gateway's estimate.
pub(crate) fn prompt_generate(v: &Value) -> usize {
    let context = v
        .get("context")
        .and_then(Value::as_array)
        .map_or(0, |ids| ids.len() * CHARS_PER_TOKEN);
    fields_chars(v, &["prompt", "suffix", "system", "template", "format"]) + context
}

/// Embeddings: every input string.
pub(crate) fn prompt_input(v: &Value) -> usize {
    fields_chars(v, &["input"])
}

pub(crate) fn prompt_legacy_embeddings(v: &Value) -> usize {
    fields_chars(v, &["prompt"])
}

/// Responses: instructions and input items (text, function calls and their outputs) as
/// conversation text, tool definitions in full.
pub(crate) fn prompt_responses(v: &Value) -> usize {
    ["instructions", "input"]
        .iter()
        .filter_map(|f| v.get(*f))
        .map(conversation_chars)
        .sum::<usize>()
        + fields_chars(v, &["tools", "text"])
}

/// Anthropic Messages: the system prompt and messages (text, tool use and results,
/// thinking) as conversation text, tool definitions in full, stop sequences.
pub(crate) fn prompt_messages(v: &Value) -> usize {
    ["system", "messages"]
        .iter()
        .filter_map(|f| v.get(*f))
        .map(conversation_chars)
        .sum::<usize>()
        + fields_chars(v, &["tools", "stop_sequences"])
}

/// Legacy completions: prompt, suffix and stop strings.
pub(crate) fn prompt_completions(v: &Value) -> usize {
    fields_chars(v, &["prompt", "suffix", "stop"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_counts_leave_images_out() {
        let v: Value = serde_json::json!({"messages":[{"role":"user","content":"abc","images":["QUJD".repeat(1000)]}]});
        assert_eq!(prompt_native_chat(&v), 3);
    }

    #[test]
    fn media_keys_are_media_only_in_a_media_part() {
        use serde_json::json;
        let big = "x".repeat(1000);
        // In tool-call arguments, schemas and tool_use input, `images`/`source` are text.
        let v = json!({"messages":[{"role":"assistant","content":"",
            "tool_calls":[{"function":{"name":"f","arguments":{"images":big}}}]}]});
        assert!(prompt_native_chat(&v) >= 1000);
        let v = json!({"messages":[{"role":"assistant","content":[
            {"type":"tool_use","id":"t","name":"f","input":{"source":big}}]}]});
        assert!(prompt_messages(&v) >= 1000);
        let v = json!({"messages":[{"role":"user","content":"hi"}],
            "tools":[{"name":"f","input_schema":{"properties":{"image_url":{"description":big}}}}]});
        assert!(prompt_messages(&v) >= 1000);
        // In an image block it is the image.
        let v = json!({"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":big}},
            {"type":"text","text":"hi"}]}]});
        assert_eq!(prompt_messages(&v), 2);
        let v = json!({"input":[{"type":"message","role":"user","content":[
            {"type":"input_image","detail":"auto","image_url":big}]}]});
        assert_eq!(prompt_responses(&v), 4);
    }

    #[test]
    fn images_are_found_on_every_surface() {
        use serde_json::json;
        let b64 = "QUJD".repeat(1000); // 4,000 base64 characters: 3,000 bytes
        let v = json!({"messages":[{"role":"user","content":"a","images":[b64, "QUJD"]}]});
        assert_eq!(
            Images::in_body(&v),
            Images {
                count: 2,
                largest_bytes: 3000
            }
        );
        let v = json!({"prompt":"a","images":[b64]});
        assert_eq!(Images::in_body(&v).count, 1);
        let v = json!({"messages":[{"role":"user","content":[
            {"type":"image","source":{"type":"base64","media_type":"image/png","data":b64}},
            {"type":"tool_result","tool_use_id":"t","content":[
                {"type":"image","source":{"type":"base64","media_type":"image/png","data":"QUJD"}}]}]}]});
        assert_eq!(
            Images::in_body(&v),
            Images {
                count: 2,
                largest_bytes: 3000
            }
        );
        let v = json!({"input":[{"type":"message","role":"user","content":[
            {"type":"input_image","detail":"auto","image_url":format!("data:image/png;base64,{b64}")}]}]});
        assert_eq!(
            Images::in_body(&v),
            Images {
                count: 1,
                largest_bytes: 3000
            }
        );
        // Text that only looks like an image is not one.
        let v = json!({"messages":[{"role":"user","content":"images"}],"tools":[{"images":[b64]}]});
        assert_eq!(Images::in_body(&v).count, 0);
    }

    #[test]
    fn ids_and_context_count() {
        use serde_json::json;
        let v = json!({"messages":[{"role":"tool","content":"ok","tool_call_id":"x".repeat(500)}]});
        assert_eq!(prompt_native_chat(&v), 502);
        let v = json!({"messages":[{"role":"assistant","content":[
            {"type":"tool_use","id":"y".repeat(500),"name":"f","input":{}}]}]});
        assert_eq!(prompt_messages(&v), 501);
        let v = json!({"input":[{"type":"function_call_output","call_id":"c","id":"z".repeat(500),"output":"o"}]});
        assert_eq!(prompt_responses(&v), 502);
        let v = json!({"prompt":"hi","context":vec![1; 1000]});
        assert_eq!(prompt_generate(&v), 2 + 1000 * super::CHARS_PER_TOKEN);
    }
}
