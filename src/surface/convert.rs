//! Pure conversions between OpenAI's chat API and Ollama's native `/api/chat`.
//!
//! Follows `shared/reference/ollama-openai.md`, including where we do better than Ollama's own
//! OpenAI layer: omitted `temperature`/`top_p` stay omitted (Modelfile defaults apply),
//! `max_completion_tokens` wins over `max_tokens`, ids are unique per response, the model in
//! every answer is the public name the client asked for, and Ollama's timing fields never
//! reach a client. No I/O here: everything is table-tested.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};
use serde_json::Value;

use super::openai::{
    ChatRequest, Content, Delta, OutFunction, OutMessage, OutToolCall, Part, Stop, Usage,
};
use super::prompt::text_chars;
use super::stream::{LineOutcome, Lines};
use crate::errors::GatewayError;
use crate::json_out::{int, json_opt_str, json_str};
use crate::upstream::ollama;

fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        message: message.into(),
    }
}

/// Unicode characters of every piece of text the model reads, which is what
/// `limits.max_prompt_chars` bounds: message contents (string or text parts), names, tool
/// call ids, reasoning, assistant tool calls (name and arguments), tool definitions (every key
/// and string in them: descriptions, names, parameter schemas), a JSON schema for the answer,
/// and `stop` strings. Leaving any of them out let 50,000-character tool descriptions through.
pub fn prompt_chars(req: &ChatRequest) -> usize {
    let chars = |s: &str| s.chars().count();
    let opt = |s: &Option<String>| s.as_deref().map_or(0, chars);
    let mut n = 0;
    for m in &req.messages {
        n += match &m.content {
            Some(Content::Text(t)) => chars(t),
            Some(Content::Parts(parts)) => parts
                .iter()
                .map(|p| match p {
                    Part::Text { text } => chars(text),
                    Part::ImageUrl { .. } => 0,
                })
                .sum(),
            None => 0,
        };
        n += opt(&m.name) + opt(&m.tool_call_id) + opt(&m.reasoning) + opt(&m.reasoning_content);
        for tc in m.tool_calls.iter().flatten() {
            n += opt(&tc.id) + chars(&tc.function.name) + chars(&tc.function.arguments);
        }
    }
    for tool in req.tools.iter().flatten() {
        n += text_chars(tool);
    }
    if let Some(schema) = req
        .response_format
        .as_ref()
        .and_then(|f| f.json_schema.as_ref())
        .and_then(|s| s.schema.as_ref())
    {
        n += text_chars(schema);
    }
    n += match &req.stop {
        Some(Stop::One(s)) => chars(s),
        Some(Stop::Many(v)) => v.iter().map(|s| chars(s)).sum(),
        None => 0,
    };
    n
}

/// Longest model name accepted: real names are tens of characters, and the name is written
/// into the audit line and the logs.
pub const MAX_MODEL_CHARS: usize = 256;

/// Checks what serde cannot: values and combinations.
pub fn check_request(req: &ChatRequest, max_messages: usize) -> Result<(), GatewayError> {
    if req.model.trim().is_empty() {
        return Err(bad("model is required"));
    }
    if req.model.chars().count() > MAX_MODEL_CHARS {
        return Err(bad(format!(
            "model name too long, max {MAX_MODEL_CHARS} characters"
        )));
    }
    if req.messages.is_empty() {
        return Err(bad("messages must contain at least one message"));
    }
    if req.messages.len() > max_messages {
        return Err(bad(format!("too many messages, max {max_messages}")));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(bad("n must be 1: only one choice per request is supported"));
    }
    Ok(())
}

/// `limits.max_messages` bounds what Ollama receives: each content part becomes a message
/// of its own there, so a few messages of many parts must not slip past it.
pub fn check_native_messages(
    native: &ollama::ChatRequest,
    max_messages: usize,
) -> Result<(), GatewayError> {
    if native.messages.len() > max_messages {
        return Err(bad(format!(
            "too many messages, max {max_messages} (each content part counts as one)"
        )));
    }
    Ok(())
}

