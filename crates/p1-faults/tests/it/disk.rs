//! Scenarios 11–14: the disk under the spool and the jsonl file fails, for real.
//!
//! * **Disk full**: the spool directory and the jsonl file live on a 4 MiB tmpfs, which a
//!   file fills to the last byte while readings flow to all three sinks, then is deleted.
//! * **Disk full during a broker outage**: the same, while the MQTT broker cannot be reached;
//!   the disk is freed first, then the broker returns.
//! * **Read-only after an error**: an ext4 file system on a loop device, mounted with
//!   `errors=remount-ro`, gets an error (its sysfs `trigger_fs_error`): the kernel makes it
//!   read-only at once, open files or not, as it does with a failing SD card. An operator then
//!   unmounts, checks and mounts it again; p1gw must have let go of its files for that.
//! * **File too large**: the daemon runs with a file-size limit (`ulimit -f`), and the jsonl
//!   file reaches it; a log rotator then moves the file away.
//!
//! Each checks what issue "a full or failing disk" asks: no reading that `/metrics` reported
//! spooled is lost; every reading not delivered is counted under a named reason; `/readyz`
//! names the fault while it lasts; every sink spools and delivers again within 10 s of the
//! fault's end, without a restart. These tests mount file systems: they need root (as the
//! test machines and CI run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    Broker, Daemon, Influx, Metrics, Row, Subscriber, Tally, influx_sink, jsonl_ids, jsonl_sink,
    mqtt_sink, replay_meter, spool, wait_for, write_recording,
};
use crate::proxy::{Mode, Proxy};

/// How long a sink may take to deliver again after the fault's end.
const RECOVERY: Duration = Duration::from_secs(10);

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed (these tests need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tmpfs of a fixed size, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).expect("mkdir");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &dir.display().to_string(),
            ],
        );
        Tmpfs {
            dir,
            _parent: parent,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Best effort at the end of a test: a mount left behind is harmless in a temp dir.
        if let Err(e) = Command::new("umount").arg("-l").arg(&self.dir).status() {
            eprintln!("umount {}: {e}", self.dir.display());
        }
    }
}

/// Fills the file system holding `dir` to the last byte with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    // The last partial block too.
    while file.write_all(&chunk[..1]).is_ok() {}
    drop(file);
    path
}

/// Polls `f` until it answers or `limit` has passed: `None` then, for a check that reports the
/// daemon's log rather than panicking without it.
fn within<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `/readyz` answers 503 with `words` in its body; (status, body).
fn readyz_naming(daemon: &Daemon, words: &str, limit: Duration) -> (u16, String) {
    wait_for(limit, &format!("/readyz naming {words:?}"), || {
        let (status, body) = readyz(daemon);
        (status == 503 && body.contains(words)).then_some((status, body))
    })
}

/// Records the recovery check: back within [`RECOVERY`] (`recovered`: at all within 30 s).
fn check_recovery(row: &mut Row, recovered: bool, recovery: f64) {
    row.check(
        recovered && recovery <= RECOVERY.as_secs_f64(),
        format!("recovery took {recovery:.1} s (30 s: not at all)"),
    );
}

/// `/readyz`'s status and body.
fn readyz(daemon: &Daemon) -> (u16, String) {
    daemon.get("/readyz").unwrap_or((0, String::new()))
}

/// The produced count.
fn produced(m: &Metrics) -> u64 {
    m.get("p1gw_telegrams_total", &[("meter", "home")]) as u64
}

/// Readings lost by sink `s`, any reason: evicted from the spool or dropped by the sink.
fn lost(m: &Metrics, s: &str) -> u64 {
    (m.sink("p1gw_spool_evicted_total", s) + m.sink("p1gw_sink_dropped_total", s)) as u64
}

/// Every line of the jsonl file is a whole JSON object (no torn line).
fn whole_lines(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.is_empty()
        || text.ends_with('\n')
            && text
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
}

