//! The worker: p1-core's spool-backed [`Spooled`] worker with [`LineEncoder`] for intake and
//! [`Writer`] for delivery. Backoff, spooling, health and the `p1gw_sink_*` metrics are
//! p1-core's; this module owns the HTTP request, batching and the mapping of answers.
//!
//! # Batching
//!
//! p1-core hands [`Writer::deliver`] up to `batch_size` of the oldest spooled records. A full
//! batch is written at once. A smaller one (the usual case: one reading every few seconds) waits
//! until the spool holds a full batch, `batch_interval` has passed since the writer first saw the
//! batch's oldest record, or the daemon stops, whichever comes first; then the records spooled
//! meanwhile are read with `peek_from` and written in the same request. p1-core acknowledges
//! only the records it handed over, so the writer remembers the last one it wrote: when p1-core
//! hands those over next, they are acknowledged at once, without a request. A crash in between
//! writes them again, which InfluxDB absorbs (same series and timestamp: one point).
//!
//! # Answers
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx | acknowledged |
//! | 429, 503 | transient; wait as `Retry-After` says (seconds or HTTP date, 1 s to 15 min) |
//! | 408, other 5xx, no answer, timeout | transient (p1-core's backoff) |
//! | 404 | permanent, and logged as a configuration error: the database or bucket is missing |
//! | other 4xx (400 parse error, 401/403 credentials, 413, …) | permanent: the batch is dropped and counted (`p1gw_sink_dropped_total{reason="rejected"}`) |
//!
//! Messages carry the status and the server's body, never a password or token (those travel
//! only in the `Authorization` header, marked sensitive).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use p1_core::sink::BoxFuture;
use p1_core::{AsyncSpool, Deliver, DeliveryError, Reading, Sink, SinkContext, SinkError, Spooled};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// How often a lingering batch looks whether the spool has filled it.
const LINGER_POLL: Duration = Duration::from_millis(200);

/// The most of a server's answer quoted in a message.
const MAX_BODY_QUOTED: usize = 512;

/// An InfluxDB sink, built once from its settings; [`Influx::sink`] makes a worker (one per
/// start of the sink; they share the HTTP client and its connections).
#[derive(Debug, Clone)]
pub struct Influx {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    client: reqwest::Client,
    write_url: reqwest::Url,
    basic_auth: Option<(String, Secret)>,
    token: Option<HeaderValue>,
    target: String,
    precision: Precision,
    batch_size: usize,
    batch_interval: Duration,
    gzip: bool,
    backoff: Option<(Duration, Duration)>,
}

impl Influx {
    /// Checks the settings and sets up the HTTP client (rustls with the *ring* provider; it is
    /// installed as the process default when none is yet). Connects to nothing.
    ///
    /// # Errors
    ///
    /// A URL that is not `http(s)://host…` without query or credentials, credentials that
    /// cannot be sent in a header, `batch_size` 0, or a TLS setup failure.
    pub fn new(config: InfluxConfig) -> Result<Self, BuildError> {
        if config.batch_size == 0 {
            return Err(BuildError::BatchSize);
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
        let (basic_auth, token) = match &config.target {
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
                if let Some((user, password)) = credentials {
                    HeaderValue::from_str(user).map_err(|_| BuildError::Credentials("username"))?;
                    HeaderValue::from_str(password.expose())
                        .map_err(|_| BuildError::Credentials("password"))?;
                }
                (credentials.clone(), None)
            }
            Target::V2 { org, bucket, token } => {
                url.query_pairs_mut()
                    .append_pair("org", org)
                    .append_pair("bucket", bucket)
                    .append_pair("precision", config.precision.v2_param());
                let mut value = HeaderValue::from_str(&format!("Token {}", token.expose()))
                    .map_err(|_| BuildError::Credentials("token"))?;
                value.set_sensitive(true);
                (None, Some(value))
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
                basic_auth,
                token,
                target: config.target.describe(),
                precision: config.precision,
                batch_size: config.batch_size,
                batch_interval: config.batch_interval,
                gzip: config.gzip,
                backoff: None,
            }),
        })
    }

    /// The URL written to (no secrets in it).
    pub fn write_url(&self) -> &str {
        self.inner.write_url.as_str()
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

    /// A writer without a spool to fill batches from: it writes what it is given at once.
    pub fn writer(&self) -> Writer {
        Writer::new(self.clone(), None, "influx".to_owned())
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
        let writer = Writer::new(
            self.influx.clone(),
            Some(Linger {
                spool: cx.spool.clone(),
                stop: cx.stop.clone(),
            }),
            cx.name.clone(),
        );
        let mut worker = Spooled::new(KIND, LineEncoder::new(inner.precision), writer);
        if let Some((min, max)) = inner.backoff {
            worker = worker.with_backoff(min, max);
        }
        Box::new(worker).run(input, cx)
    }
}

/// Where a writer finds more records for a batch, and when to stop waiting for them.
struct Linger {
    spool: AsyncSpool,
    stop: CancellationToken,
}

