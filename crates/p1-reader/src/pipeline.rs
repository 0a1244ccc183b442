//! Bytes → telegrams → readings, for one meter. Synchronous and cheap: the
//! async source loops call [`Pipeline::feed`] with whatever they read.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::tz::TimeZone;
use p1_core::{CodeTable, HealthHandle, Reading};
use p1_telegram::{Decoder, ParseOptions, Telegram};
use tokio::sync::{broadcast, watch};

use crate::guard::{Finding, GuardConfig, SpikeGuard, Verdict};

/// Decodes one meter's byte stream and publishes its readings.
pub struct Pipeline {
    meter: Arc<str>,
    source: Arc<str>,
    tz: Option<TimeZone>,
    /// The meter's code table, applied to each reading.
    codes: Arc<CodeTable>,
    zones: HashMap<&'static str, TimeZone>,
    decoder: Decoder,
    tx: broadcast::Sender<Arc<Reading>>,
    latest: watch::Sender<Option<Arc<Reading>>>,
    health: HealthHandle,
    ok: u64,
    rejected: u64,
    /// Rejection WARNs, once a minute per reason.
    logged: OncePerMinute,
    /// The meter's clock, watched for jumps.
    clock: ClockCheck,
    /// Clock anomaly WARNs, once a minute per kind.
    clock_logged: OncePerMinute,
    /// The spike guard, unless turned off.
    guard: Option<SpikeGuard>,
    /// Readings the guard held back.
    held_back: u64,
    /// Spike guard WARNs, once a minute per reason.
    guard_logged: OncePerMinute,
    /// The per-reading metrics, looked up once (a lookup builds the key, labels and all).
    metrics: Metrics,
}

/// Handles on the metrics that change with every read or telegram, taken from the recorder
/// installed when the pipeline is made.
struct Metrics {
    bytes_read: metrics::Counter,
    telegrams: metrics::Counter,
    last_telegram: metrics::Gauge,
}

impl Metrics {
    fn new(meter: &str) -> Metrics {
        Metrics {
            bytes_read: metrics::counter!("p1gw_bytes_read_total", "meter" => meter.to_owned()),
            telegrams: metrics::counter!("p1gw_telegrams_total", "meter" => meter.to_owned()),
            last_telegram: metrics::gauge!("p1gw_last_telegram_timestamp_seconds", "meter" => meter.to_owned()),
        }
    }
}

/// How far the meter's clock may run ahead of the gateway's before it is flagged: more than
/// transmission delay and drift, less than a wrongly configured time zone's hour.
pub const CLOCK_AHEAD_TOLERANCE: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// Watches one meter's clock (`meter_time`) for oddities. They never stop a reading; each is
/// counted in `p1gw_meter_clock_anomalies_total{meter,kind}` and logged at WARN at most once a
/// minute per kind:
///
/// * `backwards`: earlier than the previous reading's (the meter's clock was set back, or
///   a recording started over);
/// * `future`: more than [`CLOCK_AHEAD_TOLERANCE`] ahead of the time the gateway received
///   it (a wrong meter clock, a wrong `tz`, or a gateway clock not yet synchronised);
/// * `dst_flag`: the telegram's `S`/`W` flag contradicts the configured zone at that time
///   (summer time flagged in winter, or in a zone without summer time).
#[derive(Debug, Clone, Default)]
pub struct ClockCheck {
    last: Option<jiff::Timestamp>,
}

impl ClockCheck {
    /// The anomalies of one reading: its meter time, when it arrived, and whether its DST
    /// flag contradicts the zone. Remembers the meter time for the next call.
    pub fn check(
        &mut self,
        meter_time: Option<jiff::Timestamp>,
        received_at: jiff::Timestamp,
        dst_contradicts_zone: bool,
    ) -> Vec<&'static str> {
        let mut found = Vec::new();
        if let Some(t) = meter_time {
            if self.last.is_some_and(|last| t < last) {
                found.push("backwards");
            }
            if t.duration_since(received_at) > CLOCK_AHEAD_TOLERANCE {
                found.push("future");
            }
            self.last = Some(t);
        }
        if dst_contradicts_zone {
            found.push("dst_flag");
        }
        found
    }
}

