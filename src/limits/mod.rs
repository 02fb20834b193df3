//! The limits on what a caller may spend: request rates (`ratelimit`, in memory or Redis),
//! token quotas and their meter (`ratelimit::tokens`, `meter`), the request clamps (`clamp`,
//! `ollama_options`), the fair queue for the GPU (`queue`), and the vocabulary they share
//! (`quota`: decisions, `x-ratelimit-*` headers, Retry-After).

pub mod clamp;
pub mod meter;
pub mod ollama_options;
pub mod queue;
pub mod quota;
pub mod ratelimit;
