//! `p1gw run` with an influx sink against real servers, started by `scripts/servers` and
//! stopped by pid when a test ends, however it ends:
//!
//! * InfluxDB 1.x (v1 API): every value equals what `p1gw parse` gives; the database stops
//!   mid-run and comes back on the same data and port, and nothing is missing or doubled.
//! * VictoriaMetrics (v2 API, org/bucket/token): the same value check, read back with
//!   `/api/v1/export`.
//! * An unknown database, and a wrong password (InfluxDB with authentication on): the readings
//!   stay spooled, the refusal is counted and logged once with InfluxDB's answer (never the
//!   password); once the database is created or the password file corrected, every reading
//!   goes in, once.
//! * Every InfluxQL query of the Grafana dashboard returns data.
//!
//! The servers come from Debian packages (`influxdb`, `victoria-metrics`), which scripts/test
//! installs; without them these tests fail, naming the package.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use p1_testkit::{InfluxdAgain, Server, metric};
use serde_json::Value;

use crate::support::{Daemon, get, root, wait_for};

// ---------------------------------------------------------------------------------------------
// HTTP and metrics.

/// An InfluxQL query; the JSON answer (any HTTP status other than 200 fails).
fn influxql(port: u16, db: &str, query: &str) -> Value {
    p1_testkit::influxql(port, db, "ms", query, None)
}

fn metrics(daemon: &Daemon) -> String {
    daemon
        .get("/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn sink_metric(daemon: &Daemon, name: &str) -> f64 {
    metric(&metrics(daemon), name, &[("sink", "influx")]).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// What the points must be: `p1gw parse`, by the schema of docs/influx.md.

const MEASUREMENTS: [&str; 7] = [
    "electricity",
    "gas",
    "water",
    "heat",
    "hot_water",
    "cooling",
    "unknown",
];

/// Names that are never fields (they identify rather than measure).
const IDENTITY: [&str; 7] = [
    "p1_version",
    "equipment_id",
    "meter_serial",
    "meter_id",
    "mbus_equipment_id",
    "mbus_device_type",
    "logical_device_name",
];

/// The points of one telegram: by channel (0: the meter), the fields in canonical units.
#[derive(Debug)]
struct Expected {
    source: String,
    /// The meter's clock in ms, when the telegram has one.
    time: Option<i64>,
    points: BTreeMap<u8, BTreeMap<String, f64>>,
    device_types: BTreeMap<u8, i64>,
}

/// The factor to the canonical unit (docs/obis.md), written out independently of p1-core.
fn scale(name: &str, unit: Option<&str>) -> f64 {
    if name.starts_with("heat_energy") {
        return 1.0;
    }
    match unit.map(str::to_ascii_lowercase).as_deref() {
        Some("w" | "wh" | "var" | "varh" | "va" | "vah") => 0.001,
        Some("kv" | "ka" | "khz") => 1000.0,
        _ => 1.0,
    }
}

/// `obis_A_B_C_D_E` for an OBIS code as the JSON writes it (`0-1:24.2.10`, perhaps with an F
/// group after `*` or `.`); `None` for a code that is not one.
fn raw_name(obis: &Value) -> Option<String> {
    let groups: Vec<u8> = obis
        .as_str()?
        .split(['-', ':', '.', '*'])
        .map(|g| g.parse().ok())
        .collect::<Option<_>>()?;
    match groups[..] {
        [a, b, c, d, e] | [a, b, c, d, e, _] => Some(format!("obis_{a}_{b}_{c}_{d}_{e}")),
        _ => None,
    }
}

fn expected(path: &Path) -> Vec<Expected> {
    let out = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["parse", "--tz", "Atlantic/Reykjavik"])
        .arg(path)
        .current_dir(root())
        .output()
        .expect("p1gw parse");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let t: Value = serde_json::from_str(line).expect("json");
            let time = t["meter_time"].as_str().map(|s| {
                s.parse::<jiff::Timestamp>()
                    .expect("RFC 3339")
                    .as_millisecond()
            });
            let mut points: BTreeMap<u8, BTreeMap<String, f64>> = BTreeMap::new();
            let mut device_types = BTreeMap::new();
            for o in t["objects"].as_array().expect("objects") {
                let channel = o["channel"].as_u64().map_or(0, |c| c as u8);
                // A code nobody named is written under `obis_A_B_C_D_E` (docs/obis.md).
                let raw = o["name"].is_null().then(|| raw_name(&o["obis"])).flatten();
                let (Some(name), Some(value)) =
                    (o["name"].as_str().or(raw.as_deref()), o["value"].as_f64())
                else {
                    continue;
                };
                if o.get("events").is_some() {
                    // A log (failures, monthly peaks): no single value to write.
                    continue;
                }
                if name == "mbus_device_type" {
                    device_types.insert(channel, value as i64);
                }
                if IDENTITY.contains(&name) {
                    continue;
                }
                points
                    .entry(channel)
                    .or_default()
                    .entry(name.to_owned())
                    .or_insert(value * scale(name, o["unit"].as_str()));
            }
            Expected {
                source: t["source"].as_str().unwrap_or("").to_owned(),
                time,
                points,
                device_types,
            }
        })
        .collect()
}

