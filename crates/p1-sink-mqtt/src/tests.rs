use std::sync::Arc;
use std::time::Duration;

use p1_core::Reading;
use serde_json::Value;

use crate::MqttSettings;
use crate::connection::{Bucket, describe_v5, packet_size_v5};
use crate::discovery::{Discovery, EXPIRE_READINGS, maker, spec};
use crate::encode::{Message, Publisher, decode_record, encode_record, format_number, values};

/// A Veitur-like telegram: energy register `kwh`, heat/hot-water submeter on channel 1.
fn veitur(kwh: f64, with_heat: bool) -> String {
    let mut t = format!(
        "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(86818632)\r\n1-0:0.9.1(211309)\r\n1-0:0.9.2(240501)\r\n\
         0-0:96.1.1(36303836383138363631)\r\n1-0:1.7.0(00.588*kW)\r\n1-0:1.8.0({kwh:010.3}*kWh)\r\n\
         1-0:2.8.0(000000.000*kWh)\r\n1-0:32.7.0(231.3*V)\r\n"
    );
    if with_heat {
        t.push_str(
            "0-1:24.2.1(0366.475*m3)\r\n0-1:24.2.2(0000.090*m3/h)\r\n0-1:24.2.3(000074.8*degC)\r\n\
             0-1:24.2.4(000031.3*degC)\r\n0-1:24.2.5(0019.078*Wh)\r\n",
        );
    }
    t.push_str("!\r\n");
    t
}

fn reading_at(text: &str, meter: &str, at_ms: i64) -> Reading {
    let tz = jiff::tz::TimeZone::UTC;
    let t = p1_telegram::Telegram::parse(text.as_bytes(), p1_telegram::ParseOptions::default())
        .expect("telegram");
    Reading::from_telegram(
        Arc::from(meter),
        Arc::from("test"),
        &t,
        &tz,
        jiff::Timestamp::from_millisecond(at_ms).expect("time"),
    )
}

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/telegrams")
        .join(name);
    std::fs::read_to_string(path).expect("fixture")
}

fn settings() -> MqttSettings {
    let mut s = MqttSettings::new("127.0.0.1", 1883, "home");
    s.sw_version = "test".to_owned();
    s
}

fn topics(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.topic.as_str()).collect()
}

#[test]
fn records_round_trip_and_broken_ones_are_errors() {
    let messages = vec![
        Message {
            topic: "home/state".to_owned(),
            payload: b"{\"a\":1}".to_vec(),
            retain: false,
        },
        Message {
            topic: "home/gas_1/gas_volume".to_owned(),
            payload: Vec::new(),
            retain: true,
        },
    ];
    let record = encode_record(&messages);
    assert_eq!(decode_record(&record), Ok(messages));
    assert_eq!(decode_record(&encode_record(&[])), Ok(Vec::new()));
    assert!(decode_record(&[]).is_err());
    assert!(decode_record(&[9, 0]).is_err(), "unknown version");
    for cut in 1..record.len() - 1 {
        let err = decode_record(&record[..record.len() - cut]).expect_err("truncated");
        assert!(err.starts_with("record truncated in"), "{cut}: {err}");
    }
}

#[test]
fn value_topics_use_canonical_names_units_and_submeter_paths() {
    let r = reading_at(&veitur(1988.284, true), "home", 0);
    let items = values(&r);
    let got: Vec<(&str, &str)> = items
        .iter()
        .map(|v| (v.path.as_str(), v.payload.as_str()))
        .collect();
    for expected in [
        ("energy_import_total", "1988.284"),
        ("power_import", "0.588"),
        ("voltage_l1", "231.3"),
        ("hot_water_1/hot_water_volume", "366.475"),
        ("hot_water_1/heat_flow", "0.09"),
        ("hot_water_1/heat_supply_temperature", "74.8"),
        // Veitur's heat "Wh": as sent, not scaled (docs/markets.md §f).
        ("hot_water_1/heat_energy", "19.078"),
        ("meter_time", "2024-05-01T21:13:09Z"),
    ] {
        assert!(got.contains(&expected), "{expected:?} not in {got:?}");
    }
    // W → kW: Aidon sends W and Wh.
    let aidon = reading_at(&fixture("sweden_aidon_6560_ct_meter_spec.txt"), "se", 0);
    let items = values(&aidon);
    let power = items
        .iter()
        .find(|v| v.path == "power_import")
        .expect("power_import");
    assert_eq!(power.unit.as_deref(), Some("W"));
    let raw: f64 = aidon
        .get("power_import")
        .and_then(|m| m.value.as_f64())
        .expect("W");
    assert_eq!(power.payload, format_number(raw / 1000.0));
    assert_eq!(format_number(-0.0), "0");
}

