//! The Azure IoT Hub sink end to end: `p1gw run` as a child process against p1-sink-azure's
//! fake hub (TLS with a test CA given as `ca_file`, SAS tokens checked, PUBACKs), and the exit
//! code of a broken connection string. No real hub is needed: the fake checks what it checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p1_sink_azure::fake_hub::{CloseReason, FakeDevice, FakeHub, HubConfig};
use serde_json::Value;

use crate::support::{Daemon, wait_for};

const KEY: &[u8] = b"p1gw-end-to-end-device-key-0123";

/// A recording of `n` Veitur-like telegrams whose energy register counts 1, 2, … kWh.
fn recording(dir: &Path, n: usize) -> PathBuf {
    let mut text = String::new();
    for i in 1..=n {
        text.push_str(&format!(
            "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(86818632)\r\n1-0:0.9.1({:06})\r\n1-0:0.9.2(240501)\r\n\
             1-0:1.7.0(00.588*kW)\r\n1-0:1.8.0({:010.3}*kWh)\r\n1-0:2.8.0(000000.000*kWh)\r\n\
             0-1:24.2.1(0366.475*m3)\r\n!\r\n",
            100_000 + i,
            i as f64
        ));
    }
    let path = dir.join("veitur-counting.txt");
    std::fs::write(&path, text).expect("write recording");
    path
}

/// The energy registers of the readings in a message body.
fn energies(body: &[u8]) -> Vec<u64> {
    let v: Value = serde_json::from_slice(body).expect("a JSON body");
    v["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .map(|r| {
            r["objects"]
                .as_array()
                .and_then(|o| o.iter().find(|o| o["name"] == "energy_import_total"))
                .and_then(|o| o["value"].as_f64())
                .expect("energy_import_total") as u64
        })
        .collect()
}

fn write_secret(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

fn config(source: &str, sink: &str) -> String {
    format!(
        r#"
[meter]
name = "home"
tz = "Atlantic/Reykjavik"

[source]
{source}

[[sink]]
kind = "azure-iot"
{sink}

[spool]
dir = "{{dir}}/spool"
"#
    )
}

#[test]
fn p1gw_run_sends_every_reading_once_to_the_fake_hub_and_disconnects_cleanly() {
    let hub = FakeHub::start(HubConfig::new(vec![FakeDevice::sas("meter-1", KEY)]));
    let files = tempfile::tempdir().expect("tempdir");
    // The connection string names the hub; the fake listens on localhost (its certificate's
    // name), reached as the device's gateway.
    let conn = write_secret(
        files.path(),
        "azure.conn",
        &format!("{};GatewayHostName=localhost\n", hub.connection_string(0)),
    );
    let ca = write_secret(files.path(), "hub-ca.pem", hub.ca_pem());
    let n = 24;
    let replay = recording(files.path(), n);
    let text = config(
        &format!(
            "kind = \"replay\"\npath = {:?}\ninterval = \"50ms\"",
            replay.display().to_string()
        ),
        &format!(
            "connection_string_file = {conn:?}\nca_file = {ca:?}\nport = {}\ninterval = \"1s\"\ndaily_message_budget = 100000\nproperties = {{ meter = \"home\", kind = \"electricity\" }}",
            hub.port()
        ),
    );
    let (mut daemon, _) = Daemon::start(&text, &[]);

    let log = hub.wait_for_blocking(
        Duration::from_secs(30),
        "every reading acknowledged",
        |log| log.acked().map(|m| energies(&m.body).len()).sum::<usize>() >= n,
    );
    // Each reading once, in order, over a few batched messages.
    let got: Vec<u64> = log.acked().flat_map(|m| energies(&m.body)).collect();
    assert_eq!(
        got,
        (1..=n as u64).collect::<Vec<_>>(),
        "{:#?}",
        log.messages.len()
    );
    assert!(
        log.messages.len() < n,
        "readings are batched: {} messages for {n} readings",
        log.messages.len()
    );
    let m = &log.messages[0];
    assert_eq!(m.client_id, "meter-1");
    let props: BTreeMap<&str, &str> = m
        .properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(props.get("$.ct"), Some(&"application/json"));
    assert_eq!(props.get("$.ce"), Some(&"utf-8"));
    assert_eq!(props.get("meter"), Some(&"home"));
    assert_eq!(props.get("kind"), Some(&"electricity"));
    let body: Value = serde_json::from_slice(&m.body).expect("JSON");
    assert_eq!(body["readings"][0]["meter"], "home");
    assert_eq!(body["readings"][0]["header"], "ISk5\\2MIE5E-200");
    assert_eq!(log.connects[0].code, 0);
    assert_eq!(
        log.connects[0].username,
        "fake-hub.azure-devices.net/meter-1/?api-version=2021-04-12"
    );

    // Metrics: the sink's counters and the budget gauge.
    let sent = wait_for(Duration::from_secs(10), "the sent counter", || {
        let (_, body) = daemon.get("/metrics")?;
        let sent = p1_testkit::metric(&body, "p1gw_sink_sent_total", &[("sink", "azure-iot")])?;
        (sent >= n as f64).then_some(body)
    });
    let today = sent
        .lines()
        .find(|l| l.starts_with("p1gw_azure_messages_today{sink=\"azure-iot\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("p1gw_azure_messages_today");
    assert!(today >= log.messages.len() as f64, "{today}");

    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        daemon.log()
    );
    hub.wait_for_blocking(Duration::from_secs(5), "a clean DISCONNECT", |log| {
        log.closed(&CloseReason::ClientDisconnect) == 1
    });
    let output = daemon.log();
    let conn = hub.connection_string(0);
    let key = conn
        .split("SharedAccessKey=")
        .nth(1)
        .expect("a key in the connection string");
    assert!(!output.contains(key), "the key leaked:\n{output}");
    assert!(
        !output.contains("SharedAccessSignature"),
        "a token leaked:\n{output}"
    );
    assert!(output.contains("Connected to IoT Hub"), "{output}");
}

#[test]
fn a_connection_string_without_device_id_exits_78_naming_the_field() {
    let files = tempfile::tempdir().expect("tempdir");
    let conn = write_secret(
        files.path(),
        "azure.conn",
        "HostName=hub.azure-devices.net;SharedAccessKey=c3VwZXItc2VjcmV0LWtleQ==\n",
    );
    let text = config(
        "kind = \"simulate\"",
        &format!("connection_string_file = {conn:?}"),
    );
    let (mut daemon, _) = Daemon::start(&text, &[]);
    assert_eq!(daemon.wait_exit(Duration::from_secs(20)), Some(78));
    let output = daemon.log();
    assert!(
        output.contains("missing DeviceId") && output.contains("azure.conn"),
        "{output}"
    );
    assert!(
        !output.contains("c3VwZXItc2VjcmV0LWtleQ"),
        "the key leaked:\n{output}"
    );
}
