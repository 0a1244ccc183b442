//! The reader actor's handle ("Actors with Tokio"): a `Clone` handle holding a
//! bounded `mpsc::Sender` of requests, each answered on a `oneshot`.
//!
//! [`ReaderHandle::spawn`] starts the reader task; the task owns the source
//! (port, request line, pipeline) and serves requests between reads, so no
//! lock is shared with it. The reader ends when `stop` fires, when its source
//! ends (a recording without `loop`), or when the last handle is dropped.
//! [`crate::run_reader`] runs the same task without a handle (the daemon's
//! way: it stops readers with its cancellation token).

use std::sync::Arc;

use p1_core::{HealthHandle, Reading};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::serial::LineStats;
use crate::{Error, ReaderConfig};

/// How many requests may wait for the reader; senders wait beyond that.
const REQUESTS: usize = 8;

/// What a reader reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReaderStatus {
    /// The meter's name.
    pub meter: Arc<str>,
    /// The source, as in logs (`serial:/dev/ttyUSB0`, `simulate:veitur`).
    pub source: String,
    /// Whether the source is open now (always true for simulate and replay
    /// while they run).
    pub connected: bool,
    /// Good telegrams so far.
    pub telegrams_ok: u64,
    /// Rejected telegrams so far.
    pub telegrams_rejected: u64,
    /// Successful reopens after a disconnect (serial, tcp).
    pub reconnects: u64,
    /// Serial line statistics (bytes, parity and framing errors), summed over
    /// every time the port was open; zero for other sources.
    pub line: LineStats,
    /// Whether the request line is raised now.
    pub request_high: bool,
}

/// A request to the reader task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Reply with the reader's status.
    Status(oneshot::Sender<ReaderStatus>),
    /// Re-toggle the request line; reply whether one is driven.
    Retrigger(oneshot::Sender<bool>),
}

/// A handle to one meter's reader task. Cheap to clone; the reader stops when
/// the last clone is dropped (or its `stop` token fires).
#[derive(Debug, Clone)]
pub struct ReaderHandle {
    tx: mpsc::Sender<Command>,
    meter: Arc<str>,
}

impl ReaderHandle {
    /// Spawns the reader of `cfg` on the current runtime; returns its handle
    /// and the task's `JoinHandle` (for the owner to await at shutdown).
    pub fn spawn(
        cfg: ReaderConfig,
        tx: broadcast::Sender<Arc<Reading>>,
        latest: watch::Sender<Option<Arc<Reading>>>,
        health: HealthHandle,
        stop: CancellationToken,
    ) -> (ReaderHandle, JoinHandle<()>) {
        let (requests, rx) = mpsc::channel(REQUESTS);
        let meter = cfg.meter.clone();
        let task = tokio::spawn(crate::source::run(cfg, tx, latest, health, stop, Some(rx)));
        (
            ReaderHandle {
                tx: requests,
                meter,
            },
            task,
        )
    }

    /// The meter's name.
    pub fn meter(&self) -> &str {
        &self.meter
    }

    /// The reader's status.
    ///
    /// # Errors
    /// [`Error::ReaderGone`] when the reader has stopped.
    pub async fn status(&self) -> Result<ReaderStatus, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Status(reply))
            .await
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())
    }

    /// Re-toggles the request line now (drop it, raise it again shortly
    /// after), as when a meter stopped answering. `Ok(false)`: this source
    /// drives no request line (not serial, or line `none`).
    ///
    /// # Errors
    /// [`Error::ReaderGone`] when the reader has stopped.
    pub async fn retrigger(&self) -> Result<bool, Error> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Retrigger(reply))
            .await
            .map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())
    }

    fn gone(&self) -> Error {
        Error::ReaderGone {
            meter: self.meter.clone(),
        }
    }
}

/// The reader task's side: its requests (if it has a handle), the status it
/// keeps, and where line errors are reported.
pub(crate) struct Control {
    rx: Option<mpsc::Receiver<Command>>,
    /// What the reader says about itself; the source loops keep it current.
    pub(crate) status: ReaderStatus,
    /// Line statistics of the current session (the filter's are per port).
    session_line: LineStats,
    /// Where line errors are counted: metric label and health.
    report: Option<HealthHandle>,
}

impl Control {
    /// No handle and no reporting: for `probe` and `record`.
    pub(crate) fn detached() -> Control {
        Control {
            rx: None,
            status: ReaderStatus::default(),
            session_line: LineStats::default(),
            report: None,
        }
    }

    /// A reader's control.
    pub(crate) fn new(
        rx: Option<mpsc::Receiver<Command>>,
        meter: Arc<str>,
        source: String,
        health: HealthHandle,
    ) -> Control {
        Control {
            rx,
            status: ReaderStatus {
                meter,
                source,
                ..ReaderStatus::default()
            },
            session_line: LineStats::default(),
            report: Some(health),
        }
    }

    /// The next request. `None` once every handle is gone (the reader should
    /// stop); never returns for a reader without a handle.
    ///
    /// # Cancel safety
    /// Cancel safe (`mpsc::Receiver::recv` is).
    pub(crate) async fn recv(&mut self) -> Option<Command> {
        match &mut self.rx {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Serves requests already waiting, without blocking (for loops that
    /// rarely await). False once every handle is gone.
    pub(crate) fn serve_waiting(&mut self, counters: (u64, u64)) -> bool {
        loop {
            let Some(rx) = &mut self.rx else {
                return true;
            };
            match rx.try_recv() {
                Ok(command) => self.serve(command, counters),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Answers a request of a source without a request line.
    pub(crate) fn serve(&mut self, command: Command, counters: (u64, u64)) {
        match command {
            Command::Status(reply) => self.reply_status(reply, counters),
            // The caller may have stopped waiting: nothing to do then.
            Command::Retrigger(reply) => reply.send(false).unwrap_or(()),
        }
    }

    /// Sends the status, with the pipeline's counters.
    pub(crate) fn reply_status(
        &self,
        reply: oneshot::Sender<ReaderStatus>,
        (ok, rejected): (u64, u64),
    ) {
        let mut status = self.status.clone();
        status.telegrams_ok = ok;
        status.telegrams_rejected = rejected;
        // The caller may have stopped waiting: nothing to do then.
        reply.send(status).unwrap_or(());
    }

    /// Records an error in the reader's health (nothing for a detached one).
    pub(crate) fn report_error(&self, message: &str) {
        if let Some(health) = &self.report {
            health.error(message);
        }
    }

    /// A new port session starts: its filter counts from zero.
    pub(crate) fn begin_session(&mut self) {
        self.session_line = LineStats::default();
    }

    /// The filter's statistics of the current session: adds what is new to
    /// the totals, the metric and the health counters.
    pub(crate) fn note_line(&mut self, session: LineStats) {
        let new = session.since(&self.session_line);
        if new == LineStats::default() {
            return;
        }
        self.session_line = session;
        self.status.line.add(&new);
        let Some(health) = &self.report else {
            return;
        };
        let meter = self.status.meter.to_string();
        if new.parity_errors > 0 {
            metrics::counter!("p1gw_serial_errors_total", "meter" => meter.clone(), "kind" => "parity")
                .increment(new.parity_errors);
            health.set_counter("parity_errors", self.status.line.parity_errors);
        }
        if new.line_errors > 0 {
            metrics::counter!("p1gw_serial_errors_total", "meter" => meter, "kind" => "framing")
                .increment(new.line_errors);
            health.set_counter("line_errors", self.status.line.line_errors);
        }
    }
}
