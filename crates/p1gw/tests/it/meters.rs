//! Several meters on one gateway (`[[meters]]`, docs/contracts.md §5): one reader
//! each, every reading carrying its meter's name.

use std::time::Duration;

use crate::support::{Daemon, wait_for};

#[test]
fn two_meters_in_one_daemon_deliver_readings_under_their_own_names() {
    let config = r#"
[[meters]]
name = "house"
tz = "Atlantic/Reykjavik"
source = { kind = "simulate", profile = "veitur", interval = "100ms" }

[[meters]]
name = "cabin"
tz = "Europe/Amsterdam"
source = { kind = "replay", path = "fixtures/telegrams/netherlands_kaifa_dsmr42.txt", interval = "100ms", loop = true }

[[sink]]
kind = "jsonl"
path = "{dir}/readings.jsonl"

[spool]
dir = "{dir}/spool"
"#;
    let (mut daemon, dir) = Daemon::start(config, &[]);
    let out = dir.join("readings.jsonl");
    let readings = wait_for(Duration::from_secs(20), "3 readings of each meter", || {
        let text = std::fs::read_to_string(&out).ok()?;
        let all: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let count = |m: &str| all.iter().filter(|r| r["meter"] == m).count();
        (count("house") >= 3 && count("cabin") >= 3).then_some(all)
    });
    for r in &readings {
        match r["meter"].as_str() {
            Some("house") => {
                assert_eq!(r["header"], "ISk5\\2MIE5E-200");
                assert_eq!(r["source"], "simulate:veitur");
            }
            Some("cabin") => {
                assert_eq!(r["header"], "KFM5KAIFA-METER");
                assert_eq!(
                    r["source"],
                    "replay:fixtures/telegrams/netherlands_kaifa_dsmr42.txt"
                );
            }
            other => panic!("a reading of an unknown meter {other:?}"),
        }
    }
    let (_, metrics) = daemon.get("/metrics").expect("metrics");
    for meter in ["house", "cabin"] {
        assert!(
            metrics.contains(&format!("p1gw_telegrams_total{{meter=\"{meter}\"}}")),
            "{metrics}"
        );
    }
    let (_, status) = daemon.get("/api/v1/status").expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    let names: Vec<&str> = status["meters"]
        .as_array()
        .expect("meters")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{status}");
    assert!(
        names.contains(&"house") && names.contains(&"cabin"),
        "{status}"
    );
    daemon.signal("TERM");
    assert_eq!(
        daemon.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        daemon.log()
    );
}
