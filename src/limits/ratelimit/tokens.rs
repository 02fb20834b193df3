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
//!
//! The ledgers live in the same kind of table as the request limits (`super`): at most
//! `max_tracked_clients` identities, in shards; an identity leaves only once its ledgers are
//! empty, and when a shard is full of live identities (a flood of fresh client addresses
//! with auth off) a new one shares one overflow ledger under the same quotas, so memory stays
//! bounded and no identity's use is forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::limits::quota::{TokenDecision, TokenQuota};

/// The gateway's estimate of the tokens in `chars` characters of prompt: one token per three
/// characters, on the high side for English and code (Qwen's tokenizer averages about four),
/// so that a quota is rather reserved too much than too little. The token quotas reserve it,
/// and `/v1/messages/count_tokens` answers it.
pub fn prompt_tokens_estimate(chars: usize) -> u64 {
    (chars as u64).div_ceil(CHARS_PER_TOKEN as u64)
}

/// Characters per token in the gateway's estimate (and what one token id of a native
/// `context` counts as against the prompt limit).
pub const CHARS_PER_TOKEN: usize = 3;

/// Tokens an image is reserved at: a vision model reads an image as hundreds to about a
/// thousand tokens (Qwen2.5-VL: 1,024 for a 896x896 picture).
pub const IMAGE_TOKENS: u64 = 1_024;

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

/// One shard of the table: per identity, one ledger per quota (in the order the quotas are
/// given).
#[derive(Default)]
struct Shard {
    ledgers: HashMap<Arc<str>, Vec<Ledger>, foldhash::fast::RandomState>,
    /// A full shard whose sweep freed nothing is not swept again before this (bucket number
    /// of the first quota): a flood of new identities costs a lookup each, not a scan.
    next_sweep: u64,
}

/// Per-identity token use, process-wide.
pub struct TokenLimiter {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
    /// The ledgers of every identity that found its shard full of live ones.
    overflow: Mutex<Vec<Ledger>>,
    epoch: Instant,
}

/// Where an identity's ledgers are.
#[derive(Clone, Copy)]
enum Place {
    Shard(usize),
    Overflow,
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
        place: Place,
        /// Per quota: (bucket, tokens reserved there).
        held: Vec<(u64, u64)>,
    },
    /// Shared by every gateway through Redis; settled by a task on this worker.
    Redis {
        redis: actix_web::web::Data<super::redis::RedisLimiter>,
        cfg: crate::limits::quota::RedisLimits,
        keys: Vec<String>,
        held: Vec<(u64, u64)>,
    },
}

impl Reservation {
    pub fn redis(
        redis: actix_web::web::Data<super::redis::RedisLimiter>,
        cfg: crate::limits::quota::RedisLimits,
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
                place,
                held,
            } => {
                let settle = |ledgers: &mut [Ledger]| {
                    for (l, &(n, h)) in ledgers.iter_mut().zip(&held) {
                        l.settle(n, h, tokens);
                    }
                };
                match place {
                    Place::Shard(i) => {
                        if let Some(ledgers) = lock(&limiter.shards[i]).ledgers.get_mut(&identity) {
                            settle(ledgers);
                        }
                    }
                    Place::Overflow => settle(&mut lock(&limiter.overflow)),
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
        let max = usize::try_from(max_tracked)
            .unwrap_or(usize::MAX)
            .max(super::SHARDS);
        TokenLimiter {
            shards: (0..super::SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max / super::SHARDS,
            hasher: foldhash::fast::RandomState::default(),
            overflow: Mutex::default(),
            epoch: Instant::now(),
        }
    }

    fn shard_of(&self, identity: &str) -> usize {
        use std::hash::BuildHasher as _;
        (self.hasher.hash_one(identity) as usize) % super::SHARDS
    }

    /// Runs `f` on the identity's ledgers: its own, made if its shard has room (after
    /// dropping the identities whose ledgers have emptied), else the shared overflow ones.
    fn with_ledgers<T>(
        &self,
        identity: &Arc<str>,
        quotas: &[TokenQuota],
        now: Instant,
        f: impl FnOnce(&mut Vec<Ledger>, Place) -> T,
    ) -> T {
        let i = self.shard_of(identity);
        let mut shard = lock(&self.shards[i]);
        if !shard.ledgers.contains_key(identity) && shard.ledgers.len() >= self.per_shard {
            let now_n = quotas.first().map_or(0, |q| self.bucket_of(q, now));
            if now_n >= shard.next_sweep {
                let nows: Vec<u64> = quotas.iter().map(|q| self.bucket_of(q, now)).collect();
                shard.ledgers.retain(|_, ls| {
                    ls.iter_mut().zip(&nows).for_each(|(l, &n)| l.prune(n));
                    ls.iter().any(|l| l.sum > 0)
                });
                if shard.ledgers.len() >= self.per_shard {
                    shard.next_sweep = now_n + 1;
                }
            }
            if shard.ledgers.len() >= self.per_shard {
                drop(shard);
                let mut ledgers = lock(&self.overflow);
                let n = quotas.len().max(ledgers.len());
                ledgers.resize_with(n, Ledger::default);
                return f(&mut ledgers, Place::Overflow);
            }
        }
        let ledgers = shard.ledgers.entry(identity.clone()).or_default();
        let n = quotas.len().max(ledgers.len());
        ledgers.resize_with(n, Ledger::default);
        f(ledgers, Place::Shard(i))
    }

    /// Identities with ledgers of their own now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(s).ledgers.len()).sum()
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
        self.with_ledgers(identity, quotas, now, |ledgers, place| {
            self.reserve_in(ledgers, place, identity, quotas, estimate, now)
        })
    }

    fn reserve_in(
        self: &Arc<Self>,
        ledgers: &mut [Ledger],
        place: Place,
        identity: &Arc<str>,
        quotas: &[TokenQuota],
        estimate: u64,
        now: Instant,
    ) -> Result<(Reservation, TokenDecision), TokenDecision> {
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
                place,
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
        let g = lock(&tl.shards[tl.shard_of(&k)]);
        let ls = &g.ledgers[&k];
        assert!(ls.iter().all(|l| l.buckets.len() <= 61));
        assert!(ls.iter().all(|l| l.sum == 1_400_000));
    }

    /// With auth off and per-address quotas, a flood of fresh addresses (the sweep saw RSS
    /// grow without bound past max_tracked_clients, each new address scanning the table under
    /// one lock): the table stays within its bound, the addresses that did not fit share one
    /// overflow ledger under the same quota, and a tracked address keeps its own count.
    #[test]
    fn a_flood_of_identities_stays_bounded_and_is_still_metered() {
        let tl = Arc::new(TokenLimiter::new(160));
        let q = [minute(1_000)];
        let first: Arc<str> = Arc::from("10.0.0.1");
        let (r, _) = tl.reserve(&first, &q, 100).unwrap();
        r.settle(100);
        let mut refused = 0;
        for i in 0..20_000u32 {
            let ip: Arc<str> = Arc::from(format!("198.51.{}.{}", i / 256, i % 256));
            match tl.reserve(&ip, &q, 50) {
                Ok((r, _)) => r.settle(50),
                Err(_) => refused += 1,
            }
        }
        assert!(tl.tracked() <= 160, "{} tracked", tl.tracked());
        // The overflow ledger filled up under the quota: the flood was metered, not forgotten.
        assert!(refused > 0);
        assert!(lock(&tl.overflow).iter().all(|l| l.sum <= 1_000));
        // The first address kept its own count.
        let (_r, d) = tl.reserve(&first, &q, 0).unwrap();
        assert_eq!(d.remaining, 900);
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