/// A point as read back.
#[derive(Debug, Clone)]
struct Row {
    measurement: String,
    time: i64,
    channel: u8,
    fields: BTreeMap<String, f64>,
}

/// Every point of meter "home" in InfluxDB.
fn influx_rows(port: u16) -> Vec<Row> {
    influx_rows_as(port, None)
}

/// Every point of meter "home" in InfluxDB, queried with a login.
fn influx_rows_as(port: u16, login: Option<(&str, &str)>) -> Vec<Row> {
    let from: Vec<String> = MEASUREMENTS.iter().map(|m| format!("\"{m}\"")).collect();
    let answer = p1_testkit::influxql(
        port,
        "p1",
        "ms",
        &format!("SELECT * FROM {} WHERE \"meter\" = 'home'", from.join(",")),
        login,
    );
    let result = &answer["results"][0];
    assert!(result["error"].is_null(), "{answer}");
    let mut rows = Vec::new();
    for series in result["series"].as_array().into_iter().flatten() {
        let measurement = series["name"].as_str().expect("name");
        let columns: Vec<&str> = series["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| c.as_str().expect("column"))
            .collect();
        for values in series["values"].as_array().expect("values") {
            let values = values.as_array().expect("row");
            let mut row = Row {
                measurement: measurement.to_owned(),
                time: 0,
                channel: 0,
                fields: BTreeMap::new(),
            };
            for (column, value) in columns.iter().zip(values) {
                match *column {
                    "time" => row.time = value.as_i64().expect("epoch ms"),
                    "channel" => {
                        row.channel = value.as_str().map_or(0, |c| c.parse().expect("channel"));
                    }
                    "meter" | "equipment_id" => {}
                    field => {
                        if let Some(v) = value.as_f64() {
                            row.fields.insert(field.to_owned(), v);
                        } else {
                            assert!(value.is_null(), "{field} = {value}: only floats");
                        }
                    }
                }
            }
            rows.push(row);
        }
    }
    rows
}

/// Checks `rows` against `expected`: each telegram's points exactly once, at its timestamp (the
/// meter's clock; the telegrams without one in replay order), with exactly its values.
fn check(expected: &[Expected], rows: &[Row]) {
    let meter_times: Vec<i64> = expected.iter().filter_map(|e| e.time).collect();
    let mut received: Vec<i64> = rows
        .iter()
        .filter(|r| r.channel == 0 && !meter_times.contains(&r.time))
        .map(|r| r.time)
        .collect();
    received.sort_unstable();
    received.dedup();
    let without_clock = expected.iter().filter(|e| e.time.is_none()).count();
    assert_eq!(
        received.len(),
        without_clock,
        "one point in time per telegram without a meter clock"
    );
    let mut received = received.into_iter();
    let mut matched = 0;
    for e in expected {
        let time = match e.time {
            Some(t) => t,
            None => received.next().expect("a time for each"),
        };
        for (channel, fields) in &e.points {
            let found: Vec<&Row> = rows
                .iter()
                .filter(|r| r.time == time && r.channel == *channel)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{}: channel {channel} at {time}: one point, got {found:?}",
                e.source
            );
            let row = found[0];
            let measurement = match (*channel, e.device_types.get(channel)) {
                (0, _) => "electricity",
                (_, Some(3)) => "gas",
                (_, Some(7)) => "water",
                (_, Some(4 | 12)) => "heat",
                (_, Some(6)) => "hot_water",
                (_, Some(10 | 11 | 13)) => "cooling",
                _ => row.measurement.as_str(),
            };
            assert_eq!(
                row.measurement, measurement,
                "{}: channel {channel}",
                e.source
            );
            let keys: Vec<&String> = fields.keys().collect();
            let got: Vec<&String> = row.fields.keys().collect();
            assert_eq!(got, keys, "{}: the fields of channel {channel}", e.source);
            for (name, want) in fields {
                let value = row.fields[name];
                assert!(
                    (value - want).abs() <= 1e-9 * want.abs().max(1.0),
                    "{}: {name} = {value}, p1gw parse says {want}",
                    e.source
                );
            }
            matched += 1;
        }
    }
    assert_eq!(rows.len(), matched, "no point more than the telegrams give");
}

/// Every point in VictoriaMetrics: its series `<measurement>_<field>` (tags as labels, ms
/// timestamps) put back together by measurement, time and channel.
fn vm_export(port: u16) -> BTreeMap<(String, i64, u8), BTreeMap<String, f64>> {
    let selector = format!("{{__name__=~\"({})_.+\"}}", MEASUREMENTS.join("|"));
    let (status, body) = get(
        port,
        &format!(
            "/api/v1/export?match%5B%5D={}",
            p1_testkit::percent_encode(&selector)
        ),
    )
    .expect("export");
    assert_eq!(status, 200, "{body}");
    let mut points: BTreeMap<(String, i64, u8), BTreeMap<String, f64>> = BTreeMap::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let series: Value = serde_json::from_str(line).expect("export line");
        let metric = &series["metric"];
        assert_eq!(metric["meter"], "home", "{line}");
        let name = metric["__name__"].as_str().expect("name");
        let measurement = MEASUREMENTS
            .iter()
            .filter(|m| name.starts_with(&format!("{m}_")))
            .max_by_key(|m| m.len())
            .expect("a known measurement");
        let field = &name[measurement.len() + 1..];
        let channel = metric["channel"]
            .as_str()
            .map_or(0, |c| c.parse().expect("channel"));
        let times = series["timestamps"].as_array().expect("timestamps");
        let values = series["values"].as_array().expect("values");
        let mut seen = std::collections::BTreeSet::new();
        for (t, v) in times.iter().zip(values) {
            let t = t.as_i64().expect("ms");
            assert!(seen.insert(t), "{name}: one sample per timestamp");
            let previous = points
                .entry(((*measurement).to_owned(), t, channel))
                .or_default()
                .insert(field.to_owned(), v.as_f64().expect("a number"));
            assert!(previous.is_none(), "{name} at {t} twice");
        }
    }
    points
}