#[test]
fn a_full_disk_loses_nothing_keeps_live_readings_flowing_and_recovers_by_itself() {
    let _lane = crate::harness::shared();
    let n: u64 = 400;
    let work = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount("4m");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 2000);
    let broker = Broker::start();
    let influx = Influx::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-disk-full");
    let jsonl = disk.dir.join("readings.jsonl");
    let config = format!(
        "{}{}{}{}{}",
        replay_meter(&recording, "100ms"),
        jsonl_sink(&jsonl),
        mqtt_sink(broker.port, ""),
        influx_sink(&influx.url, ""),
        spool(&disk.dir.join("spool"), "reserve = \"0\""),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    wait_for(
        Duration::from_secs(30),
        "readings in the jsonl file",
        || (jsonl_ids(&jsonl).len() >= 10).then_some(()),
    );

    let filler = fill(&disk.dir);
    let at_fill = produced(&daemon.metrics());
    // The fault is seen: counted, named in /readyz.
    let (status, body) = readyz_naming(&daemon, "disk full", Duration::from_secs(20));
    // Live readings still reach the broker and the database while the disk is full.
    let live = wait_for(
        Duration::from_secs(20),
        "live readings during the fault",
        || {
            let (mqtt, points) = (sub.tally(), influx.tally("home"));
            let newest = |t: &Tally| t.seen.keys().next_back().copied().unwrap_or(0);
            (newest(&mqtt) > at_fill + 10 && newest(&points) > at_fill + 10)
                .then(|| (newest(&mqtt), newest(&points)))
        },
    );
    // A spool whose backend keeps up stays near empty and reuses its file's free pages, so
    // the full disk does not touch it; the jsonl file must grow, so that sink meets it.
    let during = wait_for(
        Duration::from_secs(30),
        "the jsonl sink meeting the full disk",
        || {
            let m = daemon.metrics();
            (m.sink("p1gw_storage_errors_total", "jsonl") > 0.0).then_some(m)
        },
    );
    let errors = |s: &str| during.sink("p1gw_storage_errors_total", s) as u64;
    let held = during.sink("p1gw_spool_held_records", "jsonl") as u64;

    std::fs::remove_file(&filler).expect("free the disk");
    let freed = Instant::now();
    let at_free = produced(&daemon.metrics());
    let recovered = within(Duration::from_secs(30), || {
        let ids = Tally::from_ids(jsonl_ids(&jsonl));
        (readyz(&daemon).0 == 200 && ids.has_all(1..=at_free)).then_some(())
    });
    let recovery = freed.elapsed().as_secs_f64();

    let end = wait_for(
        Duration::from_secs(60),
        "the whole recording delivered",
        || {
            let m = daemon.metrics();
            (produced(&m) == n
                && ["jsonl", "mqtt", "influx"]
                    .iter()
                    .all(|s| m.sink("p1gw_spool_records", s) == 0.0))
            .then_some(m)
        },
    );
    let file = Tally::from_ids(jsonl_ids(&jsonl));
    let mqtt = wait_for(Duration::from_secs(30), "every state message", || {
        let t = sub.tally();
        t.has_all(1..=n).then_some(t)
    });
    let points = influx.tally("home");

    let mut row = Row::new(
        "11. disk full",
        format!(
            "spool and jsonl file on a 4 MiB tmpfs; {n} readings of ~7 KB at 10/s to jsonl, MQTT and \
             InfluxDB; the disk filled to the last byte after {at_fill}, freed after {at_free}"
        ),
    );
    row.produced = produced(&end);
    row.logs.push(daemon.log.clone());
    row.sink("jsonl", &file);
    row.sink("mqtt", &mqtt);
    row.sink("influx", &points);
    row.recovery_s = Some(recovery);
    row.note(format!(
        "while full: /readyz {status} \"{}\"; storage errors jsonl {}, mqtt {}, influx {}; \
         jsonl readings held in memory {held}; newest live reading at the broker {} and in \
         InfluxDB {} (the disk filled after {at_fill})",
        body.trim(),
        errors("jsonl"),
        errors("mqtt"),
        errors("influx"),
        live.0,
        live.1
    ));
    for (name, t) in [("jsonl", &file), ("mqtt", &mqtt), ("influx", &points)] {
        row.check_complete(name, t, 1..=n);
        row.check(t.duplicates() == 0, format!("{name}: duplicates"));
        row.check(lost(&end, name) == 0, format!("{name}: readings lost"));
    }
    row.check(errors("jsonl") > 0, "jsonl: no storage error counted");
    row.check(whole_lines(&jsonl), "the jsonl file has a torn line");
    check_recovery(&mut row, recovered.is_some(), recovery);
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}

