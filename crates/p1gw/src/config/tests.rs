//! Tests of the configuration layer: broken configurations located exactly, the example files,
//! round trips, the demo, secrets, and `check`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::daemon::LogFormat;
use super::error::Location;
use super::secret::{Secret, SecretSource};
use super::sink::{InfluxTarget, Qos, ValidSinkKind};
use super::source::{
    LineKind, LineSettings, Pace, Parity, Preset, Profile, RequestMode, ValidSource,
};
use super::value::{RawSize, format_duration, format_size, parse_duration, parse_size};
use super::*;

pub(super) fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn text(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse_str("test.toml", text.to_owned(), &no_env)
}

pub(super) fn valid(lines: &[&str]) -> ValidConfig {
    valid_with_env(lines, &no_env)
}

pub(super) fn valid_with_env(lines: &[&str], env: &dyn Fn(&str) -> Option<String>) -> ValidConfig {
    valid_text(&text(lines), env)
}

/// `text` as a valid configuration, or a panic that shows its errors.
pub(super) fn valid_text(text: &str, env: &dyn Fn(&str) -> Option<String>) -> ValidConfig {
    match parse_str("test.toml", text.to_owned(), env).and_then(|c| c.validate()) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{}", error::report(&errors)),
    }
}

/// The errors of stage one, or else of stage two; empty when the config is valid.
pub(super) fn errors_of(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Err(errors) => errors,
        Ok(config) => config.validate().err().unwrap_or_default(),
    }
}

/// The one error of `text`, as printed; a panic when there is none or more than one.
pub(super) fn one_error(text: &str) -> String {
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{text}: {errors:#?}");
    errors[0].to_string()
}

/// A configuration of one simulated meter and one `[[sink]]` of `kind` with `lines`.
pub(super) fn sink_config(kind: &str, lines: &[&str]) -> String {
    let mut config = format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n[source]\nkind = \"simulate\"\n[[sink]]\nkind = {kind:?}\n"
    );
    for line in lines {
        config.push_str(line);
        config.push('\n');
    }
    config
}

/// The one sink of [`sink_config`]`(kind, lines)`, validated.
pub(super) fn only_sink(kind: &str, lines: &[&str]) -> sink::ValidSinkKind {
    valid_text(&sink_config(kind, lines), &no_env).sinks[0]
        .kind
        .clone()
}

/// The one error of [`sink_config`]`(kind, lines)`.
pub(super) fn sink_error(kind: &str, lines: &[&str]) -> String {
    one_error(&sink_config(kind, lines))
}