#[test]
fn min_interval_limits_each_topic_by_the_readings_times() {
    let mut s = settings();
    s.min_interval = Duration::from_secs(5);
    s.discovery_prefix = None;
    let mut p = Publisher::new(Arc::new(s), None);
    let mut published = Vec::new();
    for i in 0..12 {
        let r = reading_at(&veitur(f64::from(i), false), "home", i64::from(i) * 1000);
        let m = p.messages(&r);
        if topics(&m).contains(&"home/state") {
            published.push(i);
        }
    }
    assert_eq!(
        published,
        [0, 5, 10],
        "one state message per 5 s of readings"
    );
    // Per topic, per meter: another meter is not held back by this one.
    let other = reading_at(&veitur(1.0, false), "cabin", 11_000);
    assert!(topics(&p.messages(&other)).contains(&"cabin/state"));
}

#[test]
fn only_on_change_skips_unchanged_values_but_never_the_state() {
    let mut s = settings();
    s.only_on_change = true;
    let mut p = Publisher::new(Arc::new(s), None);
    let first = p.messages(&reading_at(&veitur(1.0, false), "home", 0));
    assert!(topics(&first).contains(&"home/voltage_l1"));
    assert!(topics(&first).contains(&"home/energy_import_total"));
    let second = p.messages(&reading_at(&veitur(2.0, false), "home", 1000));
    let t = topics(&second);
    assert!(t.contains(&"home/state"));
    assert!(t.contains(&"home/energy_import_total"), "changed: {t:?}");
    assert!(!t.contains(&"home/voltage_l1"), "unchanged: {t:?}");
    assert!(!t.contains(&"home/power_import"), "unchanged: {t:?}");
    // Without value topics, only the state.
    let mut s = settings();
    s.value_topics = false;
    let mut p = Publisher::new(Arc::new(s), None);
    let only = p.messages(&reading_at(&veitur(1.0, true), "home", 0));
    assert_eq!(topics(&only), ["home/state"]);
    let state: Value = serde_json::from_slice(&only[0].payload).expect("json");
    assert_eq!(state["meter"], "home");
}

#[test]
fn the_home_assistant_mapping_follows_field_notes_f() {
    let check =
        |name: &str, unit: Option<&str>, dc: Option<&str>, sc: Option<&str>, u: Option<&str>| {
            let s = spec(name, unit, true).expect(name);
            assert_eq!(
                (s.device_class, s.state_class, s.unit.as_deref()),
                (dc, sc, u),
                "{name} in {unit:?}"
            );
        };
    let ti = Some("total_increasing");
    let m = Some("measurement");
    check(
        "energy_import_total",
        Some("kWh"),
        Some("energy"),
        ti,
        Some("kWh"),
    );
    check(
        "energy_import_tariff2",
        Some("Wh"),
        Some("energy"),
        ti,
        Some("kWh"),
    );
    check(
        "energy_export_tariff1",
        Some("kWh"),
        Some("energy"),
        ti,
        Some("kWh"),
    );
    check(
        "reactive_energy_import_total",
        Some("kvarh"),
        Some("reactive_energy"),
        ti,
        Some("kvarh"),
    );
    check("power_import_l2", Some("W"), Some("power"), m, Some("kW"));
    check(
        "reactive_power_export_l3",
        Some("kVAr"),
        Some("reactive_power"),
        m,
        Some("kvar"),
    );
    check(
        "apparent_power_import",
        Some("kVA"),
        Some("apparent_power"),
        m,
        Some("kVA"),
    );
    check("voltage_l1", Some("V"), Some("voltage"), m, Some("V"));
    check("current_l3", Some("A"), Some("current"), m, Some("A"));
    check("frequency", Some("Hz"), Some("frequency"), m, Some("Hz"));
    check("power_factor_l1", None, Some("power_factor"), m, None);
    check("power_failures", None, None, ti, None);
    check("gas_volume", Some("m3"), Some("gas"), ti, Some("m³"));
    check("water_volume", Some("m3"), Some("water"), ti, Some("m³"));
    check(
        "hot_water_volume",
        Some("m3"),
        Some("water"),
        ti,
        Some("m³"),
    );
    check("heat_energy", Some("GJ"), Some("energy"), ti, Some("GJ"));
    check("heat_energy", Some("Wh"), None, m, Some("Wh"));
    check("heat_energy_2", Some("Wh"), None, m, Some("Wh"));
    check(
        "heat_flow",
        Some("m3/h"),
        Some("volume_flow_rate"),
        m,
        Some("m³/h"),
    );
    check(
        "heat_supply_temperature",
        Some("degC"),
        Some("temperature"),
        m,
        Some("°C"),
    );
    check(
        "limiter_threshold",
        Some("kW"),
        Some("power"),
        m,
        Some("kW"),
    );
    check(
        "limiter_threshold",
        Some("A"),
        Some("current"),
        m,
        Some("A"),
    );
    check(
        "limiter_threshold",
        Some("kVA"),
        Some("apparent_power"),
        m,
        Some("kVA"),
    );

    let tariff = spec("tariff_indicator", None, true).expect("tariff");
    assert_eq!(tariff.device_class, Some("enum"));
    assert!(tariff.diagnostic);
    assert!(tariff.options.is_some_and(|o| o.contains(&"2")));
    let id = spec("equipment_id", None, false).expect("id");
    assert_eq!((id.device_class, id.diagnostic), (None, true));
    assert!(spec("power_failure_log", None, false).is_none());
    // A fuse limit is a setting, not a live current (it used to match `current_l…` first).
    for limit in [
        "current_limit",
        "current_limit_l1",
        "current_limit_l2",
        "current_limit_l3",
    ] {
        let s = spec(limit, Some("A"), true).expect("limit");
        assert!(s.diagnostic, "{limit} is diagnostic");
        assert_eq!(s.device_class, Some("current"), "{limit}");
    }
    assert!(
        !spec("current_l1", Some("A"), true)
            .expect("current")
            .diagnostic
    );
}

