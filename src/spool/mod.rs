//! The spool: job files dropped into a folder, each claimed by exactly one daemon, run, and moved
//! to `done/` or `failed/` with a side file saying what happened. It depends on the system
//! helpers only (atomic files, YAML, hashing); the caller supplies what it knows of jobs.
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
//!   .claimed/   cats.yaml: the job file as claimed (see below), while it runs
//! ```
//!
//! Only `*.yaml` and `*.yml` names (in any case: `X.YAML`) in `incoming/` are jobs; dotfiles
//! (editors' and sdspool's temporary files, `.nfs*`) and other names are left alone
//! ([`names::classify`]); a hidden `.x.yaml` or a file with sdspool's temporary prefix is said
//! once in the log. A job is known by the stem of its name: `cats.yml` runs as
//! `running/cats.yaml`.
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
//! released when the [`Claimed`] is dropped or the process dies).
//!
//! The claim is recorded in `running/<stem>.attempts` ([`Attempts`]): owner host, process, boot
//! id and a claim id, the attempts so far and the evidence about attempts that died. Its
//! modification time is a lease, renewed by the owner every quarter of `spool.lease_seconds`
//! while it holds the job ([`lease`]). The job file is read once, through the locked
//! descriptor, into `<spool>/.claimed/<stem>.yaml`: the worker renders that copy and it is what
//! is filed, whatever happens to the file in `running/` meanwhile ([`copy`]).
//!
//! A job whose stem is already in `running/` (the same name submitted again while the first
//! runs) is not claimed: it waits in `incoming/` until the running one is finished, then runs,
//! and is filed under a unique name (`done/cats-2.yaml`) so neither result is overwritten.
//!
//! # Taking over a dead daemon's job
//!
//! At startup ([`Spool::recover`]) and on every rescan ([`Spool::next_job`]), a daemon looks at
//! the jobs in `running/` it does not hold. It takes one over when its owner is gone: the claim
//! was given back by a clean stop; the owner was a process of this host that no longer exists
//! (or the host rebooted); or, for any host, the daemon saw the claim unchanged (not renewed)
//! for a whole lease by its own clock, so clocks of different hosts never matter. It must also
//! get the job file's lock, so a live process holding it is never overtaken; where the file
//! system has no locks, the first daemon to create a takeover token with a no-replace move
//! wins. The taker writes its own claim (one attempt more) and resumes the job from its
//! manifest. An owner that was only stopped or cut off and comes back finds another claim id in
//! the record: it stops work on the job and neither files nor releases it
//! ([`Claimed::is_lost`]).
//!
//! # Crashes counted against a job
//!
//! `spool.max_crashes` stops a job that itself brings the daemon down, not one that happened to
//! run when the daemon was killed from outside. A death counts only on evidence: a panic while
//! the job was held, or a death at the same point (prompt, images done, step, from the job's
//! status file) as its previous one, without progress in between; a death at a new point starts
//! the count again at 1, and an attempt that was given back, never started by a worker, or
//! waiting for storage says nothing. See [`crashes`] for the rule in full.
//!
//! # What is guaranteed where
//!
//! * Local file systems (ext4, xfs, btrfs, tmpfs): a job is claimed once; a job in `running/`
//!   is taken over only if no live process holds its lock, and, for a claim of another host,
//!   once its lease expired.
//! * NFS: claims are exact through `link()`'s atomic `EEXIST` on the server (a retransmitted
//!   link that reports `EEXIST` although it succeeded is recognised by the inode). A job is taken
//!   over once its lease expired and (where NFS locking works: NFSv4, or NFSv3 with `lockd`) its
//!   lock is free; without working locks, the takeover token makes it exact. A daemon cut off
//!   from the server for longer than the lease finds its jobs taken over when it comes back.
//!   Daemons on one spool must all renew leases (a release from before leases never renews).
//! * File-system events do not cross NFS: there new jobs are noticed by the periodic rescan.
//! * A file written in place in `incoming/` is taken after the writer closes it, or, seen only
//!   by scans, once unchanged for `settle_seconds`; a writer that pauses longer than that, or
//!   closes and reopens the file, can have it taken half-written. Write elsewhere and rename in.
//!   A file taken while its writer still writes runs as it was read; the change is reported in
//!   the log and the result or error file.
//!
//! # The daemon loop
//!
//! ```no_run
//! # use std::time::Duration;
//! # use sdspool::spool::{Failure, Spool, SpoolConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spool = Spool::open(&SpoolConfig::new("/srv/spool"))?;
//! // Resumable jobs left by a crash, already claimed; they count as started once a worker
//! // takes them (`begin_work`).
//! let mut work = spool.recover_queued()?;
//! loop {
//!     let claimed = match work.pop() {
//!         Some(c) => c,
//!         None => match spool.next_job(Duration::from_secs(5))? {
//!             Some(c) => c,
//!             None => continue, // timeout: a chance to check for shutdown
//!         },
//!     };
//!     let _file = spool.begin_work(&claimed); // the claimed copy: load, render, write_status(...)
//!     spool.finish_failed(claimed, &Failure::new("render", "not implemented here"))?;
//! }
//! # }
//! ```

