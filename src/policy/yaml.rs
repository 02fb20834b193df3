//! YAML text -> [`PolicyFile`], bounded in time, strict about gaps, and silent about values.
//!
//! Three passes, each for a failure seen in the field:
//! - a scan of flow nesting (`[[[[…`, `{a: {a: …`) before the YAML parser sees the text: the
//!   parser's time grows with the square of the depth (200 KB of it took 42 s of CPU), and no
//!   policy needs more than a few levels;
//! - a walk of the parsed tree that refuses an empty value (`max_requests:` with nothing after
//!   it): a file cut short must not quietly fall back to a default that is looser than what the
//!   operator wrote;
//! - the typed parse, whose error names the dotted field and the type it expected. serde's own
//!   messages quote the offending value (`invalid type: string "sk-…"`), and a key pasted under
//!   the wrong field would end up in the log and on `/readyz`; they are rewritten without it.

use yaml_serde::Value;

use super::{PolicyError, PolicyFile};

/// Deepest nesting of flow collections accepted. The shipped policy uses two.
pub const MAX_FLOW_DEPTH: usize = 32;

/// Every field a policy text writes, by its dotted path (list items by index), with the
/// text of its scalar value ("" for a mapping or a list).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shape(std::collections::BTreeMap<String, String>);

impl Shape {
    /// The shape of a parsed policy text.
    fn of(v: &Value) -> Shape {
        let mut out = std::collections::BTreeMap::new();
        flatten(v, &mut String::new(), &mut out);
        Shape(out)
    }

    /// Whether `next` takes something of this shape away: a field this one has and `next`
    /// lacks, or a value `next` has cut short (`10.0.0.0/1` where this has `10.0.0.0/16`,
    /// `6` where it has `60`). What a file saved in place looks like halfway through, whose
    /// missing part would fall back to a default, often looser than what was written.
    pub fn loses_from(&self, next: &Shape) -> Option<String> {
        self.0
            .iter()
            .find_map(|(path, value)| match next.0.get(path) {
                None => Some(path.clone()),
                Some(v) if v != value && !v.is_empty() && value.starts_with(v.as_str()) => {
                    Some(path.clone())
                }
                Some(_) => None,
            })
    }
}

/// Visits every node below `v` with its dotted path (list items by index; a key that is not a
/// string as `?`), and whether it is a list item; tagged values are their value.
fn walk(v: &Value, path: &mut String, visit: &mut impl FnMut(&str, &Value, bool)) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k {
                    Value::String(s) => path.push_str(s),
                    _ => path.push('?'),
                }
                visit(path, child, false);
                walk(child, path, visit);
                path.truncate(len);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                visit(path, child, true);
                walk(child, path, visit);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => walk(&t.value, path, visit),
        _ => {}
    }
}

fn flatten(v: &Value, path: &mut String, out: &mut std::collections::BTreeMap<String, String>) {
    walk(v, path, &mut |at, node, _| {
        let scalar = match node {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Tagged(t) => yaml_serde::to_string(&t.value).unwrap_or_default(),
            Value::Mapping(_) | Value::Sequence(_) | Value::Null => String::new(),
        };
        out.insert(at.to_owned(), scalar);
    });
}

/// Why a text is not a policy: every problem found, and, when only some sections failed to
/// read, the others, so that their values can be checked too (a `-5` where a count goes must
/// not hide a bad CIDR in another section until the next run).
#[derive(Debug)]
pub struct ParseFailure {
    pub errors: Vec<ParseError>,
    /// The sections that read, without those that did not.
    pub partial: Option<Box<PolicyFile>>,
    /// The names of the sections that did not read.
    pub failed: Vec<String>,
}

impl From<Vec<ParseError>> for ParseFailure {
    fn from(errors: Vec<ParseError>) -> Self {
        ParseFailure {
            errors,
            partial: None,
            failed: Vec::new(),
        }
    }
}

