//! The operators' tools: why a request was refused (audit `reason`), report-only guards,
//! `check`, `explain`, the reload history. Real binary, real sockets, the stand-in Ollama.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ALICE: &str = "alice-key-0123456789";

/// Alice may use qwen3:32b, 5 requests a minute; prompts up to 100 characters; output at
/// most 100 tokens, refused above. `{REPORT}` is replaced by the `report_only:` line.
const POLICY: &str = r#"
ollama_api: "{OLLAMA}"
rate_limit: {enabled: true, max_requests: 30, window_seconds: 60}
auth:
  enabled: true
  keys:
    - {id: alice, key: "alice-key-0123456789", models: ["qwen3:32b"], rate_limit: {max_requests: 5}}
whitelist: {enabled: true, ips: ["127.0.0.1", "10.0.0.0/16"]}
limits: {max_prompt_chars: 100, max_output_tokens: 100, over_limit: refuse}
audit: {dir: "{DIR}/audit"}
{REPORT}
"#;

fn policy(report: &str) -> String {
    POLICY.replace("{REPORT}", report)
}

fn chat(gw: &Gateway, key: Option<&str>, xff: Option<&str>, body: &Value) -> Response {
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(k) = key {
        h.push(("X-Api-Key", k));
    }
    if let Some(x) = xff {
        h.push(("X-Forwarded-For", x));
    }
    request(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        &h,
        Some(body.to_string().as_bytes()),
    )
}

fn long_prompt() -> Value {
    json!({"model": "qwen3:32b", "messages": [{"role": "user", "content": "x".repeat(200)}]})
}