/// The fixture telegrams that decode, copied into a directory in the order of their meter
/// clocks, those without one last. Replayed as one meter, the fixtures (many meters) must not go
/// back in time: that would be a meter clock jumping back, which the sink's timestamp rule
/// answers with a stamp after the previous one (docs/influx.md), not the meter's time.
fn in_clock_order() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all = expected(&root().join("fixtures/telegrams"));
    all.sort_by_key(|e| (e.time.is_none(), e.time));
    for (i, e) in all.iter().enumerate() {
        let from = root().join(&e.source);
        let name = from.file_name().expect("a file name").to_string_lossy();
        std::fs::copy(&from, dir.path().join(format!("{i:02}_{name}"))).expect("copy");
    }
    dir
}

fn replay_config(path: &Path, interval: &str, sink: &str) -> String {
    format!(
        r#"
[meter]
name = "home"
tz = "Atlantic/Reykjavik"

[source]
kind = "replay"
path = "{}"
interval = "{interval}"

[[sink]]
kind = "influx"
{sink}

[spool]
dir = "{{dir}}/spool"
"#,
        path.display()
    )
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn influxdb_v1_holds_exactly_what_p1gw_parse_gives_across_a_database_restart() {
    let mut influx = Server::start("influxdb", &["--db", "p1"]);
    let port = influx.port("INFLUX_PORT");
    let ordered = in_clock_order();
    let fixtures = ordered.path().to_path_buf();
    let want = expected(&fixtures);
    assert_eq!(want.len(), 23);
    let points: usize = want.iter().map(|e| e.points.len()).sum();
    let sink = format!(
        "url = \"{}\"\napi = \"v1\"\ndatabase = \"p1\"\nprecision = \"ms\"\nbatch_size = 5\nbatch_interval = \"200ms\"",
        influx.var("INFLUX_URL")
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&fixtures, "250ms", &sink), &[]);

    // Some points are in; then the database goes away and p1gw keeps the readings spooled.
    wait_for(Duration::from_secs(20), "the first points", || {
        (influx_rows(port).len() >= 3).then_some(())
    });
    influx.stop(true); // its data kept
    wait_for(
        Duration::from_secs(20),
        "failed deliveries and readings spooled while InfluxDB is down",
        || {
            (sink_metric(&daemon, "p1gw_sink_failed_total") >= 1.0
                && sink_metric(&daemon, "p1gw_spool_records") >= 2.0)
                .then_some(())
        },
    );
    let _again = InfluxdAgain::start(&influx.dir(), port, Duration::from_secs(15));

    wait_for(
        Duration::from_secs(40),
        "every reading delivered and the spool empty",
        || {
            let m = metrics(&daemon);
            let sent = metric(&m, "p1gw_sink_sent_total", &[("sink", "influx")])?;
            let spooled = metric(&m, "p1gw_spool_records", &[("sink", "influx")])?;
            (sent >= 23.0 && spooled == 0.0).then_some(())
        },
    );
    let m = metrics(&daemon);
    assert_eq!(
        metric(&m, "p1gw_sink_spooled_total", &[("sink", "influx")]),
        Some(23.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "p1gw_sink_dropped_total",
            &[("sink", "influx"), ("reason", "rejected")]
        )
        .unwrap_or(0.0),
        0.0
    );
    let rows = influx_rows(port);
    assert_eq!(rows.len(), points, "nothing missing, nothing doubled");
    check(&want, &rows);
    let with_values = want.iter().filter(|e| e.points.contains_key(&0)).count();
    assert_eq!(
        rows.iter()
            .filter(|r| r.measurement == "electricity")
            .count(),
        with_values,
        "one electricity point per telegram with values"
    );
    drop(daemon);
}

