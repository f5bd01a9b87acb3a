//! `manifest.json`: what a job rendered, with which settings and provider, how long each phase
//! took, and every candidate with its prompt, seed, file, scores and rank. It is rewritten
//! (atomically) after every batch, so it is also the checkpoint a resumed job continues from.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::engine::noise::RngKind;
use crate::engine::pipeline::CandidateFailure;
use crate::engine::scheduler::SchedulerKind;
use crate::jobs::output::folder::Folder;

/// File name inside the job's output folder.
pub const FILE: &str = "manifest.json";

/// Milliseconds spent per phase, summed over the job (and over its resumed runs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimings {
    pub text_ms: u64,
    pub denoise_ms: u64,
    pub decode_ms: u64,
    pub rerank_ms: u64,
    pub write_ms: u64,
    pub total_ms: u64,
}

/// One candidate image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateEntry {
    pub candidate: usize,
    pub seed: u64,
    /// Path relative to the job's output folder (`rejected/...` once moved out by keep_top;
    /// `null` once deleted by keep_top with `rejected: delete`).
    pub file: Option<String>,
    /// Raw cosine similarity between the image and its prompt (CLIP), when reranked.
    pub cosine: Option<f32>,
    /// `100 * max(cosine, 0)`.
    pub clip_score: Option<f32>,
    /// 1 is the best of its prompt; ties go to the lower candidate index.
    pub rank: Option<usize>,
    /// Within `keep_top` (or no keep_top); false for a failed candidate.
    pub kept: bool,
    /// Why the candidate has no image (its value went NaN or infinite), when it failed; the
    /// job's other candidates are rendered and written all the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<CandidateFailure>,
}

/// One prompt and its candidates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptEntry {
    pub index: usize,
    pub prompt: String,
    pub negative: String,
    /// The settings this prompt is rendered with (a sweep gives each prompt its own).
    #[serde(default)]
    pub steps: u32,
    #[serde(default)]
    pub guidance: f32,
    /// The scheduler that ran (the model's own when the job names none); none (written as an
    /// empty string) until then.
    #[serde(default, with = "scheduler_name")]
    pub scheduler: Option<SchedulerKind>,
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    /// Its sweep and its value on each axis of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::jobs::job::SweepCell>,
    /// Denoising steps the SDXL refiner ran of this prompt's schedule (the rest the model ran),
    /// once rendered, when the job names a refiner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refiner_steps: Option<u32>,
    /// Words the tokenizer cut off.
    pub truncated: Option<String>,
    pub candidates: Vec<CandidateEntry>,
    /// Scored, ranked, keep_top applied and contact sheet written.
    pub finished: bool,
    pub contact_sheet: Option<String>,
}

/// The whole manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub job: String,
    /// Identifies the job's settings; a resumed run continues only a manifest with the same one
    /// (see [`super::fingerprint`]).
    pub fingerprint: String,
    /// How `fingerprint` was computed; manifests written before this field are version 1.
    #[serde(default = "legacy_fingerprint_version")]
    pub fingerprint_version: u32,
    pub model: String,
    /// Where the model came from (its provenance file or configured checkpoint), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_source: Option<ModelSource>,
    /// `scheduler`, `steps`, `guidance`, `width` and `height`: those of the first prompt; each
    /// prompt's own are in `prompts` (they differ in a sweep). None (an empty string in the file)
    /// when the job names none and nothing has run yet.
    #[serde(with = "scheduler_name")]
    pub scheduler: Option<SchedulerKind>,
    /// The provider ONNX Runtime really runs the UNet on.
    pub execution_provider: String,
    pub steps: u32,
    pub guidance: f32,
    pub width: u32,
    pub height: u32,
    pub rng: RngKind,
    /// The SDXL refiner that takes over from `model`, when the job names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refiner: Option<RefinerEntry>,
    pub rerank_model: Option<String>,
    pub keep_top: Option<u32>,
    pub complete: bool,
    /// How many runs (the first and each resume) worked on it.
    pub runs: u32,
    pub timings: PhaseTimings,
    pub prompts: Vec<PromptEntry>,
    /// One grid image per sweep, written once all its prompts are finished.
    #[serde(default)]
    pub grids: Vec<GridEntry>,
}

