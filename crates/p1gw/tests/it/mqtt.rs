//! The MQTT sink against a real Mosquitto (Debian's `mosquitto` + `mosquitto-clients`, started
//! by `scripts/servers` on a free port in a temp dir and stopped by pid, also on failure):
//! state messages in order, Home Assistant discovery, availability and the last will, the
//! birth message, password and TLS logins, and no loss across a broker restart; over MQTT 5
//! as well, and a broker refusing a too-large message.
//!
//! These tests fail (never skip) when Mosquitto is missing, naming the packages.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use p1_testkit::{Server, component, metric, metric_sum};

use crate::support::{Daemon, root, stop_child, wait_for};

/// One received message.
#[derive(Debug, Clone)]
struct Msg {
    retained: bool,
    /// The broker's message id towards the subscriber (0 for QoS 0).
    mid: u32,
    topic: String,
    payload: String,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.topic, self.payload))
    }
}

/// A `mosquitto_sub` on `#`, killed on drop; messages are collected by a thread.
struct Sub {
    child: Child,
    rx: mpsc::Receiver<Msg>,
    seen: Vec<Msg>,
}

impl Sub {
    /// Subscribes and returns once the subscription works (a probe message came back).
    /// `session`: a client id for a persistent session (QoS 1, not cleaned).
    fn start(broker: &Server, session: Option<&str>) -> Sub {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(broker.mosquitto_args())
            .args(["-t", "#", "-q", "1", "-F", "%r %m %t %p"]);
        if let Some(id) = session {
            cmd.args(["-c", "-i", id]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(4, ' ');
                let (Some(retained), Some(mid), Some(topic)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let payload = parts.next().unwrap_or_default();
                let msg = Msg {
                    retained: retained == "1",
                    mid: mid.parse().unwrap_or(0),
                    topic: topic.to_owned(),
                    payload: payload.to_owned(),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        let mut sub = Sub {
            child,
            rx,
            seen: Vec::new(),
        };
        // Ready when a probe comes back: publish until one does.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            broker.publish("p1gw-test/probe", "ping");
            if sub
                .wait_until(Duration::from_millis(300), |m| m.topic == "p1gw-test/probe")
                .is_some()
            {
                break;
            }
            assert!(Instant::now() < deadline, "mosquitto_sub did not subscribe");
        }
        sub
    }

    /// Ends mosquitto_sub and takes every line it printed (the reader thread ends at EOF).
    fn close(&mut self) {
        stop_child(&mut self.child);
        while let Ok(m) = self.rx.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(m);
        }
    }

    /// Takes what arrived so far.
    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.seen.push(m);
        }
    }

    /// Waits for a message matching `f` (also among those seen before), at most `limit`.
    fn wait_until(&mut self, limit: Duration, f: impl Fn(&Msg) -> bool) -> Option<Msg> {
        self.drain();
        if let Some(m) = self.seen.iter().find(|m| f(m)) {
            return Some(m.clone());
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let m = self.rx.recv_timeout(left).ok()?;
            self.seen.push(m.clone());
            if f(&m) {
                return Some(m);
            }
        }
    }

    /// Waits for a message matching `f` that arrives after the messages looked at so far
    /// (those already received but not yet looked at count as new).
    fn wait_next(&mut self, limit: Duration, f: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let start = self.seen.len();
        self.drain();
        if let Some(m) = self.seen[start..].iter().find(|m| f(m)) {
            return Some(m.clone());
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let m = self.rx.recv_timeout(left).ok()?;
            self.seen.push(m.clone());
            if f(&m) {
                return Some(m);
            }
        }
    }

    fn expect(&mut self, what: &str, f: impl Fn(&Msg) -> bool) -> Msg {
        self.wait_until(Duration::from_secs(15), f)
            .unwrap_or_else(|| panic!("no {what} within 15 s; got {:?}", self.topics()))
    }

    fn topics(&mut self) -> Vec<String> {
        self.drain();
        self.seen.iter().map(|m| m.topic.clone()).collect()
    }

    /// The state messages of `meter` so far.
    fn states(&mut self, meter: &str) -> Vec<Value> {
        self.state_msgs(meter).iter().map(Msg::json).collect()
    }

