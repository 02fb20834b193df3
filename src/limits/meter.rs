//! What a model request cost, settled when it is over, apart from the audit line (which only
//! records): the token-quota reservation is settled with Ollama's real counts, refunding the
//! estimate's excess, and the key's recent use, which orders the fair queue, grows by the same
//! count. The meter travels with the answer (the relayed stream holds it), so it settles when
//! the answer ends however it ends: complete, failed, cut short, or the client gone.

use std::cell::Cell;
use std::sync::Arc;

use crate::limits::queue::Usage;
use crate::limits::ratelimit::tokens::Reservation;

pub struct Meter {
    usage: Arc<Usage>,
    /// Whose use it is (the key id; none when auth is off).
    key: Option<Arc<str>>,
    reservation: Option<Reservation>,
    /// What the prompt was estimated at: what a request pays when Ollama got it but did not
    /// report its prompt count (a stream cut short, a failure): Ollama read the prompt first.
    prompt_estimate: u64,
    sent: Cell<bool>,
    prompt_tokens: Cell<Option<u64>>,
    completion_tokens: Cell<Option<u64>>,
}

impl Meter {
    pub fn new(
        usage: Arc<Usage>,
        key: Option<Arc<str>>,
        reservation: Option<Reservation>,
        prompt_estimate: u64,
    ) -> Meter {
        Meter {
            usage,
            key,
            reservation,
            prompt_estimate,
            sent: Cell::new(false),
            prompt_tokens: Cell::new(None),
            completion_tokens: Cell::new(None),
        }
    }

    /// Ollama got the request (its answer began).
    pub fn sent(&self) {
        self.sent.set(true);
    }

    /// Ollama's counts, as far as they are known (a cut stream: the lines seen).
    pub fn counted(&self, prompt: Option<u64>, completion: Option<u64>) {
        if prompt.is_some() {
            self.prompt_tokens.set(prompt);
        }
        if completion.is_some() {
            self.completion_tokens.set(completion);
        }
    }

    /// What the request is settled at.
    fn cost(&self) -> u64 {
        let prompt = match self.prompt_tokens.get() {
            Some(p) => p,
            None if self.sent.get() => self.prompt_estimate,
            None => 0,
        };
        prompt + self.completion_tokens.get().unwrap_or(0)
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        let tokens = self.cost();
        if let Some(key) = &self.key
            && tokens > 0
        {
            self.usage.add(key, tokens);
        }
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(usage: &Arc<Usage>) -> Meter {
        Meter::new(usage.clone(), Some(Arc::from("k")), None, 80)
    }

    #[test]
    fn a_request_pays_what_ollama_did() {
        let usage = Arc::new(Usage::default());
        // Refused before Ollama: nothing.
        drop(meter(&usage));
        assert_eq!(usage.recent("k"), 0.0);
        // Answered: the real counts.
        let m = meter(&usage);
        m.sent();
        m.counted(Some(10), Some(5));
        drop(m);
        assert!((usage.recent("k") - 15.0).abs() < 0.1);
        // Cut short with 3 lines seen: at least the prompt's estimate.
        let m = meter(&usage);
        m.sent();
        m.counted(None, Some(3));
        drop(m);
        assert!((usage.recent("k") - 98.0).abs() < 0.1);
    }
}
