use std::sync::Arc;

use jiff::tz::TimeZone;
use p1_core::Reading;
use p1_telegram::{ParseOptions, Telegram};

use super::*;

/// A DSMR 5 style telegram `secs` seconds after 2024-01-15 12:00 (Amsterdam, winter time):
/// import tariff 1 as `t1`, and a gas submeter on channel 1 with id `gas_id` reading `gas`
/// captured at `gas_secs`, when `gas` is given.
struct T<'a> {
    secs: i64,
    t1: &'a str,
    gas: Option<&'a str>,
    gas_secs: i64,
    gas_id: &'a str,
}

impl Default for T<'_> {
    fn default() -> Self {
        T {
            secs: 0,
            t1: "001000.000",
            gas: None,
            gas_secs: 0,
            gas_id: "4730303339303031373030343630313137",
        }
    }
}

fn tst(secs: i64) -> String {
    let base = jiff::civil::date(2024, 1, 15).at(12, 0, 0, 0);
    let t = base
        .checked_add(jiff::SignedDuration::from_secs(secs))
        .expect("in range");
    format!("{}W", t.strftime("%y%m%d%H%M%S"))
}

fn reading(t: &T<'_>) -> Reading {
    let mut text = format!(
        "/ISK5\\2M550T-1012\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0({})\r\n0-0:96.1.1(4530303434303037313331363130323137)\r\n1-0:1.8.1({}*kWh)\r\n1-0:1.8.2(000100.000*kWh)\r\n1-0:1.7.0(00.500*kW)\r\n",
        tst(t.secs),
        t.t1
    );
    if let Some(gas) = t.gas {
        text.push_str(&format!(
            "0-1:24.1.0(003)\r\n0-1:96.1.0({})\r\n0-1:24.2.1({})({gas}*m3)\r\n",
            t.gas_id,
            tst(t.gas_secs)
        ));
    }
    text.push_str("!\r\n");
    let telegram = Telegram::parse(text.as_bytes(), ParseOptions::default()).expect("parses");
    let tz = jiff::tz::db().get("Europe/Amsterdam").expect("zone");
    let received = telegram.meter_time(&tz).expect("meter time");
    Reading::from_telegram(
        Arc::from("home"),
        Arc::from("test"),
        &telegram,
        &tz,
        received,
    )
}

fn guard() -> SpikeGuard {
    SpikeGuard::new(GuardConfig::default())
}

fn reason(v: &Verdict) -> &'static str {
    match v {
        Verdict::Forward => "forward",
        Verdict::Reject(f) => f.reason,
        Verdict::NewBaseline(_) => "new_baseline",
    }
}

#[test]
fn steady_readings_pass_and_the_first_one_has_nothing_to_fail_against() {
    let mut g = guard();
    for (i, t1) in ["001000.000", "001000.000", "001000.002", "001000.010"]
        .iter()
        .enumerate()
    {
        let secs = 10 * i as i64;
        assert_eq!(
            g.check(&reading(&T {
                secs,
                t1,
                ..T::default()
            })),
            Verdict::Forward
        );
    }
    // Even an absurd first value passes: there is no previous one.
    let mut fresh = guard();
    let first = reading(&T {
        t1: "999999.999",
        ..T::default()
    });
    assert_eq!(fresh.check(&first), Verdict::Forward);
}

#[test]
fn a_zero_spike_is_held_back_and_the_next_good_reading_flows() {
    let mut g = guard();
    assert_eq!(g.check(&reading(&T::default())), Verdict::Forward);
    let zero = g.check(&reading(&T {
        secs: 10,
        t1: "000000.000",
        ..T::default()
    }));
    let Verdict::Reject(finding) = zero else {
        panic!("zero spike forwarded: {zero:?}");
    };
    assert_eq!(finding.reason, "backwards");
    assert_eq!(finding.register, "energy_import_tariff1");
    assert_eq!(finding.obis, "1-0:1.8.1");
    assert_eq!((finding.previous, finding.value), (1000.0, 0.0));
    // Compared with the last reading forwarded, not with the zero.
    let next = reading(&T {
        secs: 20,
        t1: "001000.001",
        ..T::default()
    });
    assert_eq!(g.check(&next), Verdict::Forward);
}

#[test]
fn strictly_less_is_backwards_equal_is_not() {
    let mut g = guard();
    assert_eq!(g.check(&reading(&T::default())), Verdict::Forward);
    let same = reading(&T {
        secs: 10,
        ..T::default()
    });
    assert_eq!(g.check(&same), Verdict::Forward);
    let less = reading(&T {
        secs: 20,
        t1: "000999.999",
        ..T::default()
    });
    assert_eq!(reason(&g.check(&less)), "backwards");
}