pub mod config;
pub mod control;
pub mod copy;
pub mod crashes;
mod finish;
pub(crate) mod fsops;
pub mod lease;
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
pub use copy::JobBytes;
pub use crashes::Position;
pub use finish::{ErrorFile, Failure, FinishError, Finished};
pub use fsops::{ClaimMethod, hostname, pid_alive};
pub use status::{Basis, Estimate, JobStatus, Overview, StorageWait, read_status, write_status};

use fsops::{FileId, Lock, Moved, Mover};
use lease::{Held, LeaseGuard};
use names::{ATTEMPTS_SUFFIX, NameKind, STATUS_SUFFIX};
use queue::Queue;

/// Largest job file read by default (`limits.max_job_bytes` of the configuration replaces it).
pub const DEFAULT_MAX_JOB_BYTES: u64 = 1 << 20;

/// Folder for new jobs.
pub const INCOMING: &str = "incoming";
/// Folder for claimed jobs.
pub const RUNNING: &str = "running";
/// Folder for finished jobs.
pub const DONE: &str = "done";
/// Folder for failed jobs.
pub const FAILED: &str = "failed";
/// The control folder (pause flag, cancel requests, timings).
pub const CONTROL: &str = "control";

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
    /// Largest job file read (`limits.max_job_bytes`; default [`DEFAULT_MAX_JOB_BYTES`]): to
    /// learn its priority, and to keep its claimed copy. A larger file is queued with priority 0
    /// and fails when the worker loads it.
    pub max_job_bytes: u64,
}

/// Which ready jobs a caller would rather claim (see [`Spool::next_job_preferring`]).
pub struct Preference<'a> {
    /// Told a job's `model:` as its file writes it (`None` when it names none, or not as
    /// text), says whether the caller prefers the job. The spool does not interpret it.
    pub prefer: &'a dyn Fn(Option<&str>) -> bool,
    /// How often a job may be passed over for younger preferred jobs of its priority before it
    /// goes first.
    pub max_passed_over: u32,
}

fn no_preference(_: Option<&str>) -> bool {
    false
}

impl Preference<'static> {
    /// No preference: the plain order.
    pub const NONE: Preference<'static> = Preference {
        prefer: &no_preference,
        max_passed_over: 0,
    };
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            watch: true,
            claim_method: ClaimMethod::Auto,
            max_job_bytes: DEFAULT_MAX_JOB_BYTES,
        }
    }
}

