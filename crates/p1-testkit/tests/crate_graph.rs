//! The crate graph of ARCHITECTURE.md, checked on `cargo metadata`: a dependency edge between
//! two workspace crates that the architecture forbids fails this test, naming the edge.
//!
//! ```text
//! p1-telegram <- p1-core <- p1-reader | p1-sink-* | p1-http <- p1gw
//!                p1-core <- p1-mqtt-transport <- p1-sink-mqtt | p1-sink-azure
//! p1-testkit: depends on no p1gw crate;  p1-faults: links nothing of p1gw (only p1-testkit)
//! ```

use std::collections::BTreeMap;
use std::process::Command;

/// What each workspace crate may depend on (any kind of dependency); dev-dependencies may add
/// those of [`DEV_ONLY`].
const ALLOWED: &[(&str, &[&str])] = &[
    ("p1-telegram", &[]),
    ("p1-core", &["p1-telegram"]),
    ("p1-reader", &["p1-telegram", "p1-core"]),
    ("p1-mqtt-transport", &["p1-telegram", "p1-core"]),
    ("p1-sink-file", &["p1-telegram", "p1-core"]),
    ("p1-sink-influx", &["p1-telegram", "p1-core"]),
    (
        "p1-sink-mqtt",
        &["p1-telegram", "p1-core", "p1-mqtt-transport"],
    ),
    (
        "p1-sink-azure",
        &["p1-telegram", "p1-core", "p1-mqtt-transport"],
    ),
    ("p1-http", &["p1-telegram", "p1-core"]),
    (
        "p1gw",
        &[
            "p1-telegram",
            "p1-core",
            "p1-reader",
            "p1-sink-file",
            "p1-sink-influx",
            "p1-sink-mqtt",
            "p1-sink-azure",
            "p1-http",
        ],
    ),
    ("p1-testkit", &[]),
    ("p1-faults", &[]),
];

/// Crates any crate but p1-testkit itself may take as a dev-dependency.
const DEV_ONLY: &[&str] = &["p1-testkit"];

/// What a sink crate not listed in [`ALLOWED`] may depend on, so that adding a sink does not
/// touch this test; p1gw may depend on every `p1-sink-*`.
const NEW_SINK: &[&str] = &["p1-telegram", "p1-core", "p1-mqtt-transport"];

/// Whether `from` may depend on `to` (any kind of dependency).
fn may(from: &str, to: &str) -> bool {
    match ALLOWED.iter().find(|(name, _)| *name == from) {
        Some((_, deps)) => deps.contains(&to) || (from == "p1gw" && to.starts_with("p1-sink-")),
        None => from.starts_with("p1-sink-") && NEW_SINK.contains(&to),
    }
}

/// `(crate, dependency, kind)` for every dependency between workspace crates.
fn edges() -> (Vec<String>, Vec<(String, String, String)>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: Vec<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let mut edges = Vec::new();
    for package in packages {
        let from = package["name"].as_str().expect("name");
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let to = dep["name"].as_str().expect("dependency name");
            if names.iter().any(|n| n == to) {
                let kind = dep["kind"].as_str().unwrap_or("normal");
                edges.push((from.to_owned(), to.to_owned(), kind.to_owned()));
            }
        }
    }
    (names, edges)
}

#[test]
fn no_crate_depends_on_one_the_architecture_forbids() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let (names, edges) = edges();
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !allowed.contains_key(n.as_str()) && !n.starts_with("p1-sink-"))
        .collect();
    assert!(
        unknown.is_empty(),
        "crates not placed in the graph (add them to ALLOWED here and to ARCHITECTURE.md): {unknown:?}"
    );
    let forbidden: Vec<String> = edges
        .iter()
        .filter(|(from, to, kind)| {
            let ok = may(from, to)
                || (kind == "dev" && from != "p1-testkit" && DEV_ONLY.contains(&to.as_str()));
            !ok
        })
        .map(|(from, to, kind)| format!("{from} -> {to} ({kind})"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "dependencies the architecture forbids (ARCHITECTURE.md, Codemap): {forbidden:#?}"
    );
    // The check sees the edges it judges.
    assert!(
        edges
            .iter()
            .any(|(from, to, _)| from == "p1gw" && to == "p1-core"),
        "{edges:?}"
    );
}

#[test]
fn the_rules_forbid_what_they_should() {
    // A library reaching up or sideways, the test kit or the fault suite linking p1gw.
    for (from, to) in [
        ("p1-telegram", "p1-core"),
        ("p1-core", "p1-reader"),
        ("p1-sink-mqtt", "p1-sink-influx"),
        ("p1-sink-influx", "p1-mqtt-transport"),
        ("p1-http", "p1-reader"),
        ("p1-testkit", "p1-core"),
        ("p1-faults", "p1gw"),
        ("p1-faults", "p1-core"),
    ] {
        assert!(!may(from, to), "{from} -> {to} must be forbidden");
    }
    // A new sink crate: the usual layers, nothing sideways; p1gw may use it.
    assert!(may("p1-sink-new", "p1-core") && may("p1gw", "p1-sink-new"));
    assert!(!may("p1-sink-new", "p1-sink-mqtt") && !may("p1-sink-new", "p1-reader"));
}
