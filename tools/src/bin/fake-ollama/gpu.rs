//! A simulated GPU host, for the fleet benchmark (`scripts/bench.sh fleet`): what decides
//! time to first token on a real Ollama host, as costs.
//!
//! - A model not in memory takes `load_ms` to load; at most `max_loaded` models are in
//!   memory; loading one more evicts the least recently used model no request is using
//!   (none free: the load waits until one is).
//! - Each loaded model has `parallel` slots (Ollama's `OLLAMA_NUM_PARALLEL`); a request takes
//!   the free slot whose cached prompt shares the longest prefix with its own (as Ollama's
//!   runner does) and evaluates only the rest, `prompt_us` per token (4 characters).
//! - Generation costs `gen_us` per token; a finished request leaves its prompt and answer in
//!   its slot's cache.
//!
//! Counters: loads, prompt tokens evaluated, and the most requests in flight at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Debug, Clone, Copy)]
pub struct Costs {
    pub load_ms: u64,
    pub max_loaded: usize,
    pub parallel: usize,
    pub prompt_us: u64,
    pub gen_us: u64,
}

#[derive(Default)]
struct Model {
    /// Each slot's cached text and whether a request holds it.
    slots: Vec<(String, bool)>,
    last_used: u64,
}

#[derive(Default)]
struct State {
    models: HashMap<String, Model>,
    loading: Option<String>,
    clock: u64,
    loads: u64,
    evictions: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// Each load: when (ms since start), the model, the model it evicted.
    log: Vec<(u64, String, Option<String>)>,
}

pub struct Gpu {
    pub costs: Costs,
    started: std::time::Instant,
    state: Mutex<State>,
    changed: Notify,
}

enum Claim {
    Slot { slot: usize, fresh: u64 },
    Load { evicted: Option<String> },
    Wait,
}

/// A request's hold on a slot, given back (with its text cached) when dropped.
pub struct Turn {
    gpu: Arc<Gpu>,
    model: String,
    slot: usize,
    /// What the slot caches afterwards: the prompt, then the answer as it is produced.
    pub text: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        {
            let mut s = self.gpu.lock();
            s.clock += 1;
            let clock = s.clock;
            if let Some(m) = s.models.get_mut(&self.model) {
                if let Some(slot) = m.slots.get_mut(self.slot) {
                    *slot = (std::mem::take(&mut self.text), false);
                }
                m.last_used = clock;
            }
        }
        self.gpu.changed.notify_waiters();
    }
}

fn tokens(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

impl Gpu {
    pub fn new(costs: Costs) -> Arc<Gpu> {
        Arc::new(Gpu {
            costs,
            started: std::time::Instant::now(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the model to be in memory and a slot, then for the prompt's evaluation;
    /// returns the slot (answer tokens cost [`Gpu::gen_delay`] each).
    pub async fn start(self: &Arc<Gpu>, model: &str, prompt: &str) -> Turn {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (slot, fresh) = match self.claim(model, prompt) {
                Claim::Slot { slot, fresh } => (slot, fresh),
                Claim::Load { evicted } => {
                    tokio::time::sleep(Duration::from_millis(self.costs.load_ms)).await;
                    let fresh = self.loaded_for(model, prompt, evicted);
                    self.changed.notify_waiters();
                    (0, fresh)
                }
                Claim::Wait => {
                    notified.await;
                    continue;
                }
            };
            let turn = Turn {
                gpu: self.clone(),
                model: model.to_owned(),
                slot,
                text: prompt.to_owned(),
            };
            tokio::time::sleep(Duration::from_micros(fresh * self.costs.prompt_us)).await;
            return turn;
        }
    }

    /// A free slot of the model (the one whose cache shares the longest prefix with the
    /// prompt), a load to start (evicting the least recently used idle model when memory is
    /// full), or a wait.
    fn claim(&self, model: &str, prompt: &str) -> Claim {
        let mut s = self.lock();
        s.clock += 1;
        let clock = s.clock;
        if let Some(m) = s.models.get_mut(model) {
            let best = m
                .slots
                .iter()
                .enumerate()
                .filter(|(_, (_, busy))| !busy)
                .map(|(i, (cached, _))| (i, common_prefix(cached, prompt)))
                .max_by_key(|(_, cached)| *cached);
            let Some((slot, cached)) = best else {
                return Claim::Wait;
            };
            m.slots[slot].1 = true;
            m.last_used = clock;
            let fresh = tokens(prompt.len() - cached);
            s.prompt_tokens += fresh;
            s.cached_tokens += tokens(cached);
            return Claim::Slot { slot, fresh };
        }
        if s.loading.is_some() {
            return Claim::Wait;
        }
        let mut evicted = None;
        if s.models.len() >= self.costs.max_loaded {
            let idle = s
                .models
                .iter()
                .filter(|(_, m)| m.slots.iter().all(|(_, busy)| !busy))
                .min_by_key(|(_, m)| m.last_used)
                .map(|(name, _)| name.clone());
            let Some(victim) = idle else {
                return Claim::Wait;
            };
            s.models.remove(&victim);
            s.evictions += 1;
            evicted = Some(victim);
        }
        s.loading = Some(model.to_owned());
        Claim::Load { evicted }
    }

    /// The load finished: the model is in memory, and the request that asked for it takes
    /// the first slot at once (as Ollama's scheduler hands the new runner to the request
    /// that waited for it), so no other request can evict it in between. Returns the prompt
    /// tokens to evaluate.
    fn loaded_for(&self, model: &str, prompt: &str, evicted: Option<String>) -> u64 {
        let mut s = self.lock();
        s.loading = None;
        s.loads += 1;
        s.clock += 1;
        let clock = s.clock;
        let at = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if s.log.len() < 1000 {
            s.log.push((at, model.to_owned(), evicted));
        }
        let mut slots = vec![(String::new(), false); self.costs.parallel.max(1)];
        slots[0].1 = true;
        s.models.insert(
            model.to_owned(),
            Model {
                slots,
                last_used: clock,
            },
        );
        let fresh = tokens(prompt.len());
        s.prompt_tokens += fresh;
        fresh
    }

    pub fn gen_delay(&self) -> Duration {
        Duration::from_micros(self.costs.gen_us)
    }

    /// The models in memory, most recently used first, and the one loading (as Ollama's
    /// `/api/ps` lists a runner while it loads).
    pub fn loaded(&self) -> Vec<String> {
        let s = self.lock();
        let mut v: Vec<(&String, u64)> = s.models.iter().map(|(n, m)| (n, m.last_used)).collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.1));
        v.into_iter()
            .map(|(n, _)| n.clone())
            .chain(s.loading.clone())
            .collect()
    }

    pub fn stats(&self) -> serde_json::Value {
        let s = self.lock();
        serde_json::json!({
            "loads": s.loads,
            "evictions": s.evictions,
            "prompt_tokens_evaluated": s.prompt_tokens,
            "prompt_tokens_cached": s.cached_tokens,
            "load_log": s.log,
        })
    }
}
