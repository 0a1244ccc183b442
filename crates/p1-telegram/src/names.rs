//! Canonical names for the OBIS codes we know (docs/obis.md) and the kind of
//! each M-Bus submeter.

use crate::ObisCode;

/// What an M-Bus submeter measures.
///
/// Decided per channel from the device type (`0-n:24.1.0`, EN 13757-3) when
/// the telegram carries one, otherwise from the set of codes, their units and
/// their number of groups; never from a code alone (Belgium's `24.2.3` is gas,
/// Veitur's is a temperature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubmeterKind {
    /// Gas (device type 3, or `24.2.3` / `24.3.0` in m³).
    Gas,
    /// Cold water (device type 7).
    Water,
    /// Heat (device types 4 and 12, or GJ readings).
    Heat,
    /// Hot water: device type 6, or Veitur's heat/hot-water submeter (channel
    /// without device type, one-group `24.2.x` lines in m3, m3/h, degC, Wh).
    HotWater,
    /// Cooling (device types 10, 11, 13).
    Cooling,
    /// Nothing tells: an empty channel or an unknown device type.
    Unknown,
}

impl SubmeterKind {
    /// The lower-case name used in JSON, topics and tags.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubmeterKind::Gas => "gas",
            SubmeterKind::Water => "water",
            SubmeterKind::Heat => "heat",
            SubmeterKind::HotWater => "hot_water",
            SubmeterKind::Cooling => "cooling",
            SubmeterKind::Unknown => "unknown",
        }
    }

    /// The kind for an EN 13757-3 device type number.
    pub fn from_device_type(device_type: i64) -> SubmeterKind {
        match device_type {
            3 => SubmeterKind::Gas,
            7 => SubmeterKind::Water,
            4 | 12 => SubmeterKind::Heat,
            6 => SubmeterKind::HotWater,
            10 | 11 | 13 => SubmeterKind::Cooling,
            _ => SubmeterKind::Unknown,
        }
    }
}

