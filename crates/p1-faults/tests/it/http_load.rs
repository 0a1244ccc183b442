//! Scenario 9: HTTP under load, on 127.0.0.1 only. While a replay produces a reading every
//! 100 ms (10 ms under `P1GW_SOAK=1`), 200 clients hit the daemon for 10 s (60 s):
//!
//! * 60 event-stream clients read `/api/v1/events` and time each event against the reading's
//!   `received_at`: no reading may reach them more than 100 ms late;
//! * 4 event-stream clients never read their socket (a 4 KiB receive buffer): they must be
//!   skipped ahead or dropped, never buffered without bound;
//! * 16 more event-stream clients find the cap (64) full: 503, counted;
//! * 60 clients poll `/metrics` and 60 poll `/api/v1/reading` as fast as they can.
//!
//! `VmRSS` is sampled throughout; afterwards the daemon must be healthy and take a new
//! event-stream client once the slow ones are gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{Daemon, Row, Sampler, pick, spool, wait_for, write_recording};

const FAST_SSE: usize = 60;
const SLOW_SSE: usize = 4;
const EXTRA_SSE: usize = 16;
const POLLERS: usize = 60; // per path
/// Readings in the looped recording.
const RECORDING: u64 = 1000;

/// Opens `/api/v1/events`; the status code and the stream (panics after 10 s without an
/// answer).
async fn open_sse(port: u16, recv_buffer: Option<u32>) -> (u16, TcpStream) {
    tokio::time::timeout(Duration::from_secs(10), open_sse_now(port, recv_buffer))
        .await
        .expect("an answer to GET /api/v1/events within 10 s")
}

async fn open_sse_now(port: u16, recv_buffer: Option<u32>) -> (u16, TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    stream
        .write_all(
            b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
        )
        .await
        .expect("request");
    if recv_buffer.is_some() {
        // A slow client reads only the status line (it arrives with the headers, ahead of
        // any event) and then never again.
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.expect("status line");
        let status = std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        return (status, stream);
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, stream)
}

/// What one event-stream reader saw.
#[derive(Debug, Default)]
struct Seen {
    /// The delay (ms) of every `event: reading` after its `received_at`.
    delays: Vec<f64>,
    /// Readings missing between two events (the replay numbers them 1–1000, then again).
    gaps: u64,
}

/// Reads a chunked SSE body until `stop`.
async fn read_events(mut stream: TcpStream, stop: Arc<AtomicBool>) -> Seen {
    let mut raw: Vec<u8> = Vec::new(); // undecoded (chunked) bytes
    let mut body: Vec<u8> = Vec::new(); // decoded SSE text not yet parsed
    let mut seen = Seen::default();
    let mut last_id: Option<u64> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let n = match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => continue,
        };
        let arrived = jiff::Timestamp::now();
        raw.extend_from_slice(&buf[..n]);
        // Chunked transfer: `size\r\n data \r\n`.
        while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&raw[..eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0);
            if raw.len() < eol + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
            raw.drain(..eol + 2 + size + 2);
        }
        // Events end with a blank line.
        while let Some(end) = body.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = body.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if !text.contains("event: reading") {
                continue;
            }
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            if let Some(at) = v["received_at"]
                .as_str()
                .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            {
                seen.delays
                    .push(arrived.duration_since(at).as_secs_f64() * 1000.0);
            }
            if let Some(id) = crate::harness::reading_id(&v) {
                if let Some(last) = last_id {
                    seen.gaps += (id + RECORDING - last - 1) % RECORDING;
                }
                last_id = Some(id);
            }
        }
    }
    seen
}

