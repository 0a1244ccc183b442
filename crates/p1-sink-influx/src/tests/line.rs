//! Every escaping rule, the point writer, and properties: arbitrary strings written as a
//! point read back the same with [`super::parser`].

use proptest::prelude::*;

use super::parser::{self, Value};
use crate::line::{
    FieldValue, escape_key, escape_measurement, escape_string_field, write_float, write_point,
};

fn measurement(s: &str) -> String {
    let mut out = String::new();
    escape_measurement(&mut out, s);
    out
}

fn key(s: &str) -> String {
    let mut out = String::new();
    escape_key(&mut out, s);
    out
}

fn string_field(s: &str) -> String {
    let mut out = String::new();
    escape_string_field(&mut out, s);
    out
}

#[test]
fn measurement_escapes_comma_and_space_only() {
    assert_eq!(measurement("electricity"), "electricity");
    assert_eq!(measurement("a,b"), r"a\,b");
    assert_eq!(measurement("a b"), r"a\ b");
    assert_eq!(measurement("a=b"), "a=b");
    assert_eq!(measurement(r#"a"b"#), r#"a"b"#);
}

#[test]
fn keys_and_tag_values_escape_comma_equals_and_space() {
    assert_eq!(key("meter"), "meter");
    assert_eq!(key("a,b"), r"a\,b");
    assert_eq!(key("a=b"), r"a\=b");
    assert_eq!(key("a b"), r"a\ b");
    assert_eq!(key(",= "), r"\,\=\ ");
    assert_eq!(
        key(r#"a"b"#),
        r#"a"b"#,
        "quotes are plain outside string values"
    );
}

#[test]
fn a_backslash_is_doubled_only_where_a_reader_would_take_it_for_an_escape() {
    // Before an ordinary character it stays single (InfluxDB 1.x and 2.x read it literally).
    assert_eq!(key(r"a\b"), r"a\b");
    assert_eq!(measurement(r"a\b"), r"a\b");
    // At the end of the element, before another backslash, or before an escaped character.
    assert_eq!(key(r"a\"), r"a\\");
    assert_eq!(key(r"a\\b"), r"a\\\b");
    assert_eq!(key(r"a\,b"), r"a\\\,b");
    assert_eq!(key(r"a\=b"), r"a\\\=b");
    assert_eq!(key(r"a\ b"), r"a\\\ b");
    assert_eq!(measurement(r"a\,b"), r"a\\\,b");
    // `=` is not special in a measurement, so a backslash before it is not doubled there.
    assert_eq!(measurement(r"a\=b"), r"a\=b");
}

#[test]
fn string_field_values_are_quoted_with_quotes_and_backslashes_escaped() {
    assert_eq!(string_field("on"), r#""on""#);
    assert_eq!(string_field(r#"say "hi""#), r#""say \"hi\"""#);
    assert_eq!(string_field(r"C:\p1"), r#""C:\\p1""#);
    assert_eq!(string_field(r"\"), r#""\\""#);
    assert_eq!(
        string_field("a, b=c"),
        r#""a, b=c""#,
        "commas, equals signs and spaces are plain inside quotes"
    );
}

#[test]
fn line_breaks_cannot_be_written_and_become_spaces() {
    assert_eq!(measurement("a\nb"), r"a\ b");
    assert_eq!(key("a\r\nb"), r"a\ \ b");
    assert_eq!(key("a\\\n"), r"a\\\ ", "the backslash before it is doubled");
    assert_eq!(string_field("a\nb"), r#""a b""#);
}

#[test]
fn a_point_has_sorted_tags_fields_in_order_and_a_timestamp() {
    let mut out = String::new();
    let written = write_point(
        &mut out,
        "electricity",
        &[("meter", "home"), ("equipment_id", "E 1"), ("channel", "")],
        &[
            ("power_import", FieldValue::Float(0.588)),
            ("count", FieldValue::Integer(-3)),
            ("note", FieldValue::String("a \"b\"")),
            ("ok", FieldValue::Boolean(true)),
            ("bad", FieldValue::Float(f64::NAN)),
            ("inf", FieldValue::Float(f64::INFINITY)),
            ("", FieldValue::Float(1.0)),
        ],
        Some(1_707_776_474),
    );
    assert!(written);
    assert_eq!(
        out,
        "electricity,equipment_id=E\\ 1,meter=home power_import=0.588,count=-3i,note=\"a \\\"b\\\"\",ok=true 1707776474\n"
    );
}

#[test]
fn floats_are_written_as_plain_decimals_that_read_back_exactly() {
    for (value, text) in [
        (1.0, "1"),
        (0.1, "0.1"),
        (-0.0, "-0"),
        (1988.284, "1988.284"),
        (1e21, "1000000000000000000000"),
        (1.5e-7, "0.00000015"),
    ] {
        let mut out = String::new();
        write_point(&mut out, "m", &[], &[("f", FieldValue::Float(value))], None);
        assert_eq!(out, format!("m f={text}\n"));
        let p = parser::parse(out.trim_end()).expect("parse");
        assert_eq!(p.fields[0].1, Value::Float(value));
    }
}

/// `write_float` is `format!("{f}")`, faster: the same text for the edge cases of zmij's
/// exponent form (and the properties below for any float).
#[test]
fn floats_are_written_as_display_writes_them() {
    for f in [
        0.0,
        -0.0,
        2.0,
        -2.0,
        0.588,
        1e-5,
        1.5e-5,
        1e-7,
        -1.2345e-7,
        1e15,
        1e16,
        1.5e16,
        123_456_789_012_345_680.0,
        1e21,
        1e22,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        5e-324,
        2.2250738585072014e-308,
        0.1 + 0.2,
        9_007_199_254_740_993.0,
    ] {
        let mut out = String::new();
        write_float(&mut out, f);
        assert_eq!(out, format!("{f}"), "{f:e}");
    }
}

#[test]
fn a_point_without_a_writable_field_writes_nothing() {
    let mut out = String::from("before\n");
    assert!(!write_point(
        &mut out,
        "m",
        &[("t", "v")],
        &[] as &[(&str, FieldValue<'_>)],
        Some(1)
    ));
    assert!(!write_point(
        &mut out,
        "m",
        &[],
        &[("f", FieldValue::Float(f64::NAN))],
        Some(1)
    ));
    assert_eq!(out, "before\n");
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// Any string without line breaks, not empty.
fn text() -> impl Strategy<Value = String> {
    any::<String>()
        .prop_map(|s| s.replace(['\n', '\r'], ""))
        .prop_filter("not empty", |s| !s.is_empty())
}

/// Text with the characters that matter over-represented.
fn tricky() -> impl Strategy<Value = String> {
    prop_oneof![
        text(),
        proptest::collection::vec(
            prop_oneof![
                Just('\\'),
                Just(','),
                Just('='),
                Just(' '),
                Just('"'),
                Just('#'),
                Just('a'),
                Just('é'),
            ],
            1..12
        )
        .prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

#[derive(Debug, Clone)]
enum AnyValue {
    Float(f64),
    Integer(i64),
    String(String),
    Boolean(bool),
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(AnyValue::Float),
        any::<i64>().prop_map(AnyValue::Integer),
        prop_oneof![tricky(), Just(String::new())].prop_map(AnyValue::String),
        any::<bool>().prop_map(AnyValue::Boolean),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_point_reads_back_the_same(
        m in tricky().prop_filter("not a comment", |m| !m.starts_with('#')),
        tags in proptest::collection::btree_map(tricky(), tricky(), 0..4),
        fields in proptest::collection::vec((tricky(), any_value()), 1..4),
        timestamp in proptest::option::of(any::<i64>()),
    ) {
        let tag_refs: Vec<(&str, &str)> =
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let field_values: Vec<(&str, FieldValue<'_>)> = fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    AnyValue::Float(f) => FieldValue::Float(*f),
                    AnyValue::Integer(i) => FieldValue::Integer(*i),
                    AnyValue::String(s) => FieldValue::String(s),
                    AnyValue::Boolean(b) => FieldValue::Boolean(*b),
                };
                (k.as_str(), v)
            })
            .collect();
        let mut out = String::new();
        prop_assert!(write_point(&mut out, &m, &tag_refs, &field_values, timestamp.map(i128::from)));
        prop_assert!(out.ends_with('\n'));
        prop_assert_eq!(out.matches(['\n', '\r']).count(), 1, "one line: {:?}", out);

        let p = parser::parse(out.trim_end_matches('\n')).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&p.measurement, &m);
        // A BTreeMap is sorted by key, as the writer sorts tags.
        let want_tags: Vec<(String, String)> = tags.into_iter().collect();
        prop_assert_eq!(p.tags, want_tags);
        let want_fields: Vec<(String, Value)> = fields
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    AnyValue::Float(f) => Value::Float(f),
                    AnyValue::Integer(i) => Value::Integer(i),
                    AnyValue::String(s) => Value::String(s),
                    AnyValue::Boolean(b) => Value::Boolean(b),
                };
                (k, v)
            })
            .collect();
        prop_assert_eq!(p.fields, want_fields);
        prop_assert_eq!(p.timestamp, timestamp.map(i128::from));
    }

    #[test]
    fn any_float_is_written_as_display_writes_it(bits in any::<u64>()) {
        let f = f64::from_bits(bits);
        prop_assume!(f.is_finite());
        let mut out = String::new();
        write_float(&mut out, f);
        prop_assert_eq!(out, format!("{f}"));
    }

    #[test]
    fn any_meter_value_is_written_as_display_writes_it(
        mantissa in -10_000_000_000i64..10_000_000_000,
        scale in 0i32..10,
        factor in prop_oneof![Just(0.001), Just(1.0), Just(1000.0)],
    ) {
        // What the reading encoder writes: a meter's decimal as f64, in a canonical unit.
        let f = mantissa as f64 / 10f64.powi(scale) * factor;
        let mut out = String::new();
        write_float(&mut out, f);
        prop_assert_eq!(out, format!("{f}"));
    }

    #[test]
    fn escaped_keys_and_measurements_read_back_alone(s in tricky()) {
        // As a tag value between two others, and as a measurement.
        let line = format!("m,a=1,k={},z=2 f=1", key(&s));
        let p = parser::parse(&line).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&p.tags[1].1, &s);
        if !s.starts_with('#') {
            let line = format!("{} f=1", measurement(&s));
            let p = parser::parse(&line).map_err(TestCaseError::fail)?;
            prop_assert_eq!(p.measurement, s);
        }
    }
}
