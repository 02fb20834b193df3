//! Ollama, seen from the gateway: the HTTP client and its fail-fast rules (`client`), the
//! backends and which one serves a request (`backends`: warm models, conversation affinity,
//! slots), each backend's circuit breaker (`breaker`), and Ollama's native wire types
//! (`ollama`).

pub mod backends;
pub mod breaker;
pub mod client;
pub mod fleet;
pub mod ollama;
