//! Parser benchmark in the format of the anchor harness
//! (`anchors bench`; `scripts/bench` says where the harness is), so that `run.sh` can run it in
//! the same rounds as dsmr5, dsmr-parse and dsmr_parser (`scripts/bench`).
//!
//! ```text
//! bench [bench] [--dir D]... [--samples N] [--target-ms M] [--round R]
//!     one TSV row per (telegram, benchmark), ns per telegram; header line first
//! bench rss FILE
//!     decode and parse FILE once, print the number of objects (peak-RSS probe)
//! bench repeat BENCH FILE N
//!     run one benchmark (ours_parse, ours_validate, ours_json) N times on FILE,
//!     untimed: for `perf stat`, `perf record` or `valgrind --tool=callgrind`
//! ```
//!
//! Benchmarks, each on a telegram already in memory:
//!
//! * `ours_parse`: a reset [`Decoder`] frames the bytes (copying them into its
//!   buffer), then [`Telegram::parse`] checks the CRC and parses every line
//!   into typed values (the counterpart of dsmr5's validate + `State`);
//! * `ours_validate`: the decoder frames the bytes, then CRC-16/ARC over
//!   `/`..`!` is compared with the hex digits after `!`; no line parsing;
//! * `ours_json`: `ours_parse` plus the docs/contracts.md §4 JSON written into a reused
//!   `String` (the per-telegram work of `p1gw parse --format jsonl`).
//!
//! Run: `cargo run --release --example bench -p p1-telegram -- --dir DIR`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use jiff::tz::TimeZone;
use p1_telegram::{DEFAULT_MAX_TELEGRAM_BYTES, Decoder, Error, ParseOptions, Telegram, json};

const HEADER: &str = "lang\tround\ttelegram\tbytes\tbench\tmedian_ns\tmin_ns\tp25_ns\tp75_ns\titers\tsamples\tstatus";

struct Opts {
    dirs: Vec<PathBuf>,
    samples: usize,
    target: Duration,
    round: u32,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        dirs: vec![],
        samples: 21,
        target: Duration::from_millis(20),
        round: 1,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name}: missing value"))
        };
        match arg.as_str() {
            "--dir" => o.dirs.push(PathBuf::from(value("--dir")?)),
            "--samples" => {
                o.samples = value("--samples")?
                    .parse()
                    .map_err(|_| "--samples N: not a number")?;
            }
            "--target-ms" => {
                let ms = value("--target-ms")?
                    .parse()
                    .map_err(|_| "--target-ms M: not a number")?;
                o.target = Duration::from_millis(ms);
            }
            "--round" => {
                o.round = value("--round")?
                    .parse()
                    .map_err(|_| "--round R: not a number")?;
            }
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other => o.dirs.push(PathBuf::from(other)),
        }
    }
    if o.samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    if o.dirs.is_empty() {
        o.dirs.push(PathBuf::from("telegrams"));
    }
    Ok(o)
}

/// A benchmark telegram: the file's bytes as they are.
struct Input {
    name: String,
    source: String,
    bytes: Vec<u8>,
}

