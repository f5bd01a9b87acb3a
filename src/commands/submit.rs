//! `sdspool submit JOB`: checks a job file against the configuration and copies it into the
//! spool's `incoming/` atomically (a temporary dotfile in `incoming/`, fsync, rename), so the
//! daemon never sees it half-written.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::job::{self, JobError};
use crate::output::atomic;
use crate::spool::fsops::{self, Moved, Mover};
use crate::spool::names::{self, NameKind};
use crate::spool::{Layout, SpoolError};

/// Why a job was not submitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The job file is not valid: the file and the field.
    #[error(transparent)]
    Invalid(#[from] JobError),
    /// The job is valid but was not copied, and why.
    #[error("{}: {message}", path.display())]
    Refused { path: PathBuf, message: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// `incoming/<name>`.
    pub path: PathBuf,
    /// An earlier file of the same name waiting in `incoming/` was replaced (`--replace`).
    pub replaced: bool,
    /// A job of the same name is running: this one runs after it.
    pub waits_for_running: bool,
}

/// Validates `job_file` and copies it into `incoming/` under its own name. An existing
/// `incoming/` file of that name is replaced only with `replace` (if the daemon claimed that
/// one meanwhile, the new file simply becomes the next job of that name).
pub fn run(config: &Config, job_file: &Path, replace: bool) -> Result<Submitted, SubmitError> {
    let refused = |message: String| SubmitError::Refused {
        path: job_file.to_path_buf(),
        message,
    };
    let Some(name) = job_file.file_name() else {
        return Err(refused("is not a file name".into()));
    };
    let stem = match names::classify(name) {
        NameKind::Job { stem } => stem,
        NameKind::Unusable { reason, .. } => return Err(refused(reason)),
        NameKind::Ignored => {
            return Err(refused(
                "the daemon takes only files named *.yaml or *.yml that do not start with '.'; rename it".into(),
            ));
        }
    };
    job::load(job_file, config)?;

    let max = config.limits.max_job_bytes;
    let mut bytes = Vec::new();
    std::fs::File::open(job_file)
        .and_then(|f| f.take(max + 1).read_to_end(&mut bytes))
        .map_err(|e| refused(format!("cannot read: {e}")))?;

    let layout = Layout::new(&config.spool.dir);
    layout.create()?;
    let dest = layout.incoming.join(name);
    let tmp = atomic::temp_path(&dest);
    let io = |op: &str, e: std::io::Error| SubmitError::Spool(SpoolError::new(&tmp, op, e));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("writing the job into incoming/", e)
        })?;
    // Validate exactly the bytes that will run (the file may have changed since it was read).
    if let Err(mut e) =
        job::read_spec(&tmp, max).and_then(|spec| job::resolve(spec, &stem, job_file, config, 0))
    {
        let _ = std::fs::remove_file(&tmp);
        e.file = job_file.to_path_buf();
        return Err(e.into());
    }

    let existed = std::fs::symlink_metadata(&dest).is_ok();
    let published = if replace {
        std::fs::rename(&tmp, &dest).map(|()| Moved::Done)
    } else {
        Mover::new(Default::default()).move_noreplace(&tmp, &dest)
    };
    match published {
        Ok(Moved::Done) => {}
        Ok(Moved::Exists) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(SubmitError::Refused {
                path: dest,
                message: "already exists: a job of that name is waiting to run; pass --replace to replace it".into(),
            });
        }
        Ok(Moved::SourceGone) => {
            return Err(io(
                "moving the job into incoming/",
                std::io::Error::other(
                    "the temporary file was removed (by a starting daemon?); submit again",
                ),
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("moving the job into incoming/", e));
        }
    }
    fsops::sync_parent(&dest)
        .map_err(|e| SpoolError::new(&layout.incoming, "syncing the folder", e))?;
    let waits_for_running =
        std::fs::symlink_metadata(layout.running.join(format!("{stem}.yaml"))).is_ok();
    Ok(Submitted {
        path: dest,
        replaced: replace && existed,
        waits_for_running,
    })
}
