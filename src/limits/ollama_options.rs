//! Ollama's request `options` by name, and the set of them a key may set (`limits.allowed_options`).
//!
//! Sampling options (temperature, top_p, stop, ...) shape one answer. Runner options
//! (`num_gpu`, `num_batch`, `num_thread`, `main_gpu`, `use_mmap`, ...) and a `num_ctx` of
//! its own make Ollama reload the model for everyone, so a non-admin key gets only the
//! options the policy allows; the default is the sampling options.

/// Every option name Ollama has read (`api/types.go` `Options` and `Runner`, and the names
/// older releases read), so that a policy naming one is understood and a typo is refused.
const KNOWN: [&str; 33] = [
    // Sampling (api.Options).
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_last_n",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    // Sampling, read by releases before 0.6.
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "tfs_z",
    "penalize_newline",
    // Runner (api.Runner): each change reloads the model.
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "use_mmap",
    "num_thread",
    "draft_num_predict",
    // Runner, read by older releases.
    "use_mlock",
    "low_vram",
    "f16_kv",
    "numa",
    "vocab_only",
    "logits_all",
    "num_gqa",
    "rope_frequency_base",
];

/// How many of `KNOWN` are sampling options: the default allowed set.
const SAMPLING: usize = 18;

/// A set of option names, one bit per name in `KNOWN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionSet(u64);

impl OptionSet {
    /// The sampling options: the default of `limits.allowed_options`.
    pub const SAMPLING: OptionSet = OptionSet((1 << SAMPLING) - 1);

    /// The set of these names; `Err` names the first one Ollama does not know.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<OptionSet, &'a str> {
        let mut bits = 0;
        for name in names {
            let i = KNOWN.iter().position(|k| *k == name).ok_or(name)?;
            bits |= 1 << i;
        }
        Ok(OptionSet(bits))
    }

    /// Whether `name` (as Ollama reads it: exact) is in the set. Unknown names are not.
    pub fn contains(self, name: &str) -> bool {
        KNOWN
            .iter()
            .position(|k| *k == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// The names in the set, in Ollama's order (for `explain` and the policy view).
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        KNOWN
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, k)| *k)
    }
}

impl Default for OptionSet {
    fn default() -> Self {
        OptionSet::SAMPLING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_the_default_and_runner_options_are_not_in_it() {
        let s = OptionSet::default();
        for name in [
            "temperature",
            "top_p",
            "stop",
            "seed",
            "num_predict",
            "mirostat",
        ] {
            assert!(s.contains(name), "{name}");
        }
        for name in [
            "num_ctx",
            "num_gpu",
            "num_batch",
            "num_thread",
            "use_mmap",
            "Temperature",
        ] {
            assert!(!s.contains(name), "{name}");
        }
        assert_eq!(s.names().count(), SAMPLING);
    }

    #[test]
    fn a_policy_names_options_ollama_knows() {
        let s = OptionSet::parse(["temperature", "num_ctx"]).ok();
        assert_eq!(
            s.map(|s| s.names().collect::<Vec<_>>()),
            Some(vec!["temperature", "num_ctx"])
        );
        assert_eq!(OptionSet::parse(["temprature"]), Err("temprature"));
    }
}
