//! API-key authentication: which configured key, if any, a request carries.
//!
//! The key comes from the policy's `auth.header_key` (default `X-Api-Key`) or from
//! `Authorization: Bearer <key>` (what OpenAI SDKs and chat UIs send). Only SHA-256 digests are
//! held; the presented key is hashed and compared with every configured digest in constant
//! time, without an early exit, so neither timing nor the number of keys reveals which part
//! matched. A key never reaches a log, metric or error body: callers only see the key id.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderName};
use subtle::{Choice, ConstantTimeEq};

use crate::policy::{ApiKey, AuthPolicy, Quota, digest};

/// The identity behind a request: the matched key of the request's policy snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key: Arc<ApiKey>,
}

impl Principal {
    pub fn key_id(&self) -> &Arc<str> {
        &self.key.id
    }

    pub fn rate_limit(&self) -> Option<Quota> {
        self.key.rate_limit
    }

    /// Public model names the key may use; `None` means any.
    pub fn models(&self) -> Option<&BTreeSet<String>> {
        self.key.models.as_ref()
    }

    /// May manage models (`admin: true` in the policy).
    pub fn is_admin(&self) -> bool {
        self.key.admin
    }
}

/// Why a request carries no usable key. `Missing` and `Invalid` answer the same 401
/// `invalid api key`; `Ambiguous` says that two different keys were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    /// Two different keys (the key header and a Bearer token, or a header given twice):
    /// which one is meant is not for the gateway to guess.
    Ambiguous,
    /// A configured key past its `expires_at`.
    Expired,
    /// A configured key before its `not_before`.
    NotYetValid,
}

impl AuthFailure {
    /// What the auth guard says about it, for the audit line's `reason` and `explain`.
    pub fn rule(self) -> &'static str {
        match self {
            AuthFailure::Missing => "no api key was sent",
            AuthFailure::Invalid => "the api key matches no key in auth",
            AuthFailure::Ambiguous => "two different api keys were sent",
            AuthFailure::Expired => "the key's expires_at has passed",
            AuthFailure::NotYetValid => "the key's not_before is still ahead",
        }
    }

    /// The answer it gets.
    pub fn refusal(self) -> crate::errors::GatewayError {
        use crate::errors::GatewayError;
        match self {
            AuthFailure::Missing | AuthFailure::Invalid => GatewayError::InvalidApiKey,
            AuthFailure::Ambiguous => GatewayError::AmbiguousApiKey,
            AuthFailure::Expired => GatewayError::ExpiredApiKey,
            AuthFailure::NotYetValid => GatewayError::ApiKeyNotYetValid,
        }
    }
}

/// Anthropic's key header: Anthropic clients put the key there whatever the policy says.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Every non-empty key the request presents: each value of the configured header (and of
/// `also`, when given and different), and each `Authorization: Bearer` token.
fn presented_keys<'a>(
    headers: &'a HeaderMap,
    policy: &AuthPolicy,
    also: Option<&HeaderName>,
) -> impl Iterator<Item = &'a [u8]> {
    let also = also.filter(|h| **h != policy.header);
    let from_header = headers
        .get_all(&policy.header)
        .chain(also.into_iter().flat_map(|h| headers.get_all(h)))
        .map(|v| v.as_bytes().trim_ascii());
    let from_bearer = headers.get_all(AUTHORIZATION).filter_map(|v| {
        let (scheme, rest) = v.as_bytes().split_at_checked(7)?;
        scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| rest.trim_ascii())
    });
    from_header.chain(from_bearer).filter(|k| !k.is_empty())
}

/// The one key presented. The same key sent twice (the header and a Bearer token, as some
/// SDK set-ups do) is one key.
fn presented_key<'a>(
    headers: &'a HeaderMap,
    policy: &AuthPolicy,
    also: Option<&HeaderName>,
) -> Result<&'a [u8], AuthFailure> {
    let mut keys = presented_keys(headers, policy, also);
    let first = keys.next().ok_or(AuthFailure::Missing)?;
    if keys.any(|k| k != first) {
        return Err(AuthFailure::Ambiguous);
    }
    Ok(first)
}

