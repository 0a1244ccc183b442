//! The reader's sources against real transports, through the public API: a
//! socat pty pair for the serial source (bytes in random chunks with random
//! delays, an unplug in the middle of a telegram) and a real TCP listener for
//! the tcp source (a bridge that drops the connection mid-telegram).
//!
//! socat must be installed (`scripts/test` installs it: `apt-get install
//! socat`). A pty carries bytes only: no baud rate, no 7-bit framing, no
//! RTS/DTR. Line settings and the request line are unit-tested in
//! `src/serial/tests.rs` and `src/request/tests.rs` with framed bytes and
//! fake lines instead.
//!
//! Every random choice comes from one seed per test, printed at the start
//! (shown with a failing test's output) and in every assertion message;
//! `P1GW_TEST_SEED=<n>` replays a run.

mod pty;
mod support;
mod tcp;
