//! `p1gw parse` against the docs/contracts.md §3/§4 contract.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn p1gw(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start p1gw");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("p1gw output")
}

fn lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn design_example_comes_out_as_documented() {
    let out = p1gw(
        &[
            "parse",
            "fixtures/telegrams/iceland_veitur_iskra_ie5e_heat_submeter_raw.txt",
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = lines(&out.stdout);
    assert_eq!(v.len(), 1);
    let t = &v[0];
    assert_eq!(
        t["source"],
        "fixtures/telegrams/iceland_veitur_iskra_ie5e_heat_submeter_raw.txt"
    );
    assert_eq!(t["header"], "ISk5\\2MIE5E-200");
    assert_eq!(t["crc"], "absent");
    assert_eq!(t["meter_time"], "2024-02-12T22:21:14Z");
    let objects = t["objects"].as_array().expect("objects");
    let find = |obis: &str| {
        objects
            .iter()
            .find(|o| o["obis"] == obis)
            .cloned()
            .expect(obis)
    };
    assert_eq!(
        find("1-0:1.8.0"),
        serde_json::json!({"obis":"1-0:1.8.0","name":"energy_import_total","value":1988.284,"unit":"kWh","raw":"(001988.284*kWh)"})
    );
    assert_eq!(
        find("0-1:24.2.1"),
        serde_json::json!({"obis":"0-1:24.2.1","channel":1,"name":"hot_water_volume","value":366.475,"unit":"m3","raw":"(0366.475*m3)"})
    );
    assert_eq!(
        find("0-1:24.2.10"),
        serde_json::json!({"obis":"0-1:24.2.10","channel":1,"value":0,"raw":"(0000000)"})
    );
    // The missing '!' line is said, not hidden.
    assert!(String::from_utf8_lossy(&out.stderr).contains("no '!' end line"));
}

#[test]
fn directory_is_read_sorted_and_bad_telegrams_make_exit_65() {
    let out = p1gw(&["parse", "fixtures/telegrams"], None);
    assert_eq!(out.status.code(), Some(65));
    let v = lines(&out.stdout);
    assert_eq!(v.len(), 23, "27 fixtures, 4 with a CRC mismatch");
    let sources: Vec<&str> = v
        .iter()
        .map(|t| t["source"].as_str().expect("source"))
        .collect();
    let mut sorted = sources.clone();
    sorted.sort();
    assert_eq!(sources, sorted);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "fixtures/telegrams/netherlands_sagemcom_t210d_corrupt.txt: offset 0: CRC mismatch: telegram says 6D8C, computed 8BDC"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("CRC mismatch").count(), 4, "{stderr}");
}

#[test]
fn no_crc_prints_mismatching_telegrams_too() {
    let out = p1gw(
        &[
            "parse",
            "--no-crc",
            "fixtures/telegrams/dsmr502_spec_example.txt",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let v = lines(&out.stdout);
    assert_eq!(v[0]["crc"], "mismatch");
}

#[test]
fn stdin_with_garbage_between_telegrams_and_tz_override() {
    let mut input = b"\x00\xffgarbage m3/h\r\n".to_vec();
    input.extend(
        std::fs::read(root().join("fixtures/telegrams/netherlands_kaifa_dsmr42.txt"))
            .expect("fixture"),
    );
    input.extend_from_slice(b"noise\n");
    input.extend(
        std::fs::read(root().join("fixtures/telegrams/iceland_veitur_iskra_ie5e_antonp1.txt"))
            .expect("fixture"),
    );
    let out = p1gw(&["parse", "--tz", "UTC", "-"], Some(&input));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = lines(&out.stdout);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["source"], "-");
    // 161113205757W read as UTC instead of Amsterdam time.
    assert_eq!(v[0]["meter_time"], "2016-11-13T20:57:57Z");
    assert_eq!(v[1]["meter_time"], "2023-05-10T15:52:37Z");
}

#[test]
fn default_zone_follows_the_meter_country() {
    let out = p1gw(
        &["parse", "fixtures/telegrams/netherlands_kaifa_dsmr42.txt"],
        None,
    );
    assert_eq!(lines(&out.stdout)[0]["meter_time"], "2016-11-13T19:57:57Z");
}

#[test]
fn truncated_and_oversize_frames_name_offset_and_reason() {
    let mut input = b"/ISk5\\2MIE5E-200\r\n1-0:1.8.0(000002.331*kWh)\r\n".to_vec();
    input.extend(std::iter::repeat_n(b"0-0:96.13.0(30313233)\r\n".to_vec(), 10).flatten());
    let out = p1gw(&["parse", "--max-telegram-bytes", "128", "-"], Some(&input));
    assert_eq!(out.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("-: telegram at offset 0 exceeds the 128-byte limit"),
        "{stderr}"
    );

    let cut = b"/X5\r\n\r\n1-0:1.8.0(0000";
    let out = p1gw(&["parse"], Some(cut));
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated telegram"));
}

/// Issue #3's "a 1 GB file with no '/' in it": a GiB of bytes that never start a telegram
/// streams through `p1gw parse -` in bounded memory, and what comes after it still parses.
#[test]
fn a_gibibyte_without_a_frame_start_streams_through_in_flat_memory() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .args(["parse", "-"])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start p1gw");
    let pid = child.id();
    let peak_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("/proc status")
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .expect("VmHWM")
    };
    let mut input = child.stdin.take().expect("stdin");
    // No '/' and no line end: nothing that could start a frame.
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..1024 {
        input.write_all(&chunk).expect("write stdin");
    }
    // The pipe holds at most 64 KiB: p1gw has read nearly all of the GiB by now.
    let peak = peak_kib();
    input
        .write_all(b"\r\n/X5\r\n\r\n1-0:1.8.0(000002.331*kWh)\r\n!\r\n")
        .expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("p1gw output");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB after a GiB of input");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readings = lines(&out.stdout);
    assert_eq!(readings.len(), 1, "the telegram after the GiB");
    assert_eq!(readings[0]["objects"][0]["value"], 2.331);
}

