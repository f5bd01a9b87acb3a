//! One pass over a job's [`Plan`]: the render thread runs each prompt through the pipeline and
//! hands its images to the finishing thread, which writes them and finishes the prompt
//! ([`Finisher`]) while the next prompt denoises.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::time::{Duration, Instant};

use super::finish::{Batch, Finisher};
use super::manifest::PhaseTimings;
use super::plan::Plan;
use super::{JobRunError, PhaseDurations, Progress};
use crate::engine::pipeline::{Handoff, Pipeline, PipelineError, Progress as Step, Rendered};
use crate::jobs::job::Job;

/// What the passes of one run add up to.
#[derive(Debug, Default)]
pub struct Totals {
    /// Images rendered.
    pub rendered: usize,
    /// Render-thread milliseconds for the manifest.
    pub timings: PhaseTimings,
    pub phases: PhaseDurations,
    /// Time the finishing thread was busy.
    pub finish_busy: Duration,
}

impl Totals {
    fn add_render(&mut self, out: &Rendered) {
        let t = &out.timings;
        self.timings.text_ms += t.text.as_millis() as u64;
        self.timings.denoise_ms += t.denoise.as_millis() as u64;
        self.timings.decode_ms += t.decode.as_millis() as u64;
        self.phases.tokenize += t.tokenize;
        self.phases.text_encode += t.text.saturating_sub(t.tokenize);
        self.phases.denoise += t.denoise;
        self.phases.decode += t.decode;
    }
}

/// The loaded pipelines a job renders with: its model, and the SDXL refiner that takes over
/// from it when the job names one.
pub struct Pipelines<'p> {
    pub base: &'p mut Pipeline,
    pub refiner: Option<(&'p mut Pipeline, Handoff)>,
}

impl Pipelines<'_> {
    /// Renders `req`: with the base model alone, or handing over to the refiner
    /// ([`Pipeline::render_refined`]).
    fn render(
        &mut self,
        req: &crate::engine::pipeline::RenderRequest,
        on_progress: &mut dyn FnMut(Step) -> ControlFlow<()>,
    ) -> Result<Rendered, PipelineError> {
        match &mut self.refiner {
            Some((refiner, handoff)) => {
                self.base.render_refined(refiner, req, handoff, on_progress)
            }
            None => self.base.render(req, on_progress),
        }
    }
}

/// Work for the finishing thread.
enum Work {
    Batch(Batch),
    Finish(usize),
}

/// How a pass ended: the finisher back (unless its thread panicked), and the first error of
/// the finishing thread, else of the render thread.
pub struct Passed<'a> {
    pub finisher: Option<Finisher<'a>>,
    pub result: Result<(), JobRunError>,
}

/// Runs `plan` with `pipeline`, `finisher` writing and finishing.
pub fn run<'a>(
    job: &Job,
    pipeline: &mut Pipelines<'_>,
    mut finisher: Finisher<'a>,
    plan: &Plan,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
    totals: &mut Totals,
) -> Passed<'a> {
    std::thread::scope(|scope| {
        // At most one prompt waits for the finisher while the next one denoises: room for a
        // prompt's two messages (its batch, then its finish), so that handing them over never
        // waits for the finishing thread to wake up and take the first.
        let (tx, rx) = mpsc::sync_channel::<Work>(2);
        let finishing = scope.spawn(move || {
            let mut busy = Duration::ZERO;
            let mut result = Ok(());
            for work in rx {
                let started = Instant::now();
                result = match work {
                    Work::Batch(b) => finisher.write_batch(b),
                    Work::Finish(i) => finisher.finish_prompt(i),
                };
                busy += started.elapsed();
                if result.is_err() {
                    break; // dropping rx ends the render thread's loop at its next hand-over
                }
            }
            (finisher, busy, result)
        });
        let rendered = render(job, pipeline, plan, stop, progress, &tx, totals);
        drop(tx);
        let waiting = Instant::now();
        let finished = finishing.join();
        totals.phases.finish_wait += waiting.elapsed();
        match finished {
            Ok((finisher, busy, finish_result)) => {
                totals.finish_busy += busy;
                Passed {
                    finisher: Some(finisher),
                    result: finish_result.and(rendered),
                }
            }
            Err(_) => Passed {
                finisher: None,
                result: Err(JobRunError::Output {
                    step: "finishing".into(),
                    message: "the finishing thread panicked".into(),
                }),
            },
        }
    })
}

/// The render thread: each prompt with candidates to render through the pipeline, its images
/// and then its finish handed to the finishing thread. Returns early, without an error of its
/// own, when the finishing thread has stopped (its error is the pass's).
fn render(
    job: &Job,
    pipeline: &mut Pipelines<'_>,
    plan: &Plan,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
    tx: &SyncSender<Work>,
    totals: &mut Totals,
) -> Result<(), JobRunError> {
    let mut images_done = plan.images_done;
    let hand_over = |work: Work, totals: &mut Totals| {
        let handoff = Instant::now();
        let sent = tx.send(work);
        totals.phases.handoff_wait += handoff.elapsed();
        sent.is_ok()
    };
    for work in &plan.prompts {
        let pi = work.prompt;
        if let Some(req) = &work.request {
            let out = pipeline.render(req, &mut |p| {
                progress(&Progress {
                    prompt: pi,
                    prompts: job.prompts.len(),
                    step: p.step.index + 1,
                    steps: p.step.total,
                    batch: p.batch,
                    images_done: images_done + p.first_candidate,
                    images_total: plan.images_total,
                });
                if stop.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            let out = match out {
                Ok(o) => o,
                Err(PipelineError::Cancelled { .. }) => return Err(JobRunError::Stopped),
                Err(source) => return Err(JobRunError::Pipeline { prompt: pi, source }),
            };
            totals.add_render(&out);
            totals.rendered += out.images.len();
            images_done += work.todo.len();
            let (scheduler, refiner_steps) = (out.scheduler, out.refiner_steps);
            let truncated = out.truncated_prompt.clone();
            let batch = Batch {
                prompt: pi,
                scheduler,
                refiner_steps,
                truncated,
                images: work
                    .todo
                    .iter()
                    .zip(out.outcomes())
                    .map(|((c, s), img)| (*c, *s, img))
                    .collect(),
            };
            if !hand_over(Work::Batch(batch), totals) {
                return Ok(());
            }
        }
        if !hand_over(Work::Finish(pi), totals) {
            return Ok(());
        }
    }
    Ok(())
}
