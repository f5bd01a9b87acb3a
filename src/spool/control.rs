//! Queue control through files in `<spool>/control/`, so that it works from any host that sees
//! the spool and survives daemon restarts:
//!
//! ```text
//! <spool.dir>/control/
//!   paused              present: no job starts (the running ones finish); `sdspool pause`/`resume`
//!   cancel/cats.yaml    a request to cancel the running job `cats` (`sdspool cancel cats`)
//!   timings.json        measured seconds per UNet step, for ETAs ([`crate::jobs::eta`])
//! ```
//!
//! A cancel request names the job's file by device and inode as well as by name, so a request
//! left over from an earlier job of the same name never cancels a later one. Daemons poll the
//! request at every denoising step of the job and remove it once the job is filed. A request
//! may also name a job still waiting in `incoming/` (left by a user who may not move it to
//! `failed/` himself, as a member of the `sdspool-submit` group under the shipped layout):
//! daemons file such jobs as cancelled ([`file_cancelled_queued`]), also while paused.
//!
//! The shipped layout (`systemd/sdspool.tmpfiles`) makes `control/` and `control/cancel/`
//! writable by the `sdspool-submit` group, so the files here are written readable by all
//! ([`SHARED_MODE`]) whatever the writer's umask: the daemon, another user, must read them.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::fsops::{self, FileId, rfc3339};
use super::{Layout, SpoolError};

/// The control folder inside the spool.
pub const CONTROL: &str = "control";
/// The pause flag file inside the control folder.
pub const PAUSED: &str = "paused";
/// The folder of cancel requests inside the control folder.
pub const CANCEL: &str = "cancel";

/// Permissions of the files written here: readable by the daemon and by `sdspool status` of
/// any user (replaced by rename, so they need not be writable by the group).
pub const SHARED_MODE: u32 = 0o644;

/// `control/paused`: who paused the spool and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    #[serde(with = "rfc3339")]
    pub paused_at: SystemTime,
    /// `user@host`.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `control/cancel/<stem>.yaml`: a request to cancel one running job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The job's name in the spool (the stem of its file).
    pub job: String,
    /// Identity of `running/<stem>.yaml` when the request was made.
    pub dev: u64,
    pub ino: u64,
    #[serde(with = "rfc3339")]
    pub requested_at: SystemTime,
    /// `user@host`.
    pub by: String,
}

impl CancelRequest {
    /// Whether the request names the file at `path` (the same file, not only the same name).
    pub fn names(&self, path: &Path) -> bool {
        FileId::at(path).is_some_and(|id| id.dev == self.dev && id.ino == self.ino)
    }
}

/// Writes `bytes` to `target` atomically (a temporary file in the same folder, fsynced and
/// renamed), with [`SHARED_MODE`] whatever the umask.
fn write_shared(target: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let tmp = crate::sys::atomic::temp_path(target);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(SHARED_MODE))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, target)?;
        crate::sys::atomic::sync_dir(target.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The control folder of one spool. Reading never creates anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub dir: PathBuf,
}

/// A time as `2026-11-24T03:12:00Z`.
pub fn format_time(t: SystemTime) -> String {
    rfc3339::format(t)
}

/// `user@host` of this process.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "someone".to_string());
    format!("{user}@{}", fsops::hostname())
}

impl Control {
    /// The control folder of the spool at `root`.
    pub fn new(root: &Path) -> Control {
        Control {
            dir: root.join(CONTROL),
        }
    }

    /// The control folder of a spool's layout.
    pub fn of(layout: &Layout) -> Control {
        Control::new(&layout.root)
    }

    fn paused_path(&self) -> PathBuf {
        self.dir.join(PAUSED)
    }

    /// The request file of job `stem`.
    pub fn cancel_path(&self, stem: &str) -> PathBuf {
        self.dir.join(CANCEL).join(format!("{stem}.yaml"))
    }

    fn err(path: &Path, op: &str, e: io::Error) -> SpoolError {
        SpoolError::new(path, op, e)
    }

