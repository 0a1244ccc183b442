//! Scenario 8: broken configurations and secrets, table-driven. Each case is a small change to
//! one good configuration (MQTT and InfluxDB sinks with secret files, an HTTP token) and runs
//! through `p1gw check-config` and `p1gw run` as processes. Each must end with its exact exit
//! code (78 configuration, 66 the file is missing, 74 it cannot be read; `run` reads secret
//! files only when it builds the sinks: 74 there), say where the problem is
//! (`FILE:LINE:COL: key.path` where a position exists), print no panic or backtrace, and never
//! print a secret: recognisable secret strings sit in the secret files and in every `P1GW_*`
//! variable, and all output is searched for them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Row, free_port, http_get, p1gw_bin, root};

/// Secret values: none may appear in any output.
const SECRETS: [&str; 8] = [
    "S3cretMqttFile-7f3a",
    "S3cretInfluxTokenFile-91bc",
    "S3cretHttpTokenFile-44de",
    "S3cretEnvMqtt-0a1b",
    "S3cretEnvInfluxPw-2c3d",
    "S3cretEnvInfluxToken-4e5f",
    "S3cretEnvHttp-6a7b",
    "S3cretEnvAzure-8c9d",
];

const GOOD: &str = r#"[meter]
name = "home"
tz = "Atlantic/Reykjavik"

[source]
kind = "simulate"
interval = "1s"

[[sink]]
kind = "mqtt"
url = "mqtt://127.0.0.1:1"
username = "gw"
password_file = "{dir}/mqtt.pass"

[[sink]]
kind = "influx"
url = "http://127.0.0.1:1"
api = "v2"
org = "home"
bucket = "p1"
token_file = "{dir}/influx.token"

[http]
listen = "127.0.0.1:{port}"
token_file = "{dir}/http.token"

[spool]
dir = "{dir}/spool"
"#;

/// What a command must do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exit with this code.
    Exit(i32),
    /// `run` only: start and serve `/healthz` (the problem is one it rides out).
    Runs,
}

struct Case {
    name: &'static str,
    /// The configuration text (`{dir}` and `{port}` filled in), or None for no file at all.
    config: Option<String>,
    check: Expect,
    run: Expect,
    /// Text both commands' error output must contain (a key path, a file name).
    says: &'static str,
    /// Whether check-config's and run's output must locate it as FILE:LINE:COL (run reads
    /// secret files after validation, and names the sink, the key and the file instead).
    located: (bool, bool),
    /// Set every `P1GW_*` secret variable.
    env_secrets: bool,
}

fn case(name: &'static str, config: String, check: i32, run: i32, says: &'static str) -> Case {
    Case {
        name,
        config: Some(config),
        check: Expect::Exit(check),
        run: Expect::Exit(run),
        says,
        located: (true, true),
        env_secrets: false,
    }
}

/// A secret or input file problem: check-config locates the key; run names the file.
fn file_case(name: &'static str, config: String, run: i32, says: &'static str) -> Case {
    Case {
        located: (true, false),
        ..case(name, config, 78, run, says)
    }
}

fn replace(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in the good config");
    GOOD.replacen(from, to, 1)
}