#[test]
fn maker_codes_give_manufacturer_and_model() {
    let cases = [
        ("ISk5\\2MIE5E-200", "Iskraemeco", "IE.5"),
        ("ISk5\\2MIE5T-200", "Iskraemeco", "IE.5"),
        ("ISK5\\2M550T-1012", "Iskraemeco", "AM550"),
        ("ISk5\\2MT382-1000", "Iskraemeco", "MT382"),
        ("KFM5KAIFA-METER", "Kaifa", "KAIFA-METER"),
        ("Ene5\\T210-D ESMR5.0", "Sagemcom", "T210-D ESMR5.0"),
        ("FLU5\\253769484_A", "Fluvius", "53769484_A"),
        ("Lux5\\253694471_M", "Sagemcom (Luxmetering)", "53694471_M"),
        ("ADN9 6534", "Aidon", "6534"),
        ("ELL5\\253833635_A", "Landis+Gyr", "53833635_A"),
        ("ESY5Q3DA1004 V3.04", "EasyMeter", "Q3DA1004 V3.04"),
        ("NWA-WARMTELINK", "Warmtelink", "WARMTELINK"),
        ("WARMTELINK-VI\\", "Warmtelink", "VI"),
        ("XYZ5ABC", "XYZ5ABC", "XYZ5ABC"),
    ];
    for (header, company, model) in cases {
        assert_eq!(
            maker(header),
            (company.to_owned(), model.to_owned()),
            "{header}"
        );
    }
}

fn config_of(d: &Discovery, object: &str) -> Option<Value> {
    let topic = format!("homeassistant/sensor/p1gw_home/{object}/config");
    d.configs()
        .get(&topic)
        .map(|p| serde_json::from_str(p).expect("json"))
}

#[test]
fn discovery_builds_devices_and_removes_vanished_values() {
    let s = settings();
    let (mut d, rx) = Discovery::new(&s, "homeassistant");
    let r = reading_at(&veitur(5.0, true), "home", 0);
    d.observe(&r, &values(&r));

    let energy = config_of(&d, "energy_import_total").expect("energy");
    assert_eq!(energy["device_class"], "energy");
    assert_eq!(energy["state_class"], "total_increasing");
    assert_eq!(energy["unit_of_measurement"], "kWh");
    assert_eq!(energy["state_topic"], "p1gw/home/energy_import_total");
    // Unavailable when the gateway is gone or this meter is silent.
    assert_eq!(
        energy["availability"],
        serde_json::json!([{"topic": "p1gw/home/status"}, {"topic": "p1gw/home/availability"}])
    );
    assert_eq!(energy["availability_mode"], "all");
    assert!(
        energy.get("availability_topic").is_none(),
        "one or the other, not both"
    );
    assert_eq!(energy["unique_id"], "p1gw_home_energy_import_total");
    assert_eq!(energy["device"]["manufacturer"], "Iskraemeco");
    assert_eq!(energy["device"]["model"], "IE.5");
    assert_eq!(energy["device"]["serial_number"], "6086818661");

    let water = config_of(&d, "hot_water_1_hot_water_volume").expect("hot water");
    assert_eq!(water["device_class"], "water");
    assert_eq!(water["state_class"], "total_increasing");
    assert_eq!(water["unit_of_measurement"], "m³");
    assert_eq!(water["device"]["identifiers"][0], "p1gw_home_hot_water_1");
    assert_eq!(water["device"]["via_device"], "p1gw_home");
    let heat = config_of(&d, "hot_water_1_heat_energy").expect("heat");
    assert!(heat.get("device_class").is_none(), "{heat}");
    assert_eq!(heat["state_class"], "measurement");
    let time = config_of(&d, "meter_time").expect("meter_time");
    assert_eq!(time["device_class"], "timestamp");
    assert_eq!(time["entity_category"], "diagnostic");

    // The heat submeter goes away: its entities survive EXPIRE_READINGS - 1 readings.
    assert!(rx.has_changed().expect("sender"));
    for i in 1..EXPIRE_READINGS {
        let r = reading_at(&veitur(5.0, false), "home", i64::from(i));
        d.observe(&r, &values(&r));
        assert!(
            config_of(&d, "hot_water_1_hot_water_volume").is_some(),
            "{i}"
        );
    }
    let r = reading_at(&veitur(5.0, false), "home", 99);
    d.observe(&r, &values(&r));
    assert!(config_of(&d, "hot_water_1_hot_water_volume").is_none());
    assert!(config_of(&d, "energy_import_total").is_some());
}

