//! Entry points for running p1gw in a container: the Home Assistant add-on's options turned into
//! p1gw's TOML (`p1gw addon-config`), and the image's health check (`p1gw healthcheck`), both
//! with nothing but the static binary in the image (no shell, no curl).
//!
//! The add-on's options (`/data/options.json`, written by the Supervisor from the add-on's
//! `config.yaml` schema) become a TOML configuration that the ordinary loader then reads and
//! validates, so the add-on accepts exactly what a `.deb` installation accepts. Every line of
//! the generated TOML remembers the option it came from: an error the loader reports at that
//! line is reported as an error of that option. The MQTT broker comes from the Supervisor's
//! service API (`GET /services/mqtt`, answered as `{"result": "ok", "data": {"host", "port",
//! "ssl", "protocol", "username", "password"}}`), unless the options name one. The password is
//! written to a file of its own (mode 0600) beside the TOML, which names it with
//! `password_file`: it never appears in the TOML, in a log line or in an error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use p1gw::config;
use p1gw::exit::{Coded, Exit};
use serde_json::{Map, Value};

/// Where a Home Assistant add-on reaches the Supervisor.
const SUPERVISOR_URL: &str = "http://supervisor";
/// How long one HTTP exchange (Supervisor lookup, health check) may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `p1gw addon-config`.
#[derive(Debug, Args)]
pub(crate) struct AddonArgs {
    /// The add-on's options, as the Supervisor writes them.
    #[arg(long, value_name = "FILE", default_value = "/data/options.json")]
    options: PathBuf,
    /// Where to write the generated configuration (the MQTT password goes beside it, to
    /// `mqtt.pass`).
    #[arg(long, value_name = "FILE", default_value = "/tmp/p1gw/p1gw.toml")]
    out: PathBuf,
    /// The spool directory (persistent storage of the add-on).
    #[arg(long, value_name = "DIR", default_value = "/data/spool")]
    spool_dir: PathBuf,
    /// The Supervisor's address (its token comes from $SUPERVISOR_TOKEN).
    #[arg(long, value_name = "URL", default_value = SUPERVISOR_URL)]
    supervisor: String,
    /// The live page's and health endpoint's address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9600")]
    listen: std::net::SocketAddr,
    /// Then run the gateway with the generated configuration (the add-on's entry point).
    #[arg(long)]
    run: bool,
}

/// `p1gw healthcheck`.
#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The health endpoint to ask; exit 0 when it answers 200.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:9600/healthz"
    )]
    url: String,
}

/// Writes the configuration, checks it with the ordinary loader and returns its path when
/// `--run` asks for the gateway to be started with it.
pub(crate) fn addon_config(args: &AddonArgs) -> anyhow::Result<Option<PathBuf>> {
    let options_name = args.options.display().to_string();
    let text = std::fs::read_to_string(&args.options)
        .with_context(|| format!("cannot read the add-on options {options_name}"))?;
    let options = parse_options(&options_name, &text)?;
    let token = std::env::var("SUPERVISOR_TOKEN").ok();
    let broker = match options.mqtt_url.clone() {
        Some(url) => Broker {
            url,
            protocol: None,
            username: options.mqtt_username.clone(),
            password: options.mqtt_password.clone(),
            from_supervisor: false,
        },
        None => supervisor_mqtt(&args.supervisor, token.as_deref())?,
    };
    let dir = args.out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let password_file = dir.join("mqtt.pass");
    let generated = generate(
        &options,
        &broker,
        &args.spool_dir,
        &password_file,
        args.listen,
    );
    if let Some(password) = &broker.password {
        write_secret(&password_file, password)?;
    }
    std::fs::write(&args.out, &generated.text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    match config::load_valid(&args.out) {
        Ok(_) => {
            eprintln!(
                "p1gw: {options_name}: ok; configuration written to {} (MQTT broker {}{})",
                args.out.display(),
                broker.url,
                if broker.from_supervisor {
                    ", from the Supervisor"
                } else {
                    ""
                }
            );
            Ok(args.run.then(|| args.out.clone()))
        }
        Err(errors) => {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| generated.locate(&options_name, e))
                .collect();
            Err(Coded::error(
                config::error::exit_code(&errors),
                lines.join("\n"),
            ))
        }
    }
}

