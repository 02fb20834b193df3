//! Live policy reload: a file watcher and SIGHUP feed one reload path.
//!
//! The watcher observes the policy file's *directory*, not the file: editors save by writing a
//! temporary file and renaming it over the original, Kubernetes swaps a `..data` symlink, and
//! tools delete and recreate. A watch on the file itself would go stale after the first of
//! those. Only events that can change the file count (writes, renames, creations, deletions,
//! attribute changes): reading it is not a change, or the reload's own read would trigger the
//! next reload forever. Events are debounced, then sent, like SIGHUP, down one channel to one
//! reload thread, so reloads never race each other.
//!
//! The watcher heals itself: the reload thread owns it and re-arms it when what it should
//! watch changed (a symlinked policy re-pointed to another directory, checked after every
//! batch), when a watched directory itself is removed or renamed, when the watcher reports
//! an error, and, every two seconds when idle, when a directory was re-created (compared by
//! device, inode and birth time). Each re-arm reads the file, since it may have changed
//! unseen.
//!
//! A reload skips the file when its identity (device, inode, size, mtime) is the one it last
//! read. Otherwise it reads it (a regular file only, capped: `policy::source`); after a write
//! (rather than a complete file renamed into place, which is read at once) it reads it twice,
//! a settle time apart, and goes on only with bytes that stayed the same, so a save caught
//! halfway is not applied; a file cut short that does settle is still refused, because the guards'
//! sections must be written out in full (`policy::validate`). Bytes equal to the running
//! policy's change nothing. Otherwise they are parsed and validated off to the side and
//! published with a single `ArcSwap::store`. Requests already running keep the snapshot they
//! took. A file that fails to read, parse or validate changes nothing: the error (which never
//! quotes a value from the file) is logged and counted, `/readyz` shows it, and the running
//! policy stays in force.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::observe::metrics::ResultLabels;
use crate::policy::source::{self, FileIdentity};
use crate::policy::{Policy, PolicyError, sha256_hex};
use crate::state::{AppState, ReloadEntry, ReloadStatus};

/// Quiet time that ends a burst of events: short enough that a rename is live well within
/// 50 ms, long enough to fold the burst of events one save produces.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Bytes must read the same twice this far apart before they are applied: an editor or a
/// script writing the file in several steps is not caught halfway.
pub const SETTLE: Duration = Duration::from_millis(100);

/// A file that would take a field of the running policy away (or cut a value short) must stay
/// unchanged this long before the watcher applies it: a save in place in two writes with a
/// pause between them (seen: 1.5 s) would otherwise apply its first part, whose missing
/// sections fall back to looser defaults. SIGHUP applies it at once.
pub const REMOVAL_QUIET: Duration = Duration::from_secs(5);

/// A file still changing after this many settle rounds (5 s) is not applied this time; the
/// next event or SIGHUP tries again.
const MAX_SETTLE_ROUNDS: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file was written, created or removed: it may be mid-write, so it must settle.
    File,
    /// A complete file was renamed over the path (an editor's save, a Kubernetes `..data`
    /// swap): what appears is whole, and is read at once.
    Renamed,
    Signal,
    /// The watcher reported an error, or the watched directories changed (a directory removed
    /// and re-created, a symlink re-pointed elsewhere): it was re-armed, and the file is read.
    Rearmed,
    /// The process is stopping: the reload thread ends.
    Stop,
}

impl Trigger {
    /// How the reload history names what started a reload.
    fn history_name(self) -> &'static str {
        match self {
            Trigger::File | Trigger::Renamed | Trigger::Rearmed | Trigger::Stop => "watcher",
            Trigger::Signal => "SIGHUP",
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file change",
            Trigger::Renamed => "file renamed over",
            Trigger::Signal => "SIGHUP",
            Trigger::Rearmed => "watcher re-armed",
            Trigger::Stop => "stop",
        }
    }
}

/// The handle on the reload thread; dropping it stops the thread and its watcher.
pub struct Reloader {
    pub trigger: Sender<Trigger>,
}

