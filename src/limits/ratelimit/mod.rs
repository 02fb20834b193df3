//! Exact sliding-window rate limiting, one state for the whole process.
//!
//! Each identity (API key id, or client IP when auth is off) keeps a log of the instants of its
//! admitted requests. A request is admitted only when fewer than `max_requests` fall inside the
//! last `window`, so no interval of that length ever holds more than the quota: the fixed-window
//! "2x at the boundary" and the GCRA "burst + rate" excess both cannot happen. The log is capped
//! by the quota, so memory per identity is bounded.
//!
//! The logs live in a table of at most `max_tracked_clients` identities, in shards. An identity
//! leaves the table only once its log is empty (idle for its window), so it holds nothing a
//! limit depends on: exactness holds for every identity whatever the churn. When the table is
//! full of live identities (a flood of fresh client addresses), a new identity is not given an
//! empty log, which would reset its limit: it shares one overflow log with every other identity
//! that did not fit, under the same quota, until room frees up. Both are counted
//! (`ratelimit_evictions_total`, `ratelimit_overflow_total`).
//!
//! The table is built once, outside the per-worker app factory, and is not part of the policy:
//! a reload keeps every counter, and a changed quota applies to the existing logs on the next
//! request. `redis.rs` keeps the same window in Redis when several gateways share limits.

pub mod redis;
pub mod tokens;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::limits::quota::Quota;
pub use crate::limits::quota::{Decision, go_duration};

/// One identity's admitted instants, and the window they were last judged by.
struct Log {
    admitted: VecDeque<Instant>,
    window: Duration,
}

impl Log {
    fn new(window: Duration) -> Self {
        Log {
            admitted: VecDeque::new(),
            window,
        }
    }

    /// When this log will hold nothing (and its identity can leave the table).
    fn empty_at(&self) -> Option<Instant> {
        self.admitted.back().map(|t| *t + self.window)
    }
}

/// Shards keep one lock from serialising every request of every identity.
const SHARDS: usize = 16;

struct Shard {
    logs: HashMap<Arc<str>, Log, foldhash::fast::RandomState>,
    /// No log can become empty before this: a full shard is not swept again until then.
    next_sweep: Option<Instant>,
}

impl Shard {
    /// Removes identities whose log is empty; returns how many.
    fn sweep(&mut self, now: Instant) -> u64 {
        if self.next_sweep.is_some_and(|t| now < t) {
            return 0;
        }
        let before = self.logs.len();
        let mut next: Option<Instant> = None;
        self.logs.retain(|_, log| {
            prune(&mut log.admitted, now, log.window);
            match log.empty_at() {
                None => false,
                Some(t) => {
                    next = Some(next.map_or(t, |n| n.min(t)));
                    true
                }
            }
        });
        self.next_sweep = next;
        (before - self.logs.len()) as u64
    }
}

struct Table {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    /// Shared by every identity that found the table full.
    overflow: Mutex<Log>,
    evictions: Counter,
    overflowed: Counter,
}

/// Counters the limiter reports through (`/metrics`); detached ones in tests.
#[derive(Clone, Default)]
pub struct LimiterCounters {
    pub evictions: Counter,
    pub overflow: Counter,
}

/// A keyed sliding-window limiter. Cheap to clone (shared state).
#[derive(Clone)]
pub struct RateLimiter {
    table: Arc<Table>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of a log of instants;
    // the data is still a valid log, so keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RateLimiter {
    pub fn new(max_tracked: u64) -> Self {
        Self::with_counters(max_tracked, LimiterCounters::default())
    }

    pub fn with_counters(max_tracked: u64, counters: LimiterCounters) -> Self {
        let max = usize::try_from(max_tracked)
            .unwrap_or(usize::MAX)
            .max(SHARDS);
        RateLimiter {
            table: Arc::new(Table {
                shards: (0..SHARDS)
                    .map(|_| {
                        Mutex::new(Shard {
                            logs: HashMap::default(),
                            next_sweep: None,
                        })
                    })
                    .collect(),
                per_shard: max / SHARDS,
                hasher: foldhash::fast::RandomState::default(),
                overflow: Mutex::new(Log::new(Duration::ZERO)),
                evictions: counters.evictions,
                overflowed: counters.overflow,
            }),
        }
    }

    fn shard(&self, identity: &str) -> &Mutex<Shard> {
        let h = self.table.hasher.hash_one(identity);
        &self.table.shards[(h as usize) % SHARDS]
    }

    /// Runs `f` on the identity's log, creating it if there is room; `None` when the table is
    /// full of live identities. `create` false: never create (peek).
    fn with_log<T>(
        &self,
        identity: &str,
        quota: Quota,
        now: Instant,
        create: bool,
        f: impl FnOnce(&mut VecDeque<Instant>) -> T,
    ) -> Option<T> {
        let mut shard = lock(self.shard(identity));
        if let Some(log) = shard.logs.get_mut(identity) {
            log.window = quota.window;
            return Some(f(&mut log.admitted));
        }
        if !create {
            return Some(f(&mut VecDeque::new()));
        }
        if shard.logs.len() >= self.table.per_shard {
            let removed = shard.sweep(now);
            self.table.evictions.inc_by(removed);
            if shard.logs.len() >= self.table.per_shard {
                return None;
            }
        }
        // The new log may empty as early as one window from now.
        shard.next_sweep = shard.next_sweep.map(|t| t.min(now + quota.window));
        let log = shard
            .logs
            .entry(Arc::from(identity))
            .or_insert_with(|| Log::new(quota.window));
        Some(f(&mut log.admitted))
    }