#[test]
fn a_disk_full_during_a_backend_outage_spools_again_once_both_are_back() {
    let _lane = crate::harness::shared();
    let n: u64 = 200;
    let work = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount("4m");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 0);
    let broker = Broker::start();
    let influx = Influx::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-disk-outage");
    let proxy = Proxy::local(broker.port, Mode::Down);
    let influx_proxy = Proxy::local(influx.port, Mode::Down);
    let config = format!(
        "{}{}{}{}",
        replay_meter(&recording, "100ms"),
        mqtt_sink(proxy.port, ""),
        influx_sink(&format!("http://127.0.0.1:{}", influx_proxy.port), ""),
        spool(&disk.dir.join("spool"), "reserve = \"0\""),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    wait_for(Duration::from_secs(30), "readings spooled", || {
        let m = daemon.metrics();
        (m.sink("p1gw_sink_spooled_total", "mqtt") >= 20.0
            && m.sink("p1gw_sink_spooled_total", "influx") >= 20.0)
            .then_some(())
    });
    let filler = fill(&disk.dir);
    let at_fill = produced(&daemon.metrics());
    let (status, _) = readyz_naming(&daemon, "disk full", Duration::from_secs(20));
    wait_for(Duration::from_secs(30), "readings held in memory", || {
        let m = daemon.metrics();
        (produced(&m) >= at_fill + 30
            && m.sink("p1gw_spool_held_records", "mqtt") >= 20.0
            && m.sink("p1gw_spool_held_records", "influx") >= 20.0)
            .then_some(())
    });
    std::fs::remove_file(&filler).expect("free the disk");
    let freed = Instant::now();
    // The spool takes what memory held, with no broker and no restart.
    let at_free = within(Duration::from_secs(30), || {
        let m = daemon.metrics();
        (m.sink("p1gw_spool_held_records", "mqtt") == 0.0
            && m.sink("p1gw_spool_held_records", "influx") == 0.0
            && readyz(&daemon).0 == 200)
            .then(|| produced(&m))
    });
    let spooled_again = freed.elapsed().as_secs_f64();
    let at_free = at_free.unwrap_or(n);
    proxy.set(Mode::Forward);
    influx_proxy.set(Mode::Forward);
    let up = Instant::now();
    let mqtt = wait_for(
        Duration::from_secs(60),
        "every reading at the backends",
        || {
            let t = sub.tally();
            (t.has_all(1..=at_free) && influx.tally("home").has_all(1..=at_free)).then_some(t)
        },
    );
    let recovery = up.elapsed().as_secs_f64();
    let end = wait_for(
        Duration::from_secs(60),
        "the whole recording delivered",
        || {
            let m = daemon.metrics();
            (produced(&m) == n
                && m.sink("p1gw_spool_records", "mqtt") == 0.0
                && m.sink("p1gw_spool_records", "influx") == 0.0)
                .then_some(m)
        },
    );
    let caught_up = mqtt.unique();
    let mqtt = wait_for(Duration::from_secs(30), "the rest", || {
        let t = sub.tally();
        t.has_all(1..=n).then_some(t)
    });
    let points = wait_for(Duration::from_secs(30), "every point", || {
        let t = influx.tally("home");
        t.has_all(1..=n).then_some(t)
    });

    let mut row = Row::new(
        "12. disk full during a backend outage",
        format!(
            "spool on a 4 MiB tmpfs, broker and InfluxDB unreachable; {n} readings at 10/s; the \
             disk filled after {at_fill} and was freed, then both backends returned"
        ),
    );
    row.produced = produced(&end);
    row.logs.push(daemon.log.clone());
    row.sink("mqtt", &mqtt);
    row.sink("influx", &points);
    row.recovery_s = Some(spooled_again);
    row.note(format!(
        "/readyz {status} while full; the held readings were spooled {spooled_again:.1} s \
         after the disk was freed; {caught_up} readings at the broker {recovery:.1} s after the \
         backends returned; storage errors mqtt {}, influx {}",
        end.sink("p1gw_storage_errors_total", "mqtt"),
        end.sink("p1gw_storage_errors_total", "influx")
    ));
    for (name, t) in [("mqtt", &mqtt), ("influx", &points)] {
        row.check_complete(name, t, 1..=n);
        row.check(t.duplicates() == 0, format!("{name}: duplicates"));
        row.check(lost(&end, name) == 0, format!("{name}: readings lost"));
        row.check(
            end.sink("p1gw_storage_errors_total", name) > 0.0,
            format!("{name}: no storage error counted"),
        );
    }
    row.check(
        spooled_again <= RECOVERY.as_secs_f64(),
        format!("spooling again took {spooled_again:.1} s"),
    );
    // How soon a sink notices a backend that is back is its reconnect backoff's business
    // (it grows over a long outage); the disk's part is spooling again, checked above.
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}