/// Whether a telegram's DST flag (`S` summer, `W` winter) contradicts `tz` at the instant it
/// names. No flag, no time, or an ambiguous autumn hour (which the flag itself resolves) never
/// does.
pub(crate) fn dst_contradicts(telegram: &Telegram<'_>, tz: &TimeZone) -> bool {
    let Some(local) = telegram.meter_local_time() else {
        return false;
    };
    let (Some(summer), Some(at)) = (local.dst, local.to_timestamp(tz)) else {
        return false;
    };
    tz.to_offset_info(at).dst().is_dst() != summer
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("meter", &self.meter)
            .field("source", &self.source)
            .field("ok", &self.ok)
            .field("rejected", &self.rejected)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline for `meter`. `tz`: the zone for the meter's local
    /// timestamps; `None` guesses it from each telegram
    /// (`Telegram::default_zone`). The spike guard runs with its defaults;
    /// see [`Pipeline::with_guard`].
    pub fn new(
        meter: Arc<str>,
        source: Arc<str>,
        tz: Option<TimeZone>,
        max_telegram_bytes: usize,
        tx: broadcast::Sender<Arc<Reading>>,
        latest: watch::Sender<Option<Arc<Reading>>>,
        health: HealthHandle,
    ) -> Pipeline {
        // Zero counters from the start, so the live page shows "0", not "—".
        health.set_counter("telegrams_ok", 0);
        health.set_counter("telegrams_rejected", 0);
        Pipeline {
            metrics: Metrics::new(&meter),
            meter,
            source,
            tz,
            codes: Arc::default(),
            zones: HashMap::new(),
            decoder: Decoder::new(max_telegram_bytes),
            tx,
            latest,
            health,
            ok: 0,
            rejected: 0,
            logged: OncePerMinute::default(),
            clock: ClockCheck::default(),
            clock_logged: OncePerMinute::default(),
            guard: Some(SpikeGuard::new(GuardConfig::default())),
            held_back: 0,
            guard_logged: OncePerMinute::default(),
        }
    }

    /// Sets the meter's code table (the user's names, units and scales), applied to every
    /// reading ([`Reading::with_codes`]).
    #[must_use]
    pub fn with_codes(mut self, codes: Arc<CodeTable>) -> Pipeline {
        self.codes = codes;
        self
    }

    /// Sets the spike guard's bounds, or turns it off (`None`): then every reading is forwarded.
    #[must_use]
    pub fn with_guard(mut self, guard: Option<GuardConfig>) -> Pipeline {
        self.guard = guard.map(SpikeGuard::new);
        if self.guard.is_some() {
            self.health.set_counter("readings_rejected", 0);
        }
        self
    }

    /// The meter's name.
    pub fn meter(&self) -> &Arc<str> {
        &self.meter
    }

    /// Readings on the channel that the slowest sink has not taken yet.
    pub fn channel_backlog(&self) -> usize {
        self.tx.len()
    }

    /// Good telegrams so far.
    pub fn telegrams_ok(&self) -> u64 {
        self.ok
    }

    /// Rejected telegrams so far.
    pub fn telegrams_rejected(&self) -> u64 {
        self.rejected
    }

    /// The source started over (a looping replay came to its end): the spike
    /// guard forgets its baselines, as the totals restart with the recording.
    pub fn source_restarted(&mut self) {
        if let Some(guard) = &mut self.guard {
            guard.forget();
        }
    }

    /// Readings the spike guard held back so far (good telegrams, not forwarded).
    pub fn readings_rejected(&self) -> u64 {
        self.held_back
    }

    /// Every telegram the decoder finished so far, forwarded or not: what a
    /// poll or a paced replay waits for.
    pub fn telegrams_done(&self) -> u64 {
        self.ok + self.rejected + self.held_back
    }

    /// Feeds bytes; publishes every reading they complete.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.metrics.bytes_read.increment(bytes.len() as u64);
        let mut rest = bytes;
        while let Some(result) = self.decoder.next_frame(&mut rest) {
            let outcome = Self::outcome(
                result,
                &self.meter,
                &self.source,
                self.tz.as_ref(),
                &self.codes,
                &mut self.zones,
            );
            self.settle(outcome);
        }
    }

    /// Ends a recording: a frame still being collected is published if
    /// whole (its `!` line arrived, perhaps without its line end, or it
    /// stopped after whole data lines: recordings cut after the last line),
    /// else counted as truncated. For a live source that broke off, use
    /// [`Pipeline::disconnected`].
    pub fn finish(&mut self) {
        if let Some(result) = self.decoder.finish() {
            let outcome = Self::outcome(
                result,
                &self.meter,
                &self.source,
                self.tz.as_ref(),
                &self.codes,
                &mut self.zones,
            );
            self.settle(outcome);
        }
    }

    /// The live stream broke off (a serial port or TCP peer went away, or
    /// the reader stopped): a frame still being collected is counted as
    /// `truncated` and never published, whatever it holds. Such a frame
    /// cannot be complete — a whole telegram was published when its `!`
    /// line's line end arrived — so it lacks data lines, its CRC or its
    /// line end. Publishing it would forward a reading with values missing
    /// (a cut after whole lines parses as a telegram without a `!` line);
    /// nor may it be merged with the next connection's bytes. The decoder
    /// is then ready for a new stream.
    pub fn disconnected(&mut self) {
        let outcome = match self.decoder.finish() {
            None => return,
            Some(Ok(frame)) => Err((
                p1_telegram::Error::Truncated {
                    offset: frame.offset,
                    len: frame.bytes.len(),
                },
                frame.offset,
            )),
            Some(Err(error)) => Err((error, 0)),
        };
        self.settle(outcome);
    }

    /// A decoder result as a reading, or the error with the frame's offset.
    /// Takes the fields it needs, not `self`: the frame borrows the decoder.
    fn outcome(
        result: Result<p1_telegram::Frame<'_>, p1_telegram::Error>,
        meter: &Arc<str>,
        source: &Arc<str>,
        tz: Option<&TimeZone>,
        codes: &Arc<CodeTable>,
        zones: &mut HashMap<&'static str, TimeZone>,
    ) -> Result<(Arc<Reading>, bool), (p1_telegram::Error, u64)> {
        match result {
            Ok(frame) => Self::publish_frame(frame.bytes, meter, source, tz, codes, zones)
                .map_err(|e| (e, frame.offset)),
            Err(e) => Err((e, 0)),
        }
    }

    fn publish_frame(
        bytes: &[u8],
        meter: &Arc<str>,
        source: &Arc<str>,
        tz: Option<&TimeZone>,
        codes: &Arc<CodeTable>,
        zones: &mut HashMap<&'static str, TimeZone>,
    ) -> Result<(Arc<Reading>, bool), p1_telegram::Error> {
        let telegram = Telegram::parse(bytes, ParseOptions::default())?;
        let tz = match tz {
            Some(tz) => tz,
            None => {
                let name = telegram.default_zone();
                zones
                    .entry(name)
                    .or_insert_with(|| jiff::tz::db().get(name).unwrap_or(TimeZone::UTC))
            }
        };
        let reading = Arc::new(
            Reading::from_telegram(
                meter.clone(),
                source.clone(),
                &telegram,
                tz,
                jiff::Timestamp::now(),
            )
            .with_codes(codes),
        );
        Ok((reading, dst_contradicts(&telegram, tz)))
    }

    /// Counts and (rate-limited) logs the oddities of the meter's clock; the reading goes on.
    fn watch_clock(&mut self, reading: &Reading, dst_contradicts: bool) {
        for kind in self
            .clock
            .check(reading.meter_time, reading.received_at, dst_contradicts)
        {
            metrics::counter!("p1gw_meter_clock_anomalies_total", "meter" => self.meter.to_string(), "kind" => kind)
                .increment(1);
            if self.clock_logged.due(kind) {
                let meter_time = reading.meter_time.map(|t| t.to_string());
                tracing::warn!(
                    meter = %self.meter,
                    kind,
                    meter_time = meter_time.as_deref().unwrap_or("-"),
                    received_at = %reading.received_at,
                    "Meter clock anomaly; the reading is kept (further ones of this kind are counted, logged at most once a minute)."
                );
            }
        }
    }

    /// Asks the spike guard; false when the reading is held back (counted and logged here).
    fn guard_passes(&mut self, reading: &Reading) -> bool {
        let Some(guard) = &mut self.guard else {
            return true;
        };
        match guard.check(reading) {
            Verdict::Forward => true,
            Verdict::NewBaseline(finding) => {
                // Rare (a replaced meter), but a meter that keeps changing its mind
                // must not flood the log either: once a minute, like the rest.
                if !self.guard_logged.due("new_baseline") {
                    return true;
                }
                tracing::warn!(
                    meter = %self.meter,
                    register = finding.register,
                    obis = %finding.obis,
                    previous = finding.previous,
                    value = finding.value,
                    "Meter totals changed for good ({} consistent readings in a row after a jump or a fall): a replaced or reset meter? Accepting them as the new baseline.",
                    crate::guard::RESET_AFTER
                );
                true
            }
            Verdict::Reject(finding) => {
                self.held_back += 1;
                metrics::counter!("p1gw_readings_rejected_total", "meter" => self.meter.to_string(), "reason" => finding.reason)
                    .increment(1);
                self.health.set_counter("readings_rejected", self.held_back);
                self.health
                    .error(format!("reading held back: {}", describe(&finding)));
                // The meter answered: readiness and the watchdog follow telegrams, not totals.
                self.health.success();
                if self.guard_logged.due(finding.reason) {
                    tracing::warn!(
                        meter = %self.meter,
                        reason = finding.reason,
                        register = finding.register,
                        obis = %finding.obis,
                        previous = finding.previous,
                        value = finding.value,
                        "Reading held back by the spike guard: {} (further ones of this kind are counted, logged at most once a minute).",
                        describe(&finding)
                    );
                }
                false
            }
        }
    }

    fn settle(&mut self, outcome: Result<(Arc<Reading>, bool), (p1_telegram::Error, u64)>) {
        match outcome {
            Ok((reading, dst_contradicts)) => {
                self.watch_clock(&reading, dst_contradicts);
                if !self.guard_passes(&reading) {
                    return;
                }
                self.ok += 1;
                self.metrics.telegrams.increment(1);
                self.metrics
                    .last_telegram
                    .set(reading.received_at.as_millisecond() as f64 / 1000.0);
                self.health.set_counter("telegrams_ok", self.ok);
                self.health.success();
                self.health.ok();
                // No receiver (no sink configured) is fine: HTTP reads `latest`.
                let _receivers = self.tx.send(reading.clone()).unwrap_or(0);
                self.latest.send_replace(Some(reading));
            }
            Err((error, offset)) => {
                self.rejected += 1;
                let reason = error.reason();
                metrics::counter!("p1gw_telegrams_rejected_total", "meter" => self.meter.to_string(), "reason" => reason)
                    .increment(1);
                self.health.set_counter("telegrams_rejected", self.rejected);
                self.health.error(format!("telegram rejected: {error}"));
                if self.logged.due(reason) {
                    tracing::warn!(meter = %self.meter, reason, offset, error = %error, "Telegram rejected (further ones of this kind are counted, logged at most once a minute).");
                }
            }
        }
    }
}