impl Drop for Reloader {
    fn drop(&mut self) {
        let _ = self.trigger.send(Trigger::Stop);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Rejected,
}

/// Reads the file until two reads a settle time apart agree.
fn settled_read(path: &Path) -> Result<(Vec<u8>, FileIdentity), PolicyError> {
    let mut prev = source::read(path)?;
    for _ in 0..MAX_SETTLE_ROUNDS {
        std::thread::sleep(SETTLE);
        let next = source::read(path)?;
        if next.0 == prev.0 {
            return Ok(next);
        }
        prev = next;
    }
    Err(PolicyError::Read {
        path: path.to_owned(),
        reason: "the file kept changing for 5 seconds; not applied (the next change or \
                 SIGHUP tries again)"
            .to_owned(),
    })
}

/// The reload thread's memory between reloads.
pub struct Reload {
    /// The identity of the file as last read, whatever came of it.
    last_read: Option<FileIdentity>,
}

impl Reload {
    /// Starts from the file version the process loaded at startup.
    pub fn new(loaded: FileIdentity) -> Self {
        Reload {
            last_read: Some(loaded),
        }
    }

    /// Reads the policy file and swaps it in if it is new and valid.
    pub fn run(&mut self, state: &AppState, trigger: Trigger) -> Outcome {
        let path = &state.policy_path;
        // An event for a file that is still the one last read (someone read it, or touched a
        // file beside it): nothing to do, and nothing to read. SIGHUP always reads.
        if trigger != Trigger::Signal
            && self.last_read.is_some()
            && FileIdentity::of_path(path) == self.last_read
        {
            tracing::debug!("Policy file event, but the file is the one last read.");
            return Outcome::Unchanged;
        }
        let started = SystemTime::now();
        lock(state).in_progress_since = Some(started);
        let current = state.policy.load_full();
        let read = if trigger == Trigger::Renamed {
            source::read(path)
        } else {
            settled_read(path)
        };
        let mut read_sha = None;
        let mut read_bytes = Vec::new();
        let result = read.and_then(|(bytes, identity)| {
            self.last_read = Some(identity);
            let sha = sha256_hex(&bytes);
            read_sha = Some(sha.clone());
            if sha == current.sha256 {
                return Ok(None);
            }
            let policy = Policy::from_bytes(&bytes, path).map(Some);
            read_bytes = bytes;
            policy
        });
        if matches!(trigger, Trigger::File | Trigger::Rearmed)
            && let Ok(Some(new)) = &result
            && let Some(field) = current.shape.loses_from(&new.shape)
        {
            tracing::info!(
                field = %field,
                quiet_s = REMOVAL_QUIET.as_secs(),
                "The policy file takes a field away or cuts a value short (is it still being \
                 written?): it applies once it has stayed unchanged for the quiet time, or at SIGHUP."
            );
            std::thread::sleep(REMOVAL_QUIET);
            let again = source::read(path).map(|(b, _)| b).unwrap_or_default();
            if again != read_bytes {
                // It was still being written: the change's own event reads it again.
                lock(state).in_progress_since = None;
                return Outcome::Unchanged;
            }
        }
        let outcome = apply(state, &current, result, trigger, read_sha);
        lock(state).in_progress_since = None;
        outcome
    }
}

fn lock(state: &AppState) -> std::sync::MutexGuard<'_, ReloadStatus> {
    state.reload.lock().unwrap_or_else(|p| p.into_inner())
}

