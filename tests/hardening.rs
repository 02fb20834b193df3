//! Attacks on the gateway's promises, each kept as a test: policy files caught mid-write, files
//! that are not files, values that must not leak, hostile upstreams, vanishing clients, floods.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Not in the article's allowlist, and not a trusted proxy.
fn outsider() -> Option<IpAddr> {
    Some("127.0.0.2".parse().unwrap())
}

fn keyless_from_outsider(gw: &Gateway) -> u16 {
    request_from(
        outsider(),
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(hello("qwen3:32b").to_string().as_bytes()),
    )
    .status
}

fn rejected_reloads(gw: &Gateway) -> usize {
    gw.stderr_text().matches("Policy reload rejected").count()
}

fn readyz(gw: &Gateway) -> serde_json::Value {
    request(gw.addr, "GET", "/readyz", &[], None).json()
}

/// The article's policy, cut just before `auth:`: a save caught halfway.
fn first_half(full: &str) -> &str {
    &full[..full.find("auth:").unwrap()]
}

// ---- 1. reloads that can never weaken the guard ----

#[test]
fn a_half_written_policy_never_opens_the_door() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    assert_eq!(keyless_from_outsider(&gw), 403);
    let full = Gateway::render(article_policy(), &fake.url(), gw.dir.path());

    // The writer stops for as long as it likes after the first half.
    let mut f = std::fs::File::create(&gw.policy_path).unwrap();
    f.write_all(first_half(&full).as_bytes()).unwrap();
    f.flush().unwrap();
    wait_for(
        Duration::from_secs(10),
        "the half file to be refused",
        || (rejected_reloads(&gw) >= 1).then_some(()),
    );
    assert!(
        gw.stderr_text().contains("`auth` section is missing"),
        "{}",
        gw.stderr_text()
    );
    assert_eq!(
        keyless_from_outsider(&gw),
        403,
        "half a policy opened the door"
    );
    assert_eq!(gw.chat("", &hello("qwen3:32b")).status, 401);
    assert_eq!(readyz(&gw)["policy"]["last_reload_ok"], false);

    // The rest arrives: the whole file applies (same content as before: back to the
    // running policy, and /readyz no longer shows the error).
    f.write_all(&full.as_bytes()[first_half(&full).len()..])
        .unwrap();
    drop(f);
    wait_for(Duration::from_secs(10), "readyz to clear", || {
        (readyz(&gw)["policy"]["last_reload_ok"] == true).then_some(())
    });
    assert_eq!(gw.chat(KEY, &hello("qwen3:32b")).status, 200);
}

#[test]
fn a_save_in_quick_steps_is_applied_once_whole() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let full = Gateway::render(article_policy(), &fake.url(), gw.dir.path())
        .replace("prod-key-2024-qwen3", "rotated-key-2025-qwen3");
    // A writer that pauses 40 ms between two writes (longer than the watcher's debounce,
    // shorter than the settle time): the first half is never even evaluated.
    let mut f = std::fs::File::create(&gw.policy_path).unwrap();
    f.write_all(first_half(&full).as_bytes()).unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(40)); // the writer's pause, not a wait
    f.write_all(&full.as_bytes()[first_half(&full).len()..])
        .unwrap();
    drop(f);
    gw.wait_log("Policy reloaded.", 0);
    assert_eq!(rejected_reloads(&gw), 0, "{}", gw.stderr_text());
    assert_eq!(
        gw.chat("rotated-key-2025-qwen3", &hello("qwen3:32b"))
            .status,
        200
    );
    assert_eq!(gw.chat(KEY, &hello("qwen3:32b")).status, 401);
}