pub(super) fn env_from(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A broken configuration and the one error it must give.
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
        what: "wrong type",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            "max_telegram_bytes = true",
        ],
        line: 8,
        column: 22,
        key: "source.max_telegram_bytes",
        message: "invalid type: boolean `true`",
    },
    Broken {
        what: "a number as a string is not coerced",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            r#"baud = "9600""#,
        ],
        line: 8,
        column: 8,
        key: "source.baud",
        message: "invalid type: string \"9600\", expected an integer from 0 to 4294967295",
    },
    Broken {
        what: "out of range for the type",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            "data_bits = 300",
        ],
        line: 8,
        column: 13,
        key: "source.data_bits",
        message: "invalid value: integer `300`, expected an integer from 0 to 255",
    },
    Broken {
        what: "unknown top-level key",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[mqtt]",
            r#"url = "mqtt://broker""#,
        ],
        line: 6,
        column: 2,
        key: "mqtt",
        message: "unknown key, expected one of meter, meters, source, sink, http, spool, log; a sink is a [[sink]] entry with kind = \"mqtt\"",
    },
    Broken {
        what: "unknown nested key",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[http]",
            r#"listn = "127.0.0.1:9600""#,
        ],
        line: 7,
        column: 1,
        key: "http.listn",
        message: "unknown key `listn`, expected one of `listen`, `token_file`, `history`",
    },
    Broken {
        what: "unknown key in an inline table",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            r#"request = { line = "rts", mod = "hold" }"#,
        ],
        line: 8,
        column: 27,
        key: "source.request.mod",
        message: "unknown key `mod`",
    },
    Broken {
        what: "unknown key in a sink",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "jsonl""#,
            r#"path = "/tmp/r.jsonl""#,
            "[[sink]]",
            r#"kind = "stdout""#,
            "pretty = true",
        ],
        line: 11,
        column: 1,
        key: "sink[1].pretty",
        message: "unknown key `pretty`, expected `name`",
    },
    Broken {
        what: "unknown sink kind",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "mqq""#,
        ],
        line: 7,
        column: 8,
        key: "sink[0].kind",
        message: "unknown variant \"mqq\", expected one of mqtt, influx, azure-iot, jsonl, stdout",
    },
    Broken {
        what: "source without kind",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"port = "/dev/p1""#,
        ],
        line: 4,
        column: 1,
        key: "source.kind",
        message: "missing required key, expected one of serial, tcp, replay, simulate",
    },
    Broken {
        what: "unknown preset",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitr""#,
        ],
        line: 7,
        column: 10,
        key: "source.preset",
        message: "unknown variant `veitr`, expected one of `veitur`, `veitur-7e1`, `dsmr22`, `dsmr4`",
    },
    Broken {
        what: "duration without a unit",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            r#"interval = "10""#,
        ],
        line: 6,
        column: 12,
        key: "source.interval",
        message: "\"10\" has no unit; write e.g. \"10s\"",
    },
    Broken {
        what: "duration as a bare integer",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "interval = 10",
        ],
        line: 6,
        column: 12,
        key: "source.interval",
        message: "\"10\" has no unit",
    },
    Broken {
        what: "negative duration",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "tcp""#,
            r#"address = "192.168.1.20:8088""#,
            r#"reconnect = { min = "-5s" }"#,
        ],
        line: 7,
        column: 21,
        key: "source.reconnect.min",
        message: "a duration cannot be negative",
    },
    Broken {
        what: "zero where zero makes no sense",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "tcp""#,
            r#"address = "192.168.1.20:8088""#,
            "[source.reconnect]",
            r#"min = "0s""#,
        ],
        line: 8,
        column: 7,
        key: "source.reconnect.min",
        message: "must be longer than 0s",
    },
    Broken {
        what: "reconnect max below min",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "tcp""#,
            r#"address = "192.168.1.20:8088""#,
            r#"reconnect = { min = "30s", max = "10s" }"#,
        ],
        line: 7,
        column: 34,
        key: "source.reconnect.max",
        message: "max (10s) is shorter than min (30s)",
    },
    Broken {
        what: "replay interval that is neither a duration nor recorded",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "replay""#,
            r#"path = "fixtures/recording.txt""#,
            r#"interval = "fast""#,
        ],
        line: 7,
        column: 12,
        key: "source.interval",
        message: "or \"recorded\"",
    },
    Broken {
        what: "bad size unit",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[spool]",
            r#"max_bytes = "64 parsecs""#,
        ],
        line: 7,
        column: 13,
        key: "spool.max_bytes",
        message: "unknown unit \"parsecs\"",
    },
    Broken {
        what: "spool too small",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[spool]",
            r#"max_bytes = "16KiB""#,
        ],
        line: 7,
        column: 13,
        key: "spool.max_bytes",
        message: "16KiB is too small for a spool; use at least \"1MiB\"",
    },
    Broken {
        what: "too little memory for a failing disk",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[spool]",
            r#"memory = "1KiB""#,
        ],
        line: 7,
        column: 10,
        key: "spool.memory",
        message: "1KiB is too little to hold readings while the disk fails; use at least \"64KiB\"",
    },
    Broken {
        what: "bad reserve",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[spool]",
            r#"reserve = "lots""#,
        ],
        line: 7,
        column: 11,
        key: "spool.reserve",
        message: "lots",
    },
    Broken {
        what: "telegram size out of range",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "tcp""#,
            r#"address = "192.168.1.20:8088""#,
            "max_telegram_bytes = 100",
        ],
        line: 7,
        column: 22,
        key: "source.max_telegram_bytes",
        message: "100 bytes: must be from 1KiB",
    },
    Broken {
        what: "unknown time zone",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Europe/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
        ],
        line: 3,
        column: 6,
        key: "meter.tz",
        message: "unknown time zone \"Europe/Reykjavik\"",
    },
    Broken {
        what: "meter name with a space",
        lines: &[
            "[meter]",
            r#"name = "my home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
        ],
        line: 2,
        column: 8,
        key: "meter.name",
        message: "a name may hold only ASCII letters, digits, '-' and '_'",
    },
    Broken {
        what: "missing required key",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "",
            "[source]",
            r#"kind = "serial""#,
            r#"preset = "veitur""#,
        ],
        line: 5,
        column: 1,
        key: "source.port",
        message: "missing required key",
    },
    Broken {
        what: "missing [source]",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
        ],
        line: 1,
        column: 1,
        key: "source",
        message: "missing required table: add [source]",
    },
    Broken {
        what: "no preset and not every line setting",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            "baud = 9600",
        ],
        line: 4,
        column: 1,
        key: "source.preset",
        message: "missing required key: name a preset",
    },
    Broken {
        what: "both meter forms",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[meters]]",
            r#"name = "cabin""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"source = { kind = "simulate" }"#,
        ],
        line: 6,
        column: 3,
        key: "meters",
        message: "use either [meter] with [source], or [[meters]], not both",
    },
    Broken {
        what: "duplicate meter names",
        lines: &[
            "[[meters]]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"source = { kind = "simulate" }"#,
            "[[meters]]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"source = { kind = "simulate", profile = "dsmr5" }"#,
        ],
        line: 6,
        column: 8,
        key: "meters[1].name",
        message: "duplicate meter name \"home\"; meters[0] has it already",
    },
    Broken {
        what: "two meters on one serial port",
        lines: &[
            "[[meters]]",
            r#"name = "house""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"source = { kind = "serial", port = "/dev/p1", preset = "veitur" }"#,
            "[[meters]]",
            r#"name = "flat""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"source = { kind = "serial", port = "/dev/p1", preset = "dsmr4" }"#,
        ],
        line: 8,
        column: 36,
        key: "meters[1].source.port",
        message: "two meters on one serial port: meter \"house\" (meters[0]) reads /dev/p1 already",
    },
    Broken {
        what: "meter entry without a source",
        lines: &[
            "[[meters]]",
            r#"name = "house""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"source = { kind = "simulate" }"#,
            "",
            "[[meters]]",
            r#"name = "flat""#,
            r#"tz = "Atlantic/Reykjavik""#,
        ],
        line: 6,
        column: 1,
        key: "meters[1].source",
        message: "missing required key",
    },
    Broken {
        what: "request interval below 10 s with a Veitur preset",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            r#"request = { line = "rts", mode = "poll", interval = "5s" }"#,
        ],
        line: 8,
        column: 53,
        key: "source.request.interval",
        message: "5s is below the 10s minimum of a Veitur meter",
    },
    Broken {
        what: "bad request line",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "dsmr4""#,
            "[source.request]",
            r#"line = "gpio:17""#,
        ],
        line: 9,
        column: 8,
        key: "source.request.line",
        message: "\"gpio:17\": expected \"none\", \"rts\", \"dtr\" or \"gpio:<chip>:<offset>\"",
    },
    Broken {
        what: "pulse length outside pulse mode",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            r#"request = { line = "dtr", mode = "poll", pulse = "50ms" }"#,
        ],
        line: 8,
        column: 42,
        key: "source.request.pulse",
        message: "pulse is only used with mode = \"pulse\"",
    },
    Broken {
        what: "an inverted request line without a line",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            r#"request = { mode = "hold", invert = true }"#,
        ],
        line: 8,
        column: 37,
        key: "source.request.invert",
        message: "invert = true needs a request line to invert",
    },
    Broken {
        what: "invert is not a boolean",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "serial""#,
            r#"port = "/dev/p1""#,
            r#"preset = "veitur""#,
            "[source.request]",
            r#"line = "rts""#,
            r#"invert = "yes""#,
        ],
        line: 10,
        column: 10,
        key: "source.request.invert",
        message: "invalid type: string \"yes\", expected true or false",
    },
    Broken {
        what: "a spike guard power without a unit",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"spike_guard = { max_power = "100" }"#,
            "[source]",
            r#"kind = "simulate""#,
        ],
        line: 4,
        column: 29,
        key: "meter.spike_guard.max_power",
        message: "\"100\" has no unit; write e.g. \"100kW\" (units: W, kW, MW)",
    },
    Broken {
        what: "a spike guard flow of zero, in a [[meters]] entry",
        lines: &[
            "[[meters]]",
            r#"name = "cabin""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "source = { kind = \"simulate\" }",
            "[meters.spike_guard]",
            r#"max_flow = "0l/min""#,
        ],
        line: 6,
        column: 12,
        key: "meters[0].spike_guard.max_flow",
        message: "the flow must be more than 0",
    },
    Broken {
        what: "an unknown spike guard key",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[meter.spike_guard]",
            "max_jump = 5",
            "[source]",
            r#"kind = "simulate""#,
        ],
        line: 5,
        column: 1,
        key: "meter.spike_guard.max_jump",
        message: "unknown key `max_jump`, expected one of `enabled`, `max_power`, `max_flow`",
    },
    Broken {
        what: "tcp address without a port",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Europe/Amsterdam""#,
            "[source]",
            r#"kind = "tcp""#,
            r#"address = "192.168.1.20""#,
        ],
        line: 6,
        column: 11,
        key: "source.address",
        message: "has no port",
    },
    Broken {
        what: "bad MQTT URL scheme",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "",
            "[[sink]]",
            r#"kind = "mqtt""#,
            r#"url = "http://broker.local:1883""#,
        ],
        line: 9,
        column: 7,
        key: "sink[0].url",
        message: "unsupported scheme \"http\", expected one of mqtt, mqtts, tcp, ssl",
    },
    Broken {
        what: "bad InfluxDB URL scheme",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "influx""#,
            r#"url = "mqtt://localhost:8086""#,
            r#"api = "v1""#,
            r#"database = "p1""#,
        ],
        line: 8,
        column: 7,
        key: "sink[0].url",
        message: "unsupported scheme \"mqtt\", expected one of http, https",
    },
    Broken {
        what: "password inline",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "mqtt""#,
            r#"url = "mqtts://broker.local:8883""#,
            r#"username = "p1gw""#,
            r#"password = "hunter2""#,
        ],
        line: 10,
        column: 1,
        key: "sink[0].password",
        message: "secrets are not accepted in the configuration file; put it in a file named by password_file, or set P1GW_MQTT_PASSWORD",
    },
    Broken {
        what: "token inline in [http]",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[http]",
            r#"listen = "0.0.0.0:9600""#,
            r#"  token = "hunter2""#,
        ],
        line: 8,
        column: 3,
        key: "http.token",
        message: "put it in a file named by token_file, or set P1GW_HTTP_TOKEN",
    },
    Broken {
        what: "credentials in a URL",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "mqtt""#,
            r#"url = "mqtt://p1gw:hunter2@broker.local""#,
        ],
        line: 8,
        column: 7,
        key: "sink[0].url",
        message: "credentials in the URL are not accepted",
    },
    Broken {
        what: "password file without a username",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "mqtt""#,
            r#"url = "mqtt://broker.local""#,
            r#"password_file = "/etc/p1gw/mqtt.pass""#,
        ],
        line: 9,
        column: 17,
        key: "sink[0].password_file",
        message: "a password needs a username",
    },
    Broken {
        what: "TLS file with a plain URL",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "mqtt""#,
            r#"url = "mqtt://broker.local""#,
            r#"ca_file = "/etc/p1gw/ca.pem""#,
        ],
        line: 9,
        column: 1,
        key: "sink[0].ca_file",
        message: "ca_file is only used with TLS",
    },
    Broken {
        what: "qos out of range",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "mqtt""#,
            r#"url = "mqtt://broker.local""#,
            "qos = 3",
        ],
        line: 9,
        column: 7,
        key: "sink[0].qos",
        message: "3: qos is 0, 1 or 2",
    },
    Broken {
        what: "unknown MQTT protocol version",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "mqtt""#,
            r#"url = "mqtt://broker.local""#,
            r#"protocol = "3.1""#,
        ],
        line: 9,
        column: 12,
        key: "sink[0].protocol",
        message: r#""3.1": protocol is "3.1.1" or "5""#,
    },
    Broken {
        what: "InfluxDB v2 without a token",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "influx""#,
            r#"url = "http://localhost:8086""#,
            r#"api = "v2""#,
            r#"org = "home""#,
            r#"bucket = "p1""#,
        ],
        line: 6,
        column: 1,
        key: "sink[0].token_file",
        message: "missing required key: api = \"v2\" needs a token; set token_file, or P1GW_INFLUX_TOKEN",
    },
    Broken {
        what: "InfluxDB v1 with a v2 key",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "influx""#,
            r#"url = "http://localhost:8086""#,
            r#"api = "v1""#,
            r#"database = "p1""#,
            r#"org = "home""#,
        ],
        line: 11,
        column: 1,
        key: "sink[0].org",
        message: "org is only used with api = \"v2\"",
    },
    Broken {
        what: "Azure interval over the daily budget",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "azure-iot""#,
            r#"connection_string_file = "/etc/p1gw/azure.conn""#,
            r#"interval = "5s""#,
        ],
        line: 9,
        column: 12,
        key: "sink[0].interval",
        message: "an interval of 5s sends 17280 messages a day, more than daily_message_budget = 8000; use \"11s\" or more",
    },
    Broken {
        what: "two sinks of one kind without names",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "stdout""#,
            "[[sink]]",
            r#"kind = "stdout""#,
        ],
        line: 8,
        column: 1,
        key: "sink[1]",
        message: "sink[0] is named \"stdout\" too",
    },
    Broken {
        what: "[sink] as a single table",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[sink]",
            r#"kind = "stdout""#,
        ],
        line: 6,
        column: 2,
        key: "sink",
        message: "a sink is a [[sink]] entry (an array of tables), not [sink]",
    },
    Broken {
        what: "listen address that is not IP:port",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[http]",
            r#"listen = "localhost:9600""#,
        ],
        line: 7,
        column: 10,
        key: "http.listen",
        message: "\"localhost:9600\" is not IP:port",
    },
    Broken {
        what: "unknown log level",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[log]",
            r#"level = "loud""#,
        ],
        line: 7,
        column: 9,
        key: "log.level",
        message: "\"loud\" is not a log level",
    },
    Broken {
        what: "TOML syntax error",
        lines: &["[meter]", r#"name = "home"#, r#"tz = "Atlantic/Reykjavik""#],
        line: 2,
        column: 13,
        key: "",
        message: "invalid basic string",
    },
    Broken {
        what: "duplicate key",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            r#"name = "cabin""#,
        ],
        line: 4,
        column: 1,
        key: "meter.name",
        message: "duplicate key",
    },
    Broken {
        what: "duplicate key in an array entry",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "stdout""#,
            "[[sink]] # the second",
            r#"kind = "jsonl""#,
            r#"path = "a.jsonl""#,
            r#"  path = "b.jsonl""#,
        ],
        line: 11,
        column: 3,
        key: "sink[1].path",
        message: "duplicate key",
    },
    Broken {
        what: "unknown key in a [[meters]] source sub-table",
        lines: &[
            "[[meters]]",
            r#"name = "house""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[meters.source]",
            r#"kind = "tcp""#,
            r#"address = "10.0.0.2:23""#,
            r#"adress = "10.0.0.2:23""#,
        ],
        line: 7,
        column: 1,
        key: "meters[0].source.adress",
        message: "unknown key `adress`, expected one of `address`, `reconnect`, `max_telegram_bytes`",
    },
    Broken {
        what: "quoted unknown key",
        lines: &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[http]",
            r#""time out" = "1s""#,
        ],
        line: 7,
        column: 1,
        key: "http.\"time out\"",
        message: "unknown key `time out`",
    },
];

