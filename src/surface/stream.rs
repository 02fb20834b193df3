//! Ollama NDJSON -> OpenAI SSE, sent as it arrives.
//!
//! Each upstream read is split into complete lines; every line becomes its SSE event(s) and is
//! handed to actix at once, so nothing waits for the rest of the answer. A partial line waits
//! for its end. The stream ends with `[DONE]` only after Ollama's final `done` line; an error
//! line, a broken connection, an early end or a silence longer than
//! `upstream.stream_idle_timeout_seconds`, a line longer than [`MAX_LINE`] or a stream lasting
//! past `upstream.max_stream_seconds` end it with an SSE error event and no `[DONE]`, so a
//! failure never looks like success, and a hostile upstream can hold neither unbounded memory
//! nor a client forever. A partial line is scanned for its end only in the bytes that are new. When the client goes away, actix drops this stream, which
//! drops the upstream response and closes its connection: Ollama stops generating.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::openai::Usage;
use crate::errors::{Dialect, GatewayError};
use crate::limits::meter::Meter;
use crate::observe::audit::{AuditCell, CLIENT_CLOSED};
use crate::observe::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::upstream::backends::Lease;

/// Keeps the in-flight-streams gauge right however the stream ends.
struct StreamGauge(Arc<Metrics>);

impl StreamGauge {
    fn new(m: Arc<Metrics>) -> Self {
        m.streams.inc();
        StreamGauge(m)
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}

const EVENT_CAPACITY: usize = 512;

/// Longest NDJSON line accepted from Ollama. A token is a few bytes and the final line a few
/// hundred; one line without an end must not grow a buffer without bound.
pub const MAX_LINE: usize = 1024 * 1024;

/// How long to wait for the end of Ollama's body after its `done` line.
const DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// What one line from Ollama meant for the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum LineOutcome {
    /// More to come.
    Continue,
    /// The final line: the stream is complete (finish chunk, usage and `[DONE]` written).
    Done(Usage),
    /// Ollama reported an error mid-stream; the caller ends the stream with an error event.
    Failed,
    /// The line is not an Ollama chat chunk: the stream cannot be trusted further.
    Invalid,
}

/// What a relayed stream does with each complete line from Ollama: translate it (chat
/// completions), or pass it on with public model names (the forwarded routes).
pub trait Lines {
    fn on_line(&mut self, line: &[u8], out: &mut BytesMut) -> LineOutcome;

    /// The upstream body ended without a `Done` line: `Some(usage)` when that end is the
    /// answer's end (an SSE stream that already sent its last event), `None` when the stream
    /// was cut short.
    fn at_end(&mut self) -> Option<Usage> {
        None
    }

    /// How this surface ends a stream with an error.
    fn dialect(&self) -> Dialect;

    /// Writes the event that ends this stream with `err`.
    fn error_event(&self, err: &GatewayError, out: &mut BytesMut) {
        err.stream_event(self.dialect(), out);
    }
}

/// Everything a relayed stream holds besides its upstream body and its line handler.
pub struct StreamParts {
    /// Longest silence between two upstream reads.
    pub idle: Duration,
    /// Longest the whole stream may last.
    pub max_duration: Duration,
    pub audit: Rc<AuditCell>,
    pub metrics: Arc<Metrics>,
    /// Keeps the stream counted against its backend until it ends.
    pub lease: Lease,
    pub shutdown: Arc<Shutdown>,
    /// What the answer cost, settled when the stream ends however it ends.
    pub meter: Meter,
}

struct State<S, L> {
    upstream: S,
    pending: BytesMut,
    /// Bytes of `pending` already known to hold no newline.
    scanned: usize,
    translator: L,
    idle: Duration,
    /// When the stream must end, however busy it is.
    deadline: Instant,
    audit: Rc<AuditCell>,
    finished: bool,
    /// Ended with Ollama's `done` line (not with an error).
    complete: bool,
    first_sent: bool,
    /// Ollama's lines before the last: roughly one generated token each, what a stream cut
    /// short is metered by.
    lines_seen: u64,
    shutdown: Arc<Shutdown>,
    gauge: StreamGauge,
    meter: Meter,
    /// Keeps the stream counted against its backend until it ends.
    _lease: Lease,
}

