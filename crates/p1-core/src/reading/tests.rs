//! The hand-written formatting of reading construction against what it replaces.

use proptest::prelude::*;

use super::{ObisCode, canonical_scale, canonical_unit, obis_text};

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
    fn obis_text_is_the_written_form(
        a in any::<u8>(), b in any::<u8>(), c in any::<u8>(), d in any::<u8>(), e in any::<u8>(),
        f in proptest::option::of(any::<u8>()),
    ) {
        let code = ObisCode { a, b, c, d, e, f };
        let expected = match f {
            Some(f) => format!("{a}-{b}:{c}.{d}.{e}*{f}"),
            None => format!("{a}-{b}:{c}.{d}.{e}"),
        };
        prop_assert_eq!(&obis_text(code), &expected);
        prop_assert_eq!(code.to_string(), expected);
    }

    #[test]
    fn canonical_scale_is_the_case_insensitive_list(unit in "[a-zA-Z²³°/ ]{0,6}") {
        prop_assert_eq!(
            canonical_scale(None, Some(&unit)).to_bits(),
            scale_reference(None, Some(&unit)).to_bits()
        );
    }
}

/// The JSON rendered on first use from the kept frame is, byte for byte, what
/// rendering it from the telegram at construction gave; rendering it does not
/// make the reading differ from a copy that has not.
#[test]
fn lazy_json_is_the_eager_rendering_for_every_fixture() {
    use std::sync::Arc;

    use p1_telegram::{Decoder, ParseOptions, Telegram, json};

    use super::Reading;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/telegrams");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut checked = 0;
    for path in files {
        let bytes = std::fs::read(&path).expect("read");
        let mut decoder = Decoder::new(64 * 1024);
        let mut input = bytes.as_slice();
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame(&mut input) {
            if let Ok(frame) = frame {
                frames.push(frame.bytes.to_vec());
            }
        }
        for frame in frames {
            let Ok(telegram) = Telegram::parse(&frame, ParseOptions::default()) else {
                continue;
            };
            let tz = jiff::tz::db().get(telegram.default_zone()).expect("zone");
            let received_at = jiff::Timestamp::from_second(1_700_000_000).expect("time");
            let reading = Reading::from_telegram(
                Arc::from("home"),
                Arc::from("replay:test"),
                &telegram,
                &tz,
                received_at,
            );
            let untouched = reading.clone();
            let mut eager = String::new();
            eager.push_str("{\"meter\":\"home\",\"source\":\"replay:test\",\"meter_id\":");
            match &reading.meter_id {
                Some(id) => json::write_str(&mut eager, id),
                None => eager.push_str("null"),
            }
            eager.push_str(",\"received_at\":");
            json::write_time(&mut eager, Some(received_at));
            json::write_telegram_fields(&mut eager, &telegram, &tz);
            eager.push('}');
            assert_eq!(&**reading.json(), eager, "{}", path.display());
            assert!(serde_json::from_str::<serde_json::Value>(reading.json()).is_ok());
            assert_eq!(
                reading, untouched,
                "rendering changes nothing that compares"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} telegrams checked");
}

#[test]
fn canonical_units_match_the_scale_applied() {
    for unit in [
        "W", "kW", "Wh", "kWh", "var", "kvar", "varh", "kvarh", "VA", "VAh", "V", "kV", "A", "kA",
        "Hz", "kHz", "m3", "m3/h", "degC", "GJ", "s",
    ] {
        let scale = canonical_scale(Some("x"), Some(unit));
        let canonical = canonical_unit(Some("x"), unit);
        assert_eq!(
            scale != 1.0,
            canonical != unit,
            "{unit}: scale {scale}, canonical {canonical}"
        );
    }
    assert_eq!(canonical_unit(Some("power_import"), "W"), "kW");
    assert_eq!(canonical_unit(Some("voltage_l1"), "kV"), "V");
    assert_eq!(canonical_unit(Some("heat_energy"), "Wh"), "Wh");
}
