//! A circuit breaker in front of Ollama: stop hammering a dead upstream, fail fast instead.
//!
//! Closed: requests flow; consecutive failures (connect errors, failed liveness probes, 5xx
//! other than "busy") are counted, and any success resets the count. At the policy's
//! `failure_threshold` it opens: requests get 503 with `Retry-After` at once, without touching
//! Ollama. After `cooldown` one request is let through as a probe (half-open); its success
//! closes the breaker, its failure opens it again. Overload ("server busy") is not a failure:
//! it means Ollama is alive. A probe that never reports (its client went away) does not wedge
//! the breaker: after `probe_timeout` another request may probe.
//!
//! A 5xx that Ollama answered may be shaped by the request (one key's input that the model
//! fails on) rather than say the backend is unwell: such failures open the breaker only when
//! the run of them came from more than one key. Each key has its own failure budget
//! ([`KeyBudgets`]): a key whose requests keep failing is refused for the cool-down, alone.

use std::collections::HashMap;

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `from`: the key of the run's answered failures (a hash); `many`: the run has had
    /// failures from more than one key, or failures any request would have met.
    Closed {
        failures: u32,
        from: Option<u64>,
        many: bool,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        probe_started: Instant,
    },
}

/// Whether a request may go upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open probe.
    Probe,
    No {
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

pub struct Breaker {
    phase: Mutex<Phase>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            phase: Mutex::new(CLOSED),
        }
    }
}

const CLOSED: Phase = Phase::Closed {
    failures: 0,
    from: None,
    many: false,
};

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // The phase is a plain Copy value; a poisoned lock still holds a valid one.
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, probe_timeout: Duration) -> Admit {
        let now = Instant::now();
        let mut phase = self.lock();
        match *phase {
            Phase::Closed { .. } => Admit::Yes,
            Phase::Open { until } if now < until => Admit::No {
                retry_after: until - now,
            },
            Phase::Open { .. } => {
                *phase = Phase::HalfOpen { probe_started: now };
                Admit::Probe
            }
            Phase::HalfOpen { probe_started }
                if now.duration_since(probe_started) > probe_timeout =>
            {
                *phase = Phase::HalfOpen { probe_started: now };
                Admit::Probe
            }
            Phase::HalfOpen { .. } => Admit::No {
                retry_after: Duration::from_secs(1),
            },
        }
    }

    pub fn on_success(&self) {
        *self.lock() = CLOSED;
    }

    /// Records a failure that says the backend is unwell (no connection, a failed probe, a
    /// failure of a request that no key shaped); returns true when it opened the breaker.
    pub fn on_failure(&self, threshold: u32, cooldown: Duration) -> bool {
        self.failure(threshold, cooldown, None)
    }

    /// Records a 5xx Ollama answered to a request of key `key` (a hash): it counts, but the
    /// breaker opens only once the run holds failures of more than one key.
    pub fn on_answered_failure(&self, threshold: u32, cooldown: Duration, key: u64) -> bool {
        self.failure(threshold, cooldown, Some(key))
    }

    fn failure(&self, threshold: u32, cooldown: Duration, key: Option<u64>) -> bool {
        let now = Instant::now();
        let mut phase = self.lock();
        match *phase {
            Phase::Closed {
                failures,
                from,
                many,
            } => {
                let many = many || key.is_none() || (failures > 0 && from != key);
                let failures = failures + 1;
                if failures < threshold || !many {
                    *phase = Phase::Closed {
                        failures,
                        from: from.or(key),
                        many,
                    };
                    return false;
                }
                *phase = Phase::Open {
                    until: now + cooldown,
                };
                true
            }
            Phase::Open { .. } => false,
            _ => {
                *phase = Phase::Open {
                    until: now + cooldown,
                };
                true
            }
        }
    }

    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { until } if Instant::now() < until => BreakerState::Open,
            // Cool-down over: the next request will probe.
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// Each key's run of 5xx answers on one backend: a key at the breaker's threshold is refused
/// for the cool-down, without touching Ollama, while other keys go on.
#[derive(Default)]
pub struct KeyBudgets {
    /// Key hash -> (failures in a row, refused until).
    keys: Mutex<HashMap<u64, (u32, Option<Instant>)>>,
}

/// Keys tracked at most (with auth off a key is an address): past it the table starts over.
const MAX_KEYS: usize = 4096;

impl KeyBudgets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u32, Option<Instant>)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(retry_after)` while the key is refused.
    pub fn refused(&self, key: u64) -> Option<Duration> {
        let now = Instant::now();
        match self.lock().get(&key) {
            Some((_, Some(until))) if *until > now => Some(*until - now),
            _ => None,
        }
    }

    pub fn failed(&self, key: u64, threshold: u32, cooldown: Duration) {
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS && !keys.contains_key(&key) {
            keys.clear();
        }
        let e = keys.entry(key).or_insert((0, None));
        e.0 += 1;
        if e.0 >= threshold {
            *e = (0, Some(Instant::now() + cooldown));
        }
    }

    pub fn succeeded(&self, key: u64) {
        let mut keys = self.lock();
        if keys
            .get(&key)
            .is_some_and(|(n, until)| *n > 0 || until.is_some())
        {
            keys.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_fails_fast_and_closes_after_probe() {
        let b = Breaker::default();
        let t = Duration::from_secs(5);
        for _ in 0..2 {
            assert!(!b.on_failure(3, Duration::from_millis(50)));
        }
        assert!(b.on_failure(3, Duration::from_millis(50)));
        assert!(matches!(b.admit(t), Admit::No { .. }));
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(t), Admit::Probe);
        assert!(matches!(b.admit(t), Admit::No { .. }), "only one probe");
        b.on_success();
        assert_eq!(b.admit(t), Admit::Yes);
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::default();
        b.on_failure(2, Duration::from_secs(1));
        b.on_success();
        assert!(!b.on_failure(2, Duration::from_secs(1)));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// One key's requests that make Ollama answer 5xx do not open the breaker for everyone
    /// (issue 19); the same failures from two keys do.
    #[test]
    fn one_keys_failures_do_not_open_it_for_everyone() {
        let b = Breaker::default();
        let c = Duration::from_secs(5);
        for _ in 0..10 {
            assert!(!b.on_answered_failure(3, c, 7));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.on_answered_failure(3, c, 8));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn a_keys_budget_refuses_that_key_alone() {
        let k = KeyBudgets::default();
        let c = Duration::from_secs(5);
        for _ in 0..3 {
            assert_eq!(k.refused(7), None);
            k.failed(7, 3, c);
        }
        assert!(k.refused(7).is_some());
        assert_eq!(k.refused(8), None);
        k.succeeded(7);
        assert_eq!(k.refused(7), None);
    }
}
