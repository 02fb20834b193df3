//! Request clamps: what one request may ask of the GPU, on every route.
//!
//! A request that stays under its rate limit can still take the whole GPU: a 131,072-token
//! context, no output limit (`num_predict: -1`, which Ollama reads as "until the context is
//! full"), a model pinned in memory forever (`keep_alive: -1`) or unloaded for everyone
//! (`keep_alive: 0`). The policy bounds each (`limits.max_num_ctx`, `limits.max_output_tokens`,
//! `limits.max_keep_alive_seconds`, per key under `auth.keys[].limits`); a value over a bound
//! is clamped to it, or refused when `limits.over_limit` is `refuse`. The answer says what was
//! clamped in `x-qwen-gateway-clamped`. Admin keys may set any `keep_alive`.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::errors::GatewayError;
use crate::limits::ollama_options::OptionSet;

/// The bounds in force for one request (policy, key and model combined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamps {
    pub max_num_ctx: Option<u64>,
    /// Applied to every spelling of the output limit; a request without one gets this.
    pub max_output_tokens: Option<u64>,
    pub max_keep_alive: Duration,
    /// Refuse over-limit values (400) instead of clamping them.
    pub refuse: bool,
    /// The context a request gets when it asks for none (the model's `num_ctx` in `models`).
    pub default_num_ctx: Option<u64>,
    /// May set any `keep_alive`, including `-1` and `0`, and any option.
    pub admin: bool,
    /// The `options` a non-admin request may set (`limits.allowed_options`).
    pub allowed_options: OptionSet,
}

/// What was clamped or filled in, for the `x-qwen-gateway-clamped` header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Clamped {
    notes: Vec<String>,
    /// Caps filled in where the client set none: said in the header, but no clamp of what
    /// the client asked (report-only mode and `explain` leave them out).
    filled: Vec<String>,
}

impl Clamped {
    /// The `x-qwen-gateway-clamped` header: what was clamped, then what was filled in.
    pub fn header(&self) -> Option<String> {
        let all: Vec<&str> = self
            .notes
            .iter()
            .chain(&self.filled)
            .map(String::as_str)
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    }

    /// Only the values the client asked for that were clamped.
    pub fn clamps(&self) -> Option<String> {
        (!self.notes.is_empty()).then(|| self.notes.join(", "))
    }

    fn note(&mut self, what: &str, value: impl std::fmt::Display) {
        self.notes.push(format!("{what}={value}"));
    }
}

fn over(what: &str, max: u64) -> GatewayError {
    GatewayError::BadRequest {
        message: format!("{what} is over the limit for this key, max {max}"),
    }
}

impl Clamps {
    /// A context size: `asked` (`None` when the request sets none) bounded by the cap; the
    /// model's configured `num_ctx` when the request asks for none, or when it asks for
    /// another and may not choose (`num_ctx` not in `allowed_options`): a context of one
    /// request's own makes Ollama reload the model for everyone.
    pub fn num_ctx(
        &self,
        asked: Option<u64>,
        c: &mut Clamped,
    ) -> Result<Option<u64>, GatewayError> {
        let chooses = self.admin || self.allowed_options.contains("num_ctx");
        let asked = match (asked, self.default_num_ctx) {
            (Some(a), Some(model)) if !chooses => {
                let model = self.max_num_ctx.map_or(model, |m| model.min(m));
                if a != model {
                    c.note("num_ctx", format!("{model} (the model's)"));
                }
                return Ok(Some(model));
            }
            (asked, _) => asked,
        };
        let Some(asked) = asked else {
            return Ok(self
                .default_num_ctx
                .map(|d| self.max_num_ctx.map_or(d, |m| d.min(m))));
        };
        match self.max_num_ctx {
            Some(max) if asked > max => {
                if self.refuse {
                    return Err(over("num_ctx", max));
                }
                c.note("num_ctx", max);
                Ok(Some(max))
            }
            _ => Ok(Some(asked)),
        }
    }