/// A save in place in two writes with a pause over the settle time (issue 19: cut before
/// `models:` the first part served every Ollama model; cut before `limits:` every limit went
/// back to its default). The first part loads, but it takes fields away: it waits for the
/// quiet time, and the rest arrives first. Every byte-prefix of the shipped policy is tried
/// the same way in `reload.rs`'s unit test.
#[test]
fn a_save_in_place_with_a_pause_never_applies_its_first_part() {
    let fake = Fake::start(&["--models", "qwen3:32b,secret-70b"]);
    let policy = format!(
        "{}limits: {{max_prompt_chars: 50}}\nmodels:\n  \"qwen3:32b\": \"qwen3:32b\"\n",
        article_policy()
    );
    let gw = Gateway::start(&policy, &fake.url());
    let full = Gateway::render(&policy, &fake.url(), gw.dir.path());
    let secret = || gw.chat(KEY, &hello("secret-70b")).status;
    let long = || {
        gw.chat(KEY, &json!({"model": "qwen3:32b", "messages": [{"role": "user", "content": "x".repeat(100)}]}))
            .status
    };
    assert_eq!((secret(), long()), (404, 400));
    for cut in ["models:", "limits:"] {
        let first = &full[..full.find(cut).unwrap()];
        let skip = gw.log_len();
        let mut f = std::fs::File::create(&gw.policy_path).unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.flush().unwrap();
        gw.wait_log("takes a field away", skip);
        // The writer's pause (the shape of the attack, not a wait for the gateway).
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(secret(), 404, "cut before {cut}: every model served");
        assert_eq!(
            long(),
            400,
            "cut before {cut}: the limits fell back to defaults"
        );
        f.write_all(&full.as_bytes()[first.len()..]).unwrap();
        drop(f);
    }
    std::thread::sleep(Duration::from_millis(5500)); // past the quiet time of the last cut
    assert_eq!((secret(), long()), (404, 400));
    assert!(
        !gw.stderr_text().contains("Policy reloaded."),
        "{}",
        gw.stderr_text()
    );
}

#[test]
fn reading_the_policy_is_not_a_change() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    // A rejected file makes a re-read loop visible: every read would log the rejection again.
    std::fs::write(&gw.policy_path, "auth: {enabled: maybe}\n").unwrap();
    wait_for(
        Duration::from_secs(10),
        "the bad file to be refused",
        || (rejected_reloads(&gw) >= 1).then_some(()),
    );
    for _ in 0..5 {
        let out = Command::new("cat").arg(&gw.policy_path).output().unwrap();
        assert!(out.status.success());
        let out = Command::new(GATEWAY)
            .arg("check")
            .arg("-c")
            .arg(&gw.policy_path)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    // Over the next second (five settle times), nothing reads the file again.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_eq!(rejected_reloads(&gw), 1, "{}", gw.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGHUP still reads it, whatever its identity.
    let mark = gw.log_len();
    gw.signal("HUP");
    gw.wait_log("Policy reload rejected", mark);
}

#[test]
fn only_regular_files_are_read_and_a_fifo_blocks_nothing() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let good = std::fs::read_to_string(&gw.policy_path).unwrap();
    std::fs::remove_file(&gw.policy_path).unwrap();
    let ok = Command::new("mkfifo")
        .arg(&gw.policy_path)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    gw.wait_log("not a regular file", 0);
    // `check` on the FIFO answers at once instead of hanging.
    let started = Instant::now();
    let out = Command::new(GATEWAY)
        .arg("check")
        .arg("-c")
        .arg(&gw.policy_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));

    // A symlink to /dev/zero is refused too, without reading it.
    std::fs::remove_file(&gw.policy_path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &gw.policy_path).unwrap();
    let mark = gw.log_len();
    gw.signal("HUP");
    gw.wait_log("not a regular file", mark);

    // The reload thread is still alive: a good file (a rotated key) applies.
    std::fs::remove_file(&gw.policy_path).unwrap();
    std::fs::write(
        &gw.policy_path,
        good.replace("prod-key-2024-qwen3", "after-fifo-key-0001"),
    )
    .unwrap();
    gw.wait_log("Policy reloaded.", 0);
    assert_eq!(
        gw.chat("after-fifo-key-0001", &hello("qwen3:32b")).status,
        200
    );
    assert_eq!(readyz(&gw)["policy"]["last_reload_ok"], true);
}

