//! Gateway core: translation both ways, real streaming, live reload by every kind of file
//! replacement and by SIGHUP, the error envelope, and the CLI. Real binaries, real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const POLICY: &str = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: false}
auth:
  enabled: true
  keys:
    - {id: team-a, key: "key-aaaa-1111"}
models:
  "qwen3:32b": "registry.internal/qwen3:32b"
  "test/delay-second:500": "test/delay-second:500"
  "test/tools": "test/tools"
  "test/think": "test/think"
audit: {dir: "{DIR}/audit"}
"#;

fn chat(gw: &Gateway, body: Value) -> Response {
    gw.chat("key-aaaa-1111", &body)
}

#[test]
fn non_stream_translation_both_ways() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("Authorization", "Bearer key-aaaa-1111"),
            ("Origin", "https://evil.example"),
            ("X-Request-Id", "req-abc-123"),
        ],
        Some(
            json!({"model":"qwen3:32b","max_tokens":50,"max_completion_tokens":40,"temperature":0.2,
                "stop":"###","response_format":{"type":"json_object"},"seed":3,
                "messages":[{"role":"system","content":"Be brief."},
                            {"role":"user","content":[{"type":"text","text":"Capital of France?"}]}]})
            .to_string()
            .as_bytes(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("req-abc-123"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["model"], "qwen3:32b",
        "public name, never the upstream one"
    );
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "You said: Capital of France?"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    let text = r.text();
    for leaked in [
        "total_duration",
        "load_duration",
        "created_at",
        "registry.internal",
    ] {
        assert!(!text.contains(leaked), "{leaked} leaked: {text}");
    }

    // What Ollama received: native shape, upstream name, mapped options, no client headers.
    let st = fake.stats();
    let sent = &st["last_chat"];
    assert_eq!(sent["model"], "registry.internal/qwen3:32b");
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["format"], "json");
    assert_eq!(
        sent["options"],
        json!({"num_predict":40,"temperature":0.2,"stop":["###"],"seed":3})
    );
    assert_eq!(
        sent["messages"],
        json!([{"role":"system","content":"Be brief."},{"role":"user","content":"Capital of France?"}])
    );
    let hdrs = &st["last_headers"];
    assert_eq!(hdrs["x-request-id"], "req-abc-123");
    assert!(hdrs.get("origin").is_none(), "Origin forwarded: {hdrs}");
    assert!(hdrs.get("authorization").is_none(), "key forwarded: {hdrs}");
    assert!(hdrs.get("x-api-key").is_none());
    assert_eq!(hdrs["host"], fake.addr.to_string());
}

