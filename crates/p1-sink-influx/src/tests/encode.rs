//! The schema: measurements, tags, fields in canonical units, timestamps, idempotence.

use p1_core::Encode as _;

use super::parser::{self, Value};
use super::{fixture, reading, veitur_heat};
use crate::config::Precision;
use crate::encode::{LineEncoder, write_reading};

fn lines(text: &str, precision: Precision) -> String {
    let mut out = String::new();
    write_reading(&mut out, &reading(text, 1_700_000_000), precision);
    out
}

fn points(text: &str) -> Vec<parser::Point> {
    lines(text, Precision::S)
        .lines()
        .map(|l| parser::parse(l).expect("our own line parses"))
        .collect()
}

fn field(p: &parser::Point, name: &str) -> Option<f64> {
    p.fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| match v {
            Value::Float(f) => *f,
            other => panic!("{name}: not a float: {other:?}"),
        })
}

fn tag<'a>(p: &'a parser::Point, name: &str) -> Option<&'a str> {
    p.tags
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn veitur_heat_telegram_gives_an_electricity_and_a_hot_water_point() {
    assert_eq!(
        lines(&veitur_heat(), Precision::S),
        "electricity,equipment_id=608681871#,meter=home \
         power_import=0.588,power_export=0,current_l1=2,voltage_l1=232.5,\
         energy_import_total=1988.284,energy_export_total=0,power_import_l1=0.583,power_export_l1=0 \
         1707776474\n\
         hot_water,channel=1,meter=home \
         hot_water_volume=366.475,obis_0_1_24_2_10=0,heat_flow=0.09,heat_supply_temperature=74.8,\
         heat_return_temperature=31.3,heat_energy=19.078,heat_energy_2=19.078 \
         1707776474\n"
    );
}

#[test]
fn the_meters_code_table_names_scales_and_hides_fields() {
    use p1_core::{CodePattern, CodeRule, CodeTable, Quantity};
    let rule = |code: &str| CodeRule::new(CodePattern::parse(code).expect("code"));
    let mut heat = rule("0-1:24.2.5").named("heat_energy_total");
    heat.unit = Some("MWh".to_owned());
    heat.kind = Some(Quantity::Energy);
    let mut flow = rule("0-n:24.2.2");
    flow.scale = Some(1000.0);
    flow.unit = Some("l/h".to_owned());
    let mut hidden = rule("0-1:24.2.10");
    hidden.publish = false;
    let codes = std::sync::Arc::new(CodeTable::new([heat, flow, hidden]));
    let r = reading(&veitur_heat(), 1_700_000_000).with_codes(&codes);
    let mut out = String::new();
    write_reading(&mut out, &r, Precision::S);
    let hot_water = out.lines().nth(1).expect("a hot-water point");
    assert_eq!(
        hot_water,
        "hot_water,channel=1,meter=home \
         hot_water_volume=366.475,heat_flow=90,heat_supply_temperature=74.8,\
         heat_return_temperature=31.3,heat_energy_total=19.078,heat_energy_2=19.078 \
         1707776474"
    );
}

#[test]
fn the_same_readings_encode_to_the_same_bytes_in_a_new_encoder() {
    // What a resend relies on is the spooled bytes; still, encoding is deterministic: the same
    // readings in the same order give the same records.
    let readings: Vec<_> = (0..3)
        .map(|i| reading(&veitur_heat(), 1_707_776_474 + i))
        .collect();
    let encode_all = || {
        let mut encoder = LineEncoder::new(Precision::Ns);
        readings
            .iter()
            .map(|r| encoder.encode(r).expect("points"))
            .collect::<Vec<_>>()
    };
    assert_eq!(encode_all(), encode_all());
}

/// The stamps of the electricity points of `records`.
fn stamps(records: &[Vec<u8>]) -> Vec<i64> {
    records
        .iter()
        .map(|r| {
            let text = String::from_utf8(r.clone()).expect("utf-8");
            let line = text.lines().next().expect("a point");
            line.rsplit(' ')
                .next()
                .expect("stamp")
                .parse()
                .expect("integer")
        })
        .collect()
}

/// A reading of Veitur's telegram with its meter clock at `meter` (None: no clock), received at
/// `received` (seconds).
fn at(meter: Option<i64>, received: i64) -> p1_core::Reading {
    let mut r = reading(&veitur_heat(), received);
    r.meter_time = meter.map(|t| jiff::Timestamp::from_second(t).expect("time"));
    r
}

