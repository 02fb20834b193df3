//! One audit line per request, written when the request is completely over.
//!
//! Every request gets an [`AuditCell`] at its start. The handler fills in what it learns (key
//! id, model, token counts); the response body and, for streams, the stream itself hold a
//! reference. When the last holder lets go (the answer was fully sent, or the client went
//! away) the cell's `Drop` writes the line and records the request metrics, so no request, not
//! even one cut short, goes unaudited or is counted twice. The line goes to the `audit` tracing
//! target, which `telemetry` routes to the daily audit file. Keys and prompt or answer text
//! are never part of it.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::{KeyLabels, Metrics, RequestLabels, RouteLabels, rejection_reason};

/// What the line says. Filled in over the life of the request.
#[derive(Debug, Default)]
pub struct AuditRecord {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub method: String,
    pub path: String,
    pub route: &'static str,
    pub model: Option<String>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub prompt_chars: Option<usize>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub stream: bool,
    pub ttft: Option<Duration>,
    pub upstream: Option<Duration>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    request_id: &'a str,
    client_ip: Option<String>,
    key_id: Option<&'a str>,
    user_id: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    model: Option<&'a str>,
    status: u16,
    error: Option<&'a str>,
    prompt_chars: Option<usize>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    stream: bool,
    latency_ms: f64,
    ttft_ms: Option<f64>,
    upstream_ms: Option<f64>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

pub struct AuditCell {
    pub rec: RefCell<AuditRecord>,
    pub started: Instant,
    metrics: Arc<Metrics>,
}

impl AuditCell {
    pub fn new(rec: AuditRecord, metrics: Arc<Metrics>) -> Self {
        metrics.in_flight.inc();
        AuditCell {
            rec: RefCell::new(rec),
            started: Instant::now(),
            metrics,
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut AuditRecord)) {
        f(&mut self.rec.borrow_mut());
    }
}

impl Drop for AuditCell {
    fn drop(&mut self) {
        let latency = self.started.elapsed();
        let r = self.rec.borrow();
        let m = &self.metrics;
        m.in_flight.dec();
        let key = r.key_id.clone().unwrap_or_default();
        m.requests
            .get_or_create(&RequestLabels {
                route: r.route,
                status: r.status,
                key_id: key.clone(),
            })
            .inc();
        m.latency
            .get_or_create(&RouteLabels { route: r.route })
            .observe(latency.as_secs_f64());
        if let Some(reason) = r.error.and_then(rejection_reason) {
            m.reject(reason);
        }
        if let Some(t) = r.ttft {
            m.ttft.observe(t.as_secs_f64());
        }
        if let Some(n) = r.prompt_tokens {
            m.prompt_tokens
                .get_or_create(&KeyLabels {
                    key_id: key.clone(),
                })
                .inc_by(n);
        }
        if let Some(n) = r.completion_tokens {
            m.completion_tokens
                .get_or_create(&KeyLabels { key_id: key })
                .inc_by(n);
        }
        let line = Line {
            ts: rfc3339_now(),
            request_id: &r.request_id,
            client_ip: r.client_ip.map(|ip| ip.to_string()),
            key_id: r.key_id.as_deref(),
            user_id: r.user_id.as_deref().or(r.key_id.as_deref()),
            method: &r.method,
            path: &r.path,
            model: r.model.as_deref(),
            status: r.status,
            error: r.error,
            prompt_chars: r.prompt_chars,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            stream: r.stream,
            latency_ms: ms(latency),
            ttft_ms: r.ttft.map(ms),
            upstream_ms: r.upstream.map(ms),
        };
        if let Ok(json) = serde_json::to_string(&line) {
            // As a &str the field reaches the audit layer through `record_str`, without a
            // second formatting pass over the line.
            tracing::info!(target: "audit", line = json.as_str());
        }
    }
}

/// `2026-11-30T03:06:24.123Z` without pulling in a calendar crate.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, da) = civil_from_days(i64::try_from(days).unwrap_or(0));
    // Written digit by digit: this runs once per request, and `format!` with seven padded
    // fields cost several thousand instructions.
    let mut out = String::with_capacity(24);
    let mut digits = |v: u64, width: u32, sep: Option<char>| {
        for i in (0..width).rev() {
            let d = (v / 10u64.pow(i)) % 10;
            out.push(char::from(b'0' + u8::try_from(d).unwrap_or(0)));
        }
        if let Some(c) = sep {
            out.push(c);
        }
    };
    digits(u64::try_from(y).unwrap_or(0), 4, Some('-'));
    digits(u64::from(mo), 2, Some('-'));
    digits(u64::from(da), 2, Some('T'));
    digits(rem / 3600, 2, Some(':'));
    digits((rem % 3600) / 60, 2, Some(':'));
    digits(rem % 60, 2, Some('.'));
    digits(u64::from(d.subsec_millis()), 3, Some('Z'));
    out
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_008_000_123);
        assert_eq!(rfc3339(t), "2026-11-30T03:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