/// Data URLs only (`data:image/png;base64,...`): the gateway never fetches client-given URLs.
fn image_payload(url: &str) -> Result<String, GatewayError> {
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        bad("image URLs are not supported, send the image as base64 data: URL instead")
    })?;
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| bad("malformed data: URL in image_url"))?;
    let ok_type = matches!(
        meta,
        ";base64"
            | "image/jpeg;base64"
            | "image/jpg;base64"
            | "image/png;base64"
            | "image/webp;base64"
    );
    if !ok_type {
        return Err(bad(
            "image_url must be a base64 data: URL of type jpeg, png or webp",
        ));
    }
    Ok(data.to_owned())
}

fn map_role(role: &str) -> Result<&'static str, GatewayError> {
    Ok(match role {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" | "function" => "tool",
        other => return Err(bad(format!("unsupported message role '{other}'"))),
    })
}

fn think_from(effort: &str) -> Result<Value, GatewayError> {
    Ok(match effort {
        "none" => Value::Bool(false),
        "minimal" => Value::from("low"),
        "low" | "medium" | "high" | "max" => Value::from(effort),
        "xhigh" | "ultra" => Value::from("max"),
        other => return Err(bad(format!("unsupported reasoning_effort '{other}'"))),
    })
}

/// OpenAI request -> Ollama `/api/chat` body, still under the public model name (renamed when
/// sent). The tool definitions move over, unread: count the prompt before.
pub fn to_ollama(req: &mut ChatRequest) -> Result<ollama::ChatRequest, GatewayError> {
    let mut messages = Vec::with_capacity(req.messages.len());
    // tool_call_id -> function name, to fill `tool_name` on tool results.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for m in &req.messages {
        let role = map_role(&m.role)?;
        let thinking = m.reasoning.clone().or_else(|| m.reasoning_content.clone());
        let mut tool_calls = Vec::new();
        for tc in m.tool_calls.iter().flatten() {
            let arguments: Value = serde_json::from_str(&tc.function.arguments)
                .map_err(|_| bad("invalid tool call arguments: not a JSON document"))?;
            if let Some(id) = tc.id.as_deref() {
                call_names.insert(id, &tc.function.name);
            }
            tool_calls.push(ollama::ToolCall {
                id: tc.id.clone(),
                function: ollama::Function {
                    index: None,
                    name: tc.function.name.clone(),
                    arguments,
                },
            });
        }
        let tool_name = if role == "tool" {
            m.name.clone().or_else(|| {
                m.tool_call_id
                    .as_deref()
                    .and_then(|id| call_names.get(id))
                    .map(|s| (*s).to_owned())
            })
        } else {
            None
        };
        let base = |content: String, images: Vec<String>| ollama::Message {
            role: role.to_owned(),
            content,
            images,
            tool_calls: Vec::new(),
            tool_name: tool_name.clone(),
            tool_call_id: m.tool_call_id.clone(),
            thinking: None,
        };
        match &m.content {
            None => messages.push(base(String::new(), Vec::new())),
            Some(Content::Text(t)) => messages.push(base(t.clone(), Vec::new())),
            // As Ollama's own layer does: one native message per part, same role.
            Some(Content::Parts(parts)) => {
                for p in parts {
                    match p {
                        Part::Text { text } => messages.push(base(text.clone(), Vec::new())),
                        Part::ImageUrl { image_url } => {
                            messages.push(base(String::new(), vec![image_payload(&image_url.url)?]))
                        }
                    }
                }
            }
        }
        // Tool calls and reasoning belong to the message's last native part.
        if let Some(last) = messages.last_mut() {
            last.tool_calls = tool_calls;
            last.thinking = thinking;
        }
    }

    let format = match &req.response_format {
        None => None,
        Some(rf) => match rf.kind.as_str() {
            "text" => None,
            "json_object" => Some(Value::from("json")),
            "json_schema" => Some(
                rf.json_schema
                    .as_ref()
                    .and_then(|s| s.schema.clone())
                    .ok_or_else(|| bad("response_format.json_schema.schema is required"))?,
            ),
            other => return Err(bad(format!("unsupported response_format type '{other}'"))),
        },
    };

    let options = ollama::Options {
        num_ctx: req.options.as_ref().and_then(|o| o.num_ctx),
        num_predict: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        stop: match &req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
        seed: req.seed,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
    };

    let tools = req.tools.take().filter(|t| !t.is_empty());
    Ok(ollama::ChatRequest {
        model: req.model.clone(),
        messages,
        stream: req.stream.unwrap_or(false),
        format,
        options,
        tools,
        think: req
            .reasoning_effort
            .as_deref()
            .map(think_from)
            .transpose()?,
        keep_alive: req.keep_alive.clone(),
    })
}