fn big_output() -> Value {
    json!({"model": "qwen3:32b", "max_tokens": 5000,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// The audit lines of `answers`, in their order (workers write their batches independently,
/// so the file's order is not the requests').
fn audit_of(gw: &Gateway, answers: &[&Response]) -> Vec<Value> {
    let ids: Vec<String> = answers
        .iter()
        .map(|r| r.header("x-request-id").expect("request id").to_owned())
        .collect();
    wait_for(Duration::from_secs(5), "audit lines", || {
        let lines = gw.audit_lines();
        ids.iter()
            .map(|id| {
                lines
                    .iter()
                    .find(|l| l["request_id"] == id.as_str())
                    .cloned()
            })
            .collect::<Option<Vec<Value>>>()
    })
}

fn metric(gw: &Gateway, series: &str) -> f64 {
    let m = request(gw.addr, "GET", "/metrics", &[], None).text();
    m.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn every_refusal_names_its_guard_and_rule() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&policy(""), &fake.url());
    let ok = hello("qwen3:32b");
    let cases: Vec<(Response, u16, &str)> = vec![
        (
            chat(&gw, Some(ALICE), Some("203.0.113.9"), &ok),
            403,
            "whitelist: 203.0.113.9 matches no range in whitelist.ips",
        ),
        (chat(&gw, None, None, &ok), 401, "auth: no api key was sent"),
        (
            chat(&gw, Some("not-a-key-at-all"), None, &ok),
            401,
            "auth: the api key matches no key in auth",
        ),
        (
            chat(&gw, Some(ALICE), None, &hello("llama3.2:latest")),
            403,
            "models: auth.keys[alice].models does not list llama3.2:latest",
        ),
        (
            chat(&gw, Some(ALICE), None, &long_prompt()),
            400,
            "prompt_limit: 200 chars over limits.max_prompt_chars 100",
        ),
        (
            chat(&gw, Some(ALICE), None, &big_output()),
            400,
            "request: not a valid request",
        ),
    ];
    for (r, status, _) in &cases {
        assert_eq!(r.status, *status, "{}", r.text());
        // The rule is for the operator: the client's answer never names it.
        assert!(!r.text().contains("whitelist"), "{}", r.text());
        assert!(!r.text().contains("auth.keys"), "{}", r.text());
    }
    // Alice's five: model, prompt, output, these two; the whitelist refused before her key
    // was read.
    assert_eq!(chat(&gw, Some(ALICE), None, &ok).status, 200);
    let served = chat(&gw, Some(ALICE), None, &ok);
    let r = chat(&gw, Some(ALICE), None, &ok);
    assert_eq!(r.status, 429);

    let mut answers: Vec<&Response> = cases.iter().map(|c| &c.0).collect();
    answers.push(&served);
    answers.push(&r);
    let lines = audit_of(&gw, &answers);
    for (i, (_, status, reason)) in cases.iter().enumerate() {
        assert_eq!(lines[i]["status"], *status);
        assert_eq!(lines[i]["reason"], *reason, "line {i}: {}", lines[i]);
    }
    assert_eq!(lines[6]["reason"], Value::Null, "{}", lines[6]);
    assert_eq!(
        lines[7]["reason"], "rate_limit: auth.keys[alice].rate_limit 5/60s",
        "{}",
        lines[7]
    );
    assert_eq!(fake.chat_requests(), 2);
    assert_eq!(
        metric(&gw, "qwen_gateway_rejections_total{reason=\"ip\"}"),
        1.0
    );
    assert_eq!(
        metric(&gw, "qwen_gateway_rejections_total{reason=\"auth\"}"),
        3.0
    );
    assert_eq!(
        metric(&gw, "qwen_gateway_rejections_total{reason=\"size\"}"),
        1.0
    );
    assert_eq!(
        metric(&gw, "qwen_gateway_rejections_total{reason=\"rate\"}"),
        1.0
    );
    assert_eq!(metric(&gw, "qwen_gateway_report_only_total"), 0.0);
}

#[test]
fn report_only_guards_serve_and_say_what_they_would_have_refused() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(
        &policy("report_only: [whitelist, auth, rate_limit, models, prompt_limit, clamps]"),
        &fake.url(),
    );
    let ok = hello("qwen3:32b");
    let served = [
        chat(&gw, Some(ALICE), Some("203.0.113.9"), &ok),
        chat(&gw, None, None, &ok),
        chat(&gw, Some(ALICE), None, &hello("llama3.2:latest")),
        chat(&gw, Some(ALICE), None, &long_prompt()),
        chat(&gw, Some(ALICE), None, &big_output()),
        chat(&gw, Some(ALICE), None, &ok),
        chat(&gw, Some(ALICE), None, &ok),
    ];
    for r in &served {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("x-qwen-gateway-clamped").is_none());
    }
    assert_eq!(fake.chat_requests(), 7);
    // The output limit went to Ollama as the client sent it.
    let log = fake.stats()["chat_log"].to_string();
    assert!(!log.contains("\"num_predict\":100"), "{log}");

    let lines = audit_of(&gw, &served.iter().collect::<Vec<_>>());
    let report = |i: usize| -> String { lines[i]["report_only"].to_string() };
    assert!(
        report(0).contains("whitelist: 203.0.113.9 matches no range"),
        "{}",
        lines[0]
    );
    assert!(
        report(1).contains("auth: no api key was sent"),
        "{}",
        lines[1]
    );
    assert!(
        report(2).contains("models: auth.keys[alice].models does not list llama3.2:latest"),
        "{}",
        lines[2]
    );
    assert!(
        report(3).contains("prompt_limit: 200 chars over limits.max_prompt_chars 100"),
        "{}",
        lines[3]
    );
    assert!(
        report(4).contains("clamps: would refuse: the output token limit is over"),
        "{}",
        lines[4]
    );
    // Alice's sixth request (the keyless one spent the address's budget, not hers).
    assert!(
        report(6).contains("rate_limit: auth.keys[alice].rate_limit 5/60s"),
        "{}",
        lines[6]
    );
    assert_eq!(lines[5]["report_only"], Value::Null, "{}", lines[5]);
    for l in &lines {
        assert_eq!(l["status"], 200);
        assert_eq!(l["reason"], Value::Null);
    }
    for guard in [
        "whitelist",
        "auth",
        "models",
        "prompt_limit",
        "clamps",
        "rate_limit",
    ] {
        let series = format!("qwen_gateway_report_only_total{{guard=\"{guard}\"}}");
        assert_eq!(metric(&gw, &series), 1.0, "{series}");
    }
    assert!(gw.stderr_text().contains("would have refused"));
    // A client-chosen model name in the report cannot forge a log line.
    let r = chat(
        &gw,
        Some(ALICE),
        None,
        &hello("x\n2026-01-01T00:00:00Z ERROR forged line"),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    wait_for(Duration::from_secs(5), "the report's log line", || {
        gw.stderr_text().contains("forged line").then_some(())
    });
    assert!(
        !gw.stderr_text()
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a forged log line"
    );

    // Enforce: the same file without `report_only`, and the same requests are refused.
    let skip = gw.log_len();
    let text = Gateway::render(&policy(""), &fake.url(), gw.dir.path());
    let tmp = gw.dir.path().join("policy.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &gw.policy_path).unwrap();
    gw.wait_log("Policy reloaded", skip);
    assert_eq!(chat(&gw, Some(ALICE), Some("203.0.113.9"), &ok).status, 403);
    assert_eq!(chat(&gw, None, None, &ok).status, 401);
    assert_eq!(chat(&gw, Some(ALICE), None, &long_prompt()).status, 429);
}

#[test]
fn report_only_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let text = Gateway::render(
        &policy("report_only: [rate_limit, ratelimit]"),
        "http://127.0.0.1:9",
        dir.path(),
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(GATEWAY)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("report_only[1]"), "{err}");
}

fn gateway_cmd(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(GATEWAY)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_every_error_warnings_and_what_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    let p = path.to_str().unwrap();
    std::fs::write(
        &path,
        "rate_limit: {enabled: true, max_requests: 0}\n\
         auth: {enabled: true, keys: [{id: \"bad id\", key: \"sk-live-should-not-print\"}]}\n\
         whitelist: {enabled: true, ips: []}\n\
         limits: {over_limit: maybe}\n\
         upstream: {timeout_seconds: [1]}\n",
    )
    .unwrap();
    let (ok, _, err) = gateway_cmd(&["check", "--config", p]);
    assert!(!ok);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    // A type error in one section does not hide the value errors of the others (issue 19):
    // the sections that read are checked too.
    assert_eq!(errors.len(), 5, "{err}");
    assert!(errors[0].contains("upstream.timeout_seconds"), "{err}");
    for field in [
        "rate_limit.max_requests",
        "auth.keys[0].id",
        "whitelist.ips",
        "limits.over_limit",
    ] {
        assert!(errors.iter().any(|l| l.contains(field)), "{field}: {err}");
    }
    std::fs::write(
        &path,
        "rate_limit: {enabled: true, max_requests: 0}\n\
         auth: {enabled: true, keys: [{id: \"bad id\", key: \"sk-live-should-not-print\"}]}\n\
         whitelist: {enabled: true, ips: []}\n\
         limits: {over_limit: maybe}\n",
    )
    .unwrap();
    let (ok, _, err) = gateway_cmd(&["check", "--config", p]);
    assert!(!ok);
    for field in [
        "rate_limit.max_requests",
        "auth.keys[0].id",
        "whitelist.ips",
        "limits.over_limit",
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("error: ") && l.contains(field)),
            "{field}: {err}"
        );
    }
    assert!(err.contains("NOT valid (4 errors)"), "{err}");
    assert!(!err.contains("sk-live"), "{err}");

    // Valid with warnings: fine, unless warnings are denied. The probe says what answered.
    let fake = Fake::start(&[]);
    std::fs::write(
        &path,
        format!(
            "backends: [{{url: \"{}\"}}, {{url: \"http://127.0.0.1:9\"}}]\n\
             rate_limit: {{enabled: true}}\n\
             auth: {{enabled: true, keys: [{{id: a, key: \"short-key-1\"}}]}}\n\
             whitelist: {{enabled: false}}\n",
            fake.url()
        ),
    )
    .unwrap();
    let (ok, out, _) = gateway_cmd(&["check", "--config", p]);
    assert!(ok, "{out}");
    assert!(out.contains("warning: "), "{out}");
    let (ok, _, err) = gateway_cmd(&["check", "--config", p, "--deny-warnings"]);
    assert!(!ok);
    assert!(err.contains("--deny-warnings"), "{err}");
    let (ok, out, _) = gateway_cmd(&["check", "--config", p, "--probe"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "probe: backend {}: answered, Ollama 0.0.0-stand-in, 3 model(s)",
            fake.url()
        )),
        "{out}"
    );
    assert!(
        out.contains("probe: backend http://127.0.0.1:9: did not answer"),
        "{out}"
    );
}