/// The SDXL refiner of a job and where it takes over (diffusers' `denoising_end` of the model
/// and `denoising_start` of the refiner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefinerEntry {
    /// Its name in the configuration.
    pub model: String,
    /// The job's `refiner_start`: the fraction of the schedule the model runs.
    pub start: f64,
    /// Denoising steps the refiner ran of the first prompt's schedule (each prompt's own are its
    /// `refiner_steps`; they differ in a sweep of steps); none until it has run.
    pub steps: Option<u32>,
}

/// The single-file checkpoint a model folder was made from and the LoRAs fused into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSource {
    /// The checkpoint's file name.
    pub checkpoint: Option<String>,
    /// AUTOMATIC1111's `Model hash` of it (the first 10 hex digits of its SHA-256).
    pub model_hash: Option<String>,
    #[serde(default)]
    pub loras: Vec<LoraEntry>,
}

/// A LoRA fused into a model: AUTOMATIC1111's name for it and its weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraEntry {
    pub name: String,
    pub weight: f64,
}

/// The grid image of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridEntry {
    /// The sweep (`sweep.group` of its prompts).
    pub group: usize,
    /// `sweep000-grid.png`.
    pub file: String,
    /// The text of the sweep's first prompt.
    pub prompt: String,
    /// The axes across (column headings) and down (row headings), outermost first.
    pub across: Vec<String>,
    pub down: Vec<String>,
    pub cells: Vec<GridCell>,
}

/// One cell of a grid: the prompt (variant) and which of its candidates it shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridCell {
    pub prompt: usize,
    pub candidate: usize,
    pub file: String,
    pub column: usize,
    pub row: usize,
}

/// A scheduler as its sdspool name, none as an empty string (the form manifests have always
/// had, so that those of earlier releases read and resume).
mod scheduler_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::engine::scheduler::SchedulerKind;

    pub fn serialize<S: Serializer>(k: &Option<SchedulerKind>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(k.map_or("", SchedulerKind::name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SchedulerKind>, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() {
            return Ok(None);
        }
        name.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// The fingerprint version of a manifest that has no `fingerprint_version` (the releases before
/// versioned fingerprints; see `fingerprint::legacy`).
pub const LEGACY_FINGERPRINT_VERSION: u32 = 1;

fn legacy_fingerprint_version() -> u32 {
    LEGACY_FINGERPRINT_VERSION
}

impl Manifest {
    /// Reads the manifest in the folder at `dir` (a link in place of the manifest is not
    /// followed); `None` when there is none or it cannot be parsed (a manifest is always written
    /// atomically, so a broken one was not written by sdspool).
    pub fn read(dir: &Path) -> Option<Manifest> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(dir.join(FILE))
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        let mut text = String::new();
        file.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Reads the manifest in `dir`, like [`Manifest::read`].
    pub fn read_in(dir: &Folder) -> Option<Manifest> {
        let bytes = dir.read_at(FILE).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes the manifest atomically into the folder at `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        crate::sys::atomic::write(&dir.join(FILE), &self.to_json()?)
    }

    /// Writes the manifest atomically into `dir`.
    pub fn write_in(&self, dir: &Folder) -> std::io::Result<()> {
        dir.write(FILE, &self.to_json()?)
    }

    fn to_json(&self) -> std::io::Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(std::io::Error::other)
    }

    /// Every candidate entry.
    pub fn candidates(&self) -> impl Iterator<Item = &CandidateEntry> {
        self.prompts.iter().flat_map(|p| p.candidates.iter())
    }

    /// The candidates that failed, with their prompt.
    pub fn failed(&self) -> impl Iterator<Item = (&PromptEntry, &CandidateEntry)> {
        self.prompts.iter().flat_map(|p| {
            p.candidates
                .iter()
                .filter(|c| c.failure.is_some())
                .map(move |c| (p, c))
        })
    }

    /// How many candidates have an image file (as the manifest records it).
    pub fn images_written(&self) -> usize {
        self.candidates().filter(|c| c.file.is_some()).count()
    }

    /// The first prompt's text (empty for a manifest with none), to name the job in lists.
    pub fn first_prompt(&self) -> String {
        self.prompts
            .first()
            .map(|p| p.prompt.clone())
            .unwrap_or_default()
    }

    /// The candidates whose image is in the output folder `dir` now (what a job stopped
    /// part-way keeps).
    pub fn images_on_disk<'a>(
        &'a self,
        dir: &'a Path,
    ) -> impl Iterator<Item = &'a CandidateEntry> + 'a {
        self.candidates()
            .filter(move |c| c.file.as_ref().is_some_and(|f| dir.join(f).is_file()))
    }
}