/// Veitur telegrams with the meter's clock set to `at` (UTC, as Reykjavik keeps).
fn veitur_at(text: &str, at: jiff::Timestamp) -> String {
    // A timestamp formats in UTC.
    let utc = at;
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("1-0:0.9.1(") {
            out.push_str(&utc.strftime("1-0:0.9.1(%H%M%S)").to_string());
        } else if line.starts_with("1-0:0.9.2(") {
            out.push_str(&utc.strftime("1-0:0.9.2(%y%m%d)").to_string());
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    if !out.contains("\n!") {
        out.push_str("!\r\n");
    }
    out
}

#[test]
fn victoria_metrics_v2_holds_exactly_what_p1gw_parse_gives() {
    let vm = Server::start("victoria-metrics", &[]);
    let port = vm.port("VM_PORT");
    // VictoriaMetrics keeps one day here: Veitur's telegrams with a recent clock, and the
    // telegrams without a clock (stamped when received).
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording");
    std::fs::create_dir(&recording).expect("mkdir");
    let fixtures = root().join("fixtures/telegrams");
    let now = jiff::Timestamp::now();
    for (i, name) in [
        "iceland_veitur_iskra_ie5e_antonp1.txt",
        "iceland_veitur_iskra_ie5e_esphome_log.txt",
        "iceland_veitur_iskra_ie5e_heat_submeter_raw.txt",
    ]
    .iter()
    .enumerate()
    {
        let text = std::fs::read_to_string(fixtures.join(name)).expect("fixture");
        let at = now - jiff::SignedDuration::from_secs(600 - 60 * i as i64);
        std::fs::write(recording.join(format!("a{i}_{name}")), veitur_at(&text, at))
            .expect("write");
    }
    for name in [
        "dsmr30_spec_example.txt",
        "germany_easymeter_q3d_com1_gateway_nocrc.txt",
        "netherlands_iskra_mt382_dsmr22_nocrc.txt",
        "netherlands_mcs_dsmr50_empty_mbus.txt",
        "sweden_finland_aidon_6534_spec_nocrc.txt",
    ] {
        std::fs::copy(fixtures.join(name), recording.join(format!("b_{name}"))).expect("copy");
    }
    let want = expected(&recording);
    assert_eq!(want.len(), 8);
    let token = work.path().join("token");
    std::fs::write(&token, "vm-token\n").expect("token");
    let sink = format!(
        "url = \"{}\"\napi = \"v2\"\norg = \"home\"\nbucket = \"p1\"\ntoken_file = \"{}\"\nprecision = \"ms\"\nbatch_interval = \"200ms\"",
        vm.var("VM_URL"),
        token.display()
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&recording, "100ms", &sink), &[]);
    wait_for(Duration::from_secs(30), "all 8 readings delivered", || {
        (sink_metric(&daemon, "p1gw_sink_sent_total") >= 8.0).then_some(())
    });

    let samples: usize = want
        .iter()
        .flat_map(|e| e.points.values())
        .map(BTreeMap::len)
        .sum();
    // Written samples become searchable shortly after the write, force_flush or not.
    let points = wait_for(Duration::from_secs(20), "every sample exported", || {
        let (status, _) = get(port, "/internal/force_flush")?;
        assert_eq!(status, 200);
        let points = vm_export(port);
        let exported: usize = points.values().map(BTreeMap::len).sum();
        (exported >= samples).then_some(points)
    });
    let rows: Vec<Row> = points
        .into_iter()
        .map(|((measurement, time, channel), fields)| Row {
            measurement,
            time,
            channel,
            fields,
        })
        .collect();
    check(&want, &rows);
    drop(daemon);
}

