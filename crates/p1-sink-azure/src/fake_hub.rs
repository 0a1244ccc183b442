//! A fake Azure IoT Hub for tests (this crate's, and p1gw's end-to-end test through the
//! `fake-hub` feature): an MQTT 3.1.1 server over TLS that checks what the real hub checks.
//!
//! There is no IoT Hub to test against here, so this one does what the hub does to a device
//! client, on 127.0.0.1 with a test CA of its own (rcgen; trust it with [`FakeHub::ca_pem`]):
//!
//! * CONNECT: the client id is a known device (`{device}` or `{device}/{module}`); the user
//!   name is `{host}/{client id}/?api-version=2021-04-12`; the password is a SAS token whose
//!   `sr` is the device's resource URI, whose `se` is in the future and whose signature,
//!   recomputed with the device key, matches; or there is no password and the TLS client
//!   certificate is the one issued for the device ([`FakeHub::issue_client_cert`]). Anything
//!   else: CONNACK 5 (not authorized), then close.
//! * One connection per device: a second CONNECT of the same client id closes the first.
//! * The hub closes the connection when the token expires (at `se`), and when 1.5 times the
//!   keep-alive passes without a packet.
//! * PUBLISH: QoS 2 closes the connection; the topic must be the device's events topic
//!   (`devices/{device}/messages/events/`, or the module's) followed by a property bag, which
//!   is parsed (URL-decoded); a message over 256 KiB (body + property names and values, system
//!   properties' values) closes the connection; QoS 1 is PUBACKed.
//! * PINGREQ → PINGRESP, SUBSCRIBE to `$iothub/…` → SUBACK, DISCONNECT → close.
//!
//! Everything is logged ([`HubLog`]); tests wait for conditions on it under a deadline.
//! [`Faults`] make it drop a connection instead of PUBACKing a given message, withhold a
//! PUBACK, or PUBACK and close in one go.
//!
//! The hub runs on a thread of its own with its own tokio runtime, so it serves blocking tests
//! and async tests (even paused-clock ones) alike; it stops when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use percent_encoding::percent_decode_str;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnAck, Packet, PubAck, Publish, SubAck, SubscribeReasonCode};
use rumqttc::{ConnectReturnCode, mqttbytes};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::ClientIdentity;
use crate::config::{API_VERSION, MAX_MESSAGE_BYTES};

/// The largest packet read at all (larger ones close the connection).
const MAX_PACKET: usize = 2 * 1024 * 1024;

/// A device the hub knows.
#[derive(Debug, Clone)]
pub struct FakeDevice {
    /// Device id.
    pub device_id: String,
    /// Module id, for a module identity.
    pub module_id: Option<String>,
    /// The symmetric key (decoded) for SAS tokens; `None`: X.509 only.
    pub key: Option<Vec<u8>>,
}

impl FakeDevice {
    /// A device with a SAS key.
    pub fn sas(device_id: &str, key: &[u8]) -> FakeDevice {
        FakeDevice {
            device_id: device_id.to_owned(),
            module_id: None,
            key: Some(key.to_vec()),
        }
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(m) => format!("{}/{m}", self.device_id),
            None => self.device_id.clone(),
        }
    }
}

/// Misbehaviour on purpose, by the number of the PUBLISH (1-based, over all connections).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the connection on these PUBLISHes instead of PUBACKing them (logged unacked).
    pub drop_without_ack: Vec<usize>,
    /// PUBACK these and close the connection in the same write (rumqttc then reads the ack
    /// together with the end of the connection).
    pub ack_then_close: Vec<usize>,
    /// Never PUBACK these, but keep the connection (logged unacked).
    pub withhold_ack: Vec<usize>,
}

/// How the fake hub behaves.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub's host name as tokens and user names carry it.
    pub host_name: String,
    /// Known devices.
    pub devices: Vec<FakeDevice>,
    /// Faults to inject.
    pub faults: Faults,
    /// The message size limit (IoT Hub: 256 KiB).
    pub max_message_bytes: usize,
}

impl HubConfig {
    /// A hub `fake-hub.azure-devices.net` with `devices`, no faults, the real size limit.
    pub fn new(devices: Vec<FakeDevice>) -> HubConfig {
        HubConfig {
            host_name: "fake-hub.azure-devices.net".to_owned(),
            devices,
            faults: Faults::default(),
            max_message_bytes: MAX_MESSAGE_BYTES,
        }
    }
}