/// `chatcmpl-` + 128 random bits.
pub fn completion_id() -> String {
    let mut id = String::with_capacity(9 + 32);
    id.push_str("chatcmpl-");
    crate::ids::push_hex128(&mut id);
    id
}

fn call_id() -> String {
    format!("call_{}", &crate::ids::hex128()[..24])
}

fn finish_reason(done_reason: Option<&str>, tool_calls: bool) -> &'static str {
    if tool_calls {
        return "tool_calls";
    }
    match done_reason {
        Some("length") => "length",
        _ => "stop",
    }
}

fn out_tool_calls(calls: &[ollama::ToolCall], first_index: u32) -> Vec<OutToolCall<'_>> {
    calls
        .iter()
        .zip(first_index..)
        .map(|(c, i)| OutToolCall {
            index: c.function.index.unwrap_or(i),
            id: c.id.clone().unwrap_or_else(call_id),
            kind: "function",
            function: OutFunction {
                name: &c.function.name,
                arguments: if c.function.arguments.is_null() {
                    "{}".to_owned()
                } else {
                    c.function.arguments.to_string()
                },
            },
        })
        .collect()
}

pub fn usage_of(chunk: &ollama::ChatChunk) -> Usage {
    Usage::new(
        chunk.prompt_eval_count.unwrap_or(0),
        chunk.eval_count.unwrap_or(0),
    )
}

/// Ollama's single non-stream answer -> OpenAI `chat.completion` JSON.
///
/// Written by hand around the message (see `json_out`); a message with tool calls, which
/// needs their conversion anyway, goes through serde.
pub fn completion_json(
    answer: &ollama::ChatChunk,
    id: &str,
    created: u64,
    public_model: &str,
) -> Vec<u8> {
    let msg = answer.message.as_ref();
    let calls = msg.map(|m| m.tool_calls.as_slice()).unwrap_or(&[]);
    let content = msg.map(|m| m.content.as_str()).unwrap_or("");
    let reasoning = msg
        .and_then(|m| m.thinking.as_deref())
        .filter(|t| !t.is_empty());
    let mut out = Vec::with_capacity(content.len() + reasoning.map_or(0, str::len) + 320);
    out.put_slice(b"{\"id\":");
    json_str(&mut out, id);
    out.put_slice(b",\"object\":\"chat.completion\",\"created\":");
    int(&mut out, created);
    out.put_slice(b",\"model\":");
    json_str(&mut out, public_model);
    out.put_slice(b",\"choices\":[{\"index\":0,\"message\":");
    if calls.is_empty() {
        out.put_slice(b"{\"role\":\"assistant\",\"content\":");
        json_str(&mut out, content);
        if let Some(r) = reasoning {
            out.put_slice(b",\"reasoning_content\":");
            json_str(&mut out, r);
        }
        out.put_u8(b'}');
    } else {
        let message = OutMessage {
            role: "assistant",
            content: Some(content),
            reasoning_content: reasoning,
            tool_calls: Some(out_tool_calls(calls, 0)),
        };
        // Writing plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &message);
    }
    out.put_slice(b",\"finish_reason\":");
    json_str(
        &mut out,
        finish_reason(answer.done_reason.as_deref(), !calls.is_empty()),
    );
    out.put_slice(b",\"logprobs\":null}],\"usage\":");
    usage_into(&mut out, &usage_of(answer));
    out.put_u8(b'}');
    out
}

fn usage_into(out: &mut impl BufMut, u: &Usage) {
    out.put_slice(b"{\"prompt_tokens\":");
    int(out, u.prompt_tokens);
    out.put_slice(b",\"completion_tokens\":");
    int(out, u.completion_tokens);
    out.put_slice(b",\"total_tokens\":");
    int(out, u.total_tokens);
    out.put_u8(b'}');
}

/// Turns Ollama NDJSON lines into OpenAI SSE events, one event per line, at once.
pub struct SseTranslator {
    /// `{"id":..,"object":"chat.completion.chunk","created":..,"model":..,"choices":[`: the
    /// same for every chunk of the stream, so written once.
    head: Vec<u8>,
    include_usage: bool,
    sent_role: bool,
    tool_calls_sent: u32,
}

