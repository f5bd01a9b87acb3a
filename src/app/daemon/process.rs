//! One claimed job, step by step: a cancel that came before it started, reading and checking
//! the job file, the device that serves its model, loading the models it needs that are not
//! resident yet, the run, and filing the outcome in done/ or failed/ (or keeping it claimed:
//! stopped by a shutdown, or waiting for storage).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::WorkerCtx;
use super::dispatch::Waiting;
use super::heartbeat::WorkerState;
use super::notify;
use super::progress::{ProgressSink, stall};
use super::storage::{WaitForStorage, filing_error};
use crate::app::config::Config;
use crate::jobs::job::Job;
use crate::jobs::run::{JobRunError, LoadError, Outcome, Progress, RunOptions, Worker};
use crate::spool::control::CancelRequest;
use crate::spool::fsops::rfc3339;
use crate::spool::{Claimed, Failure};

/// What became of a job.
#[derive(Debug)]
pub enum Processed {
    /// Filed, released for the next start, or handed to another worker.
    Settled,
    /// Its files cannot be written now: it runs again after a wait.
    WaitsForStorage(Box<WaitForStorage>),
}

/// `done/x.result.yaml`.
#[derive(Debug, Serialize)]
struct ResultSummary<'a> {
    job: &'a str,
    model: &'a str,
    execution_provider: &'a str,
    output: String,
    manifest: String,
    /// Candidates with an image.
    images: usize,
    kept: usize,
    /// Candidates that failed (NaN or infinity; the manifest says which and why).
    #[serde(skip_serializing_if = "is_zero")]
    failed: usize,
    rendered_by_this_run: usize,
    runs: u32,
    seconds: f64,
    #[serde(with = "crate::spool::fsops::rfc3339")]
    finished_at: SystemTime,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// How a run ended.
struct Rendered {
    result: Result<Outcome, JobRunError>,
    /// The cancel request that stopped it, if one did.
    cancel: Option<CancelRequest>,
    last: Option<Progress>,
    took: Duration,
}

/// Runs one claimed job through to its filing. `Err`: the spool cannot be written for a reason
/// other than storage (the worker stops).
pub fn process(
    ctx: &WorkerCtx<'_>,
    worker: &mut Worker,
    waiting: Waiting,
) -> anyhow::Result<Processed> {
    let Waiting { claimed, model } = waiting;
    let span = tracing::info_span!("job", job = %claimed.stem);
    let _enter = span.enter();
    let config = ctx.shared.config();
    if let Some(request) = ctx
        .control
        .cancel_requested(&claimed.stem, &claimed.path_in_running)
    {
        let message = format!(
            "cancelled by {} with `sdspool cancel` at {} before it started",
            request.by,
            rfc3339::format(request.requested_at)
        );
        return file_failed(
            ctx,
            claimed,
            &Failure::new("cancelled", message),
            model.as_deref(),
        );
    }
    let job = match crate::jobs::job::load_spooled(&ctx.spool.begin_work(&claimed), config.as_ref())
    {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!(error = %e, "job file is not valid; moving it to failed/");
            return file_failed(ctx, claimed, &Failure::from(&e), model.as_deref());
        }
    };
    if let Some(elsewhere) = route(ctx, &config, &job.model) {
        return match elsewhere {
            Route::HandedOver => {
                ctx.shared.dispatch.hand_over(claimed, job.model);
                Ok(Processed::Settled)
            }
            Route::Unserved(failure) => file_failed(ctx, claimed, &failure, Some(&job.model)),
        };
    }
    match load_models(ctx, worker, &claimed, &job) {
        Loaded::Ready => {}
        Loaded::Failed(failure) => return file_failed(ctx, claimed, &failure, Some(&job.model)),
        Loaded::Refused(e) => {
            ctx.spool.release(claimed)?;
            return Err(e);
        }
    }
    let rendered = render(ctx, &config, worker, &claimed, &job);
    file_outcome(ctx, worker, claimed, &job, rendered)
}

/// What came of loading a job's models.
enum Loaded {
    Ready,
    /// A model cannot be loaded: the job fails.
    Failed(Failure),
    /// `execution.require_gpu` refused a model: the job is given back and the worker stops, as
    /// the daemon refused to start when it loaded every model up front.
    Refused(anyhow::Error),
}

