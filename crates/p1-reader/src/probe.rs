//! What a port delivers under each line-settings preset: the analysis behind
//! `p1gw probe` (docs/markets.md §a).
//!
//! For each [`Preset`], [`probe_preset`] opens the port, drives the request
//! line and listens for a while, counting bytes, frames, telegrams by CRC
//! result, rejects by reason, and parity and framing errors
//! ([`PresetReport`]). [`recommend`] then picks the preset that decoded the
//! most telegrams with the fewest errors. Ties are common — a pty delivers
//! the same bytes whatever the settings, and 7E1 read as 7N1 often decodes —
//! so the bytes read as 9600 8N1 decide (docs/markets.md §a, *inference*): bit 7
//! always 1 is the stop bit of 7N1, bit 7 equal to the even parity of the low
//! 7 bits is 7E1, bit 7 always 0 is 8-bit data ([`bit7_verdict`]). The 7E1
//! presets are opened as 8N1 (see [`crate::serial`]), so their passes supply
//! those bytes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use p1_telegram::{CrcStatus, Decoder, ParseOptions, Telegram};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::serial::{Consume, LineSettings, LineStats, Port, Preset, SessionEnd};
use crate::{Error, RequestConfig};

/// Counts what a byte stream holds: frames, telegrams by CRC result, rejects.
#[derive(Debug)]
pub struct Tally {
    decoder: Decoder,
    /// Complete frames (`/` through the `!` line).
    pub frames: u64,
    /// Telegrams decoded (CRC valid or absent).
    pub telegrams: u64,
    /// Telegrams with a valid CRC.
    pub crc_valid: u64,
    /// Telegrams without a CRC.
    pub crc_absent: u64,
    /// Frames whose CRC did not match.
    pub crc_mismatch: u64,
    /// Frames rejected otherwise, by reason (`truncated`, `oversize`, ...).
    pub rejected: BTreeMap<&'static str, u64>,
    /// The first telegram's header (identification line).
    pub header: Option<String>,
}

impl Tally {
    /// An empty tally; frames longer than `max_telegram_bytes` are rejected.
    pub fn new(max_telegram_bytes: usize) -> Tally {
        Tally {
            decoder: Decoder::new(max_telegram_bytes),
            frames: 0,
            telegrams: 0,
            crc_valid: 0,
            crc_absent: 0,
            crc_mismatch: 0,
            rejected: BTreeMap::new(),
            header: None,
        }
    }

    /// The end of the stream: a frame still open is counted.
    pub fn finish(&mut self) {
        if let Some(result) = self.decoder.finish() {
            let outcome = result.map(|f| f.bytes.to_vec());
            self.count(outcome);
        }
    }

    fn count(&mut self, frame: Result<Vec<u8>, p1_telegram::Error>) {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                *self.rejected.entry(e.reason()).or_insert(0) += 1;
                return;
            }
        };
        self.frames += 1;
        match Telegram::parse(&frame, ParseOptions { check_crc: false }) {
            Ok(t) => {
                match t.crc {
                    CrcStatus::Valid | CrcStatus::ValidCrLfRestored => self.crc_valid += 1,
                    CrcStatus::Absent => self.crc_absent += 1,
                    CrcStatus::Mismatch { .. } => {
                        self.crc_mismatch += 1;
                        return;
                    }
                }
                self.telegrams += 1;
                if self.header.is_none() {
                    self.header = Some(t.header_str().into_owned());
                }
            }
            Err(e) => *self.rejected.entry(e.reason()).or_insert(0) += 1,
        }
    }
}

impl Consume for Tally {
    fn consume(&mut self, mut bytes: &[u8]) -> u64 {
        let mut done = 0;
        while let Some(result) = self.decoder.next_frame(&mut bytes) {
            let outcome = result.map(|f| f.bytes.to_vec());
            self.count(outcome);
            done += 1;
        }
        done
    }

    fn counters(&self) -> (u64, u64) {
        let rejected: u64 = self.rejected.values().sum();
        (self.telegrams, rejected + self.crc_mismatch)
    }
}

