//! The serial source: presets and the line filter (pure), the session loop
//! with each request mode (an in-memory stream and a [`FakeLine`] under
//! paused time: a pty has neither RTS/DTR nor 7E1, docs/dependencies.md §2.5),
//! the reconnect loop with a scripted opener, and a real pty pair for open,
//! exclusive access, unplug and replug.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use p1_core::{ComponentKind, Reading, Registry, State};
use tokio::io::{AsyncWriteExt as _, DuplexStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::handle::{Command, Control};
use crate::probe::Tally;
use crate::request::{FakeLine, RETOGGLE_LOW, RequestMode};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/telegrams")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn veitur() -> Vec<u8> {
    fixture("iceland_veitur_iskra_ie5e_antonp1.txt")
}

/// Sets bit 7 to the even parity of the low 7 bits, as a 7E1 meter's bytes
/// look when read as 8N1.
fn as_7e1(text: &[u8]) -> Vec<u8> {
    text.iter()
        .map(|&b| if b.count_ones() % 2 == 1 { b | 0x80 } else { b })
        .collect()
}

#[test]
fn presets_have_the_settings_of_the_field_notes() {
    let shown: Vec<(&str, String)> = Preset::ALL
        .iter()
        .map(|p| (p.as_str(), p.settings().to_string()))
        .collect();
    assert_eq!(
        shown,
        [
            ("veitur", "9600 7N1".to_owned()),
            ("veitur-7e1", "9600 7E1".to_owned()),
            ("dsmr22", "9600 7E1".to_owned()),
            ("dsmr4", "115200 8N1".to_owned()),
        ]
    );
    for p in Preset::ALL {
        assert_eq!(Preset::from_name(p.as_str()), Some(p));
    }
    assert_eq!(Preset::from_name("dsmr5"), None);
}

#[test]
fn seven_bits_with_parity_are_opened_one_bit_wider_without_parity() {
    let open = |p: Preset| p.settings().opened_as().to_string();
    assert_eq!(open(Preset::Veitur), "9600 7N1", "no parity: as is");
    assert_eq!(open(Preset::Veitur7e1), "9600 8N1");
    assert_eq!(open(Preset::Dsmr22), "9600 8N1");
    assert_eq!(open(Preset::Dsmr4), "115200 8N1");
    let odd2 = LineSettings {
        baud: 300,
        data_bits: 7,
        parity: Parity::Odd,
        stop_bits: 2,
    };
    assert_eq!(odd2.opened_as().to_string(), "300 8N2");
    let eight_even = LineSettings {
        data_bits: 8,
        parity: Parity::Even,
        ..odd2
    };
    assert_eq!(
        eight_even.opened_as(),
        eight_even,
        "no wider setting exists: the OS checks parity"
    );
}

#[test]
fn the_7e1_filter_checks_parity_in_software_and_masks_bit_7() {
    let text = veitur();
    let mut bytes = as_7e1(&text);
    assert!(bytes.iter().any(|b| b & 0x80 != 0), "some parity bits set");
    // One byte with a wrong parity bit (a line glitch).
    bytes[10] ^= 0x80;
    let mut filter = LineFilter::new(&Preset::Dsmr22.settings());
    filter.apply(&mut bytes);
    let mut expected = text.clone();
    expected[10] &= 0x7F;
    assert_eq!(bytes, expected, "the data bits, bit 7 masked");
    let stats = filter.stats();
    assert_eq!(stats.parity_errors, 1);
    assert_eq!(stats.line_errors, 0);
    assert_eq!(stats.bytes, text.len() as u64);
    assert_eq!(stats.bytes_8bit, text.len() as u64);
    assert_eq!(stats.bit7_even, text.len() as u64 - 1);
    let t = p1_telegram::Telegram::parse(&bytes, p1_telegram::ParseOptions::default())
        .expect("the telegram decodes");
    assert_eq!(t.header, b"ISk5\\2MIE5E-200");
}

#[test]
fn the_7n1_filter_masks_a_stop_bit_delivered_as_bit_7() {
    // Some USB adapters ignore CS7 and deliver the stop bit as bit 7.
    let text = veitur();
    let mut bytes: Vec<u8> = text.iter().map(|b| b | 0x80).collect();
    let mut filter = LineFilter::new(&Preset::Veitur.settings());
    filter.apply(&mut bytes);
    assert_eq!(bytes, text);
    assert_eq!(filter.stats().parity_errors, 0, "no parity to check");
    assert_eq!(filter.stats().bytes_8bit, 0, "read as 7 bits");
}