/// The `*.txt` files of `dir`, sorted by name (as the anchors load them).
fn load_dir(dir: &Path) -> std::io::Result<Vec<Input>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            Ok(Input {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                source: path.to_string_lossy().into_owned(),
                bytes: std::fs::read(&path)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------- measured operations

/// Why a one-shot run did not give a telegram.
#[derive(Debug)]
enum Failure {
    NoFrame,
    Decoder(Error),
    BadCrc(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NoFrame => f.write_str("no complete frame"),
            Failure::Decoder(e) => write!(f, "{e}"),
            Failure::BadCrc(why) => f.write_str(why),
        }
    }
}

/// Frames `bytes` with `decoder` and hands the first frame to `then`; resets
/// the decoder afterwards (`finish`), so every call starts a new stream.
#[inline]
fn with_frame<R>(
    decoder: &mut Decoder,
    bytes: &[u8],
    then: impl FnOnce(&[u8]) -> Result<R, Failure>,
) -> Result<R, Failure> {
    let mut input = bytes;
    let result = match decoder.next_frame(&mut input) {
        Some(Ok(frame)) => then(frame.bytes),
        Some(Err(e)) => Err(Failure::Decoder(e)),
        None => match decoder.finish() {
            Some(Ok(frame)) => then(frame.bytes),
            Some(Err(e)) => Err(Failure::Decoder(e)),
            None => Err(Failure::NoFrame),
        },
    };
    // Ready for the next stream (a no-op after a complete frame but for the
    // stream position).
    let _ = decoder.finish();
    result
}

/// Decoder framing + CRC check + every line parsed into typed values.
/// Returns the number of objects.
#[inline(never)]
fn ours_parse(decoder: &mut Decoder, bytes: &[u8]) -> Result<usize, Failure> {
    with_frame(decoder, bytes, |frame| {
        let telegram = Telegram::parse(frame, ParseOptions::default()).map_err(Failure::Decoder)?;
        Ok(black_box(&telegram).objects.len())
    })
}

/// Decoder framing + CRC-16/ARC over '/'..'!' compared with the digits after '!'.
#[inline(never)]
fn ours_validate(decoder: &mut Decoder, bytes: &[u8]) -> Result<u16, Failure> {
    with_frame(decoder, bytes, |frame| {
        let bang =
            memchr::memrchr(b'!', frame).ok_or_else(|| Failure::BadCrc("no '!' line".into()))?;
        let expected = crc_digits(&frame[bang + 1..])
            .ok_or_else(|| Failure::BadCrc("no CRC after '!'".into()))?;
        let computed = p1_telegram::crc16_arc(&frame[..=bang]);
        if computed == expected {
            Ok(computed)
        } else {
            Err(Failure::BadCrc(format!(
                "CRC mismatch: telegram says {expected:04X}, computed {computed:04X}"
            )))
        }
    })
}

/// The 1–4 hex digits after '!', up to the line end.
fn crc_digits(text: &[u8]) -> Option<u16> {
    let end = text
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(text.len());
    let digits = &text[..end];
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    digits.iter().try_fold(0u16, |acc, &c| {
        let d = char::from(c).to_digit(16)?;
        Some((acc << 4) | d as u16)
    })
}

/// `ours_parse` + the §4 JSON line written into `out` (cleared first).
/// Returns the JSON length.
#[inline(never)]
fn ours_json(
    decoder: &mut Decoder,
    bytes: &[u8],
    source: &str,
    tz: &TimeZone,
    out: &mut String,
) -> Result<usize, Failure> {
    with_frame(decoder, bytes, |frame| {
        let telegram = Telegram::parse(frame, ParseOptions::default()).map_err(Failure::Decoder)?;
        out.clear();
        json::write_telegram(out, source, &telegram, tz);
        out.push('\n');
        Ok(out.len())
    })
}

/// The zone `p1gw parse` would read this telegram's timestamps in (looked up
/// once, outside the timed loop).
fn zone_of(bytes: &[u8]) -> TimeZone {
    let mut decoder = Decoder::new(DEFAULT_MAX_TELEGRAM_BYTES);
    let name = with_frame(&mut decoder, bytes, |frame| {
        Telegram::parse(frame, ParseOptions::default())
            .map(|t| t.default_zone())
            .map_err(Failure::Decoder)
    })
    .unwrap_or("UTC");
    jiff::tz::db().get(name).unwrap_or(TimeZone::UTC)
}

// ---------------------------------------------------------------- timing (from anchors/rust/src/lib.rs)

struct Stats {
    median: f64,
    min: f64,
    p25: f64,
    p75: f64,
    iters: u64,
    samples: usize,
}

/// Time `f` in batches: calibrate the batch size so that one sample takes
/// about `target`, then take `samples` samples; report ns per call.
#[allow(
    clippy::disallowed_types,
    reason = "benchmarks measure wall time; there is no tokio runtime here"
)]
fn measure<R>(mut f: impl FnMut() -> R, samples: usize, target: Duration) -> Stats {
    use std::time::Instant;
    // warm-up and calibration
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        let el = t.elapsed();
        if el >= target / 4 {
            let scale = target.as_secs_f64() / el.as_secs_f64().max(1e-9);
            iters = ((iters as f64 * scale).ceil() as u64).max(1);
            break;
        }
        iters *= 2;
    }
    let mut v: Vec<f64> = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        v.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Stats {
        median: q(0.5),
        min: v[0],
        p25: q(0.25),
        p75: q(0.75),
        iters,
        samples,
    }
}

// ---------------------------------------------------------------- commands

fn status<T>(r: &Result<T, Failure>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("error: {e}"),
    }
}

type Run<'a> = (&'static str, String, Box<dyn FnMut() -> u64 + 'a>);