    /// The same, as received.
    fn state_msgs(&mut self, meter: &str) -> Vec<Msg> {
        self.drain();
        let topic = format!("p1gw/{meter}/state");
        self.seen
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Writes a recording of `n` Veitur-like telegrams whose energy register counts 1.000, 2.000, …
/// kWh, with the heat/hot-water submeter on channel 1; returns its path.
fn recording(dir: &Path, n: usize) -> PathBuf {
    recording_with_big(dir, n, None)
}

/// The same, with a 2000-character text message (`0-0:96.13.0`) in telegram `big`: its state
/// message is about 4.5 kB, the others' about 1.5 kB.
fn recording_with_big(dir: &Path, n: usize, big: Option<usize>) -> PathBuf {
    let mut text = String::new();
    for i in 1..=n {
        let message = if Some(i) == big {
            format!("0-0:96.13.0({})\r\n", "41".repeat(1000))
        } else {
            String::new()
        };
        text.push_str(&format!(
            "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(86818632)\r\n1-0:0.9.1({:06})\r\n1-0:0.9.2(240501)\r\n\
             0-0:96.1.1(36303836383138363631)\r\n1-0:1.7.0(00.588*kW)\r\n1-0:1.8.0({:010.3}*kWh)\r\n\
             1-0:2.8.0(000000.000*kWh)\r\n1-0:32.7.0(231.3*V)\r\n1-0:31.7.0(002*A)\r\n\
             0-1:24.2.1(0366.475*m3)\r\n0-1:24.2.2(0000.090*m3/h)\r\n0-1:24.2.3(000074.8*degC)\r\n\
             0-1:24.2.4(000031.3*degC)\r\n0-1:24.2.5(0019.078*Wh)\r\n{message}!\r\n",
            100_000 + i % 60 + (i / 60) * 100,
            i as f64
        ));
    }
    let path = dir.join("veitur-counting.txt");
    std::fs::write(&path, text).expect("write recording");
    path
}

/// The energy register of a state message.
fn energy(state: &Value) -> f64 {
    state["objects"]
        .as_array()
        .and_then(|objects| objects.iter().find(|o| o["name"] == "energy_import_total"))
        .and_then(|o| o["value"].as_f64())
        .unwrap_or_else(|| panic!("no energy_import_total in {state}"))
}

fn config(sink: &str, meters: &str) -> String {
    format!(
        r#"
{meters}

[[sink]]
{sink}

[spool]
dir = "{{dir}}/spool"
"#
    )
}

fn sink_status(daemon: &Daemon) -> Option<Value> {
    let (_, body) = daemon.get("/api/v1/status")?;
    component(&body, "sink:mqtt")
}

/// The daemon's `/metrics` text (empty while it does not answer).
fn metrics(daemon: &Daemon) -> String {
    daemon
        .get("/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Two meters: "home" replays `rec` (30 readings at 50 ms), and a looping Belgian meter keeps
/// the daemon running after them.
fn home_and_belgium(rec: &Path) -> String {
    let belgium = root().join("fixtures/telegrams/belgium_fluvius_emucs_gas_water.txt");
    format!(
        r#"
[[meters]]
name = "home"
tz = "Atlantic/Reykjavik"
source = {{ kind = "replay", path = "{}", interval = "50ms" }}

[[meters]]
name = "be"
tz = "Europe/Brussels"
source = {{ kind = "replay", path = "{}", interval = "200ms", loop = true }}
"#,
        rec.display(),
        belgium.display()
    )
}

/// The `[meter]` and `[source]` of a meter "home" replaying `recording` every 50 ms, once or
/// (`repeat`) in a loop.
fn home_meter(recording: &Path, repeat: bool) -> String {
    format!(
        "[meter]\nname = \"home\"\ntz = \"UTC\"\n[source]\nkind = \"replay\"\npath = \"{}\"\ninterval = \"50ms\"\nloop = {repeat}",
        recording.display()
    )
}

#[test]
fn states_in_order_discovery_birth_and_last_will_against_mosquitto() {
    states_discovery_birth_and_last_will("3.1.1");
}

#[test]
fn mqtt5_states_in_order_discovery_birth_and_last_will_against_mosquitto() {
    states_discovery_birth_and_last_will("5");
}

/// The whole life of a sink against Mosquitto over `protocol`: availability, every state in
/// order, value topics, discovery, retained configs for a late subscriber, Home Assistant's
/// birth message, and the last will.
fn states_discovery_birth_and_last_will(protocol: &str) {
    let broker = Server::start("mosquitto", &[]);
    let mut sub = Sub::start(&broker, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let meters = home_and_belgium(&recording(tmp.path(), 30));
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\nprotocol = \"{protocol}\"",
        broker.port("MQTT_PORT")
    );
    let (mut daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);

    // Availability: online, retained, on the first meter's status topic.
    sub.expect("status online", |m| {
        m.topic == "p1gw/home/status" && m.payload == "online"
    });

    // Every state message of "home", in order, with the reading's JSON.
    let states = wait_for(Duration::from_secs(20), "30 state messages", || {
        let s = sub.states("home");
        (s.len() >= 30).then_some(s)
    });
    assert_eq!(states.len(), 30, "each reading once");
    for (i, state) in states.iter().enumerate() {
        assert_eq!(state["meter"], "home");
        assert_eq!(state["header"], "ISk5\\2MIE5E-200");
        assert_eq!(energy(state), (i + 1) as f64, "in order: {state}");
    }
    // Value topics in canonical units.
    let hot = sub.expect("hot water volume value", |m| {
        m.topic == "p1gw/home/hot_water_1/hot_water_volume"
    });
    assert_eq!(hot.payload, "366.475");

    // Discovery: energy, gas, water, Veitur's hot water and heat registers.
    let disc = |sub: &mut Sub, object: &str| -> Value {
        let topic = format!("homeassistant/sensor/{object}/config");
        sub.expect(&topic, |m| m.topic == topic && !m.payload.is_empty())
            .json()
    };
    let classes = |c: &Value| {
        (
            c["device_class"].as_str().map(str::to_owned),
            c["state_class"].as_str().map(str::to_owned),
            c["unit_of_measurement"].as_str().map(str::to_owned),
        )
    };
    let some = |s: &str| Some(s.to_owned());
    let energy_cfg = disc(&mut sub, "p1gw_home/energy_import_total");
    assert_eq!(
        classes(&energy_cfg),
        (some("energy"), some("total_increasing"), some("kWh"))
    );
    assert_eq!(energy_cfg["state_topic"], "p1gw/home/energy_import_total");
    assert_eq!(
        energy_cfg["availability"],
        serde_json::json!([{"topic": "p1gw/home/status"}, {"topic": "p1gw/home/availability"}])
    );
    assert_eq!(energy_cfg["device"]["manufacturer"], "Iskraemeco");
    assert_eq!(energy_cfg["device"]["model"], "IE.5");
    let hot_cfg = disc(&mut sub, "p1gw_home/hot_water_1_hot_water_volume");
    assert_eq!(
        classes(&hot_cfg),
        (some("water"), some("total_increasing"), some("m³"))
    );
    assert_eq!(hot_cfg["device"]["via_device"], "p1gw_home");
    let heat_cfg = disc(&mut sub, "p1gw_home/hot_water_1_heat_energy");
    assert_eq!(
        classes(&heat_cfg),
        (None, some("measurement"), some("Wh")),
        "Veitur's heat energy stays out of the Energy dashboard"
    );
    let gas_cfg = disc(&mut sub, "p1gw_be/gas_1_gas_volume");
    assert_eq!(
        classes(&gas_cfg),
        (some("gas"), some("total_increasing"), some("m³"))
    );
    let water_cfg = disc(&mut sub, "p1gw_be/water_2_water_volume");
    assert_eq!(
        classes(&water_cfg),
        (some("water"), some("total_increasing"), some("m³"))
    );
    let export_cfg = disc(&mut sub, "p1gw_be/energy_export_tariff1");
    assert_eq!(
        classes(&export_cfg),
        (some("energy"), some("total_increasing"), some("kWh"))
    );
    assert_eq!(export_cfg["device"]["manufacturer"], "Fluvius");
    assert_eq!(
        export_cfg["availability"],
        serde_json::json!([{"topic": "p1gw/home/status"}, {"topic": "p1gw/be/availability"}]),
        "one connection, one last will; each meter its own availability"
    );
    let tariff_cfg = disc(&mut sub, "p1gw_be/tariff_indicator");
    assert_eq!(tariff_cfg["device_class"], "enum");
    assert_eq!(tariff_cfg["entity_category"], "diagnostic");

    // The configs are retained: a new subscriber gets them at once.
    let mut late = Sub::start(&broker, None);
    let retained = late.expect("retained energy config", |m| {
        m.topic == "homeassistant/sensor/p1gw_home/energy_import_total/config"
    });
    assert!(retained.retained);
    drop(late);
    assert_eq!(
        metric_sum(
            &metrics(&daemon),
            "p1gw_sink_dropped_total",
            &[("sink", "mqtt")]
        ),
        0.0,
        "nothing dropped"
    );
    if protocol == "5" {
        assert!(
            std::fs::read_to_string(broker.var("LOG")).is_ok_and(|log| log.contains("(p5,")),
            "the broker saw an MQTT 5 client"
        );
    }

    // Home Assistant's birth message makes p1gw publish discovery again.
    broker.publish("homeassistant/status", "online");
    sub.wait_next(Duration::from_secs(10), |m| {
        m.topic == "homeassistant/sensor/p1gw_home/energy_import_total/config"
    })
    .expect("discovery published again after homeassistant/status = online");

    // An abrupt end of p1gw: the broker publishes the last will.
    daemon.child.kill().expect("kill p1gw");
    daemon.child.wait().expect("reap p1gw");
    let will = sub
        .wait_next(Duration::from_secs(10), |m| m.topic == "p1gw/home/status")
        .expect("the last will after p1gw was killed");
    assert_eq!(will.payload, "offline");
}

#[test]
fn no_reading_is_lost_or_repeated_when_the_broker_restarts() {
    let persist = tempfile::tempdir().expect("tempdir");
    let persist_dir = persist.path().display().to_string();
    let mut broker = Server::start("mosquitto", &["--persistence", &persist_dir]);
    let port = broker.port("MQTT_PORT").to_string();
    // A persistent subscriber: the broker keeps what arrives while it reconnects.
    let mut sub = Sub::start(&broker, Some("p1gw-it-no-loss"));
    let tmp = tempfile::tempdir().expect("tempdir");
    const N: usize = 80;
    let rec = recording(tmp.path(), N);
    let meters = format!(
        r#"
[meter]
name = "home"
tz = "Atlantic/Reykjavik"

[source]
kind = "replay"
path = "{}"
interval = "100ms"
"#,
        rec.display()
    );
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ndiscovery = false\nvalue_topics = false\nbacklog_rate = 20"
    );
    let (daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);

    wait_for(Duration::from_secs(20), "10 state messages", || {
        (sub.states("home").len() >= 10).then_some(())
    });
    // Stop the broker right after a state message: the next reading is 100 ms away, so none
    // is in flight.
    sub.wait_next(Duration::from_secs(5), |m| m.topic == "p1gw/home/state")
        .expect("a state message");
    broker.stop(false);
    sub.close();
    let before = sub.state_msgs("home");
    drop(sub);

    // Readings spool meanwhile, and the sink says why.
    wait_for(Duration::from_secs(20), "10 readings spooled", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n >= 10.0)
    });
    let status = sink_status(&daemon).expect("sink status");
    assert_eq!(status["state"], "degraded", "{status}");

    // The same broker comes back on the same port with the same persistence.
    let broker = Server::start(
        "mosquitto",
        &["--port", &port, "--persistence", &persist_dir],
    );
    let mut sub = Sub::start(&broker, Some("p1gw-it-no-loss"));
    let mut after = wait_for(Duration::from_secs(30), "all readings", || {
        let got = before.len() + sub.states("home").len();
        (got >= N).then(|| sub.state_msgs("home"))
    });
    // Between the broker and this test's QoS 1 subscriber, a message whose PUBACK the broker
    // had not processed when it stopped is delivered again after the restart, with the same
    // message id: the broker's redelivery to us, not a reading p1gw sent twice (p1gw's
    // messages get new ids).
    if let (Some(last), Some(first)) = (before.last(), after.first())
        && last.mid != 0
        && last.mid == first.mid
        && last.payload == first.payload
    {
        after.remove(0);
        if before.len() + after.len() < N {
            after = wait_for(Duration::from_secs(10), "the last reading", || {
                let msgs = sub.state_msgs("home");
                (before.len() + msgs.len() > N).then(|| msgs[1..].to_vec())
            });
        }
    }
    let all: Vec<f64> = before
        .iter()
        .chain(after.iter())
        .map(|m| energy(&m.json()))
        .collect();
    let expected: Vec<f64> = (1..=N).map(|i| i as f64).collect();
    assert_eq!(all, expected, "every reading exactly once, in order");
    wait_for(Duration::from_secs(10), "an empty spool", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n == 0.0)
    });
    assert_eq!(
        metric(
            &metrics(&daemon),
            "p1gw_sink_sent_total",
            &[("sink", "mqtt")]
        ),
        Some(N as f64)
    );
}

