//! The sink against the fake hub (TLS, real sockets, real time; every wait has a deadline):
//! PUBACK deletes from the spool, token renewal, a hub that drops the connection, a PUBACK read
//! together with the end of the connection, the daily budget across a UTC midnight, batches
//! split under 256 KiB, a refused key, a module with an X.509 certificate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use p1_core::{
    AsyncSpool, ComponentKind, HealthHandle, Reading, Registry, Sink, SinkContext, SpoolConfig,
};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fake_hub::{CloseReason, FakeDevice, FakeHub, Faults, HubConfig, HubLog};
use crate::{AzureSettings, Clock};

const KEY: &[u8] = b"fake-hub-device-key-0123456789ab";
const WAIT: Duration = Duration::from_secs(20);

/// A Veitur-like reading whose energy register (`energy_import_total`) is `n`: its identity.
fn reading(n: u64) -> Arc<Reading> {
    let text = format!(
        "/ISk5\\2MIE5E-200\r\n\r\n0-0:96.1.0(86818632)\r\n1-0:0.9.1(211309)\r\n1-0:0.9.2(240501)\r\n\
         1-0:1.7.0(00.588*kW)\r\n1-0:1.8.0({n:06}.000*kWh)\r\n1-0:2.8.0(000000.000*kWh)\r\n\
         1-0:32.7.0(231.3*V)\r\n0-1:24.2.1(0366.475*m3)\r\n0-1:24.2.2(0000.090*m3/h)\r\n!\r\n"
    );
    let t = p1_telegram::Telegram::parse(text.as_bytes(), p1_telegram::ParseOptions::default())
        .expect("telegram");
    Arc::new(Reading::from_telegram(
        Arc::from("home"),
        Arc::from("test"),
        &t,
        &jiff::tz::TimeZone::UTC,
        jiff::Timestamp::from_second(1_700_000_000).expect("time"),
    ))
}

/// The reading numbers in a message body.
fn numbers(body: &[u8]) -> Vec<u64> {
    let v: Value = serde_json::from_slice(body).expect("body is JSON");
    v["readings"]
        .as_array()
        .expect("readings array")
        .iter()
        .map(|r| {
            r["objects"]
                .as_array()
                .expect("objects")
                .iter()
                .find(|o| o["name"] == "energy_import_total")
                .and_then(|o| o["value"].as_f64())
                .expect("energy_import_total") as u64
        })
        .collect()
}

/// Reading numbers over the acknowledged messages, in order.
fn acked_numbers(log: &HubLog) -> Vec<u64> {
    log.acked().flat_map(|m| numbers(&m.body)).collect()
}

/// Reading numbers over every message the hub received (acked or not).
fn all_numbers(log: &HubLog) -> Vec<u64> {
    log.messages.iter().flat_map(|m| numbers(&m.body)).collect()
}

fn hub(devices: Vec<FakeDevice>, faults: Faults) -> FakeHub {
    let mut config = HubConfig::new(devices);
    config.faults = faults;
    FakeHub::start(config)
}

/// Settings for device 0 of `hub` at `localhost`, trusting its CA, quick timings.
fn settings(hub: &FakeHub) -> AzureSettings {
    let mut s = AzureSettings::new(hub.connection_string(0));
    s.ca_pem = Some(hub.ca_pem().as_bytes().to_vec());
    s.port = hub.port();
    s.interval = Duration::from_millis(100);
    s.daily_message_budget = 1_000_000;
    s.reconnect_min = Duration::from_millis(50);
    s.reconnect_max = Duration::from_millis(500);
    s.properties = vec![("meter".to_owned(), "home".to_owned())];
    s
}

/// Connects to the hub's host name through `localhost`: the connection string names the hub,
/// the fake listens on 127.0.0.1 with a certificate for `localhost`.
fn via_localhost(mut s: AzureSettings) -> AzureSettings {
    s.connection_string = format!("{};GatewayHostName=localhost", s.connection_string);
    s
}

/// A running sink with its spool and health.
struct Running {
    tx: Option<broadcast::Sender<Arc<Reading>>>,
    task: JoinHandle<Result<(), p1_core::SinkError>>,
    spool: AsyncSpool,
    health: HealthHandle,
    stop: CancellationToken,
    hard: CancellationToken,
    _dir: tempfile::TempDir,
    _registry: Registry,
}

