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
//! once; each batch is deleted from the spool when its own request got a 2xx, in whatever order
//! they complete. That is safe because a write is idempotent in InfluxDB (one point per series
//! and timestamp): a batch written twice, or after a newer one, leaves the same points.
//!
//! # Answers
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | acknowledged |
//! | 429, 503 | transient; wait as `Retry-After` says (seconds or HTTP date, 1 s to 15 min) |
//! | 408, other 5xx, no answer, timeout | transient (p1-core's backoff) |
//! | 401, 403 | refused (`auth`): kept, retried with backoff, logged once; the password or token is read again (through the [`SecretReader`]) before the next request |
//! | 404 | refused (`not_found`): the database or bucket is missing; kept, retried, logged once |
//! | 413 | the batch is split in halves at a line end and each half written (down to one line) |
//! | other 4xx (400 parse error, a field type conflict, …) | permanent: the batch is dropped and counted (`p1gw_sink_dropped_total{reason="rejected"}`) |
//!
//! Messages carry the status and the server's body, never a password or token (those travel
//! only in the `Authorization` header, marked sensitive).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p1_core::sink::BoxFuture;
use p1_core::{Batch, Batches, DeliveryError, Pipelined, Reading, Sink, SinkContext, SinkError};
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
        Writer {
            shared: Arc::new(Shared {
                influx: self.clone(),
                sink: sink.to_owned(),
                auth: Mutex::new(self.inner.auth.clone()),
                refused_auth: AtomicBool::new(false),
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
        let inner = &self.influx.inner;
        let writer = self.influx.writer(&cx.name);
        let mut worker = Pipelined::new(KIND, LineEncoder::new(inner.precision), writer);
        if let Some((min, max)) = inner.backoff {
            worker = worker.with_backoff(min, max);
        }
        Box::new(worker).run(input, cx)
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
    Auth {
        message: String,
    },
    /// 404: the database or bucket does not exist.
    Missing {
        message: String,
    },
    /// 413: the body is too large for the server.
    TooLarge {
        message: String,
    },
    Permanent {
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
    /// Writes one batch; a 413 splits it (see the module doc).
    async fn write(&self, batch: Batch) -> Result<(), DeliveryError> {
        if self.refused_auth.swap(false, Ordering::Relaxed) {
            self.read_secret_again().await;
        }
        let records = batch.records;
        // Bodies still to write; a 413 replaces one by its two halves.
        let mut bodies = vec![batch.bytes];
        while let Some(lines) = bodies.pop() {
            let (result, lines) = self.post(lines).await;
            match result {
                Ok(()) => {}
                Err(Failure::TooLarge { message }) => match split(lines) {
                    Some((front, back)) => {
                        tracing::debug!(sink = %self.sink, error = %message, "Batch too large; written in halves.");
                        bodies.push(back);
                        bodies.push(front);
                    }
                    None => {
                        return Err(DeliveryError::Permanent {
                            message: format!("{message} (one line alone is too large)"),
                            records,
                        });
                    }
                },
                Err(failure) => return Err(self.outcome(failure, records)),
            }
        }
        tracing::debug!(sink = %self.sink, readings = records, "Written.");
        Ok(())
    }

    fn outcome(&self, failure: Failure, records: usize) -> DeliveryError {
        let target = &self.influx.inner.target;
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
            Failure::TooLarge { message } | Failure::Permanent { message } => {
                DeliveryError::Permanent { message, records }
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

    /// One write request; gives `lines` back for a retry in halves.
    async fn post(&self, lines: Vec<u8>) -> (Result<(), Failure>, Vec<u8>) {
        let inner = &self.influx.inner;
        let url = &inner.write_url;
        let mut request = inner
            .client
            .post(url.clone())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        let (body, lines) = if inner.gzip {
            request = request.header(header::CONTENT_ENCODING, "gzip");
            if lines.len() > GZIP_INLINE {
                // Compressing megabytes takes milliseconds: not on the runtime's threads.
                match tokio::task::spawn_blocking(move || (gzip(&lines), lines)).await {
                    Ok(both) => both,
                    Err(e) => {
                        let failure = Failure::Transient {
                            message: format!("compressing the batch failed: {e}"),
                            retry_after: None,
                        };
                        return (Err(failure), Vec::new());
                    }
                }
            } else {
                (gzip(&lines), lines)
            }
        } else {
            // Without gzip the body is the lines themselves; a copy stays for a split.
            (lines.clone(), lines)
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
        let response = match request.body(body).send().await {
            Ok(response) => response,
            Err(e) => {
                let failure = Failure::Transient {
                    message: format!("{}: {}", without_query(url), error_chain(&e)),
                    retry_after: None,
                };
                return (Err(failure), lines);
            }
        };
        let status = response.status();
        if status.is_success() {
            return (Ok(()), lines);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let body = response.text().await.unwrap_or_default();
        (
            Err(classify(status, retry_after, &body, url.as_str())),
            lines,
        )
    }
}

/// Bodies up to this size are compressed on the calling thread.
const GZIP_INLINE: usize = 64 * 1024;

/// `lines` cut in two at the line end nearest its middle; `None` for a single line.
fn split(mut lines: Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    let middle = lines.len() / 2;
    let cut = lines[..middle]
        .iter()
        .rposition(|&b| b == b'\n')
        .or_else(|| {
            lines[middle..lines.len().saturating_sub(1)]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| middle + i)
        })?
        + 1;
    let back = lines.split_off(cut);
    Some((lines, back))
}

/// Maps an unsuccessful answer.
pub(crate) fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    url: &str,
) -> Failure {
    let message = format!(
        "{} answered {status}: {}",
        without_query_str(url),
        quote(body)
    );
    match status.as_u16() {
        401 | 403 => Failure::Auth { message },
        404 => Failure::Missing { message },
        413 => Failure::TooLarge { message },
        408 | 429 | 500..=599 => Failure::Transient {
            message,
            retry_after,
        },
        400..=499 => Failure::Permanent { message },
        _ => Failure::Transient {
            message,
            retry_after,
        },
    }
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
