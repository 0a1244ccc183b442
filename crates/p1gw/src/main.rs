//! `p1gw`: the smart-meter P1 gateway binary. See README.md and
//! ARCHITECTURE.md; the CLI contract is docs/contracts.md §3.

mod container;
mod daemon;
mod logging;
mod parse;
mod plan;
mod ports;
mod probe;
mod record;
mod signals;
mod simulate;
mod systemd;

use p1gw::{config, exit};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::exit::{Coded, Exit};

/// Smart-meter P1 gateway: reads telegrams from a meter and delivers every
/// reading to MQTT, InfluxDB, files and more.
#[derive(Debug, Parser)]
#[command(name = "p1gw", version = version(), about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway. Without --config: the built-in demo (a simulated
    /// Veitur meter, live page on http://127.0.0.1:9600/).
    Run(RunArgs),
    /// Decode recorded telegrams: one result per telegram, in input order.
    Parse(parse::ParseArgs),
    /// Validate a configuration file: exit 0, or 78 with every error located.
    CheckConfig(CheckArgs),
    /// Try the line-settings presets on a serial port and report which one
    /// yields telegrams.
    Probe(probe::ProbeArgs),
    /// Capture the raw bytes a meter sends, for bug reports and replay.
    Record(record::RecordArgs),
    /// A fake meter for testing without hardware: telegrams on stdout, a
    /// pseudo-terminal or TCP.
    Simulate(simulate::SimulateArgs),
    /// Home Assistant add-on: its options (and the Supervisor's MQTT service) to a checked
    /// configuration; with --run, then run the gateway with it.
    AddonConfig(container::AddonArgs),
    /// Exit 0 when the health endpoint answers 200 (a container's health check).
    Healthcheck(container::HealthArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The configuration file (TOML).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Telegram interval of simulated meters and paced replays, e.g. "1s".
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    interval: Option<std::time::Duration>,
    /// Listen here instead of the configured HTTP address.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Log format (default: the config's, else journald under systemd, else human).
    #[arg(long, value_enum)]
    log_format: Option<logging::LogFormat>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The configuration file (TOML).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// `0.1.0 (git abc1234, x86_64-unknown-linux-gnu)`.
pub(crate) fn version() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("P1GW_GIT_HASH"),
        ", ",
        env!("P1GW_TARGET"),
        ")"
    )
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    config::value::parse_duration(text)
}

fn main() -> ExitCode {
    // One rustls crypto provider for every TLS client (MQTT, InfluxDB): ring, installed before
    // any TLS configuration is built (docs/dependencies.md §2.3). A second install (another
    // component did it first) fails harmlessly and keeps the first.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        // Already installed.
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() {
                Exit::USAGE
            } else {
                Exit::OK
            };
            // Nothing more to do if even stderr is gone.
            e.print().unwrap_or(());
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Parse(args) => parse::run(&args),
        Command::CheckConfig(args) => Ok(check_config(&args)),
        Command::Run(args) => run(&args),
        Command::Probe(args) => probe::run(&args),
        Command::Record(args) => record::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::AddonConfig(args) => container::addon_config(&args).and_then(|config| {
            config.map_or(Ok(Exit::OK), |config| {
                run(&RunArgs {
                    config: Some(config),
                    interval: None,
                    listen: None,
                    log_format: None,
                })
            })
        }),
        Command::Healthcheck(args) => container::healthcheck(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("p1gw: {error:#}");
            ExitCode::from(exit::code_of(&error))
        }
    }
}

fn check_config(args: &CheckArgs) -> u8 {
    match config::load(&args.file).and_then(|c| c.validate()) {
        Err(errors) => {
            for e in &errors {
                eprintln!("p1gw: {e}");
            }
            config::error::exit_code(&errors)
        }
        Ok(valid) => {
            let problems = config::check(&valid);
            for e in &problems {
                eprintln!("p1gw: {e}");
            }
            if problems.is_empty() {
                println!("{}: ok", args.file.display());
                Exit::OK
            } else {
                Exit::CONFIG
            }
        }
    }
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<config::ValidConfig> {
    match path {
        None => Ok(config::demo()),
        Some(path) => config::load_valid(path).map_err(|errors| {
            Coded::error(
                config::error::exit_code(&errors),
                config::error::report(&errors),
            )
        }),
    }
}

fn run(args: &RunArgs) -> anyhow::Result<u8> {
    // Config is checked before anything binds or logs (linkerd2-proxy's order).
    let config = load(args.config.as_deref())?;
    logging::init(
        args.log_format.unwrap_or(match config.log.format {
            config::daemon::LogFormat::Auto => logging::LogFormat::Auto,
            config::daemon::LogFormat::Human => logging::LogFormat::Human,
            config::daemon::LogFormat::Json => logging::LogFormat::Json,
            config::daemon::LogFormat::Journald => logging::LogFormat::Journald,
        }),
        &config.log.level,
    );
    let overrides = plan::Overrides {
        interval: args.interval,
        listen: args.listen,
    };
    let mut current = plan::plan(&config, &overrides)?;
    tracing::info!(
        version = version(),
        config = config.origin_name(),
        meters = current.meters.len(),
        sinks = current.sinks.len(),
        "p1gw starting."
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
        p1_core::spool::describe_metrics();
        p1_core::sink::describe_metrics();
        p1_reader::describe_metrics();
        p1_http::describe_metrics();
        p1_sink_mqtt::describe_metrics();
        let upkeep = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    metrics.run_upkeep();
                }
            })
        };
        let reload_path = args.config.clone();
        let reload = move || -> anyhow::Result<daemon::Plan> {
            let path = reload_path.as_deref();
            plan::plan(&load(path)?, &overrides)
        };
        let reload: Option<daemon::Reload<'_>> =
            args.config.as_ref().map(|_| &reload as daemon::Reload<'_>);
        // Each SIGHUP with a valid config returns the next plan.
        // Installed once for the whole process, so that no signal falls between two runs.
        let mut signals = signals::Signals::new()?;
        while let Some(next) = daemon::run(current, &metrics, reload, &mut signals).await? {
            current = next;
        }
        upkeep.abort();
        Ok(Exit::OK)
    })
}