fn cases() -> Vec<Case> {
    let mut c = vec![
        case(
            "TOML syntax error",
            replace("[meter]", "[meter"),
            78,
            78,
            "p1gw.toml:1:",
        ),
        case(
            "duplicate key",
            replace("name = \"home\"", "name = \"home\"\nname = \"again\""),
            78,
            78,
            "name",
        ),
        case(
            "unknown top-level key",
            format!("colour = \"red\"\n{GOOD}"),
            78,
            78,
            "colour",
        ),
        case(
            "unknown key in [meter]",
            replace("tz =", "nmae = \"x\"\ntz ="),
            78,
            78,
            "meter.nmae",
        ),
        case(
            "unknown key in a sink",
            replace("username = \"gw\"", "username = \"gw\"\nqos_level = 1"),
            78,
            78,
            "sink[0].qos_level",
        ),
        case(
            "wrong type: name is a number",
            replace("name = \"home\"", "name = 5"),
            78,
            78,
            "meter.name",
        ),
        case(
            "wrong type: interval is a number",
            replace("interval = \"1s\"", "interval = 1"),
            78,
            78,
            "source.interval",
        ),
        case(
            "missing meter name",
            replace("name = \"home\"\n", ""),
            78,
            78,
            "meter",
        ),
        case(
            "unknown time zone",
            replace("Atlantic/Reykjavik", "Mars/Olympus_Mons"),
            78,
            78,
            "meter.tz",
        ),
        case(
            "unknown source kind",
            replace("kind = \"simulate\"", "kind = \"usb\""),
            78,
            78,
            "source.kind",
        ),
        case(
            "duration without unit",
            replace("interval = \"1s\"", "interval = \"10\""),
            78,
            78,
            "source.interval",
        ),
        case(
            "duration nonsense",
            replace("interval = \"1s\"", "interval = \"10 parsecs\""),
            78,
            78,
            "source.interval",
        ),
        case(
            "unknown sink kind",
            replace("kind = \"mqtt\"", "kind = \"kafka\""),
            78,
            78,
            "sink[0].kind",
        ),
        case(
            "mqtt: wrong URL scheme",
            replace("mqtt://127.0.0.1:1", "ftp://127.0.0.1:1"),
            78,
            78,
            "sink[0].url",
        ),
        case(
            "mqtt: not a URL",
            replace("mqtt://127.0.0.1:1", "::::"),
            78,
            78,
            "sink[0].url",
        ),
        case(
            "mqtt: qos 3",
            replace("username = \"gw\"", "username = \"gw\"\nqos = 3"),
            78,
            78,
            "sink[0].qos",
        ),
        case(
            "mqtt: keep_alive 0s",
            replace(
                "username = \"gw\"",
                "username = \"gw\"\nkeep_alive = \"0s\"",
            ),
            78,
            78,
            "sink[0].keep_alive",
        ),
        case(
            "mqtt: password written inline",
            replace(
                "username = \"gw\"",
                "username = \"gw\"\npassword = \"S3cretMqttFile-7f3a\"",
            ),
            78,
            78,
            "sink[0].password",
        ),
        case(
            "mqtt: client certificate without key",
            replace("mqtt://127.0.0.1:1", "mqtts://127.0.0.1:1").replacen(
                "username = \"gw\"",
                "username = \"gw\"\nclient_cert_file = \"{dir}/mqtt.pass\"",
                1,
            ),
            78,
            78,
            "client_key_file",
        ),
        case(
            "influx: api v3",
            replace("api = \"v2\"", "api = \"v3\""),
            78,
            78,
            "sink[1].api",
        ),
        case(
            "influx: v2 without a token",
            replace("token_file = \"{dir}/influx.token\"\n", ""),
            78,
            78,
            "sink[1]",
        ),
        case(
            "influx: batch_size 0",
            replace("bucket = \"p1\"", "bucket = \"p1\"\nbatch_size = 0"),
            78,
            78,
            "sink[1].batch_size",
        ),
        case(
            "influx: precision minutes",
            replace("bucket = \"p1\"", "bucket = \"p1\"\nprecision = \"m\""),
            78,
            78,
            "sink[1].precision",
        ),
        case(
            "influx: URL without host",
            replace("http://127.0.0.1:1", "http://"),
            78,
            78,
            "sink[1].url",
        ),
        case(
            "http: listen is not an address",
            replace(
                "listen = \"127.0.0.1:{port}\"",
                "listen = \"localhost-ish\"",
            ),
            78,
            78,
            "http.listen",
        ),
        case(
            "spool: max_bytes too small",
            replace("[spool]", "[spool]\nmax_bytes = \"10KiB\""),
            78,
            78,
            "spool.max_bytes",
        ),
        case(
            "spool: max_bytes not a size",
            replace("[spool]", "[spool]\nmax_bytes = \"lots\""),
            78,
            78,
            "spool.max_bytes",
        ),
        case(
            "log: unknown level",
            format!("{GOOD}\n[log]\nlevel = \"loud\"\n"),
            78,
            78,
            "log.level",
        ),
        case(
            "two sinks with one name",
            format!(
                "{GOOD}\n[[sink]]\nkind = \"jsonl\"\npath = \"{{dir}}/a.jsonl\"\n\n[[sink]]\nkind = \"jsonl\"\npath = \"{{dir}}/b.jsonl\"\n"
            ),
            78,
            78,
            "sink[3]",
        ),
        case(
            "[meter] and [[meters]] together",
            format!(
                "{GOOD}\n[[meters]]\nname = \"b\"\ntz = \"UTC\"\nsource = {{ kind = \"simulate\" }}\n"
            ),
            78,
            78,
            "meters",
        ),
        case(
            "two meters on one serial port",
            replace(
                "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\n[source]\nkind = \"simulate\"\ninterval = \"1s\"\n",
                "[[meters]]\nname = \"a\"\ntz = \"UTC\"\nsource = { kind = \"serial\", port = \"/dev/ttyUSB7\", preset = \"dsmr4\" }\n\n[[meters]]\nname = \"b\"\ntz = \"UTC\"\nsource = { kind = \"serial\", port = \"/dev/ttyUSB7\", preset = \"dsmr4\" }\n",
            ),
            78,
            78,
            "port",
        ),
        case(
            "veitur preset polled faster than 10 s",
            replace(
                "kind = \"simulate\"\ninterval = \"1s\"",
                "kind = \"serial\"\nport = \"/dev/null\"\npreset = \"veitur\"\nrequest = { line = \"rts\", mode = \"poll\", interval = \"5s\" }",
            ),
            78,
            78,
            "source.request.interval",
        ),
        case(
            "request line gpio without offset",
            replace(
                "kind = \"simulate\"\ninterval = \"1s\"",
                "kind = \"serial\"\nport = \"/dev/null\"\npreset = \"dsmr4\"\nrequest = { line = \"gpio:gpiochip0\" }",
            ),
            78,
            78,
            "source.request.line",
        ),
        // Secrets that cannot be read: check-config looks (78); run reads them when it builds
        // the sinks (74, an I/O error naming the file, never its content).
        file_case(
            "mqtt password_file missing",
            replace("{dir}/mqtt.pass", "{dir}/nope.pass"),
            74,
            "nope.pass",
        ),
        file_case(
            "mqtt password_file is a directory",
            replace("{dir}/mqtt.pass", "{dir}/spool-parent"),
            74,
            "spool-parent",
        ),
        file_case(
            "influx token_file a dangling symlink",
            replace("{dir}/influx.token", "{dir}/dangling"),
            74,
            "dangling",
        ),
        file_case(
            "influx token_file empty",
            replace("{dir}/influx.token", "{dir}/empty"),
            74,
            "empty",
        ),
        file_case(
            "http token_file missing",
            replace("{dir}/http.token", "{dir}/gone.token"),
            74,
            "gone.token",
        ),
        // A recording missing at start: input file missing (66) for run.
        file_case(
            "replay recording missing",
            replace(
                "kind = \"simulate\"\ninterval = \"1s\"",
                "kind = \"replay\"\npath = \"{dir}/no-such-recording.txt\"",
            ),
            66,
            "source.path",
        ),
    ];
    // The same broken secret, with every P1GW_* variable set: the variables win, so the
    // file is not needed (run starts), and their values never print either.
    let mut env = case(
        "password_file missing but P1GW_MQTT_PASSWORD set",
        replace("{dir}/mqtt.pass", "{dir}/nope.pass"),
        0,
        0,
        "",
    );
    env.env_secrets = true;
    env.run = Expect::Runs;
    env.located = (false, false);
    c.push(env);
    let mut env = case(
        "unknown key, all P1GW_* secrets set",
        replace("tz =", "tzz = 1\ntz ="),
        78,
        78,
        "meter.tzz",
    );
    env.env_secrets = true;
    c.push(env);
    // Things only `run` can find, or that it rides out.
    let mut port = case("http port in use", GOOD.to_owned(), 0, 78, "http.listen");
    port.located = (false, false);
    c.push(port);
    let mut serial = case(
        "serial device missing",
        replace(
            "kind = \"simulate\"\ninterval = \"1s\"",
            "kind = \"serial\"\nport = \"/dev/ttyNOPE9\"\npreset = \"dsmr4\"",
        ),
        78,
        0,
        "source.port",
    );
    serial.run = Expect::Runs; // it waits for the device to appear
    c.push(serial);
    c.push(Case {
        name: "config file missing",
        config: None,
        check: Expect::Exit(66),
        run: Expect::Exit(66),
        says: "p1gw.toml",
        located: (false, false),
        env_secrets: false,
    });
    let mut dir = case(
        "config path is a directory",
        String::new(),
        74,
        74,
        "p1gw.toml",
    );
    dir.located = (false, false);
    c.push(dir);
    c
}