#[test]
fn every_reading_is_its_own_point_when_the_meter_clock_jumps_back_or_stands_still() {
    let t = 1_707_776_474;
    let mut encoder = LineEncoder::new(Precision::S);
    let records: Vec<Vec<u8>> = [
        at(Some(t), t),
        at(Some(t + 10), t + 10),
        at(Some(t - 3600), t + 20), // an hour back: the time received
        at(Some(t - 3590), t + 30),
        at(Some(t + 40), t + 40), // right again
        at(Some(t + 40), t + 41), // frozen: the time received
        at(Some(t + 40), t + 42),
        at(Some(t + 10 * 365 * 86400), t + 50), // years ahead: the time received
        at(Some(t + 60), t + 60),               // the meter clock again
        at(None, t + 70),                       // no clock: the time received
    ]
    .iter()
    .map(|r| encoder.encode(r).expect("points"))
    .collect();
    assert_eq!(
        stamps(&records),
        [
            t,
            t + 10,
            t + 20,
            t + 30,
            t + 40,
            t + 41,
            t + 42,
            t + 50,
            t + 60,
            t + 70
        ]
    );
    // Every point of a reading has its stamp.
    for record in &records {
        let text = String::from_utf8(record.clone()).expect("utf-8");
        let mut ends = text.lines().map(|l| l.rsplit(' ').next().expect("stamp"));
        let first = ends.next().expect("a point");
        assert!(ends.all(|e| e == first), "{text}");
    }
}

#[test]
fn stamps_are_kept_apart_per_meter_in_the_precision_unit() {
    let t = 1_707_776_474;
    let mut encoder = LineEncoder::new(Precision::Ms);
    let mut other = at(Some(t), t);
    other.meter = std::sync::Arc::from("cabin");
    // The same meter twice with the same clock and the same time received: a unit apart.
    let records: Vec<Vec<u8>> = [at(Some(t), t), other, at(Some(t), t)]
        .iter()
        .map(|r| encoder.encode(r).expect("points"))
        .collect();
    let ms = t * 1000;
    assert_eq!(
        stamps(&records),
        [ms, ms, ms + 1],
        "another meter is another series"
    );
}

#[test]
fn timestamps_follow_the_precision() {
    let text = veitur_heat();
    for (precision, stamp) in [
        (Precision::S, "1707776474"),
        (Precision::Ms, "1707776474000"),
        (Precision::Us, "1707776474000000"),
        (Precision::Ns, "1707776474000000000"),
    ] {
        let out = lines(&text, precision);
        for line in out.lines() {
            assert!(
                line.ends_with(&format!(" {stamp}")),
                "{precision:?}: {line}"
            );
        }
    }
}

#[test]
fn without_a_meter_clock_the_time_received_is_the_timestamp() {
    let text = fixture("dsmr30_spec_example.txt");
    let r = reading(&text, 1_700_000_123);
    assert_eq!(r.meter_time, None);
    let mut out = String::new();
    write_reading(&mut out, &r, Precision::Ms);
    assert!(!out.is_empty());
    for line in out.lines() {
        assert!(line.ends_with(" 1700000123000"), "{line}");
    }
}

#[test]
fn watts_and_watt_hours_become_kilowatts_and_kilowatt_hours() {
    // Aidon 6560 sends W, Wh, var and varh.
    let text = fixture("sweden_aidon_6560_ct_meter_spec.txt");
    let p = &points(&text)[0];
    let r = reading(&text, 0);
    for name in [
        "energy_import_total",
        "power_import",
        "reactive_power_import",
        "reactive_energy_import_total",
        "voltage_l1",
        "current_l1",
    ] {
        let m = r
            .get(name)
            .unwrap_or_else(|| panic!("{name} in the fixture"));
        let sent = m.value.as_f64().expect("number");
        let unit = m.unit.as_deref().unwrap_or("");
        let want = match unit {
            "W" | "Wh" | "VAr" | "VArh" | "var" | "varh" => sent / 1000.0,
            _ => sent,
        };
        let got = field(p, name).unwrap_or_else(|| panic!("{name} written"));
        assert!(
            (got - want).abs() <= want.abs() * 1e-12,
            "{name}: {got} vs {want} ({unit})"
        );
    }
}