#[test]
fn missing_file_is_66_and_bad_usage_is_64() {
    let out = p1gw(&["parse", "no/such/file.txt"], None);
    assert_eq!(out.status.code(), Some(66));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open no/such/file.txt"), "{stderr}");
    assert!(!stderr.contains("panicked"));

    assert_eq!(
        p1gw(&["parse", "--format", "xml"], None).status.code(),
        Some(64)
    );
    assert_eq!(
        p1gw(&["parse", "--tz", "Mars/Olympus"], None).status.code(),
        Some(64)
    );
    assert_eq!(p1gw(&["frobnicate"], None).status.code(), Some(64));
}

#[test]
fn table_format_is_readable() {
    let out = p1gw(
        &[
            "parse",
            "--format",
            "table",
            "fixtures/telegrams/iceland_veitur_iskra_ie5e_heat_submeter_raw.txt",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("channel 1: hot_water (no device type)"),
        "{text}"
    );
    assert!(text.contains("hot_water_volume"));
    assert!(text.contains("366.475"));
    // Veitur's 0-1:24.2.10 has no name: marked, with the key that names it.
    assert!(text.contains("? obis_0_1_24_2_10"), "{text}");
    assert!(
        text.contains("? = a code p1gw has no name for (0-1:24.2.10)")
            && text.contains("[meter.codes.\"0-1:24.2.10\"]"),
        "{text}"
    );
}

#[test]
fn dsmr_without_crc_and_a_contradicting_dst_flag_are_warned_about_without_failing() {
    // A Swedish Kaifa flags `W` in May; this DSMR 4.2 telegram also lost its CRC.
    let telegram = b"/KFM5KAIFA-METER\r\n\r\n1-3:0.2.8(42)\r\n0-0:1.0.0(230517120000W)\r\n\
1-0:1.8.1(000001.000*kWh)\r\n!\r\n";
    let mut input = telegram.to_vec();
    input.extend_from_slice(telegram);
    let out = p1gw(&["parse", "--tz", "Europe/Stockholm", "-"], Some(&input));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v = lines(&out.stdout);
    assert_eq!(v.len(), 2, "{stderr}");
    // The zone rules: 12:00 local summer time in Stockholm is 10:00 UTC.
    assert_eq!(v[0]["meter_time"], "2023-05-17T10:00:00Z");
    assert!(
        stderr.contains(
            "-: offset 0: warning: a DSMR 4.2 telegram (1-3:0.2.8(42)) without the CRC its standard requires"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("-: offset 0: warning: the meter's time is flagged W (winter), which Europe/Stockholm contradicts"),
        "{stderr}"
    );
    assert!(
        stderr.contains("-: warning: 2 DSMR 4/5 telegrams without a CRC (the first at offset 0)"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        4,
        "each said once, then counted: {stderr}"
    );
    // A telegram with its CRC and a flag that fits says nothing.
    let quiet = p1gw(
        &["parse", "fixtures/telegrams/netherlands_kaifa_dsmr42.txt"],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");
}