#[test]
fn the_8n1_filter_passes_bytes_through_and_counts_nul_as_line_errors() {
    let mut bytes = b"/ISK5\x00\xE9!".to_vec();
    let mut filter = LineFilter::new(&Preset::Dsmr4.settings());
    filter.apply(&mut bytes);
    assert_eq!(bytes, b"/ISK5\x00\xE9!", "8-bit data untouched");
    let stats = filter.stats();
    assert_eq!((stats.line_errors, stats.parity_errors), (1, 0));
    assert_eq!(stats.bit7_set, 1);
}

#[test]
fn an_odd_parity_setting_is_checked_as_odd() {
    let settings = LineSettings {
        baud: 9600,
        data_bits: 7,
        parity: Parity::Odd,
        stop_bits: 1,
    };
    // 'A' = 0x41 has two ones: the odd parity bit is 1.
    let mut good = vec![0xC1];
    let mut bad = vec![0x41];
    let mut filter = LineFilter::new(&settings);
    filter.apply(&mut good);
    assert_eq!((good[0], filter.stats().parity_errors), (b'A', 0));
    filter.apply(&mut bad);
    assert_eq!((bad[0], filter.stats().parity_errors), (b'A', 1));
}

fn rts(mode: RequestMode) -> RequestConfig {
    RequestConfig {
        line: LineKind::Rts,
        mode,
        pulse: 50 * MS,
        interval: 10 * S,
        invert: false,
    }
}

/// A port on an in-memory stream with a fake line; returns the meter's end.
fn fake_port(settings: &LineSettings) -> (Port<DuplexStream>, DuplexStream, FakeLine) {
    let (meter, ours) = tokio::io::duplex(64 * 1024);
    let line = FakeLine::new();
    let port = Port::from_parts(ours, Box::new(line.clone()), settings, "fake");
    (port, meter, line)
}

fn offsets(line: &FakeLine, t0: Instant) -> Vec<(Duration, bool)> {
    line.calls().into_iter().map(|(t, h)| (t - t0, h)).collect()
}

/// Runs `listen` on a fake port in a task until `until` (from now).
fn listen_task(
    mut port: Port<DuplexStream>,
    request: RequestConfig,
    until: Duration,
) -> tokio::task::JoinHandle<(Session, Tally)> {
    let stop = CancellationToken::new();
    let end = Instant::now() + until;
    tokio::spawn(async move {
        let mut tally = Tally::new(16 * 1024);
        let session = port.listen(&request, Some(end), &stop, &mut tally).await;
        (session, tally)
    })
}

#[tokio::test(start_paused = true)]
async fn poll_mode_drops_the_line_at_the_bang_line_and_requests_every_interval() {
    let (port, mut meter, line) = fake_port(&Preset::Veitur.settings());
    let t0 = Instant::now();
    let task = listen_task(port, rts(RequestMode::Poll), 35 * S);
    // The meter answers the first request after 1 s, ignores the second,
    // answers the third after 2 s (in two pieces), ignores the fourth.
    tokio::time::sleep_until(t0 + S).await;
    meter.write_all(&veitur()).await.expect("write");
    let telegram = veitur();
    let (a, b) = telegram.split_at(100);
    tokio::time::sleep_until(t0 + 21 * S).await;
    meter.write_all(a).await.expect("write");
    tokio::time::sleep_until(t0 + 22 * S).await;
    meter.write_all(b).await.expect("write");
    let (session, tally) = task.await.expect("task");
    assert_eq!(
        offsets(&line, t0),
        [
            (Duration::ZERO, true),
            (S, false),
            (10 * S, true),
            (19 * S, false), // the 9 s window passed
            (20 * S, true),
            (22 * S, false), // the '!' line arrived
            (30 * S, true),
            (35 * S, false), // listening ended
        ]
    );
    assert_eq!(session.end, SessionEnd::TimeUp);
    assert_eq!(session.poll_timeouts, 1, "the second poll timed out");
    assert_eq!(tally.telegrams, 2);
    assert_eq!(tally.crc_absent, 2);
}

