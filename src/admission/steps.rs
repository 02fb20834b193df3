//! The guards of each access class, in order: the one list the admission middleware, the
//! model routes' handler and `explain` all run (a leaf: it names guards, it runs none).

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: `/healthz` only.
    Open,
    /// The addresses in `observers` (default: the host itself), no key: `/readyz`, `/metrics`.
    Observer,
    /// The gateway's own host (addresses in `trusted_proxies`, by the resolved client
    /// address, so never a client behind Nginx): `/status`, with the redacted policy and
    /// the reload history.
    Operator,
    /// A valid key (when auth is on), after the IP allowlist and the rate limit.
    Key,
    /// A valid key, with a limit of its own (10x the request limit): model lists, details,
    /// version. Chat UIs call these on every page view.
    Listing,
    /// A valid key marked `admin: true`: model management.
    Admin,
}

/// Which guards a route's request runs after admission: what `explain` walks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyGuards {
    /// None: lists, health, model management.
    None,
    /// The key's model access only, for the model the request names (details of a model, a
    /// token count): 403/404 like a model route, no GPU spent.
    ModelAccess,
    /// One entry of the model list: a model the key may not use is not in its list, so it is
    /// not found (404), like one the gateway does not serve.
    ModelVisible,
    /// Work for the model: prompt limit, model access, clamps, token quota.
    Model,
}

/// One guard. Each route's guards, in order, are [`steps`]: the server runs that list (the
/// admission middleware its first part, the model routes' handler the body guards) and
/// `explain` walks the same list, so the two cannot disagree on which guards a route has or
/// in what order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The client address is one of `observers`.
    Observer,
    /// The client address is one of `trusted_proxies` (the gateway's own host).
    Operator,
    /// `whitelist`.
    Whitelist,
    /// `auth`: a valid key, with the failed-key throttle per address.
    Key,
    /// `rate_limit` (or the key's own; 10x on listing routes).
    RateLimit,
    /// A key with `admin: true`.
    Admin,
    /// The prompt limit.
    PromptLimit,
    /// The key's `models` and the policy's `models` map: 403 / 404.
    ModelAccess,
    /// The key's `models`: a model it may not use is not found (404).
    ModelVisible,
    /// The request clamps (`limits`).
    Clamps,
    /// The token quotas (`token_limit`).
    TokenLimit,
}

impl Step {
    /// The name `explain` prints for it (the audit line's guard names where one exists).
    pub fn name(self) -> &'static str {
        match self {
            Step::Observer => "observer",
            Step::Operator => "operator",
            Step::Whitelist => "whitelist",
            Step::Key => "auth",
            Step::RateLimit => "rate_limit",
            Step::Admin => "admin",
            Step::PromptLimit => "prompt_limit",
            Step::ModelAccess | Step::ModelVisible => "models",
            Step::Clamps => "clamps",
            Step::TokenLimit => "token_limit",
        }
    }
}

/// The body guards of a model route, in order (`surface::pipeline` runs them).
pub const MODEL_BODY_STEPS: [Step; 4] = [
    Step::PromptLimit,
    Step::ModelAccess,
    Step::Clamps,
    Step::TokenLimit,
];

/// A route's guards, in the order every request meets them.
pub fn steps(access: Access, body: BodyGuards) -> Vec<Step> {
    use Step::*;
    let mut out = match access {
        Access::Open => return Vec::new(),
        Access::Observer => return vec![Observer],
        Access::Operator => return vec![Operator],
        Access::Key | Access::Listing => vec![Whitelist, Key, RateLimit],
        Access::Admin => vec![Whitelist, Key, RateLimit, Admin],
    };
    match body {
        BodyGuards::None => {}
        BodyGuards::ModelAccess => out.push(ModelAccess),
        BodyGuards::ModelVisible => out.push(ModelVisible),
        BodyGuards::Model => out.extend(MODEL_BODY_STEPS),
    }
    out
}
