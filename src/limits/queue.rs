//! A fair share of the GPU: per-backend slots, a fair queue between keys, per-key concurrency.
//!
//! Ollama's own queue is first come, first served and knows nothing of users: one key with
//! fifty requests would make everyone else wait behind them. So at most `max_in_flight`
//! requests go to a backend at once (its `OLLAMA_NUM_PARALLEL`), and the rest wait here. When a
//! slot frees, it goes to the waiting request of the key that has used the least lately
//! (tokens in a decaying window, divided by the key's weight), first in first out within a
//! key. Waiting is bounded in length and time; a client that goes away leaves the queue at
//! once. A slot is a value ([`Slot`]) whose drop hands it on, so no end of a request (complete,
//! error, client gone, timeout, shutdown) can leak one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Recent token use per key: each key's count halves every [`HALF_LIFE`].
#[derive(Default)]
pub struct Usage {
    keys: Mutex<HashMap<Arc<str>, (f64, Instant)>>,
}

pub const HALF_LIFE: Duration = Duration::from_secs(60);

fn decayed(value: f64, since: Instant, now: Instant) -> f64 {
    let halves = now.saturating_duration_since(since).as_secs_f64() / HALF_LIFE.as_secs_f64();
    value * 0.5f64.powf(halves)
}

impl Usage {
    /// Adds a finished request's tokens to its key's recent use.
    pub fn add(&self, key: &Arc<str>, tokens: u64) {
        let now = Instant::now();
        let mut keys = lock(&self.keys);
        // Keys are the policy's, a bounded set; forget the idle ones now and then anyway.
        if keys.len() > 4096 {
            keys.retain(|_, (v, at)| decayed(*v, *at, now) > 1.0);
        }
        let e = keys.entry(key.clone()).or_insert((0.0, now));
        e.0 = decayed(e.0, e.1, now) + tokens as f64;
        e.1 = now;
    }

    pub fn recent(&self, key: &str) -> f64 {
        lock(&self.keys)
            .get(key)
            .map_or(0.0, |(v, at)| decayed(*v, *at, Instant::now()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Who a queued request belongs to.
#[derive(Clone, Debug)]
pub struct Owner {
    pub key: Arc<str>,
    /// The key's share relative to others (`auth.keys[].weight`, default 1).
    pub weight: u32,
}

/// The bounds of one wait.
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    /// Requests sent to this backend at once.
    pub max_in_flight: usize,
    /// Requests waiting for this backend at most.
    pub max_waiting: usize,
    /// Of those, one key's at most: a key with fifty requests queued cannot fill the queue
    /// for everyone else.
    pub max_waiting_per_key: usize,
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// `max_waiting` requests are already waiting.
    Full,
    /// This key already has `max_waiting_per_key` requests waiting.
    KeyFull,
    /// Waited `max_wait` without a slot.
    Timeout,
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    in_flight: usize,
    waiting: usize,
    /// Per key, in arrival order.
    queues: BTreeMap<Arc<str>, (u32, VecDeque<Waiter>)>,
    next_id: u64,
}

/// One backend's slots and queue.
#[derive(Default)]
pub struct Slots {
    inner: Arc<Mutex<Inner>>,
}

/// A slot on a backend: dropping it hands it to the next waiting request, or frees it.
pub struct Slot {
    inner: Arc<Mutex<Inner>>,
    usage: Arc<Usage>,
    /// How long this request waited for it.
    pub waited: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        release(&self.inner, &self.usage);
    }
}

/// Hands a freed slot to the waiting request of the key with the least recent use per unit of
/// weight (ties: the key whose head waited longest), or frees it.
fn release(inner: &Mutex<Inner>, usage: &Usage) {
    let mut g = lock(inner);
    loop {
        let pick = g
            .queues
            .iter()
            .filter(|(_, (_, q))| !q.is_empty())
            .map(|(k, (w, q))| {
                let score = usage.recent(k) / f64::from((*w).max(1));
                (score, q.front().map_or(u64::MAX, |w| w.id), k.clone())
            })
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some((_, _, key)) = pick else {
            g.in_flight = g.in_flight.saturating_sub(1);
            return;
        };
        let waiter = g.queues.get_mut(&key).and_then(|(_, q)| q.pop_front());
        if g.queues.get(&key).is_some_and(|(_, q)| q.is_empty()) {
            g.queues.remove(&key);
        }
        let Some(waiter) = waiter else { continue };
        g.waiting = g.waiting.saturating_sub(1);
        // A waiter whose client left has dropped its receiver: the slot goes to the next.
        if waiter.grant.send(()).is_ok() {
            return;
        }
    }
}

/// Removes a waiter that gave up; returns whether it was still waiting (else it was granted a
/// slot it now owns).
fn withdraw(inner: &Mutex<Inner>, key: &Arc<str>, id: u64) -> bool {
    let mut g = lock(inner);
    let Some((_, q)) = g.queues.get_mut(key) else {
        return false;
    };
    let Some(pos) = q.iter().position(|w| w.id == id) else {
        return false;
    };
    q.remove(pos);
    if q.is_empty() {
        g.queues.remove(key);
    }
    g.waiting = g.waiting.saturating_sub(1);
    true
}

/// Removes the waiter if the wait is abandoned (timeout, or the request dropped because its
/// client left); a slot granted in the meantime is handed on.
struct Waiting<'a> {
    slots: &'a Slots,
    usage: &'a Arc<Usage>,
    key: Arc<str>,
    id: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done && !withdraw(&self.slots.inner, &self.key, self.id) {
            // Granted between the give-up and now: pass the slot on.
            release(&self.slots.inner, self.usage);
        }
    }
}