#[test]
fn status_shows_the_reload_history_and_check_compares_with_the_running_policy() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&policy(""), &fake.url());
    let url = format!("http://{}", gw.addr);
    let write = |text: String| {
        let tmp = gw.dir.path().join("policy.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &gw.policy_path).unwrap();
    };
    let original = std::fs::read_to_string(&gw.policy_path).unwrap();
    // The edit to review: a rotated secret for alice, a new key, a wider range, a tighter limit.
    let edited = original
        .replace(
            "key: \"alice-key-0123456789\"",
            "key: \"alice-key-9876543210\"",
        )
        .replace(
            "rate_limit: {max_requests: 5}}",
            "rate_limit: {max_requests: 5}}\n    - {id: carol, key: \"carol-key-0123456789\"}",
        )
        .replace("\"10.0.0.0/16\"]", "\"10.0.0.0/16\", \"192.168.7.0/24\"]")
        .replace("max_prompt_chars: 100", "max_prompt_chars: 50");
    let draft = gw.dir.path().join("draft.yaml");
    std::fs::write(&draft, &edited).unwrap();
    let (ok, out, err) = gateway_cmd(&[
        "check",
        "--config",
        draft.to_str().unwrap(),
        "--against",
        &url,
    ]);
    assert!(ok, "{out}{err}");
    for line in [
        "key added: carol",
        "whitelist: [\"127.0.0.1/32\",\"10.0.0.0/16\"] -> [\"127.0.0.1/32\",\"10.0.0.0/16\",\"192.168.7.0/24\"]",
        "limits.max_prompt_chars: 100 -> 50",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(
        !out.contains("carol-key") && !out.contains("alice-key"),
        "{out}"
    );

    // Apply it, then a broken file, then the good one back.
    let skip = gw.log_len();
    write(edited.clone());
    gw.wait_log("Policy reloaded", skip);
    let skip = gw.log_len();
    write(edited.replace("max_prompt_chars: 50", "max_prompt_chars: -1"));
    gw.wait_log("Policy reload rejected", skip);
    let skip = gw.log_len();
    write(edited.clone());
    gw.wait_log("back to the running policy", skip);

    let (ok, out, err) = gateway_cmd(&["status", "--url", &url]);
    assert!(ok, "{err}");
    let results: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  20"))
        .map(|l| l.split_whitespace().nth(2).unwrap_or_default())
        .collect();
    assert_eq!(
        results,
        ["loaded", "applied", "rejected", "restored"],
        "{out}"
    );
    assert!(out.contains("key added: carol"), "{out}");
    // A rotated secret is a change, named without the secret.
    assert!(
        out.contains("auth.keys[alice]: secret changed (1 new, 1 retired)"),
        "{out}"
    );
    assert!(
        out.contains("error: invalid value for `limits.max_prompt_chars`"),
        "{out}"
    );
    assert!(
        !out.contains("alice-key") && !out.contains("carol-key"),
        "{out}"
    );

    // /status is for the gateway's host only: a client behind Nginx is refused.
    let r = request(
        gw.addr,
        "GET",
        "/status",
        &[("X-Forwarded-For", "10.0.0.5")],
        None,
    );
    assert_eq!(r.status, 403);
    let r = request(gw.addr, "GET", "/status", &[], None);
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("alice-key"));
}

