use proptest::prelude::*;

use crate::*;

/// (offset, bytes, terminated) of a decoded frame.
type Owned = (u64, Vec<u8>, bool);

fn decode_all(input: &[u8], chunk: usize, max: usize) -> Vec<Result<Owned, Error>> {
    let mut decoder = Decoder::new(max);
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        let mut rest = piece;
        while let Some(r) = decoder.next_frame(&mut rest) {
            out.push(r.map(|f| (f.offset, f.bytes.to_vec(), f.terminated)));
        }
    }
    if let Some(r) = decoder.finish() {
        out.push(r.map(|f| (f.offset, f.bytes.to_vec(), f.terminated)));
    }
    out
}

fn parse(bytes: &[u8]) -> Telegram<'_> {
    Telegram::parse(bytes, ParseOptions::default()).expect("telegram parses")
}

const VEITUR: &[u8] = b"/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(84035454)\r\n1-0:0.9.1(155237)\r\n\
1-0:0.9.2(230510)\r\n1-0:1.8.0(000002.331*kWh)\r\n0-1:24.2.1(0366.475*m3)\r\n\
0-1:24.2.2(0000.090*m3/h)\r\n0-1:24.2.3(000074.8*degC)\r\n!\r\n";

/// Appends a correct CRC to a telegram body ending in `!`.
fn with_crc(body: &str) -> Vec<u8> {
    let crc = crc16_arc(body.as_bytes());
    format!("{body}{crc:04X}\r\n").into_bytes()
}

#[test]
fn crc_check_value() {
    assert_eq!(crc16_arc(b"123456789"), 0xBB3D);
}

#[test]
fn crc_over_lf_only_input_is_checked_as_crlf() {
    let crlf = with_crc("/X5\r\n\r\n1-0:1.8.0(1*kWh)\r\n!");
    let lf: Vec<u8> = String::from_utf8(crlf)
        .expect("ascii")
        .replace("\r\n", "\n")
        .into_bytes();
    let t = parse(&lf);
    assert_eq!(t.crc, CrcStatus::ValidCrLfRestored);
}

#[test]
fn short_crc_without_zero_padding_is_accepted() {
    // Find a body whose CRC is below 0x1000 and print it unpadded.
    for i in 0..10_000u32 {
        let body = format!("/X5\r\n\r\n1-0:1.8.0({i:06}*kWh)\r\n!");
        let crc = crc16_arc(body.as_bytes());
        if crc < 0x1000 {
            let bytes = format!("{body}{crc:X}\r\n").into_bytes();
            assert_eq!(parse(&bytes).crc, CrcStatus::Valid);
            return;
        }
    }
    panic!("no short CRC found");
}

#[test]
fn crc_mismatch_is_an_error_with_both_values_or_kept_when_asked() {
    let mut bytes = with_crc("/X5\r\n\r\n1-0:1.8.0(1*kWh)\r\n!");
    let good = crc16_arc(b"/X5\r\n\r\n1-0:1.8.0(1*kWh)\r\n!");
    bytes[10] = b'2';
    let computed = crc16_arc(&bytes[..bytes.len() - 6]);
    assert_eq!(
        Telegram::parse(&bytes, ParseOptions::default()),
        Err(Error::CrcMismatch {
            expected: good,
            computed
        })
    );
    let kept = Telegram::parse(&bytes, ParseOptions { check_crc: false }).expect("kept");
    assert_eq!(
        kept.crc,
        CrcStatus::Mismatch {
            expected: good,
            computed
        }
    );
    let bad = b"/X5\r\n\r\n1-0:1.8.0(1*kWh)\r\n!XYZ\r\n";
    assert!(matches!(
        Telegram::parse(bad, ParseOptions::default()),
        Err(Error::InvalidCrc { .. })
    ));
}

