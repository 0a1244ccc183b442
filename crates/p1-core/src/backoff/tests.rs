use super::*;

const S: Duration = Duration::from_secs(1);

#[test]
fn first_delay_is_min_then_grows_within_bounds_up_to_max() {
    let mut b = Backoff::with_seed(S, 60 * S, 7);
    assert_eq!(b.next_delay(), S);
    let mut ceiling = S;
    for attempt in 1..20 {
        ceiling = (ceiling * 2).min(60 * S);
        let d = b.next_delay();
        let low = (ceiling / 2).max(S);
        assert!(
            d >= low && d <= ceiling,
            "attempt {attempt}: {d:?} not in [{low:?}, {ceiling:?}]"
        );
    }
    assert_eq!(b.attempts(), 20);
    // Capped: from now on always within [30 s, 60 s].
    for _ in 0..100 {
        let d = b.next_delay();
        assert!(d >= 30 * S && d <= 60 * S, "{d:?}");
    }
}

#[test]
fn reset_starts_again_from_min() {
    let mut b = Backoff::with_seed(S, 60 * S, 7);
    for _ in 0..10 {
        b.next_delay();
    }
    b.reset();
    assert_eq!(b.attempts(), 0);
    assert_eq!(b.next_delay(), S);
}

#[test]
fn same_seed_same_delays_and_jitter_spreads_them() {
    let delays = |seed| {
        let mut b = Backoff::with_seed(S, 600 * S, seed);
        (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
    };
    assert_eq!(delays(42), delays(42));
    assert_ne!(delays(42), delays(43));
    // Many gateways after one power cut: their 6th delays differ.
    let sixth: std::collections::BTreeSet<Duration> = (1..50).map(|seed| delays(seed)[5]).collect();
    assert!(sixth.len() > 40, "only {} distinct delays", sixth.len());
}

#[test]
fn degenerate_bounds_are_made_safe() {
    let mut zero = Backoff::with_seed(Duration::ZERO, Duration::ZERO, 0);
    assert_eq!(zero.next_delay(), MIN_FLOOR, "never a busy loop");
    let mut inverted = Backoff::with_seed(10 * S, S, 1);
    assert_eq!(inverted.next_delay(), 10 * S);
    assert_eq!(inverted.next_delay(), 10 * S, "max was raised to min");
    let mut huge = Backoff::with_seed(S, Duration::MAX, 3);
    for _ in 0..200 {
        assert!(huge.next_delay() >= S); // no overflow panic
    }
}

#[test]
fn clock_seeded_instances_differ() {
    let a: Vec<_> = {
        let mut b = Backoff::new(S, 600 * S);
        (0..8).map(|_| b.next_delay()).collect()
    };
    let b: Vec<_> = {
        let mut b = Backoff::new(S, 600 * S);
        (0..8).map(|_| b.next_delay()).collect()
    };
    assert_ne!(a, b);
}

#[tokio::test(start_paused = true)]
async fn wait_sleeps_on_tokio_time() {
    let mut b = Backoff::with_seed(S, 60 * S, 9);
    let start = tokio::time::Instant::now();
    b.wait().await;
    assert_eq!(start.elapsed(), S);
    assert_eq!(b.attempts(), 1);
}
