//! `p1gw simulate`: a fake meter for testing without hardware (docs/contracts.md §3).
//!
//! It sends the telegrams of a simulated meter (`p1_reader::SimulatedMeter`:
//! Veitur, DSMR 5 or Belgian) every interval, to one of:
//!
//! * standard output (the default): `p1gw simulate --count 3 | p1gw parse`;
//! * a pseudo-terminal (`--pty PATH`): PATH becomes a symlink to the pty's
//!   slave, which `p1gw run`, `probe` or `record` open like a serial device;
//!   made with `openpty`, no socat needed, removed on exit;
//! * TCP (`--tcp ADDR`): every connected client gets the stream from the
//!   next telegram on, like ser2net or an ESP P1 bridge. The address
//!   actually bound is printed on stderr (`--tcp 127.0.0.1:0` picks a port).
//!
//! It stops on SIGINT or SIGTERM, or after `--count` telegrams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use p1_reader::{MeterPty, Profile, SimulatedMeter};
use tokio::sync::broadcast;

use crate::exit::{Coded, Exit};

/// Arguments of `p1gw simulate`.
#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// Which meter to imitate.
    #[arg(long, value_enum, default_value_t = ProfileArg::Veitur)]
    profile: ProfileArg,
    /// Serve the telegrams on a pseudo-terminal linked at PATH (e.g.
    /// /tmp/p1), to be opened like a serial port.
    #[arg(long, value_name = "PATH", conflicts_with = "tcp")]
    pty: Option<PathBuf>,
    /// Serve the telegrams over TCP on ADDR (e.g. 127.0.0.1:8088) to every
    /// connected client.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Time between telegrams, e.g. "10s" or "500ms".
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "10s")]
    interval: Duration,
    /// Stop after this many telegrams (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Seed of the simulated load (default: from the clock); the same seed
    /// gives the same values.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

/// `--profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProfileArg {
    /// Veitur (Iceland): Iskra IE.5, hot-water submeter, no CRC.
    Veitur,
    /// DSMR 5.0.2 with gas, CRC.
    Dsmr5,
    /// Fluvius e-MUCS (Belgium), gas on 24.2.3, CRC.
    Belgium,
}

impl ProfileArg {
    fn profile(self) -> Profile {
        match self {
            ProfileArg::Veitur => Profile::Veitur,
            ProfileArg::Dsmr5 => Profile::Dsmr5,
            ProfileArg::Belgium => Profile::Belgium,
        }
    }
}

/// Where telegrams go.
enum Output {
    Stdout,
    Pty(MeterPty),
    Tcp(broadcast::Sender<Arc<[u8]>>),
}

/// Runs `p1gw simulate`; returns the exit code.
pub(crate) fn run(args: &SimulateArgs) -> anyhow::Result<u8> {
    if args.interval.is_zero() {
        return Err(Coded::error(
            Exit::USAGE,
            "--interval must be longer than 0s",
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(simulate(args))
}

async fn simulate(args: &SimulateArgs) -> anyhow::Result<u8> {
    let profile = args.profile.profile();
    let mut output = match (&args.pty, args.tcp) {
        (Some(path), _) => {
            let pty = MeterPty::create(path)
                .map_err(|e| Coded::error(Exit::IO, format!("--pty {}: {e}", path.display())))?;
            eprintln!(
                "p1gw simulate: {} telegrams every {} on {} -> {}",
                profile.as_str(),
                crate::config::value::format_duration(args.interval),
                path.display(),
                pty.slave_name()
            );
            Output::Pty(pty)
        }
        (None, Some(addr)) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Coded::error(Exit::IO, format!("--tcp {addr}: cannot listen: {e}")))?;
            let local = listener.local_addr()?;
            eprintln!(
                "p1gw simulate: {} telegrams every {} on tcp {local}",
                profile.as_str(),
                crate::config::value::format_duration(args.interval),
            );
            let (tx, _) = broadcast::channel(16);
            tokio::spawn(serve_tcp(listener, tx.clone()));
            Output::Tcp(tx)
        }
        (None, None) => Output::Stdout,
    };
    let zone = jiff::tz::db()
        .get(profile.time_zone())
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let seed = args
        .seed
        .unwrap_or_else(|| jiff::Timestamp::now().as_nanosecond() as u64);
    let mut meter = SimulatedMeter::new(profile, seed);
    let mut signals = crate::signals::Signals::new()?;
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while args.count.is_none_or(|n| sent < n) {
        tokio::select! {
            _ = ticks.tick() => {}
            signal = signals.next() => match signal {
                crate::signals::Signal::Stop(_) => break,
                crate::signals::Signal::Reload => continue,
            },
        }
        let telegram = meter.telegram(jiff::Timestamp::now(), args.interval.as_secs_f64(), &zone);
        match &mut output {
            Output::Stdout => {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                match out.write_all(&telegram).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    // The reader of the pipe is gone (`| head`): done.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    Err(e) => return Err(e).context("cannot write to standard output"),
                }
            }
            Output::Pty(pty) => {
                pty.send(&telegram, args.interval)
                    .await
                    .context("cannot write to the pty")?;
            }
            Output::Tcp(tx) => {
                // No client connected is fine: a meter sends anyway.
                let _clients = tx.send(Arc::from(telegram)).unwrap_or(0);
            }
        }
        sent += 1;
    }
    // Dropping the pty removes its link.
    drop(output);
    Ok(Exit::OK)
}

/// Accepts clients and gives each the telegrams from now on.
async fn serve_tcp(listener: tokio::net::TcpListener, tx: broadcast::Sender<Arc<[u8]>>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("p1gw simulate: accept failed: {e}");
                continue;
            }
        };
        eprintln!("p1gw simulate: client {peer} connected");
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            loop {
                match rx.recv().await {
                    Ok(telegram) => {
                        if stream.write_all(&telegram).await.is_err() {
                            break;
                        }
                    }
                    // A slow client misses telegrams, as on a real line.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            eprintln!("p1gw simulate: client {peer} gone");
        });
    }
}
