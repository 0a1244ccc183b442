//! Unit tests: the line-protocol writer (with a parser that reads lines back), the reading
//! encoder, and the writer against a small local HTTP server.

mod encode;
mod line;
mod parser;
mod server;
mod writer;

use std::sync::Arc;

use p1_core::Reading;

/// A reading of `text` (a whole telegram; the CRC is not checked), meter "home", received at
/// `received` (seconds since the epoch), local times read in Atlantic/Reykjavik (UTC).
pub(crate) fn reading(text: &str, received: i64) -> Reading {
    let tz = jiff::tz::db().get("Atlantic/Reykjavik").expect("zone");
    let options = p1_telegram::ParseOptions { check_crc: false };
    let telegram = p1_telegram::Telegram::parse(text.as_bytes(), options).expect("telegram");
    Reading::from_telegram(
        Arc::from("home"),
        Arc::from("test"),
        &telegram,
        &tz,
        jiff::Timestamp::from_second(received).expect("time"),
    )
}

/// A fixture telegram as text.
pub(crate) fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/telegrams")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Veitur's heat submeter telegram (the fixture, which ends without `!`, closed).
pub(crate) fn veitur_heat() -> String {
    let mut text = fixture("iceland_veitur_iskra_ie5e_heat_submeter_raw.txt");
    if !text.ends_with('\n') {
        text.push_str("\r\n");
    }
    text.push_str("!\r\n");
    text
}
