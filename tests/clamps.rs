//! Request clamps: what one request may ask of the GPU, on every route, per key and model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};

const POLICY: &str = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: false}
limits:
  max_num_ctx: 32768
  max_output_tokens: 1000
  max_keep_alive_seconds: 600
auth:
  enabled: true
  keys:
    - {id: user, key: "user-key-000001"}
    - {id: agent, key: "agent-key-00001", limits: {max_prompt_chars: 250000, max_output_tokens: 4000}}
    - {id: ops, key: "admin-key-00001", admin: true}
models:
  "qwen3:32b": {name: "qwen3:32b", num_ctx: 16384}
  "llama": "llama3.2:latest"
"#;

fn post(gw: &Gateway, path: &str, key: &str, body: &Value) -> Response {
    post_json_bytes(gw, path, key, body.to_string().as_bytes())
}

fn last_sent(fake: &Fake, path: &str) -> Value {
    let s = fake.stats();
    if path == "/api/chat" {
        s["last_chat"].clone()
    } else {
        assert_eq!(s["last_model"]["path"], path);
        s["last_model"]["body"].clone()
    }
}

#[test]
fn chat_completions_are_clamped_and_say_so() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    // OpenClaw's shape: options.num_ctx on the OpenAI route, forwarded (within the cap) for
    // a model without a configured context.
    let r = post(
        &gw,
        "/v1/chat/completions",
        "user-key-000001",
        &json!({"model": "llama",
        "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 100000,
        "options": {"num_ctx": 131072}, "keep_alive": -1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_sent(&fake, "/api/chat");
    assert_eq!(sent["options"]["num_ctx"], 32768);
    assert_eq!(sent["options"]["num_predict"], 1000);
    assert_eq!(sent["keep_alive"], "600s");
    assert_eq!(
        r.header("x-qwen-gateway-clamped"),
        Some("max_output_tokens=1000, num_ctx=32768, keep_alive=600s")
    );
    // A model with a configured context: that one, whatever the request asks (a context
    // of its own would reload the model for everyone); the output cap, named.
    let r = post(
        &gw,
        "/v1/chat/completions",
        "user-key-000001",
        &json!({"model": "qwen3:32b",
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": 8192}}),
    );
    assert_eq!(r.status, 200);
    let sent = last_sent(&fake, "/api/chat");
    assert_eq!(sent["options"]["num_ctx"], 16384);
    assert_eq!(sent["options"]["num_predict"], 1000);
    assert_eq!(
        r.header("x-qwen-gateway-clamped"),
        Some("num_ctx=16384 (the model's), max_output_tokens=1000 (default)")
    );
}

#[test]
fn every_route_is_clamped_per_key_and_model() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    // Native: no output limit (-1) is not "infinite"; unloading for everyone is an admin's.
    let r = post(
        &gw,
        "/api/chat",
        "user-key-000001",
        &json!({"model": "llama", "stream": false,
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": -1},
        "keep_alive": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = last_sent(&fake, "/api/chat");
    assert_eq!(sent["options"]["num_predict"], 1000);
    assert!(sent.get("keep_alive").is_none(), "{sent}");
    // The model's default context when none is asked.
    let r = post(
        &gw,
        "/api/generate",
        "user-key-000001",
        &json!({"model": "qwen3:32b",
        "prompt": "x", "stream": false}),
    );
    assert_eq!(r.status, 200);
    let sent = last_sent(&fake, "/api/generate");
    assert_eq!(
        sent["options"],
        json!({"num_ctx": 16384, "num_predict": 1000})
    );
    // Admin keys may pin a model.
    let r = post(
        &gw,
        "/api/generate",
        "admin-key-00001",
        &json!({"model": "llama",
        "prompt": "x", "stream": false, "keep_alive": -1}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(last_sent(&fake, "/api/generate")["keep_alive"], -1);
    // Anthropic's and the Responses API's spellings of the output limit.
    let r = post(
        &gw,
        "/v1/messages",
        "user-key-000001",
        &json!({"model": "llama",
        "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_sent(&fake, "/v1/messages")["max_tokens"], 1000);
    let r = post(
        &gw,
        "/v1/responses",
        "user-key-000001",
        &json!({"model": "llama", "input": "hi"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(last_sent(&fake, "/v1/responses")["max_output_tokens"], 1000);
    // An agent's key: its own prompt and output limits.
    let long = "w ".repeat(110_000);
    let r = post(
        &gw,
        "/v1/completions",
        "agent-key-00001",
        &json!({"model": "llama",
        "prompt": long, "max_tokens": 3000}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last_sent(&fake, "/v1/completions")["max_tokens"], 3000);
    let r = post(
        &gw,
        "/v1/completions",
        "user-key-000001",
        &json!({"model": "llama",
        "prompt": long}),
    );
    assert_eq!(r.status, 400);
    assert_prompt_too_long(&r.error_message());
}

#[test]
fn refuse_mode_answers_400_in_the_route_dialect() {
    let fake = Fake::start(&[]);
    let policy = POLICY.replace(
        "max_keep_alive_seconds: 600",
        "max_keep_alive_seconds: 600\n  over_limit: refuse",
    );
    let gw = Gateway::start(&policy, &fake.url());
    let r = post(
        &gw,
        "/api/chat",
        "user-key-000001",
        &json!({"model": "llama",
        "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": 65536}}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "num_ctx is over the limit for this key, max 32768"
    );
    let r = post(
        &gw,
        "/v1/chat/completions",
        "user-key-000001",
        &json!({"model": "llama",
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "the output token limit is over the limit for this key, max 1000"
    );
    assert_eq!(fake.chat_requests(), 0);
}