#[test]
fn a_policy_error_never_shows_a_value_and_clears_when_fixed() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let good = std::fs::read_to_string(&gw.policy_path).unwrap();
    let secret = "sk-live-canary-7f3a9";
    let bad = good.replace(
        "valid_keys: [\"prod-key-2024-qwen3\"]",
        &format!("valid_keys: \"{secret}\""),
    );
    assert_ne!(bad, good);
    std::fs::write(&gw.policy_path, &bad).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the bad file to be refused",
        || (rejected_reloads(&gw) >= 1).then_some(()),
    );
    let ready = readyz(&gw);
    let error = ready["policy"]["last_reload_error"].as_str().unwrap_or("");
    assert!(error.contains("auth.valid_keys"), "{error}");
    assert!(error.contains("expected a sequence"), "{error}");
    assert!(!ready.to_string().contains(secret), "{ready}");
    assert!(
        !gw.stderr_text().contains(secret),
        "the value reached the log"
    );
    let out = Command::new(GATEWAY)
        .arg("check")
        .arg("-c")
        .arg(&gw.policy_path)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains(secret));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));

    // Fixed by putting the old file back: nothing to apply, but the error is gone.
    std::fs::write(&gw.policy_path, &good).unwrap();
    wait_for(Duration::from_secs(10), "readyz to clear", || {
        let r = readyz(&gw);
        (r["policy"]["last_reload_ok"] == true && r["policy"]["last_reload_error"].is_null())
            .then_some(())
    });
}

#[test]
fn check_names_missing_sections_and_duplicate_models() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.yaml");
    let check = |text: &str| {
        std::fs::write(&p, text).unwrap();
        let out = Command::new(GATEWAY)
            .arg("check")
            .arg("-c")
            .arg(&p)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("listen: \"127.0.0.1:1\"\nauth: {enabled: false}\n");
    assert!(!ok);
    assert!(err.contains("`whitelist` section is missing"), "{err}");
    let (ok, err) = check(
        "auth: {enabled: false}\nwhitelist: {enabled: false}\nrate_limit: {enabled: false}\n\
         models:\n  qwen: qwen3:32b\n  qwen: llama3\n",
    );
    assert!(!ok);
    assert!(err.contains("appears twice"), "{err}");
    let (ok, err) = check(
        "auth: {enabled: false}\nwhitelist: {enabled: false}\nrate_limit: {enabled: false}\n",
    );
    assert!(ok, "{err}");
}

// ---- 2. count what the model reads ----

#[test]
fn every_string_the_model_reads_counts_toward_the_prompt_limit() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let big = "x".repeat(210_000);
    let user = json!({"role": "user", "content": "hi"});
    let tool = |desc: &str, name: &str, params: Value| json!([{"type": "function", "function": {"name": name, "description": desc, "parameters": params}}]);
    let cases: Vec<(&str, Value)> = vec![
        (
            "tool description",
            json!({"messages": [user], "tools": tool(&big, "f", json!({"type": "object"}))}),
        ),
        (
            "tool name",
            json!({"messages": [user], "tools": tool("d", &big, json!({"type": "object"}))}),
        ),
        (
            "tool parameters",
            json!({"messages": [user], "tools": tool("d", "f", json!({"type": "object", "properties": {"a": {"type": "string", "description": big}}}))}),
        ),
        (
            "tool-call arguments",
            json!({"messages": [user, {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": json!({"a": big}).to_string()}}]}]}),
        ),
        (
            "reasoning_content",
            json!({"messages": [{"role": "assistant", "content": "a", "reasoning_content": big}, user]}),
        ),
        (
            "tool message name",
            json!({"messages": [user, {"role": "tool", "name": big, "content": "r"}]}),
        ),
        (
            "tool_call_id",
            json!({"messages": [user, {"role": "tool", "tool_call_id": big, "content": "r"}]}),
        ),
        (
            "json schema",
            json!({"messages": [user], "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object", "description": big}}}}),
        ),
        ("stop", json!({"messages": [user], "stop": [big]})),
    ];
    for (what, mut body) in cases {
        body["model"] = json!("qwen3:32b");
        let r = gw.chat(KEY, &body);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_prompt_too_long(&r.error_message());
    }
    assert_eq!(
        fake.chat_requests(),
        0,
        "an over-long prompt reached Ollama"
    );
}

