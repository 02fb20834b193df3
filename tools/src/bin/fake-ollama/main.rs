//! A stand-in Ollama for tests, demos and the benchmark. Speaks the native API (`/`,
//! `/api/version`, `/api/tags`, `/api/chat` as NDJSON or one JSON object, `/api/embed`) and
//! answers from the request: the reply echoes the last user message, so tests check real
//! translation, not canned text.
//!
//! Behaviour is chosen by model name, so one stand-in serves every test case:
//! `test/slow-first:MS` (headers after MS), `test/delay-second:MS` (second chunk after MS),
//! `test/cut` (a Responses stream whose body ends early), `test/hang` (never answers), `test/stall` (one chunk, then silence), `test/error-mid` (one
//! chunk, then an error line), `test/busy` (503), `test/error500`, `test/tools`, `test/think`,
//! and hostile ones: `test/error-stall` (500 headers, then a body that never comes),
//! `test/html` (a 200 HTML page), `test/flood` (64 KiB lines, never done), `test/error-newlines` (a 500 whose text forges a log line),
//! `test/busy-retry:S` (503 with `Retry-After: S`), `test/endless-line` (bytes without a
//! newline, forever), `test/forever:MS` (a token every MS, never done), `test/huge:MIB` (a
//! non-streamed answer of MIB mebibytes). Besides `/api/chat`, it serves `/api/generate`,
//! `/api/show`, `/api/ps`, `/api/embed`, `/api/embeddings`, the model-management routes, and
//! Ollama's OpenAI and Anthropic layers (`/v1/embeddings`, `/v1/completions`,
//! `/v1/responses`, `/v1/messages`) in their documented shapes; `--missing` makes it an Ollama
//! too old for some of them.
//! Any other name must be in `--models`, or the answer is Ollama's 404.
//! `--mode dead` accepts connections and never answers anything.
//! `GET /_fake/stats` reports what reached it (request count, last body and headers, and how
//! many chat requests are still being answered: like Ollama, it notices a caller that hung
//! up and stops).

mod gpu;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use bytes::Bytes;
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug, Clone)]
#[command(about = "A stand-in Ollama for tests and demos")]
struct Args {
    /// Address to listen on (port 0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: String,
    /// Comma-separated model names served (besides the test/* behaviours).
    #[arg(
        long,
        default_value = "qwen3:32b,registry.internal/qwen3:32b,llama3.2:latest"
    )]
    models: String,
    /// The models `/api/ps` lists as loaded (comma-separated); default: every served model.
    #[arg(long)]
    loaded: Option<String>,
    /// `normal` or `dead` (accept connections, never answer).
    #[arg(long, default_value = "normal")]
    mode: String,
    /// Fixed number of answer chunks (benchmark mode); default: echo the prompt.
    #[arg(long)]
    chunks: Option<usize>,
    /// Delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Comma-separated routes to answer with gin's plain "404 page not found", as an Ollama
    /// too old to have them does (e.g. `/v1/completions`).
    #[arg(long, default_value = "")]
    missing: String,
    /// Benchmark mode: canned answers (`--chunks` words, default 50) built once, no request
    /// parsing or recording, so the stand-in is never the bottleneck.
    #[arg(long)]
    fast: bool,
    /// Simulate a GPU host's costs (`gpu.rs`): model loads, a limit of models in memory,
    /// slots with prompt caches, prompt evaluation and generation time. `/api/ps` then lists
    /// what is in memory, and `/_fake/stats` counts loads and evaluated prompt tokens.
    #[arg(long)]
    gpu: bool,
    /// Milliseconds to load a model that is not in memory.
    #[arg(long, default_value_t = 2000)]
    gpu_load_ms: u64,
    /// Models in memory at most (Ollama's OLLAMA_MAX_LOADED_MODELS).
    #[arg(long, default_value_t = 2)]
    gpu_max_loaded: usize,
    /// Slots per loaded model (Ollama's OLLAMA_NUM_PARALLEL).
    #[arg(long, default_value_t = 2)]
    gpu_parallel: usize,
    /// Microseconds to evaluate one prompt token not in the slot's cache.
    #[arg(long, default_value_t = 200)]
    gpu_prompt_us: u64,
    /// Microseconds to generate one token.
    #[arg(long, default_value_t = 20_000)]
    gpu_gen_us: u64,
}

/// Pre-serialised answers for `--fast`.
struct Canned {
    single: Bytes,
    lines: Vec<Bytes>,
}

impl Canned {
    fn new(chunks: usize) -> Self {
        let model = "qwen3:32b";
        let lines: Vec<Bytes> = (0..chunks)
            .map(|i| {
                ndjson(&line(
                    model,
                    json!({"role": "assistant", "content": format!("w{i} ")}),
                    false,
                ))
            })
            .chain(std::iter::once(ndjson(&final_line(
                model, "stop", 8, chunks,
            ))))
            .collect();
        let mut fin = final_line(model, "stop", 8, chunks);
        fin["message"]["content"] =
            Value::from((0..chunks).map(|i| format!("w{i} ")).collect::<String>());
        Canned {
            single: Bytes::from(fin.to_string()),
            lines,
        }
    }
}

