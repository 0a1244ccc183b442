//! The configuration loader of `p1gw` (docs/contracts.md §5) and its exit codes, as a library: the
//! binary (`src/main.rs`) uses it, and so can a cargo-fuzz target (`fuzz/fuzz_targets/config.rs`)
//! that feeds it arbitrary text. Nothing here is a stable API for other programs.

#![warn(missing_docs)]

pub mod config;
pub mod exit;
