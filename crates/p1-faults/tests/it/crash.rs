//! Scenarios 3 and 4: SIGKILL.
//!
//! * 3: p1gw is killed while it delivers a backlog (the broker and InfluxDB were unreachable
//!   while the readings came, then reachable again), and started again on the same spool
//!   directory: everything is delivered, at least once, duplicates counted.
//! * 4: a power cut during spool writes, over and over: p1gw spools a fast replay (both
//!   backends refused, 500 readings/s), and is killed at a random moment, 20 times (120 under
//!   `P1GW_SOAK=1`), each time with a fresh slice of readings. Every start must open the
//!   spools without finding them corrupt, and at the end every reading that `/metrics` had
//!   reported spooled before a kill must reach both backends. (p1-core's own
//!   `spool_survives_sigkill` does the same to the spool alone, 100 times per `cargo test`.)

use std::time::{Duration, Instant};

use crate::harness::{
    Broker, Daemon, Delivered, Influx, Rng, Row, Subscriber, collect, influx_sink, mqtt_sink, pick,
    replay_meter, spool, three_sinks, wait_for, write_recording,
};
use crate::proxy::{Mode, Proxy};

/// A meter whose source never produces (a TCP source at a port nobody listens on): the
/// daemon runs only to deliver what is spooled.
fn silent_meter() -> String {
    format!(
        "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n\
         spike_guard = {{ max_power = \"10MW\" }}\n\n[source]\nkind = \"tcp\"\n\
         address = \"127.0.0.1:{}\"\n\n",
        crate::harness::free_port()
    )
}

#[test]
fn sigkill_while_a_backlog_is_delivered_loses_nothing() {
    let _lane = crate::harness::shared();
    let n: u64 = pick(300, 2000);
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 0);
    let broker = Broker::start();
    let influx = Influx::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-kill");
    let mqtt_proxy = Proxy::local(broker.port, Mode::Down);
    let influx_proxy = Proxy::local(influx.port, Mode::Down);
    let jsonl = work.path().join("readings.jsonl");
    let spool_dir = work.path().join("spool");
    // A slow backlog (20 messages/s, InfluxDB 5 readings per request), so the kill lands in
    // the middle of it.
    let sinks = three_sinks(
        &jsonl,
        (mqtt_proxy.port, "backlog_rate = 20"),
        (
            &format!("http://127.0.0.1:{}", influx_proxy.port),
            "batch_size = 5",
        ),
        &spool_dir,
    );
    let mut first = Daemon::start(
        work.path(),
        "first",
        &format!("{}{sinks}", replay_meter(&recording, "0s")),
    );
    wait_for(Duration::from_secs(120), "the backlog spooled", || {
        let m = first.metrics();
        (m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64 >= n
            && m.sink("p1gw_spool_records", "mqtt") as u64 >= n
            && m.sink("p1gw_spool_records", "influx") as u64 >= n)
            .then_some(())
    });
    let produced = first
        .metrics()
        .get("p1gw_telegrams_total", &[("meter", "home")]) as u64;

    // The backends come back; kill p1gw once the delivery is well under way.
    mqtt_proxy.set(Mode::Forward);
    influx_proxy.set(Mode::Forward);
    let at_kill = wait_for(Duration::from_secs(60), "a backlog half delivered", || {
        let m = first.metrics();
        (m.sink("p1gw_sink_sent_total", "mqtt") >= 20.0).then_some(m)
    });
    first.kill9();
    let sent_before = (
        at_kill.sink("p1gw_sink_sent_total", "mqtt"),
        at_kill.sink("p1gw_sink_sent_total", "influx"),
    );

    let second = Daemon::start(work.path(), "second", &format!("{}{sinks}", silent_meter()));
    let restart = second.metrics();
    let left = (
        restart.sink("p1gw_spool_records", "mqtt"),
        restart.sink("p1gw_spool_records", "influx"),
    );
    let t_restart = Instant::now();
    wait_for(
        Duration::from_secs(pick(120, 300)),
        "the rest delivered",
        || {
            let m = second.metrics();
            ["jsonl", "mqtt", "influx"]
                .iter()
                .all(|s| m.sink("p1gw_spool_records", s) == 0.0)
                .then_some(())
        },
    );
    let recovery = t_restart.elapsed().as_secs_f64();
    let want = 1..=n;
    let delivered = Delivered::collect(&want, Duration::from_secs(30), &jsonl, &mut sub, &influx);
    let corrupt = second.metrics().get("p1gw_spool_corrupt_total", &[]);

    let mut row = Row::new(
        "3. SIGKILL during backlog delivery",
        format!(
            "{n} readings spooled while both backends refused connections; backends back; \
             p1gw killed with SIGKILL mid-delivery; restarted on the same spool dir"
        ),
    );
    row.produced = produced;
    row.logs.push(first.log.clone());
    row.logs.push(second.log.clone());
    row.sinks(&delivered);
    row.recovery_s = Some(recovery);
    row.note(format!(
        "sent before the kill (last scrape): mqtt {}, influx {}; still spooled at the restart: \
         mqtt {}, influx {}; recovery = restart to all spools empty",
        sent_before.0, sent_before.1, left.0, left.1
    ));
    row.check(produced == n, format!("produced {produced} of {n}"));
    for (name, t) in delivered.each() {
        row.check_complete(name, t, want.clone());
    }
    row.check(
        left.0 >= 1.0,
        "the kill came after the MQTT backlog was delivered: the test proved nothing",
    );
    row.check(corrupt == 0.0, "a spool was found corrupt after the kill");
    row.check(
        delivered.points.duplicates() == 0,
        "a reading reached InfluxDB with two timestamps",
    );
    row.finish();
}

