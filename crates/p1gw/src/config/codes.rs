//! `[meter.codes."A-B:C.D.E"]`: the user's rules for a meter's codes (a name, unit, scale, kind,
//! Home Assistant classes, or `publish = false`), validated into p1-core's own
//! [`CodeTable`]. What each view does with them is in docs/obis.md, "Your own codes".

use std::collections::BTreeMap;
use std::sync::Arc;

use p1_core::{CodePattern, CodeRule, CodeTable, Quantity};
use serde::{Deserialize, Serialize};

use super::locate::{KeyPath, Problems};

/// One code's rule, as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CodeOverride {
    /// The canonical name every view uses (`heat_energy_total`): lower-case ASCII letters,
    /// digits and `_`, starting with a letter, at most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The unit of the value after scaling (`"MWh"`). With a unit and no scale, the meter's
    /// digits are taken to be in this unit (scale 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The factor from the number sent to the value in `unit` (`0.001`). Finite, not zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// What it measures: `energy`, `power`, `volume`, `gas`, `water`, `flow`, `temperature`,
    /// `voltage`, `current`, `frequency`, `count`, `other`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Home Assistant's `device_class` (`""` for none); default from `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// Home Assistant's `state_class`: `measurement`, `total`, `total_increasing`, or `""` for
    /// none; default from `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_class: Option<String>,
    /// `false` keeps the value out of MQTT value topics, Home Assistant, InfluxDB and
    /// `/metrics` (the JSON still has the line). Default `true`.
    #[serde(default = "default_true")]
    pub publish: bool,
}

fn default_true() -> bool {
    true
}

/// The units Home Assistant accepts for `device_class: energy` (and its Energy dashboard for
/// an energy source).
pub const HA_ENERGY_UNITS: [&str; 7] = ["Wh", "kWh", "MWh", "GWh", "TWh", "MJ", "GJ"];

/// The `state_class` values Home Assistant knows.
const STATE_CLASSES: [&str; 4] = ["", "measurement", "total", "total_increasing"];

/// Validates the rules of one meter (`at` is `meter.codes` or `meters[i].codes`).
pub fn validate(
    codes: &BTreeMap<String, CodeOverride>,
    at: &KeyPath,
    problems: &mut Problems,
) -> Option<Arc<CodeTable>> {
    let mut rules = Vec::new();
    let mut ok = true;
    for (code, table) in codes {
        let at = at.key(code);
        // A wrong code is the key's fault: located at the key, not at its table.
        let pattern = CodePattern::parse(code)
            .map_err(|e| problems.key(at.clone(), e))
            .ok();
        match table.rule(pattern, &at, problems) {
            Some(rule) => rules.push(rule),
            None => ok = false,
        }
    }
    // Two spellings of one code (`1-0:1.8.1` and `1-0:1.8.1.255`) would make the order matter.
    for (i, a) in rules.iter().enumerate() {
        if rules[..i].iter().any(|b| b.code == a.code) {
            problems.key(
                at.key(&a.code.to_string()),
                format!("{} has two rules; keep one", a.code),
            );
            ok = false;
        }
    }
    ok.then(|| Arc::new(CodeTable::new(rules)))
}

impl CodeOverride {
    /// The rule for `pattern` (from the key; `None` when the key was wrong), its fields
    /// checked.
    fn rule(
        &self,
        pattern: Option<CodePattern>,
        at: &KeyPath,
        problems: &mut Problems,
    ) -> Option<CodeRule> {
        let name = match &self.name {
            Some(name) => problems
                .ok(&at.key("name"), check_value_name(name))
                .map(|()| Some(name.clone())),
            None => Some(None),
        };
        let unit = match &self.unit {
            Some(unit) => problems
                .ok(&at.key("unit"), check_unit(unit))
                .map(|()| Some(unit.clone())),
            None => Some(None),
        };
        let scale = match self.scale {
            Some(s) if !s.is_finite() || s == 0.0 => {
                problems.value(
                    at.key("scale"),
                    format!("{s}: a scale is a finite number other than 0 (0.001, 1000)"),
                );
                None
            }
            s => Some(s),
        };
        let kind = match &self.kind {
            Some(kind) => problems
                .ok(&at.key("kind"), kind.parse::<Quantity>())
                .map(Some),
            None => Some(None),
        };
        let device_class = match &self.device_class {
            Some(c) => problems
                .ok(&at.key("device_class"), check_device_class(c))
                .map(|()| Some(c.clone())),
            None => Some(None),
        };
        let state_class = match &self.state_class {
            Some(c) if !STATE_CLASSES.contains(&c.as_str()) => {
                problems.value(
                    at.key("state_class"),
                    format!(
                        "{c:?}: Home Assistant's state classes are \"measurement\", \"total\" and \
                         \"total_increasing\" (\"\" for none)"
                    ),
                );
                None
            }
            c => Some(c.clone()),
        };
        let (name, unit, scale, kind, device_class, state_class) =
            (name?, unit?, scale?, kind?, device_class?, state_class?);
        let mut rule = CodeRule::new(pattern?);
        if let Some(name) = &name {
            rule = rule.named(name);
        }
        rule.unit = unit;
        rule.scale = scale;
        rule.kind = kind;
        rule = rule.with_ha_classes(device_class.as_deref(), state_class.as_deref());
        rule.publish = self.publish;
        // What Home Assistant would refuse: an energy sensor in another unit, or measured
        // rather than totalled.
        if rule.ha_device_class() == Some("energy") {
            match rule.unit.as_deref() {
                Some(u) if !HA_ENERGY_UNITS.contains(&u) => {
                    problems.value(
                        at.key("unit"),
                        format!(
                            "{u:?}: Home Assistant takes an energy value only in {}",
                            HA_ENERGY_UNITS.join(", ")
                        ),
                    );
                    return None;
                }
                _ => {}
            }
            if rule.ha_state_class() == Some("measurement") {
                problems.value(
                    at.key("state_class"),
                    "an energy register is \"total_increasing\" (or \"total\") in Home \
                     Assistant, never \"measurement\"",
                );
                return None;
            }
        }
        Some(rule)
    }
}

/// A value's name: what every view can carry (an InfluxDB field, a Prometheus label, an MQTT
/// topic level, a Home Assistant object id, JSON without escaping).
fn check_value_name(name: &str) -> Result<(), String> {
    let first = name.chars().next();
    if !first.is_some_and(|c| c.is_ascii_lowercase())
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{name:?}: a value's name is lower-case ASCII letters, digits and '_', starting \
             with a letter, at most 64 characters (heat_energy_total)"
        ));
    }
    if name == "meter_time" {
        return Err("\"meter_time\" is the meter's clock; choose another name".to_owned());
    }
    Ok(())
}

fn check_unit(unit: &str) -> Result<(), String> {
    if unit.is_empty() || unit.len() > 16 || unit.chars().any(|c| c.is_control() || c == '"') {
        return Err(format!(
            "{unit:?}: a unit is 1 to 16 printable characters (\"MWh\", \"m3\", \"degC\")"
        ));
    }
    Ok(())
}

fn check_device_class(class: &str) -> Result<(), String> {
    if class.len() > 32 || !class.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(format!(
            "{class:?}: a Home Assistant device class is lower-case letters and '_' (\"energy\", \
             \"volume_flow_rate\"), or \"\" for none"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
