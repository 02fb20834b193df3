//! A circuit breaker in front of Ollama: stop hammering a dead upstream, fail fast instead.
//!
//! Closed: requests flow; consecutive failures (connect errors, failed liveness probes, 5xx
//! other than "busy") are counted, and any success resets the count. At the policy's
//! `failure_threshold` it opens: requests get 503 with `Retry-After` at once, without touching
//! Ollama. After `cooldown` one request is let through as a probe (half-open); its success
//! closes the breaker, its failure opens it again. Overload ("server busy") is not a failure:
//! it means Ollama is alive. A probe that never reports (its client went away) does not wedge
//! the breaker: after `probe_timeout` another request may probe.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
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
            phase: Mutex::new(Phase::Closed { failures: 0 }),
        }
    }
}

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
        *self.lock() = Phase::Closed { failures: 0 };
    }

    /// Records a failure; returns true when this failure opened the breaker.
    pub fn on_failure(&self, threshold: u32, cooldown: Duration) -> bool {
        let now = Instant::now();
        let mut phase = self.lock();
        match *phase {
            Phase::Closed { failures } if failures + 1 < threshold => {
                *phase = Phase::Closed {
                    failures: failures + 1,
                };
                false
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
}
