//! Filing a job when its work ends: `done/` with the worker's summary, or `failed/` with why.
//!
//! The side file (`x.result.yaml`, `x.error.yaml`) is written first, atomically and never over
//! an existing one, then the job file is moved beside it, never over an existing one. When
//! `done/x.yaml` (or its side file) exists from an earlier job of the same name, the pair gets
//! the first free name of `x-2`, `x-3`, ...: nothing in `done/` or `failed/` is overwritten.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::fsops::{self, Moved, Mover};
use super::names::{ERROR_SUFFIX, RESULT_SUFFIX};
use super::{Claimed, Spool, SpoolError};
use crate::jobs::job::JobError;

/// Most `-N` suffixes tried for a free name.
pub(crate) const MAX_SUFFIX: u32 = 100_000;

/// Why a job failed: the step, the field of the job file when one is at fault, and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What was being done: `validate`, `load model`, `render`, `write images`, ...
    pub step: String,
    /// Dotted field of the job file (`prompts[2].candidates`), when one is at fault.
    pub field: Option<String>,
    pub message: String,
}

impl Failure {
    pub fn new(step: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            step: step.into(),
            field: None,
            message: message.into(),
        }
    }

    /// The same failure blamed on a field of the job file.
    pub fn with_field(mut self, field: impl Into<String>) -> Failure {
        self.field = Some(field.into());
        self
    }
}

impl From<&JobError> for Failure {
    /// A job file that does not validate: step `validate`, its field and message.
    fn from(e: &JobError) -> Failure {
        Failure {
            step: "validate".into(),
            field: (!e.field.is_empty()).then(|| e.field.clone()),
            message: e.message.clone(),
        }
    }
}

/// `failed/x.error.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFile {
    /// The job file's name as submitted.
    pub job: String,
    /// The step that failed (`claim` for files that could not be taken at all).
    pub step: String,
    /// The job file's field at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub error: String,
    #[serde(with = "fsops::rfc3339")]
    pub failed_at: SystemTime,
    /// Attempts started (0: never claimed).
    pub attempts: u32,
    pub host: String,
    pub pid: u32,
}

impl ErrorFile {
    /// The YAML text of the file.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("error: {e:?}\n"))
    }

    /// Reads an error file.
    pub fn read(path: &Path) -> io::Result<ErrorFile> {
        let text = std::fs::read_to_string(path)?;
        crate::sys::yaml::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// Where a job was filed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// `done/x.yaml` or `failed/x.yaml` (or `x-N.yaml`).
    pub job: PathBuf,
    /// `done/x.result.yaml` or `failed/x.error.yaml` beside it.
    pub side_file: PathBuf,
}

/// A job that could not be filed; it is still claimed (its file in `running/`, its lock held),
/// so the caller may try again.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct FinishError {
    #[source]
    pub error: SpoolError,
    pub claimed: Box<Claimed>,
}

/// Moves `src` into `dest` as `<n>.yaml` with `<n><side_suffix>` beside it, `n` the first of
/// `stem`, `stem-2`, ... that is free. `Ok(None)`: `src` is gone.
pub(crate) fn place(
    mover: &Mover,
    src: &Path,
    dest: &Path,
    stem: &str,
    side_suffix: &str,
    side: &[u8],
) -> io::Result<Option<Finished>> {
    for k in 1..=MAX_SUFFIX {
        let n = if k == 1 {
            stem.to_string()
        } else {
            format!("{stem}-{k}")
        };
        let job = dest.join(format!("{n}.yaml"));
        let side_file = dest.join(format!("{n}{side_suffix}"));
        if FileIdExists::at(&job) || FileIdExists::at(&side_file) {
            continue;
        }
        match fsops::write_file(&side_file, side, false, mover)? {
            Moved::Done => {}
            Moved::Exists | Moved::SourceGone => continue,
        }
        match mover.move_noreplace(src, &job) {
            Ok(Moved::Done) => {
                // The move is done: a failing fsync is worth a warning, not an error (the job
                // must not be filed twice by a caller retrying).
                for dir in [&job, &src.to_path_buf()] {
                    if let Err(e) = fsops::sync_parent(dir) {
                        tracing::warn!(file = %dir.display(), error = %e, "cannot fsync the folder");
                    }
                }
                return Ok(Some(Finished { job, side_file }));
            }
            Ok(Moved::Exists) => {
                let _ = std::fs::remove_file(&side_file);
            }
            Ok(Moved::SourceGone) => {
                let _ = std::fs::remove_file(&side_file);
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&side_file);
                return Err(e);
            }
        }
    }
    Err(io::Error::other(format!(
        "no free name for {stem} in {}",
        dest.display()
    )))
}

