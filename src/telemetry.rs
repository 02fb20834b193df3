//! Where logs go: operational logs to stderr (journald), audit lines to daily files.
//!
//! Operational events (startup, reloads, upstream trouble) are filtered by the policy's
//! `log_level`, which a reload can change through [`LogLevel`]. Audit events (target `audit`)
//! bypass that filter and go, one JSON line each, to `audit.dir/audit.YYYY-MM-DD.jsonl`,
//! rotated daily, through tracing-appender's non-blocking writer in lossless mode: when the
//! writer falls behind, requests wait rather than lines being dropped. The returned guard
//! flushes the file when dropped at the very end of `main`.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_appender::rolling::{Builder as RollingBuilder, Rotation};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

pub const AUDIT_TARGET: &str = "audit";

fn stderr_filter(level: &str) -> EnvFilter {
    // Audit lines never go to stderr; noisy dependencies stay at warn.
    EnvFilter::new(format!("warn,qwen_gateway={level},{AUDIT_TARGET}=off"))
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
    _audit: Option<WorkerGuard>,
}

struct AuditLayer {
    writer: NonBlocking,
}

struct LineVisitor(Option<String>);

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "line" {
            let mut line = String::with_capacity(value.len() + 1);
            line.push_str(value);
            self.0 = Some(line);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "line" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S: Subscriber> Layer<S> for AuditLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != AUDIT_TARGET {
            return;
        }
        let mut v = LineVisitor(None);
        event.record(&mut v);
        if let Some(mut line) = v.0 {
            line.push('\n');
            let mut w = self.writer.clone();
            // Lossless mode blocks instead of dropping; an I/O error here has nowhere better
            // to go than stderr.
            if let Err(e) = w.write_all(line.as_bytes()) {
                eprintln!("audit log write failed: {e}");
            }
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

    let (audit_layer, guard) = match audit_dir {
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
            let (writer, guard) = NonBlockingBuilder::default()
                .lossy(false)
                .buffered_lines_limit(64 * 1024)
                .thread_name("audit-writer")
                .finish(buffered);
            // A static per-layer filter: tracing then knows at registration that no layer wants
            // actix's per-request `trace!` callsites and disables them for good, instead of
            // asking on every call.
            let only_audit = Targets::new().with_target(AUDIT_TARGET, LevelFilter::TRACE);
            (
                Some(AuditLayer { writer }.with_filter(only_audit)),
                Some(guard),
            )
        }
        None => (None, None),
    };

    tracing_subscriber::registry()
        .with(stderr)
        .with(audit_layer)
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
        _audit: guard,
    })
}
