//! End-to-end tests of the `p1gw` binary: it runs as a child process, as
//! under systemd, and is checked from outside (HTTP, files, exit codes).

#![allow(
    clippy::disallowed_types,
    reason = "these blocking tests run no tokio runtime: deadlines use std::time::Instant"
)]

mod addon;
mod azure;
mod check_config;
mod codes;
mod daemon;
mod influx;
mod live_page;
mod meters;
mod mqtt;
mod notify;
mod obis_docs;
mod packaging;
mod parse;
mod serial;
mod spike_guard;
mod support;
mod tools;
