use crate::http::dechunk;
use crate::servers::unquote;
use crate::{component, metric, metric_sum, percent_encode};

const EXPOSITION: &str = "\
# HELP p1gw_sink_sent_total Readings sent.
# TYPE p1gw_sink_sent_total counter
p1gw_sink_sent_total{sink=\"mqtt\"} 3
p1gw_sink_sent_total{sink=\"influx\"} 4
p1gw_sink_sent_total_extra{sink=\"mqtt\"} 100
p1gw_up 1
";

#[test]
fn metric_takes_the_first_matching_sample_and_metric_sum_adds_them_all() {
    assert_eq!(
        metric(EXPOSITION, "p1gw_sink_sent_total", &[("sink", "influx")]),
        Some(4.0)
    );
    assert_eq!(metric(EXPOSITION, "p1gw_sink_sent_total", &[]), Some(3.0));
    assert_eq!(metric_sum(EXPOSITION, "p1gw_sink_sent_total", &[]), 7.0);
    assert_eq!(metric(EXPOSITION, "p1gw_up", &[]), Some(1.0));
    assert_eq!(metric(EXPOSITION, "p1gw_nothing", &[]), None);
    assert_eq!(metric_sum(EXPOSITION, "p1gw_nothing", &[]), 0.0);
}

#[test]
fn chunked_bodies_are_joined() {
    assert_eq!(
        dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "hello world"
    );
}

#[test]
fn query_parameters_are_percent_encoded() {
    assert_eq!(
        percent_encode("SELECT \"a\" FROM b_c.d~"),
        "SELECT%20%22a%22%20FROM%20b_c.d~"
    );
}

#[test]
fn printf_q_quoting_is_undone() {
    assert_eq!(unquote("'/tmp/a b'"), "/tmp/a b");
    assert_eq!(unquote("/tmp/a\\ b"), "/tmp/a b");
    assert_eq!(unquote("1883"), "1883");
}

#[test]
fn a_component_is_found_by_name() {
    let status = r#"{"components":[{"name":"reader:home","state":"ok"},{"name":"sink:mqtt","state":"degraded"}]}"#;
    assert_eq!(
        component(status, "sink:mqtt").map(|c| c["state"].clone()),
        Some("degraded".into())
    );
    assert_eq!(component(status, "sink:influx"), None);
    assert_eq!(component("not json", "sink:mqtt"), None);
}