/// One CONNECT and the hub's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The connection's number (1-based).
    pub connection: u64,
    /// Client id sent.
    pub client_id: String,
    /// User name sent.
    pub username: String,
    /// CONNACK return code: 0 accepted, 5 not authorized.
    pub code: u8,
    /// Why it was refused (empty when accepted).
    pub reason: String,
    /// The token's expiry (Unix seconds), for SAS logins.
    pub expiry: Option<u64>,
    /// Keep-alive asked for.
    pub keep_alive: u16,
    /// Clean session asked for.
    pub clean_session: bool,
}

/// A device-to-cloud message the hub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The connection it came on.
    pub connection: u64,
    /// The sender's client id.
    pub client_id: String,
    /// The whole topic.
    pub topic: String,
    /// The property bag, decoded, in order.
    pub properties: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The hub's size count (body + properties).
    pub size: usize,
    /// Whether the hub PUBACKed it (a message dropped by a fault is not).
    pub acked: bool,
}

impl Message {
    /// The value of property `name`.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client closed the socket without DISCONNECT.
    ClientClosed,
    /// The SAS token expired.
    TokenExpired,
    /// No packet within 1.5 × keep-alive.
    KeepAlive,
    /// A QoS 2 PUBLISH.
    Qos2,
    /// A PUBLISH to a topic the device may not use.
    BadTopic(String),
    /// A message over the size limit (its size).
    TooLarge(usize),
    /// A CONNECT that was refused.
    Refused,
    /// A second connection of the same device.
    Displaced,
    /// A fault injected on purpose.
    Fault,
    /// Anything else (a broken packet, a TLS error…).
    Protocol(String),
}

/// One closed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The connection's number.
    pub connection: u64,
    /// Why.
    pub reason: CloseReason,
}

/// Everything the hub saw, in order.
#[derive(Debug, Clone, Default)]
pub struct HubLog {
    /// CONNECTs.
    pub connects: Vec<Connect>,
    /// Device-to-cloud messages (also those later dropped by a fault).
    pub messages: Vec<Message>,
    /// Closed connections.
    pub closes: Vec<Close>,
    /// SUBSCRIBE topic filters, by connection.
    pub subscriptions: Vec<(u64, String)>,
}

impl HubLog {
    /// The acknowledged messages.
    pub fn acked(&self) -> impl Iterator<Item = &Message> {
        self.messages.iter().filter(|m| m.acked)
    }

    /// Accepted logins.
    pub fn logins(&self) -> usize {
        self.connects.iter().filter(|c| c.code == 0).count()
    }

    /// Connections closed for `reason`.
    pub fn closed(&self, reason: &CloseReason) -> usize {
        self.closes.iter().filter(|c| &c.reason == reason).count()
    }
}