/// (forwarded-for, key, model, prompt chars, max_tokens)
type Case<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    usize,
    Option<i64>,
);

/// `explain`'s verdict for a described request is what the running gateway answers to the
/// same request.
#[test]
fn explain_agrees_with_the_gateway() {
    let fake = Fake::start(&[]);
    for report in ["", "report_only: [whitelist, models, prompt_limit]"] {
        let gw = Gateway::start(&policy(report), &fake.url());
        let p = gw.policy_path.to_str().unwrap().to_owned();
        let cases: [Case; 7] = [
            (Some("10.0.3.7"), Some(ALICE), "qwen3:32b", 20, None),
            (Some("203.0.113.9"), Some(ALICE), "qwen3:32b", 20, None),
            (None, None, "qwen3:32b", 20, None),
            (None, Some("wrong-key-0000000000"), "qwen3:32b", 20, None),
            (None, Some(ALICE), "llama3.2:latest", 20, None),
            (None, Some(ALICE), "qwen3:32b", 150, None),
            (None, Some(ALICE), "qwen3:32b", 20, Some(5000)),
        ];
        for (xff, key, model, chars, max_tokens) in cases {
            let mut args: Vec<String> = vec![
                "explain".into(),
                "--config".into(),
                p.clone(),
                "--model".into(),
                model.into(),
                "--prompt-chars".into(),
                chars.to_string(),
            ];
            if let Some(x) = xff {
                args.extend(["--forwarded-for".into(), x.into()]);
            }
            if let Some(k) = key {
                args.extend(["--key".into(), k.into()]);
            }
            if let Some(n) = max_tokens {
                args.extend(["--max-tokens".into(), n.to_string()]);
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let (_, out, err) = gateway_cmd(&argv);
            let last = out.lines().last().unwrap_or_default().to_owned();
            let said: u16 = last
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no final status: {out}{err}"));
            let mut body = json!({"model": model,
                "messages": [{"role": "user", "content": "y".repeat(chars)}]});
            if let Some(n) = max_tokens {
                body["max_tokens"] = json!(n);
            }
            let r = chat(&gw, key, xff, &body);
            assert_eq!(r.status, said, "{report}: {argv:?}\n{out}\n{}", r.text());
        }
    }
}

#[test]
fn explain_names_each_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.yaml");
    std::fs::write(
        &path,
        Gateway::render(&policy(""), "http://127.0.0.1:9", dir.path()),
    )
    .unwrap();
    let (ok, out, _) = gateway_cmd(&[
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--forwarded-for",
        "10.0.3.7",
        "--key-id",
        "alice",
        "--model",
        "qwen3:32b",
        "--prompt-chars",
        "80",
    ]);
    assert!(ok, "{out}");
    for line in [
        "client        10.0.3.7 (from X-Forwarded-For via trusted 127.0.0.1)",
        "whitelist     10.0.3.7 allowed by whitelist.ips[1] 10.0.0.0/16",
        "auth          key id `alice`",
        "rate_limit    5/60s by auth.keys[alice].rate_limit",
        "prompt_limit  80 chars within limits.max_prompt_chars 100",
        "models        model qwen3:32b allowed",
        "clamps        output limit 100 tokens",
        "final         200",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }
    // An unknown id and an address outside every range: refused, exit 1, by the first guard.
    let (ok, out, _) = gateway_cmd(&[
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--peer",
        "192.0.2.1",
        "--forwarded-for",
        "10.0.3.7",
        "--key-id",
        "mallory",
    ]);
    assert!(!ok);
    assert!(
        out.contains("192.0.2.1 is not in trusted_proxies: forwarded headers ignored"),
        "{out}"
    );
    assert!(out.contains("final         403 ip_not_allowed"), "{out}");
}