/// A job this daemon has claimed: its file is in `running/`, this value holds the file's lock
/// and renews the claim's lease (see [`lease`]) while it lives. Hand it to
/// [`Spool::finish_done`] or [`Spool::finish_failed`] when the work ends, or to
/// [`Spool::release`] to stop without counting a crash. Dropping it otherwise leaves the job in
/// `running/` for a daemon to take over ([`Spool::recover`], or another daemon's rescan once the
/// lease expired); a panic while it is held is recorded against the job (see [`crashes`]).
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
    /// Which attempt this is: 1 for a new job, n + 1 for a job taken over after n attempts.
    pub attempts: u32,
    /// The job's `priority:` (0 when unset or when the file does not parse).
    pub priority: i32,
    /// Whether it was taken over from a daemon that stopped (work may have been done before).
    pub resumed: bool,
    /// The open job file holding the lock; `None` never happens on a file system with locks.
    lock: Option<File>,
    /// The claim record as this claim last wrote it.
    record: Mutex<Attempts>,
    /// `<spool>/.claimed/<stem>.yaml`, when the claim keeps a copy of the job file.
    copy: Option<PathBuf>,
    /// How the job file changed after the claim, once noticed (see [`copy`]).
    change: Mutex<Option<String>>,
    lease: LeaseGuard,
    _held: Held,
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

    /// The file the worker loads: the job file as it was claimed (its copy in
    /// `<spool>/.claimed/`, see [`copy`]), else `running/<stem>.yaml` (a claim made by an
    /// earlier release of sdspool, or a file larger than `max_job_bytes`).
    pub fn job_file(&self) -> &Path {
        match &self.copy {
            Some(c) if std::fs::symlink_metadata(c).is_ok() => c,
            _ => &self.path_in_running,
        }
    }

    /// Whether another daemon took the job over because this one did not renew the claim in
    /// time (it was stopped or cut off from the spool): stop working on it; it cannot be filed
    /// or released by this daemon any more.
    pub fn is_lost(&self) -> bool {
        self.lease.is_lost()
    }

    /// A copy of the claim record as this claim last wrote it.
    pub fn record(&self) -> Attempts {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut Attempts)) -> Attempts {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
        r.clone()
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        // A panic while the job was held is evidence against the job (`spool.max_crashes`).
        if std::thread::panicking() && !self.lease.is_lost() && self.attempts_path().exists() {
            let record = self.update(|r| r.panicked = true);
            if let Err(e) = write_record(&self.attempts_path(), &record, &Mover::default()) {
                tracing::error!(job = %self.name, error = %e, "cannot record the panic against the job");
            } else {
                tracing::error!(job = %self.name, "panicked while working on the job; recorded against it");
            }
        }
    }
}

