//! The writer against [`super::server`]: requests (URL, headers, gzip, credentials), how each
//! answer maps to p1-core's outcomes, `Retry-After`, timeouts, and batching in the worker.

use std::sync::Arc;
use std::time::Duration;

use p1_core::{
    AsyncSpool, Batch, Batches as _, ComponentKind, DeliveryError, Reading, Registry, SinkContext,
    SpoolConfig,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::server::{Reply, Request, Server};
use super::{reading, veitur_heat};
use crate::config::{InfluxConfig, Precision, Secret, Target};
use crate::sink::{Influx, MAX_RETRY_AFTER, MIN_RETRY_AFTER, SecretReader, parse_retry_after};

const TOKEN: &str = "t0ken-s3cret";

fn v1(url: &str) -> InfluxConfig {
    InfluxConfig::new(
        url,
        Target::V1 {
            database: "p1".into(),
            retention_policy: None,
            credentials: None,
        },
    )
}

fn v2(url: &str) -> InfluxConfig {
    InfluxConfig::new(
        url,
        Target::V2 {
            org: "home".into(),
            bucket: "p1".into(),
            token: Secret::new(TOKEN),
        },
    )
}

/// A batch of `n` one-line records, as p1-core reads it from the spool.
fn batch(n: u64) -> Batch {
    let bytes: Vec<u8> = (1..=n)
        .flat_map(|i| format!("electricity,meter=home power_import={i} {i}\n").into_bytes())
        .collect();
    Batch {
        first: 1,
        last: n,
        records: n as usize,
        bytes,
    }
}

#[tokio::test]
async fn v1_posts_gzipped_lines_to_write_with_db_rp_precision_and_basic_auth() {
    let mut server = Server::start().await;
    let mut config = v1(&server.url);
    config.target = Target::V1 {
        database: "p 1".into(),
        retention_policy: Some("week".into()),
        credentials: Some(("gw".into(), Secret::new("s3cret"))),
    };
    config.precision = Precision::Ms;
    let writer = Influx::new(config).expect("influx").writer("influx");
    let batch = batch(3);
    assert_eq!(writer.send(batch.clone()).await, Ok(()));
    let request = server.request().await;
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/write?db=p+1&rp=week&precision=ms");
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    assert_eq!(
        request.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    // base64("gw:s3cret")
    assert_eq!(request.header("authorization"), Some("Basic Z3c6czNjcmV0"));
    assert_eq!(request.body.as_bytes(), batch.bytes);
}

#[tokio::test]
async fn v2_posts_to_api_v2_write_under_the_url_path_with_a_token() {
    let mut server = Server::start().await;
    let mut config = v2(&format!("{}/influx/", server.url));
    config.precision = Precision::Us;
    config.gzip = false;
    let writer = Influx::new(config).expect("influx").writer("influx");
    assert_eq!(writer.send(batch(1)).await, Ok(()));
    let request = server.request().await;
    assert_eq!(
        request.target,
        "/influx/api/v2/write?org=home&bucket=p1&precision=us"
    );
    assert_eq!(request.header("authorization"), Some("Token t0ken-s3cret"));
    assert_eq!(request.header("content-encoding"), None);
    assert_eq!(request.body, "electricity,meter=home power_import=1 1\n");
}

#[tokio::test]
async fn v1_without_credentials_sends_no_authorization() {
    let mut server = Server::start().await;
    let writer = Influx::new(v1(&server.url))
        .expect("influx")
        .writer("influx");
    assert_eq!(writer.send(batch(1)).await, Ok(()));
    let request = server.request().await;
    assert_eq!(request.target, "/write?db=p1&precision=s");
    assert_eq!(request.header("authorization"), None);
}

/// Status, headers and body of an answer.
type Case = (u16, Vec<(&'static str, String)>, &'static str);

/// The headers InfluxDB 1.x puts on every answer.
fn influxdb() -> Vec<(&'static str, String)> {
    vec![
        ("X-Influxdb-Build", "OSS".into()),
        ("X-Influxdb-Version", "1.8.10".into()),
    ]
}

/// The reason of a refusal that keeps the batch spooled, or a panic naming what came instead.
fn refused(status: u16, got: &Result<(), DeliveryError>) -> (&'static str, String) {
    let Err(DeliveryError::Refused { reason, message }) = got else {
        panic!("{status}: refused (kept, retried) expected, got {got:?}");
    };
    (reason, message.clone())
}

#[tokio::test]
async fn answers_map_to_acks_retries_and_refusals() {
    let date_in_90_s = jiff::fmt::rfc2822::DateTimePrinter::new()
        .timestamp_to_rfc9110_string(
            &(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(90)),
        )
        .expect("date");
    let cases: Vec<Case> = vec![
        (204, influxdb(), ""),
        (
            401,
            influxdb(),
            r#"{"code":"unauthorized","message":"unauthorized access"}"#,
        ),
        (403, vec![], r#"{"error":"forbidden"}"#),
        (404, influxdb(), r#"{"error":"database not found: \"p1\""}"#),
        (408, vec![], ""),
        (429, vec![("Retry-After", "7".into())], "slow down"),
        (503, vec![("Retry-After", date_in_90_s)], "busy"),
        (500, vec![], "oops"),
        (502, vec![], ""),
    ];
    let mut server = Server::start().await;
    let writer = Influx::new(v2(&server.url))
        .expect("influx")
        .writer("influx");
    for (status, headers, body) in cases {
        server.reply(Reply::Answer(status, headers, body.to_owned()));
        let got = writer.send(batch(4)).await;
        server.request().await;
        match status {
            204 => assert_eq!(got, Ok(())),
            401 | 403 | 404 => {
                let (reason, message) = refused(status, &got);
                let want = if status == 404 { "not_found" } else { "auth" };
                assert_eq!(reason, want, "{status}");
                assert!(message.contains(&status.to_string()), "{message}");
                assert!(message.contains(body), "{status}: the body in {message}");
                assert!(message.contains("token_file") || status == 404, "{message}");
                assert!(!message.contains(TOKEN), "{message}");
            }
            _ => {
                let Err(DeliveryError::Transient {
                    message,
                    retry_after,
                }) = &got
                else {
                    panic!("{status}: transient expected, got {got:?}");
                };
                assert!(message.contains(&status.to_string()), "{message}");
                assert!(!message.contains(TOKEN), "{message}");
                match status {
                    429 => assert_eq!(*retry_after, Some(Duration::from_secs(7))),
                    503 => {
                        let wait = retry_after.expect("a wait from the date");
                        assert!(
                            (Duration::from_secs(80)..=Duration::from_secs(91)).contains(&wait),
                            "{wait:?}"
                        );
                    }
                    _ => assert_eq!(*retry_after, None),
                }
            }
        }
    }
}

#[tokio::test]
async fn answers_not_from_the_database_keep_the_batch() {
    let nginx = || vec![("Server", "nginx/1.22.1".into())];
    let cases: Vec<(Case, &str)> = vec![
        // A login page or a proxy's own success: not a write's acknowledgement.
        (
            (200, nginx(), "<html><body>Please log in</body></html>"),
            "unexpected_answer",
        ),
        ((201, influxdb(), ""), "unexpected_answer"),
        // nginx's answer to plain HTTP on its HTTPS port.
        (
            (
                400,
                nginx(),
                "<html><head><title>400 The plain HTTP request was sent to HTTPS port</title></head></html>",
            ),
            "not_influxdb",
        ),
        (
            (400, vec![], r#"{"error":"unable to parse 'x'"}"#),
            "not_influxdb",
        ),
        (
            (407, nginx(), "Proxy Authentication Required"),
            "not_influxdb",
        ),
        ((426, nginx(), "Upgrade Required"), "not_influxdb"),
        (
            (431, nginx(), "Request Header Fields Too Large"),
            "not_influxdb",
        ),
        // The database refusing the request as a whole (what a redirect's GET gets).
        ((405, influxdb(), "Method Not Allowed"), "refused"),
        (
            (400, influxdb(), r#"{"error":"database is required"}"#),
            "refused",
        ),
    ];
    let mut server = Server::start().await;
    let writer = Influx::new(v1(&server.url))
        .expect("influx")
        .writer("influx");
    for ((status, headers, body), want) in cases {
        server.reply(Reply::Answer(status, headers, body.to_owned()));
        let got = writer.send(batch(4)).await;
        server.request().await;
        let (reason, message) = refused(status, &got);
        assert_eq!(reason, want, "{status} {body}: {message}");
        assert!(message.contains(&status.to_string()), "{message}");
        assert!(server.try_request().is_none(), "{status}: one request");
    }
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_says_where_it_points() {
    let mut server = Server::start().await;
    for status in [301, 302, 303, 307, 308] {
        server.reply(Reply::Answer(
            status,
            vec![(
                "Location",
                "https://user:pw@portal.example/login?session=s3cret".into(),
            )],
            String::new(),
        ));
        let writer = Influx::new(v1(&server.url))
            .expect("influx")
            .writer("influx");
        let got = writer.send(batch(2)).await;
        let request = server.request().await;
        assert_eq!(request.method, "POST");
        let (reason, message) = refused(status, &got);
        assert_eq!(reason, "redirect", "{status}");
        assert!(
            message.contains("https://portal.example/login"),
            "{status}: {message}"
        );
        assert!(
            !message.contains("s3cret") && !message.contains("pw@"),
            "{message}"
        );
        assert!(
            server.try_request().is_none(),
            "{status}: the redirect was followed"
        );
    }
}

/// Answers like InfluxDB 1.x: 204, or its partial-write 400 when the body holds `needle`.
fn refusing(needle: &'static str) -> impl Fn(&Request) -> Option<Reply> + Send + Sync {
    move |request: &Request| {
        request.body.contains(needle).then(|| {
            Reply::Answer(
                400,
                influxdb(),
                r#"{"error":"partial write: field type conflict: input field \"power_import\" on measurement \"electricity\" is type float, already exists as type string dropped=1"}"#.into(),
            )
        })
    }
}

/// The lines of every request answered 204 (the test server's default).
fn written(requests: &[Request], refused: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = requests
        .iter()
        .filter(|r| !refused.iter().any(|n| r.body.contains(n)))
        .flat_map(|r| r.body.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines
}

#[tokio::test]
async fn a_refused_point_drops_only_its_reading_and_the_rest_is_written() {
    let mut server = Server::start().await;
    let needle = "power_import=6 6\n";
    server.rule(refusing(needle));
    let writer = Influx::new(v1(&server.url))
        .expect("influx")
        .writer("influx");
    let got = writer.send(batch(8)).await;
    let Err(DeliveryError::Permanent { message, records }) = &got else {
        panic!("the refused reading dropped expected, got {got:?}");
    };
    assert_eq!(*records, 1, "only the refused reading: {message}");
    assert!(message.contains("field type conflict"), "{message}");
    assert!(
        message.contains("electricity,meter=home power_import=6 6"),
        "the refused line: {message}"
    );
    let mut requests = Vec::new();
    while let Some(r) = server.try_request() {
        requests.push(r);
    }
    let mut want: Vec<String> = String::from_utf8(batch(8).bytes)
        .expect("utf-8")
        .lines()
        .filter(|l| !format!("{l}\n").ends_with(needle))
        .map(str::to_owned)
        .collect();
    want.sort_unstable();
    assert_eq!(
        written(&requests, &[needle]),
        want,
        "every other reading written"
    );
    assert!(requests.len() <= 8, "bisected: {} requests", requests.len());
}

#[tokio::test]
async fn a_too_large_batch_whose_half_is_refused_still_writes_the_other_half() {
    let mut server = Server::start().await;
    // More than two readings are too large; the first reading is refused.
    let needle = "power_import=1 1\n";
    let refuse = refusing(needle);
    server.rule(move |request: &Request| {
        if request.body.lines().count() > 2 {
            Some(Reply::Answer(
                413,
                influxdb(),
                r#"{"error":"Request Entity Too Large"}"#.into(),
            ))
        } else {
            refuse(request)
        }
    });
    let writer = Influx::new(v1(&server.url))
        .expect("influx")
        .writer("influx");
    let got = writer.send(batch(4)).await;
    assert!(
        matches!(&got, Err(DeliveryError::Permanent { records: 1, .. })),
        "one reading dropped, got {got:?}"
    );
    let mut requests = Vec::new();
    while let Some(r) = server.try_request() {
        requests.push(r);
    }
    let ok: Vec<Request> = requests
        .into_iter()
        .filter(|r| r.body.lines().count() <= 2)
        .collect();
    assert_eq!(
        written(&ok, &[needle]),
        [
            "electricity,meter=home power_import=2 2",
            "electricity,meter=home power_import=3 3",
            "electricity,meter=home power_import=4 4"
        ],
        "the half never sent before is written, not deleted unsent"
    );
}

#[tokio::test]
async fn one_reading_too_large_for_a_proxy_is_kept() {
    let server = Server::start().await;
    server.rule(|_: &Request| {
        Some(Reply::Answer(
            413,
            vec![("Server", "nginx".into())],
            "<html>413 Request Entity Too Large</html>".into(),
        ))
    });
    let writer = Influx::new(v1(&server.url))
        .expect("influx")
        .writer("influx");
    let (reason, _) = refused(413, &writer.send(batch(1)).await);
    assert_eq!(reason, "too_large");
}

#[tokio::test]
async fn a_batch_too_large_for_the_server_is_written_in_halves_at_line_ends() {
    let mut server = Server::start().await;
    server.reply(Reply::Answer(413, vec![], "too large".into()));
    server.reply(Reply::Answer(413, vec![], "too large".into()));
    let writer = Influx::new(v1(&server.url))
        .expect("influx")
        .writer("influx");
    assert_eq!(writer.send(batch(5)).await, Ok(()));
    let bodies: Vec<String> = [
        server.request().await,
        server.request().await,
        server.request().await,
        server.request().await,
    ]
    .into_iter()
    .map(|r| r.body)
    .collect();
    // 5 lines refused; its front (2 lines) refused again and written as 1 + 1; then the back 3.
    let lines = |b: &String| b.lines().count();
    assert_eq!(bodies.iter().map(lines).collect::<Vec<_>>(), [5, 2, 1, 1]);
    let fifth = server.request().await;
    assert_eq!(lines(&fifth.body), 3);
    assert_eq!(
        format!("{}{}{}", bodies[2], bodies[3], fifth.body).as_bytes(),
        batch(5).bytes,
        "every line once, whole"
    );

    // One reading that InfluxDB still finds too large: dropped as unwritable.
    server.reply(Reply::Answer(413, influxdb(), "too large".into()));
    let got = writer.send(batch(1)).await;
    assert!(
        matches!(&got, Err(DeliveryError::Permanent { records: 1, .. })),
        "{got:?}"
    );
}

#[tokio::test]
async fn no_server_is_transient() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let writer = Influx::new(v1(&format!("http://127.0.0.1:{port}")))
        .expect("influx")
        .writer("influx");
    let got = writer.send(batch(1)).await;
    let Err(DeliveryError::Transient {
        message,
        retry_after: None,
    }) = &got
    else {
        panic!("transient expected, got {got:?}");
    };
    assert!(
        message.contains(&format!("127.0.0.1:{port}/write")),
        "{message}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_transient() {
    let server = Server::start().await;
    server.reply(Reply::Hang);
    let mut config = v1(&server.url);
    config.timeout = Duration::from_millis(300);
    let writer = Influx::new(config).expect("influx").writer("influx");
    let got = tokio::time::timeout(Duration::from_secs(5), writer.send(batch(1)))
        .await
        .expect("the request timeout ends it");
    assert!(
        matches!(&got, Err(DeliveryError::Transient { message, .. }) if message.contains("timed out")),
        "{got:?}"
    );
}

#[test]
fn retry_after_is_seconds_or_an_http_date_capped() {
    let now: jiff::Timestamp = "2024-02-12T22:21:14Z".parse().expect("time");
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after(" 0 ", now),
        Some(MIN_RETRY_AFTER),
        "never a busy loop"
    );
    assert_eq!(
        parse_retry_after("Mon, 12 Feb 2024 22:22:14 GMT", now),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        parse_retry_after("Mon, 12 Feb 2024 22:00:00 GMT", now),
        Some(MIN_RETRY_AFTER),
        "a date in the past: soon"
    );
    assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(MAX_RETRY_AFTER)
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
    assert_eq!(parse_retry_after("", now), None);
}

#[test]
fn bad_settings_are_refused_and_debug_hides_the_token() {
    for url in [
        "ftp://host",
        "http://user:pw@host:8086",
        "http://host:8086/?db=x",
        "not a url",
    ] {
        let error = Influx::new(v1(url)).expect_err(url).to_string();
        assert!(!error.contains("pw@"), "{error}");
    }
    let mut config = v1("http://localhost:8086");
    config.batch_size = 0;
    assert!(Influx::new(config).is_err());
    let mut config = v2("http://localhost:8086");
    config.target = Target::V2 {
        org: "o".into(),
        bucket: "b".into(),
        token: Secret::new("bad\ntoken"),
    };
    assert!(Influx::new(config).is_err());

    let influx = Influx::new(v2("http://localhost:8086")).expect("influx");
    assert_eq!(
        influx.write_url(),
        "http://localhost:8086/api/v2/write?org=home&bucket=p1&precision=s"
    );
    let debug = format!("{influx:?} {:?}", v2("http://x"));
    assert!(!debug.contains(TOKEN), "{debug}");
}

// ---------------------------------------------------------------------------------------------
// In the worker: batching.

struct Worker {
    tx: broadcast::Sender<Arc<Reading>>,
    registry: Registry,
    stop: CancellationToken,
    hard: CancellationToken,
    spool: AsyncSpool,
    run: tokio::task::JoinHandle<Result<(), p1_core::SinkError>>,
    _dir: tempfile::TempDir,
}

async fn worker(config: InfluxConfig) -> Worker {
    worker_of(Influx::new(config).expect("influx")).await
}

async fn worker_of(influx: Influx) -> Worker {
    worker_in(influx, tempfile::tempdir().expect("tempdir")).await
}

/// A worker on the spool in `dir` (a restart keeps it).
async fn worker_in(influx: Influx, dir: tempfile::TempDir) -> Worker {
    let registry = Registry::new();
    let spool = AsyncSpool::open(
        dir.path().join("influx.redb"),
        "influx",
        SpoolConfig::new(1 << 20),
    )
    .await
    .expect("spool");
    let stop = CancellationToken::new();
    let hard = CancellationToken::new();
    let cx = SinkContext {
        name: "influx".into(),
        health: registry
            .register("sink:influx", ComponentKind::Sink)
            .expect("register"),
        spool: spool.clone(),
        stop: stop.clone(),
        hard: hard.clone(),
    };
    let (tx, rx) = broadcast::channel(64);
    let sink = influx
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .sink();
    let run = tokio::spawn(sink.run(rx, cx));
    Worker {
        tx,
        registry,
        stop,
        hard,
        spool,
        run,
        _dir: dir,
    }
}

impl Worker {
    fn send(&self, n: i64) {
        for i in 0..n {
            // Distinct readings: a second apart.
            let r = reading(&veitur_heat(), 1_700_000_000 + i);
            let mut r = r.clone();
            r.meter_time = None;
            self.tx.send(Arc::new(r)).expect("worker listening");
        }
    }

    /// Ends the worker as the daemon does and starts a new one on the same spool, as after a
    /// restart of the sink or of p1gw.
    async fn restart(self, influx: Influx) -> Worker {
        drop(self.tx);
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the worker drains and ends")
            .expect("task")
            .expect("worker ok");
        drop(self.spool);
        worker_in(influx, self._dir).await
    }

    async fn finish(self) {
        drop(self.tx);
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.run)
            .await
            .expect("the worker drains and ends")
            .expect("task")
            .expect("worker ok");
        assert!(self.spool.is_empty(), "everything acknowledged");
    }
}

fn readings_in(body: &str) -> usize {
    body.lines()
        .filter(|l| l.starts_with("electricity,"))
        .count()
}

#[tokio::test]
async fn full_batches_go_at_once_and_a_partial_one_waits_until_the_daemon_stops() {
    let mut server = Server::start().await;
    let mut config = v1(&server.url);
    config.batch_size = 2;
    config.batch_interval = Duration::from_secs(3600);
    let w = worker(config).await;
    w.send(5);
    let first = server.request().await;
    let second = server.request().await;
    assert_eq!(readings_in(&first.body), 2, "{}", first.body);
    assert_eq!(readings_in(&second.body), 2, "{}", second.body);
    // The fifth waits for a batch to fill.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(server.try_request().is_none(), "the partial batch waits");
    assert_eq!(w.spool.len(), 1);
    w.stop.cancel();
    let third = server.request().await;
    assert_eq!(readings_in(&third.body), 1, "{}", third.body);
    // Each reading was written exactly once (the two full batches were in flight together and
    // may have arrived in either order).
    let all = format!("{}{}{}", first.body, second.body, third.body);
    let mut stamps: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with("electricity,"))
        .filter_map(|l| l.rsplit(' ').next())
        .collect();
    stamps.sort_unstable();
    assert_eq!(
        stamps,
        [
            "1700000000",
            "1700000001",
            "1700000002",
            "1700000003",
            "1700000004"
        ]
    );
    w.finish().await;
    assert!(server.try_request().is_none(), "no request after the drain");
}

#[tokio::test]
async fn a_partial_batch_is_written_after_batch_interval_with_what_came_meanwhile() {
    let mut server = Server::start().await;
    let mut config = v2(&server.url);
    config.batch_interval = Duration::from_secs(1);
    let w = worker(config).await;
    let sent = tokio::time::Instant::now();
    w.send(3);
    let request = server.request().await;
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(
        readings_in(&request.body),
        3,
        "one request: {}",
        request.body
    );
    w.finish().await;
    assert!(server.try_request().is_none(), "nothing written twice");
}

#[tokio::test]
async fn a_refusal_keeps_the_batch_spooled_and_it_goes_once_when_the_server_takes_it() {
    let mut server = Server::start().await;
    server.reply(Reply::Answer(
        503,
        vec![("Retry-After", "0".into())],
        "busy".into(),
    ));
    server.reply(Reply::Answer(500, vec![], "still".into()));
    let mut config = v1(&server.url);
    config.batch_interval = Duration::from_millis(50);
    let w = worker(config).await;
    w.send(2);
    let a = server.request().await;
    let b = server.request().await;
    let c = server.request().await;
    assert_eq!(a.body, b.body);
    assert_eq!(b.body, c.body, "the same batch, retried");
    assert_eq!(readings_in(&c.body), 2);
    w.finish().await;
    assert!(server.try_request().is_none());
}

#[tokio::test]
async fn a_rejected_batch_is_dropped_and_the_next_goes_on() {
    let mut server = Server::start().await;
    server.reply(Reply::Answer(
        400,
        influxdb(),
        r#"{"error":"unable to parse 'x': missing fields"}"#.into(),
    ));
    let mut config = v1(&server.url);
    config.batch_interval = Duration::ZERO;
    config.batch_size = 1;
    let w = worker(config).await;
    w.send(2);
    let rejected = server.request().await;
    let next = server.request().await;
    assert_ne!(rejected.body, next.body, "not retried");
    w.finish().await;
}

#[tokio::test]
async fn batches_are_in_flight_together_and_a_hung_one_stays_spooled() {
    let mut server = Server::start().await;
    server.reply(Reply::Hang);
    let mut config = v1(&server.url);
    config.batch_size = 2;
    config.max_in_flight = 2;
    config.batch_interval = Duration::from_secs(3600);
    config.timeout = Duration::from_secs(3600);
    let w = worker(config).await;
    w.send(4);
    // The first request never gets an answer; the second batch goes all the same.
    let hung = server.request().await;
    let answered = server.request().await;
    assert_eq!(readings_in(&hung.body), 2);
    assert_eq!(readings_in(&answered.body), 2);
    assert_ne!(hung.body, answered.body);
    // The answered batch leaves the spool; the hung one stays.
    let spool = w.spool.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while spool.len() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the answered batch deleted");
    assert!(server.try_request().is_none(), "two in flight, no more");
    // The grace period ends with the request still hanging: its batch is kept for the next run.
    w.hard.cancel();
    drop(w.tx);
    tokio::time::timeout(Duration::from_secs(10), w.run)
        .await
        .expect("ends on the hard stop")
        .expect("task")
        .expect("ok");
    assert_eq!(spool.len(), 2);
    let kept = spool.peek_batch(0, 10).await.expect("peek").expect("kept");
    assert_eq!(String::from_utf8_lossy(&kept.bytes), hung.body);
}

#[tokio::test]
async fn a_refused_token_keeps_the_readings_and_is_read_again_before_the_retry() {
    let mut server = Server::start().await;
    server.reply(Reply::Answer(
        401,
        vec![],
        r#"{"error":"authorization failed"}"#.into(),
    ));
    server.reply(Reply::Answer(
        403,
        vec![],
        r#"{"error":"forbidden"}"#.into(),
    ));
    let reads = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = reads.clone();
    let reader: SecretReader = Arc::new(move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Ok(Secret::new(format!("fixed-{n}")))
    });
    let mut config = v2(&server.url);
    config.batch_interval = Duration::from_millis(50);
    let influx = Influx::new(config)
        .expect("influx")
        .with_secret_reader(reader);
    let w = worker_of(influx).await;
    w.send(3);
    let first = server.request().await;
    let second = server.request().await;
    let third = server.request().await;
    assert_eq!(first.header("authorization"), Some("Token t0ken-s3cret"));
    assert_eq!(second.header("authorization"), Some("Token fixed-1"));
    assert_eq!(third.header("authorization"), Some("Token fixed-2"));
    assert_eq!(readings_in(&first.body), 3);
    assert_eq!(
        first.body, third.body,
        "the same readings, kept and sent again"
    );
    w.finish().await;
    assert_eq!(
        reads.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "read only after a refusal"
    );
    assert!(
        server.try_request().is_none(),
        "nothing written twice after the 204"
    );
}

#[tokio::test]
async fn a_redirect_keeps_the_readings_and_readyz_says_where_the_url_points() {
    let mut server = Server::start().await;
    let moved = || {
        Reply::Answer(
            301,
            vec![("Location", "/influxdb/write?db=p1".into())],
            String::new(),
        )
    };
    server.reply(moved());
    server.reply(moved());
    let mut config = v1(&server.url);
    config.batch_interval = Duration::ZERO;
    let w = worker(config).await;
    w.send(2);
    let first = server.request().await;
    server.request().await;
    // While the URL redirects: kept, and /readyz names where it points.
    let readiness = w
        .registry
        .ready(tokio::time::Instant::now(), Duration::from_secs(10));
    let reasons = readiness.reasons.join("; ");
    assert!(
        reasons.contains("influx: failed") && reasons.contains("/influxdb/write"),
        "{reasons}"
    );
    assert_eq!(w.spool.len(), 2, "kept");
    // Once the server answers 204 (the URL corrected), they go, and the sink is well again.
    let third = server.request().await;
    assert_eq!(first.body, third.body);
    let spool = w.spool.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !spool.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("written after the redirect is gone");
    let readiness = w
        .registry
        .ready(tokio::time::Instant::now(), Duration::from_secs(10));
    assert!(
        !readiness.reasons.iter().any(|r| r.contains("influx")),
        "{readiness:?}"
    );
    w.finish().await;
}

/// The stamps of the `electricity` lines of the next requests, until there are `n`.
async fn next_stamps(server: &mut Server, n: usize) -> Vec<i64> {
    let mut stamps = Vec::new();
    while stamps.len() < n {
        let request = server.request().await;
        stamps.extend(
            request
                .body
                .lines()
                .filter(|l| l.starts_with("electricity,"))
                .map(|l| {
                    l.rsplit(' ')
                        .next()
                        .expect("stamp")
                        .parse::<i64>()
                        .expect("integer")
                }),
        );
    }
    stamps
}

#[tokio::test]
async fn after_a_restart_a_meter_clock_that_went_back_still_gives_new_points() {
    let mut server = Server::start().await;
    let mut config = v1(&server.url);
    config.batch_interval = Duration::ZERO;
    let influx = Influx::new(config).expect("influx");
    let t = 1_707_776_474;
    let at = |meter: i64, received: i64| {
        let mut r = reading(&veitur_heat(), received);
        r.meter_time = Some(jiff::Timestamp::from_second(meter).expect("time"));
        Arc::new(r)
    };
    let w = worker_of(influx.clone()).await;
    w.tx.send(at(t, t)).expect("listening");
    w.tx.send(at(t + 10, t + 10)).expect("listening");
    assert_eq!(next_stamps(&mut server, 2).await, [t, t + 10]);
    // The sink (or p1gw) restarts; the meter's clock is back at the first reading's time.
    let w = w.restart(influx).await;
    w.tx.send(at(t, t + 20)).expect("listening");
    assert_eq!(
        next_stamps(&mut server, 1).await,
        [t + 20],
        "after the last stamp of the run before (the time received), not onto its first point"
    );
    w.finish().await;
}