#[test]
fn an_unknown_database_keeps_the_readings_spooled_until_it_is_created() {
    let influx = Server::start("influxdb", &[]);
    let port = influx.port("INFLUX_PORT");
    let fixture = root().join("fixtures/telegrams/iceland_veitur_iskra_ie5e_antonp1.txt");
    let sink = format!(
        "url = \"{}\"\napi = \"v1\"\ndatabase = \"nope\"\nbatch_interval = \"100ms\"",
        influx.var("INFLUX_URL")
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&fixture, "100ms", &sink), &[]);
    wait_for(Duration::from_secs(20), "refused attempts counted", || {
        metric(
            &metrics(&daemon),
            "p1gw_sink_failed_total",
            &[("sink", "influx"), ("reason", "not_found")],
        )
        .filter(|n| *n >= 2.0)
    });
    let log = daemon.log();
    assert!(log.contains("InfluxDB has no database"), "{log}");
    assert!(
        log.contains(r#"database not found: \"nope\""#)
            || log.contains(r#"database not found: "nope""#),
        "InfluxDB's answer is in the log:\n{log}"
    );
    assert!(log.contains("404"), "{log}");
    assert_eq!(
        log.matches("Backend refuses the sink's requests").count(),
        1,
        "logged once, not per retry:\n{log}"
    );
    let m = metrics(&daemon);
    assert_eq!(
        metric(&m, "p1gw_spool_records", &[("sink", "influx")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "p1gw_sink_dropped_total", &[("sink", "influx")]).unwrap_or(0.0),
        0.0,
        "nothing dropped: {m}"
    );

    // The operator creates the database: the kept reading goes in.
    let answer = influxql(port, "nope", "CREATE DATABASE nope");
    assert!(answer["results"][0]["error"].is_null(), "{answer}");
    wait_for(Duration::from_secs(90), "the reading delivered", || {
        let m = metrics(&daemon);
        (metric(&m, "p1gw_sink_sent_total", &[("sink", "influx")]) == Some(1.0)
            && metric(&m, "p1gw_spool_records", &[("sink", "influx")]) == Some(0.0))
        .then_some(())
    });
    let answer = influxql(port, "nope", "SELECT count(power_import) FROM electricity");
    assert_eq!(
        answer["results"][0]["series"][0]["values"][0][1], 1,
        "{answer}"
    );
    wait_for(Duration::from_secs(5), "the recovery logged", || {
        daemon
            .log()
            .contains("Backend accepts the sink's requests again")
            .then_some(())
    });
    drop(daemon);
}

#[test]
fn a_field_type_conflict_is_dropped_counted_and_logged_with_influxdbs_answer() {
    // `power_import` already holds a string at the reading's time (same shard): InfluxDB 1.x
    // answers 400 "field type conflict" for the reading's points, which no retry can fix.
    let influx = Server::start("influxdb", &["--db", "p1"]);
    let fixture = root().join("fixtures/telegrams/iceland_veitur_iskra_ie5e_antonp1.txt");
    let time_ms = expected(&fixture)[0]
        .time
        .expect("the fixture has a meter clock");
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST"])
        .arg(format!(
            "{}/write?db=p1&precision=ms",
            influx.var("INFLUX_URL")
        ))
        .arg("--data-binary")
        .arg(format!(
            "electricity,meter=other power_import=\"text\" {time_ms}"
        ))
        .output()
        .expect("curl (Debian package curl)");
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "204",
        "the string field is in"
    );

    let sink = format!(
        "url = \"{}\"\napi = \"v1\"\ndatabase = \"p1\"\nprecision = \"ms\"\nbatch_interval = \"100ms\"",
        influx.var("INFLUX_URL")
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&fixture, "100ms", &sink), &[]);
    wait_for(
        Duration::from_secs(20),
        "the batch dropped as rejected",
        || {
            metric(
                &metrics(&daemon),
                "p1gw_sink_dropped_total",
                &[("sink", "influx"), ("reason", "rejected")],
            )
            .filter(|n| *n >= 1.0)
        },
    );
    let log = daemon.log();
    assert!(
        log.contains("field type conflict"),
        "InfluxDB's answer is in the log:\n{log}"
    );
    assert!(log.contains("400"), "{log}");
    let m = metrics(&daemon);
    assert_eq!(
        metric(&m, "p1gw_spool_records", &[("sink", "influx")]),
        Some(0.0),
        "a batch that can never succeed is not retried forever: {m}"
    );
    let (code, _) = daemon.get("/healthz").expect("/healthz");
    assert_eq!(code, 200, "the daemon runs on");
    drop(daemon);
}

#[test]
fn a_wrong_password_keeps_every_reading_spooled_until_the_password_file_is_corrected() {
    let influx = Server::start("influxdb", &["--db", "p1", "--auth"]);
    let port = influx.port("INFLUX_PORT");
    let (user, password) = (influx.var("INFLUX_USER"), influx.var("INFLUX_PASSWORD"));
    let ordered = in_clock_order();
    let fixtures = ordered.path().to_path_buf();
    let want = expected(&fixtures);
    let points: usize = want.iter().map(|e| e.points.len()).sum();
    let secrets = tempfile::tempdir().expect("tempdir");
    let pass = secrets.path().join("influx.pass");
    let wrong = "not-the-password-7c1e";
    std::fs::write(&pass, format!("{wrong}\n")).expect("write");
    let sink = format!(
        "url = \"{}\"\napi = \"v1\"\ndatabase = \"p1\"\nusername = \"{user}\"\npassword_file = \"{}\"\nprecision = \"ms\"\nbatch_size = 5\nbatch_interval = \"100ms\"",
        influx.var("INFLUX_URL"),
        pass.display()
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&fixtures, "20ms", &sink), &[]);

    // Every reading is spooled and refused; none is sent, none dropped.
    wait_for(
        Duration::from_secs(30),
        "all 23 readings spooled and the password refused",
        || {
            let m = metrics(&daemon);
            let spooled = metric(&m, "p1gw_sink_spooled_total", &[("sink", "influx")])?;
            let refused = metric(
                &m,
                "p1gw_sink_failed_total",
                &[("sink", "influx"), ("reason", "auth")],
            )?;
            (spooled == 23.0 && refused >= 2.0).then_some(())
        },
    );
    let m = metrics(&daemon);
    assert_eq!(
        metric(&m, "p1gw_spool_records", &[("sink", "influx")]),
        Some(23.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "p1gw_sink_sent_total", &[("sink", "influx")]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric(&m, "p1gw_sink_dropped_total", &[("sink", "influx")]).unwrap_or(0.0),
        0.0,
        "{m}"
    );
    // A sink that spools is still ready (/readyz); its status says why it is degraded.
    let (_, status) = daemon.get("/api/v1/status").expect("status");
    assert!(status.contains("password_file"), "{status}");
    let log = daemon.log();
    assert_eq!(
        log.matches("Backend refuses the sink's requests").count(),
        1,
        "one clear ERROR, not one per retry:\n{log}"
    );
    assert!(
        log.contains("password_file") && log.contains("401"),
        "{log}"
    );
    assert!(!log.contains(wrong), "the password is never logged:\n{log}");

    // The user corrects the file; the next retry reads it and everything goes in.
    std::fs::write(&pass, format!("{password}\n")).expect("write");
    wait_for(
        Duration::from_secs(90),
        "every reading delivered and the spool empty",
        || {
            let m = metrics(&daemon);
            let sent = metric(&m, "p1gw_sink_sent_total", &[("sink", "influx")])?;
            let spooled = metric(&m, "p1gw_spool_records", &[("sink", "influx")])?;
            (sent >= 23.0 && spooled == 0.0).then_some(())
        },
    );
    let m = metrics(&daemon);
    assert_eq!(
        metric(&m, "p1gw_sink_sent_total", &[("sink", "influx")]),
        Some(23.0)
    );
    assert_eq!(
        metric(&m, "p1gw_sink_dropped_total", &[("sink", "influx")]).unwrap_or(0.0),
        0.0
    );
    let rows = influx_rows_as(port, Some((user, password)));
    assert_eq!(rows.len(), points, "nothing missing, nothing doubled");
    check(&want, &rows);
    let log = daemon.log();
    assert!(!log.contains(password) && !log.contains(wrong), "{log}");
    drop(daemon);
}

