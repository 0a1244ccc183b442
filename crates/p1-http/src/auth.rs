//! The optional bearer token in front of `/api/*` and `/metrics`.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::HttpState;
use crate::handlers::error_json;

/// Passes the request on when no token is configured or when it carries
/// `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235) or, for
/// browsers' `EventSource` which cannot set headers, the `access_token` query
/// parameter (RFC 6750 §2.3); 401 otherwise.
pub(crate) async fn require_token(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.shared.token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| bearer(value.as_bytes()))
        .map(<[u8]>::to_vec)
        .or_else(|| request.uri().query().and_then(query_token));
    if presented.is_some_and(|p| token.matches(&p)) {
        return next.run(request).await;
    }
    let mut response = error_json(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <token>)",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"p1gw\""),
    );
    response
}

/// The credentials of a `Bearer` authorization header value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let rest = rest.trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

/// The `access_token` parameter of a query string, percent-decoded.
fn query_token(query: &str) -> Option<Vec<u8>> {
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token="))?;
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    (!out.is_empty()).then_some(out)
}