#[derive(Default)]
struct Stats {
    chat_requests: u64,
    /// Requests to the other model routes (generate, embeddings, completions, show).
    model_requests: u64,
    /// Model-management requests (pull, push, create, copy, delete, blobs).
    admin_requests: u64,
    /// The last body a model or admin route received, and its path.
    last_model: Value,
    tags_requests: u64,
    last_chat: Value,
    last_headers: BTreeMap<String, String>,
    /// The last request to a path the stand-in does not serve (what a proxy in front sent).
    last_other: Value,
    /// The last user message of each chat request, in arrival order (the last 1,000).
    chat_log: Vec<String>,
}

struct Shared {
    args: Args,
    stats: Mutex<Stats>,
    canned: Canned,
    /// TCP connections accepted, to show whether callers reuse keep-alive connections.
    connections: Arc<AtomicU64>,
    /// Chat requests being answered now (handler running or answer streaming).
    active_chats: Arc<AtomicI64>,
    /// The most model requests (chat, embed) this host had at once.
    max_active: Arc<AtomicI64>,
    /// `--gpu`: the simulated host.
    gpu: Option<Arc<gpu::Gpu>>,
}

/// Counts a chat request as active until its handler or its streamed body is dropped.
struct Active(Arc<AtomicI64>);

impl Active {
    fn new(shared: &Shared) -> Self {
        let now = shared.active_chats.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_active.fetch_max(now, Ordering::SeqCst);
        Active(shared.active_chats.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn announce(addr: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)?;
    let addr = listener.local_addr()?;
    if args.mode == "dead" {
        announce(&addr.to_string());
        let mut held = Vec::new();
        for conn in listener.incoming() {
            // Keep every socket open and never read or write: a hung server.
            held.push(conn);
        }
        return Ok(());
    }
    let workers = args.workers;
    let gpu = args.gpu.then(|| {
        gpu::Gpu::new(gpu::Costs {
            load_ms: args.gpu_load_ms,
            max_loaded: args.gpu_max_loaded.max(1),
            parallel: args.gpu_parallel.max(1),
            prompt_us: args.gpu_prompt_us,
            gen_us: args.gpu_gen_us,
        })
    });
    let canned = Canned::new(args.chunks.unwrap_or(50));
    let connections = Arc::new(AtomicU64::new(0));
    let counter = connections.clone();
    let shared = web::Data::new(Shared {
        args,
        stats: Mutex::new(Stats::default()),
        canned,
        connections,
        active_chats: Arc::new(AtomicI64::new(0)),
        max_active: Arc::new(AtomicI64::new(0)),
        gpu,
    });
    announce(&addr.to_string());
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/", web::get().to(|| async { "Ollama is running" }))
                .route("/", web::head().to(HttpResponse::Ok))
                .route("/api/version", web::get().to(version))
                .route("/api/tags", web::get().to(tags))
                .route("/api/chat", web::post().to(chat))
                .route("/api/embed", web::post().to(embed))
                .route("/api/embeddings", web::post().to(legacy_embeddings))
                .route("/api/generate", web::post().to(generate))
                .route("/api/show", web::post().to(show))
                .route("/api/ps", web::get().to(ps))
                .route("/api/pull", web::post().to(admin))
                .route("/api/push", web::post().to(admin))
                .route("/api/create", web::post().to(admin))
                .route("/api/copy", web::post().to(admin))
                .route("/api/delete", web::delete().to(admin))
                .route("/api/blobs/{digest}", web::post().to(admin))
                .route("/api/blobs/{digest}", web::head().to(admin))
                .route("/v1/embeddings", web::post().to(v1_embeddings))
                .route("/v1/completions", web::post().to(v1_completions))
                .route("/v1/responses", web::post().to(v1_responses))
                .route("/v1/messages", web::post().to(v1_messages))
                .route("/_fake/stats", web::get().to(stats))
                .default_service(web::to(other))
        })
        .workers(workers)
        // Like Ollama (Go cancels a request's context when its connection closes): a caller
        // that hangs up is noticed at once, not at the next write.
        .h1_allow_half_closed(false)
        .on_connect(move |_, _| {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        // Like Ollama (Go sets TCP_NODELAY on every connection): without it, a streamed line
        // on a reused keep-alive connection can wait for the ACK of the previous one.
        .tcp_nodelay(true)
        .listen(listener)?
        .run()
        .await
    })
}

async fn version() -> HttpResponse {
    HttpResponse::Ok().json(json!({"version": "0.0.0-stand-in"}))
}

async fn stats(shared: web::Data<Shared>) -> HttpResponse {
    let s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
    HttpResponse::Ok().json(json!({
        "chat_requests": s.chat_requests,
        "tags_requests": s.tags_requests,
        "model_requests": s.model_requests,
        "admin_requests": s.admin_requests,
        "last_model": s.last_model,
        "last_chat": s.last_chat,
        "last_headers": s.last_headers,
        "last_other": s.last_other,
        "chat_log": s.chat_log,
        "connections": shared.connections.load(Ordering::Relaxed),
        "active_chats": shared.active_chats.load(Ordering::SeqCst),
        "max_active": shared.max_active.load(Ordering::SeqCst),
        "gpu": shared.gpu.as_ref().map(|g| g.stats()),
    }))
}

