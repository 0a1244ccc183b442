//! Home Assistant MQTT discovery: one device per meter and per submeter, one sensor per value.
//!
//! # Per-entity discovery
//!
//! Each entity has its own retained config message on
//! `<discovery_prefix>/sensor/p1gw_<meter>/<object>/config`, `<object>` being the value topic's
//! path with `/` → `_` (`energy_import_total`, `hot_water_1_hot_water_volume`). Per-entity
//! discovery (not the device-based `homeassistant/device/…` of HA ≥ 2024.11) because it works
//! on every Home Assistant since 2021, keeps each message small (a three-phase meter has 40
//! values), and removing one entity is the well-established empty retained message on its topic.
//!
//! Each config names its device (`identifiers` `p1gw_<meter>` or `p1gw_<meter>_<kind>_<channel>`,
//! the submeter linked to its meter by `via_device`; manufacturer and model from the header via
//! [`maker`], serial number from the equipment id), its `state_topic` (the value topic, so no
//! `value_template` is needed), the `availability_topic` (`<prefix>/<gateway>/status`),
//! `device_class`, `state_class`, `unit_of_measurement` (Home Assistant's spellings) and
//! `suggested_display_precision` from [`spec`] (docs/markets.md §f, the contract).
//!
//! # Entities that vanish
//!
//! The set of entities is tracked per meter from the readings themselves: a value absent from
//! [`EXPIRE_READINGS`] readings in a row of its meter loses its entity (an empty retained config
//! is published, which makes Home Assistant remove it); a value that comes back gets it again.
//! Entities left on the broker by an earlier run with other values are not seen by this run
//! (they are retained messages it never subscribes to); delete them in Home Assistant or with
//! `mosquitto_pub -r -n -t <topic>`.
//!
//! # Republishing
//!
//! The connection task publishes every config after each connect and when Home Assistant
//! announces itself (`online` on `<discovery_prefix>/status`), and the changes whenever the
//! model changes ([`Discovery::observe`] updates a `watch` channel).

use std::collections::BTreeMap;
use std::sync::Arc;

use p1_core::Reading;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::encode::ValueItem;

/// A value missing from this many readings in a row of its meter loses its entity.
pub const EXPIRE_READINGS: u32 = 10;

/// The config messages that should be on the broker: topic → payload (JSON).
pub type Configs = BTreeMap<String, String>;

/// How Home Assistant should show one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// `device_class`, if any.
    pub device_class: Option<&'static str>,
    /// `state_class`, if any.
    pub state_class: Option<&'static str>,
    /// `unit_of_measurement` in Home Assistant's spelling, if any.
    pub unit: Option<String>,
    /// `suggested_display_precision`, for numbers.
    pub precision: Option<u8>,
    /// `entity_category: diagnostic`.
    pub diagnostic: bool,
    /// The `options` of an `enum` sensor.
    pub options: Option<&'static [&'static str]>,
}

impl Spec {
    const fn new(
        device_class: Option<&'static str>,
        state_class: Option<&'static str>,
        precision: Option<u8>,
    ) -> Spec {
        Spec {
            device_class,
            state_class,
            unit: None,
            precision,
            diagnostic: false,
            options: None,
        }
    }

    fn unit(mut self, unit: &str) -> Spec {
        self.unit = Some(unit.to_owned());
        self
    }

    fn diagnostic(mut self) -> Spec {
        self.diagnostic = true;
        self
    }
}

/// Home Assistant's spelling of a unit as meters send it (`m3` → `m³`, `degC` → `°C`,
/// `kVAr` → `kvar`); unknown units are kept.
pub fn ha_unit(unit: &str) -> String {
    let known = [
        ("m3", "m³"),
        ("m3/h", "m³/h"),
        ("degc", "°C"),
        ("kwh", "kWh"),
        ("wh", "Wh"),
        ("kw", "kW"),
        ("w", "W"),
        ("kvar", "kvar"),
        ("var", "var"),
        ("kvarh", "kvarh"),
        ("varh", "varh"),
        ("kva", "kVA"),
        ("va", "VA"),
        ("v", "V"),
        ("a", "A"),
        ("hz", "Hz"),
        ("gj", "GJ"),
        ("mj", "MJ"),
        ("mwh", "MWh"),
        ("gwh", "GWh"),
        ("s", "s"),
    ];
    let lower = unit.to_ascii_lowercase();
    known
        .iter()
        .find(|(sent, _)| *sent == lower)
        .map_or_else(|| unit.to_owned(), |(_, ha)| (*ha).to_owned())
}

const TARIFFS: &[&str] = &["0", "1", "2", "3", "4"];
const SWITCH_STATES: &[&str] = &["0", "1", "2"];

