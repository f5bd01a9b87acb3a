//! The spool: job files dropped into a folder, each claimed by exactly one daemon, run, and moved
//! to `done/` or `failed/` with a side file saying what happened.
//!
//! # Layout
//!
//! In the manner of Maildir, one folder per state, all on one file system (created by
//! [`Spool::open`]):
//!
//! ```text
//! <spool.dir>/
//!   incoming/   users drop cats.yaml (or write elsewhere and rename it in)
//!   running/    cats.yaml  cats.attempts  cats.status.json
//!   done/       cats.yaml  cats.result.yaml
//!   failed/     cats.yaml  cats.error.yaml
//! ```
//!
//! Only `*.yaml` and `*.yml` names in `incoming/` are jobs; dotfiles (editors' and sdspool's
//! temporary files, `.nfs*`) and other names are left alone ([`names::classify`]). A job is known
//! by the stem of its name: `cats.yml` runs as `running/cats.yaml`.
//!
//! # Claiming
//!
//! A daemon claims a job by moving it from `incoming/` to `running/` with an operation that
//! fails when the target exists: `renameat2(RENAME_NOREPLACE)`, or where the file system does
//! not support it (`EINVAL`/`ENOSYS`: NFS, SMB, some FUSE) `link()` then `unlink()`, which NFS
//! servers perform atomically. Only one of any number of racing daemons, on one machine or on
//! several sharing the file system, succeeds; the others see "source gone" or "target exists".
//! A job is never renamed over an existing `running/` file. Before moving, the claimer takes an
//! exclusive `flock` on the file (the lock stays with the inode through the renames and is
//! released when the [`Claimed`] is dropped or the process dies), which lets a starting daemon
//! tell a job that a live daemon is working on from one whose daemon died.
//!
//! A job whose stem is already in `running/` (the same name submitted again while the first
//! runs) is not claimed: it waits in `incoming/` until the running one is finished, then runs,
//! and is filed under a unique name (`done/cats-2.yaml`) so neither result is overwritten.
//!
//! # What is guaranteed where
//!
//! * Local file systems (ext4, xfs, btrfs, tmpfs): a job is claimed once; a job in `running/`
//!   is resumed by a starting daemon only if no live process holds its lock.
//! * NFS: claims are exact through `link()`'s atomic `EEXIST` on the server (a retransmitted
//!   link that reports `EEXIST` although it succeeded is recognised by the inode). Whether a
//!   `running/` job is orphaned is known only if NFS locking works (NFSv4, or NFSv3 with
//!   `lockd`); a client cut off from the server for longer than the lease loses its locks, so its
//!   jobs may be resumed elsewhere while it still runs them. Without working locks, a starting
//!   daemon resumes only jobs that a dead process on its own host left behind.
//! * File-system events do not cross NFS: there new jobs are noticed by the periodic rescan.
//! * A file written in place in `incoming/` is taken after the writer closes it, or, seen only
//!   by scans, once unchanged for `settle_seconds`; a writer that pauses longer than that, or
//!   closes and reopens the file, can have it taken half-written. Write elsewhere and rename in.
//!
//! # The daemon loop
//!
//! ```no_run
//! # use std::time::Duration;
//! # use sdspool::spool::{Failure, Spool, SpoolConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spool = Spool::open(&SpoolConfig::new("/srv/spool"))?;
//! let mut work = spool.recover()?; // resumable jobs left by a crash, already claimed
//! loop {
//!     let claimed = match work.pop() {
//!         Some(c) => c,
//!         None => match spool.next_job(Duration::from_secs(5))? {
//!             Some(c) => c,
//!             None => continue, // timeout: a chance to check for shutdown
//!         },
//!     };
//!     // job::load_spooled(&claimed.path_in_running, &config), render, write_status(...) while running
//!     spool.finish_failed(claimed, &Failure::new("render", "not implemented here"))?;
//! }
//! # }
//! ```

pub mod config;
pub mod control;
mod finish;
pub(crate) mod fsops;
pub mod names;
mod queue;
mod recover;
pub mod status;
mod watch;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use config::SpoolConfig;
pub use finish::{ErrorFile, Failure, FinishError, Finished};
pub use fsops::{ClaimMethod, hostname, pid_alive};
pub use status::{JobStatus, Overview, StorageWait, read_status, write_status};

use fsops::{FileId, Lock, Moved, Mover};
use names::{ATTEMPTS_SUFFIX, NameKind, STATUS_SUFFIX};
use queue::Queue;

