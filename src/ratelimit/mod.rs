//! Exact sliding-window rate limiting, one state for the whole process.
//!
//! Each identity (API key id, or client IP when auth is off) keeps a log of the instants of its
//! admitted requests. A request is admitted only when fewer than `max_requests` fall inside the
//! last `window`, so no interval of that length ever holds more than the quota: the fixed-window
//! "2x at the boundary" and the GCRA "burst + rate" excess both cannot happen. The log is capped
//! by the quota, so memory per identity is bounded.
//!
//! The logs live in a bounded `moka` cache whose entries expire once idle for their window, so a
//! flood of distinct client IPs cannot grow it past `max_tracked_clients`. The cache is built
//! once, outside the per-worker app factory, and is not part of the policy: a reload keeps every
//! counter, and a changed quota applies to the existing logs on the next request.
//! `redis.rs` keeps the same window in Redis when several gateways share limits.

pub mod redis;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};
use moka::Expiry;
use moka::sync::Cache;

use crate::errors::{HeaderPair, ceil_secs};
use crate::policy::Quota;

/// The outcome of one check, with what the `x-ratelimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the next request would be admitted (rejections) or until the window is empty.
    pub reset: Duration,
}

impl Decision {
    /// Whole seconds until a request would be admitted, at least the true wait.
    pub fn retry_after(&self) -> Duration {
        self.reset
    }

    /// OpenAI's `x-ratelimit-*` headers.
    pub fn headers(&self) -> [HeaderPair; 3] {
        [
            (
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset-requests"),
                HeaderValue::from_str(&go_duration(self.reset))
                    .unwrap_or(HeaderValue::from_static("1s")),
            ),
        ]
    }
}

/// `250ms`, `12s`, `1m0s`: the format OpenAI uses in `x-ratelimit-reset-*`.
/// Built by hand: it is on every admitted request's answer.
fn go_duration(d: Duration) -> String {
    let mut out = String::with_capacity(12);
    let mut n = itoa::Buffer::new();
    if d < Duration::from_secs(1) {
        out.push_str(n.format(d.as_millis().max(1)));
        out.push_str("ms");
        return out;
    }
    let secs = ceil_secs(d);
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        out.push_str(n.format(h));
        out.push('h');
    }
    if h > 0 || m > 0 {
        out.push_str(n.format(m));
        out.push('m');
    }
    out.push_str(n.format(s));
    out.push('s');
    out
}

struct Entry {
    admitted: Mutex<VecDeque<Instant>>,
    /// The window last applied, for expiry: an entry idle for its window holds nothing.
    window_ms: AtomicU64,
}

impl Entry {
    fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms.load(Ordering::Relaxed))
    }
}

struct IdleForWindow;

impl Expiry<Arc<str>, Arc<Entry>> for IdleForWindow {
    fn expire_after_create(&self, _: &Arc<str>, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(v.window())
    }
    fn expire_after_read(
        &self,
        _: &Arc<str>,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(v.window())
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.window())
    }
}

/// A keyed sliding-window limiter. Cheap to clone (shared state).
#[derive(Clone)]
pub struct RateLimiter {
    entries: Cache<Arc<str>, Arc<Entry>>,
}

impl RateLimiter {
    pub fn new(max_tracked: u64) -> Self {
        RateLimiter {
            entries: Cache::builder()
                .max_capacity(max_tracked)
                .expire_after(IdleForWindow)
                .build(),
        }
    }

    /// Admits and records one request for `identity` if the quota allows it.
    pub fn check(&self, identity: &str, quota: Quota) -> Decision {
        let now = Instant::now();
        let entry = self.entry(identity, quota);
        // A poisoned lock only means another thread panicked mid-update of a VecDeque of
        // instants; the data is still a valid log, so keep using it.
        let mut log = entry.admitted.lock().unwrap_or_else(|p| p.into_inner());
        decide(&mut log, now, quota, true)
    }

    /// Reports whether a request would be admitted, without recording one (nor creating
    /// state for an identity that has none: every request peeks at its address's failed
    /// keys, and most addresses never fail one).
    pub fn peek(&self, identity: &str, quota: Quota) -> Decision {
        let now = Instant::now();
        match self.entries.get(identity) {
            Some(entry) => {
                let mut log = entry.admitted.lock().unwrap_or_else(|p| p.into_inner());
                decide(&mut log, now, quota, false)
            }
            None => decide(&mut VecDeque::new(), now, quota, false),
        }
    }

