//! The Debian package's pieces (packaging/, `[package.metadata.deb]`): the files exist and agree
//! with each other, the unit keeps the daemon's systemd contract and passes `systemd-analyze
//! verify` and `security` (where systemd-analyze is installed), the udev rule is well-formed, and
//! the packaged default config is valid except for the cable this machine does not have.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::support::root;

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `[package.metadata.deb]` of crates/p1gw/Cargo.toml.
fn deb_metadata() -> toml::Table {
    let manifest: toml::Table = read("crates/p1gw/Cargo.toml").parse().expect("Cargo.toml");
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]")
        .clone()
}

/// The `[Service]` (etc.) entries of a unit file: (key, value) in file order.
fn unit_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l}"));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn values<'a>(entries: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn one<'a>(entries: &'a [(String, String)], key: &str) -> &'a str {
    match values(entries, key).as_slice() {
        [v] => v,
        other => panic!("{key}: expected one value, got {other:?}"),
    }
}

#[test]
fn deb_metadata_names_files_that_exist_and_agree() {
    let deb = deb_metadata();
    let crate_dir = root().join("crates/p1gw");
    let mut dests = BTreeSet::new();
    for asset in deb["assets"].as_array().expect("assets") {
        let asset = asset.as_array().expect("[source, dest, mode]");
        let (source, dest) = (
            asset[0].as_str().expect("source"),
            asset[1].as_str().expect("dest"),
        );
        // cargo-deb maps target/release/ to the build's target dir.
        if !source.starts_with("target/release/") {
            assert!(
                crate_dir.join(source).is_file(),
                "asset source {source} is missing"
            );
        }
        dests.insert(dest.to_owned());
    }
    for dest in [
        "usr/bin/",
        "etc/p1gw/p1gw.toml",
        "lib/udev/rules.d/99-p1gw.rules",
        "usr/share/doc/p1gw/README.md",
        "usr/share/doc/p1gw/raspberry-pi.md",
    ] {
        assert!(dests.contains(dest), "no asset goes to {dest}: {dests:?}");
    }
    assert_eq!(
        deb["conf-files"].as_array().expect("conf-files"),
        &vec![toml::Value::from("/etc/p1gw/p1gw.toml")]
    );
    assert_eq!(deb["section"].as_str(), Some("net"));

    // The unit and the maintainer scripts where cargo-deb looks for them, each script with the
    // #DEBHELPER# line that receives cargo-deb's systemd snippets.
    let units = &deb["systemd-units"];
    assert_eq!(units["enable"].as_bool(), Some(true));
    assert_eq!(units["start"].as_bool(), Some(false));
    let unit_dir = crate_dir.join(units["unit-scripts"].as_str().expect("unit-scripts"));
    assert!(unit_dir.join("p1gw.service").is_file());
    let scripts = crate_dir.join(deb["maintainer-scripts"].as_str().expect("scripts"));
    for name in ["postinst", "postrm"] {
        let text = std::fs::read_to_string(scripts.join(name)).expect(name);
        assert!(
            text.contains("\n#DEBHELPER#\n"),
            "{name}: no #DEBHELPER# line"
        );
        let status = Command::new("sh")
            .arg("-n")
            .arg(scripts.join(name))
            .status()
            .expect("sh -n");
        assert!(status.success(), "{name}: shell syntax error");
    }
    // postinst starts the service only when the installed config checks out.
    let postinst = std::fs::read_to_string(scripts.join("postinst")).expect("postinst");
    assert!(postinst.contains("CONFIG=/etc/p1gw/p1gw.toml"));
    assert!(postinst.contains("/usr/bin/p1gw check-config \"$CONFIG\""));
}

