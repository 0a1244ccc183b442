//! Measures the source targets of issue 5 (docs/performance.md, "Sources"):
//!
//! * **latency**: from the last byte of a telegram's `!` line leaving the
//!   writer to the reading being broadcast, for the tcp source (loopback)
//!   and the serial source (a pty pair). The body of each telegram is
//!   written first; after a pause, its `!` line alone, stamped just before
//!   the `write`. Two ends are reported: the reading's `received_at` (taken
//!   just before `broadcast::Sender::send`) and a subscriber's `recv()`
//!   returning (what a sink sees: adds its wake-up).
//! * **reconnect**: the peer (a TCP listener) or the device (a pty linked at
//!   the configured path) goes away for a given outage and comes back; the
//!   delay from its return to the reader being connected again, with the
//!   default backoff (`reconnect = { min = "1s", max = "60s" }`).
//!
//! `cargo run --release -p p1-reader --example sources_bench -- OUT_DIR [--quick]`
//! writes `latency.tsv`, `reconnect.tsv` and `summary_sources.md` to OUT_DIR.
//! Run by `scripts/bench sources`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: any failure ends it with the message"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use p1_core::{ComponentKind, Reading, Registry};
use p1_reader::{
    Preset, Profile, ReaderConfig, ReaderHandle, RequestConfig, SerialSource, SimulatedMeter,
    SourceConfig,
};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(60);

