//! `p1gw check-config`: exit 0 for every shipped example, 78 with located
//! errors for a broken file, and no secret in any output.

use std::process::Command;

use crate::support::root;

fn check(file: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["check-config", file.to_str().expect("utf-8")])
        .current_dir(root())
        .output()
        .expect("p1gw check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_config_checks_clean() {
    let (code, stdout, stderr) = check(&root().join("config/demo.toml"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ok"));
}

#[test]
fn broken_config_names_file_line_col_and_exits_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\n[source]\nkind = \"simulate\"\ninterval = \"10\"\n\n[[sink]]\nkind = \"mqtt\"\nurl = \"mqtt://localhost\"\npassword = \"hunter2\"\n",
    )
    .expect("write");
    let (code, _, stderr) = check(&file);
    assert_eq!(code, Some(78), "{stderr}");
    let name = file.display().to_string();
    assert!(
        stderr.contains(&format!("{name}:12:1: sink[0].password")),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "secret leaked: {stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn missing_config_file_is_66_and_run_refuses_a_bad_config_with_78() {
    let (code, _, stderr) = check(std::path::Path::new("no/such.toml"));
    assert_eq!(code, Some(66), "{stderr}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[meter]\nname = \"x\"\ncolour = 1\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["run", "--config", file.to_str().expect("utf-8")])
        .output()
        .expect("p1gw run");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(":3:1: meter.colour"), "{stderr}");
}

#[test]
fn port_in_use_is_a_configuration_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .env("XDG_STATE_HOME", dir.path())
        .output()
        .expect("p1gw run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}