/// `p1gw healthcheck`: 0 when the endpoint answers 200, else 69 with the reason.
pub(crate) fn healthcheck(args: &HealthArgs) -> anyhow::Result<u8> {
    let (status, _) = http_get(&args.url, None)?;
    if status == 200 {
        Ok(Exit::OK)
    } else {
        Err(Coded::error(
            Exit::UNAVAILABLE,
            format!("{} answered {status}", args.url),
        ))
    }
}

/// The add-on's options, each checked for its type.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    meter_name: String,
    timezone: String,
    device: Option<String>,
    simulate: bool,
    preset: String,
    request_line: String,
    request_mode: String,
    mqtt_discovery: bool,
    topic_prefix: String,
    mqtt_url: Option<String>,
    mqtt_username: Option<String>,
    mqtt_password: Option<String>,
    log_level: String,
}

/// The options the add-on knows (config.yaml's schema); any other is an error.
const KNOWN: &[&str] = &[
    "meter_name",
    "timezone",
    "device",
    "simulate",
    "preset",
    "request_line",
    "request_mode",
    "mqtt_discovery",
    "topic_prefix",
    "mqtt_url",
    "mqtt_username",
    "mqtt_password",
    "log_level",
];

fn option_error(file: &str, option: &str, message: impl std::fmt::Display) -> anyhow::Error {
    Coded::error(
        Exit::CONFIG,
        format!("{file}: option `{option}`: {message}"),
    )
}

fn parse_options(file: &str, text: &str) -> anyhow::Result<Options> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Coded::error(Exit::CONFIG, format!("{file}: not JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(Coded::error(
            Exit::CONFIG,
            format!("{file}: expected a JSON object of options"),
        ));
    };
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(option_error(
            file,
            unknown,
            format!("unknown option; known: {}", KNOWN.join(", ")),
        ));
    }
    let text_of = |name: &str, default: Option<&str>| -> anyhow::Result<Option<String>> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(default.map(str::to_owned)),
            Some(Value::String(s)) if s.is_empty() => Ok(default.map(str::to_owned)),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(option_error(
                file,
                name,
                format!("expected text, found {}", kind_of(other)),
            )),
        }
    };
    let required = |name: &str, default: &str| -> anyhow::Result<String> {
        Ok(text_of(name, Some(default))?.unwrap_or_default())
    };
    let flag = |name: &str, default: bool| -> anyhow::Result<bool> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(option_error(
                file,
                name,
                format!("expected true or false, found {}", kind_of(other)),
            )),
        }
    };
    let options = Options {
        meter_name: required("meter_name", "home")?,
        timezone: required("timezone", "UTC")?,
        device: text_of("device", None)?,
        simulate: flag("simulate", false)?,
        preset: required("preset", "veitur")?,
        request_line: required("request_line", "none")?,
        request_mode: required("request_mode", "hold")?,
        mqtt_discovery: flag("mqtt_discovery", true)?,
        topic_prefix: required("topic_prefix", "p1gw")?,
        mqtt_url: text_of("mqtt_url", None)?,
        mqtt_username: text_of("mqtt_username", None)?,
        mqtt_password: text_of("mqtt_password", None)?,
        log_level: required("log_level", "info")?,
    };
    if options.device.is_none() && !options.simulate {
        return Err(option_error(
            file,
            "device",
            "no serial device chosen: pick the P1 cable from the list (or set `simulate` to try \
             the add-on without a meter)",
        ));
    }
    Ok(options)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// The MQTT broker to use.
#[derive(Debug, Clone, PartialEq)]
struct Broker {
    url: String,
    /// "3.1.1" or "5", when the Supervisor says.
    protocol: Option<&'static str>,
    username: Option<String>,
    password: Option<String>,
    from_supervisor: bool,
}

