//! Scenario 5: the spool fills up during a long outage. `[spool] max_bytes = "1MiB"` (the
//! smallest the configuration allows) while both backends refuse connections and a replay
//! pours in large readings (a 4000-digit text message each: about 6 KB per MQTT record).
//! The oldest records are evicted and counted in `p1gw_spool_evicted_total`, the daemon keeps
//! running, and when the backends return the newest readings arrive: per sink, delivered +
//! evicted + dropped = produced, but for one batch the MQTT sink may already have taken from
//! the spool when its records were evicted: it is still sent (docs/reliability.md, Findings).

use std::time::{Duration, Instant};

use crate::harness::{
    Broker, Daemon, Influx, Row, Subscriber, influx_sink, mqtt_sink, pick, replay_meter, spool,
    wait_for, write_recording,
};
use crate::proxy::{Mode, Proxy};

#[test]
fn a_full_spool_evicts_the_oldest_counts_them_and_recovers() {
    let _lane = crate::harness::shared();
    let n: u64 = pick(4000, 30000);
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 4000);
    let broker = Broker::start();
    let influx = Influx::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-full");
    let mqtt_proxy = Proxy::local(broker.port, Mode::Down);
    let influx_proxy = Proxy::local(influx.port, Mode::Down);
    let config = format!(
        "{}{}{}{}",
        replay_meter(&recording, "2ms"),
        mqtt_sink(mqtt_proxy.port, "backlog_rate = 200"),
        influx_sink(&format!("http://127.0.0.1:{}", influx_proxy.port), ""),
        spool(&work.path().join("spool"), "max_bytes = \"1MiB\""),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    let rss_start = daemon.rss_kib();
    let mut rss_max = rss_start;
    let mut bytes_max = 0.0f64;
    let full = wait_for(
        Duration::from_secs(n / 100 + 120),
        "the whole recording spooled",
        || {
            let m = daemon.metrics();
            rss_max = rss_max.max(daemon.rss_kib());
            bytes_max = bytes_max
                .max(m.sink("p1gw_spool_bytes", "mqtt"))
                .max(m.sink("p1gw_spool_bytes", "influx"));
            let produced = m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64;
            let settled = ["mqtt", "influx"].iter().all(|s| {
                (m.sink("p1gw_sink_spooled_total", s)
                    + m.get(
                        "p1gw_sink_dropped_total",
                        &[("sink", s), ("reason", "lagged")],
                    )) as u64
                    >= n
            });
            (produced >= n && settled).then_some(m)
        },
    );
    let produced = full.get("p1gw_telegrams_total", &[("meter", "home")]) as u64;
    let evicted = |s: &str| full.sink("p1gw_spool_evicted_total", s) as u64;
    let lagged = |s: &str| {
        full.get(
            "p1gw_sink_dropped_total",
            &[("sink", s), ("reason", "lagged")],
        ) as u64
    };
    let spooled = |s: &str| full.sink("p1gw_spool_records", s) as u64;
    let healthy = daemon.get("/healthz").map(|(s, _)| s);
    let ready = daemon.get("/readyz");

    mqtt_proxy.set(Mode::Forward);
    influx_proxy.set(Mode::Forward);
    let t_up = Instant::now();
    wait_for(
        Duration::from_secs(pick(120, 300)),
        "the spools drained",
        || {
            let m = daemon.metrics();
            (m.sink("p1gw_spool_records", "mqtt") == 0.0
                && m.sink("p1gw_spool_records", "influx") == 0.0)
                .then_some(())
        },
    );
    let recovery = t_up.elapsed().as_secs_f64();
    let end = daemon.metrics();
    let sent = |s: &str| end.sink("p1gw_sink_sent_total", s) as u64;
    let mqtt = wait_for(Duration::from_secs(30), "the MQTT backlog", || {
        let t = sub.tally();
        (t.unique() >= sent("mqtt")).then_some(t)
    });
    let points = wait_for(Duration::from_secs(30), "the InfluxDB backlog", || {
        let t = influx.tally("home");
        (t.unique() >= sent("influx")).then_some(t)
    });

    let mut row = Row::new(
        "5. spool full during a long outage",
        format!(
            "[spool] max_bytes = 1MiB; both backends refused while {n} readings of ~6 KB (MQTT \
             record) came at 500/s; then the backends returned"
        ),
    );
    row.produced = produced;
    row.logs.push(daemon.log.clone());
    row.sink("mqtt", &mqtt);
    row.sink("influx", &points);
    row.recovery_s = Some(recovery);
    row.note(format!(
        "evicted: mqtt {}, influx {}; dropped (lagged): mqtt {}, influx {}; largest spool seen \
         {:.0} bytes; VmRSS {} → max {} KiB; /healthz {:?}, /readyz {:?} while full",
        evicted("mqtt"),
        evicted("influx"),
        lagged("mqtt"),
        lagged("influx"),
        bytes_max,
        rss_start,
        rss_max,
        healthy,
        ready.as_ref().map(|(s, _)| *s)
    ));
    row.check(produced == n, format!("produced {produced} of {n}"));
    row.check(healthy == Some(200), "p1gw not healthy with a full spool");
    row.check(
        bytes_max <= (1 << 20) as f64,
        format!("a spool grew to {bytes_max} bytes, over max_bytes"),
    );
    let mut excess = Vec::new();
    for (name, t) in [("mqtt", &mqtt), ("influx", &points)] {
        let (evicted, lagged) = (evicted(name), lagged(name));
        row.check(
            evicted > 0,
            format!("{name}: nothing evicted: the spool never filled"),
        );
        // What was in the spool when the backends returned arrives, all of it.
        let kept = spooled(name);
        if lagged == 0 {
            row.check(
                t.has_all(n - kept + 1..=n),
                format!(
                    "{name}: the newest {kept} readings (the spool's content) did not all arrive"
                ),
            );
        } else {
            row.check(
                t.unique() >= kept,
                format!("{name}: fewer than the {kept} spooled arrived"),
            );
        }
        // Delivered + evicted + dropped = produced, except that a batch the sink had already
        // taken from the spool when its records were evicted is still sent: those readings
        // count as evicted *and* arrive (at most what is in flight: one MQTT batch of 512 records;
        // InfluxDB's 2 requests in flight of up to 5 000 points each).
        let total = t.unique() + evicted + lagged;
        let batch = if name == "mqtt" { 512 } else { 2 * 5000 };
        row.check(
            total >= n && total - n <= batch,
            format!(
                "{name}: delivered {} + evicted {evicted} + dropped {lagged} = {total}, produced {n}",
                t.unique()
            ),
        );
        if total > n {
            excess.push(format!("{name} {}", total - n));
        }
        row.check(t.duplicates() == 0, format!("{name}: duplicates"));
    }
    if !excess.is_empty() {
        row.note(format!(
            "evicted but still delivered (a batch taken from the spool before the eviction): {}",
            excess.join(", ")
        ));
    }
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}