    /// An output limit in any spelling: `asked` as the request sent it (negative: Ollama's
    /// "no limit"). `None` out: leave it unset.
    pub fn output(&self, asked: Option<i64>, c: &mut Clamped) -> Result<Option<u64>, GatewayError> {
        let Some(max) = self.max_output_tokens else {
            return Ok(asked.and_then(|a| u64::try_from(a).ok()));
        };
        match asked {
            // 0 is not "no output": Ollama before 0.30 reads `num_predict: 0` as no limit, so
            // it takes the cap like a negative one.
            Some(a) if a > 0 && a.unsigned_abs() <= max => Ok(Some(a.unsigned_abs())),
            // The client set none: the cap is filled in, and named like a clamp so that a
            // client wondering why its answer stopped can see it.
            None => {
                c.filled.push(format!("max_output_tokens={max} (default)"));
                Ok(Some(max))
            }
            Some(_) => {
                if self.refuse {
                    return Err(over("the output token limit", max));
                }
                c.note("max_output_tokens", max);
                Ok(Some(max))
            }
        }
    }

    /// A `keep_alive` as Ollama reads it (seconds, a Go duration string, `-1`, `0`). `None`
    /// out: leave it unset (Ollama's default applies).
    pub fn keep_alive(
        &self,
        asked: Option<&Value>,
        c: &mut Clamped,
    ) -> Result<Option<Value>, GatewayError> {
        let Some(asked) = asked else { return Ok(None) };
        if self.admin {
            return Ok(Some(asked.clone()));
        }
        let max = self.max_keep_alive.as_secs();
        match keep_alive_secs(asked) {
            // Unloading a model for everyone is an admin's call: the default applies.
            Some(0) => {
                if self.refuse {
                    return Err(GatewayError::BadRequest {
                        message: "keep_alive 0 (unload the model) needs an admin key".to_owned(),
                    });
                }
                c.note("keep_alive", "default");
                Ok(None)
            }
            Some(s) if s > 0 && s.unsigned_abs() <= max => Ok(Some(asked.clone())),
            // Negative (forever), or longer than allowed.
            Some(_) => {
                if self.refuse {
                    return Err(over("keep_alive (seconds)", max));
                }
                c.note("keep_alive", format!("{max}s"));
                Ok(Some(Value::from(format!("{max}s"))))
            }
            None => Err(GatewayError::BadRequest {
                message: "keep_alive must be a number of seconds or a duration like \"5m\""
                    .to_owned(),
            }),
        }
    }

    /// Clamps a native request body (`/api/chat`, `/api/generate`, `/api/embed`,
    /// `/api/embeddings`): `options.num_ctx`, `options.num_predict` (when the route
    /// generates) and `keep_alive`.
    pub fn native_body(
        &self,
        body: &mut Map<String, Value>,
        generates: bool,
        c: &mut Clamped,
    ) -> Result<(), GatewayError> {
        let options = body
            .entry("options")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(options) = options.as_object_mut() else {
            return Err(GatewayError::BadRequest {
                message: "options must be an object".to_owned(),
            });
        };
        let asked_ctx = int_field(options, "num_ctx")?;
        let ctx = self.num_ctx(asked_ctx.and_then(|v| u64::try_from(v).ok()), c)?;
        if let Some(ctx) = ctx {
            options.insert("num_ctx".to_owned(), Value::from(ctx));
        }
        if generates {
            let asked = int_field(options, "num_predict")?;
            if let Some(n) = self.output(asked, c)? {
                options.insert("num_predict".to_owned(), Value::from(n));
            }
        }
        self.allowed_only(options, c)?;
        if options.is_empty() {
            body.remove("options");
        }
        match self.keep_alive(body.get("keep_alive"), c)? {
            Some(k) => {
                body.insert("keep_alive".to_owned(), k);
            }
            None => {
                body.remove("keep_alive");
            }
        }
        Ok(())
    }

    /// Drops (or, refusing, refuses) the options a non-admin key may not set; `num_ctx` and
    /// `num_predict` have been bounded already.
    fn allowed_only(
        &self,
        options: &mut Map<String, Value>,
        c: &mut Clamped,
    ) -> Result<(), GatewayError> {
        if self.admin {
            return Ok(());
        }
        let denied: Vec<String> = options
            .keys()
            .filter(|k| {
                !matches!(k.as_str(), "num_ctx" | "num_predict")
                    && !self.allowed_options.contains(k)
            })
            .cloned()
            .collect();
        for name in denied {
            if self.refuse {
                return Err(GatewayError::BadRequest {
                    message: format!("option {} is not allowed for this key", shown(&name)),
                });
            }
            options.remove(&name);
            c.note(shown(&name), "dropped");
        }
        Ok(())
    }