/// A rate limit for WARN lines: at most one a minute per key (the metrics count every case).
#[derive(Debug, Default)]
struct OncePerMinute(HashMap<&'static str, tokio::time::Instant>);

impl OncePerMinute {
    /// True (and remembered) when `key` was not logged in the last minute.
    fn due(&mut self, key: &'static str) -> bool {
        let now = tokio::time::Instant::now();
        let recent = self
            .0
            .get(key)
            .is_some_and(|last| now.duration_since(*last) < std::time::Duration::from_secs(60));
        if !recent {
            self.0.insert(key, now);
        }
        !recent
    }
}

/// A guard finding in words, for logs and the reader's last error.
fn describe(finding: &Finding) -> String {
    match finding.reason {
        "backwards" if finding.value == 0.0 => format!(
            "{} ({}) fell to 0 from {} (a zero spike)",
            finding.register, finding.obis, finding.previous
        ),
        "backwards" => format!(
            "{} ({}) went backwards from {} to {}",
            finding.register, finding.obis, finding.previous, finding.value
        ),
        _ => format!(
            "{} ({}) jumped from {} to {}, more than the {:.3} the configured maximum rate allows",
            finding.register, finding.obis, finding.previous, finding.value, finding.allowed
        ),
    }
}

#[cfg(test)]
mod once_per_minute_tests {
    use super::OncePerMinute;

    #[tokio::test(start_paused = true)]
    async fn a_key_is_due_once_a_minute_and_keys_do_not_share() {
        let mut limit = OncePerMinute::default();
        assert!(limit.due("crc_mismatch"));
        assert!(!limit.due("crc_mismatch"));
        assert!(limit.due("truncated"), "another key has its own minute");
        tokio::time::advance(std::time::Duration::from_secs(59)).await;
        assert!(!limit.due("crc_mismatch"));
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(limit.due("crc_mismatch"));
        assert!(!limit.due("crc_mismatch"));
    }
}
