//! Job files: reading them safely ([`read`]; [`spec`] is the schema), filling in defaults from
//! `config.yaml` and checking every field and limit before any work starts ([`resolve_with`]),
//! and the model's size rule on the resolved job ([`sizes_fit`]).

mod fields;
pub mod infotext;
mod job_loras;
pub mod prompt_file;
pub mod read;
mod resolve;
pub mod spec;
pub mod sweep;

use std::path::{Path, PathBuf};

use crate::engine::model::Family;
use crate::engine::model::layout::ModelFolder;
use crate::engine::noise::RngKind;
use crate::engine::noise::variation::SeedOptions;
use crate::engine::pipeline::SdxlConditioning;
use crate::engine::prompt::PromptSyntax;
use crate::engine::scheduler::SchedulerKind;
use crate::engine::tokenizer::TextCleaning;
use crate::jobs::settings::JobSettings;
pub use read::{JobFile, read_spec};
pub use spec::{JobSpec, OneOrMany, PromptObject, PromptSpec, Rejected, SchedulerChoice, Size};
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
    /// How the prompts' brackets are read.
    pub prompt_syntax: PromptSyntax,
    /// AUTOMATIC1111's CLIP skip (1: none).
    pub clip_skip: u32,
    /// How the tokenizer cleans prompt text.
    pub text_cleaning: TextCleaning,
    /// AUTOMATIC1111's seed options: variation seed and strength, seed resize, ENSD.
    pub seed_options: SeedSettings,
    pub seed: u64,
    pub priority: i32,
    /// Subfolder of the output root.
    pub output: String,
    pub keep_top: Option<u32>,
    pub rerank: Option<bool>,
    pub rejected: Rejected,
    pub max_batch: u32,
    /// The SDXL refiner that takes over from the model, when the job names one.
    pub refiner: Option<JobRefiner>,
    /// SDXL's size and aesthetic conditioning (diffusers' defaults when the job sets none).
    pub sdxl: SdxlConditioning,
    /// LoRAs applied for this job (not fused into the model), in the order its tags name them.
    pub loras: Vec<JobLora>,
}

/// A LoRA a job applies itself: its `<lora:name:weight>` tag and the file found for it in
/// `loras.dirs`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobLora {
    /// AUTOMATIC1111's name: the file stem.
    pub name: String,
    pub file: PathBuf,
    pub weight: f64,
}

/// An SDXL refiner named by a job: config.yaml's model name, and the fraction of the schedule
/// the base model runs before it takes over.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRefiner {
    pub model: String,
    pub start: f64,
}

/// A job's AUTOMATIC1111 seed options; the default changes nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SeedSettings {
    /// The variation seed of candidate 0 (candidate i: + i), with its strength.
    pub subseed: Option<(u64, f32)>,
    /// (width, height) in pixels the seeds' noise was drawn at.
    pub resize_from: Option<(u32, u32)>,
    pub eta_noise_seed_delta: u64,
}