#[test]
fn a_telegram_without_crc_holding_binary_bytes_is_garbled_unless_a_crc_vouches_for_it() {
    // Half a Veitur telegram glued to line noise that happened to end in a `!` line.
    let glued = b"/ISk5\\2MIE5E-200\r\n\r\n1-0:1.8.0(001988.284*kWh)\r\n1-0:2.8.\x8f\x03q\r\n!\r\n";
    assert_eq!(
        Telegram::parse(glued, ParseOptions::default()),
        Err(Error::Garbled { at: 55, byte: 0x8f })
    );
    assert_eq!(Error::Garbled { at: 0, byte: 0 }.reason(), "garbled");
    // With checks off (`p1gw parse --no-crc`) it is shown as it is.
    assert!(Telegram::parse(glued, ParseOptions { check_crc: false }).is_ok());
    // A NUL (what the OS puts in for a framing error) counts too; a tab does not.
    let nul = b"/X5\r\n\r\n1-0:1.8.0(1*kWh)\x00\r\n!\r\n";
    assert!(matches!(
        Telegram::parse(nul, ParseOptions::default()),
        Err(Error::Garbled { byte: 0, .. })
    ));
    assert!(
        Telegram::parse(
            b"/X5\r\n\t1-0:1.8.0(1*kWh)\r\n!\r\n",
            ParseOptions::default()
        )
        .is_ok()
    );
    // A valid CRC vouches for the bytes: they are what the meter sent.
    let vouched = with_crc("/X5\r\n\r\n0-0:96.13.0(\u{e9})\r\n!");
    assert_eq!(
        Telegram::parse(&vouched, ParseOptions::default())
            .expect("valid CRC")
            .crc,
        CrcStatus::Valid
    );
}

#[test]
fn decimals_keep_the_digits_sent() {
    let cases = [
        ("001988.284", "1988.284"),
        ("00.000", "0.000"),
        ("0000000", "0"),
        ("-063", "-63"),
        ("-1.000", "-1.000"),
        ("00000000.0000", "0.0000"),
        ("00032549.5061662", "32549.5061662"),
    ];
    for (input, text) in cases {
        let d = Decimal::parse(input.as_bytes()).expect(input);
        assert_eq!(d.to_string(), text);
    }
    assert_eq!(
        Decimal::parse(b"1988.284").map(|d| d.to_f64()),
        Some(1988.284)
    );
    for bad in ["", "-", ".", "1.2.3", "12a", "1e5", "99999999999999999999"] {
        assert_eq!(Decimal::parse(bad.as_bytes()), None, "{bad}");
    }
}

#[test]
fn obis_codes_normalise() {
    let p = |s: &str| ObisCode::parse(s.as_bytes()).map(|c| c.to_string());
    assert_eq!(p("1-0:1.8.0").as_deref(), Some("1-0:1.8.0"));
    assert_eq!(p("0-1:24.2.10").as_deref(), Some("0-1:24.2.10"));
    assert_eq!(p("1-0:1.8.0.255").as_deref(), Some("1-0:1.8.0"));
    assert_eq!(p("1-0:1.8.0*255").as_deref(), Some("1-0:1.8.0"));
    assert_eq!(p("1-0:1.8.0*1").as_deref(), Some("1-0:1.8.0*1"));
    assert_eq!(p("1-0:72:32.0").as_deref(), Some("1-0:72.32.0"));
    assert_eq!(p("1,0:2.7.0"), None);
    assert_eq!(p("1-0:1.8"), None);
    assert_eq!(p("1-0:1.8.0x"), None);
    assert_eq!(p("1-0:1.8.256"), None);
}

#[test]
fn timestamps_resolve_the_repeated_autumn_hour_by_flag() {
    let tz = jiff::tz::db().get("Europe/Amsterdam").expect("zone");
    let at = |s: &str| match MeterTime::parse(s.as_bytes()) {
        Some(Stamp::Valid(t)) => t.to_timestamp(&tz).map(|t| t.to_string()),
        other => panic!("{s}: {other:?}"),
    };
    // 2023-10-29 02:30 happens twice in Amsterdam.
    assert_eq!(at("231029023000S").as_deref(), Some("2023-10-29T00:30:00Z"));
    assert_eq!(at("231029023000W").as_deref(), Some("2023-10-29T01:30:00Z"));
    assert_eq!(at("240101120000W").as_deref(), Some("2024-01-01T11:00:00Z"));
    assert_eq!(at("240701120000").as_deref(), Some("2024-07-01T10:00:00Z"));
    for placeholder in [
        "700101010000W",
        "632525252525S",
        "632525252525W",
        "000101000000W",
        "000000000000W",
        "213112235959W",
    ] {
        assert_eq!(
            MeterTime::parse(placeholder.as_bytes()),
            Some(Stamp::Placeholder),
            "{placeholder}"
        );
    }
    assert_eq!(MeterTime::parse(b"2401011200"), None);
    assert_eq!(MeterTime::parse(b"240101120000X"), None);
}

