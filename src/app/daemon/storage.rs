//! Jobs whose files cannot be written now (a full, read-only or unwritable disk): not failed,
//! but kept claimed and run again after a wait. Whether an error is of that kind is decided in
//! one place, [`crate::sys::atomic::is_storage_unavailable`].

use std::time::{Duration, Instant, SystemTime};

use super::notify;
use super::worker::WorkerCtx;
use crate::spool::{Claimed, FinishError};

/// First and longest wait before a job that could not write its output runs again.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// A job that stopped because its output (or its filing in done/ or failed/) could not be
/// written: the disk is full, the quota used up, the file system read-only, or a folder not
/// writable. The job is not at fault, so it is not failed: it stays claimed in running/ and the
/// worker runs it again after a wait (doubling up to [`RETRY_MAX`]); it continues from its
/// manifest.
#[derive(Debug)]
pub struct WaitForStorage {
    pub claimed: Claimed,
    pub model: Option<String>,
    pub reason: String,
}

/// A job could not be filed in done/ or failed/: `Ok` (wait) when the spool's disk is full or
/// read-only, else the error, which stops the worker.
pub fn filing_error(e: FinishError, model: Option<&str>) -> anyhow::Result<WaitForStorage> {
    if crate::sys::atomic::is_storage_unavailable(&e.error.source) {
        return Ok(WaitForStorage {
            reason: e.error.to_string(),
            claimed: *e.claimed,
            model: model.map(str::to_string),
        });
    }
    Err(e.into())
}

/// Waits before running `waiting` again (it goes first in line); `false` when the daemon stops
/// meanwhile (the job is released: it stays in running/ for the next start, no crash counted).
/// `wait` doubles for the next time.
pub fn wait_for_storage(ctx: &WorkerCtx<'_>, waiting: WaitForStorage, wait: &mut Duration) -> bool {
    let WaitForStorage {
        claimed,
        model,
        reason,
    } = waiting;
    tracing::warn!(
        device = ctx.device,
        job = %claimed.stem,
        error = %reason,
        retry_seconds = wait.as_secs(),
        "cannot write the job's files (disk full, read-only or not writable?); the job is not failed: it stays in running/ and runs again, from its manifest, after the wait"
    );
    notify::status(&format!(
        "job {} waits: cannot write its files ({reason}); trying again in {} s",
        claimed.stem,
        wait.as_secs()
    ));
    // `sdspool status` shows the wait (on a full disk this write may fail too).
    let retry_at = SystemTime::now() + *wait;
    if let Err(e) = ctx.spool.write_waiting(
        &claimed,
        crate::spool::StorageWait {
            reason: reason.clone(),
            retry_at,
        },
    ) {
        tracing::debug!(error = %e, "cannot record the wait in the job status");
    }
    let until = Instant::now() + *wait;
    while Instant::now() < until {
        ctx.pulse.beat();
        let left = until.saturating_duration_since(Instant::now());
        if ctx
            .shared
            .shutdown
            .sleep(left.min(Duration::from_millis(250)))
        {
            if let Err(e) = ctx.spool.release(claimed) {
                tracing::warn!(error = %e, "cannot release the waiting job");
            }
            return false;
        }
    }
    *wait = (*wait * 2).min(RETRY_MAX);
    ctx.shared.dispatch.retry_first(claimed, model);
    true
}