/// Folder for new jobs.
pub const INCOMING: &str = "incoming";
/// Folder for claimed jobs.
pub const RUNNING: &str = "running";
/// Folder for finished jobs.
pub const DONE: &str = "done";
/// Folder for failed jobs.
pub const FAILED: &str = "failed";

/// A spool operation that failed: the path, what was being done, and the system's reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {op}: {source}", path.display())]
pub struct SpoolError {
    pub path: PathBuf,
    /// What was being done, e.g. "moving the job to done/".
    pub op: String,
    #[source]
    pub source: io::Error,
}

impl SpoolError {
    pub(crate) fn new(path: &Path, op: impl Into<String>, source: io::Error) -> SpoolError {
        SpoolError {
            path: path.to_path_buf(),
            op: op.into(),
            source,
        }
    }
}

/// The four folders of a spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub root: PathBuf,
    pub incoming: PathBuf,
    pub running: PathBuf,
    pub done: PathBuf,
    pub failed: PathBuf,
}

impl Layout {
    /// The folders of the spool at `root` (nothing is created).
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
            incoming: root.join(INCOMING),
            running: root.join(RUNNING),
            done: root.join(DONE),
            failed: root.join(FAILED),
        }
    }

    /// The four folders, in the order of a job's life.
    pub fn folders(&self) -> [&Path; 4] {
        [&self.incoming, &self.running, &self.done, &self.failed]
    }

    /// Creates the folders that are missing and checks that all four are folders on one file
    /// system (moves between them must be renames).
    pub fn create(&self) -> Result<(), SpoolError> {
        let mut device = None;
        for dir in self.folders() {
            std::fs::create_dir_all(dir)
                .map_err(|e| SpoolError::new(dir, "creating the spool folder", e))?;
            let meta = std::fs::metadata(dir)
                .map_err(|e| SpoolError::new(dir, "reading the spool folder", e))?;
            if !meta.is_dir() {
                return Err(SpoolError::new(
                    dir,
                    "opening the spool",
                    io::Error::other("is not a folder"),
                ));
            }
            let dev = FileId::of(&meta).dev;
            if *device.get_or_insert(dev) != dev {
                return Err(SpoolError::new(
                    dir,
                    "opening the spool",
                    io::Error::other(format!(
                        "is on a different file system than {}; all four spool folders must be on one file system so jobs move by rename",
                        self.incoming.display()
                    )),
                ));
            }
        }
        Ok(())
    }
}

/// Settings of a [`Spool`] beyond the `spool:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Watch `incoming/` for events (inotify); with `false` only scans find new jobs, as on a
    /// network file system.
    pub watch: bool,
    /// How jobs move between folders.
    pub claim_method: ClaimMethod,
    /// Largest job file read to learn its priority (`limits.max_job_bytes`); a larger file is
    /// queued with priority 0 and fails when the worker loads it.
    pub max_job_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            watch: true,
            claim_method: ClaimMethod::Auto,
            max_job_bytes: crate::app::config::Limits::default().max_job_bytes,
        }
    }
}

/// A job this daemon has claimed: its file is in `running/` and this value holds the file's
/// lock. Hand it to [`Spool::finish_done`] or [`Spool::finish_failed`] when the work ends, or to
/// [`Spool::release`] to stop without counting a crash. Dropping it otherwise leaves the job in
/// `running/` for the next [`Spool::recover`], which counts that attempt as a crash.
#[derive(Debug)]
pub struct Claimed {
    /// The job file's name in `running/`: `<stem>.yaml`.
    pub name: String,
    /// The job's name in the spool; also the default job id.
    pub stem: String,
    /// The file name it was submitted under in `incoming/` (`cats.yml`, `cats.yaml`).
    pub submitted_as: String,
    /// `running/<stem>.yaml`.
    pub path_in_running: PathBuf,
    /// Which attempt this is: 1 for a new job, n + 1 for a job resumed after n crashes.
    pub attempts: u32,
    /// The job's `priority:` (0 when unset or when the file does not parse).
    pub priority: i32,
    /// Whether [`Spool::recover`] handed it out (work may have been done before the crash).
    pub resumed: bool,
    /// The open job file holding the lock; `None` never happens on a file system with locks.
    lock: Option<File>,
}

impl Claimed {
    /// `running/<stem>.status.json`, where the worker's progress goes.
    pub fn status_path(&self) -> PathBuf {
        self.path_in_running
            .with_file_name(format!("{}{STATUS_SUFFIX}", self.stem))
    }

