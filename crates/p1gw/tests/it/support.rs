//! Helpers: start the daemon on a free port, talk HTTP to it, wait for
//! conditions under a deadline (never for time to pass). The daemon itself is
//! p1-testkit's [`p1_testkit::Daemon`], shared with p1-faults.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use p1_testkit::{free_port, root, stop_child, wait_for};

/// A running `p1gw run` in a temporary directory of its own, killed on drop.
pub(crate) struct Daemon {
    inner: p1_testkit::Daemon,
    _dir: tempfile::TempDir,
}

impl Deref for Daemon {
    type Target = p1_testkit::Daemon;
    fn deref(&self) -> &p1_testkit::Daemon {
        &self.inner
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut p1_testkit::Daemon {
        &mut self.inner
    }
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
        let mut inner = p1_testkit::Daemon::spawn(
            env!("CARGO_BIN_EXE_p1gw").as_ref(),
            &file,
            &path.join("stderr.log"),
            extra,
            &[("RUST_LOG", "info")],
        );
        inner.http_timeout = Duration::from_secs(5);
        (Daemon { inner, _dir: dir }, path)
    }

    /// The log so far.
    pub(crate) fn log(&self) -> String {
        self.log_text()
    }
}

/// `GET path` on 127.0.0.1:port; (status, body) or None when nothing answers.
pub(crate) fn get(port: u16, path: &str) -> Option<(u16, String)> {
    p1_testkit::http_get(port, path, Duration::from_secs(5))
}