/// The canonical names of the codes on the meter itself (channel 0, or A = 1),
/// by `(A, B, C, D, E)`. Channel codes go through [`channel_name`].
const METER_NAMES: &[([u8; 5], &str)] = &[
    ([1, 3, 0, 2, 8], "p1_version"),
    ([0, 0, 96, 1, 4], "p1_version"),
    // The legacy date and time lines name the same clock; the telegram's
    // meter_time joins them.
    ([0, 0, 1, 0, 0], "meter_time"),
    ([0, 0, 1, 1, 0], "meter_time"),
    ([1, 0, 0, 9, 1], "meter_time"),
    ([1, 0, 0, 9, 2], "meter_time"),
    ([0, 0, 96, 1, 1], "equipment_id"),
    ([0, 0, 96, 1, 0], "meter_serial"),
    ([0, 0, 96, 1, 255], "meter_serial"),
    ([1, 0, 0, 0, 0], "meter_id"),
    ([0, 0, 42, 0, 0], "logical_device_name"),
    ([1, 0, 96, 5, 5], "device_status"),
    ([0, 0, 96, 13, 0], "text_message"),
    ([0, 0, 96, 13, 1], "text_message_code"),
    ([0, 0, 96, 13, 2], "text_message_2"),
    ([0, 0, 96, 13, 3], "text_message_3"),
    ([0, 0, 96, 13, 4], "text_message_4"),
    ([0, 0, 96, 13, 5], "text_message_5"),
    ([0, 0, 96, 14, 0], "tariff_indicator"),
    ([0, 0, 96, 3, 10], "breaker_state"),
    ([0, 0, 17, 0, 0], "limiter_threshold"),
    ([1, 0, 31, 4, 0], "current_limit_l1"),
    ([1, 0, 51, 4, 0], "current_limit_l2"),
    ([1, 0, 71, 4, 0], "current_limit_l3"),
    ([1, 1, 31, 4, 0], "current_limit"),
    ([1, 0, 1, 8, 0], "energy_import_total"),
    ([1, 0, 1, 8, 1], "energy_import_tariff1"),
    ([1, 0, 1, 8, 2], "energy_import_tariff2"),
    ([1, 0, 1, 8, 3], "energy_import_tariff3"),
    ([1, 0, 1, 8, 4], "energy_import_tariff4"),
    ([1, 0, 2, 8, 0], "energy_export_total"),
    ([1, 0, 2, 8, 1], "energy_export_tariff1"),
    ([1, 0, 2, 8, 2], "energy_export_tariff2"),
    ([1, 0, 2, 8, 3], "energy_export_tariff3"),
    ([1, 0, 2, 8, 4], "energy_export_tariff4"),
    // |+A| + |-A|: the absolute active energy (Hungary).
    ([1, 0, 15, 8, 0], "energy_absolute_total"),
    ([1, 0, 3, 8, 0], "reactive_energy_import_total"),
    ([1, 0, 4, 8, 0], "reactive_energy_export_total"),
    // Reactive energy and power per quadrant (QI..QIV: 5..8; Hungary).
    ([1, 0, 5, 8, 0], "reactive_energy_q1_total"),
    ([1, 0, 6, 8, 0], "reactive_energy_q2_total"),
    ([1, 0, 7, 8, 0], "reactive_energy_q3_total"),
    ([1, 0, 8, 8, 0], "reactive_energy_q4_total"),
    ([1, 0, 5, 7, 0], "reactive_power_q1"),
    ([1, 0, 6, 7, 0], "reactive_power_q2"),
    ([1, 0, 7, 7, 0], "reactive_power_q3"),
    ([1, 0, 8, 7, 0], "reactive_power_q4"),
    ([1, 0, 1, 7, 0], "power_import"),
    ([1, 0, 2, 7, 0], "power_export"),
    ([1, 0, 21, 7, 0], "power_import_l1"),
    ([1, 0, 41, 7, 0], "power_import_l2"),
    ([1, 0, 61, 7, 0], "power_import_l3"),
    ([1, 0, 22, 7, 0], "power_export_l1"),
    ([1, 0, 42, 7, 0], "power_export_l2"),
    ([1, 0, 62, 7, 0], "power_export_l3"),
    ([1, 0, 3, 7, 0], "reactive_power_import"),
    ([1, 0, 4, 7, 0], "reactive_power_export"),
    ([1, 0, 23, 7, 0], "reactive_power_import_l1"),
    ([1, 0, 43, 7, 0], "reactive_power_import_l2"),
    ([1, 0, 63, 7, 0], "reactive_power_import_l3"),
    ([1, 0, 24, 7, 0], "reactive_power_export_l1"),
    ([1, 0, 44, 7, 0], "reactive_power_export_l2"),
    ([1, 0, 64, 7, 0], "reactive_power_export_l3"),
    ([1, 0, 9, 7, 0], "apparent_power_import"),
    ([1, 0, 10, 7, 0], "apparent_power_export"),
    ([1, 0, 32, 7, 0], "voltage_l1"),
    ([1, 0, 52, 7, 0], "voltage_l2"),
    ([1, 0, 72, 7, 0], "voltage_l3"),
    ([1, 0, 31, 7, 0], "current_l1"),
    ([1, 0, 51, 7, 0], "current_l2"),
    ([1, 0, 71, 7, 0], "current_l3"),
    ([1, 0, 14, 7, 0], "frequency"),
    ([1, 0, 13, 7, 0], "power_factor"),
    ([1, 0, 33, 7, 0], "power_factor_l1"),
    ([1, 0, 53, 7, 0], "power_factor_l2"),
    ([1, 0, 73, 7, 0], "power_factor_l3"),
    ([1, 0, 1, 4, 0], "demand_import_current"),
    ([1, 0, 1, 6, 0], "demand_import_max_month"),
    ([0, 0, 98, 1, 0], "demand_import_max_history"),
    ([0, 0, 96, 7, 21], "power_failures"),
    ([0, 0, 96, 7, 9], "long_power_failures"),
    ([1, 0, 99, 97, 0], "power_failure_log"),
    ([1, 0, 32, 32, 0], "voltage_sags_l1"),
    ([1, 0, 52, 32, 0], "voltage_sags_l2"),
    ([1, 0, 72, 32, 0], "voltage_sags_l3"),
    ([1, 0, 32, 36, 0], "voltage_swells_l1"),
    ([1, 0, 52, 36, 0], "voltage_swells_l2"),
    ([1, 0, 72, 36, 0], "voltage_swells_l3"),
];

