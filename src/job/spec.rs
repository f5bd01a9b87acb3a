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
//! ```

use serde::Deserialize;

/// A job file's fields. Unknown fields are rejected.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: Option<String>,
    pub model: Option<String>,
    pub prompts: Vec<PromptSpec>,
    pub negative: Option<String>,
    pub candidates: Option<u32>,
    pub steps: Option<u32>,
    pub guidance: Option<f64>,
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub rng: Option<String>,
    pub priority: Option<i32>,
    pub output: Option<String>,
    pub keep_top: Option<u32>,
    pub rerank: Option<bool>,
    pub rejected: Option<String>,
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
}

/// Field names, for "did you mean" suggestions.
pub const JOB_FIELDS: &[&str] = &[
    "id",
    "model",
    "prompts",
    "negative",
    "candidates",
    "steps",
    "guidance",
    "scheduler",
    "seed",
    "width",
    "height",
    "rng",
    "priority",
    "output",
    "keep_top",
    "rerank",
    "rejected",
];
pub const PROMPT_FIELDS: &[&str] = &["prompt", "negative", "candidates", "seed", "seeds"];