#[test]
fn unit_keeps_the_daemons_systemd_contract() {
    let unit = read("packaging/p1gw.service");
    let e = unit_entries(&unit);
    // Type=notify: READY=1/STOPPING=1 from crates/p1gw/src/systemd.rs, from the main process.
    assert_eq!(one(&e, "Type"), "notify");
    assert_eq!(one(&e, "NotifyAccess"), "main");
    // The daemon pings at half the period while telegrams flow.
    assert_eq!(one(&e, "WatchdogSec"), "60");
    assert_eq!(one(&e, "Restart"), "on-failure");
    assert_eq!(one(&e, "RestartSec"), "5");
    // Longer than the 10 s shutdown grace (readers stop, sinks drain).
    let stop: u64 = one(&e, "TimeoutStopSec").parse().expect("seconds");
    assert!(stop > 10, "TimeoutStopSec={stop}");
    // The config the package installs, the binary it installs.
    assert_eq!(
        one(&e, "ExecStart"),
        "/usr/bin/p1gw run --config /etc/p1gw/p1gw.toml"
    );
    assert_eq!(one(&e, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one(&e, "User"), "p1gw");
    // The spool's default directory is $STATE_DIRECTORY; the packaged config says the same.
    assert_eq!(one(&e, "StateDirectory"), "p1gw");
    assert!(read("config/p1gw.toml").contains("dir = \"/var/lib/p1gw\""));
    assert_eq!(one(&e, "ConfigurationDirectory"), "p1gw");
    assert_eq!(one(&e, "UMask"), "0077");
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallArchitectures", "native"),
        ("DevicePolicy", "closed"),
        ("MemoryDenyWriteExecute", "yes"),
        ("PrivateUsers", "no"),
    ] {
        assert_eq!(one(&e, key), value, "{key}");
    }
    assert!(values(&e, "SystemCallFilter").contains(&"@system-service"));
    // Every device kind a P1 cable or UART shows up as; /dev/p1 and /dev/serial/* are
    // symlinks into these groups.
    let allowed: BTreeSet<&str> = values(&e, "DeviceAllow").into_iter().collect();
    for group in ["ttyUSB", "ttyACM", "ttyAMA", "ttyS", "gpiochip"] {
        assert!(
            allowed.contains(format!("char-{group} rw").as_str()),
            "DeviceAllow=char-{group} rw missing: {allowed:?}"
        );
    }
}

/// Whether `program` runs at all here.
fn available(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn unit_passes_systemd_analyze_verify_and_security() {
    if !available("systemd-analyze", "--version") {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd)");
        return;
    }
    // verify insists that ExecStart's binary exists: check a copy that runs the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = read("packaging/p1gw.service").replace(
        "ExecStart=/usr/bin/p1gw ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_p1gw")),
    );
    let copy = dir.path().join("p1gw.service");
    std::fs::write(&copy, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns: {stderr}"
    );

    // The exposure level must stay "OK" (below 2.5; --threshold counts in tenths).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=25", "--no-pager"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze security");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "exposure level above 2.5: {level}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", level.trim());
}

#[test]
fn udev_rule_is_well_formed_tags_every_cable_and_names_no_device() {
    let rules = read("packaging/99-p1gw.rules");
    let mut labels = BTreeSet::new();
    let mut gotos = BTreeSet::new();
    let mut cables = BTreeSet::new();
    for (n, line) in rules.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pairs = split_rule(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", n + 1));
        let mut vendor = None;
        for (k, op, v) in &pairs {
            assert!(is_udev_key(k), "line {}: unknown key {k}", n + 1);
            match (k.as_str(), op.as_str()) {
                ("LABEL", "=") => assert!(labels.insert(v.clone()), "label {v} twice"),
                ("GOTO", "=") => {
                    gotos.insert(v.clone());
                }
                ("ATTRS{idVendor}", "==") => vendor = Some(v.clone()),
                ("ATTRS{idProduct}", "==") => {
                    cables.insert(format!("{}:{v}", vendor.clone().expect("idVendor first")));
                }
                _ => {}
            }
        }
    }
    assert!(
        gotos.is_subset(&labels),
        "GOTO without LABEL: {gotos:?} vs {labels:?}"
    );
    let want: BTreeSet<String> = [
        "0403:6001",
        "0403:6015",
        "1a86:7523",
        "067b:2303",
        "10c4:ea60",
    ]
    .map(String::from)
    .into();
    assert_eq!(cables, want);
    assert!(rules.contains(r#"ENV{ID_P1GW_CANDIDATE}="1""#));
    // Zigbee and Z-Wave sticks use the same chips: the rule must not hand any of them to p1gw
    // (a /dev/p1 for "the first such port"), nor change their permissions or their lines.
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for forbidden in ["SYMLINK", "GROUP", "MODE", "OWNER", "RUN", "PROGRAM"] {
            assert!(
                !line.contains(forbidden),
                "the rule must not set {forbidden}: {line}"
            );
        }
    }

    // systemd 254 and later can check the syntax itself.
    if available("udevadm", "--version")
        && Command::new("udevadm")
            .args(["verify", "--help"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        let out = Command::new("udevadm")
            .args(["verify", "--no-style"])
            .arg(root().join("packaging/99-p1gw.rules"))
            .output()
            .expect("udevadm verify");
        assert!(
            out.status.success(),
            "udevadm verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "udevadm verify not available (needs systemd 254+): checked the rule's shape only"
        );
    }
}

/// Whether the rule may use this key (udev(7)); anything else is a typo.
fn is_udev_key(key: &str) -> bool {
    let base = key.split_once('{').map_or(key, |(b, _)| b);
    [
        "ACTION",
        "SUBSYSTEM",
        "SUBSYSTEMS",
        "KERNEL",
        "KERNELS",
        "ATTRS",
        "ATTR",
        "ENV",
        "TEST",
        "PROGRAM",
        "RESULT",
        "GROUP",
        "MODE",
        "OWNER",
        "SYMLINK",
        "GOTO",
        "LABEL",
        "TAG",
    ]
    .contains(&base)
}

/// Splits `KEY=="value", KEY+="value"` into (key, operator, value).
fn split_rule(line: &str) -> Result<Vec<(String, String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!', '+', ':']).ok_or("no operator")?;
        let key = rest[..op_at].trim().to_owned();
        let after = &rest[op_at..];
        let op = ["==", "!=", "+=", "-=", ":=", "="]
            .into_iter()
            .find(|op| after.starts_with(op))
            .ok_or("bad operator")?;
        let after = after[op.len()..].trim_start();
        let body = after.strip_prefix('"').ok_or("value not quoted")?;
        let end = body.find('"').ok_or("unterminated value")?;
        out.push((key, op.to_owned(), body[..end].to_owned()));
        rest = body[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!("expected ',' before {rest}"));
        }
    }
    Ok(out)
}