/// An ext4 file system in a file, on a loop device, mounted with `errors=remount-ro`.
struct Ext4 {
    image: PathBuf,
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Ext4 {
    fn new() -> Ext4 {
        let parent = tempfile::tempdir().expect("tempdir");
        let image = parent.path().join("disk.img");
        let dir = parent.path().join("disk");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(32 << 20))
            .expect("image");
        run("mkfs.ext4", &["-q", "-F", &image.display().to_string()]);
        let ext = Ext4 {
            image,
            dir,
            _parent: parent,
        };
        ext.mount();
        ext
    }

    fn mount(&self) {
        run(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                &self.image.display().to_string(),
                &self.dir.display().to_string(),
            ],
        );
    }

    /// The loop device's name (`loop3`).
    fn device(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-no", "SOURCE"])
            .arg(&self.dir)
            .output()
            .expect("findmnt");
        let source = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        source.rsplit('/').next().unwrap_or_default().to_owned()
    }

    /// An error in the file system: the kernel makes it read-only at once.
    fn error(&self) {
        let trigger = format!("/sys/fs/ext4/{}/trigger_fs_error", self.device());
        std::fs::write(&trigger, "p1-faults\n").unwrap_or_else(|e| panic!("{trigger}: {e}"));
    }

    /// What an operator does: unmount (once nothing holds a file open), check, mount again.
    fn repair(&self) {
        wait_for(
            Duration::from_secs(20),
            "the read-only file system let go (umount)",
            || {
                Command::new("umount")
                    .arg(&self.dir)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|_| ())
            },
        );
        // e2fsck exits 1 when it fixed something, which is what it is here for.
        let fsck = Command::new("e2fsck")
            .args(["-fy"])
            .arg(&self.image)
            .output()
            .expect("e2fsck");
        assert!(
            fsck.status.code().is_some_and(|c| c <= 1),
            "e2fsck: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        self.mount();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        // Best effort at the end of a test: a mount left behind is harmless in a temp dir.
        if let Err(e) = Command::new("umount").arg("-l").arg(&self.dir).status() {
            eprintln!("umount {}: {e}", self.dir.display());
        }
    }
}