#[test]
fn veitur_telegram_is_read_in_reykjavik_time_with_its_submeter() {
    let t = parse(VEITUR);
    assert_eq!(t.header, b"ISk5\\2MIE5E-200");
    assert_eq!(t.crc, CrcStatus::Absent);
    assert_eq!(t.default_zone(), "Atlantic/Reykjavik");
    let tz = jiff::tz::db().get(t.default_zone()).expect("zone");
    assert_eq!(
        t.meter_time(&tz).map(|t| t.to_string()).as_deref(),
        Some("2023-05-10T15:52:37Z")
    );
    assert_eq!(t.submeters.len(), 1);
    assert_eq!(t.submeters[0].kind, SubmeterKind::HotWater);
    let names: Vec<_> = t.objects.iter().map(|o| o.name).collect();
    assert_eq!(
        names,
        [
            Some("meter_serial"),
            Some("meter_time"),
            Some("meter_time"),
            Some("energy_import_total"),
            Some("hot_water_volume"),
            Some("heat_flow"),
            Some("heat_supply_temperature")
        ]
    );
    assert_eq!(t.meter_id().as_deref(), Some("84035454"));
}

#[test]
fn belgian_24_2_3_is_gas_and_veitur_24_2_3_is_a_temperature() {
    let be = with_crc(
        "/FLU5\\253769484_A\r\n\r\n0-0:96.1.4(50217)\r\n0-1:24.1.0(003)\r\n\
         0-1:24.2.3(231102121002W)(00092.287*m3)\r\n!",
    );
    let t = parse(&be);
    assert_eq!(t.submeters[0].kind, SubmeterKind::Gas);
    let gas = t.by_name("gas_volume").expect("gas");
    assert_eq!(
        gas.quantity().map(|q| q.value.to_string()).as_deref(),
        Some("92.287")
    );
    // The same code without a device type and with one group: Veitur's supply temperature.
    let is = parse(VEITUR);
    let temp = is.by_name("heat_supply_temperature").expect("temperature");
    assert_eq!(
        temp.code.map(|c| c.to_string()).as_deref(),
        Some("0-1:24.2.3")
    );
    // Belgian-style gas without a device type is still gas (m3 + capture time).
    let no_type = with_crc("/FLU5\\x\r\n\r\n0-1:24.2.3(231102121002W)(00092.287*m3)\r\n!");
    assert_eq!(parse(&no_type).submeters[0].kind, SubmeterKind::Gas);
}

#[test]
fn submeter_kind_follows_the_device_type_on_any_channel() {
    let body = "/X5\r\n\r\n0-3:24.1.0(007)\r\n0-3:24.2.1(200101000000W)(00012.345*m3)\r\n\
                0-4:24.1.0(004)\r\n0-4:24.2.1(200101000000W)(00010.025*GJ)\r\n\
                0-2:24.1.0(011)\r\n0-2:24.2.1(200101000000W)(00001.000*GJ)\r\n!";
    let bytes = with_crc(body);
    let t = parse(&bytes);
    let kinds: Vec<_> = t.submeters.iter().map(|s| (s.channel, s.kind)).collect();
    assert_eq!(
        kinds,
        [
            (2, SubmeterKind::Cooling),
            (3, SubmeterKind::Water),
            (4, SubmeterKind::Heat)
        ]
    );
    assert_eq!(t.by_name("water_volume").and_then(|o| o.channel()), Some(3));
    assert_eq!(t.by_name("heat_energy").and_then(|o| o.channel()), Some(4));
    assert_eq!(
        t.by_name("cooling_energy").and_then(|o| o.channel()),
        Some(2)
    );
}

