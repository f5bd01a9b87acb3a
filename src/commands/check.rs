//! `sdspool check JOB`: validates a job file against the configuration and explains what it will
//! render, without loading ONNX Runtime: model (and that its folder is complete), scheduler (the
//! model's own when the job names none, built for the job's steps), size, steps, prompts, images
//! and the seeds of every prompt.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::Config;
use crate::job::{self, Job, JobError};
use crate::model::layout::ModelFolder;
use crate::scheduler::{self, SchedulerConfig};

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
    let scheduler_config = SchedulerConfig::from_file(&folder.scheduler_config).map_err(|e| {
        err(
            "model",
            format!(
                "{:?}: cannot read its scheduler configuration: {e}",
                job.model
            ),
        )
    })?;
    let (kind, how) = match job.scheduler {
        Some(kind) => (kind, "set by the job".to_string()),
        None => {
            let kind = scheduler_config.kind().map_err(|e| {
                err(
                    "scheduler",
                    format!("is not set, and the model's own scheduler cannot be used: {e}"),
                )
            })?;
            (
                kind,
                format!(
                    "the model's own, {} in {}",
                    scheduler_config.class_name.as_deref().unwrap_or("?"),
                    folder.scheduler_config.display()
                ),
            )
        }
    };
    scheduler::build(kind, &scheduler_config, job.steps as usize).map_err(|e| {
        err(
            if job.scheduler.is_some() {
                "scheduler"
            } else {
                "steps"
            },
            format!(
                "{kind} cannot run {} steps with this model's scheduler configuration: {e}",
                job.steps
            ),
        )
    })?;
    Ok(explain(
        config,
        job_file,
        &job,
        kind.name(),
        &how,
        model_dir,
    ))
}

fn explain(
    config: &Config,
    job_file: &Path,
    job: &Job,
    scheduler: &str,
    how: &str,
    model_dir: &Path,
) -> String {
    let mut out = String::new();
    let images = job.image_count();
    let per_prompt: Vec<String> = job
        .prompts
        .iter()
        .map(|p| p.seeds.len().to_string())
        .collect();
    let _ = writeln!(out, "{}: ok", job_file.display());
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "  {key:<10} {value}");
    };
    line("id", job.id.clone());
    line("model", format!("{} ({})", job.model, model_dir.display()));
    line("scheduler", format!("{scheduler} ({how})"));
    line("size", format!("{}x{}", job.width, job.height));
    line("steps", format!("{}, guidance {}", job.steps, job.guidance));
    line("prompts", job.prompts.len().to_string());
    line(
        "images",
        format!(
            "{images} ({}), at most {} per UNet batch",
            if per_prompt.len() <= 8 {
                per_prompt.join(" + ")
            } else {
                format!("{} prompts", per_prompt.len())
            },
            job.max_batch
        ),
    );
    line("rng", format!("{}, seed {}", job.rng, job.seed));
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
    for (i, p) in job.prompts.iter().enumerate() {
        let negative = if p.negative.is_empty() {
            String::new()
        } else {
            format!(" (negative {:?})", shorten(&p.negative))
        };
        let _ = writeln!(
            out,
            "  prompt {:<3} {:?}{negative}: {} image{}, seeds {}",
            i + 1,
            shorten(&p.text),
            p.seeds.len(),
            if p.seeds.len() == 1 { "" } else { "s" },
            seed_list(&p.seeds)
        );
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
