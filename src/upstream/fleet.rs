//! Several gateways, one set of slots: with `rate_limit.backend: redis`, each backend's
//! `max_in_flight` is counted across every gateway sharing that Redis, and what one gateway
//! learns about where the work is cheapest (which backend served a conversation, which has a
//! model in memory) is shared with the others.
//!
//! A request first takes a slot in this gateway's fair queue (`limits::queue`, the local
//! order), then a **lease** in Redis:
//! - `{prefix}slots:{backend}`: a sorted set of lease ids scored by their expiry (Redis
//!   time, ms). A lease is taken only while fewer than `max_in_flight` live ones exist
//!   (expired ones are dropped first, atomically, in one script), is renewed by this
//!   process every third of `upstream.slot_lease_seconds` while its request runs, and is
//!   removed when the request ends. A gateway that dies stops renewing: its slots are free
//!   again within the lease time.
//! - `{prefix}wait:{backend}` and `{prefix}waitlive:{backend}`: the requests of every gateway
//!   waiting for a lease, scored by their key's recent token use per unit of weight (ties:
//!   arrival order, which the id begins with), each alive while its gateway asks again
//!   (every 25 ms, for 250 ms). A free slot goes to a waiter only when fewer free slots than
//!   waiters ahead of it exist: across gateways, freed slots go to the fairest waiter within
//!   one poll interval.
//! - `{prefix}gateways`: each gateway's heartbeat, scored by expiry; its size is the number
//!   of gateways sharing the slots.
//! - `{prefix}aff:{fingerprint}`: a conversation's backend (10 minutes), and
//!   `{prefix}warm:{backend}`: model -> when a request for it was last sent there.
//!
//! When Redis cannot be asked, each gateway falls back to its **local share** of a backend's
//! slots: `max_in_flight` divided by the number of gateways last seen (at least 1), never to
//! unlimited (counted as `ratelimit_backend_errors_total{result="local_share"}`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::limits::quota::RedisLimits;
use crate::limits::ratelimit::redis::{RedisLimiter, RedisTrouble};

/// How often a waiting request asks Redis again.
pub const POLL: Duration = Duration::from_millis(25);

/// How long a waiter stays in the shared wait list without asking again (its gateway died,
/// or its client left).
const WAITER_TTL_MS: u64 = 250;

/// How long a conversation's backend is shared (as `backends::AFFINITY_TTL`).
const AFFINITY_TTL_MS: u64 = 10 * 60 * 1000;

/// How often the warm marks other gateways left are read.
const WARM_EVERY: Duration = Duration::from_millis(250);

/// How long a "sent there" mark counts as warm: Ollama's default keep-alive.
const WARM_TTL_MS: u64 = 5 * 60 * 1000;

const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slots, wait, live = KEYS[1], KEYS[2], KEYS[3]
local max, lease, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local prio, wttl = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
local dead = redis.call('ZRANGEBYSCORE', live, '-inf', now)
for _, d in ipairs(dead) do
  redis.call('ZREM', wait, d)
  redis.call('ZREM', live, d)
end
local free = max - redis.call('ZCARD', slots)
if free > 0 then
  local ahead = redis.call('ZRANK', wait, id)
  if not ahead then
    ahead = redis.call('ZCOUNT', wait, '-inf', prio)
  end
  if ahead < free then
    redis.call('ZADD', slots, now + lease, id)
    redis.call('PEXPIRE', slots, lease * 4)
    redis.call('ZREM', wait, id)
    redis.call('ZREM', live, id)
    return 1
  end
end
redis.call('ZADD', wait, prio, id)
redis.call('ZADD', live, now + wttl, id)
redis.call('PEXPIRE', wait, wttl * 40)
redis.call('PEXPIRE', live, wttl * 40)
return 0
"#;

/// KEYS: the slot set of each lease; ARGV[1]: lease ms, then the ids in KEYS' order.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], lease * 4)
end
return #KEYS
"#;

/// KEYS: the slot set of each lease; ARGV: the ids in KEYS' order.
const RELEASE: &str = r#"
for i = 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[i])
end
return #KEYS
"#;

/// KEYS[1]: the gateways set; ARGV: lease ms, this gateway's id. Returns how many are alive.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 4)
return redis.call('ZCARD', KEYS[1])
"#;

/// KEYS[1]: a backend's warm hash; ARGV: ttl ms, then model names sent there now.
const WARM_PUT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], now)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"#;

/// KEYS[1]: a backend's warm hash; ARGV[1]: ttl ms. Returns model, age ms, model, age ms...
/// for the marks younger than the ttl.
const WARM_GET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local h = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #h, 2 do
  local age = now - tonumber(h[i + 1])
  if age < ttl then
    table.insert(out, h[i])
    table.insert(out, tostring(math.max(age, 0)))
  else
    redis.call('HDEL', KEYS[1], h[i])
  end
end
return out
"#;

/// The Redis keys of one backend's slots.
#[derive(Clone)]
pub struct SlotKeys {
    pub slots: Arc<str>,
    wait: String,
    live: String,
}