impl SeedSettings {
    /// The pipeline's options for the candidates with these indices.
    pub fn for_candidates(&self, candidates: impl Iterator<Item = usize>) -> SeedOptions {
        SeedOptions {
            subseeds: self
                .subseed
                .map(|(s, _)| candidates.map(|i| s.wrapping_add(i as u64)).collect()),
            subseed_strength: self.subseed.map_or(0.0, |(_, strength)| strength),
            resize_from: self.resize_from,
            eta_noise_seed_delta: self.eta_noise_seed_delta,
        }
    }
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
        && name.chars().all(crate::sys::names::is_plain)
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
pub fn load(path: &Path, config: &dyn JobSettings) -> Result<Job, JobError> {
    resolve_file(
        &read::read(path, config.limits().max_job_bytes)?,
        config,
        PromptFiles::Read,
    )
}

/// Reads and resolves a job file in the spool, as the daemon takes it: a `prompt_file` must come
/// with its `prompt_lines`, and every size must fit the model ([`fits_model`]).
pub fn load_spooled(path: &Path, config: &dyn JobSettings) -> Result<Job, JobError> {
    let file = read::read(path, config.limits().max_job_bytes)?;
    let job = resolve_file(&file, config, PromptFiles::Refuse)?;
    fits_model(&job, config, path)?;
    Ok(job)
}

/// Resolves a job file that was read: the job's id defaults to the file's stem and its seed to
/// the file's ([`JobFile::seed`]).
pub fn resolve_file(
    file: &JobFile,
    config: &dyn JobSettings,
    files: PromptFiles,
) -> Result<Job, JobError> {
    let spec = read::parse(file)?;
    let stem = file
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("job");
    resolve_with(spec, stem, &file.path, config, file.seed, files)
}

/// Fills in defaults and checks every field against the configuration's models and limits
/// (reading a `prompt_file` relative to `file`).
pub fn resolve(
    spec: JobSpec,
    stem: &str,
    file: &Path,
    config: &dyn JobSettings,
    fallback_seed: u64,
) -> Result<Job, JobError> {
    resolve_with(spec, stem, file, config, fallback_seed, PromptFiles::Read)
}

/// [`resolve`], choosing whether a prompt file may be read.
pub fn resolve_with(
    spec: JobSpec,
    stem: &str,
    file: &Path,
    config: &dyn JobSettings,
    fallback_seed: u64,
    files: PromptFiles,
) -> Result<Job, JobError> {
    resolve::resolve(spec, stem, file, config, fallback_seed, files)
}

/// Every prompt's width and height against the model's size rule
/// ([`ModelFolder::check_side`]: the VAE's downsampling times the UNet's), as the pipeline checks
/// them before rendering: the first that does not fit, naming the field.
pub fn sizes_fit(job: &Job, folder: &ModelFolder, job_file: &Path) -> Result<(), JobError> {
    for p in &job.prompts {
        for (field, v) in [("width", p.width), ("height", p.height)] {
            folder.check_side(v).map_err(|problem| JobError {
                file: job_file.to_path_buf(),
                field: field.to_string(),
                message: format!("{problem} (model {:?})", job.model),
            })?;
        }
    }
    Ok(())
}

/// The model families a job's SDXL fields need: `refiner` only on an SDXL base model and naming
/// an SDXL refiner (`refiner_family` the family of its folder, when it could be read), the size
/// and aesthetic conditioning only on the SDXL families, no negative prompt on an LCM model.
pub fn families_fit(
    job: &Job,
    family: Family,
    refiner_family: Option<Family>,
    job_file: &Path,
) -> Result<(), JobError> {
    let err = |field: &str, message: String| JobError {
        file: job_file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    if let Some(r) = &job.refiner {
        if family != Family::Sdxl {
            return Err(err(
                "refiner",
                format!(
                    "is for SDXL base models; model {:?} is of the {family} family",
                    job.model
                ),
            ));
        }
        if let Some(f) = refiner_family
            && f != Family::SdxlRefiner
        {
            return Err(err(
                "refiner",
                format!(
                    "names model {:?} of the {f} family; a refiner must be of the {} family",
                    r.model,
                    Family::SdxlRefiner
                ),
            ));
        }
    }
    // diffusers' LatentConsistencyModelPipeline takes no negative prompt: guidance is folded
    // into the distilled UNet (`timestep_cond`), so a negative prompt would be ignored.
    if family == Family::Lcm
        && let Some((i, _)) = job
            .prompts
            .iter()
            .enumerate()
            .find(|(_, p)| !p.negative.is_empty())
    {
        return Err(err(
            "negative",
            format!(
                "is set (prompt {}); model {:?} is of the {family} family, whose UNet folds \
                 guidance in (`timestep_cond`) and takes no negative prompt",
                i + 1,
                job.model
            ),
        ));
    }
    let sdxl = matches!(family, Family::Sdxl | Family::SdxlRefiner);
    if !sdxl && job.sdxl != SdxlConditioning::default() {
        let d = SdxlConditioning::default();
        let c = &job.sdxl;
        let field = [
            ("original_size", c.original_size != d.original_size),
            ("crop_top_left", c.crop_top_left != d.crop_top_left),
            ("target_size", c.target_size != d.target_size),
            ("aesthetic_score", c.aesthetic_score != d.aesthetic_score),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map_or("negative_aesthetic_score", |(f, _)| f);
        return Err(err(
            field,
            format!(
                "is SDXL conditioning; model {:?} is of the {family} family",
                job.model
            ),
        ));
    }
    Ok(())
}

/// [`sizes_fit`] and [`families_fit`] for the job's model (and refiner), when its folder can be
/// read here; a folder that cannot is reported by whatever loads the model.
pub fn fits_model(job: &Job, config: &dyn JobSettings, job_file: &Path) -> Result<(), JobError> {
    let open = |name: &str| {
        config
            .models()
            .get(name)
            .and_then(|m| ModelFolder::open(&m.path).ok())
    };
    let Some(folder) = open(&job.model) else {
        return Ok(());
    };
    let refiner = job.refiner.as_ref().and_then(|r| open(&r.model));
    folders_fit(job, &folder, refiner.as_ref(), job_file)
}

/// [`sizes_fit`] and [`families_fit`] for the job's model folder and its refiner's (when it
/// names one and that folder was read): what the daemon checks at claim ([`fits_model`]) and
/// `sdspool check` reports.
pub fn folders_fit(
    job: &Job,
    folder: &ModelFolder,
    refiner: Option<&ModelFolder>,
    job_file: &Path,
) -> Result<(), JobError> {
    sizes_fit(job, folder, job_file)?;
    families_fit(job, folder.family, refiner.map(|f| f.family), job_file)
}
