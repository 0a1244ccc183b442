//! `soak-plot CSV PNG [FONT]`: draws the samples `scripts/soak` took (one row every 10 s) as a
//! PNG with four panels over time: resident memory, open file descriptors, CPU and spool size.
//! Memory that creeps, a descriptor leak or a spool that does not drain shows at a glance.
//!
//! The CSV has a header row naming at least `seconds`, `rss_kib`, `fds`, `cpu_percent` and
//! `spool_bytes`; other columns are ignored. Text is drawn with FONT (a TrueType file; default
//! DejaVu Sans from Debian's `fonts-dejavu-core`, which `scripts/test` installs).

use std::process::ExitCode;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// One panel: a column of the CSV, scaled for display.
struct Series {
    column: &'static str,
    title: &'static str,
    unit: &'static str,
    scale: f64,
}

const PANELS: [Series; 4] = [
    Series {
        column: "rss_kib",
        title: "resident memory (VmRSS)",
        unit: "MiB",
        scale: 1.0 / 1024.0,
    },
    Series {
        column: "fds",
        title: "open file descriptors",
        unit: "",
        scale: 1.0,
    },
    Series {
        column: "cpu_percent",
        title: "CPU (10 s average, % of one core)",
        unit: "%",
        scale: 1.0,
    },
    Series {
        column: "spool_bytes",
        title: "spool directory size",
        unit: "KiB",
        scale: 1.0 / 1024.0,
    },
];

/// The CSV's columns by name, each a vector of values.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<f64>>,
}

impl Table {
    fn parse(text: &str) -> Result<Table, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .ok_or("the CSV is empty")?
            .split(',')
            .map(|s| s.trim().to_owned())
            .collect();
        let mut rows = Vec::new();
        for (i, line) in lines.enumerate() {
            let row: Result<Vec<f64>, _> = line.split(',').map(|s| s.trim().parse()).collect();
            let row = row.map_err(|e| format!("CSV line {}: {e}: {line:?}", i + 2))?;
            if row.len() != header.len() {
                return Err(format!(
                    "CSV line {}: {} values for {} columns",
                    i + 2,
                    row.len(),
                    header.len()
                ));
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return Err("the CSV has no samples".into());
        }
        Ok(Table { header, rows })
    }

    fn column(&self, name: &str) -> Result<Vec<f64>, String> {
        let i = self
            .header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("the CSV has no column {name:?}"))?;
        Ok(self.rows.iter().map(|r| r[i]).collect())
    }
}

fn plot(csv: &str, png: &str, font: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("{csv}: {e}"))?;
    let table = Table::parse(&text).map_err(|e| format!("{csv}: {e}"))?;
    let font_bytes = std::fs::read(font).map_err(|e| {
        format!("{font}: {e} (install Debian's fonts-dejavu-core, or name a .ttf file)")
    })?;
    // plotters keeps registered fonts for the life of the process.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font_bytes.into_boxed_slice()),
    )
    .map_err(|_| format!("{font}: not a font plotters can read"))?;

    let seconds = table.column("seconds")?;
    let span = seconds.last().copied().unwrap_or(0.0).max(1.0);
    let (x_scale, x_unit) = if span > 2.0 * 3600.0 {
        (1.0 / 3600.0, "hours")
    } else {
        (1.0 / 60.0, "minutes")
    };
    let x: Vec<f64> = seconds.iter().map(|s| s * x_scale).collect();
    let x_max = span * x_scale;

    let root = BitMapBackend::new(png, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (title, body) = root.split_vertically(40);
    title
        .draw_text(
            &format!("p1gw soak: {} samples over {:.1} {x_unit}", x.len(), x_max),
            &("sans-serif", 22).into_font().color(&BLACK),
            (20, 10),
        )
        .map_err(|e| e.to_string())?;
    let colours = [RED, BLUE, GREEN, MAGENTA];
    for ((area, series), colour) in body.split_evenly((2, 2)).iter().zip(&PANELS).zip(colours) {
        let y: Vec<f64> = table
            .column(series.column)?
            .iter()
            .map(|v| v * series.scale)
            .collect();
        let y_max = y.iter().copied().fold(0.0_f64, f64::max);
        // Zero-based, with head room: a flat line must look flat, not like noise magnified.
        let top = if y_max > 0.0 { y_max * 1.25 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(series.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(x_unit)
            .y_desc(series.unit)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                x.iter().copied().zip(y.iter().copied()),
                colour.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| format!("{png}: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (csv, png, font) = match args.as_slice() {
        [csv, png] => (csv.as_str(), png.as_str(), DEFAULT_FONT),
        [csv, png, font] => (csv.as_str(), png.as_str(), font.as_str()),
        _ => {
            eprintln!("usage: soak-plot CSV PNG [FONT.ttf]");
            return ExitCode::from(64);
        }
    };
    match plot(csv, png, font) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak-plot: {e}");
            ExitCode::from(65)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_with_a_bad_value_names_its_line() {
        let err = Table::parse("seconds,rss_kib\n0,100\n10,x\n").err();
        assert_eq!(
            err.as_deref(),
            Some("CSV line 3: invalid float literal: \"10,x\"")
        );
    }

    #[test]
    fn a_plot_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let csv = dir.path().join("soak.csv");
        let png = dir.path().join("soak.png");
        let mut text = String::from("seconds,rss_kib,fds,cpu_percent,spool_bytes,readings\n");
        for i in 0..50 {
            text.push_str(&format!(
                "{},{},{},0.5,{},{}\n",
                i * 10,
                8000 + i,
                17,
                65536,
                i * 10
            ));
        }
        std::fs::write(&csv, text).expect("csv");
        if !std::path::Path::new(DEFAULT_FONT).exists() {
            panic!(
                "{DEFAULT_FONT} is missing: apt-get install fonts-dejavu-core (scripts/test does)"
            );
        }
        plot(
            csv.to_str().expect("utf-8"),
            png.to_str().expect("utf-8"),
            DEFAULT_FONT,
        )
        .expect("plot");
        let bytes = std::fs::read(&png).expect("png written");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(
            bytes.len() > 10_000,
            "{} bytes: an empty picture?",
            bytes.len()
        );
    }
}
