//! P1 telegrams: framing, CRC, OBIS codes, typed values.
//!
//! This crate turns the bytes a smart meter's P1 port sends (DSMR 2.2–5.0.2,
//! Belgian e-MUCS, Luxembourg, Sweden, Lithuania, Germany's IEC 62056-21 D0,
//! and Veitur's Iskra IE.5 in Iceland with its heat/hot-water submeter) into
//! typed telegrams:
//!
//! * [`Decoder`] — a streaming framer: feed it chunks of any size, it yields
//!   [`Frame`]s from a line-initial `/` to the `!` line, resynchronises on
//!   garbage and bounds memory by a size limit.
//! * [`Telegram::parse`] — checks the CRC-16/ARC when there is one (it is
//!   optional: Veitur and DSMR ≤ 3 send none) and keeps every data line as an
//!   [`Object`] with its [`ObisCode`], a typed [`Value`] (exact [`Decimal`]s,
//!   units, [`MeterTime`] stamps with their DST flag, hex text, multi-group
//!   lines) and its canonical name; M-Bus channels become [`Submeter`]s
//!   whose [`SubmeterKind`] comes from device type, units and codes together.
//! * [`json`] — the docs/contracts.md §4 JSON shape, written without floats.
//!
//! ```
//! use p1_telegram::{Decoder, ParseOptions, Telegram};
//! let bytes = b"/ISk5\\2MIE5E-200\r\n\r\n1-0:1.8.0(001988.284*kWh)\r\n\
//!               0-1:24.2.1(0366.475*m3)\r\n!\r\n";
//! let mut decoder = Decoder::default();
//! let mut input: &[u8] = bytes;
//! let frame = decoder.next_frame(&mut input).unwrap().unwrap();
//! let telegram = Telegram::parse(frame.bytes, ParseOptions::default()).unwrap();
//! let water = telegram.by_name("hot_water_volume").unwrap();
//! assert_eq!(water.quantity().unwrap().value.to_string(), "366.475");
//! ```
//!
//! Place in the graph: the leftmost crate; `p1-core` and everything else
//! build on it. Architecture invariant: no I/O, no async, no logging, no
//! `unsafe`, no global state; time zones are passed in by the caller. It
//! never panics on input bytes (property-tested and fuzzed).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod crc;
mod decoder;
mod error;
pub mod json;
mod names;
mod obis;
mod scan;
mod telegram;
mod value;

pub use crate::crc::{crc16_arc, crc16_arc_crlf};
pub use crate::decoder::{DEFAULT_MAX_TELEGRAM_BYTES, Decoder, DecoderStats, Frame};
pub use crate::error::Error;
pub use crate::names::SubmeterKind;
pub use crate::obis::ObisCode;
pub use crate::telegram::{
    CrcStatus, FailureEvent, Object, ParseOptions, Peak, Submeter, Telegram, Value,
};
pub use crate::value::{Decimal, MeterTime, Quantity, Stamp, decode_hex_text};

#[cfg(test)]
mod field_tests;
#[cfg(test)]
mod tests;
