//! `p1gw addon-config`: the Home Assistant add-on's options and the Supervisor's MQTT service
//! (a fake Supervisor on 127.0.0.1 that answers `GET /services/mqtt` as the documented API
//! does) become a configuration the ordinary loader accepts; a bad option is named; the broker
//! password lands in a 0600 file and nowhere else.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::sync::mpsc;

const TOKEN: &str = "supervisor-token-1234";
const PASSWORD: &str = "broker-pw-5678";

/// A fake Supervisor answering one request: 200 with the MQTT service for the right bearer
/// token, 401 otherwise (as the Supervisor does). Sends the request head it saw.
fn fake_supervisor() -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let authorised = head
            .lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
        let (status, body) = if !head.starts_with("GET /services/mqtt ") {
            (
                "404 Not Found",
                r#"{"result":"error","message":"not found"}"#.to_owned(),
            )
        } else if authorised {
            (
                "200 OK",
                format!(
                    r#"{{"result":"ok","data":{{"addon":"core_mosquitto","host":"core-mosquitto","port":1883,"ssl":false,"protocol":"3.1.1","username":"addons","password":"{PASSWORD}"}}}}"#
                ),
            )
        } else {
            ("401 Unauthorized", "401: Unauthorized".to_owned())
        };
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("answer");
        tx.send(head).expect("send head");
    });
    (url, rx)
}

fn addon_config(dir: &std::path::Path, options: &str, supervisor: &str, token: &str) -> Output {
    std::fs::write(dir.join("options.json"), options).expect("write options");
    Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .arg("addon-config")
        .arg("--options")
        .arg(dir.join("options.json"))
        .arg("--out")
        .arg(dir.join("gen/p1gw.toml"))
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .args(["--supervisor", supervisor])
        .env("SUPERVISOR_TOKEN", token)
        .output()
        .expect("p1gw addon-config")
}

const OPTIONS: &str = r#"{"meter_name":"home","timezone":"Atlantic/Reykjavik","device":"/dev/ttyUSB0","simulate":false,"preset":"veitur","request_line":"none","request_mode":"hold","mqtt_discovery":true,"topic_prefix":"p1gw","log_level":"info"}"#;

#[test]
fn broker_comes_from_the_supervisor_and_the_password_stays_in_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (supervisor, head) = fake_supervisor();
    let out = addon_config(dir.path(), OPTIONS, &supervisor, TOKEN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let head = head.recv().expect("the Supervisor was asked");
    assert!(head.starts_with("GET /services/mqtt "), "{head}");
    let toml = std::fs::read_to_string(dir.path().join("gen/p1gw.toml")).expect("generated");
    assert!(
        toml.contains("url = \"mqtt://core-mosquitto:1883\""),
        "{toml}"
    );
    assert!(toml.contains("username = \"addons\""), "{toml}");
    assert!(toml.contains("port = \"/dev/ttyUSB0\""), "{toml}");
    let pass = dir.path().join("gen/mqtt.pass");
    assert_eq!(
        std::fs::read_to_string(&pass).expect("password file"),
        PASSWORD
    );
    let mode = std::fs::metadata(&pass).expect("stat").permissions().mode();
    assert_eq!(
        mode & 0o077,
        0,
        "password file readable by others: {mode:o}"
    );
    for text in [
        &toml,
        &stderr.to_string(),
        &String::from_utf8_lossy(&out.stdout).to_string(),
    ] {
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
        assert!(!text.contains(TOKEN), "token leaked: {text}");
    }
    // The ordinary checker accepts the result as it is.
    let check = Command::new(env!("CARGO_BIN_EXE_p1gw"))
        .arg("check-config")
        .arg(dir.path().join("gen/p1gw.toml"))
        .output()
        .expect("check-config");
    // check-config also looks at the machine: /dev/ttyUSB0 is not on this one. That is the
    // only complaint allowed.
    let check_err = String::from_utf8_lossy(&check.stderr);
    for line in check_err.lines() {
        assert!(
            line.contains(": source.port: /dev/ttyUSB0: no such device"),
            "{check_err}"
        );
    }
}

