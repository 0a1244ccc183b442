//! `p1gw simulate`, `record` and `probe` as processes, on pseudo-terminals
//! (`simulate --pty`, or socat for a silent one) and TCP.
//!
//! A pty carries bytes but not line settings (7E1, baud) nor RTS/DTR
//! (docs/dependencies.md §2.5): every probe pass reads the same bytes, and the
//! request line fails with ENOTTY. So these tests check the report, the
//! data-seen and no-data paths and the exit codes; the request modes and the
//! 7E1 handling are tested in p1-reader with a fake line and framed bytes.

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use p1_testkit::Cable;

use crate::support::{root, stop_child, wait_for};

/// A child process, killed and reaped on drop.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Proc {
    /// Sends a signal with kill(1).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit, at most `limit`; its code.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        wait_for(limit, "the process to exit", || {
            self.child.try_wait().expect("try_wait").map(|s| s.code())
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

pub(crate) fn p1gw() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p1gw"));
    cmd.current_dir(root()).stdin(Stdio::null());
    cmd
}

/// Runs p1gw to its end; output and exit code.
fn p1gw_output(args: &[&str]) -> Output {
    p1gw().args(args).output().expect("run p1gw")
}

/// `p1gw simulate --pty <link>` with its arguments, once the link exists.
pub(crate) fn simulator(link: &Path, args: &[&str]) -> Proc {
    let child = p1gw()
        .args(["simulate", "--pty", link.to_str().expect("utf-8")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start p1gw simulate");
    let proc = Proc { child };
    wait_for(Duration::from_secs(10), "the simulator's pty link", || {
        link.exists().then_some(())
    });
    proc
}

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("fixtures/telegrams").join(name)).expect("fixture")
}

/// How many telegrams (lines starting with `!`) `bytes` holds.
fn telegram_ends(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| line.first() == Some(&b'!'))
        .count()
}

#[test]
fn simulate_writes_telegrams_to_stdout_that_parse() {
    for profile in ["veitur", "dsmr5", "belgium"] {
        let out = p1gw_output(&[
            "simulate",
            "--profile",
            profile,
            "--interval",
            "10ms",
            "--count",
            "3",
            "--seed",
            "5",
        ]);
        assert_eq!(out.status.code(), Some(0), "{profile}");
        assert_eq!(telegram_ends(&out.stdout), 3, "{profile}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sim.txt");
        std::fs::write(&file, &out.stdout).expect("write");
        let parsed = p1gw_output(&["parse", file.to_str().expect("utf-8")]);
        assert_eq!(parsed.status.code(), Some(0), "{profile}");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&parsed.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 3, "{profile}");
        let crc = if profile == "veitur" {
            "absent"
        } else {
            "valid"
        };
        assert!(lines.iter().all(|l| l["crc"] == crc), "{profile}");
    }
}