fn headers_of(req: &HttpRequest) -> BTreeMap<String, String> {
    req.headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

/// Unknown paths: 404 like Ollama, but remember what arrived (path and headers).
async fn other(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    shared
        .stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .last_other = json!({
        "method": req.method().as_str(),
        "path": req.uri().to_string(),
        "headers": headers_of(&req),
    });
    err(StatusCode::NOT_FOUND, "404 page not found")
}

async fn tags(shared: web::Data<Shared>) -> HttpResponse {
    shared
        .stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .tags_requests += 1;
    let models: Vec<Value> = shared
        .args
        .models
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| {
            json!({"name": m, "model": m, "modified_at": "2025-05-04T17:37:44.706015396-07:00",
                   "size": 2019393189u64, "digest": "a80c4f17acd5",
                   "details": {"parent_model": "internal-base:70b", "format": "gguf", "family": "qwen3", "parameter_size": "32B"}})
        })
        .collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

fn err(status: StatusCode, msg: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": msg }))
}

/// The words of the answer: an echo of the last user message, or `--chunks` fixed words.
fn answer_words(args: &Args, body: &Value) -> Vec<String> {
    if let Some(n) = args.chunks {
        return (0..n).map(|i| format!("w{i} ")).collect();
    }
    let last_user = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    words_of(last_user)
}

fn line(model: &str, message: Value, done: bool) -> Value {
    json!({"model": model, "created_at": "2025-07-07T20:22:19.184789Z", "message": message, "done": done})
}

fn final_line(model: &str, reason: &str, prompt: usize, eval: usize) -> Value {
    json!({"model": model, "created_at": "2025-07-07T20:22:19.19314Z",
           "message": {"role": "assistant", "content": ""}, "done_reason": reason, "done": true,
           "total_duration": 182242375u64, "load_duration": 41295167u64,
           "prompt_eval_count": prompt, "prompt_eval_duration": 24573166u64,
           "eval_count": eval, "eval_duration": 115959084u64})
}

fn ndjson(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

async fn chat(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    if shared.args.fast {
        return fast_chat(&body, &shared);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return err(
            StatusCode::BAD_REQUEST,
            "invalid character 'x' looking for beginning of value",
        );
    };
    {
        let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.chat_requests += 1;
        s.last_chat = body.clone();
        let said = body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned();
        if s.chat_log.len() >= 1_000 {
            s.chat_log.remove(0);
        }
        s.chat_log.push(said);
        s.last_headers = headers_of(&req);
    }
    let active = Active::new(&shared);
    let args = &shared.args;
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(true);
    let (behaviour, param) = match model.strip_prefix("test/") {
        Some(b) => match b.split_once(':') {
            Some((b, p)) => (b.to_owned(), p.parse::<u64>().unwrap_or(0)),
            None => (b.to_owned(), 0),
        },
        None => {
            if !args.models.split(',').any(|m| m == model) {
                return err(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
            }
            (String::new(), 0)
        }
    };
    match behaviour.as_str() {
        "hang" => std::future::pending::<()>().await,
        "busy" => {
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy, please try again.  maximum pending requests exceeded",
            );
        }
        "error500" => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "an error was encountered while running the model: CUDA error at /tmp/ollama/llm.cpp:42",
            );
        }
        // A broken proxy in front of Ollama: a 200 HTML page where a stream was asked.
        "html" => {
            return HttpResponse::Ok().content_type("text/html").body(
                "<html>\n<head><title>Maintenance</title></head>\n<body>{\"message\":\"not ollama\"}</body>\n</html>\n",
            );
        }
        // An error body whose newlines would forge a line in a log that printed it as is.
        "error-newlines" => {
            return HttpResponse::InternalServerError()
                .content_type("text/plain")
                .body("boom\n2026-01-01T00:00:00Z  INFO FORGED: Policy reloaded.\n");
        }
        "slow-first" => actix_web::rt::time::sleep(Duration::from_millis(param)).await,
        "busy-retry" => {
            return HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", param.to_string()))
                .json(json!({"error": "server busy"}));
        }
        "error-stall" => {
            let body = futures_util::stream::unfold(active, |a| async move {
                std::future::pending::<()>().await;
                Some((Ok::<Bytes, actix_web::Error>(Bytes::new()), a))
            });
            return HttpResponse::InternalServerError()
                .content_type("application/json")
                .streaming(body);
        }
        "endless-line" | "forever" | "flood" => {
            return hostile_stream(&model, &behaviour, param, active);
        }
        "huge" if !stream => {
            // A non-streamed answer of `param` MiB.
            let mut fin = final_line(&model, "stop", 1, 1);
            fin["message"]["content"] = Value::from("x".repeat((param as usize) << 20));
            return HttpResponse::Ok().json(fin);
        }
        _ => {}
    }

    let prompt_tokens: usize = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    m["content"]
                        .as_str()
                        .unwrap_or("")
                        .split_whitespace()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0);
    let mut words = answer_words(args, &body);
    let mut reason = "stop";
    if let Some(n) = body["options"]["num_predict"].as_u64()
        && (n as usize) < words.len()
    {
        words.truncate(n as usize);
        reason = "length";
    }
    let mut lines: Vec<Value> = Vec::new();
    match behaviour.as_str() {
        // Calls the tool until the conversation holds its result, then answers in text (an
        // agent loop through the stand-in ends).
        "tools" if !has_tool_result(&body) => lines.push(line(
            &model,
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": "call_k3j9x0qa",
                   "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}}}]}),
            false,
        )),
        "tools" => {
            for w in ["It ", "is ", "sunny ", "in ", "Tokyo."] {
                lines.push(line(&model, json!({"role": "assistant", "content": w}), false));
            }
        }
        "think" => {
            lines.push(line(&model, json!({"role": "assistant", "content": "", "thinking": "Let me think."}), false));
            for w in &words {
                lines.push(line(&model, json!({"role": "assistant", "content": w}), false));
            }
        }
        _ => {
            for w in &words {
                lines.push(line(&model, json!({"role": "assistant", "content": w}), false));
            }
        }
    }
    let eval = lines.len();
    // The simulated host: load, a slot, the prompt's uncached part (time to first token).
    let mut turn = match &shared.gpu {
        Some(gpu) => {
            let prompt: String = body["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    format!(
                        "{}: {}\n",
                        m["role"].as_str().unwrap_or(""),
                        m["content"].as_str().unwrap_or("")
                    )
                })
                .collect();
            Some(gpu.start(&model, &prompt).await)
        }
        None => None,
    };
    let gen_delay = shared.gpu.as_ref().map(|g| g.gen_delay());

    if !stream {
        if let (Some(turn), Some(per)) = (&mut turn, gen_delay) {
            actix_web::rt::time::sleep(per * u32::try_from(eval).unwrap_or(u32::MAX)).await;
            turn.text.push_str("assistant: ");
            for l in &lines {
                turn.text
                    .push_str(l["message"]["content"].as_str().unwrap_or(""));
            }
            turn.text.push('\n');
        }
        let mut content = String::new();
        let mut tool_calls = Value::Null;
        let mut thinking = Value::Null;
        for l in &lines {
            content.push_str(l["message"]["content"].as_str().unwrap_or(""));
            if !l["message"]["tool_calls"].is_null() {
                tool_calls = l["message"]["tool_calls"].clone();
            }
            if !l["message"]["thinking"].is_null() {
                thinking = l["message"]["thinking"].clone();
            }
        }
        let mut fin = final_line(&model, reason, prompt_tokens, eval);
        fin["message"]["content"] = Value::from(content);
        if !tool_calls.is_null() {
            fin["message"]["tool_calls"] = tool_calls;
        }
        if !thinking.is_null() {
            fin["message"]["thinking"] = thinking;
        }
        return HttpResponse::Ok().json(fin);
    }

    let delay = gen_delay.unwrap_or(Duration::from_millis(args.chunk_delay_ms));
    let fin = final_line(&model, reason, prompt_tokens, eval);
    if let Some(turn) = &mut turn {
        // What the slot caches once the answer is out (as Ollama's does).
        turn.text.push_str("assistant: ");
        for l in &lines {
            turn.text
                .push_str(l["message"]["content"].as_str().unwrap_or(""));
        }
        turn.text.push('\n');
    }
    let script: Vec<(Duration, Option<Bytes>)> = {
        let mut s = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let wait = match behaviour.as_str() {
                "delay-second" if i == 1 => Duration::from_millis(param),
                _ if i == 0 => Duration::ZERO,
                _ => delay,
            };
            s.push((wait, Some(ndjson(l))));
            if i == 0 && behaviour == "error-mid" {
                s.push((
                    Duration::ZERO,
                    Some(ndjson(&json!({"error": "an error was encountered while running the model: out of memory at 0x7f00 /srv/ollama"}))),
                ));
                break;
            }
            if i == 0 && behaviour == "stall" {
                // Silence forever after the first chunk.
                s.push((Duration::from_secs(86_400), None));
                break;
            }
        }
        if behaviour != "error-mid" && behaviour != "stall" {
            s.push((delay, Some(ndjson(&fin))));
        }
        s
    };
    let body = futures_util::stream::unfold(
        (script.into_iter(), active, turn),
        |(mut it, active, turn)| async move {
            let (wait, bytes) = it.next()?;
            if !wait.is_zero() {
                actix_web::rt::time::sleep(wait).await;
            }
            let bytes = bytes?;
            Some((Ok::<Bytes, actix_web::Error>(bytes), (it, active, turn)))
        },
    );
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(body)
}

