//! Real servers from `scripts/servers`: started on a free port in a temp dir, stopped by pid.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{http_get, root, terminate_child, wait_for};

/// Fails (never skips) when `program` is neither on `PATH` nor in `/usr/sbin` (where Debian puts
/// mosquitto), naming the Debian `package` to install.
///
/// # Panics
///
/// When the program is missing.
pub fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        || Path::new("/usr/sbin").join(program).is_file();
    assert!(
        found,
        "{program} not found: install the Debian package {package} (scripts/test installs it)"
    );
}

/// Undoes bash's `printf %q` for the values scripts/servers prints (paths, ports, URLs).
pub(crate) fn unquote(value: &str) -> String {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return inner.to_owned();
    }
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// A server started by `scripts/servers start KIND`: its `KEY=value` lines, and its pid.
///
/// Dropped while it runs, it is stopped and its directory removed; stopped with `keep` (and
/// perhaps run again from its directory, see [`InfluxdAgain`]), the directory is removed on
/// drop. Drop never panics: the test may be unwinding already.
#[derive(Debug)]
pub struct Server {
    vars: HashMap<String, String>,
    pid: String,
    running: bool,
}

impl Server {
    /// `scripts/servers start kind args…` (`mosquitto`, `influxdb`, `victoria-metrics`);
    /// returns once the server accepts connections.
    ///
    /// # Panics
    ///
    /// When a program it needs is missing (naming the Debian package), or the start fails.
    pub fn start(kind: &str, args: &[&str]) -> Server {
        match kind {
            "mosquitto" => {
                require("mosquitto", "mosquitto");
                require("mosquitto_sub", "mosquitto-clients");
                require("mosquitto_pub", "mosquitto-clients");
                if args.iter().any(|a| *a == "--tls" || *a == "--client-cert") {
                    require("openssl", "openssl");
                }
            }
            "influxdb" => require("influxd", "influxdb"),
            "victoria-metrics" => require("victoria-metrics", "victoria-metrics"),
            _ => panic!("unknown server {kind}"),
        }
        require("python3", "python3");
        require("curl", "curl");
        let out = Command::new(root().join("scripts/servers"))
            .arg("start")
            .arg(kind)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/servers");
        assert!(
            out.status.success(),
            "scripts/servers start {kind} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), unquote(v)))
            .collect();
        let pid = vars
            .get("PID")
            .unwrap_or_else(|| panic!("no PID from scripts/servers: {vars:?}"))
            .clone();
        Server {
            vars,
            pid,
            running: true,
        }
    }

    /// A value scripts/servers printed (`MQTT_PORT`, `INFLUX_URL`, `DIR`), if it did.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// A value scripts/servers printed.
    ///
    /// # Panics
    ///
    /// When it printed no `key`.
    pub fn var(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{key} not printed by scripts/servers: {:?}", self.vars))
    }

    /// A port scripts/servers printed (`MQTT_PORT`, `INFLUX_PORT`, `VM_PORT`).
    ///
    /// # Panics
    ///
    /// When it printed no such port.
    pub fn port(&self, key: &str) -> u16 {
        self.var(key)
            .parse()
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    }

    /// Whether it runs: started and not stopped yet.
    pub fn running(&self) -> bool {
        self.running
    }

    /// The server's own directory (config, data, log).
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(self.var("DIR"))
    }

    /// `scripts/servers stop PID [--keep]`: SIGTERM (servers save their state), the directory
    /// kept with `keep`. Nothing when it is stopped already.
    ///
    /// # Panics
    ///
    /// When scripts/servers cannot stop it.
    pub fn stop(&mut self, keep: bool) {
        if self.running {
            assert!(
                self.run_stop(keep),
                "scripts/servers stop {} failed",
                self.pid
            );
        }
    }

    fn run_stop(&mut self, keep: bool) -> bool {
        self.running = false;
        let mut command = Command::new(root().join("scripts/servers"));
        command.args(["stop", &self.pid]);
        if keep {
            command.arg("--keep");
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `mosquitto_sub`/`mosquitto_pub` arguments that reach this Mosquitto: host, port, and the
    /// CA, client certificate and login it was started with.
    pub fn mosquitto_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_owned(), self.var("MQTT_PORT").to_owned()];
        if let Some(ca) = self.get("MQTT_CA") {
            args.extend(["-h".to_owned(), "localhost".to_owned()]);
            args.extend(["--cafile".to_owned(), ca.to_owned()]);
        } else {
            args.extend(["-h".to_owned(), "127.0.0.1".to_owned()]);
        }
        if let (Some(cert), Some(key)) = (self.get("MQTT_CLIENT_CERT"), self.get("MQTT_CLIENT_KEY"))
        {
            args.extend([
                "--cert".to_owned(),
                cert.to_owned(),
                "--key".to_owned(),
                key.to_owned(),
            ]);
        }
        if let (Some(user), Some(pass)) = (self.get("MQTT_USER"), self.get("MQTT_PASSWORD")) {
            args.extend([
                "-u".to_owned(),
                user.to_owned(),
                "-P".to_owned(),
                pass.to_owned(),
            ]);
        }
        args
    }

    /// Publishes `payload` to `topic` at QoS 1 with `mosquitto_pub`.
    ///
    /// # Panics
    ///
    /// When mosquitto_pub fails.
    pub fn publish(&self, topic: &str, payload: &str) {
        let ok = Command::new("mosquitto_pub")
            .args(self.mosquitto_args())
            .args(["-q", "1", "-t", topic, "-m", payload])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mosquitto_pub to {topic}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            self.run_stop(false);
        } else if let Some(dir) = self.get("DIR") {
            // Stopped with --keep (and maybe run again from its directory): remove it now.
            std::fs::remove_dir_all(dir).ok();
        }
    }
}

/// An InfluxDB 1.x started again from the directory of one that scripts/servers started and
/// then stopped with `keep`: same config, data and port. Stopped on drop (SIGTERM, then SIGKILL
/// after 15 s).
#[derive(Debug)]
pub struct InfluxdAgain {
    child: Child,
}

impl InfluxdAgain {
    /// Starts `influxd` from `dir` (logging to `influxd-again.log` there); returns once it
    /// answers `/ping` on `port`, within `limit`.
    ///
    /// # Panics
    ///
    /// When influxd cannot be started or does not answer in time (it is stopped then).
    pub fn start(dir: &Path, port: u16, limit: Duration) -> InfluxdAgain {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("influxd-again.log"))
            .expect("log");
        let child = Command::new("influxd")
            .args(["run", "-config"])
            .arg(dir.join("influxdb.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start influxd again");
        let again = InfluxdAgain { child };
        wait_for(limit, "influxd answering /ping again", || {
            http_get(port, "/ping", Duration::from_secs(5)).filter(|(s, _)| *s == 204)
        });
        again
    }
}

impl Drop for InfluxdAgain {
    fn drop(&mut self) {
        terminate_child(&mut self.child);
    }
}
