//! The daemon soak: p1gw with every sink (jsonl, MQTT, InfluxDB) for `P1GW_SOAK_SECS`
//! seconds (30 in the default run; 3600 under `P1GW_SOAK=1` unless set), readings at 5/s,
//! and a fault every period, in turn: the broker restarted, InfluxDB restarted, a silent
//! network cut in front of both. Afterwards every reading must be at every sink; file
//! descriptors and `VmRSS` are sampled throughout and must not creep.

use std::time::{Duration, Instant};

use crate::harness::{
    Broker, Daemon, Delivered, Influx, Row, Subscriber, all_delivered, pick, replay_meter,
    three_sinks, wait_flowing, wait_for, write_recording,
};
use crate::proxy::{Mode, Proxy};

const RATE: u64 = 5;

fn duration() -> u64 {
    std::env::var("P1GW_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| pick(30, 3600))
}

#[test]
fn the_daemon_soaks_with_every_sink_and_periodic_faults() {
    let _lane = crate::harness::shared();
    let secs = duration();
    // A fault every `period`, lasting a quarter of it.
    let period = pick(10, 120).min(secs.max(4) / 3).max(4);
    let outage = period / 4;
    let n = (secs + 5) * RATE;
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 0);
    let mut broker = Broker::start();
    let mut influx = Influx::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-soak");
    let mqtt_proxy = Proxy::local(broker.port, Mode::Forward);
    let influx_proxy = Proxy::local(influx.port, Mode::Forward);
    let jsonl = work.path().join("readings.jsonl");
    let config = format!(
        "{}{}",
        replay_meter(&recording, &format!("{}ms", 1000 / RATE)),
        three_sinks(
            &jsonl,
            (mqtt_proxy.port, "keep_alive = \"5s\""),
            (
                &format!("http://127.0.0.1:{}", influx_proxy.port),
                "timeout = \"5s\""
            ),
            &work.path().join("spool"),
        ),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    wait_flowing(&daemon, 1.0);

    let start = Instant::now();
    let mut samples: Vec<(f64, u64, usize)> = Vec::new(); // (s, VmRSS KiB, fds)
    let mut faults: Vec<String> = Vec::new();
    let mut recoveries: Vec<f64> = Vec::new();
    let mut k = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        // Normal flow for the rest of the period.
        let next =
            Duration::from_secs(period * (k + 1)).saturating_sub(Duration::from_secs(outage));
        while start.elapsed() < next.min(Duration::from_secs(secs)) {
            samples.push((
                start.elapsed().as_secs_f64(),
                daemon.rss_kib(),
                daemon.fds(),
            ));
            std::thread::sleep(Duration::from_secs(1)); // sampling cadence
        }
        if start.elapsed() >= Duration::from_secs(secs) {
            break;
        }
        let kind = match k % 3 {
            0 => {
                broker.down();
                std::thread::sleep(Duration::from_secs(outage)); // the fault
                broker.up();
                "broker restart"
            }
            1 => {
                influx.down();
                std::thread::sleep(Duration::from_secs(outage));
                influx.up();
                "InfluxDB restart"
            }
            _ => {
                mqtt_proxy.set(Mode::Pause);
                influx_proxy.set(Mode::Pause);
                std::thread::sleep(Duration::from_secs(outage));
                mqtt_proxy.set(Mode::Forward);
                influx_proxy.set(Mode::Forward);
                "network cut"
            }
        };
        let t = Instant::now();
        wait_for(
            Duration::from_secs(120),
            "the backlog drained after a fault",
            || {
                let m = daemon.metrics();
                (m.sink("p1gw_spool_records", "mqtt") <= 2.0
                    && m.sink("p1gw_spool_records", "influx") <= 3.0)
                    .then_some(())
            },
        );
        recoveries.push(t.elapsed().as_secs_f64());
        faults.push(kind.to_owned());
        k += 1;
    }

    let produced = wait_for(
        Duration::from_secs(n / RATE + 300),
        "the recording delivered",
        || all_delivered(&daemon.metrics(), n),
    );
    let want = 1..=n;
    let delivered = Delivered::collect(&want, Duration::from_secs(60), &jsonl, &mut sub, &influx);
    let Delivered { file, mqtt, points } = &delivered;
    samples.push((
        start.elapsed().as_secs_f64(),
        daemon.rss_kib(),
        daemon.fds(),
    ));
    let m = daemon.metrics();

    // Creep: the last tenth of the samples against the second tenth (after warm-up).
    let tenth = (samples.len() / 10).max(1);
    let avg = |s: &[(f64, u64, usize)]| {
        (
            s.iter().map(|x| x.1 as f64).sum::<f64>() / s.len().max(1) as f64,
            s.iter().map(|x| x.2 as f64).sum::<f64>() / s.len().max(1) as f64,
        )
    };
    let early = avg(&samples[tenth.min(samples.len() - 1)..(2 * tenth).min(samples.len())]);
    let late = avg(&samples[samples.len() - tenth..]);
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let fds_max = samples.iter().map(|s| s.2).max().unwrap_or(0);
    recoveries.sort_by(f64::total_cmp);

    let mut row = Row::new(
        &if secs >= 120 {
            format!("soak {} min", secs / 60)
        } else {
            format!("soak {secs} s")
        },
        format!(
            "{secs} s, readings at {RATE}/s into jsonl + MQTT + InfluxDB (both behind proxies); \
             every {period} s a {outage} s fault in turn: broker restart, InfluxDB restart, silent \
             network cut ({} faults)",
            faults.len()
        ),
    );
    row.produced = produced;
    row.logs.push(daemon.log.clone());
    row.sinks(&delivered);
    row.recovery_s = recoveries.last().copied();
    row.note(format!(
        "recovery after a fault: median {:.2} s, max {:.2} s; VmRSS {:.0} → {:.0} KiB (early → \
         late average), max {rss_max}; fds {:.1} → {:.1}, max {fds_max}; failed deliveries: \
         mqtt {}, influx {}; {} samples",
        recoveries.get(recoveries.len() / 2).copied().unwrap_or(0.0),
        recoveries.last().copied().unwrap_or(0.0),
        early.0,
        late.0,
        early.1,
        late.1,
        m.sink("p1gw_sink_failed_total", "mqtt"),
        m.sink("p1gw_sink_failed_total", "influx"),
        samples.len()
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
    row.check(file.duplicates() == 0, "jsonl duplicates");
    row.check(
        points.duplicates() == 0,
        "InfluxDB points with two timestamps",
    );
    row.check(
        late.1 <= early.1 + 2.0,
        format!(
            "file descriptors crept from {:.1} to {:.1}",
            early.1, late.1
        ),
    );
    row.check(
        late.0 <= early.0 + 8192.0,
        format!("VmRSS crept from {:.0} to {:.0} KiB", early.0, late.0),
    );
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}