#[test]
fn gas_and_water_submeters_get_their_classes() {
    let s = settings();
    let (mut d, _rx) = Discovery::new(&s, "homeassistant");
    let r = reading_at(&fixture("belgium_fluvius_emucs_gas_water.txt"), "home", 0);
    d.observe(&r, &values(&r));
    let gas = config_of(&d, "gas_1_gas_volume").expect("gas");
    assert_eq!(
        (
            &gas["device_class"],
            &gas["state_class"],
            &gas["unit_of_measurement"]
        ),
        (&"gas".into(), &"total_increasing".into(), &"m³".into())
    );
    let water = config_of(&d, "water_2_water_volume").expect("water");
    assert_eq!(water["device_class"], "water");
    assert_eq!(water["unit_of_measurement"], "m³");
    let tariff = config_of(&d, "tariff_indicator").expect("tariff");
    assert_eq!(tariff["device_class"], "enum");
    assert_eq!(tariff["entity_category"], "diagnostic");
    let t1 = config_of(&d, "energy_import_tariff1").expect("tariff 1");
    assert_eq!(t1["device"]["manufacturer"], "Fluvius");
}

#[tokio::test(start_paused = true)]
async fn the_backlog_bucket_allows_a_second_s_burst_then_the_rate() {
    let start = tokio::time::Instant::now();
    let mut b = Bucket::new(10, start);
    let burst = (0..20).filter(|_| b.try_take(start)).count();
    assert_eq!(burst, 10, "one second's worth at once");
    assert_eq!(b.next_at(), start + Duration::from_millis(100));
    tokio::time::advance(Duration::from_secs(2)).await;
    let now = tokio::time::Instant::now();
    let later = (0..50).filter(|_| b.try_take(now)).count();
    assert_eq!(later, 10, "never more than the bucket holds");
    let mut taken = 0;
    for _ in 0..30 {
        tokio::time::sleep_until(b.next_at()).await;
        assert!(b.try_take(tokio::time::Instant::now()));
        taken += 1;
    }
    let elapsed = tokio::time::Instant::now() - now;
    assert_eq!(taken, 30);
    assert!(
        (Duration::from_millis(2990)..=Duration::from_millis(3010)).contains(&elapsed),
        "30 messages at 10/s take 3 s, took {elapsed:?}"
    );
}

#[test]
fn settings_print_no_secrets() {
    let mut s = settings();
    s.username = Some("gw".to_owned());
    s.password = Some("hunter2".to_owned());
    s.tls = Some(crate::TlsSettings {
        ca_pem: None,
        client: Some(crate::ClientIdentity {
            cert_pem: b"cert".to_vec(),
            key_pem: b"very secret key".to_vec(),
        }),
    });
    let shown = format!("{s:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("very secret"),
        "{shown}"
    );
    assert!(
        crate::build(s.clone()).is_err(),
        "no certificate in the PEM"
    );
    let mut bad = settings();
    bad.backlog_rate = 0;
    assert!(crate::build(bad).is_err());
    assert!(crate::build(settings()).is_ok());
    assert_eq!(settings().status_topic(), "p1gw/home/status");
}

/// What Home Assistant's MQTT sensor documentation allows: the configuration keys of an MQTT
/// sensor and of its device, the sensor device classes with the units each accepts, and the
/// state classes (HA docs: integrations/sensor.mqtt, integrations/sensor#device-class,
/// integrations/mqtt#discovery-messages; 2025.x).
mod ha_schema {
    use serde_json::Value;

