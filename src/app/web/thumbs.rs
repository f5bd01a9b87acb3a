//! Thumbnails, made once and cached on disk in `<spool>/web-cache/thumbs/` (written atomically,
//! named by a hash of the image's path, size and modification time, so a replaced image gets a
//! new one); a spool that cannot be written (a read-only viewer) still gets them, made per
//! request.
//!
//! Memory stays bounded however many are asked for: a cached thumbnail is served without
//! decoding anything; at most [`MAKERS`] are made at once, each holding the file (at most
//! [`MAX_FILE_BYTES`]) and one decoded image, which the decoder refuses to allocate beyond
//! [`MAX_DECODE_BYTES`] or [`MAX_SIDE`] pixels a side (`image::Limits`), so a huge or hostile
//! PNG in the output root gets a clear error instead of taking the process down. The slot is
//! held by the decoding itself, not by the request: a client that goes away does not free it
//! while its image is still being decoded.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
/// Longest side of an image that is thumbnailed.
pub const MAX_SIDE: u32 = 16384;
/// Most bytes the decoder may allocate for one image (a 4096x4096 RGBA image with 16 bits a
/// channel; an 8-bit 2048x2048 RGB image, the largest sdspool renders by default, needs 12 MiB).
pub const MAX_DECODE_BYTES: u64 = 128 * 1024 * 1024;
/// Largest PNG file that is thumbnailed.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Why there is no thumbnail.
#[derive(Debug, thiserror::Error)]
pub enum ThumbError {
    #[error("not found")]
    NotFound,
    #[error(
        "{file}: the PNG file is {len} bytes, more than thumbnails are made for ({MAX_FILE_BYTES})"
    )]
    FileTooLarge { file: String, len: u64 },
    #[error(
        "{file}: the image is {width}x{height}, larger than thumbnails are made for (at most {MAX_SIDE} pixels a side and {} MiB decoded)",
        MAX_DECODE_BYTES / (1024 * 1024)
    )]
    TooLarge {
        file: String,
        width: u32,
        height: u32,
    },
    #[error("{file}: cannot decode the PNG")]
    Decode {
        file: String,
        #[source]
        source: image::ImageError,
    },
    #[error("{file}: cannot encode the thumbnail")]
    Encode {
        file: String,
        #[source]
        source: image::ImageError,
    },
}

impl ThumbError {
    fn response(&self) -> Response {
        match self {
            ThumbError::NotFound => error(StatusCode::NOT_FOUND, "not found"),
            ThumbError::FileTooLarge { .. } | ThumbError::TooLarge { .. } => {
                error(StatusCode::UNPROCESSABLE_ENTITY, self.to_string())
            }
            ThumbError::Decode { source, .. } | ThumbError::Encode { source, .. } => error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{self}: {source}"),
            ),
        }
    }
}

pub struct ThumbCache {
    pub dir: PathBuf,
    makers: Arc<tokio::sync::Semaphore>,
    /// Thumbnails being made now, and the most ever made at once.
    making: AtomicUsize,
    most_making: AtomicUsize,
}

impl ThumbCache {
    pub fn new(config: &crate::app::config::Config) -> ThumbCache {
        ThumbCache {
            dir: config.spool.dir.join("web-cache").join("thumbs"),
            makers: Arc::new(tokio::sync::Semaphore::new(MAKERS)),
            making: AtomicUsize::new(0),
            most_making: AtomicUsize::new(0),
        }
    }

