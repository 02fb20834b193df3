//! Token quotas: tokens (prompt + completion) per key per minute and per day.
//!
//! Request limits count requests; one request can be 30 tokens or 30,000. A quota counts what
//! the GPU did. Admission reserves an estimate (the prompt's size and the request's capped
//! output limit) in a sliding log, refusing the request when the estimate does not fit in any
//! window; when the answer ends (complete, failed, or the client gone) the reservation is
//! settled with Ollama's real counts, refunding the difference. Concurrent requests see each
//! other's reservations, so a quota is exceeded at most by one request's settled overshoot.
//! The log lives outside the policy: reloads keep it. With `rate_limit.backend: redis` the
//! same buckets live in Redis (`redis.rs`) and every gateway shares them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue};

use crate::errors::HeaderPair;

/// One quota: at most `limit` tokens in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenQuota {
    pub limit: u64,
    pub window: Duration,
}

/// What a check decided, with what the `x-ratelimit-*-tokens` headers report (of the tightest
/// quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDecision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the estimate would fit (refusals), or until the window is empty.
    pub reset: Duration,
}

impl TokenDecision {
    pub fn headers(&self) -> [HeaderPair; 3] {
        [
            (
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderValue::from(self.remaining),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset-tokens"),
                HeaderValue::from_str(&super::go_duration(self.reset))
                    .unwrap_or(HeaderValue::from_static("1s")),
            ),
        ]
    }
}

/// Tokens per time bucket: a window is `BUCKETS` buckets (a minute in seconds, a day in 24
/// minutes), so memory and work per request stay constant at any request rate. A bucket
/// counts until all of it has left the window, so usage is over- never under-counted.
const BUCKETS: u32 = 60;

struct Bucket {
    /// Bucket number since the limiter started (time / the quota's bucket length).
    n: u64,
    tokens: u64,
}

/// One identity's use against one quota.
#[derive(Default)]
struct Ledger {
    buckets: VecDeque<Bucket>,
    /// Sum of `buckets`.
    sum: u64,
}

