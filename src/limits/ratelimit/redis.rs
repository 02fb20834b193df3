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
use crate::limits::quota::{Quota, RedisLimits};
use crate::limits::quota::{TokenDecision, TokenQuota};

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

/// Token quotas in Redis: one hash per identity and quota, fields = time buckets (60 per
/// window, as in memory), values = tokens. Reserve and settle are each one atomic script.
const TOKENS_RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local est = tonumber(ARGV[1])
local ns = {}
local best_rem, best_lim = -1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[(i - 1) * 3 + 2])
  local blen = tonumber(ARGV[(i - 1) * 3 + 3])
  local n = math.floor(now / blen)
  ns[i] = n
  local h = redis.call('HGETALL', KEYS[i])
  local sum = 0
  local live = {}
  for j = 1, #h, 2 do
    local b = tonumber(h[j])
    local v = tonumber(h[j + 1])
    if b + 60 <= n then
      redis.call('HDEL', KEYS[i], h[j])
    else
      sum = sum + v
      table.insert(live, {b, v})
    end
  end
  local e = math.min(est, limit)
  if sum + e > limit then
    table.sort(live, function(a, c) return a[1] < c[1] end)
    local freed = 0
    local fits = n + 60
    for _, bv in ipairs(live) do
      freed = freed + bv[2]
      if sum - freed + e <= limit then
        fits = bv[1] + 60
        break
      end
    end
    return {0, limit, math.max(limit - sum, 0), (fits - n) * blen}
  end
  local rem = limit - sum - e
  if best_rem < 0 or rem < best_rem then
    best_rem = rem
    best_lim = limit
  end
end
local out = {1, best_lim, best_rem, 0}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[(i - 1) * 3 + 2])
  local wms = tonumber(ARGV[(i - 1) * 3 + 4])
  local e = math.min(est, limit)
  redis.call('HINCRBY', KEYS[i], ns[i], e)
  redis.call('PEXPIRE', KEYS[i], wms * 2)
  table.insert(out, ns[i])
  table.insert(out, e)
end
return out
"#;

const TOKENS_SETTLE: &str = r#"
local real = tonumber(ARGV[1])
for i = 1, #KEYS do
  local b = ARGV[(i - 1) * 2 + 2]
  local held = tonumber(ARGV[(i - 1) * 2 + 3])
  if redis.call('HEXISTS', KEYS[i], b) == 1 then
    local v = redis.call('HINCRBY', KEYS[i], b, real - held)
    if v < 0 then
      redis.call('HSET', KEYS[i], b, 0)
    end
  end
end
return {1}
"#;

/// What a Redis failure means for a request: counted, logged (not while backing off), then
/// admitted (`redis_failure: open`, `Ok`) or refused with 503 (`closed`).
pub fn on_trouble(
    metrics: &crate::observe::metrics::Metrics,
    cfg: &RedisLimits,
    trouble: &RedisTrouble,
    request_id: &str,
    what: &'static str,
) -> Result<(), crate::errors::GatewayError> {
    let result = if cfg.fail_open {
        "fail_open"
    } else {
        "fail_closed"
    };
    metrics
        .ratelimit_backend_errors
        .get_or_create(&crate::observe::metrics::ResultLabels { result })
        .inc();
    if !matches!(trouble, RedisTrouble::Backoff) {
        tracing::warn!(
            request_id,
            ?trouble,
            result,
            "Redis could not check the {what}."
        );
    }
    if cfg.fail_open {
        Ok(())
    } else {
        Err(crate::errors::GatewayError::RateLimiterUnavailable)
    }
}

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
    reserve: redis::Script,
    settle: redis::Script,
    inner: RefCell<Conn>,
}

