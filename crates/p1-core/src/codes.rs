//! The code table: what every view calls a meter's value, in which unit, and how Home
//! Assistant should show it.
//!
//! p1-telegram names the codes it knows ([`p1_telegram::Object::name`], docs/obis.md). A
//! [`CodeTable`] adds the user's rules on top (`[meter.codes."…"]` in the configuration): for a
//! code on the meter itself, on one M-Bus channel, or on any channel, a [`CodeRule`] can give
//! the value a name, a unit and a scale, a [`Quantity`] (from which Home Assistant's device and
//! state class follow unless given), or keep it out of the value views (`publish = false`).
//!
//! The table is applied once, when a [`crate::Reading`] is made
//! ([`crate::Reading::with_codes`]): each line's [`crate::Measurement::name`] becomes the
//! rule's name and the line keeps its rule. Every view then asks the line, not a table of its
//! own: [`crate::Measurement::label`] (the name, or `obis_A_B_C_D_E` for a code nobody named),
//! [`crate::Measurement::number`] (scaled), [`crate::Measurement::unit_label`] (the unit after
//! scaling), [`crate::Measurement::published`] and [`crate::Measurement::rule`].

use std::fmt;
use std::str::FromStr;

use p1_telegram::ObisCode;

/// What a value measures; the Home Assistant classes follow from it
/// ([`Quantity::ha_classes`]) unless a rule states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// An energy register (kWh, MWh, GJ): `energy`, `total_increasing`.
    Energy,
    /// Power (W, kW): `power`, `measurement`.
    Power,
    /// A volume register that is neither gas nor water: `volume`, `total_increasing`.
    Volume,
    /// A gas volume register: `gas`, `total_increasing`.
    Gas,
    /// A water (or hot-water) volume register: `water`, `total_increasing`.
    Water,
    /// A volume flow (m3/h): `volume_flow_rate`, `measurement`.
    Flow,
    /// A temperature: `temperature`, `measurement`.
    Temperature,
    /// A voltage: `voltage`, `measurement`.
    Voltage,
    /// A current: `current`, `measurement`.
    Current,
    /// A frequency: `frequency`, `measurement`.
    Frequency,
    /// A counter of events: no device class, `total_increasing`.
    Count,
    /// Any other number: no device class, `measurement`.
    Other,
}

impl Quantity {
    /// Every quantity, in the order of the configuration's documentation.
    pub const ALL: [Quantity; 12] = [
        Quantity::Energy,
        Quantity::Power,
        Quantity::Volume,
        Quantity::Gas,
        Quantity::Water,
        Quantity::Flow,
        Quantity::Temperature,
        Quantity::Voltage,
        Quantity::Current,
        Quantity::Frequency,
        Quantity::Count,
        Quantity::Other,
    ];

    /// The spelling in the configuration file (`energy`, `flow`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Quantity::Energy => "energy",
            Quantity::Power => "power",
            Quantity::Volume => "volume",
            Quantity::Gas => "gas",
            Quantity::Water => "water",
            Quantity::Flow => "flow",
            Quantity::Temperature => "temperature",
            Quantity::Voltage => "voltage",
            Quantity::Current => "current",
            Quantity::Frequency => "frequency",
            Quantity::Count => "count",
            Quantity::Other => "other",
        }
    }

    /// Home Assistant's `device_class` and `state_class` for a value of this quantity.
    pub const fn ha_classes(self) -> (Option<&'static str>, &'static str) {
        const TI: &str = "total_increasing";
        const M: &str = "measurement";
        match self {
            Quantity::Energy => (Some("energy"), TI),
            Quantity::Power => (Some("power"), M),
            Quantity::Volume => (Some("volume"), TI),
            Quantity::Gas => (Some("gas"), TI),
            Quantity::Water => (Some("water"), TI),
            Quantity::Flow => (Some("volume_flow_rate"), M),
            Quantity::Temperature => (Some("temperature"), M),
            Quantity::Voltage => (Some("voltage"), M),
            Quantity::Current => (Some("current"), M),
            Quantity::Frequency => (Some("frequency"), M),
            Quantity::Count => (None, TI),
            Quantity::Other => (None, M),
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Quantity {
    type Err = String;

    fn from_str(s: &str) -> Result<Quantity, String> {
        Quantity::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Quantity::ALL.iter().map(|q| q.as_str()).collect();
                format!("unknown kind {s:?}; one of {}", all.join(", "))
            })
    }
}

/// Which lines a rule is for: `A-B:C.D.E`, where B is the channel (0 = the meter itself) or
/// any channel (`0-n:24.2.5`, any `B` ≥ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodePattern {
    a: u8,
    /// `None`: any M-Bus channel (B ≥ 1).
    b: Option<u8>,
    cde: (u8, u8, u8),
}

