//! `sdspool check JOB`: validates a job file against the configuration and explains what it will
//! render, without loading ONNX Runtime: model (and that its folder is complete), its family and
//! the fields that family takes (the daemon's own check, [`job::folders_fit`]), scheduler (the
//! model's own when the job names none, built for the job's steps), size, steps, prompts, images
//! and the seeds of every prompt.

use std::fmt::Write as _;
use std::path::Path;

use crate::app::commands::reading;
use crate::app::config::Config;
use crate::engine::model::Family;
use crate::engine::model::layout::ModelFolder;
use crate::engine::prompt::PromptSyntax;
use crate::engine::scheduler::{self, SchedulerConfig, SchedulerKind};
use crate::engine::tokenizer::ClipTokenizer;
use crate::jobs::eta::{self, Timings};
use crate::jobs::job::{self, Job, JobError};

/// Checks `job_file`; the explanation, or the first error with the file and the field.
pub fn run(config: &Config, job_file: &Path) -> Result<String, JobError> {
    let job = job::load(job_file, config)?;
    let err = |field: &str, message: String| JobError {
        file: job_file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let model_dir = &config.models[&job.model].path;
    let folder = ModelFolder::open(model_dir).map_err(|e| {
        err(
            "model",
            format!("{:?}: the model folder is not usable: {e}", job.model),
        )
    })?;
    let refiner = match &job.refiner {
        Some(r) => Some(
            ModelFolder::open(&config.models[&r.model].path).map_err(|e| {
                err(
                    "refiner",
                    format!("{:?}: the model folder is not usable: {e}", r.model),
                )
            })?,
        ),
        None => None,
    };
    // The daemon's own check at claim (sizes, and the fields each family takes).
    job::folders_fit(&job, &folder, refiner.as_ref(), job_file)?;
    let scheduler_config = SchedulerConfig::from_file(&folder.scheduler_config).map_err(|e| {
        err(
            "model",
            format!(
                "{:?}: cannot read its scheduler configuration: {e}",
                job.model
            ),
        )
    })?;
    let model_kind = scheduler_config.kind();
    let set = job.prompts.iter().filter(|p| p.scheduler.is_some()).count();
    let how = if set == job.prompts.len() {
        "set by the job".to_string()
    } else {
        format!(
            "the model's own, {} in {}{}",
            scheduler_config.class_name.as_deref().unwrap_or("?"),
            folder.scheduler_config.display(),
            if set > 0 {
                ", where the job sets none"
            } else {
                ""
            }
        )
    };
    // Every scheduler and step count the prompts use must build with this model's
    // configuration.
    let mut kinds: Vec<SchedulerKind> = Vec::new();
    let mut checked: Vec<(SchedulerKind, u32)> = Vec::new();
    for p in &job.prompts {
        let kind = match p.scheduler {
            Some(k) => k,
            None => *model_kind.as_ref().map_err(|e| {
                err(
                    "scheduler",
                    format!("is not set, and the model's own scheduler cannot be used: {e}"),
                )
            })?,
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
        if checked.contains(&(kind, p.steps)) {
            continue;
        }
        checked.push((kind, p.steps));
        scheduler::build(kind, &scheduler_config, p.steps as usize).map_err(|e| {
            err(
                if p.scheduler.is_some() {
                    "scheduler"
                } else {
                    "steps"
                },
                format!(
                    "{kind} cannot run {} steps with this model's scheduler configuration: {e}",
                    p.steps
                ),
            )
        })?;
    }
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let timings = Timings::read(&Timings::path(&config.spool.dir));
    let estimate = eta::estimate_job(&timings, &mut eta::StepCounter::new(config), &job);
    let mut rows = vec![("model", format!("{} ({})", job.model, model_dir.display()))];
    rows.extend(family_rows(&job, &folder, refiner.as_ref()));
    rows.push(("scheduler", format!("{} ({how})", names.join(", "))));
    let mut out = explain(config, job_file, &job, &rows, &folder, &estimate);
    out.push_str(&readings(&job, &folder).map_err(|m| err("model", m))?);
    Ok(out)
}

/// For a job in AUTOMATIC1111's syntax: how each prompt (the first 100) and its negative
/// prompt are read with the model's tokenizer.
fn readings(job: &Job, folder: &ModelFolder) -> Result<String, String> {
    let mut out = String::new();
    if job.prompt_syntax != PromptSyntax::A1111 {
        return Ok(out);
    }
    let tokenizer = ClipTokenizer::from_dir(&folder.tokenizer_dir)
        .map_err(|e| format!("{:?}: cannot read its tokenizer: {e}", job.model))?;
    for (i, p) in job.prompts.iter().enumerate().take(100) {
        let steps = p.steps as usize;
        let line = reading::describe(&tokenizer, &p.text, steps, job.text_cleaning)
            .map_err(|e| format!("prompt {}: {e}", i + 1))?;
        let _ = writeln!(out, "  read {:<5} {line}", i + 1);
        if !p.negative.is_empty() {
            let line = reading::describe(&tokenizer, &p.negative, steps, job.text_cleaning)
                .map_err(|e| format!("negative of prompt {}: {e}", i + 1))?;
            let _ = writeln!(out, "  negative   {line}");
        }
    }
    if let Some(encoders) = sdxl_encoders(folder.family) {
        let _ = writeln!(out, "  encoders   {encoders}");
    }
    Ok(out)
}

/// The model's family, and the refiner with its family and where it takes over.
fn family_rows(
    job: &Job,
    folder: &ModelFolder,
    refiner: Option<&ModelFolder>,
) -> Vec<(&'static str, String)> {
    let f = folder.family;
    let mut rows = vec![("family", format!("{} ({})", f.name(), f.title()))];
    if let (Some(r), Some(rf)) = (&job.refiner, refiner) {
        rows.push((
            "refiner",
            format!(
                "{} (family {}), takes over at {} of the schedule",
                r.model,
                rf.family.name(),
                r.start
            ),
        ));
    }
    rows
}

/// How an SDXL family's text encoders take the windows `check` shows.
fn sdxl_encoders(family: Family) -> Option<&'static str> {
    match family {
        Family::Sdxl => Some(
            "text_encoder and text_encoder_2 each read these windows (padded as its own \
             tokenizer pads), weighted and rescaled on its own; text_embeds from each text's \
             first window",
        ),
        Family::SdxlRefiner => Some(
            "text_encoder_2 (the refiner's only encoder) reads these windows; text_embeds from \
             each text's first window",
        ),
        Family::Sd | Family::Lcm => None,
    }
}

/// What `clip_skip` (above 1) does to `family`'s conditioning.
fn clip_skip_text(clip_skip: u32, family: Family) -> String {
    match family {
        Family::Sdxl if clip_skip == 2 => {
            "2 (CLIP ViT-L's penultimate state, SDXL's own: no change)".to_string()
        }
        Family::Sdxl => format!(
            "{clip_skip} (CLIP ViT-L's hidden_states[-{clip_skip}], as AUTOMATIC1111's \"Clip skip \
             SDXL\"; OpenCLIP bigG keeps its penultimate state)"
        ),
        Family::SdxlRefiner => format!(
            "{clip_skip} (no effect: the refiner's only encoder, OpenCLIP bigG, keeps its \
             penultimate state)"
        ),
        Family::Sd | Family::Lcm => clip_skip.to_string(),
    }
}

/// The distinct values, in order of appearance.
fn distinct<T: PartialEq>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// The explanation: `model_rows` (model, family, refiner, scheduler) after the id, then the
/// work, the settings and the prompts.
fn explain(
    config: &Config,
    job_file: &Path,
    job: &Job,
    model_rows: &[(&str, String)],
    folder: &ModelFolder,
    estimate: &eta::Estimate,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", job_file.display());
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "  {key:<10} {value}");
    };
    line("id", job.id.clone());
    for (key, value) in model_rows {
        line(key, value.clone());
    }
    for (key, value) in work_rows(job) {
        line(key, value);
    }
    line("eta", eta_text(job, estimate));
    line("rng", format!("{}, seed {}", job.rng, job.seed));
    line(
        "syntax",
        format!("{}, text cleaning {}", job.prompt_syntax, job.text_cleaning),
    );
    if job.clip_skip > 1 {
        line("clip_skip", clip_skip_text(job.clip_skip, folder.family));
    }
    let seeds = &job.seed_options;
    if let Some((s, strength)) = seeds.subseed {
        line(
            "variation",
            format!("subseed {s} (+ candidate), strength {strength}"),
        );
    }
    if let Some((w, h)) = seeds.resize_from {
        line("seed size", format!("noise drawn at {w}x{h}"));
    }
    if seeds.eta_noise_seed_delta != 0 {
        line("ensd", seeds.eta_noise_seed_delta.to_string());
    }
    if !job.loras.is_empty() {
        let loras: Vec<String> = job
            .loras
            .iter()
            .map(|l| format!("<lora:{}:{}> ({})", l.name, l.weight, l.file.display()))
            .collect();
        line("loras", format!("{} (applied per job)", loras.join(", ")));
    }
    line("priority", job.priority.to_string());
    line(
        "output",
        config.output_dir.join(&job.output).display().to_string(),
    );
    if let Some(k) = job.keep_top {
        line("keep_top", k.to_string());
    }
    if let Some(r) = job.rerank {
        line("rerank", r.to_string());
    }
    out.push_str(&prompt_lines(job));
    out
}

