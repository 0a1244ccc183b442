//! systemd's notify protocol, against a socket the test owns: `p1gw run`
//! sends READY=1 once it serves, WATCHDOG=1 while telegrams arrive (when
//! systemd asks for a watchdog), STATUS= lines, and STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, stop_child};

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args([
            "run",
            "--interval",
            "200ms",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("XDG_STATE_HOME", dir.path())
        .env("NOTIFY_SOCKET", &socket_path)
        // A 1 s watchdog: p1gw pings every 0.5 s while telegrams arrive.
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start p1gw");
    let pid = child.id();

    let mut seen = Vec::<String>::new();
    let mut ready_after = None;
    let mut buf = [0u8; 4096];
    let mut receive_until = |seen: &mut Vec<String>, what: &str, limit: Duration| {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                seen.extend(text.lines().map(str::to_owned));
                if seen.iter().any(|l| l == what) {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        receive_until(&mut seen, "READY=1", Duration::from_secs(20)),
        "no READY=1: {seen:?}"
    );
    ready_after.get_or_insert(started.elapsed());
    // Several watchdog pings while the simulated meter sends.
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.iter().filter(|l| *l == "WATCHDOG=1").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "fewer than 3 WATCHDOG=1: {seen:?}"
        );
        receive_until(&mut seen, "never", Duration::from_millis(300));
    }
    assert!(
        seen.iter().any(|l| l.starts_with("STATUS=last telegram")),
        "a STATUS= line with the telegram age: {seen:?}"
    );

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(
        receive_until(&mut seen, "STOPPING=1", Duration::from_secs(10)),
        "no STOPPING=1: {seen:?}"
    );
    let code = child.wait().expect("wait").code();
    assert_eq!(code, Some(0));
    stop_child(&mut child);
    // Start-up to READY=1, informative (the target is 300 ms on this machine
    // class; a busy test machine is no benchmark).
    eprintln!("READY=1 after {:?}", ready_after.unwrap_or_default());
}
