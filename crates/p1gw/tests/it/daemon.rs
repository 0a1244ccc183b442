//! `p1gw run` as a process: replay → jsonl exactly once and in order,
//! readiness following the source, graceful SIGTERM, SIGHUP reload.

use std::time::Duration;

use crate::support::{Daemon, root, wait_for};

fn replay_config(interval: &str) -> String {
    format!(
        r#"
[meter]
name = "home"
tz = "Europe/Amsterdam"

[source]
kind = "replay"
path = "fixtures/telegrams"
interval = "{interval}"

[[sink]]
kind = "jsonl"
path = "{{dir}}/readings.jsonl"

[spool]
dir = "{{dir}}/spool"
"#
    )
}

/// The objects of every good fixture telegram, as `p1gw parse` gives them.
fn parsed_fixtures() -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["parse", "--tz", "Europe/Amsterdam", "fixtures/telegrams"])
        .current_dir(root())
        .output()
        .expect("p1gw parse");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

#[test]
fn replay_to_jsonl_delivers_every_telegram_once_in_order_and_readiness_follows_the_source() {
    let (mut daemon, dir) = Daemon::start(&replay_config("100ms"), &[]);
    wait_for(Duration::from_secs(20), "/healthz 200", || {
        daemon.get("/healthz").filter(|(s, _)| *s == 200)
    });
    wait_for(
        Duration::from_secs(20),
        "/readyz 200 while replaying",
        || daemon.get("/readyz").filter(|(s, _)| *s == 200),
    );
    let (_, body) = wait_for(
        Duration::from_secs(30),
        "/readyz 503 after the recording ends",
        || {
            daemon
                .get("/readyz")
                .filter(|(s, b)| *s == 503 && b.contains("home: stopped"))
        },
    );
    assert!(body.contains("\"ready\":false"), "{body}");

    let out = dir.join("readings.jsonl");
    let expected = parsed_fixtures();
    assert_eq!(expected.len(), 23);
    let lines = wait_for(
        Duration::from_secs(20),
        "all 23 readings in the jsonl file",
        || {
            let text = std::fs::read_to_string(&out).ok()?;
            (text.lines().count() >= 23).then_some(text)
        },
    );
    let got: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(got.len(), 23, "exactly once");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g["meter"], "home");
        assert_eq!(g["header"], e["header"]);
        assert_eq!(g["meter_time"], e["meter_time"]);
        assert_eq!(g["objects"], e["objects"], "same values as p1gw parse");
    }

    // The rejected telegrams are counted by reason.
    let (_, metrics) = daemon.get("/metrics").expect("metrics");
    assert!(
        metrics.contains(r#"p1gw_telegrams_rejected_total{meter="home",reason="crc"} 4"#),
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
fn sigterm_stops_within_5_s_with_the_sink_flushed() {
    // A fast replay that keeps going: SIGTERM arrives mid-stream.
    let config =
        replay_config("20ms").replace("interval = \"20ms\"", "interval = \"20ms\"\nloop = true");
    let (mut daemon, dir) = Daemon::start(&config, &[]);
    let out = dir.join("readings.jsonl");
    wait_for(Duration::from_secs(20), "some readings written", || {
        let n = std::fs::read_to_string(&out).ok()?.lines().count();
        (n >= 10).then_some(())
    });
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        daemon.log()
    );
    let log = daemon.log();
    // Every reading the reader published reached the file: the counts match.
    let written = std::fs::read_to_string(&out)
        .expect("jsonl")
        .lines()
        .count();
    let ok: usize = log
        .lines()
        .find(|l| l.contains("Reader stopped."))
        .and_then(|l| l.split("ok=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("reader summary in the log");
    assert_eq!(written, ok, "{log}");
    assert!(log.contains("Readers and sinks stopped."), "{log}");
}

#[test]
fn sighup_reloads_a_valid_config_and_keeps_the_old_one_when_invalid() {
    let config = r#"
[meter]
name = "first"
tz = "Atlantic/Reykjavik"

[source]
kind = "simulate"
interval = "200ms"

[spool]
dir = "{dir}/spool"
"#;
    let (mut daemon, dir) = Daemon::start(config, &[]);
    let meter_of = |d: &Daemon| {
        d.get("/api/v1/reading")
            .filter(|(s, _)| *s == 200)
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["meter"].as_str().map(str::to_owned))
    };
    wait_for(
        Duration::from_secs(20),
        "a reading from meter first",
        || meter_of(&daemon).filter(|m| m == "first"),
    );

    // An invalid file: the running config stays.
    std::fs::write(dir.join("p1gw.toml"), "[meter]\nname = 5\n").expect("write");
    daemon.signal("HUP");
    wait_for(Duration::from_secs(20), "the rejection in the log", || {
        daemon
            .log()
            .contains("keeping the running one")
            .then_some(())
    });
    assert_eq!(meter_of(&daemon).as_deref(), Some("first"));

    // A valid one: the gateway restarts with it.
    std::fs::write(
        dir.join("p1gw.toml"),
        config
            .replace("first", "second")
            .replace("{dir}", &dir.display().to_string()),
    )
    .expect("write");
    daemon.signal("HUP");
    wait_for(
        Duration::from_secs(20),
        "a reading from meter second",
        || meter_of(&daemon).filter(|m| m == "second"),
    );
    daemon.signal("INT");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        daemon.log()
    );
}

#[test]
fn metrics_pass_promtool() {
    let (daemon, _dir) = Daemon::start(&replay_config("50ms"), &[]);
    let body = wait_for(Duration::from_secs(20), "metrics with meter values", || {
        daemon
            .get("/metrics")
            .filter(|(s, b)| {
                *s == 200 && b.contains("p1gw_meter_value") && b.contains("p1gw_sink_sent_total")
            })
            .map(|(_, b)| b)
    });
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian's prometheus package (scripts/test does)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn built_in_demo_serves_the_veitur_meter_without_any_setup() {
    let port = crate::support::free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args([
            "run",
            "--interval",
            "200ms",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("XDG_STATE_HOME", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let started = std::time::Instant::now();
    let reading = wait_for(Duration::from_secs(20), "a demo reading", || {
        crate::support::get(port, "/api/v1/reading").filter(|(s, _)| *s == 200)
    });
    let v: serde_json::Value = serde_json::from_str(&reading.1).expect("json");
    assert_eq!(v["meter"], "demo");
    assert_eq!(v["header"], "ISk5\\2MIE5E-200");
    let names: Vec<&str> = v["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    for name in [
        "power_import",
        "energy_import_total",
        "hot_water_volume",
        "heat_supply_temperature",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    crate::support::stop_child(&mut child);
}

#[test]
fn sigterm_during_a_reload_is_not_lost() {
    // A sink that cannot deliver makes the old run drain for its whole grace
    // period; the SIGTERM sent meanwhile must still stop the gateway.
    let config = r#"
[meter]
name = "m"
tz = "Atlantic/Reykjavik"

[source]
kind = "simulate"
interval = "100ms"

[[sink]]
kind = "jsonl"
path = "{dir}"

[spool]
dir = "{dir}/spool"
"#;
    let (mut daemon, _dir) = Daemon::start(config, &[]);
    // The jsonl "file" is a directory: its writes fail, a storage fault /readyz names.
    wait_for(
        Duration::from_secs(20),
        "readings flowing to a failing sink",
        || {
            daemon
                .get("/readyz")
                .filter(|(s, body)| *s == 503 && body.contains("cannot write"))
        },
    );
    daemon.signal("HUP");
    wait_for(Duration::from_secs(20), "the reload to start", || {
        daemon.log().contains("restarting with it").then_some(())
    });
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemon.log()
    );
}
