use std::sync::Arc;
use std::time::Duration;

use p1_core::{ComponentKind, Reading, Registry};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::*;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/telegrams")
}

struct Harness {
    rx: broadcast::Receiver<Arc<Reading>>,
    latest: watch::Receiver<Option<Arc<Reading>>>,
    registry: Registry,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(source: SourceConfig) -> Harness {
    let (tx, rx) = broadcast::channel(4096);
    let (latest_tx, latest) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:test", ComponentKind::Reader)
        .expect("register");
    let stop = CancellationToken::new();
    let cfg = ReaderConfig {
        meter: Arc::from("test"),
        tz: None,
        source,
        max_telegram_bytes: 16 * 1024,
        expected_interval: Duration::from_secs(10),
        guard: Some(crate::GuardConfig::default()),
        codes: Default::default(),
    };
    let task = tokio::spawn(run_reader(cfg, tx, latest_tx, health, stop.clone()));
    Harness {
        rx,
        latest,
        registry,
        stop,
        task,
    }
}

async fn next(rx: &mut broadcast::Receiver<Arc<Reading>>) -> Arc<Reading> {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a reading within 60 s")
        .expect("channel open")
}

#[tokio::test]
async fn replaying_the_fixtures_publishes_every_valid_telegram_in_order() {
    let mut h = start(SourceConfig::Replay {
        path: fixtures(),
        pace: Pace::Fast,
        repeat: false,
    });
    tokio::time::timeout(Duration::from_secs(20), &mut h.task)
        .await
        .expect("replay ends")
        .expect("reader task");
    let mut readings = Vec::new();
    while let Ok(r) = h.rx.try_recv() {
        readings.push(r);
    }
    assert_eq!(readings.len(), 23, "27 fixtures, 4 CRC mismatches");
    assert_eq!(&*readings[0].meter, "test");
    assert!(readings[0].source.starts_with("replay:"));
    let status = h.registry.statuses().into_iter().next().expect("reader");
    assert_eq!(status.counters.get("telegrams_ok"), Some(&23));
    assert_eq!(status.counters.get("telegrams_rejected"), Some(&4));
    assert_eq!(status.state, p1_core::State::Stopped);
    assert!(h.latest.borrow().is_some());
}

#[tokio::test(start_paused = true)]
async fn replay_at_a_fixed_interval_paces_the_telegrams() {
    let mut h = start(SourceConfig::Replay {
        path: fixtures().join("iceland_veitur_iskra_ie5e_antonp1.txt"),
        pace: Pace::Every(Duration::from_secs(10)),
        repeat: true,
    });
    let t0 = tokio::time::Instant::now();
    let _first = next(&mut h.rx).await;
    let _second = next(&mut h.rx).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(10),
        "{:?}",
        t0.elapsed()
    );
    h.stop.cancel();
    h.task.await.expect("reader task");
}