#[test]
fn max_messages_counts_content_parts_and_model_names_are_capped() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let parts: Vec<Value> = (0..20_000)
        .map(|_| json!({"type": "text", "text": ""}))
        .collect();
    let messages: Vec<Value> = (0..5)
        .map(|_| json!({"role": "user", "content": parts}))
        .collect();
    let r = gw.chat(KEY, &json!({"model": "qwen3:32b", "messages": messages}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.error_message().contains("too many messages, max 1000"),
        "{}",
        r.text()
    );

    let long_model = "m".repeat(60_000);
    let r = gw.chat(KEY, &hello(&long_model));
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("model name too long"),
        "{}",
        r.text()
    );
    assert_eq!(fake.chat_requests(), 0);
    let audit = wait_for(Duration::from_secs(5), "audit lines", || {
        let lines = gw.audit_lines();
        (lines.len() >= 2).then_some(lines)
    });
    for line in audit {
        assert!(line.to_string().len() < 2_000, "audit line too long");
    }
}

// ---- 3. when the client leaves, the work stops ----

const HOSTILE: &str =
    "upstream: {timeout_seconds: 0.5, max_stream_seconds: 1}\nshutdown_grace_seconds: 1\n";

fn hostile_policy() -> String {
    format!("{}{HOSTILE}", article_policy())
}

/// Sends a chat request on a raw connection and leaves it open.
fn open_chat(gw: &Gateway, body: &Value) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\n\
         Connection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s
}

/// Reads from `s` until `needle` has arrived; returns everything read.
fn read_until(s: &mut std::net::TcpStream, needle: &str) -> String {
    use std::io::Read as _;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}",
            String::from_utf8_lossy(&got)
        );
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn read_to_end(s: &mut std::net::TcpStream) -> String {
    use std::io::Read as _;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn active_chats(fake: &Fake) -> i64 {
    fake.stats()["active_chats"].as_i64().unwrap_or(-1)
}

fn audit_line_for(gw: &Gateway, model: &str) -> Value {
    wait_for(Duration::from_secs(5), "the audit line", || {
        gw.audit_lines().into_iter().find(|l| l["model"] == model)
    })
}

#[test]
fn a_client_that_leaves_before_the_first_byte_stops_the_upstream_request() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let body = json!({"model": "test/hang", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let s = open_chat(&gw, &body);
    wait_for(
        Duration::from_secs(5),
        "the request to reach Ollama",
        || (active_chats(&fake) == 1).then_some(()),
    );
    drop(s);
    // Noticed at once, not after first_token_timeout (120 s here).
    wait_for(
        Duration::from_secs(3),
        "Ollama's request to be dropped",
        || (active_chats(&fake) == 0).then_some(()),
    );
    let line = audit_line_for(&gw, "test/hang");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
}

#[test]
fn a_client_that_leaves_a_silent_stream_stops_it_and_is_metered() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let body = json!({"model": "test/stall", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut s = open_chat(&gw, &body);
    read_until(&mut s, "\"content\":\"You");
    assert_eq!(active_chats(&fake), 1);
    drop(s);
    // Noticed at once, not after stream_idle_timeout (60 s here).
    wait_for(
        Duration::from_secs(3),
        "Ollama's stream to be dropped",
        || (active_chats(&fake) == 0).then_some(()),
    );
    let line = audit_line_for(&gw, "test/stall");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["error"], "client_closed", "{line}");
    assert_eq!(line["completion_tokens"], 1, "tokens seen so far: {line}");
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(m.contains("qwen_gateway_in_flight_streams 0"), "{m}");
}

#[test]
fn streams_cut_by_shutdown_end_with_an_error_event_and_are_audited() {
    let fake = Fake::start(&[]);
    let policy = format!("{}shutdown_grace_seconds: 1\n", article_policy());
    let mut gw = Gateway::start(&policy, &fake.url());
    let body = json!({"model": "test/stall", "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]});
    let mut s = open_chat(&gw, &body);
    read_until(&mut s, "\"content\":\"You");
    gw.signal("TERM");
    // The grace period (1 s) passes; the stream then ends with an error event, no [DONE].
    let rest = read_to_end(&mut s);
    assert!(rest.contains("\"code\":\"interrupted\""), "{rest}");
    assert!(!rest.contains("[DONE]"), "{rest}");
    let child = &mut gw.child;
    let status = wait_for(Duration::from_secs(10), "the gateway to exit", || {
        child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0));
    let line = audit_line_for(&gw, "test/stall");
    assert_eq!(line["error"], "interrupted", "{line}");
    assert_eq!(line["completion_tokens"], 1, "{line}");
}

// ---- 4. a hostile or broken upstream is bounded ----

#[test]
fn error_headers_then_a_stalled_body_answer_within_the_upstream_budget() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&hostile_policy(), &fake.url());
    let started = Instant::now();
    let r = gw.chat(KEY, &hello("test/error-stall"));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_no_internals(&r.text(), &fake.addr.to_string());
}

#[test]
fn an_endless_line_is_cut_and_a_stream_that_never_ends_is_bounded() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&hostile_policy(), &fake.url());
    for model in ["test/endless-line", "test/forever:20"] {
        let body = json!({"model": model, "stream": true,
                          "messages": [{"role": "user", "content": "hi"}]});
        let started = Instant::now();
        let mut s = open_chat(&gw, &body);
        let all = read_to_end(&mut s);
        assert!(all.contains("data: {\"error\""), "{model}: {all:.300}");
        assert!(!all.contains("[DONE]"), "{model}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{model}: {:?}",
            started.elapsed()
        );
        wait_for(
            Duration::from_secs(3),
            "the upstream stream to be dropped",
            || (active_chats(&fake) == 0).then_some(()),
        );
    }
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(m.contains("kind=\"stream_line_too_long\""), "{m}");
    assert!(m.contains("kind=\"stream_max_duration\""), "{m}");
}

