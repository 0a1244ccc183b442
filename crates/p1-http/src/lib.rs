//! p1-http: the gateway's HTTP face — health, metrics, the latest reading, a live event
//! stream and the live page (docs/contracts.md §6).
//!
//! # Purpose
//!
//! Answers, for people and for monitoring, "is the gateway alive, is it ready, what does the
//! meter say right now":
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | 200 `{"status":"ok"}` while the process serves requests |
//! | `/readyz` | 200 `{"ready":true}`, or 503 `{"ready":false,"reasons":[…]}` ([`p1_core::Registry::ready`]) |
//! | `/metrics` | Prometheus text: the installed recorder's metrics plus the meter gauges ([`exposition`]) |
//! | `/api/v1/reading` | the latest reading's docs/contracts.md §4 JSON ([`p1_core::Reading::json`]); `?meter=NAME` |
//! | `/api/v1/values` | every value of the latest reading the value views show, through the meter's code table: name (or `obis_…`), the number in its unit (the rule's unit and scale, else the canonical unit), text as text; `?meter=NAME` |
//! | `/api/v1/events` | server-sent events: one `event: reading` per reading; `?meter=NAME` |
//! | `/api/v1/status` | version, readiness, per-meter and per-sink status, the registry snapshot |
//! | `/api/v1/history` | `?minutes=N` (default 60): the recent power/flow points of [`History`] |
//! | `/`, `/assets/*` | the live page (embedded: `index.html`, `app.js`, `style.css`, `favicon.svg`) |
//!
//! With a [`BearerToken`] configured, `/api/*` and `/metrics` answer 401 unless the request
//! carries `Authorization: Bearer <token>`; `/healthz`, `/readyz`, the page and its assets stay
//! open (probes and the page's HTML carry no data).
//!
//! # Main types
//!
//! * [`HttpState`] (built with [`HttpState::builder`]): what the handlers look at — the health
//!   [`p1_core::Registry`], one `watch` receiver of the latest reading per meter, a *weak* handle
//!   on the readings broadcast (to subscribe SSE clients), the [`History`], the optional
//!   `PrometheusHandle`, the optional token, the expected telegram interval, the version.
//! * [`router`] (no socket: tests drive it with `tower::ServiceExt::oneshot`) and [`serve`]
//!   (a listener and a shutdown future from the caller, as mini-redis's server).
//! * [`History`]: a fixed-capacity ring of chart points, filled by [`spawn_recorder`] (or
//!   [`History::run_recorder`] under the daemon's task tracker) from its own broadcast receiver.
//! * [`describe_metrics`]: the `# HELP` texts of this crate's metrics; call it once after the
//!   recorder is installed.
//!
//! # Place in the graph
//!
//! ```text
//! p1-telegram <- p1-core <- p1-reader | p1-sink-{mqtt,influx,azure} | p1-http <- p1gw
//! ```
//!
//! p1-http uses p1-core (and nothing else of ours); only p1gw uses p1-http.
//!
//! # Never
//!
//! * It only looks: it never touches the meter or a sink, never sends on the readings channel
//!   and never keeps it open (it holds a `broadcast::WeakSender`, so the reader dropping its
//!   sender still ends every receiver, SSE streams and the history recorder included).
//! * No unbounded buffering for slow clients: each SSE client has its own broadcast receiver; a
//!   client that falls behind skips ahead (counted in `p1gw_http_sse_lagged_total`), and the
//!   number of SSE clients is capped (503 beyond).
//! * No lock held across `.await`; the history's mutex is held only to push or copy points.
//! * No disk or configuration access: the page is compiled in; p1gw passes everything else.
#![warn(missing_docs)]

use std::future::Future;
use std::io;

use axum::Router;
use axum::middleware;
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod assets;
mod auth;
pub mod exposition;
mod handlers;
mod history;
mod sse;
mod state;

pub use crate::exposition::describe_metrics;
pub use crate::history::{DEFAULT_HISTORY_CAPACITY, History, Point, spawn_recorder};
pub use crate::state::{
    BearerToken, DEFAULT_MAX_SSE_CLIENTS, Error, HttpState, HttpStateBuilder, SSE_KEEP_ALIVE,
};

#[cfg(test)]
mod tests;

/// The application: every route of docs/contracts.md §6, the API and `/metrics` behind the optional
/// bearer token. No socket: serve it with [`serve`], or drive it in tests with
/// `tower::ServiceExt::oneshot`.
///
/// Unknown paths answer 404 `{"error":"not found"}`; a known path with another method 405.
pub fn router(state: HttpState) -> Router {
    // Routes that show data: behind the token when one is configured. `route_layer` applies
    // only to these routes, so an unknown path stays a plain 404.
    let guarded = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/api/v1/reading", get(handlers::reading))
        .route("/api/v1/values", get(handlers::values))
        .route("/api/v1/events", get(sse::events))
        .route("/api/v1/status", get(handlers::status))
        .route("/api/v1/history", get(handlers::history))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/", get(assets::index))
        .route("/index.html", get(assets::index))
        .route("/assets/app.js", get(assets::app_js))
        .route("/assets/style.css", get(assets::style_css))
        .route("/assets/favicon.svg", get(assets::favicon_svg))
        .merge(guarded)
        .fallback(handlers::not_found)
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then shuts down gracefully:
/// stops accepting, ends every open SSE stream, lets requests in flight finish, and returns.
///
/// The caller binds the listener (tests bind `127.0.0.1:0`) and chooses the shutdown future
/// (p1gw: the hard-stop phase, since HTTP stops last).
///
/// # Errors
///
/// An I/O error from the listener that axum does not retry by itself.
///
/// # Cancel safety
///
/// Dropping the returned future drops every connection at once; use `shutdown` instead.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // SSE streams never end by themselves while the reader runs, and axum's graceful shutdown
    // waits for every connection: so the same signal also ends the streams of this server.
    let closing = CancellationToken::new();
    let app = router(state.with_closing(closing.clone()));
    let signal = async move {
        shutdown.await;
        tracing::debug!("HTTP server shutting down: ending event streams, finishing requests.");
        closing.cancel();
    };
    let listener = listener.tap_io(|tcp| {
        // A client that stops reading an event stream must fall behind the readings channel
        // (and be skipped ahead, `p1gw_http_sse_lagged_total`) instead of having minutes of
        // events parked for it in the kernel: Linux grows a socket's send buffer up to
        // `tcp_wmem` (4 MiB), 3 000 readings, per slow client. A fixed buffer also turns off
        // that autotuning; 64 KiB holds a few dozen events and any page or API answer.
        if let Err(error) = socket2::SockRef::from(&*tcp).set_send_buffer_size(SEND_BUFFER) {
            tracing::debug!(%error, "HTTP: cannot set SO_SNDBUF");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await
}

/// `SO_SNDBUF` of every HTTP connection (see [`serve`]).
const SEND_BUFFER: usize = 64 * 1024;
