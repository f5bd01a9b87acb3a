//! The claimed copy: the bytes of a job file as they were when it was claimed, which is what
//! the worker renders and what is filed in `done/` or `failed/`.
//!
//! A job file can change after it is claimed: renamed into `incoming/` while its writer still
//! writes to it, or edited in place in `running/` while the job runs. So at the claim the spool
//! reads the file through the descriptor it locked, writes the bytes to
//! `<spool>/.claimed/<stem>.yaml` (read-only, never touched again) and records their size and
//! hash in the claim record. The worker loads that copy ([`Claimed::job_file`]), also when the
//! job resumes after a crash, so an edit never moves a resumed job to a second output folder.
//! When the job is filed and `running/<stem>.yaml` no longer holds the claimed bytes, the copy
//! is put back in its place first, so the file filed is the one that was rendered; the change
//! is logged and noted in the result or error file (`job_file_changed`).
//!
//! [`Claimed::job_file`]: super::Claimed::job_file

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Layout;
use super::fsops::{self, FileId, Mover};

/// The folder of claimed copies inside the spool.
pub const CLAIMED: &str = ".claimed";

/// Size and hash of a job file's bytes as claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBytes {
    pub bytes: u64,
    /// FNV-1a 64 of the bytes, in hex (to notice a change, not a security measure).
    pub fnv1a64: String,
}

impl JobBytes {
    pub fn of(bytes: &[u8]) -> JobBytes {
        JobBytes {
            bytes: bytes.len() as u64,
            fnv1a64: format!("{:016x}", crate::sys::hash::fnv1a64(bytes.iter().copied())),
        }
    }
}

/// `<spool>/.claimed`.
pub(crate) fn dir(layout: &Layout) -> PathBuf {
    layout.root.join(CLAIMED)
}

/// `<spool>/.claimed/<stem>.yaml`.
pub(crate) fn path(layout: &Layout, stem: &str) -> PathBuf {
    dir(layout).join(format!("{stem}.yaml"))
}

/// Reads a whole file from its start without moving its offset; `None` when it holds more than
/// `max` bytes.
pub(crate) fn read_all(file: &File, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read_at(&mut buf, out.len() as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(Some(out));
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() as u64 > max {
            return Ok(None);
        }
    }
}

/// Writes the claimed copy of `stem` (replacing one an earlier job of the name left) and says
/// what it holds; `Ok(None)` when no copy is made: the file is larger than `max` (the worker
/// fails it for that), or the copies' folder is not on the spool's file system.
pub(crate) fn make(
    layout: &Layout,
    mover: &Mover,
    stem: &str,
    job: &File,
    max: u64,
) -> io::Result<Option<JobBytes>> {
    let Some(bytes) = read_all(job, max)? else {
        return Ok(None);
    };
    let folder = dir(layout);
    std::fs::create_dir_all(&folder)?;
    if FileId::at(&folder).map(|f| f.dev) != FileId::at(&layout.running).map(|f| f.dev) {
        return Ok(None);
    }
    let target = path(layout, stem);
    fsops::write_file(&target, &bytes, true, mover)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o444))?;
    Ok(Some(JobBytes::of(&bytes)))
}

/// How `running/<stem>.yaml` differs from the bytes claimed, in a sentence; `None` when it
/// holds them (or cannot be read: filing reports that).
pub(crate) fn change(job_file: &Path, claimed: &JobBytes, max: u64) -> Option<String> {
    let file = fsops::open_nofollow(job_file).ok()?;
    let now = match read_all(&file, max).ok()? {
        Some(bytes) => JobBytes::of(&bytes),
        None => {
            return Some(format!(
                "{} changed after it was claimed: it is now larger than {max} bytes (it had {} bytes)",
                job_file.display(),
                claimed.bytes
            ));
        }
    };
    (now != *claimed).then(|| {
        format!(
            "{} changed after it was claimed ({} bytes, FNV-1a {} then; {} bytes, FNV-1a {} now: a writer still writing when it was renamed into incoming/, or an edit while it ran); the job ran as claimed, the file filed is the claimed one, and the change was not run (submit the changed file again to run it)",
            job_file.display(),
            claimed.bytes,
            claimed.fnv1a64,
            now.bytes,
            now.fnv1a64
        )
    })
}

/// Puts the claimed copy in place of `running/<stem>.yaml`, so the file filed is the one that
/// was rendered. The copy keeps its inode and times (the seed of a job that names none depends
/// on them), so a job resumed after this still loads the same file.
pub(crate) fn restore(layout: &Layout, stem: &str, job_file: &Path) -> io::Result<()> {
    let copy = path(layout, stem);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&copy, job_file)?;
    fsops::sync_parent(job_file)?;
    fsops::sync_parent(&copy)
}

/// Removes the claimed copy of a job that left `running/`.
pub(crate) fn remove(layout: &Layout, stem: &str) {
    let p = path(layout, stem);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %p.display(), error = %e, "cannot remove the claimed copy"),
    }
}
