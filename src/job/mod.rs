//! Job files: reading them safely ([`spec`] is the schema), filling in defaults from
//! `config.yaml`, and checking every field and limit before any work starts.

pub mod prompt_file;
pub mod spec;
pub mod sweep;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::noise::RngKind;
use crate::scheduler::SchedulerKind;
pub use spec::{JobSpec, OneOrMany, PromptObject, PromptSpec};
pub use sweep::{AxisValue, SweepCell};

/// A job that cannot run, with the file and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", if field.is_empty() { String::new() } else { format!("`{field}` ") })]
pub struct JobError {
    pub file: PathBuf,
    /// Dotted path such as `prompts[2].candidates`; empty when the file as a whole is at fault.
    pub field: String,
    pub message: String,
}

impl From<&JobError> for crate::spool::Failure {
    /// A job file that does not validate: step `validate`, its field and message.
    fn from(e: &JobError) -> crate::spool::Failure {
        let failure = crate::spool::Failure::new("validate", e.message.clone());
        if e.field.is_empty() {
            failure
        } else {
            failure.with_field(e.field.clone())
        }
    }
}

/// One prompt of a job, resolved: its text, negative prompt, one seed per candidate, and the
/// settings it is rendered with (a sweep makes one prompt per combination of settings).
#[derive(Debug, Clone, PartialEq)]
pub struct JobPrompt {
    pub text: String,
    pub negative: String,
    pub seeds: Vec<u64>,
    pub steps: u32,
    pub guidance: f32,
    /// `None`: the model's own scheduler.
    pub scheduler: Option<SchedulerKind>,
    pub width: u32,
    pub height: u32,
    /// Its place in a sweep, when the prompt as written has more than one variant.
    pub sweep: Option<SweepCell>,
}

impl JobPrompt {
    /// Whether it is rendered with the job's own (first) settings.
    pub fn has_job_settings(&self, job: &Job) -> bool {
        self.steps == job.steps
            && self.guidance == job.guidance
            && self.scheduler == job.scheduler
            && self.width == job.width
            && self.height == job.height
    }
}

/// What to do with candidates outside `keep_top`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rejected {
    #[default]
    Move,
    Delete,
}

/// A checked job with every default filled in. `steps`, `guidance`, `scheduler`, `width` and
/// `height` are the job's own settings (the first value of a swept one); each prompt carries the
/// settings it is rendered with.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub model: String,
    /// Every prompt, sweeps and prompt matrices expanded.
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

/// The seeds of one prompt's candidates: the given list (which must have `count` seeds), or
/// `base`, `base + 1`, ...; at least one and at most `max` (limits.max_candidates).
fn make_seeds(
    err: &dyn Fn(&str, String) -> JobError,
    seeds_field: &str,
    candidates_field: &str,
    seeds: Option<Vec<u64>>,
    count: u32,
    base: u64,
    max: u32,
) -> Result<Vec<u64>, JobError> {
    let out_of_limits = |n: u64| {
        err(
            candidates_field,
            format!("is {n}; it must be between 1 and {max} (limits.max_candidates)"),
        )
    };
    let seeds = match seeds {
        Some(s) => {
            if s.len() != count as usize {
                return Err(err(
                    seeds_field,
                    format!(
                        "lists {} seeds for {count} candidates; give one seed per candidate",
                        s.len()
                    ),
                ));
            }
            s
        }
        // Checked before the seeds are made: `candidates: 4000000000` must not allocate them.
        None if count == 0 || count > max => return Err(out_of_limits(u64::from(count))),
        None => (0..u64::from(count))
            .map(|k| base.wrapping_add(k))
            .collect(),
    };
    if seeds.is_empty() || seeds.len() > max as usize {
        return Err(out_of_limits(seeds.len() as u64));
    }
    Ok(seeds)
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

/// Whether resolving a job may read its `prompt_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFiles {
    /// Read it, relative to the job file (`check`, `render`, `submit`).
    Read,
    /// Refuse: a job in the spool carries its prompt lines (`prompt_lines`, embedded by
    /// `sdspool submit`) and never makes the daemon read other files.
    Refuse,
}

/// Reads and resolves a job file against the configuration (reading its prompt file).
pub fn load(path: &Path, config: &Config) -> Result<Job, JobError> {
    load_with(path, config, PromptFiles::Read)
}

/// Reads and resolves a job file in the spool: a `prompt_file` must come with its
/// `prompt_lines`.
pub fn load_spooled(path: &Path, config: &Config) -> Result<Job, JobError> {
    load_with(path, config, PromptFiles::Refuse)
}

