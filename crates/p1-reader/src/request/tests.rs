//! The request schedule on its own, stepped by hand under paused time. The
//! serial session tests (`serial/tests.rs`) run the same schedules through
//! the real read loop.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn config(mode: RequestMode) -> RequestConfig {
    RequestConfig {
        line: LineKind::Rts,
        mode,
        pulse: 50 * MS,
        interval: 10 * S,
        invert: false,
    }
}

/// The fake's calls as offsets from `t0`.
fn offsets(line: &FakeLine, t0: Instant) -> Vec<(Duration, bool)> {
    line.calls().into_iter().map(|(t, h)| (t - t0, h)).collect()
}

/// Steps `driver` at each of its deadlines until `end`.
async fn run_until(driver: &mut Driver, line: &mut FakeLine, end: Instant) {
    while let Some(at) = driver.deadline().filter(|at| *at <= end) {
        tokio::time::sleep_until(at).await;
        driver.on_deadline(Instant::now(), line).expect("fake line");
    }
}

#[test]
fn line_kinds_parse_and_print_as_configured() {
    for text in [
        "none",
        "rts",
        "dtr",
        "gpio:gpiochip0:17",
        "gpio:/dev/gpiochip4:3",
    ] {
        let kind = LineKind::parse(text).expect(text);
        assert_eq!(kind.to_string(), text);
    }
    assert_eq!(
        LineKind::parse("gpio:gpiochip0:17"),
        Ok(LineKind::Gpio {
            chip: "gpiochip0".into(),
            offset: 17
        })
    );
    for bad in ["RTS", "gpio:", "gpio:chip", "gpio::3", "gpio:chip:x", ""] {
        let e = LineKind::parse(bad).expect_err(bad);
        assert!(e.contains("expected \"none\", \"rts\""), "{bad}: {e}");
    }
}

#[test]
fn the_poll_window_leaves_the_line_low_before_the_next_request() {
    assert_eq!(poll_window(10 * S), 9 * S);
    assert_eq!(poll_window(60 * S), 59 * S);
    assert_eq!(poll_window(S), 500 * MS);
    assert_eq!(poll_window(200 * MS), 100 * MS);
}

#[tokio::test(start_paused = true)]
async fn hold_raises_once_and_keeps_the_line_high() {
    let mut line = FakeLine::new();
    let mut driver = Driver::new(&config(RequestMode::Hold));
    let t0 = Instant::now();
    driver.start(t0, &mut line).expect("fake");
    assert_eq!(driver.deadline(), None, "nothing more to do");
    run_until(&mut driver, &mut line, t0 + 100 * S).await;
    driver.on_telegram(&mut line).expect("fake");
    assert_eq!(offsets(&line, t0), [(Duration::ZERO, true)]);
    driver.stop(&mut line).expect("fake");
    assert_eq!(line.level(), Some(false), "dropped at the end");
}

#[tokio::test(start_paused = true)]
async fn pulse_raises_for_the_pulse_every_interval() {
    let mut line = FakeLine::new();
    let mut driver = Driver::new(&config(RequestMode::Pulse));
    let t0 = Instant::now();
    driver.start(t0, &mut line).expect("fake");
    run_until(&mut driver, &mut line, t0 + 25 * S).await;
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
    driver.stop(&mut line).expect("fake");
    assert_eq!(line.calls().len(), 6, "already low: no call at the end");
}

