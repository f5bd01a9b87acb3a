//! The job file as users write it: YAML, every field but `prompts` optional.
//!
//! ```yaml
//! id: cats-2026-11-24        # default: the file name without .yaml
//! model: tiny-sd             # default: config.yaml's default_model
//! prompts:
//!   - a photo of a cat
//!   - prompt: a watercolor of a cat
//!     negative: blurry
//!     candidates: 2
//!     seeds: [7, 99]
//! negative: low quality      # default negative prompt for every prompt
//! candidates: 4              # per prompt
//! steps: 25
//! guidance: 7.5
//! scheduler: euler_a         # default: the model's own scheduler
//! seed: 1234                 # candidate i of a prompt gets seed + i
//! width: 512
//! height: 512
//! refiner: tiny-sdxl-refiner # SDXL: a refiner model takes over at refiner_start (0.8)
//! original_size: [1024, 1024] # SDXL size conditioning, [width, height] (also target_size,
//! crop_top_left: [0, 0]       # crop_top_left as [left, top]); aesthetic_score for the refiner
//! ```
//!
//! Sweeps: `steps`, `guidance`, `scheduler` and `size` (`512x768`, instead of width and height)
//! take a list as well as one value, at job level and per prompt; every prompt is rendered with
//! every combination (see [`super::sweep`]). `seeds: [..]` or `seed_count: n` give every prompt
//! its candidates' seeds. `prompt_matrix: true` reads `a | b | c` as AUTOMATIC1111's prompt
//! matrix; `prompt_file: prompts.txt` adds one prompt a line (see [`super::prompt_file`]).

use std::str::FromStr;

use serde::Deserialize;

use crate::engine::noise::RngKind;
use crate::engine::prompt::PromptSyntax;
use crate::engine::scheduler::{SchedulerError, SchedulerKind};
use crate::engine::tokenizer::TextCleaning;

/// A job file's fields. Unknown fields are rejected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: Option<String>,
    pub model: Option<String>,
    /// May be empty when `prompt_file` gives the prompts.
    #[serde(default)]
    pub prompts: Vec<PromptSpec>,
    /// A text file beside the job file, one prompt a line.
    pub prompt_file: Option<String>,
    /// The lines of `prompt_file`, embedded by `sdspool submit` so that a job in the spool never
    /// reads files; also usable directly.
    pub prompt_lines: Option<Vec<String>>,
    /// Read `a | b | c` in prompts as a prompt matrix.
    pub prompt_matrix: Option<bool>,
    pub negative: Option<String>,
    pub candidates: Option<u32>,
    pub steps: Option<OneOrMany<u32>>,
    pub guidance: Option<OneOrMany<f64>>,
    pub scheduler: Option<OneOrMany<SchedulerChoice>>,
    /// `512x768`, or a list of sizes; instead of width and height.
    pub size: Option<OneOrMany<Size>>,
    pub seed: Option<u64>,
    /// The seeds of every prompt's candidates.
    pub seeds: Option<Vec<u64>>,
    /// Candidates per prompt with seeds `seed`, `seed + 1`, ...
    pub seed_count: Option<u32>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub rng: Option<RngKind>,
    /// `a1111` (AUTOMATIC1111's emphasis, editing, long prompts) or `plain`.
    pub prompt_syntax: Option<PromptSyntax>,
    /// AUTOMATIC1111's CLIP skip: 1 (none) to 12.
    pub clip_skip: Option<u32>,
    /// AUTOMATIC1111's variation seed (candidate i uses subseed + i) and its strength, 0 to 1.
    pub subseed: Option<u64>,
    pub subseed_strength: Option<f64>,
    /// The size the seeds' noise was drawn at (AUTOMATIC1111's "resize seed from").
    pub seed_resize_from_w: Option<u32>,
    pub seed_resize_from_h: Option<u32>,
    /// AUTOMATIC1111's ENSD: the per-step noise of ancestral samplers from seed + this.
    pub eta_noise_seed_delta: Option<u64>,
    /// `clip` (CLIP's own clean-up with ftfy's fixes, as AUTOMATIC1111 has it) or `basic`
    /// (transformers without ftfy, as diffusers usually runs).
    pub text_cleaning: Option<TextCleaning>,
    /// AUTOMATIC1111's infotext (a PNG's `parameters`): the job's prompt and settings, where the
    /// job file does not give them itself.
    pub infotext: Option<String>,
    pub priority: Option<i32>,
    pub output: Option<String>,
    pub keep_top: Option<u32>,
    pub rerank: Option<bool>,
    pub rejected: Option<Rejected>,
    /// An SDXL refiner model (config.yaml's name) that takes over from the base model at
    /// `refiner_start`, as diffusers' `denoising_end` / `denoising_start` hand over.
    pub refiner: Option<String>,
    /// Fraction of the schedule the base model runs before the refiner takes over, in (0, 1).
    pub refiner_start: Option<f64>,
    /// SDXL size conditioning, each `[width, height]` (diffusers' `original_size`,
    /// `crops_coords_top_left` as `[left, top]`, `target_size`); default: the image's size,
    /// `[0, 0]`, the image's size.
    pub original_size: Option<[u32; 2]>,
    pub crop_top_left: Option<[u32; 2]>,
    pub target_size: Option<[u32; 2]>,
    /// The SDXL refiner's aesthetic-score conditioning (diffusers' defaults 6.0 and 2.5).
    pub aesthetic_score: Option<f64>,
    pub negative_aesthetic_score: Option<f64>,
}

