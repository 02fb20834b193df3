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
    /// Validate the policy file like `nginx -t`: exit 0 with a summary, or non-zero with the
    /// field at fault.
    Check,
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
