//! Serving files, only from under the output root and the spool: a path is taken apart into
//! components, each of which must be a plain name (not empty, not `.` or `..`, not hidden, no
//! control characters), and opened one component at a time without following links
//! ([`crate::jobs::output::folder::Folder`]), so neither `..` (plain or percent-encoded: the router
//! decodes before this check) nor a link placed in a job folder leads out.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::respond::{blocking, error};
use crate::jobs::output::folder::Folder;

/// Files larger than this are not served (a PNG of the largest allowed image is far smaller).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// `rel` as `/`-separated plain names, or `None` when any part is not one.
pub fn safe_rel(rel: &str) -> Option<String> {
    let rel = rel.trim_end_matches('/');
    if rel.is_empty() || rel.len() > 4096 {
        return None;
    }
    for part in rel.split('/') {
        if part.is_empty()
            || part.starts_with('.')
            || part.len() > 255
            || part.chars().any(|c| c.is_control() || c == '\\')
        {
            return None;
        }
    }
    Some(rel.to_string())
}

/// The content type by extension; everything else is served as a download.
pub fn content_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    match lower.rsplit('.').next() {
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        Some("yaml") | Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn file_response(name: &str, bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type(name)),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
            ),
        ],
        bytes,
    )
        .into_response()
}

/// Reads `rel` under the folder at `root`, without following links; `None` if it is not a
/// regular file there.
pub fn read_under(root: &std::path::Path, rel: &str) -> Option<Vec<u8>> {
    let (dir, name) = match rel.rsplit_once('/') {
        Some((d, n)) => (open_job_folder(root, d)?, n),
        None => (
            crate::jobs::output::folder::Folder::open_root(root).ok()?,
            rel,
        ),
    };
    match dir.entry(name).ok()? {
        crate::jobs::output::folder::Entry::File { len } if len <= MAX_FILE_BYTES => {
            dir.read_at(name).ok()
        }
        _ => None,
    }
}

/// `GET /files/<folder>/<file>`: a file under the output root.
pub async fn output_file(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    let Some(rel) = safe_rel(&path) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let root = state.config.output_dir.clone();
    let name = rel.clone();
    match blocking(move || read_under(&root, &rel)).await.flatten() {
        Some(bytes) => file_response(&name, bytes),
        None => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `GET /spool/<done|failed>/<name>`: a job file or its result or error file.
pub async fn spool_file(
    State(state): State<Arc<AppState>>,
    Path((folder, name)): Path<(String, String)>,
) -> Response {
    if !matches!(folder.as_str(), "done" | "failed")
        || safe_rel(&name).is_none_or(|n| n.contains('/'))
        || !name.ends_with(".yaml")
    {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let root = state.config.spool.dir.join(&folder);
    let rel = name.clone();
    match blocking(move || read_under(&root, &rel)).await.flatten() {
        Some(bytes) => file_response(&name, bytes),
        None => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Opens `rel` (checked by [`safe_rel`]) under the output root without following links.
pub fn open_job_folder(root: &std::path::Path, rel: &str) -> Option<Folder> {
    let mut dir = Folder::open_root(root).ok()?;
    for part in rel.split('/') {
        dir = dir.open_dir(part).ok()??;
    }
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass() {
        assert_eq!(
            safe_rel("cats/p000-c00-s1.png").as_deref(),
            Some("cats/p000-c00-s1.png")
        );
        for bad in [
            "",
            "..",
            "a/../b",
            "a//b",
            ".hidden",
            "cats/.sdspool-tmp-x",
            "a\\..\\b",
            "/etc/passwd",
            "a/\u{0}",
        ] {
            assert!(safe_rel(bad).is_none(), "{bad:?}");
        }
    }
}
