//! End-to-end tests of the `p1gw` binary.

mod parse;
