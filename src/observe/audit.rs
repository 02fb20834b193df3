//! One audit line per request, written when the request is completely over.
//!
//! Every request gets an [`AuditCell`] at its start. The handler fills in what it learns (key
//! id, model, token counts); the response body and, for streams, the stream itself hold a
//! reference. When the last holder lets go (the answer was fully sent, or the client went
//! away) the cell's `Drop` writes the line and records the request metrics, so no request, not
//! even one cut short, goes unaudited or is counted twice. Keys and prompt or answer text are
//! never part of a line.
//!
//! Lines are JSON written by hand into a per-worker batch (serde's generic serializer cost
//! more than the rest of the request's bookkeeping). A worker hands its batch to the audit
//! file's writer thread (`telemetry`) once it holds [`FLUSH_BYTES`], or [`FLUSH_AFTER`] after
//! its first line, and when the worker thread ends; `main` waits for [`wait_flushed`] before
//! closing the file, so a clean shutdown loses no line.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::Method;
use tokio::sync::Notify;

use crate::admission::client_ip::push_ipv4;
use crate::json_out::{int, json_opt_str, json_str, ms_into, opt_int, opt_ms};
use crate::observe::metrics::{FinishedRequest, Metrics};
use crate::observe::telemetry::AuditWriter;

/// A batch is handed over once it holds this much...
pub const FLUSH_BYTES: usize = 32 * 1024;
/// ...or this long after its first line, whichever comes first.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

pub use crate::json_out::clip;

/// What the line says. Filled in over the life of the request.
#[derive(Debug, Default)]
pub struct AuditRecord {
    pub request_id: String,
    pub client_ip: Option<IpAddr>,
    pub key_id: Option<Arc<str>>,
    pub user_id: Option<String>,
    pub method: Method,
    pub path: String,
    pub route: &'static str,
    pub model: Option<String>,
    pub status: u16,
    pub error: Option<&'static str>,
    /// The `reason` label the refusal is counted under (`GatewayError::rejection`).
    pub rejected: Option<&'static str>,
    /// The guard and rule behind a refusal or failure, for the operator reading the line.
    pub reason: Option<String>,
    /// What a guard in report-only mode would have refused (the request was served).
    pub report: Vec<(crate::policy::Guard, String)>,
    pub prompt_chars: Option<usize>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub stream: bool,
    pub ttft: Option<Duration>,
    pub upstream: Option<Duration>,
    /// Time waited in the fair queue for a backend slot.
    pub queue: Option<Duration>,
    /// Why the backend that answered was chosen (`affinity`, `warm`, `cold`, `least_busy`).
    pub backend_choice: Option<&'static str>,
}

impl AuditRecord {
    /// The request was answered with `err`: its code, the rejection metric's label, and the
    /// rule behind it (unless the site that refused already named a more precise one).
    pub fn refused(&mut self, status: u16, err: &crate::errors::GatewayError) {
        self.status = status;
        if self.error.is_none() {
            self.error = Some(err.code());
            self.rejected = err.rejection();
        }
        if self.reason.is_none() {
            self.reason = Some(err.rule().to_owned());
        }
    }

    /// A guard in report-only mode would have refused this request for `why`.
    pub fn would_refuse(&mut self, guard: crate::policy::Guard, why: String) {
        self.report.push((guard, why));
    }
}

/// Where finished requests go: the metrics, and the audit file when `audit.dir` is set.
/// Built once per process.
pub struct AuditSink {
    pub metrics: Arc<Metrics>,
    writer: Option<AuditWriter>,
}

impl AuditSink {
    pub fn new(metrics: Arc<Metrics>, writer: Option<AuditWriter>) -> Self {
        AuditSink { metrics, writer }
    }
}

pub struct AuditCell {
    pub rec: RefCell<AuditRecord>,
    pub started: Instant,
    sink: Arc<AuditSink>,
}

impl AuditCell {
    pub fn new(rec: AuditRecord, sink: Arc<AuditSink>) -> Self {
        sink.metrics.in_flight.inc();
        AuditCell {
            rec: RefCell::new(rec),
            started: Instant::now(),
            sink,
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut AuditRecord)) {
        f(&mut self.rec.borrow_mut());
    }
}

/// The audit status of a request whose client went away before any answer was sent
/// (nginx's convention).
pub const CLIENT_CLOSED: u16 = 499;

impl Drop for AuditCell {
    fn drop(&mut self) {
        let latency = self.started.elapsed();
        let mut r = self.rec.borrow_mut();
        // Dropped without a status: the handler was cancelled because the client left before
        // the answer began (actix drops the request when its connection closes).
        if r.status == 0 {
            r.status = CLIENT_CLOSED;
            r.error = r.error.or(Some("client_closed"));
        }
        let m = &self.sink.metrics;
        m.in_flight.dec();
        m.record_request(&FinishedRequest {
            route: r.route,
            status: r.status,
            key_id: r.key_id.as_deref().unwrap_or_default(),
            latency,
            ttft: r.ttft,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
        });
        if let Some(reason) = r.rejected {
            m.reject(reason);
        }
        for (guard, _) in &r.report {
            m.report_only(*guard);
        }
        if self.sink.writer.is_some() {
            batch_line(&self.sink, |out| {
                write_line(out, &r, latency, SystemTime::now());
            });
        }
    }
}