/// Asks the Supervisor for the MQTT service (`services: mqtt:need` in config.yaml).
fn supervisor_mqtt(base: &str, token: Option<&str>) -> anyhow::Result<Broker> {
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        Coded::error(
            Exit::UNAVAILABLE,
            "no MQTT broker: $SUPERVISOR_TOKEN is not set (not running as a Home Assistant \
             add-on?) and the option `mqtt_url` is empty",
        )
    })?;
    let url = format!("{}/services/mqtt", base.trim_end_matches('/'));
    let (status, body) = http_get(&url, Some(token))?;
    let unavailable = |why: String| Coded::error(Exit::UNAVAILABLE, format!("{url}: {why}"));
    if status != 200 {
        // The body may say why (no MQTT service installed); it holds no secret then.
        return Err(unavailable(format!(
            "answered {status}: {} (is the Mosquitto broker add-on installed and started?)",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        )));
    }
    parse_mqtt_service(&body).map_err(|why| unavailable(why.to_owned()))
}

/// The Supervisor's answer, `{"result": "ok", "data": {...}}`; the error never quotes the body
/// (it holds the password).
fn parse_mqtt_service(body: &[u8]) -> Result<Broker, &'static str> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "answer is not JSON")?;
    if value.get("result").and_then(Value::as_str) != Some("ok") {
        return Err("answer's result is not \"ok\"");
    }
    let data: &Map<String, Value> = value
        .get("data")
        .and_then(Value::as_object)
        .ok_or("answer has no data")?;
    let host = data
        .get("host")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .ok_or("answer has no host")?;
    let port = match data.get("port") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|p| (1..=65535).contains(p))
    .ok_or("answer has no valid port")?;
    let ssl = data.get("ssl").and_then(Value::as_bool).unwrap_or(false);
    let protocol = match data.get("protocol").and_then(Value::as_str) {
        Some("5" | "5.0") => Some("5"),
        Some(_) => Some("3.1.1"),
        None => None,
    };
    let text = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let scheme = if ssl { "mqtts" } else { "mqtt" };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    Ok(Broker {
        url: format!("{scheme}://{host}:{port}"),
        protocol,
        username: text("username"),
        password: text("password"),
        from_supervisor: true,
    })
}

/// The generated TOML, with the option each line came from.
struct Generated {
    text: String,
    /// `origin[n]` is the option of line n + 1.
    origin: Vec<Option<&'static str>>,
}

impl Generated {
    fn line(&mut self, option: Option<&'static str>, line: impl Into<String>) {
        self.text.push_str(&line.into());
        self.text.push('\n');
        self.origin.push(option);
    }

    /// A loader error told as an error of the option its line came from, where it has one.
    fn locate(&self, options_file: &str, error: &config::error::ConfigError) -> String {
        let located = error.location().and_then(|location| {
            let option = self
                .origin
                .get(location.line.saturating_sub(1))
                .copied()??;
            Some((location, option))
        });
        match located {
            Some((location, option)) => format!(
                "{options_file}: option `{option}`: {} (at {}:{location}, {})",
                error.message(),
                error.file(),
                error.key()
            ),
            None => error.to_string(),
        }
    }
}

/// A TOML string literal.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

