//! Where logs go: operational logs to stderr (journald), audit lines to daily files.
//!
//! Operational events (startup, reloads, upstream trouble) are filtered by the policy's
//! `log_level`, which a reload can change through [`LogLevel`]. Audit lines (see `audit`) go
//! to `audit.dir/audit.YYYY-MM-DD.jsonl`, rotated daily, through tracing-appender's
//! non-blocking writer in lossless mode: when the writer falls behind, requests wait rather
//! than lines being dropped. They do not pass through `tracing` at all: the lines are already
//! JSON, and an event per request only added dispatch and a copy. The returned guard flushes
//! the file when dropped at the very end of `main`.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{Builder as RollingBuilder, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

fn stderr_filter(level: &str) -> EnvFilter {
    // Noisy dependencies stay at warn. actix-http reports a client's malformed request (a bad
    // request line, headers too large) as an ERROR per request: a client's mistake is not the
    // gateway's error, so it shows only at debug and trace.
    let client_errors = if matches!(level, "debug" | "trace") {
        "error"
    } else {
        "off"
    };
    EnvFilter::new(format!(
        "warn,actix_http::h1::dispatcher={client_errors},qwen_gateway={level}"
    ))
}

/// Changes the stderr log level at run time.
#[derive(Clone)]
pub struct LogLevel {
    set: Arc<dyn Fn(&str) + Send + Sync>,
}

impl LogLevel {
    pub fn set(&self, level: &str) {
        (self.set)(level);
    }
}

/// Holds the audit writer open; dropping it flushes pending lines.
pub struct Telemetry {
    pub log_level: LogLevel,
    /// Where audit lines go; `None` when `audit.dir` is unset.
    pub audit: Option<AuditWriter>,
    _audit_guard: Option<WorkerGuard>,
}

/// The audit file's writer: a channel to the writer thread. Each call hands over whole lines.
#[derive(Clone)]
pub struct AuditWriter {
    inner: NonBlocking,
}

impl AuditWriter {
    pub fn write(&self, lines: &[u8]) {
        // Lossless mode blocks instead of dropping; an I/O error here has nowhere better to
        // go than stderr.
        if let Err(e) = self.inner.clone().write_all(lines) {
            eprintln!("audit log write failed: {e}");
        }
    }
}

pub fn init(level: &str, audit_dir: Option<&Path>) -> anyhow::Result<Telemetry> {
    let (filter, handle) = reload::Layer::new(stderr_filter(level));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .with_filter(filter);

    let (audit, guard) = match audit_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create audit.dir {}: {e}", dir.display()))?;
            let appender = RollingBuilder::new()
                .rotation(Rotation::DAILY)
                .filename_prefix("audit")
                .filename_suffix("jsonl")
                .build(dir)
                .map_err(|e| anyhow::anyhow!("cannot open audit log in {}: {e}", dir.display()))?;
            // The writer thread writes every line it drains from the channel, then flushes:
            // buffering here turns one write(2) per line into one per drained batch.
            let buffered = std::io::BufWriter::with_capacity(64 * 1024, appender);
            // Workers hand over batches of lines, so the channel counts batches.
            let (writer, guard) = NonBlockingBuilder::default()
                .lossy(false)
                .buffered_lines_limit(1024)
                .thread_name("audit-writer")
                .finish(buffered);
            (Some(AuditWriter { inner: writer }), Some(guard))
        }
        None => (None, None),
    };

    tracing_subscriber::registry()
        .with(stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    // Dependencies log through the `log` crate, bridged into tracing. Left at TRACE, every
    // `log::trace!` on actix's hot paths would be dispatched and filtered per request.
    log::set_max_level(log::LevelFilter::Warn);
    let set = move |level: &str| {
        if let Err(e) = handle.reload(stderr_filter(level)) {
            tracing::warn!(error = %e, "Could not change the log level.");
        }
    };
    Ok(Telemetry {
        log_level: LogLevel { set: Arc::new(set) },
        audit,
        _audit_guard: guard,
    })
}
