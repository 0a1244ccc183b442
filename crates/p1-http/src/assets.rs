//! The live page, compiled in: `index.html`, `app.js`, `style.css`, `favicon.svg` from
//! `crates/p1-http/assets/`.
//!
//! Served with `Cache-Control: no-cache` (the browser revalidates, so an upgraded gateway
//! never runs yesterday's script against today's API) and `X-Content-Type-Options: nosniff`.

use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &'static str); 3] = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// `GET /` and `/index.html`.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/app.js`.
pub(crate) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /assets/style.css`.
pub(crate) async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /assets/favicon.svg`.
pub(crate) async fn favicon_svg() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}