/// `running/<stem>.attempts`: the claim. Who holds the job (host, process, claim id), how many
/// times work on it started, and the evidence about the attempts that died (see [`crashes`]).
/// Its modification time is the lease: the owner renews it (see [`lease`]).
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
    /// This claim's id, unique to it: a daemon that lost the claim sees another id here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// A worker started on the job in this attempt (a claim resumed at startup waits for the
    /// models to load first: a kill before this is no evidence against the job).
    #[serde(default = "yes")]
    pub working: bool,
    /// Given back by a clean stop: any daemon may resume it at once, no crash counted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub released: bool,
    /// The attempt panicked while it held the job.
    #[serde(default, skip_serializing_if = "is_false")]
    pub panicked: bool,
    /// Crashes counted against the job (see [`crashes`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crashes: u32,
    /// Where the latest counted crash happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashed_at: Option<Position>,
    /// The job file as claimed (its copy is in `<spool>/.claimed/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobBytes>,
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Attempts {
    /// Reads an attempts file; a bare number is accepted too.
    pub fn read(path: &Path) -> io::Result<Attempts> {
        let text = std::fs::read_to_string(path)?;
        Attempts::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Reads an attempts file and its modification time (the lease) from one open file, so a
    /// network file system revalidates both.
    pub(crate) fn read_with_time(path: &Path) -> io::Result<(Attempts, Option<SystemTime>)> {
        use std::io::Read as _;
        let mut file = fsops::open_nofollow(path)?;
        let mut text = String::new();
        (&mut file).take(1 << 20).read_to_string(&mut text)?;
        let renewed = file.metadata()?.modified().ok();
        let record = Attempts::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok((record, renewed))
    }

    fn parse(text: &str) -> Result<Attempts, crate::sys::yaml::YamlError> {
        if let Ok(n) = text.trim().parse::<u32>() {
            return Ok(Attempts {
                attempts: n,
                host: String::new(),
                pid: 0,
                boot_id: None,
                locked: true,
                started_at: SystemTime::UNIX_EPOCH,
                claim: None,
                working: true,
                released: false,
                panicked: false,
                crashes: 0,
                crashed_at: None,
                job: None,
            });
        }
        crate::sys::yaml::parse::<Attempts>(text)
    }
}

/// Writes a claim record atomically (temporary file, fsync, rename).
fn write_record(path: &Path, record: &Attempts, mover: &Mover) -> io::Result<()> {
    let text = serde_saphyr::to_string(record).map_err(|e| io::Error::other(e.to_string()))?;
    fsops::write_file(path, text.as_bytes(), true, mover).map(|_| ())
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
    /// The identity of `running/`, naming this spool among the claims this process holds.
    running_id: FileId,
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
        let running_id = FileId::at(&layout.running).ok_or_else(|| {
            SpoolError::new(
                &layout.running,
                "opening the spool",
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
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
            running_id,
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
    /// A job in `running/` whose daemon is gone comes first: on every rescan (`rescan_seconds`)
    /// `running/` is looked at too, and a job whose claim expired (see [`lease`]) or whose
    /// owner, on this host, is gone is taken over, one per call, and returned resumed.
    ///
    /// Files that can never be jobs (folders, FIFOs, symbolic links, unreadable files, unusable
    /// names) are moved to `failed/` with the reason on the way; where that is impossible they
    /// are reported once in the log and skipped.
    pub fn next_job(&self, timeout: Duration) -> Result<Option<Claimed>, SpoolError> {
        self.next_job_preferring(timeout, &Preference::NONE)
    }

    /// [`Spool::next_job`], but among the ready jobs of the highest priority the oldest one
    /// that `preference` prefers goes first, unless an older job of that priority has been
    /// passed over `preference.max_passed_over` times already: then that one does. So a
    /// preferred job jumps the line of its own priority only, and no job waits for more than
    /// `max_passed_over` younger ones. The claim itself is the same.
    pub fn next_job_preferring(
        &self,
        timeout: Duration,
        preference: &Preference<'_>,
    ) -> Result<Option<Claimed>, SpoolError> {
        let deadline = Instant::now() + timeout;
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.drain_events(&mut q);
            let now = Instant::now();
            if q.running_scan_due(now) {
                let taken = self.scan_running(&mut q.observations)?;
                q.next_running_scan = match taken {
                    // Maybe more: look again at the next call.
                    Some(_) => None,
                    None => Some(now + Duration::from_secs(self.config.rescan_seconds)),
                };
                if let Some(claimed) = taken {
                    return Ok(Some(claimed));
                }
            }
            if q.rescan_due(now) {
                self.full_scan(&mut q)?;
            }
            self.due_looks(&mut q);
            if let Some(claimed) = self.pick(&mut q, preference) {
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
            if let Some(t) = q.next_running_scan {
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
        let record = claimed.update(|r| {
            r.attempts = n;
            r.started_at = SystemTime::now();
        });
        self.write_claim(claimed, &record)?;
        claimed.attempts = n;
        Ok(n)
    }

    /// Records that a worker starts on the job now (from here on a crash is evidence against
    /// the job, see [`crashes`]) and returns the file to load: [`Claimed::job_file`]. A record
    /// that cannot be written costs only that evidence, so it is logged, not returned.
    pub fn begin_work(&self, claimed: &Claimed) -> PathBuf {
        if !claimed.record().working {
            let record = claimed.update(|r| r.working = true);
            if let Err(e) = self.write_claim(claimed, &record) {
                tracing::warn!(job = %claimed.name, error = %e, "cannot record that work on the job started");
            }
        }
        claimed.job_file().to_path_buf()
    }

    /// Records that the worker sets the job aside for a while before it works on it (it loads
    /// the models the job needs): a crash until the next [`Spool::begin_work`] is no evidence
    /// against the job, as for a job that waits for a worker. A record that cannot be written is
    /// logged.
    pub fn hold_work(&self, claimed: &Claimed) {
        if claimed.record().working {
            let record = claimed.update(|r| r.working = false);
            if let Err(e) = self.write_claim(claimed, &record) {
                tracing::warn!(job = %claimed.name, error = %e, "cannot record that the job waits for its models");
            }
        }
    }

    /// Stops working on a job without counting a crash (a clean shutdown): the attempt is taken
    /// back, the claim marked as given back and the lock released; the job stays in `running/`
    /// and is resumed by the next [`Spool::recover`] of any daemon on this spool, or by a live
    /// daemon's next rescan. A claim another daemon took over is left to it.
    pub fn release(&self, mut claimed: Claimed) -> Result<(), SpoolError> {
        if claimed.is_lost() {
            tracing::warn!(job = %claimed.name, "not released: another daemon took it over");
            return Ok(());
        }
        claimed.lease.stop();
        let path = claimed.attempts_path();
        let previous = claimed.attempts.saturating_sub(1);
        if previous == 0 {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::new(&path, "removing the attempts file", e)),
            }
        } else {
            let record = claimed.update(|r| {
                r.attempts = previous;
                r.released = true;
            });
            self.write_claim(&claimed, &record)?;
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

    /// A claim record of this process for attempt `attempts`, with a new claim id.
    fn new_record(&self, attempts: u32, locked: bool, working: bool) -> Attempts {
        Attempts {
            attempts,
            host: self.host.name.clone(),
            pid: self.host.pid,
            boot_id: self.host.boot_id.clone(),
            locked,
            started_at: SystemTime::now(),
            claim: Some(lease::new_claim_id(&self.host.name, self.host.pid)),
            working,
            released: false,
            panicked: false,
            crashes: 0,
            crashed_at: None,
            job: None,
        }
    }

    fn write_claim(&self, claimed: &Claimed, record: &Attempts) -> Result<(), SpoolError> {
        let path = claimed.attempts_path();
        write_record(&path, record, &self.mover)
            .map_err(|e| SpoolError::new(&path, "writing the attempts file", e))
    }

    /// Writes the claim record and starts holding the claim: the lease renewal and this
    /// process's registration. A record that cannot be written is logged (the job still runs;
    /// other daemons see no owner for it).
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &self,
        name: String,
        stem: &str,
        submitted_as: String,
        path_in_running: PathBuf,
        priority: i32,
        lock: Option<File>,
        record: Attempts,
        resumed: bool,
    ) -> Claimed {
        let attempts_path = path_in_running.with_file_name(format!("{stem}{ATTEMPTS_SUFFIX}"));
        if let Err(e) = write_record(&attempts_path, &record, &self.mover) {
            tracing::error!(job = %name, error = %e, "cannot record the claim");
        }
        let lease = LeaseGuard::start(
            attempts_path,
            record.claim.clone().unwrap_or_default(),
            lease::renew_interval(self.config.lease()),
            name.clone(),
        );
        Claimed {
            name,
            stem: stem.to_string(),
            submitted_as,
            path_in_running,
            attempts: record.attempts,
            priority,
            resumed,
            lock,
            copy: record.job.as_ref().map(|_| copy::path(&self.layout, stem)),
            record: Mutex::new(record),
            change: Mutex::new(None),
            lease,
            _held: Held::new(self.running_id, stem),
        }
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
        // A fresh claim starts at 1 whatever a finished job of the same name left behind.
        let _ = std::fs::remove_file(dst.with_file_name(format!("{stem}{STATUS_SUFFIX}")));
        let mut record = self.new_record(1, lock.is_some(), true);
        record.job = self.copy_job(stem, &dst, lock.as_ref());
        let claimed = self.hold(
            format!("{stem}.yaml"),
            stem,
            name.to_string(),
            dst,
            priority,
            lock,
            record,
            false,
        );
        tracing::info!(job = %claimed.name, submitted_as = name, priority, "claimed");
        queue::ClaimOutcome::Claimed(Box::new(claimed))
    }

    /// Keeps the claimed bytes of the job file (see [`copy`]), read through the locked file.
    fn copy_job(&self, stem: &str, path: &Path, locked: Option<&File>) -> Option<JobBytes> {
        let opened;
        let file = match locked {
            Some(f) => f,
            None => {
                opened = fsops::open_nofollow(path).ok()?;
                &opened
            }
        };
        match copy::make(
            &self.layout,
            &self.mover,
            stem,
            file,
            self.options.max_job_bytes,
        ) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(job = %path.display(), error = %e, "cannot keep a copy of the job file as claimed; the worker reads the file in running/");
                None
            }
        }
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
            job_file_changed: None,
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