/// The typed policy with its shape (from the same parse), or every independent problem found: all empty values, and one type
/// or name error per top-level section (serde stops at the first error in what it reads, so
/// each section is read on its own first).
pub fn parse(text: &str) -> Result<(PolicyFile, Shape), ParseFailure> {
    flow_depth_ok(text).map_err(|e| vec![e])?;
    let value: Value =
        yaml_serde::from_str(text).map_err(|e| vec![ParseError::Syntax(scrub(&e))])?;
    let Value::Mapping(sections) = &value else {
        return Err(vec![ParseError::Syntax(
            "the file must be a YAML mapping of policy sections".to_owned(),
        )]
        .into());
    };
    let mut errors = Vec::new();
    no_empty_values(&value, &mut String::new(), &mut errors);
    if !errors.is_empty() {
        return Err(errors.into());
    }
    let mut read = yaml_serde::Mapping::new();
    let mut failed = Vec::new();
    for (name, section) in sections {
        let mut one = yaml_serde::Mapping::new();
        one.insert(name.clone(), section.clone());
        match typed(Value::Mapping(one)) {
            Ok(_) => {
                read.insert(name.clone(), section.clone());
            }
            Err(e) => {
                errors.push(e);
                failed.push(name.as_str().unwrap_or_default().to_owned());
            }
        }
    }
    if !errors.is_empty() {
        return Err(ParseFailure {
            errors,
            partial: typed(Value::Mapping(read)).ok().map(Box::new),
            failed,
        });
    }
    let shape = Shape::of(&value);
    typed(value)
        .map(|file| (file, shape))
        .map_err(|e| vec![e].into())
}

fn typed(value: Value) -> Result<PolicyFile, ParseError> {
    serde_path_to_error::deserialize::<_, PolicyFile>(value).map_err(|e| {
        let mut path = e.path().to_string();
        let mut reason = scrub(e.inner());
        if path.starts_with("auth") {
            unnamed_under_auth(&mut path, &mut reason);
        }
        ParseError::Field {
            key: if path == "." { String::new() } else { path },
            reason,
        }
    })
}

/// Under `auth`, an unknown field's name may be a key pasted as a mapping key
/// (`- sk-live-...: x`): the error names its position and the fields expected, never the name.
fn unnamed_under_auth(path: &mut String, reason: &mut String) {
    let Some(rest) = reason.strip_prefix("unknown field `") else {
        return;
    };
    let Some((name, after)) = rest.split_once('`') else {
        return;
    };
    if let Some(parent) = path.strip_suffix(name).and_then(|p| p.strip_suffix('.')) {
        *path = parent.to_owned();
    }
    *reason =
        format!("an unknown field (its name is not shown: under auth it may be a key){after}");
}

/// Why the text is not a policy; becomes a [`PolicyError`] with the file's path.
#[derive(Debug)]
pub enum ParseError {
    Syntax(String),
    Field { key: String, reason: String },
}

impl ParseError {
    pub fn into_policy_error(self, path: &std::path::Path) -> PolicyError {
        match self {
            ParseError::Syntax(message) => PolicyError::Parse {
                path: path.to_owned(),
                message,
            },
            ParseError::Field { key, reason } if key.is_empty() => PolicyError::Parse {
                path: path.to_owned(),
                message: reason,
            },
            ParseError::Field { key, reason } => PolicyError::Invalid { key, reason },
        }
    }
}

