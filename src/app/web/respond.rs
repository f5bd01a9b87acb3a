//! Small helpers every handler uses: a plain-text error response, and blocking file work moved
//! off the runtime's threads.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A plain-text error response.
pub fn error(status: StatusCode, text: impl Into<String>) -> Response {
    let mut t = text.into();
    t.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        t,
    )
        .into_response()
}

/// Blocking file system work, off the runtime's thread.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}
