//! Guards: the article's acceptance table verbatim, spoofed forwarding headers, exact rate
//! limits under concurrency and across reloads, request limits, per-key models, and proof
//! that rejected requests never reach Ollama.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use serde_json::json;

const UNTRUSTED: &str = "127.0.0.2";

fn untrusted() -> Option<IpAddr> {
    Some(UNTRUSTED.parse().unwrap())
}

// ---- the article's table ----

#[test]
fn article_wrong_key_is_401() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let r = gw.chat("wrong", &hello("qwen3:32b"));
    assert_eq!(r.status, 401);
    assert_eq!(r.error_message(), "invalid api key");
    // Missing key: same answer.
    let r = request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(hello("qwen3:32b").to_string().as_bytes()),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.error_message(), "invalid api key");
    assert_eq!(fake.chat_requests(), 0);
}

#[test]
fn article_31st_request_is_429_with_retry_after() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    for i in 0..30 {
        let r = gw.chat(KEY, &hello("qwen3:32b"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("30"));
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            Some((29 - i).to_string().as_str())
        );
    }
    let r = gw.chat(KEY, &hello("qwen3:32b"));
    assert_eq!(r.status, 429);
    r.error_message();
    let retry: u64 = r
        .header("retry-after")
        .unwrap()
        .parse()
        .expect("integer seconds");
    assert!((58..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(r.header("x-ratelimit-reset-requests").is_some());
    assert_eq!(fake.chat_requests(), 30, "the 429 never reached Ollama");
}

#[test]
fn article_client_outside_whitelist_is_403() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let r = request_from(
        untrusted(),
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("X-Api-Key", KEY)],
        Some(hello("qwen3:32b").to_string().as_bytes()),
    );
    assert_eq!(r.status, 403);
    r.error_message();
    assert_eq!(fake.chat_requests(), 0);
}