    fn with_overflow<T>(&self, quota: Quota, f: impl FnOnce(&mut VecDeque<Instant>) -> T) -> T {
        self.table.overflowed.inc();
        let mut log = lock(&self.table.overflow);
        log.window = quota.window;
        f(&mut log.admitted)
    }

    /// Admits and records one request for `identity` if the quota allows it.
    pub fn check(&self, identity: &str, quota: Quota) -> Decision {
        let now = Instant::now();
        let run = |log: &mut VecDeque<Instant>| decide(log, now, quota, true);
        match self.with_log(identity, quota, now, true, run) {
            Some(d) => d,
            None => self.with_overflow(quota, run),
        }
    }

    /// Reports whether a request would be admitted, without recording one (nor creating
    /// state for an identity that has none: every request peeks at its address's failed
    /// keys, and most addresses never fail one). An identity not in a full table is judged
    /// by the overflow log, where its events went.
    pub fn peek(&self, identity: &str, quota: Quota) -> Decision {
        let now = Instant::now();
        let run = |log: &mut VecDeque<Instant>| decide(log, now, quota, false);
        let shard_full = {
            let shard = lock(self.shard(identity));
            !shard.logs.contains_key(identity) && shard.logs.len() >= self.table.per_shard
        };
        if shard_full {
            let mut log = lock(&self.table.overflow);
            return run(&mut log.admitted);
        }
        self.with_log(identity, quota, now, false, run)
            .unwrap_or_else(|| run(&mut VecDeque::new()))
    }

    /// Records one event (e.g. a failed key) regardless of the quota.
    pub fn record(&self, identity: &str, quota: Quota) {
        let now = Instant::now();
        let run = |log: &mut VecDeque<Instant>| {
            prune(log, now, quota.window);
            if log.len() < quota.max_requests as usize {
                log.push_back(now);
            }
        };
        if self.with_log(identity, quota, now, true, run).is_none() {
            self.with_overflow(quota, run);
        }
    }

    /// Identities in the table now (idle ones included until a sweep removes them).
    pub fn tracked(&self) -> u64 {
        self.table
            .shards
            .iter()
            .map(|s| lock(s).logs.len() as u64)
            .sum()
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
    use crate::limits::quota::ceil_secs;

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
    fn exact_for_every_identity_whatever_the_churn() {
        // 5,000 identities churn through a table of ~1,000, four rounds each, quota 3: no
        // identity is ever admitted more than 3 times (a reset log would admit a 4th), and
        // the ones that did not fit share one quota.
        let counters = LimiterCounters::default();
        let rl = RateLimiter::with_counters(1_000, counters.clone());
        let quota = q(3, 60);
        let mut admitted = vec![0u32; 5_000];
        for _ in 0..4 {
            for (i, n) in admitted.iter_mut().enumerate() {
                if rl.check(&format!("ip:{i}"), quota).allowed {
                    *n += 1;
                }
            }
        }
        assert!(
            admitted.iter().all(|&n| n <= 3),
            "an identity's limit was reset"
        );
        let total: u32 = admitted.iter().sum();
        assert!(total <= 1_000 * 3 + 3, "{total} admitted");
        assert!(total >= 900 * 3, "the table was not used: {total}");
        assert!(rl.tracked() <= 1_000);
        assert!(counters.overflow.get() > 0);
        // The failed-key throttle sees what was recorded in the overflow log too.
        let fails = q(2, 60);
        rl.record("ip:new-a", fails);
        rl.record("ip:new-b", fails);
        assert!(!rl.peek("ip:new-c", fails).allowed);
    }

    #[test]
    fn idle_identities_make_room_without_losing_live_ones() {
        let counters = LimiterCounters::default();
        let rl = RateLimiter::with_counters(1_600, counters.clone());
        let short = Quota {
            max_requests: 1,
            window: Duration::from_millis(30),
        };
        for i in 0..2_000 {
            rl.check(&format!("old:{i}"), short);
        }
        assert!(rl.tracked() <= 1_600);
        std::thread::sleep(Duration::from_millis(40)); // their windows pass
        // Half the capacity, so no shard overflows however the names hash.
        for i in 0..800 {
            assert!(rl.check(&format!("new:{i}"), q(1, 60)).allowed);
        }
        assert!(counters.evictions.get() > 0);
        // Every new identity got its own log: a second request is refused for each.
        for i in 0..800 {
            assert!(!rl.check(&format!("new:{i}"), q(1, 60)).allowed);
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(go_duration(Duration::from_millis(59_500)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_secs(3700)), "1h1m40s");
    }
}