/// The effective user id, from /proc/self/status.
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[test]
fn packaged_config_names_no_port_and_says_how_to_find_the_cable() {
    // After `apt install` nothing may open a serial port: the packaged config names none, so
    // check-config fails (and postinst does not start the service) until the user names the
    // cable; the error says how.
    let config = "config/p1gw.toml";
    let text = read(config);
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("port") && l.contains('=')),
        "the packaged config must name no port"
    );
    assert!(
        !text.contains("mode = \"poll\""),
        "the default request line is raised once (hold), not toggled"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["check-config", config])
        .current_dir(root())
        .output()
        .expect("p1gw check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("p1gw: ")).collect();
    let source_line = text
        .lines()
        .position(|l| l.trim() == "[source]")
        .expect("[source]")
        + 1;
    let want = format!("p1gw: {config}:{source_line}:1: source.port: missing required key: ");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&want) && e.contains("p1gw probe --list")),
        "expected {want}… naming p1gw probe --list, got: {stderr}"
    );
    // A user other than root may not create the package's spool directory.
    let spool_error = euid() != Some(0)
        && !Path::new("/var/lib/p1gw").exists()
        && errors.iter().any(|e| e.contains(": spool.dir: "));
    assert_eq!(
        errors.len(),
        1 + usize::from(spool_error),
        "only the port is missing: {stderr}"
    );
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    // postinst starts the service only when check-config passes.
    let postinst = read("packaging/debian/postinst");
    let start = postinst.find("deb-systemd-invoke start").expect("a start");
    let check = postinst.find("if check_config; then").expect("the check");
    assert!(check < start, "the start is guarded by the check");
}

/// The release workflow builds with the scripts that run here (scripts/package, then
/// scripts/release-dist): every script it names exists and is executable, the publishing steps
/// run only for a tag, and the container files it relies on are in place.
#[test]
fn release_workflow_runs_the_scripts_tested_here() {
    let text = read(".github/workflows/release.yml");
    let workflow: serde_json::Value = serde_norway::from_str(&text).expect("release.yml parses");
    let steps = workflow["jobs"]["release"]["steps"]
        .as_array()
        .expect("jobs.release.steps");
    let runs: Vec<(&str, &str)> = steps
        .iter()
        .filter_map(|s| Some((s["name"].as_str()?, s["run"].as_str()?)))
        .collect();
    let position = |script: &str| {
        runs.iter()
            .position(|(_, run)| {
                run.trim_start().starts_with(script) || run.contains(&format!(" {script}"))
            })
            .unwrap_or_else(|| panic!("no step runs {script}"))
    };
    assert!(position("scripts/package") < position("scripts/release-dist"));
    for (_, run) in &runs {
        for word in run.split(|c: char| c.is_whitespace() || c == '"') {
            if let Some(script) = word.strip_prefix("scripts/") {
                let path = root().join("scripts").join(script);
                let mode = std::os::unix::fs::PermissionsExt::mode(
                    &std::fs::metadata(&path)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                        .permissions(),
                );
                assert!(mode & 0o111 != 0, "{} is not executable", path.display());
            }
        }
    }
    for step in steps {
        let name = step["name"].as_str().unwrap_or_default();
        if name.starts_with("Publish") {
            assert_eq!(
                step["if"].as_str(),
                Some("startsWith(github.ref, 'refs/tags/v')"),
                "{name} must run for tags only"
            );
        }
    }
    for file in [
        "packaging/container/Containerfile",
        "packaging/container/passwd",
        "packaging/container/group",
        "deploy/home-assistant-addon/Dockerfile",
    ] {
        assert!(root().join(file).is_file(), "{file} missing");
    }
    let passwd = read("packaging/container/passwd");
    assert!(
        passwd.lines().any(|l| l.starts_with("p1gw:x:1000:1000:")),
        "{passwd}"
    );
}