    /// `running/<stem>.attempts`.
    pub fn attempts_path(&self) -> PathBuf {
        self.path_in_running
            .with_file_name(format!("{}{ATTEMPTS_SUFFIX}", self.stem))
    }

    /// Whether this daemon holds the job file's lock (false only where the file system has no
    /// working locks).
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }
}

/// `running/<stem>.attempts`: how many times work on a job started, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// Attempts started, counting the current one.
    pub attempts: u32,
    /// Host and process of the latest attempt.
    pub host: String,
    pub pid: u32,
    /// The kernel's boot id of that host when the attempt started.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// Whether that daemon holds the job file's lock.
    pub locked: bool,
    #[serde(with = "fsops::rfc3339")]
    pub started_at: SystemTime,
}

impl Attempts {
    /// Reads an attempts file; a bare number is accepted too.
    pub fn read(path: &Path) -> io::Result<Attempts> {
        let text = std::fs::read_to_string(path)?;
        if let Ok(n) = text.trim().parse::<u32>() {
            return Ok(Attempts {
                attempts: n,
                host: String::new(),
                pid: 0,
                boot_id: None,
                locked: true,
                started_at: SystemTime::UNIX_EPOCH,
            });
        }
        crate::sys::yaml::parse::<Attempts>(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// This process, as recorded in attempts and status files.
#[derive(Debug, Clone)]
struct Host {
    name: String,
    pid: u32,
    boot_id: Option<String>,
}

/// An open spool: watches `incoming/`, claims jobs, files them when they end.
///
/// All methods take `&self`; a `Spool` may be shared between threads (`Arc<Spool>`). Calls to
/// [`Spool::next_job`] are served one at a time; finishing and status writes do not wait for
/// them.
pub struct Spool {
    config: SpoolConfig,
    options: SpoolOptions,
    layout: Layout,
    mover: Mover,
    host: Host,
    queue: Mutex<Queue>,
    warned_no_locks: AtomicBool,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("layout", &self.layout)
            .field("config", &self.config)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens the spool at `config.dir`, creating its folders, and starts watching `incoming/`
    /// (when the watch cannot be set up, for instance at the inotify limit, scans alone are used
    /// and a warning is logged). Nothing is claimed until [`Spool::recover`] or
    /// [`Spool::next_job`].
    pub fn open(config: &SpoolConfig) -> Result<Spool, SpoolError> {
        Spool::open_with(config, SpoolOptions::default())
    }

    /// [`Spool::open`] with [`SpoolOptions`].
    pub fn open_with(config: &SpoolConfig, options: SpoolOptions) -> Result<Spool, SpoolError> {
        let layout = Layout::new(&config.dir);
        layout.create()?;
        let watcher = if options.watch {
            match watch::Watcher::start(&layout.incoming) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        folder = %layout.incoming.display(),
                        error = %e,
                        "cannot watch the incoming folder; new jobs are found by rescans every {} s",
                        config.rescan_seconds
                    );
                    None
                }
            }
        } else {
            None
        };
        Ok(Spool {
            config: config.clone(),
            mover: Mover::new(options.claim_method),
            options,
            queue: Mutex::new(Queue::new(watcher)),
            layout,
            host: Host {
                name: hostname(),
                pid: std::process::id(),
                boot_id: fsops::boot_id(),
            },
            warned_no_locks: AtomicBool::new(false),
        })
    }

    /// The spool's folders.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Whether `incoming/` is watched for events (else only scans find new jobs).
    pub fn is_watching(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watcher
            .is_some()
    }

    /// Waits up to `timeout` for a job that is ready (complete, see the module docs), claims the
    /// best one (highest `priority:`, then oldest, then name) and returns it with its attempt
    /// counted. `None` when the time is up.
    ///
    /// Files that can never be jobs (folders, FIFOs, symbolic links, unreadable files, unusable
    /// names) are moved to `failed/` with the reason on the way; where that is impossible they
    /// are reported once in the log and skipped.
    pub fn next_job(&self, timeout: Duration) -> Result<Option<Claimed>, SpoolError> {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.drain_events(&mut q);
            let now = Instant::now();
            if q.rescan_due(now) {
                self.full_scan(&mut q)?;
            }
            self.due_looks(&mut q);
            if let Some(claimed) = self.pick(&mut q) {
                return Ok(Some(claimed));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut wake = deadline;
            if let Some(t) = q.next_rescan {
                wake = wake.min(t);
            }
            if let Some(t) = q.earliest_look() {
                wake = wake.min(t);
            }
            let wait = wake.saturating_duration_since(now);
            self.wait_for_event(&mut q, wait);
        }
    }