/// The principal behind the request's key. `also` names one more header a key may come in
/// (Anthropic's `x-api-key` on `/v1/messages`).
pub fn authenticate(
    headers: &HeaderMap,
    policy: &AuthPolicy,
    also: Option<&HeaderName>,
) -> Result<Principal, AuthFailure> {
    let key = presented_key(headers, policy, also)?;
    let d = digest(key);
    let mut found: Option<usize> = None;
    for (i, k) in policy.keys.iter().enumerate() {
        // Digests are unique (validated), so at most one matches; keep scanning regardless.
        let eq: Choice = k.digest.ct_eq(&d);
        if bool::from(eq) {
            found = Some(i);
        }
    }
    let k = found
        .and_then(|i| policy.keys.get(i))
        .ok_or(AuthFailure::Invalid)?;
    if k.expires_at.is_some() || k.not_before.is_some() {
        let now = std::time::SystemTime::now();
        if k.not_before.is_some_and(|t| now < t) {
            return Err(AuthFailure::NotYetValid);
        }
        if k.expires_at.is_some_and(|t| now >= t) {
            return Err(AuthFailure::Expired);
        }
    }
    Ok(Principal { key: k.clone() })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;
    use crate::policy::ApiKey;

    fn policy() -> AuthPolicy {
        AuthPolicy {
            header: HeaderName::from_static("x-api-key"),
            keys: vec![
                Arc::new(ApiKey::new("a".into(), digest(b"key-aaaa"), None, None)),
                Arc::new(ApiKey::new("b".into(), digest(b"key-bbbb"), None, None)),
            ],
            failures: Quota {
                max_requests: 10,
                window: Duration::from_secs(60),
            },
        }
    }

    fn h(name: &'static str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(v).unwrap(),
        );
        m
    }

    #[test]
    fn header_and_bearer() {
        let p = policy();
        assert_eq!(
            authenticate(&h("x-api-key", "key-bbbb"), &p, None).map(|p| p.key_id().to_string()),
            Ok("b".into())
        );
        assert_eq!(
            authenticate(&h("authorization", "Bearer key-aaaa"), &p, None)
                .map(|p| p.key_id().to_string()),
            Ok("a".into())
        );
        assert_eq!(
            authenticate(&h("authorization", "bearer  key-aaaa "), &p, None)
                .map(|p| p.key_id().to_string()),
            Ok("a".into())
        );
        assert_eq!(
            authenticate(&h("x-api-key", "wrong"), &p, None),
            Err(AuthFailure::Invalid)
        );
        assert_eq!(
            authenticate(&h("authorization", "Basic a2V5"), &p, None),
            Err(AuthFailure::Missing)
        );
        assert_eq!(
            authenticate(&HeaderMap::new(), &p, None),
            Err(AuthFailure::Missing)
        );
    }

    #[test]
    fn two_different_keys_are_ambiguous_the_same_key_twice_is_not() {
        let p = policy();
        let both = |header: &str, bearer: &str| {
            let mut m = h("x-api-key", header);
            m.append(AUTHORIZATION, HeaderValue::from_str(bearer).unwrap());
            authenticate(&m, &p, None).map(|p| p.key_id().to_string())
        };
        // A valid header key must not win over a different Bearer token, nor the reverse.
        assert_eq!(
            both("key-aaaa", "Bearer key-bbbb"),
            Err(AuthFailure::Ambiguous)
        );
        assert_eq!(
            both("key-aaaa", "Bearer wrong-one"),
            Err(AuthFailure::Ambiguous)
        );
        assert_eq!(both("key-aaaa", "Bearer key-aaaa"), Ok("a".into()));
        let mut twice = h("x-api-key", "key-aaaa");
        twice.append(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("key-bbbb"),
        );
        assert_eq!(authenticate(&twice, &p, None), Err(AuthFailure::Ambiguous));
    }
}