/// What one preset yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetReport {
    /// The preset.
    pub preset: Preset,
    /// Its line settings.
    pub settings: LineSettings,
    /// What the port was opened with ([`LineSettings::opened_as`]).
    pub opened_as: LineSettings,
    /// How long it listened.
    pub listened: Duration,
    /// Complete frames.
    pub frames: u64,
    /// Telegrams decoded (CRC valid or absent).
    pub telegrams: u64,
    /// CRC valid.
    pub crc_valid: u64,
    /// CRC absent.
    pub crc_absent: u64,
    /// CRC mismatch.
    pub crc_mismatch: u64,
    /// Other rejects, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// The line filter's counts: bytes, parity and framing errors, bit 7.
    pub line: LineStats,
    /// The first telegram's header.
    pub header: Option<String>,
    /// Why listening ended early (the device went away), if it did.
    pub ended: Option<String>,
    /// A request-line failure, if any (listening went on).
    pub request_error: Option<String>,
}

impl PresetReport {
    /// Parity and framing errors together.
    pub fn errors(&self) -> u64 {
        self.line.parity_errors + self.line.line_errors
    }

    /// Every rejected frame (CRC mismatches included).
    pub fn rejects(&self) -> u64 {
        self.rejected.values().sum::<u64>() + self.crc_mismatch
    }
}

/// Opens `port` with `preset`'s settings, drives the request line, listens
/// for `listen` and reports.
///
/// # Errors
/// Those of [`Port::open`].
pub async fn probe_preset(
    port: &Path,
    preset: Preset,
    request: &RequestConfig,
    listen: Duration,
    max_telegram_bytes: usize,
    stop: &CancellationToken,
) -> Result<PresetReport, Error> {
    let settings = preset.settings();
    let mut open = Port::open(port, &settings, request)?;
    // Count only what arrives at these settings from now on.
    open.discard_input();
    let mut tally = Tally::new(max_telegram_bytes);
    let started = Instant::now();
    let session = open
        .listen(request, Some(started + listen), stop, &mut tally)
        .await;
    // A frame cut off by the end of the window is no evidence either way:
    // it is not counted (no `tally.finish()`).
    let ended = match session.end {
        SessionEnd::Gone(why) => Some(format!("the device went away: {why}")),
        SessionEnd::Stopped => Some("interrupted".to_owned()),
        SessionEnd::TimeUp | SessionEnd::Silent(_) => None,
    };
    Ok(PresetReport {
        preset,
        settings,
        opened_as: settings.opened_as(),
        listened: started.elapsed(),
        frames: tally.frames,
        telegrams: tally.telegrams,
        crc_valid: tally.crc_valid,
        crc_absent: tally.crc_absent,
        crc_mismatch: tally.crc_mismatch,
        rejected: tally.rejected,
        line: open.line_stats(),
        header: tally.header,
        ended,
        request_error: session.line_error,
    })
}

/// What bit 7 of bytes read as 9600 8N1 says about the meter's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bit7 {
    /// Too few bytes to tell (fewer than [`BIT7_MIN_BYTES`]).
    TooFew,
    /// Always 0: 8-bit data (8N1), or 7 data bits with 2 stop bits.
    Clear,
    /// Always 1: the stop bit of 7N1.
    StopBit,
    /// Even parity of the low 7 bits: 7E1.
    EvenParity,
    /// Odd parity of the low 7 bits: 7O1.
    OddParity,
    /// None of these: noise, a wrong baud rate, or an uninverted signal.
    Mixed,
}

/// The fewest 8-bit bytes [`bit7_verdict`] judges.
pub const BIT7_MIN_BYTES: u64 = 64;

/// Judges bit 7 of the bytes read with 8 data bits at 9600 baud; 98 % of the
/// bytes must agree.
pub fn bit7_verdict(stats: &LineStats) -> Bit7 {
    let n = stats.bytes_8bit;
    if n < BIT7_MIN_BYTES {
        return Bit7::TooFew;
    }
    let share = |k: u64| k * 100 >= n * 98;
    let odd = n - stats.bit7_even;
    if share(n - stats.bit7_set) {
        Bit7::Clear
    } else if share(stats.bit7_set) {
        Bit7::StopBit
    } else if share(stats.bit7_even) {
        Bit7::EvenParity
    } else if share(odd) {
        Bit7::OddParity
    } else {
        Bit7::Mixed
    }
}