#[test]
fn a_huge_non_streamed_answer_is_refused_not_buffered() {
    let fake = Fake::start(&[]);
    // A budget a loaded machine meets: the stand-in takes a while to build 9 MiB, and a
    // short liveness probe would then read it as down (503) instead of too large (502).
    let policy = format!("{}upstream: {{timeout_seconds: 3}}\n", article_policy());
    let gw = Gateway::start(&policy, &fake.url());
    let r = gw.chat(KEY, &hello("test/huge:9"));
    assert_eq!(r.status, 502, "{:.200}", r.text());
    let r = gw.chat(KEY, &hello("test/huge:1"));
    assert_eq!(r.status, 200);
}

#[test]
fn retry_after_from_ollama_is_clamped() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&hostile_policy(), &fake.url());
    let r = gw.chat(KEY, &hello("test/busy-retry:999999"));
    assert_eq!(r.status, 503);
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=300).contains(&secs), "Retry-After {secs}");
}

// ---- 5. limits and descriptors under pressure ----

#[test]
fn a_flood_of_identities_never_resets_a_limit() {
    let fake = Fake::start(&[]);
    let policy = "ollama_api: \"{OLLAMA}\"\nauth: {enabled: false}\nwhitelist: {enabled: false}\n\
                  rate_limit: {enabled: true, max_requests: 2, window_seconds: 60, max_tracked_clients: 100}\n";
    let gw = Gateway::start(policy, &fake.url());
    let body = hello("qwen3:32b").to_string();
    // 400 client addresses (each its own identity: auth is off) through a table of 100,
    // three rounds: a reset log would admit some address a third time.
    let ips: Vec<IpAddr> = (0..400u32)
        .map(|i| IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8]))
        .collect();
    let mut admitted = vec![0u32; ips.len()];
    for _ in 0..3 {
        for (i, ip) in ips.iter().enumerate() {
            let r = request_from(
                Some(*ip),
                gw.addr,
                "POST",
                "/v1/chat/completions",
                &[],
                Some(body.as_bytes()),
            );
            match r.status {
                200 => admitted[i] += 1,
                429 => {}
                other => panic!("status {other}: {}", r.text()),
            }
        }
    }
    assert!(
        admitted.iter().all(|&n| n <= 2),
        "an address was admitted 3 times: its limit was reset"
    );
    let total: u32 = admitted.iter().sum();
    assert!(total <= 100 * 2 + 2, "{total} admitted");
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    let overflow = m
        .lines()
        .find(|l| l.starts_with("qwen_gateway_ratelimit_overflow_total{limiter=\"requests\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(overflow > 0.0, "{m}");
}

/// Descriptors the process holds with numbers below `limit` (the ones the limit counts: the
/// process may also hold higher ones inherited from the test harness).
fn open_fds(pid: u32, limit: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<usize>().ok())
                .filter(|&n| n < limit)
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn running_out_of_descriptors_is_the_gateways_503_and_never_opens_the_breaker() {
    let fake = Fake::start(&[]);
    let policy = format!(
        "{}upstream: {{model_refresh_seconds: 3600, breaker: {{failure_threshold: 2, cooldown_seconds: 60}}}}\n",
        article_policy()
    );
    const LIMIT: usize = 96;
    let gw = Gateway::start_under(
        &["prlimit", &format!("--nofile={LIMIT}:{LIMIT}"), "--"],
        &policy,
        &fake.url(),
    );
    let pid = gw.child.id();
    // Fill every descriptor but one with idle client connections, each waited for until the
    // gateway has accepted it.
    let mut idle = Vec::new();
    while open_fds(pid, LIMIT) < LIMIT - 1 {
        let before = open_fds(pid, LIMIT);
        idle.push(std::net::TcpStream::connect(gw.addr).unwrap());
        wait_for(
            Duration::from_secs(5),
            "the connection to be accepted",
            || (open_fds(pid, LIMIT) > before).then_some(()),
        );
    }
    // Each request takes the last descriptor for its own connection: none is left to reach
    // Ollama. More than the breaker's threshold of such failures.
    for _ in 0..4 {
        let r = gw.chat(KEY, &hello("qwen3:32b"));
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(
            r.json()["error"]["code"],
            "gateway_overloaded",
            "{}",
            r.text()
        );
        assert!(r.header("retry-after").is_some());
    }
    drop(idle);
    // Ollama was never at fault: the breaker stayed closed and the next request is served.
    wait_for(Duration::from_secs(5), "descriptors to free up", || {
        (open_fds(pid, LIMIT) < LIMIT / 2).then_some(())
    });
    let r = gw.chat(KEY, &hello("qwen3:32b"));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(m.contains("kind=\"local_resources\""), "{m}");
    assert!(!m.contains("kind=\"connect\""), "{m}");
}

// ---- 6. smaller items ----

#[test]
fn trailing_garbage_and_two_keys_are_refused() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let one = hello("qwen3:32b").to_string();
    for body in [format!("{one}xyz"), format!("{one}{one}")] {
        let r = request(
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &[("X-Api-Key", KEY), ("Content-Type", "application/json")],
            Some(body.as_bytes()),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.error_message().contains("not valid JSON"), "{}", r.text());
    }
    // A valid header key must not win over a different Bearer token (nor the reverse).
    let r = request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("X-Api-Key", KEY),
            ("Authorization", "Bearer someone-elses-key"),
        ],
        Some(one.as_bytes()),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "ambiguous_api_key");
    // The same key twice is one key.
    let r = request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[
            ("X-Api-Key", KEY),
            ("Authorization", &format!("Bearer {KEY}")),
        ],
        Some(one.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.chat_requests(), 1);
}

#[test]
fn a_malformed_request_line_is_not_an_error_in_the_log() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let answer = read_to_end(&mut s);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The next request is served and logged; the garbage left no ERROR line before it.
    let mark = gw.log_len();
    assert_eq!(gw.chat(KEY, &hello("test/error500")).status, 502);
    gw.wait_log("Request failed.", mark);
    assert!(!gw.stderr_text().contains("ERROR"), "{}", gw.stderr_text());
}
