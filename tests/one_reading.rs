//! Differential tests of the body guards (issue 19): what the gateway checked must be what
//! Ollama acts on. The backend here is `tests/ollama-go`, a stand-in Ollama written in Go that
//! decodes each route's body with Go's own `encoding/json` into request structs shaped like
//! Ollama's and answers with what it read (model, num_ctx, output limit, keep_alive, text
//! characters). Each attack is sent through the real gateway; it must either be refused, or
//! be read by Go within the policy: the key's model, the clamps, the prompt limit.
//! Bodies are raw strings: a JSON library would drop the duplicate keys under test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::useless_format
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const POLICY: &str = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: false}
auth:
  enabled: true
  keys:
    - {id: user, key: "user-key-000001", models: ["qwen3:32b"]}
models:
  "qwen3:32b": "qwen3:32b-q4"
  "secret-70b": "secret-70b:latest"
limits:
  max_prompt_chars: 1000
  max_num_ctx: 8192
  max_output_tokens: 512
  max_keep_alive_seconds: 1800
  max_images: 2
  max_image_bytes: 3000
  max_embed_inputs: 100
audit: {dir: "{DIR}/audit"}
"#;

const KEY: &str = "user-key-000001";
const ALLOWED_UPSTREAM: &str = "qwen3:32b-q4";

/// Builds the Go stand-in once (Debian's golang-go; scripts/test.sh installs it).
fn ollama_go() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ollama-go");
            let out = Path::new(GATEWAY).with_file_name("ollama-go");
            let o = Command::new(tool("go"))
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&src)
                .env("GOFLAGS", "-mod=mod")
                .env("CGO_ENABLED", "0")
                .output()
                .expect("go build");
            assert!(
                o.status.success(),
                "go build: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            out
        })
        .clone()
}

struct GoOllama {
    _helper: Helper,
    url: String,
}

impl GoOllama {
    fn start() -> GoOllama {
        let port = free_port();
        let helper = Helper::spawn(
            Command::new(ollama_go())
                .arg(format!("127.0.0.1:{port}"))
                .arg(format!("{ALLOWED_UPSTREAM},secret-70b:latest")),
            port,
            "ollama-go to listen",
        );
        GoOllama {
            url: format!("http://{}", helper.addr),
            _helper: helper,
        }
    }
}

fn send(gw: &Gateway, path: &str, body: &str) -> Response {
    post_json_bytes(gw, path, KEY, body.as_bytes())
}

/// Seconds of a keep_alive as Ollama reads it (a number of seconds or a Go duration).
fn keep_alive_secs(v: &Value) -> Option<f64> {
    if let Some(n) = v.as_f64() {
        return Some(n);
    }
    let s = v.as_str()?;
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    })
}

/// The promise: refused, or read by Ollama within the policy.
fn holds(path: &str, body: &str, r: &Response) -> Result<(), String> {
    let shown: String = body.chars().take(160).collect();
    let what = format!("{path} {shown}");
    match r.status {
        400 | 403 | 404 => return Ok(()),
        200 => {}
        s => return Err(format!("{what}: status {s}: {}", r.text())),
    }
    let read = &r.json()["read"];
    let fail = |why: &str| Err(format!("{what}: {why}; Ollama read {read}"));
    if read["ran_model"] != ALLOWED_UPSTREAM {
        return fail("a model the key may not use ran");
    }
    if read["num_ctx"].as_u64().is_some_and(|n| n > 8192) || read["num_ctx"].as_i64() == Some(-1) {
        return fail("num_ctx over the clamp");
    }
    let generates = !path.contains("embed");
    if generates {
        match read["num_predict"].as_i64() {
            Some(n) if (1..=512).contains(&n) => {}
            _ => return fail("output limit missing or over the clamp"),
        }
    }
    if !read["keep_alive"].is_null() {
        match keep_alive_secs(&read["keep_alive"]) {
            Some(s) if s > 0.0 && s <= 1800.0 => {}
            _ => return fail("keep_alive outside the clamp"),
        }
    }
    // A native `context` token id counts as the characters of one token (3).
    let read_chars =
        read["text_chars"].as_u64().unwrap_or(0) + 3 * read["context"].as_u64().unwrap_or(0);
    if read_chars > 1000 {
        return fail("text past the prompt limit");
    }
    if read["images"].as_u64().unwrap_or(0) > 2 {
        return fail("images past max_images");
    }
    if read["largest_image"].as_u64().unwrap_or(0) / 4 * 3 > 3000 {
        return fail("an image past max_image_bytes");
    }
    if read["inputs"].as_u64().unwrap_or(0) > 100 {
        return fail("inputs past max_embed_inputs");
    }
    for o in read["options"].as_array().into_iter().flatten() {
        // The default allowed options, and num_ctx (the clamp's own).
        let allowed = qwen_gateway::limits::ollama_options::OptionSet::SAMPLING;
        if !o
            .as_str()
            .is_some_and(|o| o == "num_ctx" || allowed.contains(o))
        {
            return fail("a runner option a non-admin key may not set");
        }
    }
    Ok(())
}