/// Counts `[`/`{` nesting outside quoted scalars and comments.
fn flow_depth_ok(text: &str) -> Result<(), ParseError> {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut prev = b'\n';
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        match quote {
            Some(b'"') => match b {
                b'\\' => {
                    bytes.next();
                }
                b'"' => quote = None,
                _ => {}
            },
            Some(_) => {
                // Single-quoted: '' is an escaped quote, which this reads as close-then-open.
                if b == b'\'' {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if prev.is_ascii_whitespace() => {
                    for c in bytes.by_ref() {
                        if c == b'\n' {
                            break;
                        }
                    }
                    prev = b'\n';
                    continue;
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(ParseError::Syntax(format!(
                            "flow collections ([...] or {{...}}) are nested deeper than \
                             {MAX_FLOW_DEPTH} levels"
                        )));
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = b;
    }
    Ok(())
}

/// Finds every `key:` with nothing after it, and `- ` list items with nothing in them.
fn no_empty_values(v: &Value, path: &mut String, errors: &mut Vec<ParseError>) {
    walk(v, path, &mut |at, node, item| {
        if node.is_null() {
            errors.push(ParseError::Field {
                key: at.to_owned(),
                reason: if item {
                    "is an empty list item".to_owned()
                } else {
                    "has no value (was the file cut short?); write a value or remove the line"
                        .to_owned()
                },
            });
        }
    });
}

/// serde's message without the value it quotes: `invalid type: string "x", expected a
/// sequence` -> `wrong type: found a string, expected a sequence`.
fn scrub(e: &dyn std::fmt::Display) -> String {
    let msg = e.to_string();
    // yaml_serde prefixes its own path (`auth.valid_keys: ...`); the caller names the field.
    let (loc_free, location) = match msg.rfind(" at line ") {
        Some(i) => (&msg[..i], &msg[i..]),
        None => (msg.as_str(), ""),
    };
    let body = loc_free
        .split_once(": ")
        .filter(|(head, _)| !head.contains(' ') && !head.is_empty())
        .map_or(loc_free, |(_, rest)| rest);
    let rewritten = if let Some(rest) = body
        .strip_prefix("invalid type: ")
        .or_else(|| body.strip_prefix("invalid value: "))
    {
        let found = rest.split([' ', ',']).next().unwrap_or("value");
        match rest.split_once(", expected ") {
            Some((_, expected)) => format!(
                "wrong type or value: found {} {found}, expected {expected}",
                article(found)
            ),
            None => format!("wrong type or value: found {} {found}", article(found)),
        }
    } else if body.starts_with("duplicate entry") {
        "a key appears twice in the same mapping".to_owned()
    } else {
        body.to_owned()
    };
    format!("{}{location}", strip_quoted(&rewritten))
}

#[cfg(test)]
mod unnamed_tests {
    #[test]
    fn a_key_pasted_as_a_field_name_under_auth_is_never_echoed() {
        for yaml in [
            "auth:\n  enabled: true\n  keys:\n    - id: a\n      key: \"abcdefghijklmnopqrstuvwxyz0123456789\"\n      sk-live-SECRET123456789: x\n",
            "auth:\n  enabled: true\n  sk-live-SECRET123456789: 1\n",
        ] {
            let errors = super::parse(yaml)
                .err()
                .map(|f| f.errors)
                .unwrap_or_default();
            assert!(!errors.is_empty(), "{yaml}");
            for e in errors {
                let text = format!("{e:?}");
                assert!(!text.contains("SECRET"), "{text}");
                assert!(text.contains("unknown field"), "{text}");
                assert!(text.contains("auth"), "{text}");
            }
        }
        // Elsewhere a typo is named: that is what makes it easy to fix.
        let errors = super::parse("whitelsit: {}\n")
            .err()
            .map(|f| f.errors)
            .unwrap_or_default();
        assert!(format!("{errors:?}").contains("whitelsit"));
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Drops anything between double quotes: a last guard against a quoted value slipping through.
fn strip_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut inside = false;
    for c in s.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => String::from("(parsed)"),
            Err(failure) => failure
                .errors
                .into_iter()
                .map(|e| match e {
                    ParseError::Syntax(m) => m,
                    ParseError::Field { key, reason } => format!("{key}: {reason}"),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    #[test]
    fn every_section_and_every_empty_value_is_reported() {
        let e = err("listen: [1]
rate_limit: {enabled: yes-please}
whitelsit: {}
");
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 3, "{e}");
        assert!(lines[0].starts_with("listen: "), "{e}");
        assert!(lines[1].starts_with("rate_limit.enabled: "), "{e}");
        assert!(lines[2].contains("whitelsit"), "{e}");
        let e = err("auth:
  header_key:
limits:
  max_messages:
");
        assert_eq!(e.lines().count(), 2, "{e}");
    }

    #[test]
    fn values_never_appear_in_errors() {
        let e = err("auth: {enabled: true, valid_keys: \"some-secret-key\"}\n");
        assert!(e.starts_with("auth.valid_keys: "), "{e}");
        assert!(e.contains("expected a sequence"), "{e}");
        assert!(!e.contains("some-secret-key"), "{e}");
        let e = err("rate_limit: {enabled: true, max_requests: -77123}\n");
        assert!(!e.contains("77123"), "{e}");
        assert!(e.starts_with("rate_limit.max_requests"), "{e}");
        let e = err("listen: [\"secret-in-a-list\"]\n");
        assert!(!e.contains("secret-in-a-list"), "{e}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = err("models:\n  qwen3: a\n  qwen3: b\n");
        assert!(e.contains("appears twice"), "{e}");
    }

    #[test]
    fn empty_values_are_refused_with_their_path() {
        assert_eq!(
            err("rate_limit:\n  enabled: true\n  max_requests:\n"),
            "rate_limit.max_requests: has no value (was the file cut short?); write a value or remove the line"
        );
        assert!(err("auth:\n").starts_with("auth: has no value"));
        assert!(err("trusted_proxies:\n  -\n").starts_with("trusted_proxies[0]"));
    }

    #[test]
    fn deep_flow_nesting_is_refused_fast() {
        let deep = format!("models: {}", "[".repeat(200_000));
        let t = std::time::Instant::now();
        let e = err(&deep);
        assert!(e.contains("nested deeper"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // Brackets inside quotes and comments are not nesting.
        let quoted = format!(
            "# {}\nlog_level: \"{}\"\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(!err(&quoted).contains("nested deeper"));
    }
}