#[test]
fn junk_after_groups_and_odd_lines_are_kept() {
    let bytes = b"/X5\r\n1-0:1.7.0(00.588*kW)* ()\r\n1,0:2.7.0(00.000*kW)\r\n1-0:99.1.0\r\n\
                  1-0:1.8.0(00012\r\n0-0:96.13.0()\r\n!\r\n";
    let t = parse(bytes);
    assert_eq!(t.objects.len(), 5);
    let power = &t.objects[0];
    assert_eq!(power.raw, b"(00.588*kW)* ()");
    assert_eq!(
        power.quantity().map(|q| q.value.to_string()).as_deref(),
        Some("0.588")
    );
    assert_eq!(t.objects[1].code, None);
    assert_eq!(t.objects[1].code_text, b"1,0:2.7.0");
    assert_eq!(t.objects[2].value, Value::Empty);
    assert_eq!(t.objects[3].value, Value::Empty, "unclosed group is junk");
    assert_eq!(t.objects[4].value, Value::Empty);
}

#[test]
fn hex_text_is_decoded_only_when_printable() {
    assert_eq!(
        decode_hex_text(b"36303834303335343534").as_deref(),
        Some("6084035454")
    );
    assert_eq!(
        decode_hex_text(b"84035454"),
        None,
        "plain digits that decode to bytes ≥ 0x80"
    );
    assert_eq!(decode_hex_text(b"123"), None, "odd length");
    assert_eq!(decode_hex_text(b"0008"), None, "control characters");
    assert_eq!(decode_hex_text(b""), None);
}

#[test]
fn decoder_resynchronises_on_a_line_initial_slash_only() {
    let input = b"garbage m3/h\r\n/A5 first\r\n1-0:1.8.0(1*kWh)\r\n/B5 second\r\n\r\n\
                  0-1:24.2.2(0000.090*m3/h)\r\n!\r\ntrailer\r\n";
    let out = decode_all(input, input.len(), 1024);
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0],
        Err(Error::Truncated {
            offset: 14,
            len: 29
        })
    );
    let (offset, bytes, terminated) = out[1].clone().expect("second frame");
    assert_eq!(offset, 43);
    assert!(bytes.starts_with(b"/B5 second"));
    assert!(bytes.ends_with(b"!\r\n"));
    assert!(terminated);
}

#[test]
fn decoder_drops_oversize_frames_and_recovers() {
    let mut input = b"/BIG\r\n".to_vec();
    for _ in 0..100 {
        input.extend_from_slice(b"0-0:96.13.0(303132333435363738393A3B3C3D3E3F)\r\n");
    }
    input.extend_from_slice(b"!\r\n");
    input.extend_from_slice(VEITUR);
    for chunk in [1, 5, 4096] {
        let out = decode_all(&input, chunk, 1024);
        assert_eq!(out.len(), 2, "chunk {chunk}");
        assert_eq!(
            out[0],
            Err(Error::Oversize {
                offset: 0,
                limit: 1024
            })
        );
        assert_eq!(out[1].as_ref().map(|f| f.1.as_slice()), Ok(VEITUR));
    }
}

#[test]
fn finish_accepts_whole_lines_without_a_bang_but_not_a_cut_line() {
    let unterminated = b"/ISk5\\2MIE5E-200\r\n1-0:1.8.0(000002.331*kWh)\r\n";
    let out = decode_all(unterminated, 3, 1024);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().map(|f| f.2), Ok(false));
    let cut = b"/ISk5\\2MIE5E-200\r\n1-0:1.8.0(0000";
    assert_eq!(
        decode_all(cut, 3, 1024),
        vec![Err(Error::Truncated { offset: 0, len: 32 })]
    );
    let bang_without_crlf = b"/X5\r\n\r\n1-0:1.8.0(1*kWh)\r\n!";
    assert_eq!(
        decode_all(bang_without_crlf, 1, 1024)[0]
            .as_ref()
            .map(|f| f.2),
        Ok(true)
    );
}