    /// The most thumbnails this cache has made at the same time.
    pub fn most_made_at_once(&self) -> usize {
        self.most_making.load(Ordering::SeqCst)
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

    /// The cached thumbnail of `rel`: `Ok(Some)` when cached, `Ok(None)` when it must be made
    /// (at the cache file returned by [`ThumbCache::make_and_cache`]).
    fn cached(
        &self,
        root: &std::path::Path,
        rel: &str,
    ) -> Result<(PathBuf, Option<Vec<u8>>), ThumbError> {
        let file = self.key(root, rel).ok_or(ThumbError::NotFound)?;
        let bytes = std::fs::read(&file).ok();
        Ok((file, bytes))
    }

    /// Makes the thumbnail of `rel` and writes it to `cached` (best effort).
    fn make_and_cache(
        &self,
        root: &std::path::Path,
        rel: &str,
        cached: &std::path::Path,
    ) -> Result<Vec<u8>, ThumbError> {
        let now = self.making.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_making.fetch_max(now, Ordering::SeqCst);
        let made = read_png(root, rel).and_then(|bytes| make(rel, &bytes));
        self.making.fetch_sub(1, Ordering::SeqCst);
        let bytes = made?;
        super::metrics::telemetry().record_thumbnail_made();
        if std::fs::create_dir_all(&self.dir).is_ok()
            && let Err(e) = crate::sys::atomic::write(cached, &bytes)
        {
            tracing::debug!(error = %e, "cannot cache a thumbnail");
        }
        Ok(bytes)
    }
}

/// The bytes of the PNG `rel` under `root`, when it is a regular file no larger than
/// [`MAX_FILE_BYTES`] (links are not followed).
fn read_png(root: &std::path::Path, rel: &str) -> Result<Vec<u8>, ThumbError> {
    let (folder, name) = rel.rsplit_once('/').ok_or(ThumbError::NotFound)?;
    let dir = open_job_folder(root, folder).ok_or(ThumbError::NotFound)?;
    match dir.entry(name) {
        Ok(crate::jobs::output::folder::Entry::File { len }) if len > MAX_FILE_BYTES => {
            Err(ThumbError::FileTooLarge {
                file: rel.to_string(),
                len,
            })
        }
        Ok(crate::jobs::output::folder::Entry::File { .. }) => {
            read_under(root, rel).ok_or(ThumbError::NotFound)
        }
        _ => Err(ThumbError::NotFound),
    }
}

/// A PNG thumbnail of the PNG `bytes` (named `file` in errors), decoded within the limits.
pub fn make(file: &str, bytes: &[u8]) -> Result<Vec<u8>, ThumbError> {
    let reader =
        || image::ImageReader::with_format(std::io::Cursor::new(bytes), image::ImageFormat::Png);
    let decode_error = |source| ThumbError::Decode {
        file: file.to_string(),
        source,
    };
    let (width, height) = reader().into_dimensions().map_err(decode_error)?;
    let too_large = ThumbError::TooLarge {
        file: file.to_string(),
        width,
        height,
    };
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(too_large);
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut decoder = reader();
    decoder.limits(limits);
    let img = match decoder.decode() {
        Ok(img) => img,
        Err(image::ImageError::Limits(_)) => return Err(too_large),
        Err(e) => return Err(decode_error(e)),
    };
    let small = if width.max(height) > SIDE {
        img.thumbnail(SIDE, SIDE)
    } else {
        img
    };
    let mut out = Vec::new();
    small
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|source| ThumbError::Encode {
            file: file.to_string(),
            source,
        })?;
    Ok(out)
}