impl<S, L: Lines> State<S, L> {
    /// Translates every complete line in `pending` into `out`.
    fn drain_lines(&mut self, out: &mut BytesMut) {
        while !self.finished {
            let Some(pos) = memchr::memchr(b'\n', &self.pending[self.scanned..]) else {
                self.scanned = self.pending.len();
                self.check_line_cap(out);
                return;
            };
            let pos = self.scanned + pos;
            let line = self.pending.split_to(pos + 1);
            self.scanned = 0;
            self.on_line(&line[..pos], out);
        }
    }

    fn check_line_cap(&mut self, out: &mut BytesMut) {
        if self.pending.len() > MAX_LINE && !self.finished {
            self.pending = BytesMut::new();
            self.scanned = 0;
            self.fail(GatewayError::UpstreamFailed, "stream_line_too_long", out);
        }
    }

    /// Translates the complete lines of a fresh upstream read straight from it (nothing is
    /// pending, the usual case), keeping only a trailing partial line.
    fn take_read(&mut self, bytes: &[u8], out: &mut BytesMut) {
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(bytes);
            return;
        }
        let mut start = 0;
        while !self.finished {
            let Some(pos) = memchr::memchr(b'\n', &bytes[start..]) else {
                self.pending.extend_from_slice(&bytes[start..]);
                self.scanned = self.pending.len();
                self.check_line_cap(out);
                return;
            };
            self.on_line(&bytes[start..start + pos], out);
            start += pos + 1;
        }
    }

    fn on_line(&mut self, line: &[u8], out: &mut BytesMut) {
        match self.translator.on_line(line, out) {
            LineOutcome::Continue => self.lines_seen += 1,
            LineOutcome::Done(usage) => self.done(usage),
            LineOutcome::Failed => self.fail(GatewayError::UpstreamFailed, "stream_error", out),
            LineOutcome::Invalid => self.fail(GatewayError::UpstreamFailed, "stream_invalid", out),
        }
    }

    fn fail(&mut self, err: GatewayError, kind: &'static str, out: &mut BytesMut) {
        self.finished = true;
        if !matches!(err, GatewayError::Interrupted) {
            self.gauge.0.upstream_error(kind);
        }
        let request_id = self.audit.rec.borrow().request_id.clone();
        tracing::warn!(request_id, kind, "Streamed answer ended with an error.");
        let seen = self.lines_seen;
        self.audit.update(|r| {
            r.error = Some(err.code());
            r.reason = Some(err.rule().to_owned());
            r.completion_tokens = r.completion_tokens.or(Some(seen));
        });
        self.meter.counted(None, Some(seen));
        self.translator.error_event(&err, out);
    }

    fn done(&mut self, usage: Usage) {
        self.finished = true;
        self.complete = true;
        self.audit.update(|r| {
            r.prompt_tokens = Some(usage.prompt_tokens);
            r.completion_tokens = Some(usage.completion_tokens);
        });
        self.meter
            .counted(Some(usage.prompt_tokens), Some(usage.completion_tokens));
    }
}

/// A stream dropped before its end: the client went away (actix drops the body when the
/// connection closes). Audited as 499 with the tokens generated so far, so hanging up before
/// the last chunk does not escape metering. Dropping it also drops the upstream response,
/// which closes that connection: Ollama stops generating.
impl<S, L> Drop for State<S, L> {
    fn drop(&mut self) {
        if !self.finished {
            let seen = self.lines_seen;
            self.audit.update(|r| {
                r.status = CLIENT_CLOSED;
                r.error = Some("client_closed");
                r.completion_tokens = r.completion_tokens.or(Some(seen));
            });
            self.meter.counted(None, Some(seen));
        }
    }
}

enum Step<T> {
    Read(T),
    Cut,
}