#[test]
fn broken_configs_give_one_located_error_naming_the_key() {
    for case in BROKEN {
        let errors = errors_of(&text(case.lines));
        assert_eq!(
            errors.len(),
            1,
            "{}: expected one error, got:\n{}",
            case.what,
            error::report(&errors)
        );
        let error = &errors[0];
        assert_eq!(
            error.location(),
            Some(Location {
                line: case.line,
                column: case.column
            }),
            "{}: {error}",
            case.what
        );
        assert_eq!(error.key(), case.key, "{}: {error}", case.what);
        assert!(
            error.message().contains(case.message),
            "{}: {error:?} should say {:?}",
            case.what,
            case.message
        );
        let prefix = match case.key {
            "" => format!("test.toml:{}:{}: ", case.line, case.column),
            key => format!("test.toml:{}:{}: {key}: ", case.line, case.column),
        };
        assert!(
            error.to_string().starts_with(&prefix),
            "{}: {error} should start with {prefix:?}",
            case.what
        );
        assert_eq!(error.exit_code(), 78, "{}", case.what);
        assert!(
            !error.to_string().contains("hunter2") && !format!("{error:?}").contains("hunter2"),
            "{}: a secret leaked: {error}",
            case.what
        );
    }
}

#[test]
fn the_spike_guard_is_on_by_default_and_configurable_per_meter() {
    let config = valid(&[
        "[[meters]]",
        r#"name = "house""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "source = { kind = \"simulate\" }",
        "[[meters]]",
        r#"name = "shop""#,
        r#"tz = "Europe/Amsterdam""#,
        r#"spike_guard = { max_power = "0.5 MW", max_flow = "400l/min" }"#,
        "source = { kind = \"simulate\" }",
        "[[meters]]",
        r#"name = "lab""#,
        r#"tz = "Europe/Amsterdam""#,
        "spike_guard = { enabled = false }",
        "source = { kind = \"simulate\" }",
    ]);
    let guards: Vec<_> = config.meters.iter().map(|m| m.spike_guard).collect();
    assert_eq!(
        guards,
        [
            Some(source::GuardConfig {
                max_power_kw: 100.0,
                max_flow_m3_per_h: 25.0
            }),
            Some(source::GuardConfig {
                max_power_kw: 500.0,
                max_flow_m3_per_h: 24.0
            }),
            None,
        ]
    );
    assert_eq!(value::parse_power("2500W"), Ok(2.5));
    assert_eq!(value::parse_flow("6 m³/h"), Ok(6.0));
    assert!(value::parse_power("-5kW").is_err());
    assert!(value::parse_flow("5kW").is_err());
}

#[test]
fn there_are_at_least_twenty_broken_cases() {
    assert!(BROKEN.len() >= 20);
}

#[test]
fn validate_reports_every_problem_at_once_in_file_order() {
    let config = parse(&text(&[
        "[meter]",
        r#"name = "home""#,
        r#"tz = "Mars/Olympus""#,
        "[source]",
        r#"kind = "serial""#,
        r#"port = "/dev/p1""#,
        r#"preset = "veitur""#,
        r#"request = { line = "rts", mode = "pulse", interval = "2s" }"#,
        "[[sink]]",
        r#"kind = "mqtt""#,
        r#"url = "https://broker""#,
        "[spool]",
        r#"max_bytes = "1KiB""#,
        "[http]",
        r#"history = "1""#,
    ]))
    .expect("the shape is right");
    let errors = config.validate().expect_err("the values are not");
    let found: Vec<(String, Option<Location>)> = errors
        .iter()
        .map(|e| (e.key().to_owned(), e.location()))
        .collect();
    let at = |line, column| Some(Location { line, column });
    assert_eq!(
        found,
        [
            ("meter.tz".to_owned(), at(3, 6)),
            ("source.request.interval".to_owned(), at(8, 54)),
            ("sink[0].url".to_owned(), at(11, 7)),
            ("spool.max_bytes".to_owned(), at(13, 13)),
            ("http.history".to_owned(), at(15, 11)),
        ],
        "{}",
        error::report(&errors)
    );
    assert!(errors.iter().all(|e| e.kind() == ErrorKind::Invalid));
}

#[test]
fn load_reports_structural_errors_of_every_section() {
    let errors = parse(&text(&[
        "[meter]",
        r#"name = "home""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "[source]",
        r#"kind = "serial""#,
        "[[sink]]",
        r#"kind = "mqq""#,
        "[log]",
        r#"colour = true"#,
    ]))
    .expect_err("three sections are wrong");
    let keys: Vec<&str> = errors.iter().map(ConfigError::key).collect();
    assert_eq!(keys, ["source.port", "sink[0].kind", "log.colour"]);
    assert!(errors.iter().all(|e| e.kind() == ErrorKind::Structure));
}

#[test]
fn an_empty_file_names_what_is_missing() {
    let errors = errors_of("");
    assert_eq!(
        error::report(&errors),
        "test.toml:1:1: no meter configured: add [meter] and [source], or [[meters]] entries"
    );
}

#[test]
fn a_missing_file_is_an_io_error_with_exit_66() {
    let errors = load_with_env(Path::new("/nonexistent/p1gw.toml"), &no_env)
        .expect_err("there is no such file");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].kind(),
        ErrorKind::Io(std::io::ErrorKind::NotFound)
    );
    assert_eq!(error::exit_code(&errors), 66);
    assert!(
        errors[0]
            .to_string()
            .starts_with("/nonexistent/p1gw.toml: cannot read the configuration file: "),
        "{}",
        errors[0]
    );
}

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(config_dir())
        .expect("config/ exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| with_a_cable(&path))
        .collect();
    files.sort();
    files
}