#[test]
fn password_login_works_and_a_wrong_password_keeps_readings_spooled() {
    let broker = Server::start("mosquitto", &["--password"]);
    let mut sub = Sub::start(&broker, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording(tmp.path(), 10);
    let meters = home_meter(&rec, true);
    let good = tmp.path().join("good.pass");
    std::fs::write(&good, format!("{}\n", broker.var("MQTT_PASSWORD"))).expect("write");
    let bad = tmp.path().join("bad.pass");
    std::fs::write(&bad, "not-the-password\n").expect("write");
    let sink = |file: &Path| {
        format!(
            "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\nusername = \"{}\"\npassword_file = \"{}\"\ndiscovery = false",
            broker.port("MQTT_PORT"),
            broker.var("MQTT_USER"),
            file.display()
        )
    };

    let (daemon, _dir) = Daemon::start(&config(&sink(&good), &meters), &[]);
    sub.expect("a state message with the right password", |m| {
        m.topic == "p1gw/home/state"
    });
    drop(daemon);

    let (daemon, _dir) = Daemon::start(&config(&sink(&bad), &meters), &[]);
    let status = wait_for(Duration::from_secs(20), "the sink degraded", || {
        sink_status(&daemon).filter(|s| s["state"] == "degraded")
    });
    let reason = status["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("not authorized") || reason.contains("bad user name or password"),
        "{status}"
    );
    assert!(
        reason.contains("password_file"),
        "says what to check: {reason}"
    );
    wait_for(Duration::from_secs(20), "readings spooled", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n >= 5.0)
    });
    assert!(
        daemon.log().contains("MQTT connection failed"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        metric(
            &metrics(&daemon),
            "p1gw_sink_sent_total",
            &[("sink", "mqtt")]
        )
        .unwrap_or(0.0),
        0.0
    );
}