impl Bit7 {
    /// One sentence for the report.
    pub fn explain(self) -> &'static str {
        match self {
            Bit7::TooFew => "too few bytes at 9600 baud to tell the framing from bit 7",
            Bit7::Clear => {
                "bit 7 is always 0: the meter sends 8-bit data (8N1), or 7 bits with 2 stop bits"
            }
            Bit7::StopBit => "bit 7 is always 1: it is the stop bit, the meter sends 7N1",
            Bit7::EvenParity => "bit 7 is the even parity of the low 7 bits: the meter sends 7E1",
            Bit7::OddParity => "bit 7 is the odd parity of the low 7 bits: the meter sends 7O1",
            Bit7::Mixed => {
                "bit 7 follows no pattern: noise, another baud rate, or a signal that is not inverted"
            }
        }
    }
}

/// The 9600 8N1 bytes among `reports` (the passes opened with 8 data bits at
/// 9600 baud), judged by [`bit7_verdict`].
pub fn bit7_at_9600(reports: &[PresetReport]) -> Bit7 {
    let mut stats = LineStats::default();
    for r in reports {
        if r.opened_as.baud == 9600 && r.opened_as.data_bits == 8 {
            stats.add(&r.line);
        }
    }
    bit7_verdict(&stats)
}

/// The recommended preset and why, or `None` when no preset decoded a
/// telegram.
///
/// Candidates are the presets that decoded nearly as many telegrams as the
/// best one (80 %: a listening window may catch one telegram more or less).
/// Among them the fewest parity and framing errors win, then the fewest
/// rejects, then the preset the bit-7 analysis favours, then more telegrams
/// and more valid CRCs, then the order of [`Preset::ALL`].
pub fn recommend(reports: &[PresetReport]) -> Option<(Preset, String)> {
    let bit7 = bit7_at_9600(reports);
    let most = reports
        .iter()
        .map(|r| r.telegrams)
        .max()
        .filter(|n| *n > 0)?;
    let candidates: Vec<&PresetReport> = reports
        .iter()
        .filter(|r| r.telegrams > 0 && r.telegrams * 10 >= most * 8)
        .collect();
    let veitur_header = candidates
        .iter()
        .filter_map(|r| r.header.as_deref())
        .any(|h| h.contains("MIE5"));
    // Which presets the bit-7 analysis favours, best first.
    let favoured: &[Preset] = match bit7 {
        Bit7::Clear => &[Preset::Dsmr4],
        Bit7::StopBit => &[Preset::Veitur],
        Bit7::EvenParity if veitur_header => &[Preset::Veitur7e1, Preset::Dsmr22],
        Bit7::EvenParity => &[Preset::Dsmr22, Preset::Veitur7e1],
        Bit7::OddParity | Bit7::Mixed | Bit7::TooFew => &[],
    };
    let preference = |p: Preset| {
        favoured
            .iter()
            .position(|f| *f == p)
            .unwrap_or(favoured.len())
    };
    let order = |p: Preset| Preset::ALL.iter().position(|a| *a == p).unwrap_or(0);
    let key = |r: &PresetReport| {
        (
            r.errors(),
            r.rejects(),
            preference(r.preset),
            std::cmp::Reverse(r.telegrams),
            std::cmp::Reverse(r.crc_valid),
            order(r.preset),
        )
    };
    let pick = candidates.iter().min_by_key(|r| key(r))?;
    let mut why = format!(
        "it decoded {} telegram(s) ({} with a valid CRC) with {} parity/framing error(s)",
        pick.telegrams,
        pick.crc_valid,
        pick.errors()
    );
    let as_well: Vec<&str> = candidates
        .iter()
        .filter(|r| {
            r.preset != pick.preset && (r.errors(), r.rejects()) == (pick.errors(), pick.rejects())
        })
        .map(|r| r.preset.as_str())
        .collect();
    if !as_well.is_empty() {
        why.push_str(&format!(
            "; {} did as well, and {}",
            as_well.join(", "),
            bit7.explain()
        ));
    }
    Some((pick.preset, why))
}

#[cfg(test)]
mod tests;