/// The packaged `p1gw.toml` names no serial port on purpose (nothing is opened until the user
/// names the cable: a Zigbee stick may sit on the same chip); the examples are checked as they
/// are once `p1gw probe --write-config` (or the user) has named one: a copy with its commented
/// `port` line filled in. Every other file as it is.
fn with_a_cable(path: &Path) -> PathBuf {
    if path.file_name().is_none_or(|n| n != "p1gw.toml") {
        return path.to_owned();
    }
    let text = std::fs::read_to_string(path).expect("read p1gw.toml");
    let commented = "# port = \"/dev/serial/by-id/";
    assert!(
        text.lines().any(|l| l.starts_with(commented)),
        "p1gw.toml shows how a port is named"
    );
    let filled: String = text
        .lines()
        .map(|l| match l.strip_prefix("# port = ") {
            Some(rest) => format!("port = {rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("p1gw-config-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("p1gw.toml");
    std::fs::write(&copy, filled).expect("write copy");
    copy
}

#[test]
fn every_example_config_loads_and_validates() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "demo.toml",
        "dsmr5-tcp.toml",
        "p1gw.toml",
        "veitur-serial.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "config/{expected} is missing"
        );
    }
    for file in files {
        // Only `check` looks at the machine: files these name need not exist here.
        let config = load_with_env(&file, &no_env)
            .unwrap_or_else(|e| panic!("{}:\n{}", file.display(), error::report(&e)));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{}:\n{}", file.display(), error::report(&e)));
    }
}

#[test]
fn example_configs_say_what_their_names_promise() {
    let load = |name: &str| {
        load_with_env(&config_dir().join(name), &no_env)
            .and_then(|c| c.validate())
            .expect("valid")
    };

    let veitur = load("veitur-serial.toml");
    let ValidSource::Serial(serial) = &veitur.meters[0].source else {
        panic!("a serial source");
    };
    assert_eq!(
        serial.port,
        Path::new("/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10KZP45-if00-port0")
    );
    assert_eq!(serial.preset, Some(Preset::Veitur));
    assert_eq!(
        serial.settings,
        LineSettings {
            baud: 9600,
            data_bits: 7,
            parity: Parity::None,
            stop_bits: 1
        }
    );
    assert_eq!(serial.request.line, LineKind::Rts);
    assert_eq!(serial.request.mode, RequestMode::Poll);
    assert_eq!(serial.request.interval, Duration::from_secs(10));
    assert!(!serial.request.invert, "a P1 cable with a transistor stage");
    let kinds: Vec<&str> = veitur.sinks.iter().map(|s| s.kind.kind()).collect();
    assert_eq!(kinds, ["mqtt", "influx"]);
    let heat = veitur.meters[0]
        .codes
        .rule(&p1_telegram::ObisCode::new(0, 1, 24, 2, 5))
        .expect("a rule for Veitur's heat register");
    assert_eq!(
        (heat.name, heat.unit.as_deref(), heat.ha_device_class()),
        (Some("heat_energy_total"), Some("MWh"), Some("energy"))
    );
    assert_eq!(veitur.spool.dir, Path::new("/var/lib/p1gw"));
    assert_eq!(veitur.spool.max_bytes, 64 << 20);
    assert_eq!(
        (veitur.spool.reserve, veitur.spool.memory),
        (64 << 20, 8 << 20),
        "the defaults"
    );

    let dsmr = load("dsmr5-tcp.toml");
    let ValidSource::Tcp(tcp) = &dsmr.meters[0].source else {
        panic!("a tcp source");
    };
    assert_eq!(tcp.address(), "192.168.1.20:8088");
    assert_eq!(tcp.max_telegram_bytes, 16 << 10);
    assert_eq!(dsmr.meters[0].tz.iana_name(), Some("Europe/Amsterdam"));
    let ValidSinkKind::Influx(influx) = &dsmr.sinks[0].kind else {
        panic!("an influx sink first");
    };
    assert_eq!(
        influx.target,
        InfluxTarget::V2 {
            org: "home".to_owned(),
            bucket: "p1".to_owned(),
            token: SecretSource::File(PathBuf::from("/etc/p1gw/influx.token")),
        }
    );

    let packaged = load_with_env(&with_a_cable(&config_dir().join("p1gw.toml")), &no_env)
        .and_then(|c| c.validate())
        .expect("valid once a port is named");
    assert!(
        packaged.sinks.is_empty(),
        "the packaged default enables no sink"
    );
    assert!(
        matches!(packaged.meters[0].source, ValidSource::Serial(ref s)
            if s.port.starts_with("/dev/serial/by-id/") && s.request.mode == RequestMode::Hold),
        "a serial cable by its stable name, the request line raised once, never toggled"
    );
}

#[test]
fn demo_is_config_demo_toml_and_needs_nothing() {
    let demo = demo_with_env(&no_env);
    let file = load_with_env(&config_dir().join("demo.toml"), &no_env)
        .and_then(|c| c.validate())
        .expect("config/demo.toml is valid");
    assert_eq!(demo.meters, file.meters);
    assert_eq!(demo.sinks, file.sinks);
    assert_eq!(demo.http, file.http);
    assert_eq!(demo.spool, file.spool);
    assert_eq!(demo.log, file.log);
    assert_eq!(demo.origin_name(), DEMO_NAME);

    assert_eq!(demo.meters.len(), 1);
    let meter = &demo.meters[0];
    assert_eq!(meter.name, "demo");
    assert_eq!(meter.tz.iana_name(), Some("Atlantic/Reykjavik"));
    let ValidSource::Simulate(simulate) = &meter.source else {
        panic!("a simulated meter");
    };
    assert_eq!(simulate.profile, Profile::Veitur);
    assert_eq!(simulate.interval, Duration::from_secs(10));
    assert!(demo.sinks.is_empty());
    assert_eq!(demo.http.listen, "127.0.0.1:9600".parse().unwrap());
    assert_eq!(demo.http.token, None);
    assert_eq!(demo.spool.dir, Path::new("p1gw-state"));
    assert_eq!(demo.log.format, LogFormat::Auto);
}

#[test]
fn default_spool_dir_follows_systemd_then_xdg_then_home() {
    let dir = |pairs: &[(&str, &str)]| demo_with_env(&env_from(pairs)).spool.dir;
    assert_eq!(dir(&[]), Path::new("p1gw-state"));
    assert_eq!(
        dir(&[("HOME", "/home/anna")]),
        Path::new("/home/anna/.local/state/p1gw")
    );
    assert_eq!(
        dir(&[
            ("HOME", "/home/anna"),
            ("XDG_STATE_HOME", "/home/anna/state")
        ]),
        Path::new("/home/anna/state/p1gw")
    );
    assert_eq!(
        dir(&[
            ("HOME", "/home/anna"),
            ("XDG_STATE_HOME", "/x"),
            ("STATE_DIRECTORY", "/var/lib/p1gw:/var/lib/other")
        ]),
        Path::new("/var/lib/p1gw")
    );
    assert_eq!(
        dir(&[("STATE_DIRECTORY", ""), ("HOME", "/h")]),
        Path::new("/h/.local/state/p1gw")
    );
}

/// Loads, writes back as TOML, loads again: the same configuration.
fn assert_round_trip(name: &str, config: &Config) {
    let toml = config.to_toml();
    let again = parse_str(name, toml.clone(), &no_env)
        .unwrap_or_else(|e| panic!("{name} written back:\n{toml}\n{}", error::report(&e)));
    assert_eq!(again.meters, config.meters, "{name}:\n{toml}");
    assert_eq!(again.sinks, config.sinks, "{name}:\n{toml}");
    assert_eq!(again.http, config.http, "{name}:\n{toml}");
    assert_eq!(again.spool, config.spool, "{name}:\n{toml}");
    assert_eq!(again.log, config.log, "{name}:\n{toml}");
    let (a, b) = (
        config.validate().expect("valid"),
        again.validate().expect("still valid"),
    );
    assert_eq!(a.meters, b.meters);
    assert_eq!(a.sinks, b.sinks);
    assert_eq!(a.http, b.http);
    assert_eq!(a.spool, b.spool);
    assert_eq!(a.log, b.log);
}

