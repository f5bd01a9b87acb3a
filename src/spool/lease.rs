//! Leases on claims: the owner of a claimed job renews it while it works, and a live daemon
//! takes over a job whose claim nobody renewed for `spool.lease_seconds`.
//!
//! A claim is `running/<stem>.attempts` (an [`Attempts`] record naming the owner's host,
//! process and a claim id unique to this claim). The owner renews it by setting the record's
//! modification time to now, every quarter of the lease (at most every 15 s), from a thread
//! owned by the [`Claimed`](super::Claimed); setting a time needs no free disk space, so a full
//! disk does not make a working daemon look dead.
//!
//! Whether a claim expired is judged by the observer's own monotonic clock, never by comparing
//! the owner's clock with the observer's: a claim expired when the observer saw its record (claim
//! id and modification time) unchanged for a whole lease. Clocks of hosts sharing a spool may
//! differ by any amount; a daemon that just started waits one lease before it takes over other
//! hosts' jobs. A claim of this host is judged at once: its process is gone, the host was
//! rebooted, or (where the file system has locks) its lock is free although its owner held it.
//!
//! The taker writes a new record with its own claim id; the old owner, should it still be alive
//! (stopped, or cut off from the file system for longer than the lease), sees on its next renewal
//! that the record is no longer its own, stops renewing and reports the claim as lost
//! ([`Claimed::is_lost`](super::Claimed::is_lost)); filing a lost job is refused.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::Attempts;
use super::fsops::FileId;

/// A new claim id: unique over hosts, processes and time.
pub(crate) fn new_claim_id(host: &str, pid: u32) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let h = crate::sys::hash::fnv1a64(format!("{host}\0{pid}\0{nanos}\0{n}").into_bytes());
    format!("{h:016x}")
}

/// How often a claim is renewed: a quarter of the lease, between 0.25 and 15 seconds.
pub(crate) fn renew_interval(lease: Duration) -> Duration {
    (lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(15))
}

/// Sets a claim record's modification time to now (the renewal).
pub(crate) fn touch(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timestamps, UTIME_NOW};
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_NOW,
    };
    let times = Timestamps {
        last_access: now,
        last_modification: now,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::empty()).map_err(std::io::Error::from)
}

/// The claims this process holds, by spool (the identity of its `running/`) and job stem: a
/// record naming this very process is a claim of an earlier process with the same id (a
/// restarted container's pid 1) unless it is in here.
static HELD: Mutex<BTreeSet<(u64, u64, String)>> = Mutex::new(BTreeSet::new());

/// Registers a claim as held by this process for as long as it lives.
#[derive(Debug)]
pub(crate) struct Held {
    key: (u64, u64, String),
}

impl Held {
    pub fn new(running: FileId, stem: &str) -> Held {
        let key = (running.dev, running.ino, stem.to_string());
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        Held { key }
    }

