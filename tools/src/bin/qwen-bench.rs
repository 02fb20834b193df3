//! Load driver for `scripts/bench.sh`: what wrk cannot measure.
//!
//! - `latency`: one keep-alive connection, requests back to back; p50/p99/p99.9 in µs.
//! - `stream`: N concurrent streamed requests; time to first event, gaps between events,
//!   and whether every expected chunk arrived.
//! - `hold`: N streams opened and held for a while (for memory per idle stream).
//! - `reload`: atomically renames a new policy into place and measures the time until the
//!   first response that carries the new policy's marker header value.
//!
//! Speaks plain HTTP/1.1 (Content-Length and chunked) over tokio sockets; prints one JSON
//! object per run on stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// HOST:PORT
    #[arg(long)]
    addr: String,
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// File with the request body (POST); none means GET.
    #[arg(long)]
    body: Option<PathBuf>,
    /// Extra header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    Latency {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        #[arg(long, default_value_t = 500)]
        warmup: usize,
    },
    Stream {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Events that must arrive per stream (chunks containing `--pattern`).
        #[arg(long, default_value_t = 50)]
        expect: usize,
        #[arg(long, default_value = "\"content\":\"w")]
        pattern: String,
        /// Repeat the whole round this many times, one after the other (more samples for
        /// small stream counts).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Run one whole stream on each connection first and measure the second, as a
        /// gateway behind Nginx (whose upstream keep-alive pool reuses connections) sees it.
        #[arg(long)]
        warm: bool,
    },
    Hold {
        #[command(flatten)]
        t: Target,
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        /// How long to hold the streams after all are open.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Only send the requests, without waiting for their answers to begin (requests that
        /// wait in the gateway's queue have none yet).
        #[arg(long)]
        queued: bool,
    },
    Reload {
        #[command(flatten)]
        t: Target,
        /// The live policy file.
        #[arg(long)]
        policy: PathBuf,
        /// The new policy's contents, renamed into place.
        #[arg(long)]
        new: PathBuf,
        /// `Header-Name: value` that shows the new policy is in force.
        #[arg(long)]
        expect: String,
    },
}

fn request_bytes(t: &Target) -> Vec<u8> {
    let body = t
        .body
        .as_ref()
        .map(|p| std::fs::read(p).unwrap_or_default());
    let method = if body.is_some() { "POST" } else { "GET" };
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {}\r\n", t.path, t.addr);
    for h in &t.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    if let Some(b) = &body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some(b) = body {
        out.extend_from_slice(&b);
    }
    out
}