#[test]
fn good_configs_round_trip() {
    for file in example_files() {
        let config = load_with_env(&file, &no_env).expect("loads");
        assert_round_trip(&file.display().to_string(), &config);
    }
    let everything = parse(&text(&[
        "[[meters]]",
        r#"name = "house""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "[meters.source]",
        r#"kind = "serial""#,
        r#"port = "/dev/serial/by-id/usb-FTDI_FT232R-if00-port0""#,
        r#"preset = "veitur-7e1""#,
        "stop_bits = 2",
        r#"request = { line = "gpio:gpiochip0:17", mode = "pulse", pulse = "100ms", interval = "15s", invert = true }"#,
        "[[meters]]",
        r#"name = "flat""#,
        r#"tz = "Europe/Amsterdam""#,
        r#"source = { kind = "replay", path = "fixtures/recording.txt", interval = "recorded", loop = true }"#,
        "[[meters]]",
        r#"name = "cabin""#,
        r#"tz = "Europe/Brussels""#,
        r#"source = { kind = "simulate", profile = "belgium", interval = "1s" }"#,
        "[[sink]]",
        r#"kind = "mqtt""#,
        r#"url = "ssl://[::1]:8883""#,
        r#"username = "p1gw""#,
        r#"password_file = "/etc/p1gw/mqtt.pass""#,
        r#"client_id = "p1gw-house""#,
        "discovery = false",
        r#"min_interval = "1m30s""#,
        r#"topic_prefix = "home/p1""#,
        "qos = 2",
        "retain = true",
        r#"ca_file = "/etc/p1gw/ca.pem""#,
        r#"client_cert_file = "/etc/p1gw/client.pem""#,
        r#"client_key_file = "/etc/p1gw/client.key""#,
        "[[sink]]",
        r#"name = "mqtt-local""#,
        r#"kind = "mqtt""#,
        r#"url = "mqtt://localhost""#,
        "[[sink]]",
        r#"kind = "influx""#,
        r#"url = "https://influx.example:8086/prefix""#,
        r#"api = "v1""#,
        r#"database = "p1""#,
        r#"retention_policy = "forever""#,
        r#"username = "p1gw""#,
        r#"password_file = "/etc/p1gw/influx.pass""#,
        r#"precision = "ms""#,
        "batch_size = 500",
        r#"batch_interval = "30s""#,
        "[[sink]]",
        r#"kind = "azure-iot""#,
        r#"connection_string_file = "/etc/p1gw/azure.conn""#,
        r#"interval = "2m""#,
        "daily_message_budget = 1000",
        "[[sink]]",
        r#"kind = "jsonl""#,
        r#"path = "readings.jsonl""#,
        "[[sink]]",
        r#"kind = "stdout""#,
        "[http]",
        r#"listen = "[::]:9600""#,
        r#"token_file = "/etc/p1gw/http.token""#,
        r#"history = "24h""#,
        "[spool]",
        r#"dir = "/var/lib/p1gw""#,
        "max_bytes = 1048576",
        "[log]",
        r#"level = "info,p1_reader=debug""#,
        r#"format = "journald""#,
    ]))
    .unwrap_or_else(|e| panic!("{}", error::report(&e)));
    assert_round_trip("everything", &everything);

    let valid = everything.validate().expect("valid");
    let names: Vec<&str> = valid.meters.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["house", "flat", "cabin"]);
    let ValidSource::Serial(serial) = &valid.meters[0].source else {
        panic!("serial");
    };
    assert_eq!(serial.settings.parity, Parity::Even);
    assert_eq!(serial.settings.stop_bits, 2);
    assert_eq!(
        serial.request.line,
        LineKind::Gpio {
            chip: "gpiochip0".to_owned(),
            offset: 17
        }
    );
    assert_eq!(serial.request.pulse, Duration::from_millis(100));
    assert!(serial.request.invert);
    let ValidSource::Replay(replay) = &valid.meters[1].source else {
        panic!("replay");
    };
    assert_eq!(replay.pace, Pace::Recorded);
    assert!(replay.repeat);
    let ValidSinkKind::Mqtt(mqtt) = &valid.sinks[0].kind else {
        panic!("mqtt");
    };
    assert_eq!(mqtt.url.host(), "::1");
    assert_eq!(mqtt.url.port(), Some(8883));
    assert_eq!(mqtt.qos, Qos::ExactlyOnce);
    assert_eq!(mqtt.min_interval, Duration::from_secs(90));
    assert!(
        mqtt.tls
            .as_ref()
            .is_some_and(|tls| tls.client_cert.is_some())
    );
    let sink_names: Vec<&str> = valid.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        sink_names,
        [
            "mqtt",
            "mqtt-local",
            "influx",
            "azure-iot",
            "jsonl",
            "stdout"
        ]
    );
    assert_eq!(valid.log.format, LogFormat::Journald);
}

const SECRET_SINKS: &[&str] = &[
    "[meter]",
    r#"name = "home""#,
    r#"tz = "Atlantic/Reykjavik""#,
    "[source]",
    r#"kind = "simulate""#,
    "[[sink]]",
    r#"kind = "mqtt""#,
    r#"url = "mqtts://broker.local""#,
    r#"username = "p1gw""#,
    r#"password_file = "/etc/p1gw/mqtt.pass""#,
    "[[sink]]",
    r#"kind = "influx""#,
    r#"url = "http://localhost:8086""#,
    r#"api = "v2""#,
    r#"org = "home""#,
    r#"bucket = "p1""#,
    "[[sink]]",
    r#"kind = "azure-iot""#,
];

#[test]
fn secrets_come_from_the_environment_and_never_print() {
    let env = env_from(&[
        ("P1GW_MQTT_PASSWORD", "env-mqtt-s3cret"),
        ("P1GW_INFLUX_TOKEN", "env-influx-s3cret"),
        (
            "P1GW_AZURE_CONNECTION_STRING",
            "HostName=x;SharedAccessKey=env-azure-s3cret",
        ),
        ("P1GW_HTTP_TOKEN", "env-http-s3cret"),
    ]);
    let raw = parse_str("test.toml", text(SECRET_SINKS), &env).expect("loads");
    let config = raw
        .validate()
        .expect("the environment supplies the token and connection string");

    let ValidSinkKind::Mqtt(mqtt) = &config.sinks[0].kind else {
        panic!("mqtt");
    };
    // The variable wins over password_file.
    assert_eq!(
        mqtt.password
            .as_ref()
            .map(|p| p.read().unwrap().expose().to_owned()),
        Some("env-mqtt-s3cret".to_owned())
    );
    assert_eq!(
        mqtt.password.as_ref().map(ToString::to_string),
        Some("environment variable P1GW_MQTT_PASSWORD".to_owned())
    );
    let ValidSinkKind::Influx(influx) = &config.sinks[1].kind else {
        panic!("influx");
    };
    let InfluxTarget::V2 { token, .. } = &influx.target else {
        panic!("v2");
    };
    assert_eq!(token.read().unwrap().expose(), "env-influx-s3cret");
    assert_eq!(
        config
            .http
            .token
            .as_ref()
            .map(|t| t.read().unwrap().expose().to_owned()),
        Some("env-http-s3cret".to_owned())
    );

    let printed = format!(
        "{raw:?}\n{config:?}\n{config:#?}\n{}",
        error::report(&check(&config))
    );
    assert!(!printed.contains("s3cret"), "a secret leaked:\n{printed}");
    assert!(printed.contains("***"));
}

#[test]
fn required_secrets_missing_from_file_and_environment_are_named() {
    let errors = errors_of(&text(SECRET_SINKS));
    let found: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "test.toml:11:1: sink[1].token_file: missing required key: api = \"v2\" needs a token; set token_file, or P1GW_INFLUX_TOKEN",
            "test.toml:17:1: sink[2].connection_string_file: missing required key: set connection_string_file, or P1GW_AZURE_CONNECTION_STRING",
        ]
    );
}

#[test]
fn an_environment_password_needs_a_username() {
    let env = env_from(&[("P1GW_MQTT_PASSWORD", "s3cret")]);
    let lines = [
        "[meter]",
        r#"name = "home""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "[source]",
        r#"kind = "simulate""#,
        "[[sink]]",
        r#"kind = "mqtt""#,
        r#"url = "mqtt://broker.local""#,
    ];
    let errors = parse_str("test.toml", text(&lines), &env)
        .expect("loads")
        .validate()
        .expect_err("no username");
    assert_eq!(
        error::report(&errors),
        "test.toml:6:1: sink[0].username: missing required key: P1GW_MQTT_PASSWORD is set, and a password needs a username"
    );
}

#[test]
fn secret_prints_stars() {
    let secret = Secret::new("hunter2".to_owned());
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(secret.expose(), "hunter2");
}