impl SseTranslator {
    pub fn new(id: String, created: u64, model: String, include_usage: bool) -> Self {
        let mut head = Vec::with_capacity(id.len() + model.len() + 80);
        head.put_slice(b"{\"id\":");
        json_str(&mut head, &id);
        head.put_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        int(&mut head, created);
        head.put_slice(b",\"model\":");
        json_str(&mut head, &model);
        head.put_slice(b",\"choices\":[");
        SseTranslator {
            head,
            include_usage,
            sent_role: false,
            tool_calls_sent: 0,
        }
    }

    /// `data: {..,"choices":[{"index":0,"delta":{..},"finish_reason":..}]}` and a blank line.
    fn push_chunk(&self, out: &mut BytesMut, delta: &Delta<'_>, finish: Option<&'static str>) {
        out.put_slice(b"data: ");
        out.put_slice(&self.head);
        out.put_slice(b"{\"index\":0,\"delta\":");
        if delta.tool_calls.is_some() {
            // Writing plain structs into a BytesMut cannot fail.
            let _ = serde_json::to_writer((&mut *out).writer(), delta);
        } else {
            out.put_u8(b'{');
            let mut sep = false;
            for (name, value) in [
                (&b"\"role\":"[..], delta.role),
                (b"\"content\":", delta.content),
                (b"\"reasoning_content\":", delta.reasoning_content),
            ] {
                if let Some(v) = value {
                    if sep {
                        out.put_u8(b',');
                    }
                    out.put_slice(name);
                    json_str(out, v);
                    sep = true;
                }
            }
            out.put_u8(b'}');
        }
        out.put_slice(b",\"finish_reason\":");
        json_opt_str(out, finish);
        out.put_slice(b"}]}\n\n");
    }

    /// One content-bearing event; the first event of the stream also carries the role.
    fn emit(&mut self, out: &mut BytesMut, delta: Delta<'_>) {
        let role = self.role();
        self.push_chunk(out, &Delta { role, ..delta }, None);
    }

    fn role(&mut self) -> Option<&'static str> {
        let first = !self.sent_role;
        self.sent_role = true;
        first.then_some("assistant")
    }

    /// Translates one line (without its newline) and appends the SSE events to `out`.
    pub fn on_line(&mut self, line: &[u8], out: &mut BytesMut) -> LineOutcome {
        let line = line.trim_ascii();
        if line.is_empty() {
            return LineOutcome::Continue;
        }
        let Ok(chunk) = serde_json::from_slice::<ollama::ChatChunk>(line) else {
            return LineOutcome::Invalid;
        };
        if chunk.error.is_some() {
            return LineOutcome::Failed;
        }
        if let Some(msg) = &chunk.message {
            // Reasoning first, as its own chunk, then content and tool calls.
            if let Some(thinking) = msg.thinking.as_deref().filter(|t| !t.is_empty()) {
                self.emit(
                    out,
                    Delta {
                        reasoning_content: Some(thinking),
                        ..Delta::default()
                    },
                );
            }
            if !msg.tool_calls.is_empty() {
                let calls = out_tool_calls(&msg.tool_calls, self.tool_calls_sent);
                self.tool_calls_sent += u32::try_from(calls.len()).unwrap_or(0);
                self.emit(
                    out,
                    Delta {
                        content: (!msg.content.is_empty()).then_some(msg.content.as_str()),
                        tool_calls: Some(calls),
                        ..Delta::default()
                    },
                );
            } else if !msg.content.is_empty() || (!self.sent_role && !chunk.done) {
                self.emit(
                    out,
                    Delta {
                        content: Some(&msg.content),
                        ..Delta::default()
                    },
                );
            }
        }
        if !chunk.done {
            return LineOutcome::Continue;
        }
        let usage = usage_of(&chunk);
        let role = self.role();
        let finish = finish_reason(chunk.done_reason.as_deref(), self.tool_calls_sent > 0);
        self.push_chunk(
            out,
            &Delta {
                role,
                ..Delta::default()
            },
            Some(finish),
        );
        if self.include_usage {
            out.put_slice(b"data: ");
            out.put_slice(&self.head);
            out.put_slice(b"],\"usage\":");
            usage_into(out, &usage);
            out.put_slice(b"}\n\n");
        }
        out.put_slice(b"data: [DONE]\n\n");
        LineOutcome::Done(usage)
    }
}