#[tokio::test(start_paused = true)]
async fn pulse_mode_pulses_every_interval_whatever_the_meter_sends() {
    let (port, mut meter, line) = fake_port(&Preset::Veitur.settings());
    let t0 = Instant::now();
    let task = listen_task(port, rts(RequestMode::Pulse), 25 * S);
    tokio::time::sleep_until(t0 + S).await;
    meter.write_all(&veitur()).await.expect("write");
    let (session, tally) = task.await.expect("task");
    assert_eq!(
        offsets(&line, t0),
        [
            (Duration::ZERO, true),
            (50 * MS, false),
            (10 * S, true),
            (10 * S + 50 * MS, false),
            (20 * S, true),
            (20 * S + 50 * MS, false),
        ]
    );
    assert_eq!(session.end, SessionEnd::TimeUp);
    assert_eq!(tally.telegrams, 1);
}

#[tokio::test(start_paused = true)]
async fn hold_mode_keeps_the_line_high_until_the_meter_falls_silent() {
    let (port, mut meter, line) = fake_port(&Preset::Veitur.settings());
    let t0 = Instant::now();
    let task = listen_task(port, rts(RequestMode::Hold), 1000 * S);
    // Bytes at 50 s push the silence deadline (6 × 10 s) to 110 s.
    tokio::time::sleep_until(t0 + 50 * S).await;
    meter.write_all(&veitur()).await.expect("write");
    let (session, tally) = task.await.expect("task");
    assert_eq!(
        offsets(&line, t0),
        [(Duration::ZERO, true), (110 * S, false)]
    );
    assert_eq!(session.end, SessionEnd::Silent(60 * S));
    assert_eq!(tally.telegrams, 1);
    drop(meter);
}

