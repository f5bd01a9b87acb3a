//! `sdspool run`: the spool daemon.
//!
//! One worker thread per configured device id, each with its own sessions, loaded once. Each
//! worker claims jobs from the spool (highest priority, then oldest), renders them with
//! [`crate::jobrun::Worker`], and files them in done/ or failed/. Jobs left in running/ by a
//! crash are resumed first. SIGTERM or SIGINT: stop taking jobs, let the current ones finish
//! within `daemon.grace_seconds`, else stop them at the next step (their manifest is the
//! checkpoint they continue from), and exit 0. A second signal stops at once (also checkpointed).

pub mod notify;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde::Serialize;

use crate::config::Config;
use crate::eta::{self, Measurements, Timings};
use crate::jobrun::{JobRunError, Progress, RunOptions, Worker};
use crate::runtime::Runtime;
use crate::spool::control::{CancelRequest, Control};
use crate::spool::{Claimed, Failure, JobStatus, Spool, SpoolOptions};

/// `sdspool run` options.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonOptions {
    /// Exit once incoming/ and running/ are empty (batch use, demos and tests).
    pub until_idle: bool,
}

/// State shared by the signal handling, the watchdog and the workers.
struct Shared {
    /// No new job is claimed.
    stop_taking: AtomicBool,
    /// Running jobs stop at their next step.
    stop_now: AtomicBool,
    /// Last sign of progress from any worker (for the watchdog).
    heartbeat: Mutex<Instant>,
    /// Jobs left in running/ by a crash, resumed before new ones.
    resumable: Mutex<VecDeque<Claimed>>,
}

