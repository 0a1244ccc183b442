//! `p1gw run`: wires readers, sinks and HTTP into one running gateway, and
//! takes it down in two phases.
//!
//! Start order: metrics recorder, health registry, the broadcast channel,
//! sink workers (subscribed before any reader runs, so the first reading
//! reaches every sink), readers, then HTTP; READY=1 goes to systemd when
//! all of them run.
//!
//! Stop order (two-phase, ARCHITECTURE.md "crates/p1gw"): a signal sends STOPPING=1,
//! marks the registry as shutting down (so /readyz answers 503) and cancels
//! the readers; each reader finishes its telegram and drops its sender, so
//! the sinks see the channel close and drain their spools under the grace
//! period; then the hard-stop token fires and whatever a backend did not take
//! stays spooled for the next start. HTTP stops last.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use p1_core::{AsyncSpool, ComponentKind, Reading, Registry, Shutdown, SinkContext, SpoolConfig};
use p1_reader::ReaderConfig;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::exit::{Coded, Exit};

/// Capacity of the readings channel: a sink's intake only appends to its
/// spool, so it stays far behind this even on an SD card.
const CHANNEL_CAPACITY: usize = 1024;

/// Makes a fresh instance of a configured sink (the supervisor calls it again
/// after a failure).
pub(crate) use crate::config::sink::MakeSink;

/// One configured sink, ready to build.
pub(crate) struct SinkPlan {
    /// Instance name: metrics label, health name, spool file name.
    pub(crate) name: String,
    /// Kind as spelled in config.
    pub(crate) kind: &'static str,
    pub(crate) make: MakeSink,
}

/// Everything `run` needs, from a validated config.
pub(crate) struct Plan {
    pub(crate) meters: Vec<ReaderConfig>,
    pub(crate) sinks: Vec<SinkPlan>,
    pub(crate) spool_dir: PathBuf,
    pub(crate) spool_max_bytes: u64,
    pub(crate) spool_reserve: u64,
    pub(crate) spool_memory: u64,
    pub(crate) http_listen: SocketAddr,
    pub(crate) http_token: Option<String>,
    /// How much power history the live page gets.
    pub(crate) history: Duration,
    pub(crate) shutdown_grace: Duration,
}

/// Loads and validates the config again, for SIGHUP.
pub(crate) type Reload<'a> = &'a (dyn Fn() -> anyhow::Result<Plan> + Sync);

