//! `sdspool pause`, `sdspool resume` and `sdspool cancel JOB`: queue control through files in
//! the spool's `control/` folder ([`crate::spool::control`]), so they work from any host that
//! sees the spool, whether a daemon runs or not, and survive restarts.

use std::path::Path;

use crate::config::Config;
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
    /// The request left for the daemon running it.
    pub running: Option<CancelRequest>,
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

/// `sdspool cancel JOB`: a job waiting in `incoming/` goes straight to `failed/` as cancelled;
/// for a running job, a request is left that its daemon polls at every step: it stops the job,
/// keeps the finished images and the manifest, and files the job in `failed/` as cancelled.
/// Both happen when a job of that name runs while another waits.
pub fn cancel(config: &Config, job: &str) -> Result<Cancelled, CancelError> {
    let layout = Layout::new(&config.spool.dir);
    let mut stem = stem_of(job)?;
    let running_path = |stem: &str| layout.running.join(format!("{stem}.yaml"));
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let queued_names = |stem: &str| {
        names::JOB_EXTENSIONS
            .iter()
            .map(|ext| format!("{stem}.{ext}"))
            .filter(|n| exists(&layout.incoming.join(n)))
            .collect::<Vec<_>>()
    };
    // Not a file name in the spool: maybe the `id:` of a running job.
    if queued_names(&stem).is_empty() && !exists(&running_path(&stem)) {
        let overview = crate::spool::status::overview(&config.spool, config.limits.max_job_bytes)?;
        if let Some(r) = overview
            .running
            .iter()
            .find(|r| r.progress.as_ref().is_some_and(|p| p.job_id == job))
        {
            stem = r.name.trim_end_matches(".yaml").to_string();
        }
    }
    let mut queued = Vec::new();
    for name in queued_names(&stem) {
        if let Some(f) = control::cancel_queued(&layout, &name, &stem)? {
            queued.push(f);
        }
    }
    // A daemon may have claimed a queued one meanwhile: then it is running, and asked to stop.
    let running = if exists(&running_path(&stem)) {
        let c = Control::of(&layout);
        match c.request_cancel(&stem, &running_path(&stem)) {
            Ok(r) => Some(r),
            // Filed between the look and the request.
            Err(_) if !exists(&running_path(&stem)) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    if queued.is_empty() && running.is_none() {
        return Err(CancelError::NotFound(stem));
    }
    Ok(Cancelled {
        stem,
        queued,
        running,
    })
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