impl Shared {
    fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// Runs the daemon until a signal (or, with `until_idle`, until the spool is empty).
pub fn run(config: &Config, options: DaemonOptions) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // tokio drives the signals, the watchdog and the grace timer; the workers are plain
    // threads, since ONNX Runtime calls block.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let (mut sigterm, mut sigint) = {
        let _context = rt.enter();
        (
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        )
    };

    notify::status("loading ONNX Runtime");
    let runtime = Runtime::init(
        config.onnxruntime.library.as_deref(),
        &config.base_dir(),
        &config.execution,
    )?;
    let spool_options = SpoolOptions {
        max_job_bytes: config.limits.max_job_bytes,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(&config.spool, spool_options)?;
    // Claimed now, started once the models are loaded: a kill meanwhile is not held against them.
    let resumable = spool.recover_queued()?;
    if !resumable.is_empty() {
        tracing::info!(jobs = resumable.len(), "resuming jobs left in running/");
    }
    let shared = Arc::new(Shared {
        stop_taking: AtomicBool::new(false),
        stop_now: AtomicBool::new(false),
        heartbeat: Mutex::new(Instant::now()),
        resumable: Mutex::new(resumable.into()),
    });
    let watchdog = notify::watchdog_interval();

    let (loaded_tx, loaded_rx) = mpsc::channel::<Result<i32, String>>();
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(i32, anyhow::Result<()>)>();
    let devices = config.execution.device_ids.clone();
    let grace = Duration::from_secs(config.daemon.grace_seconds);

    let result = std::thread::scope(|scope| -> anyhow::Result<()> {
        for &device in &devices {
            let (runtime, spool, shared, loaded_tx, done_tx) = (
                &runtime,
                &spool,
                &shared,
                loaded_tx.clone(),
                done_tx.clone(),
            );
            scope.spawn(move || {
                let result =
                    worker_thread(config, runtime, spool, shared, device, options, &loaded_tx);
                if let Err(e) = &result {
                    let _ = loaded_tx.send(Err(crate::logging::error_chain(e)));
                }
                let _ = done_tx.send((device, result));
            });
        }
        drop(done_tx);
        drop(loaded_tx);

        // Wait for every worker to load its models, extending systemd's start timeout meanwhile.
        let mut loaded = 0;
        while loaded < devices.len() {
            notify::extend_timeout(Duration::from_secs(120));
            match loaded_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(device)) => {
                    loaded += 1;
                    tracing::info!(device, "worker ready");
                }
                Ok(Err(e)) => {
                    shared.stop_taking.store(true, Ordering::Relaxed);
                    shared.stop_now.store(true, Ordering::Relaxed);
                    anyhow::bail!("a worker could not start: {e}");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the workers exited while loading")
                }
            }
        }
        let counts = spool
            .overview()
            .map(|o| {
                let c = o.counts;
                format!(
                    "{} incoming, {} running, {} done, {} failed",
                    c.incoming, c.running, c.done, c.failed
                )
            })
            .unwrap_or_default();
        notify::ready(&format!("ready: {} worker(s); {counts}", devices.len()));
        tracing::info!(workers = devices.len(), spool = %config.spool.dir.display(), "sdspool is ready");

        rt.block_on(async {
            let mut workers_left = devices.len();
            let mut grace_deadline: Option<tokio::time::Instant> = None;
            let mut tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
            let mut first_error = None;
            while workers_left > 0 {
                let grace_sleep = async {
                    match grace_deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sigterm.recv() => on_signal(&shared, "SIGTERM", grace, &mut grace_deadline),
                    _ = sigint.recv() => on_signal(&shared, "SIGINT", grace, &mut grace_deadline),
                    _ = grace_sleep => {
                        tracing::warn!(grace_seconds = grace.as_secs(), "grace period over; stopping running jobs at their next step (they resume on the next start)");
                        shared.stop_now.store(true, Ordering::Relaxed);
                        grace_deadline = None;
                    }
                    _ = tick.tick(), if watchdog.is_some() => {
                        let quiet = shared.heartbeat.lock().map(|h| h.elapsed()).unwrap_or_default();
                        // A step that takes longer than the whole watchdog period means a hung
                        // GPU call: stop pinging and let systemd restart us.
                        if quiet < watchdog.unwrap_or_default() * 2 {
                            notify::watchdog();
                        } else {
                            tracing::error!(quiet_seconds = quiet.as_secs(), "no progress for a whole watchdog period; not pinging the watchdog");
                        }
                    }
                    Some((device, result)) = done_rx.recv() => {
                        workers_left -= 1;
                        if let Err(e) = result {
                            tracing::error!(device, error = %crate::logging::error_chain(&e), "worker stopped with an error");
                            shared.stop_taking.store(true, Ordering::Relaxed);
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    });
    // Jobs recovered at startup that no worker took (a worker could not load its models, or a
    // signal came first) did not run: their attempt is taken back instead of counting as a
    // crash, or a broken model file would send every running job to failed/ after
    // `max_crashes` restarts.
    let left: Vec<Claimed> = shared
        .resumable
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    for claimed in left {
        if let Err(e) = spool.release(claimed) {
            tracing::warn!(error = %e, "cannot release a job recovered at startup");
        }
    }
    result?;
    notify::stopping("stopped");
    tracing::info!("sdspool stopped");
    Ok(())
}

fn on_signal(
    shared: &Shared,
    name: &str,
    grace: Duration,
    deadline: &mut Option<tokio::time::Instant>,
) {
    if shared.stop_taking.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            signal = name,
            "second signal: stopping running jobs now (they resume on the next start)"
        );
        shared.stop_now.store(true, Ordering::Relaxed);
        return;
    }
    tracing::info!(
        signal = name,
        grace_seconds = grace.as_secs(),
        "stopping: no new jobs; running jobs get the grace period to finish"
    );
    notify::stopping(&format!("stopping ({name}): finishing the current jobs"));
    *deadline = Some(tokio::time::Instant::now() + grace);
}

fn worker_thread(
    config: &Config,
    runtime: &Runtime,
    spool: &Spool,
    shared: &Shared,
    device: i32,
    options: DaemonOptions,
    loaded: &mpsc::Sender<Result<i32, String>>,
) -> anyhow::Result<()> {
    let mut worker = Worker::load(runtime, config, device, None)
        .with_context(|| format!("loading the models on device {device}"))?;
    let _ = loaded.send(Ok(device));
    let control = Control::of(spool.layout());
    let mut paused_since: Option<Instant> = None;
    let mut storage_wait = STORAGE_RETRY_FIRST;
    loop {
        if shared.stop_taking.load(Ordering::Relaxed) {
            return Ok(());
        }
        shared.beat();
        // Paused: nothing starts, new or resumed; the running jobs (of other workers) finish.
        if control.is_paused() {
            if paused_since.is_none() {
                let by = control.paused().map(|r| r.by).unwrap_or_default();
                tracing::info!(device, by = %by, "the spool is paused; no job starts until `sdspool resume`");
                notify::status("paused: no job starts until `sdspool resume`");
                paused_since = Some(Instant::now());
            }
            if options.until_idle {
                tracing::info!(device, "the spool is paused; exiting (--until-idle)");
                shared.stop_taking.store(true, Ordering::Relaxed);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        if let Some(since) = paused_since.take() {
            tracing::info!(
                device,
                paused_seconds = since.elapsed().as_secs(),
                "the spool is resumed"
            );
            notify::status("resumed");
        }
        let next = shared
            .resumable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let claimed = match next {
            Some(c) => c,
            None => match spool.next_job(Duration::from_millis(500))? {
                Some(c) => c,
                None => {
                    if options.until_idle && spool_idle(spool, shared) {
                        tracing::info!(device, "spool is empty; exiting (--until-idle)");
                        shared.stop_taking.store(true, Ordering::Relaxed);
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        match process(config, spool, shared, &mut worker, claimed) {
            Ok(()) => storage_wait = STORAGE_RETRY_FIRST,
            Err(e) => match e.downcast::<WaitForStorage>() {
                Ok(waiting) => {
                    if !wait_for_storage(spool, shared, device, waiting, &mut storage_wait) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            },
        }
    }
}

/// First and longest wait before a job that could not write its output runs again.
const STORAGE_RETRY_FIRST: Duration = Duration::from_secs(2);
const STORAGE_RETRY_MAX: Duration = Duration::from_secs(300);

/// A job that stopped because its output (or its filing in done/ or failed/) could not be
/// written: the disk is full, the quota used up, the file system read-only, or a folder not
/// writable. The job is not at fault, so it is not failed: it stays claimed in running/ and the
/// worker runs it again after a wait (doubling up to [`STORAGE_RETRY_MAX`]); it continues from
/// its manifest.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
struct WaitForStorage {
    claimed: Claimed,
    reason: String,
}

/// A job could not be filed in done/ or failed/: wait if the spool's disk is full or read-only,
/// else the error stops the worker as before.
fn filing_error(e: crate::spool::FinishError) -> anyhow::Error {
    use std::io::ErrorKind as K;
    if matches!(
        e.error.source.kind(),
        K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::PermissionDenied
    ) {
        let reason = e.error.to_string();
        return WaitForStorage {
            claimed: *e.claimed,
            reason,
        }
        .into();
    }
    e.into()
}

/// Waits before running `waiting` again; `false` when the daemon stops meanwhile (the job is
/// released: it stays in running/ for the next start, no crash counted).
fn wait_for_storage(
    spool: &Spool,
    shared: &Shared,
    device: i32,
    waiting: WaitForStorage,
    wait: &mut Duration,
) -> bool {
    let WaitForStorage { claimed, reason } = waiting;
    tracing::warn!(
        device,
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
    if let Err(e) = spool.write_waiting(
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
        if shared.stop_taking.load(Ordering::Relaxed) {
            if let Err(e) = spool.release(claimed) {
                tracing::warn!(error = %e, "cannot release the waiting job");
            }
            return false;
        }
        shared.beat();
        std::thread::sleep(Duration::from_millis(100));
    }
    *wait = (*wait * 2).min(STORAGE_RETRY_MAX);
    shared
        .resumable
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_front(claimed);
    true
}

/// Whether incoming/ and running/ hold nothing left to do.
fn spool_idle(spool: &Spool, shared: &Shared) -> bool {
    let resumable_empty = shared
        .resumable
        .lock()
        .map(|q| q.is_empty())
        .unwrap_or(true);
    resumable_empty
        && spool
            .overview()
            .map(|o| o.counts.incoming == 0 && o.counts.running == 0)
            .unwrap_or(false)
}

/// `done/x.result.yaml`.
#[derive(Debug, Serialize)]
struct ResultSummary<'a> {
    job: &'a str,
    model: &'a str,
    execution_provider: &'a str,
    output: String,
    manifest: String,
    images: usize,
    kept: usize,
    rendered_by_this_run: usize,
    runs: u32,
    seconds: f64,
    #[serde(with = "crate::spool::fsops::rfc3339")]
    finished_at: SystemTime,
}

fn process(
    config: &Config,
    spool: &Spool,
    shared: &Shared,
    worker: &mut Worker,
    claimed: Claimed,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("job", job = %claimed.stem);
    let _enter = span.enter();
    let control = Control::of(spool.layout());
    let stem = claimed.stem.clone();
    // Cancelled while it waited (resumed after a restart, or claimed as the request came).
    if let Some(request) = control.cancel_requested(&stem, &claimed.path_in_running) {
        let message = format!(
            "cancelled by {} with `sdspool cancel` at {} before it started",
            request.by,
            crate::spool::fsops::rfc3339::format(request.requested_at)
        );
        let finished = spool.finish_failed(claimed, &Failure::new("cancelled", message))?;
        control.clear_cancel(&stem);
        tracing::info!(path = %finished.job.display(), "cancelled");
        return Ok(());
    }
    let job = match crate::job::load_spooled(&spool.begin_work(&claimed), config) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "job file is not valid; moving it to failed/");
            let finished = spool
                .finish_failed(claimed, &Failure::from(&e))
                .map_err(filing_error)?;
            control.clear_cancel(&stem);
            tracing::info!(path = %finished.job.display(), "failed");
            return Ok(());
        }
    };
    let provider = worker.provider(&job.model).unwrap_or_default();
    tracing::info!(
        id = %job.id, model = %job.model, images = job.image_count(), attempt = claimed.attempts,
        resumed = claimed.resumed, provider = %provider,
        "starting job"
    );
    let steps_estimate = job.steps;
    let mut status = JobStatus::starting(
        &job.id,
        &job.model,
        job.prompts.len(),
        steps_estimate,
        job.image_count(),
    );
    let _ = spool.write_status(&claimed, &status);
    notify::status(&format!("job {}: starting", job.id));

    // What the job will cost, from the speed measured on this spool before.
    let timings_path = Timings::path(&spool.layout().root);
    let timings = Timings::read(&timings_path);
    let work = eta::StepCounter::new(config).job_work(&job);
    let work_of_prompt = |prompt: usize| &work[prompt.min(work.len().saturating_sub(1))];
    let mut measured = Measurements::default();
    // UNet calls seen per (width, height, UNet batch), the first of each batch included.
    let mut calls: std::collections::BTreeMap<(u32, u32, u32), u64> = Default::default();
    // The previous step: (prompt, images done before its batch, step) and when it ended.
    let mut previous: Option<((usize, usize, usize), Instant)> = None;
    let mut cancelled: Option<CancelRequest> = None;
    let mut last_progress: Option<Progress> = None;
    let job_stop = AtomicBool::new(false);

    let started = Instant::now();
    let mut last_write = Instant::now();
    let result = worker.run(
        &job,
        &RunOptions::default(),
        &job_stop,
        &mut |p: &Progress| {
            shared.beat();
            let now = Instant::now();
            let w = work_of_prompt(p.prompt);
            let unet_batch = (p.batch * if w.guided { 2 } else { 1 }) as u32;
            *calls.entry((w.width, w.height, unet_batch)).or_default() += 1;
            if let Some(((prompt, done, step), at)) = previous
                && prompt == p.prompt
                && done == p.images_done
                && step + 1 == p.step
            {
                let seconds = now.duration_since(at).as_secs_f64();
                measured.add_step(&job.model, w.width, w.height, unet_batch, seconds);
            }
            previous = Some(((p.prompt, p.images_done, p.step), now));
            last_progress = Some(*p);
            if cancelled.is_none()
                && let Some(request) = control.cancel_requested(&stem, &claimed.path_in_running)
            {
                tracing::info!(by = %request.by, "cancel requested; stopping the job at this step");
                cancelled = Some(request);
            }
            if cancelled.is_some() || shared.stop_now.load(Ordering::Relaxed) || claimed.is_lost() {
                job_stop.store(true, Ordering::Relaxed);
            }
            if last_write.elapsed() < Duration::from_millis(500) && p.step != p.steps {
                return;
            }
            last_write = Instant::now();
            status.prompt_index = p.prompt;
            status.step = p.step as u32;
            status.step_total = p.steps as u32;
            status.images_done = p.images_done;
            status.updated_at = SystemTime::now();
            let fraction_of_batch = p.step as f64 / p.steps.max(1) as f64;
            status.eta_seconds = eta::remaining_seconds(
                &timings.with_live(&measured),
                &job.model,
                &work,
                job.max_batch as usize,
                p.images_done,
                (p.batch, fraction_of_batch),
            )
            .map(|s| s.round() as u64)
            .or_else(|| {
                // Nothing measured yet: extrapolate from the time spent so far.
                let done = p.images_done as f64 + p.batch as f64 * fraction_of_batch;
                let fraction = (done / p.images_total.max(1) as f64).clamp(1e-6, 1.0);
                Some((started.elapsed().as_secs_f64() * (1.0 - fraction) / fraction) as u64)
            });
            if let Err(e) = spool.write_status(&claimed, &status) {
                tracing::warn!(error = %e, "could not write the job status");
            }
            notify::status(&format!(
                "job {}: prompt {}/{}, step {}/{}, {}/{} images",
                job.id,
                p.prompt + 1,
                p.prompts,
                p.step,
                p.steps,
                p.images_done,
                p.images_total
            ));
            tracing::debug!(
                prompt = p.prompt,
                step = p.step,
                of = p.steps,
                images_done = p.images_done,
                "progress"
            );
        },
    );

    // Fold this job's speed into the spool's timings (also for a job stopped part-way).
    let rendered = result.as_ref().map(|o| o.rendered).unwrap_or(0);
    if rendered > 0 {
        let unet_seconds: f64 = calls
            .iter()
            .filter_map(|((w, h, b), n)| {
                measured
                    .mean_step(&job.model, *w, *h, *b)
                    .map(|r| r * *n as f64)
            })
            .sum();
        let per_image = (started.elapsed().as_secs_f64() - unet_seconds) / rendered as f64;
        let mut sizes: Vec<(u32, u32)> = work.iter().map(|w| (w.width, w.height)).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for (w, h) in sizes {
            measured.add_images(&job.model, w, h, per_image, 1);
        }
    }
    if let Err(e) = Timings::record(
        &timings_path,
        &measured,
        &crate::spool::hostname(),
        &provider,
    ) {
        tracing::warn!(file = %timings_path.display(), error = %e, "cannot record the job's timings");
    }

    match result {
        Ok(outcome) => {
            let m = &outcome.manifest;
            let summary = ResultSummary {
                job: &job.id,
                model: &m.model,
                execution_provider: &m.execution_provider,
                output: outcome.dir.display().to_string(),
                manifest: outcome
                    .dir
                    .join(crate::jobrun::manifest::FILE)
                    .display()
                    .to_string(),
                images: m.candidates().count(),
                kept: m.candidates().filter(|c| c.kept).count(),
                rendered_by_this_run: outcome.rendered,
                runs: m.runs,
                seconds: started.elapsed().as_secs_f64(),
                finished_at: SystemTime::now(),
            };
            let yaml = serde_saphyr::to_string(&summary).unwrap_or_default();
            let finished = spool.finish_done(claimed, &yaml).map_err(filing_error)?;
            control.clear_cancel(&stem);
            tracing::info!(output = %outcome.dir.display(), images = summary.images, rendered = outcome.rendered, seconds = summary.seconds, path = %finished.job.display(), "job done");
            notify::status(&format!("job {} done", job.id));
        }
        Err(JobRunError::Stopped) if cancelled.is_some() => {
            let request = cancelled.unwrap_or_else(|| unreachable!());
            let at = last_progress
                .map(|p| {
                    format!(
                        " at prompt {}/{}, step {}/{}",
                        p.prompt + 1,
                        p.prompts,
                        p.step,
                        p.steps
                    )
                })
                .unwrap_or_default();
            let done = last_progress.map_or(0, |p| p.images_done);
            let kept = match worker.last_output_dir() {
                Some(dir) => format!(
                    "; {done} of {} images were finished and are kept in {} with its manifest.json",
                    job.image_count(),
                    dir.display()
                ),
                None => String::new(),
            };
            let message = format!(
                "cancelled by {} with `sdspool cancel` at {}; it stopped{at}{kept}",
                request.by,
                crate::spool::fsops::rfc3339::format(request.requested_at)
            );
            let finished = spool.finish_failed(claimed, &Failure::new("cancelled", message))?;
            control.clear_cancel(&stem);
            tracing::info!(path = %finished.job.display(), "cancelled");
            notify::status(&format!("job {} cancelled", job.id));
        }
        Err(JobRunError::Stopped) => {
            tracing::info!(
                "job stopped part-way; it stays in running/ and resumes from its manifest on the next start"
            );
            spool.release(claimed)?;
        }
        Err(e) if e.is_storage() => {
            return Err(WaitForStorage {
                claimed,
                reason: e.to_string(),
            }
            .into());
        }
        Err(e) => {
            tracing::error!(error = %e, step = %e.step(), "job failed; moving it to failed/");
            let finished = spool
                .finish_failed(claimed, &Failure::new(e.step(), e.to_string()))
                .map_err(filing_error)?;
            control.clear_cancel(&stem);
            tracing::info!(path = %finished.job.display(), "failed");
        }
    }
    Ok(())
}
