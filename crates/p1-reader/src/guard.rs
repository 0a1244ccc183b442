//! The spike guard: holds back readings whose cumulative totals go backwards or jump further
//! than the meter could have counted since the last reading forwarded.
//!
//! Other P1 tools forward whatever the meter (or a glitching line) sends, and a single reading
//! with `energy_import_total` at 0 — the classic "zero spike" — makes Home Assistant's
//! `total_increasing` sensors count a meter reset and a second one the whole meter reading
//! again (docs/markets.md §e row 10). The guard sits in the [`crate::Pipeline`] beside
//! [`crate::ClockCheck`] and judges every decoded reading before it reaches the sinks, the
//! `latest` watch and so HTTP.
//!
//! # What is guarded
//!
//! The *cumulative registers* (docs/obis.md, docs/markets.md §f, `total_increasing` with a known unit):
//!
//! * energy: `energy_import_total`, `energy_import_tariff1`…`4`, `energy_export_total`,
//!   `energy_export_tariff1`…`4` (kWh or Wh), `reactive_energy_import_total`,
//!   `reactive_energy_export_total` (kvarh or varh), and a heat or cooling submeter's
//!   `heat_energy` / `cooling_energy` in GJ, kWh or MWh;
//! * volume: `gas_volume`, `water_volume`, `hot_water_volume`, `heat_volume` (m³, or no unit).
//!
//! Veitur's provisional `heat_energy`/`heat_energy_2` (`0-1:24.2.5`/`.6`, "Wh as sent", meaning
//! unverified — `.6` may be a power) are *not* guarded: a guard on a register that is not a
//! total would hold back every reading. Event counters (`power_failures`, voltage sags) are not
//! guarded either: a wrong one harms nobody's energy figures.
//!
//! A register is identified by its OBIS code, canonical name and the identity of its device:
//! the meter's identification line (`/ISk5\2MIE5E-200`: maker and model) and its `meter_id`
//! for the meter's own registers, the identification line and the submeter's equipment id for
//! a channel's. A replaced meter of another model or id, a replaced submeter (new id) or a new
//! channel starts afresh at once; a submeter that disappears keeps its last value, to which it
//! is compared when it returns. (Meters that send no id — DSMR 2/3, some Nordic ones — are
//! told apart by their identification line only; a replacement by the same model is then
//! found by the baseline rule below.)
//!
//! # The rules
//!
//! Each guarded value (in kWh or m³) is compared with the same register's value in the last
//! reading *forwarded*:
//!
//! * `backwards`: strictly less. A value of exactly 0 in a register that was not is the zero
//!   spike and counts here.
//! * `implausible_jump`: it grew by more than the configured maximum rate (`max_power` for
//!   energy, `max_flow` for volumes) times the time elapsed plus [`GRACE`]. The time elapsed
//!   is the longer of the register's own clock (the capture time of a DSMR 4 hourly gas value,
//!   else the meter's clock) and the gateway's arrival times, so an hourly gas step, a replay as
//!   fast as possible and a meter clock that stands still are all judged fairly; the grace
//!   covers register resolution and timestamps rounded to the second.
//!
//! A reading with any failing register is held back as a whole: not broadcast, not `latest`.
//! The first reading after start, and a register seen for the first time, have nothing to be
//! compared with and pass.
//!
//! # A new baseline
//!
//! A meter that really was replaced or reset goes "backwards" for good. When
//! [`RESET_AFTER`] held-back readings in a row agree with each other (none backwards from or
//! implausibly far beyond the one before it, and none of them the zero of a zero spike), the
//! last of them is forwarded and becomes the new baseline; the pipeline logs it at WARN. The
//! readings before it stay held back. Zeros never make a baseline: a meter that sends zeros
//! for a minute must not make the real totals look like a jump afterwards.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use jiff::Timestamp;
use p1_core::Reading;
use p1_telegram::SubmeterKind;

