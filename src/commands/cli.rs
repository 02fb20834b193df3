//! Command-line interface: clap structs only.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::policy::DEFAULT_PATH;

/// An OpenAI-compatible gateway in front of Ollama: API keys, client-IP allowlist, rate
/// limits, audit log and metrics, with a policy file that reloads live.
#[derive(Debug, Parser)]
#[command(name = "qwen-gateway", version, about)]
pub struct Cli {
    /// Policy file (YAML).
    #[arg(short, long, global = true, default_value = DEFAULT_PATH)]
    pub config: PathBuf,

    /// HTTP worker threads (default: one per CPU core).
    #[arg(long)]
    pub workers: Option<usize>,

    /// Do not watch the policy file; reload only on SIGHUP (`systemctl reload`). For file
    /// systems without change notification (some network mounts).
    #[arg(long)]
    pub no_watch: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the policy file like `nginx -t`: exit 0 with a summary, or 1 with every
    /// error (each with its field path) and warning.
    Check {
        /// Fail (exit 1) on warnings too, for a policy repository's CI.
        #[arg(long)]
        deny_warnings: bool,
        /// Fail (exit 1) when a key is the public demo key of the README and
        /// scripts/demo.sh; the systemd unit runs this before starting.
        #[arg(long)]
        deny_demo_key: bool,
        /// Also try each Ollama backend and Redis and say what answered (a backend that does
        /// not answer is a warning).
        #[arg(long)]
        probe: bool,
        /// Print what loading this file would change in the running gateway (its `/status`;
        /// default: the file's `listen` address). Key ids, ranges and limits; never a key.
        #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
        against: Option<String>,
    },
    /// What the gateway would do with a described request under this policy file: each
    /// guard in order with its decision and the rule behind it, and the final status.
    Explain(ExplainArgs),
    /// The running gateway's policy (redacted) and its last reloads (time, trigger, result,
    /// sha256, what changed or the error).
    Status {
        /// The gateway to ask (default: the policy file's `listen` address).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Print `sha256:<hex>` for a key, the form `auth` entries should hold. Reads the key from
    /// standard input when not given (keeps it out of shell history).
    HashKey {
        /// The key to hash.
        key: Option<String>,
    },
    /// Make a new random key (256 bits, URL-safe), print it once with the policy entry to
    /// paste (only its sha256 goes into the policy).
    GenKey {
        /// The key's id in the policy (audit lines, metrics, limits).
        #[arg(long, default_value = "new-client")]
        id: String,
    },
}

/// A request as Nginx hands it to the gateway.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The route's path, e.g. /v1/chat/completions.
    #[arg(long, default_value = "/v1/chat/completions")]
    pub route: String,
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The connecting address (Nginx on the same host: 127.0.0.1).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub peer: std::net::IpAddr,
    /// X-Forwarded-For as Nginx sends it (`$proxy_add_x_forwarded_for`).
    #[arg(long, value_name = "LIST")]
    pub forwarded_for: Option<String>,
    /// X-Real-IP as Nginx sends it.
    #[arg(long, value_name = "IP")]
    pub real_ip: Option<String>,
    /// The key sent (checked as the server checks it). Prefer --key-id in shared shells.
    #[arg(long, conflicts_with = "key_id")]
    pub key: Option<String>,
    /// The key's id in the policy (its secret is not checked).
    #[arg(long)]
    pub key_id: Option<String>,
    /// The model the request names.
    #[arg(long)]
    pub model: Option<String>,
    /// Characters of prompt the request carries (everything the model reads).
    #[arg(long, default_value_t = 0)]
    pub prompt_chars: usize,
    /// The output limit the request asks for (max_tokens, num_predict, ...).
    #[arg(long)]
    pub max_tokens: Option<i64>,
}
