//! Scenario 1: a backend goes away for N seconds and comes back (N = 60 under `P1GW_SOAK=1`,
//! 5 otherwise): Mosquitto, InfluxDB, or both at once. Real servers are stopped (SIGTERM) and
//! started again on the same port and data, while a replay feeds a reading every 100 ms to a
//! jsonl, an MQTT and an InfluxDB sink. Every reading must reach every sink; duplicates are
//! counted; recovery is the time from the backend's return to its sink's backlog drained.

use std::time::{Duration, Instant};

use crate::harness::{
    Broker, Daemon, Delivered, Influx, Row, Subscriber, all_delivered, pick, replay_meter,
    three_sinks, wait_flowing, wait_for, write_recording,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Down {
    Broker,
    Influx,
    Both,
}

/// Readings per second of the replay (the short run still replays N = 1000 readings).
const RATE: u64 = 50;
/// What a sink's spool holds in normal flow (a tenth of a second of readings): the backlog is
/// drained once it is down to this.
const LIVE: f64 = RATE as f64 / 10.0;

fn outage(which: Down) {
    let _lane = crate::harness::shared();
    let secs = pick(5, 60);
    let before = 3; // s of normal flow before the fault
    let after = pick(12, 30); // s of live readings after it
    let n = (before + secs + after) * RATE;
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 0);

    let mut broker = Broker::start();
    let mut influx = Influx::start();
    let client = format!("p1-faults-outage-{which:?}");
    let mut sub = Subscriber::start(&broker, &client);
    let jsonl = work.path().join("readings.jsonl");
    let config = format!(
        "{}{}",
        replay_meter(&recording, &format!("{}ms", 1000 / RATE)),
        three_sinks(
            &jsonl,
            (broker.port, ""),
            (&influx.url, ""),
            &work.path().join("spool")
        ),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);

    // Flowing everywhere first.
    wait_flowing(&daemon, 5.0);

    // The fault: the backend(s) stopped for `secs` (this sleep *is* the outage).
    let down_mqtt = matches!(which, Down::Broker | Down::Both);
    let down_influx = matches!(which, Down::Influx | Down::Both);
    if down_mqtt {
        broker.down();
    }
    if down_influx {
        influx.down();
    }
    let t_down = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let m = daemon.metrics();
    let spooled_mqtt = m.sink("p1gw_spool_records", "mqtt");
    let spooled_influx = m.sink("p1gw_spool_records", "influx");
    let ready_during = daemon.get("/readyz").map(|(s, _)| s);
    if down_mqtt {
        broker.up();
    }
    if down_influx {
        influx.up();
    }
    let t_up = Instant::now();

    // Recovery: until the backlog is gone (what is left is the live batch, a reading or two).
    let mut drained_mqtt = (!down_mqtt).then_some(0.0);
    let mut drained_influx = (!down_influx).then_some(0.0);
    wait_for(
        Duration::from_secs(pick(60, 180)),
        "the backlogs drained",
        || {
            let m = daemon.metrics();
            let at = t_up.elapsed().as_secs_f64();
            if drained_mqtt.is_none() && m.sink("p1gw_spool_records", "mqtt") <= LIVE {
                drained_mqtt = Some(at);
            }
            if drained_influx.is_none() && m.sink("p1gw_spool_records", "influx") <= LIVE {
                drained_influx = Some(at);
            }
            (drained_mqtt.is_some() && drained_influx.is_some()).then_some(())
        },
    );
    let recovery = drained_mqtt
        .unwrap_or(0.0)
        .max(drained_influx.unwrap_or(0.0));

    // The end of the recording, and everything delivered.
    let produced = wait_for(
        Duration::from_secs(n / RATE + 120),
        "the whole recording",
        || {
            let m = daemon.metrics();
            all_delivered(&m, n).filter(|_| m.sink("p1gw_sink_sent_total", "influx") as u64 >= n)
        },
    );
    let want = 1..=n;
    let delivered = Delivered::collect(&want, Duration::from_secs(30), &jsonl, &mut sub, &influx);
    let Delivered { file, mqtt, points } = &delivered;

    let what = match which {
        Down::Broker => "Mosquitto",
        Down::Influx => "InfluxDB",
        Down::Both => "Mosquitto and InfluxDB",
    };
    let mut row = Row::new(
        &format!("1. {what} down {secs} s"),
        format!(
            "{what} stopped (SIGTERM) for {secs} s, started again on the same port and data; \
             replay at {RATE}/s into jsonl + MQTT + InfluxDB"
        ),
    );
    row.produced = produced;
    row.logs.push(daemon.log.clone());
    row.sinks(&delivered);
    row.recovery_s = Some(recovery);
    row.note(format!(
        "spooled at the end of the outage: mqtt {spooled_mqtt}, influx {spooled_influx}; \
         /readyz during it: {ready_during:?}; outage measured {:.1} s",
        (t_up - t_down).as_secs_f64()
    ));
    if let Some(s) = drained_mqtt.filter(|_| down_mqtt) {
        row.note(format!("mqtt recovered in {s:.2} s"));
    }
    if let Some(s) = drained_influx.filter(|_| down_influx) {
        row.note(format!("influx recovered in {s:.2} s"));
    }
    if mqtt.redelivered > 0 {
        row.note(format!(
            "{} broker-to-subscriber redeliveries (same message id) not counted",
            mqtt.redelivered
        ));
    }
    row.check(produced == n, format!("produced {produced} of {n}"));
    for (name, t) in delivered.each() {
        row.check_complete(name, t, want.clone());
        row.check(
            t.seen.keys().all(|id| want.contains(id)),
            format!("{name} has readings never produced"),
        );
    }
    row.check(
        mqtt.out_of_order == 0,
        format!("{} MQTT readings arrived out of order", mqtt.out_of_order),
    );
    row.check(
        file.duplicates() == 0,
        "the jsonl sink duplicated readings without a crash",
    );
    row.check(
        points.duplicates() == 0,
        "a reading reached InfluxDB with two timestamps",
    );
    if down_mqtt {
        row.check(
            spooled_mqtt >= 1.0,
            "nothing spooled for mqtt while the broker was down",
        );
    }
    if down_influx {
        row.check(
            spooled_influx >= 1.0,
            "nothing spooled for influx while InfluxDB was down",
        );
    }
    row.check(daemon.exited().is_none(), "p1gw exited during the outage");
    row.finish();
}

#[test]
fn broker_down_then_back_loses_nothing() {
    outage(Down::Broker);
}

#[test]
fn influxdb_down_then_back_loses_nothing() {
    outage(Down::Influx);
}

#[test]
fn both_backends_down_then_back_lose_nothing() {
    outage(Down::Both);
}
