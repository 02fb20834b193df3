//! Every API a client speaks, guarded: the route table walked without a key, and each
//! forwarded surface (Ollama's native API, OpenAI embeddings and completions) against the
//! real binary and the stand-in, in its own error dialect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use qwen_gateway::routes::{Access, table};
use serde_json::{Value, json};

const POLICY: &str = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: false}
auth:
  enabled: true
  # The route walk sends many keyless requests from one address.
  max_failures: 1000
  keys:
    - {id: all, key: "key-all-000001"}
    - {id: llama-only, key: "key-llama-0001", models: ["llama"]}
    - {id: ops, key: "key-admin-0001", admin: true}
models:
  "qwen3:32b": "registry.internal/qwen3:32b"
  "llama": "llama3.2:latest"
  "test/hang": "test/hang"
  "test/error-mid": "test/error-mid"
  "test/cut": "test/cut"
audit: {dir: "{DIR}/audit"}
"#;

const ALL: &str = "key-all-000001";
const LLAMA: &str = "key-llama-0001";
const ADMIN: &str = "key-admin-0001";

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn post(gw: &Gateway, path: &str, key: &str, body: &Value) -> Response {
    post_json_bytes(gw, path, key, body.to_string().as_bytes())
}

fn get(gw: &Gateway, path: &str, key: &str) -> Response {
    let auth = bearer(key);
    request(gw.addr, "GET", path, &[("Authorization", &auth)], None)
}