impl Slots {
    /// (in flight, waiting) now.
    pub fn load(&self) -> (usize, usize) {
        let g = lock(&self.inner);
        (g.in_flight, g.waiting)
    }

    /// Waits for a slot, fairly. Dropping the future leaves the queue.
    pub async fn acquire(
        &self,
        owner: &Owner,
        limits: QueueLimits,
        usage: &Arc<Usage>,
    ) -> Result<Slot, QueueError> {
        let started = Instant::now();
        let (id, rx) = {
            let mut g = lock(&self.inner);
            // Nobody waiting and a slot free: take it (waiters, if any, go first).
            if g.waiting == 0 && g.in_flight < limits.max_in_flight.max(1) {
                g.in_flight += 1;
                return Ok(Slot {
                    inner: self.inner.clone(),
                    usage: usage.clone(),
                    waited: Duration::ZERO,
                });
            }
            if g.waiting >= limits.max_waiting {
                return Err(QueueError::Full);
            }
            let mine = g.queues.get(&owner.key).map_or(0, |(_, q)| q.len());
            if mine >= limits.max_waiting_per_key.max(1) {
                return Err(QueueError::KeyFull);
            }
            let (tx, rx) = oneshot::channel();
            g.next_id += 1;
            let id = g.next_id;
            g.waiting += 1;
            g.queues
                .entry(owner.key.clone())
                .or_insert_with(|| (owner.weight, VecDeque::new()))
                .1
                .push_back(Waiter { id, grant: tx });
            (id, rx)
        };
        let mut waiting = Waiting {
            slots: self,
            usage,
            key: owner.key.clone(),
            id,
            done: false,
        };
        match tokio::time::timeout(limits.max_wait, rx).await {
            Ok(Ok(())) => {
                waiting.done = true;
                Ok(Slot {
                    inner: self.inner.clone(),
                    usage: usage.clone(),
                    waited: started.elapsed(),
                })
            }
            // The sender went away without granting (cannot happen while Slots lives).
            Ok(Err(_)) => Err(QueueError::Timeout),
            Err(_) => Err(QueueError::Timeout),
        }
    }

    /// A slot freed when the limit was lowered (a reload) hands on waiters as slots allow.
    pub fn reconcile(&self, max_in_flight: usize, usage: &Usage) {
        loop {
            {
                let g = lock(&self.inner);
                if g.waiting == 0 || g.in_flight >= max_in_flight.max(1) {
                    return;
                }
            }
            {
                let mut g = lock(&self.inner);
                g.in_flight += 1;
            }
            release(&self.inner, usage);
        }
    }
}

/// Requests in flight or waiting per key, for `auth.keys[].max_concurrent`.
#[derive(Default)]
pub struct PerKey {
    counts: Mutex<HashMap<Arc<str>, usize>>,
}

/// One request counted against its key until dropped.
pub struct KeyTicket {
    per_key: Arc<PerKey>,
    key: Arc<str>,
}