#[test]
fn secret_files_lose_their_line_end_and_must_not_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pass");
    std::fs::write(&file, "hunter2\r\n").unwrap();
    let source = SecretSource::File(file.clone());
    assert_eq!(source.read().unwrap().expose(), "hunter2");
    std::fs::write(&file, "\n").unwrap();
    let error = source.read().unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn durations_parse_with_units_only() {
    let good = [
        ("10s", Duration::from_secs(10)),
        ("50ms", Duration::from_millis(50)),
        ("1m", Duration::from_secs(60)),
        ("1h30m", Duration::from_secs(5400)),
        ("1d", Duration::from_secs(86_400)),
        ("1m30s500ms", Duration::from_millis(90_500)),
        ("0s", Duration::ZERO),
        (" 5s ", Duration::from_secs(5)),
    ];
    for (text, expected) in good {
        assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
    }
    let bad = [
        ("10", "has no unit"),
        ("", "empty duration"),
        ("-5s", "cannot be negative"),
        ("1.5s", "fractions are not supported"),
        ("10 s", "unknown unit \" s\""),
        ("10sec", "unknown unit \"sec\""),
        ("s", "is not a duration"),
        ("99999999999999999999s", "too long"),
        ("999999999999999d", "too long"),
    ];
    for (text, expected) in bad {
        let message = parse_duration(text).unwrap_err();
        assert!(message.contains(expected), "{text:?}: {message}");
    }
    for d in [
        Duration::ZERO,
        Duration::from_millis(50),
        Duration::from_secs(90),
        Duration::from_secs(5400),
        Duration::from_millis(86_400_001),
    ] {
        assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }
    assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
}

#[test]
fn sizes_parse_as_bytes_or_with_units() {
    let good = [
        (RawSize::Bytes(16_384), 16_384),
        (RawSize::new("64MiB"), 64 << 20),
        (RawSize::new("16KiB"), 16 << 10),
        (RawSize::new("1GB"), 1_000_000_000),
        (RawSize::new("2kB"), 2_000),
        (RawSize::new("512"), 512),
        (RawSize::new("512B"), 512),
        (RawSize::new("1 GiB"), 1 << 30),
    ];
    for (raw, expected) in good {
        assert_eq!(parse_size(&raw), Ok(expected), "{raw:?}");
    }
    let bad = [
        (RawSize::Bytes(-1), "cannot be negative"),
        (RawSize::new("-1MiB"), "cannot be negative"),
        (RawSize::new("64mib"), "unknown unit \"mib\""),
        (RawSize::new("MiB"), "is not a size"),
        (RawSize::new("1.5MiB"), "fractions"),
        (RawSize::new("99999999999GiB"), "too large"),
    ];
    for (raw, expected) in bad {
        let message = parse_size(&raw).unwrap_err();
        assert!(message.contains(expected), "{raw:?}: {message}");
    }
    assert_eq!(format_size(64 << 20), "64MiB");
    assert_eq!(format_size(1000), "1000B");
}

#[test]
fn location_counts_characters_not_bytes() {
    assert_eq!(Location::of("ab\nçd", 5), Location { line: 2, column: 2 });
    assert_eq!(Location::of("", 0), Location { line: 1, column: 1 });
    assert_eq!(Location::of("x", 99), Location { line: 1, column: 2 });
    let errors = errors_of(&text(&[
        "[meter]",
        r#"name = "heimili""#,
        r#"tz = "Atlantic/Reykjavik" # Ísland: UTC"#,
        "[source]",
        r#"kind = "simulate""#,
        r#"profile = "veitur" # hitaveita, þ.e. heitt vatn"#,
        r#"interval = "5 sek""#,
    ]));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].location(),
        Some(Location {
            line: 7,
            column: 12
        })
    );
}

fn check_errors(lines: &[&str]) -> Vec<String> {
    check(&valid(lines))
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn check_finds_missing_files_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let errors = check_errors(&[
        "[[meters]]",
        r#"name = "house""#,
        r#"tz = "Atlantic/Reykjavik""#,
        &format!(r#"source = {{ kind = "serial", port = "{d}/ttyP1", preset = "veitur" }}"#),
        "[[meters]]",
        r#"name = "flat""#,
        r#"tz = "Atlantic/Reykjavik""#,
        &format!(r#"source = {{ kind = "replay", path = "{d}/recording.txt" }}"#),
        "[[sink]]",
        r#"kind = "mqtt""#,
        r#"url = "mqtt://broker.local""#,
        r#"username = "p1gw""#,
        &format!(r#"password_file = "{d}/mqtt.pass""#),
    ]);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!(
            "test.toml:4:36: meters[0].source.port: {d}/ttyP1: no such device; "
        )) && errors[0].contains("/dev/serial/by-id/"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].starts_with(&format!(
            "test.toml:8:36: meters[1].source.path: {d}/recording.txt: No such file"
        )),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].starts_with(&format!(
            "test.toml:13:17: sink[0].password_file: {d}/mqtt.pass: No such file"
        )),
        "{}",
        errors[2]
    );
}

