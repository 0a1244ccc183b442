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
