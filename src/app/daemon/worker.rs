//! One worker thread per configured device: takes jobs (waiting ones first, see
//! [`super::dispatch`]) until the daemon stops, loading the models the device serves as its jobs
//! need them (see [`crate::jobs::run::resident`]).
//!
//! Among the jobs of `incoming/` with the highest priority, a worker takes one for a model it
//! has loaded before older ones for other models, so that a device does not switch models at
//! every job; a job passed over [`MAX_PASSED_OVER`] times goes first (see
//! [`crate::spool::Spool::next_job_preferring`]).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::WorkerCtx;
use super::dispatch::Waiting;
use super::heartbeat::WorkerState;
use super::notify;
use super::process::{Processed, process};
use super::storage::{self, wait_for_storage};
use crate::app::config::Config;
use crate::jobs::run::Worker;
use crate::spool::Preference;
use crate::sys::bytes::ByteSize;

/// How long a worker waits for a new job, or sleeps while paused, before it looks around again
/// (and beats).
const CLAIM_WAIT: Duration = Duration::from_millis(500);
const PAUSE_LOOK: Duration = Duration::from_millis(250);
/// How often a queued job may be passed over for younger jobs of its priority whose model a
/// worker has loaded, before it goes first.
pub const MAX_PASSED_OVER: u32 = 4;

/// The worker's thread: says on `started` that it takes jobs, works until the daemon stops.
/// It loads nothing up front.
pub fn run(ctx: WorkerCtx<'_>, started: &mpsc::Sender<Result<i32, String>>) -> anyhow::Result<()> {
    let config = ctx.shared.config();
    let budget = config.model_memory(ctx.device);
    let mut worker = Worker::new(&device_config(&config, ctx.device), ctx.device, budget);
    tracing::info!(
        device = ctx.device,
        model_memory = %budget.map_or("unlimited".into(), |b| ByteSize(b).to_string()),
        "worker started; models load when a job needs them"
    );
    crate::app::web::metrics::telemetry().record_resident(ctx.device, &[]);
    let _ = started.send(Ok(ctx.device));
    ctx.pulse.set(WorkerState::Idle, None);
    let result = work(&ctx, &mut worker);
    ctx.pulse.set(WorkerState::Stopped, None);
    result
}

/// The configuration a device's worker uses: only the models it serves.
fn device_config(config: &Config, device: i32) -> Config {
    let mut own = config.clone();
    own.models.retain(|name, _| config.serves(device, name));
    tracing::info!(device, models = %own.models.keys().cloned().collect::<Vec<_>>().join(", "), "the models this device serves");
    own
}

/// Takes and runs jobs until the daemon stops (or, with `until_idle`, the spool is empty).
fn work(ctx: &WorkerCtx<'_>, worker: &mut Worker) -> anyhow::Result<()> {
    let mut pause = PauseWatch::default();
    let mut storage_wait = storage::RETRY_FIRST;
    while !ctx.shared.shutdown.is_stopping() {
        ctx.pulse.beat();
        // Queued jobs that users who may not move them asked to cancel (also while paused).
        crate::spool::control::file_cancelled_queued(ctx.spool.layout());
        // Paused: nothing starts, new or resumed; the running jobs (of other workers) finish.
        if pause.holds(ctx) {
            if ctx.options.until_idle {
                tracing::info!(
                    device = ctx.device,
                    "the spool is paused; exiting (--until-idle)"
                );
                ctx.shared.shutdown.stop_taking();
                return Ok(());
            }
            ctx.shared.shutdown.sleep(PAUSE_LOOK);
            continue;
        }
        let Some(waiting) = next_job(ctx, worker)? else {
            if ctx.options.until_idle && spool_idle(ctx) {
                tracing::info!(
                    device = ctx.device,
                    "spool is empty; exiting (--until-idle)"
                );
                ctx.shared.shutdown.stop_taking();
                return Ok(());
            }
            continue;
        };
        ctx.pulse
            .set(WorkerState::Rendering, Some(&waiting.claimed.stem));
        let processed = process(ctx, worker, waiting);
        ctx.pulse.set(WorkerState::Idle, None);
        match processed? {
            Processed::Settled => storage_wait = storage::RETRY_FIRST,
            Processed::WaitsForStorage(waiting) => {
                if !wait_for_storage(ctx, *waiting, &mut storage_wait) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// The next job for this worker: a waiting one it may run, else a new one from `incoming/`
/// (unless enough claimed jobs wait already), preferring its loaded models' jobs among those of
/// equal priority. `None` after a short wait without one.
fn next_job(ctx: &WorkerCtx<'_>, worker: &Worker) -> anyhow::Result<Option<Waiting>> {
    let config = ctx.shared.config();
    let dispatch = &ctx.shared.dispatch;
    if let Some(waiting) = dispatch.take(|model| config.serves(ctx.device, model)) {
        return Ok(Some(waiting));
    }
    if !dispatch.may_claim() {
        ctx.shared.shutdown.sleep(PAUSE_LOOK);
        return Ok(None);
    }
    let default_model = config.default_model_name();
    let loaded = |model: Option<&str>| worker.is_loaded(model.unwrap_or(default_model));
    let preference = Preference {
        prefer: &loaded,
        max_passed_over: MAX_PASSED_OVER,
    };
    let claimed = ctx.spool.next_job_preferring(CLAIM_WAIT, &preference)?;
    Ok(claimed.map(|claimed| Waiting {
        claimed,
        model: None,
    }))
}

/// Whether incoming/ and running/ hold nothing left to do.
fn spool_idle(ctx: &WorkerCtx<'_>) -> bool {
    ctx.shared.dispatch.is_empty()
        && ctx
            .spool
            .overview()
            .map(|o| o.counts.incoming == 0 && o.counts.running == 0)
            .unwrap_or(false)
}

/// Notices when the spool is paused and resumed, and says so once each time.
#[derive(Debug, Default)]
struct PauseWatch {
    since: Option<Instant>,
}

impl PauseWatch {
    /// Whether the spool is paused now.
    fn holds(&mut self, ctx: &WorkerCtx<'_>) -> bool {
        if ctx.control.is_paused() {
            if self.since.is_none() {
                let by = ctx.control.paused().map(|r| r.by).unwrap_or_default();
                tracing::info!(device = ctx.device, by = %by, "the spool is paused; no job starts until `sdspool resume`");
                notify::status("paused: no job starts until `sdspool resume`");
                self.since = Some(Instant::now());
            }
            return true;
        }
        if let Some(since) = self.since.take() {
            tracing::info!(
                device = ctx.device,
                paused_seconds = since.elapsed().as_secs(),
                "the spool is resumed"
            );
            notify::status("resumed");
        }
        false
    }
}
