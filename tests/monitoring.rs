//! The shipped Grafana dashboard and Prometheus alerting rules name only what the gateway
//! (and the certificate script) really export: every series and label their queries use is
//! compared with a live `/metrics` of the real binary, and the rules pass `promtool`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const CERT_METRIC: &str = "qwen_gateway_certificate_expiry_timestamp_seconds";

const POLICY: &str = r#"
ollama_api: "{OLLAMA}"
rate_limit: {enabled: true, max_requests: 2, window_seconds: 60}
auth:
  enabled: true
  keys:
    - {id: alice, key: "alice-key-0123456789", expires_at: "2099-01-01T00:00:00Z", max_concurrent: 4}
whitelist: {enabled: true, ips: ["127.0.0.1"]}
audit: {dir: "{DIR}/audit"}
report_only: [rate_limit]
"#;

/// Series names and the label names seen on each, from Prometheus text.
fn series(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let labels = out.entry(name.to_owned()).or_default();
        if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.split('}').next()) {
            for pair in inner.split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.trim().to_owned());
                }
            }
        }
    }
    out
}

/// `qwen_gateway_*` names in a query.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("qwen_gateway_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_owned());
        i = end;
    }
    out
}

/// Label names a query groups by (`by (a, b)`), and matches on (`{a="..."}`).
fn labels_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        if let Some(list) = part.split(')').next() {
            out.extend(list.split(',').map(|l| l.trim().to_owned()));
        }
    }
    for part in expr.split('{').skip(1) {
        if let Some(inner) = part.split('}').next() {
            for m in inner.split(',') {
                let name: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    // Prometheus adds these at scrape or query time; `le` is the histogram's own.
    for implicit in ["instance", "job", "le"] {
        out.remove(implicit);
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(REPO).join("scripts/monitoring/qwen-gateway-dashboard.json"),
    )
    .unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

fn alert_exprs() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(Path::new(REPO).join("scripts/monitoring/qwen-gateway-alerts.yml"))
            .unwrap();
    let rules: Value = yaml_serde::from_str(&text).unwrap();
    let mut out = Vec::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            out.push((
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

/// Drives the gateway through what makes every family show a series: traffic with tokens, a
/// stream, a refusal, a report-only finding, an upstream error, a reload.
fn exercised_metrics() -> String {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(POLICY, &fake.url());
    let key = "alice-key-0123456789";
    assert_eq!(gw.chat(key, &hello("qwen3:32b")).status, 200);
    let mut stream = hello("qwen3:32b");
    stream["stream"] = json!(true);
    assert_eq!(gw.chat(key, &stream).status, 200);
    assert_eq!(gw.chat(key, &hello("qwen3:32b")).status, 200, "report-only");
    assert_eq!(
        gw.chat("not-a-key-0000000", &hello("qwen3:32b")).status,
        401
    );
    assert_eq!(gw.chat(key, &hello("test/error500")).status, 502);
    let skip = gw.log_len();
    let text = std::fs::read_to_string(&gw.policy_path).unwrap();
    std::fs::write(
        &gw.policy_path,
        text.replace("max_requests: 2", "max_requests: 3"),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_log("Policy reloaded", skip);
    // A request in flight, for the per-key gauge (only keys with requests appear).
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        request(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("X-Api-Key", "alice-key-0123456789")],
            Some(hello("test/slow-first:1500").to_string().as_bytes()),
        )
        .status
    });
    let m = wait_for(Duration::from_secs(5), "metrics with every family", || {
        let m = request(gw.addr, "GET", "/metrics", &[], None).text();
        (m.contains("qwen_gateway_report_only_total")
            && m.contains("qwen_gateway_policy_reloads_total")
            && m.contains("qwen_gateway_key_in_flight_requests{"))
        .then_some(m)
    });
    assert_eq!(slow.join().unwrap(), 200);
    m
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics_and_labels() {
    let live = series(&exercised_metrics());
    // The certificate metric comes from the ops script's textfile output.
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let o = Command::new(tool("openssl"))
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=x",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success());
    let prom = dir.path().join("cert.prom");
    let o = Command::new(Path::new(REPO).join("scripts/ops/qwen-gateway-cert-expiry"))
        .arg("--cert")
        .arg(&cert)
        .arg("--textfile")
        .arg(&prom)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let cert_series = series(&std::fs::read_to_string(&prom).unwrap());
    assert_eq!(
        cert_series.get(CERT_METRIC).map(|l| l.contains("cert")),
        Some(true),
        "{cert_series:?}"
    );
    let mut all = live.clone();
    all.extend(cert_series);

    let mut queries: Vec<(String, String)> = dashboard_exprs()
        .into_iter()
        .map(|e| ("dashboard".to_owned(), e))
        .collect();
    queries.extend(alert_exprs());
    assert!(queries.len() >= 25, "{}", queries.len());
    let mut used = BTreeSet::new();
    for (what, expr) in &queries {
        let names = names_in(expr);
        assert!(
            !names.is_empty() || expr.contains("up{"),
            "{what}: no metric in {expr}"
        );
        let mut labels_seen = BTreeSet::new();
        for n in &names {
            let labels = all
                .get(n)
                .unwrap_or_else(|| panic!("{what}: {n} is not exported (query: {expr})"));
            labels_seen.extend(labels.iter().cloned());
            used.insert(n.clone());
        }
        for l in labels_in(expr) {
            assert!(
                labels_seen.contains(&l),
                "{what}: label {l} is on none of {names:?} (query: {expr})"
            );
        }
    }
    // The dashboard covers what the issue asks for: traffic, refusals, latency, tokens,
    // queue, backends, reloads.
    for family in [
        "qwen_gateway_requests_total",
        "qwen_gateway_rejections_total",
        "qwen_gateway_request_duration_seconds_bucket",
        "qwen_gateway_time_to_first_token_seconds_bucket",
        "qwen_gateway_prompt_tokens_total",
        "qwen_gateway_backend_queue_waiting",
        "qwen_gateway_backend_breaker_state",
        "qwen_gateway_policy_reloads_total",
        CERT_METRIC,
        "qwen_gateway_key_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(family), "nothing shows {family}");
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let o = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(Path::new(REPO).join("scripts/monitoring/qwen-gateway-alerts.yml"))
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
}
