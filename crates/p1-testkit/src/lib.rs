//! p1-testkit: what the end-to-end test suites of p1gw (`crates/p1gw/tests/it`) and
//! `crates/p1-faults/tests/it` both need, written once.
//!
//! Both run the `p1gw` binary as a child process and judge it from outside, blocking, without a
//! tokio runtime:
//!
//! * [`wait_for`]: poll a condition under a deadline (never wait for time to pass).
//! * [`http_get`]: a plain HTTP/1.1 `GET` on 127.0.0.1; [`percent_encode`] for query
//!   parameters; [`component`] picks one component out of `/api/v1/status`.
//! * [`metric`] and [`metric_sum`]: samples of a Prometheus text exposition (`/metrics`).
//! * [`influxql`]: an InfluxQL query against InfluxDB 1.x.
//! * [`Server`]: a real server (Mosquitto, InfluxDB, VictoriaMetrics) started by
//!   `scripts/servers` and stopped by its pid, also when a test fails; [`InfluxdAgain`] starts
//!   a stopped InfluxDB again on its data and port; [`require`] fails (never skips) when a
//!   program is missing, naming its Debian package.
//! * [`Cable`]: a socat pty pair standing in for the serial cable, unplugged by SIGTERM.
//! * [`Daemon`]: a `p1gw run` child process on a free port, with what the suites ask of it
//!   (HTTP, the log, signals, exit, `/proc` figures); each suite wraps it with how it starts it.
//! * [`root`], [`free_port`], [`stop_child`], [`terminate_child`].
//!
//! # Place in the graph
//!
//! A dev-dependency of `p1gw`, `p1-faults` and `p1-reader` (its pty tests) only. It depends on no p1gw crate: what it checks
//! it reads from outside (HTTP, files, processes), as the fault tests must.
//!
//! # Never
//!
//! * No sleeps as synchronisation: the only sleep is [`wait_for`]'s poll interval.
//! * No skipping: a missing server binary fails the test with the package to install.
#![warn(missing_docs)]
#![allow(
    clippy::disallowed_types,
    reason = "blocking test helpers run outside tokio's clock: deadlines use std::time::Instant"
)]

mod cable;
mod daemon;
mod http;
mod process;
mod prometheus;
mod servers;

pub use cable::Cable;
pub use daemon::{Daemon, rss_kib};
pub use http::{component, http_get, influxql, percent_encode};
pub use process::{free_port, root, stop_child, terminate_child, wait_for};
pub use prometheus::{metric, metric_sum};
pub use servers::{InfluxdAgain, Server, require};

#[cfg(test)]
mod tests;
