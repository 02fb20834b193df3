//! The deployment bundle, tested with the real programs: Debian's Nginx with the shipped site
//! config (only domain, certificate paths and ports substituted) in front of the real gateway
//! and the stand-in Ollama, driven by the official OpenAI Python SDK; the certbot hook; the
//! systemd unit; the nftables ruleset; install.sh; the ops scripts.
//! `scripts/test.sh` installs nginx, nftables, curl and the SDK venv; a missing one fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Nginx {
    dir: tempfile::TempDir,
    child: Child,
    http: u16,
    https: u16,
}

impl Nginx {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    fn cmd_string(&self) -> String {
        format!(
            "{} -p {} -c {}",
            tool("nginx").display(),
            self.dir.path().display(),
            self.conf().display()
        )
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn start(gateway: &str, chat_ui: &str) -> Nginx {
        Self::start_with(gateway, chat_ui, &[])
    }

    /// With more site.env values (`{DIR}` in a value is the instance's directory).
    fn start_with(gateway: &str, chat_ui: &str, env: &[(&str, &str)]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["snippets", "acme/.well-known/acme-challenge", "logs"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let o = run(Command::new(tool("openssl"))
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(d.join("key.pem"))
            .arg("-out")
            .arg(d.join("cert.pem")));
        assert!(o.status.success(), "{}", text(&o));
        for f in [
            "qwen-gateway-security-headers.conf",
            "qwen-gateway-main.conf",
            "qwen-gateway-api.conf",
        ] {
            std::fs::copy(
                Path::new(REPO).join("nginx/snippets").join(f),
                d.join("snippets").join(f),
            )
            .unwrap();
        }
        let (http, https) = (free_port(), free_port());
        let gateways = gateway.split_whitespace().count();
        let o = run(Command::new(Path::new(REPO).join("nginx/render.sh"))
            .arg(Path::new(REPO).join("nginx/qwen-gateway.conf.template"))
            .env("GATEWAY_ADDRS", gateway)
            .env("DOMAIN", "localhost")
            .env("SSL_CERT", d.join("cert.pem"))
            .env("SSL_KEY", d.join("key.pem"))
            .env("HTTP_PORT", http.to_string())
            .env("HTTPS_PORT", https.to_string())
            .env("GATEWAY_ADDR", gateway)
            .env("CHATUI_ADDR", chat_ui)
            .env("ACCESS_LOG", d.join("logs/site.access.log"))
            .env("ERROR_LOG", d.join("logs/site.error.log"))
            .env("ACME_ROOT", d.join("acme"))
            .envs(
                env.iter()
                    .map(|(k, v)| (*k, v.replace("{DIR}", &d.display().to_string()))),
            ));
        assert!(o.status.success(), "{}", text(&o));
        let site = String::from_utf8(o.stdout).unwrap();
        // The test copy differs from the shipped template only in the substituted values.
        let template =
            std::fs::read_to_string(Path::new(REPO).join("nginx/qwen-gateway.conf.template"))
                .unwrap();
        // Without a chat UI the native API's /api/ location is rendered in (7 more lines).
        let no_ui = env.iter().any(|(k, v)| *k == "CHAT_UI" && *v == "none");
        assert_eq!(
            site.lines().count(),
            template.lines().count() + gateways - 1 + if no_ui { 7 } else { 0 }
        );
        std::fs::write(d.join("site.conf"), site).unwrap();
        // The main nginx.conf of a Debian install, reduced to what a private instance needs.
        let p = d.display();
        let main = format!(
            "user root;\nworker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
             include snippets/qwen-gateway-main.conf;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  access_log {p}/logs/access.log;\n\
               client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fcgi;\n\
               uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n  include site.conf;\n}}\n"
        );
        std::fs::write(d.join("nginx.conf"), main).unwrap();
        let child = Command::new(tool("nginx"))
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_for(Duration::from_secs(10), "nginx to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", https))
                .ok()
                .map(|_| ())
        });
        Nginx {
            dir,
            child,
            http,
            https,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-QUIT")
            .arg(self.child.id().to_string())
            .status();
        let _ = wait_for_exit(&mut self.child);
    }
}