#[test]
fn a_file_system_turned_read_only_by_an_error_is_used_again_once_repaired() {
    let _lane = crate::harness::shared();
    let n: u64 = 200;
    let work = tempfile::tempdir().expect("tempdir");
    let disk = Ext4::new();
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 0);
    let broker = Broker::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-disk-ro");
    let jsonl = disk.dir.join("readings.jsonl");
    let config = format!(
        "{}{}{}{}",
        replay_meter(&recording, "100ms"),
        jsonl_sink(&jsonl),
        mqtt_sink(broker.port, ""),
        spool(&disk.dir.join("spool"), "reserve = \"0\""),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    wait_for(
        Duration::from_secs(30),
        "readings in the jsonl file",
        || (jsonl_ids(&jsonl).len() >= 10).then_some(()),
    );
    disk.error();
    let at_error = produced(&daemon.metrics());
    let (status, body) = readyz_naming(&daemon, "read-only", Duration::from_secs(20));
    let live = wait_for(
        Duration::from_secs(20),
        "live readings at the broker",
        || {
            let newest = sub.tally().seen.keys().next_back().copied().unwrap_or(0);
            (newest > at_error + 10).then_some(newest)
        },
    );
    let repair_start = Instant::now();
    disk.repair();
    let unmounted_in = repair_start.elapsed().as_secs_f64();
    let back = Instant::now();
    let at_back = produced(&daemon.metrics());
    let recovered = within(Duration::from_secs(30), || {
        let ids = Tally::from_ids(jsonl_ids(&jsonl));
        (readyz(&daemon).0 == 200 && ids.has_all(at_error + 1..=at_back.saturating_sub(5)))
            .then_some(())
    });
    let recovery = back.elapsed().as_secs_f64();
    let end = wait_for(
        Duration::from_secs(60),
        "the whole recording delivered",
        || {
            let m = daemon.metrics();
            (produced(&m) == n
                && ["jsonl", "mqtt"]
                    .iter()
                    .all(|s| m.sink("p1gw_spool_records", s) == 0.0))
            .then_some(m)
        },
    );
    let mqtt = wait_for(Duration::from_secs(30), "every state message", || {
        let t = sub.tally();
        t.has_all(1..=n).then_some(t)
    });
    // The file on the repaired disk: what was written before the error (as far as the
    // journal kept it) and everything after, from the spool and memory.
    let file = Tally::from_ids(jsonl_ids(&jsonl));

    let mut row = Row::new(
        "13. file system read-only after an error",
        format!(
            "spool and jsonl file on ext4 (errors=remount-ro) on a loop device; {n} readings at \
             10/s; an ext4 error after {at_error} made it read-only; umount, e2fsck, mount"
        ),
    );
    row.produced = produced(&end);
    row.logs.push(daemon.log.clone());
    row.sink("jsonl", &file);
    row.sink("mqtt", &mqtt);
    row.recovery_s = Some(recovery);
    row.note(format!(
        "while read-only: /readyz {status} \"{}\"; newest live reading at the broker {live}; \
         p1gw held no file on it (umount worked after {unmounted_in:.1} s); storage errors \
         jsonl {}, mqtt {}",
        body.trim(),
        end.sink("p1gw_storage_errors_total", "jsonl"),
        end.sink("p1gw_storage_errors_total", "mqtt"),
    ));
    row.check_complete("mqtt", &mqtt, 1..=n);
    row.check(mqtt.duplicates() == 0, "mqtt: duplicates");
    // What the file system lost in its error is the file system's; everything p1gw was told
    // after it must be in the file.
    row.check_complete("jsonl", &file, at_error + 1..=n);
    row.check(whole_lines(&jsonl), "the jsonl file has a torn line");
    for name in ["jsonl", "mqtt"] {
        row.check(lost(&end, name) == 0, format!("{name}: readings lost"));
    }
    check_recovery(&mut row, recovered.is_some(), recovery);
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}

