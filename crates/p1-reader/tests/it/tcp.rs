//! The tcp source against a real listener playing a ser2net / ESP P1
//! bridge that drops the connection in the middle of a telegram.

use std::time::Duration;

use p1_core::State;
use p1_reader::SourceConfig;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Reader, Rng, cut_points, meter_time, telegrams};

/// Writes each chunk, pausing after it as told (the bridge's pace).
async fn send(conn: &mut TcpStream, chunks: Vec<(Vec<u8>, Duration)>) {
    for (chunk, pause) in chunks {
        conn.write_all(&chunk).await.expect("write to the reader");
        tokio::time::sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_dropping_mid_telegram_loses_only_that_telegram_and_the_source_reconnects() {
    const METER: &str = "tcp-drop";
    /// Whole telegrams per connection.
    const WHOLE: usize = 3;
    let mut rng = Rng::new("tcp drop");
    let seed = rng.seed;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let mut reader = Reader::start(
        METER,
        SourceConfig::Tcp {
            address,
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(100),
        },
    );
    // One connection per way to cut a telegram, and a last one that ends
    // cleanly: each carries WHOLE telegrams, then (but the last) the start of
    // one more before the bridge drops it.
    let kinds = cut_points(&telegrams(1, seed)[0], &mut rng).len();
    let all = telegrams((kinds + 1) * (WHOLE + 1), seed);
    let mut next = 0;
    let mut cut = Vec::new();
    let mut open = None;
    for round in 0..=kinds {
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: the reader did not reconnect within 10 s (seed {seed})")
            })
            .expect("accept");
        let whole: Vec<u8> = all[next..next + WHOLE].concat();
        send(&mut conn, rng.chunks(&whole, 500)).await;
        for i in next..next + WHOLE {
            let r = reader
                .next(
                    Duration::from_secs(10),
                    &format!("round {round}, telegram {i}"),
                )
                .await;
            assert_eq!(
                r.meter_time,
                Some(meter_time(i)),
                "round {round}: the reading of telegram {i}, once, in order (seed {seed})"
            );
        }
        next += WHOLE;
        if round == kinds {
            // The bridge stays connected while the test looks.
            open = Some(conn);
            break;
        }
        let telegram = &all[next];
        let (where_cut, at) = cut_points(telegram, &mut rng)[round];
        send(&mut conn, rng.chunks(&telegram[..at], 200)).await;
        drop(conn);
        cut.push((next, where_cut));
        next += 1;
        // The rest of the telegram never comes: the next connection starts
        // with the bridge's next telegram. The half one is rejected first.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = reader.handle.status().await.expect("status");
            if status.telegrams_rejected == round as u64 + 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the telegram cut {where_cut} was not rejected: {status:?} (seed {seed})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let error = reader.health.status().last_error.expect("an error").message;
        assert!(
            error.starts_with("telegram rejected: truncated telegram"),
            "round {round}, cut {where_cut}: {error} (seed {seed})"
        );
        assert!(
            matches!(reader.health.status().state, State::Degraded(_)),
            "disconnected"
        );
    }

    let delivered = (kinds + 1) * WHOLE;
    let status = reader.handle.status().await.expect("status");
    assert_eq!(
        (status.telegrams_ok, status.telegrams_rejected),
        (delivered as u64, kinds as u64),
        "cut: {cut:?} (seed {seed})"
    );
    assert_eq!(status.reconnects, kinds as u64);
    assert!(status.connected);
    assert!(
        reader.rx.is_empty(),
        "no reading of a cut telegram: {cut:?} (seed {seed})"
    );
    let metrics = reader.metrics;
    assert_eq!(
        metrics.counter(&format!(
            "p1gw_telegrams_rejected_total{{meter=\"{METER}\",reason=\"truncated\"}}"
        )),
        kinds as u64,
        "every cut telegram counted as truncated: {cut:?} (seed {seed})"
    );
    assert_eq!(
        metrics.counter(&format!("p1gw_reconnects_total{{meter=\"{METER}\"}}")),
        kinds as u64
    );
    assert_eq!(reader.health.status().state, State::Ok);
    reader.stop().await;
    drop(open);
}