async fn run(settings: AzureSettings) -> Running {
    run_in(settings, tempfile::tempdir().expect("tempdir")).await
}

/// A sink on the spool in `dir` (a restart keeps it).
async fn run_in(settings: AzureSettings, dir: tempfile::TempDir) -> Running {
    let sink = crate::build(via_localhost(settings)).expect("build");
    let registry = Registry::new();
    let health = registry
        .register("sink:azure-iot", ComponentKind::Sink)
        .expect("register");
    let spool = AsyncSpool::open(
        dir.path().join("azure.redb"),
        "azure-iot",
        SpoolConfig::new(64 << 20),
    )
    .await
    .expect("spool");
    let stop = CancellationToken::new();
    let hard = CancellationToken::new();
    let cx = SinkContext {
        name: "azure-iot".to_owned(),
        health: health.clone(),
        spool: spool.clone(),
        stop: stop.clone(),
        hard: hard.clone(),
    };
    let (tx, rx) = broadcast::channel(1024);
    let task = tokio::spawn(Box::new(sink).run(rx, cx));
    Running {
        tx: Some(tx),
        task,
        spool,
        health,
        stop,
        hard,
        _dir: dir,
        _registry: registry,
    }
}

impl Running {
    fn send(&self, n: u64) {
        self.tx
            .as_ref()
            .expect("running")
            .send(reading(n))
            .expect("a receiver");
    }

    /// Waits until the spool is empty.
    async fn drained(&self, what: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.spool.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {} records still spooled",
                self.spool.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the health reason contains `text`.
    async fn health_says(&self, text: &str) {
        let mut rx = self.health.subscribe();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if rx
                    .borrow_and_update()
                    .state
                    .reason()
                    .is_some_and(|r| r.contains(text))
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "health never said {text:?}: {:?}",
            self.health.status()
        );
    }

    /// Ends the sink as the daemon does: the reader's sender goes, then the stop; with `hard`,
    /// the grace period is over at once too (what is not delivered stays spooled).
    async fn finish(self) {
        self.end(false).await;
    }

    /// Ends the sink as [`Running::finish`] does and starts a new one on the same spool, as
    /// after a restart of the sink or of p1gw.
    async fn restart(mut self, settings: AzureSettings) -> Running {
        self.stop.cancel();
        self.tx.take();
        let result = tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the sink ends")
            .expect("no panic");
        assert!(result.is_ok(), "{result:?}");
        let Running { spool, _dir, .. } = self;
        drop(spool);
        run_in(settings, _dir).await
    }

    async fn end(mut self, hard: bool) {
        self.stop.cancel();
        self.tx.take();
        if hard {
            self.hard.cancel();
        }
        let result = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the sink ends")
            .expect("no panic");
        assert!(result.is_ok(), "{result:?}");
    }
}

