//! The worker: p1-core's spool-backed [`Pipelined`] worker with [`LineEncoder`] for intake and
//! [`Writer`] for delivery. Backoff, spooling, health and the `p1gw_sink_*` metrics are
//! p1-core's; this module owns the HTTP request and the mapping of answers.
//!
//! # Batching and requests in flight
//!
//! p1-core hands [`Writer::send`] runs of up to `batch_size` spooled records, already
//! concatenated into one buffer (each record is a reading's lines, encoded once at intake: the
//! buffer is the request body). With fewer than `batch_size` waiting, p1-core waits up to
//! `batch_interval` for more, or until the daemon stops. Up to `max_in_flight` requests run at
//! once; each batch is deleted from the spool when its own request got a 204, in whatever order
//! they complete. That is safe because a write is idempotent in InfluxDB (one point per series
//! and timestamp): a batch written twice, or after a newer one, leaves the same points.
//!
//! # Answers
//!
//! Only InfluxDB's own acknowledgement deletes readings, and only the database's own refusal of
//! points drops any. An answer "comes from the database" when it carries InfluxDB's
//! `X-Influxdb-Version` or `X-Influxdb-Build` header (InfluxDB 1.x and 2.x send them on every
//! answer, and a proxy passes them on) or is VictoriaMetrics' own error (`X-Server-Hostname`
//! and a body beginning `remoteAddr:`); a proxy's, load balancer's or captive portal's own
//! answer has neither. Redirects are never followed.
//!
//! | answer | outcome |
//! |---|---|
//! | 204 | acknowledged |
//! | other 2xx | refused (`unexpected_answer`): not a write's answer (a login or portal page?); kept, sink degraded |
//! | 3xx | refused (`redirect`): kept; the sink shows as failed in /readyz with where the URL points |
//! | 429, 503 | transient; wait as `Retry-After` says (seconds or HTTP date, 1 s to 15 min) |
//! | 408, other 5xx, no answer, timeout | transient (p1-core's backoff) |
//! | 401, 403 | refused (`auth`): kept, retried with backoff, logged once; the password or token is read again (through the [`SecretReader`]) before the next request |
//! | 404 | refused (`not_found`): the database or bucket is missing; kept, retried, logged once |
//! | 413 | the batch is split in halves between readings and each half written; one reading alone too large is dropped if the database said so, kept (`too_large`) if a proxy did |
//! | other 4xx from InfluxDB refusing points ("partial write", "unable to parse", a field type conflict, 422) | the batch is bisected between readings until each refused reading stands alone; only those are dropped and counted (`p1gw_sink_dropped_total{reason="rejected"}`), with the refused line in the log; the rest is written |
//! | other 4xx from the database | refused (`refused`): a request it refuses as a whole (405, bad gzip, …); kept |
//! | other 4xx not from the database (nginx's 400 for plain HTTP to an HTTPS port, 407, 426, 431, …) | refused (`not_influxdb`): kept |
//!
//! Messages carry the status and the server's body, never a password or token (those travel
//! only in the `Authorization` header, marked sensitive).

use std::io::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p1_core::sink::BoxFuture;
use p1_core::{
    Batch, Batches, DeliveryError, HealthHandle, Pipelined, Reading, Sink, SinkContext, SinkError,
};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use tokio::sync::broadcast;

use crate::config::{InfluxConfig, Precision, Secret, Target};
use crate::encode::LineEncoder;
use crate::error::BuildError;

/// The sink kind in config.
pub const KIND: &str = "influx";

/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// The shortest wait after a `Retry-After`: a server answering `0` (or a past date) again and
/// again must not make the sink spin.
pub const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The most of a server's answer quoted in a message.
const MAX_BODY_QUOTED: usize = 512;

/// Reads the password (v1) or token (v2) again, e.g. from its file, after the server refused
/// the one in use. p1gw supplies it (this crate reads no files); its error names the source,
/// never the secret.
pub type SecretReader = Arc<dyn Fn() -> Result<Secret, String> + Send + Sync>;