impl Drop for KeyTicket {
    fn drop(&mut self) {
        let mut c = lock(&self.per_key.counts);
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

impl PerKey {
    /// Counts a request for `key`, unless `max` are already in flight or waiting.
    pub fn enter(self: &Arc<Self>, key: &Arc<str>, max: Option<u32>) -> Option<KeyTicket> {
        let mut c = lock(&self.counts);
        let n = c.entry(key.clone()).or_insert(0);
        if max.is_some_and(|m| *n >= m as usize) {
            if *n == 0 {
                c.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(KeyTicket {
            per_key: self.clone(),
            key: key.clone(),
        })
    }

    /// (key, requests) now, for metrics.
    pub fn snapshot(&self) -> Vec<(Arc<str>, usize)> {
        lock(&self.counts)
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn owner(k: &str) -> Owner {
        Owner {
            key: Arc::from(k),
            weight: 1,
        }
    }

    fn limits(n: usize) -> QueueLimits {
        QueueLimits {
            max_in_flight: n,
            max_waiting: 100,
            max_waiting_per_key: 100,
            max_wait: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_lighter_key_is_served_first_and_slots_never_leak() {
        let slots = Arc::new(Slots::default());
        let usage = Arc::new(Usage::default());
        usage.add(&Arc::from("a"), 1_000);
        let first = slots.acquire(&owner("a"), limits(1), &usage).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for k in ["a", "a", "a", "b"] {
            let (slots, usage, order) = (slots.clone(), usage.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let s = slots.acquire(&owner(k), limits(1), &usage).await.unwrap();
                order.lock().unwrap().push(k);
                drop(s);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(slots.load(), (1, 4));
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["b", "a", "a", "a"]);
        assert_eq!(slots.load(), (0, 0));
    }

    #[tokio::test]
    async fn abandoned_waits_leave_the_queue_and_bounds_hold() {
        let slots = Slots::default();
        let usage = Arc::new(Usage::default());
        let held = slots.acquire(&owner("a"), limits(1), &usage).await.unwrap();
        // A client that goes away while queued.
        {
            let b = owner("b");
            let fut = slots.acquire(&b, limits(1), &usage);
            tokio::pin!(fut);
            assert!(futures_util::poll!(fut.as_mut()).is_pending());
            assert_eq!(slots.load(), (1, 1));
        }
        assert_eq!(slots.load(), (1, 0));
        // Waiting too long.
        let short = QueueLimits {
            max_wait: Duration::from_millis(20),
            ..limits(1)
        };
        assert_eq!(
            slots.acquire(&owner("b"), short, &usage).await.err(),
            Some(QueueError::Timeout)
        );
        // A full queue.
        let none = QueueLimits {
            max_waiting: 0,
            ..limits(1)
        };
        assert_eq!(
            slots.acquire(&owner("b"), none, &usage).await.err(),
            Some(QueueError::Full)
        );
        drop(held);
        assert_eq!(slots.load(), (0, 0));
    }

    /// One key filling the queue (the sweep: one key without max_concurrent took every
    /// waiting place, and every other key got 503 queue_full) is held at its share; the
    /// others still queue.
    #[tokio::test]
    async fn one_key_cannot_take_every_waiting_place() {
        let slots = Arc::new(Slots::default());
        let usage = Arc::new(Usage::default());
        let bounds = QueueLimits {
            max_waiting: 8,
            max_waiting_per_key: 2,
            ..limits(1)
        };
        let held = slots.acquire(&owner("a"), bounds, &usage).await.unwrap();
        let mut waits = Vec::new();
        for _ in 0..2 {
            let (slots, usage) = (slots.clone(), usage.clone());
            waits.push(tokio::spawn(async move {
                slots.acquire(&owner("a"), bounds, &usage).await.map(drop)
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(slots.load(), (1, 2));
        assert_eq!(
            slots.acquire(&owner("a"), bounds, &usage).await.err(),
            Some(QueueError::KeyFull)
        );
        let (s2, u2) = (slots.clone(), usage.clone());
        let other =
            tokio::spawn(async move { s2.acquire(&owner("b"), bounds, &u2).await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(slots.load(), (1, 3));
        drop(held);
        for w in waits {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(other.await.unwrap(), Ok(()));
        assert_eq!(slots.load(), (0, 0));
    }

    #[test]
    fn per_key_concurrency() {
        let pk = Arc::new(PerKey::default());
        let k: Arc<str> = Arc::from("k");
        let a = pk.enter(&k, Some(2)).unwrap();
        let _b = pk.enter(&k, Some(2)).unwrap();
        assert!(pk.enter(&k, Some(2)).is_none());
        drop(a);
        assert!(pk.enter(&k, Some(2)).is_some());
    }
}