/// State shared between the hub's thread and the test.
struct Shared {
    config: HubConfig,
    log: Mutex<HubLog>,
    changed: watch::Sender<u64>,
    /// Client certificates issued, by client id (DER).
    issued: Mutex<HashMap<String, Vec<u8>>>,
    /// Live connections by client id: their number and how to close them.
    live: Mutex<HashMap<String, (u64, CancellationToken)>>,
    publishes: Mutex<usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn record(&self, f: impl FnOnce(&mut HubLog)) {
        f(&mut lock(&self.log));
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A running fake hub; stops when dropped.
pub struct FakeHub {
    addr: SocketAddr,
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
    shared: Arc<Shared>,
    changed: watch::Receiver<u64>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHub").field("addr", &self.addr).finish()
    }
}

impl FakeHub {
    /// Starts a hub on 127.0.0.1 (a free port) with a fresh test CA.
    ///
    /// # Panics
    /// When the certificates cannot be made or the port not bound (a broken test machine).
    pub fn start(config: HubConfig) -> FakeHub {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "p1gw fake IoT Hub test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("server certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(issuer.der().clone()).expect("CA root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake hub");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("address");
        let (changed_tx, changed) = watch::channel(0);
        let shared = Arc::new(Shared {
            config,
            log: Mutex::new(HubLog::default()),
            changed: changed_tx,
            issued: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            publishes: Mutex::new(0),
        });
        let stop = CancellationToken::new();
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("fake-iot-hub".to_owned())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("fake hub runtime");
                    runtime.block_on(serve(listener, acceptor, shared, stop));
                    runtime.shutdown_background();
                })
                .expect("fake hub thread")
        };
        FakeHub {
            addr,
            ca_pem: issuer.pem(),
            issuer,
            shared,
            changed,
            stop,
            thread: Some(thread),
        }
    }

    /// The port it listens on (127.0.0.1 and `localhost`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The hub's host name (what tokens and user names name).
    pub fn host_name(&self) -> &str {
        &self.shared.config.host_name
    }

    /// The test CA's certificate, PEM: trust it to reach the hub at `localhost`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate for `client_id`, signed by the test CA; the hub then takes an
    /// X.509 login of that client id with it.
    ///
    /// # Panics
    /// When rcgen fails.
    pub fn issue_client_cert(&self, client_id: &str) -> ClientIdentity {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, client_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("client certificate");
        lock(&self.shared.issued).insert(client_id.to_owned(), cert.der().to_vec());
        ClientIdentity {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }

    /// A connection string for device `index` of the config, with `HostName` the hub's name.
    ///
    /// # Panics
    /// For an index out of range.
    pub fn connection_string(&self, index: usize) -> String {
        use base64::Engine as _;
        let d = &self.shared.config.devices[index];
        let mut s = format!("HostName={};DeviceId={}", self.host_name(), d.device_id);
        if let Some(m) = &d.module_id {
            s.push_str(&format!(";ModuleId={m}"));
        }
        match &d.key {
            Some(key) => s.push_str(&format!(
                ";SharedAccessKey={}",
                base64::engine::general_purpose::STANDARD.encode(key)
            )),
            None => s.push_str(";x509=true"),
        }
        s
    }

    /// What the hub saw so far.
    pub fn log(&self) -> HubLog {
        lock(&self.shared.log).clone()
    }

    /// Waits until `pred` holds for the log, at most `limit`; panics naming `what` otherwise.
    ///
    /// # Panics
    /// When `limit` passes first.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&HubLog) -> bool,
    ) -> HubLog {
        let mut changed = self.changed.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            changed.borrow_and_update();
            let log = self.log();
            if pred(&log) {
                return log;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("timed out after {limit:?} waiting for {what}; the hub saw {log:#?}"),
            }
        }
    }

    /// [`FakeHub::wait_for`] for tests without a runtime.
    ///
    /// # Panics
    /// When `limit` passes first.
    #[allow(
        clippy::disallowed_types,
        reason = "blocking tests run no tokio runtime: the deadline uses std::time::Instant"
    )]
    pub fn wait_for_blocking(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&HubLog) -> bool,
    ) -> HubLog {
        let start = std::time::Instant::now();
        loop {
            let log = self.log();
            if pred(&log) {
                return log;
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; the hub saw {log:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut n = 0;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else { continue };
        n += 1;
        let (acceptor, shared, stop) = (acceptor.clone(), shared.clone(), stop.clone());
        tokio::spawn(async move {
            let reason = tokio::select! {
                r = connection(n, tcp, acceptor, &shared) => r,
                () = stop.cancelled() => return,
            };
            shared.record(|log| {
                log.closes.push(Close {
                    connection: n,
                    reason,
                });
            });
        });
    }
}

type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

async fn write(stream: &mut Stream, packet: Packet) -> Result<(), CloseReason> {
    let mut out = BytesMut::new();
    packet
        .write(&mut out, MAX_PACKET)
        .map_err(|e| CloseReason::Protocol(format!("encode: {e:?}")))?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| CloseReason::Protocol(format!("write: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| CloseReason::Protocol(format!("flush: {e}")))
}

/// Reads the next packet; `None` at a clean end of stream.
async fn read(stream: &mut Stream, buf: &mut BytesMut) -> Result<Option<Packet>, CloseReason> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(packet) => return Ok(Some(packet)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(CloseReason::Protocol(format!("bad packet: {e:?}"))),
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(CloseReason::Protocol(format!("read: {e}"))),
        }
    }
}

/// Serves one connection; returns why it ended.
async fn connection(
    id: u64,
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    shared: &Shared,
) -> CloseReason {
    let mut stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return CloseReason::Protocol(format!("TLS: {e}")),
        Err(_) => return CloseReason::Protocol("TLS handshake timed out".to_owned()),
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let mut buf = BytesMut::new();
    let connect =
        match tokio::time::timeout(Duration::from_secs(10), read(&mut stream, &mut buf)).await {
            Ok(Ok(Some(Packet::Connect(c)))) => c,
            Ok(Ok(Some(other))) => {
                return CloseReason::Protocol(format!("first packet not CONNECT: {other:?}"));
            }
            Ok(Ok(None)) => return CloseReason::ClientClosed,
            Ok(Err(reason)) => return reason,
            Err(_) => return CloseReason::Protocol("no CONNECT in time".to_owned()),
        };
    let login = connect
        .login
        .clone()
        .unwrap_or_else(|| rumqttc::Login::new("", ""));
    let checked = check_connect(
        &shared.config,
        &connect.client_id,
        &login.username,
        &login.password,
        peer.as_deref(),
        &lock(&shared.issued),
        SystemTime::now(),
    );
    let record = |code: u8, reason: String, expiry: Option<u64>| {
        shared.record(|log| {
            log.connects.push(Connect {
                connection: id,
                client_id: connect.client_id.clone(),
                username: login.username.clone(),
                code,
                reason,
                expiry,
                keep_alive: connect.keep_alive,
                clean_session: connect.clean_session,
            });
        });
    };
    let (device, expiry) = match checked {
        Ok(ok) => ok,
        Err(reason) => {
            record(5, reason, None);
            let refused = Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false));
            write(&mut stream, refused).await.ok();
            return CloseReason::Refused;
        }
    };
    // One connection per device: a new one closes the old one.
    let kill = CancellationToken::new();
    if let Some((_, old)) = lock(&shared.live).insert(connect.client_id.clone(), (id, kill.clone()))
    {
        old.cancel();
    }
    record(0, String::new(), expiry);
    let reason = session(
        id,
        &mut stream,
        &mut buf,
        shared,
        &device,
        &connect,
        expiry,
        &kill,
    )
    .await;
    {
        let mut live = lock(&shared.live);
        if live.get(&connect.client_id).is_some_and(|(n, _)| *n == id) {
            live.remove(&connect.client_id);
        }
    }
    reason
}