#[test]
fn tls_with_a_ca_of_our_own() {
    let broker = Server::start("mosquitto", &["--tls", "--password"]);
    let mut sub = Sub::start(&broker, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording(tmp.path(), 5);
    let meters = home_meter(&rec, false);
    let pass = tmp.path().join("mqtt.pass");
    std::fs::write(&pass, broker.var("MQTT_PASSWORD")).expect("write");
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtts://localhost:{}\"\nusername = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"",
        broker.port("MQTT_PORT"),
        broker.var("MQTT_USER"),
        pass.display(),
        broker.var("MQTT_CA")
    );
    let (_daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);
    let states = wait_for(Duration::from_secs(20), "5 states over TLS", || {
        let s = sub.states("home");
        (s.len() >= 5).then_some(s)
    });
    let values: Vec<f64> = states.iter().map(energy).collect();
    assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0]);
    sub.expect("discovery over TLS", |m| {
        m.topic == "homeassistant/sensor/p1gw_home/energy_import_total/config"
    });
}

#[test]
fn client_certificate_against_mosquitto_that_requires_one() {
    // `require_certificate true`: the broker takes only clients with a certificate signed by
    // its CA. With client_cert_file/client_key_file p1gw delivers; without, the TLS handshake
    // fails, the sink says so and keeps every reading spooled.
    let broker = Server::start("mosquitto", &["--client-cert"]);
    let mut sub = Sub::start(&broker, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording(tmp.path(), 5);
    let meters = home_meter(&rec, false);
    let tls = format!(
        "kind = \"mqtt\"\nurl = \"mqtts://localhost:{}\"\nca_file = \"{}\"",
        broker.port("MQTT_PORT"),
        broker.var("MQTT_CA")
    );
    let with_cert = format!(
        "{tls}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        broker.var("MQTT_CLIENT_CERT"),
        broker.var("MQTT_CLIENT_KEY")
    );
    let (_daemon, _dir) = Daemon::start(&config(&with_cert, &meters), &[]);
    let states = wait_for(
        Duration::from_secs(20),
        "5 states with a client certificate",
        || {
            let s = sub.states("home");
            (s.len() >= 5).then_some(s)
        },
    );
    let values: Vec<f64> = states.iter().map(energy).collect();
    assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0]);

    let (refused, _dir2) = Daemon::start(&config(&tls, &meters), &[]);
    let status = wait_for(
        Duration::from_secs(20),
        "the sink without a certificate degraded",
        || sink_status(&refused).filter(|s| s["state"] == "degraded"),
    );
    assert!(
        refused.log().contains("MQTT connection failed"),
        "a clear log line: {status} {}",
        refused.log()
    );
    wait_for(Duration::from_secs(20), "all 5 readings spooled", || {
        metric(
            &metrics(&refused),
            "p1gw_spool_records",
            &[("sink", "mqtt")],
        )
        .filter(|n| *n >= 5.0)
    });
    assert_eq!(
        metric(
            &metrics(&refused),
            "p1gw_sink_sent_total",
            &[("sink", "mqtt")]
        )
        .unwrap_or(0.0),
        0.0,
        "nothing counted as sent without a certificate"
    );
}