fn report(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/ops/qwen-gateway-report"
        ))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The report script finds refusals in the gateway's real audit lines by key, address,
/// reason and time.
#[test]
fn report_filters_refusals_by_key_address_reason_and_time() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(&policy("report_only: [prompt_limit]"), &fake.url());
    let ok = hello("qwen3:32b");
    let answers = [
        chat(&gw, Some(ALICE), Some("203.0.113.9"), &ok),
        chat(&gw, Some(ALICE), None, &hello("llama3.2:latest")),
        chat(&gw, Some(ALICE), None, &long_prompt()),
        chat(&gw, None, Some("10.0.3.7"), &ok),
        chat(&gw, Some(ALICE), None, &ok),
        chat(&gw, Some(ALICE), None, &ok),
        chat(&gw, Some(ALICE), None, &ok),
        chat(&gw, Some(ALICE), None, &ok),
    ];
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 403, 200, 401, 200, 200, 200, 429]);
    audit_of(&gw, &answers.iter().collect::<Vec<_>>());
    let dir = gw.dir.path().join("audit");

    let (ok, out) = report(&dir, &["--key", "alice"]);
    assert!(ok, "{out}");
    // The whitelist's refusal too: the audit line names the valid key it refused.
    assert!(out.contains("\n7 matching requests"), "{out}");
    assert!(
        out.contains("models: auth.keys[alice].models does not list llama3.2:latest"),
        "{out}"
    );
    assert!(
        out.contains("rate_limit: auth.keys[alice].rate_limit 5/60s"),
        "{out}"
    );

    let (_, out) = report(&dir, &["--reason", "rate_limit"]);
    assert!(out.contains("\n1 matching requests"), "{out}");
    let (_, out) = report(&dir, &["--ip", "203.0.113.0/24"]);
    assert!(out.contains("\n1 matching requests"), "{out}");
    assert!(
        out.contains("whitelist: 203.0.113.9 matches no range"),
        "{out}"
    );
    let (_, out) = report(&dir, &["--ip", "10.0.3.7", "--reason", "auth"]);
    assert!(out.contains("\n1 matching requests"), "{out}");
    assert!(out.contains("auth: no api key was sent"), "{out}");
    let (_, out) = report(&dir, &["--reason", "report_only"]);
    assert!(out.contains("\n1 matching requests"), "{out}");
    assert!(
        out.contains("report_only prompt_limit: 200 chars over"),
        "{out}"
    );
    // A time range after these requests: nothing matches.
    let later = "2099-01-01T00:00";
    let (_, out) = report(&dir, &["--key", "alice", "--since", later]);
    assert!(!out.contains("alice"), "{out}");
    // The day's summary counts refusals by reason.
    let (ok, out) = report(&dir, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("refusals by reason: 4"), "{out}");
    assert!(
        out.contains("report-only guards would have refused: 1"),
        "{out}"
    );
}

