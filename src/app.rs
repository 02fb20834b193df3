//! The HTTP server: binds, serves the route table through the request-context middleware,
//! and stops gracefully on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use crate::context::gate;
use crate::limits::ratelimit::redis::RedisLimiter;
use crate::observe::audit;
use crate::routes;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use crate::upstream::client::Upstream;

/// SIGTERM or SIGINT: stop accepting and let requests finish; when the grace period is over,
/// cut what is still running (streams end with an error event, waiting requests get 503).
async fn stop_on_signal(
    handle: actix_web::dev::ServerHandle,
    shutdown: Arc<Shutdown>,
    grace: Duration,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot listen for SIGTERM/SIGINT.");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        grace_s = grace.as_secs(),
        "Stopping: no new connections; in-flight requests may finish."
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let stop = handle.stop(true);
    tokio::pin!(stop);
    tokio::select! {
        () = &mut stop => return,
        () = tokio::time::sleep(grace) => {}
    }
    tracing::warn!("Shutdown grace period over: cutting the requests still running.");
    shutdown.cut_now();
    stop.await;
}

/// Binds, serves until SIGTERM/SIGINT, drains in-flight requests for the grace period.
pub async fn run(state: Arc<AppState>, workers: Option<usize>) -> anyhow::Result<()> {
    let policy = state.policy.load_full();
    let data = web::Data::from(state.clone());
    let connect_timeout = policy.upstream.timeout;
    let server = HttpServer::new(move || {
        // Runs on each worker thread, inside its runtime.
        audit::start_flusher();
        App::new()
            .app_data(data.clone())
            // Per worker by design: awc clients are !Send and pool connections per thread.
            .app_data(web::Data::new(Upstream::new(connect_timeout)))
            .app_data(web::Data::new(RedisLimiter::default()))
            .app_data(routes::json_config())
            .configure(routes::configure)
            .default_service(web::to(routes::not_found))
            .wrap(from_fn(gate))
    })
    .backlog(1024)
    // A client that closes its connection is noticed at once, whatever its request is doing
    // (waiting for Ollama's first byte, or a stream with nothing to send): the request is
    // dropped, and with it the upstream request, so Ollama stops generating for nobody.
    // (HTTP clients do not half-close and wait; Nginx never does.)
    .h1_allow_half_closed(false)
    // Signals are ours (below): the end of the grace period must cut streams cleanly.
    .disable_signals()
    // Streamed answers are many small writes; Nagle's algorithm would hold each one back
    // until the client acknowledged the previous.
    .tcp_nodelay(true)
    .client_request_timeout(Duration::from_secs(10))
    .keep_alive(Duration::from_secs(75))
    // A little past the grace period: streams cut at its end need a moment to send their
    // error event.
    .shutdown_timeout(policy.shutdown_grace.as_secs() + 2)
    .workers(workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())))
    .bind(policy.listen)
    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", policy.listen))?;
    for addr in server.addrs() {
        tracing::info!(%addr, backends = policy.backends.len(), policy_sha256 = %policy.sha256, "Listening on {addr}.");
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let server = server.run();
    actix_web::rt::spawn(stop_on_signal(
        server.handle(),
        state.shutdown.clone(),
        policy.shutdown_grace,
    ));
    server.await?;
    tracing::info!("Stopped: in-flight requests finished or the grace period ended.");
    Ok(())
}
