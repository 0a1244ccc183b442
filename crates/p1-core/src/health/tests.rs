use std::time::Duration;

use tokio::time::{Instant, advance};

use super::*;

const INTERVAL: Duration = Duration::from_secs(10);

fn registry_with_reader_and_sink() -> (Registry, HealthHandle, HealthHandle) {
    let registry = Registry::new();
    let reader = registry
        .register("home", ComponentKind::Reader)
        .expect("register reader");
    let sink = registry
        .register("mqtt", ComponentKind::Sink)
        .expect("register sink");
    (registry, reader, sink)
}

#[tokio::test(start_paused = true)]
async fn not_ready_until_a_telegram_arrived_and_sinks_run() {
    let (registry, reader, sink) = registry_with_reader_and_sink();
    let r = registry.ready(Instant::now(), INTERVAL);
    assert!(!r.ready);
    assert_eq!(
        r.reasons,
        ["reader home: no telegram yet", "sink mqtt: starting"]
    );

    reader.ok();
    reader.success();
    sink.ok();
    let r = registry.ready(Instant::now(), INTERVAL);
    assert!(r.ready, "{r:?}");
    assert!(r.reasons.is_empty());
}

#[tokio::test(start_paused = true)]
async fn telegram_age_limit_is_three_intervals() {
    let (registry, reader, sink) = registry_with_reader_and_sink();
    reader.success();
    sink.ok();

    advance(Duration::from_secs(30)).await;
    assert!(
        registry.ready(Instant::now(), INTERVAL).ready,
        "exactly 3 × 10 s is still fine"
    );

    advance(Duration::from_secs(1)).await;
    let r = registry.ready(Instant::now(), INTERVAL);
    assert!(!r.ready);
    assert_eq!(
        r.reasons,
        ["reader home: last telegram 31 s ago (limit 30 s)"]
    );

    // A new telegram makes it ready again.
    reader.success();
    assert!(registry.ready(Instant::now(), INTERVAL).ready);

    // A reader's own interval wins over the default.
    reader.set_expected_interval(Duration::from_secs(1));
    advance(Duration::from_secs(4)).await;
    let r = registry.ready(Instant::now(), INTERVAL);
    assert_eq!(
        r.reasons,
        ["reader home: last telegram 4 s ago (limit 3 s)"]
    );
}

#[tokio::test(start_paused = true)]
async fn sink_must_be_delivering_or_spooling() {
    let (registry, reader, sink) = registry_with_reader_and_sink();
    reader.success();

    sink.degraded("broker unreachable, spooling");
    assert!(
        registry.ready(Instant::now(), INTERVAL).ready,
        "spooling counts"
    );

    sink.failed("spool: cannot open");
    let r = registry.ready(Instant::now(), INTERVAL);
    assert_eq!(r.reasons, ["sink mqtt: failed: spool: cannot open"]);

    sink.stopped();
    let r = registry.ready(Instant::now(), INTERVAL);
    assert_eq!(r.reasons, ["sink mqtt: stopped"]);
}

