//! The JSON and text endpoints: `/healthz`, `/readyz`, `/metrics`, `/api/v1/reading`,
//! `/api/v1/status`, `/api/v1/history`, and the 404 fallback.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use p1_core::ComponentKind;
use p1_core::health::ComponentStatus;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::HttpState;
use crate::exposition;

/// The content type of `/metrics` (Prometheus text format 0.0.4).
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most minutes `/api/v1/history` looks back.
const MAX_HISTORY_MINUTES: u32 = 24 * 60;

/// A JSON body with `status`; never cached (every answer is "now").
pub(crate) fn json_body(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `{"error": message}` with `status`.
pub(crate) fn error_json(status: StatusCode, message: &str) -> Response {
    json_body(status, serde_json::json!({ "error": message }).to_string())
}

fn to_json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => json_body(status, body),
        // Our own types with string keys: serialisation cannot fail; say so if it ever does.
        Err(e) => error_json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot serialise the answer: {e}"),
        ),
    }
}

fn bad_query(rejection: &QueryRejection) -> Response {
    error_json(StatusCode::BAD_REQUEST, &rejection.body_text())
}

fn unknown_meter(name: &str) -> Response {
    error_json(StatusCode::NOT_FOUND, &format!("no meter named {name:?}"))
}

/// `?meter=NAME`: which meter (default: the first configured).
#[derive(Debug, Deserialize)]
pub(crate) struct MeterQuery {
    pub(crate) meter: Option<String>,
}

/// `GET /healthz`: 200 while the process answers requests. Liveness only; readiness is
/// `/readyz` (a gateway without a meter is alive, and restarting it would not help).
pub(crate) async fn healthz() -> Response {
    json_body(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
}

/// `GET /readyz`: 200 `{"ready":true}` or 503 `{"ready":false,"reasons":[...]}`.
pub(crate) async fn readyz(State(state): State<HttpState>) -> Response {
    let readiness = state
        .shared
        .registry
        .ready(Instant::now(), state.shared.interval);
    if readiness.ready {
        json_body(StatusCode::OK, r#"{"ready":true}"#.to_owned())
    } else {
        to_json(StatusCode::SERVICE_UNAVAILABLE, &readiness)
    }
}

/// `GET /metrics`: the recorder's text plus the scrape-time families of
/// [`crate::exposition`]; 503 when p1gw gave no recorder handle.
pub(crate) async fn metrics(State(state): State<HttpState>) -> Response {
    let Some(handle) = &state.shared.metrics else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "metrics are not enabled\n",
        )
            .into_response();
    };
    let mut text = handle.render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&exposition::render_own(&state, Timestamp::now()));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, METRICS_CONTENT_TYPE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// `GET /api/v1/reading[?meter=NAME]`: the latest reading's docs/contracts.md §4 JSON, 404
/// `{"error":"no reading yet"}` before the first.
pub(crate) async fn reading(
    State(state): State<HttpState>,
    query: Result<Query<MeterQuery>, QueryRejection>,
) -> Response {
    match latest_reading(&state, query) {
        Ok(reading) => json_body(StatusCode::OK, reading.json().to_string()),
        Err(answer) => *answer,
    }
}

/// The latest reading of the meter `?meter=` names (the only one without it), or the answer
/// to give instead: 400 for a bad query, 404 for an unknown meter or before the first reading.
fn latest_reading(
    state: &HttpState,
    query: Result<Query<MeterQuery>, QueryRejection>,
) -> Result<std::sync::Arc<p1_core::Reading>, Box<Response>> {
    let query = match query {
        Ok(Query(q)) => q,
        Err(rejection) => return Err(Box::new(bad_query(&rejection))),
    };
    let latest = match state.meter(query.meter.as_deref()) {
        Ok(Some((_, latest))) => latest.borrow().clone(),
        Ok(None) => None,
        Err(name) => return Err(Box::new(unknown_meter(&name))),
    };
    latest.ok_or_else(|| Box::new(error_json(StatusCode::NOT_FOUND, "no reading yet")))
}

/// One value in `/api/v1/values`.
#[derive(Debug, Serialize)]
struct ValueView {
    /// The name every value view uses ([`p1_core::Measurement::label`]).
    name: String,
    /// The code as normalised.
    obis: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<u8>,
    /// A number in `unit`, or text.
    value: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<String>,
    /// Whether a name table or a rule names the code (false: `obis_…`).
    named: bool,
}

/// `GET /api/v1/values[?meter=NAME]`: the latest reading's values as the value views show
/// them (MQTT value topics, InfluxDB fields, `/metrics`), through the meter's code table: a
/// rule's name, unit and scale applied, codes nobody named as `obis_…`, lines a rule hides
/// left out. What the live page's table of every value reads.
pub(crate) async fn values(
    State(state): State<HttpState>,
    query: Result<Query<MeterQuery>, QueryRejection>,
) -> Response {
    let reading = match latest_reading(&state, query) {
        Ok(reading) => reading,
        Err(answer) => return *answer,
    };
    let values: Vec<ValueView> = reading
        .objects
        .iter()
        .filter(|m| m.published())
        .filter_map(|m| {
            let name = m.label()?.into_owned();
            let value = match (&m.value, m.number()) {
                (_, Some(n)) => serde_json::Number::from_f64(n).map(serde_json::Value::Number)?,
                (p1_core::MeasuredValue::Text(t), None) => serde_json::Value::String(t.clone()),
                (p1_core::MeasuredValue::Time(t), None) => serde_json::Value::String(t.to_string()),
                _ => return None,
            };
            Some(ValueView {
                named: m.name.is_some(),
                obis: m.obis.clone(),
                channel: m.channel,
                unit: m
                    .number()
                    .and_then(|_| m.unit_label())
                    .map(|u| u.into_owned()),
                value,
                name,
            })
        })
        .collect();
    to_json(
        StatusCode::OK,
        &serde_json::json!({
            "meter": &*reading.meter,
            "received_at": reading.received_at.to_string(),
            "values": values,
        }),
    )
}