impl CodePattern {
    /// Reads `A-B:C.D.E` or `A-n:C.D.E` (any channel); an `F` group (`.255`, `*255`) is
    /// accepted and ignored, as the parser ignores it.
    ///
    /// # Errors
    /// What is wrong with the text.
    pub fn parse(text: &str) -> Result<CodePattern, String> {
        let bad = || {
            format!(
                "{text:?} is not an OBIS code: write A-B:C.D.E (\"0-1:24.2.5\"), or A-n:C.D.E \
                 for any M-Bus channel (\"0-n:24.2.5\")"
            )
        };
        if let Some((a, rest)) = text.split_once("-n:") {
            let code = ObisCode::parse(format!("{a}-1:{rest}").as_bytes()).ok_or_else(bad)?;
            if code.f.is_some() {
                return Err(format!(
                    "{text:?}: write the code without its F group (A-n:C.D.E)"
                ));
            }
            return Ok(CodePattern {
                a: code.a,
                b: None,
                cde: code.cde(),
            });
        }
        let code = ObisCode::parse(text.as_bytes()).ok_or_else(bad)?;
        if code.f.is_some() {
            return Err(format!(
                "{text:?}: write the code without its F group (A-B:C.D.E)"
            ));
        }
        Ok(CodePattern {
            a: code.a,
            b: Some(code.b),
            cde: code.cde(),
        })
    }

    /// Whether the pattern names one channel (or the meter itself) rather than any channel.
    pub fn is_exact(&self) -> bool {
        self.b.is_some()
    }

    /// Whether a line with `code` is one of the pattern's.
    pub fn matches(&self, code: &ObisCode) -> bool {
        code.a == self.a
            && code.cde() == self.cde
            && match self.b {
                Some(b) => code.b == b,
                None => code.b >= 1,
            }
    }
}

impl fmt::Display for CodePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, d, e) = self.cde;
        match self.b {
            Some(b) => write!(f, "{}-{b}:{c}.{d}.{e}", self.a),
            None => write!(f, "{}-n:{c}.{d}.{e}", self.a),
        }
    }
}

/// The user's rule for one code (`[meter.codes."0-1:24.2.5"]`). Fields left `None` keep what
/// p1gw would do without the rule.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeRule {
    /// The lines it is for.
    pub code: CodePattern,
    /// The canonical name the views use (`heat_energy_total`). Kept for the life of the
    /// process: a table is made once, from the configuration.
    pub name: Option<&'static str>,
    /// The unit the value is in after scaling, as views show it (`MWh`).
    pub unit: Option<String>,
    /// The factor from the number sent to the value in `unit`. Default: 1 when `unit` is
    /// given (the meter's digits are in that unit), otherwise the usual conversion of the
    /// unit sent (W → kW, …).
    pub scale: Option<f64>,
    /// What it measures.
    pub kind: Option<Quantity>,
    /// Home Assistant's `device_class` (`Some("")` for none); default from `kind`. Kept for
    /// the life of the process, as the name.
    pub device_class: Option<&'static str>,
    /// Home Assistant's `state_class` (`Some("")` for none); default from `kind`.
    pub state_class: Option<&'static str>,
    /// `false` keeps the value out of the value views (MQTT value topics and discovery,
    /// InfluxDB, `/metrics`); the JSON still has the line.
    pub publish: bool,
}

impl CodeRule {
    /// A rule for `code` that changes nothing yet.
    pub fn new(code: CodePattern) -> CodeRule {
        CodeRule {
            code,
            name: None,
            unit: None,
            scale: None,
            kind: None,
            device_class: None,
            state_class: None,
            publish: true,
        }
    }

    /// The rule with this name; the text is kept for the life of the process (see
    /// [`CodeRule::name`]), so call this while loading the configuration, not per reading
    /// (a reload keeps the previous names too: a few bytes per rule and reload).
    pub fn named(mut self, name: &str) -> CodeRule {
        self.name = Some(Box::leak(name.to_owned().into_boxed_str()));
        self
    }

    /// The rule with these Home Assistant classes (`None`: from the kind; `""`: none); kept
    /// for the life of the process, as [`CodeRule::named`].
    pub fn with_ha_classes(mut self, device: Option<&str>, state: Option<&str>) -> CodeRule {
        let keep = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
        self.device_class = device.map(keep);
        self.state_class = state.map(keep);
        self
    }

    /// Whether the rule says anything about Home Assistant's classes (a kind or a class).
    pub fn has_ha_classes(&self) -> bool {
        self.kind.is_some() || self.device_class.is_some() || self.state_class.is_some()
    }

