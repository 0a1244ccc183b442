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