#[tokio::test(start_paused = true)]
async fn end_of_file_ends_the_session_as_gone() {
    let (port, meter, line) = fake_port(&Preset::Dsmr4.settings());
    let t0 = Instant::now();
    let task = listen_task(port, rts(RequestMode::Hold), 1000 * S);
    tokio::time::sleep_until(t0 + 3 * S).await;
    drop(meter);
    let (session, _) = task.await.expect("task");
    assert_eq!(
        session.end,
        SessionEnd::Gone("the device reported end of file".into())
    );
    assert_eq!(offsets(&line, t0), [(Duration::ZERO, true), (3 * S, false)]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_request_line_is_reported_once_and_reading_goes_on() {
    let (port, mut meter, line) = fake_port(&Preset::Veitur.settings());
    line.fail_with(Some(std::io::ErrorKind::Unsupported));
    let t0 = Instant::now();
    let task = listen_task(port, rts(RequestMode::Pulse), 15 * S);
    tokio::time::sleep_until(t0 + S).await;
    meter.write_all(&veitur()).await.expect("write");
    let (session, tally) = task.await.expect("task");
    assert_eq!(tally.telegrams, 1);
    let error = session.line_error.expect("reported");
    assert!(
        error.starts_with("request line fake: fake line failure"),
        "{error}"
    );
    assert_eq!(line.calls().len(), 4, "still driven on schedule");
}

struct Harness {
    rx: broadcast::Receiver<Arc<Reading>>,
    health: HealthHandle,
    pipeline: Pipeline,
}

fn harness() -> Harness {
    let (tx, rx) = broadcast::channel(64);
    let (latest, _) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:test", ComponentKind::Reader)
        .expect("register");
    let pipeline = Pipeline::new(
        Arc::from("test"),
        Arc::from("serial:fake"),
        Some(jiff::tz::TimeZone::UTC),
        16 * 1024,
        tx,
        latest,
        health.clone(),
    );
    Harness {
        rx,
        health,
        pipeline,
    }
}

/// Hands out scripted ports: `Some` opens, `None` (or the end) fails as if
/// unplugged. Reports each attempt's instant.
struct ScriptedOpener {
    script: VecDeque<Option<(DuplexStream, FakeLine)>>,
    attempts: mpsc::UnboundedSender<Instant>,
    /// Whether the device path exists; `None`: the opener cannot tell.
    present: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Open for ScriptedOpener {
    type Stream = DuplexStream;
    async fn open(&mut self) -> Result<Port<DuplexStream>, Error> {
        self.attempts.send(Instant::now()).unwrap_or(());
        match self.script.pop_front().flatten() {
            Some((stream, line)) => Ok(Port::from_parts(
                stream,
                Box::new(line),
                &Preset::Veitur.settings(),
                "fake",
            )),
            None => Err(Error::PortMissing {
                port: "/dev/p1".into(),
            }),
        }
    }

    async fn present(&self) -> Option<bool> {
        self.present
            .as_ref()
            .map(|p| p.load(std::sync::atomic::Ordering::SeqCst))
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(600), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 600 s"))
}

#[tokio::test(start_paused = true)]
async fn the_reader_reopens_after_an_unplug_with_backoff_and_counts_the_reconnect() {
    let mut h = harness();
    let (meter_a, port_a) = tokio::io::duplex(64 * 1024);
    let (meter_b, port_b) = tokio::io::duplex(64 * 1024);
    let (line_a, line_b) = (FakeLine::new(), FakeLine::new());
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let mut opener = ScriptedOpener {
        script: VecDeque::from([
            Some((port_a, line_a.clone())),
            None,
            None,
            Some((port_b, line_b.clone())),
        ]),
        attempts: attempts_tx,
        present: None,
    };
    let (requests, requests_rx) = mpsc::channel(4);
    let mut control = Control::new(
        Some(requests_rx),
        Arc::from("test"),
        "serial:/dev/p1".into(),
        h.health.clone(),
    );
    let stop = CancellationToken::new();
    let health = h.health.clone();
    let stop2 = stop.clone();
    let mut pipeline = h.pipeline;
    let task = tokio::spawn(async move {
        serial_loop(
            &mut pipeline,
            &mut opener,
            "/dev/p1",
            &rts(RequestMode::Hold),
            (S, 8 * S),
            &health,
            &stop2,
            &mut control,
        )
        .await;
    });
    let status = || async {
        let (reply, answer) = oneshot::channel();
        requests.send(Command::Status(reply)).await.expect("reader");
        answer.await.expect("answer")
    };

    let t0 = within("first open", attempts.recv())
        .await
        .expect("attempt");
    let mut meter_a = meter_a;
    meter_a.write_all(&veitur()).await.expect("write");
    let r = within("first reading", h.rx.recv()).await.expect("reading");
    assert_eq!(r.header, "ISk5\\2MIE5E-200");
    assert_eq!(h.health.status().state, State::Ok);
    let s = status().await;
    assert!(s.connected && s.request_high, "{s:?}");
    assert_eq!((s.telegrams_ok, s.reconnects), (1, 0));

    // Unplug.
    tokio::time::sleep(5 * S).await;
    let t_unplug = Instant::now();
    drop(meter_a);
    let t1 = within("second attempt", attempts.recv())
        .await
        .expect("attempt");
    assert_eq!(t1 - t_unplug, S, "the first backoff step is min");
    let t2 = within("third attempt", attempts.recv())
        .await
        .expect("attempt");
    assert!((S..=2 * S).contains(&(t2 - t1)), "{:?}", t2 - t1);
    // Disconnected: degraded, with the reason.
    let state = h.health.status().state;
    assert!(
        matches!(&state, State::Degraded(r) if r.contains("cannot open") && r.contains("no such serial port")),
        "{state:?}"
    );
    let s = status().await;
    assert!(!s.connected && !s.request_high, "{s:?}");
    assert_eq!(
        offsets(&line_a, t0),
        [(Duration::ZERO, true), (5 * S, false)]
    );

    // Replug: the fourth attempt opens, the request line is raised again.
    let t3 = within("fourth attempt", attempts.recv())
        .await
        .expect("attempt");
    let mut meter_b = meter_b;
    meter_b.write_all(&veitur()).await.expect("write");
    let r = within("reading after the replug", h.rx.recv())
        .await
        .expect("reading");
    assert_eq!(r.header, "ISk5\\2MIE5E-200");
    assert_eq!(h.health.status().state, State::Ok);
    assert_eq!(h.health.status().counters.get("reconnects"), Some(&1));
    assert_eq!(offsets(&line_b, t3), [(Duration::ZERO, true)]);
    let s = status().await;
    assert!(s.connected, "{s:?}");
    assert_eq!((s.telegrams_ok, s.reconnects), (2, 1));

    // Retrigger re-toggles the held line.
    let (reply, answer) = oneshot::channel();
    requests
        .send(Command::Retrigger(reply))
        .await
        .expect("reader");
    assert!(answer.await.expect("answer"), "a line is driven");
    let t4 = Instant::now();
    tokio::time::sleep(S).await;
    assert_eq!(
        offsets(&line_b, t4)[1..],
        [(Duration::ZERO, false), (RETOGGLE_LOW, true)]
    );

    stop.cancel();
    within("reader stops", task).await.expect("task");
    assert_eq!(line_b.level(), Some(false), "dropped when stopping");
}

#[tokio::test(start_paused = true)]
async fn a_replugged_device_is_opened_within_half_a_second_whatever_the_backoff() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut h = harness();
    let (meter_a, port_a) = tokio::io::duplex(64 * 1024);
    let (meter_b, port_b) = tokio::io::duplex(64 * 1024);
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let present = Arc::new(AtomicBool::new(true));
    let mut opener = ScriptedOpener {
        script: VecDeque::from([
            Some((port_a, FakeLine::new())),
            None,
            None,
            None,
            None,
            Some((port_b, FakeLine::new())),
        ]),
        attempts: attempts_tx,
        present: Some(present.clone()),
    };
    let mut control = Control::new(
        None,
        Arc::from("test"),
        "serial:/dev/p1".into(),
        h.health.clone(),
    );
    let stop = CancellationToken::new();
    let (health, stop2) = (h.health.clone(), stop.clone());
    let mut pipeline = h.pipeline;
    let task = tokio::spawn(async move {
        serial_loop(
            &mut pipeline,
            &mut opener,
            "/dev/p1",
            &rts(RequestMode::Hold),
            (S, 60 * S),
            &health,
            &stop2,
            &mut control,
        )
        .await;
    });
    within("first open", attempts.recv())
        .await
        .expect("attempt");
    let mut meter_a = meter_a;
    meter_a.write_all(&veitur()).await.expect("write");
    within("first reading", h.rx.recv()).await.expect("reading");

    // Unplug: the path vanishes, the backoff grows (1 s, then up to 2, 4 and 8 s).
    present.store(false, Ordering::SeqCst);
    drop(meter_a);
    let mut last = Instant::now();
    for step in 1..=4 {
        let t = within("a failing attempt", attempts.recv())
            .await
            .expect("attempt");
        let wait = t - last;
        let ceiling = S * (1 << (step - 1));
        assert!(wait <= ceiling, "attempt {step} after {wait:?}");
        last = t;
    }
    // Replugged well before the next backoff step (at least 8 s away).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let replugged = Instant::now();
    present.store(true, Ordering::SeqCst);
    let t = within("the attempt after the replug", attempts.recv())
        .await
        .expect("attempt");
    assert!(
        t - replugged <= PRESENCE_POLL,
        "opened {:?} after the replug",
        t - replugged
    );
    let mut meter_b = meter_b;
    meter_b.write_all(&veitur()).await.expect("write");
    within("reading after the replug", h.rx.recv())
        .await
        .expect("reading");
    assert_eq!(h.health.status().counters.get("reconnects"), Some(&1));

    stop.cancel();
    within("reader stops", task).await.expect("task");
}

#[tokio::test(start_paused = true)]
async fn silence_reopens_the_port_and_retoggles_the_request_line() {
    let h = harness();
    let (_meter_a, port_a) = tokio::io::duplex(1024);
    let (_meter_b, port_b) = tokio::io::duplex(1024);
    let (line_a, line_b) = (FakeLine::new(), FakeLine::new());
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let mut opener = ScriptedOpener {
        script: VecDeque::from([
            Some((port_a, line_a.clone())),
            Some((port_b, line_b.clone())),
        ]),
        attempts: attempts_tx,
        present: None,
    };
    let mut control = Control::new(None, Arc::from("test"), "serial".into(), h.health.clone());
    let stop = CancellationToken::new();
    let (health, stop2, mut pipeline) = (h.health.clone(), stop.clone(), h.pipeline);
    let task = tokio::spawn(async move {
        serial_loop(
            &mut pipeline,
            &mut opener,
            "/dev/p1",
            &rts(RequestMode::Hold),
            (S, 8 * S),
            &health,
            &stop2,
            &mut control,
        )
        .await;
    });
    let t0 = within("first open", attempts.recv())
        .await
        .expect("attempt");
    let t1 = within("reopen", attempts.recv()).await.expect("attempt");
    assert_eq!(t1 - t0, 61 * S, "60 s of silence, then the 1 s backoff");
    assert_eq!(
        offsets(&line_a, t0),
        [(Duration::ZERO, true), (60 * S, false)]
    );
    assert_eq!(offsets(&line_b, t0), [(61 * S, true)]);
    assert_eq!(h.health.status().counters.get("reconnects"), Some(&1));
    stop.cancel();
    within("reader stops", task).await.expect("task");
}

/// A pty pair (`openpty` inside the serialport crate): the slave's path is
/// linked at `link` and the slave end closed again, so the reader opens it
/// by name like a device; returns the master end, where "the meter" writes.
fn plug(link: &Path) -> tokio_serial::SerialStream {
    use tokio_serial::SerialPort as _;
    let (master, slave) = tokio_serial::SerialStream::pair().expect("openpty");
    let name = slave.name().expect("the slave has a name");
    drop(slave);
    std::fs::remove_file(link).ok();
    std::os::unix::fs::symlink(&name, link).expect("symlink");
    master
}

/// Writes `telegram` to the pty until `rx` delivers a reading (the reader
/// may not have opened the port yet), at most 10 s.
async fn write_until_read(
    master: &mut tokio_serial::SerialStream,
    rx: &mut broadcast::Receiver<Arc<Reading>>,
    telegram: &[u8],
) -> Arc<Reading> {
    let deadline = Instant::now() + 10 * S;
    loop {
        master.write_all(telegram).await.expect("write to the pty");
        if let Ok(r) = tokio::time::timeout(200 * MS, rx.recv()).await {
            return r.expect("channel open");
        }
        assert!(Instant::now() < deadline, "no reading within 10 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_pty_is_opened_exclusively_read_and_reopened_after_an_unplug() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("p1");
    let mut master = plug(&link);
    let (tx, mut rx) = broadcast::channel(64);
    let (latest, _) = watch::channel(None);
    let registry = Registry::new();
    let health = registry
        .register("reader:pty", ComponentKind::Reader)
        .expect("register");
    let mut watch_health = health.subscribe();
    let stop = CancellationToken::new();
    let cfg = crate::ReaderConfig {
        meter: Arc::from("pty"),
        tz: None,
        source: crate::SourceConfig::Serial(SerialSource {
            port: link.clone(),
            settings: Preset::Dsmr4.settings(),
            request: RequestConfig::default(),
            reconnect_min: 20 * MS,
            reconnect_max: 100 * MS,
        }),
        max_telegram_bytes: 16 * 1024,
        expected_interval: 10 * S,
        guard: Some(crate::GuardConfig::default()),
        codes: Default::default(),
    };
    let (handle, task) = crate::ReaderHandle::spawn(cfg, tx, latest, health, stop.clone());
    let telegram = fixture("netherlands_iskra_am550_dsmr50.txt");
    let r = write_until_read(&mut master, &mut rx, &telegram).await;
    assert_eq!(r.crc, "valid");
    assert_eq!(&*r.source, format!("serial:{}", link.display()));

    // Opened exclusively: a second open fails while the reader has it.
    let second = Port::open(&link, &Preset::Dsmr4.settings(), &RequestConfig::default());
    assert!(matches!(second, Err(Error::PortOpen { .. })), "{second:?}");

    // Unplug: the reader sees the device go and reports degraded.
    drop(master);
    std::fs::remove_file(&link).expect("unlink");
    tokio::time::timeout(
        10 * S,
        watch_health.wait_for(|s| matches!(s.state, State::Degraded(_))),
    )
    .await
    .expect("degraded within 10 s")
    .expect("health");
    let status = handle.status().await.expect("status");
    assert!(!status.connected);

    // Replug under the same name: the reader finds it by itself.
    let mut master = plug(&link);
    let r = write_until_read(&mut master, &mut rx, &telegram).await;
    assert_eq!(r.crc, "valid");
    let status = handle.status().await.expect("status");
    assert!(status.connected);
    assert_eq!(status.reconnects, 1);
    assert_eq!(registry.statuses()[0].counters.get("reconnects"), Some(&1));
    assert!(
        !handle.retrigger().await.expect("retrigger"),
        "line none: nothing to re-toggle"
    );
    stop.cancel();
    tokio::time::timeout(10 * S, task)
        .await
        .expect("stops")
        .expect("task");
}