/// Writes spooled records (line protocol) to InfluxDB: p1-core's [`Deliver`].
pub struct Writer {
    influx: Influx,
    linger: Option<Linger>,
    sink: String,
    /// The oldest record of the batch being filled, and when the writer first saw it.
    first_seen: Option<(u64, Instant)>,
    /// Records up to this seq were written beyond what p1-core handed over.
    written_through: Option<u64>,
    /// When the missing-database error was last logged (it repeats with every batch).
    missing_logged: Option<Instant>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("url", &self.influx.write_url())
            .field("sink", &self.sink)
            .field("written_through", &self.written_through)
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
    Permanent {
        message: String,
        /// A 404: the database or bucket does not exist.
        missing: bool,
    },
}

impl Writer {
    fn new(influx: Influx, linger: Option<Linger>, sink: String) -> Self {
        Writer {
            influx,
            linger,
            sink,
            first_seen: None,
            written_through: None,
            missing_logged: None,
        }
    }

    /// Waits for a partial batch to fill (see the module doc); returns the records spooled
    /// after `records` to write with them.
    async fn fill(&mut self, records: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
        let inner = &self.influx.inner;
        let (Some(linger), Some(&(first, _)), Some(&(last, _))) =
            (&self.linger, records.first(), records.last())
        else {
            return Vec::new();
        };
        let batch = inner.batch_size;
        if records.len() >= batch {
            return Vec::new();
        }
        let since = match self.first_seen {
            Some((seq, at)) if seq == first => at,
            _ => {
                let now = Instant::now();
                self.first_seen = Some((first, now));
                now
            }
        };
        let deadline = since + inner.batch_interval;
        loop {
            let now = Instant::now();
            if now >= deadline || linger.stop.is_cancelled() || linger.spool.len() >= batch as u64 {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep((deadline - now).min(LINGER_POLL)) => {}
                () = linger.stop.cancelled() => break,
            }
        }
        if linger.spool.len() <= records.len() as u64 {
            return Vec::new();
        }
        match linger
            .spool
            .peek_from(last + 1, batch - records.len())
            .await
        {
            Ok(more) => more,
            Err(e) => {
                // Not fatal: the records given are written; the rest come with the next batch.
                tracing::debug!(sink = %self.sink, error = %e, "Cannot read more records for the batch.");
                Vec::new()
            }
        }
    }

    /// One write request.
    async fn post(&self, lines: Vec<u8>) -> Result<(), Failure> {
        let inner = &self.influx.inner;
        let url = &inner.write_url;
        let mut request = inner
            .client
            .post(url.clone())
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        let body = if inner.gzip {
            request = request.header(header::CONTENT_ENCODING, "gzip");
            gzip(&lines)
        } else {
            lines
        };
        if let Some((user, password)) = &inner.basic_auth {
            request = request.basic_auth(user, Some(password.expose()));
        }
        if let Some(token) = &inner.token {
            request = request.header(header::AUTHORIZATION, token.clone());
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
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let body = response.text().await.unwrap_or_default();
        Err(classify(status, retry_after, &body, url.as_str()))
    }
}

impl Deliver for Writer {
    fn max_batch(&self) -> usize {
        self.influx.inner.batch_size
    }

    fn deliver<'a>(
        &'a mut self,
        records: &'a [(u64, Vec<u8>)],
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            // Records already written with an earlier, filled-up batch: acknowledge them.
            if let Some(through) = self.written_through {
                let done = records
                    .iter()
                    .take_while(|(seq, _)| *seq <= through)
                    .count();
                if done > 0 {
                    return Ok(done);
                }
                self.written_through = None;
            }
            if records.is_empty() {
                return Ok(0);
            }
            let more = self.fill(records).await;
            let size = records.iter().chain(&more).map(|(_, r)| r.len()).sum();
            let mut lines = Vec::with_capacity(size);
            for (_, record) in records.iter().chain(&more) {
                lines.extend_from_slice(record);
            }
            match self.post(lines).await {
                Ok(()) => {
                    self.first_seen = None;
                    self.written_through = more.last().map(|(seq, _)| *seq);
                    tracing::debug!(sink = %self.sink, readings = records.len() + more.len(), "Written.");
                    Ok(records.len())
                }
                Err(Failure::Transient {
                    message,
                    retry_after,
                }) => Err(DeliveryError::Transient {
                    message,
                    retry_after,
                }),
                Err(Failure::Permanent { message, missing }) => {
                    if missing {
                        self.log_missing(&message);
                    }
                    Err(DeliveryError::Permanent {
                        message,
                        records: records.len(),
                    })
                }
            }
        })
    }
}

impl Writer {
    /// A missing database or bucket is the operator's to fix: an error with a hint, at most once
    /// a minute (p1-core logs each dropped batch as well).
    fn log_missing(&mut self, message: &str) {
        let now = Instant::now();
        if self
            .missing_logged
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(60))
        {
            return;
        }
        self.missing_logged = Some(now);
        tracing::error!(
            sink = %self.sink,
            target = %self.influx.inner.target,
            error = %message,
            "InfluxDB has no such database or bucket: create it or correct the sink's configuration. Readings are dropped until then."
        );
    }
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
        404 => Failure::Permanent {
            message,
            missing: true,
        },
        408 | 429 | 500..=599 => Failure::Transient {
            message,
            retry_after,
        },
        400..=499 => Failure::Permanent {
            message,
            missing: false,
        },
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
