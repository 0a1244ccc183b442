//! The hand-written formatting of reading construction against what it replaces.

use proptest::prelude::*;

use super::{ObisCode, canonical_scale, obis_text};

/// The scale as it was written before (a list compared case-insensitively): the reference.
fn scale_reference(name: Option<&str>, unit: Option<&str>) -> f64 {
    if matches!(name, Some("heat_energy" | "heat_energy_2")) {
        return 1.0;
    }
    match unit {
        Some(u)
            if ["W", "Wh", "var", "varh", "VA", "VAh"]
                .iter()
                .any(|x| u.eq_ignore_ascii_case(x)) =>
        {
            0.001
        }
        Some(u)
            if ["kV", "kA", "kHz"]
                .iter()
                .any(|x| u.eq_ignore_ascii_case(x)) =>
        {
            1000.0
        }
        _ => 1.0,
    }
}

#[test]
fn canonical_scale_of_every_unit_in_the_fixtures_and_their_cases() {
    for unit in [
        "W", "w", "kW", "Wh", "kWh", "KWH", "var", "VAR", "varh", "kvar", "kvarh", "VA", "va",
        "VAh", "kVA", "kV", "KV", "kA", "kHz", "KHZ", "V", "A", "Hz", "m3", "m³", "GJ", "°C",
        "m3/h", "s", "", "Wh ", "WhX", "wattt", "é",
    ] {
        for name in [
            None,
            Some("power_import"),
            Some("heat_energy"),
            Some("heat_energy_2"),
        ] {
            assert_eq!(
                canonical_scale(name, Some(unit)).to_bits(),
                scale_reference(name, Some(unit)).to_bits(),
                "{name:?} {unit:?}"
            );
        }
    }
    assert_eq!(canonical_scale(Some("power_import"), None), 1.0);
}

proptest! {
    #[test]
    fn obis_text_is_display(
        a in any::<u8>(), b in any::<u8>(), c in any::<u8>(), d in any::<u8>(), e in any::<u8>(),
        f in proptest::option::of(any::<u8>()),
    ) {
        let code = ObisCode { a, b, c, d, e, f };
        prop_assert_eq!(obis_text(code), code.to_string());
    }

    #[test]
    fn canonical_scale_is_the_case_insensitive_list(unit in "[a-zA-Z²³°/ ]{0,6}") {
        prop_assert_eq!(
            canonical_scale(None, Some(&unit)).to_bits(),
            scale_reference(None, Some(&unit)).to_bits()
        );
    }
}