/// How Home Assistant should show the value `name` sent in `unit` (before conversion), per
/// docs/markets.md §f; `None` for values that get no entity.
pub fn spec(name: &str, unit: Option<&str>, numeric: bool) -> Option<Spec> {
    let starts = |p: &str| name.starts_with(p);
    let m = Some("measurement");
    let ti = Some("total_increasing");
    let s = match name {
        _ if starts("energy_import_") || starts("energy_export_") => {
            Spec::new(Some("energy"), ti, Some(3)).unit("kWh")
        }
        "reactive_energy_import_total" | "reactive_energy_export_total" => {
            Spec::new(Some("reactive_energy"), ti, Some(3)).unit("kvarh")
        }
        "demand_import_current" | "demand_import_max_month" => {
            Spec::new(Some("power"), m, Some(3)).unit("kW")
        }
        _ if starts("reactive_power_") => {
            Spec::new(Some("reactive_power"), m, Some(3)).unit("kvar")
        }
        _ if starts("apparent_power_") => Spec::new(Some("apparent_power"), m, Some(3)).unit("kVA"),
        _ if starts("power_factor") => Spec::new(Some("power_factor"), m, Some(3)),
        _ if starts("power_import") || starts("power_export") => {
            Spec::new(Some("power"), m, Some(3)).unit("kW")
        }
        _ if starts("voltage_sags_") || starts("voltage_swells_") => Spec::new(None, ti, Some(0)),
        "power_failures" | "long_power_failures" => Spec::new(None, ti, Some(0)),
        _ if starts("voltage_l") => Spec::new(Some("voltage"), m, Some(1)).unit("V"),
        // Before `current_l…`, which `current_limit…` also starts with.
        _ if starts("current_limit") => Spec::new(Some("current"), m, Some(0))
            .unit("A")
            .diagnostic(),
        _ if starts("current_l") => Spec::new(Some("current"), m, Some(1)).unit("A"),
        "frequency" => Spec::new(Some("frequency"), m, Some(2)).unit("Hz"),
        "gas_volume" => Spec::new(Some("gas"), ti, Some(3)).unit("m³"),
        "water_volume" | "hot_water_volume" => Spec::new(Some("water"), ti, Some(3)).unit("m³"),
        "heat_energy" | "heat_energy_2" | "cooling_energy"
            if unit.is_some_and(|u| u.eq_ignore_ascii_case("GJ")) =>
        {
            Spec::new(Some("energy"), ti, Some(3)).unit("GJ")
        }
        // Veitur's heat registers: unit unverified (sent as "Wh", probably MWh): no device
        // class, so that they stay out of the Energy dashboard (docs/markets.md §f).
        "heat_energy" | "heat_energy_2" | "cooling_energy" => {
            let s = Spec::new(None, m, Some(3));
            match unit {
                Some(u) => s.unit(&ha_unit(u)),
                None => s,
            }
        }
        "heat_flow" => Spec::new(Some("volume_flow_rate"), m, Some(3)).unit("m³/h"),
        "heat_supply_temperature" | "heat_return_temperature" => {
            Spec::new(Some("temperature"), m, Some(1)).unit("°C")
        }
        "meter_time" => Spec::new(Some("timestamp"), None, None).diagnostic(),
        "limiter_threshold" => {
            let u = unit.map(str::to_ascii_lowercase);
            let s = match u.as_deref() {
                Some("kva" | "va") => Spec::new(Some("apparent_power"), m, Some(3)).unit("kVA"),
                Some("a") => Spec::new(Some("current"), m, Some(1)).unit("A"),
                _ => Spec::new(Some("power"), m, Some(3)).unit("kW"),
            };
            s.diagnostic()
        }
        "tariff_indicator" => Spec {
            options: Some(TARIFFS),
            ..Spec::new(Some("enum"), None, None).diagnostic()
        },
        "breaker_state" | "valve_state" => Spec {
            options: Some(SWITCH_STATES),
            ..Spec::new(Some("enum"), None, None).diagnostic()
        },
        "power_failure_log" | "demand_import_max_history" => return None,
        _ if numeric => {
            let s = Spec::new(None, m, None);
            match unit {
                Some(u) => s.unit(&ha_unit(u)),
                None => s,
            }
        }
        // p1_version, equipment ids, serials, text messages, device type, status: text.
        _ => Spec::new(None, None, None).diagnostic(),
    };
    Some(s)
}

