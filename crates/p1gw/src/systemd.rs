//! systemd integration without libsystemd: READY/STOPPING/STATUS and the
//! watchdog via `sd-notify` (a no-op when not started by systemd).

use std::sync::Arc;
use std::time::Duration;

use p1_core::{ComponentKind, Reading, Registry};
use tokio::sync::broadcast;

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed.");
    }
}

/// Tells systemd the gateway is up.
pub(crate) fn ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Tells systemd the gateway is stopping.
pub(crate) fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// The age of the youngest telegram over all readers, if any arrived.
fn last_telegram_age(registry: &Registry) -> Option<Duration> {
    let now = tokio::time::Instant::now();
    registry
        .statuses()
        .iter()
        .filter(|s| s.kind == ComponentKind::Reader)
        .filter_map(|s| s.last_success.map(|l| now.saturating_duration_since(l.at)))
        .min()
}

/// Feeds the systemd watchdog while readers produce readings, and keeps
/// `STATUS=` current. When no telegram arrived for three watchdog periods
/// (or 60 s when no watchdog is set), it stops pinging, so systemd restarts
/// a gateway whose meter went silent (a wedged USB adapter is common). It
/// ends when the readings channel closes.
pub(crate) async fn watchdog(registry: Registry, readings: broadcast::WeakSender<Arc<Reading>>) {
    let watchdog = sd_notify::watchdog_enabled();
    let enabled = watchdog.is_some();
    let period = watchdog.map_or(Duration::from_secs(10), |timeout| {
        (timeout / 2).max(Duration::from_millis(100))
    });
    let silent_limit = (period * 6).max(Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if readings.upgrade().is_none() {
            notify(&[sd_notify::NotifyState::Status("readers stopped")]);
            return;
        }
        let status = match last_telegram_age(&registry) {
            Some(age) => format!("last telegram {} s ago", age.as_secs()),
            None => "waiting for the first telegram".to_owned(),
        };
        let fresh = last_telegram_age(&registry).is_none_or(|age| age < silent_limit);
        if enabled && fresh {
            notify(&[
                sd_notify::NotifyState::Watchdog,
                sd_notify::NotifyState::Status(&status),
            ]);
        } else {
            notify(&[sd_notify::NotifyState::Status(&status)]);
        }
    }
}