/// Runs the gateway until SIGTERM/SIGINT (returns `None`) or a SIGHUP whose
/// new config is valid (returns the new plan, after stopping this run). A
/// SIGHUP with an invalid config is logged and changes nothing.
pub(crate) async fn run(
    plan: Plan,
    metrics: &metrics_exporter_prometheus::PrometheusHandle,
    reload: Option<Reload<'_>>,
    signals: &mut crate::signals::Signals,
) -> anyhow::Result<Option<Plan>> {
    let registry = Registry::new();
    let shutdown = Shutdown::new();
    let (tx, _) = broadcast::channel::<Arc<Reading>>(CHANNEL_CAPACITY);

    // Bind before anything runs: a port in use is a configuration error.
    let listener = tokio::net::TcpListener::bind(plan.http_listen)
        .await
        .map_err(|e| {
            Coded::error(
                Exit::CONFIG,
                format!("http.listen: cannot listen on {}: {e}", plan.http_listen),
            )
        })?;

    std::fs::create_dir_all(&plan.spool_dir).with_context(|| {
        format!(
            "cannot create the spool directory {}",
            plan.spool_dir.display()
        )
    })?;

    // Sinks first, each subscribed now so that it misses nothing.
    let mut sink_kinds = Vec::new();
    for sink in &plan.sinks {
        let spool = AsyncSpool::open(
            plan.spool_dir.join(format!("{}.redb", sink.name)),
            &sink.name,
            SpoolConfig {
                reserve_bytes: plan.spool_reserve,
                memory_bytes: plan.spool_memory,
                ..SpoolConfig::new(plan.spool_max_bytes)
            },
        )
        .await
        .with_context(|| format!("sink {}: cannot open its spool", sink.name))?;
        let health = registry.register(format!("sink:{}", sink.name), ComponentKind::Sink)?;
        let cx = SinkContext {
            name: sink.name.clone(),
            health,
            spool,
            stop: shutdown.stop_token(),
            hard: shutdown.hard_token(),
        };
        let make = sink.make.clone();
        shutdown.spawn_named(
            format!("sink:{}", sink.name),
            p1_core::sink::supervise(move || make(), tx.subscribe(), tx.downgrade(), cx),
        );
        sink_kinds.push((sink.name.clone(), sink.kind));
        tracing::info!(sink = %sink.name, kind = sink.kind, "Sink started.");
    }

    // HTTP state: latest reading per meter, history, registry.
    let expected_interval = plan
        .meters
        .iter()
        .map(|m| m.expected_interval)
        .max()
        .unwrap_or(Duration::from_secs(10));
    let mut latest_senders = Vec::new();
    // One point per reading, for the configured span at the fastest meter's pace.
    let fastest = plan
        .meters
        .iter()
        .map(|m| m.expected_interval)
        .min()
        .unwrap_or(Duration::from_secs(10));
    let points = (plan.history.as_secs_f64() / fastest.as_secs_f64().max(0.1)).ceil() as usize;
    let history = p1_http::History::new(points.clamp(60, 86_400));
    let mut http = p1_http::HttpState::builder(registry.clone(), &tx, history.clone())
        .metrics(metrics.clone())
        .expected_interval(expected_interval)
        .version(crate::version());
    for meter in &plan.meters {
        let (latest_tx, latest_rx) = watch::channel(None);
        latest_senders.push(latest_tx);
        http = http.meter(meter.meter.to_string(), latest_rx);
    }
    for (name, kind) in &sink_kinds {
        http = http.sink_kind(name.clone(), *kind);
    }
    if let Some(token) = &plan.http_token {
        http = http.token(Some(p1_http::BearerToken::new(token.clone()).map_err(
            |e| Coded::error(Exit::CONFIG, format!("http.token_file: {e}")),
        )?));
    }
    let http = http.build();
    let recorder = p1_http::spawn_recorder(history, tx.subscribe());
    // The journal gets each meter's header once its first telegram is in (issue 9).
    let first_telegrams = tokio::spawn(log_first_telegrams(
        tx.subscribe(),
        plan.meters.iter().map(|m| m.meter.clone()).collect(),
    ));

    // Readers last.
    for (meter, latest) in plan.meters.into_iter().zip(latest_senders) {
        log_source(&meter);
        let health = registry.register(format!("reader:{}", meter.meter), ComponentKind::Reader)?;
        let name = format!("reader:{}", meter.meter);
        shutdown.spawn_named(
            name,
            p1_reader::run_reader(meter, tx.clone(), latest, health, shutdown.stop_token()),
        );
    }
    // From here on only readers (and the weak handles of the supervisors)
    // hold the channel: when the readers stop, the sinks drain and end.
    let weak = tx.downgrade();
    drop(tx);

    let http_stop = CancellationToken::new();
    let http_task = {
        let stop = http_stop.clone();
        tokio::spawn(p1_http::serve(listener, http, async move {
            stop.cancelled().await
        }))
    };
    let local = plan.http_listen;
    tracing::info!(listen = %local, "HTTP server listening.");
    crate::systemd::ready();
    let watchdog = tokio::spawn(crate::systemd::watchdog(registry.clone(), weak));

    // The signal streams outlive each run: a SIGTERM that arrives while a
    // reload drains the old run is still there for the next one.
    let next = loop {
        match signals.next().await {
            crate::signals::Signal::Stop(name) => {
                tracing::info!(signal = name, "Stopping.");
                break None;
            }
            crate::signals::Signal::Reload => match reload.map(|f| f()) {
                None => {
                    tracing::warn!("SIGHUP: no config file to reload (built-in demo); ignored.")
                }
                Some(Ok(plan)) => {
                    tracing::info!("SIGHUP: configuration is valid; restarting with it.");
                    break Some(plan);
                }
                Some(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "SIGHUP: the new configuration is invalid; keeping the running one.");
                }
            },
        }
    };
    crate::systemd::stopping();
    registry.set_shutting_down();
    let report = shutdown.shutdown(plan.shutdown_grace).await;
    if report.clean {
        tracing::info!(
            elapsed_ms = report.elapsed.as_millis() as u64,
            "Readers and sinks stopped."
        );
    } else {
        tracing::warn!(stragglers = ?report.stragglers, still_running = ?report.still_running, "Shutdown grace period ran out; undelivered readings stay spooled.");
    }
    watchdog.abort();
    recorder.abort();
    first_telegrams.abort();
    http_stop.cancel();
    match tokio::time::timeout(Duration::from_secs(2), http_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error."),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed."),
        Err(_) => tracing::warn!("HTTP server did not stop within 2 s."),
    }
    Ok(next)
}

/// Logs what a meter's reader is about to open, with the line settings in use: what to compare
/// with the meter's documentation (or `p1gw probe`) when no telegram arrives.
fn log_source(meter: &ReaderConfig) {
    let source = meter.source.describe();
    match &meter.source {
        p1_reader::SourceConfig::Serial(serial) => {
            let request = &serial.request;
            tracing::info!(
                meter = %meter.meter,
                source = %source,
                line = %serial.settings,
                opened_as = %serial.settings.opened_as(),
                request_line = %request.line,
                request_mode = request.mode.as_str(),
                request_interval_s = request.interval.as_secs_f64(),
                request_inverted = request.invert,
                "Meter on a serial port."
            );
        }
        _ => tracing::info!(meter = %meter.meter, source = %source, "Meter source."),
    }
}

/// Logs the header (and the meter's id) of each meter's first telegram, then ends. A lagging
/// receiver only skips readings, which is harmless here.
async fn log_first_telegrams(
    mut readings: broadcast::Receiver<Arc<Reading>>,
    mut waiting: Vec<Arc<str>>,
) {
    while !waiting.is_empty() {
        match readings.recv().await {
            Ok(reading) => {
                let Some(i) = waiting.iter().position(|m| *m == reading.meter) else {
                    continue;
                };
                waiting.swap_remove(i);
                tracing::info!(
                    meter = %reading.meter,
                    header = %reading.header,
                    meter_id = reading.meter_id.as_deref().unwrap_or("-"),
                    crc = reading.crc,
                    objects = reading.objects.len(),
                    "First telegram."
                );
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
