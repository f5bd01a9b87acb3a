//! Time spent inside ONNX Runtime: every session run goes through [`super::LoadedSession::run`]
//! (or [`super::LoadedSession::run_binding`]), which adds its wall time to the session's own
//! [`SessionClock`] and to the runtime's [`BusyClock`]. Two `Instant::now()` calls and an
//! uncontended lock per run: nothing next to a model run, so it is always on.
//!
//! `sdspool bench` reads them to split a run's wall time into ONNX Runtime's share and the
//! pipeline's own overhead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Runs of one session and their summed wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionClock {
    pub calls: u64,
    pub time: Duration,
}

impl SessionClock {
    pub fn add(&mut self, elapsed: Duration) {
        self.calls += 1;
        self.time += elapsed;
    }

    /// What was added since `earlier` (a copy taken before).
    pub fn since(&self, earlier: &SessionClock) -> SessionClock {
        SessionClock {
            calls: self.calls - earlier.calls,
            time: self.time.saturating_sub(earlier.time),
        }
    }
}

/// Wall time during which at least one session of the runtime was running, whatever the
/// thread: the union of the run intervals (the rerank thread's runs overlap the render thread's,
/// and are counted once).
#[derive(Debug, Default)]
pub struct BusyClock {
    state: Mutex<BusyState>,
}

#[derive(Debug, Default)]
struct BusyState {
    running: usize,
    since: Option<Instant>,
    total: Duration,
}

impl BusyClock {
    /// A run starts (at `now`).
    pub fn enter(&self, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.running == 0 {
            s.since = Some(now);
        }
        s.running += 1;
    }

    /// A run ends (at `now`).
    pub fn exit(&self, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.running = s.running.saturating_sub(1);
        if s.running == 0
            && let Some(since) = s.since.take()
        {
            s.total += now.saturating_duration_since(since);
        }
    }

    /// Busy time so far, a run in progress counted up to now.
    pub fn total(&self) -> Duration {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total
            + s.since
                .map(|t| Instant::now().saturating_duration_since(t))
                .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_runs_count_once() {
        let c = BusyClock::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        c.enter(t0);
        c.enter(t0 + ms(5));
        c.exit(t0 + ms(10));
        c.exit(t0 + ms(20));
        c.enter(t0 + ms(30));
        c.exit(t0 + ms(31));
        assert_eq!(c.total(), ms(21));
    }

    #[test]
    fn session_clock_difference() {
        let mut a = SessionClock::default();
        a.add(Duration::from_millis(3));
        let before = a;
        a.add(Duration::from_millis(4));
        a.add(Duration::from_millis(5));
        assert_eq!(
            a.since(&before),
            SessionClock {
                calls: 2,
                time: Duration::from_millis(9)
            }
        );
    }
}
