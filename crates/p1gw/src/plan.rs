//! From a validated configuration to the running pieces: each component gets
//! its own section, never the whole config.

use std::sync::Arc;
use std::time::Duration;

use p1_reader::{Pace, ReaderConfig, SourceConfig};

use crate::config::ValidConfig;
use crate::config::source::ValidSource;
use crate::daemon::{Plan, SinkPlan};
use crate::exit::{Coded, Exit};

/// How long sinks may drain after the readers stop (below systemd's
/// default `TimeoutStopSec` of 90 s, and short enough for a quick restart).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Command-line overrides of `p1gw run`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// Interval of simulated meters and paced replays (`--interval`).
    pub(crate) interval: Option<Duration>,
    /// HTTP listen address (`--listen`).
    pub(crate) listen: Option<std::net::SocketAddr>,
}

/// Builds the plan.
///
/// # Errors
/// Exit 78 for a source or sink kind this build cannot run yet, 74 when a
/// secret file cannot be read, 66 when a replay's recording is missing.
pub(crate) fn plan(config: &ValidConfig, overrides: &Overrides) -> anyhow::Result<Plan> {
    let mut meters = Vec::new();
    for meter in &config.meters {
        let interval = overrides.interval;
        let (source, max_telegram_bytes) = match &meter.source {
            ValidSource::Simulate(s) => (
                SourceConfig::Simulate {
                    profile: s.profile,
                    interval: interval.unwrap_or(s.interval),
                },
                p1_telegram::DEFAULT_MAX_TELEGRAM_BYTES,
            ),
            // A recording missing at start is an input error (exit 66, and systemd's
            // Restart= tries again), not a daemon that looks healthy with a stopped reader.
            ValidSource::Replay(r) if r.path.as_os_str() != "-" && !r.path.exists() => {
                return Err(Coded::error(
                    Exit::NO_INPUT,
                    format!(
                        "meter {:?}: source.path: the recording {} does not exist",
                        meter.name,
                        r.path.display()
                    ),
                ));
            }
            ValidSource::Replay(r) => (
                SourceConfig::Replay {
                    path: r.path.clone(),
                    pace: interval.map_or(r.pace, Pace::Every),
                    repeat: r.repeat,
                },
                p1_telegram::DEFAULT_MAX_TELEGRAM_BYTES,
            ),
            ValidSource::Tcp(t) => (
                SourceConfig::Tcp {
                    address: t.address(),
                    reconnect_min: t.reconnect.min,
                    reconnect_max: t.reconnect.max,
                },
                t.max_telegram_bytes,
            ),
            ValidSource::Serial(serial) => (serial_source(serial), serial.max_telegram_bytes),
        };
        let expected_interval = match (&meter.source, interval) {
            (ValidSource::Simulate(_) | ValidSource::Replay(_), Some(d)) => d,
            _ => meter.source.expected_interval(),
        };
        meters.push(ReaderConfig {
            meter: Arc::from(meter.name.as_str()),
            tz: Some(meter.tz.clone()),
            source,
            max_telegram_bytes,
            expected_interval,
            guard: meter.spike_guard,
            codes: meter.codes.clone(),
        });
    }

    // One MQTT connection, one last will: its status topic is named for the first meter.
    let gateway = config.meters.first().map_or("p1gw", |m| m.name.as_str());
    let intervals: Vec<(String, std::time::Duration)> = meters
        .iter()
        .map(|m| (m.meter.to_string(), m.expected_interval))
        .collect();
    let mut sinks = Vec::new();
    for sink in &config.sinks {
        let (kind, make) = sink.plan(gateway, crate::version(), &intervals)?;
        sinks.push(SinkPlan {
            name: sink.name.clone(),
            kind,
            make,
        });
    }

    let http_token = match &config.http.token {
        Some(source) => Some(
            source
                .read()
                .map_err(|e| {
                    Coded::error(
                        Exit::IO,
                        format!("http token: cannot read the {source}: {e}"),
                    )
                })?
                .expose()
                .to_owned(),
        ),
        None => None,
    };
    Ok(Plan {
        meters,
        sinks,
        spool_dir: config.spool.dir.clone(),
        spool_max_bytes: config.spool.max_bytes,
        spool_reserve: config.spool.reserve,
        spool_memory: config.spool.memory,
        http_listen: overrides.listen.unwrap_or(config.http.listen),
        http_token,
        history: config.http.history,
        shutdown_grace: SHUTDOWN_GRACE,
    })
}

/// A validated serial source as the reader takes it. `request.invert` is
/// passed on: the reader's RTS/DTR line then de-asserts the pin to raise the
/// request, and a GPIO line is requested active-low.
fn serial_source(serial: &crate::config::source::ValidSerial) -> SourceConfig {
    SourceConfig::Serial(p1_reader::SerialSource {
        port: serial.port.clone(),
        settings: serial.settings,
        request: serial.request.clone(),
        reconnect_min: serial.reconnect.min,
        reconnect_max: serial.reconnect.max,
    })
}

#[cfg(test)]
mod tests;