/// An InfluxDB sink, built once from its settings; [`Influx::sink`] makes a worker (one per
/// start of the sink; they share the HTTP client and its connections).
#[derive(Clone)]
pub struct Influx {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Influx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Influx")
            .field("url", &self.write_url())
            .field("target", &self.inner.target)
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Inner {
    client: reqwest::Client,
    write_url: reqwest::Url,
    auth: Auth,
    reread: Option<SecretReader>,
    target: String,
    precision: Precision,
    batch_size: usize,
    batch_interval: Duration,
    max_in_flight: usize,
    gzip: bool,
    backoff: Option<(Duration, Duration)>,
}

/// The credentials sent with each request.
#[derive(Debug, Clone)]
enum Auth {
    None,
    /// v1: HTTP basic authentication.
    Basic(String, Secret),
    /// v2: `Authorization: Token …`, marked sensitive.
    Token(HeaderValue),
}

impl Auth {
    /// The same kind of credentials with `secret` in place of the old one.
    fn with(&self, secret: Secret) -> Result<Auth, BuildError> {
        Ok(match self {
            Auth::None => Auth::None,
            Auth::Basic(user, _) => {
                HeaderValue::from_str(secret.expose())
                    .map_err(|_| BuildError::Credentials("password"))?;
                Auth::Basic(user.clone(), secret)
            }
            Auth::Token(_) => Auth::Token(token_header(&secret)?),
        })
    }
}

fn token_header(token: &Secret) -> Result<HeaderValue, BuildError> {
    let mut value = HeaderValue::from_str(&format!("Token {}", token.expose()))
        .map_err(|_| BuildError::Credentials("token"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Influx {
    /// Checks the settings and sets up the HTTP client (rustls with the *ring* provider; it is
    /// installed as the process default when none is yet). Connects to nothing.
    ///
    /// # Errors
    ///
    /// A URL that is not `http(s)://host…` without query or credentials, credentials that
    /// cannot be sent in a header, `batch_size` or `max_in_flight` 0, or a TLS setup failure.
    pub fn new(config: InfluxConfig) -> Result<Self, BuildError> {
        if config.batch_size == 0 {
            return Err(BuildError::BatchSize);
        }
        if config.max_in_flight == 0 {
            return Err(BuildError::MaxInFlight);
        }
        let url_error = |reason: &str| BuildError::Url(reason.to_owned());
        let mut url = reqwest::Url::parse(&config.url).map_err(|e| url_error(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(url_error("expected http:// or https://"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(url_error("no query or fragment; the sink adds its own"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(url_error(
                "no credentials in the URL; use username and a password file",
            ));
        }
        let endpoint = match config.target {
            Target::V1 { .. } => "write",
            Target::V2 { .. } => "api/v2/write",
        };
        let path = format!("{}/{endpoint}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let auth = match &config.target {
            Target::V1 {
                database,
                retention_policy,
                credentials,
            } => {
                let mut query = url.query_pairs_mut();
                query.append_pair("db", database);
                if let Some(rp) = retention_policy {
                    query.append_pair("rp", rp);
                }
                query.append_pair("precision", config.precision.v1_param());
                drop(query);
                match credentials {
                    Some((user, password)) => {
                        HeaderValue::from_str(user)
                            .map_err(|_| BuildError::Credentials("username"))?;
                        Auth::Basic(user.clone(), Secret::new("")).with(password.clone())?
                    }
                    None => Auth::None,
                }
            }
            Target::V2 { org, bucket, token } => {
                url.query_pairs_mut()
                    .append_pair("org", org)
                    .append_pair("bucket", bucket)
                    .append_pair("precision", config.precision.v2_param());
                Auth::Token(token_header(token)?)
            }
        };
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Another thread may win the race; either way a provider is installed.
            rustls::crypto::ring::default_provider()
                .install_default()
                .unwrap_or(());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("p1gw/", env!("CARGO_PKG_VERSION")))
            // A redirect's target answers a GET without the body (301–303), or a login page
            // answers 200: neither is a write. The 3xx itself is the answer (see the module doc).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .map_err(|e| BuildError::Client(error_chain(&e)))?;
        Ok(Influx {
            inner: Arc::new(Inner {
                client,
                write_url: url,
                auth,
                reread: None,
                target: config.target.describe(),
                precision: config.precision,
                batch_size: config.batch_size,
                batch_interval: config.batch_interval,
                max_in_flight: config.max_in_flight,
                gzip: config.gzip,
                backoff: None,
            }),
        })
    }

    /// The URL written to (no secrets in it).
    pub fn write_url(&self) -> &str {
        self.inner.write_url.as_str()
    }

    /// Where to read the password or token again after a 401 or 403 (the user may have
    /// corrected the file meanwhile). Without one, the refused credentials are sent again.
    #[must_use]
    pub fn with_secret_reader(self, reader: SecretReader) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.reread = Some(reader);
        Influx {
            inner: Arc::new(inner),
        }
    }

    /// Overrides p1-core's retry backoff (1 s to 60 s), for tests.
    #[must_use]
    pub fn with_backoff(self, min: Duration, max: Duration) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.backoff = Some((min, max));
        Influx {
            inner: Arc::new(inner),
        }
    }

    /// A worker, ready to run.
    pub fn sink(&self) -> Box<dyn Sink> {
        Box::new(InfluxSink {
            influx: self.clone(),
        })
    }

    /// A writer: what the worker sends batches with.
    pub fn writer(&self, sink: &str) -> Writer {
        self.writer_with(sink, None)
    }

    /// A writer that reports a redirecting URL in the sink's `health` (so /readyz names it).
    pub fn writer_reporting(&self, sink: &str, health: HealthHandle) -> Writer {
        self.writer_with(sink, Some(health))
    }

    fn writer_with(&self, sink: &str, health: Option<HealthHandle>) -> Writer {
        Writer {
            shared: Arc::new(Shared {
                influx: self.clone(),
                sink: sink.to_owned(),
                auth: Mutex::new(self.inner.auth.clone()),
                refused_auth: AtomicBool::new(false),
                health,
                redirected: AtomicBool::new(false),
            }),
        }
    }
}

struct InfluxSink {
    influx: Influx,
}

impl Sink for InfluxSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn run(
        self: Box<Self>,
        input: broadcast::Receiver<Arc<Reading>>,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), SinkError>> {
        let influx = self.influx;
        Box::pin(async move {
            let inner = &influx.inner;
            // The latest stamp of the runs before (a restart of the sink or of p1gw).
            let floor = match cx.spool.sink_state(LAST_STAMP).await {
                Ok(floor) => floor,
                Err(e) => {
                    tracing::warn!(sink = %cx.name, error = %e, "Cannot read the latest timestamp of the last run; a meter clock that went back just before the restart may overwrite points.");
                    None
                }
            };
            let encoder = LineEncoder::new(inner.precision).with_floor(floor);
            let given = encoder.given();
            let keeper = tokio::spawn(keep_latest_stamp(
                given.clone(),
                floor,
                cx.spool.clone(),
                cx.name.clone(),
            ));
            let writer = influx.writer_reporting(&cx.name, cx.health.clone());
            let mut worker = Pipelined::new(KIND, encoder, writer);
            if let Some((min, max)) = inner.backoff {
                worker = worker.with_backoff(min, max);
            }
            let result = Box::new(worker).run(input, cx.clone()).await;
            keeper.abort();
            let latest = given.load(Ordering::Relaxed);
            if latest > floor.unwrap_or(0)
                && let Err(e) = cx.spool.set_sink_state(vec![(LAST_STAMP, latest)]).await
            {
                tracing::debug!(sink = %cx.name, error = %e, "Cannot store the latest timestamp.");
            }
            result
        })
    }
}

/// The spool's sink-state key of the latest stamp given, in nanoseconds since the Unix epoch.
const LAST_STAMP: &str = "influx.last_stamp_ns";

/// How often the latest stamp given is stored beside the spool (when it moved). A crash loses
/// at most this much of it; a meter clock would have to go back within that time, just before
/// the crash, for a reading after the restart to land on an earlier point.
const KEEP_STAMP_EVERY: Duration = Duration::from_secs(5);

/// Stores the encoder's latest stamp in the spool file every [`KEEP_STAMP_EVERY`] while it
/// moves, so that the next run stamps after it ([`LineEncoder::with_floor`]).
async fn keep_latest_stamp(
    given: Arc<std::sync::atomic::AtomicU64>,
    mut stored: Option<u64>,
    spool: p1_core::AsyncSpool,
    sink: String,
) {
    let mut tick = tokio::time::interval(KEEP_STAMP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        tick.tick().await;
        let latest = given.load(Ordering::Relaxed);
        if stored.is_some_and(|s| latest <= s) || latest == 0 {
            continue;
        }
        match spool.set_sink_state(vec![(LAST_STAMP, latest)]).await {
            Ok(()) => {
                stored = Some(latest);
                failed = false;
            }
            Err(e) if !failed => {
                tracing::warn!(sink = %sink, error = %e, "Cannot store the latest timestamp beside the spool.");
                failed = true;
            }
            Err(_) => {}
        }
    }
}

/// Writes batches of spooled records (line protocol) to InfluxDB: p1-core's [`Batches`].
/// Clones share the credentials in use.
#[derive(Clone)]
pub struct Writer {
    shared: Arc<Shared>,
}

struct Shared {
    influx: Influx,
    sink: String,
    /// The credentials in use: replaced when they are read again after a refusal.
    auth: Mutex<Auth>,
    /// The server answered 401 or 403: read the secret again before the next request.
    refused_auth: AtomicBool,
    /// The sink's health, where a redirect marks it failed.
    health: Option<HealthHandle>,
    /// The last answer was a redirect (the sink is marked failed).
    redirected: AtomicBool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("url", &self.shared.influx.write_url())
            .field("sink", &self.shared.sink)
            .finish_non_exhaustive()
    }
}

/// How a write failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// 401/403: the credentials.
    Auth { message: String },
    /// 404: the database or bucket does not exist.
    Missing { message: String },
    /// 413: the body is too large for the server; `database`: InfluxDB itself said so.
    TooLarge { message: String, database: bool },
    /// The database refused points of the body (a parse error, a field type conflict, a
    /// partial write): they can never be written, and what it took stays written.
    Points { message: String },
    /// 3xx: the URL points elsewhere.
    Redirect { message: String },
    /// An answer that neither acknowledges nor refuses points: another 2xx, a proxy's 4xx, a
    /// request the database refuses as a whole. The readings stay spooled.
    Unexpected {
        reason: &'static str,
        message: String,
    },
}

impl Batches for Writer {
    fn max_batch(&self) -> usize {
        self.shared.influx.inner.batch_size
    }

    fn max_in_flight(&self) -> usize {
        self.shared.influx.inner.max_in_flight
    }

    fn linger(&self) -> Duration {
        self.shared.influx.inner.batch_interval
    }

    fn send(&self, batch: Batch) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let shared = self.shared.clone();
        Box::pin(async move { shared.write(batch).await })
    }
}

impl Shared {
    /// Writes one batch; a 413 or a refusal of points bisects it (see the module doc).
    async fn write(&self, batch: Batch) -> Result<(), DeliveryError> {
        if self.refused_auth.swap(false, Ordering::Relaxed) {
            self.read_secret_again().await;
        }
        let records = batch.records;
        let lines = Arc::new(batch.bytes);
        // Parts still to write, as byte ranges that begin and end between readings; a part
        // that is too large or holds a refused point is replaced by its two halves. The batch
        // is deleted only when every part is written or refused: a part not yet sent is never
        // given up for another part's failure.
        let mut parts: Vec<Range<usize>> = Vec::with_capacity(8);
        parts.push(0..lines.len());
        let mut refused = Refused::default();
        while let Some(part) = parts.pop() {
            let failure = match self.post(&lines, part.clone()).await {
                Ok(()) => continue,
                Err(failure) => failure,
            };
            let halves = match &failure {
                Failure::TooLarge { .. } | Failure::Points { .. } => split(&lines, part.clone()),
                _ => None,
            };
            match (failure, halves) {
                (Failure::TooLarge { message, .. } | Failure::Points { message }, Some(cut)) => {
                    tracing::debug!(sink = %self.sink, error = %message, "Batch written in halves.");
                    parts.push(cut..part.end);
                    parts.push(part.start..cut);
                }
                (Failure::Points { message }, None) => {
                    refused.add(&lines[part], message);
                }
                (
                    Failure::TooLarge {
                        message,
                        database: true,
                    },
                    None,
                ) => refused.add(
                    &lines[part],
                    format!("{message} (one reading alone is too large)"),
                ),
                (
                    Failure::TooLarge {
                        message,
                        database: false,
                    },
                    None,
                ) => {
                    return Err(self.outcome(Failure::Unexpected {
                        reason: "too_large",
                        message: format!(
                            "{message}: one reading alone is larger than what is in front of InfluxDB takes (not InfluxDB's answer); raise its body size limit"
                        ),
                    }));
                }
                (failure, _) => return Err(self.outcome(failure)),
            }
        }
        self.answered();
        match refused.first {
            None => {
                tracing::debug!(sink = %self.sink, readings = records, "Written.");
                Ok(())
            }
            Some((line, message)) => Err(DeliveryError::Permanent {
                message: format!(
                    "InfluxDB refused {} of {records} readings, dropped (the others are written): {message}; refused line: {line}",
                    refused.readings
                ),
                records: refused.readings.min(records),
            }),
        }
    }

    /// An answer other than a redirect came: a sink marked failed for one is only degraded now.
    fn answered(&self) {
        if self.redirected.swap(false, Ordering::Relaxed)
            && let Some(health) = &self.health
        {
            health.degraded("the InfluxDB URL no longer redirects");
        }
    }

    fn outcome(&self, failure: Failure) -> DeliveryError {
        let target = &self.influx.inner.target;
        if !matches!(failure, Failure::Redirect { .. }) {
            self.answered();
        }
        match failure {
            Failure::Transient {
                message,
                retry_after,
            } => DeliveryError::Transient {
                message,
                retry_after,
            },
            Failure::Auth { message } => {
                self.refused_auth.store(true, Ordering::Relaxed);
                let what = match &self.influx.inner.auth {
                    Auth::None => {
                        "InfluxDB requires authentication: set username and password_file (or P1GW_INFLUX_PASSWORD)"
                    }
                    Auth::Basic(..) => {
                        "InfluxDB refused the username or password: correct password_file (or P1GW_INFLUX_PASSWORD); it is read again before each retry"
                    }
                    Auth::Token(_) => {
                        "InfluxDB refused the token: correct token_file (or P1GW_INFLUX_TOKEN); it is read again before each retry"
                    }
                };
                DeliveryError::Refused {
                    reason: "auth",
                    message: format!("{what}; {message}"),
                }
            }
            Failure::Missing { message } => DeliveryError::Refused {
                reason: "not_found",
                message: format!(
                    "InfluxDB has no {target}: create it or correct the sink's configuration; {message}"
                ),
            },
            Failure::Redirect { message } => {
                self.redirected.store(true, Ordering::Relaxed);
                if let Some(health) = &self.health {
                    health.failed(message.clone());
                }
                DeliveryError::Refused {
                    reason: "redirect",
                    message,
                }
            }
            Failure::Unexpected { reason, message } => DeliveryError::Refused { reason, message },
            // Only reached through `write`, which bisects these; kept spooled if ever not.
            Failure::TooLarge { message, .. } | Failure::Points { message } => {
                DeliveryError::Refused {
                    reason: "refused",
                    message,
                }
            }
        }
    }

    /// Reads the password or token again, after a 401/403. A failure keeps the old one.
    async fn read_secret_again(&self) {
        let Some(reader) = self.influx.inner.reread.clone() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || reader())
            .await
            .unwrap_or_else(|e| Err(format!("reading it failed: {e}")));
        let current = self.auth.lock().map(|a| a.clone());
        let Ok(current) = current else { return };
        match read
            .map_err(|e| e.to_string())
            .and_then(|secret| current.with(secret).map_err(|e| e.to_string()))
        {
            Ok(auth) => {
                if let Ok(mut slot) = self.auth.lock() {
                    *slot = auth;
                }
            }
            Err(e) => {
                tracing::warn!(sink = %self.sink, error = %e, "Cannot read the InfluxDB credentials again; retrying with the old ones.");
            }
        }
    }

    /// One write request of `lines[part]`.
    async fn post(&self, lines: &Arc<Vec<u8>>, part: Range<usize>) -> Result<(), Failure> {
        let inner = &self.influx.inner;
        let url = &inner.write_url;
        let mut request = inner
            .client
            .post(url.clone())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        let body = if inner.gzip {
            request = request.header(header::CONTENT_ENCODING, "gzip");
            if part.len() > GZIP_INLINE {
                // Compressing megabytes takes milliseconds: not on the runtime's threads.
                let lines = lines.clone();
                tokio::task::spawn_blocking(move || gzip(&lines[part]))
                    .await
                    .map_err(|e| Failure::Transient {
                        message: format!("compressing the batch failed: {e}"),
                        retry_after: None,
                    })?
            } else {
                gzip(&lines[part])
            }
        } else {
            lines[part].to_vec()
        };
        let auth = self
            .auth
            .lock()
            .map(|a| a.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        match auth {
            Auth::None => {}
            Auth::Basic(user, password) => {
                request = request.basic_auth(user, Some(password.expose()));
            }
            Auth::Token(token) => request = request.header(header::AUTHORIZATION, token),
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Transient {
                message: format!("{}: {}", without_query(url), error_chain(&e)),
                retry_after: None,
            })?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(());
        }
        let headers = response.headers();
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let influxdb = ["x-influxdb-version", "x-influxdb-build"]
            .iter()
            .any(|name| headers.contains_key(*name));
        let server_hostname = headers.contains_key("x-server-hostname");
        let location = headers
            .get(header::LOCATION)
            .map(|v| shown_location(url, &String::from_utf8_lossy(v.as_bytes())));
        let body = response.text().await.unwrap_or_default();
        let origin = if server_hostname && body.starts_with("remoteAddr:") {
            Origin::VictoriaMetrics
        } else if influxdb {
            Origin::InfluxDb
        } else {
            Origin::Other
        };
        Err(classify(
            status,
            origin,
            retry_after,
            location.as_deref(),
            &body,
            url.as_str(),
        ))
    }
}

/// Who answered, by the headers and body (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    InfluxDb,
    VictoriaMetrics,
    Other,
}