fn wait_for_exit(child: &mut Child) -> Option<()> {
    for _ in 0..500 {
        if child.try_wait().ok().flatten().is_some() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// curl with the test CA; returns (status, headers lowercased, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("h");
    let o = run(Command::new(tool("curl"))
        .args(["-s", "--max-time", "20", "-D"])
        .arg(&hdr)
        .args(args));
    let headers = std::fs::read_to_string(&hdr)
        .unwrap_or_default()
        .to_lowercase();
    let status = headers
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer from curl {args:?}: {}", text(&o)));
    (
        status,
        headers,
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

fn python() -> PathBuf {
    let p = std::env::var("QWEN_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(REPO).join("target/test-venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import openai; scripts/test.sh creates the venv",
        p.display()
    );
    p
}

fn sdk(base: &str, key: &str, ca: &Path, source: &str, mode: &str, model: &str) -> Value {
    let o = run(Command::new(python())
        .arg(Path::new(REPO).join("tests/e2e/openai_client.py"))
        .args([base, key])
        .arg(ca)
        .args([source, mode, model]));
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("bad output: {}", text(&o)))
}

/// One native stream through the site with the official ollama client, timed
/// (`clients.py ollama-timing`), from the allowed source address 127.0.0.3.
fn ollama_stream(base: &str, ca: &Path, model: &str) -> Value {
    let o = run(Command::new(python())
        .arg(Path::new(REPO).join("tests/e2e/clients.py"))
        .args([base, "sdk-key-e2e-000", "ollama-timing", model])
        .arg(ca)
        .arg("127.0.0.3"));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(r["ok"], true, "{r}");
    r
}

const E2E_POLICY: &str = r#"
ollama_api: "{OLLAMA}"
auth: {enabled: true, header_key: "X-Api-Key", keys: [{id: sdk, key: "sdk-key-e2e-000"}]}
whitelist: {enabled: true, ips: ["127.0.0.3"]}
rate_limit: {enabled: true, max_requests: 100, window_seconds: 60}
audit: {dir: "{DIR}/audit"}
"#;

#[test]
fn nginx_in_front_of_the_gateway_end_to_end() {
    // Its stream timings must not share two cores with the package build.
    let _quiet = QUIET.lock().unwrap_or_else(|p| p.into_inner());
    let fake = Fake::start(&[]);
    let chat_ui = Fake::start(&[]);
    let gw = Gateway::start(E2E_POLICY, &fake.url());
    let ngx = Nginx::start(&gw.addr.to_string(), &chat_ui.addr.to_string());
    let (http, https) = (ngx.http, ngx.https);
    let ca = ngx.cert();
    let ca_s = ca.to_str().unwrap();
    let base = format!("https://localhost:{https}");

    // nginx -t: valid, and no warnings (no OCSP stapling noise, no deprecated directives).
    let o = run(Command::new(tool("nginx"))
        .arg("-p")
        .arg(ngx.dir.path())
        .arg("-c")
        .arg(ngx.conf())
        .arg("-t"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("[warn]"), "{}", text(&o));

    // Port 80: HTTPS redirect, except ACME challenges.
    let (s, h, _) = curl(&[&format!("http://localhost:{http}/v1/models?x=1")]);
    assert_eq!(s, 301);
    assert!(
        h.contains(&format!(
            "location: https://localhost:{https}/v1/models?x=1"
        )),
        "{h}"
    );
    std::fs::write(
        ngx.dir
            .path()
            .join("acme/.well-known/acme-challenge/tok123"),
        "tok123.thumb",
    )
    .unwrap();
    let (s, _, body) = curl(&[&format!(
        "http://localhost:{http}/.well-known/acme-challenge/tok123"
    )]);
    assert_eq!((s, body.as_str()), (200, "tok123.thumb"));

    // Security headers on API answers (errors included) and no caching of them.
    let (s, h, body) = curl(&[
        "--cacert",
        ca_s,
        "--interface",
        "127.0.0.3",
        &format!("{base}/v1/models"),
    ]);
    assert_eq!(s, 401, "{body}");
    for want in [
        "strict-transport-security: max-age=63072000; includesubdomains",
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "referrer-policy: no-referrer",
        "cache-control: no-store",
        "server: nginx\r\n",
    ] {
        assert!(h.contains(want), "missing {want:?} in\n{h}");
    }
    assert!(!h.contains("x-xss-protection"));
    assert!(body.contains("invalid api key"));
    // The chat UI at /.
    let (s, h, body) = curl(&["--cacert", ca_s, &format!("{base}/")]);
    assert_eq!((s, body.as_str()), (200, "Ollama is running"));
    assert!(h.contains("strict-transport-security"));

    // The OpenAI SDK through the whole chain, non-stream and stream, from an allowed client.
    let v1 = format!("{base}/v1");
    let r = sdk(
        &v1,
        "sdk-key-e2e-000",
        &ca,
        "127.0.0.3",
        "chat",
        "qwen3:32b",
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["content"], "You said: hello from the sdk");
    assert_eq!(r["model"], "qwen3:32b");
    assert!(r["total_tokens"].as_u64().unwrap() > 0);

    // Nothing buffers the stream: the first chunk arrives before the stand-in's delayed rest.
    let r = sdk(
        &v1,
        "sdk-key-e2e-000",
        &ca,
        "127.0.0.3",
        "stream",
        "test/delay-second:800",
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["content"], "You said: hello from the sdk");
    assert_eq!(r["finish_reason"], "stop");
    let first = r["first_content_s"].as_f64().unwrap();
    let last = r["last_content_s"].as_f64().unwrap();
    assert!(
        first < 0.7,
        "first chunk after {first}s: something buffered it"
    );
    assert!(last >= 0.75, "the delay did not happen ({last}s)");

    // Ollama's native API through the same site: streamed, not buffered, guarded.
    let r = ollama_stream(&format!("{base}/ollama"), &ca, "test/delay-second:800");
    assert_eq!(r["content"], "You said: a b c");
    let first = r["first_content_s"].as_f64().unwrap();
    assert!(
        first < 0.7,
        "native first chunk after {first}s: something buffered it"
    );
    assert!(r["last_content_s"].as_f64().unwrap() >= 0.75);
    let (s, _, _) = curl(&[
        "--cacert",
        ca_s,
        "--interface",
        "127.0.0.3",
        &format!("{base}/ollama/api/tags"),
    ]);
    assert_eq!(s, 401, "the native API is open through Nginx");

    // The gateway sees the real client, and a client-sent X-Forwarded-For gains nothing.
    let (s, _, body) = curl(&[
        "--cacert",
        ca_s,
        "--interface",
        "127.0.0.4",
        "-H",
        "X-Api-Key: sdk-key-e2e-000",
        "-H",
        "X-Forwarded-For: 127.0.0.3",
        "-H",
        "X-Real-IP: 127.0.0.3",
        &format!("{base}/v1/models"),
    ]);
    assert_eq!(s, 403, "a spoofed X-Forwarded-For got through: {body}");
    // A client cannot choose the audit line's user_id: Nginx clears X-User-Id.
    let (s, _, body) = curl(&[
        "--cacert",
        ca_s,
        "--interface",
        "127.0.0.3",
        "-H",
        "X-Api-Key: sdk-key-e2e-000",
        "-H",
        "X-User-Id: mallory",
        &format!("{base}/v1/models"),
    ]);
    assert_eq!(s, 200, "{body}");
    let r = sdk(
        &v1,
        "sdk-key-e2e-000",
        &ca,
        "127.0.0.4",
        "chat",
        "qwen3:32b",
    );
    assert_eq!(r["ok"], false);
    assert_eq!(r["status"], 403, "a disallowed client is refused");
    let lines = wait_for(Duration::from_secs(5), "audit lines", || {
        let l = gw.audit_lines();
        (l.len() >= 5).then_some(l)
    });
    assert!(
        lines
            .iter()
            .any(|l| l["client_ip"] == "127.0.0.3" && l["status"] == 200)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["client_ip"] == "127.0.0.4" && l["status"] == 403)
    );
    assert!(
        !lines.iter().any(|l| l["client_ip"] == "127.0.0.1"),
        "the gateway saw Nginx, not the client"
    );
    assert!(
        !lines.iter().any(|l| l["user_id"] == "mallory"),
        "a client chose its own user_id"
    );
    // Nginx's request id reaches the gateway's audit line.
    assert!(
        lines
            .iter()
            .all(|l| l["request_id"].as_str().is_some_and(|s| s.len() == 32))
    );

    // certbot's deploy hook: reloads a good config...
    let hook = Path::new(REPO).join("scripts/certbot-deploy-hook");
    let o = run(Command::new(&hook)
        .env("NGINX_CMD", ngx.cmd_string())
        .env("RENEWED_DOMAINS", "localhost"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("reloaded"));
    let (s, _, _) = curl(&["--cacert", ca_s, &format!("{base}/")]);
    assert_eq!(s, 200);
    // ...and refuses a broken one, leaving the running Nginx serving.
    let site = ngx.dir.path().join("site.conf");
    let good = std::fs::read_to_string(&site).unwrap();
    std::fs::write(&site, format!("{good}\nthis_is_not_a_directive on;\n")).unwrap();
    let o = run(Command::new(&hook).env("NGINX_CMD", ngx.cmd_string()));
    assert!(!o.status.success(), "the hook reloaded a broken config");
    assert!(text(&o).contains("this_is_not_a_directive"), "{}", text(&o));
    let r = sdk(
        &v1,
        "sdk-key-e2e-000",
        &ca,
        "127.0.0.3",
        "chat",
        "qwen3:32b",
    );
    assert_eq!(
        r["ok"], true,
        "Nginx stopped serving after a refused reload: {r}"
    );
}

#[test]
fn nginx_keeps_the_v1_path_and_overwrites_forwarded_headers() {
    // Point the site's gateway upstream at the stand-in, which records what Nginx sends.
    let echo = Fake::start(&[]);
    let ngx = Nginx::start(&echo.addr.to_string(), &echo.addr.to_string());
    let ca = ngx.cert();
    let (s, h, _) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--interface",
        "127.0.0.4",
        "-H",
        "X-Forwarded-For: 10.0.0.1",
        "-H",
        "X-Real-IP: 10.0.0.1",
        "-H",
        "X-Request-Id: client-chosen",
        "-H",
        "X-Api-Key: k-123",
        &format!("https://localhost:{}/v1/models?limit=2", ngx.https),
    ]);
    assert_eq!(s, 404);
    assert!(h.contains("cache-control: no-store"));
    let seen = &echo.stats()["last_other"];
    assert_eq!(
        seen["path"], "/v1/models?limit=2",
        "the /v1 prefix must reach the gateway"
    );
    let hd = &seen["headers"];
    assert_eq!(
        hd["x-forwarded-for"], "127.0.0.4",
        "overwritten, not appended: {hd}"
    );
    assert_eq!(hd["x-real-ip"], "127.0.0.4");
    assert_eq!(hd["x-forwarded-proto"], "https");
    assert_eq!(hd["x-api-key"], "k-123", "the client's key passes through");
    let rid = hd["x-request-id"].as_str().unwrap();
    assert!(
        rid.len() == 32 && rid != "client-chosen",
        "Nginx sets the request id: {rid}"
    );
    assert_eq!(
        hd["connection"].as_str().unwrap_or(""),
        "",
        "upstream keepalive: {hd}"
    );
}

#[test]
fn nginx_in_front_of_two_gateways_sharing_limits() {
    let redis = Redis::start();
    let fake = Fake::start(&[]);
    let policy = format!(
        "ollama_api: \"{{OLLAMA}}\"\nwhitelist: {{enabled: false}}\nauth: {{enabled: true, keys: [{{id: sdk, key: \"sdk-key-e2e-000\"}}]}}\n\
         rate_limit: {{enabled: true, max_requests: 4, window_seconds: 60, backend: redis, redis_url: \"{}\"}}\n",
        redis.url()
    );
    let g1 = Gateway::start(&policy, &fake.url());
    let mut g2 = Gateway::start(&policy, &fake.url());
    let ngx = Nginx::start(&format!("{} {}", g1.addr, g2.addr), &fake.addr.to_string());
    let ca = ngx.cert();
    let url = format!("https://localhost:{}/v1/chat/completions", ngx.https);
    let body = hello("qwen3:32b").to_string();
    let post = || {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            "X-Api-Key: sdk-key-e2e-000",
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &url,
        ])
        .0
    };
    let statuses: Vec<u16> = (0..6).map(|_| post()).collect();
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 429, 429],
        "one limit across both gateways"
    );
    // One gateway goes away: Nginx moves on to the other, no client sees a 502.
    g2.terminate();
    for _ in 0..4 {
        assert_eq!(
            post(),
            429,
            "the shared count still holds through the surviving gateway"
        );
    }
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("qwen-gateway.service");
    let shipped =
        std::fs::read_to_string(Path::new(REPO).join("systemd/qwen-gateway.service")).unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    std::fs::write(
        &unit,
        shipped.replace("/usr/local/bin/qwen-gateway", GATEWAY),
    )
    .unwrap();
    let o = run(Command::new(tool("systemd-analyze"))
        .arg("verify")
        .arg(&unit));
    assert!(
        o.status.success() && !text(&o).contains("qwen-gateway.service:"),
        "{}",
        text(&o)
    );
    let o = run(Command::new(tool("systemd-analyze"))
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let score: f64 = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {out}"));
    assert!(score <= 2.0, "exposure {score}");
    for must in [
        "Type=notify",
        "ExecStartPre=/usr/local/bin/qwen-gateway check",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "LogsDirectory=qwen-gateway",
        "User=qwen-gateway",
        "ProtectSystem=strict",
    ] {
        assert!(shipped.contains(must), "unit lacks {must}");
    }
    // The same gate fails a bare unit: the check can fail.
    let bare = dir.path().join("bare.service");
    std::fs::write(&bare, format!("[Service]\nExecStart={GATEWAY}\n")).unwrap();
    let o = run(Command::new(tool("systemd-analyze"))
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&bare));
    assert!(!o.status.success());
}