#[test]
fn a_jump_beyond_max_power_times_elapsed_plus_grace_is_implausible() {
    // 100 kW for 10 s + 60 s grace: 1.944 kWh.
    let mut g = guard();
    assert_eq!(g.check(&reading(&T::default())), Verdict::Forward);
    let ok = reading(&T {
        secs: 10,
        t1: "001001.900",
        ..T::default()
    });
    assert_eq!(g.check(&ok), Verdict::Forward);
    let spike = g.check(&reading(&T {
        secs: 20,
        t1: "099999.000",
        ..T::default()
    }));
    let Verdict::Reject(finding) = spike else {
        panic!("spike forwarded: {spike:?}");
    };
    assert_eq!(finding.reason, "implausible_jump");
    assert!(
        (finding.allowed - 100.0 * 70.0 / 3600.0).abs() < 1e-9,
        "{finding:?}"
    );
    // After an hour's gap (the gateway was down) 60 kWh is plausible at 100 kW.
    let later = reading(&T {
        secs: 10 + 3600,
        t1: "001061.900",
        ..T::default()
    });
    assert_eq!(g.check(&later), Verdict::Forward);
}

#[test]
fn the_bound_follows_the_configuration() {
    let mut g = SpikeGuard::new(GuardConfig {
        max_power_kw: 10.0,
        max_flow_m3_per_h: 25.0,
    });
    assert_eq!(g.check(&reading(&T::default())), Verdict::Forward);
    // 10 kW for 70 s: 0.194 kWh.
    let jump = reading(&T {
        secs: 10,
        t1: "001000.300",
        ..T::default()
    });
    assert_eq!(reason(&g.check(&jump)), "implausible_jump");
}

#[test]
fn a_replaced_meter_is_accepted_after_three_consistent_readings() {
    let mut g = guard();
    assert_eq!(g.check(&reading(&T::default())), Verdict::Forward);
    let at = |secs, t1| {
        reading(&T {
            secs,
            t1,
            ..T::default()
        })
    };
    assert_eq!(reason(&g.check(&at(10, "000005.000"))), "backwards");
    assert_eq!(reason(&g.check(&at(20, "000005.001"))), "backwards");
    let third = g.check(&at(30, "000005.002"));
    let Verdict::NewBaseline(finding) = third else {
        panic!("third consistent reading not accepted: {third:?}");
    };
    assert_eq!((finding.previous, finding.value), (1000.0, 5.002));
    // From now on the new totals are the baseline.
    assert_eq!(g.check(&at(40, "000005.003")), Verdict::Forward);
    assert_eq!(reason(&g.check(&at(50, "001000.000"))), "implausible_jump");
}

#[test]
fn inconsistent_or_zero_rejections_never_become_a_baseline() {
    let mut g = guard();
    assert_eq!(g.check(&reading(&T::default())), Verdict::Forward);
    let at = |secs, t1| {
        reading(&T {
            secs,
            t1,
            ..T::default()
        })
    };
    // A meter sending zeros for a while: never a new baseline.
    for i in 1..10 {
        assert_eq!(reason(&g.check(&at(10 * i, "000000.000"))), "backwards");
    }
    // Garbage that goes up and down: no two in a row agree.
    for (i, t1) in ["000500.000", "000400.000", "000600.000", "000300.000"]
        .iter()
        .enumerate()
    {
        assert_eq!(reason(&g.check(&at(100 + 10 * i as i64, t1))), "backwards");
    }
    // A zero between two consistent rejections restarts the count.
    assert_eq!(reason(&g.check(&at(200, "000005.000"))), "backwards");
    assert_eq!(reason(&g.check(&at(210, "000005.001"))), "backwards");
    assert_eq!(reason(&g.check(&at(220, "000000.000"))), "backwards");
    assert_eq!(reason(&g.check(&at(230, "000005.002"))), "backwards");
    assert_eq!(g.check(&at(240, "001000.100")), Verdict::Forward);
}