#[test]
fn a_wrong_token_is_unavailable_without_echoing_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (supervisor, _head) = fake_supervisor();
    let out = addon_config(dir.path(), OPTIONS, &supervisor, "wrong-token-9999");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("wrong-token-9999"), "{stderr}");
    assert!(!dir.path().join("gen/p1gw.toml").exists());
}

#[test]
fn a_bad_option_is_reported_by_its_name_with_exit_78() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (supervisor, _head) = fake_supervisor();
    let options = OPTIONS.replace("Atlantic/Reykjavik", "Atlantis/Capital");
    let out = addon_config(dir.path(), &options, &supervisor, TOKEN);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    let options_file = dir.path().join("options.json").display().to_string();
    assert!(
        stderr.contains(&format!("{options_file}: option `timezone`:")),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[test]
fn mqtt_url_option_needs_no_supervisor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = OPTIONS.replace(
        "\"log_level\"",
        "\"mqtt_url\":\"mqtt://127.0.0.1:1883\",\"mqtt_username\":\"me\",\"mqtt_password\":\"pw-0000\",\"log_level\"",
    );
    // No Supervisor at all: port 9 on loopback (discard) is never asked.
    let out = addon_config(dir.path(), &options, "http://127.0.0.1:9", "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let toml = std::fs::read_to_string(dir.path().join("gen/p1gw.toml")).expect("generated");
    assert!(toml.contains("url = \"mqtt://127.0.0.1:1883\""), "{toml}");
    assert!(!toml.contains("pw-0000") && !stderr.contains("pw-0000"));
}

/// The add-on's `config.yaml`: every schema option has its translation (a full set of options
/// with the schema's defaults and a value for each optional one is accepted), the defaults
/// agree with the schema, the MQTT service is required and the device comes from HA's list.
#[test]
fn addon_config_yaml_matches_the_translation() {
    let file = crate::support::root().join("deploy/home-assistant-addon/config.yaml");
    let text = std::fs::read_to_string(&file).expect("config.yaml");
    let yaml: serde_json::Value = serde_norway::from_str(&text).expect("config.yaml parses");
    assert_eq!(yaml["services"], serde_json::json!(["mqtt:need"]));
    assert_eq!(yaml["uart"], serde_json::json!(true));
    assert_eq!(yaml["schema"]["device"], "device(subsystem=tty)?");
    for arch in ["aarch64", "amd64", "armhf", "armv7"] {
        assert!(
            yaml["arch"]
                .as_array()
                .expect("arch")
                .iter()
                .any(|a| a == arch),
            "{arch}"
        );
    }
    let schema = yaml["schema"].as_object().expect("schema");
    let mut options = yaml["options"].as_object().expect("options").clone();
    for key in options.keys() {
        assert!(schema.contains_key(key), "option {key} has no schema");
    }
    for (key, kind) in schema {
        let kind = kind.as_str().expect("schema entries are text");
        assert!(
            options.contains_key(key) || kind.ends_with('?'),
            "{key} has no default and is not optional"
        );
        let sample = match key.as_str() {
            "device" => serde_json::json!("/dev/ttyUSB0"),
            "mqtt_url" => serde_json::json!("mqtt://127.0.0.1:1883"),
            _ if kind.starts_with("bool") => continue,
            _ if kind.ends_with('?') => serde_json::json!("sample"),
            _ => continue,
        };
        options.insert(key.clone(), sample);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = addon_config(
        dir.path(),
        &serde_json::Value::Object(options).to_string(),
        "http://127.0.0.1:9",
        "",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        crate::support::root()
            .join("deploy/home-assistant-addon/Dockerfile")
            .is_file()
    );
}
