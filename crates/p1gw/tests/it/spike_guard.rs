//! `p1gw run` with the spike guard (on by default): a recording with zero spikes in the
//! meter's import total and in its hot-water submeter, replayed into a jsonl sink. The sink
//! never sees a spike, the metric and /api/v1/status count them, one WARN says why.

use std::time::Duration;

use crate::support::{Daemon, wait_for};

/// One Veitur telegram at 12:00:`secs` with the import total and hot-water volume given.
fn telegram(secs: u32, import: &str, hot_water: &str) -> String {
    format!(
        "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(84035454)\r\n1-0:0.9.1(1200{secs:02})\r\n1-0:0.9.2(240212)\r\n\
         1-0:1.8.0({import}*kWh)\r\n1-0:2.8.0(000000.000*kWh)\r\n1-0:1.7.0(00.588*kW)\r\n\
         0-1:24.2.1({hot_water}*m3)\r\n0-1:24.2.2(0000.090*m3/h)\r\n!\r\n"
    )
}

#[test]
fn zero_spikes_never_reach_the_sink_and_are_counted() {
    let recording = tempfile::tempdir().expect("tempdir");
    let path = recording.path().join("spikes.txt");
    let telegrams = [
        telegram(0, "001988.284", "0366.475"),
        telegram(10, "001988.290", "0366.476"),
        telegram(20, "000000.000", "0366.477"), // zero spike: electricity
        telegram(30, "001988.301", "0366.478"),
        telegram(40, "001988.305", "0000.000"), // zero spike: hot water
        telegram(50, "001988.310", "0366.480"),
    ];
    std::fs::write(&path, telegrams.concat()).expect("write recording");
    let config = format!(
        r#"
[meter]
name = "home"
tz = "Atlantic/Reykjavik"

[source]
kind = "replay"
path = "{}"
interval = "20ms"

[[sink]]
kind = "jsonl"
path = "{{dir}}/readings.jsonl"

[spool]
dir = "{{dir}}/spool"
"#,
        path.display()
    );
    let (daemon, dir) = Daemon::start(&config, &[]);
    let metrics = wait_for(
        Duration::from_secs(30),
        "the recording replayed and both spikes counted",
        || {
            let (_, body) = daemon.get("/metrics")?;
            (body.contains(r#"p1gw_readings_rejected_total{meter="home",reason="backwards"} 2"#)
                && body.contains(r#"p1gw_telegrams_total{meter="home"} 4"#))
            .then_some(body)
        },
    );
    assert!(
        !metrics.contains(r#"reason="implausible_jump""#),
        "the readings after a spike are compared with the last one forwarded: {metrics}"
    );

    let out = dir.join("readings.jsonl");
    let lines = wait_for(
        Duration::from_secs(20),
        "4 readings in the jsonl file",
        || {
            let text = std::fs::read_to_string(&out).ok()?;
            (text.lines().count() >= 4).then_some(text)
        },
    );
    let value = |reading: &serde_json::Value, obis: &str| {
        reading["objects"]
            .as_array()
            .and_then(|o| o.iter().find(|x| x["obis"] == obis))
            .and_then(|x| x["value"].as_f64())
            .expect("value")
    };
    let got: Vec<(f64, f64)> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .map(|r| (value(&r, "1-0:1.8.0"), value(&r, "0-1:24.2.1")))
        .collect();
    assert_eq!(
        got,
        [
            (1988.284, 366.475),
            (1988.29, 366.476),
            (1988.301, 366.478),
            (1988.31, 366.48),
        ],
        "only the readings without a spike, in order"
    );

    let (_, status) = daemon.get("/api/v1/status").expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    let reader = status["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "reader:home"))
        .expect("reader component");
    assert_eq!(reader["counters"]["readings_rejected"], 2, "{reader}");

    let log = daemon.log();
    assert_eq!(
        log.matches("Reading held back by the spike guard").count(),
        1,
        "one WARN a minute per reason: {log}"
    );
    assert!(log.contains("fell to 0 from 1988.29"), "{log}");
}
