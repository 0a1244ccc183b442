//! p1-faults: proof under faults and load, as tests that run real processes.
//!
//! This crate has no code of its own; its integration tests (`tests/it`) start the `p1gw`
//! binary as a child process, as systemd would, next to real Mosquitto and InfluxDB servers
//! (`scripts/servers`), socat pseudo-terminals and TCP proxies the tests control, and then
//! break things: backends stop, the network goes silent, the daemon is killed with SIGKILL
//! mid-write, the spool fills up, the serial cable is pulled a hundred times, garbage floods
//! the source, the configuration is wrong in thirty ways, two hundred HTTP clients pile on,
//! the meter's clock jumps. Each test counts readings produced against readings delivered per
//! sink, duplicates and recovery time, and asserts that nothing was lost.
//!
//! Short variants run in `cargo test`; `P1GW_SOAK=1` (set by `scripts/reliability`) runs the long
//! ones. Results and the table they fill: `docs/reliability.md`.
//!
//! Architecture invariant: nothing here is linked into p1gw; the tests see the daemon only
//! from outside (its exit codes, output, files, HTTP, `/proc`).
