//! `[meter.codes]`: rules read into the meter's code table, and every mistake located.

use p1_core::{CodePattern, Quantity};
use p1_telegram::ObisCode;

use crate::config::error::Location;
use crate::config::tests::{errors_of, text, valid};

/// A meter named `home` with `lines` after its `[meter]` table, as the lines of a file.
fn meter_with<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec![
        "[meter]",
        r#"name = "home""#,
        r#"tz = "Atlantic/Reykjavik""#,
    ];
    all.extend(lines);
    all.extend(["[source]", r#"kind = "simulate""#]);
    all
}

#[test]
fn veitur_heat_registers_become_energy_in_mwh() {
    let config = valid(&meter_with(&[
        r#"[meter.codes."0-1:24.2.5"]"#,
        r#"name = "heat_energy_total""#,
        r#"unit = "MWh""#,
        r#"kind = "energy""#,
        r#"[meter.codes."0-n:24.2.10"]"#,
        "publish = false",
        r#"[meter.codes."0-1:24.2.6"]"#,
        r#"name = "heat_energy_total_2""#,
        r#"unit = "kWh""#,
        "scale = 1000",
        r#"device_class = "energy""#,
        r#"state_class = "total""#,
    ]));
    let codes = &config.meters[0].codes;
    assert_eq!(codes.rules().len(), 3);
    let heat = codes.rule(&ObisCode::new(0, 1, 24, 2, 5)).expect("rule");
    assert_eq!(heat.name, Some("heat_energy_total"));
    assert_eq!(heat.unit.as_deref(), Some("MWh"));
    assert_eq!(heat.kind, Some(Quantity::Energy));
    assert_eq!(heat.ha_device_class(), Some("energy"));
    assert_eq!(heat.ha_state_class(), Some("total_increasing"));
    assert!(heat.publish);
    let second = codes.rule(&ObisCode::new(0, 1, 24, 2, 6)).expect("rule");
    assert_eq!(second.scale, Some(1000.0));
    assert_eq!(second.ha_state_class(), Some("total"));
    let hidden = codes
        .rule(&ObisCode::new(0, 3, 24, 2, 10))
        .expect("any channel");
    assert!(!hidden.publish);
    assert_eq!(hidden.code, CodePattern::parse("0-n:24.2.10").unwrap());
    // A meter without rules has an empty table.
    assert!(valid(&meter_with(&[])).meters[0].codes.is_empty());
}

#[test]
fn rules_in_a_meters_entry_are_that_meters() {
    let config = valid(&[
        "[[meters]]",
        r#"name = "house""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "source = { kind = \"simulate\" }",
        "[[meters]]",
        r#"name = "shop""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "source = { kind = \"simulate\" }",
        r#"codes = { "1-0:1.8.0" = { name = "import" } }"#,
    ]);
    assert!(config.meters[0].codes.is_empty());
    let rule = config.meters[1].codes.rule(&ObisCode::new(1, 0, 1, 8, 0));
    assert_eq!(rule.and_then(|r| r.name), Some("import"));
}

struct Broken {
    what: &'static str,
    lines: &'static [&'static str],
    line: usize,
    column: usize,
    key: &'static str,
    message: &'static str,
}

const BROKEN: &[Broken] = &[
    Broken {
        what: "a key that is no code",
        lines: &[r#"[meter.codes."24.2.5"]"#, r#"name = "x""#],
        line: 4,
        column: 14,
        key: "meter.codes.\"24.2.5\"",
        message: "is not an OBIS code: write A-B:C.D.E",
    },
    Broken {
        what: "a name with a capital",
        lines: &[r#"[meter.codes."0-1:24.2.5"]"#, r#"name = "HeatEnergy""#],
        line: 5,
        column: 8,
        key: "meter.codes.\"0-1:24.2.5\".name",
        message: "lower-case ASCII letters, digits and '_'",
    },
    Broken {
        what: "a kind nobody knows",
        lines: &[r#"[meter.codes."0-1:24.2.5"]"#, r#"kind = "heat""#],
        line: 5,
        column: 8,
        key: "meter.codes.\"0-1:24.2.5\".kind",
        message: "unknown kind \"heat\"; one of energy, power",
    },
    Broken {
        what: "a scale of zero",
        lines: &[r#"[meter.codes."0-1:24.2.5"]"#, "scale = 0"],
        line: 5,
        column: 9,
        key: "meter.codes.\"0-1:24.2.5\".scale",
        message: "a finite number other than 0",
    },
    Broken {
        what: "energy in a unit Home Assistant refuses",
        lines: &[
            r#"[meter.codes."0-1:24.2.5"]"#,
            r#"kind = "energy""#,
            r#"unit = "kcal""#,
        ],
        line: 6,
        column: 8,
        key: "meter.codes.\"0-1:24.2.5\".unit",
        message: "Home Assistant takes an energy value only in Wh, kWh, MWh",
    },
    Broken {
        what: "an energy register measured",
        lines: &[
            r#"[meter.codes."0-1:24.2.5"]"#,
            r#"kind = "energy""#,
            r#"state_class = "measurement""#,
        ],
        line: 6,
        column: 15,
        key: "meter.codes.\"0-1:24.2.5\".state_class",
        message: "never \"measurement\"",
    },
    Broken {
        what: "a state class Home Assistant does not know",
        lines: &[r#"[meter.codes."0-1:24.2.5"]"#, r#"state_class = "rising""#],
        line: 5,
        column: 15,
        key: "meter.codes.\"0-1:24.2.5\".state_class",
        message: "Home Assistant's state classes are",
    },
    Broken {
        what: "an unknown key in a rule",
        lines: &[r#"[meter.codes."0-1:24.2.5"]"#, r#"units = "MWh""#],
        line: 5,
        column: 1,
        key: "meter.codes.\"0-1:24.2.5\".units",
        message: "unknown key `units`",
    },
    Broken {
        what: "one code spelt twice",
        lines: &[
            r#"[meter.codes."1-0:1.8.1"]"#,
            r#"name = "a""#,
            r#"[meter.codes."1-0:1.8.1.255"]"#,
            r#"name = "b""#,
        ],
        line: 4,
        column: 14,
        key: "meter.codes.\"1-0:1.8.1\"",
        message: "1-0:1.8.1 has two rules",
    },
];

#[test]
fn every_mistake_in_a_rule_is_located() {
    for case in BROKEN {
        let errors = errors_of(&text(&meter_with(case.lines)));
        assert_eq!(errors.len(), 1, "{}: {errors:#?}", case.what);
        let error = &errors[0];
        assert_eq!(error.key(), case.key, "{}: {error}", case.what);
        assert_eq!(
            error.location(),
            Some(Location {
                line: case.line,
                column: case.column
            }),
            "{}: {error}",
            case.what
        );
        assert!(
            error.message().contains(case.message),
            "{}: {error} should say {:?}",
            case.what,
            case.message
        );
    }
}
