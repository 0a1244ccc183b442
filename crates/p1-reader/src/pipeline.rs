//! Bytes → telegrams → readings, for one meter. Synchronous and cheap: the
//! async source loops call [`Pipeline::feed`] with whatever they read.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::tz::TimeZone;
use p1_core::{HealthHandle, Reading};
use p1_telegram::{Decoder, ParseOptions, Telegram};
use tokio::sync::{broadcast, watch};

/// Decodes one meter's byte stream and publishes its readings.
pub struct Pipeline {
    meter: Arc<str>,
    source: Arc<str>,
    tz: Option<TimeZone>,
    zones: HashMap<&'static str, TimeZone>,
    decoder: Decoder,
    tx: broadcast::Sender<Arc<Reading>>,
    latest: watch::Sender<Option<Arc<Reading>>>,
    health: HealthHandle,
    ok: u64,
    rejected: u64,
    /// When each rejection reason was last logged (rate limit: once a minute).
    logged: HashMap<&'static str, tokio::time::Instant>,
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
    /// (`Telegram::default_zone`).
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
            meter,
            source,
            tz,
            zones: HashMap::new(),
            decoder: Decoder::new(max_telegram_bytes),
            tx,
            latest,
            health,
            ok: 0,
            rejected: 0,
            logged: HashMap::new(),
        }
    }

    /// The meter's name.
    pub fn meter(&self) -> &Arc<str> {
        &self.meter
    }

    /// Good telegrams so far.
    pub fn telegrams_ok(&self) -> u64 {
        self.ok
    }

    /// Rejected telegrams so far.
    pub fn telegrams_rejected(&self) -> u64 {
        self.rejected
    }

    /// Feeds bytes; publishes every reading they complete.
    pub fn feed(&mut self, bytes: &[u8]) {
        metrics::counter!("p1gw_bytes_read_total", "meter" => self.meter.to_string())
            .increment(bytes.len() as u64);
        let mut rest = bytes;
        while let Some(result) = self.decoder.next_frame(&mut rest) {
            let outcome = Self::outcome(
                result,
                &self.meter,
                &self.source,
                self.tz.as_ref(),
                &mut self.zones,
            );
            self.settle(outcome);
        }
    }

    /// Ends the stream (a recording's end, a disconnect): a frame still
    /// being collected is published if whole, else counted as truncated.
    pub fn finish(&mut self) {
        if let Some(result) = self.decoder.finish() {
            let outcome = Self::outcome(
                result,
                &self.meter,
                &self.source,
                self.tz.as_ref(),
                &mut self.zones,
            );
            self.settle(outcome);
        }
    }

    /// A decoder result as a reading, or the error with the frame's offset.
    /// Takes the fields it needs, not `self`: the frame borrows the decoder.
    fn outcome(
        result: Result<p1_telegram::Frame<'_>, p1_telegram::Error>,
        meter: &Arc<str>,
        source: &Arc<str>,
        tz: Option<&TimeZone>,
        zones: &mut HashMap<&'static str, TimeZone>,
    ) -> Result<Arc<Reading>, (p1_telegram::Error, u64)> {
        match result {
            Ok(frame) => Self::publish_frame(frame.bytes, meter, source, tz, zones)
                .map_err(|e| (e, frame.offset)),
            Err(e) => Err((e, 0)),
        }
    }

    fn publish_frame(
        bytes: &[u8],
        meter: &Arc<str>,
        source: &Arc<str>,
        tz: Option<&TimeZone>,
        zones: &mut HashMap<&'static str, TimeZone>,
    ) -> Result<Arc<Reading>, p1_telegram::Error> {
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
        Ok(Arc::new(Reading::from_telegram(
            meter.clone(),
            source.clone(),
            &telegram,
            tz,
            jiff::Timestamp::now(),
        )))
    }

    fn settle(&mut self, outcome: Result<Arc<Reading>, (p1_telegram::Error, u64)>) {
        match outcome {
            Ok(reading) => {
                self.ok += 1;
                metrics::counter!("p1gw_telegrams_total", "meter" => self.meter.to_string())
                    .increment(1);
                metrics::gauge!("p1gw_last_telegram_timestamp_seconds", "meter" => self.meter.to_string())
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
                let now = tokio::time::Instant::now();
                let due = self.logged.get(reason).is_none_or(|last| {
                    now.duration_since(*last) >= std::time::Duration::from_secs(60)
                });
                if due {
                    self.logged.insert(reason, now);
                    tracing::warn!(meter = %self.meter, reason, offset, error = %error, "Telegram rejected (further ones of this kind are counted, logged at most once a minute).");
                }
            }
        }
    }
}