/// Makes the models `job` needs resident on this worker's device (see
/// [`crate::jobs::run::resident`]); a model that cannot be loaded fails the job (step
/// `loading the model`, field `model`, or `rerank` for the rerank model), naming the model and
/// the file.
fn load_models(ctx: &WorkerCtx<'_>, worker: &mut Worker, claimed: &Claimed, job: &Job) -> Loaded {
    if !worker.needs_loading(job) {
        return Loaded::Ready;
    }
    // Loading shows no progress for a while: it is not a hang. Nor is a kill meanwhile evidence
    // against the job (the daemon's models, not the job, are being loaded).
    ctx.pulse.set(WorkerState::Loading, Some(&claimed.stem));
    ctx.spool.hold_work(claimed);
    let prepared = worker.prepare(ctx.runtime, job);
    ctx.spool.begin_work(claimed);
    ctx.pulse.set(WorkerState::Rendering, Some(&claimed.stem));
    let resident: Vec<(&str, String)> = worker
        .loaded_models()
        .into_iter()
        .filter_map(|model| Some((model, worker.provider(model)?)))
        .collect();
    crate::app::web::metrics::telemetry().record_resident(ctx.device, &resident);
    match prepared {
        Ok(_) => Loaded::Ready,
        Err(e) if e.is_gpu_required() => Loaded::Refused(
            anyhow::Error::from(e).context(format!("device {}: loading a model", ctx.device)),
        ),
        Err(e) => {
            // The job's field the failed model comes from.
            let field = match e {
                LoadError::Rerank(_) => "rerank",
                LoadError::Loras { .. } => "prompts",
                _ => "model",
            };
            let message = crate::app::logging::error_chain(&anyhow::Error::from(e));
            tracing::error!(device = ctx.device, model = %job.model, error = %message, "cannot load the job's models; moving it to failed/");
            Loaded::Failed(Failure::new("loading the model", message).with_field(field))
        }
    }
}

/// Why this worker does not run a job itself.
enum Route {
    /// Another worker of this daemon serves the model.
    HandedOver,
    /// No worker does: the job fails at claim.
    Unserved(Failure),
}

/// `None` when this worker serves `model`.
fn route(ctx: &WorkerCtx<'_>, config: &Config, model: &str) -> Option<Route> {
    if config.serves(ctx.device, model) {
        return None;
    }
    let devices = &config.execution.device_ids;
    if let Some(device) = devices.iter().find(|d| config.serves(**d, model)) {
        tracing::info!(
            model,
            device = ctx.device,
            to = device,
            "handing the job to a worker that serves its model"
        );
        return Some(Route::HandedOver);
    }
    let served: Vec<String> = devices
        .iter()
        .map(|d| format!("device {d}: {}", config.models_of(*d).join(", ")))
        .collect();
    let message = format!(
        "model `{model}` is configured but no device of this daemon serves it (execution.devices; {})",
        served.join("; ")
    );
    tracing::warn!(error = %message, "moving the job to failed/");
    Some(Route::Unserved(
        Failure::new("claim", message).with_field("model"),
    ))
}

/// Runs `job` with a progress sink and a stop switch.
fn render(
    ctx: &WorkerCtx<'_>,
    config: &Arc<Config>,
    worker: &mut Worker,
    claimed: &Claimed,
    job: &Job,
) -> Rendered {
    let provider = worker
        .provider(&crate::jobs::run::job_key(job))
        .unwrap_or_default();
    tracing::info!(
        id = %job.id, model = %job.model, images = job.image_count(), attempt = claimed.attempts,
        resumed = claimed.resumed, provider = %provider, device = ctx.device,
        "starting job"
    );
    let running = ctx
        .shared
        .shutdown
        .run_job(&claimed.stem, &claimed.path_in_running);
    let hook = stall::Hook::new(ctx.device, running.flag());
    let mut sink =
        ProgressSink::start(config, ctx.spool, claimed, job, ctx.pulse, ctx.device, hook);
    let stop = running.flag();
    let result = worker.run(job, &RunOptions::default(), stop, &mut |p| {
        // Another daemon took the job over (this one's lease expired): stop, file nothing.
        if claimed.is_lost() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        sink.on_progress(p)
    });
    let last = sink.last;
    let rendered = result.as_ref().map(|o| o.rendered).unwrap_or(0);
    let took = sink.finish(rendered, &crate::spool::hostname(), &provider);
    Rendered {
        result,
        cancel: running.cancel_request(),
        last,
        took,
    }
}

/// Files the job as its run ended.
fn file_outcome(
    ctx: &WorkerCtx<'_>,
    worker: &Worker,
    claimed: Claimed,
    job: &Job,
    rendered: Rendered,
) -> anyhow::Result<Processed> {
    let model = Some(job.model.as_str());
    match rendered.result {
        Ok(outcome) => file_done(ctx, claimed, job, &outcome, rendered.took),
        Err(JobRunError::Stopped) => match rendered.cancel {
            Some(request) => {
                let message = cancelled_message(worker, job, &request, rendered.last);
                let failure = Failure::new("cancelled", message);
                let processed = file_failed(ctx, claimed, &failure, model)?;
                notify::status(&format!("job {} cancelled", job.id));
                Ok(processed)
            }
            None => {
                tracing::info!(
                    "job stopped part-way; it stays in running/ and resumes from its manifest on the next start"
                );
                ctx.spool.release(claimed)?;
                Ok(Processed::Settled)
            }
        },
        Err(e) if e.is_storage() => Ok(Processed::WaitsForStorage(Box::new(WaitForStorage {
            claimed,
            model: Some(job.model.clone()),
            reason: e.to_string(),
        }))),
        Err(e) => {
            tracing::error!(error = %e, step = %e.step(), "job failed; moving it to failed/");
            file_failed(ctx, claimed, &Failure::new(e.step(), e.to_string()), model)
        }
    }
}