// ---------------------------------------------------------------------------------------------
// The InfluxQL dashboard.

/// Three days of hourly telegrams of a Veitur meter (hot water and its heat register) and a
/// DSMR 5 meter (tariffs, three phases with power per phase, gas, water, a heat meter in GJ and
/// a cooling meter), values rising, from 2024-02-10T00:00Z: a value for every panel.
fn three_days() -> String {
    let start: jiff::Timestamp = "2024-02-10T00:00:00Z".parse().expect("time");
    let mut out = String::new();
    for h in 0..72_i64 {
        let at = start + jiff::SignedDuration::from_hours(h);
        let x = h as f64;
        out.push_str(&format!(
            "/ISk5\\2MIE5E-200\r\n\r\n\
             0-0:96.1.1(36303836383138373123)\r\n\
             1-0:0.9.1({})\r\n1-0:0.9.2({})\r\n\
             1-0:1.7.0({:05.3}*kW)\r\n1-0:2.7.0(00.000*kW)\r\n\
             1-0:31.7.0(002*A)\r\n1-0:32.7.0({:05.1}*V)\r\n\
             1-0:1.8.0({:010.3}*kWh)\r\n1-0:2.8.0({:010.3}*kWh)\r\n\
             0-1:24.2.1({:08.3}*m3)\r\n0-1:24.2.2(0000.090*m3/h)\r\n\
             0-1:24.2.3({:08.1}*degC)\r\n0-1:24.2.4(000031.3*degC)\r\n\
             0-1:24.2.5({:08.3}*Wh)\r\n!\r\n",
            at.strftime("%H%M%S"),
            at.strftime("%y%m%d"),
            0.2 + (h % 7) as f64 * 0.1,
            228.0 + (h % 5) as f64,
            1988.284 + x * 0.75,
            x * 0.05,
            366.475 + x * 0.02,
            70.0 + (h % 4) as f64,
            19.078 + x * 0.001,
        ));
        let half = at + jiff::SignedDuration::from_mins(30);
        out.push_str(&format!(
            "/ISK5\\2M550T-1012\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0({}W)\r\n\
             0-0:96.1.1(4530303434303037313331363130323137)\r\n\
             1-0:1.8.1({:010.3}*kWh)\r\n1-0:1.8.2({:010.3}*kWh)\r\n\
             1-0:2.8.1({:010.3}*kWh)\r\n1-0:2.8.2({:010.3}*kWh)\r\n0-0:96.14.0(0002)\r\n\
             1-0:1.7.0(00.500*kW)\r\n1-0:2.7.0(00.000*kW)\r\n\
             1-0:32.7.0(230.1*V)\r\n1-0:52.7.0(231.2*V)\r\n1-0:72.7.0(229.9*V)\r\n\
             1-0:31.7.0(001*A)\r\n1-0:51.7.0(002*A)\r\n1-0:71.7.0(003*A)\r\n\
             1-0:21.7.0(00.100*kW)\r\n1-0:41.7.0(00.150*kW)\r\n1-0:61.7.0(00.250*kW)\r\n\
             1-0:22.7.0(00.000*kW)\r\n1-0:42.7.0(00.010*kW)\r\n1-0:62.7.0(00.000*kW)\r\n\
             0-1:24.1.0(003)\r\n0-1:96.1.0(4730303139333430333231313139313139)\r\n\
             0-1:24.2.1({}W)({:09.3}*m3)\r\n\
             0-2:24.1.0(007)\r\n0-2:24.2.1({}W)({:09.3}*m3)\r\n\
             0-3:24.1.0(004)\r\n0-3:24.2.1({}W)({:09.3}*GJ)\r\n\
             0-4:24.1.0(010)\r\n0-4:24.2.1({}W)({:09.3}*GJ)\r\n!\r\n",
            half.strftime("%y%m%d%H%M%S"),
            1234.567 + x * 0.3,
            2345.678 + x * 0.2,
            1.0 + x * 0.1,
            2.0 + x * 0.05,
            half.strftime("%y%m%d%H%M%S"),
            123.456 + x * 0.04,
            half.strftime("%y%m%d%H%M%S"),
            45.678 + x * 0.01,
            half.strftime("%y%m%d%H%M%S"),
            12.345 + x * 0.002,
            half.strftime("%y%m%d%H%M%S"),
            1.234 + x * 0.001,
        ));
    }
    out
}