#[test]
fn offsets_restart_for_each_stream() {
    let mut decoder = Decoder::default();
    for _ in 0..2 {
        let mut input: &[u8] = b"xx\r\n/X5\r\n\r\n!\r\n";
        let frame = decoder.next_frame(&mut input).expect("frame").expect("ok");
        assert_eq!(frame.offset, 4);
        assert!(decoder.finish().is_none());
    }
    assert_eq!(decoder.stats().frames, 2);
    assert_eq!(decoder.stats().skipped, 8);
}

#[test]
fn long_digit_runs_in_codes_do_not_overflow() {
    // Found by the fuzzer: a code group of many digits overflowed the
    // fast path's accumulator.
    let frame = b"/X5\r\n\r\n1-0:0.040405154953)\r\n1-0:99999999999999999999.8.1(1*kWh)\r\n!\r\n";
    let t = parse(frame);
    assert_eq!(t.objects.len(), 2);
    assert!(t.objects.iter().all(|o| o.code.is_none()));
}

#[test]
fn dsmr3_gas_value_on_the_next_line_joins_its_profile_line() {
    let t = parse(
        b"/ISk5\\2MT382-1000\r\n\r\n0-1:24.1.0(03)\r\n0-1:24.3.0(090212160000)(00)(60)(1)(0-1:24.2.1)(m3)\r\n\
          (00001.001)\r\n!\r\n",
    );
    assert_eq!(t.objects.len(), 2);
    let gas = t.by_name("gas_volume").expect("gas");
    let q = gas.quantity().expect("quantity");
    assert_eq!(
        (q.value.to_string().as_str(), q.unit),
        ("1.001", Some("m3"))
    );
    assert_eq!(gas.continuation, Some(&b"(00001.001)"[..]));
}

#[test]
fn power_failure_log_keeps_64_bit_durations() {
    let t = parse(b"/X5\r\n\r\n1-0:99.97.0(2)(0-0:96.7.19)(101208152415W)(2147583646*s)(101208152415W)(0000000240*s)\r\n!\r\n");
    let Value::FailureLog { count, events } = &t.objects[0].value else {
        panic!("not a log: {:?}", t.objects[0].value)
    };
    assert_eq!(*count, Some(2));
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].duration.map(|d| d.value.mantissa()),
        Some(2_147_583_646)
    );
    assert!(matches!(events[1].end, Some(Stamp::Valid(_))));
}

#[test]
fn json_is_the_design_shape() {
    let t = parse(VEITUR);
    let tz = jiff::tz::db().get("Atlantic/Reykjavik").expect("zone");
    let mut out = String::new();
    json::write_telegram(&mut out, "x \"quoted\"", &t, &tz);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["source"], "x \"quoted\"");
    assert_eq!(v["header"], "ISk5\\2MIE5E-200");
    assert_eq!(v["crc"], "absent");
    assert_eq!(v["meter_time"], "2023-05-10T15:52:37Z");
    assert_eq!(
        v["objects"][3],
        serde_json::json!({"obis":"1-0:1.8.0","name":"energy_import_total","value":2.331,"unit":"kWh","raw":"(000002.331*kWh)"})
    );
    assert_eq!(
        v["objects"][4],
        serde_json::json!({"obis":"0-1:24.2.1","channel":1,"name":"hot_water_volume","value":366.475,"unit":"m3","raw":"(0366.475*m3)"})
    );
    assert!(out.contains("\"value\":0.090"), "digits as sent: {out}");
}

#[test]
fn json_escapes_control_characters_and_invalid_utf8() {
    // Without a CRC such bytes are `Garbled` unless checks are off (`p1gw parse --no-crc`),
    // which is how they reach the writer.
    let t = Telegram::parse(
        b"/X5\x01\xff\r\n\r\n0-0:96.13.0(\x02\"\\)\r\n!\r\n",
        ParseOptions { check_crc: false },
    )
    .expect("kept with checks off");
    let mut out = String::new();
    json::write_telegram(&mut out, "s", &t, &jiff::tz::TimeZone::UTC);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(v["header"], "X5\u{1}\u{fffd}");
    assert_eq!(v["objects"][0]["value"], "\u{2}\"\\");
}