fn apply(
    state: &AppState,
    current: &Policy,
    result: Result<Option<Policy>, PolicyError>,
    trigger: Trigger,
    read_sha: Option<String>,
) -> Outcome {
    let now = SystemTime::now();
    let mut status = lock(state);
    let entry = |result: &'static str| ReloadEntry {
        at: crate::observe::audit::rfc3339(now),
        trigger: trigger.history_name(),
        result,
        sha256: read_sha.clone(),
        changes: Vec::new(),
        needs_restart: Vec::new(),
        error: None,
    };
    match result {
        Ok(None) => {
            tracing::debug!(trigger = trigger.as_str(), "Policy file unchanged.");
            // The file is back to the running policy (a bad edit undone): nothing is wrong any
            // more, so /readyz must stop showing the old error.
            if !status.ok {
                status.ok = true;
                status.error = None;
                status.at = now;
                status.record(entry("restored"));
                state.metrics.reload_ok.set(1);
                tracing::info!(trigger = trigger.as_str(), policy_sha256 = %current.sha256,
                    "Policy file is back to the running policy.");
            }
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
            status.ok = false;
            status.at = now;
            status.error = Some(e.to_string());
            status.record(ReloadEntry {
                error: Some(e.to_string()),
                ..entry("rejected")
            });
            state.metrics.reload_ok.set(0);
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
            let changes = crate::policy::view::changes(current, &new);
            let summary = if changes.is_empty() {
                "no effective change".to_owned()
            } else {
                changes.join("; ")
            };
            if new.log_level != current.log_level {
                state.log_level.set(&new.log_level);
            }
            for w in &new.warnings {
                tracing::warn!("Policy: {w}.");
            }
            let sha = new.sha256.clone();
            state.policy.store(Arc::new(new));
            state.metrics.set_policy(&sha);
            let policy = state.policy.load();
            state.metrics.set_key_expiry(&policy);
            // A raised max_in_flight lets waiting requests go at once.
            for (b, _) in state.backends.all(&policy) {
                b.slots
                    .reconcile(policy.max_in_flight(&b.url), &state.usage);
            }
            state
                .metrics
                .reloads
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            tracing::info!(trigger = trigger.as_str(), policy_sha256 = %sha, changes = %summary, "Policy reloaded.");
            status.ok = true;
            status.at = now;
            status.error = None;
            status.loaded_at = now;
            state.metrics.reload_ok.set(1);
            status.record(ReloadEntry {
                changes,
                needs_restart: restart,
                ..entry("applied")
            });
            Outcome::Applied
        }
    }
}

/// A burst of events keeps a reload waiting this long at most, however busy the directory.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// How often the reload thread checks, when idle, that the watched directories are still the
/// ones on disk (a directory removed and re-created sends no event to a watch on it).
const HEAL_EVERY: Duration = Duration::from_secs(2);

