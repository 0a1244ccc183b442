//! Signals, both kinds in one place (as linkerd2-proxy does): SIGTERM and
//! SIGINT stop the gateway, SIGHUP reloads its configuration.

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
}

impl Signals {
    /// Installs the handlers.
    pub(crate) fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
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