/// Streams that never end: 64 KiB of bytes with no newline every millisecond
/// (`endless-line`), or a token every `param` ms (`forever`).
fn hostile_stream(model: &str, behaviour: &str, param: u64, active: Active) -> HttpResponse {
    let chunk = if behaviour == "endless-line" {
        Bytes::from(vec![b'a'; 64 * 1024])
    } else if behaviour == "flood" {
        // Large lines as fast as they are taken: fills a stalled client's buffers at once.
        ndjson(&line(
            model,
            json!({"role": "assistant", "content": "x".repeat(64 * 1024)}),
            false,
        ))
    } else {
        ndjson(&line(
            model,
            json!({"role": "assistant", "content": "x "}),
            false,
        ))
    };
    let every = Duration::from_millis(if behaviour == "endless-line" || behaviour == "flood" {
        1
    } else {
        param.max(1)
    });
    let body = futures_util::stream::unfold((chunk, active), move |(chunk, active)| async move {
        actix_web::rt::time::sleep(every).await;
        Some((
            Ok::<Bytes, actix_web::Error>(chunk.clone()),
            (chunk, active),
        ))
    });
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(body)
}

/// The text of the last Anthropic `tool_result` block in the conversation, if any.
fn anthropic_tool_result(body: &Value) -> Option<String> {
    let blocks = body["messages"].as_array()?.iter().rev().find_map(|m| {
        m["content"]
            .as_array()?
            .iter()
            .rev()
            .find(|b| b["type"] == "tool_result")
            .cloned()
    })?;
    Some(match &blocks["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    })
}

/// A streamed Anthropic message holding one text block.
fn anthropic_text_events(start: Value, text: &str) -> Vec<(String, Value)> {
    vec![
        (
            "message_start".to_owned(),
            json!({"type": "message_start", "message": start}),
        ),
        (
            "content_block_start".to_owned(),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta".to_owned(),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ),
        (
            "content_block_stop".to_owned(),
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta".to_owned(),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 5}}),
        ),
        ("message_stop".to_owned(), json!({"type": "message_stop"})),
    ]
}

fn has_tool_result(body: &Value) -> bool {
    body["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
}

/// Records a request to a model route; answers 404 (plain text, like gin) for a route listed
/// in `--missing`, or Ollama's JSON 404 for a model it does not serve.
fn model_route(
    req: &HttpRequest,
    shared: &Shared,
    body: &Value,
) -> Result<String, Box<HttpResponse>> {
    if shared.args.missing.split(',').any(|m| m == req.path()) {
        return Err(Box::new(
            HttpResponse::NotFound()
                .content_type("text/plain")
                .body("404 page not found"),
        ));
    }
    {
        let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.model_requests += 1;
        s.last_model = json!({"path": req.path(), "body": body});
        s.last_headers = headers_of(req);
    }
    let model = body["model"].as_str().unwrap_or("").to_owned();
    if model.starts_with("test/") || shared.args.models.split(',').any(|m| m == model) {
        Ok(model)
    } else {
        let answer = err(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
        Err(Box::new(answer))
    }
}

fn words_of(text: &str) -> Vec<String> {
    let mut words: Vec<String> = format!("You said: {text}")
        .split_inclusive(' ')
        .take(64)
        .map(str::to_owned)
        .collect();
    if words.len() < 2 {
        words.push(" ok".to_owned());
    }
    words
}

/// NDJSON lines, one per read, `delay` apart, as Ollama streams them.
fn ndjson_stream(lines: Vec<Bytes>, delay: Duration) -> HttpResponse {
    let body = futures_util::stream::unfold(
        (lines.into_iter(), true),
        move |(mut it, first)| async move {
            let bytes = it.next()?;
            if !first && !delay.is_zero() {
                actix_web::rt::time::sleep(delay).await;
            }
            Some((Ok::<Bytes, actix_web::Error>(bytes), (it, false)))
        },
    );
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(body)
}

/// [`ndjson_stream`] of JSON values.
fn ndjson_values(lines: Vec<Value>, delay: Duration) -> HttpResponse {
    ndjson_stream(lines.iter().map(ndjson).collect(), delay)
}

/// An embedding request on the host: counted as active while it runs, and with `--gpu` its
/// inputs evaluated (every one: nothing is generated, and nothing of it is cached).
async fn embedding_work(shared: &Shared, model: &str, inputs: &[String]) -> Active {
    let active = Active::new(shared);
    if let Some(gpu) = &shared.gpu {
        let mut turn = gpu.start(model, &inputs.concat()).await;
        turn.text.clear();
    }
    active
}

/// `POST /api/generate`: completion of `prompt` (echoed), fill-in-the-middle with `suffix`,
/// and the unload request Open WebUI sends (`keep_alive: 0`, no prompt).
async fn generate(
    req: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let model = match model_route(&req, &shared, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let prompt = body["prompt"].as_str().unwrap_or("");
    let created = "2025-07-07T20:22:19.184789Z";
    if prompt.is_empty() {
        let reason = if body["keep_alive"] == 0 {
            "unload"
        } else {
            "load"
        };
        return HttpResponse::Ok().json(json!({"model": model, "created_at": created,
            "response": "", "done": true, "done_reason": reason}));
    }
    let words = words_of(prompt);
    let fin = json!({"model": model, "created_at": created, "response": "", "done": true,
        "done_reason": "stop", "context": [1, 2, 3], "total_duration": 182242375u64,
        "load_duration": 41295167u64, "prompt_eval_count": prompt.split_whitespace().count(),
        "prompt_eval_duration": 24573166u64, "eval_count": words.len(),
        "eval_duration": 115959084u64});
    if body["stream"] == false {
        let mut one = fin;
        one["response"] = Value::from(words.concat());
        return HttpResponse::Ok().json(one);
    }
    let mut lines: Vec<Value> = words
        .iter()
        .map(|w| json!({"model": model, "created_at": created, "response": w, "done": false}))
        .collect();
    lines.push(fin);
    ndjson_values(lines, Duration::from_millis(shared.args.chunk_delay_ms))
}

/// `POST /api/show`: a model's details, in Ollama's shape (the Modelfile names the model).
async fn show(req: HttpRequest, body: web::Json<Value>, shared: web::Data<Shared>) -> HttpResponse {
    let mut body = body.into_inner();
    if body["model"].is_null() {
        body["model"] = body["name"].clone();
    }
    let model = match model_route(&req, &shared, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    HttpResponse::Ok().json(json!({
        // Like Ollama's: the blob's path on the host, an adapter's, and the model it was made
        // from (what the gateway must not pass on to non-admin keys).
        "modelfile": format!("# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {model}\n\nFROM /usr/share/ollama/.ollama/models/blobs/sha256-6f8d2c\nADAPTER /srv/ollama/adapters/internal-lora.gguf\n"),
        "parameters": "num_ctx 40960",
        "template": "{{ .Prompt }}{{ if .Suffix }}<fim>{{ .Suffix }}{{ end }}",
        "details": {"parent_model": "internal-base:70b", "format": "gguf", "family": "qwen3",
                    "parameter_size": "32B", "quantization_level": "Q4_K_M"},
        "model_info": {"general.architecture": "qwen3", "general.basename": "internal-base",
                       "qwen3.context_length": 40960},
        "capabilities": ["completion", "tools", "thinking"],
        "modified_at": "2025-05-04T17:37:44.706015396-07:00"
    }))
}

/// `GET /api/ps`: the models in memory (`--loaded`; default every served model).
async fn ps(shared: web::Data<Shared>) -> HttpResponse {
    let listed = match &shared.gpu {
        Some(gpu) => gpu.loaded().join(","),
        None => shared
            .args
            .loaded
            .clone()
            .unwrap_or_else(|| shared.args.models.clone()),
    };
    let models: Vec<Value> = listed
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| {
            json!({"name": m, "model": m, "size": 21_000_000_000u64, "digest": "a80c4f17acd5",
                   "details": {"parent_model": "internal-base:70b", "format": "gguf", "family": "qwen3"},
                   "expires_at": "2026-12-01T23:59:59Z", "size_vram": 21_000_000_000u64})
        })
        .collect();
    HttpResponse::Ok().json(json!({ "models": models }))
}

/// Model management: recorded, answered as Ollama does (a progress stream for pull/push).
async fn admin(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    {
        let mut s = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.admin_requests += 1;
        s.last_model = json!({"path": req.path(), "method": req.method().as_str(),
                              "body": String::from_utf8_lossy(&body)});
    }
    match req.path() {
        "/api/pull" | "/api/push" => ndjson_values(
            vec![
                json!({"status": "pulling manifest"}),
                json!({"status": "success"}),
            ],
            Duration::ZERO,
        ),
        "/api/create" => HttpResponse::Ok().json(json!({"status": "success"})),
        p if p.starts_with("/api/blobs/") && req.method() == actix_web::http::Method::POST => {
            HttpResponse::Created().finish()
        }
        _ => HttpResponse::Ok().finish(),
    }
}

/// A deterministic 8-dimensional embedding of a string's bytes.
fn embedding_of(s: &str) -> Vec<f64> {
    let mut v = [0f64; 8];
    for (i, b) in s.bytes().enumerate() {
        v[i % 8] += f64::from(b) / 255.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
    v.iter().map(|x| x / norm).collect()
}

fn inputs_of(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// `POST /api/embeddings` (legacy): one `prompt`, one `embedding`.
async fn legacy_embeddings(
    req: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Err(resp) = model_route(&req, &shared, &body) {
        return *resp;
    }
    HttpResponse::Ok()
        .json(json!({"embedding": embedding_of(body["prompt"].as_str().unwrap_or(""))}))
}

/// `POST /v1/embeddings`, with `encoding_format: base64` (the OpenAI SDKs' default): little
/// endian f32s, base64-encoded.
async fn v1_embeddings(
    req: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let model = match model_route(&req, &shared, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let inputs = inputs_of(&body["input"]);
    if inputs.is_empty() {
        return HttpResponse::BadRequest().json(json!({"error": {"message": "invalid input",
            "type": "invalid_request_error", "param": null, "code": null}}));
    }
    let _active = embedding_work(&shared, &model, &inputs).await;
    let base64 = body["encoding_format"] == "base64";
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let e = embedding_of(s);
            let embedding = if base64 {
                let bytes: Vec<u8> = e.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
                Value::from(b64(&bytes))
            } else {
                json!(e)
            };
            json!({"object": "embedding", "embedding": embedding, "index": i})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|s| s.split_whitespace().count()).sum();
    HttpResponse::Ok().json(json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST /v1/completions`: the legacy completion of `prompt` (echoed), streamed as OpenAI
/// SSE or whole, as Ollama's compatibility layer answers.
async fn v1_completions(
    req: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let model = match model_route(&req, &shared, &body) {
        Ok(m) => m,
        Err(resp) => return *resp,
    };
    let prompt = body["prompt"].as_str().unwrap_or("");
    let words = words_of(prompt);
    let usage = json!({"prompt_tokens": prompt.split_whitespace().count(),
        "completion_tokens": words.len(),
        "total_tokens": prompt.split_whitespace().count() + words.len()});
    let (id, created) = ("cmpl-527", 1_751_919_739u64);
    if body["stream"] != true {
        return HttpResponse::Ok().json(json!({"id": id, "object": "text_completion",
            "created": created, "model": model, "system_fingerprint": "fp_ollama",
            "choices": [{"text": words.concat(), "index": 0, "finish_reason": "stop"}],
            "usage": usage}));
    }
    let chunk = |text: &str, finish: Value| {
        json!({"id": id, "object": "text_completion", "created": created,
               "choices": [{"text": text, "index": 0, "finish_reason": finish}],
               "model": model, "system_fingerprint": "fp_ollama"})
    };
    let mut events: Vec<String> = words
        .iter()
        .map(|w| format!("data: {}\n\n", chunk(w, Value::Null)))
        .collect();
    events.push(format!("data: {}\n\n", chunk("", Value::from("stop"))));
    if body["stream_options"]["include_usage"] == true {
        let mut u = chunk("", Value::Null);
        u["choices"] = json!([]);
        u["usage"] = usage;
        events.push(format!("data: {u}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_owned());
    let body = futures_util::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<Bytes, actix_web::Error>(Bytes::from(e))),
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}

/// SSE events `event: NAME` + `data: JSON`, one per read.
fn sse_events(events: Vec<(String, Value)>) -> HttpResponse {
    let body = futures_util::stream::iter(events.into_iter().map(|(name, data)| {
        Ok::<Bytes, actix_web::Error>(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
    }));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}

/// The text of the last user turn in a Responses `input` (a string, or items whose content
/// is a string or `input_text` parts) or a Messages `messages` list.
fn last_user_text(items: &Value) -> String {
    if let Some(s) = items.as_str() {
        return s.to_owned();
    }
    let Some(last) = items
        .as_array()
        .and_then(|a| a.iter().rev().find(|m| m["role"] == "user"))
    else {
        return String::new();
    };
    match &last["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A Responses or Messages request's model, the words of its answer (an echo of the last user
/// turn at `field`), and the turn's token count.
fn echo_turn(
    req: &HttpRequest,
    shared: &Shared,
    body: &Value,
    field: &str,
) -> Result<(String, Vec<String>, usize), Box<HttpResponse>> {
    let model = model_route(req, shared, body)?;
    let text = last_user_text(&body[field]);
    Ok((model, words_of(&text), text.split_whitespace().count()))
}

/// `POST /v1/responses` (stateless), in the shape of Ollama's Responses layer: a response
/// object, or its SSE event sequence ending with `response.completed`.
async fn v1_responses(
    req: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let (model, words, input_tokens) = match echo_turn(&req, &shared, &body, "input") {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let usage = json!({"input_tokens": input_tokens, "output_tokens": words.len(),
        "total_tokens": input_tokens + words.len(),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0}});
    let message = |text: &str, status: &str| {
        json!({"type": "message", "id": "msg_7", "status": status, "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_7", "object": "response", "created_at": 1_751_919_739u64,
               "status": status, "model": model, "output": output, "error": null,
               "incomplete_details": null, "instructions": body["instructions"],
               "tools": [], "tool_choice": "auto", "parallel_tool_calls": true,
               "text": {"format": {"type": "text"}}, "temperature": 1.0, "top_p": 1.0,
               "truncation": "disabled", "metadata": {}, "store": false, "usage": usage})
    };
    if body["stream"] != true {
        return HttpResponse::Ok().json(response(
            "completed",
            json!([message(&words.concat(), "completed")]),
            usage,
        ));
    }
    let mut seq = 0u64;
    let mut ev = |name: &str, mut data: Value| {
        data["type"] = Value::from(name);
        data["sequence_number"] = Value::from(seq);
        seq += 1;
        (name.to_owned(), data)
    };
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.in_progress",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": message("", "in_progress")}),
        ),
        ev(
            "response.content_part.added",
            json!({"output_index": 0, "item_id": "msg_7", "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
    ];
    for w in &words {
        events.push(ev(
            "response.output_text.delta",
            json!({"output_index": 0, "item_id": "msg_7",
            "content_index": 0, "delta": w, "logprobs": []}),
        ));
    }
    let full = words.concat();
    events.push(ev(
        "response.output_text.done",
        json!({"output_index": 0, "item_id": "msg_7",
        "content_index": 0, "text": full, "logprobs": []}),
    ));
    events.push(ev(
        "response.content_part.done",
        json!({"output_index": 0, "item_id": "msg_7",
        "content_index": 0, "part": {"type": "output_text", "text": full, "annotations": []}}),
    ));
    events.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": message(&full, "completed")}),
    ));
    events.push(ev(
        "response.completed",
        json!({"response": response("completed", json!([message(&full, "completed")]), usage)}),
    ));
    if model == "test/cut" {
        // The body ends after the first text delta, without `response.completed`.
        events.truncate(5);
    }
    sse_events(events)
}

/// `POST /v1/messages`, in the shape of Ollama's Anthropic layer: a message, or its SSE event
/// sequence from `message_start` to `message_stop`.
async fn v1_messages(
    req: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let (model, words, input_tokens) = match echo_turn(&req, &shared, &body, "messages") {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let message = |content: Value, stop: Value, output_tokens: usize| {
        json!({"id": "msg_01", "type": "message", "role": "assistant", "model": model,
               "content": content, "stop_reason": stop, "stop_sequence": null,
               "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})
    };
    // `test/tools` on the Anthropic layer: an agent's tool round trip. The first turn calls
    // the shell tool the client offers (Claude Code's `Bash`); once the conversation holds
    // the tool's result, the answer quotes it.
    if model == "test/tools" && body["stream"] == true {
        if let Some(result) = anthropic_tool_result(&body) {
            let text = format!("The tool said: {}", result.trim());
            return sse_events(anthropic_text_events(
                message(json!([]), Value::Null, 1),
                &text,
            ));
        }
        let offered = body["tools"].as_array().into_iter().flatten();
        if let Some(tool) = offered
            .filter_map(|t| t["name"].as_str())
            .find(|n| *n == "Bash")
        {
            let input = json!({"command": "echo round-trip-ok", "description": "Print a marker"});
            return sse_events(vec![
                (
                    "message_start".to_owned(),
                    json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
                ),
                (
                    "content_block_start".to_owned(),
                    json!({"type": "content_block_start", "index": 0, "content_block":
                        {"type": "tool_use", "id": "toolu_01", "name": tool, "input": {}}}),
                ),
                (
                    "content_block_delta".to_owned(),
                    json!({"type": "content_block_delta", "index": 0, "delta":
                        {"type": "input_json_delta", "partial_json": input.to_string()}}),
                ),
                (
                    "content_block_stop".to_owned(),
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta".to_owned(),
                    json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                        "usage": {"input_tokens": input_tokens, "output_tokens": 12}}),
                ),
                ("message_stop".to_owned(), json!({"type": "message_stop"})),
            ]);
        }
    }
    if body["stream"] != true {
        return HttpResponse::Ok().json(message(
            json!([{"type": "text", "text": words.concat()}]),
            Value::from("end_turn"),
            words.len(),
        ));
    }
    let mut events = vec![
        (
            "message_start".to_owned(),
            json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
        ),
        (
            "content_block_start".to_owned(),
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping".to_owned(), json!({"type": "ping"})),
    ];
    for w in &words {
        events.push((
            "content_block_delta".to_owned(),
            json!({"type": "content_block_delta",
            "index": 0, "delta": {"type": "text_delta", "text": w}}),
        ));
    }
    events.push((
        "content_block_stop".to_owned(),
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        "message_delta".to_owned(),
        json!({"type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"input_tokens": input_tokens, "output_tokens": words.len()}}),
    ));
    events.push(("message_stop".to_owned(), json!({"type": "message_stop"})));
    sse_events(events)
}

fn fast_chat(body: &[u8], shared: &Shared) -> HttpResponse {
    let stream = memchr::memmem::find(body, b"\"stream\":true").is_some();
    if !stream {
        return HttpResponse::Ok()
            .content_type("application/json; charset=utf-8")
            .body(shared.canned.single.clone());
    }
    ndjson_stream(
        shared.canned.lines.clone(),
        Duration::from_millis(shared.args.chunk_delay_ms),
    )
}

async fn embed(
    req: HttpRequest,
    body: web::Json<Value>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    if let Err(resp) = model_route(&req, &shared, &body) {
        return *resp;
    }
    let inputs = inputs_of(&body["input"]);
    if inputs.is_empty() {
        return err(StatusCode::BAD_REQUEST, "invalid input");
    }
    let _active = embedding_work(&shared, body["model"].as_str().unwrap_or(""), &inputs).await;
    let embeddings: Vec<Vec<f64>> = inputs.iter().map(|s| embedding_of(s)).collect();
    let tokens: usize = inputs.iter().map(|s| s.split_whitespace().count()).sum();
    HttpResponse::Ok().json(json!({"model": body["model"], "embeddings": embeddings,
        "total_duration": 14143917u64, "load_duration": 1019500u64, "prompt_eval_count": tokens}))
}