/// Files the configuration refers to: good secrets, an empty one, a directory, a dangling
/// symlink.
fn prepare(dir: &Path) {
    std::fs::write(dir.join("mqtt.pass"), format!("{}\n", SECRETS[0])).expect("write");
    std::fs::write(dir.join("influx.token"), format!("{}\n", SECRETS[1])).expect("write");
    std::fs::write(dir.join("http.token"), format!("{}\n", SECRETS[2])).expect("write");
    std::fs::write(dir.join("empty"), "").expect("write");
    std::fs::create_dir_all(dir.join("spool-parent")).expect("mkdir");
    std::os::unix::fs::symlink(dir.join("nowhere"), dir.join("dangling")).expect("symlink");
}

struct Outcome {
    code: Option<i32>,
    output: String,
}

fn command(args: &[&str], env_secrets: bool) -> Command {
    let mut cmd = Command::new(p1gw_bin());
    cmd.args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .env_remove("P1GW_MQTT_PASSWORD")
        .env_remove("P1GW_INFLUX_PASSWORD")
        .env_remove("P1GW_INFLUX_TOKEN")
        .env_remove("P1GW_HTTP_TOKEN")
        .env_remove("P1GW_AZURE_CONNECTION_STRING")
        .env("RUST_LOG", "debug");
    if env_secrets {
        cmd.env("P1GW_MQTT_PASSWORD", SECRETS[3])
            .env("P1GW_INFLUX_PASSWORD", SECRETS[4])
            .env("P1GW_INFLUX_TOKEN", SECRETS[5])
            .env("P1GW_HTTP_TOKEN", SECRETS[6])
            .env("P1GW_AZURE_CONNECTION_STRING", SECRETS[7]);
    }
    cmd
}