/// The refused readings of a batch: how many, and the first one's line and reason.
#[derive(Default)]
struct Refused {
    readings: usize,
    first: Option<(String, String)>,
}

impl Refused {
    /// One reading (`lines`, its points) refused with `message`.
    fn add(&mut self, lines: &[u8], message: String) {
        self.readings += 1;
        if self.first.is_none() {
            self.first = Some((refused_line(lines, &message), message));
        }
    }
}

/// The line of `lines` (one reading's points) that InfluxDB's `message` names: the line it
/// quotes as unparsable, else the first of the measurement it names, else the first line; at
/// most [`MAX_BODY_QUOTED`] bytes.
fn refused_line(lines: &[u8], message: &str) -> String {
    let text = String::from_utf8_lossy(lines);
    let quoted = message
        .split_once("unable to parse '")
        .and_then(|(_, rest)| rest.split_once("': ").map(|(line, _)| line.to_owned()));
    let measurement = message
        .split_once("on measurement \"")
        .or_else(|| message.split_once("on measurement \\\""))
        .and_then(|(_, rest)| rest.split(['"', '\\']).next())
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    let line = quoted
        .or_else(|| {
            let m = measurement?;
            text.lines()
                .find(|l| {
                    l.strip_prefix(m.as_str())
                        .is_some_and(|rest| rest.starts_with([',', ' ']))
                })
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.lines().next().unwrap_or_default().to_owned());
    quote(&line)
}

/// A redirect's target as shown in messages: resolved against the write URL, without
/// credentials or query (a token could be in either).
fn shown_location(url: &reqwest::Url, location: &str) -> String {
    match url.join(location) {
        Ok(mut target) => {
            target.set_query(None);
            target.set_fragment(None);
            // Fails only for URLs that cannot have credentials, which then have none.
            target.set_username("").unwrap_or(());
            target.set_password(None).unwrap_or(());
            target.to_string()
        }
        Err(_) => quote(location),
    }
}

/// Bodies up to this size are compressed on the calling thread.
const GZIP_INLINE: usize = 64 * 1024;

/// Where to cut `lines[part]` in two between readings, nearest its middle; `None` when it
/// holds one reading. A reading's points are consecutive lines with the same timestamp (the
/// encoder gives every point of a reading the reading's stamp, and each reading of a meter its
/// own), so a reading ends where the timestamp changes.
fn split(lines: &[u8], part: Range<usize>) -> Option<usize> {
    let middle = part.start + part.len() / 2;
    let mut best: Option<usize> = None;
    let mut previous: Option<&[u8]> = None;
    let mut start = part.start;
    while start < part.end {
        let end = lines[start..part.end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(part.end, |i| start + i + 1);
        let line = lines[start..end].trim_ascii_end();
        let stamp = line.rsplit(|&b| b == b' ').next().unwrap_or(line);
        if previous.is_some_and(|p| p != stamp)
            && best.is_none_or(|b| b.abs_diff(middle) > start.abs_diff(middle))
        {
            best = Some(start);
        }
        previous = Some(stamp);
        start = end;
    }
    best
}

/// Phrases of InfluxDB's answers that refuse points rather than the request: 1.x and 2.x
/// parse errors, partial writes (a field type conflict, points beyond the retention policy,
/// series or tag value limits).
const POINT_REFUSALS: [&str; 5] = [
    "partial write",
    "unable to parse",
    "field type conflict",
    "beyond retention policy",
    "max-values-per-tag",
];

/// Maps an answer other than 204 from `origin`.
pub(crate) fn classify(
    status: StatusCode,
    origin: Origin,
    retry_after: Option<Duration>,
    location: Option<&str>,
    body: &str,
    url: &str,
) -> Failure {
    let url = without_query_str(url);
    let message = format!("{url} answered {status}: {}", quote(body));
    match status.as_u16() {
        200..=299 => Failure::Unexpected {
            reason: "unexpected_answer",
            message: format!(
                "{url} answered {status}, not InfluxDB's 204 for a write (a login page or a proxy?); the readings stay spooled: {}",
                quote(body)
            ),
        },
        300..=399 => Failure::Redirect {
            message: format!(
                "{url} redirects ({status}) to {}; p1gw does not follow redirects: set the sink's url to where InfluxDB is",
                location.unwrap_or("(no Location)")
            ),
        },
        401 | 403 => Failure::Auth { message },
        404 => Failure::Missing { message },
        413 => Failure::TooLarge {
            message,
            database: origin != Origin::Other,
        },
        408 | 429 | 500..=599 => Failure::Transient {
            message,
            retry_after,
        },
        400..=499 => match origin {
            Origin::InfluxDb
                if is_json_error(body) && POINT_REFUSALS.iter().any(|p| body.contains(p)) =>
            {
                Failure::Points { message }
            }
            Origin::InfluxDb | Origin::VictoriaMetrics => Failure::Unexpected {
                reason: "refused",
                message: format!(
                    "the database refused the request; the readings stay spooled: {message}"
                ),
            },
            Origin::Other => Failure::Unexpected {
                reason: "not_influxdb",
                message: format!(
                    "{message}; not InfluxDB's answer (no X-Influxdb-Version header: a proxy in between?); the readings stay spooled"
                ),
            },
        },
        _ => Failure::Transient {
            message,
            retry_after,
        },
    }
}

/// Whether `body` looks like InfluxDB's JSON error: `{"error":…}` (1.x) or
/// `{"code":…,"message":…}` (2.x).
fn is_json_error(body: &str) -> bool {
    let body = body.trim();
    body.starts_with('{')
        && body.ends_with('}')
        && (body.contains("\"error\"") || body.contains("\"message\""))
}

/// A `Retry-After` value: seconds, or an HTTP date (how long from `now` until then); kept
/// within [`MIN_RETRY_AFTER`] and [`MAX_RETRY_AFTER`]. `None` when it is neither.
pub(crate) fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(value)
            .ok()?;
        Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
    };
    Some(wait.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER))
}

/// The server's answer for a message: one line, at most [`MAX_BODY_QUOTED`] bytes.
fn quote(body: &str) -> String {
    let body = body.trim();
    let mut out: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_BODY_QUOTED {
        let mut end = MAX_BODY_QUOTED;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(no body)");
    }
    out
}

fn without_query(url: &reqwest::Url) -> String {
    without_query_str(url.as_str())
}

/// The URL up to its query: database and bucket names are in the log's other fields.
fn without_query_str(url: &str) -> String {
    url.split_once('?').map_or(url, |(path, _)| path).to_owned()
}

/// An error and its sources, `: `-joined (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Gzip `data` (fast level: bodies are small, the Pi's CPU is too).
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .expect("gzip into a Vec cannot fail")
}