/// How Home Assistant should show `item`: by the user's rule where it says how (a kind, a
/// class, a unit), else by [`spec`] of its name.
pub fn item_spec(item: &ValueItem) -> Option<Spec> {
    if !item.named {
        return None; // a code nobody named: a value topic, no entity until a rule names it
    }
    let rule = item.rule.as_deref();
    if let Some(rule) = rule.filter(|r| r.has_ha_classes() && item.numeric) {
        let mut s = Spec::new(rule.ha_device_class(), rule.ha_state_class(), Some(3));
        s.unit = item.display_unit.as_deref().map(ha_unit);
        return Some(s);
    }
    let mut s = spec(&item.name, item.unit.as_deref(), item.numeric)?;
    if let Some(unit) = rule.and_then(|r| r.unit.as_deref()) {
        s.unit = Some(ha_unit(unit));
    }
    Some(s)
}

/// Manufacturer and model from a telegram header (without `/`): the maker code's company
/// (unknown codes: the header), and the model from the identification.
///
/// `ISk5\2MIE5E-200` → ("Iskraemeco", "IE.5"); `KFM5KAIFA-METER` → ("Kaifa", "KAIFA-METER").
pub fn maker(header: &str) -> (String, String) {
    const MAKERS: &[(&str, &str)] = &[
        ("ISK", "Iskraemeco"),
        ("KFM", "Kaifa"),
        ("ENE", "Sagemcom"),
        ("SAG", "Sagemcom"),
        ("FLU", "Fluvius"),
        ("LUX", "Sagemcom (Luxmetering)"),
        ("ADN", "Aidon"),
        ("AIDON", "Aidon"),
        ("ELL", "Landis+Gyr"),
        ("ESO", "ESO"),
        ("ESY", "EasyMeter"),
        ("MCS", "MCS"),
        ("NWA", "Warmtelink"),
        ("WARMTELINK", "Warmtelink"),
    ];
    let upper = header.to_ascii_uppercase();
    let Some((code, company)) = MAKERS.iter().find(|(code, _)| upper.starts_with(code)) else {
        return (header.to_owned(), header.to_owned());
    };
    // Identification: after the maker code and its baud digit (when there is one), without
    // the "\2" (enhanced mode) or "\" in front.
    let rest = header.get(code.len()..).unwrap_or_default();
    let rest = rest
        .strip_prefix(|c: char| c.is_ascii_digit())
        .unwrap_or(rest);
    let ident = rest
        .strip_prefix("\\2")
        .or_else(|| rest.strip_prefix('\\'))
        .unwrap_or(rest)
        .trim_start_matches(['-', ' '])
        .trim_end_matches('\\')
        .trim();
    let model = match *code {
        // Iskraemeco: "MIE5E-200" (IE.5 single phase), "MIE5T-200" (three phase),
        // "M550T-1012" (AM550), "MT382-1000" (MT382).
        "ISK" => {
            let id = ident.strip_prefix('M').unwrap_or(ident);
            if id.starts_with("IE5") {
                "IE.5".to_owned()
            } else if id.starts_with("550") {
                "AM550".to_owned()
            } else if id.starts_with("T382") || id.starts_with("382") {
                "MT382".to_owned()
            } else {
                ident.to_owned()
            }
        }
        _ if ident.is_empty() => header.to_owned(),
        _ => ident.to_owned(),
    };
    ((*company).to_owned(), model)
}

/// "energy_import_total" → "Energy import total", "voltage_l1" → "Voltage L1".
fn title(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, word) in name.split('_').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let word = match word {
            "l1" | "l2" | "l3" => word.to_ascii_uppercase(),
            "mbus" => "M-Bus".to_owned(),
            "p1" => "P1".to_owned(),
            _ => word.to_owned(),
        };
        if i == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                out.extend(first.to_uppercase());
                out.push_str(chars.as_str());
            }
        } else {
            out.push_str(&word);
        }
    }
    out
}

/// One entity as tracked: its config topic, payload, and readings missed in a row.
#[derive(Debug, Clone)]
struct Tracked {
    topic: String,
    payload: String,
    missing: u32,
}

/// The discovery model, fed by intake with every reading; the connection task gets the configs
/// through a `watch` channel.
pub struct Discovery {
    prefix: String,
    topic_prefix: String,
    status_topic: String,
    sw_version: String,
    meters: BTreeMap<String, BTreeMap<String, Tracked>>,
    tx: watch::Sender<Arc<Configs>>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("prefix", &self.prefix)
            .field("meters", &self.meters.len())
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// A model for `settings` (which must have a discovery prefix) and the receiver of its
    /// configs.
    pub fn new(
        settings: &crate::MqttSettings,
        prefix: &str,
    ) -> (Discovery, watch::Receiver<Arc<Configs>>) {
        let (tx, rx) = watch::channel(Arc::new(Configs::new()));
        let d = Discovery {
            prefix: prefix.to_owned(),
            topic_prefix: settings.topic_prefix.clone(),
            status_topic: settings.status_topic(),
            sw_version: settings.sw_version.clone(),
            meters: BTreeMap::new(),
            tx,
        };
        (d, rx)
    }