#[test]
fn each_submeter_is_a_point_of_its_kind_tagged_with_channel_and_id() {
    // Luxembourg: gas on 0-1 and 0-4, water on 0-2 (and 0-3), ids on each channel.
    let text = fixture("luxembourg_smarty_spec_gas_water.txt");
    let ps = points(&text);
    let r = reading(&text, 0);
    assert_eq!(ps[0].measurement, "electricity");
    assert_eq!(tag(&ps[0], "channel"), None);
    assert_eq!(tag(&ps[0], "meter"), Some("home"));
    for p in &ps[1..] {
        let channel: u8 = tag(p, "channel").expect("channel").parse().expect("number");
        let sub = r
            .submeters
            .iter()
            .find(|s| s.channel == channel)
            .expect("submeter");
        assert_eq!(p.measurement, sub.kind.as_str());
        assert_eq!(tag(p, "equipment_id"), sub.equipment_id.as_deref());
        assert_eq!(tag(p, "meter"), Some("home"));
    }
    let kinds: Vec<(&str, Option<&str>)> = ps
        .iter()
        .map(|p| (p.measurement.as_str(), tag(p, "channel")))
        .collect();
    assert!(kinds.contains(&("gas", Some("1"))), "{kinds:?}");
    assert!(kinds.contains(&("gas", Some("4"))), "{kinds:?}");
    assert!(kinds.contains(&("water", Some("2"))), "{kinds:?}");
    for p in ps.iter().filter(|p| p.measurement == "gas") {
        assert!(field(p, "gas_volume").is_some(), "{p:?}");
    }
}

#[test]
fn text_ids_versions_and_times_are_not_fields() {
    for name in [
        "dsmr502_spec_example.txt",
        "belgium_fluvius_emucs_gas_water.txt",
        "luxembourg_smarty_spec_gas_water.txt",
        "iceland_veitur_iskra_ie5e_antonp1.txt",
    ] {
        for p in points(&fixture(name)) {
            for (key, value) in &p.fields {
                assert!(
                    matches!(value, Value::Float(_)),
                    "{name}: {key} = {value:?}"
                );
                assert!(
                    !crate::encode::IDENTITY_NAMES.contains(&key.as_str())
                        && !key.starts_with("text_message")
                        && key != "meter_time",
                    "{name}: {key}"
                );
            }
        }
    }
    // The tariff indicator is a number: a float field.
    let p = &points(&fixture("dsmr502_spec_example.txt"))[0];
    assert_eq!(field(p, "tariff_indicator"), Some(2.0));
}

#[test]
fn an_id_with_a_backslash_is_left_out() {
    // 0-0:96.1.1 becomes `60\1#` (0x5c is a backslash).
    let text = veitur_heat().replace("0-0:96.1.1(36303836383138373123)", "0-0:96.1.1(36305c3123)");
    let r = reading(&text, 0);
    assert_eq!(r.meter_id.as_deref(), Some("60\\1#"));
    let p = &points(&text)[0];
    assert_eq!(tag(p, "equipment_id"), None);
    assert_eq!(tag(p, "meter"), Some("home"));
}

#[test]
fn a_reading_without_numbers_is_skipped() {
    let text = "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.1(36303836383138373123)\r\n!\r\n";
    let r = reading(text, 0);
    assert_eq!(LineEncoder::new(Precision::S).encode(&r), None);
}

#[test]
fn a_floor_from_an_earlier_run_stamps_every_meter_after_it() {
    let t = 1_707_776_474;
    // The run before gave t + 10 s (in ns, whatever its precision); this one writes ms.
    let mut encoder =
        LineEncoder::new(Precision::Ms).with_floor(Some((t as u64 + 10) * 1_000_000_000));
    let mut other = at(Some(t + 20), t + 20);
    other.meter = std::sync::Arc::from("cabin");
    let records: Vec<Vec<u8>> = [at(Some(t), t + 30), at(Some(t + 11), t + 31), other]
        .iter()
        .map(|r| encoder.encode(r).expect("points"))
        .collect();
    let ms = t * 1000;
    // Before the floor: the time received; then the meter's clock is behind the last stamp
    // (the time received again); the other meter's clock is past the floor.
    assert_eq!(stamps(&records), [ms + 30_000, ms + 31_000, ms + 20_000]);
    assert_eq!(
        encoder.given().load(std::sync::atomic::Ordering::Relaxed),
        (t as u64 + 31) * 1_000_000_000,
        "the latest stamp given, to be stored"
    );
}
