//! Job files: reading them safely ([`spec`] is the schema), filling in defaults from
//! `config.yaml`, and checking every field and limit before any work starts.

pub mod spec;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::noise::RngKind;
use crate::scheduler::SchedulerKind;
pub use spec::{JobSpec, PromptObject, PromptSpec};

/// A job that cannot run, with the file and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", if field.is_empty() { String::new() } else { format!("`{field}` ") })]
pub struct JobError {
    pub file: PathBuf,
    /// Dotted path such as `prompts[2].candidates`; empty when the file as a whole is at fault.
    pub field: String,
    pub message: String,
}

/// One prompt of a job, resolved: its text, negative prompt and one seed per candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPrompt {
    pub text: String,
    pub negative: String,
    pub seeds: Vec<u64>,
}

/// What to do with candidates outside `keep_top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rejected {
    #[default]
    Move,
    Delete,
}

/// A checked job with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub model: String,
    pub prompts: Vec<JobPrompt>,
    pub steps: u32,
    pub guidance: f32,
    /// `None`: the model's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    pub width: u32,
    pub height: u32,
    pub rng: RngKind,
    pub seed: u64,
    pub priority: i32,
    /// Subfolder of the output root.
    pub output: String,
    pub keep_top: Option<u32>,
    pub rerank: Option<bool>,
    pub rejected: Rejected,
    pub max_batch: u32,
}

impl Job {
    /// Number of images the job renders.
    pub fn image_count(&self) -> usize {
        self.prompts.iter().map(|p| p.seeds.len()).sum()
    }
}