#[tokio::test(start_paused = true)]
async fn every_reason_is_listed() {
    let registry = Registry::new();
    let http = registry
        .register("http", ComponentKind::Http)
        .expect("register");
    http.failed("address in use");
    registry.set_shutting_down();
    let r = registry.ready(Instant::now(), INTERVAL);
    assert!(!r.ready);
    assert_eq!(
        r.reasons,
        [
            "shutting down",
            "no meter reader registered",
            "http http: failed: address in use"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_handle_shows_as_failed_and_name_can_be_reused() {
    let (registry, reader, sink) = registry_with_reader_and_sink();
    reader.success();
    sink.ok();

    let dup = registry.register("mqtt", ComponentKind::Sink);
    assert!(
        matches!(&dup, Err(Error::DuplicateComponent { name }) if name == "mqtt"),
        "{dup:?}"
    );

    // A clone keeps it alive; dropping all clones (a worker that panicked) fails it.
    let clone = sink.clone();
    drop(sink);
    assert!(registry.ready(Instant::now(), INTERVAL).ready);
    drop(clone);
    let r = registry.ready(Instant::now(), INTERVAL);
    assert_eq!(
        r.reasons,
        ["sink mqtt: failed: stopped reporting (its task ended)"]
    );

    // The restarted worker registers again, in the same place.
    let again = registry
        .register("mqtt", ComponentKind::Sink)
        .expect("re-register after drop");
    again.ok();
    assert!(registry.ready(Instant::now(), INTERVAL).ready);
    let names: Vec<String> = registry.statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["home", "mqtt"]);

    // A component that stopped on purpose and then went away stays "stopped".
    again.stopped();
    drop(again);
    let s = registry.statuses();
    assert_eq!(s[1].state, State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn snapshot_serialises_states_times_and_ages() {
    let (registry, reader, sink) = registry_with_reader_and_sink();
    reader.success();
    reader.add_counter("reconnects", 1);
    reader.add_counter("reconnects", 2);
    sink.degraded("broker down");
    sink.error("connection refused");
    sink.set_spool_depth(12, 3456);
    sink.set_counter("delivered", 7);
    advance(Duration::from_millis(2500)).await;

    let json = serde_json::to_value(registry.snapshot()).expect("serialise");
    assert_eq!(json["shutting_down"], false);
    let reader_json = &json["components"][0];
    assert_eq!(reader_json["name"], "home");
    assert_eq!(reader_json["kind"], "reader");
    assert_eq!(reader_json["state"], "starting");
    assert!(reader_json.get("reason").is_none());
    assert_eq!(reader_json["last_success_age_seconds"], 2.5);
    assert_eq!(reader_json["last_error"], serde_json::Value::Null);
    assert_eq!(reader_json["counters"]["reconnects"], 3);
    let stamp = reader_json["last_success"].as_str().expect("a string");
    let parsed: jiff::Timestamp = stamp.parse().expect("RFC 3339");
    assert!(
        stamp.ends_with('Z') && stamp.len() == "2024-02-12T22:21:14.123Z".len(),
        "{stamp}"
    );
    assert!(parsed.as_second() > 1_700_000_000);

    let sink_json = &json["components"][1];
    assert_eq!(sink_json["kind"], "sink");
    assert_eq!(sink_json["state"], "degraded");
    assert_eq!(sink_json["reason"], "broker down");
    assert_eq!(sink_json["last_success"], serde_json::Value::Null);
    assert_eq!(sink_json["last_error"]["message"], "connection refused");
    assert_eq!(sink_json["last_error"]["age_seconds"], 2.5);
    assert_eq!(sink_json["spool"]["records"], 12);
    assert_eq!(sink_json["spool"]["bytes"], 3456);
    assert_eq!(sink_json["counters"]["delivered"], 7);
}

#[tokio::test(start_paused = true)]
async fn since_moves_only_when_the_state_variant_changes() {
    let registry = Registry::new();
    let sink = registry
        .register("influx", ComponentKind::Sink)
        .expect("register");
    let mut rx = sink.subscribe();
    sink.degraded("first reason");
    let since = sink.status().since;
    assert!(rx.has_changed().expect("open"), "an update was sent");
    rx.mark_unchanged();

    advance(Duration::from_secs(5)).await;
    sink.degraded("second reason");
    assert_eq!(sink.status().since, since, "same variant, same since");
    assert_eq!(sink.status().state.reason(), Some("second reason"));

    rx.mark_unchanged();
    sink.degraded("second reason");
    assert!(
        !rx.has_changed().expect("open"),
        "no-op updates wake nobody"
    );

    advance(Duration::from_secs(5)).await;
    sink.ok();
    assert_eq!(
        sink.status().since.at.duration_since(since.at),
        Duration::from_secs(10)
    );
    assert_eq!(sink.name(), "influx");
}

#[test]
fn rfc3339_formats_utc_with_milliseconds() {
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_707_776_474, 123_456_789);
    assert_eq!(rfc3339(t), "2024-02-12T22:21:14.123Z");
    assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
}

#[tokio::test(start_paused = true)]
async fn a_storage_fault_makes_the_gateway_unready_and_the_sink_degraded_until_cleared() {
    let (registry, reader, sink) = registry_with_reader_and_sink();
    reader.ok();
    reader.success();
    sink.ok();
    assert!(registry.ready(Instant::now(), INTERVAL).ready);

    sink.set_fault(
        "spool",
        Some("disk full: /var/lib/p1gw has 0 bytes free".into()),
    );
    let r = registry.ready(Instant::now(), INTERVAL);
    assert!(!r.ready);
    assert_eq!(
        r.reasons,
        ["sink mqtt: disk full: /var/lib/p1gw has 0 bytes free"]
    );
    assert_eq!(
        sink.status().state,
        State::Degraded("disk full: /var/lib/p1gw has 0 bytes free".into())
    );
    // A delivery that succeeds meanwhile does not hide the fault.
    sink.ok();
    assert_eq!(sink.status().state.name(), "degraded");
    let view = registry.snapshot_at(Instant::now());
    let json = serde_json::to_value(&view).expect("json");
    assert_eq!(
        json["components"][1]["faults"]["spool"],
        "disk full: /var/lib/p1gw has 0 bytes free"
    );

    sink.set_fault("spool", None);
    assert_eq!(sink.status().state, State::Ok);
    assert!(registry.ready(Instant::now(), INTERVAL).ready);
    let json = serde_json::to_value(registry.snapshot_at(Instant::now())).expect("json");
    assert!(json["components"][1].get("faults").is_none());
}