#[test]
fn article_long_prompt_is_400() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let prompt = "a".repeat(250_000);
    let r = gw.chat(
        KEY,
        &json!({"model":"qwen3:32b","messages":[{"role":"user","content":prompt}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_prompt_too_long(&r.error_message());
    assert_eq!(fake.chat_requests(), 0);
}

// ---- keys ----

#[test]
fn keys_hashed_named_bearer_and_model_scopes() {
    let fake = Fake::start(&[]);
    let hashed = qwen_gateway::policy::hash_key("team-b-secret-key");
    let policy = format!(
        r#"
ollama_api: "{{OLLAMA}}"
whitelist: {{enabled: false}}
rate_limit: {{enabled: false}}
models: {{"qwen3:32b": "qwen3:32b", "llama": "llama3.2:latest"}}
auth:
  enabled: true
  keys:
    - {{id: team-b, key: "{hashed}", models: ["llama"]}}
audit: {{dir: "{{DIR}}/audit"}}
"#
    );
    let gw = Gateway::start(&policy, &fake.url());
    let bearer = [("Authorization", "Bearer team-b-secret-key")];
    let r = request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &bearer,
        Some(hello("llama").to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fake.stats()["last_chat"]["model"], "llama3.2:latest");
    let r = request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &bearer,
        Some(hello("qwen3:32b").to_string().as_bytes()),
    );
    assert_eq!(r.status, 403);
    assert!(r.error_message().contains("qwen3:32b"));
    let r = request(gw.addr, "GET", "/v1/models", &bearer, None);
    let ids = r.model_ids();
    assert_eq!(ids, vec!["llama"]);

    // Identity in the audit log is the id; the key is nowhere.
    gw.wait_log("Listening", 0);
    let audit = wait_for(Duration::from_secs(5), "audit lines", || {
        let l = gw.audit_lines();
        (l.len() >= 3).then_some(l)
    });
    assert!(audit.iter().any(|l| l["key_id"] == "team-b"));
    let all = format!("{}{}", gw.audit_text(), gw.stderr_text());
    assert!(!all.contains("team-b-secret-key"));
    let metrics = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(metrics.contains("key_id=\"team-b\""));
    assert!(!metrics.contains("team-b-secret-key"));
}

#[test]
fn repeated_bad_keys_are_throttled() {
    let fake = Fake::start(&[]);
    let policy = format!("{}\n", article_policy().replace(
        "valid_keys: [\"prod-key-2024-qwen3\"]",
        "valid_keys: [\"prod-key-2024-qwen3\"]\n  max_failures: 5\n  failure_window_seconds: 60",
    ));
    let gw = Gateway::start(&policy, &fake.url());
    for _ in 0..5 {
        assert_eq!(gw.chat("guess-0000", &hello("qwen3:32b")).status, 401);
    }
    let r = gw.chat("guess-0001", &hello("qwen3:32b"));
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    // A valid key from the same address is still served: one user's typos in a shared chat
    // UI must not lock out every user behind it. Bad attempts stay refused.
    assert_eq!(gw.chat(KEY, &hello("qwen3:32b")).status, 200);
    assert_eq!(gw.chat("guess-0002", &hello("qwen3:32b")).status, 429);
    assert_eq!(fake.chat_requests(), 1);
}

// ---- client IP behind Nginx ----

#[test]
fn forwarded_headers_count_only_from_trusted_proxies() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let body = hello("qwen3:32b").to_string();
    let send = |from: Option<IpAddr>, hdrs: &[(&str, &str)]| {
        let mut h = vec![("X-Api-Key", KEY)];
        h.extend_from_slice(hdrs);
        request_from(
            from,
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &h,
            Some(body.as_bytes()),
        )
        .status
    };
    // Untrusted peer claiming to be an allowed address gains nothing.
    assert_eq!(send(untrusted(), &[("X-Forwarded-For", "127.0.0.1")]), 403);
    assert_eq!(send(untrusted(), &[("X-Real-IP", "10.0.0.5")]), 403);
    assert_eq!(
        send(untrusted(), &[("X-Forwarded-For", "10.0.1.1, 127.0.0.1")]),
        403
    );
    // Trusted peer (Nginx on 127.0.0.1): the rightmost untrusted address is the client.
    assert_eq!(send(None, &[("X-Forwarded-For", "203.0.113.9")]), 403);
    assert_eq!(send(None, &[("X-Forwarded-For", "10.0.3.4")]), 200);
    // A client-sent prefix that Nginx appended to does not help.
    assert_eq!(
        send(None, &[("X-Forwarded-For", "10.0.3.4, 203.0.113.9")]),
        403
    );
    assert_eq!(send(None, &[("X-Real-IP", "203.0.113.9")]), 403);
    assert_eq!(send(None, &[("X-Forwarded-For", "::ffff:10.0.9.9")]), 200);
    assert_eq!(fake.chat_requests(), 2);
    // The audit line carries the resolved client address.
    let lines = wait_for(Duration::from_secs(5), "audit", || {
        let l = gw.audit_lines();
        (l.len() >= 8).then_some(l)
    });
    assert!(
        lines
            .iter()
            .any(|l| l["client_ip"] == "203.0.113.9" && l["status"] == 403)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["client_ip"] == UNTRUSTED && l["status"] == 403)
    );
}

/// `/readyz` and `/metrics` (key ids, token counts per key, backends, reload errors) are
/// for `observers` (default: the host itself), not for every allowlisted end user: an
/// allowlisted chat user behind Nginx gets 403 (issue 19), a listed Prometheus host 200.
#[test]
fn observer_endpoints_answer_observers_only() {
    let fake = Fake::start(&[]);
    let policy = format!(
        "{}observers: [\"127.0.0.1\", \"10.0.9.9\"]\n",
        article_policy()
    );
    let gw = Gateway::start(&policy, &fake.url());
    for path in ["/readyz", "/metrics"] {
        assert_eq!(
            request(gw.addr, "GET", path, &[], None).status,
            200,
            "{path}"
        );
        let r = request_from(untrusted(), gw.addr, "GET", path, &[], None);
        assert_eq!(r.status, 403, "{path}");
        r.error_message();
        // An allowlisted end user through Nginx (whitelist.ips has 10.0.0.0/16).
        let user = request(
            gw.addr,
            "GET",
            path,
            &[("X-Forwarded-For", "10.0.1.1")],
            None,
        );
        assert_eq!(user.status, 403, "{path}: {}", user.text());
        let prometheus = request(
            gw.addr,
            "GET",
            path,
            &[("X-Forwarded-For", "10.0.9.9")],
            None,
        );
        assert_eq!(prometheus.status, 200, "{path}");
    }
    // /healthz answers everyone, without a key.
    assert_eq!(
        request_from(untrusted(), gw.addr, "GET", "/healthz", &[], None).status,
        200
    );
}

