//! qwen-gateway: an OpenAI-compatible gateway in front of Ollama.
//!
//! Request flow: Nginx -> `context` (the gate: policy snapshot, request id, client IP, audit)
//! -> `routes` (the table) -> `admission` (allowlist, key, rate limit, admin) ->
//! `surface::pipeline` (one handler for every model route: body guards, send, relay) ->
//! `upstream` (backend choice, fair queue slot, breaker) -> Ollama. `limits` holds what a
//! caller may spend, `policy` the validated file and its live reload, `observe` what operators
//! see, `commands` the operator's commands, `errors` what clients see.

pub mod admission;
pub mod app;
pub mod commands;
pub mod context;
pub mod errors;
pub mod ids;
pub mod json_out;
pub mod limits;
pub mod observe;
pub mod policy;
pub mod rfc3339;
pub mod routes;
pub mod shutdown;
pub mod state;
pub mod surface;
pub mod upstream;
