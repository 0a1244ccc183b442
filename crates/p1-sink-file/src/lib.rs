//! p1-sink-file: the simplest sinks, and the reference for writing others.
//!
//! * [`jsonl`] appends one docs/contracts.md §4 JSON reading per line to a file;
//! * [`stdout`] writes the same lines to standard output.
//!
//! Both run on p1-core's spool-backed worker ([`p1_core::Spooled`]): a
//! reading is spooled first and deleted only when the line is written (and,
//! for a file, synced to disk), so a crash or a full disk loses nothing. A
//! sink implements exactly two things, [`p1_core::Encode`] (reading → record)
//! and [`p1_core::Deliver`] (records → backend, returning how many the backend
//! took); backoff, spooling, health and metrics come from p1-core.
//!
//! Place in the graph: `p1-core <- p1-sink-file <- p1gw`; it never sees the
//! reader or another sink.

#![warn(missing_docs)]

pub mod jsonl;
pub mod stdout;

use p1_core::{Encode, Reading};

/// Encodes a reading as its JSON and a line end.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLine;

impl Encode for JsonLine {
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        let json = reading.json();
        let mut line = Vec::with_capacity(json.len() + 1);
        line.extend_from_slice(json.as_bytes());
        line.push(b'\n');
        Some(line)
    }
}

#[cfg(test)]
mod tests;
