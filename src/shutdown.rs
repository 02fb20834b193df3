//! The end of a graceful shutdown, as a signal requests can wait on.
//!
//! On SIGTERM the server stops accepting and lets requests finish for
//! `shutdown_grace_seconds`. A stream still running when the grace ends is *cut*: it ends with
//! its surface's error event (instead of a connection that just drops, which a client cannot
//! tell from a network fault) and is audited as interrupted; a request still waiting for Ollama
//! answers 503. Workers run on their own single-threaded runtimes, so the signal is an atomic
//! flag plus a `Notify`, which wake any runtime.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Shutdown {
    cut: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    /// The grace period is over: every waiter wakes, and every later wait returns at once.
    pub fn cut_now(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Resolves when the grace period is over.
    pub async fn cut(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the flag is read, so a cut in between is not missed.
            notified.as_mut().enable();
            if self.is_cut() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_before_and_after_the_cut_both_return() {
        let s = Arc::new(Shutdown::default());
        let early = tokio::spawn({
            let s = s.clone();
            async move { s.cut().await }
        });
        tokio::task::yield_now().await;
        s.cut_now();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), early)
                .await
                .is_ok()
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(5), s.cut())
                .await
                .is_ok()
        );
    }
}