#[test]
fn a_jsonl_file_at_its_size_limit_keeps_readings_spooled_until_it_is_rotated() {
    let _lane = crate::harness::shared();
    let n: u64 = 300;
    let work = tempfile::tempdir().expect("tempdir");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 2000);
    let out = work.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let jsonl = out.join("readings.jsonl");
    let config = format!(
        "{}{}{}",
        replay_meter(&recording, "50ms"),
        jsonl_sink(&jsonl),
        spool(&work.path().join("spool"), "reserve = \"0\""),
    );
    // About 150 readings' worth of jsonl (~7 KB each); the spool's own file stays below it.
    let limit_kib = 1024;
    let daemon = Daemon::start_limited(work.path(), "p1gw", &config, limit_kib);
    let (status, body) = readyz_naming(&daemon, "file too large", Duration::from_secs(30));
    let before = jsonl_ids(&jsonl);
    wait_for(Duration::from_secs(30), "more readings spooled", || {
        let m = daemon.metrics();
        (produced(&m) >= before.len() as u64 + 20).then_some(())
    });
    // A log rotator moves the full file away.
    let rotated = out.join("readings.jsonl.1");
    std::fs::rename(&jsonl, &rotated).expect("rotate");
    let at = Instant::now();
    let at_rotate = produced(&daemon.metrics());
    let recovered = within(Duration::from_secs(30), || {
        let ids = Tally::from_ids(jsonl_ids(&rotated).into_iter().chain(jsonl_ids(&jsonl)));
        (readyz(&daemon).0 == 200 && ids.has_all(1..=at_rotate)).then_some(())
    });
    let recovery = at.elapsed().as_secs_f64();
    // The new file fills up in turn; rotate whenever it does until the recording is through.
    let mut files = vec![rotated.clone()];
    let end = within(Duration::from_secs(60), || {
        let full = std::fs::metadata(&jsonl).is_ok_and(|m| m.len() + 4096 > limit_kib << 10);
        if full && readyz(&daemon).1.contains("file too large") {
            let next = out.join(format!("readings.jsonl.{}", files.len() + 1));
            std::fs::rename(&jsonl, &next).expect("rotate");
            files.push(next);
        }
        let m = daemon.metrics();
        (produced(&m) == n && m.sink("p1gw_spool_records", "jsonl") == 0.0).then_some(m)
    });
    files.push(jsonl.clone());
    let file = Tally::from_ids(files.iter().flat_map(|f| jsonl_ids(f)));
    let through = end.is_some();
    let end = end.unwrap_or_else(|| daemon.metrics());

    let mut row = Row::new(
        "14. jsonl file too large",
        format!(
            "p1gw under ulimit -f {limit_kib} (KiB); {n} readings of ~7 KB at 20/s to a jsonl file, which \
             reached the limit after {} readings; then rotated (renamed)",
            before.len()
        ),
    );
    row.produced = produced(&end);
    row.logs.push(daemon.log.clone());
    row.sink("jsonl", &file);
    row.recovery_s = Some(recovery);
    row.note(format!(
        "while at the limit: /readyz {status} \"{}\"; storage errors {}",
        body.trim(),
        end.sink("p1gw_storage_errors_total", "jsonl")
    ));
    row.check(
        through,
        format!(
            "the recording did not get through within 60 s: /readyz {:?}",
            readyz(&daemon)
        ),
    );
    row.check_complete("jsonl", &file, 1..=n);
    row.check(file.duplicates() == 0, "jsonl: duplicates");
    row.check(lost(&end, "jsonl") == 0, "jsonl: readings lost");
    for f in &files {
        row.check(whole_lines(f), format!("{} has a torn line", f.display()));
    }
    check_recovery(&mut row, recovered.is_some(), recovery);
    row.check(daemon.exited().is_none(), "p1gw exited (SIGXFSZ?)");
    row.finish();
}