    /// Home Assistant's `device_class` for the value: the rule's, else its kind's.
    pub fn ha_device_class(&self) -> Option<&'static str> {
        match self.device_class {
            Some(c) => Some(c).filter(|c| !c.is_empty()),
            None => self.kind.and_then(|k| k.ha_classes().0),
        }
    }

    /// Home Assistant's `state_class` for the value: the rule's, else its kind's.
    pub fn ha_state_class(&self) -> Option<&'static str> {
        match self.state_class {
            Some(c) => Some(c).filter(|c| !c.is_empty()),
            None => self.kind.map(|k| k.ha_classes().1),
        }
    }
}

/// One meter's rules, applied to each of its readings ([`crate::Reading::with_codes`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodeTable {
    /// Rules for one channel (or the meter) first, then those for any channel; the first
    /// that matches a line applies.
    rules: Vec<std::sync::Arc<CodeRule>>,
}

impl CodeTable {
    /// The table of `rules`: a rule for one channel wins over one for any channel.
    pub fn new(rules: impl IntoIterator<Item = CodeRule>) -> CodeTable {
        let mut rules: Vec<_> = rules.into_iter().map(std::sync::Arc::new).collect();
        rules.sort_by_key(|r| !r.code.is_exact());
        CodeTable { rules }
    }

    /// Whether the table has no rule (readings are left as the parser named them).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, those for one channel first.
    pub fn rules(&self) -> &[std::sync::Arc<CodeRule>] {
        &self.rules
    }

    /// The rule for a line with `code`, if any.
    pub fn rule(&self, code: &ObisCode) -> Option<&std::sync::Arc<CodeRule>> {
        self.rules.iter().find(|r| r.code.matches(code))
    }
}

/// The name a view gives a line that no table names: `obis_` and the code's five groups
/// (`0-1:24.2.10` → `obis_0_1_24_2_10`); a line whose code is not an OBIS code is `None`.
/// The spelling fits every view: an InfluxDB field key, a Prometheus label value, an MQTT
/// topic level and a Home Assistant object id.
pub fn raw_name(code: &ObisCode) -> String {
    let (c, d, e) = code.cde();
    format!("obis_{}_{}_{c}_{d}_{e}", code.a, code.b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_read_one_channel_or_any() {
        let exact = CodePattern::parse("0-1:24.2.5").unwrap();
        let any = CodePattern::parse("0-n:24.2.5").unwrap();
        let c1 = ObisCode::new(0, 1, 24, 2, 5);
        let c2 = ObisCode::new(0, 2, 24, 2, 5);
        let c0 = ObisCode::new(0, 0, 24, 2, 5);
        assert!(exact.matches(&c1) && !exact.matches(&c2));
        assert!(any.matches(&c1) && any.matches(&c2) && !any.matches(&c0));
        assert_eq!(any.to_string(), "0-n:24.2.5");
        assert_eq!(
            CodePattern::parse("1-0:1.8.1.255").unwrap().to_string(),
            "1-0:1.8.1"
        );
        for bad in [
            "",
            "24.2.5",
            "0-1:24.2.5.3",
            "0-x:24.2.5",
            "0-n:24.2",
            "0-1:24.2.5x",
        ] {
            assert!(CodePattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rule_for_one_channel_wins_over_one_for_any() {
        let any = CodeRule::new(CodePattern::parse("0-n:24.2.5").unwrap()).named("any");
        let one = CodeRule::new(CodePattern::parse("0-2:24.2.5").unwrap()).named("two");
        let table = CodeTable::new([any, one]);
        let name = |b| {
            table
                .rule(&ObisCode::new(0, b, 24, 2, 5))
                .and_then(|r| r.name)
        };
        assert_eq!(name(2), Some("two"));
        assert_eq!(name(1), Some("any"));
        assert_eq!(name(0), None);
    }

    #[test]
    fn ha_classes_follow_the_kind_unless_stated() {
        let mut rule = CodeRule::new(CodePattern::parse("0-1:24.2.5").unwrap());
        rule.kind = Some(Quantity::Energy);
        assert_eq!(rule.ha_device_class(), Some("energy"));
        assert_eq!(rule.ha_state_class(), Some("total_increasing"));
        rule = rule.with_ha_classes(Some(""), Some("total"));
        assert_eq!(rule.ha_device_class(), None);
        assert_eq!(rule.ha_state_class(), Some("total"));
        assert_eq!("flow".parse::<Quantity>(), Ok(Quantity::Flow));
        assert!(
            "heat"
                .parse::<Quantity>()
                .unwrap_err()
                .contains("energy, power")
        );
    }

    #[test]
    fn raw_names_fit_every_view() {
        assert_eq!(
            raw_name(&ObisCode::new(0, 1, 24, 2, 10)),
            "obis_0_1_24_2_10"
        );
    }
}
