//! The route table: every route the gateway serves, with its access class, in one list.
//!
//! The access class decides which admission middleware wraps the route (`admission/`), so a
//! route cannot be added without saying who may call it, and the open ones are listed here by
//! name. `tests/routes.rs` walks this table and proves that every route but the open ones
//! refuses a request without a valid key. Unknown paths answer 404 naming the method and path
//! (`Invalid URL (POST /v1/xyz)`); a known path with another method, 405.

use std::collections::BTreeMap;

use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, Route, web};

use crate::admission;
pub use crate::admission::steps::{Access, BodyGuards, Step, steps};
use crate::errors::GatewayError;
use crate::observe::health;
use crate::surface::{self, count_tokens, forward, native, pipeline};

pub struct RouteDef {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub body: BodyGuards,
    /// Builds the actix route (method and handler).
    pub route: fn() -> Route,
}

fn def(method: Method, path: &'static str, access: Access, route: fn() -> Route) -> RouteDef {
    RouteDef {
        method,
        path,
        access,
        body: if access == Access::Key {
            BodyGuards::Model
        } else {
            BodyGuards::None
        },
        route,
    }
}

impl RouteDef {
    fn guards(mut self, body: BodyGuards) -> RouteDef {
        self.body = body;
        self
    }

    /// This route's guards, in order.
    pub fn steps(&self) -> Vec<Step> {
        steps(self.access, self.body)
    }
}

/// Every route. Paths with `{...}` take a path parameter.
pub fn table() -> Vec<RouteDef> {
    use Access::{Admin, Key, Listing, Observer, Open, Operator};
    vec![
        def(Method::GET, "/healthz", Open, || {
            web::get().to(health::healthz)
        }),
        // A load balancer's probe of the site root gets the liveness answer, not a 404.
        def(Method::GET, "/", Open, || web::get().to(health::healthz)),
        def(Method::HEAD, "/", Open, || web::head().to(health::healthz)),
        def(Method::GET, "/readyz", Observer, || {
            web::get().to(health::readyz)
        }),
        def(Method::GET, "/metrics", Observer, || {
            web::get().to(health::metrics)
        }),
        def(Method::GET, "/status", Operator, || {
            web::get().to(health::status)
        }),
        // OpenAI surface.
        def(Method::POST, "/v1/chat/completions", Key, || {
            pipeline::route(&forward::V1_CHAT_COMPLETIONS)
        }),
        def(Method::GET, "/v1/models", Listing, || {
            web::get().to(surface::models)
        }),
        def(Method::GET, "/v1/models/{model}", Listing, || {
            web::get().to(surface::model)
        })
        .guards(BodyGuards::ModelVisible),
        def(Method::POST, "/v1/embeddings", Key, || {
            pipeline::route(&forward::V1_EMBEDDINGS)
        }),
        def(Method::POST, "/v1/completions", Key, || {
            pipeline::route(&forward::V1_COMPLETIONS)
        }),
        def(Method::POST, "/v1/responses", Key, || {
            pipeline::route(&forward::V1_RESPONSES)
        }),
        // Anthropic surface (the key may also come in Anthropic's own `x-api-key`).
        def(Method::POST, "/v1/messages", Key, || {
            pipeline::route(&forward::V1_MESSAGES)
        }),
        // Claude Code's context management: an estimate, no GPU (the listing class's limit).
        def(Method::POST, "/v1/messages/count_tokens", Listing, || {
            web::post().to(count_tokens::count_tokens)
        })
        .guards(BodyGuards::ModelAccess),
        // Ollama's native API.
        def(Method::GET, "/api/version", Listing, || {
            web::get().to(native::version)
        }),
        def(Method::HEAD, "/api/version", Listing, || {
            web::head().to(native::version)
        }),
        def(Method::GET, "/api/tags", Listing, || {
            web::get().to(native::tags)
        }),
        def(Method::HEAD, "/api/tags", Listing, || {
            web::head().to(native::tags)
        }),
        def(Method::GET, "/api/ps", Listing, || {
            web::get().to(native::ps)
        }),
        def(Method::POST, "/api/show", Listing, || {
            web::post().to(native::show)
        })
        .guards(BodyGuards::ModelAccess),
        def(Method::POST, "/api/chat", Key, || {
            pipeline::route(&forward::API_CHAT)
        }),
        def(Method::POST, "/api/generate", Key, || {
            pipeline::route(&forward::API_GENERATE)
        }),
        def(Method::POST, "/api/embed", Key, || {
            pipeline::route(&forward::API_EMBED)
        }),
        def(Method::POST, "/api/embeddings", Key, || {
            pipeline::route(&forward::API_EMBEDDINGS)
        }),
        // Model management: admin keys only, passed to Ollama as they are.
        def(Method::POST, "/api/pull", Admin, || {
            web::post().to(native::admin)
        }),
        def(Method::POST, "/api/push", Admin, || {
            web::post().to(native::admin)
        }),
        def(Method::POST, "/api/create", Admin, || {
            web::post().to(native::admin)
        }),
        def(Method::POST, "/api/copy", Admin, || {
            web::post().to(native::admin)
        }),
        def(Method::DELETE, "/api/delete", Admin, || {
            web::delete().to(native::admin)
        }),
        def(Method::POST, "/api/blobs/{digest}", Admin, || {
            web::post().to(native::admin)
        }),
        def(Method::HEAD, "/api/blobs/{digest}", Admin, || {
            web::head().to(native::admin)
        }),
    ]
}

