//! Scenario 2: a silent network cut. A proxy between p1gw and both backends stops forwarding
//! for 10 s (30 s under `P1GW_SOAK=1`) without closing anything, as a dead Wi-Fi link or a
//! pulled cable behind a switch would: no RST, no FIN, only silence. p1gw has to notice
//! (MQTT keep-alive, the InfluxDB request timeout), spool, reconnect through the cut once it
//! heals, and deliver everything: at least once, duplicates counted.

use std::time::{Duration, Instant};

use crate::harness::{
    Broker, Daemon, Delivered, Influx, Row, Subscriber, all_delivered, pick, replay_meter,
    three_sinks, wait_flowing, wait_for, write_recording,
};
use crate::proxy::{Mode, Proxy};

/// Readings per second of the replay (the short run replays N = 1050 readings).
const RATE: u64 = 50;
/// What a sink's spool holds in normal flow (a tenth of a second of readings).
const LIVE: f64 = RATE as f64 / 10.0;

#[test]
fn a_silent_network_cut_loses_nothing() {
    let _lane = crate::harness::shared();
    let secs = pick(10, 30);
    let n = (3 + secs + pick(8, 30)) * RATE;
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 0);

    let broker = Broker::start();
    let influx = Influx::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-netcut");
    let mqtt_proxy = Proxy::local(broker.port, Mode::Forward);
    let influx_proxy = Proxy::local(influx.port, Mode::Forward);
    let jsonl = work.path().join("readings.jsonl");
    let config = format!(
        "{}{}",
        replay_meter(&recording, &format!("{}ms", 1000 / RATE)),
        three_sinks(
            &jsonl,
            (mqtt_proxy.port, "keep_alive = \"3s\""),
            (
                &format!("http://127.0.0.1:{}", influx_proxy.port),
                "timeout = \"3s\""
            ),
            &work.path().join("spool"),
        ),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    wait_flowing(&daemon, 5.0);
    let connections_before = mqtt_proxy.accepted();

    // The cut (this sleep is the fault).
    mqtt_proxy.set(Mode::Pause);
    influx_proxy.set(Mode::Pause);
    std::thread::sleep(Duration::from_secs(secs));
    let m = daemon.metrics();
    let spooled = (
        m.sink("p1gw_spool_records", "mqtt"),
        m.sink("p1gw_spool_records", "influx"),
    );
    let failed = (
        m.sink("p1gw_sink_failed_total", "mqtt"),
        m.sink("p1gw_sink_failed_total", "influx"),
    );
    let mqtt_state = daemon
        .component("sink:mqtt")
        .map(|c| c["state"].as_str().unwrap_or("?").to_owned());
    mqtt_proxy.set(Mode::Forward);
    influx_proxy.set(Mode::Forward);
    let t_up = Instant::now();

    let mut drained = (None, None);
    wait_for(
        Duration::from_secs(pick(60, 120)),
        "the backlogs drained",
        || {
            let m = daemon.metrics();
            let at = t_up.elapsed().as_secs_f64();
            if drained.0.is_none() && m.sink("p1gw_spool_records", "mqtt") <= LIVE {
                drained.0 = Some(at);
            }
            if drained.1.is_none() && m.sink("p1gw_spool_records", "influx") <= LIVE {
                drained.1 = Some(at);
            }
            (drained.0.is_some() && drained.1.is_some()).then_some(())
        },
    );
    let produced = wait_for(
        Duration::from_secs(n / RATE + 120),
        "the whole recording delivered",
        || all_delivered(&daemon.metrics(), n),
    );
    let want = 1..=n;
    let delivered = Delivered::collect(&want, Duration::from_secs(30), &jsonl, &mut sub, &influx);
    let Delivered { file, mqtt, points } = &delivered;

    let mut row = Row::new(
        &format!("2. silent network cut {secs} s"),
        format!(
            "TCP proxy in front of Mosquitto and InfluxDB stops forwarding (connections held \
             open, no FIN/RST) for {secs} s; MQTT keep_alive 3 s, InfluxDB timeout 3 s"
        ),
    );
    row.produced = produced;
    row.logs.push(daemon.log.clone());
    row.sinks(&delivered);
    let (dm, di) = (drained.0.unwrap_or(0.0), drained.1.unwrap_or(0.0));
    row.recovery_s = Some(dm.max(di));
    row.note(format!(
        "spooled at the end of the cut: mqtt {}, influx {}; failed deliveries: mqtt {}, influx {}; \
         mqtt sink {} during the cut; MQTT connections through the proxy: {} before, {} after; \
         recovered: mqtt {dm:.2} s, influx {di:.2} s",
        spooled.0,
        spooled.1,
        failed.0,
        failed.1,
        mqtt_state.as_deref().unwrap_or("?"),
        connections_before,
        mqtt_proxy.accepted()
    ));
    if mqtt.redelivered > 0 {
        row.note(format!(
            "{} broker-to-subscriber redeliveries not counted",
            mqtt.redelivered
        ));
    }
    row.check(produced == n, format!("produced {produced} of {n}"));
    for (name, t) in delivered.each() {
        row.check_complete(name, t, want.clone());
    }
    row.check(
        mqtt.out_of_order == 0,
        format!("{} MQTT readings arrived out of order", mqtt.out_of_order),
    );
    row.check(file.duplicates() == 0, "jsonl duplicated readings");
    row.check(
        points.duplicates() == 0,
        "a reading reached InfluxDB with two timestamps",
    );
    row.check(
        spooled.0 >= 1.0 && spooled.1 >= 1.0,
        "readings spooled during the cut",
    );
    row.finish();
}