/// The default `max_power`: far above a household connection (3 × 63 A at 230 V is 43 kW),
/// so only glitches exceed it. A meter behind current transformers may need more.
pub const DEFAULT_MAX_POWER_KW: f64 = 100.0;
/// The default `max_flow`: above a G16 gas meter (16 m³/h nominal, 25 m³/h maximum) and any
/// household water or district hot-water connection.
pub const DEFAULT_MAX_FLOW_M3_PER_H: f64 = 25.0;
/// Time added to the elapsed time before the rate bound applies: register resolution,
/// timestamps rounded to the second, a register that the meter updates a little late.
pub const GRACE: Duration = Duration::from_secs(60);
/// Consistent held-back readings in a row that are accepted as a new baseline.
pub const RESET_AFTER: u32 = 3;

/// The spike guard's settings: the largest rates a meter can count at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// Bound for the energy registers, in kW (kvar for reactive energy).
    pub max_power_kw: f64,
    /// Bound for the volume registers, in m³/h.
    pub max_flow_m3_per_h: f64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_power_kw: DEFAULT_MAX_POWER_KW,
            max_flow_m3_per_h: DEFAULT_MAX_FLOW_M3_PER_H,
        }
    }
}

/// What the guard decided about one reading.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Forward it.
    Forward,
    /// Hold it back.
    Reject(Finding),
    /// Forward it: after [`RESET_AFTER`] consistent rejections, it is the new baseline.
    NewBaseline(Finding),
}

/// Why a reading was held back: the first failing register.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `"backwards"` or `"implausible_jump"`, the metric's `reason`.
    pub reason: &'static str,
    /// The register's canonical name.
    pub register: &'static str,
    /// Its OBIS code.
    pub obis: String,
    /// The last value forwarded, in kWh or m³.
    pub previous: f64,
    /// The value now, in kWh or m³.
    pub value: f64,
    /// The largest increase that would have passed (for `implausible_jump`).
    pub allowed: f64,
}

/// Which of the two bounds a register is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quantity {
    /// kWh (or kvarh).
    Energy,
    /// m³.
    Volume,
}

/// One register of one device: a hash of the meter's identification line (maker and model,
/// `ISk5\2MIE5E-200`), the device's id (the meter's, or the submeter's for a channel's
/// register) and the OBIS code. A hash, not the strings, so that judging a reading allocates
/// nothing per register; two registers colliding in 64 bits is not a practical concern.
type Key = u64;

fn key(header: &str, device: Option<&str>, obis: &str) -> Key {
    let mut h = std::hash::DefaultHasher::new();
    (header, device, obis).hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    value: f64,
    /// The register's own clock: capture time, else meter time, else arrival.
    at: Timestamp,
    received_at: Timestamp,
    quantity: Quantity,
    name: &'static str,
}

/// Readings held back in a row that agree with each other.
#[derive(Debug, Clone)]
struct Candidate {
    samples: HashMap<Key, Sample>,
    count: u32,
}

/// Watches one meter's cumulative registers; see the module documentation.
#[derive(Debug, Clone)]
pub struct SpikeGuard {
    config: GuardConfig,
    last: HashMap<Key, Sample>,
    candidate: Option<Candidate>,
}

impl SpikeGuard {
    /// A guard with nothing seen yet.
    pub fn new(config: GuardConfig) -> SpikeGuard {
        SpikeGuard {
            config,
            last: HashMap::new(),
            candidate: None,
        }
    }

    /// Forgets every baseline: the next reading passes as if it were the first.
    pub fn forget(&mut self) {
        self.last.clear();
        self.candidate = None;
    }

    /// Judges `reading` against the last reading forwarded, and remembers it if it passes.
    pub fn check(&mut self, reading: &Reading) -> Verdict {
        let samples = samples(reading);
        let Some(finding) = self.first_failure(&self.last, &samples) else {
            self.last.extend(samples.iter().map(|(k, s, _)| (*k, *s)));
            self.candidate = None;
            return Verdict::Forward;
        };
        let zero_spike = finding.reason == "backwards" && finding.value == 0.0;
        if zero_spike {
            self.candidate = None;
            return Verdict::Reject(finding);
        }
        let count = match &self.candidate {
            Some(c) if self.first_failure(&c.samples, &samples).is_none() => c.count + 1,
            _ => 1,
        };
        if count >= RESET_AFTER {
            self.candidate = None;
            self.last.extend(samples.iter().map(|(k, s, _)| (*k, *s)));
            return Verdict::NewBaseline(finding);
        }
        self.candidate = Some(Candidate {
            samples: samples.iter().map(|(k, s, _)| (*k, *s)).collect(),
            count,
        });
        Verdict::Reject(finding)
    }

