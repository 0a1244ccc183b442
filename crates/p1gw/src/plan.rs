//! From a validated configuration to the running pieces: each component gets
//! its own section, never the whole config.

use std::sync::Arc;
use std::time::Duration;

use p1_reader::{Pace, Profile, ReaderConfig, SourceConfig};

use crate::config::ValidConfig;
use crate::config::sink::ValidSinkKind;
use crate::config::source::{ReplayPace, SimProfile, ValidSource};
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
/// secret file cannot be read.
pub(crate) fn plan(config: &ValidConfig, overrides: &Overrides) -> anyhow::Result<Plan> {
    let mut meters = Vec::new();
    for meter in &config.meters {
        let interval = overrides.interval;
        let (source, max_telegram_bytes) = match &meter.source {
            ValidSource::Simulate(s) => (
                SourceConfig::Simulate {
                    profile: match s.profile {
                        SimProfile::Veitur => Profile::Veitur,
                        SimProfile::Dsmr5 => Profile::Dsmr5,
                        SimProfile::Belgium => Profile::Belgium,
                    },
                    interval: interval.unwrap_or(s.interval),
                },
                p1_telegram::DEFAULT_MAX_TELEGRAM_BYTES,
            ),
            ValidSource::Replay(r) => (
                SourceConfig::Replay {
                    path: r.path.clone(),
                    pace: match (interval, r.pace) {
                        (Some(d), _) => Pace::Every(d),
                        (None, ReplayPace::Every(d)) => Pace::Every(d),
                        (None, ReplayPace::Recorded) => Pace::Recorded,
                        (None, ReplayPace::Fast) => Pace::Fast,
                    },
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
            ValidSource::Serial(_) => {
                return Err(Coded::error(
                    Exit::CONFIG,
                    format!(
                        "meter {:?}: source kind \"serial\" is not available in this build yet; use tcp (ser2net), replay or simulate",
                        meter.name
                    ),
                ));
            }
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
        });
    }

    let mut sinks = Vec::new();
    for sink in &config.sinks {
        let (kind, make): (&'static str, crate::daemon::MakeSink) = match &sink.kind {
            ValidSinkKind::Jsonl(j) => {
                let path = j.path.clone();
                (
                    p1_sink_file::jsonl::KIND,
                    Arc::new(move || p1_sink_file::jsonl::sink(path.clone())),
                )
            }
            ValidSinkKind::Stdout => (
                p1_sink_file::stdout::KIND,
                Arc::new(p1_sink_file::stdout::sink),
            ),
            other => {
                return Err(Coded::error(
                    Exit::CONFIG,
                    format!(
                        "sink {:?}: kind \"{}\" is not available in this build yet",
                        sink.name,
                        other.kind()
                    ),
                ));
            }
        };
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
                .map_err(|e| Coded::error(Exit::IO, format!("http token: cannot read it: {e}")))?
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
        http_listen: overrides.listen.unwrap_or(config.http.listen),
        http_token,
        history: config.http.history,
        shutdown_grace: SHUTDOWN_GRACE,
    })
}