/// Slots of the open-addressing table [`METER_NAME_TABLE`]: a power of two,
/// about three times the number of names, so a probe rarely goes past the
/// first slot.
const SLOTS: usize = 256;

/// [`METER_NAMES`] as a hash table built at compile time: a lookup is one
/// multiply, one or two loads and a compare, instead of the decision tree of
/// a 75-arm `match` (≈ 60 ns of a 1 µs parse, one lookup per line).
struct NameTable {
    /// [`name_key`] of the code in each slot; 0 marks an empty slot.
    keys: [u64; SLOTS],
    /// Index into [`METER_NAMES`] of the code in each slot.
    names: [u8; SLOTS],
}

static METER_NAME_TABLE: NameTable = build_name_table();

/// `A`..`E` packed into one word, with bit 40 set so that no key is 0.
#[inline(always)]
const fn name_key(code: [u8; 5]) -> u64 {
    (code[0] as u64)
        | (code[1] as u64) << 8
        | (code[2] as u64) << 16
        | (code[3] as u64) << 24
        | (code[4] as u64) << 32
        | 1 << 40
}

/// The first slot to look at for `key` (Fibonacci hashing: the top bits of
/// a multiply by 2^64 / φ).
#[inline(always)]
const fn name_slot(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

const fn build_name_table() -> NameTable {
    assert!(METER_NAMES.len() < SLOTS / 2 && METER_NAMES.len() <= u8::MAX as usize);
    let mut table = NameTable {
        keys: [0; SLOTS],
        names: [0; SLOTS],
    };
    let mut i = 0;
    while i < METER_NAMES.len() {
        let key = name_key(METER_NAMES[i].0);
        let mut slot = name_slot(key);
        while table.keys[slot] != 0 {
            assert!(
                table.keys[slot] != key,
                "a code is listed twice in METER_NAMES"
            );
            slot = (slot + 1) % SLOTS;
        }
        table.keys[slot] = key;
        table.names[slot] = i as u8;
        i += 1;
    }
    table
}

/// The canonical name of a code on the meter itself (channel 0, or A = 1).
/// Channel codes go through [`channel_name`].
#[inline]
pub(crate) fn meter_name(code: &ObisCode) -> Option<&'static str> {
    let key = name_key([code.a, code.b, code.c, code.d, code.e]);
    let mut slot = name_slot(key);
    loop {
        let stored = METER_NAME_TABLE.keys[slot];
        if stored == key {
            return Some(METER_NAMES[usize::from(METER_NAME_TABLE.names[slot])].1);
        }
        if stored == 0 {
            return None;
        }
        slot = (slot + 1) % SLOTS;
    }
}

