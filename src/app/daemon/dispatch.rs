//! Claimed jobs that wait for a worker of this daemon: jobs left in `running/` by a crash
//! (resumed before new ones), a job that waits to be written again after a storage error, and
//! jobs handed over by a worker that does not serve their model (`execution.devices`) to one
//! that does.
//!
//! A worker takes the first waiting job it may run: one whose model it serves, or whose model is
//! not known yet (a recovered job: the worker reads it and hands it on when it is not its own).
//! It claims a new job from `incoming/` only while fewer jobs wait here than the daemon has
//! workers, so a worker that serves none of the waiting jobs' models does not pull the whole
//! queue into `running/`.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crate::spool::Claimed;

/// A claimed job not running yet.
#[derive(Debug)]
pub struct Waiting {
    pub claimed: Claimed,
    /// The job's model, once a worker has read the job.
    pub model: Option<String>,
}

/// The daemon's waiting jobs.
#[derive(Debug)]
pub struct Dispatch {
    queue: Mutex<VecDeque<Waiting>>,
    /// Most waiting jobs while workers still claim new ones: the number of workers.
    limit: usize,
}

impl Dispatch {
    /// `recovered`: the jobs [`crate::spool::Spool::recover`] handed out, first in line.
    pub fn new(recovered: Vec<Claimed>, workers: usize) -> Dispatch {
        Dispatch {
            queue: Mutex::new(
                recovered
                    .into_iter()
                    .map(|claimed| Waiting {
                        claimed,
                        model: None,
                    })
                    .collect(),
            ),
            limit: workers.max(1),
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Waiting>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first waiting job whose model `serves` accepts or is not known yet.
    pub fn take(&self, serves: impl Fn(&str) -> bool) -> Option<Waiting> {
        let mut queue = self.queue();
        let i = queue
            .iter()
            .position(|w| w.model.as_deref().is_none_or(&serves))?;
        queue.remove(i)
    }

    /// Queues a job of `model` for a worker that serves it.
    pub fn hand_over(&self, claimed: Claimed, model: String) {
        self.queue().push_back(Waiting {
            claimed,
            model: Some(model),
        });
    }

    /// Puts a job first in line (to run again after a wait).
    pub fn retry_first(&self, claimed: Claimed, model: Option<String>) {
        self.queue().push_front(Waiting { claimed, model });
    }

    /// Whether a worker may claim a new job from `incoming/`.
    pub fn may_claim(&self) -> bool {
        self.queue().len() < self.limit
    }

    pub fn len(&self) -> usize {
        self.queue().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// Empties the queue (at exit: the jobs are released).
    pub fn drain(&self) -> Vec<Claimed> {
        self.queue().drain(..).map(|w| w.claimed).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Spool, SpoolConfig};

    /// Claims `names` (submitted in that order) from a fresh spool.
    fn claim(names: &[&str]) -> (tempfile::TempDir, Vec<Claimed>) {
        let tmp = tempfile::tempdir().unwrap();
        let config = SpoolConfig {
            dir: tmp.path().join("spool"),
            settle_seconds: 0,
            ..SpoolConfig::default()
        };
        let spool = Spool::open(&config).unwrap();
        for (i, name) in names.iter().enumerate() {
            let body = format!("prompts: [x]\npriority: {}\n", names.len() - i);
            std::fs::write(spool.layout().incoming.join(format!("{name}.yaml")), body).unwrap();
        }
        let claimed = names
            .iter()
            .map(|_| {
                spool
                    .next_job(std::time::Duration::from_secs(5))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        (tmp, claimed)
    }

    #[test]
    fn workers_take_their_own_models_and_unknown_ones_in_order() {
        let (_tmp, mut claimed) = claim(&["a", "b", "c", "d"]);
        let d = claimed.pop().unwrap();
        let c = claimed.pop().unwrap();
        let dispatch = Dispatch::new(claimed, 2);
        dispatch.hand_over(c, "xl".into());
        dispatch.hand_over(d, "sd".into());
        let only_sd = |m: &str| m == "sd";
        let only_xl = |m: &str| m == "xl";
        // Recovered jobs (model unknown) come first, for any worker.
        assert_eq!(dispatch.take(only_xl).unwrap().claimed.stem, "a");
        assert_eq!(dispatch.take(only_sd).unwrap().claimed.stem, "b");
        // Then each worker gets only its own model's jobs.
        let next = dispatch.take(only_sd).unwrap();
        assert_eq!(
            (next.claimed.stem.as_str(), next.model.as_deref()),
            ("d", Some("sd"))
        );
        assert!(dispatch.take(only_sd).is_none());
        assert_eq!(dispatch.take(only_xl).unwrap().claimed.stem, "c");
        assert!(dispatch.is_empty());
    }

    #[test]
    fn no_new_claims_while_as_many_jobs_wait_as_there_are_workers() {
        let (_tmp, claimed) = claim(&["a", "b", "c"]);
        let dispatch = Dispatch::new(Vec::new(), 2);
        assert!(dispatch.may_claim());
        let mut claimed = claimed.into_iter();
        dispatch.hand_over(claimed.next().unwrap(), "xl".into());
        assert!(dispatch.may_claim());
        dispatch.hand_over(claimed.next().unwrap(), "xl".into());
        assert!(!dispatch.may_claim());
        // A retry goes first.
        dispatch.retry_first(claimed.next().unwrap(), Some("sd".into()));
        assert_eq!(dispatch.take(|_| true).unwrap().claimed.stem, "c");
        assert_eq!(dispatch.drain().len(), 2);
        assert!(dispatch.may_claim());
    }
}