/// Forwards every connection to 127.0.0.2:<port> on to `to` (a broker on 127.0.0.1), so that
/// the broker is reached under a name its certificate does not have. Runs until the test ends.
fn forward_from_127_0_0_2(to: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let (mut c, mut s) = (client, server);
            std::thread::spawn(move || std::io::copy(&mut c2, &mut s2));
            std::thread::spawn(move || std::io::copy(&mut s, &mut c));
        }
    });
    port
}

#[test]
fn a_tls_name_mismatch_is_refused_clearly_and_readings_keep_spooling() {
    // The broker's certificate names localhost and 127.0.0.1; p1gw is sent to 127.0.0.2.
    let broker = Server::start("mosquitto", &["--tls"]);
    let port = forward_from_127_0_0_2(broker.port("MQTT_PORT"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording(tmp.path(), 10);
    let meters = home_meter(&rec, true);
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtts://127.0.0.2:{port}\"\nca_file = \"{}\"\ndiscovery = false",
        broker.var("MQTT_CA")
    );
    let (daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);
    let status = wait_for(Duration::from_secs(20), "the sink degraded", || {
        sink_status(&daemon).filter(|s| s["state"] == "degraded")
    });
    let reason = status["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("certificate") && reason.contains("127.0.0.2"),
        "the reason names the certificate problem and the name: {status}"
    );
    let (code, ready) = daemon.get("/readyz").expect("/readyz");
    assert_eq!(
        code, 200,
        "a spooling sink is ready (docs/contracts.md §6): {ready}"
    );
    wait_for(Duration::from_secs(20), "readings spooled", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n >= 5.0)
    });
    assert_eq!(
        metric(
            &metrics(&daemon),
            "p1gw_sink_sent_total",
            &[("sink", "mqtt")]
        )
        .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric(
            &metrics(&daemon),
            "p1gw_spool_evicted_total",
            &[("sink", "mqtt")]
        )
        .unwrap_or(0.0),
        0.0,
        "nothing dropped"
    );
    assert!(
        daemon.log().contains("MQTT connection failed"),
        "a clear log line: {}",
        daemon.log()
    );
}

/// Reading 5 of 12 has a state message of ~4.5 kB; the broker takes 3000 bytes at most (by
/// `option`): that one message is dropped, counted and logged at ERROR naming topic and size;
/// the reading's other messages and every other reading arrive, in order, and the spool
/// empties.
fn mqtt5_too_large(option: &str) {
    let broker = Server::start("mosquitto", &[option, "3000"]);
    let mut sub = Sub::start(&broker, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording_with_big(tmp.path(), 12, Some(5));
    let meters = home_meter(&rec, false);
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\nprotocol = \"5\"",
        broker.port("MQTT_PORT")
    );
    let (daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);

    let states = wait_for(Duration::from_secs(20), "11 state messages", || {
        let s = sub.states("home");
        (s.len() >= 11).then_some(s)
    });
    let got: Vec<f64> = states.iter().map(energy).collect();
    let want: Vec<f64> = (1..=12).filter(|i| *i != 5).map(f64::from).collect();
    assert_eq!(got, want, "every other reading, once, in order");
    // The big reading's other messages were delivered.
    sub.expect("reading 5's energy value", |m| {
        m.topic == "p1gw/home/energy_import_total" && m.payload == "5"
    });
    wait_for(Duration::from_secs(10), "the drop counted", || {
        metric(
            &metrics(&daemon),
            "p1gw_sink_dropped_total",
            &[("sink", "mqtt"), ("reason", "too_large")],
        )
        .filter(|n| *n == 1.0)
    });
    wait_for(Duration::from_secs(10), "an empty spool", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n == 0.0)
    });
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("dropped"))
        .unwrap_or_else(|| panic!("no ERROR line about the drop in\n{log}"));
    assert!(
        line.contains("p1gw/home/state") && line.contains("too large"),
        "names topic and reason: {line}"
    );
    let status = sink_status(&daemon).expect("sink status");
    assert_eq!(status["counters"]["dropped"], 1, "{status}");
    let last_error = status["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("p1gw/home/state") && last_error.contains("too large"),
        "/api/v1/status names the dropped message: {status}"
    );
    // No reading repeated, nothing more dropped.
    assert_eq!(sub.states("home").len(), 11);
}

