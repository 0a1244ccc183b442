//! What every fault test needs: the p1gw binary as a child process, its metrics and `/proc`
//! figures, real servers from `scripts/servers`, a `mosquitto_sub` that counts readings, an
//! InfluxDB reader, generated recordings whose energy register numbers each reading, and the
//! report every scenario writes.
//!
//! Waiting is always for a condition under a deadline ([`wait_for`]); the only plain sleeps
//! are the faults themselves (a backend kept down for N seconds) and metric sampling.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use p1_testkit::{InfluxdAgain, Server};
pub(crate) use p1_testkit::{free_port, root, stop_child, wait_for};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Modes and paths.

/// `P1GW_SOAK=1`: the long variants (scripts/reliability).
pub(crate) fn soak() -> bool {
    std::env::var("P1GW_SOAK").is_ok_and(|v| v == "1")
}

/// `quick` in the default run, `long` under `P1GW_SOAK=1`.
pub(crate) fn pick<T>(quick: T, long: T) -> T {
    if soak() { long } else { quick }
}

/// The p1gw binary: `P1GW_BIN`, else `target/<profile>/p1gw` next to this test binary's
/// `deps/` directory (`cargo test --workspace` builds it for p1gw's own integration tests).
pub(crate) fn p1gw_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = match std::env::var_os("P1GW_BIN") {
            Some(path) => PathBuf::from(path),
            None => {
                let exe = std::env::current_exe().expect("test binary path");
                exe.parent()
                    .and_then(Path::parent)
                    .expect("target/<profile>/deps/")
                    .join("p1gw")
            }
        };
        assert!(
            bin.is_file(),
            "{} not found: build it first (`cargo build -p p1gw`; `cargo test --workspace` and \
             scripts/reliability do), or set P1GW_BIN",
            bin.display()
        );
        warn_if_stale(&bin);
        bin
    })
    .clone()
}

