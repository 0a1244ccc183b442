//! Helpers: start the daemon on a free port, talk HTTP to it, wait for
//! conditions under a deadline (never for time to pass).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) use p1_testkit::{free_port, root, stop_child, wait_for};

/// A running `p1gw run`, killed on drop.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `p1gw run --config <config> --listen 127.0.0.1:<port> [extra]`;
    /// `config` may use `{dir}` for a fresh temporary directory.
    pub(crate) fn start(config: &str, extra: &[&str]) -> (Daemon, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let text = config.replace("{dir}", &path.display().to_string());
        let file = path.join("p1gw.toml");
        std::fs::write(&file, text).expect("write config");
        let port = free_port();
        let stderr = path.join("stderr.log");
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "run",
            "--config",
            file.to_str().expect("utf-8"),
            "--listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_p1gw"))
            .args(&args)
            .current_dir(root())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start p1gw");
        let daemon = Daemon {
            child,
            port,
            stderr,
            _dir: dir,
        };
        (daemon, path)
    }

    pub(crate) fn get(&self, path: &str) -> Option<(u16, String)> {
        get(self.port, path)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends a signal with kill(1).
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// `GET path` on 127.0.0.1:port; (status, body) or None when nothing answers.
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    p1_testkit::http_get(port, path, Duration::from_secs(5))
}