#[test]
fn mqtt5_a_message_over_the_brokers_size_limit_is_dropped_counted_and_logged() {
    // Mosquitto's message_size_limit: PUBACK 0x95, which rumqttc 0.25 cannot decode.
    mqtt5_too_large("--max-message");
}

#[test]
fn mqtt5_a_message_over_the_brokers_maximum_packet_size_is_never_sent() {
    // Mosquitto's max_packet_size: announced in the CONNACK, checked before sending.
    mqtt5_too_large("--max-packet");
}

/// A broker whose ACL refuses the state topic (PUBACK 0x87 over MQTT 5): the readings stay
/// spooled, the sink is degraded naming the topic and the reason, the refusal is logged at
/// ERROR and counted; once the broker takes them (restarted without the ACL on the same port)
/// every reading arrives, in order.
#[test]
fn mqtt5_a_refused_message_keeps_its_reading_spooled_until_the_broker_takes_it() {
    let persist = tempfile::tempdir().expect("tempdir");
    let persist_dir = persist.path().display().to_string();
    let mut broker = Server::start(
        "mosquitto",
        &["--deny", "p1gw/home/state", "--persistence", &persist_dir],
    );
    let port = broker.port("MQTT_PORT").to_string();
    // A persistent subscriber, so that the restarted broker keeps for it what p1gw sends
    // before it is back.
    drop(Sub::start(&broker, Some("p1gw-it-refused")));
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording(tmp.path(), 10);
    let meters = home_meter(&rec, false);
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nprotocol = \"5\"\ndiscovery = false\nvalue_topics = false"
    );
    let (daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);

    let status = wait_for(Duration::from_secs(20), "the sink degraded", || {
        sink_status(&daemon).filter(|s| s["state"] == "degraded")
    });
    let reason = status["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains("p1gw/home/state") && reason.contains("NotAuthorized"),
        "{status}"
    );
    wait_for(Duration::from_secs(20), "all 10 readings spooled", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n == 10.0)
    });
    wait_for(Duration::from_secs(20), "the refusal counted", || {
        metric(
            &metrics(&daemon),
            "p1gw_sink_failed_total",
            &[("sink", "mqtt"), ("reason", "not_authorized")],
        )
        .filter(|n| *n >= 1.0)
    });
    assert!(
        daemon
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("p1gw/home/state")),
        "{}",
        daemon.log()
    );
    assert_eq!(
        metric_sum(
            &metrics(&daemon),
            "p1gw_sink_dropped_total",
            &[("sink", "mqtt")]
        ),
        0.0,
        "a refusal that may pass later drops nothing"
    );

    // The operator fixes the ACL: the broker comes back without it, on the same port.
    broker.stop(false);
    let broker = Server::start(
        "mosquitto",
        &["--port", &port, "--persistence", &persist_dir],
    );
    let mut sub = Sub::start(&broker, Some("p1gw-it-refused"));
    let states = wait_for(Duration::from_secs(30), "10 state messages", || {
        let s = sub.states("home");
        (s.len() >= 10).then_some(s)
    });
    let got: Vec<f64> = states.iter().map(energy).collect();
    let want: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(got, want, "every reading, once, in order");
    wait_for(Duration::from_secs(10), "an empty spool", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n == 0.0)
    });
}

