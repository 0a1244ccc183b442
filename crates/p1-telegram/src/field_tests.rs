//! Defects found by reading telegrams from other P1 projects (issue 23): each
//! test checks the JSON a user sees, so that it also runs against the code
//! before the fix.

use crate::*;

/// A telegram `/X5`, a blank line, `lines` (each ending in CR LF) and a `!`
/// line with the right CRC.
fn telegram_with(lines: &[&[u8]]) -> Vec<u8> {
    let mut body = b"/X5\r\n\r\n".to_vec();
    for line in lines {
        body.extend_from_slice(line);
        body.extend_from_slice(b"\r\n");
    }
    body.push(b'!');
    let crc = crc16_arc(&body);
    body.extend_from_slice(format!("{crc:04X}\r\n").as_bytes());
    body
}

/// The §4 JSON of the telegram `bytes` (times in UTC).
fn json_of(bytes: &[u8]) -> String {
    let t = Telegram::parse(bytes, ParseOptions::default()).expect("telegram parses");
    let mut out = String::new();
    json::write_telegram(&mut out, "t", &t, &jiff::tz::TimeZone::UTC);
    out
}

/// The JSON of the first object of a telegram holding `line`.
fn object_json(line: &[u8]) -> serde_json::Value {
    let out = json_of(&telegram_with(&[line]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    v["objects"][0].clone()
}

const HU_SNAPSHOT: &[u8] = b"0-0:98.1.0(230801000000S)(000663.924*kWh)(000383.623*kWh)\
(000280.301*kWh)(001304.175*kWh)(000906.937*kWh)(000397.238*kWh)(000015.142*kvarh)\
(000333.817*kvarh)(000009.479*kvarh)(000005.663*kvarh)(000142.881*kvarh)(000190.936*kvarh)\
(001968.098*kWh)(12.212*kW)(12.212*kW)(11.320*kW)(05.220*kW)(05.220*kW)(05.144*kW)";

#[test]
fn a_billing_snapshot_is_not_read_as_a_peak_history() {
    let o = object_json(HU_SNAPSHOT);
    assert_eq!(o["name"], "billing_snapshot", "{o}");
    assert_eq!(o["time"], "2023-08-01T00:00:00Z", "{o}");
    assert!(o.get("events").is_none(), "no invented months: {o}");
    let values = o["values"].as_array().expect("values");
    assert_eq!(values.len(), 19, "{o}");
    assert_eq!(values[0], serde_json::json!(663.924));
    assert_eq!(values[18], serde_json::json!(5.144));
    let units = o["units"].as_array().expect("units");
    assert_eq!(units[0], "kWh");
    assert_eq!(units[6], "kvarh");
    assert_eq!(units[18], "kW");
    // Belgium's peak history keeps its shape.
    let be = object_json(
        b"0-0:98.1.0(2)(1-0:1.6.0)(1-0:1.6.0)(230201000000W)(230117224500W)(04.329*kW)\
(230301000000W)(230214224500W)(04529*W)",
    );
    assert_eq!(be["name"], "demand_import_max_history", "{be}");
    assert_eq!(be["events"].as_array().map(Vec::len), Some(2), "{be}");
    let empty = object_json(b"0-0:98.1.0(0)(1-0:1.6.0)(1-0:1.6.0)");
    assert_eq!(empty["events"].as_array().map(Vec::len), Some(0), "{empty}");
}

#[test]
fn a_98_1_0_line_that_fits_neither_shape_keeps_every_group() {
    // A peak history cut in the middle of a month: not forced into months.
    let o = object_json(
        b"0-0:98.1.0(3)(1-0:1.6.0)(1-0:1.6.0)(231101000000W)(231031120000W)(01.747*kW)\
(231201000000W)",
    );
    assert!(o.get("events").is_none(), "{o}");
    assert_eq!(
        o["values"],
        serde_json::json!([
            3,
            "1-0:1.6.0",
            "1-0:1.6.0",
            "231101000000W",
            "231031120000W",
            1.747,
            "231201000000W"
        ]),
        "{o}"
    );
    // A stamp followed by something that is not a register.
    let o = object_json(b"0-0:98.1.0(230801000000S)(000663.924*kWh)(ON)");
    assert_eq!(
        o["values"],
        serde_json::json!(["230801000000S", 663.924, "ON"]),
        "{o}"
    );
    assert!(o.get("time").is_none(), "{o}");
}

#[test]
fn the_crc_repair_needs_every_cr_lost_and_says_it_was_used() {
    let crlf = telegram_with(&[b"1-0:1.8.0(1*kWh)", b"1-0:2.8.0(2*kWh)"]);
    let text = String::from_utf8(crlf.clone()).expect("ascii");
    // Every CR lost: the repair applies, and the output says so.
    let lf = text.replace("\r\n", "\n");
    let out = json_of(lf.as_bytes());
    assert!(out.contains("\"crc\":\"valid_crlf_restored\""), "{out}");
    // One CR lost: the telegram is damaged, the CRC must catch it.
    let one = text.replacen("(1*kWh)\r\n", "(1*kWh)\n", 1);
    assert!(
        matches!(
            Telegram::parse(one.as_bytes(), ParseOptions::default()),
            Err(Error::CrcMismatch { .. })
        ),
        "a single lost CR passed the CRC"
    );
    // CR LF as sent: plain valid.
    assert!(json_of(&crlf).contains("\"crc\":\"valid\""));
}

#[test]
fn an_unset_clock_is_no_time() {
    for stamp in [
        "000101010000W",
        "000101000000W",
        "000101000001W",
        "000102000003W",
        "000101010000S",
        "700101010000W",
        "700101000000W",
    ] {
        let line = format!("0-0:1.0.0({stamp})");
        let bytes = telegram_with(&[line.as_bytes()]);
        let out = json_of(&bytes);
        assert!(out.contains("\"meter_time\":null"), "{stamp}: {out}");
        let o = object_json(line.as_bytes());
        assert!(o.get("value").is_none(), "{stamp}: {o}");
    }
    // A real stamp still reads.
    let o = object_json(b"0-0:1.0.0(230817171430S)");
    assert_eq!(o["value"], "2023-08-17T17:14:30Z");
}

#[test]
fn an_empty_mbus_slot_has_no_value() {
    for line in [
        &b"0-1:24.2.1(000101010000W)(0000000000)"[..],
        b"0-1:24.2.1(700101010000W)(00000000)",
        b"0-2:24.2.1(000101000000W)(00000.000*m3)",
    ] {
        let o = object_json(line);
        assert!(o.get("value").is_none(), "{o}");
        assert_eq!(o["time"], serde_json::Value::Null, "{o}");
    }
    // A reading with a real time keeps its zero.
    let o = object_json(b"0-1:24.2.1(230817171000S)(00000.000*m3)");
    assert_eq!(o["value"], serde_json::json!(0.0));
}

#[test]
fn an_empty_failure_log_slot_is_no_outage() {
    let o = object_json(b"1-0:99.97.0(1)(0-0:96.7.19)(000101000001W)(2147483647*s)");
    let events = o["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{o}");
    assert_eq!(events[0]["end"], serde_json::Value::Null, "{o}");
    assert!(events[0].get("duration").is_none(), "{o}");
    // A real entry keeps its duration, a long one included.
    let o = object_json(b"1-0:99.97.0(1)(0-0:96.7.19)(161113205757W)(2317482647*s)");
    assert_eq!(o["events"][0]["duration"], serde_json::json!(2317482647u64));
}

#[test]
fn an_unset_text_message_buffer_is_empty() {
    let mut line = b"0-0:96.13.0(".to_vec();
    line.extend(std::iter::repeat_n(0xFF, 1024));
    line.push(b')');
    let bytes = telegram_with(&[&line, b"1-0:1.8.0(1*kWh)"]);
    let out = json_of(&bytes);
    assert!(out.len() < 400, "{} bytes: {out}", out.len());
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let o = &v["objects"][0];
    assert!(o.get("value").is_none(), "{o}");
    assert_eq!(o["raw"], "()", "{o}");
    assert_eq!(v["objects"][1]["value"], serde_json::json!(1));
}

#[test]
fn common_codes_have_names() {
    for (line, name) in [
        ("1-0:2.8.3(000000.000*kWh)", "energy_export_tariff3"),
        ("1-0:2.8.4(000000.000*kWh)", "energy_export_tariff4"),
        ("1-0:51.4.0(200*A)", "current_limit_l2"),
        ("1-0:71.4.0(200*A)", "current_limit_l3"),
        ("1-0:5.8.0(000011.481*kvarh)", "reactive_energy_q1_total"),
        ("1-0:6.8.0(000007.377*kvarh)", "reactive_energy_q2_total"),
        ("1-0:7.8.0(000186.705*kvarh)", "reactive_energy_q3_total"),
        ("1-0:8.8.0(000252.564*kvarh)", "reactive_energy_q4_total"),
        ("1-0:5.7.0(00.000*kvar)", "reactive_power_q1"),
        ("1-0:6.7.0(00.000*kvar)", "reactive_power_q2"),
        ("1-0:7.7.0(00.066*kvar)", "reactive_power_q3"),
        ("1-0:8.7.0(00.159*kvar)", "reactive_power_q4"),
        ("1-0:15.8.0(002526.790*kWh)", "energy_absolute_total"),
    ] {
        assert_eq!(object_json(line.as_bytes())["name"], name, "{line}");
    }
}

proptest::proptest! {
    /// Whatever the groups of a `0-0:98.1.0` line, the value accounts for every one of them:
    /// a peak history for `(n)(code)(code)` + whole triples, a billing snapshot for a stamp +
    /// registers, otherwise all groups, each in the JSON.
    #[test]
    fn a_98_1_0_line_keeps_every_group(
        groups in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::Just(String::new()),
                "[0-9]{1,2}",
                proptest::prelude::Just("1-0:1.6.0".to_owned()),
                "2[0-9]{5}[0-2][0-9]0000[SW]",
                "[0-9]{2}\\.[0-9]{3}\\*k(W|Wh|varh)",
                "[A-Z]{2}",
            ],
            1..12,
        ),
    ) {
        let line: String = std::iter::once("0-0:98.1.0".to_owned())
            .chain(groups.iter().map(|g| format!("({g})")))
            .collect();
        let bytes = telegram_with(&[line.as_bytes()]);
        let t = Telegram::parse(&bytes, ParseOptions::default()).expect("parses");
        let o = &t.objects[0];
        let n = groups.len();
        match &o.value {
            Value::PeakHistory { peaks, .. } => proptest::prop_assert_eq!(3 + 3 * peaks.len(), n),
            Value::BillingSnapshot { values, .. } => proptest::prop_assert_eq!(1 + values.len(), n),
            Value::Groups(values) => {
                proptest::prop_assert_eq!(values.len(), n);
                let out = json_of(&bytes);
                let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
                let listed = v["objects"][0]["values"].as_array().map_or(0, Vec::len);
                proptest::prop_assert_eq!(listed, n, "{}", out);
            }
            // One group: read as a single value.
            _ => proptest::prop_assert_eq!(n, 1, "{:?}", o.value),
        }
    }
}