/// A p1gw binary older than the sources is probably not what the developer meant to test.
fn warn_if_stale(bin: &Path) {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![root().join("crates")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("p1-faults") && !path.ends_with("tests") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs")
                && let Ok(t) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(n, _)| t > *n)
            {
                newest = Some((t, path));
            }
        }
    }
    if let Some((t, path)) = newest
        && t > built
    {
        eprintln!(
            "p1-faults: warning: {} is older than {}: run `cargo build -p p1gw` to test the current code",
            bin.display(),
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP (blocking, HTTP/1.1, Connection: close).

/// `GET path` on 127.0.0.1:port; (status, body), or None when nothing answers.
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    p1_testkit::http_get(port, path, Duration::from_secs(10))
}

// ---------------------------------------------------------------------------------------------
// Prometheus text.

/// A scrape of `/metrics`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics(String);

impl Metrics {
    /// The sum of the samples of `name` that carry all of `labels` (0 when there are none:
    /// a counter that was never incremented is not exported).
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        p1_testkit::metric_sum(&self.0, name, labels)
    }

    pub(crate) fn sink(&self, name: &str, sink: &str) -> f64 {
        self.get(name, &[("sink", sink)])
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon.

/// A `p1gw run` child process with its own HTTP port (p1-testkit's [`p1_testkit::Daemon`],
/// shared with p1gw's suite); killed (SIGKILL) on drop.
pub(crate) struct Daemon(p1_testkit::Daemon);

impl std::ops::Deref for Daemon {
    type Target = p1_testkit::Daemon;
    fn deref(&self) -> &p1_testkit::Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut p1_testkit::Daemon {
        &mut self.0
    }
}

impl Daemon {
    /// Writes `config` to `dir/<name>.toml` and starts `p1gw run` on it, logging to
    /// `dir/<name>.log`; returns once `/healthz` answers 200.
    pub(crate) fn start(dir: &Path, name: &str, config: &str) -> Daemon {
        let daemon = Daemon::spawn(dir, name, config);
        wait_for(Duration::from_secs(20), "p1gw's /healthz", || {
            if let Some(status) = daemon.exited() {
                panic!("p1gw exited at start ({status}):\n{}", daemon.log_text());
            }
            daemon.get("/healthz").filter(|(s, _)| *s == 200)
        });
        daemon
    }

    /// The same without waiting for it.
    pub(crate) fn spawn(dir: &Path, name: &str, config: &str) -> Daemon {
        Daemon::spawn_limited(dir, name, config, None)
    }

    /// [`Daemon::start`] with the file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) at
    /// `fsize_kib` KiB: a write past it fails with `EFBIG`.
    pub(crate) fn start_limited(dir: &Path, name: &str, config: &str, fsize_kib: u64) -> Daemon {
        let daemon = Daemon::spawn_limited(dir, name, config, Some(fsize_kib));
        wait_for(Duration::from_secs(20), "p1gw's /healthz", || {
            if let Some(status) = daemon.exited() {
                panic!("p1gw exited at start ({status}):\n{}", daemon.log_text());
            }
            daemon.get("/healthz").filter(|(s, _)| *s == 200)
        });
        daemon
    }

    fn spawn_limited(dir: &Path, name: &str, config: &str, fsize_kib: Option<u64>) -> Daemon {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, config).expect("write config");
        let bin = match fsize_kib {
            None => p1gw_bin(),
            Some(kib) => {
                // A wrapper that sets the limit and becomes p1gw (bash counts ulimit -f in
                // 1024-byte blocks).
                use std::os::unix::fs::PermissionsExt as _;
                let wrapper = dir.join(format!("{name}-limited.sh"));
                std::fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/bash\nulimit -f {kib} && exec '{}' \"$@\"\n",
                        p1gw_bin().display()
                    ),
                )
                .expect("write wrapper");
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod wrapper");
                wrapper
            }
        };
        Daemon(p1_testkit::Daemon::spawn(
            &bin,
            &file,
            &dir.join(format!("{name}.log")),
            &["--log-format", "human"],
            &[],
        ))
    }

    /// Scrapes `/metrics` (panics when the daemon does not answer within 10 s: it should).
    pub(crate) fn metrics(&self) -> Metrics {
        wait_for(Duration::from_secs(10), "an answer from /metrics", || {
            self.get("/metrics")
                .filter(|(s, _)| *s == 200)
                .map(|(_, b)| Metrics(b))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Recordings: Veitur-style telegrams (no CRC) whose energy register is the reading's number
// and whose meter clock advances one second per telegram, so every reading is one distinct
// point in InfluxDB. Counting 1 kWh a second, this meter draws 3.6 MW: the scenarios that lose
// telegrams on purpose (cuts, garbage, outages) would trip the spike guard's default 100 kW
// bound, so their configurations raise it with `spike_guard = { max_power = "10MW" }`.

/// The meter clock of telegram 1 (later ones add a second each).
pub(crate) const CLOCK_START: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

/// Telegram number `id`: register `id` kWh, meter time `CLOCK_START + id` s (Reykjavik = UTC).
/// `pad` > 0 makes a large reading: three phases, four tariffs and a text message of `pad`
/// hex digits.
pub(crate) fn telegram(id: u64, pad: usize) -> String {
    let t = jiff::Timestamp::from_second(CLOCK_START + id as i64).expect("time");
    let mut text = format!(
        "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(86818632)\r\n1-0:0.9.1({})\r\n1-0:0.9.2({})\r\n\
         0-0:96.1.1(36303836383138363631)\r\n1-0:1.7.0(00.588*kW)\r\n1-0:1.8.0({:010.3}*kWh)\r\n\
         1-0:2.8.0(000000.000*kWh)\r\n1-0:32.7.0(231.3*V)\r\n1-0:31.7.0(002*A)\r\n",
        t.strftime("%H%M%S"),
        t.strftime("%y%m%d"),
        id as f64
    );
    if pad > 0 {
        // Three phases and four tariffs: more fields for InfluxDB too.
        for code in [
            "21.7.0", "41.7.0", "61.7.0", "22.7.0", "42.7.0", "62.7.0", "52.7.0", "72.7.0",
        ] {
            text.push_str(&format!("1-0:{code}(00.123*kW)\r\n"));
        }
        for code in ["1.8.1", "1.8.2", "2.8.1", "2.8.2"] {
            text.push_str(&format!("1-0:{code}(001234.567*kWh)\r\n"));
        }
        text.push_str("0-0:96.13.0(");
        text.extend(std::iter::repeat_n("41", pad / 2));
        text.push_str(")\r\n");
    }
    text.push_str("!\r\n");
    text
}

/// Writes telegrams `ids` to `path`.
pub(crate) fn write_recording(path: &Path, ids: std::ops::RangeInclusive<u64>, pad: usize) {
    let mut text = String::new();
    for id in ids {
        text.push_str(&telegram(id, pad));
    }
    std::fs::write(path, text).expect("write recording");
}

/// The reading number of a reading's JSON (its energy register).
pub(crate) fn reading_id(reading: &Value) -> Option<u64> {
    let value = reading["objects"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == "energy_import_total")?["value"]
        .as_f64()?;
    Some(value.round() as u64)
}

/// The reading numbers in a jsonl sink's file, in file order.
pub(crate) fn jsonl_ids(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| reading_id(&v))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Counting: what arrived, against what was produced.

/// Delivered readings of one sink.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// Each reading number with how often it arrived.
    pub(crate) seen: BTreeMap<u64, u64>,
    /// Arrivals that a broker redelivered to the test's subscriber (same message id): not
    /// p1gw's doing, left out of `seen`.
    pub(crate) redelivered: u64,
    /// First arrivals of a reading after a later one had arrived: delivery out of order.
    pub(crate) out_of_order: u64,
}

impl Tally {
    pub(crate) fn from_ids(ids: impl IntoIterator<Item = u64>) -> Tally {
        let mut t = Tally::default();
        for id in ids {
            *t.seen.entry(id).or_default() += 1;
        }
        t
    }

    /// Distinct readings.
    pub(crate) fn unique(&self) -> u64 {
        self.seen.len() as u64
    }

    /// Extra copies.
    pub(crate) fn duplicates(&self) -> u64 {
        self.seen.values().map(|n| n - 1).sum()
    }

    /// The numbers of `expected` that never arrived.
    pub(crate) fn missing(&self, expected: impl IntoIterator<Item = u64>) -> Vec<u64> {
        expected
            .into_iter()
            .filter(|id| !self.seen.contains_key(id))
            .collect()
    }

    pub(crate) fn has_all(&self, expected: impl IntoIterator<Item = u64>) -> bool {
        self.missing(expected).is_empty()
    }
}

/// What the three sinks of [`three_sinks`] delivered: the jsonl file, the MQTT subscriber's
/// state messages and InfluxDB's points.
pub(crate) struct Delivered {
    pub(crate) file: Tally,
    pub(crate) mqtt: Tally,
    pub(crate) points: Tally,
}

impl Delivered {
    /// Collects each sink's tally until it holds every reading of `want`: the file for at most
    /// 30 s, then MQTT and InfluxDB for at most `limit` each ([`collect`]).
    pub(crate) fn collect(
        want: &std::ops::RangeInclusive<u64>,
        limit: Duration,
        jsonl: &Path,
        sub: &mut Subscriber,
        influx: &Influx,
    ) -> Delivered {
        Delivered {
            file: collect(Duration::from_secs(30), want.clone(), || {
                Tally::from_ids(jsonl_ids(jsonl))
            }),
            mqtt: collect(limit, want.clone(), || sub.tally()),
            points: collect(limit, want.clone(), || influx.tally("home")),
        }
    }

    /// Each sink's tally with its name.
    pub(crate) fn each(&self) -> [(&'static str, &Tally); 3] {
        [
            ("jsonl", &self.file),
            ("mqtt", &self.mqtt),
            ("influx", &self.points),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Servers from scripts/servers.

/// Mosquitto with persistence that can be stopped and started again on the same port with
/// the same sessions (so a persistent subscriber misses nothing while it is down).
pub(crate) struct Broker {
    pub(crate) port: u16,
    persist: tempfile::TempDir,
    server: Option<Server>,
}

impl Broker {
    pub(crate) fn start() -> Broker {
        let persist = tempfile::tempdir().expect("tempdir");
        let server = Server::start(
            "mosquitto",
            &["--persistence", &persist.path().display().to_string()],
        );
        let port = server.var("MQTT_PORT").parse().expect("port");
        Broker {
            port,
            persist,
            server: Some(server),
        }
    }

    /// Stops the broker (SIGTERM: it saves its sessions).
    pub(crate) fn down(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop(false);
        }
    }

    /// Starts it again on the same port and sessions.
    pub(crate) fn up(&mut self) {
        assert!(self.server.is_none(), "broker already up");
        let port = self.port.to_string();
        let persist = self.persist.path().display().to_string();
        self.server = Some(Server::start(
            "mosquitto",
            &["--port", &port, "--persistence", &persist],
        ));
    }

    pub(crate) fn publish(&self, topic: &str, payload: &str) {
        self.server
            .as_ref()
            .expect("the broker is up")
            .publish(topic, payload);
    }
}

/// A persistent `mosquitto_sub` (QoS 1, fixed client id, clean session off) on the state
/// topics; it reconnects by itself when the broker comes back, and the broker keeps what
/// arrived meanwhile. Killed on drop.
pub(crate) struct Subscriber {
    child: Child,
    rx: mpsc::Receiver<(u32, String)>,
    /// (broker message id, payload) of every state message so far.
    pub(crate) got: Vec<(u32, String)>,
}

impl Subscriber {
    /// Subscribes to `p1gw/+/state` as `client_id`; returns once a probe came back.
    pub(crate) fn start(broker: &Broker, client_id: &str) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
            .args(["-q", "1", "-c", "-i", client_id])
            .args(["-t", "p1gw/+/state", "-t", "p1-faults/probe"])
            .args(["-F", "%m %t %p"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients)");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(3, ' ');
                let (Some(mid), Some(topic), Some(payload)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if topic == "p1-faults/probe" {
                    if tx.send((u32::MAX, String::new())).is_err() {
                        break;
                    }
                    continue;
                }
                if tx
                    .send((mid.parse().unwrap_or(0), payload.to_owned()))
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut sub = Subscriber {
            child,
            rx,
            got: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        'probe: loop {
            broker.publish("p1-faults/probe", "ping");
            let until = Instant::now() + Duration::from_millis(300);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match sub.rx.recv_timeout(left) {
                    Ok((u32::MAX, _)) => break 'probe,
                    Ok(m) => sub.got.push(m),
                    Err(_) => break,
                }
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub did not subscribe within 15 s"
            );
        }
        sub
    }

    /// Takes what arrived so far.
    pub(crate) fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            if m.0 != u32::MAX {
                self.got.push(m);
            }
        }
    }

    /// The readings so far. Two arrivals in a row with the same broker message id and
    /// payload are the broker redelivering an unacknowledged message to this subscriber after
    /// its own restart, not p1gw sending twice; they are counted apart.
    pub(crate) fn tally(&mut self) -> Tally {
        self.drain();
        let mut tally = Tally::default();
        let mut previous: Option<&(u32, String)> = None;
        let mut newest = 0;
        for m in &self.got {
            if previous.is_some_and(|p| p.0 != 0 && p == m) {
                tally.redelivered += 1;
                continue;
            }
            previous = Some(m);
            let Ok(v) = serde_json::from_str::<Value>(&m.1) else {
                continue;
            };
            if let Some(id) = reading_id(&v) {
                let copies = tally.seen.entry(id).or_default();
                if *copies == 0 && id < newest {
                    tally.out_of_order += 1;
                }
                *copies += 1;
                newest = newest.max(id);
            }
        }
        tally
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// InfluxDB 1.x (database `p1`) that can be stopped and started again on the same data and
/// port.
pub(crate) struct Influx {
    pub(crate) port: u16,
    pub(crate) url: String,
    /// Running again after [`Influx::down`]; declared before `server` so that it stops
    /// before the directory goes.
    again: Option<InfluxdAgain>,
    /// Stopped with `--keep` by [`Influx::down`]; removes its directory when dropped.
    server: Server,
}

impl Influx {
    pub(crate) fn start() -> Influx {
        let server = Server::start("influxdb", &["--db", "p1"]);
        Influx {
            port: server.port("INFLUX_PORT"),
            url: server.var("INFLUX_URL").to_owned(),
            server,
            again: None,
        }
    }

    /// Stops InfluxDB (SIGTERM), keeping its data.
    pub(crate) fn down(&mut self) {
        self.server.stop(true);
        self.again = None;
    }

    /// Starts it again from the same directory (config, data, port).
    pub(crate) fn up(&mut self) {
        assert!(
            !self.server.running() && self.again.is_none(),
            "influxd already up"
        );
        self.again = Some(InfluxdAgain::start(
            &self.server.dir(),
            self.port,
            Duration::from_secs(20),
        ));
    }

    /// An InfluxQL query on database p1.
    pub(crate) fn query(&self, q: &str) -> Value {
        p1_testkit::influxql(self.port, "p1", "s", q, None)
    }

    /// Every `electricity` point of meter `meter`, by reading number. InfluxDB keeps one point
    /// per series and timestamp, so a reading written twice is one point: a reading counted
    /// twice here would have been written with two different timestamps.
    pub(crate) fn tally(&self, meter: &str) -> Tally {
        let answer = self.query(&format!(
            "SELECT \"energy_import_total\" FROM \"electricity\" WHERE \"meter\" = '{meter}'"
        ));
        let values = answer["results"][0]["series"][0]["values"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Tally::from_ids(
            values
                .iter()
                .filter_map(|row| row[1].as_f64())
                .map(|v| v.round() as u64),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Configs.

/// `[[sink]]` for the MQTT broker at `port`: state topic only (one message per reading, so
/// the counts are plain), no discovery.
pub(crate) fn mqtt_sink(port: u16, extra: &str) -> String {
    format!(
        "[[sink]]\nkind = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"p1gw-faults\"\n\
         discovery = false\nvalue_topics = false\n{extra}\n"
    )
}

/// `[[sink]]` for InfluxDB 1.x at `url`, database p1, short batches.
pub(crate) fn influx_sink(url: &str, extra: &str) -> String {
    format!(
        "[[sink]]\nkind = \"influx\"\nurl = \"{url}\"\napi = \"v1\"\ndatabase = \"p1\"\n\
         batch_interval = \"200ms\"\n{extra}\n"
    )
}

pub(crate) fn jsonl_sink(path: &Path) -> String {
    format!(
        "[[sink]]\nkind = \"jsonl\"\npath = \"{}\"\n",
        path.display()
    )
}

/// `[meter]` home (Reykjavik) with a replay of `recording` at `interval`.
pub(crate) fn replay_meter(recording: &Path, interval: &str) -> String {
    format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\
         spike_guard = {{ max_power = \"10MW\" }}\n\n[source]\nkind = \"replay\"\n\
         path = \"{}\"\ninterval = \"{interval}\"\n\n",
        recording.display()
    )
}

pub(crate) fn spool(dir: &Path, extra: &str) -> String {
    format!("[spool]\ndir = \"{}\"\n{extra}\n", dir.display())
}

/// The `[[sink]]`s most scenarios judge, and the spool: jsonl into `jsonl`, MQTT to the
/// broker (or proxy) at `mqtt.0` with the extra keys `mqtt.1`, InfluxDB at the URL `influx.0`
/// with the extra keys `influx.1`, the spool in `spool_dir`.
pub(crate) fn three_sinks(
    jsonl: &Path,
    mqtt: (u16, &str),
    influx: (&str, &str),
    spool_dir: &Path,
) -> String {
    format!(
        "{}{}{}{}",
        jsonl_sink(jsonl),
        mqtt_sink(mqtt.0, mqtt.1),
        influx_sink(influx.0, influx.1),
        spool(spool_dir, ""),
    )
}

// ---------------------------------------------------------------------------------------------
// Waiting on the daemon's metrics.

/// Waits (30 s at most) until both network sinks have sent `at_least` readings: readings flow
/// everywhere before a fault.
pub(crate) fn wait_flowing(daemon: &Daemon, at_least: f64) {
    wait_for(Duration::from_secs(30), "readings at every sink", || {
        let m = daemon.metrics();
        (m.sink("p1gw_sink_sent_total", "mqtt") >= at_least
            && m.sink("p1gw_sink_sent_total", "influx") >= at_least)
            .then_some(())
    });
}

/// The readings meter `home` produced, once that is at least `n` and every sink's spool is
/// empty (jsonl, mqtt, influx): everything delivered.
pub(crate) fn all_delivered(m: &Metrics, n: u64) -> Option<u64> {
    let produced = m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64;
    (produced >= n
        && ["jsonl", "mqtt", "influx"]
            .iter()
            .all(|s| m.sink("p1gw_spool_records", s) == 0.0))
    .then_some(produced)
}

// ---------------------------------------------------------------------------------------------
// The report.

/// One row of docs/reliability.md's table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) done: String,
    pub(crate) produced: u64,
    /// Per sink: (delivered distinct, duplicates).
    pub(crate) sinks: Vec<(String, u64, u64)>,
    /// Seconds from the fault's end to the backlog drained.
    pub(crate) recovery_s: Option<f64>,
    pub(crate) notes: Vec<String>,
    pub(crate) failures: Vec<String>,
    /// Daemon logs, shown (warnings and errors) when a check failed.
    pub(crate) logs: Vec<PathBuf>,
}

impl Row {
    pub(crate) fn new(scenario: &str, done: impl Into<String>) -> Row {
        Row {
            scenario: scenario.to_owned(),
            done: done.into(),
            produced: 0,
            sinks: Vec::new(),
            recovery_s: None,
            notes: Vec::new(),
            failures: Vec::new(),
            logs: Vec::new(),
        }
    }

    pub(crate) fn sink(&mut self, name: &str, tally: &Tally) {
        self.sinks
            .push((name.to_owned(), tally.unique(), tally.duplicates()));
    }

    /// The three sinks of `delivered`, in order.
    pub(crate) fn sinks(&mut self, delivered: &Delivered) {
        for (name, tally) in delivered.each() {
            self.sink(name, tally);
        }
    }

    /// Checks that sink `name` delivered every reading of `expected`, naming the first ten
    /// missing.
    pub(crate) fn check_complete(
        &mut self,
        name: &str,
        tally: &Tally,
        expected: impl IntoIterator<Item = u64>,
    ) {
        let missing = tally.missing(expected);
        self.check(
            missing.is_empty(),
            format!(
                "{name} is missing {} readings: {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ),
        );
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Records a check; a failed one fails the test in [`Row::finish`].
    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    /// Writes the row (stderr, and `P1GW_FAULTS_REPORT` as one JSON line), then fails the test
    /// if any check failed.
    pub(crate) fn finish(self) {
        let sinks: serde_json::Map<String, Value> = self
            .sinks
            .iter()
            .map(|(name, d, dup)| (name.clone(), json!({"delivered": d, "duplicates": dup})))
            .collect();
        let row = json!({
            "scenario": self.scenario,
            "done": self.done,
            "mode": if soak() { "soak" } else { "default" },
            "produced": self.produced,
            "sinks": sinks,
            "recovery_s": self.recovery_s.map(|s| (s * 100.0).round() / 100.0),
            "notes": self.notes,
            "pass": self.failures.is_empty(),
            "failures": self.failures,
            "at": jiff::Timestamp::now().to_string(),
        });
        eprintln!("p1-faults report: {row}");
        if let Some(path) = std::env::var_os("P1GW_FAULTS_REPORT") {
            static LOCK: Mutex<()> = Mutex::new(());
            let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open P1GW_FAULTS_REPORT");
            writeln!(file, "{row}").expect("write report");
        }
        if !self.failures.is_empty() {
            for log in &self.logs {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                eprintln!(
                    "--- warnings and errors of {} (last 60 of {}):",
                    log.display(),
                    lines.len()
                );
                for l in &lines[lines.len().saturating_sub(60)..] {
                    eprintln!("{l}");
                }
            }
        }
        assert!(
            self.failures.is_empty(),
            "{}: {}",
            self.scenario,
            self.failures.join("; ")
        );
    }
}

/// Samples a value every `every` on a thread until dropped; keeps (seconds since start,
/// value).
pub(crate) struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub(crate) fn start(every: Duration, f: impl Fn() -> u64 + Send + 'static) -> Sampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let samples = samples.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let v = f();
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((start.elapsed().as_secs_f64(), v));
                    std::thread::sleep(every);
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the samples.
    pub(crate) fn finish(mut self) -> Vec<(f64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A small deterministic PRNG (xorshift64) for kill points and garbage.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timing-sensitive tests run alone.

static LANE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by every test: tests run side by side (two at a time on two cores)...
pub(crate) fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    LANE.read().unwrap_or_else(|e| e.into_inner())
}

/// ...except one that measures latency, which waits for the others and runs alone.
pub(crate) fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    LANE.write().unwrap_or_else(|e| e.into_inner())
}

/// Polls `tally` until it holds every reading of `want`, at most `limit`; returns the last
/// tally either way (a shortfall is then reported by the scenario's checks, with the rest).
pub(crate) fn collect(
    limit: Duration,
    want: impl IntoIterator<Item = u64> + Clone,
    mut tally: impl FnMut() -> Tally,
) -> Tally {
    let deadline = Instant::now() + limit;
    loop {
        let t = tally();
        if t.has_all(want.clone()) || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