fn ndjson(r: &Response) -> Vec<Value> {
    r.text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

fn upstream_counts(fake: &Fake) -> (u64, u64, u64) {
    let s = fake.stats();
    (
        s["chat_requests"].as_u64().unwrap(),
        s["model_requests"].as_u64().unwrap(),
        s["admin_requests"].as_u64().unwrap(),
    )
}

/// Asserts the error body is in the dialect of `path` and returns its message.
fn dialect_message(path: &str, r: &Response) -> String {
    let v = r.json();
    if path.starts_with("/api/") {
        assert!(v["error"].is_string(), "not Ollama's dialect: {v}");
        v["error"].as_str().unwrap().to_owned()
    } else if path.starts_with("/v1/messages") {
        assert_eq!(v["type"], "error", "not Anthropic's dialect: {v}");
        assert!(
            v["error"]["type"].is_string(),
            "not Anthropic's dialect: {v}"
        );
        v["error"]["message"].as_str().unwrap().to_owned()
    } else {
        r.error_message()
    }
}

#[test]
fn every_route_but_the_open_ones_refuses_a_request_without_a_key() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let routes = table();
    assert!(routes.len() >= 20, "the table lost routes");
    for r in &routes {
        let path = r
            .path
            .replace("{model}", "qwen3:32b")
            .replace("{digest}", "sha256:0123");
        let method = r.method.as_str();
        let body = (method == "POST").then(|| br#"{"model":"qwen3:32b"}"#.as_slice());
        let resp = request(gw.addr, method, &path, &[], body);
        match r.access {
            Access::Open | Access::Observer => {
                assert_ne!(resp.status, 401, "{method} {path} asked for a key");
            }
            Access::Operator => {
                // The local host only: a client behind the (trusted) proxy is refused.
                assert_ne!(resp.status, 401, "{method} {path} asked for a key");
                let behind = request(
                    gw.addr,
                    method,
                    &path,
                    &[("X-Forwarded-For", "10.0.0.9")],
                    body,
                );
                assert_eq!(behind.status, 403, "{method} {path} served a remote client");
            }
            Access::Key | Access::Listing | Access::Admin => {
                assert_eq!(resp.status, 401, "{method} {path} served without a key");
                if method != "HEAD" {
                    assert_eq!(
                        dialect_message(&path, &resp),
                        "invalid api key",
                        "{method} {path}"
                    );
                }
                // A wrong key too.
                let auth = bearer("wrong-key-0000");
                let resp = request(gw.addr, method, &path, &[("Authorization", &auth)], body);
                assert_eq!(resp.status, 401, "{method} {path} served with a wrong key");
            }
        }
        if r.access == Access::Admin {
            let auth = bearer(ALL);
            let resp = request(gw.addr, method, &path, &[("Authorization", &auth)], body);
            assert_eq!(resp.status, 403, "{method} {path} served a non-admin key");
        }
    }
    assert_eq!(
        upstream_counts(&fake),
        (0, 0, 0),
        "a refused request reached Ollama"
    );
}

#[test]
fn native_chat_streams_ndjson_under_public_names_and_is_metered() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let body = json!({"model": "qwen3:32b", "messages": [{"role": "user", "content": "hello native"}],
                      "options": {"num_ctx": 8192}, "keep_alive": "5m", "think": false});
    let r = post(&gw, "/api/chat", ALL, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines = ndjson(&r);
    assert!(lines.len() >= 3, "{}", r.text());
    assert!(
        lines.iter().all(|l| l["model"] == "qwen3:32b"),
        "{}",
        r.text()
    );
    assert!(
        !r.text().contains("registry.internal"),
        "an Ollama name leaked"
    );
    assert_eq!(lines.last().unwrap()["done"], true);
    // Timing fields stay: clients show tokens per second from them.
    assert!(lines.last().unwrap()["eval_duration"].is_u64());
    let content: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(content, "You said: hello native");
    let sent = &fake.stats()["last_chat"];
    assert_eq!(sent["model"], "registry.internal/qwen3:32b");
    assert_eq!(sent["options"]["num_ctx"], 8192);
    // Everything else reaches Ollama as the client sent it (no `stream`: Ollama's default).
    assert_eq!(sent["keep_alive"], "5m");
    assert_eq!(sent["think"], false);
    assert!(sent["stream"].is_null());

    let r = post(
        &gw,
        "/api/chat",
        ALL,
        &json!({"model": "qwen3:32b", "stream": false,
        "messages": [{"role": "user", "content": "one two"}]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "qwen3:32b");
    assert_eq!(r.json()["message"]["content"], "You said: one two");

    let audit = wait_for(Duration::from_secs(5), "audit lines", || {
        let l = gw.audit_lines();
        (l.len() >= 2).then_some(l)
    });
    for l in &audit {
        assert_eq!(l["path"], "/api/chat");
        assert!(l["completion_tokens"].as_u64().unwrap_or(0) > 0, "{l}");
        assert!(l["prompt_tokens"].as_u64().is_some(), "{l}");
        assert_eq!(l["key_id"], "all");
    }
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(m.contains("route=\"/api/chat\""), "{m}");
}

#[test]
fn native_generate_embed_show_and_lists() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = post(
        &gw,
        "/api/generate",
        ALL,
        &json!({"model": "qwen3:32b", "prompt": "def f(",
        "suffix": "return x", "raw": true, "keep_alive": 1800}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = ndjson(&r);
    assert!(lines.iter().all(|l| l["model"] == "qwen3:32b"));
    assert_eq!(lines.last().unwrap()["done"], true);
    assert_eq!(
        fake.stats()["last_model"]["body"]["model"],
        "registry.internal/qwen3:32b"
    );

    let r = post(
        &gw,
        "/api/embed",
        ALL,
        &json!({"model": "llama", "input": ["a", "b"]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "llama");
    assert_eq!(r.json()["embeddings"].as_array().unwrap().len(), 2);
    let r = post(
        &gw,
        "/api/embeddings",
        ALL,
        &json!({"model": "llama", "prompt": "a"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["embedding"].as_array().unwrap().len(), 8);

    let r = post(&gw, "/api/show", ALL, &json!({"model": "qwen3:32b"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let modelfile = r.json()["modelfile"].as_str().unwrap().to_owned();
    assert!(modelfile.contains("FROM qwen3:32b"), "{modelfile}");
    assert_eq!(r.json()["model_info"]["qwen3.context_length"], 40960);
    // Nothing of Ollama's host or of internal names (issue 19): the blob's and the
    // adapter's paths, the parent model, model_info's base-model strings.
    for leak in [
        "registry.internal",
        "/usr/share",
        "sha256-",
        "/srv/",
        "internal-",
    ] {
        assert!(!r.text().contains(leak), "{leak}: {}", r.text());
    }
    for path in ["/api/tags", "/api/ps"] {
        let r = get(&gw, path, ALL);
        assert_eq!(r.status, 200);
        assert!(!r.text().contains("internal-base"), "{path}: {}", r.text());
    }

    let names = |r: &Response| -> Vec<String> {
        r.json()["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = get(&gw, "/api/tags", ALL);
    assert_eq!(names(&r), ["llama", "qwen3:32b"], "{}", r.text());
    assert!(r.json()["models"][0]["details"].is_object(), "fields kept");
    let r = get(&gw, "/api/tags", LLAMA);
    assert_eq!(names(&r), ["llama"]);
    let r = get(&gw, "/api/ps", LLAMA);
    assert_eq!(names(&r), ["llama"], "{}", r.text());
    assert_eq!(r.json()["models"][0]["model"], "llama");
    let r = get(&gw, "/api/version", LLAMA);
    assert_eq!(r.json()["version"], "0.0.0-stand-in");
}

#[test]
fn openai_embeddings_completions_and_model_lookup() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = post(
        &gw,
        "/v1/embeddings",
        ALL,
        &json!({"model": "llama", "input": "hello",
        "encoding_format": "float"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "llama");
    assert_eq!(
        r.json()["data"][0]["embedding"].as_array().unwrap().len(),
        8
    );

    let r = post(
        &gw,
        "/v1/completions",
        ALL,
        &json!({"model": "qwen3:32b", "prompt": "two words",
        "suffix": "end", "max_tokens": 20}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "qwen3:32b");
    assert_eq!(r.json()["choices"][0]["text"], "You said: two words");
    assert!(r.json()["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let r = post(
        &gw,
        "/v1/completions",
        ALL,
        &json!({"model": "qwen3:32b", "prompt": "a b",
        "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("registry.internal"));
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "You said: a b");

    let r = get(&gw, "/v1/models/qwen3:32b", ALL);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "qwen3:32b");
    assert_eq!(r.json()["object"], "model");
    // A model the key may not use does not exist for it.
    let r = get(&gw, "/v1/models/qwen3:32b", LLAMA);
    assert_eq!(r.status, 404);
    assert!(r.error_message().contains("not found"));
}

#[test]
fn each_surface_refuses_in_its_own_dialect() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    // A model the key may not use: 403, and nothing reaches Ollama.
    for path in [
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/show",
        "/v1/completions",
        "/v1/embeddings",
    ] {
        let body = json!({"model": "qwen3:32b", "prompt": "x", "input": "x",
                          "messages": [{"role": "user", "content": "x"}]});
        let r = post(&gw, path, LLAMA, &body);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(
            dialect_message(path, &r),
            "this api key may not use the model 'qwen3:32b'",
            "{path}"
        );
    }
    assert_eq!(upstream_counts(&fake), (0, 0, 0));
    // Over-long prompts, counted the same way on every route.
    let long = "p".repeat(210_000);
    for (path, body) in [
        ("/api/generate", json!({"model": "llama", "prompt": long})),
        (
            "/api/chat",
            json!({"model": "llama", "messages": [{"role": "user", "content": long}]}),
        ),
        ("/api/embed", json!({"model": "llama", "input": [long]})),
        (
            "/v1/completions",
            json!({"model": "llama", "prompt": "a", "suffix": long}),
        ),
        ("/v1/embeddings", json!({"model": "llama", "input": long})),
    ] {
        let r = post(&gw, path, ALL, &body);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_prompt_too_long(&dialect_message(path, &r));
    }
    assert_eq!(upstream_counts(&fake), (0, 0, 0));
    // Unknown routes name the method and path.
    let r = post(&gw, "/v1/xyz", ALL, &json!({}));
    assert_eq!(r.status, 404);
    assert_eq!(r.error_message(), "Invalid URL (POST /v1/xyz)");
    let r = get(&gw, "/api/xyz", ALL);
    assert_eq!(r.status, 404);
    assert_eq!(
        dialect_message("/api/xyz", &r),
        "Invalid URL (GET /api/xyz)"
    );
    // An unknown model.
    let r = post(
        &gw,
        "/api/chat",
        ALL,
        &json!({"model": "nope", "messages": []}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(dialect_message("/api/chat", &r), "model 'nope' not found");
}

#[test]
fn ollama_down_or_too_old_is_said_in_each_dialect() {
    let fake = Fake::start(&["--missing", "/v1/completions"]);
    let policy = format!("{POLICY}upstream: {{timeout_seconds: 0.5}}\n");
    let gw = Gateway::start(&policy, &fake.url());
    let r = post(
        &gw,
        "/v1/completions",
        ALL,
        &json!({"model": "llama", "prompt": "a"}),
    );
    assert_eq!(r.status, 501, "{}", r.text());
    assert!(
        r.error_message().contains("needs Ollama 0.2.0 or newer"),
        "{}",
        r.text()
    );
    let mut fake = fake;
    fake.kill();
    let r = post(
        &gw,
        "/api/chat",
        ALL,
        &json!({"model": "llama", "messages": [{"role": "user", "content": "a"}]}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let msg = dialect_message("/api/chat", &r);
    assert!(msg.contains("not reachable"), "{msg}");
    assert_no_internals(&r.text(), &fake.addr.to_string());
    let r = post(
        &gw,
        "/v1/embeddings",
        ALL,
        &json!({"model": "llama", "input": "a"}),
    );
    assert_eq!(r.status, 503);
    assert!(r.error_message().contains("not reachable"));
}

#[test]
fn model_management_needs_an_admin_key_and_then_reaches_ollama() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = post(&gw, "/api/pull", ALL, &json!({"model": "qwen3:32b"}));
    assert_eq!(r.status, 403);
    assert!(dialect_message("/api/pull", &r).contains("admin"));
    let auth = bearer(ALL);
    let r = request(
        gw.addr,
        "DELETE",
        "/api/delete",
        &[("Authorization", &auth)],
        Some(br#"{"model":"x"}"#),
    );
    assert_eq!(r.status, 403);
    assert_eq!(upstream_counts(&fake).2, 0);

    let r = post(&gw, "/api/pull", ADMIN, &json!({"model": "qwen3:32b"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ndjson(&r).last().unwrap()["status"], "success");
    let auth = bearer(ADMIN);
    let r = request(
        gw.addr,
        "DELETE",
        "/api/delete",
        &[("Authorization", &auth)],
        Some(br#"{"model":"x"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_counts(&fake).2, 2);
    assert_eq!(fake.stats()["last_model"]["method"], "DELETE");
}

#[test]
fn responses_and_messages_stream_and_refuse_in_their_dialects() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = post(
        &gw,
        "/v1/responses",
        ALL,
        &json!({"model": "qwen3:32b", "input": "two words",
        "instructions": "Be brief.", "store": false}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "qwen3:32b");
    assert_eq!(
        r.json()["output"][0]["content"][0]["text"],
        "You said: two words"
    );
    let r = post(
        &gw,
        "/v1/responses",
        ALL,
        &json!({"model": "qwen3:32b", "input": "a b", "stream": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("event: response.completed\n"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("registry.internal"));

    // Anthropic's client puts the key in x-api-key.
    let msg = json!({"model": "qwen3:32b", "max_tokens": 50, "stream": true,
                     "messages": [{"role": "user", "content": "hi there"}]});
    let r = request(
        gw.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", ALL), ("anthropic-version", "2023-06-01")],
        Some(msg.to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("event: message_stop\n"), "{}", r.text());
    assert!(r.text().contains("\"model\":\"qwen3:32b\""));
    let r = request(
        gw.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", LLAMA)],
        Some(msg.to_string().as_bytes()),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["error"]["type"],
        "permission_error",
        "{}",
        r.text()
    );
    let r = request(
        gw.addr,
        "POST",
        "/v1/messages",
        &[],
        Some(msg.to_string().as_bytes()),
    );
    assert_eq!(r.status, 401);
    assert_eq!(dialect_message("/v1/messages", &r), "invalid api key");
    assert_eq!(r.json()["error"]["type"], "authentication_error");

    let audit = wait_for(Duration::from_secs(5), "audit lines", || {
        let l = gw.audit_lines();
        (l.len() >= 5).then_some(l)
    });
    let metered: Vec<&Value> = audit.iter().filter(|l| l["status"] == 200).collect();
    assert_eq!(metered.len(), 3);
    for l in metered {
        assert!(
            l["completion_tokens"].as_u64().unwrap_or(0) > 0,
            "not metered: {l}"
        );
        assert!(
            l["prompt_tokens"].as_u64().unwrap_or(0) > 0,
            "not metered: {l}"
        );
    }
}

fn python() -> PathBuf {
    let p = std::env::var("QWEN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python")
        });
    let ok = Command::new(&p)
        .args(["-c", "import openai, ollama, anthropic"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} lacks the client libraries; scripts/test.sh installs them",
        p.display()
    );
    p
}

/// What `tests/e2e/clients.py MODE` printed for model qwen3:32b (and `extra` arguments),
/// succeeded or not.
fn client_said(gw: &Gateway, mode: &str, key: &str, extra: &[&str]) -> Value {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/clients.py"))
        .args([&format!("http://{}", gw.addr), key, mode, "qwen3:32b"])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{mode}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

fn client(gw: &Gateway, mode: &str, key: &str) -> Value {
    let v = client_said(gw, mode, key, &[]);
    assert_eq!(v["ok"], true, "{mode}: {v}");
    v
}

#[test]
fn real_clients_unmodified_through_the_gateway() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());

    let o = client(&gw, "ollama", ALL);
    assert_eq!(o["chat"]["content"], "You said: hello ollama", "{o}");
    assert_eq!(o["chat"]["model"], "qwen3:32b");
    assert_eq!(o["stream"]["content"], "You said: stream please");
    assert_eq!(o["stream"]["done"], true);
    assert_eq!(o["list"], json!(["llama", "qwen3:32b"]));
    assert_eq!(o["embed"], json!({"count": 2, "dims": 8}));
    assert_eq!(o["generate"]["response"], "You said: complete this");
    assert_eq!(o["ps"], json!(["llama", "qwen3:32b"]));

    let o = client(&gw, "openai", ALL);
    assert_eq!(
        o["embeddings"],
        json!({"count": 2, "dims": 8, "model": "qwen3:32b"}),
        "{o}"
    );
    assert_eq!(o["completions"]["text"], "You said: say it");
    assert_eq!(o["completions"]["model"], "qwen3:32b");
    assert_eq!(o["completions_stream"], "You said: stream it");
    assert_eq!(o["responses"]["text"], "You said: respond to me");
    assert_eq!(o["responses"]["model"], "qwen3:32b");
    assert_eq!(o["responses_stream"]["text"], "You said: stream a response");
    assert!(o["responses_stream"]["output_tokens"].as_u64().unwrap_or(0) > 0);

    let o = client(&gw, "anthropic", ALL);
    assert_eq!(o["messages"]["text"], "You said: hello claude", "{o}");
    assert_eq!(o["messages"]["model"], "qwen3:32b");
    assert_eq!(o["messages"]["stop"], "end_turn");
    assert_eq!(o["messages_stream"]["text"], "You said: stream a message");
    assert!(o["messages_stream"]["output_tokens"].as_u64().unwrap_or(0) > 0);

    // The same clients with a key that may use only "llama" see qwen3:32b refused.
    let v = client_said(&gw, "anthropic", LLAMA, &[]);
    assert_eq!(v["ok"], false);
    assert_eq!(v["status"], 403, "{v}");
}

/// What coding agents (Claude Code, Codex, OpenClaw) rely on, through the official SDKs: a
/// wrong key is not retried, `count_tokens` and Anthropic's model list answer, a Responses
/// stream that fails shows the gateway's message in the SDK's helper, and a prompt over the
/// limit reads as a context overflow.
#[test]
fn agents_get_answers_they_understand() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    // 200,000 characters is the default prompt limit: 45,000 five-character words are over it.
    let o = client_said(&gw, "agents", ALL, &["45000"]);
    assert_eq!(o["ok"], true, "{o}");
    // max_retries=3 in both SDKs, one request each: x-should-retry: false was honoured.
    for sdk in ["anthropic", "openai"] {
        assert_eq!(
            o[format!("wrong_key_{sdk}")],
            json!({"status": 401, "requests": 1}),
            "{o}"
        );
    }
    // "count the tokens of these words please" + "Be brief.": 47 characters, 3 per token.
    assert_eq!(o["count_tokens"], 16, "{o}");
    assert_eq!(
        o["anthropic_models"][0],
        json!({"id": "llama", "type": "model", "display_name": "llama"}),
        "{o}"
    );
    let failed = &o["responses_failed"];
    assert_eq!(
        failed["message"], "the model server failed to answer, please try again",
        "{o}"
    );
    // The stand-in sent events 0..=4; ours continues the numbering.
    assert_eq!(failed["sequence_number"], 5, "{o}");
    assert_eq!(
        o["responses_events"].as_array().and_then(|e| e.last()),
        Some(&json!("response.failed"))
    );
    assert_eq!(o["too_long"]["code"], "context_length_exceeded", "{o}");
    let message = o["too_long"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("prompt is too long") && message.contains("maximum context length"),
        "{message}"
    );
}

#[test]
fn a_native_stream_that_fails_ends_with_an_ndjson_error_line() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = post(
        &gw,
        "/api/chat",
        ALL,
        &json!({"model": "test/error-mid",
        "messages": [{"role": "user", "content": "a b c"}]}),
    );
    assert_eq!(r.status, 200);
    let lines = ndjson(&r);
    let last = lines.last().unwrap();
    assert_eq!(
        last["error"],
        "the model server failed to answer, please try again",
        "{}",
        r.text()
    );
    assert!(!lines.iter().any(|l| l["done"] == true));
    // Ollama's own error text (a path, a library) never reaches the client.
    assert_no_internals(&r.text(), &fake.addr.to_string());
    assert!(!r.text().contains("/srv/ollama"));
}