/// `GET /thumbs/<folder>/<image>`: from the cache when it is there (no slot needed), else made
/// in one of the [`MAKERS`] slots.
pub async fn thumbnail(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    let Some(rel) = safe_rel(&path).filter(|r| r.to_ascii_lowercase().ends_with(".png")) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let st = state.clone();
    let key = rel.clone();
    let (cache_file, cached) =
        match blocking(move || st.thumbs.cached(&st.config.output_dir, &key)).await {
            Some(Ok(found)) => found,
            Some(Err(e)) => return e.response(),
            None => return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the cache"),
        };
    let made = match cached {
        Some(bytes) => Ok(bytes),
        None => {
            let Ok(slot) = state.thumbs.makers.clone().acquire_owned().await else {
                return error(StatusCode::SERVICE_UNAVAILABLE, "busy");
            };
            let st = state.clone();
            let made = blocking(move || {
                let _slot = slot;
                st.thumbs
                    .make_and_cache(&st.config.output_dir, &rel, &cache_file)
            })
            .await;
            match made {
                Some(m) => m,
                None => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot make the thumbnail",
                    );
                }
            }
        }
    };
    match made {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            if !matches!(e, ThumbError::NotFound) {
                tracing::warn!(error = %e, "no thumbnail");
            }
            e.response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A PNG whose header says `width`x`height` RGBA with 16 bits a channel and which has no
    /// only the start of its pixel data: what a hostile file claiming a huge image looks like to
    /// the decoder.
    fn claimed(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, width, height);
        e.set_color(png::ColorType::Rgba);
        e.set_depth(png::BitDepth::Sixteen);
        let mut w = e.write_header().unwrap();
        w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0, 0, 0, 0])
            .unwrap();
        drop(w);
        out
    }

    #[test]
    fn a_huge_or_hostile_png_is_refused_before_it_is_decoded() {
        // Too many pixels a side: refused from the header.
        let e = make("job/wide.png", &claimed(MAX_SIDE + 1, 1)).unwrap_err();
        assert!(matches!(e, ThumbError::TooLarge { width, .. } if width == MAX_SIDE + 1));
        assert!(
            e.to_string().contains("job/wide.png: the image is 16385x1"),
            "{e}"
        );
        // Within the sides but 2 GiB decoded: the decoder's allocation limit refuses it.
        let e = make("job/bomb.png", &claimed(MAX_SIDE, MAX_SIDE)).unwrap_err();
        assert!(matches!(e, ThumbError::TooLarge { .. }), "{e:?}");
        // Not a PNG at all.
        let e = make("job/x.png", b"not a png").unwrap_err();
        assert!(matches!(e, ThumbError::Decode { .. }), "{e:?}");
        // A real image is thumbnailed.
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(400, 200, image::Rgb([9, 8, 7]))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        let small = image::load_from_memory(&make("job/ok.png", &bytes).unwrap()).unwrap();
        assert_eq!((small.width(), small.height()), (SIDE, SIDE / 2));
    }

    /// The server's state for an output root with a job folder `job` of `n` 1024x1024 PNGs.
    fn state_with_images(tmp: &std::path::Path, n: usize) -> Arc<AppState> {
        let job = tmp.join("out/job");
        std::fs::create_dir_all(&job).unwrap();
        let img = image::RgbImage::from_fn(1024, 1024, |x, y| {
            image::Rgb([x as u8, y as u8, (x ^ y) as u8])
        });
        img.save(job.join("0.png")).unwrap();
        for i in 1..n {
            std::fs::copy(job.join("0.png"), job.join(format!("{i}.png"))).unwrap();
        }
        let yaml = format!(
            "models:\n  sd:\n    path: /m/sd\ndefault_model: sd\noutput_dir: {}\nspool:\n  dir: {}\n",
            tmp.join("out").display(),
            tmp.join("spool").display()
        );
        let config = crate::app::config::Config::parse(&yaml, &tmp.join("config.yaml")).unwrap();
        Arc::new(AppState {
            templates: super::super::pages::templates(),
            thumbs: ThumbCache::new(&config),
            manifests: Default::default(),
            jobs: Default::default(),
            config: Arc::new(config),
        })
    }

    #[test]
    fn at_most_makers_decode_at_once_even_when_clients_go_away() {
        let tmp = tempfile::tempdir().unwrap();
        let state = state_with_images(tmp.path(), 16);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // 16 requests whose clients give up after 20 ms, long before a decode is done.
            let mut tasks = Vec::new();
            for i in 0..16 {
                let st = state.clone();
                tasks.push(tokio::spawn(tokio::time::timeout(
                    Duration::from_millis(20),
                    thumbnail(State(st), Path(format!("job/{i}.png"))),
                )));
            }
            for t in tasks {
                let _ = t.await;
            }
            // Then 16 that wait for their answer.
            let mut tasks = Vec::new();
            for i in 0..16 {
                let st = state.clone();
                tasks.push(tokio::spawn(thumbnail(
                    State(st),
                    Path(format!("job/{i}.png")),
                )));
            }
            for t in tasks {
                assert_eq!(t.await.unwrap().status(), StatusCode::OK);
            }
        });
        let most = state.thumbs.most_made_at_once();
        assert!((1..=MAKERS).contains(&most), "{most} made at once");
        // Made once: each image has its cached thumbnail.
        assert_eq!(std::fs::read_dir(&state.thumbs.dir).unwrap().count(), 16);
    }
}
