//! One heartbeat per worker, so that the systemd watchdog notices a single hung worker.
//!
//! Every worker beats: at each denoising step while it renders (the job run's progress
//! callback), and at each turn of its loop while it waits for work, for a resume or for storage.
//! A worker is **hung** when it is idle or rendering and has not beaten for longer than the
//! configured limit (`daemon.hang_seconds`): a GPU call that never returns, a file system that
//! blocks. The daemon pings the watchdog only while no worker is hung, so one hung GPU is not
//! hidden behind another worker that is busy. A worker that is loading the models a job needs
//! (which shows no progress for as long as it takes) or that has stopped is never hung.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use crate::app::worker_state::WorkerState;

#[derive(Debug)]
struct Slot {
    device: i32,
    state: WorkerState,
    /// The job it runs (the spool stem), while rendering.
    job: Option<String>,
    last: Instant,
}

/// How one worker stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    /// The worker's index (workers are numbered in `execution.device_ids` order).
    pub worker: usize,
    pub device: i32,
    pub state: WorkerState,
    pub job: Option<String>,
    /// Time since its last beat.
    pub quiet: Duration,
}

/// The heartbeats of all workers.
#[derive(Debug)]
pub struct Heartbeats {
    slots: Vec<Mutex<Slot>>,
}

impl Heartbeats {
    /// One slot per device id, every worker [`WorkerState::Loading`].
    pub fn new(devices: &[i32], now: Instant) -> Heartbeats {
        Heartbeats {
            slots: devices
                .iter()
                .map(|&device| {
                    Mutex::new(Slot {
                        device,
                        state: WorkerState::Loading,
                        job: None,
                        last: now,
                    })
                })
                .collect(),
        }
    }

    fn with<R>(&self, worker: usize, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        let slot = self.slots.get(worker)?;
        Some(f(&mut slot.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// `worker` shows a sign of life at `now`.
    pub fn beat_at(&self, worker: usize, now: Instant) {
        self.with(worker, |s| s.last = s.last.max(now));
    }

    /// `worker` now does `state` (on `job`); counts as a beat.
    pub fn set_at(&self, worker: usize, state: WorkerState, job: Option<&str>, now: Instant) {
        self.with(worker, |s| {
            crate::app::web::metrics::telemetry().record_worker_state(s.device, state);
            s.state = state;
            s.job = job.map(str::to_string);
            s.last = s.last.max(now);
        });
    }

    /// How every worker stands at `now`.
    pub fn reports(&self, now: Instant) -> Vec<WorkerReport> {
        (0..self.slots.len())
            .filter_map(|worker| {
                self.with(worker, |s| WorkerReport {
                    worker,
                    device: s.device,
                    state: s.state,
                    job: s.job.clone(),
                    quiet: now.saturating_duration_since(s.last),
                })
            })
            .collect()
    }

    /// The workers hung at `now`: idle or rendering, without a beat for longer than `limit`.
    pub fn hung(&self, now: Instant, limit: Duration) -> Vec<WorkerReport> {
        self.reports(now)
            .into_iter()
            .filter(|r| r.state.must_beat() && r.quiet > limit)
            .collect()
    }

    /// The handle one worker beats with.
    pub fn pulse(&self, worker: usize) -> Pulse<'_> {
        Pulse {
            beats: self,
            worker,
        }
    }
}

/// One worker's side of [`Heartbeats`].
#[derive(Debug, Clone, Copy)]
pub struct Pulse<'a> {
    beats: &'a Heartbeats,
    worker: usize,
}

impl Pulse<'_> {
    pub fn beat(&self) {
        self.beats.beat_at(self.worker, Instant::now());
    }

    pub fn set(&self, state: WorkerState, job: Option<&str>) {
        self.beats.set_at(self.worker, state, job, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[test]
    fn one_quiet_worker_is_hung_even_while_another_beats() {
        let t0 = Instant::now();
        let beats = Heartbeats::new(&[0, 1], t0);
        beats.set_at(0, WorkerState::Rendering, Some("busy"), t0);
        beats.set_at(1, WorkerState::Rendering, Some("stuck"), t0);
        for s in 1..=30 {
            beats.beat_at(0, t0 + Duration::from_secs(s));
        }
        let now = t0 + Duration::from_secs(30);
        let hung = beats.hung(now, LIMIT);
        assert_eq!(hung.len(), 1, "{hung:?}");
        assert_eq!((hung[0].device, hung[0].job.as_deref()), (1, Some("stuck")));
        assert_eq!(hung[0].quiet, Duration::from_secs(30));
        // It beats again: nobody is hung.
        beats.beat_at(1, now);
        assert!(beats.hung(now, LIMIT).is_empty());
    }

    #[test]
    fn a_step_shorter_than_the_limit_is_not_a_hang_and_idle_workers_must_beat_too() {
        let t0 = Instant::now();
        let beats = Heartbeats::new(&[0, 1], t0);
        beats.set_at(0, WorkerState::Rendering, Some("slow step"), t0);
        beats.set_at(1, WorkerState::Idle, None, t0);
        assert!(
            beats.hung(t0 + LIMIT, LIMIT).is_empty(),
            "exactly the limit"
        );
        let late = t0 + LIMIT + Duration::from_millis(1);
        let hung: Vec<i32> = beats.hung(late, LIMIT).iter().map(|r| r.device).collect();
        assert_eq!(hung, [0, 1], "an idle worker's loop stopped turning");
    }

    #[test]
    fn loading_and_stopped_workers_are_never_hung() {
        let t0 = Instant::now();
        let beats = Heartbeats::new(&[0, 1], t0);
        beats.set_at(1, WorkerState::Stopped, None, t0);
        let much_later = t0 + Duration::from_secs(3600);
        assert!(beats.hung(much_later, LIMIT).is_empty());
        let states: Vec<WorkerState> = beats.reports(much_later).iter().map(|r| r.state).collect();
        assert_eq!(states, [WorkerState::Loading, WorkerState::Stopped]);
    }

    #[test]
    fn a_late_beat_never_moves_the_clock_back() {
        let t0 = Instant::now();
        let beats = Heartbeats::new(&[0], t0);
        beats.set_at(0, WorkerState::Idle, None, t0 + Duration::from_secs(5));
        beats.beat_at(0, t0);
        assert_eq!(
            beats.reports(t0 + Duration::from_secs(5))[0].quiet,
            Duration::ZERO
        );
    }
}
