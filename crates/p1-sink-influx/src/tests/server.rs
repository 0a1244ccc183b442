//! A tiny HTTP/1.1 server on 127.0.0.1:0 that records requests and answers as scripted, for the
//! answers a real InfluxDB cannot be made to give (429, 503, a hang).

use std::collections::VecDeque;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A request as received.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// Path and query.
    pub(crate) target: String,
    /// Header names lower case.
    pub(crate) headers: Vec<(String, String)>,
    /// The body as sent (gzip undone when `Content-Encoding: gzip`).
    pub(crate) body: String,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Status, extra headers, body.
    Answer(u16, Vec<(&'static str, String)>, String),
    /// Read the request, never answer.
    Hang,
}

/// How the server answers when no reply is scripted: a rule on the request, else 204.
pub(crate) type Rule = Arc<dyn Fn(&Request) -> Option<Reply> + Send + Sync>;

pub(crate) struct Server {
    pub(crate) url: String,
    requests: mpsc::UnboundedReceiver<Request>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    rule: Arc<Mutex<Option<Rule>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts the server; with no reply scripted it answers 204.
    pub(crate) async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, requests) = mpsc::unbounded_channel();
        let replies: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let rule: Arc<Mutex<Option<Rule>>> = Arc::default();
        let script = replies.clone();
        let rules = rule.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let script = script.clone();
                let rules = rules.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    // Keep-alive: requests one after another on the connection.
                    while let Some(request) = read_request(&mut stream).await {
                        let scripted = script.lock().expect("lock").pop_front();
                        let reply = scripted.or_else(|| {
                            let rule = rules.lock().expect("lock").clone();
                            rule.and_then(|rule| rule(&request))
                        });
                        tx.send(request).ok();
                        match reply {
                            Some(Reply::Hang) => {
                                std::future::pending::<()>().await;
                            }
                            Some(Reply::Answer(status, headers, body)) => {
                                write_reply(stream.get_mut(), status, &headers, &body).await;
                            }
                            None => write_reply(stream.get_mut(), 204, &[], "").await,
                        }
                    }
                });
            }
        });
        Server {
            url,
            requests,
            replies,
            rule,
            task,
        }
    }

    /// Answers every request no scripted reply is left for by `rule` (204 when it gives none).
    pub(crate) fn rule(&self, rule: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static) {
        *self.rule.lock().expect("lock") = Some(Arc::new(rule));
    }

    /// Scripts the next answers, in order.
    pub(crate) fn reply(&self, reply: Reply) {
        self.replies.lock().expect("lock").push_back(reply);
    }

    /// The next request, within 10 s.
    pub(crate) async fn request(&mut self) -> Request {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("a request within 10 s")
            .expect("server running")
    }

    /// A request if one came in already.
    pub(crate) fn try_request(&mut self) -> Option<Request> {
        self.requests.try_recv().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(stream: &mut BufReader<tokio::net::TcpStream>) -> Option<Request> {
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut raw = vec![0; length];
    stream.read_exact(&mut raw).await.ok()?;
    let gzipped = headers
        .iter()
        .any(|(n, v)| n == "content-encoding" && v == "gzip");
    let body = if gzipped {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .expect("a gzip body");
        text
    } else {
        String::from_utf8(raw).expect("utf-8 body")
    };
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

async fn write_reply(
    stream: &mut tokio::net::TcpStream,
    status: u16,
    headers: &[(&'static str, String)],
    body: &str,
) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).await.ok();
}
