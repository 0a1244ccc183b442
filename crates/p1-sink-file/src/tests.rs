use std::sync::Arc;
use std::time::Duration;

use p1_core::{AsyncSpool, ComponentKind, Reading, Registry, SinkContext, SpoolConfig};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

fn readings(n: usize) -> Vec<Arc<Reading>> {
    let tz = jiff::tz::db().get("Atlantic/Reykjavik").expect("zone");
    (0..n)
        .map(|i| {
            let text = format!(
                "/ISk5\\2MIE5E-200\r\n\r\n1-0:1.8.0({:010.3}*kWh)\r\n0-1:24.2.1(0366.475*m3)\r\n!\r\n",
                i as f64 / 1000.0
            );
            let t = p1_telegram::Telegram::parse(text.as_bytes(), p1_telegram::ParseOptions::default())
                .expect("telegram");
            Arc::new(Reading::from_telegram(
                Arc::from("home"),
                Arc::from("test"),
                &t,
                &tz,
                jiff::Timestamp::UNIX_EPOCH,
            ))
        })
        .collect()
}

async fn context(dir: &std::path::Path, registry: &Registry) -> SinkContext {
    let spool = AsyncSpool::open(dir.join("jsonl.redb"), "jsonl", SpoolConfig::new(1 << 20))
        .await
        .expect("spool");
    SinkContext {
        name: "jsonl".into(),
        health: registry
            .register("sink:jsonl", ComponentKind::Sink)
            .expect("register"),
        spool,
        stop: CancellationToken::new(),
        hard: CancellationToken::new(),
    }
}

#[tokio::test]
async fn every_reading_lands_once_in_order_and_the_spool_empties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let cx = context(dir.path(), &registry).await;
    let spool = cx.spool.clone();
    let out = dir.path().join("readings.jsonl");
    let (tx, rx) = broadcast::channel(1024);
    let run = tokio::spawn(crate::jsonl::sink(&out).run(rx, cx));
    let all = readings(300);
    for r in &all {
        tx.send(r.clone()).expect("receiver");
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("sink drains and ends")
        .expect("task")
        .expect("sink ok");
    let text = std::fs::read_to_string(&out).expect("output");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 300);
    for (line, r) in lines.iter().zip(&all) {
        assert_eq!(*line, &**r.json());
    }
    assert!(spool.is_empty());
}

#[tokio::test]
async fn an_unwritable_file_keeps_readings_spooled_until_it_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let cx = context(dir.path(), &registry).await;
    let spool = cx.spool.clone();
    let hard = cx.hard.clone();
    // The path is a directory for now: every write fails.
    let out = dir.path().join("out.jsonl");
    std::fs::create_dir(&out).expect("mkdir");
    let (tx, rx) = broadcast::channel(1024);
    let sink = Box::new(
        p1_core::Spooled::new("jsonl", crate::JsonLine, crate::jsonl::JsonlFile::new(&out))
            .with_backoff(Duration::from_millis(10), Duration::from_millis(50)),
    );
    let run = tokio::spawn(p1_core::Sink::run(sink, rx, cx));
    for r in readings(5) {
        tx.send(r).expect("receiver");
    }
    // Wait (with a deadline) until the five are spooled and delivery has failed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = registry.statuses().into_iter().next().expect("sink");
        if spool.len() == 5 && status.last_error.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed delivery seen: {status:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Repair the path: the backlog goes out, in order.
    std::fs::remove_dir(&out).expect("rmdir");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("sink drains")
        .expect("task")
        .expect("sink ok");
    assert_eq!(
        std::fs::read_to_string(&out).expect("file").lines().count(),
        5
    );
    assert!(spool.is_empty());
    assert!(!hard.is_cancelled());
}

fn records(lines: &[&str]) -> Vec<(u64, Vec<u8>)> {
    lines
        .iter()
        .zip(1..)
        .map(|(l, seq)| (seq, format!("{l}\n").into_bytes()))
        .collect()
}

#[tokio::test]
async fn a_torn_last_line_is_cut_off_before_the_next_batch() {
    use p1_core::Deliver as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("readings.jsonl");
    // A crash (or a failed write) left half a line behind the whole ones.
    std::fs::write(&out, "{\"n\":1}\n{\"n\":2}\n{\"n\":").expect("write");
    let mut file = crate::jsonl::JsonlFile::new(&out);
    let batch = records(&["{\"n\":3}", "{\"n\":4}"]);
    assert_eq!(file.deliver(&batch).await.expect("delivered"), 2);
    assert_eq!(
        std::fs::read_to_string(&out).expect("read"),
        "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n"
    );
    // No newline at all: the whole file is one torn line.
    std::fs::write(&out, "{\"n\":").expect("write");
    assert_eq!(file.deliver(&batch[..1]).await.expect("delivered"), 1);
    assert_eq!(std::fs::read_to_string(&out).expect("read"), "{\"n\":3}\n");
}

#[tokio::test]
async fn a_write_the_disk_refuses_is_an_error_naming_the_fault() {
    use p1_core::Deliver as _;
    // /dev/full answers every write with ENOSPC, as a full disk does. tokio's File used to
    // report Ok here (the error stayed in its buffer), and the spool deleted the readings.
    let mut file = crate::jsonl::JsonlFile::new("/dev/full");
    let got = file.deliver(&records(&["{\"n\":1}"])).await;
    match got {
        Err(p1_core::DeliveryError::Storage { fault }) => {
            assert_eq!(fault.kind, p1_core::StorageKind::NoSpace, "{fault}");
            assert!(fault.message.starts_with("disk full: /dev"), "{fault}");
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
}