/// The canonical name of a `0-n:` line (n ≥ 1) on a channel of `kind`.
/// `groups` is the number of value groups on the line (Veitur's readings have
/// one, DSMR's `(capture time)(reading)` two).
pub(crate) fn channel_name(
    code: &ObisCode,
    kind: SubmeterKind,
    groups: usize,
) -> Option<&'static str> {
    use SubmeterKind as K;
    let name = match (code.c, code.d, code.e, kind) {
        (24, 1, 0, _) => "mbus_device_type",
        (96, 1, 0, _) | (96, 1, 1, _) => "mbus_equipment_id",
        (96, 3, 10, _) => "breaker_state",
        (24, 4, 0, _) => "valve_state",
        (24, 3, 0, K::Gas | K::Unknown) => "gas_volume",
        (24, 2, 1, K::Gas) => "gas_volume",
        (24, 2, 3, K::Gas) if groups >= 2 => "gas_volume",
        (24, 2, 1, K::Water) => "water_volume",
        (24, 2, 1, K::Heat) => "heat_energy",
        (24, 2, 1, K::Cooling) => "cooling_energy",
        (24, 2, 1, K::HotWater) => "hot_water_volume",
        // Veitur's heat/hot-water submeter: one group per line, own meanings
        // (docs/markets.md §a). 24.2.5/.6 units are unverified: named, not scaled.
        (24, 2, 2, K::HotWater) if groups == 1 => "heat_flow",
        (24, 2, 3, K::HotWater) if groups == 1 => "heat_supply_temperature",
        (24, 2, 4, K::HotWater) if groups == 1 => "heat_return_temperature",
        (24, 2, 5, K::HotWater) if groups == 1 => "heat_energy",
        (24, 2, 6, K::HotWater) if groups == 1 => "heat_energy_2",
        _ => return None,
    };
    Some(name)
}

/// Unit spellings compared case-insensitively, as meters vary (`kvar`, `kVAr`).
pub(crate) fn unit_is(unit: Option<&str>, expected: &str) -> bool {
    unit.is_some_and(|u| u.eq_ignore_ascii_case(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table gives exactly what a search of the list gives, for every
    /// code with A in 0..=1, B in 0..=3, C and D in 0..=100 and E among the
    /// listed values and their neighbours.
    #[test]
    fn meter_name_table_matches_the_list() {
        let search = |k: [u8; 5]| METER_NAMES.iter().find(|(c, _)| *c == k).map(|(_, n)| *n);
        let mut found = 0;
        for a in 0..=1 {
            for b in 0..=3 {
                for c in 0..=100 {
                    for d in 0..=100 {
                        for e in [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 20, 21, 22, 254, 255] {
                            let code = ObisCode::new(a, b, c, d, e);
                            let expected = search([a, b, c, d, e]);
                            assert_eq!(meter_name(&code), expected, "{a}-{b}:{c}.{d}.{e}");
                            found += usize::from(expected.is_some());
                        }
                    }
                }
            }
        }
        assert_eq!(found, METER_NAMES.len(), "every listed code is reachable");
    }

    /// docs/obis.md's table of the meter's own codes is this file's `METER_NAMES`, row for
    /// row: every code the docs list has the name they give, and every name p1gw gives is
    /// listed. A name added, renamed or dropped here fails until the docs say so too.
    #[test]
    fn docs_obis_md_lists_every_meter_code_with_its_name() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/obis.md");
        let text = std::fs::read_to_string(path).expect("docs/obis.md");
        let section = text
            .split("\n## ")
            .find(|s| s.starts_with("Codes on the meter itself"))
            .expect("the section of the meter's codes");
        let cell = |c: &str| c.trim().trim_matches('`').to_owned();
        let mut listed: Vec<([u8; 5], String)> = Vec::new();
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').collect();
            let (code, name) = (cell(cells[1]), cell(cells[2]));
            let parsed = ObisCode::parse(code.as_bytes())
                .unwrap_or_else(|| panic!("docs/obis.md: {code} is not a code"));
            let key = [parsed.a, parsed.b, parsed.c, parsed.d, parsed.e];
            assert_eq!(
                meter_name(&parsed),
                Some(name.as_str()),
                "docs/obis.md lists {code} as {name}"
            );
            listed.push((key, name));
        }
        for (code, name) in METER_NAMES {
            let [a, b, c, d, e] = *code;
            assert!(
                listed.iter().any(|(k, n)| k == code && n == name),
                "{a}-{b}:{c}.{d}.{e} ({name}) is named by p1gw but not in docs/obis.md"
            );
        }
    }
}
