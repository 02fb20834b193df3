//! Test harness: the real binaries on real sockets, and a small HTTP/1.1 client.
//!
//! `Fake` runs the stand-in Ollama, `Gateway` runs `qwen-gateway` with a policy written to a
//! temporary directory; both bind port 0 and announce their address, which the harness reads.
//! The client speaks raw HTTP/1.1 so tests control everything: the source address (bind to
//! 127.0.0.2 to be an untrusted peer), headers, and the arrival time of each body chunk.
//! Every wait is a deadline with polling, never a fixed sleep.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_qwen-gateway");
/// The stand-in Ollama, built from the `tools` workspace member next to the gateway
/// (`cargo build --workspace --bins`, as scripts/test.sh does before the tests).
pub static FAKE: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
    let p = Path::new(GATEWAY).with_file_name("fake-ollama");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (scripts/test.sh does)",
        p.display()
    );
    p
});

/// Polls `f` every 10 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_lines(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

pub struct Fake {
    child: Child,
    pub addr: SocketAddr,
}

impl Fake {
    pub fn start(extra: &[&str]) -> Fake {
        Self::start_at("127.0.0.1:0", extra)
    }

    /// On a chosen address (to bring a killed backend back on its old port).
    pub fn start_at(listen: &str, extra: &[&str]) -> Fake {
        let mut child = Command::new(&*FAKE)
            .args(["--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-ollama");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read fake address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("announce line")
            .parse()
            .expect("address");
        Fake { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> Value {
        let r = request(self.addr, "GET", "/_fake/stats", &[], None);
        serde_json::from_slice(&r.body).expect("stats json")
    }

    pub fn chat_requests(&self) -> u64 {
        self.stats()["chat_requests"].as_u64().unwrap_or(u64::MAX)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub policy_path: PathBuf,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts the gateway with `policy` (YAML). `{OLLAMA}` and `{DIR}` in it are replaced by
    /// the stand-in's URL and the temporary directory; `listen` is forced to a free port.
    pub fn start(policy: &str, ollama: &str) -> Gateway {
        Self::start_with(policy, ollama, &[])
    }

    pub fn start_with(policy: &str, ollama: &str, args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_path = dir.path().join("policy.yaml");
        let text = Self::render(policy, ollama, dir.path());
        std::fs::write(&policy_path, text).expect("write policy");
        Self::spawn(dir, policy_path, args)
    }

    pub fn render(policy: &str, ollama: &str, dir: &Path) -> String {
        let mut text = policy
            .replace("{OLLAMA}", ollama)
            .replace("{DIR}", &dir.display().to_string());
        if !text.contains("listen:") {
            text.push_str("\nlisten: \"127.0.0.1:0\"\n");
        }
        text
    }

    pub fn spawn(dir: tempfile::TempDir, policy_path: PathBuf, args: &[&str]) -> Gateway {
        Self::spawn_under(&[], dir, policy_path, args)
    }

    /// Starts the gateway with `policy` under a wrapper command (`prlimit --nofile=..`).
    pub fn start_under(wrapper: &[&str], policy: &str, ollama: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, Self::render(policy, ollama, dir.path()))
            .expect("write policy");
        Self::spawn_under(wrapper, dir, policy_path, &[])
    }

    fn spawn_under(
        wrapper: &[&str],
        dir: tempfile::TempDir,
        policy_path: PathBuf,
        args: &[&str],
    ) -> Gateway {
        let mut cmd = match wrapper.split_first() {
            None => Command::new(GATEWAY),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(GATEWAY);
                c
            }
        };
        let mut child = cmd
            .arg("--config")
            .arg(&policy_path)
            .args(["--workers", "2"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gateway");
        let stderr = spawn_lines(&mut child);
        let addr = wait_for(Duration::from_secs(20), "gateway to listen", || {
            let lines = stderr.lock().unwrap();
            if let Some(l) = lines.iter().find(|l| l.contains("qwen-gateway: ")) {
                panic!("gateway failed to start: {l}");
            }
            lines.iter().find_map(|l| {
                if !l.contains("Listening on") {
                    return None;
                }
                let rest = l.split(" addr=").nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            })
        });
        Gateway {
            child,
            addr,
            dir,
            policy_path,
            stderr,
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle`, counting only lines after `skip`.
    pub fn wait_log(&self, needle: &str, skip: usize) {
        wait_for(Duration::from_secs(10), needle, || {
            let lines = self.stderr.lock().unwrap();
            lines
                .iter()
                .skip(skip)
                .any(|l| l.contains(needle))
                .then_some(())
        });
    }

    pub fn log_len(&self) -> usize {
        self.stderr.lock().unwrap().len()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        let child = &mut self.child;
        wait_for(Duration::from_secs(30), "gateway to exit", || {
            child.try_wait().ok().flatten()
        })
        .code()
    }

    pub fn audit_lines(&self) -> Vec<Value> {
        let dir = self.dir.path().join("audit");
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.extend(
                    text.lines()
                        .map(|l| serde_json::from_str(l).expect("audit json")),
                );
            }
        }
        out
    }

    pub fn audit_text(&self) -> String {
        let dir = self.dir.path().join("audit");
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    pub fn chat(&self, key: &str, body: &Value) -> Response {
        request(
            self.addr,
            "POST",
            "/v1/chat/completions",
            &[("X-Api-Key", key), ("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
/// A private redis-server on a free loopback port, stoppable and restartable on that port.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

fn redis_bin() -> PathBuf {
    for p in [
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        "/usr/sbin/redis-server",
    ] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("redis-server is not installed; scripts/test.sh installs it");
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis { child: None, port };
        r.up();
        r
    }

    pub fn up(&mut self) {
        let child = Command::new(redis_bin())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), "redis to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.down();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Decoded body pieces with their arrival times (for streaming checks).
    pub pieces: Vec<(Instant, Vec<u8>)>,
    pub started: Instant,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The ids of a `/v1/models` answer, in order.
    pub fn model_ids(&self) -> Vec<String> {
        self.json()["data"]
            .as_array()
            .expect("data array")
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// SSE `data:` payloads, in order.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
            .collect()
    }

    /// Asserts the OpenAI error envelope and returns its message.
    pub fn error_message(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "no error.message in {v}");
        assert!(e["type"].is_string(), "no error.type in {v}");
        assert!(e.get("code").is_some(), "no error.code in {v}");
        e["message"].as_str().unwrap_or_default().to_owned()
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    request_from(None, addr, method, path, headers, body)
}

/// `n` chat requests with `key`, released at once from `n` threads (a barrier), spread over
/// `addrs` in turn; the answers in request order.
pub fn burst(addrs: &[SocketAddr], n: usize, key: &str, body: &str) -> Vec<Response> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (body, key, barrier) = (body.to_owned(), key.to_owned(), barrier.clone());
            let addr = addrs[i % addrs.len()];
            std::thread::spawn(move || {
                barrier.wait();
                request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("X-Api-Key", &key)],
                    Some(body.as_bytes()),
                )
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn connect(from: Option<IpAddr>, addr: SocketAddr) -> TcpStream {
    match from {
        None => TcpStream::connect(addr).expect("connect"),
        Some(ip) => {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket
                .bind(&SocketAddr::new(ip, 0).into())
                .expect("bind source address");
            socket.connect(&addr.into()).expect("connect");
            socket.into()
        }
    }
}

/// One request on a fresh connection (`Connection: close`), optionally from a chosen source IP.
pub fn request_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let started = Instant::now();
    let mut s = connect(from, addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write head");
    if let Some(b) = body {
        // The server may answer (413) and close before reading a large body.
        let _ = s.write_all(b);
    }
    read_response(s, started, method == "HEAD")
}

fn read_response(s: TcpStream, started: Instant, head_only: bool) -> Response {
    let mut r = BufReader::new(s);
    let mut status_line = String::new();
    r.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut pieces = Vec::new();
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size_line = String::new();
            if r.read_line(&mut size_line).unwrap_or(0) == 0 {
                break;
            }
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            if r.read_exact(&mut chunk).is_err() {
                break;
            }
            let mut crlf = [0u8; 2];
            let _ = r.read_exact(&mut crlf);
            pieces.push((Instant::now(), chunk.clone()));
            body.extend_from_slice(&chunk);
        }
    } else if head_only {
        // A HEAD answer has its GET's headers and no body.
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).expect("body");
        pieces.push((Instant::now(), body.clone()));
    } else {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pieces.push((Instant::now(), buf[..n].to_vec()));
                    body.extend_from_slice(&buf[..n]);
                }
            }
        }
    }
    Response {
        status,
        headers,
        body,
        pieces,
        started,
    }
}

/// Words that must never reach a client: client-library names, OS error text, internal
/// addresses, panics, and the stand-in's internal error details.
pub fn assert_no_internals(body: &str, internal_addr: &str) {
    let lower = body.to_lowercase();
    for word in [
        "awc",
        "actix",
        "hyper",
        "tokio",
        "os error",
        "connection refused",
        "panicked",
        "backtrace",
        "sendrequesterror",
        "connecterror",
        "cuda",
        "/tmp/",
        "0x7f00",
        "/srv/",
        "ollama",
        "11434",
    ] {
        assert!(!lower.contains(word), "client body leaks {word:?}: {body}");
    }
    assert!(
        !body.contains(internal_addr),
        "client body leaks the upstream address: {body}"
    );
}

/// The article's policy, pointed at a stand-in and with an audit directory.
pub fn article_policy() -> &'static str {
    r#"
ollama_api: "{OLLAMA}"
log_level: "info"
rate_limit:
  enabled: true
  max_requests: 30
  window_seconds: 60
auth:
  enabled: true
  header_key: "X-Api-Key"
  valid_keys: ["prod-key-2024-qwen3"]
whitelist:
  enabled: true
  ips: ["127.0.0.1", "10.0.0.0/16"]
audit: {dir: "{DIR}/audit"}
"#
}

pub const KEY: &str = "prod-key-2024-qwen3";

pub fn hello(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

/// A system program the tests drive (nginx, openssl, dpkg, promtool, ...), wherever Debian
/// puts it.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed; scripts/test.sh installs it");
}

/// A refusal by the prompt limit, in the words agents read as a context overflow, with no
/// policy value in it.
pub fn assert_prompt_too_long(message: &str) {
    assert!(
        message.starts_with("prompt is too long") && message.contains("maximum context length"),
        "{message}"
    );
    assert!(!message.chars().any(|c| c.is_ascii_digit()), "{message}");
}

/// A helper process (a stand-in UI, a stand-in Ollama) that listens on `port`: spawned with
/// its output dropped, waited for until it accepts connections, killed on drop.
pub struct Helper {
    child: Child,
    pub addr: String,
}

impl Helper {
    pub fn spawn(cmd: &mut Command, port: u16, what: &str) -> Helper {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        wait_for(Duration::from_secs(10), what, || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        Helper {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// POST `body` (JSON, as bytes: a test may need keys a JSON library would merge) with the key
/// as `Authorization: Bearer`.
pub fn post_json_bytes(gw: &Gateway, path: &str, key: &str, body: &[u8]) -> Response {
    let auth = format!("Bearer {key}");
    request(
        gw.addr,
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
}
