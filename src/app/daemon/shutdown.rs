//! The stop signal passed down to the workers and their job runs (in the manner of tokio's
//! mini-redis `Shutdown`: one handle that the signal handling flips and everything below
//! listens to).
//!
//! Two levels: [`Shutdown::stop_taking`] (no new job; the running ones finish) and
//! [`Shutdown::stop_now`] (running jobs stop at their next step, checkpointed). Each running job
//! is registered with a [`JobSwitch`]: the flag its run checks between steps. The switch is
//! flipped from outside, by `stop_now` or by a cancel request that [`Shutdown::poll_cancels`]
//! finds (the supervisor calls it every few hundred milliseconds); the job run itself never
//! looks at a file. Waits in the workers ([`Shutdown::sleep`]) end as soon as a stop comes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::spool::control::{CancelRequest, Control};

/// The daemon's stop signal; shared by reference with every worker.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// No new job is claimed.
    taking_stopped: AtomicBool,
    /// Running jobs stop at their next step.
    now: AtomicBool,
    /// Wakes [`Shutdown::sleep`]ers.
    wake: Condvar,
    /// The running jobs' switches (also the mutex `wake` waits on).
    jobs: Mutex<Vec<Arc<JobSwitch>>>,
}

/// The stop flag of one running job, and the cancel request that flipped it, if one did.
#[derive(Debug)]
pub struct JobSwitch {
    /// The job's name in the spool.
    stem: String,
    /// `running/<stem>.yaml` (a cancel request names this very file).
    path: PathBuf,
    stop: AtomicBool,
    cancel: Mutex<Option<CancelRequest>>,
}

impl JobSwitch {
    /// The flag the job run checks between steps.
    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }

    /// The cancel request that stopped the job, when one did.
    pub fn cancel_request(&self) -> Option<CancelRequest> {
        self.cancel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn cancel(&self, request: CancelRequest) {
        tracing::info!(job = %self.stem, by = %request.by, "cancel requested; stopping the job at its next step");
        *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) = Some(request);
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A registered running job; unregistered when dropped.
pub struct RunningJob<'a> {
    shutdown: &'a Shutdown,
    switch: Arc<JobSwitch>,
}

impl std::ops::Deref for RunningJob<'_> {
    type Target = JobSwitch;
    fn deref(&self) -> &JobSwitch {
        &self.switch
    }
}

impl Drop for RunningJob<'_> {
    fn drop(&mut self) {
        self.shutdown
            .jobs()
            .retain(|j| !Arc::ptr_eq(j, &self.switch));
    }
}

impl Shutdown {
    fn jobs(&self) -> MutexGuard<'_, Vec<Arc<JobSwitch>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops claiming jobs. Returns whether that had been asked before.
    pub fn stop_taking(&self) -> bool {
        let _jobs = self.jobs();
        let before = self.taking_stopped.swap(true, Ordering::Relaxed);
        self.wake.notify_all();
        before
    }

    /// Stops claiming jobs and stops the running ones at their next step.
    pub fn stop_now(&self) {
        let jobs = self.jobs();
        self.taking_stopped.store(true, Ordering::Relaxed);
        self.now.store(true, Ordering::Relaxed);
        for job in jobs.iter() {
            job.stop.store(true, Ordering::Relaxed);
        }
        self.wake.notify_all();
    }

    /// Whether no new job is to be claimed.
    pub fn is_stopping(&self) -> bool {
        self.taking_stopped.load(Ordering::Relaxed)
    }

    /// Waits for `wait` or until a stop comes; returns [`Shutdown::is_stopping`].
    pub fn sleep(&self, wait: Duration) -> bool {
        let jobs = self.jobs();
        let _unused = self
            .wake
            .wait_timeout_while(jobs, wait, |_| !self.is_stopping())
            .unwrap_or_else(|e| e.into_inner());
        self.is_stopping()
    }

    /// Registers a job that starts running from `path` (`running/<stem>.yaml`). Its switch is
    /// already flipped when the daemon is stopping now.
    pub fn run_job(&self, stem: &str, path: &Path) -> RunningJob<'_> {
        let switch = Arc::new(JobSwitch {
            stem: stem.to_string(),
            path: path.to_path_buf(),
            stop: AtomicBool::new(self.now.load(Ordering::Relaxed)),
            cancel: Mutex::new(None),
        });
        let mut jobs = self.jobs();
        // Read again under the lock: a `stop_now` in between flipped only the registered jobs.
        if self.now.load(Ordering::Relaxed) {
            switch.stop.store(true, Ordering::Relaxed);
        }
        jobs.push(Arc::clone(&switch));
        RunningJob {
            shutdown: self,
            switch,
        }
    }

    /// Looks once for a cancel request for each running job (one `stat` per job when there is
    /// none) and flips the switch of each job that has one.
    pub fn poll_cancels(&self, control: &Control) {
        let jobs: Vec<Arc<JobSwitch>> = self.jobs().clone();
        for job in jobs {
            if job.cancel_request().is_some() {
                continue;
            }
            if let Some(request) = control.cancel_requested(&job.stem, &job.path) {
                job.cancel(request);
            }
        }
    }

    /// The spool stems of the running jobs.
    pub fn running(&self) -> Vec<String> {
        self.jobs().iter().map(|j| j.stem.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn stop_now_flips_running_and_later_jobs_and_a_cancel_flips_only_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let control = Control::new(tmp.path());
        let (a_path, b_path) = (tmp.path().join("a.yaml"), tmp.path().join("b.yaml"));
        std::fs::write(&a_path, "prompts: [a]\n").unwrap();
        std::fs::write(&b_path, "prompts: [b]\n").unwrap();
        let shutdown = Shutdown::default();
        let a = shutdown.run_job("a", &a_path);
        let b = shutdown.run_job("b", &b_path);
        shutdown.poll_cancels(&control);
        assert!(!a.flag().load(Ordering::Relaxed) && !b.flag().load(Ordering::Relaxed));

        control.request_cancel("b", &b_path).unwrap();
        shutdown.poll_cancels(&control);
        assert!(!a.flag().load(Ordering::Relaxed), "not the other job");
        assert!(b.flag().load(Ordering::Relaxed));
        assert_eq!(b.cancel_request().unwrap().job, "b");
        assert!(a.cancel_request().is_none());
        assert!(!shutdown.is_stopping(), "a cancel does not stop the daemon");

        assert!(!shutdown.stop_taking());
        assert!(
            !a.flag().load(Ordering::Relaxed),
            "stop taking lets jobs finish"
        );
        assert!(shutdown.stop_taking(), "the second time says so");
        shutdown.stop_now();
        assert!(a.flag().load(Ordering::Relaxed));
        let later = shutdown.run_job("c", &a_path);
        assert!(later.flag().load(Ordering::Relaxed));
        assert!(a.cancel_request().is_none(), "stopped, not cancelled");
    }

    #[test]
    fn a_finished_job_is_unregistered() {
        let shutdown = Shutdown::default();
        {
            let _job = shutdown.run_job("a", Path::new("/nonexistent/a.yaml"));
            assert_eq!(shutdown.running(), ["a"]);
        }
        assert!(shutdown.running().is_empty());
    }

    #[test]
    fn a_sleep_ends_when_the_stop_comes() {
        let shutdown = Shutdown::default();
        let started = Instant::now();
        assert!(!shutdown.sleep(Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                shutdown.stop_taking();
            });
            let started = Instant::now();
            assert!(shutdown.sleep(Duration::from_secs(60)));
            assert!(started.elapsed() < Duration::from_secs(30));
        });
    }
}