// ---- rate limits ----

#[test]
fn hundred_concurrent_requests_admit_exactly_thirty() {
    let fake = Fake::start(&["--workers", "2"]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let statuses: Vec<u16> = burst(&[gw.addr], 100, KEY, &hello("qwen3:32b").to_string())
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        30,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 70);
    assert_eq!(fake.chat_requests(), 30);
}

#[test]
fn policy_edit_mid_window_keeps_counters() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    for _ in 0..20 {
        assert_eq!(gw.chat(KEY, &hello("qwen3:32b")).status, 200);
    }
    // Lower the limit to 25 (and change nothing else).
    let edited = Gateway::render(article_policy(), &fake.url(), gw.dir.path())
        .replace("max_requests: 30", "max_requests: 25");
    std::fs::write(&gw.policy_path, edited).unwrap();
    // An in-place write applies once it has settled; ask only after that.
    gw.wait_log("Policy reloaded.", 0);
    let mut admitted = 20;
    loop {
        let r = gw.chat(KEY, &hello("qwen3:32b"));
        if r.status != 200 {
            assert_eq!(r.status, 429);
            break;
        }
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("25"));
        admitted += 1;
        assert!(admitted <= 25, "counter was reset by the reload");
    }
    assert_eq!(admitted, 25, "exactly the new limit in this window");
}

#[test]
fn per_key_limit_overrides_and_ip_identity_without_auth() {
    let fake = Fake::start(&[]);
    let policy = r#"
ollama_api: "{OLLAMA}"
auth: {enabled: false}
whitelist: {enabled: false}
rate_limit: {enabled: true, max_requests: 3, window_seconds: 60}
"#;
    let gw = Gateway::start(policy, &fake.url());
    // No auth: the identity is the client IP.
    for _ in 0..3 {
        assert_eq!(gw.chat("", &hello("qwen3:32b")).status, 200);
    }
    assert_eq!(gw.chat("", &hello("qwen3:32b")).status, 429);
    let r = request_from(
        untrusted(),
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Some(hello("qwen3:32b").to_string().as_bytes()),
    );
    assert_eq!(r.status, 200, "another client has its own budget");

    let policy = r#"
ollama_api: "{OLLAMA}"
whitelist: {enabled: false}
rate_limit: {enabled: true, max_requests: 2, window_seconds: 60}
auth:
  enabled: true
  keys:
    - {id: big, key: "big-key-12345", rate_limit: {max_requests: 5}}
    - {id: small, key: "small-key-1234"}
"#;
    let gw = Gateway::start(policy, &fake.url());
    let ok = |key: &str| {
        (0..8)
            .filter(|_| gw.chat(key, &hello("qwen3:32b")).status == 200)
            .count()
    };
    assert_eq!(ok("big-key-12345"), 5);
    assert_eq!(ok("small-key-1234"), 2);
}

// ---- request limits ----