#[test]
fn simulate_serves_tcp_clients_whole_telegrams() {
    let mut child = p1gw()
        .args([
            "simulate",
            "--profile",
            "dsmr5",
            "--tcp",
            "127.0.0.1:0",
            "--interval",
            "100ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start p1gw simulate");
    // The first stderr line names the address bound.
    let mut stderr = child.stderr.take().expect("stderr");
    let _proc = Proc { child };
    let mut banner = Vec::new();
    let mut byte = [0u8; 1];
    while !banner.ends_with(b"\n") {
        assert_eq!(
            stderr.read(&mut byte).expect("read stderr"),
            1,
            "stderr ended"
        );
        banner.push(byte[0]);
    }
    let banner = String::from_utf8_lossy(&banner).into_owned();
    let addr = banner
        .trim()
        .rsplit(' ')
        .next()
        .expect("address")
        .to_owned();
    assert!(banner.contains("on tcp 127.0.0.1:"), "{banner}");
    for _client in 0..2 {
        let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while telegram_ends(&got) < 2 {
            let n = conn.read(&mut buf).expect("read within 10 s");
            assert!(n > 0, "the simulator closed the connection");
            got.extend_from_slice(&buf[..n]);
        }
        // A client gets whole telegrams from its first byte on.
        assert!(got.starts_with(b"/ISK5\\2M550T-1013\r\n"), "{got:?}");
        let end = got
            .windows(3)
            .position(|w| w == b"\r\n/")
            .expect("a second telegram");
        let t = p1_telegram::Telegram::parse(&got[..end + 2], p1_telegram::ParseOptions::default())
            .expect("a valid telegram");
        assert_eq!(t.crc, p1_telegram::CrcStatus::Valid);
    }
}

#[test]
fn record_captures_a_pty_until_sigterm_and_the_recording_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("p1");
    let _meter = simulator(&link, &["--profile", "dsmr5", "--interval", "50ms"]);
    let out = dir.path().join("recording.txt");
    let log = dir.path().join("record.log");
    let child = p1gw()
        .args([
            "record",
            "--port",
            link.to_str().expect("utf-8"),
            "--out",
            out.to_str().expect("utf-8"),
            "--preset",
            "dsmr4",
            "--request",
            "none",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start p1gw record");
    let mut record = Proc { child };
    // Written as it arrives: the file grows while recording.
    wait_for(
        Duration::from_secs(10),
        "5 telegrams in the recording",
        || {
            let bytes = std::fs::read(&out).ok()?;
            (telegram_ends(&bytes) >= 5).then_some(())
        },
    );
    record.signal("TERM");
    let code = record.wait_exit(Duration::from_secs(5));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("p1gw record: wrote "), "{log}");

    // The recording ends with a whole telegram: parse accepts all of it.
    let parsed = p1gw_output(&["parse", out.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&parsed.stderr);
    assert_eq!(parsed.status.code(), Some(0), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&parsed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(lines.len() >= 5, "{}", lines.len());
    assert!(lines.iter().all(|l| l["crc"] == "valid"));
    assert!(lines.iter().all(|l| l["header"] == "ISK5\\2M550T-1013"));
    let bytes = std::fs::read(&out).expect("recording");
    assert!(bytes.ends_with(b"\r\n"), "ends at a line end");
    assert_eq!(telegram_ends(&bytes), lines.len(), "every telegram parsed");
}

#[test]
fn record_stops_after_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("p1");
    let _meter = simulator(&link, &["--profile", "veitur", "--interval", "100ms"]);
    let out = dir.path().join("recording.txt");
    let done = p1gw_output(&[
        "record",
        "--port",
        link.to_str().expect("utf-8"),
        "--out",
        out.to_str().expect("utf-8"),
        "--request",
        "none",
        "--seconds",
        "1",
    ]);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let parsed = p1gw_output(&["parse", out.to_str().expect("utf-8")]);
    assert_eq!(parsed.status.code(), Some(0));
    let n = String::from_utf8_lossy(&parsed.stdout).lines().count();
    assert!((3..=15).contains(&n), "about 10 telegrams in 1 s, got {n}");
}

#[test]
fn record_and_probe_exit_66_for_a_missing_port_and_64_for_bad_usage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("ttyUSB9");
    let missing = missing.to_str().expect("utf-8");
    let out = dir.path().join("out.txt");
    let r = p1gw_output(&[
        "record",
        "--port",
        missing,
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(r.status.code(), Some(66));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("no such serial port"), "{stderr}");
    assert!(!out.exists(), "nothing created for a missing port");
    let p = p1gw_output(&["probe", "--port", missing]);
    assert_eq!(p.status.code(), Some(66));
    let p = p1gw_output(&["probe", "--port", missing, "--seconds", "5"]);
    assert_eq!(p.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&p.stderr).contains("at least 12 s"));
    let p = p1gw_output(&["probe", "--port", missing, "--request", "cts"]);
    assert_eq!(p.status.code(), Some(64));
    let s = p1gw_output(&["simulate", "--profile", "dsmr2"]);
    assert_eq!(s.status.code(), Some(64));
}

#[test]
fn probe_on_a_pty_reports_every_preset_and_recommends_dsmr4_for_8_bit_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("p1");
    // A Veitur telegram every 100 ms, written as 8-bit ASCII.
    let _meter = simulator(&link, &["--profile", "veitur", "--interval", "100ms"]);
    let out = p1gw_output(&[
        "probe",
        "--port",
        link.to_str().expect("utf-8"),
        "--listen-for",
        "700ms",
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = report
        .lines()
        .filter(|l| {
            ["veitur ", "veitur-7e1 ", "dsmr22 ", "dsmr4 "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{report}");
    // preset, settings (2), opened as (2), bytes, frames, telegrams, crc,
    // no crc, crc bad, rejected, parity, framing
    let col = |row: &[&str], i: usize| row[i].parse::<u64>().expect("a number");
    for row in &rows {
        assert!(col(row, 5) > 0, "bytes: {report}");
        assert!(col(row, 7) >= 3, "telegrams: {report}");
        assert_eq!(col(row, 7), col(row, 9), "no CRC (Veitur): {report}");
    }
    assert_eq!(rows[1][3..5], ["9600", "8N1"], "7E1 is read as 8N1");
    assert!(
        col(&rows[1], 12) > 0,
        "8-bit text has wrong 7E1 parity bits: {report}"
    );
    assert_eq!(col(&rows[0], 12), 0);
    assert!(
        report.contains("bit 7 at 9600 8N1: bit 7 is always 0"),
        "{report}"
    );
    assert!(report.contains("meter: /ISk5\\2MIE5E-200"), "{report}");
    assert!(report.contains("recommended preset: dsmr4\n"), "{report}");
    // The default request line (RTS) cannot be driven on a pty.
    assert!(
        report.contains("veitur: could not drive the request line rts:"),
        "{report}"
    );
}

#[test]
fn probe_on_a_silent_pty_says_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socat = Cable::plug(&dir.path().join("p1"), &dir.path().join("meter"));
    let out = p1gw_output(&[
        "probe",
        "--port",
        socat.a().to_str().expect("utf-8"),
        "--listen-for",
        "200ms",
        "--request",
        "none",
    ]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.ends_with(&format!(
            "bit 7 at 9600 8N1: too few bytes at 9600 baud to tell the framing from bit 7\n{}\n",
            "no data at any setting: check the request line wiring (pin 2 must be raised) and the signal inversion (Veitur's data line is inverted: use an inverting cable or an inverter)"
        )),
        "{report}"
    );
    assert!(!report.contains("recommended"), "{report}");
    assert!(report.starts_with(&format!(
        "probe of {}: 200ms per preset, request line none\n",
        socat.a().display()
    )));
}

/// `probe --write-config`: the packaged configuration (no port) gets the port and the
/// recommended preset, checked before it is replaced, and then checks out; a port named like
/// a Zigbee stick is refused without being opened (the simulator on it sees no reader).
#[test]
fn probe_writes_the_cable_into_the_config_and_refuses_a_zigbee_stick() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir
        .path()
        .join("usb-FTDI_FT232R_USB_UART_A10KZP45-if00-port0");
    let _meter = simulator(&link, &["--profile", "veitur", "--interval", "100ms"]);
    let config = dir.path().join("p1gw.toml");
    let packaged =
        std::fs::read_to_string(crate::support::root().join("config/p1gw.toml")).expect("read");
    // The test's own spool directory, so that check-config passes as any user.
    let spool = dir.path().join("spool");
    std::fs::write(
        &config,
        packaged.replace(
            "dir = \"/var/lib/p1gw\"",
            &format!("dir = \"{}\"", spool.display()),
        ),
    )
    .expect("write config");
    let out = p1gw_output(&[
        "probe",
        "--port",
        link.to_str().expect("utf-8"),
        "--listen-for",
        "700ms",
        "--request",
        "none",
        "--write-config",
        config.to_str().expect("utf-8"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("wrote port = "), "{stdout}");
    let written = std::fs::read_to_string(&config).expect("read");
    assert!(
        written.contains(&format!(
            "port = \"{}\"  # found by p1gw probe",
            link.display()
        )),
        "{written}"
    );
    assert!(
        written.contains("preset = \"dsmr4\"  # found by p1gw probe"),
        "{written}"
    );
    let check = p1gw_output(&["check-config", config.to_str().expect("utf-8")]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // A Zigbee coordinator's by-id name: refused, the config untouched.
    let radio = dir
        .path()
        .join("usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus_186ff44c-if00-port0");
    std::os::unix::fs::symlink(&link, &radio).expect("radio link");
    let out = p1gw_output(&[
        "probe",
        "--port",
        radio.to_str().expect("utf-8"),
        "--write-config",
        config.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("looks like a Zigbee coordinator"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("p1gw probe: "),
        "nothing was probed: {stderr}"
    );
    assert_eq!(std::fs::read_to_string(&config).expect("read"), written);
}