    /// Pauses the spool: no daemon starts a job until [`Control::resume`]. Returns the record in
    /// place: the existing one (and `false`) when it was already paused.
    pub fn pause(&self, reason: Option<String>) -> Result<(PauseRecord, bool), SpoolError> {
        if let Some(existing) = self.paused() {
            return Ok((existing, false));
        }
        let record = PauseRecord {
            paused_at: SystemTime::now(),
            by: who(),
            reason,
        };
        let path = self.paused_path();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Self::err(&self.dir, "creating the control folder", e))?;
        let text = serde_saphyr::to_string(&record)
            .map_err(|e| Self::err(&path, "writing the pause flag", io::Error::other(e)))?;
        write_shared(&path, text.as_bytes())
            .map_err(|e| Self::err(&path, "writing the pause flag", e))?;
        Ok((record, true))
    }

    /// Resumes a paused spool. Returns the pause record that was removed, `None` when it was not
    /// paused.
    pub fn resume(&self) -> Result<Option<PauseRecord>, SpoolError> {
        let path = self.paused_path();
        let record = self.paused();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                let _ = crate::sys::atomic::sync_dir(&self.dir);
                Ok(Some(record.unwrap_or(PauseRecord {
                    paused_at: SystemTime::UNIX_EPOCH,
                    by: String::new(),
                    reason: None,
                })))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::err(&path, "removing the pause flag", e)),
        }
    }

    /// Whether the spool is paused: the flag file exists (whatever it holds; an unreadable one
    /// still pauses, with an empty record).
    pub fn is_paused(&self) -> bool {
        std::fs::symlink_metadata(self.paused_path()).is_ok()
    }

    /// The pause record, when paused.
    pub fn paused(&self) -> Option<PauseRecord> {
        if !self.is_paused() {
            return None;
        }
        let text = std::fs::read_to_string(self.paused_path()).unwrap_or_default();
        Some(
            crate::sys::yaml::parse::<PauseRecord>(&text).unwrap_or(PauseRecord {
                paused_at: std::fs::symlink_metadata(self.paused_path())
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                by: String::new(),
                reason: None,
            }),
        )
    }

    /// Asks the daemons to cancel the job whose file is `job_file`: `running/<stem>.yaml` (its
    /// daemon stops it at the next step), or a file of `incoming/` (a daemon files it in
    /// `failed/` before it starts).
    pub fn request_cancel(&self, stem: &str, job_file: &Path) -> Result<CancelRequest, SpoolError> {
        let meta = std::fs::symlink_metadata(job_file)
            .map_err(|e| Self::err(job_file, "looking at the job", e))?;
        let id = FileId::of(&meta);
        let request = CancelRequest {
            job: stem.to_string(),
            dev: id.dev,
            ino: id.ino,
            requested_at: SystemTime::now(),
            by: who(),
        };
        let path = self.cancel_path(stem);
        let folder = self.dir.join(CANCEL);
        std::fs::create_dir_all(&folder)
            .map_err(|e| Self::err(&folder, "creating the cancel folder", e))?;
        let text = serde_saphyr::to_string(&request)
            .map_err(|e| Self::err(&path, "writing the cancel request", io::Error::other(e)))?;
        write_shared(&path, text.as_bytes())
            .map_err(|e| Self::err(&path, "writing the cancel request", e))?;
        Ok(request)
    }

    /// The cancel request for the job whose file is `running_job` (`running/<stem>.yaml`), if
    /// there is one for that very file. One `stat` when there is none: cheap enough for every
    /// step.
    pub fn cancel_requested(&self, stem: &str, running_job: &Path) -> Option<CancelRequest> {
        let path = self.cancel_path(stem);
        std::fs::symlink_metadata(&path).ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        let request = crate::sys::yaml::parse::<CancelRequest>(&text).ok()?;
        request.names(running_job).then_some(request)
    }

    /// The request for `stem` whatever file it names (for `sdspool status`).
    pub fn cancel_request_of(&self, stem: &str) -> Option<CancelRequest> {
        let text = std::fs::read_to_string(self.cancel_path(stem)).ok()?;
        crate::sys::yaml::parse::<CancelRequest>(&text).ok()
    }

    /// Removes the request of `stem` (after its job was filed; any request left for that name
    /// then names a file that is gone).
    pub fn clear_cancel(&self, stem: &str) {
        let path = self.cancel_path(stem);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove the cancel request")
            }
        }
    }
}

/// Cancels a job still waiting in `incoming/` (the file `name` there): moves it straight to
/// `failed/` with an error file that says who (`by`, `user@host`) cancelled it. `Ok(None)`: it
/// is no longer there (a daemon claimed it meanwhile, or it was removed). Fails with the
/// system's `PermissionDenied` for a user who may not move it (then
/// [`Control::request_cancel`] asks the daemons to).
pub fn cancel_queued(
    layout: &Layout,
    name: &str,
    stem: &str,
    by: &str,
) -> Result<Option<super::Finished>, SpoolError> {
    let src = layout.incoming.join(name);
    let record = super::ErrorFile {
        job: name.to_string(),
        step: "cancelled".into(),
        field: None,
        error: format!("cancelled by {by} with `sdspool cancel` before it started"),
        failed_at: SystemTime::now(),
        attempts: 0,
        host: fsops::hostname(),
        pid: std::process::id(),
    };
    let mover = fsops::Mover::new(fsops::ClaimMethod::Auto);
    let placed = super::finish::place(
        &mover,
        &src,
        &layout.failed,
        stem,
        super::names::ERROR_SUFFIX,
        record.to_yaml().as_bytes(),
    )
    .map_err(|e| SpoolError::new(&src, "moving the cancelled job to failed/", e))?;
    if placed.is_some() {
        let _ = crate::sys::atomic::sync_dir(&layout.incoming);
    }
    Ok(placed)
}