/// What the error file of a cancelled job says: who, when, where it stopped, what is kept.
fn cancelled_message(
    worker: &Worker,
    job: &Job,
    request: &CancelRequest,
    last: Option<Progress>,
) -> String {
    let at = last
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
    let kept = worker
        .last_output_dir()
        .map(|dir| kept_after_cancel(dir, job.image_count()))
        .unwrap_or_default();
    format!(
        "cancelled by {} with `sdspool cancel` at {}; it stopped{at}{kept}",
        request.by,
        rfc3339::format(request.requested_at)
    )
}

/// What a cancelled job keeps, from its output folder as it is now: the images its manifest
/// lists that are on disk (the progress counts images rendered in a prompt whose images are not
/// written yet, which a cancel drops).
fn kept_after_cancel(dir: &std::path::Path, total: usize) -> String {
    match crate::jobs::run::manifest::Manifest::read(dir) {
        None => format!(
            "; no image was written (no manifest.json in {})",
            dir.display()
        ),
        Some(m) => match m.images_on_disk(dir).count() {
            0 => format!(
                "; none of its {total} images was written (a prompt's images are written once all its candidates are rendered); its manifest.json is in {}",
                dir.display()
            ),
            n => format!(
                "; {n} of {total} images were finished and are kept in {} with its manifest.json, which lists them",
                dir.display()
            ),
        },
    }
}

/// Files a finished job in done/ with its result summary.
fn file_done(
    ctx: &WorkerCtx<'_>,
    claimed: Claimed,
    job: &Job,
    outcome: &Outcome,
    took: Duration,
) -> anyhow::Result<Processed> {
    let m = &outcome.manifest;
    let summary = ResultSummary {
        job: &job.id,
        model: &m.model,
        execution_provider: &m.execution_provider,
        output: outcome.dir.display().to_string(),
        manifest: outcome
            .dir
            .join(crate::jobs::run::manifest::FILE)
            .display()
            .to_string(),
        images: m.candidates().filter(|c| c.failure.is_none()).count(),
        kept: m.candidates().filter(|c| c.kept).count(),
        failed: m.failed().count(),
        rendered_by_this_run: outcome.rendered,
        runs: m.runs,
        seconds: took.as_secs_f64(),
        finished_at: SystemTime::now(),
    };
    let yaml = serde_saphyr::to_string(&summary).unwrap_or_default();
    let stem = claimed.stem.clone();
    crate::app::web::hooks::job_outputs_written(&ctx.shared.config(), &outcome.dir);
    let finished = match ctx.spool.finish_done(claimed, &yaml) {
        Ok(f) => f,
        Err(e) => {
            return filing_error(e, Some(&job.model))
                .map(|w| Processed::WaitsForStorage(Box::new(w)));
        }
    };
    ctx.control.clear_cancel(&stem);
    let done = crate::app::web::hooks::Done {
        stem: &stem,
        model: &m.model,
        images: summary.images,
        kept: summary.kept,
        rendered: outcome.rendered,
        seconds: summary.seconds,
        output: &outcome.dir,
    };
    crate::app::web::hooks::job_done(ctx.spool, done, &finished.side_file);
    tracing::info!(output = %outcome.dir.display(), images = summary.images, failed = summary.failed, rendered = outcome.rendered, seconds = summary.seconds, path = %finished.job.display(), "job done");
    notify::status(&format!("job {} done", job.id));
    Ok(Processed::Settled)
}

/// Files a job in failed/ with why.
fn file_failed(
    ctx: &WorkerCtx<'_>,
    claimed: Claimed,
    failure: &Failure,
    model: Option<&str>,
) -> anyhow::Result<Processed> {
    let stem = claimed.stem.clone();
    let finished = match ctx.spool.finish_failed(claimed, failure) {
        Ok(f) => f,
        Err(e) => return filing_error(e, model).map(|w| Processed::WaitsForStorage(Box::new(w))),
    };
    ctx.control.clear_cancel(&stem);
    crate::app::web::hooks::job_failed(ctx.spool, &stem, failure, &finished.side_file);
    tracing::info!(path = %finished.job.display(), step = %failure.step, "filed in failed/");
    Ok(Processed::Settled)
}