fn check_config(file: &Path, env_secrets: bool) -> Outcome {
    let out = command(
        &["check-config", file.to_str().expect("utf-8")],
        env_secrets,
    )
    .output()
    .expect("run p1gw check-config");
    Outcome {
        code: out.status.code(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `p1gw run`: its exit code within 15 s, or None when it is serving `/healthz` (then it is
/// stopped with SIGTERM, which must exit 0).
fn run(file: &Path, port: u16, env_secrets: bool, dir: &Path) -> Outcome {
    let log = dir.join("run.log");
    let mut child = command(
        &[
            "run",
            "--config",
            file.to_str().expect("utf-8"),
            "--log-format",
            "human",
        ],
        env_secrets,
    )
    .stdout(std::fs::File::create(dir.join("run.out")).expect("out"))
    .stderr(std::fs::File::create(&log).expect("log"))
    .spawn()
    .expect("run p1gw");
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status.code();
        }
        if http_get(port, "/healthz").is_some_and(|(s, _)| s == 200) {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .ok();
            let status = child.wait().expect("wait");
            assert_eq!(status.code(), Some(0), "SIGTERM after a good start");
            break None;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("p1gw run neither exited nor served /healthz within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        code,
        output: format!(
            "{}{}",
            std::fs::read_to_string(dir.join("run.out")).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
    }
}

/// `FILE:LINE:COL: ` somewhere in `text`.
fn located(text: &str, file: &str) -> bool {
    text.match_indices(file).any(|(at, _)| {
        let rest = &text[at + file.len()..];
        let mut parts = rest.splitn(4, ':');
        parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Runs one case through both commands: a summary, and what went wrong if anything did.
fn try_case(case: &Case) -> (String, Option<String>) {
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    prepare(dir);
    let port = free_port();
    let file = dir.join("p1gw.toml");
    match &case.config {
        Some(text) if case.name == "config path is a directory" => {
            assert!(text.is_empty());
            std::fs::create_dir(&file).expect("mkdir");
        }
        Some(text) => std::fs::write(
            &file,
            text.replace("{dir}", &dir.display().to_string())
                .replace("{port}", &port.to_string()),
        )
        .expect("write config"),
        None => {}
    }
    // The port-in-use case: something holds the configured port.
    let _holder = (case.name == "http port in use")
        .then(|| std::net::TcpListener::bind(("127.0.0.1", port)).expect("hold the port"));

    let checked = check_config(&file, case.env_secrets);
    let ran = run(&file, port, case.env_secrets, dir);
    let file_name = file.display().to_string();
    let mut problems = Vec::new();
    for (what, outcome, expect, locate) in [
        ("check-config", &checked, case.check, case.located.0),
        ("run", &ran, case.run, case.located.1),
    ] {
        match expect {
            Expect::Exit(code) => {
                if outcome.code != Some(code) {
                    problems.push(format!(
                        "{what}: exit {:?}, expected {code}: {}",
                        outcome.code,
                        outcome.output.trim()
                    ));
                }
                if code != 0 {
                    if !outcome.output.contains(case.says) {
                        problems.push(format!(
                            "{what}: does not mention {:?}: {}",
                            case.says,
                            outcome.output.trim()
                        ));
                    }
                    if locate && !located(&outcome.output, &file_name) {
                        problems.push(format!(
                            "{what}: no FILE:LINE:COL: {}",
                            outcome.output.trim()
                        ));
                    }
                }
            }
            Expect::Runs => {
                if outcome.code.is_some() {
                    problems.push(format!(
                        "{what}: exited {:?} instead of running: {}",
                        outcome.code,
                        outcome.output.trim()
                    ));
                }
            }
        }
        let lower = outcome.output.to_ascii_lowercase();
        for bad in ["panicked", "stack backtrace", "rust_backtrace"] {
            if lower.contains(bad) {
                problems.push(format!("{what}: {bad:?} in the output"));
            }
        }
        for secret in SECRETS {
            if outcome.output.contains(secret) {
                problems.push(format!("{what}: printed the secret {secret}"));
            }
        }
    }
    let seen = format!(
        "{}: check-config {:?}, run {}",
        case.name,
        checked.code,
        ran.code.map_or("serving".to_owned(), |c| c.to_string())
    );
    let problems =
        (!problems.is_empty()).then(|| format!("{}: {}", case.name, problems.join(" | ")));
    (seen, problems)
}

#[test]
fn broken_configs_and_secrets_fail_cleanly_with_located_errors_and_no_secret() {
    let _lane = crate::harness::shared();
    let cases = cases();
    // Four cases at a time: most are quick exits, a few start and stop the daemon.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(usize, String, Option<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(case) = cases.get(i) else { break };
                        let (seen, problems) = try_case(case);
                        out.push((i, seen, problems));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    let mut results = results;
    results.sort_by_key(|r| r.0);
    let seen: Vec<String> = results.iter().map(|r| r.1.clone()).collect();
    let failures: Vec<String> = results.iter().filter_map(|r| r.2.clone()).collect();
    let mut row = Row::new(
        &format!("8. bad config and secrets ×{}", cases.len()),
        format!(
            "{} broken configs (syntax, unknown keys, wrong types, bad values, unreadable or \
             empty secrets, port in use, missing files) through `check-config` and `run`; 8 \
             secret strings in files and P1GW_* variables",
            cases.len()
        ),
    );
    row.note(seen.join("; "));
    row.check(cases.len() >= 30, format!("only {} cases", cases.len()));
    for f in failures {
        row.check(false, f);
    }
    row.finish();
}
