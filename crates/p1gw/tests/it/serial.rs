//! `p1gw run` with serial meters on socat pty pairs (docs/dependencies.md §3.5):
//! the daemon opens one end like a device, the test writes telegrams to the
//! other as the meter; killing socat is pulling the cable. A pty has no line
//! settings nor RTS/DTR, so these sources drive no request line (the modes
//! are tested in p1-reader with a fake line).

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Daemon, wait_for};
use p1_testkit::Cable;

use crate::tools::fixture;

/// The meter: writes `telegram` to `port` every 100 ms until `done` holds,
/// at most 20 s.
fn send_until(port: &Path, telegram: &[u8], mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut meter = std::fs::OpenOptions::new()
        .write(true)
        .open(port)
        .expect("open the meter's end");
    loop {
        meter.write_all(telegram).expect("write to the pty");
        let next = Instant::now() + Duration::from_millis(100);
        while Instant::now() < next {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(Instant::now() < deadline, "not done within 20 s");
    }
}

fn readings(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The reader's component in `/api/v1/status`.
fn reader_status(daemon: &Daemon, meter: &str) -> Option<serde_json::Value> {
    let (_, body) = daemon.get("/api/v1/status")?;
    p1_testkit::component(&body, &format!("reader:{meter}"))
}

#[test]
fn a_serial_meter_is_read_and_reconnects_by_itself_after_an_unplug() {
    let ports = tempfile::tempdir().expect("tempdir");
    let (a, b) = (ports.path().join("p1"), ports.path().join("meter"));
    let socat = Cable::plug(&a, &b);
    let config = format!(
        r#"
[meter]
name = "home"
tz = "Europe/Amsterdam"

[source]
kind = "serial"
port = "{}"
preset = "dsmr4"
reconnect = {{ min = "100ms", max = "500ms" }}

[[sink]]
kind = "jsonl"
path = "{{dir}}/readings.jsonl"

[spool]
dir = "{{dir}}/spool"
"#,
        a.display()
    );
    let (mut daemon, dir) = Daemon::start(&config, &[]);
    let out = dir.join("readings.jsonl");
    send_until(&b, &fixture("netherlands_iskra_am550_dsmr50.txt"), || {
        !readings(&out).is_empty()
    });
    let first = &readings(&out)[0];
    assert_eq!(first["meter"], "home");
    assert_eq!(first["header"], "ISK5\\2M550T-1013");
    assert_eq!(first["crc"], "valid");
    assert_eq!(first["source"], format!("serial:{}", a.display()));

    // Unplug: the reader sees the device vanish and reports degraded.
    socat.unplug();
    let reader = wait_for(Duration::from_secs(10), "reader degraded", || {
        reader_status(&daemon, "home").filter(|r| r["state"] == "degraded")
    });
    let reason = reader["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains(&a.display().to_string()), "{reason}");
    assert_eq!(
        daemon.child.try_wait().expect("try_wait"),
        None,
        "still running"
    );

    // Replug under the same names: it reconnects by itself.
    let _socat = Cable::plug(&a, &b);
    send_until(&b, &fixture("netherlands_kaifa_dsmr42.txt"), || {
        readings(&out)
            .iter()
            .any(|r| r["header"] == "KFM5KAIFA-METER")
    });
    let reader = wait_for(Duration::from_secs(10), "reader ok", || {
        reader_status(&daemon, "home").filter(|r| r["state"] == "ok")
    });
    assert_eq!(reader["counters"]["reconnects"], 1, "{reader}");
    let (_, metrics) = daemon.get("/metrics").expect("metrics");
    assert!(
        metrics.contains(r#"p1gw_reconnects_total{meter="home"} 1"#),
        "{metrics}"
    );

    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_pty_from_p1gw_simulate_feeds_the_daemon() {
    let ports = tempfile::tempdir().expect("tempdir");
    let link = ports.path().join("p1");
    let _meter = crate::tools::simulator(&link, &["--profile", "belgium", "--interval", "100ms"]);
    let config = format!(
        r#"
[meter]
name = "flat"
tz = "Europe/Brussels"

[source]
kind = "serial"
port = "{}"
preset = "dsmr4"

[[sink]]
kind = "jsonl"
path = "{{dir}}/readings.jsonl"

[spool]
dir = "{{dir}}/spool"
"#,
        link.display()
    );
    let (daemon, dir) = Daemon::start(&config, &[]);
    let out = dir.join("readings.jsonl");
    let got = wait_for(Duration::from_secs(20), "3 readings", || {
        let r = readings(&out);
        (r.len() >= 3).then_some(r)
    });
    for r in &got {
        assert_eq!(r["meter"], "flat");
        assert_eq!(r["header"], "FLU5\\253769484_A");
        assert_eq!(r["crc"], "valid");
    }
    drop(daemon);
}