/// A random but well-formed telegram with a CRC.
fn telegram_strategy() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        (0u32..1_000_000, 0u32..1000).prop_map(|(a, b)| format!("1-0:1.8.0({a:06}.{b:03}*kWh)")),
        (0u32..100, 0u32..1000).prop_map(|(a, b)| format!("1-0:1.7.0({a:02}.{b:03}*kW)")),
        (1u8..5, 0u32..100_000)
            .prop_map(|(c, v)| format!("0-{c}:24.2.1(231102121002W)({v:08}.000*m3)")),
        "[0-9A-F]{0,40}".prop_map(|h| format!("0-0:96.13.0({h})")),
        "[ -'*-~]{0,30}".prop_map(|t| format!("1-0:99.9.9({t})")),
    ];
    (proptest::collection::vec(line, 0..30), any::<bool>()).prop_map(|(lines, blank)| {
        let mut body = String::from("/ISk5\\2MIE5E-200\r\n");
        if blank {
            body.push_str("\r\n");
        }
        for l in lines {
            body.push_str(&l);
            body.push_str("\r\n");
        }
        body.push('!');
        with_crc(&body)
    })
}

#[test]
fn only_codes_the_number_path_skips_hold_text_or_times() {
    // The fast path reads a group as a plain number unless
    // `may_hold_text_or_time(C, D)`; for every other code the typed path
    // must give the same value, whatever the group holds.
    let groups: [&[u8]; 6] = [
        b"101209113020W",
        b"123456",
        b"4B384547303034303436333935353037",
        b"00012.5*kWh",
        b"",
        b"0",
    ];
    for a in 0..=1 {
        for b in 0..=1 {
            for c in 0..=255 {
                for d in 0..=255 {
                    for e in [0, 1, 5, 13, 255] {
                        let code = ObisCode::new(a, b, c, d, e);
                        for g in groups {
                            let (may, same) = crate::telegram::typed_is_plain(&code, g);
                            assert!(may || same, "{code} {:?}", String::from_utf8_lossy(g));
                        }
                    }
                }
            }
        }
    }
}

