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
use crate::jobrun::{JobRunError, Progress, RunOptions, Worker};
use crate::runtime::Runtime;
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
    let resumable = spool.recover()?;
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

    std::thread::scope(|scope| -> anyhow::Result<()> {
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
                    let _ = loaded_tx.send(Err(format!("{e:#}")));
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
                            tracing::error!(device, error = %format!("{e:#}"), "worker stopped with an error");
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
    })?;
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
    loop {
        if shared.stop_taking.load(Ordering::Relaxed) {
            return Ok(());
        }
        shared.beat();
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
        process(config, spool, shared, &mut worker, claimed)?;
    }
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
    let job = match crate::job::load(&claimed.path_in_running, config) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "job file is not valid; moving it to failed/");
            let finished = spool.finish_failed(claimed, &Failure::from(&e))?;
            tracing::info!(path = %finished.job.display(), "failed");
            return Ok(());
        }
    };
    tracing::info!(
        id = %job.id, model = %job.model, images = job.image_count(), attempt = claimed.attempts,
        resumed = claimed.resumed, provider = %worker.provider(&job.model).unwrap_or_default(),
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
    let started = Instant::now();
    let mut last_write = Instant::now();
    let result = worker.run(
        &job,
        &RunOptions::default(),
        &shared.stop_now,
        &mut |p: &Progress| {
            shared.beat();
            if last_write.elapsed() < Duration::from_millis(500) && p.step != p.steps {
                return;
            }
            last_write = Instant::now();
            status.prompt_index = p.prompt;
            status.step = p.step as u32;
            status.step_total = p.steps as u32;
            status.images_done = p.images_done;
            status.updated_at = SystemTime::now();
            let batch = (job.max_batch as usize).min(p.images_total.max(1));
            let done = p.images_done as f64 + batch as f64 * p.step as f64 / p.steps.max(1) as f64;
            let fraction = (done / p.images_total.max(1) as f64).clamp(1e-6, 1.0);
            status.eta_seconds =
                Some((started.elapsed().as_secs_f64() * (1.0 - fraction) / fraction) as u64);
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
            let finished = spool.finish_done(claimed, &yaml)?;
            tracing::info!(output = %outcome.dir.display(), images = summary.images, rendered = outcome.rendered, seconds = summary.seconds, path = %finished.job.display(), "job done");
            notify::status(&format!("job {} done", job.id));
        }
        Err(JobRunError::Stopped) => {
            tracing::info!(
                "job stopped part-way; it stays in running/ and resumes from its manifest on the next start"
            );
            spool.release(claimed)?;
        }
        Err(e) => {
            tracing::error!(error = %e, step = %e.step(), "job failed; moving it to failed/");
            let finished = spool.finish_failed(claimed, &Failure::new(e.step(), e.to_string()))?;
            tracing::info!(path = %finished.job.display(), "failed");
        }
    }
    Ok(())
}