impl Default for RedisLimiter {
    fn default() -> Self {
        RedisLimiter {
            script: redis::Script::new(SCRIPT),
            reserve: redis::Script::new(TOKENS_RESERVE),
            settle: redis::Script::new(TOKENS_SETTLE),
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

    async fn run(
        &self,
        cfg: &RedisLimits,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<i64>, RedisTrouble> {
        self.invoke(cfg, invocation).await
    }

    /// A script whose reply is one integer.
    pub(crate) async fn run_one(
        &self,
        cfg: &RedisLimits,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<i64, RedisTrouble> {
        self.invoke(cfg, invocation).await
    }

    /// A script whose reply is a list of strings.
    pub(crate) async fn run_strings(
        &self,
        cfg: &RedisLimits,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Vec<String>, RedisTrouble> {
        self.invoke(cfg, invocation).await
    }

    /// `GET key`.
    pub(crate) async fn get(
        &self,
        cfg: &RedisLimits,
        key: &str,
    ) -> Result<Option<String>, RedisTrouble> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.command(cfg, &cmd).await
    }

    /// `SET key value PX ms`.
    pub(crate) async fn set_px(
        &self,
        cfg: &RedisLimits,
        key: &str,
        value: &str,
        ms: u64,
    ) -> Result<(), RedisTrouble> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(ms);
        self.command::<()>(cfg, &cmd).await
    }

    async fn command<T: redis::FromRedisValue>(
        &self,
        cfg: &RedisLimits,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisTrouble> {
        let mut conn = self.connection(cfg).await?;
        self.bounded(cfg, cmd.query_async::<T>(&mut conn)).await
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        cfg: &RedisLimits,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisTrouble> {
        let mut conn = self.connection(cfg).await?;
        self.bounded(cfg, invocation.invoke_async::<T>(&mut conn))
            .await
    }

    /// One call within `redis_timeout_ms`; a failed or late one drops the connection (the
    /// next call after the back-off dials again).
    async fn bounded<T>(
        &self,
        cfg: &RedisLimits,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisTrouble> {
        match tokio::time::timeout(cfg.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.broken();
                Err(RedisTrouble::Command(e.to_string()))
            }
            Err(_) => {
                self.broken();
                Err(RedisTrouble::Timeout)
            }
        }
    }

    /// The Redis keys of an identity's token quotas.
    pub fn token_keys(cfg: &RedisLimits, identity: &str, quotas: &[TokenQuota]) -> Vec<String> {
        quotas
            .iter()
            .map(|q| format!("{}tok:{}:{identity}", cfg.key_prefix, q.window.as_secs()))
            .collect()
    }

    /// Reserves `estimate` tokens against every quota at once, across every gateway.
    /// `Ok(Err(decision))`: refused.
    pub async fn reserve_tokens(
        &self,
        cfg: &RedisLimits,
        keys: &[String],
        quotas: &[TokenQuota],
        estimate: u64,
    ) -> Result<Result<(Vec<(u64, u64)>, TokenDecision), TokenDecision>, RedisTrouble> {
        let mut invocation = self.reserve.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        invocation.arg(estimate);
        for q in quotas {
            let bucket_us = u64::try_from((q.window / 60).as_micros()).unwrap_or(u64::MAX);
            invocation
                .arg(q.limit)
                .arg(bucket_us.max(1))
                .arg(u64::try_from(q.window.as_millis()).unwrap_or(u64::MAX));
        }
        let reply = self.run(cfg, &invocation).await?;
        let num = |i: usize| u64::try_from(reply.get(i).copied().unwrap_or(0)).unwrap_or(0);
        let decision = |allowed: bool, reset: Duration| TokenDecision {
            allowed,
            limit: num(1),
            remaining: num(2),
            reset,
        };
        if reply.first() != Some(&1) {
            return Ok(Err(decision(
                false,
                Duration::from_micros(num(3)).max(Duration::from_millis(1)),
            )));
        }
        let held = (0..quotas.len())
            .map(|i| (num(4 + 2 * i), num(5 + 2 * i)))
            .collect();
        let window = quotas.iter().map(|q| q.window).min().unwrap_or_default();
        Ok(Ok((held, decision(true, window))))
    }

    /// Replaces reserved estimates with the real count.
    pub async fn settle_tokens(
        &self,
        cfg: &RedisLimits,
        keys: &[String],
        held: &[(u64, u64)],
        tokens: u64,
    ) -> Result<(), RedisTrouble> {
        let mut invocation = self.settle.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        invocation.arg(tokens);
        for (bucket, est) in held {
            invocation.arg(*bucket).arg(*est);
        }
        self.run(cfg, &invocation).await.map(|_| ())
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
        let reply = self
            .bounded(cfg, invocation.invoke_async::<Vec<i64>>(&mut conn))
            .await?;
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
