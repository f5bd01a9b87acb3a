//! Thumbnails, made once and cached on disk in `<spool>/web-cache/thumbs/` (written atomically,
//! named by a hash of the image's path, size and modification time, so a replaced image gets a
//! new one). At most [`MAKERS`] are made at once, each holding one decoded image, so memory
//! stays bounded however many are asked for; a spool that cannot be written (a read-only viewer)
//! still gets them, made per request.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::files::open_job_folder;
use super::files::{read_under, safe_rel};
use super::respond::{blocking, error};

/// Longest side of a thumbnail.
pub const SIDE: u32 = 192;
/// Thumbnails made at the same time.
pub const MAKERS: usize = 2;
/// Images larger than this (decoded pixels) are not thumbnailed.
const MAX_PIXELS: u64 = 64 * 1024 * 1024;

pub struct ThumbCache {
    pub dir: PathBuf,
    makers: Arc<tokio::sync::Semaphore>,
}

impl ThumbCache {
    pub fn new(config: &crate::app::config::Config) -> ThumbCache {
        ThumbCache {
            dir: config.spool.dir.join("web-cache").join("thumbs"),
            makers: Arc::new(tokio::sync::Semaphore::new(MAKERS)),
        }
    }

    /// The cache file of the image `rel` under `root` as it is now.
    fn key(&self, root: &std::path::Path, rel: &str) -> Option<PathBuf> {
        let (folder, name) = rel.rsplit_once('/')?;
        let dir = open_job_folder(root, folder)?;
        let crate::jobs::output::folder::Entry::File { len } = dir.entry(name).ok()? else {
            return None;
        };
        let mtime = std::fs::symlink_metadata(dir.join(name))
            .ok()?
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        let id = format!("{rel}\0{len}\0{mtime}");
        Some(self.dir.join(format!(
            "{:016x}.png",
            crate::sys::hash::fnv1a64(id.bytes())
        )))
    }

    /// The thumbnail's PNG bytes, from the cache or made now (and cached).
    pub fn get(&self, root: &std::path::Path, rel: &str) -> Option<Vec<u8>> {
        let cached = self.key(root, rel)?;
        if let Ok(bytes) = std::fs::read(&cached) {
            return Some(bytes);
        }
        let bytes = make(&read_under(root, rel)?)?;
        if std::fs::create_dir_all(&self.dir).is_ok()
            && let Err(e) = crate::sys::atomic::write(&cached, &bytes)
        {
            tracing::debug!(error = %e, "cannot cache a thumbnail");
        }
        Some(bytes)
    }
}

/// A PNG thumbnail of the PNG `bytes`.
pub fn make(bytes: &[u8]) -> Option<Vec<u8>> {
    let reader =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    let (w, h) = reader.into_dimensions().ok()?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return None;
    }
    let img = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).ok()?;
    let small = if w.max(h) > SIDE {
        img.thumbnail(SIDE, SIDE)
    } else {
        img
    };
    let mut out = Vec::new();
    small
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .ok()?;
    Some(out)
}

/// `GET /thumbs/<folder>/<image>`.
pub async fn thumbnail(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    let Some(rel) = safe_rel(&path).filter(|r| r.to_ascii_lowercase().ends_with(".png")) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let Ok(_maker) = state.thumbs.makers.clone().acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "busy");
    };
    let st = state.clone();
    match blocking(move || st.thumbs.get(&st.config.output_dir, &rel))
        .await
        .flatten()
    {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            bytes,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "not found"),
    }
}