#[test]
fn tools_and_reasoning_round_trip() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let tools = json!([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]);
    // First turn: the model calls the tool.
    let r = chat(
        &gw,
        json!({"model":"test/tools","tools":tools,"messages":[{"role":"user","content":"weather?"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city":"Tokyo"})
    );
    // Second turn, with the tool's result: the model answers in text (an agent loop ends).
    let r = chat(
        &gw,
        json!({"model":"test/tools","tools":tools,
               "messages":[{"role":"user","content":"weather?"},
                 {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                 {"role":"tool","tool_call_id":"call_1","content":"rain"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "It is sunny in Tokyo."
    );
    let sent = &fake.stats()["last_chat"];
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"],
        json!({"city":"Paris"})
    );
    assert_eq!(sent["messages"][2]["tool_name"], "get_weather");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    let r = chat(
        &gw,
        json!({"model":"test/think","stream":true,"messages":[{"role":"user","content":"hm"}]}),
    );
    let events = r.events();
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(
        first["choices"][0]["delta"]["reasoning_content"],
        "Let me think."
    );
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
}

#[test]
fn streaming_is_real_streaming() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = chat(
        &gw,
        json!({"model":"test/delay-second:500","stream":true,"stream_options":{"include_usage":true},
               "messages":[{"role":"user","content":"one two three"}]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("x-accel-buffering"), Some("no"));
    // The first piece must arrive before the stand-in's 500 ms delay of the second is over.
    let (first_at, first) = &r.pieces[0];
    let last_at = r.pieces.last().unwrap().0;
    assert!(
        String::from_utf8_lossy(first).contains("You "),
        "first piece: {:?}",
        String::from_utf8_lossy(first)
    );
    assert!(
        first_at.duration_since(r.started) < Duration::from_millis(450),
        "first chunk after {:?}",
        first_at.duration_since(r.started)
    );
    assert!(last_at.duration_since(*first_at) >= Duration::from_millis(450));

    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks.iter().all(|c| c["id"] == id), "one id per stream");
    assert!(chunks.iter().all(|c| c["model"] == "test/delay-second:500"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "You said: one two three");
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn upstream_connections_are_reused_after_streams() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    for stream in [true, false, true, true, false, true, true, true] {
        let r = chat(
            &gw,
            json!({"model":"qwen3:32b","stream":stream,"messages":[{"role":"user","content":"a b"}]}),
        );
        assert_eq!(r.status, 200);
    }
    // One pooled connection per gateway worker (2 in tests), the model refresher's, and this
    // stats call's own; a connection per stream would make it at least 5 + 2.
    let conns = fake.stats()["connections"].as_u64().unwrap();
    assert!(
        conns <= 4,
        "{conns} upstream connections for 8 requests (5 streamed)"
    );
}

#[test]
fn models_list_shows_public_names() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let r = request(
        gw.addr,
        "GET",
        "/v1/models",
        &[("X-Api-Key", "key-aaaa-1111")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(
        r.model_ids(),
        vec!["qwen3:32b"],
        "only aliased models, under public names"
    );
    assert_eq!(v["data"][0]["object"], "model");
}

#[test]
fn errors_use_the_openai_envelope() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let key = [("X-Api-Key", "key-aaaa-1111")];
    let cases: Vec<(Response, u16)> = vec![
        (request(gw.addr, "GET", "/nope", &[], None), 404),
        (
            request(gw.addr, "GET", "/v1/chat/completions", &key, None),
            405,
        ),
        (
            request(
                gw.addr,
                "POST",
                "/v1/chat/completions",
                &key,
                Some(b"{not json"),
            ),
            400,
        ),
        (
            request(gw.addr, "POST", "/v1/chat/completions", &key, Some(b"")),
            400,
        ),
        (
            request(
                gw.addr,
                "POST",
                "/v1/chat/completions",
                &key,
                Some(br#"{"model":"qwen3:32b"}"#),
            ),
            400,
        ),
        (
            request(
                gw.addr,
                "POST",
                "/v1/chat/completions",
                &key,
                Some(br#"{"model":"qwen3:32b","messages":"hi"}"#),
            ),
            400,
        ),
        (
            request(
                gw.addr,
                "POST",
                "/v1/chat/completions",
                &key,
                Some(br#"{"model":"qwen3:32b","messages":[]}"#),
            ),
            400,
        ),
        (
            request(
                gw.addr,
                "POST",
                "/v1/chat/completions",
                &key,
                Some(hello("unknown-model").to_string().as_bytes()),
            ),
            404,
        ),
    ];
    for (r, want) in cases {
        assert_eq!(r.status, want, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let msg = r.error_message();
        assert_no_internals(&msg, &fake.addr.to_string());
    }
    let r = request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &key,
        Some(br#"{"model":"qwen3:32b"}"#),
    );
    assert!(
        r.error_message().contains("messages"),
        "names the field: {}",
        r.text()
    );
    assert_eq!(
        fake.chat_requests(),
        0,
        "invalid requests never reach Ollama"
    );
}

// ---- live reload ----

const RELOAD_A: &str = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: false}
auth: {enabled: true, keys: [{id: old, key: "old-key-0000"}]}
"#;
const RELOAD_B: &str = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: false}
auth: {enabled: true, keys: [{id: new, key: "new-key-1111"}]}
"#;

fn models_status(gw: &Gateway, key: &str) -> u16 {
    request(gw.addr, "GET", "/v1/models", &[("X-Api-Key", key)], None).status
}

/// Waits until the reload is logged (polling with the new key would spend the address's
/// failed-key budget while the reload settles), then checks that only the new key works.
fn assert_switched_to_b(gw: &Gateway) {
    gw.wait_log("Policy reloaded.", 0);
    assert_eq!(models_status(gw, "new-key-1111"), 200);
    assert_eq!(models_status(gw, "old-key-0000"), 401);
}

fn start_a() -> (Fake, Gateway) {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(RELOAD_A, &fake.url());
    assert_eq!(models_status(&gw, "old-key-0000"), 200);
    (fake, gw)
}

#[test]
fn reload_by_in_place_write() {
    let (fake, gw) = start_a();
    std::fs::write(
        &gw.policy_path,
        Gateway::render(RELOAD_B, &fake.url(), gw.dir.path()),
    )
    .unwrap();
    assert_switched_to_b(&gw);
    gw.wait_log("Policy reloaded.", 0);
    assert!(gw.stderr_text().contains("key added: new"));
    assert!(!gw.stderr_text().contains("new-key-1111"), "key in the log");
}

#[test]
fn reload_by_rename_over() {
    let (fake, gw) = start_a();
    let tmp = gw.dir.path().join(".policy.yaml.swp");
    std::fs::write(&tmp, Gateway::render(RELOAD_B, &fake.url(), gw.dir.path())).unwrap();
    std::fs::rename(&tmp, &gw.policy_path).unwrap();
    assert_switched_to_b(&gw);
    // A complete file moved into place is read at once, without the settle time.
    assert!(
        gw.stderr_text().contains("trigger=\"file renamed over\""),
        "{}",
        gw.stderr_text()
    );
}

#[test]
fn reload_by_delete_and_recreate() {
    let (fake, gw) = start_a();
    std::fs::remove_file(&gw.policy_path).unwrap();
    // While the file is gone, the running policy stays in force.
    assert_eq!(models_status(&gw, "old-key-0000"), 200);
    std::fs::write(
        &gw.policy_path,
        Gateway::render(RELOAD_B, &fake.url(), gw.dir.path()),
    )
    .unwrap();
    assert_switched_to_b(&gw);
}

#[test]
fn reload_by_kubernetes_symlink_swap() {
    // policy.yaml -> ..data/policy.yaml, ..data -> ..v1; the update swaps ..data to ..v2.
    let fake = Fake::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(
        d.join("..v1/policy.yaml"),
        Gateway::render(RELOAD_A, &fake.url(), d),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", d.join("policy.yaml")).unwrap();
    let path = d.join("policy.yaml");
    let gw = Gateway::spawn(dir, path, &[]);
    assert_eq!(models_status(&gw, "old-key-0000"), 200);

    let d = gw.dir.path();
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(
        d.join("..v2/policy.yaml"),
        Gateway::render(RELOAD_B, &fake.url(), d),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..v1")).unwrap();
    assert_switched_to_b(&gw);
}

const RELOAD_C: &str = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: false}
auth: {enabled: true, keys: [{id: third, key: "third-key-2222"}]}
"#;

/// The policy is a symlink to a file in another directory; the symlink is re-pointed to a
/// third directory, and later edits there (in place) must still be seen: the watcher moves
/// to the new target's directory.
#[test]
fn watcher_follows_a_symlink_re_pointed_to_another_directory() {
    let fake = Fake::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["a", "b", "conf"] {
        std::fs::create_dir(d.join(sub)).unwrap();
    }
    std::fs::write(
        d.join("a/policy.yaml"),
        Gateway::render(RELOAD_A, &fake.url(), d),
    )
    .unwrap();
    std::os::unix::fs::symlink(d.join("a/policy.yaml"), d.join("conf/policy.yaml")).unwrap();
    let path = d.join("conf/policy.yaml");
    let gw = Gateway::spawn(dir, path, &[]);
    assert_eq!(models_status(&gw, "old-key-0000"), 200);
    let d = gw.dir.path();
    // Re-point: a new symlink renamed over the old one.
    std::fs::write(
        d.join("b/policy.yaml"),
        Gateway::render(RELOAD_B, &fake.url(), d),
    )
    .unwrap();
    std::os::unix::fs::symlink(d.join("b/policy.yaml"), d.join("conf/.policy.tmp")).unwrap();
    std::fs::rename(d.join("conf/.policy.tmp"), d.join("conf/policy.yaml")).unwrap();
    assert_switched_to_b(&gw);
    gw.wait_log("Policy watcher re-armed", 0);
    // An in-place edit in the new directory: seen only by a watch on b/.
    let mark = gw.log_len();
    std::fs::write(
        d.join("b/policy.yaml"),
        Gateway::render(RELOAD_C, &fake.url(), d),
    )
    .unwrap();
    gw.wait_log("Policy reloaded.", mark);
    assert_eq!(models_status(&gw, "third-key-2222"), 200);
    // The old directory no longer matters.
    let mark = gw.log_len();
    std::fs::write(d.join("a/policy.yaml"), "garbage: [").unwrap();
    std::fs::write(
        d.join("b/policy.yaml"),
        Gateway::render(RELOAD_B, &fake.url(), d),
    )
    .unwrap();
    gw.wait_log("Policy reloaded.", mark);
    assert!(
        !gw.stderr_text().contains("Policy reload rejected"),
        "the old target's directory is still watched"
    );
}

/// The policy's directory is removed and re-created (configuration management does this): a
/// watch on the old directory hears nothing, so the watcher re-arms itself.
#[test]
fn watcher_re_arms_after_the_directory_is_removed_and_re_created() {
    let fake = Fake::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(
        conf.join("policy.yaml"),
        Gateway::render(RELOAD_A, &fake.url(), dir.path()),
    )
    .unwrap();
    let gw = Gateway::spawn(dir, conf.join("policy.yaml"), &[]);
    assert_eq!(models_status(&gw, "old-key-0000"), 200);
    std::fs::remove_dir_all(&conf).unwrap();
    // The running policy stays while the directory is gone.
    assert_eq!(models_status(&gw, "old-key-0000"), 200);
    let tmp = gw.dir.path().join("conf.new");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(
        tmp.join("policy.yaml"),
        Gateway::render(RELOAD_B, &fake.url(), gw.dir.path()),
    )
    .unwrap();
    std::fs::rename(&tmp, &conf).unwrap();
    assert_switched_to_b(&gw);
    // And the new directory is watched: a later edit applies.
    let mark = gw.log_len();
    std::fs::write(
        conf.join("policy.yaml"),
        Gateway::render(RELOAD_C, &fake.url(), gw.dir.path()),
    )
    .unwrap();
    gw.wait_log("Policy reloaded.", mark);
    assert_eq!(models_status(&gw, "third-key-2222"), 200);
}

#[test]
fn reload_by_sighup() {
    let fake = Fake::start(&[]);
    // No watcher: only the signal can apply the change.
    let gw = Gateway::start_with(RELOAD_A, &fake.url(), &["--no-watch"]);
    std::fs::write(
        &gw.policy_path,
        Gateway::render(RELOAD_B, &fake.url(), gw.dir.path()),
    )
    .unwrap();
    assert_eq!(
        models_status(&gw, "old-key-0000"),
        200,
        "not applied before the signal"
    );
    let mark = gw.log_len();
    gw.signal("HUP");
    gw.wait_log("trigger=\"SIGHUP\"", mark);
    assert_switched_to_b(&gw);
}

#[test]
fn invalid_file_keeps_the_running_policy() {
    let (fake, gw) = start_a();
    let bad_files = [
        "this: is: not: yaml: [".to_owned(),
        format!(
            "ollama_api: \"{}\"\nwhitelist: {{enabled: false}}\nrate_limit: {{enabled: false}}\nauth: {{enabled: true, keys: [{{id: new, key: new-key-1111}}]}}\nwhitelsit: {{}}\n",
            fake.url()
        ),
        format!(
            "ollama_api: \"{}\"\nwhitelist: {{enabled: false}}\nauth: {{enabled: true, keys: [{{id: new, key: new-key-1111}}]}}\nrate_limit: {{enabled: true, max_requests: 0}}\n",
            fake.url()
        ),
        String::new(),
    ];
    for (i, bad) in bad_files.iter().enumerate() {
        let mark = gw.log_len();
        std::fs::write(&gw.policy_path, bad).unwrap();
        gw.wait_log("Policy reload rejected", mark);
        assert_eq!(
            models_status(&gw, "old-key-0000"),
            200,
            "bad file {i} replaced the policy"
        );
        assert_eq!(models_status(&gw, "new-key-1111"), 401);
    }
    let log = gw.stderr_text();
    assert!(log.contains("whitelsit"), "the reason names the field");
    assert!(log.contains("rate_limit.max_requests"));
    // /readyz reports the failed reload.
    let r = request(gw.addr, "GET", "/readyz", &[], None);
    assert_eq!(r.json()["policy"]["last_reload_ok"], false);
    // A good file afterwards is applied.
    std::fs::write(
        &gw.policy_path,
        Gateway::render(RELOAD_B, &fake.url(), gw.dir.path()),
    )
    .unwrap();
    assert_switched_to_b(&gw);
    let r = request(gw.addr, "GET", "/readyz", &[], None);
    assert_eq!(r.json()["policy"]["last_reload_ok"], true);
}

#[test]
fn in_flight_stream_survives_a_reload() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let addr = gw.addr;
    let h = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("X-Api-Key", "key-aaaa-1111")],
            Some(json!({"model":"test/delay-second:500","stream":true,"messages":[{"role":"user","content":"a b c"}]}).to_string().as_bytes()),
        )
    });
    // Reload (revoking the key) once the stream is under way: it is then between its chunks.
    wait_for(Duration::from_secs(5), "stream to start", || {
        (fake.chat_requests() == 1).then_some(())
    });
    std::fs::write(
        &gw.policy_path,
        Gateway::render(RELOAD_B, &fake.url(), gw.dir.path()),
    )
    .unwrap();
    let r = h.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    wait_for(Duration::from_secs(5), "reload", || {
        (models_status(&gw, "new-key-1111") == 200).then_some(())
    });
}

// ---- CLI ----

#[test]
fn cli_check_hash_help_version() {
    let out = Command::new(GATEWAY)
        .args(["check", "--config", "policy/policy.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is valid") && text.contains("rate_limit"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "auth: {enabled: true, valid_keys: [\"sha256:123\"]}\nwhitelist: {enabled: false}\nrate_limit: {enabled: false}\n",
    )
    .unwrap();
    let out = Command::new(GATEWAY)
        .arg("check")
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.valid_keys[0]"));

    let out = Command::new(GATEWAY)
        .args(["hash-key", "prod-key-2024-qwen3"])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(line.starts_with("sha256:") && line.len() == 71, "{line}");
    let mut child = Command::new(GATEWAY)
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"prod-key-2024-qwen3\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        line,
        "stdin and argument agree"
    );

    for flag in ["--help", "--version"] {
        let out = Command::new(GATEWAY).arg(flag).output().unwrap();
        assert!(out.status.success());
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn startup_with_a_bad_policy_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    std::fs::write(&p, "listen: \"127.0.0.1:0\"\nratelimit: {}\n").unwrap();
    let started = Instant::now();
    let out = Command::new(GATEWAY).arg("-c").arg(&p).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ratelimit"));
    assert!(started.elapsed() < Duration::from_secs(5));
}
