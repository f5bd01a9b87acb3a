//! Jobs in `running/` whose daemon is gone: cleaned up after a crash at startup, and taken over
//! from dead daemons, at startup and on every rescan (see [`super::lease`]).

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::crashes::{self, Ending};
use super::finish::Failure;
use super::fsops::{self, FileId};
use super::lease::{Held, Observations, Seen};
use super::names::{self, ATTEMPTS_SUFFIX, NameKind, STATUS_SUFFIX};
use super::queue::{order_key, read_priority};
use super::{Attempts, Claimed, Spool, SpoolError, copy};

/// How a job in `running/` is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// At startup: claims of this host's dead processes and given-back claims are taken; leases
    /// of other hosts cannot have been watched yet.
    Startup,
    /// On a rescan: also claims seen unchanged for a whole lease.
    Rescan { expired: bool },
}

/// Why a claim's owner is taken to be gone.
type Gone = &'static str;

impl Spool {
    /// Cleans up after a crash and returns the jobs to resume, already claimed (locked) with
    /// their attempt counted, best first. Call it once at startup, before [`Spool::next_job`].
    ///
    /// In order:
    /// 1. Temporary files (`.sdspool-tmp-*`) in the four folders, `control/` and `.claimed/`
    ///    are removed when the process that wrote them is gone from this host or they are older
    ///    than ten minutes.
    /// 2. A file in `incoming/` that is the same inode as a job in `running/` (a claim by
    ///    `link()` + `unlink()` interrupted between the two) is removed; the job is in `running/`.
    /// 3. Every job in `running/` whose owner is gone is taken over: its claim was given back, or
    ///    its owner was a process of this host that no longer exists (or, where the file system
    ///    has locks, no longer holds the job file's lock), or the host rebooted. If it is also in
    ///    `done/` or `failed/` (a move by link interrupted), its `running/` name is removed. If
    ///    the crashes counted against it (see [`super::crashes`]) reach `max_crashes` it goes to
    ///    `failed/` saying so; otherwise its attempt count goes up by one and it is returned.
    ///    Jobs of live daemons are left alone; those of other hosts are taken over by
    ///    [`Spool::next_job`] once their lease expired.
    /// 4. Attempts and status files and claimed copies without their job in `running/` are
    ///    removed.
    ///
    /// The jobs returned count as being worked on: a crash before they are finished is evidence
    /// against them. A daemon that first loads its models uses [`Spool::recover_queued`].
    pub fn recover(&self) -> Result<Vec<Claimed>, SpoolError> {
        self.recover_with(true)
    }

    /// [`Spool::recover`] for jobs that wait for a worker: a crash before
    /// [`Spool::begin_work`] is not held against them (a daemon killed while it loads its
    /// models says nothing about the jobs it resumed).
    pub fn recover_queued(&self) -> Result<Vec<Claimed>, SpoolError> {
        self.recover_with(false)
    }