#[test]
fn power_cuts_during_spool_writes_lose_no_stored_reading() {
    let _lane = crate::harness::shared();
    let iterations: u64 = pick(20, 120);
    let slice: u64 = 200; // readings per run, spooled over about 400 ms
    let work = tempfile::tempdir().expect("tempdir");
    let spool_dir = work.path().join("spool");
    let broker = Broker::start();
    let influx = Influx::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-powercut");
    let mqtt_proxy = Proxy::local(broker.port, Mode::Down);
    let influx_proxy = Proxy::local(influx.port, Mode::Down);
    let sinks = format!(
        "{}{}{}",
        mqtt_sink(mqtt_proxy.port, "backlog_rate = 1000"),
        influx_sink(&format!("http://127.0.0.1:{}", influx_proxy.port), ""),
        spool(&spool_dir, ""),
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Per run: the readings /metrics said were spooled (per sink) before the kill.
    let mut promised: Vec<u64> = Vec::new();
    let mut opened = 0u64;
    let mut mid_stream = 0u64; // kills before the run's replay had spooled everything
    let mut produced = 0u64;
    for run in 0..iterations {
        let first_id = run * slice + 1;
        let recording = work.path().join(format!("run{run}.txt"));
        write_recording(&recording, first_id..=first_id + slice - 1, 0);
        let target = 1 + rng.below(slice - 1);
        let mut daemon = Daemon::start(
            work.path(),
            "p1gw",
            &format!("{}{sinks}", replay_meter(&recording, "2ms")),
        );
        opened += 1;
        let m = daemon.metrics();
        assert_eq!(
            m.get("p1gw_spool_corrupt_total", &[]),
            0.0,
            "run {run}: a spool was corrupt after the previous kill:\n{}",
            daemon.log_text()
        );
        // Kill as soon as /metrics shows `target` readings spooled by both sinks: the replay
        // is still writing (it runs as fast as the spool commits).
        let seen = wait_for(Duration::from_secs(30), "readings spooled", || {
            let m = daemon.metrics();
            let both = m
                .sink("p1gw_sink_spooled_total", "mqtt")
                .min(m.sink("p1gw_sink_spooled_total", "influx")) as u64;
            (both >= target).then_some(both)
        });
        daemon.kill9();
        if seen < slice {
            mid_stream += 1;
        }
        produced += seen;
        // Spooling is in order: the first `seen` readings of this run are stored.
        promised.extend(first_id..first_id + seen);
    }
    // One last start: count what the spools hold (backends still refused, so nothing leaves),
    // then let the backends in: every promised reading must arrive.
    let last = Daemon::start(work.path(), "drain", &format!("{}{sinks}", silent_meter()));
    let at_start = last.metrics();
    let start_records = (
        at_start.sink("p1gw_spool_records", "mqtt"),
        at_start.sink("p1gw_spool_records", "influx"),
    );
    mqtt_proxy.set(Mode::Forward);
    influx_proxy.set(Mode::Forward);
    let t0 = Instant::now();
    wait_for(
        Duration::from_secs(pick(120, 600)),
        "the spools drained",
        || {
            let m = last.metrics();
            (m.sink("p1gw_spool_records", "mqtt") == 0.0
                && m.sink("p1gw_spool_records", "influx") == 0.0)
                .then_some(())
        },
    );
    let drain = t0.elapsed().as_secs_f64();
    let corrupt_files: Vec<String> = std::fs::read_dir(&spool_dir)
        .expect("spool dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt"))
        .collect();
    let mqtt = collect(Duration::from_secs(30), promised.iter().copied(), || {
        sub.tally()
    });
    let points = collect(Duration::from_secs(30), promised.iter().copied(), || {
        influx.tally("home")
    });

    let mut row = Row::new(
        &format!("4. power cut during spool writes ×{iterations}"),
        format!(
            "{iterations} runs: fast replay spooling (backends refused), SIGKILL at a random \
             count of spooled readings (1–{}), restart; then one drain run",
            slice - 1
        ),
    );
    row.produced = produced;
    row.logs.push(last.log.clone());
    row.sink("mqtt", &mqtt);
    row.sink("influx", &points);
    row.recovery_s = Some(drain);
    row.note(format!(
        "{opened} starts on a killed spool, none corrupt; {mid_stream} kills while the replay was \
         still spooling; \"produced\" = readings /metrics reported spooled before each kill ({} \
         promised); spooled at the drain run's start: mqtt {}, influx {} (the rest were written \
         after the last scrape); recovery = drain time",
        promised.len(),
        start_records.0,
        start_records.1
    ));
    row.check(
        corrupt_files.is_empty(),
        format!("corrupt spool files: {corrupt_files:?}"),
    );
    row.check(
        mid_stream * 10 >= iterations * 8,
        format!("only {mid_stream} of {iterations} kills came while spooling"),
    );
    for (name, t) in [("mqtt", &mqtt), ("influx", &points)] {
        let missing = t.missing(promised.iter().copied());
        row.check(
            missing.is_empty(),
            format!(
                "{name} lost {} readings reported spooled: {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ),
        );
    }
    row.check(
        start_records.0 >= promised.len() as f64 && start_records.1 >= promised.len() as f64,
        "fewer records in the spool than were reported spooled",
    );
    row.finish();
}
