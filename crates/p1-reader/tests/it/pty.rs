//! The serial source on a socat pty pair: socat links one end where the
//! reader opens it like a device and the other where the test, as the meter,
//! writes; socat relays between them in its own chunks, so the reader's
//! reads split the stream where neither side chose. Terminating socat is
//! pulling the cable.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use p1_core::State;
use p1_reader::{Preset, RequestConfig, SerialSource, SourceConfig};
use p1_testkit::Cable;

use crate::support::{Reader, Rng, cut_points, meter_time, telegrams};

/// The meter's end of the pty, held open for the whole plug-in (socat sees
/// the meter's side close otherwise).
struct Meter {
    file: Option<std::fs::File>,
}

impl Meter {
    fn open(b: &Path) -> Meter {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(b)
            .expect("open the meter's end of the pty");
        Meter { file: Some(file) }
    }

    /// Writes each chunk, pausing after it as told (the meter's pace, not
    /// synchronisation: the test waits for what the reader did, below).
    async fn send(&mut self, chunks: Vec<(Vec<u8>, Duration)>) {
        let mut file = self.file.take().expect("the meter's end is open");
        let file = tokio::task::spawn_blocking(move || {
            for (chunk, pause) in chunks {
                file.write_all(&chunk).expect("write to the pty");
                file.flush().expect("flush");
                std::thread::sleep(pause);
            }
            file
        })
        .await
        .expect("writer thread");
        self.file = Some(file);
    }
}

/// Waits until the reader is connected with `reconnects` reopens behind it.
async fn wait_connected(reader: &Reader, reconnects: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = reader.handle.status().await.expect("status");
        if status.connected && status.reconnects == reconnects {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not connected within 10 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the reader has read `bytes` bytes from the port in all.
async fn wait_read(reader: &Reader, bytes: u64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = reader.handle.status().await.expect("status");
        if status.line.bytes >= bytes {
            assert_eq!(status.line.bytes, bytes, "{what}: more bytes than written");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} of {bytes} bytes read within 10 s",
            status.line.bytes
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegrams_in_random_chunks_arrive_once_in_order_and_an_unplug_loses_only_the_cut_one() {
    const METER: &str = "pty-chunks";
    const BEFORE: usize = 30;
    const AFTER: usize = 10;
    let mut rng = Rng::new("pty chunks");
    let seed = rng.seed;
    let ports = tempfile::tempdir().expect("tempdir");
    let (a, b) = (ports.path().join("p1"), ports.path().join("meter"));
    let socat = Cable::plug(&a, &b);
    let mut reader = Reader::start(
        METER,
        SourceConfig::Serial(SerialSource {
            port: a.clone(),
            settings: Preset::Dsmr4.settings(),
            request: RequestConfig::default(),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_millis(200),
        }),
    );
    wait_connected(&reader, 0, "first open").await;
    // Telegram BEFORE is the one the unplug cuts.
    let all = telegrams(BEFORE + 1 + AFTER, seed);

    // 1. BEFORE telegrams as one stream, in random chunks with random pauses.
    let stream: Vec<u8> = all[..BEFORE].concat();
    let mut meter = Meter::open(&b);
    let sending = tokio::spawn({
        let chunks = rng.chunks(&stream, 700);
        async move {
            meter.send(chunks).await;
            meter
        }
    });
    for i in 0..BEFORE {
        let r = reader
            .next(
                Duration::from_secs(30),
                &format!("telegram {i} (seed {seed})"),
            )
            .await;
        assert_eq!(
            r.meter_time,
            Some(meter_time(i)),
            "reading {i} comes from telegram {i} (seed {seed})"
        );
        assert_eq!(r.crc, "valid", "telegram {i} (seed {seed})");
    }
    let mut meter = sending.await.expect("writer");
    let status = reader.handle.status().await.expect("status");
    assert_eq!(
        (status.telegrams_ok, status.telegrams_rejected),
        (BEFORE as u64, 0),
        "each telegram decoded exactly once (seed {seed})"
    );
    assert!(
        reader.rx.is_empty(),
        "no reading beyond the telegrams sent (seed {seed})"
    );

    // 2. The cable is pulled in the middle of telegram BEFORE, once the
    // reader has read its first part.
    let cut_telegram = &all[BEFORE];
    let cuts = cut_points(cut_telegram, &mut rng);
    let (where_cut, at) = cuts[rng.range(0, cuts.len() - 1)];
    eprintln!(
        "unplugged {where_cut} (byte {at} of {})",
        cut_telegram.len()
    );
    meter.send(rng.chunks(&cut_telegram[..at], 300)).await;
    wait_read(
        &reader,
        (stream.len() + at) as u64,
        &format!("the cut telegram's start (seed {seed})"),
    )
    .await;
    drop(meter);
    socat.unplug();
    reader
        .wait_state(Duration::from_secs(10), "degraded after the unplug", |s| {
            matches!(s, State::Degraded(_))
        })
        .await;

    // 3. Replugged: the reader reopens the port by itself and reads on.
    let _socat = Cable::plug(&a, &b);
    wait_connected(&reader, 1, &format!("reopen (seed {seed})")).await;
    let mut meter = Meter::open(&b);
    let rest: Vec<u8> = all[BEFORE + 1..].concat();
    let sending = tokio::spawn({
        let chunks = rng.chunks(&rest, 700);
        async move { meter.send(chunks).await }
    });
    for i in BEFORE + 1..all.len() {
        let r = reader
            .next(
                Duration::from_secs(30),
                &format!("telegram {i} (seed {seed})"),
            )
            .await;
        assert_eq!(
            r.meter_time,
            Some(meter_time(i)),
            "after the replug, reading comes from telegram {i}: the cut telegram ({where_cut}) is never delivered (seed {seed})"
        );
    }
    sending.await.expect("writer");
    let status = reader.handle.status().await.expect("status");
    assert_eq!(
        (status.telegrams_ok, status.telegrams_rejected),
        ((all.len() - 1) as u64, 1),
        "seed {seed}"
    );
    assert!(reader.rx.is_empty(), "seed {seed}");
    let metrics = reader.metrics;
    assert_eq!(
        metrics.counter(&format!(
            "p1gw_telegrams_rejected_total{{meter=\"{METER}\",reason=\"truncated\"}}"
        )),
        1,
        "the cut telegram ({where_cut}) is counted as truncated (seed {seed})"
    );
    assert_eq!(
        metrics.counter(&format!("p1gw_reconnects_total{{meter=\"{METER}\"}}")),
        1
    );
    assert_eq!(
        metrics.counter(&format!("p1gw_telegrams_total{{meter=\"{METER}\"}}")),
        (all.len() - 1) as u64
    );
    reader.stop().await;
}