    /// Records one event (e.g. a failed key) regardless of the quota.
    pub fn record(&self, identity: &str, quota: Quota) {
        let now = Instant::now();
        let entry = self.entry(identity, quota);
        let mut log = entry.admitted.lock().unwrap_or_else(|p| p.into_inner());
        prune(&mut log, now, quota.window);
        if log.len() < quota.max_requests as usize {
            log.push_back(now);
        }
    }

    pub fn tracked(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    fn entry(&self, identity: &str, quota: Quota) -> Arc<Entry> {
        let window_ms = u64::try_from(quota.window.as_millis()).unwrap_or(u64::MAX);
        // Looked up by &str first: the Arc<str> key is only built for a new identity.
        let entry = match self.entries.get(identity) {
            Some(entry) => entry,
            None => self.entries.get_with(Arc::from(identity), || {
                Arc::new(Entry {
                    admitted: Mutex::new(VecDeque::new()),
                    window_ms: AtomicU64::new(window_ms),
                })
            }),
        };
        entry.window_ms.store(window_ms, Ordering::Relaxed);
        entry
    }
}

fn prune(log: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while let Some(&oldest) = log.front() {
        if now.saturating_duration_since(oldest) >= window {
            log.pop_front();
        } else {
            break;
        }
    }
}

fn decide(log: &mut VecDeque<Instant>, now: Instant, quota: Quota, record: bool) -> Decision {
    prune(log, now, quota.window);
    let max = quota.max_requests as usize;
    if log.len() < max {
        if record {
            log.push_back(now);
        }
        let newest = log.back().copied().unwrap_or(now);
        return Decision {
            allowed: true,
            limit: quota.max_requests,
            remaining: u32::try_from(max - log.len()).unwrap_or(0),
            reset: (newest + quota.window).saturating_duration_since(now),
        };
    }
    // Full (or over, after a quota was lowered): the next admission happens when enough of
    // the oldest entries have left the window to bring the count below the quota.
    let idx = log.len() - max;
    let frees_at = log[idx] + quota.window;
    Decision {
        allowed: false,
        limit: quota.max_requests,
        remaining: 0,
        reset: frees_at
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: u32, secs: u64) -> Quota {
        Quota {
            max_requests: n,
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn never_more_than_quota_in_any_window() {
        // Drive the pure decision with a synthetic clock: requests every 700 ms for 10 min.
        let quota = q(30, 60);
        let start = Instant::now();
        let mut log = VecDeque::new();
        let mut admitted = Vec::new();
        for i in 0..860u64 {
            let now = start + Duration::from_millis(i * 700);
            let d = decide(&mut log, now, quota, true);
            if d.allowed {
                admitted.push(now);
            } else {
                // Retry-After is the true wait: nothing is admitted before it, one is at it.
                let mut probe = log.clone();
                let early = now + d.reset - Duration::from_millis(1);
                assert!(!decide(&mut probe, early, quota, false).allowed);
                assert!(decide(&mut probe, now + d.reset, quota, false).allowed);
            }
        }
        for (i, t) in admitted.iter().enumerate() {
            let in_window = admitted[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < quota.window)
                .count();
            assert!(in_window <= 30, "{in_window} admitted in one window");
        }
        assert!(admitted.len() > 30);
    }

    #[test]
    fn thirty_first_is_rejected_with_retry_after() {
        let rl = RateLimiter::new(1000);
        for i in 0..30 {
            let d = rl.check("k", q(30, 60));
            assert!(d.allowed);
            assert_eq!(d.remaining, 29 - i);
        }
        let d = rl.check("k", q(30, 60));
        assert!(!d.allowed);
        assert_eq!(ceil_secs(d.retry_after()), 60);
        // A higher quota applies to the same log at once; a lower one too.
        assert!(rl.check("k", q(31, 60)).allowed);
        assert!(!rl.check("k", q(10, 60)).allowed);
    }

    #[test]
    fn concurrent_threads_admit_exactly_the_quota() {
        let rl = RateLimiter::new(1000);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let rl = rl.clone();
                std::thread::spawn(move || {
                    (0..25).filter(|_| rl.check("k", q(30, 60)).allowed).count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(total, 30);
    }

    #[test]
    fn memory_is_bounded_under_ip_spray() {
        let rl = RateLimiter::new(1_000);
        for i in 0..50_000u32 {
            rl.check(&format!("ip:{i}"), q(5, 60));
        }
        assert!(rl.tracked() <= 1_000, "{} tracked", rl.tracked());
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(go_duration(Duration::from_millis(59_500)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_secs(3700)), "1h1m40s");
    }
}