#[test]
fn prompt_length_counts_characters_not_bytes() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let ok = "你".repeat(200_000);
    let r = gw.chat(
        KEY,
        &json!({"model":"qwen3:32b","messages":[{"role":"user","content":ok}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let over = "你".repeat(200_001);
    let r = gw.chat(
        KEY,
        &json!({"model":"qwen3:32b","messages":[{"role":"user","content":over}]}),
    );
    assert_eq!(r.status, 400);
    assert_prompt_too_long(&r.error_message());
    // Parts count too.
    let half = "x".repeat(120_000);
    let r = gw.chat(
        KEY,
        &json!({"model":"qwen3:32b","messages":[
        {"role":"system","content":half},
        {"role":"user","content":[{"type":"text","text":half}]}]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(fake.chat_requests(), 1);
}

#[test]
fn oversized_body_is_413_in_the_envelope() {
    let fake = Fake::start(&[]);
    let policy = format!("{}limits: {{max_body_bytes: 65536}}\n", article_policy());
    let gw = Gateway::start(&policy, &fake.url());
    let big = "y".repeat(70_000);
    let r = gw.chat(
        KEY,
        &json!({"model":"qwen3:32b","messages":[{"role":"user","content":big}]}),
    );
    assert_eq!(r.status, 413);
    assert_eq!(r.error_message(), "request body too large for this gateway");
    // Without Content-Length (chunked upload) the limit holds too.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    use std::io::{Read, Write};
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").unwrap();
    for _ in 0..20 {
        let piece = "z".repeat(8192);
        if write!(s, "{:x}\r\n{piece}\r\n", piece.len()).is_err() {
            break;
        }
    }
    let _ = write!(s, "0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.1 413"),
        "{}",
        &out[..out.len().min(200)]
    );
    assert_eq!(fake.chat_requests(), 0);
}

#[test]
fn default_body_limit_lets_the_article_prompt_reach_the_prompt_check() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    // 250,000 CJK characters: 750,000 bytes of UTF-8, well under the 4 MiB default.
    let r = gw.chat(
        KEY,
        &json!({"model":"qwen3:32b","messages":[{"role":"user","content":"好".repeat(250_000)}]}),
    );
    assert_eq!(r.status, 400);
    assert_prompt_too_long(&r.error_message());
}

#[test]
fn guard_order_is_ip_key_rate_then_body() {
    let fake = Fake::start(&[]);
    let policy = article_policy().replace("max_requests: 30", "max_requests: 1");
    let gw = Gateway::start(&policy, &fake.url());
    let long =
        json!({"model":"qwen3:32b","messages":[{"role":"user","content":"a".repeat(210_000)}]})
            .to_string();
    // Disallowed IP with a bad key and a long prompt: the IP check answers.
    let r = request_from(
        untrusted(),
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("X-Api-Key", "bad")],
        Some(long.as_bytes()),
    );
    assert_eq!(r.status, 403);
    // Allowed IP, bad key, long prompt: the key check answers.
    assert_eq!(
        gw.chat("bad-key-000", &serde_json::from_str(&long).unwrap())
            .status,
        401
    );
    // Good key, long prompt: the prompt check answers, and it used the one allowed request.
    assert_eq!(
        gw.chat(KEY, &serde_json::from_str(&long).unwrap()).status,
        400
    );
    // Over the limit, long prompt: the rate limit answers before the body is looked at.
    assert_eq!(
        gw.chat(KEY, &serde_json::from_str(&long).unwrap()).status,
        429
    );
    assert_eq!(fake.chat_requests(), 0);
}

#[test]
fn slow_drip_body_gets_408() {
    let fake = Fake::start(&[]);
    let policy = format!(
        "{}limits: {{body_timeout_seconds: 0.5}}\n",
        article_policy()
    );
    let gw = Gateway::start(&policy, &fake.url());
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Api-Key: {KEY}\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{{\"model\":").unwrap();
    // ...and never the rest.
    let started = std::time::Instant::now();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("did not arrive in time"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(fake.chat_requests(), 0);
}

#[test]
fn model_lists_do_not_spend_the_inference_limit() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    // A chat UI loading its model list on every page view: 40 lists with a 30-per-minute key.
    for i in 0..40 {
        let r = request(gw.addr, "GET", "/v1/models", &[("X-Api-Key", KEY)], None);
        assert_eq!(r.status, 200, "list {i}");
    }
    let r = gw.chat(KEY, &hello("qwen3:32b"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("29"));
    // Lists have a limit of their own: 10x the request limit in the same window.
    let refused = (0..300)
        .map(|_| request(gw.addr, "GET", "/api/tags", &[("X-Api-Key", KEY)], None).status)
        .filter(|s| *s == 429)
        .count();
    // 300 lists per window, 40 already made: the last 40 of these 300 are refused.
    assert_eq!(refused, 40, "lists beyond 300 per window are refused");
}

fn gen_key(id: &str) -> (String, String) {
    let out = std::process::Command::new(GATEWAY)
        .args(["gen-key", "--id", id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap()
        .to_owned();
    assert!(key.len() >= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let hash = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("key: \"sha256:"))
        .map(|h| format!("sha256:{}", h.trim_end_matches('"')))
        .unwrap();
    assert_eq!(hash, qwen_gateway::policy::hash_key(&key));
    assert!(text.contains(&format!("- id: \"{id}\"")), "{text}");
    (key, hash)
}

#[test]
fn keys_expire_rotate_and_are_generated() {
    let fake = Fake::start(&[]);
    let (k1, h1) = gen_key("rot");
    let (k2, h2) = gen_key("rot");
    let (k3, h3) = gen_key("old");
    let (k4, h4) = gen_key("future");
    let policy = format!(
        r#"
ollama_api: "{{OLLAMA}}"
whitelist: {{enabled: false}}
rate_limit: {{enabled: true, max_requests: 3, window_seconds: 60}}
auth:
  enabled: true
  keys:
    - {{id: rot, key: "{h1}", expires_at: "2099-01-01T00:00:00Z"}}
    - {{id: rot, key: "{h2}"}}
    - {{id: old, key: "{h3}", expires_at: "2020-01-01T00:00:00Z"}}
    - {{id: future, key: "{h4}", not_before: "2099-01-01T00:00:00Z"}}
audit: {{dir: "{{DIR}}/audit"}}
"#
    );
    let gw = Gateway::start(&policy, &fake.url());
    // A rotation: the old and the new key of one id both work, and share its limit.
    assert_eq!(gw.chat(&k1, &hello("qwen3:32b")).status, 200);
    assert_eq!(gw.chat(&k2, &hello("qwen3:32b")).status, 200);
    assert_eq!(gw.chat(&k1, &hello("qwen3:32b")).status, 200);
    assert_eq!(gw.chat(&k2, &hello("qwen3:32b")).status, 429);
    let r = gw.chat(&k3, &hello("qwen3:32b"));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "expired_api_key");
    let r = gw.chat(&k4, &hello("qwen3:32b"));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "api_key_not_yet_valid");
    assert_eq!(fake.chat_requests(), 3);
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    assert!(
        m.contains("qwen_gateway_key_expiry_timestamp_seconds{key_id=\"rot\"} 4070908800"),
        "{m}"
    );
    let lines = wait_for(Duration::from_secs(5), "audit lines", || {
        let l = gw.audit_lines();
        (l.len() >= 6).then_some(l)
    });
    assert!(
        lines
            .iter()
            .any(|l| l["error"] == "expired_api_key" && l["status"] == 401)
    );
    let out = std::process::Command::new(GATEWAY)
        .arg("check")
        .arg("-c")
        .arg(&gw.policy_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auth.keys[2] (id old) has expired"), "{text}");
}

/// Issue 19: garbage in `X-Forwarded-For` from a trusted proxy made the client count as the
/// proxy host, which the allowlist (127.0.0.1 here) and `/status` trust. An unreadable client
/// is no one's address.
#[test]
fn an_unreadable_forwarded_client_is_no_ones_address() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(article_policy(), &fake.url());
    let body = hello("qwen3:32b").to_string();
    let chat_from = |xff: &str| {
        request(
            gw.addr,
            "POST",
            "/v1/chat/completions",
            &[
                ("X-Api-Key", KEY),
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", xff),
            ],
            Some(body.as_bytes()),
        )
    };
    for xff in [
        "garbage",
        "unknown",
        "10.0.3.7, garbage",
        "garbage, 127.0.0.1",
    ] {
        let r = chat_from(xff);
        assert_eq!(r.status, 403, "{xff}: {}", r.text());
        let r = request(gw.addr, "GET", "/status", &[("X-Forwarded-For", xff)], None);
        assert_eq!(r.status, 403, "{xff}: /status answered {}", r.status);
    }
    // A readable client behind the proxy is still served.
    let r = chat_from("10.0.3.7");
    assert_eq!(r.status, 200, "{}", r.text());
}
