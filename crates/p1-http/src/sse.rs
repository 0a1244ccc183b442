//! `/api/v1/events`: server-sent events, one `event: reading` per reading.
//!
//! # Slow clients, and why nothing buffers without bound
//!
//! Each client gets its own `broadcast::Receiver`, subscribed when the request arrives. The
//! body stream takes one reading from it each time hyper asks for more, i.e. when the
//! previous event went out to the socket; a client that reads slowly therefore leaves
//! readings in the broadcast's ring, never in a queue of ours. When it falls more than the
//! channel's capacity behind, `recv` says `Lagged(n)`: the stream skips those `n` readings
//! (the oldest still kept comes next), counts them in `p1gw_http_sse_lagged_total` and goes
//! on. The reader and the sinks are not slowed: a broadcast send never waits for receivers.
//!
//! # How a stream ends
//!
//! * the client goes away: hyper drops the stream, and with it the receiver and the slot;
//! * the reader drops its sender (shutdown phase 1): `recv` says `Closed` after the rest;
//! * [`crate::serve`]'s shutdown fires: the state's `closing` token, so that graceful shutdown
//!   does not wait for streams that would otherwise never end.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use p1_core::Reading;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::exposition::{SSE_CLIENTS, SSE_LAGGED, SSE_REJECTED};
use crate::handlers::{MeterQuery, error_json};
use crate::state::{HttpState, SSE_KEEP_ALIVE};

/// `GET /api/v1/events[?meter=NAME]`.
///
/// 503 when the client cap is reached or the readings channel is closed (the reader has
/// stopped), 404 for an unknown meter.
pub(crate) async fn events(
    State(state): State<HttpState>,
    query: Result<Query<MeterQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(rejection) => return error_json(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    // Only an explicitly named meter filters; by default every reading goes out (one meter is
    // the common case, and a page for several wants them all).
    let meter = match &query.meter {
        None => None,
        Some(name) => match state.meter(Some(name)) {
            Ok(found) => found.map(|(name, _)| name.clone()),
            Err(name) => {
                return error_json(StatusCode::NOT_FOUND, &format!("no meter named {name:?}"));
            }
        },
    };
    let Some(sender) = state.shared.readings.upgrade() else {
        return error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "the meter reader has stopped; no more readings",
        );
    };
    let Some(slot) = Slot::take(&state) else {
        metrics::counter!(SSE_REJECTED).increment(1);
        tracing::debug!(
            limit = state.shared.max_sse_clients,
            "Event-stream client refused: too many clients."
        );
        return error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "too many event-stream clients (limit {})",
                state.shared.max_sse_clients
            ),
        );
    };
    // Subscribe before answering: every reading sent after the response head is delivered.
    let feed = Feed {
        readings: sender.subscribe(),
        closing: state.closing.clone(),
        meter,
        _slot: slot,
    };
    // Drop the temporary strong sender at once: HTTP must not keep the channel open.
    drop(sender);
    let stream = futures_util::stream::unfold(feed, Feed::next);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
        .into_response()
}

/// One client's side of the broadcast.
struct Feed {
    readings: broadcast::Receiver<Arc<Reading>>,
    closing: CancellationToken,
    meter: Option<Arc<str>>,
    _slot: Slot,
}

impl Feed {
    /// The next event, or `None` to end the stream.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            // Both branches are cancel-safe; `closing` first so a shutdown is not delayed by
            // a backlog.
            let received = tokio::select! {
                biased;
                () = self.closing.cancelled() => return None,
                received = self.readings.recv() => received,
            };
            match received {
                Ok(reading) => {
                    if self.meter.as_ref().is_some_and(|m| *m != reading.meter) {
                        continue;
                    }
                    // The JSON is one line (strings escape CR and LF), so one `data:` field.
                    let event = Event::default().event("reading").data(&**reading.json());
                    return Some((Ok(event), self));
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!(SSE_LAGGED).increment(missed);
                    tracing::warn!(
                        missed,
                        "Event-stream client fell behind; skipped to the oldest reading still kept."
                    );
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// A place under the client cap, given back on drop.
struct Slot {
    state: HttpState,
}

impl Slot {
    fn take(state: &HttpState) -> Option<Self> {
        let shared = &state.shared;
        shared
            .sse_clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.max_sse_clients).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!(SSE_CLIENTS).increment(1.0);
        Some(Self {
            state: state.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.shared.sse_clients.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(SSE_CLIENTS).decrement(1.0);
    }
}
