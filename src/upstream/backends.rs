//! Several Ollama hosts: per-backend state, which backends may take a request, in what order.
//!
//! The state of each backend (its circuit breaker, requests in flight, the models it serves)
//! lives here, keyed by URL, outside the policy: a reload that keeps a backend keeps its state.
//! A request is offered only to backends that serve its model (per their last `/api/tags`;
//! unknown counts as "maybe"), in the order `upstream.routing` says: where the work is
//! cheapest (the conversation's backend, then the model in memory, then a load, one that
//! would evict a model in use last), or least busy; least busy relative to weight within a
//! rank, ties rotated so light load spreads too. `upstream::client` walks that list, retrying
//! on the next backend when one fails before sending a byte of its answer, never after.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use actix_web::http::Uri;
use arc_swap::ArcSwapOption;

use crate::policy::{Backend, Policy};
use crate::upstream::breaker::Breaker;

pub struct BackendState {
    pub url: String,
    /// `{url}/api/chat`, parsed once: every chat request goes there.
    pub chat_uri: Option<Uri>,
    pub breaker: Breaker,
    /// Each key's own run of failures here.
    pub key_budgets: crate::upstream::breaker::KeyBudgets,
    in_flight: AtomicUsize,
    /// Model names from the last successful `/api/tags` (with `:latest` also stored bare);
    /// `None` until the first answer.
    models: ArcSwapOption<HashSet<String>>,
    /// Whether the last model refresh got an answer.
    pub up: AtomicBool,
    /// Number of models last seen, for /readyz.
    pub model_count: AtomicI64,
    /// The models Ollama has in memory (its `/api/ps`), from the last refresh; `None` until
    /// the first answer (or from an Ollama without `/api/ps`).
    loaded: ArcSwapOption<HashSet<String>>,
    /// How many models `/api/ps` listed.
    loaded_count: AtomicUsize,
    /// When `loaded` was last read from Ollama.
    loaded_at: std::sync::Mutex<Option<Instant>>,
    /// Models a request was sent for since (by this gateway, or by another through Redis):
    /// Ollama loaded them to answer, so they are warm until the next `/api/ps` says
    /// otherwise.
    sent: std::sync::Mutex<HashMap<String, Instant>>,
    /// Its slots (`max_in_flight`) and fair queue.
    pub slots: crate::limits::queue::Slots,
    /// Requests this gateway sent here under its local share of the shared slots (Redis
    /// could not be asked).
    pub local_share: Arc<AtomicUsize>,
}

