//! Progress of running jobs (`running/x.status.json`, written by the worker) and the overview
//! `sdspool status` prints.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::control::{CancelRequest, Control, PauseRecord};
use super::fsops::{self, rfc3339};
use super::names::{self, ATTEMPTS_SUFFIX, NameKind, STATUS_SUFFIX};
use super::queue::{not_regular_reason, order_key, read_priority};
use super::{Attempts, Layout, SpoolConfig, SpoolError};

/// A running job's status is called stale when it was not updated for this long and its process
/// is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// `running/x.status.json`: what the worker is doing, rewritten (atomically) as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's id (`id:` or the file's stem).
    pub job_id: String,
    pub model: String,
    /// The prompt being rendered, 0-based.
    pub prompt_index: usize,
    pub prompt_total: usize,
    /// Denoising steps done in the current batch.
    pub step: u32,
    pub step_total: u32,
    pub images_done: usize,
    pub images_total: usize,
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
    /// Estimated seconds until the job is done, when known.
    pub eta_seconds: Option<u64>,
    pub pid: u32,
    pub hostname: String,
    /// Set while the job waits to run again because its files could not be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<StorageWait>,
}

/// Why a running job waits, and until when: its output (or its filing in done/ or failed/)
/// could not be written because the disk is full, read-only or not writable. It stays claimed
/// and runs again, from its manifest, at `retry_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageWait {
    pub reason: String,
    #[serde(with = "rfc3339")]
    pub retry_at: SystemTime,
}

impl JobStatus {
    /// The status of a job starting now in this process.
    pub fn starting(
        job_id: impl Into<String>,
        model: impl Into<String>,
        prompt_total: usize,
        step_total: u32,
        images_total: usize,
    ) -> JobStatus {
        let now = SystemTime::now();
        JobStatus {
            job_id: job_id.into(),
            model: model.into(),
            prompt_index: 0,
            prompt_total,
            step: 0,
            step_total,
            images_done: 0,
            images_total,
            started_at: now,
            updated_at: now,
            eta_seconds: None,
            pid: std::process::id(),
            hostname: fsops::hostname(),
            waiting: None,
        }
    }

    /// How long ago it was updated.
    pub fn update_age(&self) -> Duration {
        fsops::age(self.updated_at)
    }

    /// Whether the status is stale: not updated for [`STALE_AFTER`] and written by a process of
    /// this host that no longer exists. (A process on another host cannot be checked from here.)
    pub fn is_stale(&self, this_host: &str) -> bool {
        self.update_age() > STALE_AFTER && self.hostname == this_host && !fsops::pid_alive(self.pid)
    }
}

/// Writes a status file atomically (temporary file, fsync, rename).
pub fn write_status(path: &Path, status: &JobStatus) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(status).map_err(io::Error::other)?;
    fsops::write_file(path, &bytes, true, &fsops::Mover::default()).map(|_| ())
}

/// Reads a status file; the error names the file.
pub fn read_status(path: &Path) -> io::Result<JobStatus> {
    let bytes = std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a job status: {e}", path.display()),
        )
    })
}

/// How many entries each folder holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub incoming: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
}

/// A job in `running/`.
#[derive(Debug, Clone, Serialize)]
pub struct RunningJob {
    /// `x.yaml`.
    pub name: String,
    /// From `x.attempts`.
    pub attempts: Option<u32>,
    /// From `x.status.json`, once the worker wrote it.
    pub progress: Option<JobStatus>,
    /// Why the status file could not be read, when it exists.
    pub progress_error: Option<String>,
    /// Owner host and process (from the status, else the attempts file).
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// Seconds since the last update (status, else attempt start).
    pub seconds_since_update: Option<u64>,
    /// Not updated for a minute and its process, on this host, is gone.
    pub stale: bool,
    /// `sdspool cancel` asked for it to stop; the daemon does at its next step.
    pub cancel_requested: Option<CancelRequest>,
    /// Seconds until it is done, from its status (`eta_seconds`, less the time since it was
    /// written).
    pub finishes_in_seconds: Option<u64>,
}

/// A job in `incoming/`, in the order the daemon will take them.
#[derive(Debug, Clone, Serialize)]
pub struct QueuedJob {
    pub name: String,
    pub priority: i32,
    /// Its modification time: when it was submitted.
    #[serde(with = "rfc3339")]
    pub submitted: SystemTime,
    pub size: u64,
    /// What will happen to it besides running: waits for a running job of the same name, will
    /// fail (does not parse, not a usable file).
    pub note: Option<String>,
    /// 1 for the job that runs next.
    pub position: usize,
    /// Images, UNet calls and seconds it takes, from the measured timings (filled in by
    /// `sdspool status`, which knows the configuration).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<crate::jobs::eta::Estimate>,
    /// Seconds until it starts and until it is done, counting the jobs before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_in_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finishes_in_seconds: Option<u64>,
}

/// The whole spool at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub spool_dir: PathBuf,
    /// This host, for judging whose processes can be checked.
    pub host: String,
    pub counts: Counts,
    /// `sdspool pause`: no job starts until `sdspool resume`.
    pub paused: Option<PauseRecord>,
    pub running: Vec<RunningJob>,
    pub queued: Vec<QueuedJob>,
}

