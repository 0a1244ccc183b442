//! [`Daemon`]: a `p1gw run` child process on a free HTTP port, judged from outside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{component, free_port, http_get, root, stop_child};

/// A `p1gw run` child process with its own HTTP port on 127.0.0.1; killed (SIGKILL) and reaped
/// on drop. The suites wrap it with how they start it (`crates/p1gw/tests/it/support.rs`,
/// `crates/p1-faults/tests/it/harness.rs`).
#[derive(Debug)]
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its HTTP port.
    pub port: u16,
    /// The file its stderr (the log) goes to.
    pub log: PathBuf,
    /// How long [`Daemon::get`] waits for an answer.
    pub http_timeout: Duration,
}

impl Daemon {
    /// Starts `bin run --config <config> --listen 127.0.0.1:<free port>` followed by `args`, in
    /// the repository root, with `env` set, stdin and stdout closed and stderr written to `log`.
    ///
    /// # Panics
    ///
    /// When the log file cannot be created or the binary cannot be started.
    pub fn spawn(
        bin: &Path,
        config: &Path,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let port = free_port();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .current_dir(root())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("start p1gw");
        Daemon {
            child,
            port,
            log: log.to_owned(),
            http_timeout: Duration::from_secs(10),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(its state)` once the process has ended (a zombie, from `/proc/PID/stat`).
    pub fn exited(&self) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        (state == 'Z' || state == 'X').then(|| format!("state {state}"))
    }

    /// `GET path`: (status, body), or `None` when nothing answers.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path, self.http_timeout)
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends the signal `name` (`TERM`, `HUP`, …) with kill(1).
    ///
    /// # Panics
    ///
    /// When kill(1) fails.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Waits for the process to exit, at most `limit`; its exit code.
    ///
    /// # Panics
    ///
    /// When the process cannot be waited for.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a power cut would, and reap.
    ///
    /// # Panics
    ///
    /// When the process cannot be killed or reaped.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL p1gw");
        self.child.wait().expect("reap p1gw");
    }

    /// Open file descriptors (`/proc/PID/fd`).
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(Iterator::count)
            .unwrap_or(0)
    }

    /// Resident memory in KiB ([`rss_kib`]).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// A component of `/api/v1/status` (`reader:home`, `sink:mqtt`).
    pub fn component(&self, name: &str) -> Option<Value> {
        let (_, body) = self.get("/api/v1/status")?;
        component(&body, name)
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`); 0 when unknown.
/// A free function, for samplers on another thread.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}