/// Lines written into a worker's batch and not yet handed to the writer thread.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// One per thread. Dropped when the thread ends, which hands over what is left.
struct Batch {
    buf: Vec<u8>,
    lines: usize,
    sink: Option<Arc<AuditSink>>,
    /// Wakes this worker's flusher task; none on threads without one (lines go at once).
    flusher: Option<Rc<Notify>>,
}

impl Batch {
    fn flush(&mut self) {
        if self.lines == 0 {
            return;
        }
        if let Some(w) = self.sink.as_ref().and_then(|s| s.writer.as_ref()) {
            w.write(&self.buf);
        }
        PENDING.fetch_sub(self.lines, Ordering::AcqRel);
        self.buf.clear();
        self.lines = 0;
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static BATCH: RefCell<Batch> = const {
        RefCell::new(Batch { buf: Vec::new(), lines: 0, sink: None, flusher: None })
    };
}

fn batch_line(sink: &Arc<AuditSink>, write: impl FnOnce(&mut Vec<u8>)) {
    let mut write = Some(write);
    let _ = BATCH.try_with(|b| {
        let Ok(mut b) = b.try_borrow_mut() else {
            return;
        };
        if !b.sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, sink)) {
            b.flush();
            b.sink = Some(sink.clone());
        }
        let first = b.lines == 0;
        if let Some(write) = write.take() {
            write(&mut b.buf);
        }
        b.buf.push(b'\n');
        b.lines += 1;
        PENDING.fetch_add(1, Ordering::AcqRel);
        match &b.flusher {
            Some(f) if b.buf.len() < FLUSH_BYTES => {
                if first {
                    f.notify_one();
                }
            }
            _ => b.flush(),
        }
    });
    // The thread is ending (its batch already gone): write the line on its own.
    if let (Some(write), Some(w)) = (write, sink.writer.as_ref()) {
        let mut line = Vec::with_capacity(384);
        write(&mut line);
        line.push(b'\n');
        w.write(&line);
    }
}

/// Starts this worker's flusher: it sleeps until the batch gets its first line, then hands
/// the batch over [`FLUSH_AFTER`] later. Call once per worker, from the app factory.
pub fn start_flusher() {
    let notify = Rc::new(Notify::new());
    let registered = BATCH
        .try_with(|b| {
            b.borrow_mut().flusher = Some(notify.clone());
        })
        .is_ok();
    if !registered {
        return;
    }
    actix_web::rt::spawn(async move {
        loop {
            notify.notified().await;
            tokio::time::sleep(FLUSH_AFTER).await;
            let _ = BATCH.try_with(|b| {
                if let Ok(mut b) = b.try_borrow_mut() {
                    b.flush();
                }
            });
        }
    });
}

