//! The live page in a real browser: headless Chromium (Debian's package)
//! loads `/` from the demo gateway, shows the simulated meter's values and
//! shows new ones as readings arrive. A screenshot is kept as an artifact in
//! the target directory (`live-page.png`).

use std::process::Command;
use std::time::Duration;

use crate::support::{free_port, get, wait_for};

/// Chromium as the project's docs describe it: headless, no sandbox (root),
/// no background networking (the machine has no network), a fresh profile.
fn chromium(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium not found: install Debian's chromium package (scripts/test does)")
}

/// The text of the element with this id in a dumped DOM.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let rest = &dom[start..];
    let open_end = rest.find('>')?;
    let body = &rest[open_end + 1..];
    // The element's own text up to the next tag, plus nested tags' text (units).
    let end = body
        .find("</data>")
        .or_else(|| body.find("</time>"))
        .or_else(|| body.find("</span>"))?;
    let mut text = String::new();
    let mut in_tag = false;
    for c in body[..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn live_page_shows_the_demo_meter_and_updates() {
    let port = free_port();
    let state = tempfile::tempdir().expect("tempdir");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args([
            "run",
            "--interval",
            "1s",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("XDG_STATE_HOME", state.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start p1gw");
    let meter_time = |port| {
        get(port, "/api/v1/reading")
            .filter(|(s, _)| *s == 200)
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["meter_time"].as_str().map(str::to_owned))
    };
    let first_time = wait_for(Duration::from_secs(20), "a reading", || meter_time(port));

    let profile = tempfile::tempdir().expect("profile");
    // ?poll=1: the page polls instead of holding an SSE stream open, so that
    // Chromium's virtual time can run the scripts to completion.
    let url = format!("http://127.0.0.1:{port}/?poll=1");
    let dump = |profile: &std::path::Path| {
        let out = chromium(profile, &["--virtual-time-budget=5000", "--dump-dom", &url]);
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dom = dump(profile.path());
    let power = text_of(&dom, "power-import").expect("power-import element");
    assert!(
        power.ends_with(" W") || power.ends_with(" kW"),
        "power shown: {power:?}"
    );
    assert!(
        power.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "{power:?}"
    );
    for id in [
        "energy-import",
        "hot-water-volume",
        "supply-temp",
        "meter-time",
    ] {
        let text = text_of(&dom, id).unwrap_or_default();
        assert!(
            !text.is_empty() && !text.starts_with('—'),
            "{id} shows {text:?}"
        );
    }
    let water = text_of(&dom, "hot-water-volume").expect("water");
    assert!(water.contains("m³"), "{water:?}");
    // Every value the meter sends, in the table of all values (from /api/v1/values): the
    // demo's Veitur meter has a hot-water register nobody named (0-1:24.2.10), shown under
    // its code with the hint how to name it.
    let table = dom
        .split("id=\"values\"")
        .nth(1)
        .and_then(|rest| rest.split("</tbody>").next())
        .expect("the table of every value");
    assert!(
        table.contains(">energy_import_total<") && table.contains(" kWh<"),
        "{table}"
    );
    assert!(table.contains(">obis_0_1_24_2_10<"), "{table}");
    assert!(
        !dom.contains("id=\"values-note\" hidden"),
        "the hint for unnamed codes is shown"
    );
    let shown_time = text_of(&dom, "meter-time").expect("meter time");

    // A newer reading arrives: the page shows it.
    wait_for(Duration::from_secs(20), "a newer reading", || {
        meter_time(port).filter(|t| *t != first_time)
    });
    let later = wait_for(
        Duration::from_secs(30),
        "the page to show a newer meter time",
        || {
            let dom = dump(profile.path());
            text_of(&dom, "meter-time").filter(|t| *t != shown_time)
        },
    );
    assert!(!later.is_empty());

    // The screenshot, kept as a test artifact.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    if shot.exists() {
        std::fs::remove_file(&shot).expect("remove the old screenshot");
    }
    let out = chromium(
        profile.path(),
        &[
            "--virtual-time-budget=5000",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real PNG"
    );

    crate::support::stop_child(&mut daemon);
}