/// Files in `failed/` the jobs of `incoming/` that a cancel request names (requests left by
/// users who may not move them there themselves), and removes those requests. For daemons,
/// which own the spool's folders; a request is left alone when its file is not in `incoming/`
/// (a running job's, which its daemon handles; or one whose job is gone). Problems are logged.
pub fn file_cancelled_queued(layout: &Layout) -> Vec<super::Finished> {
    let control = Control::of(layout);
    let folder = control.dir.join(CANCEL);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Vec::new();
    };
    let mut filed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = file_name.strip_suffix(".yaml") else {
            continue;
        };
        let Some(request) = control.cancel_request_of(stem) else {
            continue;
        };
        let queued = super::names::JOB_EXTENSIONS
            .iter()
            .map(|ext| format!("{stem}.{ext}"))
            .find(|name| request.names(&layout.incoming.join(name)));
        let Some(name) = queued else { continue };
        match cancel_queued(layout, &name, stem, &request.by) {
            Ok(Some(finished)) => {
                tracing::info!(job = %name, by = %request.by, path = %finished.job.display(), "cancelled before it started");
                control.clear_cancel(stem);
                filed.push(finished);
            }
            // Claimed meanwhile: its daemon finds the request when it starts the job.
            Ok(None) => {}
            Err(e) => tracing::warn!(job = %name, error = %e, "cannot file the cancelled job"),
        }
    }
    filed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_and_resume_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Control::new(tmp.path());
        assert!(!c.is_paused() && c.paused().is_none());
        assert!(c.resume().unwrap().is_none());
        let (record, new) = c.pause(Some("GPU needed".into())).unwrap();
        assert!(new);
        assert!(c.is_paused());
        let back = c.paused().unwrap();
        assert_eq!(back.by, record.by);
        assert_eq!(back.reason.as_deref(), Some("GPU needed"));
        let (_, new) = c.pause(None).unwrap();
        assert!(!new, "already paused");
        assert!(c.resume().unwrap().is_some());
        assert!(!c.is_paused());
        // An unreadable flag still pauses.
        std::fs::write(tmp.path().join("control/paused"), "{{{").unwrap();
        assert!(c.paused().is_some());
    }

    #[test]
    fn a_cancel_request_applies_only_to_the_file_it_names() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Control::new(tmp.path());
        let job = tmp.path().join("cats.yaml");
        std::fs::write(&job, "prompts: [a]\n").unwrap();
        assert!(c.cancel_requested("cats", &job).is_none());
        c.request_cancel("cats", &job).unwrap();
        assert_eq!(c.cancel_requested("cats", &job).unwrap().job, "cats");
        // A later job of the same name is another file (the first one still exists elsewhere,
        // so its inode cannot be reused): the old request does not apply to it.
        std::fs::rename(&job, tmp.path().join("old.yaml")).unwrap();
        std::fs::write(&job, "prompts: [b]\n").unwrap();
        assert!(c.cancel_requested("cats", &job).is_none());
        assert!(c.cancel_request_of("cats").is_some());
        c.clear_cancel("cats");
        assert!(c.cancel_request_of("cats").is_none());
        c.clear_cancel("cats");
    }

    #[test]
    fn daemons_file_the_queued_jobs_a_request_names() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        layout.create().unwrap();
        let c = Control::of(&layout);
        for name in ["cats.yaml", "dogs.yml", "birds.yaml"] {
            std::fs::write(layout.incoming.join(name), "prompts: [a]\n").unwrap();
        }
        c.request_cancel("cats", &layout.incoming.join("cats.yaml"))
            .unwrap();
        c.request_cancel("dogs", &layout.incoming.join("dogs.yml"))
            .unwrap();
        // A request for an earlier `birds` does not cancel this one.
        let earlier = tmp.path().join("earlier.yaml");
        std::fs::write(&earlier, "prompts: [b]\n").unwrap();
        c.request_cancel("birds", &earlier).unwrap();

        let filed = file_cancelled_queued(&layout);
        let mut jobs: Vec<_> = filed.iter().map(|f| f.job.clone()).collect();
        jobs.sort();
        assert_eq!(
            jobs,
            [
                layout.failed.join("cats.yaml"),
                layout.failed.join("dogs.yaml")
            ]
        );
        let error = std::fs::read_to_string(layout.failed.join("cats.error.yaml")).unwrap();
        assert!(
            error.contains("step: cancelled") && error.contains(&who()),
            "{error}"
        );
        assert!(layout.incoming.join("birds.yaml").exists());
        assert!(c.cancel_request_of("cats").is_none() && c.cancel_request_of("dogs").is_none());
        assert!(c.cancel_request_of("birds").is_some());
        assert!(file_cancelled_queued(&layout).is_empty());
    }
}