fn load_with(path: &Path, config: &Config, files: PromptFiles) -> Result<Job, JobError> {
    let spec = read_spec(path, config.limits.max_job_bytes)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("job");
    resolve_with(spec, stem, path, config, file_seed(path), files)
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

/// Fills in defaults and checks every field against the configuration's models and limits
/// (reading a `prompt_file` relative to `file`).
pub fn resolve(
    spec: JobSpec,
    stem: &str,
    file: &Path,
    config: &Config,
    fallback_seed: u64,
) -> Result<Job, JobError> {
    resolve_with(spec, stem, file, config, fallback_seed, PromptFiles::Read)
}

/// [`resolve`], choosing whether a prompt file may be read.
pub fn resolve_with(
    spec: JobSpec,
    stem: &str,
    file: &Path,
    config: &Config,
    fallback_seed: u64,
    files: PromptFiles,
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

    let check_steps = |field: &str, steps: u32| {
        if steps == 0 || steps > l.max_steps {
            return Err(err(
                field,
                format!(
                    "is {steps}; it must be between 1 and {} (limits.max_steps)",
                    l.max_steps
                ),
            ));
        }
        Ok(steps)
    };
    let check_guidance = |field: &str, guidance: f64| {
        if !guidance.is_finite() || !(0.0..=100.0).contains(&guidance) {
            return Err(err(
                field,
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
        Ok(guidance)
    };
    let check_size = |field: &str, (width, height): (u32, u32)| {
        for (name, v) in [("width", width), ("height", height)] {
            if v == 0 || v % 8 != 0 {
                let (field, what) = if field.ends_with("size") || field.contains("size[") {
                    (field.to_string(), format!("{name} "))
                } else {
                    (format!("{field}{name}"), String::new())
                };
                return Err(err(
                    &field,
                    format!("{what}is {v}; it must be a positive multiple of 8"),
                ));
            }
            if v > l.max_side {
                let (field, what) = if field.ends_with("size") || field.contains("size[") {
                    (field.to_string(), format!("{name} "))
                } else {
                    (format!("{field}{name}"), String::new())
                };
                return Err(err(
                    &field,
                    format!(
                        "{what}is {v}; the longest side allowed is {} (limits.max_side)",
                        l.max_side
                    ),
                ));
            }
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > l.max_pixels {
            let field = if field.ends_with("size") || field.contains("size[") {
                field.to_string()
            } else {
                format!("{field}width")
            };
            return Err(err(
                &field,
                format!(
                    "{width}x{height} is {pixels} pixels; the limit is {} (limits.max_pixels)",
                    l.max_pixels
                ),
            ));
        }
        Ok((width, height))
    };
    let check_scheduler = |field: &str, name: &str| {
        prompt_file::scheduler_from_a1111(name)
            .map(Some)
            .map_err(|e| err(field, e))
    };
    // A list of values of one field, each checked; `field` is `steps` or `prompts[2].steps`.
    fn list<T: Clone, U>(
        field: &str,
        value: &OneOrMany<T>,
        err: &dyn Fn(&str, String) -> JobError,
        check: &dyn Fn(&str, T) -> Result<U, JobError>,
    ) -> Result<Vec<U>, JobError> {
        let values = value.values();
        if values.is_empty() {
            return Err(err(
                field,
                "is an empty list; give at least one value".into(),
            ));
        }
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let f = if value.is_list() {
                    format!("{field}[{i}]")
                } else {
                    field.to_string()
                };
                check(&f, v)
            })
            .collect()
    }
    let sizes_of = |prefix: &str,
                    size: Option<&OneOrMany<String>>,
                    width: Option<u32>,
                    height: Option<u32>,
                    default: &[(u32, u32)]|
     -> Result<Vec<(u32, u32)>, JobError> {
        match size {
            Some(size) => {
                if width.is_some() || height.is_some() {
                    return Err(err(
                        &format!("{prefix}size"),
                        "is given together with width or height; use one or the other".into(),
                    ));
                }
                list(&format!("{prefix}size"), size, &err, &|f, t: String| {
                    check_size(f, sweep::parse_size(&t).map_err(|e| err(f, e))?)
                })
            }
            None if width.is_none() && height.is_none() => Ok(default.to_vec()),
            None => default
                .iter()
                .map(|(w, h)| check_size(prefix, (width.unwrap_or(*w), height.unwrap_or(*h))))
                .collect(),
        }
    };

    let job_lists = sweep::Lists {
        sizes: sizes_of(
            "",
            spec.size.as_ref(),
            spec.width,
            spec.height,
            &[(d.width, d.height)],
        )?,
        schedulers: match &spec.scheduler {
            None => vec![None],
            Some(s) => list("scheduler", s, &err, &|f, t: String| check_scheduler(f, &t))?,
        },
        steps: match &spec.steps {
            None => vec![check_steps("steps", d.steps)?],
            Some(s) => list("steps", s, &err, &|f, t| check_steps(f, t))?,
        },
        guidance: match &spec.guidance {
            None => vec![check_guidance("guidance", d.guidance)?],
            Some(g) => list("guidance", g, &err, &|f, t| check_guidance(f, t))?,
        },
    };
    let (width, height) = job_lists.sizes[0];
    let (steps, guidance, scheduler) = (
        job_lists.steps[0],
        job_lists.guidance[0],
        job_lists.schedulers[0],
    );
    let rng_name = spec.rng.clone().unwrap_or_else(|| d.rng.clone());
    let rng = rng_name
        .parse::<RngKind>()
        .map_err(|e| err("rng", e.to_string()))?;
    let seed = spec.seed.unwrap_or(fallback_seed);
    // Candidates per prompt: `candidates`, `seed_count` or the length of `seeds`, which must agree.
    let mut candidates = None;
    for (field, n) in [
        ("candidates", spec.candidates),
        ("seed_count", spec.seed_count),
        ("seeds", spec.seeds.as_ref().map(|s| s.len() as u32)),
    ] {
        let Some(n) = n else { continue };
        match candidates {
            Some((other, m)) if m != n => {
                return Err(err(
                    field,
                    format!("says {n} candidates but `{other}` says {m}; give one of them"),
                ));
            }
            _ => candidates = Some((field, n)),
        }
    }
    let candidates = candidates.map_or(d.candidates, |(_, n)| n);
    let job_seeds = spec.seeds.clone();
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

    // The prompts as written: the `prompts:` list, then the lines of the prompt file.
    let file_lines: Vec<prompt_file::Line> = match (&spec.prompt_lines, &spec.prompt_file) {
        (Some(lines), _) => prompt_file::parse(lines).map_err(|e| err("prompt_lines", e))?,
        (None, Some(name)) => match files {
            PromptFiles::Read => {
                let lines = prompt_file::read(file, name, l.max_job_bytes)
                    .map_err(|e| err("prompt_file", e))?;
                prompt_file::parse(&lines)
                    .map_err(|e| err("prompt_file", format!("{name}: {e}")))?
            }
            PromptFiles::Refuse => {
                return Err(err(
                    "prompt_file",
                    format!(
                        "{name:?}: a job in the spool does not read other files; submit it with `sdspool submit`, which embeds the prompt file's lines as `prompt_lines`"
                    ),
                ));
            }
        },
        (None, None) => Vec::new(),
    };
    let written = spec.prompts.len() + file_lines.len();
    if written == 0 {
        return Err(err(
            if spec.prompt_file.is_some() || spec.prompt_lines.is_some() {
                "prompt_file"
            } else {
                "prompts"
            },
            "is empty: a job needs at least one prompt".into(),
        ));
    }
    if written > l.max_prompts as usize {
        return Err(err(
            "prompts",
            format!(
                "has {written} prompts; the limit is {} (limits.max_prompts)",
                l.max_prompts
            ),
        ));
    }
    let matrix = spec.prompt_matrix.unwrap_or(false);
    let default_negative = spec.negative.clone().unwrap_or_default();

    // Each prompt as written, resolved but not yet expanded.
    struct Source {
        text: String,
        negative: String,
        seeds: Vec<u64>,
        lists: sweep::Lists,
    }
    let mut sources = Vec::with_capacity(written);
    for (i, p) in spec.prompts.iter().enumerate() {
        let field = |name: &str| format!("prompts[{i}].{name}");
        let prefix = format!("prompts[{i}].");
        let (text, negative, count, base, seeds, lists, explicit) = match p {
            PromptSpec::Text(t) => (
                t.clone(),
                default_negative.clone(),
                candidates,
                seed,
                job_seeds.clone(),
                job_lists.clone(),
                false,
            ),
            PromptSpec::Full(o) => {
                let lists = sweep::Lists {
                    sizes: if o.size.is_some() || o.width.is_some() || o.height.is_some() {
                        sizes_of(
                            &prefix,
                            o.size.as_ref(),
                            o.width,
                            o.height,
                            &job_lists.sizes,
                        )?
                    } else {
                        job_lists.sizes.clone()
                    },
                    schedulers: match &o.scheduler {
                        None => job_lists.schedulers.clone(),
                        Some(s) => list(&field("scheduler"), s, &err, &|f, t: String| {
                            check_scheduler(f, &t)
                        })?,
                    },
                    steps: match &o.steps {
                        None => job_lists.steps.clone(),
                        Some(s) => list(&field("steps"), s, &err, &|f, t| check_steps(f, t))?,
                    },
                    guidance: match &o.guidance {
                        None => job_lists.guidance.clone(),
                        Some(g) => list(&field("guidance"), g, &err, &|f, t| check_guidance(f, t))?,
                    },
                };
                let (count, seeds) = match (&o.seeds, o.candidates) {
                    (Some(s), _) => (o.candidates.unwrap_or(s.len() as u32), Some(s.clone())),
                    (None, Some(c)) => (c, None),
                    (None, None) if o.seed.is_some() => (candidates, None),
                    (None, None) => (candidates, job_seeds.clone()),
                };
                (
                    o.prompt.clone(),
                    o.negative
                        .clone()
                        .unwrap_or_else(|| default_negative.clone()),
                    count,
                    o.seed.unwrap_or(seed),
                    seeds,
                    lists,
                    true,
                )
            }
        };
        if text.trim().is_empty() {
            return Err(err(&format!("prompts[{i}]"), "is empty".into()));
        }
        if text.contains('\0') || negative.contains('\0') {
            return Err(err(
                &format!("prompts[{i}]"),
                "contains a NUL character".into(),
            ));
        }
        let seeds_field = if explicit {
            field("seeds")
        } else {
            "seeds".to_string()
        };
        let candidates_field = if explicit {
            field("candidates")
        } else {
            "candidates".to_string()
        };
        sources.push(Source {
            seeds: make_seeds(
                &err,
                &seeds_field,
                &candidates_field,
                seeds,
                count,
                base,
                l.max_candidates,
            )?,
            text,
            negative,
            lists,
        });
    }
    for line in &file_lines {
        let at = |message: String| err("prompt_file", format!("line {}: {message}", line.number));
        let mut lists = job_lists.clone();
        if let Some(s) = line.steps {
            lists.steps = vec![check_steps("prompt_file", s).map_err(|e| at(e.message))?];
        }
        if let Some(g) = line.guidance {
            lists.guidance = vec![check_guidance("prompt_file", g).map_err(|e| at(e.message))?];
        }
        if let Some(name) = &line.scheduler {
            lists.schedulers = vec![Some(prompt_file::scheduler_from_a1111(name).map_err(at)?)];
        }
        if line.width.is_some() || line.height.is_some() {
            lists.sizes = job_lists
                .sizes
                .iter()
                .map(|(w, h)| {
                    check_size("", (line.width.unwrap_or(*w), line.height.unwrap_or(*h)))
                        .map_err(|e| at(e.message))
                })
                .collect::<Result<_, _>>()?;
        }
        let text = line.prompt.clone();
        let negative = line
            .negative
            .clone()
            .unwrap_or_else(|| default_negative.clone());
        if text.trim().is_empty() {
            return Err(at("the prompt is empty".into()));
        }
        if text.contains('\0') || negative.contains('\0') {
            return Err(at("contains a NUL character".into()));
        }
        let (count, seeds) = match line.candidates {
            Some(c) => (c, None),
            None => (candidates, job_seeds.clone()),
        };
        let seeds = make_seeds(
            &err,
            "prompt_file",
            "prompt_file",
            seeds,
            count,
            line.seed.unwrap_or(seed),
            l.max_candidates,
        )
        .map_err(|e| at(e.message))?;
        sources.push(Source {
            text,
            negative,
            seeds,
            lists,
        });
    }

    // Sweeps expand each prompt; the limits apply to what is rendered.
    let mut prompt_count: u64 = 0;
    let mut image_count: u64 = 0;
    for s in &sources {
        let n = sweep::text_count(&s.text, matrix).saturating_mul(s.lists.count());
        prompt_count = prompt_count.saturating_add(n);
        image_count = image_count.saturating_add(n.saturating_mul(s.seeds.len() as u64));
    }
    if prompt_count > u64::from(l.max_prompts) {
        return Err(err(
            "prompts",
            format!(
                "make {} prompts once sweeps and prompt matrices are expanded; the limit is {} (limits.max_prompts)",
                if prompt_count == u64::MAX {
                    "too many".to_string()
                } else {
                    prompt_count.to_string()
                },
                l.max_prompts
            ),
        ));
    }
    if image_count > l.max_images {
        return Err(err(
            "prompts",
            format!(
                "make {image_count} images once sweeps and prompt matrices are expanded; the limit is {} (limits.max_images)",
                l.max_images
            ),
        ));
    }
    let mut prompts = Vec::with_capacity(prompt_count as usize);
    for (group, s) in sources.into_iter().enumerate() {
        let variants = sweep::variants(&s.text, matrix, &s.lists);
        let swept = variants.len() > 1;
        for v in variants {
            prompts.push(JobPrompt {
                text: v.text,
                negative: s.negative.clone(),
                seeds: s.seeds.clone(),
                steps: v.steps,
                guidance: v.guidance as f32,
                scheduler: v.scheduler,
                width: v.width,
                height: v.height,
                sweep: swept.then_some(SweepCell {
                    group,
                    axes: v.axes,
                }),
            });
        }
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