struct Reader {
    handle: ReaderHandle,
    rx: broadcast::Receiver<Arc<Reading>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(meter: &str, source: SourceConfig) -> Reader {
    let (tx, rx) = broadcast::channel(1024);
    let (latest, _) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register(format!("reader:{meter}"), ComponentKind::Reader)
        .unwrap();
    let stop = CancellationToken::new();
    let cfg = ReaderConfig {
        meter: Arc::from(meter),
        tz: Some(jiff::tz::db().get("Europe/Amsterdam").unwrap()),
        source,
        max_telegram_bytes: 16 * 1024,
        expected_interval: Duration::from_secs(10),
        guard: Some(p1_reader::GuardConfig::default()),
        codes: Default::default(),
    };
    let (handle, task) = ReaderHandle::spawn(cfg, tx, latest, health, stop.clone());
    Reader {
        handle,
        rx,
        stop,
        task,
    }
}

impl Reader {
    async fn wait_connected(&self, reconnects: u64) -> Instant {
        loop {
            let s = self.handle.status().await.unwrap();
            if s.connected && s.reconnects >= reconnects {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn telegrams(n: usize) -> Vec<Vec<u8>> {
    let zone = jiff::tz::db().get("Europe/Amsterdam").unwrap();
    let mut meter = SimulatedMeter::new(Profile::Dsmr5, 7);
    let base: jiff::Timestamp = "2026-01-15T10:00:00Z".parse().unwrap();
    (0..n)
        .map(|i| meter.telegram(base + jiff::SignedDuration::from_secs(i as i64), 1.0, &zone))
        .collect()
}

/// Per telegram: µs from the `!` line's write to `received_at`, and to `recv()`.
async fn latency(
    reader: &mut Reader,
    out: &mut (impl AsyncWrite + Unpin),
    n: usize,
) -> Vec<(f64, f64)> {
    let mut samples = Vec::new();
    for t in telegrams(n) {
        let bang = t.windows(2).position(|w| w == b"\n!").unwrap() + 1;
        out.write_all(&t[..bang]).await.unwrap();
        out.flush().await.unwrap();
        // Let the reader take the body, so the last line arrives on its own.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let wall = jiff::Timestamp::now();
        let mono = Instant::now();
        out.write_all(&t[bang..]).await.unwrap();
        out.flush().await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), reader.rx.recv())
            .await
            .expect("a reading within 5 s")
            .unwrap();
        let to_recv = mono.elapsed().as_secs_f64() * 1e6;
        let to_stamp = r.received_at.duration_since(wall).as_secs_f64() * 1e6;
        samples.push((to_stamp, to_recv));
    }
    samples
}

/// The same telegrams and pacing through the same transport, read by a bare
/// loop that only looks for the `!` line's end: what the transport and a task
/// wake-up cost without the reader (µs from the write to that read).
async fn latency_raw(
    out: &mut (impl AsyncWrite + Unpin),
    mut input: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    n: usize,
) -> Vec<(f64, f64)> {
    use tokio::io::AsyncReadExt as _;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut in_bang = false;
        loop {
            let Ok(k) = input.read(&mut buf).await else {
                return;
            };
            if k == 0 {
                return;
            }
            for (i, &b) in buf[..k].iter().enumerate() {
                if b == b'!' && (i == 0 || buf[i - 1] == b'\n') {
                    in_bang = true;
                } else if b == b'\n' && in_bang {
                    in_bang = false;
                    if seen_tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut samples = Vec::new();
    for t in telegrams(n) {
        let bang = t.windows(2).position(|w| w == b"\n!").unwrap() + 1;
        out.write_all(&t[..bang]).await.unwrap();
        out.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mono = Instant::now();
        out.write_all(&t[bang..]).await.unwrap();
        out.flush().await.unwrap();
        let at = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the '!' line within 5 s")
            .unwrap();
        let us = (at - mono).as_secs_f64() * 1e6;
        samples.push((us, us));
    }
    task.abort();
    samples
}

/// The reader's own work for the `!` line, without any I/O: the body fed
/// to a [`Pipeline`], then the clock around feeding the `!` line (frame,
/// CRC, parse, `Reading`, its JSON, broadcast send, `latest`).
fn pipeline_only(n: usize) -> Vec<(f64, f64)> {
    let (tx, _rx) = broadcast::channel(1024);
    let (latest, _) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:bench-pipeline", ComponentKind::Reader)
        .unwrap();
    let mut pipeline = p1_reader::Pipeline::new(
        Arc::from("bench-pipeline"),
        Arc::from("bench"),
        Some(jiff::tz::db().get("Europe/Amsterdam").unwrap()),
        16 * 1024,
        tx,
        latest,
        health,
    );
    let mut samples = Vec::new();
    for t in telegrams(n) {
        let bang = t.windows(2).position(|w| w == b"\n!").unwrap() + 1;
        pipeline.feed(&t[..bang]);
        let t0 = Instant::now();
        pipeline.feed(&t[bang..]);
        let us = t0.elapsed().as_secs_f64() * 1e6;
        samples.push((us, us));
    }
    assert_eq!(pipeline.telegrams_ok(), n as u64);
    samples
}

/// The slave end of a fresh pty pair, linked at `link` (as a USB adapter
/// appears under its udev name); returns the master, where the meter writes.
fn plug(link: &Path) -> tokio_serial::SerialStream {
    use tokio_serial::SerialPort as _;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let name = slave.name().unwrap();
    drop(slave);
    std::fs::remove_file(link).ok();
    std::os::unix::fs::symlink(name, link).unwrap();
    master
}

fn serial_source(port: PathBuf) -> SourceConfig {
    SourceConfig::Serial(SerialSource {
        port,
        settings: Preset::Dsmr4.settings(),
        request: RequestConfig::default(),
        reconnect_min: RECONNECT_MIN,
        reconnect_max: RECONNECT_MAX,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out_dir = PathBuf::from(args.get(1).expect("usage: sources_bench OUT_DIR [--quick]"));
    let quick = args.iter().any(|a| a == "--quick");
    std::fs::create_dir_all(&out_dir).unwrap();
    let n = if quick { 200 } else { 1000 };
    let reps = if quick { 1 } else { 3 };
    let outages: &[u64] = if quick {
        &[0, 3000]
    } else {
        &[0, 500, 3000, 10_000]
    };
    let mut summary = String::new();
    let mut lat_tsv = String::from("source\ti\tto_received_at_us\tto_recv_us\n");

    // ---- latency
    writeln!(
        summary,
        "### Sources: `!` line written → reading broadcast ({n} telegrams each)\n\n\
         | source | to `received_at` p50 | p99 | max | to a subscriber's `recv()` p50 | p99 | max |\n\
         |---|---|---|---|---|---|---|"
    )
    .unwrap();
    let mut lat_rows = vec![(
        "pipeline only: feed of the `!` line → sent (no I/O)",
        pipeline_only(n),
    )];
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut reader = start(
            "bench-tcp",
            SourceConfig::Tcp {
                address,
                reconnect_min: RECONNECT_MIN,
                reconnect_max: RECONNECT_MAX,
            },
        );
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.set_nodelay(true).unwrap();
        lat_rows.push(("tcp (loopback)", latency(&mut reader, &mut conn, n).await));
        reader.stop().await;
        // Baseline: the same over a bare TCP read loop.
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let (mut conn, _) = accepted.unwrap();
        conn.set_nodelay(true).unwrap();
        lat_rows.push((
            "tcp (loopback), bare read loop instead of the reader (baseline; both ends = `recv()`)",
            latency_raw(&mut conn, client.unwrap(), n).await,
        ));
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("p1");
        let mut master = plug(&link);
        let mut reader = start("bench-pty", serial_source(link.clone()));
        reader.wait_connected(0).await;
        lat_rows.push(("serial (pty)", latency(&mut reader, &mut master, n).await));
        reader.stop().await;
        // Baseline: the same over a bare read loop on a pty pair.
        let (mut master, slave) = tokio_serial::SerialStream::pair().unwrap();
        lat_rows.push((
            "serial (pty), bare read loop instead of the reader (baseline; both ends = `recv()`)",
            latency_raw(&mut master, slave, n).await,
        ));
    }
    for (name, samples) in &lat_rows {
        for (i, (a, b)) in samples.iter().enumerate() {
            writeln!(lat_tsv, "{name}\t{i}\t{a:.1}\t{b:.1}").unwrap();
        }
        let mut a: Vec<f64> = samples.iter().map(|s| s.0).collect();
        let mut b: Vec<f64> = samples.iter().map(|s| s.1).collect();
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        writeln!(
            summary,
            "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            a[a.len() - 1],
            percentile(&b, 0.5),
            percentile(&b, 0.99),
            b[b.len() - 1]
        )
        .unwrap();
        eprintln!(
            "latency {name}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (to received_at)",
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            a[a.len() - 1]
        );
    }
    std::fs::write(out_dir.join("latency.tsv"), lat_tsv).unwrap();

    // ---- reconnect
    let mut rc_tsv = String::from("source\toutage_ms\trep\tback_to_connected_ms\n");
    writeln!(
        summary,
        "\n### Sources: peer/device back → reader connected again (backoff min 1 s, max 60 s)\n\n\
         | source | outage | back → connected, each run |\n|---|---|---|"
    )
    .unwrap();
    // TCP: the listener goes away (connection and port closed), then is bound again.
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut reader = start(
            "bench-tcp-rc",
            SourceConfig::Tcp {
                address: addr.to_string(),
                reconnect_min: RECONNECT_MIN,
                reconnect_max: RECONNECT_MAX,
            },
        );
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut listener = Some(listener);
        for &outage in outages {
            let mut runs = Vec::new();
            for rep in 0..reps {
                // Wait until the reader has settled on this connection (its
                // backoff resets on the first byte read).
                conn.write_all(&telegrams(1)[0]).await.unwrap();
                reader.rx.recv().await.unwrap();
                drop(listener.take());
                drop(conn);
                tokio::time::sleep(Duration::from_millis(outage)).await;
                let back_listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                let back = Instant::now();
                let (c, _) = back_listener.accept().await.unwrap();
                let ms = back.elapsed().as_secs_f64() * 1e3;
                conn = c;
                listener = Some(back_listener);
                writeln!(rc_tsv, "tcp\t{outage}\t{rep}\t{ms:.1}").unwrap();
                eprintln!("reconnect tcp: outage {outage} ms: back → connected {ms:.1} ms");
                runs.push(ms);
            }
            let shown: Vec<String> = runs.iter().map(|ms| format!("{ms:.0} ms")).collect();
            writeln!(
                summary,
                "| tcp (peer closes, port closed, rebound) | {outage} ms | {} |",
                shown.join(", ")
            )
            .unwrap();
        }
        drop(conn);
        reader.stop().await;
    }
    // Serial: the pty goes away (master closed, link removed), a new one is linked.
    {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("p1");
        let mut master = plug(&link);
        let mut reader = start("bench-pty-rc", serial_source(link.clone()));
        reader.wait_connected(0).await;
        let mut reconnects = 0;
        for &outage in outages {
            let mut runs = Vec::new();
            for rep in 0..reps {
                // A telegram first, so the backoff starts from min as after
                // a working session.
                master.write_all(&telegrams(1)[0]).await.unwrap();
                tokio::time::timeout(Duration::from_secs(5), reader.rx.recv())
                    .await
                    .expect("a reading")
                    .unwrap();
                drop(master);
                std::fs::remove_file(&link).unwrap();
                tokio::time::sleep(Duration::from_millis(outage)).await;
                master = plug(&link);
                let back = Instant::now();
                reconnects += 1;
                let connected = reader.wait_connected(reconnects).await;
                let ms = (connected - back).as_secs_f64() * 1e3;
                writeln!(rc_tsv, "serial\t{outage}\t{rep}\t{ms:.1}").unwrap();
                eprintln!("reconnect serial: outage {outage} ms: back → connected {ms:.1} ms");
                runs.push(ms);
            }
            let shown: Vec<String> = runs.iter().map(|ms| format!("{ms:.0} ms")).collect();
            writeln!(
                summary,
                "| serial (pty closed and unlinked, a new one linked) | {outage} ms | {} |",
                shown.join(", ")
            )
            .unwrap();
        }
        reader.stop().await;
    }
    std::fs::write(out_dir.join("reconnect.tsv"), rc_tsv).unwrap();
    summary.push('\n');
    std::fs::write(out_dir.join("summary_sources.md"), &summary).unwrap();
    print!("{summary}");
}
