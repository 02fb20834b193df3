//! Token quotas: tokens (prompt + completion) per key per minute and per day.
//!
//! Request limits count requests; one request can be 30 tokens or 30,000. A quota counts what
//! the GPU did. Admission reserves an estimate (the prompt's size and the request's capped
//! output limit) in a sliding log, refusing the request when the estimate does not fit in any
//! window; when the answer ends (complete, failed, or the client gone) the reservation is
//! settled with Ollama's real counts, refunding the difference. Concurrent requests see each
//! other's reservations, so a quota is exceeded at most by one request's settled overshoot.
//! The log lives outside the policy: reloads keep it.

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

struct Entry {
    at: Instant,
    tokens: u64,
    id: u64,
}

#[derive(Default)]
struct Ledger {
    entries: VecDeque<Entry>,
}

#[derive(Default)]
struct Inner {
    ledgers: HashMap<Arc<str>, Ledger>,
    next_id: u64,
}

/// Per-identity token logs, process-wide.
#[derive(Default)]
pub struct TokenLimiter {
    inner: Mutex<Inner>,
    /// Identities kept at most; past it, idle ones are dropped first.
    max_tracked: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An estimate held against an identity until settled (or dropped: settled with what the
/// request reported by then, see [`Reservation::settle`]).
pub struct Reservation {
    limiter: Arc<TokenLimiter>,
    identity: Arc<str>,
    id: u64,
}

impl Reservation {
    /// Replaces the estimate with the real count.
    pub fn settle(self, tokens: u64) {
        let mut g = lock(&self.limiter.inner);
        if let Some(l) = g.ledgers.get_mut(&self.identity)
            && let Some(e) = l.entries.iter_mut().find(|e| e.id == self.id)
        {
            e.tokens = tokens;
        }
    }
}

impl TokenLimiter {
    pub fn new(max_tracked: u64) -> Self {
        TokenLimiter {
            inner: Mutex::default(),
            max_tracked: usize::try_from(max_tracked).unwrap_or(usize::MAX),
        }
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
        let longest = quotas.iter().map(|q| q.window).max().unwrap_or_default();
        let mut g = lock(&self.inner);
        if !g.ledgers.contains_key(identity) && g.ledgers.len() >= self.max_tracked {
            g.ledgers.retain(|_, l| {
                l.entries
                    .back()
                    .is_some_and(|e| now.saturating_duration_since(e.at) < longest)
            });
        }
        let ledger = g.ledgers.entry(identity.clone()).or_default();
        while ledger
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) >= longest)
        {
            ledger.entries.pop_front();
        }
        let mut tightest: Option<TokenDecision> = None;
        for q in quotas {
            let estimate = estimate.min(q.limit);
            let in_window = ledger
                .entries
                .iter()
                .filter(|e| now.saturating_duration_since(e.at) < q.window);
            let used: u64 = in_window.clone().map(|e| e.tokens).sum();
            if used + estimate > q.limit {
                // The estimate fits once enough of the oldest entries have left the window.
                let mut freed = 0;
                let mut at = now + q.window;
                for e in in_window {
                    freed += e.tokens;
                    if used - freed + estimate <= q.limit {
                        at = e.at + q.window;
                        break;
                    }
                }
                return Err(TokenDecision {
                    allowed: false,
                    limit: q.limit,
                    remaining: q.limit.saturating_sub(used),
                    reset: at
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(1)),
                });
            }
            let d = TokenDecision {
                allowed: true,
                limit: q.limit,
                remaining: q.limit - used - estimate,
                reset: q.window,
            };
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(d);
            }
        }
        g.next_id += 1;
        let id = g.next_id;
        let ledger = g.ledgers.entry(identity.clone()).or_default();
        ledger.entries.push_back(Entry {
            at: now,
            tokens: estimate,
            id,
        });
        let decision = tightest.unwrap_or(TokenDecision {
            allowed: true,
            limit: 0,
            remaining: 0,
            reset: Duration::ZERO,
        });
        Ok((
            Reservation {
                limiter: self.clone(),
                identity: identity.clone(),
                id,
            },
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
    fn an_estimate_larger_than_the_quota_fits_an_empty_window() {
        let tl = Arc::new(TokenLimiter::new(100));
        let k: Arc<str> = Arc::from("k");
        let (_r, d) = tl.reserve(&k, &[minute(500)], 9000).unwrap();
        assert_eq!(d.remaining, 0);
        assert!(tl.reserve(&k, &[minute(500)], 1).is_err());
    }
}