/// An SSE event carrying an OpenAI error envelope, for failures after the 200 went out.
impl Lines for SseTranslator {
    fn on_line(&mut self, line: &[u8], out: &mut BytesMut) -> LineOutcome {
        SseTranslator::on_line(self, line, out)
    }

    fn dialect(&self) -> crate::errors::Dialect {
        crate::errors::Dialect::OpenAi
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reference_example_translates() {
        let r = req(
            json!({"model":"llama3.2","stream":true,"max_tokens":256,"temperature":0.2,
            "stop":"###","response_format":{"type":"json_object"},
            "stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"Answer in JSON."},
                        {"role":"user","content":"Capital of France?"}]}),
        );
        let mut r = r;
        let o = serde_json::to_value(to_ollama(&mut r).unwrap()).unwrap();
        assert_eq!(
            o,
            json!({"model":"llama3.2","stream":true,"format":"json",
                "options":{"num_predict":256,"temperature":0.2,"stop":["###"]},
                "messages":[{"role":"system","content":"Answer in JSON."},
                            {"role":"user","content":"Capital of France?"}]})
        );
    }

    #[test]
    fn options_parts_tools_and_reasoning() {
        let r = req(
            json!({"model":"m","max_tokens":5,"max_completion_tokens":9,"seed":7,
            "reasoning_effort":"minimal",
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}],
            "messages":[
              {"role":"developer","content":"be brief"},
              {"role":"user","content":[{"type":"text","text":"what is"},
                 {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
              {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                 "function":{"name":"get_weather","arguments":"{\"city\":\"Tokyo\"}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"sunny"}]}),
        );
        let mut r = r;
        let o = serde_json::to_value(to_ollama(&mut r).unwrap()).unwrap();
        assert_eq!(o["model"], "m");
        assert_eq!(o["stream"], false);
        assert_eq!(o["options"], json!({"num_predict":9,"seed":7}));
        assert_eq!(o["think"], "low");
        assert_eq!(
            o["messages"][0],
            json!({"role":"system","content":"be brief"})
        );
        assert_eq!(o["messages"][1], json!({"role":"user","content":"what is"}));
        assert_eq!(
            o["messages"][2],
            json!({"role":"user","content":"","images":["AAAA"]})
        );
        assert_eq!(
            o["messages"][3]["tool_calls"][0]["function"],
            json!({"name":"get_weather","arguments":{"city":"Tokyo"}})
        );
        assert_eq!(o["messages"][4]["tool_name"], "get_weather");
        assert_eq!(o["tools"][0]["function"]["name"], "get_weather");
        assert!(o.get("temperature").is_none() && o["options"].get("top_p").is_none());
    }

    #[test]
    fn rejects_what_ollama_would_choke_on() {
        let mut url = req(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}));
        assert!(to_ollama(&mut url).is_err());
        let mut args = req(
            json!({"model":"m","messages":[{"role":"assistant","tool_calls":[
            {"id":"c","function":{"name":"f","arguments":"{nope"}}]}]}),
        );
        assert!(to_ollama(&mut args).is_err());
        let mut role = req(json!({"model":"m","messages":[{"role":"wizard","content":"x"}]}));
        assert!(to_ollama(&mut role).is_err());
        let empty = req(json!({"model":"m","messages":[]}));
        assert!(check_request(&empty, 10).is_err());
    }

    #[test]
    fn prompt_chars_counts_unicode_characters() {
        let r = req(
            json!({"model":"m","messages":[{"role":"user","content":"你好"},
            {"role":"user","content":[{"type":"text","text":"abc"}]}]}),
        );
        assert_eq!(prompt_chars(&r), 5);
    }

    #[test]
    fn completion_has_public_model_usage_and_no_ollama_fields() {
        let a: ollama::ChatChunk = serde_json::from_value(json!({"model":"up/m",
            "created_at":"2025-07-07T20:22:19Z","message":{"role":"assistant","content":"",
            "tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},
            "done":true,"done_reason":"stop","total_duration":5,"prompt_eval_count":3,"eval_count":4}))
        .unwrap();
        let v: Value =
            serde_json::from_slice(&completion_json(&a, "chatcmpl-x", 9, "pub")).unwrap();
        assert_eq!(v["model"], "pub");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens":3,"completion_tokens":4,"total_tokens":7})
        );
        let text = v.to_string();
        assert!(!text.contains("total_duration") && !text.contains("created_at"));
    }

    #[test]
    fn plain_completion_is_exactly_openai_shaped() {
        let a: ollama::ChatChunk = serde_json::from_value(json!({"model":"up/m",
            "message":{"role":"assistant","content":"a \"quoted\"\nline ü","thinking":"hm"},
            "done":true,"done_reason":"length","prompt_eval_count":3,"eval_count":4}))
        .unwrap();
        let v: Value =
            serde_json::from_slice(&completion_json(&a, "chatcmpl-x", 9, "p\"ub")).unwrap();
        assert_eq!(
            v,
            json!({"id":"chatcmpl-x","object":"chat.completion","created":9,"model":"p\"ub",
                "choices":[{"index":0,"message":{"role":"assistant",
                    "content":"a \"quoted\"\nline ü","reasoning_content":"hm"},
                    "finish_reason":"length","logprobs":null}],
                "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}})
        );
        let bare: ollama::ChatChunk = serde_json::from_value(json!({"done":true})).unwrap();
        let v: Value = serde_json::from_slice(&completion_json(&bare, "i", 1, "m")).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn stream_chunks_are_exactly_openai_shaped() {
        let mut t = SseTranslator::new("chatcmpl-1".into(), 5, "p\\ub".into(), true);
        let mut out = BytesMut::new();
        t.on_line(
            br#"{"message":{"role":"assistant","content":"","thinking":"x\ty"},"done":false}"#,
            &mut out,
        );
        t.on_line(
            br#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{}}}]},"done":false}"#,
            &mut out,
        );
        t.on_line(
            br#"{"done":true,"prompt_eval_count":1,"eval_count":2}"#,
            &mut out,
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<Value> = text
            .split("\n\n")
            .filter(|s| !s.is_empty() && *s != "data: [DONE]")
            .map(|s| serde_json::from_str(s.strip_prefix("data: ").unwrap()).unwrap())
            .collect();
        let head = |choices: Value| {
            json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,
                "model":"p\\ub","choices":choices})
        };
        assert_eq!(
            events[0],
            head(
                json!([{"index":0,"delta":{"role":"assistant","reasoning_content":"x\ty"},
                "finish_reason":null}])
            )
        );
        let call = &events[1]["choices"][0];
        assert_eq!(call["delta"]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(call["finish_reason"], Value::Null);
        assert_eq!(
            events[2],
            head(json!([{"index":0,"delta":{},"finish_reason":"tool_calls"}]))
        );
        let mut usage = head(json!([]));
        usage["usage"] = json!({"prompt_tokens":1,"completion_tokens":2,"total_tokens":3});
        assert_eq!(events[3], usage);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn stream_lines_become_sse_events() {
        let mut t = SseTranslator::new("chatcmpl-1".into(), 5, "pub".into(), true);
        let mut out = BytesMut::new();
        let lines = [
            r#"{"model":"m","message":{"role":"assistant","content":"The"},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":" sky"},"done":false}"#,
            r#"{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"length","prompt_eval_count":2,"eval_count":2}"#,
        ];
        let mut outcome = LineOutcome::Continue;
        for l in lines {
            outcome = t.on_line(l.as_bytes(), &mut out);
        }
        assert_eq!(outcome, LineOutcome::Done(Usage::new(2, 2)));
        let text = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<&str> = text.split("\n\n").filter(|s| !s.is_empty()).collect();
        assert_eq!(events.len(), 5);
        let first: Value = serde_json::from_str(&events[0][6..]).unwrap();
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role":"assistant","content":"The"})
        );
        assert_eq!(first["model"], "pub");
        let fin: Value = serde_json::from_str(&events[2][6..]).unwrap();
        assert_eq!(fin["choices"][0]["finish_reason"], "length");
        let usage: Value = serde_json::from_str(&events[3][6..]).unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(events[4], "data: [DONE]");
        let err = t.on_line(br#"{"error":"boom"}"#, &mut out);
        assert_eq!(err, LineOutcome::Failed);
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(completion_id(), completion_id());
    }
}
