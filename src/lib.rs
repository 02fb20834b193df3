//! qwen-gateway: an OpenAI-compatible gateway in front of Ollama.
//!
//! Request flow: Nginx -> `app` (middleware: policy snapshot, request id, client IP, audit) ->
//! `proxy` (guards: `client_ip` allowlist, `auth`, `ratelimit`; then request limits,
//! `proxy::convert` to Ollama's native API, `proxy::upstream` with the `breaker`, and
//! `proxy::stream` back to SSE). `policy` is the validated file, `reload` swaps it live,
//! `audit`/`telemetry`/`metrics`/`health` are what operators see, `errors` is what clients see.

pub mod admission;
pub mod app;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod breaker;
pub mod clamp;
pub mod cli;
pub mod client_ip;
pub mod context;
pub mod errors;
pub mod explain;
pub mod health;
pub mod ids;
pub mod json_out;
pub mod meter;
pub mod metrics;
pub mod ollama_options;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod queue;
pub mod quota;
pub mod ratelimit;
pub mod reload;
pub mod rfc3339;
pub mod routes;
pub mod shutdown;
pub mod state;
pub mod telemetry;
