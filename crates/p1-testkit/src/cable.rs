//! A serial cable for tests: a socat pty pair.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{terminate_child, wait_for};
use crate::servers::require;

/// A socat pty pair: `a` is where the reader opens it like a device, `b` where the test writes
/// as the meter. socat relays in its own chunks, so reads split the stream where neither side
/// chose. Unplugging (SIGTERM) is pulling the cable: socat closes both ptys and removes its
/// links. Terminated on drop too.
pub struct Cable {
    child: Child,
    a: PathBuf,
    b: PathBuf,
}

impl Cable {
    /// Starts socat with links at `a` and `b` and waits (10 s at most) until both exist.
    ///
    /// # Panics
    ///
    /// When socat is missing (naming the Debian package) or the links do not appear.
    pub fn plug(a: &Path, b: &Path) -> Cable {
        require("socat", "socat");
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat (Debian package socat)");
        let cable = Cable {
            child,
            a: a.to_path_buf(),
            b: b.to_path_buf(),
        };
        wait_for(Duration::from_secs(10), "socat's pty links", || {
            (a.exists() && b.exists()).then_some(())
        });
        cable
    }

    /// The daemon's (the device's) end.
    pub fn a(&self) -> &Path {
        &self.a
    }

    /// Pulls the plug: SIGTERM, then waits (10 s at most) until socat has removed both links.
    ///
    /// # Panics
    ///
    /// When the links are still there after 10 s.
    pub fn unplug(mut self) {
        terminate_child(&mut self.child);
        wait_for(Duration::from_secs(10), "socat's links gone", || {
            (!self.a.exists() && !self.b.exists()).then_some(())
        });
    }

    /// Writes `bytes` at the meter's end.
    ///
    /// # Panics
    ///
    /// When the meter's end cannot be opened or written.
    pub fn send(&self, bytes: &[u8]) {
        let mut meter = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.b)
            .expect("open the meter's end");
        meter.write_all(bytes).expect("write to the pty");
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        terminate_child(&mut self.child);
    }
}
