//! The operator's commands that are not the server: `check` (every error and warning, a probe
//! of the backends and Redis, the difference from the running gateway) and `status` (the
//! running gateway's policy and reload history). They print for a person and return the
//! process exit code; HTTP goes through awc like the gateway's own upstream calls.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::policy::{LimitBackend, Policy, view};

/// How long each probe or fetch may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct CheckOptions {
    pub deny_warnings: bool,
    pub deny_demo_key: bool,
    pub probe: bool,
    /// Compare with the gateway answering at this URL (`/status`).
    pub against: Option<String>,
}

/// `qwen-gateway check`: exit 0 when the file is valid (and, with `--deny-warnings`, has no
/// warning), 1 otherwise.
pub fn check(path: &Path, opts: &CheckOptions) -> ExitCode {
    let policy = match Policy::load(path) {
        Ok(p) => p,
        Err(e) => {
            let all = e.each();
            for one in &all {
                eprintln!("error: {one}");
            }
            eprintln!(
                "qwen-gateway: the policy file {} is NOT valid ({} error{})",
                path.display(),
                all.len(),
                if all.len() == 1 { "" } else { "s" }
            );
            return ExitCode::FAILURE;
        }
    };
    print!("{}", policy.summary());
    let mut warnings = policy.warnings.len();
    if opts.probe {
        warnings += probe(&policy);
    }
    if let Some(url) = &opts.against {
        match against(&policy, url) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
            }
            Err(e) => {
                eprintln!("error: cannot compare with the running gateway at {url}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if opts.deny_demo_key && policy.uses_demo_key() {
        eprintln!(
            "qwen-gateway: the policy file {} uses the public demo key, and --deny-demo-key \
             was given: replace it with one from `qwen-gateway gen-key`",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    if opts.deny_warnings && warnings > 0 {
        eprintln!(
            "qwen-gateway: the policy file {} is valid but has {warnings} warning(s), and \
             --deny-warnings was given",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    println!("qwen-gateway: the policy file {} is valid", path.display());
    ExitCode::SUCCESS
}

/// A blocking GET through awc; the body as text.
fn get(url: &str) -> Result<(u16, String), String> {
    let url = url.to_owned();
    actix_web::rt::System::new().block_on(async move {
        let client = awc::Client::builder().timeout(PROBE_TIMEOUT).finish();
        let mut resp = client
            .get(url.as_str())
            .send()
            .await
            .map_err(|e| describe_send_error(&e))?;
        let body = resp
            .body()
            .limit(4 * 1024 * 1024)
            .await
            .map_err(|_| "the answer could not be read".to_owned())?;
        Ok((
            resp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    })
}

fn describe_send_error(e: &awc::error::SendRequestError) -> String {
    use awc::error::{ConnectError, SendRequestError};
    match e {
        SendRequestError::Connect(ConnectError::Io(io)) => io.to_string(),
        SendRequestError::Connect(c) => c.to_string(),
        SendRequestError::Timeout => format!("no answer within {PROBE_TIMEOUT:?}"),
        other => other.to_string(),
    }
}

/// Tries each backend (`/api/version`, `/api/tags`) and Redis; prints what answered. Returns
/// how many did not (counted as warnings).
fn probe(p: &Policy) -> usize {
    let mut failed = 0;
    for b in &p.backends {
        match get(&format!("{}/api/version", b.url)) {
            Ok((200, body)) => {
                let version = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["version"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".to_owned());
                let models = get(&format!("{}/api/tags", b.url))
                    .ok()
                    .and_then(|(_, t)| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v["models"].as_array().map(Vec::len));
                let models = models.map_or("model list unreadable".to_owned(), |n| {
                    format!("{n} model(s)")
                });
                println!(
                    "probe: backend {}: answered, Ollama {version}, {models}",
                    b.url
                );
            }
            Ok((status, _)) => {
                failed += 1;
                println!(
                    "probe: backend {}: answered HTTP {status}, not Ollama's API",
                    b.url
                );
            }
            Err(e) => {
                failed += 1;
                println!("probe: backend {}: did not answer ({e})", b.url);
            }
        }
    }
    if let LimitBackend::Redis(r) = &p.limit_backend {
        // The URL may hold a password: it is never printed.
        let answer = redis::Client::open(r.url.as_str())
            .map_err(|e| redis_trouble(&e))
            .and_then(|c| {
                c.get_connection_with_timeout(PROBE_TIMEOUT)
                    .map_err(|e| redis_trouble(&e))
            })
            .and_then(|mut conn| {
                redis::cmd("PING")
                    .query::<String>(&mut conn)
                    .map_err(|e| redis_trouble(&e))
            });
        match answer {
            Ok(pong) => println!("probe: redis: answered {pong}"),
            Err(kind) => {
                failed += 1;
                println!("probe: redis: did not answer ({kind})");
            }
        }
    }
    failed
}

/// The running gateway's URL from a policy's `listen` (every interface: the loopback).
pub fn local_url(p: &Policy) -> String {
    let mut addr = p.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    format!("http://{addr}")
}

fn fetch_status(url: &str) -> Result<Value, String> {
    let (status, body) = get(&format!("{}/status", url.trim_end_matches('/')))?;
    if status != 200 {
        return Err(format!(
            "/status answered HTTP {status} (it answers only addresses in trusted_proxies)"
        ));
    }
    serde_json::from_str(&body).map_err(|_| "/status did not answer JSON".to_owned())
}

/// What loading `p` would change in the gateway at `url`.
fn against(p: &Policy, url: &str) -> Result<Vec<String>, String> {
    let status = fetch_status(url)?;
    let running = &status["policy"]["view"];
    let sha = status["policy"]["sha256"].as_str().unwrap_or("unknown");
    if sha == p.sha256 {
        return Ok(vec![format!(
            "against the running gateway: the same file (sha256 {sha})"
        )]);
    }
    let changes = view::diff(running, &view::view(p));
    let mut out = vec![format!(
        "against the running gateway (policy sha256 {sha}): {} change(s); key secrets are \
         not compared",
        changes.len()
    )];
    out.extend(changes.into_iter().map(|c| format!("  {c}")));
    Ok(out)
}

/// `qwen-gateway status`: the running gateway's policy and its reload history.
pub fn status(url: &str) -> ExitCode {
    let s = match fetch_status(url) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qwen-gateway: cannot read the status of {url}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let p = &s["policy"];
    println!("gateway:   {url} (version {})", text(&s["version"]));
    println!(
        "policy:    {} sha256 {}",
        text(&p["path"]),
        text(&p["sha256"])
    );
    println!("loaded at: {}", text(&p["loaded_at"]));
    for w in p["warnings"].as_array().into_iter().flatten() {
        println!("warning:   {}", text(w));
    }
    println!("reloads (oldest first):");
    for r in s["reloads"].as_array().into_iter().flatten() {
        let sha = r["sha256"]
            .as_str()
            .map_or("-".to_owned(), |h| h.get(..12).unwrap_or(h).to_owned());
        println!(
            "  {}  {:<8} {:<9} {sha}",
            text(&r["at"]),
            text(&r["trigger"]),
            text(&r["result"])
        );
        for c in r["changes"].as_array().into_iter().flatten() {
            println!("      {}", text(c));
        }
        for n in r["needs_restart"].as_array().into_iter().flatten() {
            println!("      needs a restart: {}", text(n));
        }
        if let Some(e) = r["error"].as_str() {
            println!("      error: {e}");
        }
    }
    ExitCode::SUCCESS
}

/// A Redis failure in words, without the URL (it may hold a password).
fn redis_trouble(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        format!("no answer within {PROBE_TIMEOUT:?}")
    } else if e.is_connection_refusal() {
        "connection refused".to_owned()
    } else if e.is_io_error() {
        "connection failed".to_owned()
    } else {
        format!("{:?}", e.kind())
    }
}
