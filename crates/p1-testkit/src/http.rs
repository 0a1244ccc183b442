//! Blocking HTTP/1.1 (`Connection: close`) on 127.0.0.1, and what the suites ask over it.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// `GET path` on 127.0.0.1:`port`, reading for at most `read_timeout` at a time; (status,
/// body, de-chunked), or `None` when nothing answers.
pub fn http_get(port: u16, path: &str, read_timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(read_timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// The body of a `Transfer-Encoding: chunked` answer.
pub(crate) fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The component `name` (`reader:home`, `sink:mqtt`) of an `/api/v1/status` answer, or `None`
/// when the body is not such an answer or has no such component.
pub fn component(status: &str, name: &str) -> Option<Value> {
    let status: Value = serde_json::from_str(status).ok()?;
    status["components"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// An InfluxQL query `query` on database `db` of the InfluxDB 1.x at 127.0.0.1:`port`, times as
/// `epoch` (`s`, `ms`), as `login` (user, password) when given; the JSON answer.
///
/// # Panics
///
/// When InfluxDB does not answer, answers other than 200, or not with JSON.
pub fn influxql(
    port: u16,
    db: &str,
    epoch: &str,
    query: &str,
    login: Option<(&str, &str)>,
) -> Value {
    let mut path = format!("/query?db={db}&epoch={epoch}&q={}", percent_encode(query));
    if let Some((user, password)) = login {
        path.push_str(&format!(
            "&u={}&p={}",
            percent_encode(user),
            percent_encode(password)
        ));
    }
    let (status, body) = http_get(port, &path, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no answer to {query}"));
    assert_eq!(status, 200, "{query}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"))
}
