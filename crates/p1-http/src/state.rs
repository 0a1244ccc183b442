//! [`HttpState`]: everything the handlers look at, and how p1gw builds it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use p1_core::{Reading, Registry};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::History;

/// At most this many `/api/v1/events` clients at once by default; more get 503.
pub const DEFAULT_MAX_SSE_CLIENTS: usize = 64;

/// How often an idle event stream gets a keep-alive comment (proxies close silent streams).
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The latest reading of one meter, as the reader publishes it (`None` before the first).
pub(crate) type Latest = watch::Receiver<Option<Arc<Reading>>>;

/// The crate's errors (only configuration values can be wrong here).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bearer token is empty (after trimming surrounding whitespace).
    #[error("the HTTP bearer token is empty")]
    EmptyToken,
    /// The bearer token has a character an `Authorization` header cannot carry.
    #[error("the HTTP bearer token may contain only visible ASCII characters (no spaces)")]
    InvalidToken,
}

/// The secret that `/api/*` and `/metrics` require as `Authorization: Bearer <token>`.
/// Debug-prints `***`; there is no way to print it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// A token from its text. Surrounding whitespace (a secret file's final newline) is
    /// removed.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyToken`] when nothing is left; [`Error::InvalidToken`] when it holds a
    /// space, a control character or non-ASCII (it could not be sent in a header).
    pub fn new(token: impl Into<String>) -> Result<Self, Error> {
        let token = token.into();
        let trimmed = token.trim();
        if trimmed.is_empty() {
            return Err(Error::EmptyToken);
        }
        if !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidToken);
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// Whether `candidate` is the token, in time independent of where they first differ.
    pub(crate) fn matches(&self, candidate: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if candidate.len() != expected.len() {
            return false;
        }
        expected
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// What the HTTP handlers look at. Cheap to clone (an `Arc` inside). Build it with
/// [`HttpState::builder`].
#[derive(Clone, Debug)]
pub struct HttpState {
    pub(crate) shared: Arc<Shared>,
    /// Cancelled by [`crate::serve`] at shutdown: ends every SSE stream of that server.
    pub(crate) closing: CancellationToken,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    /// In the order given; the first is the default for `/api/v1/reading` and the history.
    pub(crate) meters: Vec<(Arc<str>, Latest)>,
    /// Weak, so that HTTP never keeps the readings channel open: when the reader drops its
    /// sender, SSE streams and the history recorder see `Closed` (shutdown phase 1).
    pub(crate) readings: broadcast::WeakSender<Arc<Reading>>,
    pub(crate) history: History,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) token: Option<BearerToken>,
    pub(crate) interval: Duration,
    pub(crate) version: String,
    /// Sink health name → sink kind, for `/api/v1/status`.
    pub(crate) sink_kinds: BTreeMap<String, String>,
    pub(crate) max_sse_clients: usize,
    pub(crate) sse_clients: AtomicUsize,
}

impl HttpState {
    /// Starts building the state from what every gateway has: the health registry, the
    /// readings broadcast (only a weak handle is kept; SSE clients subscribe to it) and the
    /// history (shared: the same `History` goes to [`crate::spawn_recorder`]).
    pub fn builder(
        registry: Registry,
        readings: &broadcast::Sender<Arc<Reading>>,
        history: History,
    ) -> HttpStateBuilder {
        HttpStateBuilder {
            registry,
            readings: readings.downgrade(),
            history,
            meters: Vec::new(),
            metrics: None,
            token: None,
            interval: Duration::from_secs(10),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sink_kinds: BTreeMap::new(),
            max_sse_clients: DEFAULT_MAX_SSE_CLIENTS,
        }
    }

    /// The history the page's chart is drawn from.
    pub fn history(&self) -> &History {
        &self.shared.history
    }

    /// The same state, with SSE streams ending when `closing` fires.
    pub(crate) fn with_closing(mut self, closing: CancellationToken) -> Self {
        self.closing = closing;
        self
    }

    /// The meter `name` (or the first when `None`) and its latest reading.
    ///
    /// `Err` carries the unknown name; `Ok(None)` means no meter is configured.
    pub(crate) fn meter(&self, name: Option<&str>) -> Result<Option<&(Arc<str>, Latest)>, String> {
        match name {
            None => Ok(self.shared.meters.first()),
            Some(name) => self
                .shared
                .meters
                .iter()
                .find(|(n, _)| &**n == name)
                .map(Some)
                .ok_or_else(|| name.to_owned()),
        }
    }
}

/// Builds an [`HttpState`]; see [`HttpState::builder`].
#[derive(Debug)]
#[must_use]
pub struct HttpStateBuilder {
    registry: Registry,
    readings: broadcast::WeakSender<Arc<Reading>>,
    history: History,
    meters: Vec<(Arc<str>, Latest)>,
    metrics: Option<PrometheusHandle>,
    token: Option<BearerToken>,
    interval: Duration,
    version: String,
    sink_kinds: BTreeMap<String, String>,
    max_sse_clients: usize,
}

impl HttpStateBuilder {
    /// Adds a meter: its configured name and the receiver of its latest reading (the reader's
    /// `watch`). The first meter added is the default of `/api/v1/reading`, the event stream
    /// and the history; `?meter=NAME` selects another.
    pub fn meter(
        mut self,
        name: impl Into<Arc<str>>,
        latest: watch::Receiver<Option<Arc<Reading>>>,
    ) -> Self {
        self.meters.push((name.into(), latest));
        self
    }

    /// The installed recorder's handle; without one `/metrics` answers 503.
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Require `Authorization: Bearer <token>` on `/api/*` and `/metrics` (`None`: open).
    pub fn token(mut self, token: Option<BearerToken>) -> Self {
        self.token = token;
        self
    }

    /// The meter's telegram interval (default 10 s, Veitur's) for `/readyz` and the status of
    /// readers that did not report their own.
    pub fn expected_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The version shown in `/api/v1/status` and `p1gw_build_info` (default: this crate's).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Names the kind (`mqtt`, `influx`, `azure-iot`, `jsonl`, …) of the sink registered in
    /// the health registry as `name`, for `/api/v1/status`.
    pub fn sink_kind(mut self, name: impl Into<String>, kind: impl Into<String>) -> Self {
        self.sink_kinds.insert(name.into(), kind.into());
        self
    }

    /// At most this many SSE clients at once (default [`DEFAULT_MAX_SSE_CLIENTS`]).
    pub fn max_sse_clients(mut self, max: usize) -> Self {
        self.max_sse_clients = max;
        self
    }

    /// The state.
    pub fn build(self) -> HttpState {
        HttpState {
            shared: Arc::new(Shared {
                registry: self.registry,
                meters: self.meters,
                readings: self.readings,
                history: self.history,
                metrics: self.metrics,
                token: self.token,
                interval: self.interval,
                version: self.version,
                sink_kinds: self.sink_kinds,
                max_sse_clients: self.max_sse_clients,
                sse_clients: AtomicUsize::new(0),
            }),
            closing: CancellationToken::new(),
        }
    }
}