/// Relays Ollama's body to the client line by line through `translator`.
pub fn relay<S, E, L>(
    upstream: S,
    translator: L,
    parts: StreamParts,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin + 'static,
    L: Lines + 'static,
{
    let StreamParts {
        idle,
        max_duration,
        audit,
        metrics,
        lease,
        shutdown,
        meter,
    } = parts;
    let deadline = Instant::now() + max_duration;
    let watched_audit = audit.clone();
    let state = State {
        upstream,
        pending: BytesMut::new(),
        scanned: 0,
        translator,
        idle,
        deadline,
        audit,
        finished: false,
        complete: false,
        first_sent: false,
        lines_seen: 0,
        shutdown,
        gauge: StreamGauge::new(metrics),
        meter,
        _lease: lease,
    };
    let relayed = futures_util::stream::unfold(state, |mut st| async move {
        if st.finished {
            if st.complete {
                // Ollama ends its chunked body right after the `done` line: read that end so
                // awc can put the connection back in its pool instead of closing it (measured:
                // a new upstream connection per stream otherwise). Bounded, in case it does not.
                let drain = async { while let Some(Ok(_)) = st.upstream.next().await {} };
                let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
            }
            return None;
        }
        // Room for a typical event or two, so writing one does not grow the buffer in steps.
        let mut out = BytesMut::with_capacity(EVENT_CAPACITY);
        loop {
            st.drain_lines(&mut out);
            if !out.is_empty() {
                break;
            }
            if st.finished {
                return None;
            }
            let left = st.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                st.fail(
                    GatewayError::UpstreamTimeout,
                    "stream_max_duration",
                    &mut out,
                );
                continue;
            }
            let step = {
                let shutdown = st.shutdown.clone();
                tokio::select! {
                    r = tokio::time::timeout(st.idle.min(left), st.upstream.next()) => Step::Read(r),
                    () = shutdown.cut() => Step::Cut,
                }
            };
            let read = match step {
                Step::Read(r) => r,
                Step::Cut => {
                    st.fail(GatewayError::Interrupted, "interrupted", &mut out);
                    continue;
                }
            };
            match read {
                Ok(Some(Ok(bytes))) => st.take_read(&bytes, &mut out),
                Ok(Some(Err(_))) => {
                    st.fail(GatewayError::UpstreamFailed, "stream_broken", &mut out);
                }
                Ok(None) => {
                    // A last line without its newline still counts.
                    if !st.pending.is_empty() {
                        let rest = std::mem::take(&mut st.pending);
                        st.on_line(&rest, &mut out);
                    }
                    if !st.finished {
                        match st.translator.at_end() {
                            Some(usage) => st.done(usage),
                            None => {
                                st.fail(GatewayError::UpstreamFailed, "stream_truncated", &mut out);
                            }
                        }
                    }
                }
                Err(_) if Instant::now() >= st.deadline => {
                    st.fail(
                        GatewayError::UpstreamTimeout,
                        "stream_max_duration",
                        &mut out,
                    );
                }
                Err(_) => st.fail(
                    GatewayError::UpstreamTimeout,
                    "stream_idle_timeout",
                    &mut out,
                ),
            }
        }
        if !st.first_sent {
            st.first_sent = true;
            let ttft = st.audit.started.elapsed();
            st.audit.update(|r| r.ttft = Some(ttft));
        }
        Some((Ok(out.freeze()), st))
    });
    Watched::new(Box::pin(relayed), idle, deadline, watched_audit)
}

type Body = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>;

/// The relayed body as actix holds it, with a watchdog for a client that stops reading.
///
/// The relay keeps its time bounds only while actix polls it; actix stops polling when the
/// client stops taking bytes (its socket and write buffer full), and the stream would then
/// hold its GPU slot and Ollama's generation for as long as the connection stays open. So
/// when actix has not asked for more for the stream idle time since it was handed a chunk,
/// or the stream's deadline passed while so blocked, a local task takes the relay away:
/// its slot is handed on, the upstream connection closes (Ollama stops), and the audit line
/// says `client_stalled`.
struct Watched {
    relay: Rc<std::cell::RefCell<Option<Body>>>,
    /// When a chunk was handed to actix and not yet followed by a new poll.
    handed: Rc<std::cell::Cell<Option<Instant>>>,
    watchdog: Option<actix_web::rt::task::JoinHandle<()>>,
}

