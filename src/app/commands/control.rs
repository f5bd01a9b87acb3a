//! `sdspool pause`, `sdspool resume` and `sdspool cancel JOB`: queue control through files in
//! the spool's `control/` folder ([`crate::spool::control`]), so they work from any host that
//! sees the spool, whether a daemon runs or not, and survive restarts.

use std::io;
use std::path::{Path, PathBuf};

use crate::app::config::Config;
use crate::spool::control::{self, CancelRequest, Control, PauseRecord};
use crate::spool::names::{self, NameKind};
use crate::spool::{Finished, Layout, SpoolError};

/// Why a cancel did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("{0:?} is not a job name: {1}")]
    BadName(String, String),
    #[error(
        "no job named `{0}` is waiting in incoming/ or running (finished jobs cannot be cancelled); `sdspool status` lists the jobs"
    )]
    NotFound(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// What `sdspool cancel` did.
#[derive(Debug, Clone)]
pub struct Cancelled {
    /// The job's name in the spool.
    pub stem: String,
    /// Queued files moved straight to failed/.
    pub queued: Vec<Finished>,
    /// A request for the daemons to file a queued job in failed/, left because this user may
    /// not move it there (as a member of the `sdspool-submit` group under the shipped layout).
    pub queued_request: Option<QueuedRequest>,
    /// The request left for the daemon running it.
    pub running: Option<CancelRequest>,
    /// Queued files of that name still waiting: a request names one file, and that one is
    /// taken.
    pub left_queued: Vec<String>,
}

/// A cancel request for a job still in `incoming/`.
#[derive(Debug, Clone)]
pub struct QueuedRequest {
    pub request: CancelRequest,
    /// The queued file.
    pub name: String,
    /// Why this user could not move it to failed/ (the system's answer).
    pub why: String,
}

/// `sdspool pause`: the record now in place and whether this call paused it.
pub fn pause(config: &Config, reason: Option<String>) -> Result<(PauseRecord, bool), SpoolError> {
    Control::new(&config.spool.dir).pause(reason)
}

/// `sdspool resume`: the pause record removed, `None` when the spool was not paused.
pub fn resume(config: &Config) -> Result<Option<PauseRecord>, SpoolError> {
    Control::new(&config.spool.dir).resume()
}

/// The job's name in the spool from what the user typed: `cats`, `cats.yaml`, or a path to
/// the job file in one of the spool's folders.
fn stem_of(arg: &str) -> Result<String, CancelError> {
    let name = Path::new(arg)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = if name.ends_with(".yaml") || name.ends_with(".yml") {
        name
    } else {
        format!("{name}.yaml")
    };
    match names::classify(std::ffi::OsStr::new(&name)) {
        NameKind::Job { stem } => Ok(stem),
        NameKind::Unusable { reason, .. } => Err(CancelError::BadName(arg.to_string(), reason)),
        NameKind::Ignored => Err(CancelError::BadName(
            arg.to_string(),
            "job names do not start with '.'".into(),
        )),
    }
}

/// `sdspool cancel JOB`: a job waiting in `incoming/` goes straight to `failed/` as cancelled,
/// or, when this user may not move it there, a request is left that the daemons act on; for a
/// running job, a request is left that its daemon polls at every step: it stops the job and
/// files it in `failed/` as cancelled, with the images finished by then and the manifest. Both
/// happen when a job of that name runs while another waits.
pub fn cancel(config: &Config, job: &str) -> Result<Cancelled, CancelError> {
    let layout = Layout::new(&config.spool.dir);
    let control = Control::of(&layout);
    let stem = spool_name(config, &layout, stem_of(job)?, job)?;
    let mut queued = Vec::new();
    let mut denied = Vec::new();
    for name in queued_names(&layout, &stem) {
        match control::cancel_queued(&layout, &name, &stem, &control::who()) {
            Ok(Some(f)) => queued.push(f),
            Ok(None) => {}
            Err(e) if e.source.kind() == io::ErrorKind::PermissionDenied => {
                denied.push((name, e.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A daemon may have claimed a queued one meanwhile: then it is running, and asked to stop.
    let mut running = request_running(&control, &layout, &stem)?;
    let mut queued_request = None;
    let mut left_queued = Vec::new();
    for (name, why) in denied {
        let path = layout.incoming.join(&name);
        if running.is_some() || queued_request.is_some() {
            if exists(&path) {
                left_queued.push(name);
            }
            continue;
        }
        match control.request_cancel(&stem, &path) {
            Ok(request) => queued_request = Some(QueuedRequest { request, name, why }),
            // Claimed (or removed) between the two looks.
            Err(_) if !exists(&path) => running = request_running(&control, &layout, &stem)?,
            Err(e) => return Err(e.into()),
        }
    }
    if queued.is_empty() && queued_request.is_none() && running.is_none() {
        return Err(CancelError::NotFound(stem));
    }
    Ok(Cancelled {
        stem,
        queued,
        queued_request,
        running,
        left_queued,
    })
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn running_path(layout: &Layout, stem: &str) -> PathBuf {
    layout.running.join(format!("{stem}.yaml"))
}

/// The files of `incoming/` named `stem`.
fn queued_names(layout: &Layout, stem: &str) -> Vec<String> {
    names::JOB_EXTENSIONS
        .iter()
        .map(|ext| format!("{stem}.{ext}"))
        .filter(|n| exists(&layout.incoming.join(n)))
        .collect()
}

/// The job's name in the spool: `stem` when a file has that name, else the name of the running
/// job whose `id:` is `typed`, else `stem`.
fn spool_name(
    config: &Config,
    layout: &Layout,
    stem: String,
    typed: &str,
) -> Result<String, SpoolError> {
    if !queued_names(layout, &stem).is_empty() || exists(&running_path(layout, &stem)) {
        return Ok(stem);
    }
    let overview = crate::spool::status::overview(&config.spool, config.limits.max_job_bytes)?;
    Ok(overview
        .running
        .iter()
        .find(|r| r.progress.as_ref().is_some_and(|p| p.job_id == typed))
        .map(|r| r.name.trim_end_matches(".yaml").to_string())
        .unwrap_or(stem))
}

/// Asks the daemon running `stem` to stop it; `None` when no job of that name runs.
fn request_running(
    control: &Control,
    layout: &Layout,
    stem: &str,
) -> Result<Option<CancelRequest>, SpoolError> {
    let path = running_path(layout, stem);
    if !exists(&path) {
        return Ok(None);
    }
    match control.request_cancel(stem, &path) {
        Ok(r) => Ok(Some(r)),
        // Filed between the look and the request.
        Err(_) if !exists(&path) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What `sdspool cancel` prints: what was done, and where the rest will show.
pub fn describe(c: &Cancelled) -> String {
    let mut out = String::new();
    for f in &c.queued {
        out += &format!(
            "cancelled {} before it started: {}\n",
            c.stem,
            f.job.display()
        );
    }
    if let Some(q) = &c.queued_request {
        out += &format!(
            "cancel requested for the queued job {}: you may not move it to failed/ yourself ({}); a daemon files it there as cancelled before it starts (`sdspool status` shows the request until then)\n",
            q.name, q.why
        );
    }
    if c.running.is_some() {
        out += &format!(
            "cancel requested for the running job {}: its daemon stops it at the next step and files it in failed/; which images were finished and kept is known then: its error file in failed/ says, and the job's manifest.json lists them\n",
            c.stem
        );
    }
    for name in &c.left_queued {
        out += &format!(
            "not cancelled: incoming/{name} waits for the running job of the same name; run `sdspool cancel {}` again once that one is filed\n",
            c.stem
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_from_what_users_type() {
        assert_eq!(stem_of("cats").unwrap(), "cats");
        assert_eq!(stem_of("cats.yaml").unwrap(), "cats");
        assert_eq!(stem_of("cats.yml").unwrap(), "cats");
        assert_eq!(stem_of("spool/incoming/cats.yaml").unwrap(), "cats");
        assert!(stem_of(".hidden").is_err());
        assert!(stem_of("x.result").is_err());
    }
}