#[test]
fn firewall_ruleset_passes_nft_check() {
    let rules = Path::new(REPO).join("scripts/firewall/qwen-gateway.nft");
    let o = run(Command::new(tool("nft")).arg("-c").arg("-f").arg(&rules));
    assert!(o.status.success(), "{}", text(&o));
    let text_rules = std::fs::read_to_string(&rules).unwrap();
    for must in [
        "policy drop",
        "tcp dport { 80, 443 } accept",
        "ip saddr $INTERNAL_RANGES tcp dport 18789 accept",
        "iif \"lo\" accept",
        "11434",
    ] {
        assert!(text_rules.contains(must), "ruleset lacks {must}");
    }
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.nft");
    std::fs::write(&broken, text_rules.replace("policy drop", "policy maybe")).unwrap();
    assert!(
        !run(Command::new(tool("nft")).arg("-c").arg("-f").arg(&broken))
            .status
            .success()
    );
}

#[test]
fn install_into_destdir_is_idempotent_and_keeps_the_policy() {
    let dest = tempfile::tempdir().unwrap();
    let install = || {
        let o = run(Command::new(Path::new(REPO).join("scripts/install.sh"))
            .env("DESTDIR", dest.path())
            .env("BIN", GATEWAY)
            .env("DOMAIN", "gw.example.org"));
        assert!(o.status.success(), "{}", text(&o));
    };
    install();
    let root = dest.path();
    for f in [
        "usr/local/bin/qwen-gateway",
        "etc/qwen-gateway/policy.yaml",
        "etc/systemd/system/qwen-gateway.service",
        "etc/nginx/sites-available/qwen-gateway.conf",
        "etc/nginx/sites-enabled/qwen-gateway.conf",
        "etc/nginx/snippets/qwen-gateway-security-headers.conf",
        "etc/nginx/snippets/qwen-gateway-api.conf",
        "etc/nginx/modules-enabled/90-qwen-gateway-main.conf",
        "etc/letsencrypt/renewal-hooks/deploy/50-qwen-gateway-nginx",
        "etc/nftables.d/qwen-gateway.nft",
        "usr/local/bin/qwen-gateway-report",
        "usr/local/bin/qwen-gateway-health",
        "usr/local/bin/qwen-gateway-cert-expiry",
        "usr/local/bin/qwen-gateway-latency",
    ] {
        assert!(root.join(f).exists(), "{f} not installed");
    }
    let site =
        std::fs::read_to_string(root.join("etc/nginx/sites-available/qwen-gateway.conf")).unwrap();
    assert!(site.contains("server_name gw.example.org;"));
    for placeholder in [
        "@DOMAIN@",
        "@SSL_CERT@",
        "@HTTPS_PORT@",
        "@GATEWAY_ADDR@",
        "@HTTPS_SUFFIX@",
    ] {
        assert!(
            !site.contains(placeholder),
            "{placeholder} left in the site config"
        );
    }
    // An operator edits the policy; a second install keeps it.
    let policy = root.join("etc/qwen-gateway/policy.yaml");
    let edited = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("max_requests: 30", "max_requests: 31");
    std::fs::write(&policy, &edited).unwrap();
    install();
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), edited);
    assert!(root.join("etc/qwen-gateway/policy.yaml.dist").exists());
    // A host whose nginx.conf sets worker_shutdown_timeout already: a second one would stop
    // Nginx from starting, so the snippet is not enabled, and the installer says why.
    let main = root.join("etc/nginx/modules-enabled/90-qwen-gateway-main.conf");
    assert!(
        std::fs::read_to_string(&main)
            .unwrap()
            .contains("worker_shutdown_timeout 10m;")
    );
    std::fs::write(
        root.join("etc/nginx/nginx.conf"),
        "user www-data;\nworker_shutdown_timeout 30s;\nevents {}\n",
    )
    .unwrap();
    let o = run(Command::new(Path::new(REPO).join("scripts/install.sh"))
        .env("DESTDIR", dest.path())
        .env("BIN", GATEWAY)
        .env("DOMAIN", "gw.example.org"));
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !main.exists(),
        "the snippet would duplicate nginx.conf's directive"
    );
    assert!(
        text(&o).contains("already sets worker_shutdown_timeout"),
        "{}",
        text(&o)
    );
    let o = run(Command::new(GATEWAY).arg("check").arg("-c").arg(&policy));
    assert!(o.status.success(), "{}", text(&o));
}