/// GETs `path` with a new connection each time until `stop`; (requests, non-200 answers,
/// slowest answer in ms).
async fn poll(port: u16, path: &'static str, stop: Arc<AtomicBool>) -> (u64, u64, f64) {
    let (mut requests, mut bad, mut slowest) = (0u64, 0u64, 0f64);
    let mut buf = Vec::with_capacity(64 * 1024);
    // As fast as it can by default (a stress: the load generator shares the machine's cores
    // with p1gw); `P1GW_HTTP_POLL_MS=N` paces each poller to a request every N ms.
    let pace = std::env::var("P1GW_HTTP_POLL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(|ms| {
            let mut tick = tokio::time::interval(Duration::from_millis(ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
    let mut pace = pace;
    while !stop.load(Ordering::Relaxed) {
        if let Some(tick) = pace.as_mut() {
            tick.tick().await; // the request rate of a paced client, not a synchronisation
        }
        let t = Instant::now();
        let ok = async {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .ok()?;
            buf.clear();
            s.read_to_end(&mut buf).await.ok()?;
            Some(buf.starts_with(b"HTTP/1.1 200"))
        };
        let ok = tokio::time::timeout(Duration::from_secs(10), ok)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        requests += 1;
        if !ok {
            bad += 1;
        }
        slowest = slowest.max(t.elapsed().as_secs_f64() * 1000.0);
    }
    (requests, bad, slowest)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn two_hundred_http_clients_neither_delay_readings_nor_grow_memory() {
    let _lane = crate::harness::exclusive();
    let secs = pick(10, 60);
    let interval_ms: u64 = pick(100, 10);
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=RECORDING, 0);
    let config = format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\
         spike_guard = {{ max_power = \"10MW\" }}\n\n[source]\nkind = \"replay\"\n\
         path = \"{}\"\ninterval = \"{interval_ms}ms\"\nloop = true\n\n{}",
        recording.display(),
        spool(&work.path().join("spool"), "")
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    let port = daemon.port;
    wait_for(Duration::from_secs(20), "a first reading", || {
        daemon.get("/api/v1/reading").filter(|(s, _)| *s == 200)
    });
    let rss_start = daemon.rss_kib();
    let pid = daemon.pid();
    let sampler = Sampler::start(Duration::from_millis(200), move || p1_testkit::rss_kib(pid));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let (delays, slow_status, polls, slow_events) = runtime.block_on(async {
        // The slow clients take their places first, then the readers fill the cap.
        let mut slow = Vec::new();
        for _ in 0..SLOW_SSE {
            let (status, stream) = open_sse(port, Some(4096)).await;
            assert_eq!(status, 200, "a slow event-stream client");
            slow.push(stream);
        }
        let mut readers = Vec::new();
        for _ in 0..FAST_SSE {
            let (status, stream) = open_sse(port, None).await;
            assert_eq!(status, 200, "an event-stream client under the cap");
            readers.push(tokio::spawn(read_events(stream, stop.clone())));
        }
        // The cap is full: the rest are refused.
        let mut extra_status = Vec::new();
        for _ in 0..EXTRA_SSE {
            let (status, _stream) = open_sse(port, None).await;
            if status == 503 {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            extra_status.push(status);
        }
        let mut pollers = Vec::new();
        for i in 0..2 * POLLERS {
            let path = if i % 2 == 0 {
                "/metrics"
            } else {
                "/api/v1/reading"
            };
            pollers.push(tokio::spawn(poll(port, path, stop.clone())));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await; // the load runs
        stop.store(true, Ordering::Relaxed);
        let mut delays = Vec::new();
        for r in readers {
            delays.push(r.await.expect("reader"));
        }
        let mut polls = Vec::new();
        for p in pollers {
            polls.push(p.await.expect("poller"));
        }
        // The slow clients finally read: what reaches them is what fits in their sockets,
        // then (when they fell more than the channel's 1024 readings behind) a skip to the
        // oldest reading still kept, not everything they missed.
        // Each reads for 2 s: what its socket held, a skip, then live readings.
        let drains: Vec<_> = slow
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 256 * 1024];
                    let until = tokio::time::Instant::now() + Duration::from_secs(2);
                    while let Ok(Ok(n)) =
                        tokio::time::timeout_at(until, stream.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    String::from_utf8_lossy(&got)
                        .matches("event: reading")
                        .count() as u64
                })
            })
            .collect();
        let mut slow_events = Vec::new();
        for d in drains {
            slow_events.push(d.await.expect("slow client"));
        }
        (delays, extra_status, polls, slow_events)
    });
    let samples = sampler.finish();
    let rss_max = samples.iter().map(|s| s.1).max().unwrap_or(0);

    // Afterwards: healthy, and the slots are free again.
    let healthy = daemon.get("/healthz").map(|(s, _)| s);
    let again = wait_for(Duration::from_secs(10), "an event-stream slot", || {
        runtime
            .block_on(async {
                let (status, _s) = open_sse(port, None).await;
                Some(status)
            })
            .filter(|s| *s == 200)
    });
    let m = daemon.metrics();
    let rejected = m.get("p1gw_http_sse_rejected_total", &[]);
    let lagged = m.get("p1gw_http_sse_lagged_total", &[]);
    let slow_max = slow_events.iter().copied().max().unwrap_or(0);
    let produced = m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64;

    let per_client: Vec<usize> = delays.iter().map(|s| s.delays.len()).collect();
    let gaps: u64 = delays.iter().map(|s| s.gaps).sum();
    let mut all: Vec<f64> = delays.into_iter().flat_map(|s| s.delays).collect();
    all.sort_by(f64::total_cmp);
    let events = all.len();
    let (p50, p99, max) = (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0.0),
    );
    let requests: u64 = polls.iter().map(|p| p.0).sum();
    let bad: u64 = polls.iter().map(|p| p.1).sum();
    let slowest = polls.iter().map(|p| p.2).fold(0.0, f64::max);
    let over = all.iter().filter(|d| **d > 100.0).count();

    let mut row = Row::new(
        &format!("9. HTTP load {secs} s, 200 clients"),
        format!(
            "readings every {interval_ms} ms; {FAST_SSE} SSE readers, {SLOW_SSE} SSE clients that \
             never read (4 KiB receive buffer), {EXTRA_SSE} SSE over the cap, {} pollers each on \
             /metrics and /api/v1/reading, for {secs} s",
            POLLERS
        ),
    );
    row.produced = produced;
    row.logs.push(daemon.log.clone());
    row.note(format!(
        "SSE events received {events} (per client {}–{}, none missed between: {gaps} gaps); delay after received_at p50 {p50:.1} ms, \
         p99 {p99:.1} ms, max {max:.1} ms, over 100 ms: {over}; polls {requests} ({:.0}/s), \
         non-200 {bad}, slowest {slowest:.0} ms; SSE refused {rejected} (statuses {slow_status:?}), \
         slow clients got {slow_events:?} events when they read at last, skipped \
         {lagged} readings; VmRSS {rss_start} → max {rss_max} KiB; after: /healthz {healthy:?}, \
         new SSE client {again}",
        per_client.iter().min().unwrap_or(&0),
        per_client.iter().max().unwrap_or(&0),
        requests as f64 / secs as f64
    ));
    row.check(
        refused.load(Ordering::Relaxed) == EXTRA_SSE as u64 && rejected >= EXTRA_SSE as f64,
        format!("{EXTRA_SSE} SSE clients over the cap were not all refused: {slow_status:?}"),
    );
    row.check(events > 0, "no SSE event arrived");
    row.check(
        gaps == 0,
        format!("SSE readers missed {gaps} readings between the events they got"),
    );
    // The bound, 100 ms for every reading, is checked at full length (`P1GW_SOAK=1`,
    // scripts/reliability; docs/reliability.md has the runs). The short run in ./scripts/test
    // shares two cores with the rest of the build, where a scheduling hiccup of a tenth of a
    // second is the machine, not p1gw; it checks the bulk (p99 within 100 ms) and that no
    // reading waited for a client (a buffering bug shows as seconds, not as 150 ms).
    if crate::harness::soak() {
        row.check(
            max <= 100.0,
            format!("a reading reached an SSE client {max:.1} ms late"),
        );
    } else {
        row.check(
            p99 <= 100.0 && max <= 500.0,
            format!("SSE delay p99 {p99:.1} ms, max {max:.1} ms (bounds 100 and 500 ms)"),
        );
    }
    row.check(bad == 0, format!("{bad} polls failed"));
    // Past the channel's 1024 readings (plus what the sockets hold) a slow client must have
    // been skipped ahead, not handed every reading it missed.
    if produced > 3000 {
        row.check(
            lagged > 0.0 && slow_max < produced,
            format!("slow clients were not skipped ahead: {slow_events:?} of {produced}"),
        );
    }
    row.check(healthy == Some(200), "p1gw not healthy after the load");
    row.check(
        rss_max <= rss_start + 64 * 1024,
        format!("VmRSS grew from {rss_start} to {rss_max} KiB"),
    );
    row.finish();
}
