//! The connection as the delivery side of a sink sees it, shared by the `mqtt` and
//! `azure-iot` sinks: each runs one connection task that owns the rumqttc client and a
//! delivery loop (p1-core's `Deliver`) that waits for it.
//!
//! * [`LinkState`] is what the connection task publishes on a `watch` channel.
//! * [`wait_connected`] is the delivery side's wait for a connection (or the next failure).
//! * [`mark_lost`] is the connection task's bookkeeping when a connection ends: the state, the
//!   sink's health, and a log line that says WARN once per reason and DEBUG while it repeats.
//! * [`stop_connection`] ends the connection task at shutdown, within a bound.

use std::time::Duration;

use p1_core::HealthHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The connection as delivery (and tests) see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkState {
    /// A CONNACK was received and the connection has not failed since.
    pub connected: bool,
    /// Failed connections (attempts and drops) so far.
    pub failures: u64,
    /// Why the last one failed.
    pub last_error: Option<String>,
}

/// Waits until `state` says connected, for at most `wait`. `peer` names the other end in the
/// errors ("the broker", "IoT Hub").
///
/// # Errors
///
/// Why there is no connection: the reason of a connection attempt that failed meanwhile, the
/// connection task having ended, or no connection within `wait`.
pub async fn wait_connected(
    state: &mut watch::Receiver<LinkState>,
    wait: Duration,
    peer: &str,
) -> Result<(), String> {
    let failures_before = state.borrow().failures;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let s = state.borrow_and_update().clone();
        if s.connected {
            return Ok(());
        }
        if s.failures > failures_before {
            return Err(s
                .last_error
                .unwrap_or_else(|| format!("not connected to {peer}")));
        }
        match tokio::time::timeout_at(deadline, state.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(format!("the connection task for {peer} ended")),
            Err(_) => {
                return Err(s.last_error.unwrap_or_else(|| {
                    format!("not connected to {peer} after {} s", wait.as_secs())
                }));
            }
        }
    }
}

/// Records a connection that ended (or never came) with `reason`: in `state`, in the sink's
/// `health` (the error, degraded with the readings spooled, one more `reconnects`), and in the
/// log of sink `sink`: WARN the first time, DEBUG while the same reason repeats (`last_logged`
/// remembers it). `label` names the protocol in the log and the health reason ("MQTT",
/// "IoT Hub").
pub fn mark_lost(
    state: &watch::Sender<LinkState>,
    last_logged: &mut Option<String>,
    health: &HealthHandle,
    sink: &str,
    label: &str,
    reason: &str,
) {
    state.send_modify(|s| {
        s.connected = false;
        s.failures += 1;
        s.last_error = Some(reason.to_owned());
    });
    if last_logged.as_deref() == Some(reason) {
        tracing::debug!(sink = %sink, error = %reason, "{label} connection failed again.");
    } else {
        tracing::warn!(sink = %sink, error = %reason, "{label} connection failed; readings stay spooled, retrying.");
        *last_logged = Some(reason.to_owned());
    }
    health.error(reason);
    health.degraded(format!("{label}: {reason}; readings stay spooled"));
    health.add_counter("reconnects", 1);
}

/// Waits up to `wait` for the connection task to end after it was told to stop; logs a panic or
/// a task that did not end in time.
pub async fn stop_connection(task: JoinHandle<()>, wait: Duration, sink: &str, label: &str) {
    tokio::select! {
        joined = task => {
            if let Err(e) = joined
                && e.is_panic()
            {
                tracing::error!(sink = %sink, "The {label} connection task panicked.");
            }
        }
        () = tokio::time::sleep(wait) => {
            tracing::warn!(sink = %sink, "The {label} connection did not close in time.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failure_after_the_wait_began_ends_it_with_its_reason() {
        let (tx, mut rx) = watch::channel(LinkState::default());
        let mut logged = None;
        let registry = p1_core::Registry::new();
        let health = registry
            .register("sink:mqtt", p1_core::ComponentKind::Sink)
            .expect("register");
        let waiter = tokio::spawn(async move {
            wait_connected(&mut rx, Duration::from_secs(30), "the broker").await
        });
        tokio::task::yield_now().await;
        mark_lost(
            &tx,
            &mut logged,
            &health,
            "mqtt",
            "MQTT",
            "connection refused",
        );
        assert_eq!(
            waiter.await.expect("join"),
            Err("connection refused".to_owned())
        );
        assert_eq!(logged.as_deref(), Some("connection refused"));
        assert_eq!(tx.borrow().failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_connection_within_the_wait_says_so() {
        let (_tx, mut rx) = watch::channel(LinkState::default());
        let got = wait_connected(&mut rx, Duration::from_secs(30), "IoT Hub").await;
        assert_eq!(got, Err("not connected to IoT Hub after 30 s".to_owned()));
    }

    #[tokio::test]
    async fn a_connection_ends_the_wait() {
        let (tx, mut rx) = watch::channel(LinkState::default());
        tx.send_modify(|s| s.connected = true);
        assert_eq!(
            wait_connected(&mut rx, Duration::from_secs(1), "the broker").await,
            Ok(())
        );
    }
}