/// A prompt: a plain string, or an object with its own settings.
#[derive(Debug, Clone)]
pub enum PromptSpec {
    Text(String),
    Full(PromptObject),
}

impl<'de> Deserialize<'de> for PromptSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PromptSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a prompt text, or an object with `prompt:` and its settings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PromptSpec, E> {
                Ok(PromptSpec::Text(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PromptSpec, A::Error> {
                PromptObject::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(PromptSpec::Full)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A prompt with settings of its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptObject {
    pub prompt: String,
    pub negative: Option<String>,
    pub candidates: Option<u32>,
    pub seed: Option<u64>,
    pub seeds: Option<Vec<u64>>,
    pub steps: Option<OneOrMany<u32>>,
    pub guidance: Option<OneOrMany<f64>>,
    pub scheduler: Option<OneOrMany<SchedulerChoice>>,
    pub size: Option<OneOrMany<Size>>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Deserializes a value written as a string through its [`FromStr`], the parse error as the
/// message (serde names the field).
fn from_string<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// What to do with candidates outside `keep_top`: `move` (to `rejected/`) or `delete`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rejected {
    #[default]
    Move,
    Delete,
}

/// A `rejected:` value that is neither `move` nor `delete`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is {0:?}; use `move` (to rejected/) or `delete`")]
pub struct UnknownRejected(pub String);

impl FromStr for Rejected {
    type Err = UnknownRejected;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "move" => Ok(Rejected::Move),
            "delete" => Ok(Rejected::Delete),
            other => Err(UnknownRejected(other.to_string())),
        }
    }
}

impl<'de> Deserialize<'de> for Rejected {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_string(d)
    }
}

/// An image size written `512x768` (width x height).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

/// A size that is not written `WIDTHxHEIGHT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a size; write it as WIDTHxHEIGHT, e.g. 512x768")]
pub struct SizeError(pub String);

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || SizeError(text.to_string());
        let (w, h) = text.trim().split_once(['x', 'X']).ok_or_else(bad)?;
        Ok(Size {
            width: w.trim().parse().map_err(|_| bad())?,
            height: h.trim().parse().map_err(|_| bad())?,
        })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_string(d)
    }
}

/// A scheduler named by sdspool's name (`euler_a`) or AUTOMATIC1111's sampler name
/// (`Euler a`, `DPM++ 2M Karras`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerChoice(pub SchedulerKind);

impl FromStr for SchedulerChoice {
    type Err = SchedulerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        super::prompt_file::scheduler_from_a1111(name).map(SchedulerChoice)
    }
}

impl<'de> Deserialize<'de> for SchedulerChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_string(d)
    }
}

/// One value, or a list of values to sweep over.
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values, in order.
    pub fn values(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }

    /// Whether it was written as a list.
    pub fn is_list(&self) -> bool {
        matches!(self, OneOrMany::Many(_))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IntoDeserializer as _;
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OneOrMany::Many(out))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(OneOrMany::One)
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

/// Field names, for "did you mean" suggestions.
pub const JOB_FIELDS: &[&str] = &[
    "id",
    "model",
    "prompts",
    "prompt_file",
    "prompt_lines",
    "prompt_matrix",
    "size",
    "seeds",
    "seed_count",
    "negative",
    "candidates",
    "steps",
    "guidance",
    "scheduler",
    "seed",
    "width",
    "height",
    "rng",
    "prompt_syntax",
    "clip_skip",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "eta_noise_seed_delta",
    "infotext",
    "text_cleaning",
    "priority",
    "output",
    "keep_top",
    "rerank",
    "rejected",
    "refiner",
    "refiner_start",
    "original_size",
    "crop_top_left",
    "target_size",
    "aesthetic_score",
    "negative_aesthetic_score",
];
pub const PROMPT_FIELDS: &[&str] = &[
    "prompt",
    "negative",
    "candidates",
    "seed",
    "seeds",
    "steps",
    "guidance",
    "scheduler",
    "size",
    "width",
    "height",
];