fn reload_loop(
    state: Arc<AppState>,
    rx: Receiver<Trigger>,
    mut reload: Reload,
    mut watch: Option<Watch>,
) {
    loop {
        let first = match rx.recv_timeout(HEAL_EVERY) {
            Ok(Trigger::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => {
                if watch.as_mut().is_some_and(Watch::heal) {
                    reload.run(&state, Trigger::Rearmed);
                }
                continue;
            }
        };
        // Fold a burst of triggers (one save makes several events) into one reload, once
        // DEBOUNCE has passed without another: a signal wins (it always reads), and a write
        // anywhere in the burst means the file must settle.
        let mut trigger = first;
        let started = Instant::now();
        while started.elapsed() < MAX_DEBOUNCE {
            match rx.recv_timeout(DEBOUNCE) {
                Ok(Trigger::Stop) => return,
                Ok(t) => {
                    trigger = match (trigger, t) {
                        (Trigger::Signal, _) | (_, Trigger::Signal) => Trigger::Signal,
                        (Trigger::Rearmed, _) | (_, Trigger::Rearmed) => Trigger::Rearmed,
                        (Trigger::File, _) | (_, Trigger::File) => Trigger::File,
                        _ => Trigger::Renamed,
                    };
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if trigger == Trigger::Rearmed
            && let Some(w) = watch.as_mut()
        {
            // The watcher reported an error: build a new one.
            w.broken = true;
            w.heal();
        }
        reload.run(&state, trigger);
        // After every batch: a symlink re-pointed to another directory moves the watch there.
        if watch.as_mut().is_some_and(Watch::heal) {
            reload.run(&state, Trigger::Rearmed);
        }
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

/// Whether an event can change what the path holds. Opening, reading and closing the file
/// (`cat`, `check`, an editor, the reload itself) cannot; closing it after writing can.
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts the reload thread and, when `watch` is set, the directory watcher.
pub fn spawn(state: Arc<AppState>, loaded: FileIdentity, watch: bool) -> anyhow::Result<Reloader> {
    let (tx, rx) = channel();
    let watch = if watch {
        Some(Watch::arm(&state.policy_path, tx.clone())?)
    } else {
        tracing::info!("Not watching the policy file; SIGHUP reloads it.");
        None
    };
    std::thread::Builder::new()
        .name("policy-reload".into())
        .spawn(move || reload_loop(state, rx, Reload::new(loaded), watch))?;
    Ok(Reloader { trigger: tx })
}

/// A directory's identity: re-created, it is another directory, and a watch on the old one
/// hears nothing. The inode number alone is not enough (a new directory often gets the one
/// just freed); its birth time tells them apart.
fn dir_id(dir: &Path) -> Option<DirId> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(dir).ok()?;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Some((m.dev(), m.ino(), born))
}

type DirId = (u64, u64, u128);

/// The directory watcher, owned by the reload thread, which re-arms it when what it should
/// watch changed: after every batch of events, every [`HEAL_EVERY`] when idle, and after a
/// watcher error.
struct Watch {
    path: PathBuf,
    tx: Sender<Trigger>,
    watcher: Option<RecommendedWatcher>,
    /// The directories watched, with their identity when armed (`None`: missing then).
    armed: Vec<(PathBuf, Option<DirId>)>,
    /// The watcher reported an error: rebuild it even if the directories look the same.
    broken: bool,
}

impl Watch {
    /// The first watch, at startup: a directory that cannot be watched is fatal here.
    fn arm(path: &Path, tx: Sender<Trigger>) -> anyhow::Result<Watch> {
        let mut w = Watch {
            path: path.to_path_buf(),
            tx,
            watcher: None,
            armed: Vec::new(),
            broken: false,
        };
        let (dirs, names) = wanted(path);
        let mut watcher = w.new_watcher(names, dirs.clone())?;
        for d in &dirs {
            watcher
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", d.display()))?;
        }
        tracing::info!(dirs = ?dirs, "Watching the policy file for changes (SIGHUP also reloads).");
        w.armed = dirs.into_iter().map(|d| (d.clone(), dir_id(&d))).collect();
        w.watcher = Some(watcher);
        Ok(w)
    }

    /// Re-arms when the directories to watch (or their identities) changed, or after an
    /// error. True when it did: the file may have changed unseen, so the caller reads it.
    fn heal(&mut self) -> bool {
        let (dirs, names) = wanted(&self.path);
        let now: Vec<(PathBuf, Option<DirId>)> =
            dirs.iter().map(|d| (d.clone(), dir_id(d))).collect();
        if now == self.armed && !self.broken {
            return false;
        }
        // The old watcher goes first: two watchers on one directory would double every event.
        self.watcher = None;
        let mut watching = Vec::new();
        match self.new_watcher(names, dirs) {
            Ok(mut watcher) => {
                for (d, id) in &now {
                    if id.is_none() {
                        continue; // Missing now; watched once it is back.
                    }
                    match watcher.watch(d, RecursiveMode::NonRecursive) {
                        Ok(()) => watching.push(d.clone()),
                        Err(e) => tracing::warn!(dir = %d.display(), error = %e,
                            "Cannot watch the policy directory; retrying."),
                    }
                }
                self.watcher = Some(watcher);
                self.broken = watching.len() < now.iter().filter(|(_, id)| id.is_some()).count();
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot create the policy watcher; retrying.");
                self.broken = true;
            }
        }
        tracing::info!(dirs = ?watching, "Policy watcher re-armed.");
        self.armed = now;
        // Nothing to read while the directory is missing; its return re-arms and reads.
        !watching.is_empty()
    }

    fn new_watcher(
        &self,
        names: Vec<OsString>,
        dirs: Vec<PathBuf>,
    ) -> notify::Result<RecommendedWatcher> {
        let tx = self.tx.clone();
        // Raw events, debounced by the reload thread: a debouncer that merges "created, then
        // renamed" into one creation would hide that a complete file was moved into place.
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(e) => {
                tracing::trace!(kind = ?e.kind, paths = ?e.paths, "Policy directory event.");
                if e.need_rescan() {
                    let _ = tx.send(Trigger::File);
                } else if matches!(
                    e.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) && e.paths.iter().any(|p| dirs.contains(p))
                {
                    // A watched directory itself went away (removed, or renamed): this watch
                    // is dead, so the reload thread builds a new one.
                    let _ = tx.send(Trigger::Rearmed);
                } else if changes(&e.kind) && e.paths.iter().any(|p| relevant(&names, p)) {
                    // A rename onto the path: a finished file was moved into place.
                    let renamed = matches!(e.kind, EventKind::Modify(ModifyKind::Name(_)));
                    let _ = tx.send(if renamed {
                        Trigger::Renamed
                    } else {
                        Trigger::File
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Policy watcher error; re-arming it.");
                let _ = tx.send(Trigger::Rearmed);
            }
        })
    }
}

/// The directories to watch for `path` and the names in them that matter: the file's own
/// directory, and, for a policy that is a symlink, its target's directory and name.
fn wanted(path: &Path) -> (Vec<PathBuf>, Vec<OsString>) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut names: Vec<OsString> = path.file_name().map(OsString::from).into_iter().collect();
    let mut dirs = vec![dir.clone()];
    if let Ok(target) = std::fs::canonicalize(path) {
        if let Some(n) = target.file_name() {
            names.push(n.to_owned());
        }
        if let Some(tdir) = target.parent()
            && std::fs::canonicalize(&dir).ok().as_deref() != Some(tdir)
        {
            dirs.push(tdir.to_path_buf());
        }
    }
    (dirs, names)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::policy::Policy;

    /// Whether a text cut at its end is inside a comment: the document is then the one cut
    /// where the comment begins, already tried.
    fn ends_in_comment(text: &str) -> bool {
        let line = text.rsplit('\n').next().unwrap_or("");
        let mut quote = None;
        let mut prev = ' ';
        for c in line.chars() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '#') if prev.is_whitespace() => return true,
                _ => {}
            }
            prev = c;
        }
        false
    }

    /// Every byte-prefix of the shipped policy, as a save in place caught halfway would leave
    /// it (issue 19: cut before `models:` it served every model; before `limits:` every limit
    /// went back to its default). A prefix is either refused, or means what the whole file
    /// means, or is held back by the quiet time because it takes something away.
    #[test]
    fn no_prefix_of_the_shipped_policy_loosens_it_at_once() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/policy.yaml"),
        )
        .unwrap_or_default();
        let full = Policy::from_bytes(text.as_bytes(), Path::new("p")).ok();
        let Some(full) = full else {
            panic!("the shipped policy loads")
        };
        let full_view = crate::policy::view::view(&full);
        let (mut tried, mut valid, mut other) = (0, 0, 0);
        for end in (1..text.len()).filter(|&i| text.is_char_boundary(i)) {
            let prefix = &text[..end];
            if ends_in_comment(prefix) {
                continue;
            }
            tried += 1;
            let Ok(p) = Policy::from_bytes(prefix.as_bytes(), Path::new("p")) else {
                continue;
            };
            valid += 1;
            if crate::policy::view::view(&p) == full_view {
                continue;
            }
            other += 1;
            assert!(
                full.shape.loses_from(&p.shape).is_some(),
                "a prefix of {end} bytes loads, means something else, and would apply at once:\n{}",
                &prefix[prefix.len().saturating_sub(200)..]
            );
        }
        // The walk is not empty: many prefixes load, and many of them mean something else.
        assert!(
            tried > 500 && valid > 10 && other > 10,
            "{tried} tried, {valid} valid, {other} other"
        );
    }
}