fn bench(o: &Opts) -> Result<(), String> {
    println!("{HEADER}");
    for dir in &o.dirs {
        let inputs = load_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for t in inputs {
            let all = t.bytes.as_slice();
            let source = t.source.as_str();
            let tz = zone_of(all);
            let mut d_parse = Decoder::new(DEFAULT_MAX_TELEGRAM_BYTES);
            let mut d_validate = Decoder::new(DEFAULT_MAX_TELEGRAM_BYTES);
            let mut d_json = Decoder::new(DEFAULT_MAX_TELEGRAM_BYTES);
            let mut out = String::with_capacity(8192);
            let st_parse = status(&ours_parse(&mut d_parse, all));
            let st_validate = status(&ours_validate(&mut d_validate, all));
            let st_json = status(&ours_json(&mut d_json, all, source, &tz, &mut out));
            let tz = &tz;
            let mut runs: Vec<Run<'_>> = vec![
                (
                    "ours_parse",
                    st_parse,
                    Box::new(move || {
                        ours_parse(&mut d_parse, black_box(all)).map_or(0, |n| n as u64)
                    }),
                ),
                (
                    "ours_validate",
                    st_validate,
                    Box::new(move || {
                        ours_validate(&mut d_validate, black_box(all)).map_or(0, u64::from)
                    }),
                ),
                (
                    "ours_json",
                    st_json,
                    Box::new(move || {
                        let r = ours_json(&mut d_json, black_box(all), source, tz, &mut out);
                        black_box(out.as_bytes());
                        r.map_or(0, |n| n as u64)
                    }),
                ),
            ];
            for (name, st, f) in &mut runs {
                if st != "ok" {
                    println!(
                        "rust\t{}\t{}\t{}\t{}\t\t\t\t\t\t\t{}",
                        o.round,
                        t.name,
                        all.len(),
                        name,
                        st
                    );
                    continue;
                }
                let s = measure(f, o.samples, o.target);
                println!(
                    "rust\t{}\t{}\t{}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{}\t{}\tok",
                    o.round,
                    t.name,
                    all.len(),
                    name,
                    s.median,
                    s.min,
                    s.p25,
                    s.p75,
                    s.iters,
                    s.samples
                );
            }
        }
    }
    Ok(())
}

/// One-shot run for the peak-RSS probe: read the file, decode and parse every
/// frame in it, print the number of objects.
fn rss(path: &str) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let mut decoder = Decoder::new(DEFAULT_MAX_TELEGRAM_BYTES);
    let mut input = bytes.as_slice();
    let (mut telegrams, mut objects, mut rejected) = (0u64, 0usize, 0u64);
    let mut count = |frame: Result<p1_telegram::Frame<'_>, Error>| match frame
        .and_then(|f| Telegram::parse(f.bytes, ParseOptions::default()))
    {
        Ok(t) => {
            telegrams += 1;
            objects += t.objects.len();
        }
        Err(_) => rejected += 1,
    };
    while let Some(frame) = decoder.next_frame(&mut input) {
        count(frame);
    }
    if let Some(frame) = decoder.finish() {
        count(frame);
    }
    println!("{objects} objects in {telegrams} telegram(s), {rejected} rejected");
    if telegrams == 0 || rejected > 0 {
        return Err(format!("{path}: not every frame parsed"));
    }
    Ok(())
}

/// Runs one benchmark `n` times without timing it, for profilers.
fn repeat(bench: &str, path: &str, n: &str) -> Result<(), String> {
    let n: u64 = n.parse().map_err(|_| format!("N: {n:?} is not a number"))?;
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let tz = zone_of(&bytes);
    let mut decoder = Decoder::new(DEFAULT_MAX_TELEGRAM_BYTES);
    let mut out = String::with_capacity(8192);
    let mut sum = 0u64;
    for _ in 0..n {
        let r = match bench {
            "ours_parse" => ours_parse(&mut decoder, black_box(&bytes)).map(|n| n as u64),
            "ours_validate" => ours_validate(&mut decoder, black_box(&bytes)).map(u64::from),
            "ours_json" => {
                ours_json(&mut decoder, black_box(&bytes), path, &tz, &mut out).map(|n| n as u64)
            }
            other => return Err(format!("unknown benchmark {other:?}")),
        };
        sum = sum.wrapping_add(r.map_err(|e| format!("{path}: {e}"))?);
    }
    println!("{bench} x {n}: checksum {sum}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("rss") => match args.get(1..) {
            Some([file]) => rss(file),
            _ => Err("usage: bench rss FILE".into()),
        },
        Some("repeat") => match args.get(1..) {
            Some([bench, file, n]) => repeat(bench, file, n),
            _ => Err("usage: bench repeat BENCH FILE N".into()),
        },
        Some("bench") => parse_opts(&args[1..]).and_then(|o| bench(&o)),
        _ => parse_opts(&args).and_then(|o| bench(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            eprintln!(
                "usage: bench [bench] [--dir D]... [--samples N] [--target-ms M] [--round R] | bench rss FILE | bench repeat BENCH FILE N"
            );
            ExitCode::from(2)
        }
    }
}