/// Whether a name exists (links not followed).
struct FileIdExists;

impl FileIdExists {
    fn at(path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }
}

impl Spool {
    /// Files a job whose work succeeded: writes `done/<stem>.result.yaml` with `summary_yaml`
    /// (written as given; the caller formats it), then moves the job file to
    /// `done/<stem>.yaml`, and removes its attempts and status files. A name taken by an earlier
    /// job gets `-2`, `-3`, ....
    pub fn finish_done(
        &self,
        claimed: Claimed,
        summary_yaml: &str,
    ) -> Result<Finished, FinishError> {
        let dest = self.layout.done.clone();
        self.file(
            claimed,
            &dest,
            RESULT_SUFFIX,
            summary_yaml.as_bytes().to_vec(),
            "done/",
        )
    }

    /// Files a job that failed: writes `failed/<stem>.error.yaml` (step, field, reason, when,
    /// attempts, host) and moves the job file beside it.
    pub fn finish_failed(
        &self,
        claimed: Claimed,
        failure: &Failure,
    ) -> Result<Finished, FinishError> {
        let record = ErrorFile {
            job: claimed.submitted_as.clone(),
            step: failure.step.clone(),
            field: failure.field.clone(),
            error: failure.message.clone(),
            failed_at: SystemTime::now(),
            attempts: claimed.attempts,
            host: self.host.name.clone(),
            pid: self.host.pid,
        };
        let dest = self.layout.failed.clone();
        tracing::warn!(
            job = %claimed.name,
            step = %failure.step,
            field = failure.field.as_deref().unwrap_or(""),
            error = %failure.message,
            "job failed"
        );
        self.file(
            claimed,
            &dest,
            ERROR_SUFFIX,
            record.to_yaml().into_bytes(),
            "failed/",
        )
    }

    fn file(
        &self,
        claimed: Claimed,
        dest: &Path,
        side_suffix: &str,
        side: Vec<u8>,
        folder: &str,
    ) -> Result<Finished, FinishError> {
        let op = format!("moving the job to {folder}");
        let fail = |claimed: Claimed, e: io::Error| FinishError {
            error: SpoolError::new(&claimed.path_in_running, op.clone(), e),
            claimed: Box::new(claimed),
        };
        let placed = match place(
            &self.mover,
            &claimed.path_in_running,
            dest,
            &claimed.stem,
            side_suffix,
            &side,
        ) {
            Ok(p) => p,
            Err(e) => return Err(fail(claimed, e)),
        };
        let Some(finished) = placed else {
            let e = io::Error::new(
                io::ErrorKind::NotFound,
                "the job file is no longer in running/ (removed by hand?)",
            );
            return Err(fail(claimed, e));
        };
        for side in [claimed.attempts_path(), claimed.status_path()] {
            if let Err(e) = std::fs::remove_file(&side)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %side.display(), error = %e, "cannot remove");
            }
        }
        let _ = fsops::sync_parent(&claimed.path_in_running);
        tracing::info!(job = %claimed.name, filed_as = %finished.job.display(), "finished");
        drop(claimed);
        Ok(finished)
    }
}
