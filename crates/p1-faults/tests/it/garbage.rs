//! Scenario 7: a garbage flood on the source. A TCP meter (the daemon's `tcp` source connects
//! to the test) sends 10 MB (100 MB under `P1GW_SOAK=1`) of random bytes, half telegrams,
//! endless lines and false starts, with a valid telegram every 50 KB (500 KB). Every valid
//! telegram must be delivered, and the daemon's memory must stay flat (`VmRSS` sampled every
//! 100 ms).

use std::io::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::harness::{
    Daemon, Rng, Row, Sampler, Tally, jsonl_ids, jsonl_sink, pick, spool, telegram, wait_for,
};

/// Numbers of the half telegrams (never whole, so never delivered).
const HALF_BASE: u64 = 1_000_000;

#[test]
fn a_garbage_flood_loses_no_valid_telegram_and_memory_stays_flat() {
    let _lane = crate::harness::shared();
    let total: usize = pick(10, 100) << 20;
    let valid: u64 = 200;
    let per_gap = total / valid as usize;
    let work = tempfile::tempdir().expect("tempdir");
    let jsonl = work.path().join("readings.jsonl");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    let config = format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\
         spike_guard = {{ max_power = \"10MW\" }}\n\n[source]\nkind = \"tcp\"\n\
         address = \"{address}\"\n\n{}{}",
        jsonl_sink(&jsonl),
        spool(&work.path().join("spool"), "")
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    listener.set_nonblocking(true).expect("nonblocking");
    let (mut meter, _) = wait_for(Duration::from_secs(20), "the daemon to connect", || {
        listener.accept().ok()
    });
    meter.set_nonblocking(false).expect("blocking");
    // A daemon that stopped reading fails the test instead of hanging it.
    meter
        .set_write_timeout(Some(Duration::from_secs(60)))
        .expect("write timeout");
    let pid = daemon.pid();
    let rss_before = daemon.rss_kib();
    let sampler = Sampler::start(Duration::from_millis(100), move || p1_testkit::rss_kib(pid));

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut written = 0usize;
    let mut rss_in_loop = Vec::new();
    let t0 = Instant::now();
    let mut buf = vec![0u8; per_gap];
    for id in 1..=valid {
        let good = format!("\r\n{}", telegram(id, 0));
        meter.write_all(good.as_bytes()).expect("write a telegram");
        written += good.len();
        // The gap: random bytes, broken by the kinds of trouble a line can have.
        rng.fill(&mut buf);
        let mut at = 0;
        while at < buf.len() {
            let piece = (rng.below(8192) as usize + 1).min(buf.len() - at);
            match rng.below(6) {
                0 => {
                    // Half a telegram: header and some lines, then noise.
                    let half = telegram(HALF_BASE + id, 0);
                    let cut = 1 + rng.below(half.len() as u64 - 4) as usize;
                    meter.write_all(b"\r\n").expect("write");
                    meter.write_all(&half.as_bytes()[..cut]).expect("write");
                    written += 2 + cut;
                }
                1 => {
                    // A start with no end and one endless line (past the size limit).
                    meter.write_all(b"\r\n/XXX5\\garbage\r\n").expect("write");
                    meter.write_all(&vec![b'7'; 20_000]).expect("write");
                    written += 18 + 20_000;
                }
                2 => {
                    // A false end.
                    meter.write_all(b"\r\n!\r\n!ZZZZ\r\n").expect("write");
                    written += 13;
                }
                _ => {}
            }
            meter
                .write_all(&buf[at..at + piece])
                .expect("write garbage");
            at += piece;
        }
        written += buf.len();
        rss_in_loop.push(daemon.rss_kib());
    }
    // One last good telegram marks the end.
    meter
        .write_all(format!("\r\n{}", telegram(valid + 1, 0)).as_bytes())
        .expect("write");
    let sent_in = t0.elapsed().as_secs_f64();
    let file = wait_for(
        Duration::from_secs(120),
        "the last telegram delivered",
        || {
            let ids = jsonl_ids(&jsonl);
            ids.contains(&(valid + 1)).then(|| Tally::from_ids(ids))
        },
    );
    let samples = sampler.finish();
    let rss_max = samples
        .iter()
        .map(|s| s.1)
        .chain(rss_in_loop.iter().copied())
        .max()
        .unwrap_or(0);
    let rss_after = daemon.rss_kib();
    let m = daemon.metrics();
    let produced = m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64;
    let rejected = m.get("p1gw_telegrams_rejected_total", &[("meter", "home")]) as u64;
    let reasons: Vec<String> = ["garbled", "oversize", "truncated", "invalid_crc", "crc"]
        .iter()
        .map(|r| {
            let n = m.get(
                "p1gw_telegrams_rejected_total",
                &[("meter", "home"), ("reason", r)],
            );
            format!("{r} {n}")
        })
        .collect();
    let bytes = m.get("p1gw_bytes_read_total", &[("meter", "home")]) as u64;
    let phantoms: Vec<u64> = file
        .seen
        .keys()
        .copied()
        .filter(|id| *id > valid + 1)
        .collect();
    let others = jsonl_ids(&jsonl).len() as u64;
    let lines = std::fs::read_to_string(&jsonl)
        .map(|t| t.lines().count() as u64)
        .unwrap_or(0);

    let mut row = Row::new(
        &format!("7. garbage flood {} MiB", total >> 20),
        format!(
            "TCP source: {} MiB of random bytes plus half telegrams, 20 KB lines and false \
             ends ({:.1} MiB in all), a valid telegram every {} KiB of noise ({} valid)",
            total >> 20,
            written as f64 / f64::from(1 << 20),
            per_gap >> 10,
            valid + 1
        ),
    );
    row.produced = valid + 1;
    row.logs.push(daemon.log.clone());
    row.sink("jsonl", &file);
    row.note(format!(
        "sent in {sent_in:.1} s; bytes read {bytes}; telegrams decoded {produced}, rejected \
         {rejected} ({}); readings without a register in the file: {}; VmRSS before \
         {rss_before}, max {rss_max}, after {rss_after} KiB ({} samples)",
        reasons.join(", "),
        lines - others,
        samples.len() + rss_in_loop.len()
    ));
    row.check(
        file.has_all(1..=valid + 1),
        format!("valid telegrams lost: {:?}", file.missing(1..=valid + 1)),
    );
    row.check(
        phantoms.is_empty(),
        format!("half telegrams delivered as readings: {phantoms:?}"),
    );
    row.check(file.duplicates() == 0, "duplicates");
    row.check(
        rss_max <= rss_before + 16 * 1024,
        format!("VmRSS grew from {rss_before} to {rss_max} KiB"),
    );
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}
