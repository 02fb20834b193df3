//! Live policy reload: a file watcher and SIGHUP feed one reload path.
//!
//! The watcher observes the policy file's *directory*, not the file: editors save by writing a
//! temporary file and renaming it over the original, Kubernetes swaps a `..data` symlink, and
//! tools delete and recreate. A watch on the file itself would go stale after the first of
//! those. Events are debounced, then sent, like SIGHUP, down one channel to one reload thread,
//! so reloads never race each other.
//!
//! A reload reads the file, skips it when its SHA-256 equals the running policy's (spurious
//! events are cheap), parses and validates it off to the side, and publishes it with a single
//! `ArcSwap::store`. Requests already running keep the snapshot they took. A file that fails
//! to read, parse or validate changes nothing: the error is logged and counted, `/readyz`
//! shows it, and the running policy stays in force.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, SystemTime};

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use sha2::{Digest, Sha256};

use crate::app::{AppState, ReloadStatus};
use crate::metrics::ResultLabels;
use crate::policy::Policy;

/// Short enough that a rename is live well within 50 ms, long enough to fold the burst of
/// events one save produces.
const DEBOUNCE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    File,
    Signal,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file change",
            Trigger::Signal => "SIGHUP",
        }
    }
}

/// Keeps the watcher alive; dropping it stops watching.
pub struct Reloader {
    pub trigger: Sender<Trigger>,
    _watcher: Option<Debouncer<notify::RecommendedWatcher, RecommendedCache>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Rejected,
}

/// Reads the policy file and swaps it in if it is new and valid.
pub fn reload_now(state: &AppState, trigger: Trigger) -> Outcome {
    let path = &state.policy_path;
    let current = state.policy.load_full();
    let result = std::fs::read(path)
        .map_err(|source| crate::policy::PolicyError::Read {
            path: path.clone(),
            source,
        })
        .and_then(|bytes| {
            if hex::encode(Sha256::digest(&bytes)) == current.sha256 {
                return Ok(None);
            }
            Policy::from_bytes(&bytes, path).map(Some)
        });
    let now = SystemTime::now();
    let mut status = state.reload.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(None) => {
            tracing::debug!(trigger = trigger.as_str(), "Policy file unchanged.");
            Outcome::Unchanged
        }
        Err(e) => {
            state
                .metrics
                .reloads
                .get_or_create(&ResultLabels { result: e.kind() })
                .inc();
            tracing::error!(trigger = trigger.as_str(), error = %e, policy_sha256 = %current.sha256,
                "Policy reload rejected; the running policy stays in force.");
            *status = ReloadStatus {
                ok: false,
                at: now,
                error: Some(e.to_string()),
                loaded_at: status.loaded_at,
            };
            Outcome::Rejected
        }
        Ok(Some(new)) => {
            let restart = current.needs_restart(&new);
            if !restart.is_empty() {
                tracing::warn!(
                    fields = %restart.join(", "),
                    "Policy changes that need a restart were not applied live: {}.",
                    restart.join(", ")
                );
            }
            let summary = current.diff_summary(&new);
            if new.log_level != current.log_level {
                state.log_level.set(&new.log_level);
            }
            for w in &new.warnings {
                tracing::warn!("Policy: {w}.");
            }
            let sha = new.sha256.clone();
            state.policy.store(Arc::new(new));
            state.metrics.set_policy(&sha);
            state
                .metrics
                .reloads
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            tracing::info!(trigger = trigger.as_str(), policy_sha256 = %sha, changes = %summary, "Policy reloaded.");
            *status = ReloadStatus {
                ok: true,
                at: now,
                error: None,
                loaded_at: now,
            };
            Outcome::Applied
        }
    }
}

fn reload_loop(state: Arc<AppState>, rx: Receiver<Trigger>) {
    while let Ok(first) = rx.recv() {
        // Fold a burst of triggers into one reload; a signal wins for the log line.
        let mut trigger = first;
        while let Ok(t) = rx.try_recv() {
            if matches!(t, Trigger::Signal) {
                trigger = t;
            }
        }
        reload_now(&state, trigger);
    }
}

/// Names in the watched directory whose change may change the policy: the file itself, a
/// symlink target beside it, and Kubernetes' `..data` family.
fn relevant(names: &[OsString], path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| names.iter().any(|x| x == n))
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."))
}

/// Starts the reload thread and, when `watch` is set, the directory watcher.
pub fn spawn(state: Arc<AppState>, watch: bool) -> anyhow::Result<Reloader> {
    let (tx, rx) = channel();
    let watcher = if watch {
        Some(watch_policy(&state.policy_path, tx.clone())?)
    } else {
        tracing::info!("Not watching the policy file; SIGHUP reloads it.");
        None
    };
    std::thread::Builder::new()
        .name("policy-reload".into())
        .spawn(move || reload_loop(state, rx))?;
    Ok(Reloader {
        trigger: tx,
        _watcher: watcher,
    })
}

fn watch_policy(
    path: &Path,
    tx: Sender<Trigger>,
) -> anyhow::Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>> {
    let path = path.to_path_buf();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut names: Vec<OsString> = path.file_name().map(OsString::from).into_iter().collect();
    let mut dirs = vec![dir.clone()];
    // A policy that is a symlink to a file elsewhere: watch the target's directory too.
    if let Ok(target) = std::fs::canonicalize(&path) {
        if let Some(n) = target.file_name() {
            names.push(n.to_owned());
        }
        if let Some(tdir) = target.parent()
            && std::fs::canonicalize(&dir).ok().as_deref() != Some(tdir)
        {
            dirs.push(tdir.to_path_buf());
        }
    }

    let file_tx = tx;
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |res: DebounceEventResult| match res {
        Ok(events) => {
            let hit = events
                .iter()
                .any(|e| e.need_rescan() || e.paths.iter().any(|p| relevant(&names, p)));
            if hit {
                let _ = file_tx.send(Trigger::File);
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "Policy watcher error.");
            }
            let _ = file_tx.send(Trigger::File);
        }
    })?;
    for d in &dirs {
        debouncer
            .watch(d, RecursiveMode::NonRecursive)
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", d.display()))?;
    }
    tracing::info!(dirs = ?dirs, "Watching the policy file for changes (SIGHUP also reloads).");
    Ok(debouncer)
}