    const SENSOR_KEYS: &[&str] = &[
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "default_entity_id",
        "device",
        "device_class",
        "enabled_by_default",
        "encoding",
        "entity_category",
        "entity_picture",
        "expire_after",
        "force_update",
        "icon",
        "json_attributes_template",
        "json_attributes_topic",
        "last_reset_value_template",
        "name",
        "object_id",
        "options",
        "origin",
        "payload_available",
        "payload_not_available",
        "platform",
        "qos",
        "state_class",
        "state_topic",
        "suggested_display_precision",
        "unique_id",
        "unit_of_measurement",
        "value_template",
    ];
    const DEVICE_KEYS: &[&str] = &[
        "configuration_url",
        "connections",
        "hw_version",
        "identifiers",
        "manufacturer",
        "model",
        "model_id",
        "name",
        "serial_number",
        "suggested_area",
        "sw_version",
        "via_device",
    ];

    /// The units HA accepts for a device class (`None` in the list: no unit).
    fn units(class: &str) -> Option<&'static [&'static str]> {
        Some(match class {
            "energy" => &[
                "Wh", "kWh", "MWh", "GWh", "TWh", "MJ", "GJ", "cal", "kcal", "Mcal", "Gcal",
            ],
            "gas" => &["m³", "ft³", "CCF", "L"],
            "water" => &["L", "gal", "m³", "ft³", "CCF"],
            "power" => &["mW", "W", "kW", "MW", "GW", "TW"],
            "reactive_power" => &["mvar", "var", "kvar"],
            "reactive_energy" => &["varh", "kvarh"],
            "apparent_power" => &["mVA", "VA", "kVA"],
            "voltage" => &["µV", "mV", "V", "kV", "MV"],
            "current" => &["mA", "A"],
            "frequency" => &["Hz", "kHz", "MHz", "GHz"],
            "power_factor" => &["%", ""],
            "volume_flow_rate" => &[
                "m³/h", "m³/s", "ft³/min", "L/h", "L/min", "L/s", "gal/min", "mL/s",
            ],
            "temperature" => &["°C", "°F", "K"],
            "duration" => &["d", "h", "min", "s", "ms"],
            "timestamp" | "enum" => &[""],
            _ => return None,
        })
    }

    /// Every violation of the schema in one discovery payload.
    pub(super) fn violations(topic: &str, payload: &Value) -> Vec<String> {
        let mut bad = Vec::new();
        let Some(obj) = payload.as_object() else {
            return vec![format!("{topic}: not a JSON object")];
        };
        for key in obj.keys() {
            if !SENSOR_KEYS.contains(&key.as_str()) {
                bad.push(format!("{topic}: unknown sensor key {key:?}"));
            }
        }
        for key in ["unique_id", "state_topic", "device"] {
            if !obj.contains_key(key) {
                bad.push(format!("{topic}: missing {key}"));
            }
        }
        // HA: `availability` (a list of {topic, …}) or `availability_topic`, not both; with
        // the list, `availability_mode` is all, any or latest.
        match (obj.get("availability"), obj.get("availability_topic")) {
            (Some(_), Some(_)) => {
                bad.push(format!("{topic}: both availability and availability_topic"));
            }
            (None, None) => bad.push(format!("{topic}: missing availability")),
            (Some(list), None) => {
                let topics_ok = list.as_array().is_some_and(|l| {
                    !l.is_empty()
                        && l.iter()
                            .all(|a| a.get("topic").and_then(Value::as_str).is_some())
                });
                if !topics_ok {
                    bad.push(format!("{topic}: availability is not a list of topics"));
                }
                if obj
                    .get("availability_mode")
                    .and_then(Value::as_str)
                    .is_some_and(|m| !["all", "any", "latest"].contains(&m))
                {
                    bad.push(format!("{topic}: bad availability_mode"));
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(device) = obj.get("device").and_then(Value::as_object) {
            for key in device.keys() {
                if !DEVICE_KEYS.contains(&key.as_str()) {
                    bad.push(format!("{topic}: unknown device key {key:?}"));
                }
            }
            if device
                .get("identifiers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                bad.push(format!("{topic}: device without identifiers"));
            }
        }
        let unit = obj
            .get("unit_of_measurement")
            .and_then(Value::as_str)
            .unwrap_or("");
        let state_class = obj.get("state_class").and_then(Value::as_str);
        if let Some(sc) = state_class
            && !["measurement", "total", "total_increasing"].contains(&sc)
        {
            bad.push(format!("{topic}: unknown state_class {sc:?}"));
        }
        if let Some(class) = obj.get("device_class").and_then(Value::as_str) {
            match units(class) {
                None => bad.push(format!("{topic}: unknown device_class {class:?}")),
                Some(allowed) if !allowed.contains(&unit) => {
                    bad.push(format!("{topic}: unit {unit:?} not allowed for {class}"));
                }
                Some(_) => {}
            }
            // HA refuses `measurement` for the accumulating classes, and any state class for
            // timestamps and enums.
            if ["energy", "gas", "water", "reactive_energy"].contains(&class)
                && !matches!(state_class, Some("total" | "total_increasing"))
            {
                bad.push(format!(
                    "{topic}: {class} needs state_class total(_increasing)"
                ));
            }
            if ["timestamp", "enum"].contains(&class) && state_class.is_some() {
                bad.push(format!("{topic}: {class} takes no state_class"));
            }
            if class == "enum" && !obj.get("options").is_some_and(Value::is_array) {
                bad.push(format!("{topic}: enum without options"));
            }
        }
        if let Some(p) = obj.get("suggested_display_precision")
            && !p.is_u64()
        {
            bad.push(format!(
                "{topic}: suggested_display_precision {p} is not a whole number"
            ));
        }
        if let Some(cat) = obj.get("entity_category").and_then(Value::as_str)
            && cat != "diagnostic"
            && cat != "config"
        {
            bad.push(format!("{topic}: entity_category {cat:?}"));
        }
        bad
    }
}

/// Discovery for the three kinds of meter the issue names (Veitur with its hot-water/heat
/// submeter, a Dutch DSMR 5 with gas, a Belgian e-MUCS with gas and water), and then for every
/// fixture telegram, against HA's documented schema; and the Energy dashboard's picks are there
/// with the classes it needs.
#[test]
fn discovery_payloads_follow_home_assistants_schema() {
    // The checker itself catches what HA would refuse.
    let wrong = serde_json::json!({
        "unique_id": "x", "state_topic": "t", "availability_topic": "a",
        "device": {"identifiers": ["d"], "colour": "red"},
        "device_class": "energy", "state_class": "measurement", "unit_of_measurement": "kW",
        "suggested_display_precision": 1.5, "unit": "kWh",
    });
    assert_eq!(
        ha_schema::violations("t", &wrong).len(),
        5,
        "{:?}",
        ha_schema::violations("t", &wrong)
    );
    let mut all = vec![("veitur".to_owned(), veitur(5.0, true))];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/telegrams");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    names.sort();
    for name in names {
        let text = fixture(&name);
        all.push((name, text));
    }
    let mut checked = 0;
    for (name, text) in &all {
        let Ok(t) = p1_telegram::Telegram::parse(
            text.as_bytes(),
            p1_telegram::ParseOptions { check_crc: false },
        ) else {
            continue; // the corrupt fixture
        };
        let r = Reading::from_telegram(
            Arc::from("home"),
            Arc::from("test"),
            &t,
            &jiff::tz::TimeZone::UTC,
            jiff::Timestamp::from_millisecond(0).expect("time"),
        );
        let s = settings();
        let (mut d, _rx) = Discovery::new(&s, "homeassistant");
        d.observe(&r, &values(&r));
        let configs = d.configs();
        assert!(!configs.is_empty(), "{name}: no discovery");
        for (topic, payload) in configs.iter() {
            let v: Value = serde_json::from_str(payload).expect("json");
            let bad = ha_schema::violations(topic, &v);
            assert!(bad.is_empty(), "{name}:\n{}", bad.join("\n"));
            checked += 1;
        }
    }
    assert!(checked > 300, "only {checked} payloads checked");

    // The Energy dashboard: grid import/export and gas for the Dutch DSMR 5 meter.
    let s = settings();
    let (mut d, _rx) = Discovery::new(&s, "homeassistant");
    let r = reading_at(
        &fixture("netherlands_iskra_am550_dsmr50_gas_on_mbus2.txt"),
        "home",
        0,
    );
    d.observe(&r, &values(&r));
    for object in [
        "energy_import_tariff1",
        "energy_import_tariff2",
        "energy_export_tariff1",
        "energy_export_tariff2",
    ] {
        let c = config_of(&d, object).unwrap_or_else(|| panic!("{object}"));
        assert_eq!(
            (
                &c["device_class"],
                &c["state_class"],
                &c["unit_of_measurement"]
            ),
            (&"energy".into(), &"total_increasing".into(), &"kWh".into()),
            "{object}"
        );
        assert_eq!(c["device"]["manufacturer"], "Iskraemeco");
        assert_eq!(c["device"]["model"], "AM550");
    }
    let power = config_of(&d, "power_import").expect("power_import");
    assert_eq!(power["device_class"], "power");
    assert_eq!(power["state_class"], "measurement");
    let gas = d
        .configs()
        .keys()
        .find(|t| t.ends_with("gas_volume/config"))
        .cloned()
        .expect("a gas sensor");
    let gas: Value = serde_json::from_str(&d.configs()[&gas]).expect("json");
    assert_eq!(
        (
            &gas["device_class"],
            &gas["state_class"],
            &gas["unit_of_measurement"]
        ),
        (&"gas".into(), &"total_increasing".into(), &"m³".into())
    );
    assert_eq!(gas["device"]["via_device"], "p1gw_home");
}

#[test]
fn a_delivery_batch_is_about_a_second_of_the_backlog_rate() {
    use crate::sink::batch_for;
    assert_eq!(batch_for(1), 16);
    assert_eq!(batch_for(50), 50);
    assert_eq!(batch_for(300), 300);
    assert_eq!(batch_for(10_000), 512);
}

#[test]
fn mqtt5_packet_size_is_counted_as_rumqttc_and_the_broker_count_it() {
    // rumqttc refused this very message with `OutgoingPacketTooLarge { pkt_size: 314 }`
    // against a Mosquitto with `max_packet_size 200` (measured while writing the check).
    assert_eq!(
        packet_size_v5("p1/big", rumqttc::QoS::AtLeastOnce, &[b'a'; 300]),
        314
    );
    // QoS 0 has no packet id.
    assert_eq!(
        packet_size_v5("p1/big", rumqttc::QoS::AtMostOnce, &[b'a'; 300]),
        312
    );
}

#[test]
fn mqtt5_connection_errors_say_what_happened() {
    use rumqttc::v5::mqttbytes::Error as MqttError;
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
    use rumqttc::v5::{ConnectionError, StateError};
    let s = MqttSettings::new("broker.local", 1883, "home");
    let e = describe_v5(
        &ConnectionError::ConnectionRefused(ConnectReturnCode::UnsupportedProtocolVersion),
        &s,
    );
    assert!(
        e.contains("broker.local:1883") && e.contains("3.1.1"),
        "{e}"
    );
    let e = describe_v5(
        &ConnectionError::MqttState(StateError::Deserialization(
            MqttError::InvalidConnectReturnCode(0x95),
        )),
        &s,
    );
    assert!(e.contains("too large"), "{e}");
    let e = describe_v5(
        &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
        &s,
    );
    assert!(
        e.contains("bad user name or password (check the user name and password)"),
        "{e}"
    );
    // The caller says where the credentials come from (p1gw: its configuration keys).
    let mut s = s;
    s.credentials_hint = "username and password_file".to_owned();
    let e = describe_v5(
        &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
        &s,
    );
    assert!(e.contains("(check username and password_file)"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn values_are_the_present_and_only_the_state_is_spooled() {
    use p1_core::Encode as _;
    let latest = Arc::new(crate::latest::Latest::new(
        "mqtt",
        [("home".to_owned(), Duration::from_secs(10))].into(),
    ));
    let mut p = Publisher::new(Arc::new(settings()), None).with_latest(latest.clone());
    let record = p
        .encode(&reading_at(&veitur(1.0, false), "home", 0))
        .expect("a record");
    let spooled = decode_record(&record).expect("record");
    assert_eq!(
        topics(&spooled),
        ["home/state"],
        "the history: the state only"
    );
    let present = latest.take_dirty();
    let energy = present
        .iter()
        .find(|(t, _, _)| t == "home/energy_import_total")
        .expect("energy's value");
    assert_eq!(energy.1, b"1");
    assert!(
        present
            .iter()
            .any(|(t, p, retain)| t == "home/availability" && p == b"online" && *retain),
        "the meter is online"
    );
    assert!(latest.take_dirty().is_empty(), "taken once");

    // Two readings while nothing is sent: the first one's values are superseded, counted.
    p.encode(&reading_at(&veitur(2.0, false), "home", 1000));
    let before = latest.superseded();
    p.encode(&reading_at(&veitur(3.0, false), "home", 2000));
    assert!(latest.superseded() > before);
    let present = latest.take_dirty();
    let energy = present
        .iter()
        .find(|(t, _, _)| t == "home/energy_import_total")
        .expect("energy's value");
    assert_eq!(energy.1, b"3", "the latest wins");

    // After a reconnect, everything again.
    latest.all_dirty();
    assert!(latest.take_dirty().len() >= present.len());

    // Silent for three intervals: offline, once; a reading: online again.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(latest.check_silence(tokio::time::Instant::now()), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(latest.check_silence(tokio::time::Instant::now()), 1);
    assert_eq!(latest.check_silence(tokio::time::Instant::now()), 0);
    let present = latest.take_dirty();
    assert_eq!(present.len(), 1);
    assert_eq!(present[0].0, "home/availability");
    assert_eq!(present[0].1, b"offline");
    p.encode(&reading_at(&veitur(4.0, false), "home", 40_000));
    assert!(
        latest
            .take_dirty()
            .iter()
            .any(|(t, p, _)| t == "home/availability" && p == b"online")
    );
}

#[test]
fn the_wait_for_acks_grows_with_the_messages_at_the_backlog_rate() {
    use crate::sink::ack_wait;
    // A three-phase reading with value topics: about 40 messages; at 1/s they take 40 s.
    assert!(
        ack_wait(40, 1) >= Duration::from_secs(70),
        "{:?}",
        ack_wait(40, 1)
    );
    assert_eq!(
        ack_wait(40, 1000),
        Duration::from_secs(30) + Duration::from_millis(40)
    );
    assert!(ack_wait(usize::MAX, 1) <= Duration::from_secs(30 + 86_400));
}

#[test]
fn mqtt311_packet_size_is_counted_as_rumqttc_counts_it() {
    use crate::connection::packet_size_v4;
    // rumqttc's own codec test: topic "hello/world", QoS 1, 265 bytes is 281 bytes before it
    // has a packet id; sent, it has one: 2 more.
    assert_eq!(
        packet_size_v4("hello/world", rumqttc::QoS::AtLeastOnce, &[1; 265]),
        283
    );
    assert_eq!(
        packet_size_v4("hello/world", rumqttc::QoS::AtMostOnce, &[1; 265]),
        281
    );
}

#[test]
fn a_rule_of_the_meters_code_table_names_scales_and_classes_a_value() {
    use p1_core::{CodePattern, CodeRule, CodeTable, Quantity};
    let mut heat =
        CodeRule::new(CodePattern::parse("0-1:24.2.5").expect("code")).named("heat_energy_total");
    heat.unit = Some("MWh".to_owned());
    heat.kind = Some(Quantity::Energy);
    let mut temperature = CodeRule::new(CodePattern::parse("0-n:24.2.3").expect("code"));
    temperature.publish = false;
    let mut rename = CodeRule::new(CodePattern::parse("1-0:32.7.0").expect("code")).named("mains");
    rename.unit = Some("kV".to_owned());
    rename.scale = Some(0.001);
    let codes = Arc::new(CodeTable::new([heat, temperature, rename]));
    let r = reading_at(&veitur(1988.284, true), "home", 0).with_codes(&codes);
    let items = values(&r);
    let item = |path: &str| items.iter().find(|v| v.path == path);

    let heat = item("hot_water_1/heat_energy_total").expect("the named register");
    assert_eq!(heat.payload, "19.078");
    let spec = crate::discovery::item_spec(heat).expect("an entity");
    assert_eq!(
        (spec.device_class, spec.state_class, spec.unit.as_deref()),
        (Some("energy"), Some("total_increasing"), Some("MWh"))
    );
    assert!(item("hot_water_1/heat_energy").is_none(), "renamed");
    assert!(
        item("hot_water_1/heat_supply_temperature").is_none(),
        "publish = false"
    );
    // A rule without classes keeps the name's spec, in the rule's unit.
    let mains = item("mains").expect("renamed voltage");
    assert_eq!(mains.payload, "0.2313");
    let spec = crate::discovery::item_spec(mains).expect("an entity");
    assert_eq!(spec.unit.as_deref(), Some("kV"));
    // A code nobody named (Veitur's 24.2.10): a value topic under its code, no entity.
    let raw = reading_at(
        &format!(
            "{}!\r\n",
            fixture("iceland_veitur_iskra_ie5e_heat_submeter_raw.txt")
        ),
        "home",
        0,
    );
    let raw_items = values(&raw);
    let unnamed = raw_items
        .iter()
        .find(|v| v.path == "hot_water_1/obis_0_1_24_2_10")
        .expect("a value topic for the unnamed code");
    assert_eq!(unnamed.payload, "0");
    assert!(crate::discovery::item_spec(unnamed).is_none());
    // The JSON has the rule's name, the digits and the unit sent.
    let json: Value = serde_json::from_str(r.json()).expect("JSON");
    let objects = json["objects"].as_array().expect("objects");
    let line = objects
        .iter()
        .find(|o| o["obis"] == "0-1:24.2.5")
        .expect("the line");
    assert_eq!(
        (&line["name"], &line["unit"]),
        (&Value::from("heat_energy_total"), &Value::from("Wh"))
    );
}
