//! The same exact sliding window, kept in Redis so that several gateways share one limit.
//!
//! Each identity is a sorted set of admission times. One Lua script, run atomically by Redis,
//! drops entries older than the window, counts, and admits (adds an entry) only below the
//! quota, so no read-then-write race exists between gateways or workers. Time comes from
//! Redis (`TIME`), so gateways with skewed clocks still agree. Entries per identity are capped
//! by the quota and the key expires with its window.
//!
//! Every call is bounded by `rate_limit.redis_timeout_ms`. When Redis cannot answer, the
//! policy decides: admit and count it (`redis_failure: open`, the default) or refuse with 503
//! (`closed`). After a failure the worker does not dial again for a second, so an outage costs
//! requests microseconds, not timeouts; the next call after that reconnects: recovery needs
//! no restart. One connection per worker thread (multiplexed), like the upstream client.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use super::Decision;
use crate::policy::{Quota, RedisLimits};

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < max then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, max - n - 1, window}
end
local e = redis.call('ZRANGE', KEYS[1], n - max, n - max, 'WITHSCORES')
return {0, 0, tonumber(e[2]) + window - now}
"#;

/// Why Redis gave no decision.
#[derive(Debug)]
pub enum RedisTrouble {
    /// Recently failed; not dialling again yet.
    Backoff,
    Connect(String),
    Timeout,
    Command(String),
}

struct Conn {
    url: String,
    conn: Option<MultiplexedConnection>,
    failed_at: Option<Instant>,
}

/// Per-worker Redis access for the limiter.
pub struct RedisLimiter {
    script: redis::Script,
    inner: RefCell<Conn>,
}

impl Default for RedisLimiter {
    fn default() -> Self {
        RedisLimiter {
            script: redis::Script::new(SCRIPT),
            inner: RefCell::new(Conn {
                url: String::new(),
                conn: None,
                failed_at: None,
            }),
        }
    }
}

const BACKOFF: Duration = Duration::from_secs(1);

impl RedisLimiter {
    async fn connection(&self, cfg: &RedisLimits) -> Result<MultiplexedConnection, RedisTrouble> {
        {
            let mut c = self.inner.borrow_mut();
            if c.url != cfg.url {
                // The policy now names another Redis: drop the old connection.
                *c = Conn {
                    url: cfg.url.clone(),
                    conn: None,
                    failed_at: None,
                };
            }
            if let Some(conn) = &c.conn {
                return Ok(conn.clone());
            }
            if c.failed_at.is_some_and(|t| t.elapsed() < BACKOFF) {
                return Err(RedisTrouble::Backoff);
            }
        }
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| RedisTrouble::Connect(e.to_string()))?;
        let dialled =
            tokio::time::timeout(cfg.timeout, client.get_multiplexed_async_connection()).await;
        let mut c = self.inner.borrow_mut();
        match dialled {
            Ok(Ok(conn)) => {
                c.conn = Some(conn.clone());
                c.failed_at = None;
                Ok(conn)
            }
            Ok(Err(e)) => {
                c.failed_at = Some(Instant::now());
                Err(RedisTrouble::Connect(e.to_string()))
            }
            Err(_) => {
                c.failed_at = Some(Instant::now());
                Err(RedisTrouble::Timeout)
            }
        }
    }

    fn broken(&self) {
        let mut c = self.inner.borrow_mut();
        c.conn = None;
        c.failed_at = Some(Instant::now());
    }

    /// Admits and records one request for `identity`, atomically across every gateway.
    pub async fn check(
        &self,
        cfg: &RedisLimits,
        identity: &str,
        quota: Quota,
    ) -> Result<Decision, RedisTrouble> {
        let mut conn = self.connection(cfg).await?;
        let window_us = u64::try_from(quota.window.as_micros()).unwrap_or(u64::MAX);
        let mut invocation = self.script.key(format!("{}{identity}", cfg.key_prefix));
        invocation
            .arg(quota.max_requests)
            .arg(window_us)
            .arg(crate::ids::hex128());
        let call = invocation.invoke_async::<Vec<i64>>(&mut conn);
        let reply = match tokio::time::timeout(cfg.timeout, call).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.broken();
                return Err(RedisTrouble::Command(e.to_string()));
            }
            Err(_) => {
                self.broken();
                return Err(RedisTrouble::Timeout);
            }
        };
        let [allowed, remaining, reset_us] = reply[..] else {
            return Err(RedisTrouble::Command(format!("unexpected reply {reply:?}")));
        };
        let reset = Duration::from_micros(u64::try_from(reset_us).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota.max_requests,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: if allowed == 1 {
                reset
            } else {
                reset.max(Duration::from_millis(1))
            },
        })
    }
}