/// Every InfluxQL query of the dashboard, with the variables' values of `substitute` put in.
fn dashboard_queries(substitute: &dyn Fn(&str) -> String) -> Vec<(String, String)> {
    let path = root().join("deploy/grafana/dashboards/p1gw-influxql.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("json");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let query = target["query"].as_str().expect("query");
            out.push((
                format!("{} {}", panel["title"], target["refId"]),
                substitute(query),
            ));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if var["type"] == "query" {
            let query = var["query"].as_str().expect("query");
            out.push((format!("variable {}", var["name"]), substitute(query)));
        }
    }
    out
}

#[test]
fn every_influxql_query_of_the_dashboard_returns_data() {
    let influx = Server::start("influxdb", &["--db", "p1"]);
    let port = influx.port("INFLUX_PORT");
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("three-days.txt");
    std::fs::write(&recording, three_days()).expect("write");
    let sink = format!(
        "url = \"{}\"\napi = \"v1\"\ndatabase = \"p1\"\nbatch_interval = \"100ms\"",
        influx.var("INFLUX_URL")
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&recording, "0s", &sink), &[]);
    wait_for(
        Duration::from_secs(30),
        "all 144 readings delivered",
        || (sink_metric(&daemon, "p1gw_sink_sent_total") >= 144.0).then_some(()),
    );

    // The dashboard's variables at their defaults; Grafana's macros as Grafana fills them.
    let path = root().join("deploy/grafana/dashboards/p1gw-influxql.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("json");
    let tz = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["name"] == "tz")
        .and_then(|v| v["current"]["value"].as_str())
        .expect("tz default")
        .to_owned();
    let substitute = move |query: &str| {
        query
            .replace(
                "$timeFilter",
                "time >= '2024-02-09T00:00:00Z' AND time <= '2024-02-14T00:00:00Z'",
            )
            .replace("$__interval", "1h")
            .replace("$meter", "home")
            .replace("$tz", &tz)
    };
    let queries = dashboard_queries(&substitute);
    assert!(queries.len() >= 22, "{}", queries.len());
    for (what, query) in queries {
        assert!(
            !query.replace("$/", "").contains('$'),
            "{what}: a variable left in {query}"
        );
        let answer = influxql(port, "p1", &query);
        let result = &answer["results"][0];
        assert!(result["error"].is_null(), "{what}: {query}: {answer}");
        let series = result["series"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no data from {query}: {answer}"));
        let values = series
            .iter()
            .flat_map(|s| s["values"].as_array().into_iter().flatten())
            .flat_map(|row| row.as_array().into_iter().flatten().skip(1))
            .filter(|v| !v.is_null())
            .count();
        assert!(values > 0, "{what}: only nulls from {query}: {answer}");
    }
    drop(daemon);
}

#[test]
fn the_compose_stacks_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["check-config", "deploy/p1gw/p1gw.toml"])
        .current_dir(root())
        .output()
        .expect("p1gw check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Answers that are not InfluxDB's acknowledgement (issue 18).

/// A recording of Veitur's telegram with the meter's clock at each of `at`, one file each.
fn veitur_recording(dir: &Path, at: &[jiff::Timestamp]) {
    std::fs::create_dir(dir).expect("mkdir");
    let text = std::fs::read_to_string(
        root().join("fixtures/telegrams/iceland_veitur_iskra_ie5e_antonp1.txt"),
    )
    .expect("fixture");
    for (i, t) in at.iter().enumerate() {
        std::fs::write(dir.join(format!("{i:02}.txt")), veitur_at(&text, *t)).expect("write");
    }
}

fn dropped(daemon: &Daemon) -> f64 {
    metric(
        &metrics(daemon),
        "p1gw_sink_dropped_total",
        &[("sink", "influx"), ("reason", "rejected")],
    )
    .unwrap_or(0.0)
}

#[test]
fn a_field_type_conflict_drops_only_the_refused_reading_and_the_rest_is_written() {
    // Six readings a day or more apart; InfluxDB 1.x already holds a string `power_import` in
    // the shard of the fourth (its week), so only that one can never be written.
    let influx = Server::start("influxdb", &["--db", "p1"]);
    let port = influx.port("INFLUX_PORT");
    let now = jiff::Timestamp::now();
    let days: [i64; 6] = [40, 39, 38, 20, 5, 4];
    let at: Vec<jiff::Timestamp> = days
        .iter()
        .map(|d| now - jiff::SignedDuration::from_hours(24 * d))
        .collect();
    let conflict_ms = at[3].as_second() * 1000;
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-XPOST"])
        .arg(format!(
            "{}/write?db=p1&precision=ms",
            influx.var("INFLUX_URL")
        ))
        .arg("--data-binary")
        .arg(format!(
            "electricity,meter=other power_import=\"text\" {conflict_ms}"
        ))
        .output()
        .expect("curl (Debian package curl)");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "204");

    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording");
    veitur_recording(&recording, &at);
    // One batch of all six.
    let sink = format!(
        "url = \"{}\"\napi = \"v1\"\ndatabase = \"p1\"\nprecision = \"ms\"\nbatch_interval = \"2s\"",
        influx.var("INFLUX_URL")
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&recording, "50ms", &sink), &[]);
    wait_for(Duration::from_secs(30), "the batch settled", || {
        let m = metrics(&daemon);
        let spooled = metric(&m, "p1gw_sink_spooled_total", &[("sink", "influx")])?;
        let left = metric(&m, "p1gw_spool_records", &[("sink", "influx")])?;
        (spooled >= 6.0 && left == 0.0).then_some(())
    });
    assert_eq!(dropped(&daemon), 1.0, "only the refused reading dropped");
    assert_eq!(sink_metric(&daemon, "p1gw_sink_sent_total"), 5.0);
    let times: Vec<i64> = influx_rows(port)
        .iter()
        .filter(|r| r.measurement == "electricity")
        .map(|r| r.time)
        .collect();
    let mut want: Vec<i64> = at.iter().map(|t| t.as_second() * 1000).collect();
    want.remove(3);
    assert_eq!(times, want, "every other reading is in InfluxDB");
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("Backend rejected readings"))
        .unwrap_or_else(|| panic!("the drop is logged:\n{log}"));
    assert!(line.contains("field type conflict"), "{line}");
    assert!(
        line.contains("refused line: electricity,") && line.contains(&conflict_ms.to_string()),
        "the refused line is in the log: {line}"
    );
    drop(daemon);
}