/// Reads the spool at `config.dir` without changing anything. Missing folders count as empty.
pub fn overview(config: &SpoolConfig, max_job_bytes: u64) -> Result<Overview, SpoolError> {
    let layout = Layout::new(&config.dir);
    let control = Control::of(&layout);
    let host = fsops::hostname();
    let list = |dir: &Path| -> Result<Vec<(String, std::fs::Metadata)>, SpoolError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SpoolError::new(dir, "listing the folder", e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SpoolError::new(dir, "listing the folder", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(meta) = std::fs::symlink_metadata(entry.path()) {
                out.push((name, meta));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    };

    let finished = |dir: &Path| -> Result<usize, SpoolError> {
        Ok(list(dir)?
            .iter()
            .filter(|(n, _)| names::is_finished_job(std::ffi::OsStr::new(n)))
            .count())
    };

    let mut running = Vec::new();
    for (name, _) in list(&layout.running)? {
        let Some(stem) = name.strip_suffix(".yaml") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let attempts =
            Attempts::read(&layout.running.join(format!("{stem}{ATTEMPTS_SUFFIX}"))).ok();
        let status_path = layout.running.join(format!("{stem}{STATUS_SUFFIX}"));
        let (progress, progress_error) = match read_status(&status_path) {
            Ok(s) => (Some(s), None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let (owner_host, pid, updated) = match (&progress, &attempts) {
            (Some(p), _) => (Some(p.hostname.clone()), Some(p.pid), Some(p.updated_at)),
            (None, Some(a)) if !a.host.is_empty() => {
                (Some(a.host.clone()), Some(a.pid), Some(a.started_at))
            }
            _ => (None, None, None),
        };
        let age = updated.map(fsops::age);
        let stale = match (&owner_host, pid, age) {
            (Some(h), Some(pid), Some(age)) => {
                age > STALE_AFTER && *h == host && !fsops::pid_alive(pid)
            }
            _ => false,
        };
        let cancel_requested = control.cancel_request_of(stem).filter(|r| {
            fsops::FileId::at(&layout.running.join(&name))
                .is_some_and(|id| id.dev == r.dev && id.ino == r.ino)
        });
        let finishes_in_seconds = progress.as_ref().and_then(|p| {
            p.eta_seconds
                .map(|eta| eta.saturating_sub(p.update_age().as_secs()))
        });
        running.push(RunningJob {
            name,
            attempts: attempts.map(|a| a.attempts),
            progress,
            progress_error,
            host: owner_host,
            pid,
            seconds_since_update: age.map(|a| a.as_secs()),
            stale,
            cancel_requested,
            finishes_in_seconds,
        });
    }

    let mut queued = Vec::new();
    for (name, meta) in list(&layout.incoming)? {
        let kind = names::classify(std::ffi::OsStr::new(&name));
        let path = layout.incoming.join(&name);
        let (stem, mut note) = match &kind {
            NameKind::Ignored => continue,
            NameKind::Job { stem } => (stem.clone(), None),
            NameKind::Unusable { reason, .. } => (
                String::new(),
                Some(format!("will fail: unusable file name: {reason}")),
            ),
        };
        let mut priority = 0;
        if !meta.file_type().is_file() {
            note = Some(format!("will fail: {}", not_regular_reason(&path, &meta)));
        } else if note.is_none() {
            match read_priority(&path, max_job_bytes) {
                Ok(Ok(p)) => priority = p,
                Ok(Err(message)) => note = Some(format!("will fail: {message}")),
                Err(e) => note = Some(format!("will fail: cannot be read: {e}")),
            }
            if std::fs::symlink_metadata(layout.running.join(format!("{stem}.yaml"))).is_ok() {
                note = Some(format!(
                    "waits: a job named `{stem}` is running{}",
                    note.map(|n| format!("; then it {n}")).unwrap_or_default()
                ));
            }
        }
        queued.push(QueuedJob {
            name,
            priority,
            submitted: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            size: meta.len(),
            note,
            position: 0,
            estimate: None,
            starts_in_seconds: None,
            finishes_in_seconds: None,
        });
    }
    queued.sort_by(|a, b| {
        order_key(a.priority, a.submitted, &a.name).cmp(&order_key(
            b.priority,
            b.submitted,
            &b.name,
        ))
    });
    for (i, q) in queued.iter_mut().enumerate() {
        q.position = i + 1;
    }

    Ok(Overview {
        spool_dir: layout.root.clone(),
        host,
        counts: Counts {
            incoming: queued.len(),
            running: running.len(),
            done: finished(&layout.done)?,
            failed: finished(&layout.failed)?,
        },
        paused: control.paused(),
        running,
        queued,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_files_round_trip_and_name_the_file_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.status.json");
        let mut s = JobStatus::starting("x", "tiny-sd", 3, 25, 12);
        s.step = 7;
        s.eta_seconds = Some(42);
        write_status(&path, &s).unwrap();
        let back = read_status(&path).unwrap();
        // Times are stored to the second.
        assert_eq!(back.job_id, "x");
        assert_eq!(back.step, 7);
        assert_eq!(back.eta_seconds, Some(42));
        assert!(
            back.started_at <= s.started_at
                && s.started_at.duration_since(back.started_at).unwrap() < Duration::from_secs(1)
        );
        std::fs::write(&path, "{").unwrap();
        let e = read_status(&path).unwrap_err();
        assert!(e.to_string().contains("x.status.json"), "{e}");
    }

    #[test]
    fn stale_only_when_old_and_the_process_is_gone_here() {
        let mut s = JobStatus::starting("x", "m", 1, 1, 1);
        let host = fsops::hostname();
        assert!(!s.is_stale(&host));
        s.updated_at = SystemTime::now() - Duration::from_secs(120);
        // Our own process is alive.
        assert!(!s.is_stale(&host));
        s.pid = u32::MAX - 1;
        assert!(s.is_stale(&host));
        assert!(!s.is_stale("another-host"));
    }
}