    /// The configs as they stand.
    pub fn configs(&self) -> Arc<Configs> {
        self.tx.borrow().clone()
    }

    /// Updates the model with one reading of a meter and its values (from
    /// [`crate::encode::values`]); publishes the new configs when anything changed.
    pub fn observe(&mut self, reading: &Reading, items: &[ValueItem]) {
        let meter = &*reading.meter;
        let node = format!("p1gw_{meter}");
        let (manufacturer, model) = maker(&reading.header);
        let mut meter_device = json!({
            "identifiers": [node],
            "name": format!("P1 meter {meter}"),
            "manufacturer": manufacturer,
            "model": model,
        });
        if let Some(id) = &reading.meter_id {
            meter_device["serial_number"] = json!(id);
        }
        let mut present: BTreeMap<String, (String, String)> = BTreeMap::new();
        for item in items {
            let Some(spec) = item_spec(item) else {
                continue;
            };
            let device = match item.submeter {
                None => meter_device.clone(),
                Some((kind, channel)) => {
                    let mut d = json!({
                        "identifiers": [format!("{node}_{kind}_{channel}")],
                        "name": format!("{} meter {meter} (M-Bus {channel})", title(kind)),
                        "model": format!("{} meter on M-Bus channel {channel}", title(kind)),
                        "via_device": node,
                    });
                    let sub = reading.submeters.iter().find(|s| s.channel == channel);
                    if let Some(id) = sub.and_then(|s| s.equipment_id.as_deref()) {
                        let id = id.trim();
                        if !id.is_empty() && !id.bytes().all(|b| b == b'0') {
                            d["serial_number"] = json!(id);
                        }
                    }
                    d
                }
            };
            let object = item.path.replace('/', "_");
            let topic = format!("{}/sensor/{node}/{object}/config", self.prefix);
            let payload = self.config(meter, &node, &object, item, &spec, device);
            present.insert(object, (topic, payload));
        }

        let tracked = self.meters.entry(meter.to_owned()).or_default();
        for t in tracked.values_mut() {
            t.missing = t.missing.saturating_add(1);
        }
        for (object, (topic, payload)) in present {
            tracked.insert(
                object,
                Tracked {
                    topic,
                    payload,
                    missing: 0,
                },
            );
        }
        tracked.retain(|_, t| t.missing < EXPIRE_READINGS);

        let configs: Configs = self
            .meters
            .values()
            .flat_map(|m| m.values())
            .map(|t| (t.topic.clone(), t.payload.clone()))
            .collect();
        self.tx.send_if_modified(|current| {
            if **current == configs {
                return false;
            }
            *current = Arc::new(configs);
            true
        });
    }

    fn config(
        &self,
        meter: &str,
        node: &str,
        object: &str,
        item: &ValueItem,
        spec: &Spec,
        device: Value,
    ) -> String {
        let name = match item.submeter {
            Some(_) => title(&item.name),
            None => title(&item.name),
        };
        let mut c = Map::new();
        c.insert("name".into(), json!(name));
        c.insert("unique_id".into(), json!(format!("{node}_{object}")));
        c.insert(
            "state_topic".into(),
            json!(format!("{}/{meter}/{}", self.topic_prefix, item.path)),
        );
        // Unavailable when the gateway is gone (its last will) or this meter is silent.
        c.insert(
            "availability".into(),
            json!([
                {"topic": self.status_topic},
                {"topic": format!(
                    "{}/{}",
                    self.topic_prefix,
                    crate::latest::availability_topic(meter)
                )},
            ]),
        );
        c.insert("availability_mode".into(), json!("all"));
        c.insert("payload_available".into(), json!("online"));
        c.insert("payload_not_available".into(), json!("offline"));
        if let Some(dc) = spec.device_class {
            c.insert("device_class".into(), json!(dc));
        }
        if let Some(sc) = spec.state_class {
            c.insert("state_class".into(), json!(sc));
        }
        if let Some(unit) = &spec.unit {
            c.insert("unit_of_measurement".into(), json!(unit));
        }
        if let Some(p) = spec.precision {
            c.insert("suggested_display_precision".into(), json!(p));
        }
        if let Some(options) = spec.options {
            c.insert("options".into(), json!(options));
        }
        if spec.diagnostic {
            c.insert("entity_category".into(), json!("diagnostic"));
        }
        c.insert("device".into(), device);
        let mut origin = json!({ "name": "p1gw" });
        if !self.sw_version.is_empty() {
            origin["sw_version"] = json!(self.sw_version);
        }
        c.insert("origin".into(), origin);
        Value::Object(c).to_string()
    }
}
