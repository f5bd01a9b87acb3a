//! Startup: what a crash (of this daemon, or of another one on the same spool) left behind.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::finish::Failure;
use super::fsops::{self, FileId};
use super::names::{self, ATTEMPTS_SUFFIX, NameKind, STATUS_SUFFIX};
use super::queue::{order_key, read_priority};
use super::{Attempts, Claimed, Spool, SpoolError};

impl Spool {
    /// Cleans up after a crash and returns the jobs to resume, already claimed (locked) with
    /// their attempt counted, best first. Call it once at startup, before [`Spool::next_job`].
    ///
    /// In order:
    /// 1. Temporary files (`.sdspool-tmp-*`) in the four folders are removed when the process
    ///    that wrote them is gone from this host or they are older than ten minutes.
    /// 2. A file in `incoming/` that is the same inode as a job in `running/` (a claim by
    ///    `link()` + `unlink()` interrupted between the two) is removed; the job is in `running/`.
    /// 3. Every job in `running/` whose lock no live process holds is orphaned. If it is also in
    ///    `done/` or `failed/` (a move by link interrupted), its `running/` name is removed.
    ///    If its attempts reached `max_crashes` it goes to `failed/` with "crashed the daemon N
    ///    times"; otherwise its attempt count goes up by one and it is returned. Jobs whose
    ///    lock is held belong to a live daemon and are left alone. Where the file system has no
    ///    locks, only jobs whose recorded owner is a dead process of this host are taken.
    /// 4. Attempts and status files without their job in `running/` are removed.
    pub fn recover(&self) -> Result<Vec<Claimed>, SpoolError> {
        self.remove_stale_temps()?;
        self.remove_incoming_twins()?;
        let mut resumed = Vec::new();
        let running = &self.layout.running;
        let mut finished_ids: Option<HashSet<FileId>> = None;
        for (name, meta) in list(running)? {
            let Some(stem) = name.strip_suffix(".yaml") else {
                continue;
            };
            if !matches!(
                names::classify(std::ffi::OsStr::new(&name)),
                NameKind::Job { .. }
            ) {
                continue;
            }
            let path = running.join(&name);
            if !meta.file_type().is_file() {
                tracing::warn!(file = %path.display(), "not a regular file in running/; left alone");
                continue;
            }
            let lock = match self.open_locked(&path) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot open a job in running/; left alone");
                    continue;
                }
            };
            let attempts_path = running.join(format!("{stem}{ATTEMPTS_SUFFIX}"));
            let record = match Attempts::read(&attempts_path) {
                Ok(r) => Some(r),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable attempts file; counting from 0");
                    None
                }
            };
            let owner_known_dead = || match &record {
                Some(r) if r.host == self.host.name => {
                    (r.boot_id.is_some() && r.boot_id != self.host.boot_id)
                        || !fsops::pid_alive(r.pid)
                }
                _ => false,
            };
            let orphan = match (&lock, &record) {
                // We hold the lock and the owner held it too: the owner is gone.
                (Some(_), Some(r)) if r.locked => true,
                // Claimed, then gone before the attempts file was written.
                (Some(_), None) => true,
                // No lock to go by: only the owner record.
                _ => owner_known_dead(),
            };
            if !orphan {
                if lock.is_none() {
                    tracing::warn!(
                        job = %path.display(),
                        "left alone: without file locks sdspool cannot tell whether its daemon on another host is alive"
                    );
                }
                continue;
            }
            let id = FileId::of(&meta);
            let finished = finished_ids.get_or_insert_with(|| self.finished_ids());
            if finished.contains(&id) {
                // Filed by link() and the daemon died before removing the running/ name.
                for p in [
                    path.clone(),
                    attempts_path.clone(),
                    running.join(format!("{stem}{STATUS_SUFFIX}")),
                ] {
                    let _ = std::fs::remove_file(p);
                }
                tracing::info!(job = %name, "already filed in done/ or failed/; removed from running/");
                continue;
            }
            if let Some(r) = &record
                && let Some(dest) = self.interrupted_filing(stem, r)
            {
                // The daemon died between writing the side file and moving the job beside it:
                // finish what it was doing instead of running the job again.
                match self.mover.move_noreplace(&path, &dest) {
                    Ok(fsops::Moved::Done) => {
                        for p in [
                            attempts_path.clone(),
                            running.join(format!("{stem}{STATUS_SUFFIX}")),
                        ] {
                            let _ = std::fs::remove_file(p);
                        }
                        let _ = fsops::sync_parent(&dest);
                        let _ = fsops::sync_parent(&path);
                        tracing::info!(job = %name, filed_as = %dest.display(), "finished filing a job that a daemon died while filing");
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(job = %name, error = %e, "cannot finish filing the job; it runs again")
                    }
                }
            }
            let before = record.as_ref().map_or(0, |r| r.attempts);
            let mut claimed = Claimed {
                name: name.clone(),
                stem: stem.to_string(),
                submitted_as: name.clone(),
                path_in_running: path.clone(),
                attempts: before,
                priority: match read_priority(&path, self.options.max_job_bytes) {
                    Ok(Ok(p)) => p,
                    _ => 0,
                },
                resumed: true,
                lock,
            };
            if before >= self.config.max_crashes {
                let last = record
                    .as_ref()
                    .map(|r| {
                        format!(
                            "; the last attempt started at {} on {} (pid {})",
                            fsops::rfc3339::format(r.started_at),
                            r.host,
                            r.pid
                        )
                    })
                    .unwrap_or_default();
                let failure = Failure::new(
                    "run",
                    format!(
                        "crashed the daemon {before} times (spool.max_crashes is {}){last}",
                        self.config.max_crashes
                    ),
                );
                if let Err(e) = self.finish_failed(claimed, &failure) {
                    return Err(e.error);
                }
                continue;
            }
            self.begin_attempt(&mut claimed)?;
            tracing::info!(job = %name, attempt = claimed.attempts, "resuming a job left in running/");
            resumed.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), claimed));
        }
        self.remove_orphan_side_files()?;
        resumed.sort_by(|(ta, a), (tb, b)| {
            order_key(a.priority, *ta, &a.name).cmp(&order_key(b.priority, *tb, &b.name))
        });
        Ok(resumed.into_iter().map(|(_, c)| c).collect())
    }

    fn remove_stale_temps(&self) -> Result<(), SpoolError> {
        // The control folder (pause, cancel requests, timings) is written the same way.
        let control = self.layout.root.join(super::control::CONTROL);
        let cancel = control.join(super::control::CANCEL);
        let extra = [control.as_path(), cancel.as_path()];
        let dirs = self
            .layout
            .folders()
            .into_iter()
            .chain(extra.into_iter().filter(|d| d.is_dir()));
        for dir in dirs {
            for (name, meta) in list(dir)? {
                if !names::is_temp(std::ffi::OsStr::new(&name)) {
                    continue;
                }
                if crate::sys::atomic::is_leftover(&name, &meta) {
                    let path = dir.join(&name);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::info!(file = %path.display(), "removed a leftover temporary file")
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(SpoolError::new(
                                &path,
                                "removing a leftover temporary file",
                                e,
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn remove_incoming_twins(&self) -> Result<(), SpoolError> {
        for (name, meta) in list(&self.layout.incoming)? {
            let NameKind::Job { stem } = names::classify(std::ffi::OsStr::new(&name)) else {
                continue;
            };
            let running = self.layout.running.join(format!("{stem}.yaml"));
            if FileId::at(&running) == Some(FileId::of(&meta)) {
                let path = self.layout.incoming.join(&name);
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(
                        file = %path.display(),
                        "removed: the same file is already claimed in running/ (an interrupted link claim)"
                    ),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(SpoolError::new(
                            &path,
                            "removing an interrupted claim's old name",
                            e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Where a daemon that died while filing `stem` meant to put it: a side file
    /// (`x.result.yaml` in done/, `x.error.yaml` in failed/, or a `-N` name) without its job
    /// file, written after the job's latest attempt started (so not one an earlier job of the
    /// same name left behind).
    fn interrupted_filing(&self, stem: &str, record: &Attempts) -> Option<std::path::PathBuf> {
        // Whole seconds are recorded: a side file of the same second counts.
        let started = record
            .started_at
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for (dir, suffix) in [
            (&self.layout.done, names::RESULT_SUFFIX),
            (&self.layout.failed, names::ERROR_SUFFIX),
        ] {
            for k in 1..=super::finish::MAX_SUFFIX {
                let n = if k == 1 {
                    stem.to_string()
                } else {
                    format!("{stem}-{k}")
                };
                let job = dir.join(format!("{n}.yaml"));
                let side = std::fs::symlink_metadata(dir.join(format!("{n}{suffix}")));
                let job_exists = std::fs::symlink_metadata(&job).is_ok();
                match side {
                    Ok(m) if !job_exists && m.modified().is_ok_and(|t| t >= started) => {
                        return Some(job);
                    }
                    Err(_) if !job_exists => break,
                    _ => {}
                }
            }
        }
        None
    }

    fn finished_ids(&self) -> HashSet<FileId> {
        let mut ids = HashSet::new();
        for dir in [&self.layout.done, &self.layout.failed] {
            if let Ok(entries) = list(dir) {
                ids.extend(entries.iter().map(|(_, m)| FileId::of(m)));
            }
        }
        ids
    }

    fn remove_orphan_side_files(&self) -> Result<(), SpoolError> {
        let running = &self.layout.running;
        for (name, _) in list(running)? {
            let stem = name
                .strip_suffix(ATTEMPTS_SUFFIX)
                .or_else(|| name.strip_suffix(STATUS_SUFFIX));
            let Some(stem) = stem else { continue };
            if name.starts_with('.') {
                continue;
            }
            if std::fs::symlink_metadata(running.join(format!("{stem}.yaml"))).is_err() {
                let _ = std::fs::remove_file(running.join(&name));
            }
        }
        Ok(())
    }
}

/// The entries of a folder with their metadata (links not followed), sorted by name.
fn list(dir: &Path) -> Result<Vec<(String, std::fs::Metadata)>, SpoolError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| SpoolError::new(dir, "listing the folder", e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::new(dir, "listing the folder", e))?;
        if let Ok(meta) = std::fs::symlink_metadata(entry.path()) {
            out.push((entry.file_name().to_string_lossy().into_owned(), meta));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