impl Watched {
    fn new(relay: Body, idle: Duration, deadline: Instant, audit: Rc<AuditCell>) -> Watched {
        let relay = Rc::new(std::cell::RefCell::new(Some(relay)));
        let handed = Rc::new(std::cell::Cell::new(None::<Instant>));
        let (r, h) = (Rc::downgrade(&relay), handed.clone());
        let watchdog = actix_web::rt::spawn(async move {
            loop {
                let now = Instant::now();
                let wake = match h.get() {
                    Some(at) if now >= at + idle || now >= deadline => {
                        if let Some(relay) = r.upgrade() {
                            // Dropped outside the borrow: its Drop records the audit line.
                            let gone = relay.borrow_mut().take();
                            drop(gone);
                            audit.update(|rec| {
                                rec.error = Some("client_stalled");
                                rec.reason = Some(
                                    "upstream.stream_idle_timeout_seconds: the client took no byte"
                                        .to_owned(),
                                );
                            });
                            tracing::info!(
                                request_id = %audit.rec.borrow().request_id,
                                "A client stopped reading its stream: the stream and its slot are released."
                            );
                        }
                        return;
                    }
                    Some(at) => (at + idle).min(deadline),
                    None => now + idle,
                };
                if r.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep_until(wake.into()).await;
            }
        });
        Watched {
            relay,
            handed,
            watchdog: Some(watchdog),
        }
    }
}

impl Stream for Watched {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        this.handed.set(None);
        let mut relay = this.relay.borrow_mut();
        let Some(body) = relay.as_mut() else {
            return Poll::Ready(None);
        };
        match body.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => {
                this.handed.set(Some(Instant::now()));
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                *relay = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // The client went away: the relay goes now (closing the upstream connection), not
        // when the watchdog next wakes.
        if let Some(w) = self.watchdog.take() {
            w.abort();
        }
        let gone = self.relay.borrow_mut().take();
        drop(gone);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;
    use crate::observe::audit::{AuditRecord, AuditSink};
    use crate::surface::convert::SseTranslator;
    use crate::upstream::backends::BackendState;

    /// Collects what the client would receive for the given upstream reads.
    async fn run(reads: Vec<&'static str>) -> String {
        let metrics = Arc::new(Metrics::new());
        let audit = Rc::new(AuditCell::new(
            AuditRecord::default(),
            Arc::new(AuditSink::new(metrics.clone(), None)),
        ));
        let upstream = stream::iter(
            reads
                .into_iter()
                .map(|r| Ok::<_, std::io::Error>(Bytes::from_static(r.as_bytes()))),
        );
        let lease = Arc::new(BackendState::new("http://x")).lease();
        let translator = SseTranslator::new("c".into(), 1, "m".into(), false);
        let body = relay(
            upstream,
            translator,
            StreamParts {
                idle: Duration::from_secs(5),
                max_duration: Duration::from_secs(60),
                audit,
                metrics,
                lease,
                shutdown: Arc::new(Shutdown::default()),
                meter: Meter::new(Arc::default(), None, None, 0),
            },
        );
        let parts: Vec<Bytes> = body.map(|r| r.unwrap()).collect().await;
        String::from_utf8(parts.concat()).unwrap()
    }

    #[actix_web::test]
    async fn lines_split_anywhere_translate_the_same() {
        let whole = concat!(
            "{\"message\":{\"content\":\"a\"},\"done\":false}\n",
            "{\"message\":{\"content\":\"b\"},\"done\":false}\n",
            "{\"done\":true,\"prompt_eval_count\":1,\"eval_count\":2}\n",
        );
        let expected = run(vec![whole]).await;
        assert!(expected.ends_with("data: [DONE]\n\n"), "{expected}");
        assert_eq!(expected.matches("data: ").count(), 4, "{expected}");
        for cut in 1..whole.len() {
            let got = run(vec![&whole[..cut], &whole[cut..]]).await;
            assert_eq!(got, expected, "split at {cut}");
        }
        // Two lines, then the third arriving byte by byte.
        let third = whole.find("{\"done\":true").unwrap();
        let mut reads = vec![&whole[..third]];
        reads.extend((third..whole.len()).map(|i| &whole[i..=i]));
        assert_eq!(run(reads).await, expected);
    }
}