/// `size`, `steps`, `prompts` and `images`: the distinct settings of the prompts and what they
/// add up to.
fn work_rows(job: &Job) -> [(&'static str, String); 4] {
    let join = |v: Vec<String>| v.join(", ");
    let sizes = join(
        distinct(job.prompts.iter().map(|p| (p.width, p.height)))
            .into_iter()
            .map(|(w, h)| format!("{w}x{h}"))
            .collect(),
    );
    let steps = join(
        distinct(job.prompts.iter().map(|p| p.steps))
            .into_iter()
            .map(|s| s.to_string())
            .collect(),
    );
    let guidance = join(
        distinct(job.prompts.iter().map(|p| p.guidance))
            .into_iter()
            .map(|g| g.to_string())
            .collect(),
    );
    let sweeps = distinct(
        job.prompts
            .iter()
            .filter_map(|p| p.sweep.as_ref().map(|s| s.group)),
    );
    let prompts = if sweeps.is_empty() {
        job.prompts.len().to_string()
    } else {
        format!(
            "{} ({} swept prompt{} expanded; each sweep gets a grid)",
            job.prompts.len(),
            sweeps.len(),
            if sweeps.len() == 1 { "" } else { "s" }
        )
    };
    let per_prompt: Vec<String> = job
        .prompts
        .iter()
        .map(|p| p.seeds.len().to_string())
        .collect();
    let images = format!(
        "{} ({}), at most {} per UNet batch",
        job.image_count(),
        if per_prompt.len() <= 8 {
            per_prompt.join(" + ")
        } else {
            format!("{} prompts", per_prompt.len())
        },
        job.max_batch
    );
    [
        ("size", sizes),
        ("steps", format!("{steps}, guidance {guidance}")),
        ("prompts", prompts),
        ("images", images),
    ]
}

/// How long the job takes at the speed measured on this spool.
fn eta_text(job: &Job, estimate: &eta::Estimate) -> String {
    match estimate.seconds {
        Some(s) => format!(
            "~{} for {} UNet steps (speed measured on this spool{})",
            eta::human(s),
            estimate.unet_calls,
            if estimate.basis == Some(eta::Basis::Scaled) {
                ", scaled from other sizes or batches"
            } else {
                ""
            }
        ),
        None => format!(
            "unknown: {} UNet steps; no speed measured for {} on this spool yet",
            estimate.unet_calls, job.model
        ),
    }
}

/// A line per prompt (the first 100): text, negative, images, seeds, and its own settings
/// where they differ from the job's.
fn prompt_lines(job: &Job) -> String {
    const SHOWN: usize = 100;
    let mut out = String::new();
    for (i, p) in job.prompts.iter().enumerate().take(SHOWN) {
        let negative = if p.negative.is_empty() {
            String::new()
        } else {
            format!(" (negative {:?})", shorten(&p.negative))
        };
        let settings = if p.has_job_settings(job) {
            String::new()
        } else {
            format!(
                ", {}x{}, {} steps, guidance {}, {}",
                p.width,
                p.height,
                p.steps,
                p.guidance,
                p.scheduler.map_or("the model's scheduler", |k| k.name())
            )
        };
        let _ = writeln!(
            out,
            "  prompt {:<3} {:?}{negative}: {} image{}, seeds {}{settings}",
            i + 1,
            shorten(&p.text),
            p.seeds.len(),
            if p.seeds.len() == 1 { "" } else { "s" },
            seed_list(&p.seeds)
        );
    }
    if job.prompts.len() > SHOWN {
        let _ = writeln!(out, "  ... and {} more prompts", job.prompts.len() - SHOWN);
    }
    out
}

/// At most 60 characters of a prompt.
fn shorten(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        s.push('…');
    }
    s
}

/// Seeds with runs of three or more consecutive ones written `a-b`: `42-45, 7, 99`.
pub fn seed_list(seeds: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < seeds.len() {
        let mut j = i;
        while j + 1 < seeds.len() && seeds[j].checked_add(1) == Some(seeds[j + 1]) {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{}-{}", seeds[i], seeds[j]));
        } else {
            parts.extend(seeds[i..=j].iter().map(u64::to_string));
        }
        i = j + 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_runs_are_collapsed() {
        assert_eq!(seed_list(&[42, 43, 44, 45]), "42-45");
        assert_eq!(seed_list(&[7, 99]), "7, 99");
        assert_eq!(seed_list(&[1, 2, 5, 6, 7, 9]), "1, 2, 5-7, 9");
        assert_eq!(
            seed_list(&[u64::MAX - 1, u64::MAX]),
            format!("{}, {}", u64::MAX - 1, u64::MAX)
        );
    }
}
