//! Scenario 6: the serial cable pulled and plugged in again, 10 times in a row (500 under
//! `P1GW_SOAK=1`). A socat pty pair is the cable: killing socat removes both ends, starting
//! it again with the same link names plugs it back. Between unplugs the test writes three
//! telegrams as the meter; every one of them must reach the jsonl sink, and the daemon must
//! not leak file descriptors (`/proc/PID/fd`) or memory (`VmRSS`) across the cycles.

use std::time::{Duration, Instant};

use p1_testkit::Cable;

use crate::harness::{Daemon, Row, Tally, jsonl_ids, pick, spool, telegram, wait_for};

#[test]
fn a_hundred_unplugs_leak_nothing_and_lose_nothing() {
    let _lane = crate::harness::shared();
    let cycles: u64 = pick(10, 500);
    let per_cycle: u64 = 3;
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (work.path().join("p1"), work.path().join("meter"));
    let jsonl = work.path().join("readings.jsonl");
    let mut cable = Some(Cable::plug(&a, &b));
    let config = format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\
         spike_guard = {{ max_power = \"10MW\" }}\n\n[source]\nkind = \"serial\"\n\
         port = \"{}\"\npreset = \"dsmr4\"\nreconnect = {{ min = \"50ms\", max = \"200ms\" }}\n\n\
         {}{}",
        a.display(),
        crate::harness::jsonl_sink(&jsonl),
        spool(&work.path().join("spool"), "")
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    wait_for(Duration::from_secs(20), "the port open", || {
        daemon
            .component("reader:home")
            .filter(|r| r["state"] == "ok")
    });

    let mut next_id = 1u64;
    let mut fds = Vec::new();
    let mut rss = Vec::new();
    let mut reconnect_s = Vec::new();
    for cycle in 0..=cycles {
        if cycle > 0 {
            // Pull the plug, see the reader notice, plug it back, see it reopen.
            if let Some(c) = cable.take() {
                c.unplug();
            }
            wait_for(Duration::from_secs(10), "the reader degraded", || {
                daemon
                    .component("reader:home")
                    .filter(|r| r["state"] == "degraded")
            });
            let t = Instant::now();
            cable = Some(Cable::plug(&a, &b));
            wait_for(Duration::from_secs(10), "the port reopened", || {
                let m = daemon.metrics();
                (m.get("p1gw_reconnects_total", &[("meter", "home")]) as u64 >= cycle).then_some(())
            });
            reconnect_s.push(t.elapsed().as_secs_f64());
        }
        let c = cable.as_ref().expect("plugged");
        let mut text = String::new();
        for _ in 0..per_cycle {
            text.push_str(&telegram(next_id, 0));
            next_id += 1;
        }
        c.send(text.as_bytes());
        let last = next_id - 1;
        wait_for(Duration::from_secs(10), "this cycle's telegrams", || {
            jsonl_ids(&jsonl).contains(&last).then_some(())
        });
        fds.push(daemon.fds() as u64);
        rss.push(daemon.rss_kib());
    }
    let sent = next_id - 1;
    let file = Tally::from_ids(jsonl_ids(&jsonl));
    let m = daemon.metrics();
    let produced = m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64;
    let rejected = m.get("p1gw_telegrams_rejected_total", &[("meter", "home")]) as u64;

    let mut row = Row::new(
        &format!("6. serial unplug/replug ×{cycles}"),
        format!(
            "socat pty pair killed and started again with the same link names {cycles} times; \
             {per_cycle} telegrams written per cycle while plugged; jsonl sink"
        ),
    );
    row.produced = produced;
    row.logs.push(daemon.log.clone());
    row.sink("jsonl", &file);
    reconnect_s.sort_by(f64::total_cmp);
    let median = reconnect_s.get(reconnect_s.len() / 2).copied();
    row.recovery_s = median;
    let (fd_first, fd_last, fd_max) = (
        fds[1.min(fds.len() - 1)],
        fds[fds.len() - 1],
        fds.iter().max().copied().unwrap_or(0),
    );
    let (rss_first, rss_last) = (rss[1.min(rss.len() - 1)], rss[rss.len() - 1]);
    row.note(format!(
        "fds after cycle 1 / last / max: {fd_first} / {fd_last} / {fd_max}; VmRSS after cycle 1 → \
         last: {rss_first} → {rss_last} KiB; replug to reopened: median {:.2} s, max {:.2} s; \
         rejected telegrams: {rejected}",
        median.unwrap_or(0.0),
        reconnect_s.last().copied().unwrap_or(0.0)
    ));
    row.check(
        produced == sent,
        format!("decoded {produced} of {sent} telegrams sent"),
    );
    row.check(
        file.has_all(1..=sent),
        format!("jsonl missing {:?}", file.missing(1..=sent)),
    );
    row.check(file.duplicates() == 0, "duplicates in the jsonl file");
    row.check(
        fd_last <= fd_first + 2,
        format!("file descriptors grew from {fd_first} to {fd_last}"),
    );
    row.check(
        rss_last <= rss_first + 4096,
        format!("VmRSS grew from {rss_first} to {rss_last} KiB"),
    );
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}
