//! The second half of a prompt's work, run on its own thread while the next prompt denoises:
//! PNG encoding and atomic writes, the manifest checkpoint, CLIP scoring, ranking, `keep_top`
//! and the contact sheet.

use std::time::{Duration, Instant};

use image::RgbImage;

use super::JobRunError;
use super::manifest::{CandidateEntry, GridCell, GridEntry, Manifest};
use super::outdir::{self, REJECTED};
use super::source::JobSource;
use crate::engine::pipeline::CandidateFailure;
use crate::engine::rerank::{self, Reranker};
use crate::engine::scheduler::SchedulerKind;
use crate::jobs::job::{Job, Rejected};
use crate::jobs::output::folder::{Entry, Folder};
use crate::jobs::output::{self, contact_sheet, grid, png::Parameters};

/// Rendered candidates of one prompt, to be written.
pub struct Batch {
    pub prompt: usize,
    pub scheduler: SchedulerKind,
    /// Denoising steps the SDXL refiner ran, when the job names one.
    pub refiner_steps: Option<usize>,
    pub truncated: Option<String>,
    /// (candidate index, seed, its image or why it has none)
    pub images: Vec<(usize, u64, Result<RgbImage, CandidateFailure>)>,
}

/// State of the finishing thread for one job.
pub struct Finisher<'a> {
    pub job: &'a Job,
    /// The job's output folder.
    pub dir: Folder,
    /// Its `rejected/`, once opened.
    pub rejected: Option<Folder>,
    pub manifest: Manifest,
    /// Where the job's models came from, written into every PNG.
    pub source: JobSource,
    pub reranker: Option<&'a mut Reranker>,
    /// Where the finishing thread's time went.
    pub clock: FinishClock,
}

/// Wall time of the finishing thread's phases (the rest of its time: manifest checkpoints,
/// reading images back, contact sheets, keep_top, grids).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FinishClock {
    /// CLIP scoring ([`Reranker::score`]).
    pub rerank: Duration,
    /// PNG encoding of the candidates.
    pub png_encode: Duration,
    /// Writing the candidates' PNG files (temporary file, fsync, rename).
    pub png_write: Duration,
    /// When the first candidate's file was in place.
    pub first_image: Option<Instant>,
}

/// A PNG that could not be encoded.
fn encoding(name: &str, e: png::EncodingError) -> JobRunError {
    JobRunError::Output {
        step: format!("encoding {name}"),
        message: e.to_string(),
    }
}

/// A failed write (a full or read-only disk is not the job's fault: see
/// [`JobRunError::writing`]).
fn io_err(step: String, e: std::io::Error) -> JobRunError {
    JobRunError::writing(step, &e)
}

/// A step that found the output not as the manifest says.
fn inconsistent(step: &str, message: String) -> JobRunError {
    JobRunError::Output {
        step: step.to_string(),
        message,
    }
}