impl SlotKeys {
    pub fn new(cfg: &RedisLimits, backend: &str) -> Self {
        let p = &cfg.key_prefix;
        SlotKeys {
            slots: format!("{p}slots:{backend}").into(),
            wait: format!("{p}wait:{backend}"),
            live: format!("{p}waitlive:{backend}"),
        }
    }
}

enum Msg {
    Hold { slots: Arc<str>, id: Arc<str> },
    Release { slots: Arc<str>, id: Arc<str> },
    Warm { backend: String, model: String },
    Affinity { conversation: u64, backend: String },
}

/// This process's part of the shared slots: the leases it holds (renewed by [`keep`]), and
/// what it tells the other gateways.
pub struct Fleet {
    tx: mpsc::UnboundedSender<Msg>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Msg>>>,
    /// Gateways sharing the slots, as the last heartbeat counted them (at least 1).
    gateways: AtomicUsize,
    /// This gateway's id in Redis.
    pub id: String,
}

impl Default for Fleet {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Fleet {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            gateways: AtomicUsize::new(1),
            id: crate::ids::hex128(),
        }
    }
}

impl Fleet {
    /// This gateway's share of `max_in_flight` slots while Redis cannot be asked.
    pub fn local_share(&self, max_in_flight: usize) -> usize {
        (max_in_flight / self.gateways.load(Ordering::Relaxed).max(1)).max(1)
    }

    pub fn gateways(&self) -> usize {
        self.gateways.load(Ordering::Relaxed)
    }

    /// Tells the other gateways that a request for `model` went to `backend`.
    pub fn warm(&self, backend: &str, model: &str) {
        let _ = self.tx.send(Msg::Warm {
            backend: backend.to_owned(),
            model: model.to_owned(),
        });
    }

    /// Tells the other gateways which backend served this conversation's turn.
    pub fn affinity(&self, conversation: u64, backend: &str) {
        let _ = self.tx.send(Msg::Affinity {
            conversation,
            backend: backend.to_owned(),
        });
    }
}

/// What a request holds on its backend beyond this gateway's own slot, given back on drop.
pub struct Held(Kind);

enum Kind {
    /// A lease in Redis, renewed while held, removed when dropped.
    Lease {
        slots: Arc<str>,
        id: Arc<str>,
        tx: mpsc::UnboundedSender<Msg>,
    },
    /// One of this gateway's local share (Redis could not be asked).
    Local(Arc<AtomicUsize>),
}

impl Held {
    /// One of the local share whose count is `held`, if fewer than `share` are taken.
    pub fn local(held: &Arc<AtomicUsize>, share: usize) -> Option<Held> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < share).then_some(n + 1)
        })
        .ok()
        .map(|_| Held(Kind::Local(held.clone())))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        match &self.0 {
            Kind::Lease { slots, id, tx } => {
                let _ = tx.send(Msg::Release {
                    slots: slots.clone(),
                    id: id.clone(),
                });
            }
            Kind::Local(n) => {
                n.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One attempt at a shared slot.
pub enum Attempt {
    Got(Held),
    /// Every slot is taken, or fairer requests wait: ask again after [`POLL`].
    Wait,
}

/// The per-worker side: takes leases with the worker's Redis connection.
pub struct Slots {
    redis: RedisLimiter,
    acquire: redis::Script,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            redis: RedisLimiter::default(),
            acquire: redis::Script::new(ACQUIRE),
        }
    }
}

impl Slots {
    /// Asks Redis once for a lease on a backend with `max_in_flight` slots, for a request
    /// whose key's recent use per unit of weight is `priority`, waiting since `since_ms`.
    #[allow(clippy::too_many_arguments)]
    pub async fn try_acquire(
        &self,
        fleet: &Fleet,
        cfg: &RedisLimits,
        keys: &SlotKeys,
        max_in_flight: usize,
        lease: Duration,
        id: &Arc<str>,
        priority: f64,
    ) -> Result<Attempt, RedisTrouble> {
        let mut inv = self.acquire.prepare_invoke();
        inv.key(&*keys.slots)
            .key(&keys.wait)
            .key(&keys.live)
            .arg(max_in_flight)
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .arg(&**id)
            .arg(priority)
            .arg(WAITER_TTL_MS);
        let got = self.redis.run_one(cfg, &inv).await?;
        if got != 1 {
            return Ok(Attempt::Wait);
        }
        let _ = fleet.tx.send(Msg::Hold {
            slots: keys.slots.clone(),
            id: id.clone(),
        });
        Ok(Attempt::Got(Held(Kind::Lease {
            slots: keys.slots.clone(),
            id: id.clone(),
            tx: fleet.tx.clone(),
        })))
    }

    /// The backend another gateway sent this conversation to, if Redis remembers one.
    pub async fn affine(&self, cfg: &RedisLimits, conversation: u64) -> Option<String> {
        let key = format!("{}aff:{conversation:016x}", cfg.key_prefix);
        self.redis.get(cfg, &key).await.ok().flatten()
    }
}