fn generate(
    options: &Options,
    broker: &Broker,
    spool: &Path,
    password_file: &Path,
    listen: std::net::SocketAddr,
) -> Generated {
    let mut g = Generated {
        text: String::new(),
        origin: Vec::new(),
    };
    g.line(
        None,
        "# Written by `p1gw addon-config` from the add-on's options: change those, not this file.",
    );
    g.line(None, "[meter]");
    g.line(
        Some("meter_name"),
        format!("name = {}", quoted(&options.meter_name)),
    );
    g.line(
        Some("timezone"),
        format!("tz = {}", quoted(&options.timezone)),
    );
    g.line(None, "");
    g.line(None, "[source]");
    match (&options.device, options.simulate) {
        (Some(device), false) => {
            g.line(None, "kind = \"serial\"");
            g.line(Some("device"), format!("port = {}", quoted(device)));
            g.line(
                Some("preset"),
                format!("preset = {}", quoted(&options.preset)),
            );
            g.line(None, "");
            g.line(None, "[source.request]");
            g.line(
                Some("request_line"),
                format!("line = {}", quoted(&options.request_line)),
            );
            g.line(
                Some("request_mode"),
                format!("mode = {}", quoted(&options.request_mode)),
            );
        }
        _ => {
            g.line(Some("simulate"), "kind = \"simulate\"");
            g.line(None, "interval = \"10s\"");
        }
    }
    g.line(None, "");
    g.line(None, "[[sink]]");
    g.line(None, "kind = \"mqtt\"");
    g.line(Some("mqtt_url"), format!("url = {}", quoted(&broker.url)));
    if let Some(protocol) = broker.protocol {
        g.line(None, format!("protocol = {}", quoted(protocol)));
    }
    if let Some(username) = &broker.username {
        g.line(
            Some("mqtt_username"),
            format!("username = {}", quoted(username)),
        );
    }
    if broker.password.is_some() {
        let path = password_file.display().to_string();
        g.line(
            Some("mqtt_password"),
            format!("password_file = {}", quoted(&path)),
        );
    }
    g.line(
        Some("mqtt_discovery"),
        format!("discovery = {}", options.mqtt_discovery),
    );
    g.line(
        Some("topic_prefix"),
        format!("topic_prefix = {}", quoted(&options.topic_prefix)),
    );
    g.line(None, "");
    g.line(None, "[http]");
    g.line(None, format!("listen = {}", quoted(&listen.to_string())));
    g.line(None, "");
    g.line(None, "[spool]");
    g.line(
        None,
        format!("dir = {}", quoted(&spool.display().to_string())),
    );
    g.line(None, "");
    g.line(None, "[log]");
    g.line(
        Some("log_level"),
        format!("level = {}", quoted(&options.log_level)),
    );
    g.line(None, "format = \"human\"");
    g
}