impl BackendState {
    pub(crate) fn new(url: &str) -> Self {
        BackendState {
            url: url.to_owned(),
            chat_uri: Uri::try_from(format!("{url}/api/chat")).ok(),
            breaker: Breaker::default(),
            key_budgets: crate::upstream::breaker::KeyBudgets::default(),
            in_flight: AtomicUsize::new(0),
            models: ArcSwapOption::empty(),
            up: AtomicBool::new(true),
            model_count: AtomicI64::new(-1),
            loaded: ArcSwapOption::empty(),
            loaded_count: AtomicUsize::new(0),
            loaded_at: std::sync::Mutex::new(None),
            sent: std::sync::Mutex::new(HashMap::new()),
            slots: crate::limits::queue::Slots::default(),
            local_share: Arc::default(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// `Some(false)` only when this backend is known not to have `model`.
    pub fn serves(&self, model: &str) -> Option<bool> {
        self.models.load().as_ref().map(|m| m.contains(model))
    }

    pub fn set_models(&self, names: impl IntoIterator<Item = String>) {
        let set = with_bare_names(names);
        self.model_count.store(
            i64::try_from(set.len()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        self.models.store(Some(Arc::new(set)));
    }

    /// The models in memory, as its last `/api/ps` said.
    pub fn set_loaded(&self, names: impl IntoIterator<Item = String>) {
        let now = Instant::now();
        let names: Vec<String> = names.into_iter().collect();
        self.loaded_count.store(names.len(), Ordering::Relaxed);
        self.loaded.store(Some(Arc::new(with_bare_names(names))));
        // What Ollama just said replaces what was inferred before it (`is_warm` compares).
        *lock(&self.loaded_at) = Some(now);
    }

    /// A request for `model` was sent here at `at` (by this gateway, or by another: shared
    /// through Redis): Ollama loaded it to answer, and it is in use.
    pub fn mark_sent(&self, model: &str, at: Instant) {
        let mut sent = lock(&self.sent);
        // Models are the policy's, a bounded set; a hostile list cannot grow this unboundedly.
        if sent.len() >= 1024 {
            sent.clear();
        }
        let e = sent.entry(model.to_owned()).or_insert(at);
        *e = (*e).max(at);
    }

    /// Whether `model` is in memory here (a request for it starts without a load): Ollama's
    /// last `/api/ps` said so, or a request for it was sent here since.
    pub fn is_warm(&self, model: &str) -> bool {
        self.loaded
            .load()
            .as_ref()
            .is_some_and(|m| m.contains(model))
            || self.sent_since_poll(model)
    }

    fn sent_since_poll(&self, model: &str) -> bool {
        let polled = *lock(&self.loaded_at);
        lock(&self.sent)
            .get(model)
            .is_some_and(|at| polled.is_none_or(|p| *at > p))
    }

    /// Whether loading `model` here would evict a model that requests are using: the backend
    /// holds as many models as it can (`max_loaded_models`, when known), and has requests in
    /// flight or sent one for another of its models within [`IN_USE`].
    pub fn would_evict_in_use(&self, model: &str, max_loaded: Option<usize>) -> bool {
        let Some(max) = max_loaded else { return false };
        let listed = self.loaded.load();
        let polled = *lock(&self.loaded_at);
        let sent = lock(&self.sent);
        let inferred = sent
            .iter()
            .filter(|(m, at)| {
                polled.is_none_or(|p| **at > p) && !listed.as_ref().is_some_and(|l| l.contains(*m))
            })
            .count();
        let loaded = self.loaded_count.load(Ordering::Relaxed) + inferred;
        if loaded < max {
            return false;
        }
        let recently_used = sent
            .iter()
            .any(|(m, at)| m != model && at.elapsed() < IN_USE);
        self.in_flight() > 0 || recently_used
    }

    /// The models in memory, sorted (for /readyz).
    pub fn loaded_models(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .loaded
            .load()
            .as_ref()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Counts a request against this backend until the lease is dropped (for streams, when
    /// the stream ends).
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Lease {
            backend: self.clone(),
            slot: None,
            ticket: None,
            shared: None,
            choice: None,
        }
    }
}

/// A model a request was sent for this recently counts as in use: more are likely coming,
/// and evicting it costs the next one a load.
pub const IN_USE: std::time::Duration = std::time::Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Model names as Ollama lists them, with `qwen3` beside `qwen3:latest` (a model pulled as
/// `qwen3` is listed as `qwen3:latest`).
fn with_bare_names(names: impl IntoIterator<Item = String>) -> HashSet<String> {
    let mut set = HashSet::new();
    for n in names {
        if let Some(bare) = n.strip_suffix(":latest") {
            set.insert(bare.to_owned());
        }
        set.insert(n);
    }
    set
}

/// A request counted against its backend until dropped (for streams, when the stream ends),
/// with the queue slot and the key's concurrency ticket it holds, released with it.
pub struct Lease {
    backend: Arc<BackendState>,
    /// Its slot among every gateway's (a lease in Redis, or of the local share). Declared
    /// before `slot`: dropped first, so the release is on its way to Redis before the local
    /// slot wakes the next request, which asks Redis at once.
    shared: Option<super::fleet::Held>,
    slot: Option<crate::limits::queue::Slot>,
    ticket: Option<crate::limits::queue::KeyTicket>,
    /// Why this backend was chosen, once it answered.
    choice: Option<&'static str>,
}

impl Lease {
    pub fn hold(
        &mut self,
        slot: crate::limits::queue::Slot,
        ticket: Option<crate::limits::queue::KeyTicket>,
    ) {
        self.slot = Some(slot);
        self.ticket = ticket;
    }

    pub fn hold_shared(&mut self, held: super::fleet::Held) {
        self.shared = Some(held);
    }

    /// The key's ticket back, for the request's next attempt on another backend.
    pub fn take_ticket(&mut self) -> Option<crate::limits::queue::KeyTicket> {
        self.ticket.take()
    }

    /// Why this backend was chosen (`affinity`, `warm`, `cold`, `least_busy`).
    pub fn choice(&self) -> Option<&'static str> {
        self.choice
    }

    pub fn set_choice(&mut self, why: &'static str) {
        self.choice = Some(why);
    }

    /// How long the request waited in the queue for its slot.
    pub fn waited(&self) -> Option<std::time::Duration> {
        self.slot.as_ref().map(|s| s.waited)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend a request may go to, in the order of [`Backends::candidates_for`].
pub struct Candidate {
    pub backend: Arc<BackendState>,
    /// Busy while a backend further down has a free slot: its queue is waited for at most
    /// `upstream.warm_wait_seconds`, then the request moves on.
    pub bounded: bool,
}

#[derive(Default)]
pub struct Backends {
    states: RwLock<HashMap<String, Arc<BackendState>>>,
    turn: AtomicUsize,
    /// Conversation fingerprint -> the backend that served its last turn, and when: that
    /// host still holds the conversation's prompt in its cache.
    affinity: std::sync::Mutex<HashMap<u64, (Arc<BackendState>, std::time::Instant)>>,
}

/// How long a conversation keeps its backend after a turn: Ollama keeps a model (and its
/// slots' cached prompts) loaded 5 minutes after use by default; an agent's next turn comes
/// well within it.
pub const AFFINITY_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Conversations remembered at most; past it the oldest half is forgotten.
const AFFINITY_MAX: usize = 16_384;

impl Backends {
    pub fn get(&self, b: &Backend) -> Arc<BackendState> {
        if let Some(s) = self
            .states
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&b.url)
        {
            return s.clone();
        }
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(b.url.clone())
            .or_insert_with(|| Arc::new(BackendState::new(&b.url)))
            .clone()
    }

    /// The policy's backends with their state, in policy order.
    pub fn all(&self, policy: &Policy) -> Vec<(Arc<BackendState>, u32)> {
        policy
            .backends
            .iter()
            .map(|b| (self.get(b), b.weight))
            .collect()
    }

    /// Backends that may serve `model`, preferred first. Where the work is cheapest: a backend
    /// with the model in memory and a free slot; then a busy one with the model in memory,
    /// waited for at most `upstream.warm_wait_seconds` when a backend further down has a free
    /// slot (a load costs more than a short wait, but a GPU must not sit idle for long);
    /// then one with a free slot that must load it; then the busy cold ones; last, one that
    /// would evict a model requests are using. Within each, fewest requests in flight per
    /// unit of weight, ties rotated. Backends whose last model list lacks the model are left
    /// out, unless every backend lacks it: lists can be stale (a model pulled since the last
    /// refresh), and asking costs one quick 404 each.
    pub fn candidates(&self, policy: &Policy, model: Option<&str>) -> Vec<Arc<BackendState>> {
        self.candidates_for(policy, model, None)
            .into_iter()
            .map(|c| c.backend)
            .collect()
    }

    /// Why `chosen` serves a request for `model` (an Ollama name) of `conversation`: the
    /// conversation's backend (`affinity`), one with the model in memory (`warm`), one that
    /// must load it (`cold`), or, knowing neither, the least busy (`least_busy`).
    pub fn why(
        &self,
        policy: &Policy,
        chosen: &Arc<BackendState>,
        model: Option<&str>,
        conversation: Option<u64>,
    ) -> &'static str {
        if policy.upstream.routing == crate::policy::Routing::LeastBusy {
            return "least_busy";
        }
        if conversation
            .and_then(|c| self.affine(c))
            .is_some_and(|home| Arc::ptr_eq(&home, chosen))
        {
            return "affinity";
        }
        match model {
            Some(m) if chosen.is_warm(m) => "warm",
            Some(_) if chosen.loaded.load().is_some() => "cold",
            _ => "least_busy",
        }
    }

    /// The backend that served this conversation's last turn, if it is still remembered.
    pub fn affine(&self, conversation: u64) -> Option<Arc<BackendState>> {
        let map = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&conversation)
            .filter(|(_, at)| at.elapsed() < AFFINITY_TTL)
            .map(|(b, _)| b.clone())
    }

    /// Remembers that `backend` served a turn of this conversation.
    pub fn remember(&self, conversation: u64, backend: &Arc<BackendState>) {
        let mut map = self.affinity.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= AFFINITY_MAX && !map.contains_key(&conversation) {
            let now = std::time::Instant::now();
            map.retain(|_, (_, at)| now.duration_since(*at) < AFFINITY_TTL / 2);
            if map.len() >= AFFINITY_MAX {
                map.clear();
            }
        }
        map.insert(conversation, (backend.clone(), std::time::Instant::now()));
    }

    /// [`Backends::candidates`], with conversation affinity: the backend that served the
    /// conversation's last turn goes first while it is in the list and its breaker is closed
    /// (its cache holds the conversation's prompt: Ollama evaluates only what is new); when it
    /// is busy, it is waited for at most `upstream.warm_wait_seconds` if another backend has
    /// a free slot. Affinity never overrides the model filter or the breaker.
    pub fn candidates_for(
        &self,
        policy: &Policy,
        model: Option<&str>,
        conversation: Option<u64>,
    ) -> Vec<Candidate> {
        let mut list = self.ranked(policy, model);
        if policy.upstream.routing == crate::policy::Routing::CacheAware
            && let Some(home) = conversation.and_then(|c| self.affine(c))
            && let Some(i) = list.iter().position(|s| Arc::ptr_eq(&s.backend, &home))
            && home.breaker.state() == crate::upstream::breaker::BreakerState::Closed
        {
            let home = list.remove(i);
            list.insert(0, home);
        }
        // A busy backend is waited for only briefly while one further down has room that it
        // can use without evicting a model in use (never with `least_busy`, which ranks by
        // load alone).
        let bounding = policy.upstream.routing == crate::policy::Routing::CacheAware;
        let mut later_free = false;
        let mut out: Vec<Candidate> = list
            .into_iter()
            .rev()
            .map(|s| {
                let c = Candidate {
                    bounded: bounding && !s.free && later_free,
                    backend: s.backend,
                };
                later_free |= s.free;
                c
            })
            .collect();
        out.reverse();
        out
    }

    /// The backends that may serve `model`, ranked. Each backend's counters are read once,
    /// before sorting: counters that move under the sort (other requests start and end
    /// meanwhile) would make the comparison inconsistent.
    fn ranked(&self, policy: &Policy, model: Option<&str>) -> Vec<Seen> {
        let cache_aware = policy.upstream.routing == crate::policy::Routing::CacheAware;
        let all = self.all(policy);
        let mut list: Vec<(Arc<BackendState>, u32)> = all
            .iter()
            .filter(|(s, _)| model.is_none_or(|m| s.serves(m) != Some(false)))
            .cloned()
            .collect();
        if list.is_empty() {
            list = all;
        }
        if list.len() <= 1 {
            // No choice to make.
            return list
                .into_iter()
                .map(|(backend, _)| Seen {
                    backend,
                    load: 0,
                    weight: 1,
                    rank: 0,
                    free: true,
                })
                .collect();
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed) % list.len();
        list.rotate_left(start);
        let mut seen: Vec<Seen> = list
            .into_iter()
            .map(|(backend, weight)| {
                let in_flight = backend.in_flight();
                let room = in_flight < policy.max_in_flight(&backend.url);
                let warm = model.is_some_and(|m| backend.is_warm(m));
                let evicts = !warm
                    && model.is_some_and(|m| {
                        backend.would_evict_in_use(m, policy.max_loaded_models(&backend.url))
                    });
                let rank = match (room, warm) {
                    _ if !cache_aware => 0,
                    (true, true) => 0,
                    // Waited for briefly (`candidates_for`) before a load elsewhere.
                    (false, true) => 1,
                    // Loading where it evicts a model in use is the last choice.
                    _ if evicts => 4,
                    (true, false) => 2,
                    (false, false) => 3,
                };
                Seen {
                    backend,
                    load: in_flight as u64 + 1,
                    weight: u64::from(weight),
                    rank,
                    free: room && !evicts,
                }
            })
            .collect();
        // Stable sort: equal ranks and loads keep the rotated order. Fewest in flight per
        // unit of weight first: load_a / weight_a against load_b / weight_b, multiplied out.
        seen.sort_by(|a, b| {
            a.rank
                .cmp(&b.rank)
                .then((a.load * b.weight).cmp(&(b.load * a.weight)))
        });
        seen
    }
}

/// A backend as one request's routing saw it.
struct Seen {
    backend: Arc<BackendState>,
    /// Requests in flight, plus one.
    load: u64,
    weight: u64,
    rank: u8,
    /// It has a free slot, usable without evicting a model in use.
    free: bool,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy(yaml: &str) -> Policy {
        let yaml = crate::policy::with_guards_off(yaml);
        Policy::from_bytes(yaml.as_bytes(), Path::new("p.yaml")).unwrap()
    }

    #[test]
    fn least_busy_first_and_model_filter() {
        let p = policy("backends: [{url: 'http://a:1'}, {url: 'http://b:1', weight: 3}]");
        let reg = Backends::default();
        let all = reg.all(&p);
        let (a, b) = (all[0].0.clone(), all[1].0.clone());
        let _l1 = a.lease();
        let _l2 = b.lease();
        // a: (1+1)*3 = 6 vs b: (1+1)*1 = 2 -> b first.
        assert_eq!(reg.candidates(&p, None)[0].url, "http://b:1");
        a.set_models(["qwen3:latest".to_owned()]);
        b.set_models(["llama3.2:latest".to_owned()]);
        let c = reg.candidates(&p, Some("qwen3"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].url, "http://a:1");
        // Nobody lists it: ask everyone (the lists may be stale).
        assert_eq!(reg.candidates(&p, Some("mistral")).len(), 2);
    }

    /// A backend with the model in memory and room goes first, whatever the rotation; a
    /// cold one with room before a warm one without (issue 21).
    #[test]
    fn warm_before_cold() {
        let p = policy(
            "backends: [{url: 'http://a:1', max_in_flight: 1}, {url: 'http://b:1', max_in_flight: 1}]",
        );
        let reg = Backends::default();
        let all = reg.all(&p);
        let (a, b) = (all[0].0.clone(), all[1].0.clone());
        for s in [&a, &b] {
            s.set_models(["qwen3:32b".to_owned()]);
        }
        b.set_loaded(["qwen3:32b".to_owned()]);
        for _ in 0..4 {
            assert_eq!(reg.candidates(&p, Some("qwen3:32b"))[0].url, "http://b:1");
        }
        // The warm one is full: it is waited for, briefly, before the cold one with room.
        let _busy = b.lease();
        let c = reg.candidates_for(&p, Some("qwen3:32b"), None);
        assert_eq!(
            (c[0].backend.url.as_str(), c[0].bounded),
            ("http://b:1", true)
        );
        assert_eq!(
            (c[1].backend.url.as_str(), c[1].bounded),
            ("http://a:1", false)
        );
        // Both full: the warm one is waited for without a bound.
        let _busy_too = a.lease();
        let c = reg.candidates_for(&p, Some("qwen3:32b"), None);
        assert_eq!(
            (c[0].backend.url.as_str(), c[0].bounded),
            ("http://b:1", false)
        );
    }

    #[test]
    fn a_conversation_keeps_its_backend_while_it_has_room() {
        let p = policy(
            "backends: [{url: 'http://a:1', max_in_flight: 1}, {url: 'http://b:1', max_in_flight: 1}]",
        );
        let reg = Backends::default();
        let all = reg.all(&p);
        let b = all[1].0.clone();
        reg.remember(7, &b);
        for _ in 0..4 {
            assert_eq!(
                reg.candidates_for(&p, None, Some(7))[0].backend.url,
                "http://b:1"
            );
        }
        // Full: waited for briefly, then the other.
        let _busy = b.lease();
        let c = reg.candidates_for(&p, None, Some(7));
        assert_eq!(
            (c[0].backend.url.as_str(), c[0].bounded),
            ("http://b:1", true)
        );
        assert_eq!(c[1].backend.url, "http://a:1");
    }

    #[test]
    fn ties_rotate() {
        let p = policy("backends: [{url: 'http://a:1'}, {url: 'http://b:1'}]");
        let reg = Backends::default();
        let firsts: HashSet<String> = (0..4)
            .map(|_| reg.candidates(&p, None)[0].url.clone())
            .collect();
        assert_eq!(firsts.len(), 2);
    }
}