/// A lease id: arrival time first (ties in the wait list go in arrival order), then who.
pub fn lease_id(fleet: &Fleet) -> Arc<str> {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms:015}:{}:{}", &fleet.id[..8], crate::ids::hex128()).into()
}

/// Keeps this gateway's leases alive and tells Redis what the other gateways should know:
/// renews every held lease each third of `upstream.slot_lease_seconds`, removes released ones
/// at once, beats the gateways' heartbeat, and reads the warm marks other gateways left.
/// Runs for the life of the process on the main thread, with its own connection.
pub async fn keep(
    fleet: &Fleet,
    policy_now: impl Fn() -> Arc<crate::policy::Policy>,
    mark_sent: impl Fn(&crate::policy::Backend, &str, Instant),
) {
    let Some(mut rx) = fleet.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let redis = RedisLimiter::default();
    let (renew, release, heartbeat) = (
        redis::Script::new(RENEW),
        redis::Script::new(RELEASE),
        redis::Script::new(HEARTBEAT),
    );
    let (warm_put, warm_get) = (redis::Script::new(WARM_PUT), redis::Script::new(WARM_GET));
    let mut held: HashMap<Arc<str>, Arc<str>> = HashMap::new(); // id -> slot set
    let mut next_beat = Instant::now();
    let mut next_warm = Instant::now();
    loop {
        let policy = policy_now();
        let crate::policy::LimitBackend::Redis(cfg) = &policy.limit_backend else {
            // Not shared: nothing to keep; leases held from before a reload are let go.
            held.clear();
            match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(None) => return,
                _ => continue,
            }
        };
        let lease = policy.upstream.slot_lease;
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let wait = next_beat
            .min(next_warm)
            .saturating_duration_since(Instant::now());
        let first = match tokio::time::timeout(wait, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(m)) => Some(m),
            Err(_) => None,
        };
        // Everything queued now, in one round.
        let mut batch: Vec<Msg> = first.into_iter().collect();
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        let mut released = redis::Script::prepare_invoke(&release);
        let mut any_released = false;
        let mut warm: HashMap<String, Vec<String>> = HashMap::new();
        for m in batch {
            match m {
                Msg::Hold { slots, id } => {
                    held.insert(id, slots);
                }
                Msg::Release { slots, id } => {
                    held.remove(&id);
                    released.key(&*slots).arg(&*id);
                    any_released = true;
                }
                Msg::Warm { backend, model } => {
                    warm.entry(backend).or_default().push(model);
                }
                Msg::Affinity {
                    conversation,
                    backend,
                } => {
                    let key = format!("{}aff:{conversation:016x}", cfg.key_prefix);
                    let _ = redis.set_px(cfg, &key, &backend, AFFINITY_TTL_MS).await;
                }
            }
        }
        if any_released {
            let _ = redis.run_one(cfg, &released).await;
        }
        for (backend, models) in warm {
            let mut inv = warm_put.prepare_invoke();
            inv.key(format!("{}warm:{backend}", cfg.key_prefix))
                .arg(WARM_TTL_MS);
            for m in models {
                inv.arg(m);
            }
            let _ = redis.run_one(cfg, &inv).await;
        }
        if Instant::now() >= next_warm {
            next_warm = Instant::now() + WARM_EVERY;
            // What the other gateways sent where: those models are in memory there.
            for b in &policy.backends {
                let mut inv = warm_get.prepare_invoke();
                inv.key(format!("{}warm:{}", cfg.key_prefix, b.url))
                    .arg(WARM_TTL_MS);
                let Ok(pairs) = redis.run_strings(cfg, &inv).await else {
                    continue;
                };
                for pair in pairs.chunks(2) {
                    if let [model, age] = pair
                        && let Ok(age) = age.parse::<u64>()
                    {
                        let at = Instant::now()
                            .checked_sub(Duration::from_millis(age))
                            .unwrap_or_else(Instant::now);
                        mark_sent(b, model, at);
                    }
                }
            }
        }
        if Instant::now() < next_beat {
            continue;
        }
        next_beat = Instant::now() + lease / 3;
        if !held.is_empty() {
            let mut inv = renew.prepare_invoke();
            inv.arg(lease_ms);
            for (id, slots) in &held {
                inv.key(&**slots).arg(&**id);
            }
            if let Err(trouble) = redis.run_one(cfg, &inv).await {
                tracing::warn!(
                    ?trouble,
                    leases = held.len(),
                    "Could not renew this gateway's slot leases in Redis."
                );
            }
        }
        let mut beat = heartbeat.prepare_invoke();
        beat.key(format!("{}gateways", cfg.key_prefix))
            .arg(lease_ms)
            .arg(&fleet.id);
        if let Ok(n) = redis.run_one(cfg, &beat).await {
            fleet
                .gateways
                .store(usize::try_from(n).unwrap_or(1).max(1), Ordering::Relaxed);
        }
    }
}