    /// Records that work on `claimed` starts again: its attempts file gets
    /// `claimed.attempts + 1`. [`Spool::next_job`] and [`Spool::recover`] count the attempt they
    /// hand out themselves; this is for a worker that retries a job in the same process.
    pub fn begin_attempt(&self, claimed: &mut Claimed) -> Result<u32, SpoolError> {
        let n = claimed.attempts + 1;
        self.write_attempts(claimed, n)?;
        claimed.attempts = n;
        Ok(n)
    }

    /// Stops working on a job without counting a crash (a clean shutdown): the attempt is taken
    /// back and the lock released; the job stays in `running/` and is resumed by the next
    /// [`Spool::recover`] of any daemon on this spool.
    pub fn release(&self, claimed: Claimed) -> Result<(), SpoolError> {
        let path = claimed.attempts_path();
        let previous = claimed.attempts.saturating_sub(1);
        if previous == 0 {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::new(&path, "removing the attempts file", e)),
            }
        } else {
            self.write_attempts(&claimed, previous)?;
        }
        tracing::info!(job = %claimed.name, "released; it stays in running/ for the next start");
        Ok(())
    }

    /// Writes the worker's progress for `claimed` to `running/<stem>.status.json` (atomic).
    pub fn write_status(&self, claimed: &Claimed, status: &JobStatus) -> Result<(), SpoolError> {
        let path = claimed.status_path();
        status::write_status(&path, status)
            .map_err(|e| SpoolError::new(&path, "writing the job status", e))
    }

    /// Records in the job's status file that it waits for storage (see [`StorageWait`]).
    pub fn write_waiting(&self, claimed: &Claimed, wait: StorageWait) -> Result<(), SpoolError> {
        let path = claimed.status_path();
        let mut status = status::read_status(&path)
            .map_err(|e| SpoolError::new(&path, "reading the job status", e))?;
        status.updated_at = SystemTime::now();
        status.eta_seconds = None;
        status.waiting = Some(wait);
        status::write_status(&path, &status)
            .map_err(|e| SpoolError::new(&path, "writing the job status", e))
    }

    /// What the spool holds now, as `sdspool status` shows it.
    pub fn overview(&self) -> Result<Overview, SpoolError> {
        status::overview(&self.config, self.options.max_job_bytes)
    }

    fn write_attempts(&self, claimed: &Claimed, n: u32) -> Result<(), SpoolError> {
        let record = Attempts {
            attempts: n,
            host: self.host.name.clone(),
            pid: self.host.pid,
            boot_id: self.host.boot_id.clone(),
            locked: claimed.lock.is_some(),
            started_at: SystemTime::now(),
        };
        let path = claimed.attempts_path();
        let text = serde_saphyr::to_string(&record).map_err(|e| {
            SpoolError::new(
                &path,
                "writing the attempts file",
                io::Error::other(e.to_string()),
            )
        })?;
        fsops::write_file(&path, text.as_bytes(), true, &self.mover)
            .map(|_| ())
            .map_err(|e| SpoolError::new(&path, "writing the attempts file", e))
    }

    /// Opens `path` and takes its lock: `Ok(None)` when another open file holds it; the file
    /// comes back as `Some` when it holds the lock, `None` where the file system has no locks.
    fn open_locked(&self, path: &Path) -> io::Result<Option<Option<File>>> {
        let file = fsops::open_nofollow(path)?;
        match fsops::try_lock(&file)? {
            Lock::Held => Ok(Some(Some(file))),
            Lock::Busy => Ok(None),
            Lock::Unsupported => {
                if !self.warned_no_locks.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        folder = %self.layout.root.display(),
                        "the spool's file system has no working file locks; a starting daemon resumes only jobs left by dead processes of its own host"
                    );
                }
                Ok(Some(None))
            }
        }
    }

    /// Claims `incoming/<name>` as `running/<stem>.yaml`.
    fn claim(&self, name: &str, stem: &str, priority: i32) -> queue::ClaimOutcome {
        use queue::ClaimOutcome as O;
        let src = self.layout.incoming.join(name);
        let job_name = format!("{stem}.yaml");
        let dst = self.layout.running.join(&job_name);
        let before = match std::fs::symlink_metadata(&src) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return O::Gone,
            Err(e) => return O::Error(e),
        };
        if !before.file_type().is_file() {
            return O::NotRegular(before);
        }
        let lock = match self.open_locked(&src) {
            Ok(Some(lock)) => lock,
            Ok(None) => return O::Busy,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return O::Gone,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return O::Unreadable(format!("cannot be opened: {e}"));
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return O::Changed;
            }
            Err(e) => return O::Error(e),
        };
        let id = match lock
            .as_ref()
            .map(File::metadata)
            .unwrap_or_else(|| std::fs::symlink_metadata(&src))
        {
            Ok(m) => FileId::of(&m),
            Err(e) => return O::Error(e),
        };
        // The name must still be the file we locked: a daemon that finished it in the meantime
        // released the lock, and a new file may have been dropped under the same name.
        if FileId::at(&src) != Some(id) {
            return O::Changed;
        }
        let moved = match self.mover.move_noreplace(&src, &dst) {
            Ok(m) => m,
            Err(e) => return O::Error(e),
        };
        match moved {
            Moved::Done => {}
            Moved::SourceGone => return O::Gone,
            Moved::Exists => {
                // Both names are this very file (a retransmitted NFS link, or a daemon that died
                // between link and unlink): we hold its lock, so it is ours to finish.
                if FileId::at(&dst) == Some(id) && lock.is_some() {
                    if let Err(e) = std::fs::remove_file(&src)
                        && e.kind() != io::ErrorKind::NotFound
                    {
                        return O::Error(e);
                    }
                } else {
                    return O::Clash;
                }
            }
        }
        if FileId::at(&dst) != Some(id) {
            // Replaced between our check and the move (a `submit --replace`): the file we moved
            // is a different one; lock it instead.
            tracing::warn!(job = %dst.display(), "the job file was replaced while being claimed");
            return match self.open_locked(&dst) {
                Ok(Some(lock)) => self.claimed(name, stem, dst, priority, lock),
                Ok(None) => O::Busy,
                Err(e) => O::Error(e),
            };
        }
        self.claimed(name, stem, dst, priority, lock)
    }

    fn claimed(
        &self,
        name: &str,
        stem: &str,
        dst: PathBuf,
        priority: i32,
        lock: Option<File>,
    ) -> queue::ClaimOutcome {
        let _ = fsops::sync_parent(&dst);
        let _ = atomic_sync(&self.layout.incoming);
        let claimed = Claimed {
            name: format!("{stem}.yaml"),
            stem: stem.to_string(),
            submitted_as: name.to_string(),
            path_in_running: dst,
            attempts: 1,
            priority,
            resumed: false,
            lock,
        };
        // A fresh claim starts at 1 whatever a finished job of the same name left behind.
        let _ = std::fs::remove_file(claimed.status_path());
        if let Err(e) = self.write_attempts(&claimed, 1) {
            tracing::error!(job = %claimed.name, error = %e, "cannot record the attempt");
        }
        tracing::info!(job = %claimed.name, submitted_as = name, priority, "claimed");
        queue::ClaimOutcome::Claimed(Box::new(claimed))
    }

    /// Moves something from `incoming/` that can never run straight to `failed/` with its reason.
    fn reject(
        &self,
        name: &std::ffi::OsStr,
        stem: &str,
        reason: &str,
    ) -> io::Result<Option<Finished>> {
        let src = self.layout.incoming.join(name);
        let record = ErrorFile {
            job: name.to_string_lossy().into_owned(),
            step: "claim".into(),
            field: None,
            error: reason.to_string(),
            failed_at: SystemTime::now(),
            attempts: 0,
            host: self.host.name.clone(),
            pid: self.host.pid,
        };
        let bytes = record.to_yaml();
        let placed = finish::place(
            &self.mover,
            &src,
            &self.layout.failed,
            stem,
            names::ERROR_SUFFIX,
            bytes.as_bytes(),
        )?;
        if let Some(f) = &placed {
            let _ = atomic_sync(&self.layout.incoming);
            tracing::warn!(file = %src.display(), moved_to = %f.job.display(), reason, "not a usable job file");
        }
        Ok(placed)
    }
}

fn atomic_sync(dir: &Path) -> io::Result<()> {
    crate::sys::atomic::sync_dir(dir)
}

/// How a name in `incoming/` found by a scan is handled.
fn kind_of(name: &std::ffi::OsStr) -> NameKind {
    names::classify(name)
}