/// A recording several read blocks long: telegrams (and lines) cut by a
/// block boundary are joined, none is lost or counted twice, fast or paced.
#[tokio::test(start_paused = true)]
async fn a_recording_larger_than_a_read_block_replays_every_telegram() {
    let telegram = std::fs::read(fixtures().join("netherlands_kaifa_dsmr42.txt")).expect("fixture");
    let n = 3 * crate::source::REPLAY_BLOCK / telegram.len() + 7;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.txt");
    std::fs::write(&path, telegram.repeat(n)).expect("write");
    for pace in [Pace::Fast, Pace::Every(Duration::from_millis(10))] {
        let mut h = start(SourceConfig::Replay {
            path: path.clone(),
            pace,
            repeat: false,
        });
        let mut got = 0;
        while got < n {
            next(&mut h.rx).await;
            got += 1;
        }
        tokio::time::timeout(Duration::from_secs(60), &mut h.task)
            .await
            .expect("replay ends")
            .expect("reader task");
        assert!(h.rx.try_recv().is_err(), "{pace:?}: no reading beyond {n}");
        let status = h.registry.statuses().into_iter().next().expect("reader");
        assert_eq!(
            status.counters.get("telegrams_ok"),
            Some(&(n as u64)),
            "{pace:?}"
        );
        assert_eq!(
            status.counters.get("telegrams_rejected"),
            Some(&0),
            "{pace:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn simulated_veitur_meter_advances_plausibly() {
    let mut h = start(SourceConfig::Simulate {
        profile: Profile::Veitur,
        interval: Duration::from_secs(10),
    });
    let mut last_import = 0.0;
    let mut last_water = 0.0;
    for _ in 0..50 {
        let r = next(&mut h.rx).await;
        assert_eq!(r.header, "ISk5\\2MIE5E-200");
        assert_eq!(r.crc, "absent");
        let import = r.number("energy_import_total").expect("import total");
        let water = r.number("hot_water_volume").expect("hot water");
        assert!(import >= last_import, "energy never decreases");
        assert!(water >= last_water, "volume never decreases");
        let power = r.number("power_import").expect("power");
        assert!((0.0..5.0).contains(&power), "{power} kW");
        // Energy advanced by power × 10 s (rounding to Wh).
        if last_import > 0.0 {
            let delta_kwh = import - last_import;
            assert!(
                (delta_kwh - power * 10.0 / 3600.0).abs() < 0.0011,
                "{delta_kwh} vs {power}"
            );
        }
        let supply = r.number("heat_supply_temperature").expect("supply");
        let ret = r.number("heat_return_temperature").expect("return");
        assert!(supply > ret);
        last_import = import;
        last_water = water;
    }
    h.stop.cancel();
    h.task.await.expect("reader task");
}

#[tokio::test(start_paused = true)]
async fn simulated_dsmr5_and_belgium_meters_carry_valid_crcs() {
    for profile in [Profile::Dsmr5, Profile::Belgium] {
        let mut h = start(SourceConfig::Simulate {
            profile,
            interval: Duration::from_secs(1),
        });
        let r = next(&mut h.rx).await;
        assert_eq!(r.crc, "valid", "{profile:?}");
        assert!(r.get("gas_volume").is_some(), "{profile:?}");
        h.stop.cancel();
        h.task.await.expect("reader task");
    }
}

#[tokio::test]
async fn tcp_source_reads_and_reconnects_after_the_peer_closes() {
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let telegram = std::fs::read(fixtures().join("netherlands_kaifa_dsmr42.txt")).expect("fixture");
    let mut h = start(SourceConfig::Tcp {
        address,
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
    });
    for round in 0..3 {
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("reader connects")
            .expect("accept");
        // Split the telegram across writes, as a bridge would.
        let (a, b) = telegram.split_at(100);
        conn.write_all(a).await.expect("write");
        conn.write_all(b).await.expect("write");
        let r = next(&mut h.rx).await;
        assert_eq!(r.header, "KFM5KAIFA-METER", "round {round}");
        drop(conn);
    }
    let status = h.registry.statuses().into_iter().next().expect("reader");
    assert!(status.counters.get("reconnects").copied().unwrap_or(0) >= 2);
    h.stop.cancel();
    h.task.await.expect("reader task");
}

#[test]
fn simulated_telegrams_parse_with_every_line_named() {
    let tz = jiff::tz::db().get("Atlantic/Reykjavik").expect("zone");
    let mut m = SimulatedMeter::new(Profile::Veitur, 42);
    let bytes = m.telegram(jiff::Timestamp::now(), 10.0, &tz);
    let t =
        p1_telegram::Telegram::parse(&bytes, p1_telegram::ParseOptions::default()).expect("parses");
    let unnamed: Vec<_> = t
        .objects
        .iter()
        .filter(|o| o.name.is_none())
        .map(|o| String::from_utf8_lossy(o.code_text).into_owned())
        .collect();
    assert_eq!(
        unnamed,
        ["0-1:24.2.10"],
        "only Veitur's unknown register is unnamed"
    );
}

/// Every profile, straight from the simulated meter over eight hours (dawn to
/// afternoon, so the DSMR and Belgian profiles also export solar power):
/// totals never decrease, and each step's energy delta matches the power
/// the telegram reports over the interval (within the registers' rounding).
#[test]
fn simulated_totals_never_decrease_and_match_the_power_for_every_profile() {
    const INTERVAL_S: f64 = 60.0;
    let start: jiff::Timestamp = "2024-06-01T04:00:00Z".parse().expect("time");
    for profile in [Profile::Veitur, Profile::Dsmr5, Profile::Belgium] {
        let tz = jiff::tz::TimeZone::UTC;
        let mut meter = SimulatedMeter::new(profile, 7);
        let mut last: Option<(f64, f64, Vec<f64>)> = None;
        let (mut exported, mut imported) = (false, false);
        for step in 0..480 {
            let now = start + jiff::SignedDuration::from_secs(60 * step);
            let bytes = meter.telegram(now, INTERVAL_S, &tz);
            let t = p1_telegram::Telegram::parse(&bytes, p1_telegram::ParseOptions::default())
                .unwrap_or_else(|e| panic!("{profile:?} step {step}: {e}"));
            let r = Reading::from_telegram(Arc::from("sim"), Arc::from("sim"), &t, &tz, now);
            let n = |name: &str| {
                r.number(name)
                    .unwrap_or_else(|| panic!("{profile:?}: no {name}"))
            };
            let (import, export) = match profile {
                Profile::Veitur => (n("energy_import_total"), n("energy_export_total")),
                Profile::Dsmr5 | Profile::Belgium => (
                    n("energy_import_tariff1") + n("energy_import_tariff2"),
                    n("energy_export_tariff1") + n("energy_export_tariff2"),
                ),
            };
            // Registers that must never fall: water (Veitur) or gas.
            let others = match profile {
                Profile::Veitur => vec![n("hot_water_volume")],
                Profile::Dsmr5 | Profile::Belgium => vec![n("gas_volume")],
            };
            let (p_in, p_out) = (n("power_import"), n("power_export"));
            assert!(
                p_in >= 0.0 && p_out >= 0.0 && p_in * p_out == 0.0,
                "{p_in} {p_out}"
            );
            imported |= p_in > 0.0;
            exported |= p_out > 0.0;
            // Veitur's registers are whole Wh; the others split the total
            // into two tariff registers, each rounded to a Wh.
            let tolerance = match profile {
                Profile::Veitur => 0.0011,
                Profile::Dsmr5 | Profile::Belgium => 0.0026,
            };
            if let Some((last_import, last_export, last_others)) = &last {
                assert!(
                    import >= *last_import,
                    "{profile:?} step {step}: import fell"
                );
                assert!(
                    export >= *last_export,
                    "{profile:?} step {step}: export fell"
                );
                for (a, b) in others.iter().zip(last_others) {
                    assert!(a >= b, "{profile:?} step {step}: a register fell");
                }
                let hours = INTERVAL_S / 3600.0;
                assert!(
                    ((import - last_import) - p_in * hours).abs() < tolerance,
                    "{profile:?} step {step}: import delta {} vs {p_in} kW",
                    import - last_import
                );
                assert!(
                    ((export - last_export) - p_out * hours).abs() < tolerance,
                    "{profile:?} step {step}: export delta {} vs {p_out} kW",
                    export - last_export
                );
            }
            last = Some((import, export, others));
        }
        assert!(imported, "{profile:?}: some import");
        if profile != Profile::Veitur {
            assert!(exported, "{profile:?}: some solar export");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_handle_reports_status_and_the_reader_stops_with_its_last_handle() {
    let (tx, mut rx) = broadcast::channel(64);
    let (latest, _) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:sim", ComponentKind::Reader)
        .expect("register");
    let cfg = ReaderConfig {
        meter: Arc::from("sim"),
        tz: None,
        source: SourceConfig::Simulate {
            profile: Profile::Dsmr5,
            interval: Duration::from_secs(10),
        },
        max_telegram_bytes: 16 * 1024,
        expected_interval: Duration::from_secs(10),
        guard: Some(crate::GuardConfig::default()),
        codes: Default::default(),
    };
    let (handle, task) = ReaderHandle::spawn(cfg, tx, latest, health, CancellationToken::new());
    assert_eq!(handle.meter(), "sim");
    for _ in 0..3 {
        next(&mut rx).await;
    }
    let status = handle.status().await.expect("status");
    assert_eq!(&*status.meter, "sim");
    assert_eq!(status.source, "simulate:dsmr5");
    assert!(status.connected);
    assert_eq!((status.telegrams_ok, status.telegrams_rejected), (3, 0));
    assert_eq!(status.line, LineStats::default());
    assert!(
        !handle.retrigger().await.expect("retrigger"),
        "a simulated meter has no request line"
    );
    // A clone keeps it alive; dropping the last handle ends the reader.
    let clone = handle.clone();
    drop(handle);
    assert!(clone.status().await.is_ok());
    drop(clone);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the reader ends")
        .expect("task");
    assert_eq!(registry.statuses()[0].state, p1_core::State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_reader_answers_reader_gone() {
    let (tx, _rx) = broadcast::channel(4);
    let (latest, _) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:once", ComponentKind::Reader)
        .expect("register");
    let cfg = ReaderConfig {
        meter: Arc::from("once"),
        tz: None,
        source: SourceConfig::Replay {
            path: fixtures().join("netherlands_kaifa_dsmr42.txt"),
            pace: Pace::Fast,
            repeat: false,
        },
        max_telegram_bytes: 16 * 1024,
        expected_interval: Duration::from_secs(10),
        guard: Some(crate::GuardConfig::default()),
        codes: Default::default(),
    };
    let (handle, task) = ReaderHandle::spawn(cfg, tx, latest, health, CancellationToken::new());
    task.await.expect("the replay ends");
    let e = handle.status().await.expect_err("gone");
    assert_eq!(e.to_string(), "the reader of meter \"once\" has stopped");
}

#[test]
fn the_meter_clock_is_watched_for_jumps_the_future_and_contradicting_dst_flags() {
    let t = |s: &str| s.parse::<jiff::Timestamp>().expect("timestamp");
    let now = t("2024-03-01T12:00:00Z");
    let mut clock = ClockCheck::default();
    let none: [&str; 0] = [];
    assert_eq!(
        clock.check(Some(t("2024-03-01T11:59:59Z")), now, false),
        none
    );
    assert_eq!(
        clock.check(Some(t("2024-03-01T11:00:00Z")), now, false),
        ["backwards"]
    );
    // Four minutes ahead is drift, tolerated; years ahead is not.
    assert_eq!(
        clock.check(Some(t("2024-03-01T12:04:00Z")), now, false),
        none
    );
    assert_eq!(
        clock.check(Some(t("2030-01-01T00:00:00Z")), now, false),
        ["future"]
    );
    // Back from the future is a jump backwards too.
    assert_eq!(
        clock.check(Some(t("2024-03-01T12:00:01Z")), now, false),
        ["backwards"]
    );
    // A reading without a clock is never odd by time, and is not remembered.
    assert_eq!(clock.check(None, now, false), none);
    assert_eq!(
        clock.check(Some(t("2024-03-01T12:00:02Z")), now, true),
        ["dst_flag"]
    );

    let dst = |zone: &str, stamp: &str| {
        let frame = format!("/ISK5\\2M550T-1012\r\n\r\n0-0:1.0.0({stamp})\r\n!\r\n");
        let telegram =
            p1_telegram::Telegram::parse(frame.as_bytes(), Default::default()).expect("telegram");
        let tz = jiff::tz::db().get(zone).expect("zone");
        crate::pipeline::dst_contradicts(&telegram, &tz)
    };
    let ams = "Europe/Amsterdam";
    assert!(!dst(ams, "240115120000W"));
    assert!(dst(ams, "240115120000S"), "summer time flagged in January");
    assert!(!dst(ams, "240715120000S"));
    assert!(dst(ams, "240715120000W"), "winter time flagged in July");
    // The repeated autumn hour: the flag picks which one, so it never contradicts.
    assert!(!dst(ams, "241027023000S"));
    assert!(!dst(ams, "241027023000W"));
    // Reykjavik keeps no summer time; no flag, nothing to contradict.
    assert!(dst("Atlantic/Reykjavik", "240715120000S"));
    assert!(!dst("Atlantic/Reykjavik", "240715120000W"));
    assert!(!dst(ams, "240715120000"));
}

#[test]
fn odd_meter_clocks_are_flagged_but_every_reading_flows() {
    let (tx, mut rx) = broadcast::channel(16);
    let (latest, _) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:clock", ComponentKind::Reader)
        .expect("register");
    let tz = jiff::tz::db().get("Europe/Amsterdam").expect("zone");
    let mut pipeline = Pipeline::new(
        Arc::from("clock"),
        Arc::from("test"),
        Some(tz),
        16 * 1024,
        tx,
        latest,
        health,
    );
    for stamp in [
        "240115120000W",
        "240115110000W",
        "240115120000S",
        "391231235959W",
    ] {
        let frame = format!("/ISK5\\2M550T-1012\r\n\r\n0-0:1.0.0({stamp})\r\n!\r\n");
        pipeline.feed(frame.as_bytes());
    }
    assert_eq!(pipeline.telegrams_ok(), 4);
    for _ in 0..4 {
        assert!(rx.try_recv().is_ok(), "every reading is published");
    }
}

/// A telegram of meter "guard" with import total `total` at 12:00:`secs`.
fn guarded_frame(secs: u32, total: &str) -> String {
    format!(
        "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(123456)\r\n1-0:0.9.1(1200{secs:02})\r\n1-0:0.9.2(240212)\r\n1-0:1.8.0({total}*kWh)\r\n!\r\n"
    )
}

#[test]
fn the_spike_guard_keeps_a_zero_spike_from_the_channel_and_latest() {
    let (tx, mut rx) = broadcast::channel(16);
    let (latest_tx, latest) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:guard", ComponentKind::Reader)
        .expect("register");
    let mut pipeline = Pipeline::new(
        Arc::from("guard"),
        Arc::from("test"),
        Some(jiff::tz::TimeZone::UTC),
        16 * 1024,
        tx,
        latest_tx,
        health,
    )
    .with_guard(Some(GuardConfig::default()));
    let total = |r: &Reading| r.number("energy_import_total");
    pipeline.feed(guarded_frame(0, "001988.284").as_bytes());
    pipeline.feed(guarded_frame(10, "000000.000").as_bytes());
    pipeline.feed(guarded_frame(20, "001988.290").as_bytes());
    assert_eq!(
        (
            pipeline.telegrams_ok(),
            pipeline.readings_rejected(),
            pipeline.telegrams_done()
        ),
        (2, 1, 3)
    );
    let first = rx.try_recv().expect("first reading");
    let second = rx.try_recv().expect("third reading");
    assert!(rx.try_recv().is_err(), "the zero spike is never published");
    assert_eq!(total(&first), Some(1988.284));
    assert_eq!(total(&second), Some(1988.29));
    let shown = latest.borrow().clone().expect("latest");
    assert_eq!(total(&shown), Some(1988.29));
    let status = registry
        .statuses()
        .into_iter()
        .find(|s| s.name == "reader:guard")
        .expect("status");
    assert_eq!(status.counters.get("readings_rejected"), Some(&1));
    let error = status.last_error.expect("last error").message;
    assert!(error.contains("fell to 0 from 1988.284"), "{error}");
}

#[test]
fn without_the_spike_guard_every_reading_flows() {
    let (tx, mut rx) = broadcast::channel(16);
    let (latest_tx, _latest) = watch::channel(None);
    let health = Registry::new()
        .register("reader:noguard", ComponentKind::Reader)
        .expect("register");
    let mut pipeline = Pipeline::new(
        Arc::from("noguard"),
        Arc::from("test"),
        Some(jiff::tz::TimeZone::UTC),
        16 * 1024,
        tx,
        latest_tx,
        health,
    )
    .with_guard(None);
    pipeline.feed(guarded_frame(0, "001988.284").as_bytes());
    pipeline.feed(guarded_frame(10, "000000.000").as_bytes());
    assert_eq!(pipeline.telegrams_ok(), 2);
    assert_eq!(pipeline.readings_rejected(), 0);
    assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
}

#[test]
fn tcp_reconnect_waits_are_capped_and_stay_jittered() {
    // The configured default, 1 s doubling to 60 s: after a few failures the
    // waits would be a minute long; a tcp source caps them.
    let mut backoff = crate::source::tcp_backoff(Duration::from_secs(1), Duration::from_secs(60));
    let delays: Vec<Duration> = (0..50).map(|_| backoff.next_delay()).collect();
    assert_eq!(delays[0], Duration::from_secs(1), "the first step is min");
    assert!(delays.iter().all(|d| *d <= TCP_RETRY_CAP), "{delays:?}");
    assert!(TCP_RETRY_CAP < Duration::from_secs(2));
    let distinct: std::collections::BTreeSet<_> = delays[2..].iter().collect();
    assert!(distinct.len() > 10, "jittered: {delays:?}");
    // A min above the cap is capped too.
    let mut slow = crate::source::tcp_backoff(Duration::from_secs(5), Duration::from_secs(60));
    assert_eq!(slow.next_delay(), TCP_RETRY_CAP);
}