fn each_once(got: &[u64], n: u64) {
    let mut counts = BTreeMap::new();
    for g in got {
        *counts.entry(*g).or_insert(0) += 1;
    }
    let missing: Vec<u64> = (0..n).filter(|i| !counts.contains_key(i)).collect();
    let twice: Vec<(u64, i32)> = counts.into_iter().filter(|(_, c)| *c > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "missing {missing:?}, more than once {twice:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_with_properties_and_the_puback_deletes_from_the_spool() {
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], Faults::default());
    let sink = run(settings(&hub)).await;
    for n in 0..5 {
        sink.send(n);
    }
    let log = hub
        .wait_for(WAIT, "five readings acknowledged", |log| {
            acked_numbers(log).len() >= 5
        })
        .await;
    sink.drained("after the PUBACKs").await;
    assert_eq!(acked_numbers(&log), [0, 1, 2, 3, 4], "in order, each once");
    let c = &log.connects[0];
    assert_eq!(c.client_id, "meter-1");
    assert_eq!(
        c.username,
        "fake-hub.azure-devices.net/meter-1/?api-version=2021-04-12"
    );
    assert_eq!(c.code, 0);
    assert!(c.expiry.is_some(), "a SAS login");
    let m = &log.messages[0];
    assert!(
        m.topic
            .starts_with("devices/meter-1/messages/events/$.ct=application%2Fjson&$.ce=utf-8"),
        "{}",
        m.topic
    );
    assert_eq!(m.property("$.ct"), Some("application/json"));
    assert_eq!(m.property("$.ce"), Some("utf-8"));
    assert_eq!(m.property("meter"), Some("home"));
    let body: Value = serde_json::from_slice(&m.body).expect("JSON");
    assert_eq!(body["readings"][0]["meter"], "home");
    assert_eq!(body["readings"][0]["header"], "ISk5\\2MIE5E-200");
    sink.finish().await;
    let log = hub
        .wait_for(WAIT, "a clean DISCONNECT", |log| {
            log.closed(&CloseReason::ClientDisconnect) == 1
        })
        .await;
    assert_eq!(log.logins(), 1, "one connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_renewed_before_expiry_without_loss_or_duplicates() {
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], Faults::default());
    let mut s = settings(&hub);
    s.token_lifetime = Duration::from_secs(3);
    let sink = run(s).await;
    // Readings every 50 ms for 7.5 s: through at least two renewals.
    let n = 150;
    for i in 0..n {
        sink.send(i);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = hub
        .wait_for(WAIT, "every reading acknowledged", |log| {
            acked_numbers(log).len() as u64 >= n
        })
        .await;
    sink.drained("after the last PUBACK").await;
    each_once(&all_numbers(&log), n);
    assert!(
        log.logins() >= 3,
        "renewed at least twice: {:#?}",
        log.connects
    );
    assert_eq!(
        log.closed(&CloseReason::TokenExpired),
        0,
        "renewed before the hub closed: {:#?}",
        log.closes
    );
    assert!(log.closed(&CloseReason::ClientDisconnect) >= 2);
    // Each token lives 2 to 3 s: renewing at 80 % means a new login every 1.6 to 2.4 s.
    for c in &log.connects {
        assert_eq!(c.code, 0, "{c:?}");
    }
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_puback_at_renewal_is_sent_again_exactly_once() {
    let faults = Faults {
        withhold_ack: vec![2],
        ..Faults::default()
    };
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], faults);
    let mut s = settings(&hub);
    s.token_lifetime = Duration::from_secs(3);
    let sink = run(s).await;
    sink.send(0);
    hub.wait_for(WAIT, "message 1", |log| log.acked().count() == 1)
        .await;
    sink.send(1);
    // Message 2 gets no PUBACK: the renewal gives up on it and sends it on the new connection.
    let log = hub
        .wait_for(WAIT, "reading 1 acknowledged", |log| {
            acked_numbers(log).contains(&1)
        })
        .await;
    sink.drained("after the resend").await;
    assert_eq!(
        all_numbers(&log),
        [0, 1, 1],
        "sent twice, acknowledged once"
    );
    let (first, again) = (&log.messages[1], &log.messages[2]);
    assert!(!first.acked && again.acked);
    assert_ne!(
        first.connection, again.connection,
        "resent on the new connection"
    );
    assert_eq!(
        log.closed(&CloseReason::TokenExpired),
        0,
        "{:#?}",
        log.closes
    );
    assert_eq!(log.closed(&CloseReason::ClientDisconnect), 1);
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_drops_the_connection_mid_batch_gets_the_message_again() {
    let faults = Faults {
        drop_without_ack: vec![2],
        ..Faults::default()
    };
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], faults);
    let sink = run(settings(&hub)).await;
    let n = 20;
    for i in 0..n {
        sink.send(i);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let log = hub
        .wait_for(WAIT, "every reading acknowledged", |log| {
            acked_numbers(log).len() as u64 >= n
        })
        .await;
    sink.drained("after the resend").await;
    each_once(&acked_numbers(&log), n);
    let dropped: Vec<u64> = log
        .messages
        .iter()
        .filter(|m| !m.acked)
        .flat_map(|m| numbers(&m.body))
        .collect();
    assert!(!dropped.is_empty(), "the second message was dropped");
    // The dropped readings reached the hub twice (unacked, then acked), everything else once.
    let all = all_numbers(&log);
    for d in &dropped {
        assert_eq!(all.iter().filter(|x| *x == d).count(), 2, "reading {d}");
    }
    assert_eq!(all.len() as u64, n + dropped.len() as u64);
    assert!(log.logins() >= 2, "reconnected");
    assert_eq!(log.closed(&CloseReason::Fault), 1);
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puback_read_together_with_the_end_of_the_connection_is_not_lost() {
    let faults = Faults {
        ack_then_close: vec![1, 3],
        ..Faults::default()
    };
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], faults);
    let sink = run(settings(&hub)).await;
    let n = 12;
    for i in 0..n {
        sink.send(i);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let log = hub
        .wait_for(WAIT, "every reading acknowledged", |log| {
            acked_numbers(log).len() as u64 >= n
        })
        .await;
    sink.drained("after the last PUBACK").await;
    // Acked, then closed: the ack counts, nothing is sent twice.
    each_once(&all_numbers(&log), n);
    assert_eq!(log.closed(&CloseReason::Fault), 2);
    assert!(log.logins() >= 3);
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_budget_holds_messages_until_the_next_utc_day() {
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], Faults::default());
    // The sink's clock: real time shifted to the next 12:00 UTC; the test moves it a day on.
    // Only ever forward: the hub checks the SAS tokens, made from the sink's clock, against
    // real time, so a clock set back more than a token's lifetime would make them expired
    // (this test failed every afternoon when it shifted to noon today).
    let real = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut noon = real - real % 86_400 + 12 * 3600;
    if noon < real {
        noon += 86_400;
    }
    let offset = Arc::new(AtomicI64::new(noon - real));
    let clock_offset = offset.clone();
    let mut s = settings(&hub);
    s.clock = Clock::from_fn(move || {
        let shift = clock_offset.load(Ordering::SeqCst);
        let now = SystemTime::now();
        if shift >= 0 {
            now + Duration::from_secs(shift.unsigned_abs())
        } else {
            now - Duration::from_secs(shift.unsigned_abs())
        }
    });
    s.daily_message_budget = 2;
    s.message_chunk = 64 * 1024;
    let sink = run(s).await;
    sink.send(0);
    hub.wait_for(WAIT, "message 1", |log| log.acked().count() == 1)
        .await;
    sink.send(1);
    hub.wait_for(WAIT, "message 2", |log| log.acked().count() == 2)
        .await;
    sink.send(2);
    sink.send(3);
    sink.health_says("daily message budget used up (2/2)").await;
    assert_eq!(hub.log().messages.len(), 2, "nothing sent over the budget");
    assert_eq!(sink.spool.len(), 2, "the rest stays spooled");
    assert_eq!(
        sink.health.status().counters.get("messages_today"),
        Some(&2)
    );
    // Midnight passes: the rest goes, in one message.
    offset.fetch_add(86_400, Ordering::SeqCst);
    let log = hub
        .wait_for(WAIT, "the held readings on the next day", |log| {
            acked_numbers(log).len() == 4
        })
        .await;
    assert_eq!(acked_numbers(&log), [0, 1, 2, 3]);
    sink.drained("on the next day").await;
    let today = log.messages.len() as u64 - 2;
    assert_eq!(
        sink.health.status().counters.get("messages_today"),
        Some(&today)
    );
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_split_into_messages_under_256_kib() {
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], Faults::default());
    let mut s = settings(&hub);
    s.interval = Duration::from_secs(1);
    let size = reading(0).json().len();
    let n = (600 * 1024 / size) as u64 + 1;
    let sink = run(s).await;
    for i in 0..n {
        sink.send(i);
    }
    let log = hub
        .wait_for(WAIT, "every reading acknowledged", |log| {
            acked_numbers(log).len() as u64 >= n
        })
        .await;
    sink.drained("after the backlog").await;
    each_once(&all_numbers(&log), n);
    assert!(log.messages.len() >= 3, "{} messages", log.messages.len());
    for m in &log.messages {
        assert!(m.size <= 256 * 1024, "a message of {} bytes", m.size);
    }
    assert!(
        log.messages.iter().any(|m| m.size > 200 * 1024),
        "full messages: {:?}",
        log.messages.iter().map(|m| m.size).collect::<Vec<_>>()
    );
    assert!(
        log.closes
            .iter()
            .all(|c| !matches!(c.reason, CloseReason::TooLarge(_)))
    );
    sink.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_with_code_5_and_readings_stay_spooled() {
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], Faults::default());
    let mut s = settings(&hub);
    s.connection_string = s
        .connection_string
        .replace(&base64_key(KEY), &base64_key(b"not the device key"));
    let sink = run(s).await;
    sink.send(7);
    let log = hub
        .wait_for(WAIT, "two refused logins", |log| {
            log.connects.iter().filter(|c| c.code == 5).count() >= 2
        })
        .await;
    assert!(
        log.connects[0].reason.contains("signature"),
        "{:?}",
        log.connects[0]
    );
    sink.health_says("not authorized").await;
    assert!(log.messages.is_empty());
    assert_eq!(sink.spool.len(), 1);
    // The hub keeps refusing: only the hard stop ends the sink; the reading stays spooled.
    let spool = sink.spool.clone();
    sink.end(true).await;
    assert_eq!(spool.len(), 1);
}