impl Ledger {
    fn prune(&mut self, now_n: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|b| b.n + u64::from(BUCKETS) <= now_n)
        {
            if let Some(b) = self.buckets.pop_front() {
                self.sum -= b.tokens;
            }
        }
    }

    fn add(&mut self, n: u64, tokens: u64) {
        match self.buckets.back_mut() {
            Some(b) if b.n == n => b.tokens += tokens,
            _ => self.buckets.push_back(Bucket { n, tokens }),
        }
        self.sum += tokens;
    }

    /// Changes a reservation's bucket from `from` to `to` tokens, if it is still counted.
    fn settle(&mut self, n: u64, from: u64, to: u64) {
        if let Some(b) = self.buckets.iter_mut().rev().find(|b| b.n == n) {
            let new = (b.tokens + to).saturating_sub(from);
            self.sum = self.sum - b.tokens + new;
            b.tokens = new;
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Per identity, one ledger per quota (in the order the quotas are given).
    ledgers: HashMap<Arc<str>, Vec<Ledger>>,
}

/// Per-identity token use, process-wide.
pub struct TokenLimiter {
    inner: Mutex<Inner>,
    /// Identities kept at most; past it, idle ones are dropped first.
    max_tracked: usize,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An estimate held against an identity until settled with the real count.
pub struct Reservation(Held);

enum Held {
    Memory {
        limiter: Arc<TokenLimiter>,
        identity: Arc<str>,
        /// Per quota: (bucket, tokens reserved there).
        held: Vec<(u64, u64)>,
    },
    /// Shared by every gateway through Redis; settled by a task on this worker.
    Redis {
        redis: actix_web::web::Data<super::redis::RedisLimiter>,
        cfg: crate::policy::RedisLimits,
        keys: Vec<String>,
        held: Vec<(u64, u64)>,
    },
}

impl Reservation {
    pub fn redis(
        redis: actix_web::web::Data<super::redis::RedisLimiter>,
        cfg: crate::policy::RedisLimits,
        keys: Vec<String>,
        held: Vec<(u64, u64)>,
    ) -> Self {
        Reservation(Held::Redis {
            redis,
            cfg,
            keys,
            held,
        })
    }

    /// Replaces the estimate with the real count.
    pub fn settle(self, tokens: u64) {
        match self.0 {
            Held::Memory {
                limiter,
                identity,
                held,
            } => {
                let mut g = lock(&limiter.inner);
                if let Some(ledgers) = g.ledgers.get_mut(&identity) {
                    for (l, &(n, h)) in ledgers.iter_mut().zip(&held) {
                        l.settle(n, h, tokens);
                    }
                }
            }
            Held::Redis {
                redis,
                cfg,
                keys,
                held,
            } => {
                // Drop runs on the worker that served the request, inside its runtime.
                actix_web::rt::spawn(async move {
                    if let Err(e) = redis.settle_tokens(&cfg, &keys, &held, tokens).await
                        && !matches!(e, super::redis::RedisTrouble::Backoff)
                    {
                        // The estimate stays counted until its bucket leaves the window.
                        tracing::warn!(?e, "Redis could not settle a token reservation.");
                    }
                });
            }
        }
    }
}

fn bucket_len(q: &TokenQuota) -> Duration {
    (q.window / BUCKETS).max(Duration::from_millis(1))
}

impl TokenLimiter {
    pub fn new(max_tracked: u64) -> Self {
        TokenLimiter {
            inner: Mutex::default(),
            max_tracked: usize::try_from(max_tracked).unwrap_or(usize::MAX),
            epoch: Instant::now(),
        }
    }

    fn bucket_of(&self, q: &TokenQuota, at: Instant) -> u64 {
        let len = bucket_len(q).as_nanos().max(1);
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos() / len).unwrap_or(u64::MAX)
    }

    /// Reserves `estimate` tokens for `identity` if every quota has room; the estimate is
    /// capped at each quota's limit, so one request always fits an empty window.
    pub fn reserve(
        self: &Arc<Self>,
        identity: &Arc<str>,
        quotas: &[TokenQuota],
        estimate: u64,
    ) -> Result<(Reservation, TokenDecision), TokenDecision> {
        let now = Instant::now();
        let mut g = lock(&self.inner);
        if !g.ledgers.contains_key(identity) && g.ledgers.len() >= self.max_tracked {
            g.ledgers
                .retain(|_, ls| ls.iter().any(|l| l.sum > 0 && !l.buckets.is_empty()));
        }
        let ledgers = g.ledgers.entry(identity.clone()).or_default();
        ledgers.resize_with(quotas.len(), Ledger::default);
        let mut tightest: Option<TokenDecision> = None;
        for (q, l) in quotas.iter().zip(ledgers.iter_mut()) {
            let now_n = self.bucket_of(q, now);
            l.prune(now_n);
            let estimate = estimate.min(q.limit);
            if l.sum + estimate > q.limit {
                // The estimate fits once enough of the oldest buckets have left the window.
                let mut freed = 0;
                let mut fits_at = now_n + u64::from(BUCKETS);
                for b in &l.buckets {
                    freed += b.tokens;
                    if l.sum - freed + estimate <= q.limit {
                        fits_at = b.n + u64::from(BUCKETS);
                        break;
                    }
                }
                let wait = bucket_len(q).saturating_mul(
                    u32::try_from(fits_at.saturating_sub(now_n)).unwrap_or(u32::MAX),
                );
                return Err(TokenDecision {
                    allowed: false,
                    limit: q.limit,
                    remaining: q.limit.saturating_sub(l.sum),
                    reset: wait.max(Duration::from_millis(1)),
                });
            }
            let d = TokenDecision {
                allowed: true,
                limit: q.limit,
                remaining: q.limit - l.sum - estimate,
                reset: q.window,
            };
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(d);
            }
        }
        let mut held = Vec::with_capacity(quotas.len());
        for (q, l) in quotas.iter().zip(ledgers.iter_mut()) {
            let n = self.bucket_of(q, now);
            let e = estimate.min(q.limit);
            l.add(n, e);
            held.push((n, e));
        }
        let decision = tightest.unwrap_or(TokenDecision {
            allowed: true,
            limit: 0,
            remaining: 0,
            reset: Duration::ZERO,
        });
        Ok((
            Reservation(Held::Memory {
                limiter: self.clone(),
                identity: identity.clone(),
                held,
            }),
            decision,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn minute(limit: u64) -> TokenQuota {
        TokenQuota {
            limit,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn reservations_settle_and_refund() {
        let tl = Arc::new(TokenLimiter::new(100));
        let k: Arc<str> = Arc::from("k");
        let (r1, d) = tl.reserve(&k, &[minute(1000)], 600).unwrap();
        assert_eq!(d.remaining, 400);
        // A second estimate of 600 does not fit while the first is reserved...
        let refused = tl.reserve(&k, &[minute(1000)], 600).err().unwrap();
        assert!(!refused.allowed && refused.reset <= Duration::from_secs(60));
        // ...but does once the first settles at its real 100.
        r1.settle(100);
        let (_r2, d) = tl.reserve(&k, &[minute(1000)], 600).unwrap();
        assert_eq!(d.remaining, 300);
    }

    #[test]
    fn memory_stays_constant_at_any_rate() {
        // 200,000 requests in one minute land in at most 60 buckets per quota.
        let tl = Arc::new(TokenLimiter::new(100));
        let k: Arc<str> = Arc::from("k");
        let quotas = [
            minute(u64::MAX / 4),
            TokenQuota {
                limit: u64::MAX / 4,
                window: Duration::from_secs(86_400),
            },
        ];
        for _ in 0..200_000 {
            let (r, _) = tl.reserve(&k, &quotas, 10).unwrap();
            r.settle(7);
        }
        let g = lock(&tl.inner);
        let ls = &g.ledgers[&k];
        assert!(ls.iter().all(|l| l.buckets.len() <= 61));
        assert!(ls.iter().all(|l| l.sum == 1_400_000));
    }

    #[test]
    fn an_estimate_larger_than_the_quota_fits_an_empty_window() {
        let tl = Arc::new(TokenLimiter::new(100));
        let k: Arc<str> = Arc::from("k");
        let (_r, d) = tl.reserve(&k, &[minute(500)], 9000).unwrap();
        assert_eq!(d.remaining, 0);
        assert!(tl.reserve(&k, &[minute(500)], 1).is_err());
    }
}
