//! Signals, both kinds in one place (as linkerd2-proxy does): SIGTERM and
//! SIGINT stop the gateway, SIGHUP reloads its configuration, and SIGXFSZ is
//! caught so that a write past the file-size limit fails with `EFBIG` (a
//! storage fault the sink reports and retries) instead of killing the daemon.

use tokio::signal::unix::{SignalKind, signal};

/// What a signal asks for.
pub(crate) enum Signal {
    /// Stop gracefully; the name of the signal.
    Stop(&'static str),
    /// Reload the configuration.
    Reload,
}

/// The signal streams, installed once per run.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    /// Kept only so that SIGXFSZ's default action (end the process with a core dump) is
    /// replaced by tokio's handler; never read.
    _xfsz: tokio::signal::unix::Signal,
}

/// SIGXFSZ on Linux (x86, ARM and AArch64 alike).
const SIGXFSZ: i32 = 25;

impl Signals {
    /// Installs the handlers.
    pub(crate) fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            _xfsz: signal(SignalKind::from_raw(SIGXFSZ))?,
        })
    }

    /// The next signal.
    pub(crate) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
