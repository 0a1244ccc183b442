//! Fault-injection, load and soak tests of the p1gw binary (docs/reliability.md). p1gw runs
//! as a child process, as under systemd, against real Mosquitto and InfluxDB servers
//! (`scripts/servers`), socat ptys and TCP proxies the tests control; it is judged from
//! outside: readings produced against readings delivered per sink, duplicates, recovery
//! time, exit codes, output, `/proc`.
//!
//! `P1GW_SOAK=1` (scripts/reliability) runs the long variants; `P1GW_FAULTS_REPORT=FILE` appends one
//! JSON line per scenario to FILE. These tests fail (never skip) when a server binary is
//! missing, naming its Debian package.

#![allow(
    clippy::disallowed_types,
    reason = "these blocking tests run outside tokio's clock: deadlines use std::time::Instant"
)]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "counts of readings and seconds, far from the limits"
)]

mod bad_config;
mod clock;
mod crash;
mod disk;
mod garbage;
mod harness;
mod http_load;
mod netcut;
mod outage;
mod proxy;
mod serial;
mod soak;
mod spool_full;