/// Issue "Home Assistant shows the present": the broker stopped for 20 s while a meter sends
/// 5 readings/s with value topics and discovery. After the broker is back, p1gw reconnects
/// within 3 s (the backoff no longer grows past 1.5 s), every value topic holds the present
/// within 2 s of the reconnect (the latest reading's value, not the backlog's oldest), and
/// the state topic, the history, gets every reading once, in order.
#[test]
fn after_a_broker_outage_the_present_comes_first_and_the_history_is_whole() {
    let persist = tempfile::tempdir().expect("tempdir");
    let persist_dir = persist.path().display().to_string();
    let mut broker = Server::start("mosquitto", &["--persistence", &persist_dir]);
    let port = broker.port("MQTT_PORT").to_string();
    let mut history = Sub::start(&broker, Some("p1gw-it-history"));
    let tmp = tempfile::tempdir().expect("tempdir");
    const N: usize = 250;
    let rec = recording(tmp.path(), N);
    let meters = format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n[source]\nkind = \"replay\"\n\
         path = \"{}\"\ninterval = \"200ms\"\n",
        rec.display()
    );
    let sink = format!("kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ndiscovery = true");
    let (daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);
    history.expect("a first state", |m| m.topic == "p1gw/home/state");

    broker.stop(false);
    history.close();
    let before = history.state_msgs("home");
    drop(history);
    let produced = || {
        metric(
            &metrics(&daemon),
            "p1gw_telegrams_total",
            &[("meter", "home")],
        )
    };
    let at_stop = produced().unwrap_or(0.0);
    wait_for(Duration::from_secs(40), "20 s of readings spooled", || {
        produced().filter(|n| *n >= at_stop + 100.0)
    });

    let broker = Server::start(
        "mosquitto",
        &["--port", &port, "--persistence", &persist_dir],
    );
    let back = Instant::now();
    let mut ha = Sub::start(&broker, None);
    let mut history = Sub::start(&broker, Some("p1gw-it-history"));
    let reconnect = wait_for(Duration::from_secs(10), "the sink connected again", || {
        let state = sink_status(&daemon)?;
        (state["state"] == "ok").then(|| back.elapsed())
    });
    let newest_at_reconnect = produced().unwrap_or(0.0);
    // A value sent after the reconnect (not the broker's retained copy) from the readings of
    // the moment, not from the backlog.
    let present = ha
        .wait_until(Duration::from_secs(10), |m| {
            !m.retained
                && m.topic == "p1gw/home/energy_import_total"
                && m.payload
                    .parse::<f64>()
                    .is_ok_and(|v| v >= newest_at_reconnect - 1.0)
        })
        .map(|_| back.elapsed());
    assert!(
        reconnect <= Duration::from_secs(3),
        "reconnected {reconnect:?} after the broker's return"
    );
    let present = present.expect("the present value within 10 s");
    assert!(
        present <= reconnect + Duration::from_secs(2),
        "the present value came {present:?} after the broker's return (reconnect {reconnect:?})"
    );
    // No value topic ever went back to the past once the present was there.
    let energies: Vec<f64> = {
        ha.drain();
        ha.seen
            .iter()
            .filter(|m| !m.retained && m.topic == "p1gw/home/energy_import_total")
            .filter_map(|m| m.payload.parse().ok())
            .collect()
    };
    assert!(
        energies.windows(2).all(|w| w[0] <= w[1]),
        "a value topic went back in time: {energies:?}"
    );

    // The history: every reading once, in order, across the outage.
    let after = wait_for(Duration::from_secs(60), "every state", || {
        let msgs = history.state_msgs("home");
        let last = msgs.last().map(|m| energy(&m.json()));
        (last == Some(N as f64)).then_some(msgs)
    });
    let mut all: Vec<f64> = before.iter().map(|m| energy(&m.json())).collect();
    for m in &after {
        let e = energy(&m.json());
        // The broker's own redelivery of its last message before the stop.
        if all.last() != Some(&e) {
            all.push(e);
        }
    }
    let expected: Vec<f64> = (1..=N).map(|i| i as f64).collect();
    assert_eq!(all, expected, "every reading exactly once, in order");
    let skipped = metric_sum(
        &metrics(&daemon),
        "p1gw_mqtt_values_superseded_total",
        &[("sink", "mqtt")],
    );
    assert!(
        skipped > 0.0,
        "the outage's intermediate values were skipped and counted"
    );
}

/// Availability per meter: "home" stops sending (its recording ends) while "be" goes on; after
/// three of home's intervals `p1gw/home/availability` is `offline` and `p1gw/be/availability`
/// still `online`; the discovery configs name both the meter's topic and the gateway's.
#[test]
fn a_silent_meter_goes_offline_while_the_other_stays_online() {
    let broker = Server::start("mosquitto", &[]);
    let port = broker.port("MQTT_PORT").to_string();
    let mut sub = Sub::start(&broker, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording(tmp.path(), 30);
    let sink = format!("kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\ndiscovery = true");
    let (_daemon, _dir) = Daemon::start(&config(&sink, &home_and_belgium(&rec)), &[]);
    for meter in ["home", "be"] {
        sub.expect(&format!("{meter} online"), |m| {
            m.topic == format!("p1gw/{meter}/availability") && m.payload == "online"
        });
    }
    let config = sub.expect("an energy entity of home", |m| {
        m.topic == "homeassistant/sensor/p1gw_home/energy_import_total/config"
    });
    let config = config.json();
    assert_eq!(
        config["availability"],
        serde_json::json!([{"topic": "p1gw/home/status"}, {"topic": "p1gw/home/availability"}])
    );
    assert_eq!(config["availability_mode"], "all");
    // home's 30 readings at 50 ms end; 3 × 50 ms later (and the next second's check) it is
    // offline. be goes on.
    let offline = sub.expect("home offline", |m| {
        m.topic == "p1gw/home/availability" && m.payload == "offline"
    });
    assert_eq!(offline.payload, "offline");
    sub.drain();
    let be_offline = sub
        .seen
        .iter()
        .any(|m| m.topic == "p1gw/be/availability" && m.payload == "offline");
    assert!(!be_offline, "be sends and stays online");
    // A subscriber that comes later gets the retained availability of each meter.
    let mut late = Sub::start(&broker, None);
    let home = late.expect("home's retained availability", |m| {
        m.topic == "p1gw/home/availability"
    });
    assert_eq!((home.payload.as_str(), home.retained), ("offline", true));
    let be = late.expect("be's retained availability", |m| {
        m.topic == "p1gw/be/availability"
    });
    assert_eq!((be.payload.as_str(), be.retained), ("online", true));
}

/// A reading of more messages than `backlog_rate` × 30 s: a three-phase Dutch meter with its
/// gas meter, about 40 messages with value topics, at `backlog_rate = 1`. Delivery waits for
/// its acks as long as its messages take to pass the rate (not a fixed 30 s, after which it
/// would send the reading again from its first message, for ever): it is acknowledged, once.
#[test]
fn a_reading_of_more_messages_than_the_backlog_rate_passes_in_30_s_is_delivered_once() {
    let broker = Server::start("mosquitto", &[]);
    let mut sub = Sub::start(&broker, None);
    let fixture = root().join("fixtures/telegrams/netherlands_iskra_am550_dsmr50_gas_on_mbus2.txt");
    let meters = format!(
        "[meter]\nname = \"home\"\ntz = \"Europe/Amsterdam\"\n[source]\nkind = \"replay\"\npath = \"{}\"\ninterval = \"50ms\"",
        fixture.display()
    );
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\ndiscovery = false\nbacklog_rate = 1",
        broker.port("MQTT_PORT")
    );
    let (daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);
    wait_for(
        Duration::from_secs(120),
        "the reading acknowledged and the spool empty",
        || {
            let m = metrics(&daemon);
            let sent = metric(&m, "p1gw_sink_sent_total", &[("sink", "mqtt")])?;
            let left = metric(&m, "p1gw_spool_records", &[("sink", "mqtt")])?;
            (sent >= 1.0 && left == 0.0).then_some(())
        },
    );
    sub.drain();
    let data: Vec<String> = sub
        .seen
        .iter()
        .filter(|m| m.topic.starts_with("p1gw/home/") && m.topic != "p1gw/home/status")
        .map(|m| m.topic.clone())
        .collect();
    assert!(
        data.len() > 31,
        "more messages than 30 s pass at 1/s: {}",
        data.len()
    );
    let mut sorted = data.clone();
    sorted.sort_unstable();
    let twice: Vec<&String> = sorted
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    assert!(
        twice.is_empty(),
        "each message once, none sent again: {twice:?}"
    );
    assert_eq!(sub.states("home").len(), 1);
}

