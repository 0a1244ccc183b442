//! Fuzz target: arbitrary bytes, fed in arbitrary chunks, through the
//! streaming decoder, the telegram parser (lenient, and strict as the daemon
//! parses) and the JSON writer. Checks, besides
//! "no panic": frames never exceed the limit, and the output does not depend on
//! the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p1_telegram::{Decoder, ParseOptions, Telegram, json};

const LIMIT: usize = 2048;

fn run(data: &[u8], chunk: usize) -> Vec<String> {
    let mut decoder = Decoder::new(LIMIT);
    let mut out = Vec::new();
    let mut handle = |r: Result<p1_telegram::Frame<'_>, p1_telegram::Error>| match r {
        Err(e) => out.push(format!("error {e}")),
        Ok(frame) => {
            assert!(frame.bytes.len() <= LIMIT, "frame over the limit");
            let lenient = Telegram::parse(frame.bytes, ParseOptions { check_crc: false });
            // As the daemon parses: CRC checked, garbled CRC-less frames rejected. It never
            // accepts what the lenient parse refused, nor reads it differently.
            let strict = Telegram::parse(frame.bytes, ParseOptions::default());
            if let Ok(t) = &strict {
                assert_eq!(
                    lenient.as_ref().ok(),
                    Some(t),
                    "strict accepted what lenient did not"
                );
            }
            out.push(format!("strict {:?}", strict.map(|t| t.objects.len())));
            match lenient {
                Err(e) => out.push(format!("parse error {e}")),
                Ok(t) => {
                    let mut line = String::new();
                    json::write_telegram(&mut line, "fuzz", &t, &jiff::tz::TimeZone::UTC);
                    out.push(line);
                }
            }
        }
    };
    for piece in data.chunks(chunk.max(1)) {
        let mut rest = piece;
        while let Some(r) = decoder.next_frame(&mut rest) {
            handle(r);
        }
    }
    if let Some(r) = decoder.finish() {
        handle(r);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let whole = run(rest, rest.len());
    let chunked = run(rest, usize::from(first % 17) + 1);
    assert_eq!(whole, chunked, "chunking changed the result");
});