/// Per route: a body the guards must pass as it is, and the field that carries its text.
const ROUTES: &[(&str, &str)] = &[
    (
        "/api/chat",
        r#""stream":false,"messages":[{"role":"user","content":"hello"}]"#,
    ),
    ("/api/generate", r#""stream":false,"prompt":"hello""#),
    ("/api/embed", r#""input":["hello"]"#),
    ("/api/embeddings", r#""prompt":"hello""#),
    ("/v1/completions", r#""prompt":"hello","max_tokens":100"#),
    ("/v1/embeddings", r#""input":"hello""#),
    (
        "/v1/responses",
        r#""input":"hello","max_output_tokens":100"#,
    ),
    (
        "/v1/messages",
        r#""max_tokens":100,"messages":[{"role":"user","content":"hello"}]"#,
    ),
];

/// The walks around the guards found by the sweep, per route: a second model under a folded
/// or repeated key, folded options and keep_alive, text under folded field names.
fn attacks(path: &str, base: &str) -> Vec<String> {
    let long = "x".repeat(5000);
    let mut out = vec![
        format!(r#"{{"model":"qwen3:32b",{base},"MODEL":"secret-70b:latest"}}"#),
        format!(r#"{{"model":"qwen3:32b",{base},"Model":"secret-70b:latest"}}"#),
        format!(r#"{{"model":"qwen3:32b",{base},"model":"secret-70b:latest"}}"#),
        format!(r#"{{"model":"qwen3:32b",{base},"modeK":"x","MODEL":"secret-70b:latest"}}"#),
    ];
    let native = path.starts_with("/api/");
    if native {
        out.extend([
            format!(r#"{{"model":"qwen3:32b",{base},"Keep_Alive":-1}}"#),
            format!(r#"{{"model":"qwen3:32b",{base},"Keep_alive":0}}"#),
            format!(
                r#"{{"model":"qwen3:32b",{base},"optionſ":{{"num_ctx":131072,"num_predict":-1}}}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b",{base},"options":{{"num_ctx":131072,"num_predict":-1}},"options":{{"temperature":1}}}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b",{base},"OPTIONS":{{"num_ctx":131072}},"options":{{"num_predict":10}}}}"#
            ),
        ]);
    }
    let text_fields: &[&str] = match path {
        "/api/chat" => &[],
        "/api/generate" => &["PROMPT", "Suffix", "ſystem", "TEMPLATE"],
        "/api/embed" | "/v1/embeddings" => &["INPUT", "Input"],
        "/api/embeddings" => &["Prompt"],
        "/v1/completions" => &["PROMPT", "Suffix"],
        "/v1/responses" => &["Inſtructions", "INPUT"],
        "/v1/messages" => &["ſystem", "SYSTEM"],
        _ => &[],
    };
    for f in text_fields {
        out.push(format!(r#"{{"model":"qwen3:32b",{base},"{f}":"{long}"}}"#));
    }
    let big_image = "QUJD".repeat(1500);
    match path {
        "/api/chat" => out.extend([
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"tool","content":"ok","tool_call_id":"{long}"}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"assistant","content":"","tool_calls":[{{"function":{{"name":"f","arguments":{{"images":"{long}"}}}}}}]}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"user","content":"hi","images":["QUJD","QUJD","QUJD"]}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"user","content":"hi","images":["{big_image}"]}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"user","content":"hi"}}],"options":{{"num_gpu":0,"num_thread":1,"use_mmap":false}}}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"meſſages":[{{"role":"user","content":"{long}"}}],"messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"user","content":"hi","Content":"{long}"}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"user","content":"hi","THINKING":"{long}"}}]}}"#
            ),
        ]),
        "/api/generate" => out.extend([
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"prompt":"hi","context":[{}]}}"#,
                vec!["1"; 2000].join(",")
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"prompt":"hi","images":["QUJD","QUJD","QUJD"]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","stream":false,"prompt":"hi","options":{{"num_batch":1}}}}"#
            ),
        ]),
        "/api/embed" | "/v1/embeddings" => out.push(format!(
            r#"{{"model":"qwen3:32b","input":[{}]}}"#,
            vec![r#""""#; 500].join(",")
        )),
        "/v1/completions" => out.push(format!(
            r#"{{"model":"qwen3:32b","prompt":"hi","max_tokens":100,"MAX_TOKENS":100000}}"#
        )),
        "/v1/responses" => out.extend([
            format!(
                r#"{{"model":"qwen3:32b","input":"hi","max_output_tokens":100,"Max_Output_Tokens":100000}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","max_output_tokens":100,"input":[{{"type":"function_call_output","call_id":"c","id":"{long}","output":"ok"}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","max_output_tokens":100,"input":[{{"type":"message","role":"user","content":[{}]}}]}}"#,
                [r#"{"type":"input_image","detail":"auto","image_url":"data:image/png;base64,QUJD"}"#; 3].join(",")
            ),
        ]),
        "/v1/messages" => out.extend([
            format!(
                r#"{{"model":"qwen3:32b","max_tokens":100,"MAX_TOKENS":100000,"messages":[{{"role":"user","content":"hi"}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","max_tokens":100,"messages":[{{"role":"user","content":"hi"}}],"Messages":[{{"role":"user","content":"{long}"}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","max_tokens":100,"messages":[{{"role":"user","Content":"{long}","content":"hi"}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","max_tokens":100,"messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"{long}","name":"f","input":{{}}}}]}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","max_tokens":100,"messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"t","name":"f","input":{{"source":"{long}"}}}}]}}]}}"#
            ),
            format!(
                r#"{{"model":"qwen3:32b","max_tokens":100,"messages":[{{"role":"user","content":[{}]}}]}}"#,
                [r#"{"type":"image","source":{"type":"base64","media_type":"image/png","data":"QUJD"}}"#; 3].join(",")
            ),
        ]),
        _ => {}
    }
    out
}

#[test]
fn every_guard_agrees_with_what_ollama_reads_on_every_forwarded_route() {
    let go = GoOllama::start();
    let gw = Gateway::start(POLICY, &go.url);
    let mut broken = Vec::new();
    for (path, base) in ROUTES {
        // The control: a plain body passes, and Go reads it as the gateway did (so a broken
        // stand-in cannot make the attacks below pass).
        let body = format!(r#"{{"model":"qwen3:32b",{base}}}"#);
        let r = send(&gw, path, &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let read = &r.json()["read"];
        assert_eq!(read["ran_model"], ALLOWED_UPSTREAM, "{path}: {read}");
        assert_eq!(read["text_chars"], 5, "{path}: {read}");
        for attack in attacks(path, base) {
            let r = send(&gw, path, &attack);
            if let Err(e) = holds(path, &attack, &r) {
                broken.push(e);
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} walk(s) around the guards:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// The folded spellings are refused with a 400 in the route's own dialect, naming the field,
/// and nothing reaches Ollama.
#[test]
fn a_folded_field_is_refused_in_the_routes_dialect() {
    let go = GoOllama::start();
    let gw = Gateway::start(POLICY, &go.url);
    let r = send(
        &gw,
        "/api/chat",
        r#"{"model":"qwen3:32b","messages":[],"MODEL":"secret-70b:latest"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|m| m.contains("`model`")),
        "{}",
        r.text()
    );
    let r = send(
        &gw,
        "/v1/messages",
        r#"{"model":"qwen3:32b","max_tokens":10,"messages":[],"ſystem":"x"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error", "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`system`")),
        "{}",
        r.text()
    );
}

/// `limits.max_messages` holds on every route that carries a conversation (the sweep sent
/// 20,000 messages or input items through `/api/chat`, `/v1/messages`, `/v1/responses`).
#[test]
fn max_messages_holds_on_every_conversation_route() {
    let go = GoOllama::start();
    let policy = POLICY.replace(
        "  max_prompt_chars: 1000\n",
        "  max_prompt_chars: 1000\n  max_messages: 3\n",
    );
    let gw = Gateway::start(&policy, &go.url);
    let turns = |n: usize| {
        (0..n)
            .map(|_| r#"{"role":"user","content":"hi"}"#)
            .collect::<Vec<_>>()
            .join(",")
    };
    for (path, body) in [
        (
            "/api/chat",
            r#"{"model":"qwen3:32b","stream":false,"messages":[TURNS]}"#,
        ),
        (
            "/v1/messages",
            r#"{"model":"qwen3:32b","max_tokens":10,"messages":[TURNS]}"#,
        ),
        ("/v1/responses", r#"{"model":"qwen3:32b","input":[TURNS]}"#),
    ] {
        let r = send(&gw, path, &body.replace("TURNS", &turns(3)));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["read"]["messages"], 3, "{path}");
        let r = send(&gw, path, &body.replace("TURNS", &turns(4)));
        assert_eq!(r.status, 400, "{path}: {}", r.text());
    }
}

/// A context of a request's own reloads the model for everyone: where the model has a
/// configured `num_ctx`, a non-admin request gets that one, whatever it asks (issue 19).
#[test]
fn the_models_configured_context_is_what_ollama_reads() {
    let go = GoOllama::start();
    let policy = POLICY.replace(
        r#"  "qwen3:32b": "qwen3:32b-q4""#,
        r#"  "qwen3:32b": {name: "qwen3:32b-q4", num_ctx: 4096}"#,
    );
    let gw = Gateway::start(&policy, &go.url);
    for asked in [
        "",
        r#","options":{"num_ctx":8000}"#,
        r#","options":{"num_ctx":2048}"#,
    ] {
        let body = format!(
            r#"{{"model":"qwen3:32b","stream":false,"messages":[{{"role":"user","content":"hi"}}]{asked}}}"#
        );
        let r = send(&gw, "/api/chat", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["read"]["num_ctx"], 4096, "{body}");
        if !asked.is_empty() {
            assert!(
                r.header("x-qwen-gateway-clamped")
                    .is_some_and(|h| h.contains("num_ctx=4096 (the model's)")),
                "{body}"
            );
        }
    }
}