#[test]
fn check_passes_when_everything_named_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("recording.txt"), "/ISk5\\2MIE5E-200\r\n!\r\n").unwrap();
    std::fs::write(path("mqtt.pass"), "s3cret-in-file\n").unwrap();
    std::fs::write(path("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let d = dir.path().display();
    let lines = [
        "[[meters]]".to_owned(),
        r#"name = "house""#.to_owned(),
        r#"tz = "Atlantic/Reykjavik""#.to_owned(),
        // A character device everyone may read and write stands in for the meter's port.
        r#"source = { kind = "serial", port = "/dev/null", preset = "veitur" }"#.to_owned(),
        "[[meters]]".to_owned(),
        r#"name = "flat""#.to_owned(),
        r#"tz = "Atlantic/Reykjavik""#.to_owned(),
        format!(r#"source = {{ kind = "replay", path = "{d}/recording.txt" }}"#),
        "[[sink]]".to_owned(),
        r#"kind = "mqtt""#.to_owned(),
        r#"url = "mqtts://broker.local""#.to_owned(),
        r#"username = "p1gw""#.to_owned(),
        format!(r#"password_file = "{d}/mqtt.pass""#),
        format!(r#"ca_file = "{d}/ca.pem""#),
        "[[sink]]".to_owned(),
        r#"kind = "jsonl""#.to_owned(),
        format!(r#"path = "{d}/out/readings.jsonl""#),
        "[spool]".to_owned(),
        format!(r#"dir = "{d}/state/p1gw""#),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let errors = check_errors(&lines);
    assert_eq!(errors, Vec::<String>::new());
}

#[test]
fn check_rejects_the_wrong_kind_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("not-a-tty"), "").unwrap();
    std::fs::write(path("empty.pass"), "\n").unwrap();
    std::fs::write(path("spool"), "a file, not a directory").unwrap();
    std::fs::create_dir(path("recordings")).unwrap();
    let d = dir.path().display();
    let lines = [
        "[[meters]]".to_owned(),
        r#"name = "house""#.to_owned(),
        r#"tz = "Atlantic/Reykjavik""#.to_owned(),
        format!(r#"source = {{ kind = "serial", port = "{d}/not-a-tty", preset = "dsmr4" }}"#),
        "[[meters]]".to_owned(),
        r#"name = "flat""#.to_owned(),
        r#"tz = "Atlantic/Reykjavik""#.to_owned(),
        // A directory of recordings is fine.
        format!(r#"source = {{ kind = "replay", path = "{d}/recordings" }}"#),
        "[http]".to_owned(),
        format!(r#"token_file = "{d}/empty.pass""#),
        "[spool]".to_owned(),
        format!(r#"dir = "{d}/spool/p1gw""#),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let errors = check_errors(&lines);
    assert_eq!(
        errors,
        [
            format!(
                "test.toml:4:36: meters[0].source.port: {d}/not-a-tty: not a serial device (not a character device)"
            ),
            format!("test.toml:10:14: http.token_file: {d}/empty.pass: the file is empty"),
            format!(
                "test.toml:12:7: spool.dir: cannot create {d}/spool/p1gw: {d}/spool is not a directory"
            ),
        ]
    );
}

#[test]
fn check_of_a_defaulted_spool_dir_points_at_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state"), "a file").unwrap();
    let state = dir.path().join("state");
    let env = env_from(&[("XDG_STATE_HOME", state.to_str().unwrap())]);
    let config = valid_with_env(
        &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
        ],
        &env,
    );
    let errors: Vec<String> = check(&config).iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [format!(
            "test.toml:1:1: spool.dir: cannot create {0}/p1gw: {0} is not a directory",
            state.display()
        )]
    );
}

#[test]
fn demo_passes_check_in_a_fresh_home() {
    let home = tempfile::tempdir().unwrap();
    let env = env_from(&[("HOME", home.path().to_str().unwrap())]);
    let demo = demo_with_env(&env);
    assert_eq!(demo.spool.dir, home.path().join(".local/state/p1gw"));
    assert_eq!(check(&demo), Vec::new());
}

#[test]
fn replay_pace_and_expected_intervals() {
    let source = |source: &str| {
        let config = valid(&[
            &format!("source = {source}"),
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
        ]);
        config.meters[0].source.clone()
    };
    let pace = |interval: &str| match source(&format!(
        r#"{{ kind = "replay", path = "-", interval = "{interval}" }}"#
    )) {
        ValidSource::Replay(replay) => replay.pace,
        other => panic!("{other:?}"),
    };
    assert_eq!(pace("0s"), Pace::Fast);
    assert_eq!(pace("recorded"), Pace::Recorded);
    assert_eq!(pace("2s"), Pace::Every(Duration::from_secs(2)));

    let expected = |s: &str| source(s).expected_interval();
    let secs = Duration::from_secs;
    assert_eq!(
        expected(r#"{ kind = "simulate", interval = "3s" }"#),
        secs(3)
    );
    assert_eq!(
        expected(r#"{ kind = "replay", path = "-", interval = "5s" }"#),
        secs(5)
    );
    assert_eq!(
        expected(r#"{ kind = "replay", path = "-", interval = "0s" }"#),
        secs(10)
    );
    assert_eq!(
        expected(
            r#"{ kind = "serial", port = "/dev/p1", preset = "veitur", request = { line = "rts", interval = "30s" } }"#
        ),
        secs(30)
    );
    assert_eq!(
        expected(
            r#"{ kind = "serial", port = "/dev/p1", preset = "dsmr4", request = { line = "rts", mode = "hold", interval = "30s" } }"#
        ),
        secs(10)
    );
    assert_eq!(
        expected(r#"{ kind = "tcp", address = "p1.local:23" }"#),
        secs(10)
    );
    // Standard input needs no check.
    let stdin = valid(&[
        r#"source = { kind = "replay", path = "-" }"#,
        "[meter]",
        r#"name = "home""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "[spool]",
        r#"dir = "/tmp""#,
    ]);
    assert_eq!(check(&stdin), Vec::new());
}

#[test]
fn a_source_inside_meter_gets_a_hint() {
    let errors = errors_of(&text(&[
        "[meter]",
        r#"name = "home""#,
        r#"tz = "Atlantic/Reykjavik""#,
        r#"source = { kind = "tcp", address = "p1.local:23" }"#,
    ]));
    assert_eq!(
        error::report(&errors),
        [
            r#"test.toml:1:1: source: missing required table: add [source] with kind = "serial", "tcp", "replay" or "simulate""#,
            "test.toml:4:1: meter.source: unknown key `source`, expected one of `name`, `tz`, `spike_guard`, `codes`; [source] is a table of its own, after [meter] (or use [[meters]] entries, which hold their source)",
        ]
        .join("\n")
    );
}

/// An InfluxDB v1 sink with `extra` lines.
fn influx_v1(extra: &[&'static str]) -> Vec<&'static str> {
    let mut lines = vec![
        "[meter]",
        r#"name = "home""#,
        r#"tz = "Atlantic/Reykjavik""#,
        "[source]",
        r#"kind = "simulate""#,
        "[[sink]]",
        r#"kind = "influx""#,
        r#"url = "http://localhost:8086/""#,
        r#"api = "v1""#,
        r#"database = "p1""#,
    ];
    lines.extend_from_slice(extra);
    lines
}

#[test]
fn influx_gzip_and_timeout_have_defaults_are_validated_and_reach_the_sink() {
    let config = valid(&influx_v1(&[]));
    let ValidSinkKind::Influx(influx) = &config.sinks[0].kind else {
        panic!("influx");
    };
    // Not compressed for a server on this machine (localhost), by default.
    assert!(!influx.gzip);
    assert_eq!(influx.timeout, Duration::from_secs(10));
    let settings = influx.settings().expect("no secret to read");
    assert!(!settings.gzip);
    assert_eq!(settings.timeout, Duration::from_secs(10));
    assert_eq!(settings.batch_size, 5000);
    assert_eq!(settings.max_in_flight, 2);
    assert_eq!(settings.batch_interval, Duration::from_secs(10));
    assert_eq!(settings.precision, p1_sink_influx::Precision::S);
    assert_eq!(
        settings.target,
        p1_sink_influx::Target::V1 {
            database: "p1".into(),
            retention_policy: None,
            credentials: None
        }
    );

    for (url, gzip) in [
        ("http://localhost:8086", false),
        ("http://LOCALHOST.:8086", false),
        ("http://127.0.0.1:8086", false),
        ("http://127.1.2.3:8086", false),
        ("http://[::1]:8086/influx", false),
        ("http://influx.lan:8086", true),
        ("https://eu-central-1-1.aws.cloud2.influxdata.com", true),
        ("http://192.168.1.20:8086", true),
        ("http://[fd00::1]:8086", true),
        ("http://localhost.example.com:8086", true),
    ] {
        let line = format!("url = {url:?}");
        let lines: Vec<&str> = influx_v1(&[])
            .into_iter()
            .map(|l| if l.starts_with("url =") { &line } else { l })
            .collect();
        let config = valid(&lines);
        let ValidSinkKind::Influx(influx) = &config.sinks[0].kind else {
            panic!("influx");
        };
        assert_eq!(influx.gzip, gzip, "{url}");
    }
    let config = valid(&influx_v1(&["gzip = true"]));
    let ValidSinkKind::Influx(influx) = &config.sinks[0].kind else {
        panic!("influx");
    };
    assert!(
        influx.gzip,
        "an explicit gzip = true compresses for localhost too"
    );

    let config = valid(&influx_v1(&[
        "gzip = false",
        r#"timeout = "2500ms""#,
        r#"precision = "ns""#,
    ]));
    let ValidSinkKind::Influx(influx) = &config.sinks[0].kind else {
        panic!("influx");
    };
    let settings = influx.settings().expect("settings");
    assert!(!settings.gzip);
    assert_eq!(settings.timeout, Duration::from_millis(2500));
    assert_eq!(settings.precision, p1_sink_influx::Precision::Ns);

    let errors = errors_of(&text(&influx_v1(&[r#"timeout = "0s""#])));
    assert_eq!(errors.len(), 1, "{}", error::report(&errors));
    let report = error::report(&errors);
    assert!(
        report.contains("sink[0].timeout") && report.contains("must be longer than 0s"),
        "{report}"
    );
    let settings = valid(&influx_v1(&["batch_size = 10000", "max_in_flight = 4"]));
    let ValidSinkKind::Influx(influx) = &settings.sinks[0].kind else {
        panic!("influx");
    };
    let settings = influx.settings().expect("settings");
    assert_eq!((settings.batch_size, settings.max_in_flight), (10_000, 4));
    for bad in ["max_in_flight = 0", "max_in_flight = 17"] {
        let report = error::report(&errors_of(&text(&influx_v1(&[bad]))));
        assert!(
            report.contains("sink[0].max_in_flight") && report.contains("from 1 to 16"),
            "{report}"
        );
    }
    let errors = errors_of(&text(&influx_v1(&[r#"gzip = "yes""#])));
    assert!(
        error::report(&errors).contains("sink[0].gzip"),
        "{}",
        error::report(&errors)
    );
}

#[test]
fn influx_settings_read_the_password_and_token_and_name_a_missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pass = dir.path().join("influx.pass");
    std::fs::write(&pass, "pa55\n").expect("write");
    let lines = influx_v1(&[r#"username = "gw""#]);
    let mut text_with_file = text(&lines);
    text_with_file.push_str(&format!(
        "password_file = {:?}\n",
        pass.display().to_string()
    ));
    let config = parse_str("test.toml", text_with_file, &no_env)
        .and_then(|c| c.validate())
        .unwrap_or_else(|e| panic!("{}", error::report(&e)));
    let ValidSinkKind::Influx(influx) = &config.sinks[0].kind else {
        panic!("influx");
    };
    let settings = influx.settings().expect("password readable");
    let p1_sink_influx::Target::V1 {
        credentials: Some((user, password)),
        ..
    } = &settings.target
    else {
        panic!("credentials: {:?}", settings.target);
    };
    assert_eq!(user, "gw");
    assert_eq!(password, &p1_sink_influx::Secret::new("pa55"));
    assert!(!format!("{settings:?}").contains("pa55"));

    // After a 401 the sink reads the password again: a corrected file counts without a restart.
    let reread = influx.secret_reader().expect("a password to read again");
    std::fs::write(&pass, "n3w\n").expect("write");
    assert_eq!(reread(), Ok(p1_sink_influx::Secret::new("n3w")));

    std::fs::remove_file(&pass).expect("rm");
    let error = reread().expect_err("the file is gone");
    assert!(
        error.starts_with("password: cannot read the file ") && !error.contains("n3w"),
        "{error}"
    );
    let error = influx.settings().expect_err("the file is gone");
    assert!(
        error.starts_with("password: cannot read the file ") && error.contains("influx.pass"),
        "{error}"
    );

    let env = env_from(&[("P1GW_INFLUX_TOKEN", "tok")]);
    let config = valid_with_env(
        &[
            "[meter]",
            r#"name = "home""#,
            r#"tz = "Atlantic/Reykjavik""#,
            "[source]",
            r#"kind = "simulate""#,
            "[[sink]]",
            r#"kind = "influx""#,
            r#"url = "https://influx.example/prefix""#,
            r#"api = "v2""#,
            r#"org = "home""#,
            r#"bucket = "p1""#,
        ],
        &env,
    );
    let ValidSinkKind::Influx(influx) = &config.sinks[0].kind else {
        panic!("influx");
    };
    let settings = influx.settings().expect("token from the environment");
    assert_eq!(settings.url, "https://influx.example/prefix");
    assert_eq!(
        settings.target,
        p1_sink_influx::Target::V2 {
            org: "home".into(),
            bucket: "p1".into(),
            token: p1_sink_influx::Secret::new("tok"),
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Arbitrary TOML-ish text through load and validate: never a panic, and every error names the
// file and a position inside the text. (What a fuzz target would do: the configuration lives
// in this binary crate, out of a fuzz target's reach without moving it.)

mod arbitrary_text {
    use proptest::prelude::*;

    use super::*;

    /// One line: a known or made-up section, a known or made-up key with a value of any of
    /// TOML's shapes (plausible or not), or printable noise.
    fn line() -> impl Strategy<Value = String> {
        let section = prop_oneof![
            Just("[meter]".to_owned()),
            Just("[source]".to_owned()),
            Just("[[sink]]".to_owned()),
            Just("[[meters]]".to_owned()),
            Just("[http]".to_owned()),
            Just("[spool]".to_owned()),
            Just("[log]".to_owned()),
            Just("[source.request]".to_owned()),
            "\\[{1,2}[a-z.]{1,10}\\]{1,2}",
        ];
        let key = prop_oneof![
            Just("name"),
            Just("tz"),
            Just("kind"),
            Just("port"),
            Just("preset"),
            Just("path"),
            Just("address"),
            Just("interval"),
            Just("url"),
            Just("api"),
            Just("database"),
            Just("token_file"),
            Just("password_file"),
            Just("username"),
            Just("qos"),
            Just("listen"),
            Just("dir"),
            Just("max_bytes"),
            Just("level"),
            Just("request"),
            Just("reconnect"),
            Just("baud"),
            Just("batch_size"),
            Just("history"),
        ]
        .prop_map(str::to_owned)
        .boxed()
        .prop_union("[a-z_]{1,12}".boxed());
        let value = prop_oneof![
            "\"[ -~]{0,16}\"",
            "-?[0-9]{1,12}",
            "-?[0-9]{1,4}\\.[0-9]{0,4}",
            Just("true".to_owned()),
            "\"[0-9]{1,6}(ms|s|m|h|d|KiB|MiB|GiB|B|x)?\"",
            "\"(mqtt|mqtts|http|https|tcp|ftp)://[a-z0-9.:]{0,20}\"",
            "\"(simulate|replay|tcp|serial|mqtt|influx|jsonl|stdout|azure-iot|v1|v2)\"",
            "\"(Atlantic/Reykjavik|Europe/Amsterdam|UTC|Mars/Base)\"",
            "\\[(\"[a-z]{0,4}\", ?){0,3}\\]",
            "\\{ ?([a-z]{1,8} = \"[a-z0-9:]{0,8}\",? ?){0,3}\\}",
            Just("1979-05-27T07:32:00Z".to_owned()),
            "\"\"\"[ -~\n]{0,20}\"\"\"",
        ];
        prop_oneof![
            2 => section,
            6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            1 => "[ -~\t]{0,40}",
            1 => any::<String>().prop_map(|s| s.chars().take(40).collect()),
        ]
    }

    const GOOD_FOR_MUTATION: &str = r#"[[meters]]
name = "home"
tz = "Atlantic/Reykjavik"
source = { kind = "serial", port = "/dev/ttyUSB0", preset = "veitur", request = { line = "rts", mode = "poll", interval = "10s" }, reconnect = { min = "1s", max = "60s" } }

[[meters]]
name = "cabin"
tz = "Europe/Amsterdam"
source = { kind = "tcp", address = "192.168.1.20:8088" }

[[sink]]
kind = "mqtt"
url = "mqtts://broker.local:8883"
username = "p1gw"
password_file = "/etc/p1gw/mqtt.pass"
qos = 1
min_interval = "10s"

[[sink]]
kind = "influx"
url = "http://localhost:8086"
api = "v2"
org = "home"
bucket = "p1"
token_file = "/etc/p1gw/influx.token"
batch_size = 100

[[sink]]
kind = "jsonl"
path = "/var/lib/p1gw/readings.jsonl"

[http]
listen = "127.0.0.1:9600"
history = "1h"

[spool]
dir = "/var/lib/p1gw"
max_bytes = "64MiB"

[log]
level = "info"
format = "auto"
"#;

    #[test]
    fn a_multi_line_value_quoted_in_an_error_stays_on_one_line() {
        // Found by `mutated_good_configs_never_panic_and_errors_are_located` (200 000 cases).
        let text = GOOD_FOR_MUTATION.replacen("api = \"v2\"", "api = \"\"\"\n\n\"\"\"", 1);
        let errors = parse_str("fuzz.toml", text.clone(), &no_env)
            .and_then(|c| c.validate())
            .expect_err("api is not v1 or v2");
        check_errors(&text, &errors).expect("one located line");
        assert!(
            errors[0].to_string().contains("sink[1].api"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_config_to_mutate_is_valid() {
        let config = parse_str("fuzz.toml", GOOD_FOR_MUTATION.to_owned(), &no_env);
        assert!(config.and_then(|c| c.validate()).is_ok());
    }

    /// Every error names the file and, when it has a position, one inside the text.
    fn check_errors(text: &str, errors: &[ConfigError]) -> Result<(), TestCaseError> {
        prop_assert!(!errors.is_empty(), "an Err without errors");
        let lines = text.split('\n').count();
        for e in errors {
            let shown = e.to_string();
            prop_assert!(shown.starts_with("fuzz.toml"), "{}", shown);
            prop_assert!(!shown.contains('\n'), "one line: {:?}", shown);
            prop_assert!(e.exit_code() == 78, "{}: exit {}", shown, e.exit_code());
            if let Some(at) = e.location() {
                prop_assert!(
                    at.line >= 1 && at.line <= lines && at.column >= 1,
                    "{} outside the {} lines of {:?}",
                    shown,
                    lines,
                    text
                );
            }
        }
        Ok(())
    }

    /// 1024 cases per property; `PROPTEST_CASES` asks for more (scripts/reliability runs 100 000).
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1024)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_toml_never_panics_and_errors_are_located_in_the_text(
            lines in proptest::collection::vec(line(), 0..40),
        ) {
            let text = lines.join("\n");
            let config = match parse_str("fuzz.toml", text.clone(), &no_env) {
                Ok(config) => config,
                Err(errors) => return check_errors(&text, &errors),
            };
            match config.validate() {
                // What validates renders back to TOML that validates again.
                Ok(_) => {
                    let again = parse_str("fuzz.toml", config.to_toml(), &no_env)
                        .and_then(|c| c.validate());
                    prop_assert!(again.is_ok(), "{:?}", again.err());
                }
                Err(errors) => check_errors(&text, &errors)?,
            }
        }

        #[test]
        fn mutated_good_configs_never_panic_and_errors_are_located(
            edits in proptest::collection::vec((0usize..64, 0u8..3, line()), 1..4),
        ) {
            // A config that uses every section, then lines replaced, inserted or dropped.
            let mut lines: Vec<String> = GOOD_FOR_MUTATION.lines().map(str::to_owned).collect();
            for (at, how, new) in edits {
                let at = at % (lines.len() + 1);
                match how {
                    0 if at < lines.len() => lines[at] = new,
                    1 if at < lines.len() => {
                        lines.remove(at);
                    }
                    _ => lines.insert(at, new),
                }
            }
            let text = lines.join("\n");
            match parse_str("fuzz.toml", text.clone(), &no_env).and_then(|c| c.validate()) {
                Ok(_) => {}
                Err(errors) => check_errors(&text, &errors)?,
            }
        }

        #[test]
        fn arbitrary_text_never_panics_and_errors_are_located_in_it(text in any::<String>()) {
            if let Err(errors) = parse_str("fuzz.toml", text.clone(), &no_env).and_then(|c| c.validate()) {
                check_errors(&text, &errors)?;
            }
        }
    }
}