/// A fast path's object for `line`, when it takes the line, is the general
/// path's: alone, and with a next line after it, as inside a telegram (the
/// fast paths read whole words where there is room).
fn fast_path_agrees(line: &str) -> Result<(), proptest::test_runner::TestCaseError> {
    let (fast, general) = crate::telegram::fast_and_general(line.as_bytes(), 0);
    if let Some(fast) = fast {
        prop_assert_eq!(fast, general, "{:?}", line);
    }
    if line.ends_with('\n') {
        let next = "1-0:1.8.1(000123.456*kWh)\r\n";
        let body = format!("{line}{next}");
        let (fast, general) = crate::telegram::fast_and_general(body.as_bytes(), next.len());
        if let Some(fast) = fast {
            prop_assert_eq!(fast, general, "{:?}", line);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn generated_telegrams_have_valid_crcs_and_keep_every_line(
        telegram in telegram_strategy(),
    ) {
        let t = Telegram::parse(&telegram, ParseOptions::default()).expect("valid");
        prop_assert_eq!(t.crc, CrcStatus::Valid);
        let lines = telegram.split(|&b| b == b'\n').filter(|l| l.first().is_some_and(|c| c.is_ascii_digit())).count();
        prop_assert_eq!(t.objects.len(), lines);
    }

    #[test]
    fn chunking_never_changes_the_frames(
        telegrams in proptest::collection::vec(telegram_strategy(), 1..4),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        chunk in 1usize..200,
    ) {
        let mut input = Vec::new();
        for t in &telegrams {
            input.extend_from_slice(&noise);
            input.extend_from_slice(b"\r\n");
            input.extend_from_slice(t);
        }
        let whole = decode_all(&input, input.len(), 16 * 1024);
        prop_assert_eq!(decode_all(&input, chunk, 16 * 1024), whole.clone());
        // Every generated telegram comes out whole, in order.
        let frames: Vec<Vec<u8>> = whole.into_iter().filter_map(Result::ok).map(|f| f.1).collect();
        prop_assert_eq!(frames, telegrams);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_memory_stays_bounded(
        input in proptest::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..64,
    ) {
        let mut decoder = Decoder::new(256);
        for piece in input.chunks(chunk) {
            let mut rest = piece;
            while let Some(r) = decoder.next_frame(&mut rest) {
                if let Ok(frame) = r {
                    prop_assert!(frame.bytes.len() <= 256);
                    let _parsed = Telegram::parse(frame.bytes, ParseOptions { check_crc: false });
                }
            }
        }
        if let Some(Ok(frame)) = decoder.finish() {
            prop_assert!(frame.bytes.len() <= 256);
        }
    }

    #[test]
    fn arbitrary_lines_in_a_frame_parse_without_panic(
        lines in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..20),
    ) {
        let mut frame = b"/X5\r\n".to_vec();
        for l in &lines {
            frame.extend(l.iter().filter(|&&b| b != b'\n'));
            frame.extend_from_slice(b"\r\n");
        }
        frame.extend_from_slice(b"!\r\n");
        let t = Telegram::parse(&frame, ParseOptions { check_crc: false }).expect("a frame");
        let mut out = String::new();
        json::write_telegram(&mut out, "p", &t, &jiff::tz::TimeZone::UTC);
        prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{}", out);
    }

    #[test]
    fn the_fast_line_path_agrees_with_the_general_one(
        code in "[0-9]{1,3}-[0-9]{1,3}:[0-9]{1,3}[.:][0-9]{1,3}[.:][0-9]{1,3}([.*][0-9]{1,3})?",
        value in prop_oneof![
            "[-+]?[0-9A-Fa-f.]{0,24}",
            // Long whole parts: the two-word number path.
            "[-+]?[0-9]{7,20}(\\.[0-9]{0,10})?",
        ],
        unit in proptest::option::of("[A-Za-z0-9/*]{0,6}"),
        tail in prop_oneof![Just(""), Just("\r\n"), Just("\n"), Just("\r"), Just("(1)"), Just("* ()")],
    ) {
        let line = match &unit {
            Some(u) => format!("{code}({value}*{u}){tail}"),
            None => format!("{code}({value}){tail}"),
        };
        fast_path_agrees(&line)?;
    }

    #[test]
    fn the_fast_reading_path_agrees_with_the_general_one(
        code in prop_oneof![
            Just("0-1:24.2.1".to_owned()), Just("0-2:24.2.3".to_owned()),
            Just("0-1:24.3.0".to_owned()), Just("1-0:99.97.0".to_owned()),
            Just("0-0:98.1.0".to_owned()), Just("1-0:1.6.0".to_owned()),
            "[0-9]{1,3}-[0-9]{1,3}:[0-9]{1,3}[.:][0-9]{1,3}[.:][0-9]{1,3}",
        ],
        stamp in prop_oneof![
            "[0-9]{12}[SWsw]", "[0-9]{10,13}[SWX]?", Just("000101000000W".to_owned()),
            Just("632525252525S".to_owned()), Just("101209112500W".to_owned()),
        ],
        value in "[-+]?[0-9.]{0,12}",
        unit in proptest::option::of("[A-Za-z0-9/*]{0,6}"),
        tail in prop_oneof![Just(""), Just("\r\n"), Just("\n"), Just("\r"), Just("(1)")],
    ) {
        let line = match &unit {
            Some(u) => format!("{code}({stamp})({value}*{u}){tail}"),
            None => format!("{code}({stamp})({value}){tail}"),
        };
        fast_path_agrees(&line)?;
    }

    #[test]
    fn the_fast_failure_log_path_agrees_with_the_general_one(
        count in prop_oneof!["[0-9]{1,3}", Just("".to_owned()), "[0-9]\\.[0-9]", Just("2*x".to_owned())],
        log_code in prop_oneof![Just("0-0:96.7.19"), Just(""), Just("0-0:96.7.19*"), Just("(")],
        events in proptest::collection::vec(
            (
                prop_oneof!["[0-9]{12}[SW]", "[0-9]{11,13}", Just("000101000000W".to_owned())],
                prop_oneof!["[0-9]{1,19}", "[0-9]{1,12}\\.[0-9]{1,8}", Just("".to_owned()), Just("x".to_owned())],
                proptest::option::of(prop_oneof![Just("s"), Just(""), Just("min")]),
            ),
            0..5,
        ),
        odd in proptest::option::of("[0-9]{12}[SW]"),
        tail in prop_oneof![Just(""), Just("\r\n"), Just("\n"), Just("\r"), Just(" "), Just("(")],
    ) {
        let mut line = format!("1-0:99.97.0({count})({log_code})");
        for (end, duration, unit) in &events {
            match unit {
                Some(unit) => line.push_str(&format!("({end})({duration}*{unit})")),
                None => line.push_str(&format!("({end})({duration})")),
            }
        }
        if let Some(end) = odd {
            line.push_str(&format!("({end})"));
        }
        line.push_str(tail);
        fast_path_agrees(&line)?;
    }

    #[test]
    fn decimal_parse_agrees_with_the_counting_parser(
        text in "[-+]?[0.]{0,6}[0-9.]{0,22}[a-z*]?",
    ) {
        // `parse_long` counts significant digits one by one; `parse` takes a
        // shortcut for 18 characters or fewer. Both must give the same.
        let bytes = text.as_bytes();
        let (negative, digits) = match bytes.first() {
            Some(b'-') => (true, &bytes[1..]),
            Some(b'+') => (false, &bytes[1..]),
            _ => (false, bytes),
        };
        let reference = if bytes.is_empty() { None } else { Decimal::parse_long(negative, digits) };
        prop_assert_eq!(Decimal::parse(bytes), reference, "{:?}", text);
    }

    #[test]
    fn the_number_path_reads_numbers_as_the_general_one(
        sign in "[-+]?",
        whole in "[0-9]{0,10}",
        fraction in proptest::option::of("[0-9]{0,10}"),
        after in "(\\*[A-Za-z0-9]{0,5})?\\)",
        rest in "[0-9A-Z()*.\r\n]{0,24}",
    ) {
        let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
        let text = format!("{sign}{whole}{fraction}{after}{rest}");
        if let Some((fast, general)) = crate::telegram::number_group_and_single(text.as_bytes()) {
            prop_assert_eq!(fast, general, "{:?}", text);
        } else {
            // Declined: only groups it cannot take (no digit, too long, no ')').
            let value = &text[..text.find([')', '*']).unwrap_or(text.len())];
            let digits = value.trim_start_matches(['-', '+']);
            prop_assert!(
                !digits.bytes().any(|b| b.is_ascii_digit()) || digits.len() > 18 || !text.contains(')'),
                "{:?}", text
            );
        }
    }

    #[test]
    fn decimals_round_trip(mantissa in -999_999_999_999i64..999_999_999_999, scale in 0u8..8) {
        let d = Decimal::new(mantissa, scale).expect("scale");
        let text = d.to_string();
        prop_assert_eq!(Decimal::parse(text.as_bytes()), Some(d));
    }
}

/// Found by `scripts/fuzz decoder`: nineteen digits in a row overflowed the
/// mantissa of the word-wise number path's byte-wise fallback (a panic in
/// builds with overflow checks). Such a value is not a number the crate
/// keeps exactly, so the line is kept with its text as sent; longer runs too.
#[test]
fn nineteen_digits_in_a_number_group_do_not_overflow() {
    for digits in [
        "9999999999999999999",
        "1234567890123456789",
        "99999999999999999999999",
        "999999999999999999",
        "9999999999.99999999",
    ] {
        for tail in ["*kWh)", ")"] {
            let body = format!("/ABC5\\2TEST\r\n\r\n1-0:1.8.1({digits}{tail}\r\n!\r\n");
            let t = Telegram::parse(body.as_bytes(), ParseOptions { check_crc: false })
                .expect("parses");
            assert_eq!(t.objects.len(), 1, "{digits}{tail}");
            let o = &t.objects[0];
            assert_eq!(o.raw, format!("({digits}{tail}").as_bytes());
            // Eighteen digits fit; nineteen do not and stay text.
            let fits = digits.bytes().filter(u8::is_ascii_digit).count() <= 18;
            assert_eq!(
                o.quantity().is_some(),
                fits,
                "{digits}{tail}: {:?}",
                o.value
            );
        }
    }
}