#[test]
fn submeters_are_guarded_per_channel_and_device() {
    let mut g = guard();
    let t = |secs, gas| T {
        secs,
        gas: Some(gas),
        gas_secs: secs,
        ..T::default()
    };
    assert_eq!(g.check(&reading(&t(0, "01234.567"))), Verdict::Forward);
    // Gas falls to zero while the electricity is fine: the whole reading is held back.
    let zero = g.check(&reading(&t(10, "00000.000")));
    let Verdict::Reject(finding) = zero else {
        panic!("gas zero spike forwarded: {zero:?}");
    };
    assert_eq!(
        (finding.register, finding.obis.as_str()),
        ("gas_volume", "0-1:24.2.1")
    );
    // 30 m³ in 20 s + grace is more than 25 m³/h allows.
    assert_eq!(
        reason(&g.check(&reading(&t(20, "01264.567")))),
        "implausible_jump"
    );
    // The submeter goes missing: its registers are not judged, the rest is.
    assert_eq!(
        g.check(&reading(&T {
            secs: 30,
            ..T::default()
        })),
        Verdict::Forward
    );
    // It returns lower: still backwards against the value last forwarded.
    assert_eq!(reason(&g.check(&reading(&t(40, "01000.000")))), "backwards");
    // A new gas meter (another equipment id) starts afresh.
    let replaced = T {
        gas_id: "4730303339303031373030343630319999",
        ..t(50, "00001.000")
    };
    assert_eq!(g.check(&reading(&replaced)), Verdict::Forward);
}

#[test]
fn hourly_gas_values_are_judged_by_their_capture_time() {
    // DSMR 4: the gas value changes once an hour although telegrams come every 10 s.
    let mut g = guard();
    let t = |secs, gas, gas_secs| T {
        secs,
        gas: Some(gas),
        gas_secs,
        ..T::default()
    };
    assert_eq!(
        g.check(&reading(&t(3590, "01234.000", 0))),
        Verdict::Forward
    );
    // 5 m³ in the hour (10 s of telegram time): plausible at 25 m³/h.
    assert_eq!(
        g.check(&reading(&t(3600, "01239.000", 3600))),
        Verdict::Forward
    );
}

#[test]
fn replayed_as_fast_as_possible_the_meter_clock_still_counts() {
    // A recording replayed at once: arrival times equal, meter times 1 h apart.
    let mut g = guard();
    let mut first = reading(&T::default());
    let mut second = reading(&T {
        secs: 3600,
        t1: "001050.000",
        ..T::default()
    });
    let now = jiff::Timestamp::now();
    first.received_at = now;
    second.received_at = now;
    assert_eq!(g.check(&first), Verdict::Forward);
    assert_eq!(g.check(&second), Verdict::Forward);
}

#[test]
fn wh_registers_are_compared_in_kwh_and_veitur_heat_energy_is_not_guarded() {
    assert_eq!(
        classify("energy_import_total", None, Some("Wh")),
        Some((Quantity::Energy, 0.001))
    );
    assert_eq!(
        classify("heat_energy", Some(SubmeterKind::Heat), Some("GJ")),
        Some((Quantity::Energy, 1e6 / 3600.0))
    );
    assert_eq!(
        classify("heat_energy", Some(SubmeterKind::HotWater), Some("Wh")),
        None
    );
    assert_eq!(
        classify("heat_energy_2", Some(SubmeterKind::HotWater), Some("Wh")),
        None
    );
    assert_eq!(
        classify("hot_water_volume", Some(SubmeterKind::HotWater), Some("m3")),
        Some((Quantity::Volume, 1.0))
    );
    assert_eq!(classify("power_import", None, Some("kW")), None);
    assert_eq!(classify("power_failures", None, None), None);
}

#[test]
fn every_fixture_replayed_as_one_meter_passes() {
    // The fixtures are 23 different meters; the device identity in each register's key keeps
    // them apart, so the daemon's replay tests see every one of them.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/telegrams");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut g = guard();
    let tz = TimeZone::UTC;
    let mut held = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).expect("read");
        let Ok(telegram) = Telegram::parse(&bytes, ParseOptions::default()) else {
            continue;
        };
        let r = Reading::from_telegram(
            Arc::from("home"),
            Arc::from("test"),
            &telegram,
            &tz,
            jiff::Timestamp::now(),
        );
        if let v @ Verdict::Reject(_) = g.check(&r) {
            held.push((
                file.file_name().map(|n| n.to_string_lossy().into_owned()),
                v,
            ));
        }
    }
    assert!(held.is_empty(), "{held:#?}");
}

#[test]
fn every_tariff_register_is_guarded_export_three_and_four_included() {
    for n in 1..=4 {
        for way in ["import", "export"] {
            let name = format!("energy_{way}_tariff{n}");
            assert_eq!(
                super::classify(&name, None, Some("kWh")).map(|(_, f)| f),
                Some(1.0),
                "{name}"
            );
        }
    }
}