/// A server on 127.0.0.1 that answers every request with `301` to `location` (a proxy's or a
/// moved site's answer); stops when the test process ends.
fn redirector(location: String) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let location = location.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                loop {
                    // The request head, then its body (Content-Length).
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn a_redirect_keeps_the_readings_spooled_and_readyz_says_where_the_url_points() {
    // VictoriaMetrics answers a GET of /write with 204 too: a followed redirect (POST turned
    // into GET, body gone) would look delivered while nothing is written.
    let vm = Server::start("victoria-metrics", &[]);
    let port = vm.port("VM_PORT");
    let target = format!("{}/write?db=p1", vm.var("VM_URL"));
    let url = redirector(target);
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording");
    let now = jiff::Timestamp::now();
    let at: Vec<jiff::Timestamp> = (0..3)
        .map(|i| now - jiff::SignedDuration::from_secs(300 - 10 * i))
        .collect();
    veitur_recording(&recording, &at);
    let sink = format!(
        "url = \"{url}\"\napi = \"v1\"\ndatabase = \"p1\"\nprecision = \"ms\"\nbatch_interval = \"100ms\""
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&recording, "50ms", &sink), &[]);
    let body = wait_for(
        Duration::from_secs(20),
        "/readyz naming the redirect",
        || {
            let (status, body) = daemon.get("/readyz")?;
            (status == 503 && body.contains("redirects")).then_some(body)
        },
    );
    assert!(
        body.contains(&format!("{}/write", vm.var("VM_URL"))),
        "where the URL points: {body}"
    );
    wait_for(Duration::from_secs(20), "every reading spooled", || {
        (sink_metric(&daemon, "p1gw_spool_records") >= 3.0).then_some(())
    });
    let m = metrics(&daemon);
    assert_eq!(
        metric(&m, "p1gw_sink_sent_total", &[("sink", "influx")]).unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert_eq!(dropped(&daemon), 0.0);
    assert!(
        metric(
            &m,
            "p1gw_sink_failed_total",
            &[("sink", "influx"), ("reason", "redirect")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    let (_, _) = get(port, "/internal/force_flush").expect("force_flush");
    assert!(
        vm_export(port).is_empty(),
        "nothing reached VictoriaMetrics"
    );
    drop(daemon);
}

#[test]
fn victoria_metrics_refusing_the_request_keeps_the_readings_spooled() {
    // A URL with a path VictoriaMetrics does not serve: its own 400 "unsupported path"
    // refuses the request, not the points.
    let vm = Server::start("victoria-metrics", &[]);
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording");
    let now = jiff::Timestamp::now();
    let at: Vec<jiff::Timestamp> = (0..3)
        .map(|i| now - jiff::SignedDuration::from_secs(300 - 10 * i))
        .collect();
    veitur_recording(&recording, &at);
    let sink = format!(
        "url = \"{}/influx-typo\"\napi = \"v1\"\ndatabase = \"p1\"\nprecision = \"ms\"\nbatch_interval = \"100ms\"",
        vm.var("VM_URL")
    );
    let (daemon, _dir) = Daemon::start(&replay_config(&recording, "50ms", &sink), &[]);
    wait_for(
        Duration::from_secs(20),
        "refused attempts with every reading spooled",
        || {
            let m = metrics(&daemon);
            let failed = metric(
                &m,
                "p1gw_sink_failed_total",
                &[("sink", "influx"), ("reason", "refused")],
            )?;
            let left = metric(&m, "p1gw_spool_records", &[("sink", "influx")])?;
            (failed >= 2.0 && left >= 3.0).then_some(())
        },
    );
    assert_eq!(dropped(&daemon), 0.0);
    let log = daemon.log();
    assert!(
        log.contains("unsupported path"),
        "VictoriaMetrics' answer in the log:\n{log}"
    );
    drop(daemon);
}
