//! The manifest as a checkpoint: a run continues the one in the job's folder when it is this
//! job's, adds images written after its last checkpoint, and before a job is declared complete
//! every file the manifest names must still be in the folder; what went missing (removed by hand
//! while the job ran) is rendered again.

use super::fingerprint::Fingerprint;
use super::manifest::{CandidateEntry, Manifest, PhaseTimings, PromptEntry, RefinerEntry};
use crate::jobs::job::Job;
use crate::jobs::output::folder::{Entry, Folder};

/// The manifest a run starts from: the folder's when it is this job's (`true`), else a new one.
pub fn checkpoint(
    job: &Job,
    dir: &Folder,
    fingerprint: &Fingerprint,
    provider: &str,
    rerank_model: Option<String>,
) -> (Manifest, bool) {
    match Manifest::read_in(dir) {
        Some(mut m) if fingerprint.matches(&m) => {
            // Written before manifests recorded the refiner (the fingerprint covers it).
            if m.refiner.is_none() {
                m.refiner = refiner_entry(job);
            }
            if m.fingerprint != fingerprint.value() {
                tracing::info!(job = %job.id, "continuing a manifest of an earlier release; its fingerprint is recorded in the current version");
                fingerprint.stamp(&mut m);
            }
            (m, true)
        }
        _ => (
            new_manifest(job, fingerprint, provider, rerank_model),
            false,
        ),
    }
}

/// The job's refiner as the manifest records it, before it has run.
fn refiner_entry(job: &Job) -> Option<RefinerEntry> {
    job.refiner.as_ref().map(|r| RefinerEntry {
        model: r.model.clone(),
        start: r.start,
        steps: None,
    })
}

fn new_manifest(
    job: &Job,
    fingerprint: &Fingerprint,
    provider: &str,
    rerank_model: Option<String>,
) -> Manifest {
    let mut m = Manifest {
        job: job.id.clone(),
        fingerprint: String::new(),
        fingerprint_version: 0,
        model: job.model.clone(),
        model_source: None,
        scheduler: job.scheduler,
        execution_provider: provider.to_string(),
        steps: job.steps,
        guidance: job.guidance,
        width: job.width,
        height: job.height,
        rng: job.rng,
        refiner: refiner_entry(job),
        rerank_model,
        keep_top: job.keep_top,
        complete: false,
        runs: 0,
        timings: PhaseTimings::default(),
        grids: Vec::new(),
        prompts: job
            .prompts
            .iter()
            .enumerate()
            .map(|(i, p)| PromptEntry {
                index: i,
                prompt: p.text.clone(),
                negative: p.negative.clone(),
                steps: p.steps,
                guidance: p.guidance,
                scheduler: p.scheduler,
                width: p.width,
                height: p.height,
                sweep: p.sweep.clone(),
                refiner_steps: None,
                truncated: None,
                candidates: Vec::new(),
                finished: false,
                contact_sheet: None,
            })
            .collect(),
    };
    fingerprint.stamp(&mut m);
    m
}

/// Adds to the manifest the images of unfinished prompts that are in the folder but not in it:
/// a run killed after writing a batch's images and before its manifest checkpoint. Images are
/// written by rename, so a regular file under its final name is whole, and the name holds the
/// prompt, the candidate and the seed; the manifest's fingerprint says the settings are this
/// job's. Without this they would be rendered again. Returns how many were added.
pub fn adopt_unrecorded_images(job: &Job, dir: &Folder, manifest: &mut Manifest) -> usize {
    let mut adopted = 0;
    for (pi, p) in job.prompts.iter().enumerate() {
        let Some(entry) = manifest.prompts.get_mut(pi) else {
            continue;
        };
        if entry.finished {
            continue;
        }
        for (ci, seed) in p.seeds.iter().enumerate() {
            if entry.candidates.iter().any(|c| c.candidate == ci) {
                continue;
            }
            let name = crate::jobs::output::image_file_name(pi, ci, *seed);
            let whole = matches!(dir.entry(&name), Ok(Entry::File { len }) if len > 0);
            if whole {
                entry.candidates.push(CandidateEntry {
                    candidate: ci,
                    seed: *seed,
                    file: Some(name),
                    cosine: None,
                    clip_score: None,
                    rank: None,
                    kept: true,
                    failure: None,
                });
                adopted += 1;
            }
        }
        entry.candidates.sort_by_key(|c| c.candidate);
    }
    adopted
}

/// The files the manifest names (images, contact sheets, grids) that are not in `dir` as
/// regular files.
pub fn missing_files(dir: &Folder, manifest: &Manifest) -> Vec<String> {
    let prompts = manifest.prompts.iter().flat_map(|p| {
        let images = p.candidates.iter().filter_map(|c| c.file.as_ref());
        images.chain(p.contact_sheet.as_ref())
    });
    let grids = manifest.grids.iter().map(|g| &g.file);
    prompts
        .chain(grids)
        .filter(|f| !matches!(dir.entry_at(f), Ok(Entry::File { .. })))
        .cloned()
        .collect()
}

/// Makes the manifest say that the prompts with a file in `missing` are to be rendered and
/// finished again: their candidates without a file are dropped, their scores, ranks and sheet
/// forgotten (they come out the same: rendering is deterministic), and the grids they are in
/// drawn again.
pub fn forget_missing(manifest: &mut Manifest, missing: &[String]) {
    let is_missing = |f: &Option<String>| f.as_ref().is_some_and(|f| missing.contains(f));
    let mut reopened = Vec::new();
    for p in &mut manifest.prompts {
        let lost = is_missing(&p.contact_sheet) || p.candidates.iter().any(|c| is_missing(&c.file));
        if !lost {
            continue;
        }
        // Candidates deleted by keep_top are rendered again too: scoring needs every image.
        // Failed ones stay failed (rendering is deterministic).
        p.candidates
            .retain(|c| (c.file.is_some() || c.failure.is_some()) && !is_missing(&c.file));
        for c in &mut p.candidates {
            c.cosine = None;
            c.clip_score = None;
            c.rank = None;
            c.kept = c.failure.is_none();
        }
        p.contact_sheet = None;
        p.finished = false;
        reopened.push(p.index);
    }
    manifest.grids.retain(|g| {
        !missing.contains(&g.file) && !g.cells.iter().any(|c| reopened.contains(&c.prompt))
    });
}

/// Makes the manifest say that nothing is rendered yet (its folder is gone).
pub fn forget_all(manifest: &mut Manifest) {
    for p in &mut manifest.prompts {
        p.candidates.clear();
        p.contact_sheet = None;
        p.finished = false;
        p.truncated = None;
    }
    manifest.grids.clear();
}