    /// The first register of `samples` that fails against `base`; backwards before jumps.
    fn first_failure(
        &self,
        base: &HashMap<Key, Sample>,
        samples: &[(Key, Sample, &str)],
    ) -> Option<Finding> {
        let mut jump = None;
        for (key, now, obis) in samples {
            let Some(before) = base.get(key) else {
                continue;
            };
            let finding = |reason, allowed| Finding {
                reason,
                register: now.name,
                obis: (*obis).to_owned(),
                previous: before.value,
                value: now.value,
                allowed,
            };
            if now.value < before.value {
                return Some(finding("backwards", 0.0));
            }
            let allowed = self.allowed_increase(before, now);
            if jump.is_none() && now.value - before.value > allowed {
                jump = Some(finding("implausible_jump", allowed));
            }
        }
        jump
    }

    /// The largest increase from `before` to `now` that a meter counting at the configured
    /// maximum rate could show.
    fn allowed_increase(&self, before: &Sample, now: &Sample) -> f64 {
        let hours =
            |a: Timestamp, b: Timestamp| b.duration_since(a).as_secs_f64().max(0.0) / 3600.0;
        let elapsed = hours(before.at, now.at).max(hours(before.received_at, now.received_at))
            + GRACE.as_secs_f64() / 3600.0;
        let rate = match now.quantity {
            Quantity::Energy => self.config.max_power_kw,
            Quantity::Volume => self.config.max_flow_m3_per_h,
        };
        rate * elapsed
    }
}

/// The guarded registers of a reading, each in kWh or m³, with its OBIS code.
fn samples(reading: &Reading) -> Vec<(Key, Sample, &str)> {
    let mut out = Vec::new();
    for m in &reading.objects {
        let Some(name) = m.name else { continue };
        let Some(value) = m.value.as_f64() else {
            continue;
        };
        let Some((quantity, scale)) = classify(name, m.kind, m.unit.as_deref()) else {
            continue;
        };
        let device = match m.channel {
            Some(channel) => reading
                .submeters
                .iter()
                .find(|s| s.channel == channel)
                .and_then(|s| s.equipment_id.as_deref()),
            None => reading.meter_id.as_deref(),
        };
        let key = key(&reading.header, device, &m.obis);
        let sample = Sample {
            value: value * scale,
            at: m.time.or(reading.meter_time).unwrap_or(reading.received_at),
            received_at: reading.received_at,
            quantity,
            name,
        };
        out.push((key, sample, m.obis.as_str()));
    }
    out
}

/// Whether a register is guarded, under which bound, and the factor to kWh or m³.
fn classify(name: &str, kind: Option<SubmeterKind>, unit: Option<&str>) -> Option<(Quantity, f64)> {
    let unit_is = |u: &str| unit.is_some_and(|x| x.eq_ignore_ascii_case(u));
    let energy = |kilo: &str, base: &str| {
        if unit.is_none() || unit_is(kilo) {
            Some((Quantity::Energy, 1.0))
        } else if unit_is(base) {
            Some((Quantity::Energy, 0.001))
        } else {
            None
        }
    };
    match name {
        "energy_import_total"
        | "energy_import_tariff1"
        | "energy_import_tariff2"
        | "energy_import_tariff3"
        | "energy_import_tariff4"
        | "energy_export_total"
        | "energy_export_tariff1"
        | "energy_export_tariff2"
        | "energy_export_tariff3"
        | "energy_export_tariff4" => energy("kWh", "Wh"),
        "reactive_energy_import_total" | "reactive_energy_export_total" => energy("kvarh", "varh"),
        "heat_energy" | "cooling_energy"
            if matches!(kind, Some(SubmeterKind::Heat | SubmeterKind::Cooling)) =>
        {
            if unit_is("GJ") {
                Some((Quantity::Energy, 1e6 / 3600.0))
            } else if unit_is("MWh") {
                Some((Quantity::Energy, 1000.0))
            } else if unit_is("kWh") {
                Some((Quantity::Energy, 1.0))
            } else {
                None
            }
        }
        "gas_volume" | "water_volume" | "hot_water_volume" | "heat_volume"
            if unit.is_none() || unit_is("m3") =>
        {
            Some((Quantity::Volume, 1.0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
