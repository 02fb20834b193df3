//! Loading a policy: the file's bytes, parsed (`yaml.rs`), validated (`validate.rs`) into the
//! runtime [`Policy`], with its shape kept for the reload's removal rule. The one entry point
//! for startup, `check` and hot reload.

use std::path::Path;
use std::sync::Arc;

use super::{Policy, PolicyError, digest, sha256_hex, source, validate, yaml};

impl Policy {
    /// Reads, parses and validates a policy file. The one entry point for startup, `check`
    /// and hot reload.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        Self::load_with_identity(path).map(|(p, _)| p)
    }

    /// [`Policy::load`], with the identity of the file version it read (the reload thread's
    /// starting point: a later event for the same version is not a change).
    pub fn load_with_identity(path: &Path) -> Result<(Policy, source::FileIdentity), PolicyError> {
        let (bytes, identity) = source::read(path)?;
        Ok((Self::from_bytes(&bytes, path)?, identity))
    }

    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Policy, PolicyError> {
        let parse_err = |message: String| PolicyError::Parse {
            path: path.to_owned(),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| parse_err("not UTF-8 text".into()))?;
        if text.trim().is_empty() {
            return Err(parse_err("the file is empty".into()));
        }
        let (file, shape) = yaml::parse(text).map_err(|failure| {
            let mut errors: Vec<PolicyError> = failure
                .errors
                .into_iter()
                .map(|e| e.into_policy_error(path))
                .collect();
            // The values of the sections that did read are checked too, leaving out what
            // only follows from the sections that did not (their absence, their fields).
            if let Some(partial) = failure.partial
                && let Err(e) = validate::validate(*partial, sha256_hex(bytes))
            {
                let of_failed = |e: &PolicyError| {
                    failure.failed.iter().any(|s| match e {
                        PolicyError::Invalid { key, .. } => {
                            key == s
                                || key.starts_with(&format!("{s}."))
                                || key.starts_with(&format!("{s}["))
                        }
                        PolicyError::MissingSection { section, .. } => {
                            section == s || section.starts_with(&format!("{s}."))
                        }
                        _ => false,
                    })
                };
                errors.extend(e.into_each().into_iter().filter(|e| !of_failed(e)));
            }
            PolicyError::from_many(errors).unwrap_or(PolicyError::Parse {
                path: path.to_owned(),
                message: "unreadable".to_owned(),
            })
        })?;
        let mut policy = validate::validate(file, sha256_hex(bytes))?;
        policy.shape = Arc::new(shape);
        Ok(policy)
    }

    /// Whether a key of this policy is the public demo key (README, `scripts/demo.sh`):
    /// `check --deny-demo-key`, which the systemd unit runs, then fails.
    pub fn uses_demo_key(&self) -> bool {
        let demo = digest(validate::DEMO_KEY.as_bytes());
        self.auth
            .as_ref()
            .is_some_and(|a| a.keys.iter().any(|k| k.digest == demo))
    }
}

/// Unit-test helper: `yaml` plus an explicit `enabled: false` for each guard section it does
/// not write itself (every policy must have all three).
#[cfg(test)]
pub fn with_guards_off(yaml: &str) -> String {
    let mut out = yaml.to_owned();
    for section in validate::GUARD_SECTIONS {
        let written = yaml.lines().any(|l| l.starts_with(&format!("{section}:")));
        if !written {
            out.push_str(&format!("\n{section}: {{enabled: false}}\n"));
        }
    }
    out
}
