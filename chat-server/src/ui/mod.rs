//! The chat page every chat-server serves at `/`: static HTML, CSS and JavaScript embedded in the
//! binary (no build step).
//!
//! Caching: the page itself (`/`, `/index.html`) is `no-cache` (always revalidated, cheap thanks
//! to its `ETag`), and it links the script and the stylesheet with `?v=<content hash>`, so those
//! can be cached for a year as `immutable`: a new binary with new assets changes the hash and
//! thus the URL. Every answer has an `ETag` and honours `If-None-Match`.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// The page's Content-Security-Policy: only this origin (its WebSocket included), no inline
/// script, no plugin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const NO_CACHE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One embedded file, ready to serve.
struct Asset {
    body: String,
    content_type: &'static str,
    cache_control: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: String, content_type: &'static str, cache_control: &'static str) -> Self {
        let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
        Asset {
            body,
            content_type,
            cache_control,
            etag,
        }
    }

    fn respond(&self, request: &HeaderMap) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, etag);
        }
        if self.content_type.starts_with("text/html") {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            headers.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
        }
        let fresh = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == self.etag
            });
        if fresh {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        (headers, self.body.clone()).into_response()
    }
}

/// FNV-1a, 64 bits: a stable content hash for ETags and cache-busting URLs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Assets {
    index: Asset,
    app_js: Asset,
    style_css: Asset,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let app_js = Asset::new(
        APP_JS.to_owned(),
        "text/javascript; charset=utf-8",
        IMMUTABLE,
    );
    let style_css = Asset::new(STYLE_CSS.to_owned(), "text/css; charset=utf-8", IMMUTABLE);
    let version = |a: &Asset| a.etag.trim_matches('"').to_owned();
    let index = INDEX_HTML
        .replace("{{app_js_version}}", &version(&app_js))
        .replace("{{style_css_version}}", &version(&style_css));
    Assets {
        index: Asset::new(index, "text/html; charset=utf-8", NO_CACHE),
        app_js,
        style_css,
    }
});

/// Routes of the chat page.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
}

async fn index(headers: HeaderMap) -> Response {
    ASSETS.index.respond(&headers)
}

async fn app_js(headers: HeaderMap) -> Response {
    ASSETS.app_js.respond(&headers)
}

async fn style_css(headers: HeaderMap) -> Response {
    ASSETS.style_css.respond(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn header_of(res: &Response, name: header::HeaderName) -> &str {
        res.headers().get(name).unwrap().to_str().unwrap()
    }

    fn if_none_match(tag: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(tag).unwrap());
        h
    }

    #[tokio::test]
    async fn serves_page_and_assets_with_types_and_cache_headers() {
        let page = index(HeaderMap::new()).await;
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            header_of(&page, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&page, header::CACHE_CONTROL), NO_CACHE);
        assert!(header_of(&page, header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"));
        let body = body_of(page).await;
        assert!(!body.contains("{{"), "unreplaced placeholder in the page");
        let js_version = ASSETS.app_js.etag.trim_matches('"');
        assert!(body.contains(&format!("/ui/app.js?v={js_version}")));
        let css_version = ASSETS.style_css.etag.trim_matches('"');
        assert!(body.contains(&format!("/ui/style.css?v={css_version}")));

        let js = app_js(HeaderMap::new()).await;
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            header_of(&js, header::CONTENT_TYPE),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header_of(&js, header::CACHE_CONTROL), IMMUTABLE);
        assert_eq!(body_of(js).await, APP_JS);
        let css = style_css(HeaderMap::new()).await;
        assert_eq!(
            header_of(&css, header::CONTENT_TYPE),
            "text/css; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn answers_304_to_a_matching_etag() {
        let etag = ASSETS.style_css.etag.clone();
        let res = style_css(if_none_match(&etag)).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert!(body_of(res).await.is_empty());
        let res = style_css(if_none_match(&format!("\"x\", W/{etag}"))).await;
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        let res = style_css(if_none_match("\"other\"")).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}