    fn recover_with(&self, working: bool) -> Result<Vec<Claimed>, SpoolError> {
        self.remove_stale_temps()?;
        self.remove_incoming_twins()?;
        let mut resumed = Vec::new();
        for (name, meta) in list(&self.layout.running)? {
            let Some(stem) = job_stem(&name) else {
                continue;
            };
            if let Some(c) = self.take_over(stem, &name, &meta, Look::Startup, working)? {
                resumed.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), c));
            }
        }
        self.remove_orphan_side_files()?;
        resumed.sort_by(|(ta, a), (tb, b)| {
            order_key(a.priority, *ta, &a.name).cmp(&order_key(b.priority, *tb, &b.name))
        });
        Ok(resumed.into_iter().map(|(_, c)| c).collect())
    }

    /// A rescan of `running/`: brings the observed claims up to date and takes over the best
    /// job whose owner is gone or whose lease expired, if any.
    pub(crate) fn scan_running(
        &self,
        observations: &mut Observations,
    ) -> Result<Option<Claimed>, SpoolError> {
        let now = Instant::now();
        let lease = self.config.lease();
        let mut stems = BTreeSet::new();
        let mut candidates = Vec::new();
        for (name, meta) in list(&self.layout.running)? {
            let Some(stem) = job_stem(&name) else {
                continue;
            };
            stems.insert(stem.to_string());
            if Held::is_held(self.running_id, stem) || !meta.file_type().is_file() {
                observations.forget(stem);
                continue;
            }
            let attempts_path = self.layout.running.join(format!("{stem}{ATTEMPTS_SUFFIX}"));
            let (record, renewed) = match Attempts::read_with_time(&attempts_path) {
                Ok((r, t)) => (Some(r), t),
                Err(e) if e.kind() == io::ErrorKind::NotFound => (None, meta.modified().ok()),
                Err(_) => continue,
            };
            let seen = Seen {
                claim: record
                    .as_ref()
                    .and_then(|r| r.claim.clone())
                    .unwrap_or_else(|| format!("file {:?}", FileId::of(&meta))),
                renewed,
            };
            let expired = observations.unchanged_for(stem, seen, lease, now);
            let maybe_free = expired
                || record
                    .as_ref()
                    .is_none_or(|r| r.released || r.host.is_empty() || r.host == self.host.name);
            if maybe_free {
                let priority =
                    read_priority(&self.layout.running.join(&name), self.options.max_job_bytes)
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(0);
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                candidates.push((order_key(priority, mtime, &name), name, meta, expired));
            }
        }
        observations.retain(&stems);
        candidates.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, name, meta, expired) in candidates {
            let stem = job_stem(&name).unwrap_or_default();
            if let Some(c) = self.take_over(stem, &name, &meta, Look::Rescan { expired }, true)? {
                observations.forget(stem);
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Takes over `running/<name>` if its owner is gone: `Ok(None)` when it is not (or the job
    /// was already filed, or failed for its crashes).
    fn take_over(
        &self,
        stem: &str,
        name: &str,
        meta: &std::fs::Metadata,
        look: Look,
        working: bool,
    ) -> Result<Option<Claimed>, SpoolError> {
        let path = self.layout.running.join(name);
        if Held::is_held(self.running_id, stem) {
            return Ok(None);
        }
        if !meta.file_type().is_file() {
            if look == Look::Startup {
                tracing::warn!(file = %path.display(), "not a regular file in running/; left alone");
            }
            return Ok(None);
        }
        let lock = match self.open_locked(&path) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot open a job in running/; left alone");
                return Ok(None);
            }
        };
        let attempts_path = self.layout.running.join(format!("{stem}{ATTEMPTS_SUFFIX}"));
        let record = match Attempts::read(&attempts_path) {
            Ok(r) => Some(r),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable attempts file; counting from 0");
                None
            }
        };
        let Some(gone) = self.owner_gone(record.as_ref(), lock.is_some(), look) else {
            if lock.is_none() && look == Look::Startup {
                tracing::warn!(
                    job = %path.display(),
                    "left alone for now: without file locks its owner's lease must expire first"
                );
            }
            return Ok(None);
        };
        if lock.is_none() && !self.win_without_locks(stem, record.as_ref(), meta) {
            return Ok(None);
        }
        if self.already_filed(stem, name, meta, record.as_ref()) {
            return Ok(None);
        }
        self.resume(stem, name, path, lock, record, gone, working)
    }

    /// Whether the owner of a claim is gone, and why.
    fn owner_gone(&self, record: Option<&Attempts>, locked: bool, look: Look) -> Option<Gone> {
        let expired = matches!(look, Look::Rescan { expired: true });
        let Some(r) = record else {
            // Claimed, then gone before its record was written (the claimer holds the lock
            // from before the move until the record exists).
            return if locked {
                Some("its claimer died before recording the claim")
            } else {
                expired.then_some("no claim record appeared for a whole lease")
            };
        };
        if r.released {
            return Some("it was given back by a clean stop");
        }
        if r.host.is_empty() && locked && r.locked {
            return Some("its owner no longer holds its lock");
        }
        if r.host == self.host.name {
            if r.boot_id.is_some() && self.host.boot_id.is_some() && r.boot_id != self.host.boot_id
            {
                return Some("this host was restarted since");
            }
            if r.pid == self.host.pid {
                // Not held by this process: dropped by it, or held by an earlier process with
                // the same id (a restarted container's pid 1).
                return Some("this process, or an earlier one with its pid, left it");
            }
            if !fsops::pid_alive(r.pid) {
                return Some("its process on this host is gone");
            }
            // A live process of that id: its claim stands until its lease expires (a free lock
            // alone may be a job file an editor replaced under a working daemon).
        }
        expired.then_some("its lease expired")
    }

    /// Without file locks, two daemons may find the same expired claim: the one that creates
    /// `<spool>/.claimed/<stem>.<claim>.takeover` first (a no-replace move, atomic on NFS too)
    /// takes it over.
    fn win_without_locks(
        &self,
        stem: &str,
        record: Option<&Attempts>,
        meta: &std::fs::Metadata,
    ) -> bool {
        let claim = record.and_then(|r| r.claim.clone()).unwrap_or_else(|| {
            let id = FileId::of(meta);
            format!("{}-{}-{}", id.dev, id.ino, record.map_or(0, |r| r.attempts))
        });
        let token =
            copy::dir(&self.layout).join(format!("{stem}.{claim}{}", names::TAKEOVER_SUFFIX));
        let mine = format!("{} {}\n", self.host.name, self.host.pid);
        let won = std::fs::create_dir_all(copy::dir(&self.layout))
            .and_then(|()| fsops::write_file(&token, mine.as_bytes(), false, &self.mover));
        matches!(won, Ok(fsops::Moved::Done))
    }

    /// Whether the job was filed already (a daemon died while filing it): finishes that filing
    /// and cleans `running/`.
    fn already_filed(
        &self,
        stem: &str,
        name: &str,
        meta: &std::fs::Metadata,
        record: Option<&Attempts>,
    ) -> bool {
        let running = &self.layout.running;
        let path = running.join(name);
        let side_files = [
            running.join(format!("{stem}{ATTEMPTS_SUFFIX}")),
            running.join(format!("{stem}{STATUS_SUFFIX}")),
        ];
        if self.finished_ids().contains(&FileId::of(meta)) {
            // Filed by link() and the daemon died before removing the running/ name.
            for p in std::iter::once(&path).chain(&side_files) {
                let _ = std::fs::remove_file(p);
            }
            copy::remove(&self.layout, stem);
            tracing::info!(job = %name, "already filed in done/ or failed/; removed from running/");
            return true;
        }
        let Some(dest) = record.and_then(|r| self.interrupted_filing(stem, r)) else {
            return false;
        };
        // The daemon died between writing the side file and moving the job beside it: finish
        // what it was doing instead of running the job again.
        match self.mover.move_noreplace(&path, &dest) {
            Ok(fsops::Moved::Done) => {
                for p in &side_files {
                    let _ = std::fs::remove_file(p);
                }
                copy::remove(&self.layout, stem);
                let _ = fsops::sync_parent(&dest);
                let _ = fsops::sync_parent(&path);
                tracing::info!(job = %name, filed_as = %dest.display(), "finished filing a job that a daemon died while filing");
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "cannot finish filing the job; it runs again");
                false
            }
        }
    }

    /// Claims a job whose owner is gone: judges how its last attempt ended (see
    /// [`super::crashes`]), fails it when the crashes counted reach `max_crashes`, else records
    /// this process's claim and hands it out.
    #[allow(clippy::too_many_arguments)]
    fn resume(
        &self,
        stem: &str,
        name: &str,
        path: PathBuf,
        lock: Option<File>,
        record: Option<Attempts>,
        gone: Gone,
        working: bool,
    ) -> Result<Option<Claimed>, SpoolError> {
        let status =
            super::status::read_status(&self.layout.running.join(format!("{stem}{STATUS_SUFFIX}")))
                .ok();
        let ending = match &record {
            Some(r) => crashes::ending(r, status.as_ref()),
            None => Ending::NoEvidence("no record of its attempt"),
        };
        let before = record.as_ref().map_or(0, |r| r.attempts);
        let (crash_count, crashed_at) = match &record {
            Some(r) => crashes::count(r, &ending),
            None => (0, None),
        };
        let priority = read_priority(&path, self.options.max_job_bytes)
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let mut new = self.new_record(before + 1, lock.is_some(), working);
        new.crashes = crash_count;
        new.crashed_at = crashed_at;
        new.job = record.as_ref().and_then(|r| r.job.clone());
        if new.job.is_some() && !copy::path(&self.layout, stem).exists() {
            // The copy was put in place of the job file (filing had begun), or lost.
            new.job = None;
        }
        let failing = crash_count >= self.config.max_crashes;
        if failing {
            new.attempts = before;
        }
        let claimed = self.hold(
            name.to_string(),
            stem,
            name.to_string(),
            path,
            priority,
            lock,
            new,
            true,
        );
        if failing {
            let old = record
                .as_ref()
                .unwrap_or_else(|| unreachable!("no crashes without a record"));
            let reason = crashes::reason(crash_count, self.config.max_crashes, &ending, old);
            if let Err(e) = self.finish_failed(claimed, &Failure::new("run", reason)) {
                return Err(e.error);
            }
            return Ok(None);
        }
        if let Some(owner) = &record
            && !owner.released
        {
            // Its files in progress anywhere (the job's output folder too) are leftovers now.
            if !owner.host.is_empty() && owner.host != self.host.name {
                crate::sys::atomic::note_gone_writer(&owner.host, owner.pid);
            }
            self.remove_temps_of(stem, owner);
        }
        if let Some(bytes) = &claimed.record().job
            && let Some(change) =
                copy::change(&claimed.path_in_running, bytes, self.options.max_job_bytes)
        {
            tracing::warn!(job = %name, "{change}");
        }
        tracing::info!(
            job = %name,
            attempt = claimed.attempts,
            crashes = crash_count,
            why = gone,
            last_attempt = %ending,
            "taking over a job left in running/"
        );
        Ok(Some(claimed))
    }

    /// Removes the temporary files the gone owner of `stem` left in `running/` and `.claimed/`
    /// (its status or claim record, its copy being written): written by its host and process,
    /// which a daemon of another host cannot otherwise tell from files in progress.
    fn remove_temps_of(&self, stem: &str, owner: &Attempts) {
        let tag = crate::sys::atomic::host_tag_of(&owner.host);
        let targets = [
            format!("{stem}{STATUS_SUFFIX}"),
            format!("{stem}{ATTEMPTS_SUFFIX}"),
            format!("{stem}.yaml"),
        ];
        for dir in [self.layout.running.clone(), copy::dir(&self.layout)] {
            for (name, _) in list(&dir).unwrap_or_default() {
                let ours = crate::sys::atomic::temp_writer(&name)
                    .is_some_and(|(t, pid, _)| t == tag && pid == owner.pid);
                let target = name
                    .strip_prefix(crate::sys::atomic::TEMP_PREFIX)
                    .and_then(|rest| rest.splitn(4, '-').nth(3));
                if ours && target.is_some_and(|t| targets.iter().any(|x| x == t)) {
                    match std::fs::remove_file(dir.join(&name)) {
                        Ok(()) => {
                            tracing::info!(file = %dir.join(&name).display(), "removed a temporary file the job's gone owner left")
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(file = %dir.join(&name).display(), error = %e, "cannot remove a temporary file the job's gone owner left")
                        }
                    }
                }
            }
        }
    }

    fn remove_stale_temps(&self) -> Result<(), SpoolError> {
        // The control folder (pause, cancel requests, timings) is written the same way.
        let control = self.layout.root.join(super::CONTROL);
        let cancel = control.join(super::control::CANCEL);
        let claimed = copy::dir(&self.layout);
        let extra = [control.as_path(), cancel.as_path(), claimed.as_path()];
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
        let has_job =
            |stem: &str| std::fs::symlink_metadata(running.join(format!("{stem}.yaml"))).is_ok();
        for (name, _) in list(running)? {
            let stem = name
                .strip_suffix(ATTEMPTS_SUFFIX)
                .or_else(|| name.strip_suffix(STATUS_SUFFIX));
            let Some(stem) = stem else { continue };
            if name.starts_with('.') {
                continue;
            }
            if !has_job(stem) {
                let _ = std::fs::remove_file(running.join(&name));
            }
        }
        // Claimed copies and takeover tokens of jobs that left running/.
        let claimed = copy::dir(&self.layout);
        if !claimed.is_dir() {
            return Ok(());
        }
        for (name, meta) in list(&claimed)? {
            if !meta.file_type().is_file() || names::is_temp(std::ffi::OsStr::new(&name)) {
                continue;
            }
            let stem = match name.strip_suffix(names::TAKEOVER_SUFFIX) {
                Some(rest) => rest.rsplit_once('.').map_or(rest, |(stem, _)| stem),
                None => name.strip_suffix(".yaml").unwrap_or(&name),
            };
            if !has_job(stem) {
                let _ = std::fs::remove_file(claimed.join(&name));
            }
        }
        Ok(())
    }
}

/// The stem of a job file's name in `running/` (`<stem>.yaml`, a usable job name).
fn job_stem(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".yaml")?;
    matches!(
        names::classify(std::ffi::OsStr::new(name)),
        NameKind::Job { .. }
    )
    .then_some(stem)
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
