//! A TCP proxy under the test's control, between p1gw and a backend:
//!
//! * `Forward`: bytes flow both ways;
//! * `Pause`: a silent network cut. Connections stay open and new ones are accepted, but no
//!   byte moves in either direction and nothing is closed, so each side sees only silence
//!   (its keep-alive or request timeout must notice); held bytes flow on `Forward`;
//! * `Down`: the listener is closed and every connection is dropped, so connecting is
//!   refused as with a stopped server; `Forward` binds the same port again.
//!
//! It runs on its own small tokio runtime, stopped on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Forward,
    Pause,
    Down,
}

pub(crate) struct Proxy {
    pub(crate) port: u16,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 to `port` on 127.0.0.1, in `mode`.
    pub(crate) fn local(port: u16, mode: Mode) -> Proxy {
        Proxy::start(SocketAddr::from(([127, 0, 0, 1], port)), mode)
    }

    /// A proxy on a free port of 127.0.0.1 to `upstream`, in `mode`.
    pub(crate) fn start(upstream: SocketAddr, mode: Mode) -> Proxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let port = crate::harness::free_port();
        let (tx, rx) = watch::channel(mode);
        let upstream = Arc::new(Mutex::new(upstream));
        let accepted = Arc::new(AtomicU64::new(0));
        runtime.spawn(serve(port, rx, upstream.clone(), accepted.clone()));
        let proxy = Proxy {
            port,
            mode: tx,
            accepted,
            runtime: Some(runtime),
        };
        if mode != Mode::Down {
            crate::harness::wait_for(Duration::from_secs(5), "the proxy listening", || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            });
        }
        proxy
    }

    pub(crate) fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode != Mode::Down {
            let port = self.port;
            crate::harness::wait_for(Duration::from_secs(5), "the proxy listening", || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .ok()
                    .map(|_| ())
            });
        }
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve(
    port: u16,
    mut mode: watch::Receiver<Mode>,
    upstream: Arc<Mutex<SocketAddr>>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        // Down: nothing listens and no connection lives.
        if mode.wait_for(|m| *m != Mode::Down).await.is_err() {
            return;
        }
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => break l,
                // The old socket may linger for a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let mut connections = JoinSet::new();
        let for_relays = mode.clone();
        loop {
            tokio::select! {
                down = mode.wait_for(|m| *m == Mode::Down) => {
                    if down.is_err() {
                        return;
                    }
                    break;
                }
                conn = listener.accept() => {
                    let Ok((client, _)) = conn else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let to = *upstream.lock().unwrap_or_else(|e| e.into_inner());
                    connections.spawn(relay(client, to, for_relays.clone()));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Dropping the listener and aborting the relays closes every socket.
        drop(listener);
        connections.shutdown().await;
    }
}

async fn relay(client: TcpStream, to: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(to).await else {
        return; // the client sees its connection closed
    };
    client.set_nodelay(true).ok();
    server.set_nodelay(true).ok();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, mode.clone());
    let down = pump(sr, cw, mode);
    // Each direction ends at its EOF; the connection ends when both have.
    tokio::join!(up, down);
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // While paused, read nothing: the sender's window fills and it hears nothing back.
        if mode.wait_for(|m| *m == Mode::Forward).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                to.shutdown().await.ok();
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just before a pause are held until it ends.
        if mode.wait_for(|m| *m == Mode::Forward).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