impl Finisher<'_> {
    /// Writes a batch's PNGs and records them in the manifest (the checkpoint), and its failed
    /// candidates with why.
    pub fn write_batch(&mut self, batch: Batch) -> Result<(), JobRunError> {
        let started = Instant::now();
        let job = self.job;
        let prompt = &job.prompts[batch.prompt];
        let seeds = &job.seed_options;
        for (candidate, seed, image) in &batch.images {
            let image = match image {
                Ok(image) => image,
                Err(failure) => {
                    tracing::warn!(job = %job.id, prompt = batch.prompt, candidate, seed, reason = %failure, "candidate failed: no image for it; the job's other candidates are rendered");
                    self.record(batch.prompt, *candidate, *seed, Err(*failure));
                    continue;
                }
            };
            let params = Parameters {
                prompt: &prompt.text,
                negative: &prompt.negative,
                steps: prompt.steps,
                scheduler: batch.scheduler,
                guidance: prompt.guidance,
                seed: *seed,
                width: prompt.width,
                height: prompt.height,
                model: &job.model,
                model_hash: self.source.model.short_hash(),
                refiner: job.refiner.as_ref().map(|r| (r.model.as_str(), r.start)),
                refiner_hash: self.source.refiner.short_hash(),
                subseed: seeds
                    .subseed
                    .map(|(s, strength)| (s.wrapping_add(*candidate as u64), strength)),
                seed_resize_from: seeds.resize_from,
                eta_noise_seed_delta: seeds.eta_noise_seed_delta,
                clip_skip: job.clip_skip,
                rng: job.rng,
                provenance: self.source.model.provenance.as_ref(),
            };
            let name = output::image_file_name(batch.prompt, *candidate, *seed);
            let t0 = Instant::now();
            let bytes =
                output::png::encode(image, &params.a1111_text()).map_err(|e| encoding(&name, e))?;
            let t1 = Instant::now();
            self.dir
                .write(&name, &bytes)
                .map_err(|e| io_err(format!("writing {name}"), e))?;
            let t2 = Instant::now();
            self.clock.png_encode += t1 - t0;
            self.clock.png_write += t2 - t1;
            self.clock.first_image.get_or_insert(t2);
            self.record(batch.prompt, *candidate, *seed, Ok(name));
        }
        let refiner_steps = batch.refiner_steps.map(|n| n as u32);
        let entry = &mut self.manifest.prompts[batch.prompt];
        entry.truncated = batch.truncated.clone();
        entry.scheduler = Some(batch.scheduler);
        entry.refiner_steps = refiner_steps;
        if batch.prompt == 0 {
            self.manifest.scheduler = Some(batch.scheduler);
            if let Some(r) = &mut self.manifest.refiner {
                r.steps = refiner_steps;
            }
        }
        self.manifest.timings.write_ms += started.elapsed().as_millis() as u64;
        self.save("writing the manifest")
    }

    /// Records a candidate of prompt `prompt` in the manifest: its file, or why it has none.
    fn record(
        &mut self,
        prompt: usize,
        candidate: usize,
        seed: u64,
        file: Result<String, CandidateFailure>,
    ) {
        let entry = &mut self.manifest.prompts[prompt];
        entry.candidates.retain(|c| c.candidate != candidate);
        entry.candidates.push(CandidateEntry {
            candidate,
            seed,
            kept: file.is_ok(),
            failure: file.as_ref().err().copied(),
            file: file.ok(),
            cosine: None,
            clip_score: None,
            rank: None,
        });
        entry.candidates.sort_by_key(|c| c.candidate);
    }

    pub fn save(&self, step: &str) -> Result<(), JobRunError> {
        self.manifest
            .write_in(&self.dir)
            .map_err(|e| io_err(step.to_string(), e))
    }

    /// Scores, ranks, draws the contact sheet and applies keep_top for a prompt whose
    /// candidates are all written. Idempotent and restartable: the scores and sheet are
    /// checkpointed before any file is moved, and moving tolerates files already moved.
    pub fn finish_prompt(&mut self, index: usize) -> Result<(), JobRunError> {
        if self.manifest.prompts[index].finished {
            return self.sweep_grid(index);
        }
        if self.manifest.prompts[index].contact_sheet.is_none() {
            self.score_and_sheet(index)?;
            self.save("writing the manifest")?;
        }
        self.apply_keep_top(index)?;
        self.manifest.prompts[index].finished = true;
        self.save("writing the manifest")?;
        self.sweep_grid(index)
    }

    /// Once every prompt of the sweep that prompt `index` belongs to is finished, draws the
    /// sweep's grid: one cell per variant, its best-ranked candidate (candidate 0 when not
    /// scored), labelled with the swept values across and down.
    fn sweep_grid(&mut self, index: usize) -> Result<(), JobRunError> {
        let job = self.job;
        let Some(group) = job.prompts[index].sweep.as_ref().map(|s| s.group) else {
            return Ok(());
        };
        if self.manifest.grids.iter().any(|g| g.group == group) {
            return Ok(());
        }
        let members: Vec<usize> = job
            .prompts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.sweep.as_ref().is_some_and(|s| s.group == group))
            .map(|(i, _)| i)
            .collect();
        if !members.iter().all(|&i| self.manifest.prompts[i].finished) {
            return Ok(());
        }
        let started = Instant::now();
        let step = format!("drawing the grid of sweep {group}");
        let cell_of = |i: usize| &job.prompts[i].sweep.as_ref().expect("a member").axes;
        let first = cell_of(members[0]);
        let axes = sweep_axes(job, &members);
        let mut picked = Vec::new();
        let mut images = Vec::new();
        for &i in &members {
            let entry = &self.manifest.prompts[i];
            // Failed candidates have no image; a variant whose candidates all failed leaves
            // its cell empty.
            let mut with_image = entry.candidates.iter().filter(|c| c.failure.is_none());
            let best = entry
                .candidates
                .iter()
                .find(|c| c.rank == Some(1))
                .or_else(|| {
                    entry
                        .candidates
                        .iter()
                        .find(|c| c.candidate == 0 && c.failure.is_none())
                })
                .or_else(|| with_image.next());
            let Some(best) = best else {
                if entry.candidates.is_empty() {
                    return Err(inconsistent(&step, format!("prompt {i} has no image")));
                }
                continue;
            };
            let file = best.file.clone().ok_or_else(|| {
                inconsistent(
                    &step,
                    format!("prompt {i}: candidate {} has no file", best.candidate),
                )
            })?;
            images.push(load(&self.dir, &file)?);
            let coords: Vec<usize> = cell_of(i)
                .iter()
                .enumerate()
                .take(axes.len())
                .map(|(k, v)| {
                    axes[k]
                        .labels
                        .iter()
                        .position(|l| *l == v.label)
                        .unwrap_or(0)
                })
                .collect();
            picked.push((i, best.candidate, file, coords));
        }
        let cells: Vec<grid::Cell<'_>> = picked
            .iter()
            .zip(&images)
            .map(|((_, _, _, coords), image)| grid::Cell {
                coords: coords.clone(),
                image,
            })
            .collect();
        let picture = grid::render(&axes, &cells);
        let (across, down) = grid::split_axes(axes.len());
        let name = format!("sweep{group:03}-grid.png");
        let bytes = output::png::encode(
            &picture,
            &format!(
                "grid of sweep {group}: {}\nacross: {}\ndown: {}",
                job.prompts[members[0]].text,
                across
                    .iter()
                    .map(|&k| first[k].axis.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                down.iter()
                    .map(|&k| first[k].axis.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .map_err(|e| encoding(&name, e))?;
        self.dir
            .write(&name, &bytes)
            .map_err(|e| io_err(format!("writing {name}"), e))?;
        self.manifest.grids.push(GridEntry {
            group,
            file: name,
            prompt: job.prompts[members[0]].text.clone(),
            across: across.iter().map(|&k| first[k].axis.clone()).collect(),
            down: down.iter().map(|&k| first[k].axis.clone()).collect(),
            cells: picked
                .into_iter()
                .map(|(prompt, candidate, file, coords)| GridCell {
                    prompt,
                    candidate,
                    file,
                    column: grid::position(&coords, &across, &axes),
                    row: grid::position(&coords, &down, &axes),
                })
                .collect(),
        });
        self.manifest.timings.write_ms += started.elapsed().as_millis() as u64;
        self.save("writing the manifest")
    }

    /// Scores and ranks the prompt's candidates that have an image (a failed one has none and
    /// is neither ranked nor kept) and draws their contact sheet; a prompt whose candidates all
    /// failed gets none.
    fn score_and_sheet(&mut self, index: usize) -> Result<(), JobRunError> {
        let job = self.job;
        let prompt_text = job.prompts[index].text.clone();
        let rendered: Vec<usize> = (self.manifest.prompts[index].candidates.iter())
            .enumerate()
            .filter(|(_, c)| c.failure.is_none())
            .map(|(i, _)| i)
            .collect();
        if rendered.is_empty() {
            return Ok(());
        }
        let candidates = &self.manifest.prompts[index].candidates;
        let images: Vec<RgbImage> = rendered
            .iter()
            .map(|&i| &candidates[i])
            .map(|c| match &c.file {
                Some(f) => load(&self.dir, f),
                None => Err(JobRunError::Output {
                    step: format!("scoring prompt {index}"),
                    message: format!("candidate {} has no image file", c.candidate),
                }),
            })
            .collect::<Result<_, _>>()?;
        if let Some(reranker) = self.reranker.as_deref_mut() {
            let started = Instant::now();
            let scores =
                reranker
                    .score(&prompt_text, &images)
                    .map_err(|e| JobRunError::Rerank {
                        prompt: index,
                        message: e.to_string(),
                    })?;
            let took = started.elapsed();
            self.clock.rerank += took;
            self.manifest.timings.rerank_ms += took.as_millis() as u64;
            let cosines: Vec<f32> = scores.iter().map(|s| s.cosine).collect();
            let ranks = rerank::rank(&cosines);
            let entry = &mut self.manifest.prompts[index];
            for ((&i, score), r) in rendered.iter().zip(&scores).zip(&ranks) {
                let c = &mut entry.candidates[i];
                c.cosine = Some(score.cosine);
                c.clip_score = Some(score.clip_score);
                c.rank = Some(r + 1);
                c.kept = job.keep_top.is_none_or(|k| *r < k as usize);
            }
        }
        let sheet = self.contact_sheet(index, &rendered, &images)?;
        self.manifest.prompts[index].contact_sheet = Some(sheet);
        Ok(())
    }

    /// The contact sheet of the prompt's candidates at `rendered` (indices into its
    /// candidates), whose images are `images`.
    fn contact_sheet(
        &mut self,
        index: usize,
        rendered: &[usize],
        images: &[RgbImage],
    ) -> Result<String, JobRunError> {
        let entry = &self.manifest.prompts[index];
        let mut order: Vec<usize> = (0..rendered.len()).collect();
        order.sort_by_key(|&k| {
            let c = &entry.candidates[rendered[k]];
            (c.rank.unwrap_or(usize::MAX), c.candidate)
        });
        let tiles: Vec<contact_sheet::Tile<'_>> = order
            .iter()
            .map(|&i| {
                let c = &entry.candidates[rendered[i]];
                let mut caption = Vec::new();
                match (c.rank, c.clip_score) {
                    (Some(r), Some(s)) => caption.push(format!("#{r} {s:.2}")),
                    _ => caption.push(format!("c{}", c.candidate)),
                }
                caption.push(format!("seed {}", c.seed));
                contact_sheet::Tile {
                    image: &images[i],
                    caption,
                }
            })
            .collect();
        let sheet = contact_sheet::render(&tiles, 8);
        let name = format!("p{index:03}-sheet.png");
        let bytes = output::png::encode(
            &sheet,
            &format!(
                "contact sheet of prompt {index}: {}",
                self.job.prompts[index].text
            ),
        )
        .map_err(|e| encoding(&name, e))?;
        self.dir
            .write(&name, &bytes)
            .map_err(|e| io_err(format!("writing {name}"), e))?;
        Ok(name)
    }

    /// Moves (or deletes) the candidates outside keep_top.
    fn apply_keep_top(&mut self, index: usize) -> Result<(), JobRunError> {
        let how = self.job.rejected;
        let outside: Vec<usize> = (0..self.manifest.prompts[index].candidates.len())
            .filter(|&i| {
                let c = &self.manifest.prompts[index].candidates[i];
                !c.kept
                    && c.file
                        .as_ref()
                        .is_some_and(|f| !f.starts_with(&format!("{REJECTED}/")))
            })
            .collect();
        for i in outside {
            let c = &self.manifest.prompts[index].candidates[i];
            let file = c.file.clone().unwrap_or_default();
            let now = match how {
                Rejected::Move => self.move_to_rejected(&file)?,
                Rejected::Delete => {
                    match self.dir.remove_file(&file) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err(format!("deleting {file}"), e)),
                    }
                    None
                }
            };
            self.manifest.prompts[index].candidates[i].file = now;
        }
        if let Some(rejected) = &self.rejected {
            rejected
                .sync()
                .map_err(|e| io_err(format!("syncing {REJECTED}/"), e))?;
        }
        self.dir
            .sync()
            .map_err(|e| io_err("syncing the output folder".into(), e))
    }

    /// Moves `file` into `rejected/` and returns its new name (`None`: it is gone).
    fn move_to_rejected(&mut self, file: &str) -> Result<Option<String>, JobRunError> {
        if self.rejected.is_none() {
            let folder = outdir::rejected(&self.dir).map_err(|e| {
                io_err(format!("creating {}", self.dir.join(REJECTED).display()), e)
            })?;
            self.rejected = Some(folder);
        }
        let rejected = self.rejected.as_ref().expect("opened above");
        let step = || format!("moving {file} to {REJECTED}/");
        let here = self.dir.entry(file).map_err(|e| io_err(step(), e))?;
        let there = rejected.entry(file).map_err(|e| io_err(step(), e))?;
        // A run that stopped after the move but before the manifest was saved has already
        // moved it.
        if here != Entry::Missing || there == Entry::Missing {
            match self.dir.rename(file, rejected, file) {
                Ok(()) => {}
                // Gone from both places (removed by hand while the job was stopped): nothing to
                // move; it is not rendered again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tracing::warn!(job = %self.job.id, file = %file, "a candidate outside keep_top is missing; recorded without a file");
                    return Ok(None);
                }
                Err(e) => return Err(io_err(step(), e)),
            }
        }
        Ok(Some(format!("{REJECTED}/{file}")))
    }
}

/// The axes of the sweep whose prompts are `members`: each axis's labels in order of
/// appearance.
fn sweep_axes(job: &Job, members: &[usize]) -> Vec<grid::Axis> {
    let cell_of = |i: usize| &job.prompts[i].sweep.as_ref().expect("a member").axes;
    let mut axes: Vec<grid::Axis> = cell_of(members[0])
        .iter()
        .map(|_| grid::Axis { labels: Vec::new() })
        .collect();
    for &i in members {
        for (k, v) in cell_of(i).iter().enumerate().take(axes.len()) {
            if !axes[k].labels.contains(&v.label) {
                axes[k].labels.push(v.label.clone());
            }
        }
    }
    axes
}

/// Reads back the image at `rel` in `dir` (no link followed).
fn load(dir: &Folder, rel: &str) -> Result<RgbImage, JobRunError> {
    let read = dir
        .read_at(rel)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
                .map_err(|e| e.to_string())
        });
    read.map(|i| i.to_rgb8())
        .map_err(|message| JobRunError::Output {
            step: format!("reading back {}", dir.join(rel).display()),
            message,
        })
}