    /// Clamps an OpenAI- or Anthropic-shaped body's output limit, at `field` (`max_tokens`,
    /// `max_output_tokens`).
    pub fn output_field(
        &self,
        body: &mut Map<String, Value>,
        field: &str,
        c: &mut Clamped,
    ) -> Result<(), GatewayError> {
        let asked = int_field(body, field)?;
        if let Some(n) = self.output(asked, c)? {
            body.insert(field.to_owned(), Value::from(n));
        }
        Ok(())
    }
}

/// An option's name as the answer may show it: a name Ollama reads, or `unknown_option` (the
/// client's own text goes into no header).
fn shown(name: &str) -> &str {
    if OptionSet::parse([name]).is_ok() {
        name
    } else {
        "unknown_option"
    }
}

fn int_field(map: &Map<String, Value>, field: &str) -> Result<Option<i64>, GatewayError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| GatewayError::BadRequest {
                message: format!("{field} must be an integer"),
            }),
    }
}

/// Seconds of a `keep_alive` value: a number of seconds, or a Go duration (`"5m"`, `"1h30m"`,
/// `"-1"`, `"0"`). `None`: not a `keep_alive`.
fn keep_alive_secs(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    if let Some(f) = v.as_f64() {
        return Some(f as i64);
    }
    let s = v.as_str()?.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch.is_ascii_digit() || ch == '.' {
            num.push(ch);
            continue;
        }
        let mut unit = ch.to_string();
        if ch == 'm' && chars.peek() == Some(&'s') {
            unit.push('s');
            chars.next();
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        total += n * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    let secs = total.ceil() as i64;
    Some(if neg { -secs.max(1) } else { secs })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn clamps() -> Clamps {
        Clamps {
            max_num_ctx: Some(32_768),
            max_output_tokens: Some(8_192),
            max_keep_alive: Duration::from_secs(1_800),
            refuse: false,
            default_num_ctx: None,
            admin: false,
            allowed_options: OptionSet::SAMPLING,
        }
    }

    #[test]
    fn durations_as_ollama_reads_them() {
        for (v, s) in [
            (json!(300), Some(300)),
            (json!("5m"), Some(300)),
            (json!("1h30m"), Some(5_400)),
            (json!("-1"), Some(-1)),
            (json!(-1), Some(-1)),
            (json!("0"), Some(0)),
            (json!("250ms"), Some(1)),
            (json!("soon"), None),
        ] {
            assert_eq!(keep_alive_secs(&v), s, "{v}");
        }
    }

    #[test]
    fn native_bodies_are_clamped_and_the_answer_says_so() {
        let mut body =
            json!({"model":"m","options":{"num_ctx":131072,"num_predict":-1},"keep_alive":-1})
                .as_object()
                .cloned()
                .unwrap();
        let mut c = Clamped::default();
        clamps().native_body(&mut body, true, &mut c).unwrap();
        assert_eq!(body["options"], json!({"num_ctx":32768,"num_predict":8192}));
        assert_eq!(body["keep_alive"], "1800s");
        assert_eq!(
            c.header().unwrap(),
            "num_ctx=32768, max_output_tokens=8192, keep_alive=1800s"
        );
        // No output limit asked: the cap. keep_alive 0 from a non-admin: dropped.
        let mut body = json!({"model":"m","keep_alive":0})
            .as_object()
            .cloned()
            .unwrap();
        let mut c = Clamped::default();
        clamps().native_body(&mut body, true, &mut c).unwrap();
        assert_eq!(body["options"], json!({"num_predict":8192}));
        assert!(body.get("keep_alive").is_none());
        assert_eq!(
            c.header().unwrap(),
            "keep_alive=default, max_output_tokens=8192 (default)"
        );
        // 0 is "no limit" to older Ollama: the cap, in every spelling.
        for field in ["max_tokens", "max_output_tokens"] {
            let mut body = json!({ field: 0 }).as_object().cloned().unwrap();
            let mut c = Clamped::default();
            clamps().output_field(&mut body, field, &mut c).unwrap();
            assert_eq!(body[field], 8192, "{field}");
            assert_eq!(c.header().unwrap(), "max_output_tokens=8192");
        }
        let mut body = json!({"options":{"num_predict":0}})
            .as_object()
            .cloned()
            .unwrap();
        clamps()
            .native_body(&mut body, true, &mut Clamped::default())
            .unwrap();
        assert_eq!(body["options"]["num_predict"], 8192);
        // Within bounds: untouched, nothing said.
        let mut body =
            json!({"model":"m","options":{"num_ctx":8192,"num_predict":100},"keep_alive":"5m"})
                .as_object()
                .cloned()
                .unwrap();
        let mut c = Clamped::default();
        clamps().native_body(&mut body, true, &mut c).unwrap();
        assert_eq!(body["options"], json!({"num_ctx":8192,"num_predict":100}));
        assert_eq!(body["keep_alive"], "5m");
        assert_eq!(c.header(), None);
    }

    #[test]
    fn refuse_mode_and_admin_keys() {
        let refuse = Clamps {
            refuse: true,
            ..clamps()
        };
        let mut body = json!({"options":{"num_ctx":65536}})
            .as_object()
            .cloned()
            .unwrap();
        let err = refuse
            .native_body(&mut body, true, &mut Clamped::default())
            .err()
            .map(|e| e.message())
            .unwrap_or_default();
        assert_eq!(err, "num_ctx is over the limit for this key, max 32768");
        let admin = Clamps {
            admin: true,
            ..clamps()
        };
        let mut body = json!({"keep_alive":-1}).as_object().cloned().unwrap();
        admin
            .native_body(&mut body, false, &mut Clamped::default())
            .unwrap();
        assert_eq!(body["keep_alive"], -1);
    }

    #[test]
    fn runner_options_are_dropped_and_the_models_context_holds() {
        let c = Clamps {
            default_num_ctx: Some(16_384),
            ..clamps()
        };
        let mut body = json!({"options":{"num_ctx":4096,"num_gpu":99,"num_thread":1,
            "temperature":0.2,"n\u{0}x":1}})
        .as_object()
        .cloned()
        .unwrap();
        let mut said = Clamped::default();
        c.native_body(&mut body, false, &mut said).unwrap();
        assert_eq!(body["options"], json!({"num_ctx":16384,"temperature":0.2}));
        let header = said.header().unwrap();
        assert!(header.contains("num_ctx=16384 (the model's)"), "{header}");
        assert!(header.contains("num_gpu=dropped"), "{header}");
        assert!(header.contains("unknown_option=dropped"), "{header}");
        // Asking for the model's own context says nothing.
        let mut body = json!({"options":{"num_ctx":16384}})
            .as_object()
            .cloned()
            .unwrap();
        let mut said = Clamped::default();
        c.native_body(&mut body, false, &mut said).unwrap();
        assert_eq!(said.header(), None);
        // A policy that lets clients choose: their context, within the cap.
        let choosing = Clamps {
            allowed_options: OptionSet::parse(["temperature", "num_ctx"]).unwrap(),
            ..c
        };
        let mut body = json!({"options":{"num_ctx":4096}})
            .as_object()
            .cloned()
            .unwrap();
        choosing
            .native_body(&mut body, false, &mut Clamped::default())
            .unwrap();
        assert_eq!(body["options"]["num_ctx"], 4096);
        // Refusing: named in the 400.
        let refuse = Clamps { refuse: true, ..c };
        let mut body = json!({"options":{"use_mmap":false}})
            .as_object()
            .cloned()
            .unwrap();
        let err = refuse
            .native_body(&mut body, false, &mut Clamped::default())
            .err()
            .map(|e| e.message())
            .unwrap_or_default();
        assert_eq!(err, "option use_mmap is not allowed for this key");
        // Admin keys set what they like.
        let admin = Clamps { admin: true, ..c };
        let mut body = json!({"options":{"num_ctx":4096,"num_gpu":1}})
            .as_object()
            .cloned()
            .unwrap();
        admin
            .native_body(&mut body, false, &mut Clamped::default())
            .unwrap();
        assert_eq!(body["options"], json!({"num_ctx":4096,"num_gpu":1}));
    }
}
