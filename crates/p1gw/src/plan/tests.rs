//! The plan hands each reader what its meter's config says: here, the serial
//! request line (`request.invert` used to be dropped on the way).

use super::*;
use crate::config;

fn plan_of(source: &str) -> Plan {
    let text = format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\n[source]\n{source}\n\n[spool]\ndir = \"/tmp/p1gw-plan-test\"\n"
    );
    let valid = config::parse_str("test.toml", text, &|_| None)
        .and_then(|c| c.validate())
        .unwrap_or_else(|e| panic!("{}", config::error::report(&e)));
    plan(&valid, &Overrides::default()).expect("plan")
}

fn request_of(plan: &Plan) -> &p1_reader::RequestConfig {
    match &plan.meters[0].source {
        SourceConfig::Serial(serial) => &serial.request,
        other => panic!("expected a serial source, got {other:?}"),
    }
}

#[test]
fn the_request_line_reaches_the_reader_with_its_polarity() {
    let plan = plan_of(
        "kind = \"serial\"\nport = \"/dev/p1\"\npreset = \"veitur\"\nrequest = { line = \"rts\", mode = \"poll\", interval = \"15s\", invert = true }",
    );
    let request = request_of(&plan);
    assert_eq!(
        *request,
        p1_reader::RequestConfig {
            line: p1_reader::LineKind::Rts,
            mode: p1_reader::RequestMode::Poll,
            pulse: Duration::from_millis(50),
            interval: Duration::from_secs(15),
            invert: true,
        }
    );

    let plan = plan_of(
        "kind = \"serial\"\nport = \"/dev/p1\"\npreset = \"dsmr4\"\nrequest = { line = \"gpio:gpiochip0:17\", mode = \"pulse\", invert = true }",
    );
    let request = request_of(&plan);
    assert_eq!(
        request.line,
        p1_reader::LineKind::Gpio {
            chip: "gpiochip0".to_owned(),
            offset: 17
        }
    );
    assert!(request.invert, "a GPIO line is requested active-low");
}

#[test]
fn the_request_line_is_driven_as_is_by_default() {
    for source in [
        "kind = \"serial\"\nport = \"/dev/p1\"\npreset = \"veitur\"\nrequest = { line = \"dtr\" }",
        "kind = \"serial\"\nport = \"/dev/p1\"\npreset = \"veitur\"\nrequest = { line = \"dtr\", invert = false }",
    ] {
        let plan = plan_of(source);
        let request = request_of(&plan);
        assert_eq!(request.line, p1_reader::LineKind::Dtr, "{source}");
        assert!(!request.invert, "{source}");
    }
    let plan = plan_of("kind = \"serial\"\nport = \"/dev/p1\"\npreset = \"veitur\"");
    assert_eq!(*request_of(&plan), p1_reader::RequestConfig::default());
}