/// MQTT 3.1.1: reading 5 of 12 has a state message of about 300 KB, over the largest packet
/// p1gw sends (256 KiB; rumqttc would end the connection with `OutgoingPacketTooLarge` on every
/// reconnect). That message is dropped, counted and logged once; every other reading arrives,
/// in order, and the spool empties. (A tcp source: a replay takes telegrams of 16 KiB at most.)
#[test]
fn a_reading_over_the_mqtt_3_1_1_packet_limit_is_dropped_counted_and_logged_once() {
    let broker = Server::start("mosquitto", &[]);
    let mut sub = Sub::start(&broker, None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rec = recording(tmp.path(), 12);
    // Reading 5 gets a 300 000-character text message.
    let text = std::fs::read_to_string(&rec).expect("recording");
    let mut telegrams: Vec<String> = text.split_inclusive("!\r\n").map(str::to_owned).collect();
    telegrams[4] = telegrams[4].replace(
        "!\r\n",
        &format!("0-0:96.13.0({})\r\n!\r\n", "41".repeat(300_000)),
    );
    let bytes = telegrams.concat().into_bytes();
    // The meter: a bridge that sends the telegrams once and holds the connection open.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        if let Ok((mut stream, _)) = listener.accept()
            && stream.write_all(&bytes).is_ok()
        {
            // Until p1gw closes it.
            let mut buf = [0u8; 64];
            while stream.read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    });
    let meters = format!(
        "[meter]\nname = \"home\"\ntz = \"UTC\"\n[source]\nkind = \"tcp\"\naddress = \"{address}\"\nmax_telegram_bytes = \"1MiB\""
    );
    let sink = format!(
        "kind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\nvalue_topics = false\ndiscovery = false",
        broker.port("MQTT_PORT")
    );
    let (daemon, _dir) = Daemon::start(&config(&sink, &meters), &[]);
    let states = wait_for(Duration::from_secs(30), "11 state messages", || {
        let s = sub.states("home");
        (s.len() >= 11).then_some(s)
    });
    let got: Vec<f64> = states.iter().map(energy).collect();
    let want: Vec<f64> = (1..=12).filter(|i| *i != 5).map(f64::from).collect();
    assert_eq!(got, want, "every other reading, once, in order");
    wait_for(Duration::from_secs(10), "an empty spool", || {
        metric(&metrics(&daemon), "p1gw_spool_records", &[("sink", "mqtt")]).filter(|n| *n == 0.0)
    });
    let m = metrics(&daemon);
    assert_eq!(
        metric(
            &m,
            "p1gw_sink_dropped_total",
            &[("sink", "mqtt"), ("reason", "too_large")]
        ),
        Some(1.0),
        "{m}"
    );
    let log = daemon.log();
    let drops: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("dropped"))
        .collect();
    assert_eq!(drops.len(), 1, "logged once: {drops:?}");
    assert!(
        drops[0].contains("p1gw/home/state") && drops[0].contains("too large"),
        "names topic and reason: {}",
        drops[0]
    );
    assert_eq!(sub.states("home").len(), 11, "nothing repeated");
}
