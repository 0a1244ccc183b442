//! docs/obis.md's "Influx field" and "Home Assistant" columns are what the code does: the
//! InfluxDB encoder run on every fixture telegram (which names become fields) and the MQTT
//! sink's discovery `spec` (which classes an entity gets). `UPDATE_DOCS=1 cargo test -p p1gw
//! --test it obis_docs` rewrites the two columns; otherwise a difference fails, so the table
//! and the code cannot drift apart. (The names themselves are held to `names.rs` by
//! p1-telegram's `docs_obis_md_lists_every_meter_code_with_its_name`.)

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::support::root;

/// Every named value of every fixture: (names written as InfluxDB fields, names seen with a
/// number, names seen at all).
fn from_fixtures() -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let (mut fields, mut numeric, mut seen) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let tz = jiff::tz::TimeZone::UTC;
    for dir in ["fixtures/telegrams", "fixtures/telegrams/field"] {
        for entry in std::fs::read_dir(root().join(dir)).expect("fixtures") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "txt") {
                continue;
            }
            let bytes = std::fs::read(&path).expect("fixture");
            let mut decoder = p1_telegram::Decoder::new(1 << 20);
            let mut rest = &bytes[..];
            let mut frames = Vec::new();
            while let Some(frame) = decoder.next_frame(&mut rest) {
                if let Ok(frame) = frame {
                    frames.push(frame.bytes.to_vec());
                }
            }
            if let Some(Ok(frame)) = decoder.finish() {
                frames.push(frame.bytes.to_vec());
            }
            for frame in frames {
                let options = p1_telegram::ParseOptions { check_crc: false };
                let Ok(telegram) = p1_telegram::Telegram::parse(&frame, options) else {
                    continue;
                };
                let reading = p1_core::Reading::from_telegram(
                    Arc::from("m"),
                    Arc::from("f"),
                    &telegram,
                    &tz,
                    jiff::Timestamp::UNIX_EPOCH,
                );
                for m in &reading.objects {
                    if let Some(name) = m.name {
                        seen.insert(name.to_owned());
                        if m.value.as_f64().is_some() {
                            numeric.insert(name.to_owned());
                        }
                    }
                }
                let mut out = String::new();
                p1_sink_influx::write_reading(&mut out, &reading, p1_sink_influx::Precision::S);
                for line in out.lines() {
                    let field_set = line.split(' ').nth(1).expect("fields");
                    for field in field_set.split(',') {
                        let key = field.split('=').next().expect("key");
                        fields.insert(key.to_owned());
                    }
                }
            }
        }
    }
    (fields, numeric, seen)
}

/// The unit a row names first (`kW (W)` → `kW`, `Wh as sent` → `Wh`); `None` for `–`.
fn first_unit(cell: &str) -> Option<&str> {
    let unit = cell
        .trim()
        .split([' ', ';', ','])
        .next()
        .unwrap_or("")
        .trim();
    (!unit.is_empty() && unit != "–" && unit != "count").then_some(unit)
}

/// The first `name` in backticks of a cell.
fn backticked(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let end = start + cell[start..].find('`')?;
    Some(&cell[start..end])
}

/// `A-n:C.D.E` → `obis_A_n_C_D_E`.
fn raw_pattern(code: &str) -> String {
    format!("obis_{}", code.replace(['-', ':', '.'], "_"))
}

#[test]
fn obis_docs_columns_are_what_the_influx_encoder_and_discovery_do() {
    let (fields, numeric, seen) = from_fixtures();
    let path = root().join("docs/obis.md");
    let text = std::fs::read_to_string(&path).expect("docs/obis.md");
    let mut out = String::with_capacity(text.len() + 4096);
    let mut table: Option<(usize, usize, usize)> = None; // (columns, name col, unit col)
    let mut rows = 0;
    let mut wrong = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').collect();
        let header = line.starts_with("| Code |");
        if header {
            let names: Vec<&str> = cells.iter().map(|c| c.trim()).collect();
            let name_col = names
                .iter()
                .position(|c| *c == "Canonical name")
                .expect("a name column");
            let unit_col = names
                .iter()
                .position(|c| c.starts_with("Unit"))
                .expect("a unit column");
            let own = names.iter().position(|c| *c == "Influx field");
            let columns = own.unwrap_or(cells.len() - 1);
            table = Some((columns, name_col, unit_col));
            out.push_str(&cells[..columns].join("|"));
            out.push_str("| Influx field | Home Assistant |\n");
            continue;
        }
        let Some((columns, name_col, unit_col)) = table else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        if line.starts_with("|---") {
            out.push_str(&"|---".repeat(columns + 1));
            out.push_str("|\n");
            continue;
        }
        if !line.starts_with("| `") {
            table = None;
            out.push_str(line);
            out.push('\n');
            continue;
        }
        rows += 1;
        let code = backticked(cells[1]).expect("a code");
        let unit = first_unit(cells[unit_col]);
        let (influx, ha) = match backticked(cells[name_col]) {
            None => (
                format!("`{}` (as sent)", raw_pattern(code)),
                "no entity: name it in `[meter.codes]`".to_owned(),
            ),
            Some(name) => {
                let is_number = numeric.contains(name) || (!seen.contains(name) && unit.is_some());
                let influx = if fields.contains(name) {
                    format!("`{name}`")
                } else if seen.contains(name) {
                    "–".to_owned()
                } else {
                    format!("`{name}` (no fixture)")
                };
                let ha = match p1_sink_mqtt::discovery::spec(name, unit, is_number) {
                    None => "no entity".to_owned(),
                    Some(s) if name == "meter_time" => {
                        format!("{} (diagnostic)", s.device_class.unwrap_or("–"))
                    }
                    Some(s) => format!(
                        "{} / {}{}",
                        s.device_class.unwrap_or("–"),
                        s.state_class.unwrap_or("–"),
                        if s.diagnostic { " (diagnostic)" } else { "" }
                    ),
                };
                (influx, ha)
            }
        };
        let mut row = cells[..columns].join("|");
        row.push_str(&format!("| {influx} | {ha} |"));
        if line != row {
            wrong.push(format!(
                "docs/obis.md has\n  {line}\nthe code says\n  {row}"
            ));
        }
        out.push_str(&row);
        out.push('\n');
    }
    assert!(rows > 90, "{rows} rows");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, out).expect("write docs/obis.md");
        return;
    }
    assert!(
        wrong.is_empty(),
        "{} rows differ (UPDATE_DOCS=1 rewrites the columns; read the diff):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