/// Waits (up to `deadline`) until every worker has handed its batch over; `main` calls it
/// after the server stopped and before closing the audit file.
pub fn wait_flushed(deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    while PENDING.load(Ordering::Acquire) > 0 {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// The line: the same keys, in the same order, as always (operators' scripts read them).
fn write_line(out: &mut Vec<u8>, r: &AuditRecord, latency: Duration, now: SystemTime) {
    out.extend_from_slice(b"{\"ts\":\"");
    ts_into(out, now);
    out.extend_from_slice(b"\",\"request_id\":");
    json_str(out, &r.request_id);
    out.extend_from_slice(b",\"client_ip\":");
    match r.client_ip {
        Some(ip) => {
            out.push(b'"');
            ip_into(out, ip);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"key_id\":");
    json_opt_str(out, r.key_id.as_deref());
    out.extend_from_slice(b",\"user_id\":");
    json_opt_str(out, r.user_id.as_deref().or(r.key_id.as_deref()));
    out.extend_from_slice(b",\"method\":");
    json_str(out, r.method.as_str());
    out.extend_from_slice(b",\"path\":");
    json_str(out, &r.path);
    out.extend_from_slice(b",\"model\":");
    json_opt_str(out, r.model.as_deref());
    out.extend_from_slice(b",\"status\":");
    int(out, r.status);
    out.extend_from_slice(b",\"error\":");
    json_opt_str(out, r.error);
    out.extend_from_slice(b",\"reason\":");
    json_opt_str(out, r.reason.as_deref());
    if !r.report.is_empty() {
        out.extend_from_slice(b",\"report_only\":[");
        for (i, (_, would)) in r.report.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_str(out, would);
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"prompt_chars\":");
    opt_int(out, r.prompt_chars);
    out.extend_from_slice(b",\"prompt_tokens\":");
    opt_int(out, r.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    opt_int(out, r.completion_tokens);
    out.extend_from_slice(if r.stream {
        b",\"stream\":true"
    } else {
        b",\"stream\":false"
    });
    out.extend_from_slice(b",\"latency_ms\":");
    ms_into(out, latency);
    out.extend_from_slice(b",\"ttft_ms\":");
    opt_ms(out, r.ttft);
    out.extend_from_slice(b",\"upstream_ms\":");
    opt_ms(out, r.upstream);
    out.extend_from_slice(b",\"queue_ms\":");
    opt_ms(out, r.queue);
    out.extend_from_slice(b",\"backend_choice\":");
    json_opt_str(out, r.backend_choice);
    out.push(b'}');
}

fn ip_into(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        // Rare enough for the formatter (which also compresses zero runs).
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `2026-11-30T03:06:24.123Z` without pulling in a calendar crate.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    rfc3339_into(&mut out, t);
    String::from_utf8(out).unwrap_or_default()
}

/// The line's timestamp: the `YYYY-MM-DDTHH:MM:SS.` part is the same for every line of a
/// second, so each thread keeps the last one and only writes the milliseconds.
fn ts_into(out: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static LAST: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let cached = LAST.try_with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != d.as_secs() {
            last.1.clear();
            rfc3339_into(&mut last.1, UNIX_EPOCH + Duration::from_secs(d.as_secs()));
            last.1.truncate(20); // keep `YYYY-MM-DDTHH:MM:SS.`
            last.0 = d.as_secs();
        }
        out.extend_from_slice(&last.1);
    });
    if cached.is_err() {
        rfc3339_into(out, t);
        return;
    }
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

fn rfc3339_into(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, da) = civil_from_days(i64::try_from(days).unwrap_or(0));
    // Written digit by digit: this runs once per request, and `format!` with seven padded
    // fields cost several thousand instructions.
    let mut digits = |v: u64, width: u32, sep: u8| {
        for i in (0..width).rev() {
            out.push(b'0' + ((v / 10u64.pow(i)) % 10) as u8);
        }
        out.push(sep);
    };
    digits(u64::try_from(y).unwrap_or(0), 4, b'-');
    digits(u64::from(mo), 2, b'-');
    digits(u64::from(da), 2, b'T');
    digits(rem / 3600, 2, b':');
    digits((rem % 3600) / 60, 2, b':');
    digits(rem % 60, 2, b'.');
    digits(u64::from(d.subsec_millis()), 3, b'Z');
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
    fn lines_are_json_with_every_field() {
        let rec = AuditRecord {
            request_id: "r-1".into(),
            client_ip: Some("2001:db8::1".parse().unwrap()),
            key_id: Some("team \"a\"".into()),
            method: Method::POST,
            path: "/v1/x\u{1}\\y\n/ü/0123456789abcdef0123456789".into(),
            route: "other",
            status: 404,
            error: Some("not_found"),
            prompt_tokens: Some(7),
            ttft: Some(Duration::from_micros(1_234_567)),
            queue: Some(Duration::from_millis(40)),
            backend_choice: Some("warm"),
            ..AuditRecord::default()
        };
        let mut out = Vec::new();
        write_line(&mut out, &rec, Duration::from_micros(5), UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["client_ip"], "2001:db8::1");
        assert_eq!(v["key_id"], "team \"a\"");
        assert_eq!(v["user_id"], "team \"a\"");
        assert_eq!(v["path"], rec.path.as_str());
        assert_eq!(v["status"], 404);
        assert_eq!(v["model"], serde_json::Value::Null);
        assert_eq!(v["prompt_tokens"], 7);
        assert_eq!(v["stream"], false);
        assert_eq!(v["latency_ms"], 0.005);
        assert_eq!(v["ttft_ms"], 1234.567);
        assert_eq!(v["queue_ms"], 40.0);
        assert_eq!(v["backend_choice"], "warm");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 20, "{keys:?}");
        let mut v4 = Vec::new();
        ip_into(&mut v4, "10.0.255.1".parse().unwrap());
        assert_eq!(v4, b"10.0.255.1");
    }

    #[test]
    fn line_timestamps_match_rfc3339() {
        for ms in [
            0,
            7,
            999,
            1_000,
            59_999,
            86_399_999,
            1_796_008_000_123,
            1_796_008_000_124,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            let mut out = Vec::new();
            ts_into(&mut out, t);
            assert_eq!(String::from_utf8(out).unwrap(), rfc3339(t), "{ms}");
        }
    }

    #[test]
    fn formats_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_008_000_123);
        assert_eq!(rfc3339(t), "2026-11-30T03:06:40.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