#[tokio::test(start_paused = true)]
async fn poll_drops_at_the_telegram_or_after_the_window() {
    let mut line = FakeLine::new();
    let mut driver = Driver::new(&config(RequestMode::Poll));
    let t0 = Instant::now();
    driver.start(t0, &mut line).expect("fake");
    // A telegram 1.2 s after the request ends the first poll.
    tokio::time::sleep_until(t0 + 1200 * MS).await;
    driver.on_telegram(&mut line).expect("fake");
    // The second poll gets nothing: the window (9 s) ends it.
    run_until(&mut driver, &mut line, t0 + 21 * S).await;
    assert_eq!(
        offsets(&line, t0),
        [
            (Duration::ZERO, true),
            (1200 * MS, false),
            (10 * S, true),
            (19 * S, false),
            (20 * S, true),
        ]
    );
    assert_eq!(driver.poll_timeouts(), 1);
    // A second telegram in the same poll changes nothing.
    driver.on_telegram(&mut line).expect("fake");
    driver.on_telegram(&mut line).expect("fake");
    assert_eq!(line.calls().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_late_runtime_does_not_make_the_schedule_drift_or_burst() {
    let mut line = FakeLine::new();
    let mut driver = Driver::new(&config(RequestMode::Pulse));
    let t0 = Instant::now();
    driver.start(t0, &mut line).expect("fake");
    // Stepped 30 ms late each time: cycles stay anchored at 10 s, 20 s.
    for _ in 0..4 {
        let at = driver.deadline().expect("planned");
        tokio::time::sleep_until(at + 30 * MS).await;
        driver.on_deadline(Instant::now(), &mut line).expect("fake");
    }
    assert_eq!(driver.deadline(), Some(t0 + 20 * S + 50 * MS));
    // Stepped a whole minute late: the pulse ends, and the next one starts
    // now rather than replaying every missed cycle.
    tokio::time::sleep(60 * S).await;
    let now = Instant::now();
    driver.on_deadline(now, &mut line).expect("fake");
    driver.on_deadline(now, &mut line).expect("fake");
    assert_eq!(driver.deadline(), Some(now + 50 * MS));
    assert_eq!(line.level(), Some(true));
}

#[tokio::test(start_paused = true)]
async fn retrigger_drops_the_line_and_raises_it_again_shortly_after() {
    for mode in [RequestMode::Hold, RequestMode::Pulse, RequestMode::Poll] {
        let mut line = FakeLine::new();
        let mut driver = Driver::new(&config(mode));
        let t0 = Instant::now();
        driver.start(t0, &mut line).expect("fake");
        tokio::time::sleep_until(t0 + 5 * S).await;
        assert!(driver.retrigger(Instant::now(), &mut line).expect("fake"));
        run_until(&mut driver, &mut line, t0 + 5 * S + RETOGGLE_LOW).await;
        let calls = offsets(&line, t0);
        let tail = &calls[calls.len() - 2..];
        assert_eq!(
            tail,
            [(5 * S, false), (5 * S + RETOGGLE_LOW, true)],
            "{mode:?}: {calls:?}"
        );
        tokio::time::advance(20 * S).await;
    }
}

#[tokio::test(start_paused = true)]
async fn no_line_means_no_schedule_and_no_retrigger() {
    let mut line = FakeLine::new();
    let mut driver = Driver::new(&RequestConfig {
        line: LineKind::None,
        ..config(RequestMode::Poll)
    });
    driver.start(Instant::now(), &mut line).expect("fake");
    assert_eq!(driver.deadline(), None);
    assert!(!driver.retrigger(Instant::now(), &mut line).expect("fake"));
    assert!(line.calls().is_empty(), "nothing driven");
}

#[tokio::test(start_paused = true)]
async fn a_failing_line_keeps_the_schedule() {
    let mut line = FakeLine::new();
    line.fail_with(Some(std::io::ErrorKind::Unsupported));
    let mut driver = Driver::new(&config(RequestMode::Pulse));
    let t0 = Instant::now();
    assert!(driver.start(t0, &mut line).is_err());
    assert_eq!(driver.deadline(), Some(t0 + 50 * MS), "still planned");
}

/// A serial port that has only modem-control outputs: records every level
/// written to RTS and DTR, as the driver of a real adapter would be asked
/// (`TIOCMBIS`/`TIOCMBIC`). A pty cannot show these (`ENOTTY`), so this is
/// where `invert` is checked; `p1gw`'s plan tests check that the config key
/// reaches [`RequestConfig::invert`].
#[derive(Debug, Clone, Default)]
struct ModemPort {
    rts: Arc<Mutex<Vec<bool>>>,
    dtr: Arc<Mutex<Vec<bool>>>,
}

impl ModemPort {
    fn rts(&self) -> Vec<bool> {
        self.rts.lock().expect("lock").clone()
    }
    fn dtr(&self) -> Vec<bool> {
        self.dtr.lock().expect("lock").clone()
    }
}

impl std::io::Read for ModemPort {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

impl std::io::Write for ModemPort {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tokio_serial::SerialPort for ModemPort {
    fn name(&self) -> Option<String> {
        Some("modem-fake".to_owned())
    }
    fn baud_rate(&self) -> tokio_serial::Result<u32> {
        Ok(9600)
    }
    fn data_bits(&self) -> tokio_serial::Result<tokio_serial::DataBits> {
        Ok(tokio_serial::DataBits::Seven)
    }
    fn flow_control(&self) -> tokio_serial::Result<tokio_serial::FlowControl> {
        Ok(tokio_serial::FlowControl::None)
    }
    fn parity(&self) -> tokio_serial::Result<tokio_serial::Parity> {
        Ok(tokio_serial::Parity::None)
    }
    fn stop_bits(&self) -> tokio_serial::Result<tokio_serial::StopBits> {
        Ok(tokio_serial::StopBits::One)
    }
    fn timeout(&self) -> Duration {
        Duration::ZERO
    }
    fn set_baud_rate(&mut self, _: u32) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn set_data_bits(&mut self, _: tokio_serial::DataBits) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn set_flow_control(&mut self, _: tokio_serial::FlowControl) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn set_parity(&mut self, _: tokio_serial::Parity) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn set_stop_bits(&mut self, _: tokio_serial::StopBits) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn set_timeout(&mut self, _: Duration) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn write_request_to_send(&mut self, level: bool) -> tokio_serial::Result<()> {
        self.rts.lock().expect("lock").push(level);
        Ok(())
    }
    fn write_data_terminal_ready(&mut self, level: bool) -> tokio_serial::Result<()> {
        self.dtr.lock().expect("lock").push(level);
        Ok(())
    }
    fn read_clear_to_send(&mut self) -> tokio_serial::Result<bool> {
        Ok(false)
    }
    fn read_data_set_ready(&mut self) -> tokio_serial::Result<bool> {
        Ok(false)
    }
    fn read_ring_indicator(&mut self) -> tokio_serial::Result<bool> {
        Ok(false)
    }
    fn read_carrier_detect(&mut self) -> tokio_serial::Result<bool> {
        Ok(false)
    }
    fn bytes_to_read(&self) -> tokio_serial::Result<u32> {
        Ok(0)
    }
    fn bytes_to_write(&self) -> tokio_serial::Result<u32> {
        Ok(0)
    }
    fn clear(&self, _: tokio_serial::ClearBuffer) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn try_clone(&self) -> tokio_serial::Result<Box<dyn tokio_serial::SerialPort>> {
        Ok(Box::new(self.clone()))
    }
    fn set_break(&self) -> tokio_serial::Result<()> {
        Ok(())
    }
    fn clear_break(&self) -> tokio_serial::Result<()> {
        Ok(())
    }
}

/// Pin 2's level when an adapter's RTS/DTR output is wired straight to it:
/// FTDI and most TTL adapters drive an asserted RTS/DTR *low*.
fn pin2_high_on_a_direct_wire(asserted: bool) -> bool {
    !asserted
}

#[tokio::test(start_paused = true)]
async fn an_inverted_modem_line_requests_by_deasserting_the_pin() {
    for pin in [ModemPin::Rts, ModemPin::Dtr] {
        for invert in [false, true] {
            let what = format!("{pin:?}, invert = {invert}");
            let port = ModemPort::default();
            let mut line = ModemLine::new(Box::new(port.clone()), pin, invert);
            let request = RequestConfig {
                line: match pin {
                    ModemPin::Rts => LineKind::Rts,
                    ModemPin::Dtr => LineKind::Dtr,
                },
                invert,
                ..config(RequestMode::Poll)
            };
            let mut driver = Driver::new(&request);
            let t0 = Instant::now();
            // Request, a telegram ends the poll, the next request, end of session.
            driver.start(t0, &mut line).expect("fake port");
            assert!(driver.is_high(), "{what}");
            driver.on_telegram(&mut line).expect("fake port");
            assert!(!driver.is_high(), "{what}");
            tokio::time::sleep_until(t0 + 10 * S).await;
            driver
                .on_deadline(Instant::now(), &mut line)
                .expect("fake port");
            assert!(driver.is_high(), "{what}");
            driver.stop(&mut line).expect("fake port");

            let (driven, untouched) = match pin {
                ModemPin::Rts => (port.rts(), port.dtr()),
                ModemPin::Dtr => (port.dtr(), port.rts()),
            };
            assert!(untouched.is_empty(), "{what}: the other pin is left alone");
            // What the adapter is told: asserted = requesting, unless inverted.
            let asserted: Vec<bool> = [true, false, true, false]
                .iter()
                .map(|request| request != &invert)
                .collect();
            assert_eq!(driven, asserted, "{what}");
            // Wired straight to pin 2, only the inverted line raises it to request.
            let pin2: Vec<bool> = driven
                .iter()
                .map(|a| pin2_high_on_a_direct_wire(*a))
                .collect();
            let requests = if invert {
                [true, false, true, false]
            } else {
                [false, true, false, true]
            };
            assert_eq!(pin2, requests, "{what}");
            let name = line.describe();
            assert_eq!(name.ends_with(" (inverted)"), invert, "{what}: {name}");
        }
    }
}