    /// Whether this process holds the claim on `stem` in the spool whose `running/` is `running`.
    pub fn is_held(running: FileId, stem: &str) -> bool {
        HELD.lock().unwrap_or_else(|e| e.into_inner()).contains(&(
            running.dev,
            running.ino,
            stem.to_string(),
        ))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The renewal thread of one claim; dropping the guard stops it.
#[derive(Debug)]
pub(crate) struct LeaseGuard {
    stop: Arc<(Mutex<bool>, Condvar)>,
    lost: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LeaseGuard {
    /// Starts renewing the claim `claim` recorded in `record` every `interval`.
    pub fn start(record: PathBuf, claim: String, interval: Duration, job: String) -> LeaseGuard {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let lost = Arc::new(AtomicBool::new(false));
        let (stop2, lost2) = (Arc::clone(&stop), Arc::clone(&lost));
        let name = format!("lease {job}");
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || renew_until_stopped(&record, &claim, interval, &job, &stop2, &lost2))
            .map_err(|e| tracing::error!(error = %e, "cannot start the lease renewal thread; other daemons may take the job over"))
            .ok();
        LeaseGuard { stop, lost, thread }
    }

    /// Whether another daemon took the job over: its record is no longer this claim's.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Stops renewing (the job is being filed or released).
    pub fn stop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn renew_until_stopped(
    record: &Path,
    claim: &str,
    interval: Duration,
    job: &str,
    stop: &(Mutex<bool>, Condvar),
    lost: &AtomicBool,
) {
    let (flag, wake) = stop;
    let mut warned = false;
    loop {
        {
            let stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
            let (stopped, _) = wake
                .wait_timeout_while(stopped, interval, |s| !*s)
                .unwrap_or_else(|e| e.into_inner());
            if *stopped {
                return;
            }
        }
        match Attempts::read(record) {
            Ok(r) if r.claim.as_deref() == Some(claim) => {
                if let Err(e) = touch(record) {
                    if !warned {
                        tracing::warn!(job, file = %record.display(), error = %e, "cannot renew the claim; another daemon may take the job over once the lease expires");
                        warned = true;
                    }
                } else {
                    warned = false;
                }
            }
            Ok(r) => {
                tracing::error!(
                    job,
                    now_claimed_by = %format!("{} pid {}", r.host, r.pid),
                    "another daemon took this job over (this daemon did not renew its claim in time); stopping work on it"
                );
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::error!(job, file = %record.display(), "the claim record is gone; stopping work on the job");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // Unreadable for a moment (a file server hiccup): try again at the next renewal.
            Err(e) => tracing::debug!(job, error = %e, "cannot read the claim record"),
        }
    }
}

/// What an observer saw of a claim: its id (or the job file's identity where there is no
/// record) and the record's modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub claim: String,
    pub renewed: Option<SystemTime>,
}

/// The claims of other daemons as this daemon saw them on its scans of `running/`.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    seen: HashMap<String, (Seen, Instant)>,
}

impl Observations {
    /// Records what a scan saw of `stem` and says whether it has been the same for `lease`.
    pub fn unchanged_for(&mut self, stem: &str, seen: Seen, lease: Duration, now: Instant) -> bool {
        match self.seen.get(stem) {
            Some((before, since)) if *before == seen => now.duration_since(*since) >= lease,
            _ => {
                self.seen.insert(stem.to_string(), (seen, now));
                false
            }
        }
    }

    /// Forgets claims whose job was not seen on the latest scan.
    pub fn retain(&mut self, stems: &BTreeSet<String>) {
        self.seen.retain(|s, _| stems.contains(s));
    }

    /// Forgets one claim (taken over, or held by a live process).
    pub fn forget(&mut self, stem: &str) {
        self.seen.remove(stem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_expires_only_after_a_whole_lease_unchanged() {
        let mut o = Observations::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(10);
        let seen = |renewed: u64| Seen {
            claim: "c1".into(),
            renewed: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(renewed)),
        };
        // However old its time looks: the first sight starts the clock.
        assert!(!o.unchanged_for("x", seen(1), lease, t0));
        assert!(!o.unchanged_for("x", seen(1), lease, t0 + Duration::from_secs(9)));
        // Renewed: the clock starts again.
        assert!(!o.unchanged_for("x", seen(2), lease, t0 + Duration::from_secs(9)));
        assert!(!o.unchanged_for("x", seen(2), lease, t0 + Duration::from_secs(18)));
        assert!(o.unchanged_for("x", seen(2), lease, t0 + Duration::from_secs(19)));
        o.retain(&BTreeSet::new());
        assert!(!o.unchanged_for("x", seen(2), lease, t0 + Duration::from_secs(30)));
    }

    #[test]
    fn claim_ids_differ_and_intervals_are_bounded() {
        assert_ne!(new_claim_id("h", 1), new_claim_id("h", 1));
        assert_eq!(
            renew_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
        assert_eq!(
            renew_interval(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            renew_interval(Duration::from_secs(600)),
            Duration::from_secs(15)
        );
    }
}
