//! Reading the policy file safely: a regular file only, never blocking, never more than a cap.
//!
//! The policy path is operator-controlled, but what sits there can change under us: a FIFO would
//! block an ordinary `read` forever (and with it every later reload), a symlink to `/dev/zero`
//! would be read until memory runs out. So the file is opened non-blocking, the *opened* file's
//! type is checked (not the path's, which could be swapped between a check and the open), and
//! at most [`MAX_POLICY_BYTES`] are read.

use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use super::PolicyError;

/// The largest policy file accepted (documented in `policy/policy.yaml`). A policy with a
/// thousand keys is ~150 KB.
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// What identifies one version of the file without reading it: a watcher event whose file
/// still has the identity last read is not a change (a read, an editor opening it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileIdentity {
    fn of(m: &Metadata) -> Self {
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }

    /// The identity of what `path` names now (following symlinks), if it can be seen.
    pub fn of_path(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// Reads the policy file: regular files only, without blocking, at most the cap.
pub fn read(path: &Path) -> Result<(Vec<u8>, FileIdentity), PolicyError> {
    let refuse = |reason: &str| PolicyError::Read {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let file = File::options()
        .read(true)
        // A FIFO opened for reading blocks until a writer appears; O_NONBLOCK returns at once.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| refuse(&io_reason(&e)))?;
    let meta = file.metadata().map_err(|e| refuse(&io_reason(&e)))?;
    if !meta.file_type().is_file() {
        return Err(refuse(
            "not a regular file (a FIFO, device, socket or directory is never read)",
        ));
    }
    if meta.size() > MAX_POLICY_BYTES {
        return Err(refuse(&format!(
            "larger than the {MAX_POLICY_BYTES}-byte limit for a policy file"
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.size()).unwrap_or(0));
    // The file may grow between the stat and the read: read one byte past the cap to see it.
    (&file)
        .take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(&io_reason(&e)))?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(refuse(&format!(
            "larger than the {MAX_POLICY_BYTES}-byte limit for a policy file"
        )));
    }
    Ok((bytes, FileIdentity::of(&meta)))
}

/// The reason without the OS's message decoration, which can vary by locale.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("policy.yaml");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo failed");
        let err = read(&fifo).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn devices_and_oversized_files_are_refused() {
        let err = read(Path::new("/dev/zero"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("policy.yaml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(read(&link).is_err());
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let err = read(&big).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("limit"), "{err}");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize]).unwrap();
        assert!(read(&big).is_ok());
    }
}
