use std::sync::atomic::AtomicBool;

use super::*;

const GRACE: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn tasks_that_honour_the_stop_token_finish_cleanly() {
    let shutdown = Shutdown::new();
    let stop = shutdown.stop_token();
    let flushed = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&flushed);
    shutdown.spawn_named("reader:home", async move {
        stop.cancelled().await;
        // Finishing the current telegram / flushing takes a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
        f.store(true, Ordering::SeqCst);
    });
    let handle = shutdown.spawn_named("sink:mqtt", async { 42 });
    assert_eq!(handle.await.expect("join"), 42);
    assert_eq!(shutdown.running(), ["reader:home"]);

    let report = shutdown.clone().shutdown(GRACE).await;
    assert!(flushed.load(Ordering::SeqCst));
    assert_eq!(
        report,
        ShutdownReport {
            clean: true,
            stragglers: vec![],
            still_running: vec![],
            unnamed_still_running: 0,
            elapsed: Duration::from_secs(1),
        }
    );
    assert!(
        shutdown.hard_token().is_cancelled(),
        "hard is fired at the end in any case"
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_ignoring_stop_is_a_straggler_and_hard_stop_ends_it() {
    let shutdown = Shutdown::new();
    let hard = shutdown.hard_token();
    shutdown.spawn_named("sink:influx", async move {
        // Ignores the stop token: stuck in a send until the hard stop.
        hard.cancelled().await;
    });
    shutdown.spawn_named("reader:home", std::future::ready(()));

    let report = shutdown.shutdown(GRACE).await;
    assert!(!report.clean);
    assert_eq!(report.stragglers, ["sink:influx"]);
    assert!(report.still_running.is_empty());
    assert_eq!(report.elapsed, GRACE);
}

#[tokio::test(start_paused = true)]
async fn a_task_ignoring_both_tokens_is_reported_as_still_running() {
    let shutdown = Shutdown::new();
    shutdown.spawn_named("sink:azure", std::future::pending::<()>());
    shutdown.spawn_named("sink:azure", std::future::pending::<()>());
    // A tracked task without a name is counted, not named.
    shutdown.tracker().spawn(std::future::pending::<()>());

    let report = shutdown
        .shutdown_with(GRACE, Duration::from_millis(500))
        .await;
    assert!(!report.clean);
    assert_eq!(report.stragglers, ["sink:azure", "sink:azure"]);
    assert_eq!(report.still_running, ["sink:azure", "sink:azure"]);
    assert_eq!(report.unnamed_still_running, 1);
    assert_eq!(report.elapsed, GRACE + Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn names_are_removed_when_a_task_panics_or_is_aborted() {
    let shutdown = Shutdown::new();
    let panicked = shutdown.spawn_named("boom", async {
        panic!("worker bug");
    });
    assert!(panicked.await.expect_err("panicked").is_panic());
    let aborted = shutdown.spawn_named("aborted", std::future::pending::<()>());
    aborted.abort();
    assert!(aborted.await.expect_err("aborted").is_cancelled());
    assert!(shutdown.running().is_empty());
    assert!(shutdown.shutdown(GRACE).await.clean);
}