/// `/api/v1/status`.
#[derive(Debug, Serialize)]
struct Status<'a> {
    version: &'a str,
    ready: bool,
    reasons: Vec<String>,
    shutting_down: bool,
    meters: Vec<MeterStatus>,
    sinks: Vec<SinkStatus>,
    components: Vec<p1_core::health::ComponentView>,
}

#[derive(Debug, Serialize)]
struct MeterStatus {
    name: String,
    state: &'static str,
    last_telegram_age_s: Option<f64>,
    expected_interval_s: f64,
    telegrams_ok: Option<u64>,
    telegrams_rejected: Option<u64>,
    /// Good telegrams the spike guard held back (`null` with the guard off).
    readings_rejected: Option<u64>,
}

#[derive(Debug, Serialize)]
struct SinkStatus {
    name: String,
    kind: Option<String>,
    state: &'static str,
    reason: Option<String>,
    spool_depth: Option<u64>,
    spool_bytes: Option<u64>,
    sent: Option<u64>,
    failed: Option<u64>,
    last_error: Option<String>,
}

/// `GET /api/v1/status`: version, readiness, one entry per reader (`meters`) and per sink
/// (`sinks`), and the registry snapshot (`components`).
///
/// Read from the health registry: a reader registered as `reader:<meter>` (or `<meter>`) gives
/// `name`, its last success is the last telegram, its counters `telegrams_ok`,
/// `telegrams_rejected` and `readings_rejected` (held back by the spike guard); a sink registered as `sink:<name>` (or `<name>`) gives its spool depth
/// and its counters `sent` and `failed` (`null` when the sink does not report them).
pub(crate) async fn status(State(state): State<HttpState>) -> Response {
    let shared = &state.shared;
    let now = Instant::now();
    let readiness = shared.registry.ready(now, shared.interval);
    let statuses = shared.registry.statuses();
    let snapshot = shared.registry.snapshot_at(now);
    let age = |s: &ComponentStatus| {
        s.last_success
            .map(|st| now.saturating_duration_since(st.at).as_secs_f64())
    };
    let meters = statuses
        .iter()
        .filter(|s| s.kind == ComponentKind::Reader)
        .map(|s| MeterStatus {
            name: strip(&s.name, "reader:").to_owned(),
            state: s.state.name(),
            last_telegram_age_s: age(s),
            expected_interval_s: s.expected_interval.unwrap_or(shared.interval).as_secs_f64(),
            telegrams_ok: s.counters.get("telegrams_ok").copied(),
            telegrams_rejected: s.counters.get("telegrams_rejected").copied(),
            readings_rejected: s.counters.get("readings_rejected").copied(),
        })
        .collect();
    let sinks = statuses
        .iter()
        .filter(|s| s.kind == ComponentKind::Sink)
        .map(|s| {
            let name = strip(&s.name, "sink:");
            SinkStatus {
                name: name.to_owned(),
                kind: shared
                    .sink_kinds
                    .get(&s.name)
                    .or_else(|| shared.sink_kinds.get(name))
                    .cloned(),
                state: s.state.name(),
                reason: s.state.reason().map(str::to_owned),
                spool_depth: s.spool.map(|d| d.records),
                spool_bytes: s.spool.map(|d| d.bytes),
                sent: s.counters.get("sent").copied(),
                failed: s.counters.get("failed").copied(),
                last_error: s.last_error.as_ref().map(|e| e.message.clone()),
            }
        })
        .collect();
    to_json(
        StatusCode::OK,
        &Status {
            version: &shared.version,
            ready: readiness.ready,
            reasons: readiness.reasons,
            shutting_down: snapshot.shutting_down,
            meters,
            sinks,
            components: snapshot.components,
        },
    )
}

fn strip<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// `?minutes=N&meter=NAME` of `/api/v1/history`.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    minutes: Option<u32>,
    meter: Option<String>,
}

#[derive(Debug, Serialize)]
struct HistoryBody {
    points: Vec<PointJson>,
}

#[derive(Debug, Serialize)]
struct PointJson {
    t: String,
    power_import: Option<f64>,
    power_export: Option<f64>,
    hot_water_flow: Option<f64>,
    energy_import_total: Option<f64>,
}

/// `GET /api/v1/history?minutes=N` (default 60, at most 1440): the chart points of the last
/// N minutes, oldest first, of `?meter=NAME` (default: the first meter).
pub(crate) async fn history(
    State(state): State<HttpState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(rejection) => return bad_query(&rejection),
    };
    let meter = match state.meter(query.meter.as_deref()) {
        Ok(found) => found.map(|(name, _)| name.clone()),
        Err(name) => return unknown_meter(&name),
    };
    let minutes = query.minutes.unwrap_or(60).min(MAX_HISTORY_MINUTES);
    let since = Timestamp::now()
        .checked_sub(SignedDuration::from_mins(i64::from(minutes)))
        .unwrap_or(Timestamp::MIN);
    let points = state
        .shared
        .history
        .points(meter.as_deref(), since)
        .into_iter()
        .map(|p| PointJson {
            t: p.t.to_string(),
            power_import: p.power_import,
            power_export: p.power_export,
            hot_water_flow: p.hot_water_flow,
            energy_import_total: p.energy_import_total,
        })
        .collect();
    to_json(StatusCode::OK, &HistoryBody { points })
}

/// Any other path: 404 `{"error":"not found"}`.
pub(crate) async fn not_found() -> Response {
    error_json(StatusCode::NOT_FOUND, "not found")
}