#[test]
fn below_the_free_space_reserve_the_spool_evicts_instead_of_filling_the_disk() {
    let _lane = crate::harness::shared();
    let n: u64 = 1500;
    let work = tempfile::tempdir().expect("tempdir");
    let disk = Tmpfs::mount("16m");
    let recording = work.path().join("recording.txt");
    write_recording(&recording, 1..=n, 2000);
    let broker = Broker::start();
    let mut sub = Subscriber::start(&broker, "p1-faults-disk-reserve");
    let proxy = Proxy::local(broker.port, Mode::Down);
    let config = format!(
        "{}{}{}",
        replay_meter(&recording, "5ms"),
        mqtt_sink(proxy.port, "backlog_rate = 1000"),
        spool(&disk.dir.join("spool"), "reserve = \"12MiB\""),
    );
    let daemon = Daemon::start(work.path(), "p1gw", &config);
    let full = wait_for(
        Duration::from_secs(60),
        "the whole recording spooled",
        || {
            let m = daemon.metrics();
            let taken = m.sink("p1gw_sink_spooled_total", "mqtt")
                + m.get(
                    "p1gw_sink_dropped_total",
                    &[("sink", "mqtt"), ("reason", "lagged")],
                );
            (produced(&m) == n && taken as u64 >= n).then_some(m)
        },
    );
    let free = free_bytes(&disk.dir);
    let evicted = full.get(
        "p1gw_spool_evicted_total",
        &[("sink", "mqtt"), ("reason", "disk_reserve")],
    ) as u64;
    let errors = full.sink("p1gw_storage_errors_total", "mqtt") as u64;
    let kept = full.sink("p1gw_spool_records", "mqtt") as u64;
    proxy.set(Mode::Forward);
    let up = Instant::now();
    let end = wait_for(Duration::from_secs(60), "the spool drained", || {
        let m = daemon.metrics();
        (m.sink("p1gw_spool_records", "mqtt") == 0.0).then_some(m)
    });
    let recovery = up.elapsed().as_secs_f64();
    let sent = end.sink("p1gw_sink_sent_total", "mqtt") as u64;
    let mqtt = wait_for(
        Duration::from_secs(30),
        "what was kept, at the broker",
        || {
            let t = sub.tally();
            (t.unique() >= sent).then_some(t)
        },
    );

    let mut row = Row::new(
        "15. disk below the free-space reserve",
        format!(
            "spool on a 16 MiB tmpfs with [spool] reserve = 12MiB, broker unreachable; {n} \
             readings of ~7 KB at 200/s; then the broker returned"
        ),
    );
    row.produced = produced(&end);
    row.logs.push(daemon.log.clone());
    row.sink("mqtt", &mqtt);
    row.recovery_s = Some(recovery);
    row.note(format!(
        "evicted (disk_reserve) {evicted}, kept {kept}; free space at the end {free} bytes; \
         storage errors {errors}; delivered {} (a batch the sink had taken before its records \
         were evicted is still sent)",
        mqtt.unique()
    ));
    row.check(
        evicted > 0,
        "nothing evicted: the reserve was never reached",
    );
    row.check(errors == 0, "the disk filled up anyway: storage errors");
    // A commit writes its new pages before the old ones are free again: the file may take a
    // few pages past the reserve, never the disk.
    row.check(
        free >= (12 << 20) - (1 << 20),
        format!("only {free} bytes left free, well below the reserve"),
    );
    row.check(
        kept + lost(&end, "mqtt") == n,
        format!(
            "kept {kept} + evicted and dropped {} is not produced {n}",
            lost(&end, "mqtt")
        ),
    );
    row.check(
        mqtt.has_all(n - kept + 1..=n),
        "the newest readings did not all arrive",
    );
    row.check(mqtt.duplicates() == 0, "mqtt: duplicates");
    row.check(daemon.exited().is_none(), "p1gw exited");
    row.finish();
}

/// Free bytes on the file system holding `dir` (`df`'s view).
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}
