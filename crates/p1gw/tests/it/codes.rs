//! A code p1gw has never seen, named by the user, through every view (issue 20): a Veitur
//! telegram with two extra registers, `0-1:24.2.11` (a rule names and scales it) and
//! `0-1:24.2.12` (no rule: under its code wherever a raw value goes), replayed into `p1gw run` with Mosquitto (value topics and Home
//! Assistant discovery, retained), InfluxDB 1.x, jsonl and `/metrics`.

use std::process::{Command, Stdio};
use std::time::Duration;

use p1_testkit::{Server, metric};
use serde_json::Value;

use crate::support::{Daemon, root, wait_for};

/// The retained message on `topic` (mosquitto_sub reads it and exits), or `None`.
fn retained(broker: &Server, topic: &str) -> Option<String> {
    let out = Command::new("mosquitto_sub")
        .args(broker.mosquitto_args())
        .args(["-t", topic, "-C", "1", "-W", "2", "--retained-only"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim_end().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

#[test]
fn a_code_p1gw_never_saw_arrives_named_and_scaled_in_every_view() {
    let broker = Server::start("mosquitto", &[]);
    let influx = Server::start("influxdb", &["--db", "p1"]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut telegram = std::fs::read(
        root().join("fixtures/telegrams/iceland_veitur_iskra_ie5e_heat_submeter_raw.txt"),
    )
    .expect("fixture");
    telegram.extend_from_slice(b"0-1:24.2.11(0018123*Wh)\r\n0-1:24.2.12(0000042*kWh)\r\n");
    let recording = tmp.path().join("veitur-new-codes.txt");
    std::fs::write(&recording, &telegram).expect("write");

    let config = format!(
        r#"
[meter]
name = "home"
tz = "Atlantic/Reykjavik"

[meter.codes."0-1:24.2.11"]
name = "heat_return_energy"
unit = "MWh"
scale = 0.001
kind = "energy"

[meter.codes."0-n:24.2.5"]
name = "heat_energy_total"
unit = "MWh"
kind = "energy"

[source]
kind = "replay"
path = "{recording}"
interval = "200ms"
loop = true

[[sink]]
kind = "mqtt"
url = "mqtt://127.0.0.1:{mqtt}"
discovery = true
retain = true

[[sink]]
kind = "influx"
url = "{influx}"
api = "v1"
database = "p1"
precision = "ms"

[[sink]]
kind = "jsonl"
path = "{{dir}}/readings.jsonl"

[spool]
dir = "{{dir}}/spool"
"#,
        recording = recording.display(),
        mqtt = broker.port("MQTT_PORT"),
        influx = influx.var("INFLUX_URL"),
    );
    let (daemon, dir) = Daemon::start(&config, &[]);

    // InfluxDB: the named field in MWh, the unnamed one under its code, as sent.
    let port = influx.port("INFLUX_PORT");
    let row = wait_for(Duration::from_secs(20), "the hot-water point", || {
        let answer = p1_testkit::influxql(
            port,
            "p1",
            "ms",
            "SELECT heat_return_energy, heat_energy_total, obis_0_1_24_2_12, hot_water_volume \
             FROM hot_water WHERE meter = 'home'",
            None,
        );
        let values = answer["results"][0]["series"][0]["values"][0].clone();
        // InfluxDB 1.x may answer while it is still storing a point's fields (each is a
        // series of its own): wait for all four.
        let whole = values
            .as_array()
            .is_some_and(|v| v.len() == 5 && v.iter().all(|x| !x.is_null()));
        whole.then_some(values)
    });
    assert_eq!(row[1].as_f64(), Some(18.123), "{row}");
    assert_eq!(row[2].as_f64(), Some(19.078), "{row}");
    assert_eq!(row[3].as_f64(), Some(42.0), "{row}");
    assert_eq!(row[4].as_f64(), Some(366.475), "{row}");

    // MQTT: the value topic, scaled, and its Home Assistant entity: energy, total_increasing,
    // MWh, so that the Energy dashboard takes it.
    let value = wait_for(Duration::from_secs(20), "the value topic", || {
        retained(&broker, "p1gw/home/hot_water_1/heat_return_energy")
    });
    assert_eq!(value, "18.123");
    let discovery = wait_for(Duration::from_secs(20), "the discovery config", || {
        retained(
            &broker,
            "homeassistant/sensor/p1gw_home/hot_water_1_heat_return_energy/config",
        )
    });
    let discovery: Value = serde_json::from_str(&discovery).expect("JSON");
    assert_eq!(discovery["device_class"], "energy", "{discovery}");
    assert_eq!(discovery["state_class"], "total_increasing", "{discovery}");
    assert_eq!(discovery["unit_of_measurement"], "MWh", "{discovery}");
    assert_eq!(
        discovery["state_topic"], "p1gw/home/hot_water_1/heat_return_energy",
        "{discovery}"
    );
    let heat = wait_for(Duration::from_secs(20), "Veitur's heat entity", || {
        retained(
            &broker,
            "homeassistant/sensor/p1gw_home/hot_water_1_heat_energy_total/config",
        )
    });
    let heat: Value = serde_json::from_str(&heat).expect("JSON");
    assert_eq!(
        (&heat["device_class"], &heat["unit_of_measurement"]),
        (&Value::from("energy"), &Value::from("MWh"))
    );
    // A code nobody named: a value topic under its code, as sent, and no entity.
    assert_eq!(
        retained(&broker, "p1gw/home/hot_water_1/obis_0_1_24_2_12").as_deref(),
        Some("42")
    );
    assert_eq!(
        retained(
            &broker,
            "homeassistant/sensor/p1gw_home/hot_water_1_obis_0_1_24_2_12/config"
        ),
        None
    );

    // /metrics: both, the named one in its unit.
    let text = daemon.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let labels = |name| [("meter", "home"), ("name", name), ("channel", "1")];
    assert_eq!(
        metric(&text, "p1gw_meter_value", &labels("heat_return_energy")),
        Some(18.123),
        "{text}"
    );
    assert!(
        text.contains(r#"p1gw_meter_value{meter="home",name="heat_return_energy",unit="MWh",channel="1"} 18.123"#),
        "{text}"
    );
    assert_eq!(
        metric(&text, "p1gw_meter_value", &labels("obis_0_1_24_2_12")),
        Some(42.0),
        "{text}"
    );

    // jsonl: the name is the rule's; the value and unit are the digits and unit sent.
    let jsonl = std::fs::read_to_string(dir.join("readings.jsonl")).expect("jsonl");
    let reading: Value = serde_json::from_str(jsonl.lines().next().expect("a line")).expect("JSON");
    let objects = reading["objects"].as_array().expect("objects");
    let object = |obis: &str| objects.iter().find(|o| o["obis"] == obis).cloned();
    let named = object("0-1:24.2.11").expect("0-1:24.2.11");
    assert_eq!(named["name"], "heat_return_energy");
    assert_eq!(
        (named["value"].as_f64(), &named["unit"]),
        (Some(18123.0), &Value::from("Wh"))
    );
    assert!(
        object("0-1:24.2.12")
            .expect("0-1:24.2.12")
            .get("name")
            .is_none()
    );
    assert_eq!(
        object("0-1:24.2.5").expect("24.2.5")["name"],
        "heat_energy_total"
    );
}
