//! The plan step: what of a job is still to render, given its manifest and the files in its
//! output folder, and the pipeline request for each prompt that has candidates to render.

use super::RunOptions;
use super::manifest::Manifest;
use crate::engine::pipeline::RenderRequest;
use crate::jobs::job::Job;
use crate::jobs::output::folder::{Entry, Folder};

/// The pipeline request for prompt `index` of `job`, every candidate.
pub fn request(job: &Job, index: usize) -> RenderRequest {
    let p = &job.prompts[index];
    let mut req = RenderRequest::new(p.text.clone(), p.seeds.clone());
    req.negative_prompt = p.negative.clone();
    req.steps = p.steps as usize;
    req.guidance_scale = p.guidance;
    req.scheduler = p.scheduler;
    req.width = p.width;
    req.height = p.height;
    req.rng = job.rng;
    req.prompt_syntax = job.prompt_syntax;
    req.clip_skip = job.clip_skip as usize;
    req.text_cleaning = job.text_cleaning;
    req.seed_options = job.seed_options.for_candidates(0..p.seeds.len());
    req.max_batch = job.max_batch as usize;
    req.sdxl = job.sdxl;
    req
}

/// One prompt's part of a run.
#[derive(Debug)]
pub struct PromptWork {
    pub prompt: usize,
    /// The candidates still to render: (candidate index, seed).
    pub todo: Vec<(usize, u64)>,
    /// Renders `todo`; `None` when it is empty (the prompt only needs finishing).
    pub request: Option<RenderRequest>,
}

/// What a run of a job does, prompt by prompt.
#[derive(Debug)]
pub struct Plan {
    pub prompts: Vec<PromptWork>,
    /// Images already rendered (by earlier runs) and still to render, in all.
    pub images_done: usize,
    pub images_total: usize,
}

impl Plan {
    /// The plan for `job` whose output folder `dir` holds `manifest`.
    pub fn new(job: &Job, manifest: &Manifest, dir: &Folder, options: &RunOptions) -> Plan {
        let prompts: Vec<PromptWork> = (0..job.prompts.len())
            .map(|pi| {
                let todo = remaining(job, manifest, dir, pi);
                let request = (!todo.is_empty()).then(|| {
                    let mut req = request(job, pi);
                    req.seeds = todo.iter().map(|(_, s)| *s).collect();
                    req.seed_options = job
                        .seed_options
                        .for_candidates(todo.iter().map(|(i, _)| *i));
                    if pi == 0 {
                        req.initial_latents = options.initial_latents.clone();
                        req.step_noise = options.step_noise.clone();
                    }
                    req
                });
                PromptWork {
                    prompt: pi,
                    todo,
                    request,
                }
            })
            .collect();
        let images_total = job.image_count();
        let images_done = images_total - prompts.iter().map(|w| w.todo.len()).sum::<usize>();
        Plan {
            prompts,
            images_done,
            images_total,
        }
    }
}

/// The candidates of prompt `pi` still to render: none of a finished prompt; else those whose
/// image is not in the folder as a regular file under the name the manifest records (a link
/// there does not count).
fn remaining(job: &Job, manifest: &Manifest, dir: &Folder, pi: usize) -> Vec<(usize, u64)> {
    let entry = &manifest.prompts[pi];
    if entry.finished {
        return Vec::new();
    }
    // Once the prompt's scores and ranks are checkpointed (its contact sheet is recorded), a
    // candidate outside keep_top is done: a kill while keep_top moved or deleted it may have
    // left its file gone before the manifest said so, and finish_prompt tolerates that. A
    // failed candidate is done: rendering it again would fail the same way.
    let scored = entry.contact_sheet.is_some();
    let done = |ci: usize| {
        entry.candidates.iter().any(|c| {
            c.candidate == ci
                && (c.failure.is_some()
                    || (scored && !c.kept)
                    || c.file
                        .as_ref()
                        .is_some_and(|f| matches!(dir.entry_at(f), Ok(Entry::File { .. }))))
        })
    };
    job.prompts[pi]
        .seeds
        .iter()
        .enumerate()
        .filter(|(ci, _)| !done(*ci))
        .map(|(ci, s)| (ci, *s))
        .collect()
}
