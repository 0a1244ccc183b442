//! Golden-file tests: every fixture telegram, decoded and written as design
//! §4 JSON, must equal its reviewed golden file in `fixtures/golden/`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p p1-telegram --test it` rewrites the golden
//! files; review the diff before committing.

use std::path::{Path, PathBuf};

use p1_telegram::{Decoder, ParseOptions, Telegram, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Decodes `input` as one stream and renders every result, one line each:
/// the JSON of a good telegram, or `error: …` for a rejected frame.
fn render(source: &str, input: &[u8], chunk: usize) -> String {
    let mut out = String::new();
    let mut decoder = Decoder::default();
    let handle =
        |result: Result<p1_telegram::Frame<'_>, p1_telegram::Error>, out: &mut String| match result
        {
            Err(e) => out.push_str(&format!("error: {e}\n")),
            Ok(frame) => match Telegram::parse(frame.bytes, ParseOptions::default()) {
                Err(e) => out.push_str(&format!("error: offset {}: {e}\n", frame.offset)),
                Ok(t) => {
                    let tz = jiff::tz::db().get(t.default_zone()).expect("bundled zone");
                    json::write_telegram(out, source, &t, &tz);
                    out.push('\n');
                }
            },
        };
    for piece in input.chunks(chunk.max(1)) {
        let mut rest = piece;
        while let Some(result) = decoder.next_frame(&mut rest) {
            handle(result, &mut out);
        }
    }
    if let Some(result) = decoder.finish() {
        handle(result, &mut out);
    }
    out
}

/// The `.txt` files of a fixture folder, sorted.
fn txt_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .expect(dir)
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

/// Every fixture: `fixtures/telegrams/` and the telegrams collected from other
/// P1 projects in `fixtures/telegrams/field/`.
fn fixtures() -> Vec<PathBuf> {
    let mut files = txt_files("fixtures/telegrams");
    assert!(files.len() >= 27, "fixtures missing: {}", files.len());
    let field = txt_files("fixtures/telegrams/field");
    assert!(field.len() >= 5, "field fixtures missing: {}", field.len());
    files.extend(field);
    files
}

/// A fixture's path as the golden files name their source.
fn source_of(path: &Path) -> String {
    let relative = path.strip_prefix(root()).unwrap_or(path);
    relative
        .components()
        .filter(|c| !matches!(c, std::path::Component::ParentDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn check(name: &str, actual: &str) {
    let golden = root().join("fixtures/golden").join(format!("{name}.jsonl"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            golden.display()
        )
    });
    if expected != actual {
        panic!(
            "{name}: output differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
            golden.display()
        );
    }
}

#[test]
fn every_fixture_matches_its_golden_file() {
    for path in fixtures() {
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let bytes = std::fs::read(&path).expect("read fixture");
        let source = source_of(&path);
        check(&name, &render(&source, &bytes, bytes.len()));
    }
}

#[test]
fn chunking_does_not_change_the_output() {
    for path in fixtures() {
        let bytes = std::fs::read(&path).expect("read fixture");
        let whole = render("x", &bytes, bytes.len());
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(
                render("x", &bytes, chunk),
                whole,
                "{} in chunks of {chunk}",
                path.display()
            );
        }
    }
}

#[test]
fn every_valid_fixture_keeps_every_data_line() {
    for path in fixtures() {
        let bytes = std::fs::read(&path).expect("read fixture");
        let text = String::from_utf8_lossy(&bytes);
        let out = render("x", &bytes, bytes.len());
        if out.starts_with("error:") {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(out.lines().next().expect("a line")).expect("json");
        let objects = value["objects"].as_array().expect("objects");
        // Data lines: between the header and the '!' line, not blank, not a
        // bare DSMR 3 continuation line (it joins the line before it).
        let start = text.find('/').expect("frame");
        let data = text[start..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with('!'))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('('))
            .count();
        assert_eq!(objects.len(), data, "{}", path.display());
    }
}

#[test]
fn crc_mismatch_fixtures_are_rejected_naming_both_crcs() {
    let cases = [
        ("dsmr404_spec_example", "141B", "8516"),
        ("dsmr422_spec_example", "CE7C", "DD0F"),
        ("dsmr502_spec_example", "EF2F", "E47C"),
        ("netherlands_sagemcom_t210d_corrupt", "6D8C", "8BDC"),
    ];
    for (name, expected, computed) in cases {
        let bytes =
            std::fs::read(root().join(format!("fixtures/telegrams/{name}.txt"))).expect("fixture");
        let out = render("x", &bytes, bytes.len());
        assert_eq!(
            out,
            format!(
                "error: offset 0: CRC mismatch: telegram says {expected}, computed {computed}\n"
            ),
            "{name}"
        );
    }
}
