//! Two-phase shutdown: decide, tell, wait — then force, and name what did not stop.
//!
//! The daemon owns one [`Shutdown`] and hands clones of its parts to the components:
//!
//! * the **stop token** ([`Shutdown::stop_token`]) means "stop reading": the reader finishes the
//!   telegram it is on and drops its broadcast sender; sink workers then drain their channel to
//!   `Closed`, flush what their backend takes and leave the rest spooled. Workers normally do not
//!   watch this token at all: the closed channel tells them.
//! * the **hard token** ([`Shutdown::hard_token`]) means "stop now": fired only when the grace
//!   period is over; a worker stuck in a send abandons it (its records stay spooled).
//! * the **tracker** ([`Shutdown::tracker`]) counts every spawned task, so shutdown knows when
//!   all have finished; [`Shutdown::spawn_named`] also remembers names, so that the log and the
//!   [`ShutdownReport`] can say *which* tasks are stragglers.
//!
//! [`Shutdown::shutdown`] runs the sequence: cancel stop, close the tracker, wait up to `grace`;
//! if tasks remain, log them, cancel hard, wait a little more, and report what still runs. The
//! caller (p1gw) then stops HTTP and exits; what still runs is dropped with the runtime.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[cfg(test)]
mod tests;

/// How long [`Shutdown::shutdown`] waits after firing the hard token.
pub const HARD_STOP_WAIT: Duration = Duration::from_secs(1);

/// Tokens and task tracker for a two-phase shutdown. Cheap to clone; all clones share state.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    hard: CancellationToken,
    tracker: TaskTracker,
    named: Arc<NamedTasks>,
}

/// Names of the tasks spawned through [`Shutdown::spawn_named`] that have not finished.
#[derive(Debug, Default)]
struct NamedTasks {
    next_id: AtomicU64,
    running: Mutex<BTreeMap<u64, String>>,
}

impl NamedTasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        // Only inserts and removes happen under this lock; a panic cannot leave it half-done.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes a task's name when its future is dropped: on completion, on panic (the future is
/// dropped while unwinding) and on abort alike.
struct NameGuard {
    id: u64,
    tasks: Arc<NamedTasks>,
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        self.tasks.lock().remove(&self.id);
    }
}

/// What [`Shutdown::shutdown`] observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every task finished within the grace period.
    pub clean: bool,
    /// Named tasks still running when the grace period ended (sorted); the hard token was fired
    /// for them.
    pub stragglers: Vec<String>,
    /// Named tasks still running after the hard stop wait (sorted): they ignore cancellation.
    pub still_running: Vec<String>,
    /// Tracked tasks without a name still running at the end.
    pub unnamed_still_running: usize,
    /// How long the shutdown took.
    pub elapsed: Duration,
}

impl Shutdown {
    /// Fresh tokens and an open tracker.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// "Stop reading": cancelled first. Give it to the reader (and anything that produces work).
    #[must_use]
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// "Stop now": cancelled only when the grace period is over.
    #[must_use]
    pub fn hard_token(&self) -> CancellationToken {
        self.hard.clone()
    }

    /// The tracker every spawn goes through (style: no untracked spawns).
    #[must_use]
    pub fn tracker(&self) -> TaskTracker {
        self.tracker.clone()
    }

    /// Spawn `fut` on the tracker under `name` (e.g. `sink:mqtt`), so that a shutdown that
    /// times out can say which tasks did not stop. Names need not be unique.
    ///
    /// # Panics
    ///
    /// Like `tokio::spawn`, if called outside a tokio runtime.
    pub fn spawn_named<F>(&self, name: impl Into<String>, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.named.next_id.fetch_add(1, Ordering::Relaxed);
        // Registered before the task exists, so a task that has not been polled yet still counts.
        self.named.lock().insert(id, name.into());
        let guard = NameGuard {
            id,
            tasks: Arc::clone(&self.named),
        };
        self.tracker.spawn(async move {
            let _guard = guard; // dropped with the future, however it ends
            fut.await
        })
    }

    /// Names of the named tasks that have not finished, sorted.
    #[must_use]
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self.named.lock().values().cloned().collect();
        names.sort();
        names
    }

    /// Run the two-phase shutdown with [`HARD_STOP_WAIT`] after the hard stop.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        self.shutdown_with(grace, HARD_STOP_WAIT).await
    }

    /// Run the two-phase shutdown:
    ///
    /// 1. cancel the stop token and close the tracker (new spawns are still tracked, but
    ///    `wait()` can now finish once the count reaches zero);
    /// 2. wait for every tracked task, at most `grace`;
    /// 3. if some remain: WARN naming them, cancel the hard token, wait at most `hard_wait`;
    /// 4. report (WARN again for tasks that ignored even the hard stop).
    ///
    /// The hard token is cancelled at the end in every case, so nothing waits on it forever.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that dropping it leaves the tokens cancelled as far as it got;
    /// tasks are never aborted by it.
    pub async fn shutdown_with(self, grace: Duration, hard_wait: Duration) -> ShutdownReport {
        let started = Instant::now();
        self.stop.cancel();
        self.tracker.close();

        let clean = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        let mut stragglers = Vec::new();
        if !clean {
            stragglers = self.running();
            tracing::warn!(
                tasks = ?stragglers,
                unnamed = self.unnamed(stragglers.len()),
                grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                "Tasks still running after the shutdown grace period; stopping them hard."
            );
            self.hard.cancel();
            // A timeout here is reported below, by name.
            let _finished = tokio::time::timeout(hard_wait, self.tracker.wait())
                .await
                .is_ok();
        }
        self.hard.cancel();

        let still_running = self.running();
        let unnamed_still_running = self.unnamed(still_running.len());
        if !still_running.is_empty() || unnamed_still_running > 0 {
            tracing::warn!(
                tasks = ?still_running,
                unnamed = unnamed_still_running,
                "Tasks ignored the hard stop; exiting without them."
            );
        }
        ShutdownReport {
            clean,
            stragglers,
            still_running,
            unnamed_still_running,
            elapsed: started.elapsed(),
        }
    }

    /// Tracked tasks beyond the `named` ones that are still running.
    fn unnamed(&self, named: usize) -> usize {
        self.tracker.len().saturating_sub(named)
    }
}