/// Names used for ids and output folders: they become folder and file names, so only plain
/// characters, no leading dot, at most 100 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Reads a job file: a regular file of at most `limits.max_job_bytes`, UTF-8, one YAML document
/// within tight parser budgets (aliases, nesting, nodes).
pub fn read_spec(path: &Path, max_bytes: u64) -> Result<JobSpec, JobError> {
    let whole = |message: String| JobError {
        file: path.to_path_buf(),
        field: String::new(),
        message,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(whole(
            "is not a regular file (a folder, link, FIFO or device); job files must be plain files"
                .into(),
        ));
    }
    if meta.len() > max_bytes {
        return Err(whole(format!(
            "is {} bytes; job files are at most {max_bytes} bytes (limits.max_job_bytes)",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max_bytes + 1).read_to_end(&mut bytes))
        .map_err(|e| whole(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(whole(format!(
            "grew past {max_bytes} bytes while being read (limits.max_job_bytes)"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        whole(format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    crate::yaml::parse_with::<JobSpec>(&text, crate::yaml::strict_options()).map_err(|e| {
        let mut message = e.message.clone();
        if let Some(hint) = did_you_mean(&e.message) {
            message.push_str(&hint);
        }
        JobError {
            file: path.to_path_buf(),
            field: e.key,
            message,
        }
    })
}

/// "did you mean" for an unknown-field message from serde.
fn did_you_mean(message: &str) -> Option<String> {
    let start = message.find("unknown field `")? + "unknown field `".len();
    let name = &message[start..start + message[start..].find('`')?];
    let candidates = if message.contains("expected one of `prompt`")
        || message.contains("expected one of prompt,")
    {
        spec::PROMPT_FIELDS
    } else {
        spec::JOB_FIELDS
    };
    let best = candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), *c))
        .min()?;
    (best.0 <= 2 || (best.0 <= 3 && name.len() > 6))
        .then(|| format!(" (did you mean `{}`?)", best.1))
}

/// Reads and resolves a job file against the configuration.
pub fn load(path: &Path, config: &Config) -> Result<Job, JobError> {
    let spec = read_spec(path, config.limits.max_job_bytes)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("job");
    resolve(spec, stem, path, config, file_seed(path))
}

/// The seed of a job file that names none: a hash of the file's bytes, inode and modification
/// time. It stays the same while the file is claimed, resumed after a crash and moved (renames
/// keep inode and mtime), so a resumed job continues with the same seeds; a new submission
/// gets new ones. The manifest and every PNG record it, so the images can be reproduced.
pub fn file_seed(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let bytes = std::fs::read(path).unwrap_or_default();
    let (ino, mtime, mtime_ns) = std::fs::metadata(path)
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default();
    let tail = [
        ino.to_le_bytes(),
        mtime.to_le_bytes(),
        mtime_ns.to_le_bytes(),
    ];
    // Within 32 bits, which torch.manual_seed and the tools users come from all accept.
    crate::hash::fnv1a64(bytes.into_iter().chain(tail.into_iter().flatten())) >> 32
}

/// Fills in defaults and checks every field against the configuration's models and limits.
pub fn resolve(
    spec: JobSpec,
    stem: &str,
    file: &Path,
    config: &Config,
    fallback_seed: u64,
) -> Result<Job, JobError> {
    let err = |field: &str, message: String| JobError {
        file: file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let d = &config.defaults;
    let l = &config.limits;

    let id = spec.id.clone().unwrap_or_else(|| stem.to_string());
    if !valid_name(&id) {
        let field = if spec.id.is_some() { "id" } else { "" };
        return Err(err(
            field,
            format!(
                "job id {id:?} is not usable as a folder name: use letters, digits, '.', '_' and '-' (at most 100, not starting with '.')"
            ),
        ));
    }
    let output = spec.output.clone().unwrap_or_else(|| id.clone());
    if !valid_name(&output) {
        return Err(err(
            "output",
            format!(
                "{output:?} is not a plain folder name: use letters, digits, '.', '_' and '-' (no '/' or '..')"
            ),
        ));
    }
    let model = spec
        .model
        .clone()
        .unwrap_or_else(|| config.default_model_name().to_string());
    if !config.models.contains_key(&model) {
        let names: Vec<&str> = config.models.keys().map(String::as_str).collect();
        return Err(err(
            "model",
            format!(
                "{model:?} is not configured; config.yaml has {}",
                names.join(", ")
            ),
        ));
    }

    let steps = spec.steps.unwrap_or(d.steps);
    if steps == 0 || steps > l.max_steps {
        return Err(err(
            "steps",
            format!(
                "is {steps}; it must be between 1 and {} (limits.max_steps)",
                l.max_steps
            ),
        ));
    }
    let guidance = spec.guidance.unwrap_or(d.guidance);
    if !guidance.is_finite() || !(0.0..=100.0).contains(&guidance) {
        return Err(err(
            "guidance",
            // `1e308` is not written out as 309 digits.
            format!(
                "is {}; it must be a number from 0 to 100 (7.5 is usual)",
                if guidance.abs() >= 1e6 {
                    format!("{guidance:e}")
                } else {
                    guidance.to_string()
                }
            ),
        ));
    }
    let width = spec.width.unwrap_or(d.width);
    let height = spec.height.unwrap_or(d.height);
    for (field, v) in [("width", width), ("height", height)] {
        if v == 0 || v % 8 != 0 {
            return Err(err(
                field,
                format!("is {v}; it must be a positive multiple of 8"),
            ));
        }
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > l.max_pixels {
        return Err(err(
            "width",
            format!(
                "{width}x{height} is {pixels} pixels; the limit is {} (limits.max_pixels)",
                l.max_pixels
            ),
        ));
    }
    let scheduler = match &spec.scheduler {
        None => None,
        Some(s) => Some(
            s.parse::<SchedulerKind>()
                .map_err(|e| err("scheduler", e.to_string()))?,
        ),
    };
    let rng_name = spec.rng.clone().unwrap_or_else(|| d.rng.clone());
    let rng = rng_name
        .parse::<RngKind>()
        .map_err(|e| err("rng", e.to_string()))?;
    let seed = spec.seed.unwrap_or(fallback_seed);
    let candidates = spec.candidates.unwrap_or(d.candidates);
    let rejected = match spec.rejected.as_deref() {
        None | Some("move") => Rejected::Move,
        Some("delete") => Rejected::Delete,
        Some(other) => {
            return Err(err(
                "rejected",
                format!("is {other:?}; use `move` (to rejected/) or `delete`"),
            ));
        }
    };

    if spec.prompts.is_empty() {
        return Err(err(
            "prompts",
            "is empty: a job needs at least one prompt".into(),
        ));
    }
    if spec.prompts.len() > l.max_prompts as usize {
        return Err(err(
            "prompts",
            format!(
                "has {} prompts; the limit is {} (limits.max_prompts)",
                spec.prompts.len(),
                l.max_prompts
            ),
        ));
    }
    let default_negative = spec.negative.clone().unwrap_or_default();
    let mut prompts = Vec::new();
    for (i, p) in spec.prompts.iter().enumerate() {
        let (text, negative, count, base, seeds) = match p {
            PromptSpec::Text(t) => (t.clone(), default_negative.clone(), candidates, seed, None),
            PromptSpec::Full(o) => (
                o.prompt.clone(),
                o.negative
                    .clone()
                    .unwrap_or_else(|| default_negative.clone()),
                o.candidates
                    .unwrap_or_else(|| o.seeds.as_ref().map_or(candidates, |s| s.len() as u32)),
                o.seed.unwrap_or(seed),
                o.seeds.clone(),
            ),
        };
        let field = |name: &str| format!("prompts[{i}].{name}");
        if text.trim().is_empty() {
            return Err(err(&format!("prompts[{i}]"), "is empty".into()));
        }
        if text.contains('\0') || negative.contains('\0') {
            return Err(err(
                &format!("prompts[{i}]"),
                "contains a NUL character".into(),
            ));
        }
        let out_of_limits = |n: u64| {
            let name = if matches!(p, PromptSpec::Full(_)) {
                field("candidates")
            } else {
                "candidates".to_string()
            };
            err(
                &name,
                format!(
                    "is {n}; it must be between 1 and {} (limits.max_candidates)",
                    l.max_candidates
                ),
            )
        };
        let seeds = match seeds {
            Some(s) => {
                if s.len() != count as usize {
                    return Err(err(
                        &field("seeds"),
                        format!(
                            "lists {} seeds for {count} candidates; give one seed per candidate",
                            s.len()
                        ),
                    ));
                }
                s
            }
            // Checked before the seeds are made: `candidates: 4000000000` must not allocate them.
            None if count == 0 || count > l.max_candidates => {
                return Err(out_of_limits(u64::from(count)));
            }
            None => (0..u64::from(count))
                .map(|k| base.wrapping_add(k))
                .collect(),
        };
        if seeds.is_empty() || seeds.len() > l.max_candidates as usize {
            return Err(out_of_limits(seeds.len() as u64));
        }
        prompts.push(JobPrompt {
            text,
            negative,
            seeds,
        });
    }
    let rerank_available = config.rerank.as_ref().is_some_and(|r| r.enabled);
    if spec.rerank == Some(true) && !rerank_available {
        return Err(err(
            "rerank",
            "is true but no rerank model is configured (or `rerank.enabled` is false in config.yaml)".into(),
        ));
    }
    let reranked = spec.rerank.unwrap_or(true) && rerank_available;
    if spec.keep_top.is_some() && !reranked {
        return Err(err(
            "keep_top",
            "needs CLIP scores, but reranking is off for this job (no rerank model configured, or `rerank: false`)".into(),
        ));
    }
    if let Some(k) = spec.keep_top
        && k == 0
    {
        return Err(err(
            "keep_top",
            "is 0; keep at least one image per prompt, or leave keep_top out".into(),
        ));
    }

    Ok(Job {
        id,
        model,
        prompts,
        steps,
        guidance: guidance as f32,
        scheduler,
        width,
        height,
        rng,
        seed,
        priority: spec.priority.unwrap_or(0),
        output,
        keep_top: spec.keep_top,
        rerank: spec.rerank,
        rejected,
        max_batch: d.max_batch.max(1),
    })
}
