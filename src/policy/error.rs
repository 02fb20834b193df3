//! Why a policy file was refused. Each variant names the file or the dotted field at fault, so
//! `qwen-gateway check` and the reload log tell the operator exactly what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// A guard's section is absent or says nothing about `enabled`: a file cut short before
    /// it must be refused, never read as "guard off".
    #[error("`{section}` {reason}")]
    MissingSection {
        section: &'static str,
        reason: &'static str,
    },
    /// More than one independent problem: `check` prints each on its own line.
    #[error("{} problems: {}", .0.len(), join(.0))]
    Several(Vec<PolicyError>),
}

fn join(errors: &[PolicyError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

impl PolicyError {
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        PolicyError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// One error for a list of them: itself when alone.
    pub fn from_many(mut errors: Vec<PolicyError>) -> Option<PolicyError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(PolicyError::Several(errors)),
        }
    }

    /// Each independent problem, owned.
    pub fn into_each(self) -> Vec<PolicyError> {
        match self {
            PolicyError::Several(v) => v,
            one => vec![one],
        }
    }

    /// Each independent problem.
    pub fn each(&self) -> Vec<&PolicyError> {
        match self {
            PolicyError::Several(v) => v.iter().collect(),
            one => vec![one],
        }
    }

    /// Short label for the `policy_reloads_total{result}` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::Read { .. } => "read_error",
            PolicyError::Parse { .. } => "parse_error",
            PolicyError::Invalid { .. } | PolicyError::MissingSection { .. } => "invalid",
            PolicyError::Several(v) => v.first().map_or("invalid", PolicyError::kind),
        }
    }
}
