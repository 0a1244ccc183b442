//! Scenario 10: the meter's clock misbehaves. A recording of a Dutch meter (Europe/Amsterdam)
//! whose clock goes back an hour, then carries a summer-time flag in January, then jumps to
//! 2039 and back, stands still, and goes back onto an earlier reading's time. Every reading must
//! still flow to the sinks — in InfluxDB as its own point, none overwriting another — and each
//! oddity must be flagged: `p1gw_meter_clock_anomalies_total{kind}` and a WARN line.

use std::time::Duration;

use crate::harness::{
    Daemon, Influx, Row, Tally, influx_sink, jsonl_ids, jsonl_sink, spool, wait_for,
};

/// A DSMR 5-style telegram (no CRC) with meter clock `stamp` and register `id`.
fn telegram(id: u64, stamp: &str) -> String {
    format!(
        "/ISK5\\2M550T-1012\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0({stamp})\r\n\
         1-0:1.8.0({:010.3}*kWh)\r\n1-0:1.7.0(00.500*kW)\r\n!\r\n",
        id as f64
    )
}

#[test]
fn clock_jumps_are_flagged_and_every_reading_flows() {
    let _lane = crate::harness::shared();
    // (id, meter clock): what each telegram should trip.
    let script: [(u64, &str, &[&str]); 13] = [
        (1, "240115120000W", &[]),
        (2, "240115120010W", &[]),
        (3, "240115110010W", &["backwards"]), // an hour back
        (4, "240115110020W", &[]),
        (5, "240115110030S", &["dst_flag"]), // summer time in January
        (6, "240115110040W", &[]),
        (7, "391231235959W", &["future"]),    // years ahead
        (8, "240115110050W", &["backwards"]), // and back
        (9, "240115110100W", &[]),
        (10, "000101000000W", &[]), // a placeholder: no time at all
        (11, "240115110100W", &[]), // stands still
        (12, "240115110100W", &[]),
        (13, "240115110010W", &["backwards"]), // back onto reading 3's time
    ];
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("clock.txt");
    std::fs::write(
        &recording,
        script
            .iter()
            .map(|(id, stamp, _)| telegram(*id, stamp))
            .collect::<String>(),
    )
    .expect("write");
    let jsonl = work.path().join("readings.jsonl");
    let influx = Influx::start();
    let config = format!(
        "[meter]\nname = \"home\"\ntz = \"Europe/Amsterdam\"\n\n[source]\nkind = \"replay\"\n\
         path = \"{}\"\ninterval = \"20ms\"\n\n{}{}{}",
        recording.display(),
        jsonl_sink(&jsonl),
        influx_sink(&influx.url, ""),
        spool(&work.path().join("spool"), "")
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    let n = script.len() as u64;
    let file = wait_for(Duration::from_secs(20), "every reading in the file", || {
        let ids = jsonl_ids(&jsonl);
        (ids.len() as u64 >= n).then(|| Tally::from_ids(ids))
    });
    // InfluxDB keeps one point per series and timestamp: a reading stamped like another
    // would overwrite it and be missing here.
    let points = wait_for(Duration::from_secs(20), "every reading in InfluxDB", || {
        let sent = daemon.metrics().sink("p1gw_sink_sent_total", "influx") as u64;
        (sent >= n).then(|| influx.tally("home"))
    });
    let m = daemon.metrics();
    let count = |kind: &str| {
        m.get(
            "p1gw_meter_clock_anomalies_total",
            &[("meter", "home"), ("kind", kind)],
        ) as u64
    };
    let expected = |kind: &str| {
        script
            .iter()
            .filter(|(_, _, kinds)| kinds.contains(&kind))
            .count() as u64
    };
    let log = daemon.log_text();
    let produced = m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64;

    let mut row = Row::new(
        "10. meter clock jumps",
        "replay of a Dutch meter whose clock goes back 1 h, flags summer time in January, \
         jumps to 2039 and back, sends a placeholder stamp, stands still, and goes back onto an \
         earlier reading's time",
    );
    row.produced = produced;
    row.logs.push(daemon.log.clone());
    row.sink("jsonl", &file);
    row.sink("influx", &points);
    let dropped = m.get(
        "p1gw_sink_dropped_total",
        &[("sink", "influx"), ("reason", "rejected")],
    ) as u64;
    row.note(format!(
        "p1gw_meter_clock_anomalies_total: backwards {}, future {}, dst_flag {}",
        count("backwards"),
        count("future"),
        count("dst_flag")
    ));
    row.check(produced == n, format!("produced {produced} of {n}"));
    row.check(file.has_all(1..=n), "a reading did not reach the sink");
    row.check_complete("influx", &points, 1..=n);
    row.check(
        points.unique() == n && points.duplicates() == 0,
        format!(
            "influx: {} distinct points for {n} readings",
            points.unique()
        ),
    );
    row.check(dropped == 0, format!("influx dropped {dropped}"));
    for kind in ["backwards", "future", "dst_flag"] {
        row.check(
            count(kind) == expected(kind),
            format!(
                "{kind}: counted {}, expected {}",
                count(kind),
                expected(kind)
            ),
        );
        row.check(
            log.lines().any(|l| {
                l.contains("WARN") && l.contains("Meter clock anomaly") && l.contains(kind)
            }),
            format!("no WARN line for {kind}"),
        );
    }
    row.finish();
}