/// After the CONNACK: packets until the connection ends.
#[allow(
    clippy::too_many_arguments,
    reason = "one connection's state, in one place"
)]
async fn session(
    id: u64,
    stream: &mut Stream,
    buf: &mut BytesMut,
    shared: &Shared,
    device: &FakeDevice,
    connect: &rumqttc::mqttbytes::v4::Connect,
    expiry: Option<u64>,
    kill: &CancellationToken,
) -> CloseReason {
    if let Err(reason) = write(
        stream,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await
    {
        return reason;
    }
    let expires_in = expiry.map(|se| {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(se);
        at.duration_since(SystemTime::now()).unwrap_or_default()
    });
    let expires =
        tokio::time::Instant::now() + expires_in.unwrap_or(Duration::from_secs(86_400 * 365));
    let idle = Duration::from_millis(u64::from(connect.keep_alive) * 1500);
    let events = match &device.module_id {
        Some(m) => format!("devices/{}/modules/{m}/messages/events/", device.device_id),
        None => format!("devices/{}/messages/events/", device.device_id),
    };
    loop {
        let packet = tokio::select! {
            () = kill.cancelled() => return CloseReason::Displaced,
            () = tokio::time::sleep_until(expires) => return CloseReason::TokenExpired,
            r = tokio::time::timeout(idle.max(Duration::from_millis(500)), read(stream, buf)) => match r {
                Err(_) => return CloseReason::KeepAlive,
                Ok(Err(reason)) => return reason,
                Ok(Ok(None)) => return CloseReason::ClientClosed,
                Ok(Ok(Some(p))) => p,
            },
        };
        match packet {
            Packet::Publish(p) => {
                if let Some(reason) = publish(id, stream, shared, device, &events, p).await {
                    return reason;
                }
            }
            Packet::Subscribe(s) => {
                let codes = s
                    .filters
                    .iter()
                    .map(|f| {
                        if f.path.starts_with("$iothub/") {
                            SubscribeReasonCode::Success(QoS::AtLeastOnce)
                        } else {
                            SubscribeReasonCode::Failure
                        }
                    })
                    .collect();
                shared.record(|log| {
                    log.subscriptions
                        .extend(s.filters.iter().map(|f| (id, f.path.clone())));
                });
                if let Err(reason) = write(stream, Packet::SubAck(SubAck::new(s.pkid, codes))).await
                {
                    return reason;
                }
            }
            Packet::PingReq => {
                if let Err(reason) = write(stream, Packet::PingResp).await {
                    return reason;
                }
            }
            Packet::Disconnect => return CloseReason::ClientDisconnect,
            Packet::Connect(_) => return CloseReason::Protocol("a second CONNECT".to_owned()),
            _ => {}
        }
    }
}

/// One PUBLISH; `Some` when the connection ends because of it.
async fn publish(
    id: u64,
    stream: &mut Stream,
    shared: &Shared,
    device: &FakeDevice,
    events: &str,
    p: Publish,
) -> Option<CloseReason> {
    if p.qos == QoS::ExactlyOnce {
        return Some(CloseReason::Qos2);
    }
    let Some(bag) = p.topic.strip_prefix(events) else {
        return Some(CloseReason::BadTopic(p.topic.clone()));
    };
    let properties = parse_bag(bag);
    let size = p.payload.len()
        + properties
            .iter()
            .map(|(k, v)| {
                if k.starts_with("$.") {
                    v.len()
                } else {
                    k.len() + v.len()
                }
            })
            .sum::<usize>();
    if size > shared.config.max_message_bytes {
        return Some(CloseReason::TooLarge(size));
    }
    let n = {
        let mut count = lock(&shared.publishes);
        *count += 1;
        *count
    };
    let faults = &shared.config.faults;
    let drop = faults.drop_without_ack.contains(&n);
    let close_after = faults.ack_then_close.contains(&n);
    let acked = p.qos == QoS::AtLeastOnce && !drop && !faults.withhold_ack.contains(&n);
    shared.record(|log| {
        log.messages.push(Message {
            connection: id,
            client_id: device.client_id(),
            topic: p.topic.clone(),
            properties,
            body: p.payload.to_vec(),
            size,
            acked,
        });
    });
    if drop {
        return Some(CloseReason::Fault);
    }
    if acked && let Err(reason) = write(stream, Packet::PubAck(PubAck::new(p.pkid))).await {
        return Some(reason);
    }
    if close_after {
        stream.get_mut().0.shutdown().await.ok();
        return Some(CloseReason::Fault);
    }
    None
}

/// `k=v&k=v`, URL-decoded.
fn parse_bag(bag: &str) -> Vec<(String, String)> {
    bag.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// What the hub checks on CONNECT: the device, the user name, the SAS token or the client
/// certificate. `Ok` with the device and the token's expiry; `Err` with the reason.
pub fn check_connect(
    config: &HubConfig,
    client_id: &str,
    username: &str,
    password: &str,
    peer_cert: Option<&[u8]>,
    issued: &HashMap<String, Vec<u8>>,
    now: SystemTime,
) -> Result<(FakeDevice, Option<u64>), String> {
    let device = config
        .devices
        .iter()
        .find(|d| d.client_id() == client_id)
        .ok_or_else(|| format!("unknown device {client_id:?}"))?;
    let prefix = format!("{}/{client_id}/?", config.host_name);
    let query = username
        .strip_prefix(&prefix)
        .ok_or_else(|| format!("user name {username:?} is not {prefix}…"))?;
    let api = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("api-version="))
        .ok_or_else(|| "user name without api-version".to_owned())?;
    if api != API_VERSION {
        return Err(format!("api-version {api} (expected {API_VERSION})"));
    }
    if password.is_empty() {
        let expected = issued
            .get(client_id)
            .ok_or_else(|| "no password and no certificate registered for the device".to_owned())?;
        return match peer_cert {
            Some(cert) if cert == expected.as_slice() => Ok((device.clone(), None)),
            Some(_) => Err("the client certificate is not the device's".to_owned()),
            None => Err("no password and no client certificate".to_owned()),
        };
    }
    let key = device
        .key
        .as_ref()
        .ok_or_else(|| "a SAS token for an X.509 device".to_owned())?;
    let fields = password
        .strip_prefix("SharedAccessSignature ")
        .ok_or_else(|| "password is not a SharedAccessSignature".to_owned())?;
    let mut sr = None;
    let mut sig = None;
    let mut se = None;
    for kv in fields.split('&') {
        match kv.split_once('=') {
            Some(("sr", v)) => sr = Some(v),
            Some(("sig", v)) => sig = Some(v),
            Some(("se", v)) => se = Some(v),
            Some(("skn", _)) => return Err("skn: a policy token, not a device token".to_owned()),
            _ => return Err(format!("token part {kv:?}")),
        }
    }
    let (Some(sr), Some(sig), Some(se)) = (sr, sig, se) else {
        return Err("token without sr, sig or se".to_owned());
    };
    let resource = match &device.module_id {
        Some(m) => format!(
            "{}/devices/{}/modules/{m}",
            config.host_name, device.device_id
        ),
        None => format!("{}/devices/{}", config.host_name, device.device_id),
    };
    if decode(sr) != resource {
        return Err(format!("sr {:?} is not {resource:?}", decode(sr)));
    }
    let expiry: u64 = se
        .parse()
        .map_err(|_| format!("se {se:?} is not a number"))?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if expiry <= now {
        return Err(format!("token expired at {expiry} (now {now})"));
    }
    let expected = crate::sas::sign(key, &format!("{sr}\n{se}"));
    if decode(sig) != expected {
        return Err("signature does not match".to_owned());
    }
    Ok((device.clone(), Some(expiry)))
}
