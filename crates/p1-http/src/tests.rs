//! p1-http through `router(state).oneshot(request)`, plus one real socket for `serve`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use p1_core::{ComponentKind, Reading, Registry};
use p1_telegram::{Decoder, ParseOptions, Telegram};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, watch};
use tokio::time::timeout;
use tower::ServiceExt;

use crate::exposition::render_own;
use crate::{BearerToken, Error, History, HttpState, Point, router, serve, spawn_recorder};

const DEADLINE: Duration = Duration::from_secs(5);

// ---- fixtures and helpers

/// Veitur's Iskra IE.5 with the hot-water submeter on channel 1. The recording stops before
/// the `!` line; the frame is completed here.
fn veitur_bytes() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/telegrams/iceland_veitur_iskra_ie5e_heat_submeter_raw.txt");
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.extend_from_slice(b"!\r\n");
    bytes
}

fn reading_at(meter: &str, source: &str, received_at: Timestamp) -> Arc<Reading> {
    let bytes = veitur_bytes();
    let mut decoder = Decoder::default();
    let mut input: &[u8] = &bytes;
    let frame = decoder
        .next_frame(&mut input)
        .expect("a frame")
        .expect("a good frame");
    let telegram = Telegram::parse(frame.bytes, ParseOptions::default()).expect("parses");
    let tz = jiff::tz::TimeZone::get("Atlantic/Reykjavik").expect("bundled tzdb");
    Arc::new(Reading::from_telegram(
        meter.into(),
        source.into(),
        &telegram,
        &tz,
        received_at,
    ))
}

fn reading(source: &str) -> Arc<Reading> {
    reading_at("home", source, Timestamp::now())
}

/// The process-wide recorder (one per test binary), with this crate's metrics described.
fn global_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .expect("install the test recorder");
            crate::describe_metrics();
            handle
        })
        .clone()
}

/// A gateway's worth of channels and a state over them.
struct Gw {
    registry: Registry,
    tx: broadcast::Sender<Arc<Reading>>,
    latest: watch::Sender<Option<Arc<Reading>>>,
    history: History,
}

impl Gw {
    fn new() -> Self {
        Self::with_capacity(16)
    }

    fn with_capacity(capacity: usize) -> Self {
        Self {
            registry: Registry::new(),
            tx: broadcast::channel(capacity).0,
            latest: watch::channel(None).0,
            history: History::new(100),
        }
    }

    fn builder(&self) -> crate::HttpStateBuilder {
        HttpState::builder(self.registry.clone(), &self.tx, self.history.clone())
            .meter("home", self.latest.subscribe())
            .expected_interval(Duration::from_secs(10))
            .version("9.9.9-test")
    }

    fn state(&self) -> HttpState {
        self.builder().build()
    }

    /// What the reader does with a good telegram.
    fn publish(&self, reading: &Arc<Reading>) {
        let _receivers = self.tx.send(reading.clone()).unwrap_or(0);
        self.latest.send_replace(Some(reading.clone()));
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("ASCII header")
    }
}

async fn request(state: &HttpState, uri: &str, auth: Option<&str>) -> Answer {
    let mut req = Request::builder().uri(uri);
    if let Some(auth) = auth {
        req = req.header(header::AUTHORIZATION, auth);
    }
    let response = router(state.clone())
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("body within 5 s")
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

async fn get(state: &HttpState, uri: &str) -> Answer {
    request(state, uri, None).await
}

/// Reads server-sent events from a response body.
struct Events {
    body: Body,
    buf: String,
}

impl Events {
    async fn open(state: &HttpState, uri: &str) -> (StatusCode, HeaderMap, Self) {
        let response = router(state.clone())
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        (
            parts.status,
            parts.headers,
            Self {
                body,
                buf: String::new(),
            },
        )
    }

    /// The next event as (event name, data), skipping comments; `None` when the stream ends.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((event, data.join("\n")));
            }
            let frame = timeout(DEADLINE, self.body.frame())
                .await
                .expect("an event within 5 s")?
                .expect("body frame");
            if let Ok(data) = frame.into_data() {
                self.buf
                    .push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }

    /// Whether the stream ends (rather than yielding more) within the deadline.
    async fn ends(&mut self) -> bool {
        loop {
            match timeout(DEADLINE, self.body.frame()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("body error: {e}"),
            }
        }
    }
}

fn source_of(data: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(data).expect("event data is JSON");
    v["source"].as_str().expect("source").to_owned()
}

