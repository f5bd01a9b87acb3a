//! Whether an attempt that ended without finishing its job counts as a crash of the job
//! (`spool.max_crashes`).
//!
//! A daemon can die for reasons that have nothing to do with the job it runs: an operator's
//! `kill -9`, the OOM killer making room for another process, a node drain, a power cut. Such a
//! death must never fail a good job, however often it happens. A job that itself brings the
//! daemon down (a native crash in ONNX Runtime for its shape, memory it alone exhausts, a
//! panic) dies the same way at the same place on every attempt. The rule, from the evidence the
//! spool has:
//!
//! * The dying attempt's position is where its status file (`running/<job>.status.json`, written
//!   by that attempt) last put it: prompt, images done, step. An attempt that wrote none died
//!   before its first progress: position 0, 0, 0.
//! * A panic while the job ran (recorded by the [`Claimed`](super::Claimed) as it unwound)
//!   counts.
//! * A death at the same position as the job's previous counted death counts: it died again at
//!   the same point without progress in between.
//! * A death at another position counts as the first at that position: the count starts again
//!   at 1.
//! * No evidence either way, not counted: a claim given back ([`Spool::release`](super::Spool)),
//!   an attempt no worker had started yet (a daemon killed while it loaded its models), an
//!   attempt waiting for storage (its files could not be written).
//!
//! When the count reaches `spool.max_crashes` the job goes to `failed/` with the position and
//! the evidence. Kills that land at different points of a job's work therefore never fail it;
//! `max_crashes` kills in a row at the very same point (e.g. always before its first step) do.

use serde::{Deserialize, Serialize};

use super::Attempts;
use super::status::JobStatus;

/// Where a job was when an attempt at it ended: the status its attempt last wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The prompt, 0-based.
    pub prompt: usize,
    pub images_done: usize,
    /// Denoising steps done in the batch.
    pub step: u32,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "prompt {}, {} images done, step {}",
            self.prompt + 1,
            self.images_done,
            self.step
        )
    }
}

/// How an attempt that left its job in `running/` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Given back by a clean stop, or never started by a worker, or waiting for storage: says
    /// nothing about the job.
    NoEvidence(&'static str),
    /// It died while the job ran, at this position.
    Died { at: Position, panicked: bool },
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::NoEvidence(why) => write!(f, "no evidence against the job: {why}"),
            Ending::Died {
                at,
                panicked: false,
            } => write!(f, "died at {at}"),
            Ending::Died { at, panicked: true } => write!(f, "died at {at} after a panic"),
        }
    }
}

/// How the attempt `record` (whose daemon is gone) ended, from its record and the job's status
/// file.
pub(crate) fn ending(record: &Attempts, status: Option<&JobStatus>) -> Ending {
    if record.released {
        return Ending::NoEvidence("given back by a clean stop");
    }
    if !record.working && !record.panicked {
        return Ending::NoEvidence("no worker had started it");
    }
    // Written by this attempt: same process, not before the attempt began (whole seconds).
    let own = status.filter(|s| {
        s.pid == record.pid
            && s.hostname == record.host
            && s.updated_at
                >= record
                    .started_at
                    .checked_sub(std::time::Duration::from_secs(1))
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
    });
    if own.is_some_and(|s| s.waiting.is_some()) && !record.panicked {
        return Ending::NoEvidence("it was waiting for storage");
    }
    let at = own
        .map(|s| Position {
            prompt: s.prompt_index,
            images_done: s.images_done,
            step: s.step,
        })
        .unwrap_or_default();
    Ending::Died {
        at,
        panicked: record.panicked,
    }
}

/// The job's crash count and the position of its latest counted death after `ending`.
pub(crate) fn count(record: &Attempts, ending: &Ending) -> (u32, Option<Position>) {
    match ending {
        Ending::NoEvidence(_) => (record.crashes, record.crashed_at),
        Ending::Died { at, panicked } => {
            let again = record.crashed_at == Some(*at);
            let crashes = if *panicked || again {
                record.crashes + 1
            } else {
                1
            };
            (crashes, Some(*at))
        }
    }
}

/// Why a job is failed after `crashes` counted crashes, for its error file.
pub(crate) fn reason(crashes: u32, max: u32, ending: &Ending, record: &Attempts) -> String {
    let evidence = match ending {
        Ending::Died { at, panicked: true } => format!("its last attempt panicked at {at}"),
        Ending::Died { at, .. } => format!(
            "its last {crashes} attempts died at the same point ({at}) without progress in between"
        ),
        Ending::NoEvidence(why) => why.to_string(),
    };
    format!(
        "crashed the daemon {crashes} times (spool.max_crashes is {max}): {evidence}; the last attempt started at {} on {} (pid {})",
        super::fsops::rfc3339::format(record.started_at),
        record.host,
        record.pid
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn record() -> Attempts {
        Attempts {
            attempts: 1,
            host: "h".into(),
            pid: 7,
            boot_id: None,
            locked: true,
            started_at: SystemTime::now() - Duration::from_secs(5),
            claim: Some("c".into()),
            working: true,
            released: false,
            panicked: false,
            crashes: 0,
            crashed_at: None,
            job: None,
        }
    }

    fn status(r: &Attempts, prompt: usize, images: usize, step: u32) -> JobStatus {
        let mut s = JobStatus::starting("j", "m", 4, 5, 8);
        s.pid = r.pid;
        s.hostname = r.host.clone();
        s.prompt_index = prompt;
        s.images_done = images;
        s.step = step;
        s
    }

    #[test]
    fn deaths_at_new_points_start_again_and_repeats_count() {
        let mut r = record();
        let mut counts = Vec::new();
        for (p, i, s) in [
            (0, 0, 1),
            (0, 0, 3),
            (1, 2, 2),
            (1, 2, 2),
            (1, 2, 2),
            (2, 4, 1),
        ] {
            let e = ending(&r, Some(&status(&r, p, i, s)));
            let (c, at) = count(&r, &e);
            r.crashes = c;
            r.crashed_at = at;
            counts.push(c);
        }
        assert_eq!(counts, [1, 1, 1, 2, 3, 1]);
    }

    #[test]
    fn no_status_of_its_own_is_the_start_and_a_panic_always_counts() {
        let mut r = record();
        let mut other = status(&r, 3, 3, 3);
        other.pid = 8;
        // Another process's status says nothing about this attempt.
        assert_eq!(
            ending(&r, Some(&other)),
            Ending::Died {
                at: Position::default(),
                panicked: false
            }
        );
        r.crashed_at = Some(Position {
            prompt: 1,
            images_done: 0,
            step: 1,
        });
        r.crashes = 1;
        r.panicked = true;
        let e = ending(&r, Some(&status(&r, 2, 2, 2)));
        assert_eq!(count(&r, &e).0, 2);
        assert!(reason(2, 2, &e, &r).contains("panicked at prompt 3, 2 images done, step 2"));
    }

    #[test]
    fn released_unstarted_and_waiting_attempts_are_no_evidence() {
        let mut r = record();
        r.crashes = 2;
        r.released = true;
        assert!(matches!(ending(&r, None), Ending::NoEvidence(_)));
        r.released = false;
        r.working = false;
        assert!(matches!(ending(&r, None), Ending::NoEvidence(_)));
        r.working = true;
        let mut s = status(&r, 0, 1, 2);
        s.waiting = Some(super::super::StorageWait {
            reason: "disk full".into(),
            retry_at: SystemTime::now(),
        });
        let e = ending(&r, Some(&s));
        assert!(matches!(e, Ending::NoEvidence(_)));
        assert_eq!(count(&r, &e), (2, None));
    }
}