fn ops(name: &str) -> Command {
    Command::new(Path::new(REPO).join("scripts/ops").join(name))
}

#[test]
fn ops_scripts_read_the_audit_log_and_endpoints() {
    for name in [
        "qwen-gateway-report",
        "qwen-gateway-health",
        "qwen-gateway-cert-expiry",
        "qwen-gateway-latency",
    ] {
        let o = run(ops(name).arg("--help"));
        assert!(
            o.status.success() && text(&o).to_lowercase().contains("usage"),
            "{name}: {}",
            text(&o)
        );
    }

    // A synthetic week of audit lines: day 8 is 2x slower; 401s and 429s from known sources.
    let dir = tempfile::tempdir().unwrap();
    for day in 1..=8 {
        let mut lines = String::new();
        let slow = if day == 8 { 2.0 } else { 1.0 };
        for i in 0..40 {
            let ms = (100.0 + f64::from(i)) * slow;
            lines.push_str(&format!(
                "{{\"status\":200,\"path\":\"/v1/chat/completions\",\"client_ip\":\"10.0.0.1\",\"key_id\":\"a\",\"latency_ms\":{ms}}}\n"
            ));
        }
        for _ in 0..(day * 2) {
            lines.push_str("{\"status\":401,\"path\":\"/v1/chat/completions\",\"client_ip\":\"203.0.113.7\",\"key_id\":null}\n");
        }
        lines.push_str("{\"status\":429,\"path\":\"/v1/chat/completions\",\"client_ip\":\"10.0.0.9\",\"key_id\":\"greedy\"}\n");
        lines.push_str("{\"status\":503,\"path\":\"/v1/chat/completions\",\"client_ip\":\"10.0.0.1\",\"key_id\":\"a\"}\n");
        std::fs::write(
            dir.path().join(format!("audit.2026-11-{day:02}.jsonl")),
            lines,
        )
        .unwrap();
    }
    let o = run(ops("qwen-gateway-report")
        .arg("--dir")
        .arg(dir.path())
        .args(["--day", "2026-11-08"]));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("401: 16 answers") && out.contains("203.0.113.7"),
        "{out}"
    );
    assert!(
        out.contains("429: 1 answers") && out.contains("greedy"),
        "{out}"
    );
    assert!(out.contains("5xx: 1 answers"), "{out}");

    let o = run(ops("qwen-gateway-latency").arg("--dir").arg(dir.path()));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("WARNING: p50 on 2026-11-08"),
        "{}",
        text(&o)
    );
    let o = run(ops("qwen-gateway-latency")
        .arg("--dir")
        .arg(dir.path())
        .args(["--until", "2026-11-07"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    // Certificate expiry on a 2-day certificate.
    let cert = dir.path().join("c.pem");
    let o = run(Command::new(tool("openssl"))
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=x",
        ])
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .arg("-out")
        .arg(&cert));
    assert!(o.status.success());
    let o = run(ops("qwen-gateway-cert-expiry")
        .arg("--cert")
        .arg(&cert)
        .args(["--warn-days", "1"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let o = run(ops("qwen-gateway-cert-expiry")
        .arg("--cert")
        .arg(&cert)
        .args(["--warn-days", "21"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // Health of the chain: all up, then Ollama down.
    let fake = Fake::start(&[]);
    let gw = Gateway::start(
        "ollama_api: \"{OLLAMA}\"\nauth: {enabled: false}\nwhitelist: {enabled: false}\nrate_limit: {enabled: false}\n",
        &fake.url(),
    );
    let gw_url = format!("http://{}", gw.addr);
    let o = run(ops("qwen-gateway-health").args([
        "--gateway",
        &gw_url,
        "--chat-ui",
        &fake.url(),
        "--ollama",
        &fake.url(),
    ]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let closed = format!("http://127.0.0.1:{}", free_port());
    let o = run(ops("qwen-gateway-health").args([
        "--gateway",
        &gw_url,
        "--chat-ui",
        &fake.url(),
        "--ollama",
        &closed,
        "--timeout",
        "2",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("DOWN  ollama"));
}

/// A static chat UI (Python's http.server over a directory shaped like Open WebUI's build) on a
/// free port; killed on drop.
struct StaticUi {
    _helper: Helper,
    addr: String,
    _dir: tempfile::TempDir,
}

impl StaticUi {
    fn start() -> StaticUi {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (path, body) in [
            ("index.html", "<html>chat</html>"),
            ("_app/immutable/entry/app.B3x9Yq2Z.js", "console.log(1)"),
            ("assets/index-DfB3x9Yq.js", "console.log(2)"),
            ("static/custom.css", "body{}"),
            ("static/loader.js", "console.log(3)"),
        ] {
            let p = d.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        let port = free_port();
        let helper = Helper::spawn(
            Command::new(python())
                .args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg(port.to_string())
                .arg("--directory")
                .arg(d),
            port,
            "the chat UI to listen",
        );
        StaticUi {
            addr: helper.addr.clone(),
            _helper: helper,
            _dir: dir,
        }
    }
}

fn header_values<'a>(headers: &'a str, name: &str) -> Vec<&'a str> {
    headers
        .lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
        .collect()
}

#[test]
fn nginx_serves_a_chat_ui_with_its_csp_caches_only_fingerprinted_assets_and_keeps_chat_bodies_in_memory()
 {
    let fake = Fake::start(&[]);
    let gw = Gateway::start(E2E_POLICY, &fake.url());
    let ui = StaticUi::start();
    let ngx = Nginx::start(&gw.addr.to_string(), &ui.addr);
    let ca = ngx.cert();
    let ca_s = ca.to_str().unwrap();
    let base = format!("https://localhost:{}", ngx.https);
    let get = |path: &str| curl(&["--cacert", ca_s, &format!("{base}{path}")]);

    // Open WebUI's policy, alone (the UI's own header is hidden): media from data: and blob:.
    let (s, h, body) = get("/");
    assert_eq!((s, body.as_str()), (200, "<html>chat</html>"));
    let csp = header_values(&h, "content-security-policy");
    assert_eq!(csp.len(), 1, "{h}");
    assert!(csp[0].contains("media-src 'self' data: blob:"), "{h}");
    assert!(csp[0].contains("worker-src 'self' blob:"), "{h}");
    assert!(h.contains("strict-transport-security"), "{h}");
    // Fingerprinted assets for a year; the rest keep the UI's own caching.
    for path in [
        "/_app/immutable/entry/app.B3x9Yq2Z.js",
        "/assets/index-DfB3x9Yq.js",
    ] {
        let (s, h, _) = get(path);
        assert_eq!(s, 200, "{path}");
        assert_eq!(
            header_values(&h, "cache-control"),
            ["public, max-age=31536000, immutable"],
            "{path}: {h}"
        );
        assert_eq!(header_values(&h, "content-security-policy").len(), 1);
    }
    for path in ["/static/custom.css", "/static/loader.js", "/"] {
        let (s, h, _) = get(path);
        assert_eq!(s, 200, "{path}");
        assert!(
            !h.contains("immutable") && !h.contains("max-age=31536000"),
            "{path}: {h}"
        );
    }
    // API answers: a deny-all policy and no caching, never the UI's.
    let (_, h, _) = get("/v1/models");
    assert_eq!(
        header_values(&h, "content-security-policy"),
        ["default-src 'none'; frame-ancestors 'none'"],
        "{h}"
    );

    // A 25 KB chat body, to the UI and to the API, stays in memory; a 2 MB one is written to a
    // temporary file, which Nginx logs (so the log would show the small ones too).
    let error_log = ngx.dir.path().join("logs/site.error.log");
    let body_file = ngx.dir.path().join("body.json");
    let post = |path: &str, size: usize| {
        std::fs::write(
            &body_file,
            format!(
                "{{\"model\":\"qwen3:32b\",\"pad\":\"{}\"}}",
                "x".repeat(size)
            ),
        )
        .unwrap();
        let data = format!("@{}", body_file.display());
        curl(&[
            "--cacert",
            ca_s,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &format!("{base}{path}"),
        ])
        .0
    };
    post("/", 25_000);
    post("/v1/chat/completions", 25_000);
    let log = std::fs::read_to_string(&error_log).unwrap_or_default();
    assert!(!log.contains("buffered to a temporary file"), "{log}");
    post("/", 2_000_000);
    wait_for(Duration::from_secs(5), "the large body's log line", || {
        std::fs::read_to_string(&error_log)
            .unwrap_or_default()
            .contains("buffered to a temporary file")
            .then_some(())
    });
    // The log paths come from site.env.
    let access = std::fs::read_to_string(ngx.dir.path().join("logs/site.access.log")).unwrap();
    assert!(access.contains("GET /static/custom.css"), "{access}");
    let site = std::fs::read_to_string(ngx.dir.path().join("site.conf")).unwrap();
    assert!(!site.contains("/var/log/nginx"), "a fixed log path is left");
}

/// The stand-in chat UI of `tests/e2e/chat_ui.py` (Open WebUI's or OpenClaw's own `/api/`, a
/// Socket.IO upgrade, OpenClaw's own CSP), logging every request it gets.
struct UiStandIn {
    _helper: Helper,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl UiStandIn {
    fn start(flavour: &str) -> UiStandIn {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let port = free_port();
        let helper = Helper::spawn(
            Command::new(python())
                .arg(Path::new(REPO).join("tests/e2e/chat_ui.py"))
                .arg(port.to_string())
                .arg(&log)
                .arg(flavour),
            port,
            "the chat UI stand-in to listen",
        );
        UiStandIn {
            addr: helper.addr.clone(),
            _helper: helper,
            log,
            _dir: dir,
        }
    }

    /// The paths the UI was asked for.
    fn paths(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["path"].as_str().map(str::to_owned))
            .collect()
    }
}

/// Issue 18: with a chat UI at `/`, the UI keeps its own `/api/` (Open WebUI's config,
/// version, v1 API and socket; OpenClaw's users, media and artifacts), Ollama's native API is
/// at `/ollama/api/`, and an Ollama client, an OpenAI client and the UI work through the same
/// site; the UI may frame its own pages while the API may not be framed at all.
#[test]
fn a_chat_ui_keeps_its_own_api_and_ollama_has_its_prefix() {
    // Three Nginx instances and several Python clients: never beside the stream-timing test.
    let _quiet = QUIET.lock().unwrap_or_else(|p| p.into_inner());
    let fake = Fake::start(&[]);
    let gw = Gateway::start(E2E_POLICY, &fake.url());
    let ui = UiStandIn::start("open-webui");
    let ngx = Nginx::start(&gw.addr.to_string(), &ui.addr);
    let ca = ngx.cert();
    let ca_s = ca.to_str().unwrap();
    let base = format!("https://localhost:{}", ngx.https);
    let get = |path: &str| {
        curl(&[
            "--cacert",
            ca_s,
            "--interface",
            "127.0.0.3",
            &format!("{base}{path}"),
        ])
    };

    // The page's first calls, and the version check it reloads on: the UI's own answers.
    let (s, _, body) = get("/api/config");
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["name"],
        "Open WebUI"
    );
    let (s, _, body) = get("/api/version");
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        "0.12.4",
        "the page would show \"Open WebUI Backend Required\""
    );
    for path in ["/api/v1/chats/?page=1", "/api/v1/models", "/api/v1/auths/"] {
        let (s, _, body) = get(path);
        assert_eq!(s, 200, "{path}: {body}");
        assert!(body.contains("\"ui\": true"), "{path}: {body}");
    }
    // A file preview the page frames: same-origin framing allowed on the UI, never on the API.
    let (s, h, _) = get("/api/v1/files/f1/content/html");
    assert_eq!(s, 200);
    assert_eq!(header_values(&h, "x-frame-options"), ["sameorigin"], "{h}");
    let csp = header_values(&h, "content-security-policy");
    assert_eq!(csp.len(), 1, "{h}");
    assert!(csp[0].contains("frame-ancestors 'self'"), "{h}");
    let (_, h, _) = get("/v1/models");
    assert_eq!(header_values(&h, "x-frame-options"), ["deny"], "{h}");
    assert_eq!(
        header_values(&h, "content-security-policy"),
        ["default-src 'none'; frame-ancestors 'none'"]
    );
    // The socket connect upgrades at the UI.
    let (s, h, _) = curl(&[
        "--cacert",
        ca_s,
        "--http1.1",
        "--max-time",
        "3",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("{base}/ws/socket.io/?EIO=4&transport=websocket"),
    ]);
    assert_eq!(s, 101, "{h}");
    assert!(
        h.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{h}"
    );

    // Ollama's client at https://<domain>/ollama, and the OpenAI SDK at /v1, through the same
    // site, from an allowed client.
    let r = ollama_stream(&format!("{base}/ollama"), &ca, "qwen3:32b");
    assert_eq!(r["content"], "You said: a b c");
    let (s, _, body) = curl(&[
        "--cacert",
        ca_s,
        "--interface",
        "127.0.0.3",
        "-H",
        "Authorization: Bearer sdk-key-e2e-000",
        &format!("{base}/ollama/api/tags"),
    ]);
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("qwen3:32b"), "{body}");
    let r = sdk(
        &format!("{base}/v1"),
        "sdk-key-e2e-000",
        &ca,
        "127.0.0.3",
        "chat",
        "qwen3:32b",
    );
    assert_eq!(r["ok"], true, "{r}");

    // None of the UI's own requests reached the gateway; all of them reached the UI.
    let audit = wait_for(Duration::from_secs(5), "audit lines", || {
        let l = gw.audit_lines();
        (l.len() >= 4).then_some(l)
    });
    for l in &audit {
        let path = l["path"].as_str().unwrap_or_default();
        assert!(
            path.starts_with("/v1/") || path.starts_with("/api/chat") || path == "/api/tags",
            "the gateway got the UI's request {path}"
        );
    }
    let paths = ui.paths();
    for want in [
        "/api/config",
        "/api/version",
        "/api/v1/chats/?page=1",
        "/ws/socket.io/",
    ] {
        assert!(
            paths.iter().any(|p| p.starts_with(want)),
            "{want} did not reach the UI: {paths:?}"
        );
    }
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("/ollama") || p.starts_with("/v1/"))
    );

    // OpenClaw's web chat: its own /api/ paths, and its own policy passed through with the
    // site's tightening one beside it.
    let claw = UiStandIn::start("openclaw");
    let ngx = Nginx::start_with(&gw.addr.to_string(), &claw.addr, &[("CHAT_UI", "openclaw")]);
    let base = format!("https://localhost:{}", ngx.https);
    for path in [
        "/api/users/u1/avatar",
        "/api/chat/media/outgoing/m1.png",
        "/api/artifacts/download/a1",
    ] {
        let (s, _, body) = curl(&[
            "--cacert",
            ngx.cert().to_str().unwrap(),
            &format!("{base}{path}"),
        ]);
        assert_eq!(s, 200, "{path}: {body}");
    }
    let (_, h, _) = curl(&[
        "--cacert",
        ngx.cert().to_str().unwrap(),
        &format!("{base}/"),
    ]);
    let csp = header_values(&h, "content-security-policy");
    assert_eq!(csp.len(), 2, "{h}");
    assert!(
        csp.iter().any(|c| c.contains("script-src 'self' 'sha256-")),
        "OpenClaw's own policy, with its inline script's hash, must pass: {h}"
    );
    assert!(
        csp.contains(&"object-src 'none'; base-uri 'self'; frame-ancestors 'self'"),
        "{h}"
    );
    assert_eq!(claw.paths().len(), 4);

    // No chat UI: / is the gateway's health answer and /api/ is Ollama's again.
    let ngx = Nginx::start_with(&gw.addr.to_string(), "", &[("CHAT_UI", "none")]);
    let base = format!("https://localhost:{}", ngx.https);
    let ca = ngx.cert();
    let (s, _, body) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--interface",
        "127.0.0.3",
        &format!("{base}/"),
    ]);
    assert_eq!((s, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (s, _, _) = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--interface",
        "127.0.0.3",
        &format!("{base}/api/tags"),
    ]);
    assert_eq!(s, 401, "/api/ must be the gateway's without a UI");
}

/// Held by the tests that measure stream timing and by the CPU-heavy package build, so they
/// never run at once on a 2-core machine.
static QUIET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A throwaway root that dpkg can install into without chroot: an empty package database and
/// the account files the maintainer scripts edit.
fn dpkg_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["etc", "var/lib/dpkg/info", "var/lib/dpkg/updates", "tmp"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for (f, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/gshadow", "root:*::\n"),
        ("var/lib/dpkg/status", ""),
        ("var/lib/dpkg/available", ""),
    ] {
        std::fs::write(r.join(f), text).unwrap();
    }
    root
}

/// dpkg on the throwaway root: the maintainer scripts really run (without chroot, with
/// DPKG_ROOT pointing at the root, as Debian's chrootless bootstrapping does).
fn dpkg(root: &Path, args: &[&str]) -> Output {
    let r = root.display().to_string();
    run(Command::new(tool("dpkg"))
        .arg(format!("--instdir={r}"))
        .arg(format!("--admindir={r}/var/lib/dpkg"))
        .arg(format!("--log={r}/dpkg.log"))
        .args([
            "--force-script-chrootless",
            "--force-not-root",
            // libc6 and passwd are the host's, not in this empty database.
            "--force-depends",
            "--force-confdef",
            "--force-confold",
        ])
        .args(args))
}

#[test]
fn debian_package_installs_keeps_edited_conffiles_and_checks_the_policy() {
    let _quiet = QUIET.lock().unwrap_or_else(|p| p.into_inner());
    // Built by cargo-deb from the tests' debug binary as it is (no build: relinking it would
    // replace the binary under the other tests).
    let out = tempfile::tempdir().unwrap();
    let o = run(Command::new(Path::new(REPO).join("scripts/package-deb.sh"))
        .args(["--profile", "dev", "--no-build", "-o"])
        .arg(out.path()));
    assert!(o.status.success(), "{}", text(&o));
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let deb = deb.to_str().unwrap();

    // The package carries the gateway alone: no test or benchmark helper.
    let o = run(Command::new(tool("dpkg-deb")).args(["-c", deb]));
    let listing = text(&o);
    for helper in ["fake-ollama", "qwen-bench", "bare-proxy"] {
        assert!(!listing.contains(helper), "{helper} is in the package");
    }
    let o = run(Command::new(tool("dpkg-deb")).args(["-I", deb, "conffiles"]));
    let conffiles = text(&o);
    for c in [
        "/etc/qwen-gateway/policy.yaml",
        "/etc/qwen-gateway/site.env",
        "/etc/nginx/snippets/qwen-gateway-api.conf",
        "/etc/letsencrypt/renewal-hooks/deploy/50-qwen-gateway-nginx",
    ] {
        assert!(conffiles.contains(c), "{c} is not a conffile: {conffiles}");
    }

    let root = dpkg_root();
    let r = root.path();
    let o = dpkg(r, &["-i", deb]);
    let said = text(&o);
    assert!(o.status.success(), "{said}");
    // The packaged policy holds the public demo key: the package configures, but the
    // service does not start with it (the unit's check refuses it too).
    assert!(
        said.contains(
            "does NOT pass qwen-gateway check --deny-demo-key; the service is not (re)started"
        ) && said.contains("public demo key"),
        "{said}"
    );
    assert!(said.contains("Next steps"), "{said}");
    // The service user, in the target root only; the policy readable by its group only.
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("qwen-gateway:"))
        .unwrap_or_else(|| panic!("no service user: {passwd}"));
    assert!(user.ends_with(":/nonexistent:/usr/sbin/nologin"), "{user}");
    let gid: u32 = user.split(':').nth(3).unwrap().parse().unwrap();
    let host = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !host.contains("qwen-gateway service"),
        "the host was changed"
    );
    use std::os::unix::fs::MetadataExt as _;
    let policy = r.join("etc/qwen-gateway/policy.yaml");
    let meta = std::fs::metadata(&policy).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, gid, 0o640)
    );
    // The unit runs the packaged binary; the installed binary checks the installed policy.
    let unit =
        std::fs::read_to_string(r.join("usr/lib/systemd/system/qwen-gateway.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/qwen-gateway --config /etc/qwen-gateway/policy.yaml")
    );
    assert!(
        unit.contains(
            "ExecStartPre=/usr/bin/qwen-gateway check --deny-demo-key --config /etc/qwen-gateway/policy.yaml"
        ),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    let o = run(Command::new(r.join("usr/bin/qwen-gateway"))
        .args(["check", "--config"])
        .arg(&policy));
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "usr/bin/qwen-gateway-report",
        "usr/share/qwen-gateway/nginx/render.sh",
        "usr/share/qwen-gateway/monitoring/qwen-gateway-alerts.yml",
        "etc/nginx/modules-enabled/90-qwen-gateway-main.conf",
        "var/www/letsencrypt",
    ] {
        assert!(r.join(f).exists(), "{f} missing");
    }

    // An operator's edit (a key of their own, a limit) survives an upgrade (the same
    // package again), and the policy then passes.
    let edited = std::fs::read_to_string(&policy)
        .unwrap()
        .replace(
            "sha256:090d1548c9d65f413a1a2c828a0bee3a7ae02d2137caf51e6029e6c3cb1f1fa4",
            "sha256:62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef",
        )
        .replace("max_requests: 30 ", "max_requests: 12 ");
    assert!(!edited.contains("090d1548c9d65f413a1a2c828a0bee3a"));
    assert!(edited.contains("max_requests: 12 "));
    std::fs::write(&policy, &edited).unwrap();
    let o = dpkg(r, &["-i", deb]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), edited);
    assert!(
        text(&o).contains("passes qwen-gateway check"),
        "{}",
        text(&o)
    );
    assert!(
        !text(&o).contains("Next steps"),
        "an upgrade is not a first install"
    );

    // A broken policy: the package still configures, says which field is wrong, and does not
    // start (or restart) the service.
    std::fs::write(
        &policy,
        edited.replace("max_requests: 12 ", "max_requests: 0 "),
    )
    .unwrap();
    let o = dpkg(r, &["-i", deb]);
    let said = text(&o);
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains(
            "does NOT pass qwen-gateway check --deny-demo-key; the service is not (re)started"
        ),
        "{said}"
    );
    assert!(said.contains("rate_limit.max_requests"), "{said}");

    // Removal keeps the operator's files; purge takes the conffiles.
    let o = dpkg(r, &["-r", "qwen-gateway"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!r.join("usr/bin/qwen-gateway").exists());
    assert!(policy.exists(), "remove took the policy");
    let o = dpkg(r, &["-P", "qwen-gateway"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!policy.exists(), "purge left the policy");
}
