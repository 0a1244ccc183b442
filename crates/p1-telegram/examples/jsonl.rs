//! Each telegram of the files given, as one line of §4 JSON, with the CRC
//! checked but a mismatch kept (`"crc":"mismatch"`): what the differential
//! test against Python's dsmr_parser reads (`scripts/differential`). Only this
//! crate is built, not the whole gateway.
//!
//! ```text
//! cargo run -q -p p1-telegram --example jsonl -- [--tz ZONE] FILE...
//! ```
//!
//! Without `--tz` each telegram is read in its meter's default zone.

use std::process::ExitCode;

use p1_telegram::{Decoder, ParseOptions, Telegram, json};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    let mut zone = None;
    if args.peek().map(String::as_str) == Some("--tz") {
        args.next();
        let Some(name) = args.next() else {
            eprintln!("jsonl: --tz needs a zone");
            return ExitCode::from(64);
        };
        match jiff::tz::db().get(&name) {
            Ok(tz) => zone = Some(tz),
            Err(e) => {
                eprintln!("jsonl: --tz {name}: {e}");
                return ExitCode::from(64);
            }
        }
    }
    let mut out = String::new();
    let mut failed = false;
    for file in args {
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("jsonl: {file}: {e}");
                failed = true;
                continue;
            }
        };
        let mut decoder = Decoder::default();
        let mut rest: &[u8] = &bytes;
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame(&mut rest) {
            frames.push(frame.map(|f| f.bytes.to_vec()));
        }
        if let Some(frame) = decoder.finish() {
            frames.push(frame.map(|f| f.bytes.to_vec()));
        }
        for frame in frames {
            let parsed = frame.and_then(|f| {
                Telegram::parse(&f, ParseOptions { check_crc: false }).map(|t| {
                    let tz = zone.clone().unwrap_or_else(|| {
                        jiff::tz::db()
                            .get(t.default_zone())
                            .unwrap_or(jiff::tz::TimeZone::UTC)
                    });
                    out.clear();
                    json::write_telegram(&mut out, &file, &t, &tz);
                    println!("{out}");
                })
            });
            if let Err(e) = parsed {
                eprintln!("jsonl: {file}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(65)
    } else {
        ExitCode::SUCCESS
    }
}
