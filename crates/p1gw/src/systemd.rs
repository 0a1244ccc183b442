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

/// What the watchdog decision needs to know of one meter's reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReaderWatch {
    /// The meter's telegram interval (its request interval in poll mode).
    pub(crate) interval: Duration,
    /// How long ago its last telegram arrived; `None` before the first.
    pub(crate) last_telegram_age: Option<Duration>,
}

/// The shortest silence that counts as a silent meter, whatever its interval: a reconnect
/// or a slow USB adapter must not restart the daemon.
const MIN_SILENCE: Duration = Duration::from_secs(120);
/// What a reader gets on top of its silence limit for the first telegram after start:
/// the adapter enumerating, the port opening, the request line raised, one whole telegram.
const START_GRACE: Duration = Duration::from_secs(60);

/// How long a meter with `interval` may stay silent before the daemon counts as stuck:
/// three intervals (the `/readyz` window), at least [`MIN_SILENCE`].
pub(crate) fn silence_limit(interval: Duration) -> Duration {
    (interval * p1_core::health::READY_INTERVALS).max(MIN_SILENCE)
}

/// Whether to ping systemd's watchdog now, `uptime` after the start: yes while at least one
/// reader is alive — its last telegram younger than its [`silence_limit`], or, before its first
/// telegram, the daemon younger than that limit plus [`START_GRACE`]. When every reader is
/// silent the pings stop, and systemd restarts the daemon a watchdog period later (a wedged USB
/// adapter is the common cause, and a fresh process reopens it). A daemon with no reader at all
/// has nothing to judge and always pings.
pub(crate) fn should_ping(uptime: Duration, readers: &[ReaderWatch]) -> bool {
    readers.is_empty()
        || readers.iter().any(|r| {
            let limit = silence_limit(r.interval);
            match r.last_telegram_age {
                Some(age) => age < limit,
                None => uptime < limit + START_GRACE,
            }
        })
}

/// Each reader's interval and telegram age, as the health registry knows them.
fn readers(registry: &Registry, default_interval: Duration) -> Vec<ReaderWatch> {
    let now = tokio::time::Instant::now();
    registry
        .statuses()
        .iter()
        .filter(|s| s.kind == ComponentKind::Reader)
        .map(|s| ReaderWatch {
            interval: s.expected_interval.unwrap_or(default_interval),
            last_telegram_age: s.last_success.map(|l| now.saturating_duration_since(l.at)),
        })
        .collect()
}

/// Feeds the systemd watchdog while [`should_ping`] says so, and keeps `STATUS=` current. It
/// ends when the readings channel closes.
pub(crate) async fn watchdog(registry: Registry, readings: broadcast::WeakSender<Arc<Reading>>) {
    let watchdog = sd_notify::watchdog_enabled();
    let enabled = watchdog.is_some();
    let period = watchdog.map_or(Duration::from_secs(10), |timeout| {
        (timeout / 2).max(Duration::from_millis(100))
    });
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(period);
    let mut pinging = true;
    loop {
        tick.tick().await;
        if readings.upgrade().is_none() {
            notify(&[sd_notify::NotifyState::Status("readers stopped")]);
            return;
        }
        let readers = readers(&registry, DEFAULT_INTERVAL);
        let status = match readers.iter().filter_map(|r| r.last_telegram_age).min() {
            Some(age) => format!("last telegram {} s ago", age.as_secs()),
            None => "waiting for the first telegram".to_owned(),
        };
        let ping = should_ping(started.elapsed(), &readers);
        if ping != pinging && enabled {
            pinging = ping;
            if ping {
                tracing::info!("A meter sends again; feeding the systemd watchdog again.");
            } else {
                tracing::error!(
                    status,
                    "Every meter is silent beyond its limit; no longer feeding the systemd \
                     watchdog, so systemd restarts the daemon."
                );
            }
        }
        if enabled && ping {
            notify(&[
                sd_notify::NotifyState::Watchdog,
                sd_notify::NotifyState::Status(&status),
            ]);
        } else {
            notify(&[sd_notify::NotifyState::Status(&status)]);
        }
    }
}

/// A reader that has not said its interval: Veitur's 10 s.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn reader(interval: u64, age: Option<u64>) -> ReaderWatch {
        ReaderWatch {
            interval: S * interval as u32,
            last_telegram_age: age.map(|a| S * a as u32),
        }
    }

    #[test]
    fn a_slow_meter_is_not_silent_between_its_telegrams() {
        // Poll mode every 5 minutes: 4 minutes without a telegram is normal (the old rule
        // stopped pinging after 180 s and systemd restarted a healthy daemon for ever).
        assert!(should_ping(S * 3600, &[reader(300, Some(240))]));
        assert!(should_ping(S * 3600, &[reader(300, Some(899))]));
        assert!(!should_ping(S * 3600, &[reader(300, Some(900))]));
    }

    #[test]
    fn a_fast_meter_gets_at_least_two_minutes() {
        assert_eq!(silence_limit(S * 10), S * 120);
        assert!(should_ping(S * 3600, &[reader(10, Some(119))]));
        assert!(!should_ping(S * 3600, &[reader(10, Some(120))]));
        assert!(!should_ping(S * 3600, &[reader(1, Some(300))]));
    }

    #[test]
    fn no_first_telegram_by_the_start_deadline_stops_the_pings() {
        // A USB adapter wedged at boot: the old rule pinged for ever.
        assert!(should_ping(S * 10, &[reader(10, None)]));
        assert!(should_ping(S * 179, &[reader(10, None)]));
        assert!(!should_ping(S * 180, &[reader(10, None)]));
        assert!(should_ping(S * 900, &[reader(300, None)]));
        assert!(!should_ping(S * 960, &[reader(300, None)]));
    }

    #[test]
    fn one_live_meter_keeps_the_daemon_and_no_reader_pings() {
        assert!(should_ping(
            S * 3600,
            &[reader(10, Some(3000)), reader(10, Some(5))]
        ));
        assert!(!should_ping(
            S * 3600,
            &[reader(10, Some(3000)), reader(10, None)]
        ));
        assert!(should_ping(S * 3600, &[]));
    }
}