/// Writes `secret` to `path`, readable by its owner only.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A minimal HTTP/1.0 GET over plain TCP (the Supervisor and the health endpoint are both
/// plain HTTP): the status code and the body.
fn http_get(url: &str, bearer: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
    let unavailable = |why: String| Coded::error(Exit::UNAVAILABLE, format!("{url}: {why}"));
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| unavailable("only http:// URLs are supported".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    let address = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&address)
        .map_err(|e| unavailable(format!("cannot resolve {authority}: {e}")))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| unavailable(format!("{authority} has no address")))?;
    let mut stream = TcpStream::connect_timeout(addr, HTTP_TIMEOUT)
        .map_err(|e| unavailable(format!("cannot connect: {e}")))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: */*\r\n");
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| unavailable(format!("cannot send the request: {e}")))?;
    let mut response = Vec::new();
    stream
        .take(1 << 20)
        .read_to_end(&mut response)
        .map_err(|e| unavailable(format!("no answer: {e}")))?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| unavailable("answer is not HTTP".into()))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| unavailable("answer has no HTTP status".into()))?;
    Ok((status, response[head_end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: &str) -> anyhow::Result<Options> {
        parse_options("options.json", json)
    }

    const LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        9600,
    ));

    fn broker() -> Broker {
        Broker {
            url: "mqtt://core-mosquitto:1883".into(),
            protocol: Some("3.1.1"),
            username: Some("addons".into()),
            password: Some("s3cret-pw".into()),
            from_supervisor: true,
        }
    }

    #[test]
    fn options_from_the_schema_defaults_parse() {
        let o = options(
            r#"{"meter_name":"home","timezone":"Atlantic/Reykjavik","device":"/dev/ttyUSB0",
                "simulate":false,"preset":"veitur","request_line":"none","request_mode":"hold",
                "mqtt_discovery":true,"topic_prefix":"p1gw","log_level":"info"}"#,
        )
        .expect("valid");
        assert_eq!(o.device.as_deref(), Some("/dev/ttyUSB0"));
        assert_eq!(o.mqtt_url, None);
    }

    #[test]
    fn unknown_and_mistyped_options_are_named() {
        let e = options(r#"{"device":"/dev/p1","colour":1}"#).expect_err("unknown");
        assert!(
            e.to_string().contains("option `colour`: unknown option"),
            "{e}"
        );
        let e = options(r#"{"device":"/dev/p1","simulate":"yes"}"#).expect_err("type");
        assert!(
            e.to_string().contains("option `simulate`: expected true"),
            "{e}"
        );
        let e = options(r#"{"preset":"veitur"}"#).expect_err("no device");
        assert!(e.to_string().contains("option `device`"), "{e}");
        assert_eq!(p1gw::exit::code_of(&e), Exit::CONFIG);
    }

    #[test]
    fn generated_toml_loads_and_keeps_the_password_out() {
        let o =
            options(r#"{"device":"/dev/ttyUSB0","timezone":"Europe/Amsterdam","preset":"dsmr4"}"#)
                .expect("valid");
        let g = generate(
            &o,
            &broker(),
            Path::new("/data/spool"),
            Path::new("/tmp/p1gw/mqtt.pass"),
            LISTEN,
        );
        assert!(!g.text.contains("s3cret-pw"), "{}", g.text);
        assert_eq!(g.origin.len(), g.text.lines().count());
        let valid = config::parse_str("gen.toml", g.text.clone(), &|_| None)
            .and_then(|c| c.validate())
            .unwrap_or_else(|e| panic!("{e:?}\n{}", g.text));
        assert_eq!(valid.origin_name(), "gen.toml");
    }

    /// What the user is told about `options_json`, one line per problem.
    fn told(options_json: &str) -> Vec<String> {
        let o = options(options_json).expect("types are fine");
        let g = generate(
            &o,
            &broker(),
            Path::new("/data/spool"),
            Path::new("/tmp/mqtt.pass"),
            LISTEN,
        );
        let errors = config::parse_str("gen.toml", g.text.clone(), &|_| None)
            .and_then(|c| c.validate())
            .expect_err("a bad option");
        errors.iter().map(|e| g.locate("options.json", e)).collect()
    }

    #[test]
    fn a_bad_value_is_reported_as_its_option() {
        let both = told(r#"{"device":"/dev/ttyUSB0","timezone":"Mars/Olympus","preset":"dsmr9"}"#);
        assert!(
            both.iter()
                .any(|t| t.starts_with("options.json: option `preset`:")),
            "{both:?}"
        );
        let zone = told(r#"{"device":"/dev/ttyUSB0","timezone":"Mars/Olympus"}"#);
        assert!(
            zone.iter()
                .any(|t| t.starts_with("options.json: option `timezone`:")),
            "{zone:?}"
        );
    }

    #[test]
    fn supervisor_answer_shapes() {
        let b = parse_mqtt_service(
            br#"{"result":"ok","data":{"addon":"core_mosquitto","host":"core-mosquitto","port":1883,"ssl":false,"protocol":"3.1.1","username":"addons","password":"pw"}}"#,
        )
        .expect("documented shape");
        assert_eq!(b.url, "mqtt://core-mosquitto:1883");
        assert_eq!(b.password.as_deref(), Some("pw"));
        let b = parse_mqtt_service(
            br#"{"result":"ok","data":{"host":"10.0.0.2","port":"8883","ssl":true,"protocol":"5"}}"#,
        )
        .expect("string port, TLS");
        assert_eq!(b.url, "mqtts://10.0.0.2:8883");
        assert_eq!(b.protocol, Some("5"));
        assert_eq!(b.username, None);
        let e = parse_mqtt_service(br#"{"result":"error","message":"No mqtt service"}"#)
            .expect_err("error answer");
        assert!(e.contains("result"));
        let e = parse_mqtt_service(br#"{"result":"ok","data":{"host":"h","password":"pw"}}"#)
            .expect_err("no port");
        assert!(!e.contains("pw"));
    }
}
