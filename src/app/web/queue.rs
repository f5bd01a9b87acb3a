//! The queue as the pages and the metrics show it: the spool's overview with each queued job's
//! estimate and start and end times (the same as `sdspool status`), and the jobs that ended
//! most recently.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::app::config::Config;
use crate::spool::SpoolError;
use crate::spool::status::Overview;

/// How many done and failed jobs the queue page lists.
pub const RECENT: usize = 20;

/// The spool's state with the queue's estimates filled in.
pub fn overview(config: &Config) -> Result<Overview, SpoolError> {
    let mut o = crate::spool::status::overview(&config.spool, config.limits.max_job_bytes)?;
    crate::app::commands::status::estimate_queue(config, &mut o);
    Ok(o)
}

/// A job that ended, as its result or error file says.
#[derive(Debug, Clone, Serialize)]
pub struct Ended {
    /// `cats` (the file name without `.yaml`).
    pub stem: String,
    pub failed: bool,
    #[serde(with = "crate::spool::fsops::rfc3339")]
    pub ended_at: SystemTime,
    /// The job's output folder relative to the output root, when it has one there.
    pub output: Option<String>,
    /// The step it failed at and why.
    pub step: Option<String>,
    pub message: Option<String>,
    pub images: Option<usize>,
}

#[derive(Deserialize)]
struct ResultFile {
    output: Option<PathBuf>,
    images: Option<usize>,
}

#[derive(Deserialize)]
struct ErrorFile {
    step: Option<String>,
    message: Option<String>,
    error: Option<String>,
}

/// The `limit` jobs that ended last in done/ and failed/, newest first.
pub fn recent(config: &Config, limit: usize) -> Vec<Ended> {
    let layout = crate::spool::Layout::new(&config.spool.dir);
    let mut found: Vec<(SystemTime, PathBuf, bool)> = Vec::new();
    for (dir, suffix, failed) in [
        (&layout.done, ".result.yaml", false),
        (&layout.failed, ".error.yaml", true),
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(suffix) {
                continue;
            }
            if let Ok(m) = e.metadata() {
                found.push((
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    e.path(),
                    failed,
                ));
            }
        }
    }
    found.sort_by_key(|e| std::cmp::Reverse(e.0));
    found.truncate(limit);
    found
        .into_iter()
        .map(|(at, path, failed)| read_ended(config, &path, at, failed))
        .collect()
}

/// Small files only: a result or error file is a few hundred bytes.
const MAX_SUMMARY_BYTES: u64 = 256 * 1024;

fn read_small(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_SUMMARY_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

fn read_ended(config: &Config, path: &Path, at: SystemTime, failed: bool) -> Ended {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let stem = name
        .trim_end_matches(".result.yaml")
        .trim_end_matches(".error.yaml")
        .to_string();
    let text = read_small(path).unwrap_or_default();
    let mut ended = Ended {
        stem,
        failed,
        ended_at: at,
        output: None,
        step: None,
        message: None,
        images: None,
    };
    if failed {
        if let Ok(e) = serde_saphyr::from_str::<ErrorFile>(&text) {
            ended.step = e.step;
            ended.message = e.message.or(e.error);
        }
    } else if let Ok(r) = serde_saphyr::from_str::<ResultFile>(&text) {
        ended.images = r.images;
        ended.output = r
            .output
            .and_then(|o| {
                o.strip_prefix(&config.output_dir)
                    .ok()
                    .map(Path::to_path_buf)
            })
            .map(|p| p.to_string_lossy().into_owned());
    }
    ended
}