fn base64_key(key: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_authenticates_with_an_x509_certificate() {
    let device = FakeDevice {
        device_id: "meter-1".to_owned(),
        module_id: Some("p1gw".to_owned()),
        key: None,
    };
    let hub = hub(vec![device], Faults::default());
    let mut s = settings(&hub);
    assert!(s.connection_string.ends_with("ModuleId=p1gw;x509=true"));
    s.client = Some(hub.issue_client_cert("meter-1/p1gw"));
    let sink = run(s).await;
    sink.send(1);
    let log = hub
        .wait_for(WAIT, "the module's message", |log| log.acked().count() == 1)
        .await;
    let c = &log.connects[0];
    assert_eq!(c.client_id, "meter-1/p1gw");
    assert_eq!(
        c.username,
        "fake-hub.azure-devices.net/meter-1/p1gw/?api-version=2021-04-12"
    );
    assert_eq!(c.expiry, None, "no token");
    assert!(
        log.messages[0]
            .topic
            .starts_with("devices/meter-1/modules/p1gw/messages/events/"),
        "{}",
        log.messages[0].topic
    );
    sink.drained("after the PUBACK").await;
    sink.finish().await;
}

/// The fake itself: QoS 2 and a foreign topic close the connection, as the hub does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_hub_closes_on_qos_2_and_on_a_foreign_topic() {
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], Faults::default());
    let sink = crate::build(via_localhost(settings(&hub))).expect("build");
    for (topic, qos, reason) in [
        (
            "devices/meter-1/messages/events/",
            rumqttc::QoS::ExactlyOnce,
            CloseReason::Qos2,
        ),
        (
            "devices/meter-2/messages/events/",
            rumqttc::QoS::AtLeastOnce,
            CloseReason::BadTopic("devices/meter-2/messages/events/".to_owned()),
        ),
    ] {
        let token = crate::sas::token(
            "fake-hub.azure-devices.net/devices/meter-1",
            KEY,
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock")
                .as_secs()
                + 60,
        );
        let options = sink.device.options(sink.settings(), &sink.tls, Some(token));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
        client
            .publish(topic, qos, false, b"{}".to_vec())
            .await
            .expect("queued");
        let ended = tokio::time::timeout(WAIT, async {
            loop {
                if eventloop.poll().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the hub closed the connection");
        hub.wait_for(WAIT, "the close", |log| log.closed(&reason) == 1)
            .await;
    }
    assert!(hub.log().messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_budget_survives_a_restart() {
    let hub = hub(vec![FakeDevice::sas("meter-1", KEY)], Faults::default());
    let budgeted = || {
        let mut s = settings(&hub);
        s.daily_message_budget = 2;
        s.message_chunk = 64 * 1024;
        s
    };
    let sink = run(budgeted()).await;
    sink.send(0);
    hub.wait_for(WAIT, "message 1", |log| log.acked().count() == 1)
        .await;
    sink.send(1);
    hub.wait_for(WAIT, "message 2", |log| log.acked().count() == 2)
        .await;
    sink.drained("both sent").await;
    // The sink (or p1gw) restarts on the same spool the same UTC day: the budget goes on.
    let sink = sink.restart(budgeted()).await;
    sink.send(2);
    sink.health_says("daily message budget used up (2/2)").await;
    assert_eq!(
        hub.log().messages.len(),
        2,
        "nothing sent over the budget after the restart"
    );
    assert_eq!(sink.spool.len(), 1, "the reading stays spooled");
    assert_eq!(
        sink.health.status().counters.get("messages_today"),
        Some(&2)
    );
    sink.end(true).await;
}