// ---- /healthz, /readyz

#[tokio::test]
async fn healthz_is_ok_without_any_component() {
    let gw = Gw::new();
    let a = get(&gw.state(), "/healthz").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), serde_json::json!({"status": "ok"}));
}

#[tokio::test(start_paused = true)]
async fn readyz_follows_telegrams_and_sinks() {
    let gw = Gw::new();
    let reader = gw
        .registry
        .register("reader:home", ComponentKind::Reader)
        .unwrap();
    let sink = gw
        .registry
        .register("sink:mqtt", ComponentKind::Sink)
        .unwrap();
    let state = gw.state();

    let a = get(&state, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = a.json();
    assert_eq!(body["ready"], false);
    let reasons: Vec<&str> = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"reader reader:home: no telegram yet"),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"sink sink:mqtt: starting"), "{reasons:?}");

    reader.success();
    reader.ok();
    sink.ok();
    let a = get(&state, "/readyz").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.json(), serde_json::json!({"ready": true}));
    assert_eq!(a.header(header::CONTENT_TYPE), "application/json");

    // 3 × 10 s is the limit: 30 s is still fine, 31 s is not.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(get(&state, "/readyz").await.status, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(1)).await;
    let a = get(&state, "/readyz").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        a.json()["reasons"],
        serde_json::json!(["reader reader:home: last telegram 31 s ago (limit 30 s)"])
    );

    // A fresh telegram makes it ready again.
    reader.success();
    assert_eq!(get(&state, "/readyz").await.status, StatusCode::OK);
}

// ---- /api/v1/reading

#[tokio::test]
async fn reading_is_404_until_the_first_then_the_reading_json() {
    let gw = Gw::new();
    let state = gw.state();
    let a = get(&state, "/api/v1/reading").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json(), serde_json::json!({"error": "no reading yet"}));

    let r = reading("test:1");
    gw.publish(&r);
    let a = get(&state, "/api/v1/reading").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header(header::CONTENT_TYPE), "application/json");
    assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
    assert_eq!(a.body, **r.json());
    let v = a.json();
    assert_eq!(v["meter"], "home");
    assert_eq!(v["header"], "ISk5\\2MIE5E-200");
    assert_eq!(v["objects"][0]["obis"], "0-0:96.1.0");

    assert_eq!(
        get(&state, "/api/v1/reading?meter=home").await.body,
        **r.json()
    );
    let a = get(&state, "/api/v1/reading?meter=garage").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json()["error"], "no meter named \"garage\"");
}

#[tokio::test]
async fn reading_selects_among_several_meters() {
    let gw = Gw::new();
    let (garage_tx, garage_rx) = watch::channel(None);
    let state = gw.builder().meter("garage", garage_rx).build();
    let home = reading_at("home", "test:home", Timestamp::now());
    let garage = reading_at("garage", "test:garage", Timestamp::now());
    gw.publish(&home);
    garage_tx.send_replace(Some(garage.clone()));
    assert_eq!(get(&state, "/api/v1/reading").await.body, **home.json());
    assert_eq!(
        get(&state, "/api/v1/reading?meter=garage").await.body,
        **garage.json()
    );
}

// ---- the bearer token