struct Conn {
    r: BufReader<TcpStream>,
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    chunked: bool,
    length: Option<usize>,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, s),
        })
    }

    async fn send(&mut self, req: &[u8]) -> std::io::Result<()> {
        self.r.get_mut().write_all(req).await
    }

    async fn head(&mut self) -> std::io::Result<Head> {
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        Ok(Head {
            status,
            chunked: get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")),
            length: get("content-length").and_then(|v| v.parse().ok()),
            headers,
        })
    }

    /// The next piece of a chunked body; `None` at its end.
    async fn chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        let mut data = vec![0; size];
        self.r.read_exact(&mut data).await?;
        let mut crlf = [0u8; 2];
        self.r.read_exact(&mut crlf).await?;
        Ok((size > 0).then_some(data))
    }

    async fn body(&mut self, h: &Head) -> std::io::Result<Vec<u8>> {
        if h.chunked {
            let mut all = Vec::new();
            while let Some(c) = self.chunk().await? {
                all.extend_from_slice(&c);
            }
            Ok(all)
        } else {
            let mut b = vec![0; h.length.unwrap_or(0)];
            self.r.read_exact(&mut b).await?;
            Ok(b)
        }
    }
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn latency(t: Target, requests: usize, warmup: usize) -> serde_json::Value {
    let req = request_bytes(&t);
    let mut conn = match Conn::open(&t.addr).await {
        Ok(c) => c,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let mut samples = Vec::with_capacity(requests);
    let mut errors = 0usize;
    let started = Instant::now();
    for i in 0..warmup + requests {
        let t0 = Instant::now();
        let ok = async {
            conn.send(&req).await?;
            let h = conn.head().await?;
            conn.body(&h).await?;
            let close = h
                .headers
                .iter()
                .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
            Ok::<(u16, bool), std::io::Error>((h.status, close))
        }
        .await;
        let us = t0.elapsed().as_secs_f64() * 1e6;
        match ok {
            Ok((200, close)) => {
                if i >= warmup {
                    samples.push(us);
                }
                // Nginx closes a keep-alive connection after keepalive_requests: not an error.
                if close {
                    match Conn::open(&t.addr).await {
                        Ok(c) => conn = c,
                        Err(_) => break,
                    }
                }
            }
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                match Conn::open(&t.addr).await {
                    Ok(c) => conn = c,
                    Err(_) => break,
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = samples.len();
    json!({
        "requests": n, "errors": errors,
        "p50_us": pct(&mut samples, 0.50), "p99_us": pct(&mut samples, 0.99),
        "p999_us": pct(&mut samples, 0.999),
        "rps": (n + errors) as f64 / elapsed,
    })
}

struct StreamResult {
    ttfb_us: f64,
    gaps_us: Vec<f64>,
    events: usize,
    ok: bool,
}

async fn one_stream(addr: String, req: Vec<u8>, pattern: String, warm: bool) -> StreamResult {
    let fail = StreamResult {
        ttfb_us: f64::NAN,
        gaps_us: Vec::new(),
        events: 0,
        ok: false,
    };
    let Ok(mut conn) = Conn::open(&addr).await else {
        return fail;
    };
    if warm {
        let warmed = async {
            conn.send(&req).await?;
            let h = conn.head().await?;
            conn.body(&h).await
        };
        if warmed.await.is_err() {
            return fail;
        }
    }
    let t0 = Instant::now();
    if conn.send(&req).await.is_err() {
        return fail;
    }
    let Ok(h) = conn.head().await else {
        return fail;
    };
    if h.status != 200 || !h.chunked {
        return fail;
    }
    let mut last: Option<Instant> = None;
    let mut ttfb = f64::NAN;
    let mut gaps = Vec::new();
    let mut events = 0;
    loop {
        match conn.chunk().await {
            Ok(Some(c)) => {
                let now = Instant::now();
                let text = String::from_utf8_lossy(&c);
                let n = text.matches(pattern.as_str()).count();
                if n == 0 {
                    continue;
                }
                match last {
                    None => ttfb = now.duration_since(t0).as_secs_f64() * 1e6,
                    Some(prev) => gaps.push(now.duration_since(prev).as_secs_f64() * 1e6),
                }
                last = Some(now);
                events += n;
            }
            Ok(None) => break,
            Err(_) => return StreamResult { events, ..fail },
        }
    }
    StreamResult {
        ttfb_us: ttfb,
        gaps_us: gaps,
        events,
        ok: true,
    }
}

async fn streams(
    t: Target,
    n: usize,
    expect: usize,
    pattern: String,
    rounds: usize,
    warm: bool,
) -> serde_json::Value {
    let req = request_bytes(&t);
    let mut ttfb = Vec::new();
    let mut gaps = Vec::new();
    let (mut complete, mut events) = (0usize, 0usize);
    for _ in 0..rounds.max(1) {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                tokio::task::spawn_local(one_stream(
                    t.addr.clone(),
                    req.clone(),
                    pattern.clone(),
                    warm,
                ))
            })
            .collect();
        for task in tasks {
            if let Ok(r) = task.await {
                if r.ok && r.events >= expect {
                    complete += 1;
                }
                events += r.events;
                if r.ttfb_us.is_finite() {
                    ttfb.push(r.ttfb_us);
                }
                gaps.extend(r.gaps_us);
            }
        }
    }
    let n = n * rounds.max(1);
    json!({
        "streams": n, "complete": complete, "events": events, "expected_events": n * expect,
        "ttfb_p50_us": pct(&mut ttfb, 0.5), "ttfb_p99_us": pct(&mut ttfb, 0.99),
        "gap_p50_us": pct(&mut gaps, 0.5), "gap_p99_us": pct(&mut gaps, 0.99),
    })
}

async fn hold(t: Target, n: usize, seconds: f64, queued: bool) -> serde_json::Value {
    let req = request_bytes(&t);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut c) = Conn::open(&t.addr).await else {
            break;
        };
        if c.send(&req).await.is_err() {
            break;
        }
        held.push(c);
    }
    let mut open = 0;
    if queued {
        // Sent and left waiting: their connections stay open while `seconds` pass.
        open = held.len();
    } else {
        for c in &mut held {
            if let Ok(h) = c.head().await
                && h.status == 200
                && matches!(c.chunk().await, Ok(Some(_)))
            {
                open += 1;
            }
        }
    }
    println!("{}", json!({"held": open}));
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    drop(held);
    json!({"released": open})
}

async fn reload(t: Target, policy: PathBuf, new: PathBuf, expect: String) -> serde_json::Value {
    let (name, value) = match expect.split_once(':') {
        Some((n, v)) => (n.trim().to_ascii_lowercase(), v.trim().to_owned()),
        None => return json!({"error": "--expect takes 'Name: value'"}),
    };
    let req = request_bytes(&t);
    let tmp = policy.with_extension("yaml.bench-tmp");
    if std::fs::copy(&new, &tmp).is_err() {
        return json!({"error": "cannot stage the new policy"});
    }
    let mut conn = match Conn::open(&t.addr).await {
        Ok(c) => c,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let t0 = Instant::now();
    if std::fs::rename(&tmp, &policy).is_err() {
        return json!({"error": "rename failed"});
    }
    let deadline = t0 + Duration::from_secs(5);
    let mut polls = 0;
    while Instant::now() < deadline {
        polls += 1;
        let seen = async {
            conn.send(&req).await?;
            let h = conn.head().await?;
            conn.body(&h).await?;
            Ok::<bool, std::io::Error>(h.headers.iter().any(|(k, v)| *k == name && *v == value))
        }
        .await;
        match seen {
            Ok(true) => {
                return json!({"ms": t0.elapsed().as_secs_f64() * 1e3, "polls": polls});
            }
            Ok(false) => {}
            Err(_) => match Conn::open(&t.addr).await {
                Ok(c) => conn = c,
                Err(e) => return json!({"error": e.to_string()}),
            },
        }
    }
    json!({"error": "the new policy was not seen within 5 s"})
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qwen-bench: {e}");
            std::process::exit(1);
        }
    };
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, async move {
        match cli.cmd {
            Cmd::Latency {
                t,
                requests,
                warmup,
            } => latency(t, requests, warmup).await,
            Cmd::Stream {
                t,
                streams: n,
                expect,
                pattern,
                rounds,
                warm,
            } => streams(t, n, expect, pattern, rounds, warm).await,
            Cmd::Hold {
                t,
                streams: n,
                seconds,
                queued,
            } => hold(t, n, seconds, queued).await,
            Cmd::Reload {
                t,
                policy,
                new,
                expect,
            } => reload(t, policy, new, expect).await,
        }
    });
    println!("{out}");
}