const WALK_POLICY: &str = r#"
ollama_api: "{OLLAMA}"
rate_limit: {enabled: false}
auth:
  enabled: true
  keys:
    - {id: alice, key: "alice-key-0123456789", models: ["qwen3:32b"]}
    - {id: ops, key: "ops-admin-key-012345", admin: true}
  # The walk sends many requests without a key: not a key-guessing flood.
  max_failures: 100000
whitelist: {enabled: true, ips: ["127.0.0.1"]}
models:
  "qwen3:32b": "qwen3:32b"
  "llama": "llama3.2:latest"
audit: {dir: "{DIR}/audit"}
"#;

/// A minimal body each route accepts, for `model`.
fn body_for(path: &str, model: &str) -> Option<Value> {
    let chat =
        json!({"model": model, "stream": false, "messages": [{"role": "user", "content": "hi"}]});
    Some(match path {
        "/v1/chat/completions" | "/api/chat" => chat,
        "/v1/messages" | "/v1/messages/count_tokens" => {
            json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]})
        }
        "/v1/embeddings" | "/api/embed" => json!({"model": model, "input": "hi"}),
        "/v1/completions" | "/api/embeddings" => json!({"model": model, "prompt": "hi"}),
        "/api/generate" => json!({"model": model, "prompt": "hi", "stream": false}),
        "/v1/responses" => json!({"model": model, "input": "hi"}),
        "/api/show" | "/api/pull" | "/api/push" | "/api/create" | "/api/delete" => {
            json!({"model": model})
        }
        "/api/copy" => json!({"source": model, "destination": "x"}),
        _ => return None,
    })
}

/// `explain` and the gateway agree on every route of the table (issue 20: explain said 200
/// for `/api/show` and `GET /v1/models/{model}` with a key not allowed the model; the
/// gateway answers 403): for each route, with no key, a key limited to one model, and an
/// admin key, and a model the first key may use and one it may not. Where explain refuses,
/// the gateway refuses with the same status; where explain lets it through, no guard
/// refuses it.
#[test]
fn explain_agrees_with_the_gateway_on_every_route() {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(WALK_POLICY, &fake.url());
    let p = gw.policy_path.to_str().unwrap().to_owned();
    let mut disagree = Vec::new();
    for route in qwen_gateway::routes::table() {
        for key in [None, Some(ALICE), Some("ops-admin-key-012345")] {
            for model in ["qwen3:32b", "llama"] {
                let path = route
                    .path
                    .replace("{model}", model)
                    .replace("{digest}", "sha256:0123");
                let method = route.method.as_str();
                let mut args = vec![
                    "explain", "--config", &p, "--route", &path, "--method", method, "--model",
                    model,
                ];
                if let Some(k) = key {
                    args.extend(["--key", k]);
                }
                let (_, out, err) = gateway_cmd(&args);
                let said: u16 = out
                    .lines()
                    .last()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no final status: {out}{err}"));
                let mut h = vec![("Content-Type", "application/json")];
                if let Some(k) = key {
                    h.push(("X-Api-Key", k));
                }
                let body = body_for(route.path, model).map(|b| b.to_string());
                let r = request(
                    gw.addr,
                    method,
                    &path,
                    &h,
                    body.as_deref().map(str::as_bytes),
                );
                let guard_refusal = matches!(r.status, 401 | 403 | 404 | 413 | 429);
                let agrees = if said == 200 {
                    !guard_refusal || (r.status == 404 && !r.text().contains("model"))
                } else {
                    r.status == said
                };
                if !agrees {
                    disagree.push(format!(
                        "{method} {path} key={key:?} model={model}: explain {said}, gateway {} {}",
                        r.status,
                        r.text().chars().take(120).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
}