#[tokio::test]
async fn token_guards_api_and_metrics_only() {
    let gw = Gw::new();
    let token = BearerToken::new("s3cret-token\n").unwrap();
    let state = gw
        .builder()
        .metrics(global_metrics())
        .token(Some(token))
        .build();
    gw.publish(&reading("test:auth"));

    for uri in [
        "/api/v1/reading",
        "/api/v1/status",
        "/api/v1/history",
        "/api/v1/events",
        "/metrics",
    ] {
        let a = request(&state, uri, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri} without a token");
        assert_eq!(a.header(header::WWW_AUTHENTICATE), "Bearer realm=\"p1gw\"");
        assert!(a.json()["error"].as_str().unwrap().contains("bearer token"));
        for wrong in [
            "Bearer s3cret-tokeX",
            "Bearer s3cret",
            "Basic czNjcmV0LXRva2Vu",
            "Bearer",
        ] {
            let a = request(&state, uri, Some(wrong)).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri} with {wrong:?}");
        }
    }
    for uri in [
        "/api/v1/reading",
        "/api/v1/status",
        "/api/v1/history",
        "/metrics",
    ] {
        let a = request(&state, uri, Some("Bearer s3cret-token")).await;
        assert_eq!(a.status, StatusCode::OK, "{uri} with the token: {}", a.body);
    }
    // The scheme is case-insensitive.
    // Browsers' EventSource cannot send headers: the query parameter works too.
    let a = request(&state, "/api/v1/status?access_token=s3cret%2Dtoken", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = request(&state, "/api/v1/status?x=1&access_token=wrong", None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = request(&state, "/api/v1/reading", Some("bearer s3cret-token")).await;
    assert_eq!(a.status, StatusCode::OK);

    // Probes and the page stay open.
    for uri in [
        "/healthz",
        "/",
        "/assets/app.js",
        "/assets/style.css",
        "/assets/favicon.svg",
    ] {
        assert_eq!(get(&state, uri).await.status, StatusCode::OK, "{uri}");
    }
    assert_eq!(
        get(&state, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Unknown paths stay 404, token or not.
    assert_eq!(
        get(&state, "/api/v1/nothing").await.status,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn token_never_prints_and_rejects_what_a_header_cannot_carry() {
    let token = BearerToken::new("  abc\n").unwrap();
    assert_eq!(format!("{token:?}"), "BearerToken(***)");
    assert!(token.matches(b"abc"));
    assert!(!token.matches(b"abd"));
    assert!(!token.matches(b"abcd"));
    assert!(matches!(BearerToken::new(" \n"), Err(Error::EmptyToken)));
    assert!(matches!(BearerToken::new("a b"), Err(Error::InvalidToken)));
    assert!(matches!(
        BearerToken::new("pässword"),
        Err(Error::InvalidToken)
    ));
}

// ---- /api/v1/events

#[tokio::test]
async fn sse_client_gets_each_reading_as_a_reading_event() {
    let gw = Gw::new();
    let state = gw.state();
    let (status, headers, mut events) = Events::open(&state, "/api/v1/events").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");

    let first = reading("test:sse-1");
    let second = reading("test:sse-2");
    gw.publish(&first);
    gw.publish(&second);
    let (event, data) = events.next().await.expect("an event");
    assert_eq!(event, "reading");
    assert_eq!(data, **first.json());
    let (event, data) = events.next().await.expect("an event");
    assert_eq!(event, "reading");
    assert_eq!(data, **second.json());
}

#[tokio::test(start_paused = true)]
async fn sse_idle_stream_gets_keep_alive_comments_every_15_s() {
    let gw = Gw::new();
    let (_, _, mut events) = Events::open(&gw.state(), "/api/v1/events").await;
    let start = tokio::time::Instant::now();
    // Paused time: the runtime jumps to the keep-alive timer as soon as all is idle.
    let frame = timeout(Duration::from_secs(20), events.body.frame())
        .await
        .expect("a keep-alive within 20 s")
        .expect("stream open")
        .expect("body frame");
    let data = frame.into_data().expect("a data frame");
    assert!(data.starts_with(b":"), "a comment, not an event: {data:?}");
    assert_eq!(start.elapsed(), crate::SSE_KEEP_ALIVE);
}

#[tokio::test]
async fn sse_meter_filter_and_unknown_meter() {
    let gw = Gw::new();
    let (_garage_tx, garage_rx) = watch::channel(None);
    let state = gw.builder().meter("garage", garage_rx).build();
    let (status, _, mut events) = Events::open(&state, "/api/v1/events?meter=garage").await;
    assert_eq!(status, StatusCode::OK);
    gw.publish(&reading_at("home", "test:home", Timestamp::now()));
    gw.publish(&reading_at("garage", "test:garage", Timestamp::now()));
    let (_, data) = events.next().await.expect("an event");
    assert_eq!(source_of(&data), "test:garage");

    let (status, _, _) = Events::open(&state, "/api/v1/events?meter=shed").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn sse_slow_client_skips_ahead_and_counts_it() {
    let handle = global_metrics();
    let lagged = || {
        handle
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("p1gw_http_sse_lagged_total "))
            .map_or(0, |v| v.parse::<u64>().expect("a count"))
    };
    let before = lagged();

    // The channel keeps 4 readings; 10 are sent before the client reads anything.
    let gw = Gw::with_capacity(4);
    let state = gw.state();
    let (_, _, mut events) = Events::open(&state, "/api/v1/events").await;
    for i in 0..10 {
        gw.publish(&reading(&format!("test:lag-{i}")));
    }
    for i in 6..10 {
        let (_, data) = events.next().await.expect("an event");
        assert_eq!(source_of(&data), format!("test:lag-{i}"));
    }
    assert_eq!(lagged() - before, 6);

    // And it keeps up afterwards.
    gw.publish(&reading("test:lag-10"));
    let (_, data) = events.next().await.expect("an event");
    assert_eq!(source_of(&data), "test:lag-10");
}

#[tokio::test]
async fn sse_clients_are_capped() {
    let gw = Gw::new();
    let state = gw.builder().max_sse_clients(2).build();
    let (s1, _, first) = Events::open(&state, "/api/v1/events").await;
    let (s2, _, _second) = Events::open(&state, "/api/v1/events").await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    let a = get(&state, "/api/v1/events").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["error"], "too many event-stream clients (limit 2)");
    // A client that goes away frees its place.
    drop(first);
    let (s3, _, _third) = Events::open(&state, "/api/v1/events").await;
    assert_eq!(s3, StatusCode::OK);
}

#[tokio::test]
async fn sse_streams_end_when_the_reader_drops_its_sender() {
    let gw = Gw::new();
    let state = gw.state();
    let (_, _, mut events) = Events::open(&state, "/api/v1/events").await;
    let last = reading("test:last");
    gw.publish(&last);
    // HTTP holds only a weak sender: dropping the reader's closes the channel.
    drop(gw.tx);
    let (_, data) = events
        .next()
        .await
        .expect("the reading sent before the close");
    assert_eq!(data, **last.json());
    assert!(
        events.ends().await,
        "the stream ends after the channel closes"
    );
    let a = get(&state, "/api/v1/events").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
}

// ---- history

fn point(t: i64) -> Point {
    Point {
        meter: "home".into(),
        t: Timestamp::from_second(t).unwrap(),
        power_import: Some(t as f64),
        power_export: None,
        hot_water_flow: None,
        energy_import_total: None,
    }
}

#[test]
fn history_keeps_the_newest_points_oldest_first() {
    let history = History::new(3);
    assert!(history.is_empty());
    for t in 1..=5 {
        history.push(point(t));
    }
    assert_eq!(history.len(), 3);
    assert_eq!(history.capacity(), 3);
    let ts: Vec<i64> = history
        .points(None, Timestamp::UNIX_EPOCH)
        .iter()
        .map(|p| p.t.as_second())
        .collect();
    assert_eq!(ts, [3, 4, 5]);
    let since = history.points(Some("home"), Timestamp::from_second(4).unwrap());
    assert_eq!(since.len(), 2);
    assert!(
        history
            .points(Some("garage"), Timestamp::UNIX_EPOCH)
            .is_empty()
    );
    assert_eq!(History::new(0).capacity(), 1);
}

#[test]
fn point_takes_canonical_values_from_the_reading() {
    let p = Point::from_reading(&reading("test:point"));
    assert_eq!(p.power_import, Some(0.588));
    assert_eq!(p.power_export, Some(0.0));
    assert_eq!(p.hot_water_flow, Some(0.09));
    assert_eq!(p.energy_import_total, Some(1988.284));
}

#[tokio::test]
async fn history_endpoint_returns_the_last_minutes_oldest_first() {
    let gw = Gw::new();
    let state = gw.state();
    let now = Timestamp::now();
    let ago = |mins: i64| now - SignedDuration::from_mins(mins);
    for (mins, source) in [(120, "old"), (30, "mid"), (1, "new")] {
        gw.history.record(&reading_at("home", source, ago(mins)));
    }
    gw.history
        .record(&reading_at("garage", "other meter", ago(2)));

    let a = get(&state, "/api/v1/history?minutes=60").await;
    assert_eq!(a.status, StatusCode::OK);
    let points = a.json()["points"].as_array().unwrap().clone();
    assert_eq!(points.len(), 2, "{}", a.body);
    assert_eq!(points[0]["t"], ago(30).to_string());
    assert_eq!(points[1]["t"], ago(1).to_string());
    assert_eq!(points[1]["power_import"], 0.588);
    assert_eq!(points[1]["power_export"], 0.0);
    assert_eq!(points[1]["hot_water_flow"], 0.09);
    assert_eq!(points[1]["energy_import_total"], 1988.284);

    // Default: 60 minutes; ?minutes is capped, not refused; junk is a 400.
    assert_eq!(get(&state, "/api/v1/history").await.body, a.body);
    let all = get(&state, "/api/v1/history?minutes=100000").await.json();
    assert_eq!(all["points"].as_array().unwrap().len(), 3);
    let bad = get(&state, "/api/v1/history?minutes=soon").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["error"].as_str().unwrap().contains("minutes"));
    assert_eq!(
        get(&state, "/api/v1/history?minutes=0").await.json()["points"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn recorder_records_until_the_channel_closes() {
    let gw = Gw::new();
    let task = spawn_recorder(gw.history.clone(), gw.tx.subscribe());
    let _state = gw.state(); // holds only a weak sender: must not keep the recorder alive
    for i in 0..3 {
        gw.publish(&reading(&format!("test:rec-{i}")));
    }
    drop(gw.tx);
    timeout(DEADLINE, task)
        .await
        .expect("the recorder ends when the channel closes")
        .expect("no panic");
    assert_eq!(gw.history.len(), 3);
}

// ---- /metrics

fn promtool_check(text: &str) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed to lint /metrics but cannot be run ({e}); install the Debian \
             package `prometheus` (apt-get install prometheus), as scripts/test does"
        ),
    };
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write to promtool");
    }
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- input:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_without_a_recorder_is_503() {
    let gw = Gw::new();
    assert_eq!(
        get(&gw.state(), "/metrics").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn metrics_show_the_meter_values_and_pass_promtool() {
    let gw = Gw::new();
    let state = gw.builder().metrics(global_metrics()).build();

    let before = get(&state, "/metrics").await;
    assert_eq!(before.status, StatusCode::OK);
    assert!(!before.body.contains("p1gw_meter_value"), "{}", before.body);
    promtool_check(&before.body);

    gw.publish(&reading_at(
        "home",
        "test:metrics",
        Timestamp::now() - SignedDuration::from_secs(3),
    ));
    let a = get(&state, "/metrics").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.header(header::CONTENT_TYPE),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    for line in [
        "# HELP p1gw_meter_value ",
        "# TYPE p1gw_meter_value gauge",
        "p1gw_meter_value{meter=\"home\",name=\"power_import\",unit=\"kW\",channel=\"0\"} 0.588",
        "p1gw_meter_value{meter=\"home\",name=\"energy_import_total\",unit=\"kWh\",channel=\"0\"} 1988.284",
        "p1gw_meter_value{meter=\"home\",name=\"voltage_l1\",unit=\"V\",channel=\"0\"} 232.5",
        "p1gw_meter_value{meter=\"home\",name=\"hot_water_volume\",unit=\"m3\",channel=\"1\"} 366.475",
        "p1gw_meter_value{meter=\"home\",name=\"heat_flow\",unit=\"m3/h\",channel=\"1\"} 0.09",
        "p1gw_meter_value{meter=\"home\",name=\"heat_supply_temperature\",unit=\"degC\",channel=\"1\"} 74.8",
        "p1gw_meter_value{meter=\"home\",name=\"heat_energy\",unit=\"Wh\",channel=\"1\"} 19.078",
        "# TYPE p1gw_last_reading_age_seconds gauge",
        "p1gw_build_info{version=\"9.9.9-test\"} 1",
        "# HELP p1gw_http_sse_lagged_total ",
        "# TYPE p1gw_http_sse_lagged_total counter",
    ] {
        assert!(a.body.contains(line), "missing {line:?} in:\n{}", a.body);
    }
    let age: f64 = a
        .body
        .lines()
        .find_map(|l| l.strip_prefix("p1gw_last_reading_age_seconds{meter=\"home\"} "))
        .expect("an age sample")
        .parse()
        .expect("a number");
    assert!((3.0..60.0).contains(&age), "age {age}");
    promtool_check(&a.body);
}

#[test]
fn meter_labels_are_escaped() {
    let (latest_tx, latest_rx) = watch::channel(None);
    let (tx, _) = broadcast::channel(1);
    let state = HttpState::builder(Registry::new(), &tx, History::new(1))
        .meter("a\"b\\c", latest_rx)
        .build();
    latest_tx.send_replace(Some(reading_at("a\"b\\c", "t", Timestamp::now())));
    let text = render_own(&state, Timestamp::now());
    assert!(
        text.contains("p1gw_last_reading_age_seconds{meter=\"a\\\"b\\\\c\"} "),
        "{text}"
    );
    promtool_check(&text);
}

#[test]
fn metrics_follow_the_meters_code_table_and_carry_unnamed_codes() {
    use p1_core::{CodePattern, CodeRule, CodeTable, Quantity};
    let mut heat =
        CodeRule::new(CodePattern::parse("0-n:24.2.5").expect("code")).named("heat_energy_total");
    heat.unit = Some("MWh".to_owned());
    heat.kind = Some(Quantity::Energy);
    let mut hidden = CodeRule::new(CodePattern::parse("0-1:24.2.3").expect("code"));
    hidden.publish = false;
    let codes = Arc::new(CodeTable::new([heat, hidden]));
    let (latest_tx, latest_rx) = watch::channel(None);
    let (tx, _) = broadcast::channel(1);
    let state = HttpState::builder(Registry::new(), &tx, History::new(1))
        .meter("home", latest_rx)
        .build();
    let reading = Reading::clone(&reading_at("home", "t", Timestamp::now())).with_codes(&codes);
    latest_tx.send_replace(Some(Arc::new(reading)));
    let text = render_own(&state, Timestamp::now());
    for line in [
        "p1gw_meter_value{meter=\"home\",name=\"heat_energy_total\",unit=\"MWh\",channel=\"1\"} 19.078",
        // Veitur's 24.2.10: no name anywhere, so under its code, as sent.
        "p1gw_meter_value{meter=\"home\",name=\"obis_0_1_24_2_10\",unit=\"\",channel=\"1\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        !text.contains("heat_supply_temperature"),
        "publish = false: {text}"
    );
    assert!(!text.contains("name=\"heat_energy\""), "renamed: {text}");
    promtool_check(&text);
}

/// `/api/v1/values`, what the live page's table of every value shows: the code table applied
/// (a rule's name, unit and scale; `publish = false` left out), a code nobody named under
/// `obis_…`, text as text; 404 before the first reading.
#[tokio::test]
async fn values_are_every_value_through_the_meters_code_table() {
    use p1_core::{CodePattern, CodeRule, CodeTable, Quantity};
    let mut heat =
        CodeRule::new(CodePattern::parse("0-n:24.2.5").expect("code")).named("heat_energy_total");
    heat.unit = Some("MWh".to_owned());
    heat.kind = Some(Quantity::Energy);
    let mut hidden = CodeRule::new(CodePattern::parse("0-1:24.2.3").expect("code"));
    hidden.publish = false;
    let codes = Arc::new(CodeTable::new([heat, hidden]));
    let (latest_tx, latest_rx) = watch::channel(None);
    let (tx, _) = broadcast::channel(1);
    let state = HttpState::builder(Registry::new(), &tx, History::new(1))
        .meter("home", latest_rx)
        .build();
    assert_eq!(
        get(&state, "/api/v1/values").await.status,
        StatusCode::NOT_FOUND
    );
    let reading = Reading::clone(&reading_at("home", "t", Timestamp::now())).with_codes(&codes);
    latest_tx.send_replace(Some(Arc::new(reading)));
    let answer = get(&state, "/api/v1/values").await;
    assert_eq!(answer.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(json["meter"], "home");
    let values = json["values"].as_array().expect("values");
    let find = |name: &str| values.iter().find(|v| v["name"] == name);
    let heat = find("heat_energy_total").expect("the rule's name");
    assert_eq!(
        (
            &heat["value"],
            &heat["unit"],
            &heat["channel"],
            &heat["named"]
        ),
        (
            &serde_json::json!(19.078),
            &serde_json::json!("MWh"),
            &serde_json::json!(1),
            &serde_json::json!(true)
        )
    );
    let unnamed = find("obis_0_1_24_2_10").expect("a code nobody named");
    assert_eq!(unnamed["named"], false);
    assert_eq!(unnamed["obis"], "0-1:24.2.10");
    assert!(find("heat_supply_temperature").is_none(), "publish = false");
    assert!(find("heat_energy").is_none(), "renamed");
    let energy = find("energy_import_total").expect("a known value");
    assert_eq!(energy["unit"], "kWh");
}

// ---- /api/v1/status

#[tokio::test]
async fn status_lists_meters_sinks_and_components() {
    let gw = Gw::new();
    let reader = gw
        .registry
        .register("reader:home", ComponentKind::Reader)
        .unwrap();
    reader.set_counter("telegrams_ok", 41);
    reader.set_counter("telegrams_rejected", 2);
    reader.set_counter("readings_rejected", 1);
    reader.success();
    reader.ok();
    let sink = gw
        .registry
        .register("sink:influx", ComponentKind::Sink)
        .unwrap();
    sink.set_spool_depth(7, 1400);
    sink.set_counter("sent", 100);
    sink.set_counter("failed", 3);
    sink.error("connection refused");
    sink.degraded("delivery failing: connection refused");
    let state = gw.builder().sink_kind("influx", "influx").build();

    let a = get(&state, "/api/v1/status").await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["version"], "9.9.9-test");
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["reasons"], serde_json::json!([]));
    let meter = &v["meters"][0];
    assert_eq!(meter["name"], "home");
    assert_eq!(meter["expected_interval_s"], 10.0);
    assert_eq!(meter["telegrams_ok"], 41);
    assert_eq!(meter["telegrams_rejected"], 2);
    assert_eq!(meter["readings_rejected"], 1);
    assert!(meter["last_telegram_age_s"].as_f64().unwrap() < 5.0);
    let s = &v["sinks"][0];
    assert_eq!(s["name"], "influx");
    assert_eq!(s["kind"], "influx");
    assert_eq!(s["state"], "degraded");
    assert_eq!(s["spool_depth"], 7);
    assert_eq!(s["sent"], 100);
    assert_eq!(s["failed"], 3);
    assert_eq!(s["last_error"], "connection refused");
    let names: Vec<&str> = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reader:home", "sink:influx"]);

    // A dead sink task shows as failed, and the gateway as not ready.
    drop(sink);
    let v = get(&state, "/api/v1/status").await.json();
    assert_eq!(v["ready"], false);
    assert_eq!(v["sinks"][0]["state"], "failed");
}

// ---- the page and unknown paths

#[tokio::test]
async fn page_and_assets_are_served_with_types_and_no_cache() {
    let gw = Gw::new();
    let state = gw.state();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets");
    for (uri, file, content_type) in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/index.html", "index.html", "text/html; charset=utf-8"),
        ("/assets/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "style.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "favicon.svg", "image/svg+xml"),
    ] {
        let a = get(&state, uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        assert_eq!(a.header(header::CONTENT_TYPE), content_type, "{uri}");
        assert_eq!(a.header(header::CACHE_CONTROL), "no-cache", "{uri}");
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(a.body, on_disk, "{uri} serves assets/{file}");
    }
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let gw = Gw::new();
    let state = gw.state();
    for uri in ["/nothing", "/assets/nothing.js", "/api/v2/reading"] {
        let a = get(&state, uri).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(a.json(), serde_json::json!({"error": "not found"}));
    }
    let response = router(state)
        .oneshot(
            Request::post("/api/v1/reading")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

// ---- serve: a real socket, graceful shutdown

async fn raw_request(addr: std::net::SocketAddr, path: &str, close: bool) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let connection = if close { "close" } else { "keep-alive" };
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send request");
    stream
}

#[tokio::test]
async fn serve_answers_then_shuts_down_gracefully_ending_event_streams() {
    let gw = Gw::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, gw.state(), async move {
        let _stopped = stop_rx.await;
    }));

    let mut plain = raw_request(addr, "/healthz", true).await;
    let mut answer = String::new();
    timeout(DEADLINE, plain.read_to_string(&mut answer))
        .await
        .expect("answer within 5 s")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");

    // An open event stream, with one event through the real socket.
    let mut sse = raw_request(addr, "/api/v1/events", false).await;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let r = reading("test:serve");
    let mut published = false;
    while !String::from_utf8_lossy(&seen).contains("event: reading") {
        if !published && String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            gw.publish(&r); // the head is out: the client is subscribed
            published = true;
        }
        let n = timeout(DEADLINE, sse.read(&mut buf))
            .await
            .expect("SSE bytes within 5 s")
            .unwrap();
        assert!(n > 0, "SSE connection closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");

    // Shutdown: the server returns although the reader's sender is still alive, and the
    // event stream is ended (EOF) rather than cut mid-event.
    stop_tx.send(()).unwrap();
    timeout(DEADLINE, server)
        .await
        .expect("serve returns within 5 s of the shutdown signal")
        .expect("no panic")
        .expect("no I/O error");
    let mut rest = Vec::new();
    timeout(DEADLINE, sse.read_to_end(&mut rest))
        .await
        .expect("EOF within 5 s")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n"),
        "the chunked stream is terminated: {:?}",
        String::from_utf8_lossy(&rest)
    );
}