/// Registers the table: one resource per path, its routes, its admission, and 405 for the
/// methods it does not serve.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut by_path: BTreeMap<&'static str, Vec<RouteDef>> = BTreeMap::new();
    for d in table() {
        by_path.entry(d.path).or_default().push(d);
    }
    // actix tries resources in registration order, and a pattern with a `{segment}` is a
    // regex match: fixed paths first, so a model route never pays for `/api/blobs/{digest}`.
    let (fixed, patterns): (Vec<_>, Vec<_>) = by_path
        .into_iter()
        .partition(|(path, _)| !path.contains('{'));
    for (path, defs) in fixed.into_iter().chain(patterns) {
        let access = defs[0].access;
        debug_assert!(defs.iter().all(|d| d.access == access), "{path}");
        let mut resource = web::resource(path).default_service(web::to(method_not_allowed));
        for d in &defs {
            resource = resource.route((d.route)());
        }
        match access {
            Access::Open => cfg.service(resource),
            Access::Observer => cfg.service(resource.wrap(from_fn(admission::observer))),
            Access::Operator => cfg.service(resource.wrap(from_fn(admission::operator))),
            Access::Key => cfg.service(resource.wrap(from_fn(admission::key))),
            Access::Listing => cfg.service(resource.wrap(from_fn(admission::listing))),
            Access::Admin => cfg.service(resource.wrap(from_fn(admission::admin))),
        };
    }
}

/// Unknown paths: 404 naming the method and path (clients report a bare 404 as "model not
/// found").
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::RouteNotFound {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    })
}

async fn method_not_allowed() -> Result<HttpResponse, GatewayError> {
    Err(GatewayError::MethodNotAllowed)
}

/// Body-extractor errors (never used with our handlers, but any future `web::Json`) answer as
/// a `GatewayError`, not actix's plain text.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default().error_handler(|err, _| {
        GatewayError::BadRequest {
            message: format!("invalid JSON body: {err}"),
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    /// Every route of the table has its own metrics label (issue 20: `/status` was counted as
    /// `route="other"` because the label list is kept apart from the table).
    #[test]
    fn every_route_has_its_own_label() {
        for d in super::table() {
            let concrete = d
                .path
                .replace("{model}", "qwen3:32b")
                .replace("{digest}", "sha256:0");
            assert_eq!(crate::context::route_label(&concrete), d.path, "{}", d.path);
        }
        assert_eq!(crate::context::route_label("/nope"), "other");
    }
}
