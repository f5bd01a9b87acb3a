//! Resolving a parsed job file into a [`Job`]: defaults filled in, every field checked against
//! the configuration's models and limits, sweeps and prompt matrices expanded. Each step is a
//! method of [`Resolver`]; every prompt as written (an entry of `prompts:` or a line of the
//! prompt file) goes through the same [`Resolver::source`].

use std::path::Path;

use super::fields::{Checks, Field, SizeAt};
use super::infotext;
use super::job_loras::{self, Tag};
use super::prompt_file::{self, Line};
use super::spec::{JobSpec, OneOrMany, PromptSpec, SchedulerChoice, Size};
use super::sweep::{self, Lists, SweepCell};
use super::{Job, JobError, JobPrompt, JobRefiner, PromptFiles, SeedSettings, valid_name};
use crate::engine::model::checkpoint_hash::CheckpointHash;
use crate::engine::model::config::ModelConfig;
use crate::engine::pipeline::SdxlConditioning;
use crate::engine::prompt::{self, PromptSyntax};
use crate::jobs::settings::JobSettings;

/// config.yaml's models as an infotext is matched against them: a model's hash is its
/// configured checkpoint's or its provenance file's.
struct ConfiguredModels<'a>(&'a std::collections::BTreeMap<String, ModelConfig>);

impl infotext::ModelCatalog for ConfiguredModels<'_> {
    fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    fn hash(&self, name: &str) -> Result<Option<CheckpointHash>, String> {
        let Some(config) = self.0.get(name) else {
            return Ok(None);
        };
        let provenance = config
            .provenance()
            .map_err(|e| format!("model `{name}`: {e}"))?;
        config
            .checkpoint_hash(provenance.as_ref())
            .map_err(|e| format!("model `{name}`: {e}"))
    }
}

/// Where a refiner takes over when the job does not say: diffusers' documented 0.8.
pub const DEFAULT_REFINER_START: f64 = 0.8;

/// Fills in defaults and checks every field (see [`super::resolve_with`]).
pub(super) fn resolve(
    spec: JobSpec,
    stem: &str,
    file: &Path,
    config: &dyn JobSettings,
    fallback_seed: u64,
    files: PromptFiles,
) -> Result<Job, JobError> {
    let r = Resolver {
        checks: Checks {
            file,
            limits: config.limits(),
        },
        config,
    };
    let mut spec = spec;
    let loras = r.infotext(&mut spec)?;
    let (id, output, model) = r.names(&spec, stem)?;
    let (mut lora_sets, mut lora_hashes) = (Vec::new(), Vec::new());
    if let Some(loras) = loras {
        let own = r.infotext_loras(&loras, &model)?;
        if !own.is_empty() {
            lora_hashes = loras.hashes.clone();
            lora_sets.push((Field::named("infotext"), own));
        }
    }
    let job_lists = r.job_lists(&spec)?;
    let model_name = model.clone();
    let shared = r.shared(&spec, &job_lists, fallback_seed, &model_name)?;
    let (lines, line_field) = r.prompt_lines(&spec, files)?;
    r.written_count(&spec, lines.len())?;
    let matrix = spec.prompt_matrix.unwrap_or(false);
    let prompts = spec
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Ok(Written::of_prompt(i, p)))
        .chain(lines.iter().map(|l| r.of_line(l, line_field)))
        .map(|w| w.and_then(|w| r.source(&w, &shared, matrix)))
        .collect::<Result<Vec<_>, _>>()?;
    r.expanded_limits(&prompts, matrix)?;
    // with an infotext's LoRAs, prompts that name none take those
    let infotext_set = !lora_sets.is_empty();
    lora_sets.extend(
        prompts
            .iter()
            .filter(|p| !(infotext_set && p.loras.is_empty()))
            .map(|p| (p.at.clone(), p.loras.clone())),
    );
    let job_loras = job_loras::resolve(&lora_sets, &lora_hashes, &model, config, &r.checks)?;
    r.rerank(&spec)?;
    let (refiner, sdxl) = r.sdxl(&spec)?;
    let defaults = &config.defaults();
    Ok(Job {
        id,
        model,
        prompts: expand(prompts, matrix),
        steps: job_lists.steps[0],
        guidance: job_lists.guidance[0] as f32,
        scheduler: job_lists.schedulers[0],
        width: job_lists.sizes[0].0,
        height: job_lists.sizes[0].1,
        rng: spec.rng.unwrap_or(defaults.rng),
        prompt_syntax: spec.prompt_syntax.unwrap_or(defaults.prompt_syntax),
        clip_skip: r.clip_skip(&spec)?,
        text_cleaning: spec.text_cleaning.unwrap_or(defaults.text_cleaning),
        seed_options: r.seed_settings(&spec)?,
        seed: shared.seed,
        priority: spec.priority.unwrap_or(0),
        output,
        keep_top: spec.keep_top,
        rerank: spec.rerank,
        rejected: spec.rejected.unwrap_or_default(),
        max_batch: defaults.max_batch.max(1),
        refiner,
        sdxl,
        loras: job_loras,
    })
}

/// The settings a job or a prompt gives itself: each one value, or a list to sweep over.
#[derive(Debug, Clone, Default)]
struct Settings {
    size: Option<OneOrMany<Size>>,
    width: Option<u32>,
    height: Option<u32>,
    scheduler: Option<OneOrMany<SchedulerChoice>>,
    steps: Option<OneOrMany<u32>>,
    guidance: Option<OneOrMany<f64>>,
}

/// What every prompt gets that does not say otherwise.
struct Shared<'a> {
    lists: &'a Lists,
    negative: &'a str,
    candidates: u32,
    seed: u64,
    seeds: Option<&'a [u64]>,
    /// How prompts are read: AUTOMATIC1111's syntax is checked here.
    syntax: PromptSyntax,
    /// The job's model, whose fused LoRAs `<lora:name:weight>` tags must name.
    model: &'a str,
}

/// One prompt as written: an entry of `prompts:` or a line of the prompt file.
struct Written<'a> {
    /// Where its text is (`prompts[2]`, a line): errors about the text name it.
    at: Field,
    /// Where its own settings are: the prompt object or the line; the job for a plain text.
    settings_at: Field,
    text: &'a str,
    /// Its own negative prompt, and where that is written.
    negative: Option<(&'a str, Field)>,
    settings: Settings,
    candidates: Option<u32>,
    seeds: Option<&'a [u64]>,
    seed: Option<u64>,
}

impl<'a> Written<'a> {
    fn of_prompt(i: usize, prompt: &'a PromptSpec) -> Written<'a> {
        let at = Field::named("prompts").index(i);
        match prompt {
            PromptSpec::Text(text) => Written {
                at,
                settings_at: Field::job(),
                text,
                negative: None,
                settings: Settings::default(),
                candidates: None,
                seeds: None,
                seed: None,
            },
            PromptSpec::Full(o) => Written {
                negative: o.negative.as_deref().map(|n| (n, at.child("negative"))),
                settings_at: at.clone(),
                at,
                text: &o.prompt,
                settings: Settings {
                    size: o.size.clone(),
                    width: o.width,
                    height: o.height,
                    scheduler: o.scheduler.clone(),
                    steps: o.steps.clone(),
                    guidance: o.guidance.clone(),
                },
                candidates: o.candidates,
                seeds: o.seeds.as_deref(),
                seed: o.seed,
            },
        }
    }
}

/// A prompt as written, checked and with its settings resolved, not yet expanded.
struct Source {
    /// Where it is written.
    at: Field,
    /// The LoRAs its tags name that are not fused into the model (text, then negative prompt).
    loras: Vec<Tag>,
    text: String,
    negative: String,
    seeds: Vec<u64>,
    lists: Lists,
}

struct Resolver<'a> {
    checks: Checks<'a>,
    config: &'a dyn JobSettings,
}

impl<'a> Resolver<'a> {
    fn error(&self, at: &Field, message: impl std::fmt::Display) -> JobError {
        self.checks.error(at, message)
    }

    /// The job's id, output folder and model.
    fn names(&self, spec: &JobSpec, stem: &str) -> Result<(String, String, String), JobError> {
        let id = spec.id.clone().unwrap_or_else(|| stem.to_string());
        if !valid_name(&id) {
            let at = if spec.id.is_some() {
                Field::named("id")
            } else {
                Field::job()
            };
            return Err(self.error(
                &at,
                format!(
                    "job id {id:?} is not usable as a folder name: use letters, digits, '.', '_' and '-' (at most 100, not starting with '.')"
                ),
            ));
        }
        let output = spec.output.clone().unwrap_or_else(|| id.clone());
        if !valid_name(&output) {
            return Err(self.error(
                &Field::named("output"),
                format!(
                    "{output:?} is not a plain folder name: use letters, digits, '.', '_' and '-' (no '/' or '..')"
                ),
            ));
        }
        let config = self.config;
        let model = spec
            .model
            .clone()
            .unwrap_or_else(|| config.default_model_name().to_string());
        if !config.models().contains_key(&model) {
            let names: Vec<&str> = config.models().keys().map(String::as_str).collect();
            return Err(self.error(
                &Field::named("model"),
                format!(
                    "{model:?} is not configured; config.yaml has {}",
                    names.join(", ")
                ),
            ));
        }
        Ok((id, output, model))
    }

    /// The SDXL refiner (a configured model; its family is checked against its folder by
    /// [`super::families_fit`]) and size and aesthetic conditioning, over diffusers' defaults.
    fn sdxl(&self, spec: &JobSpec) -> Result<(Option<JobRefiner>, SdxlConditioning), JobError> {
        let c = &self.checks;
        let start_at = Field::named("refiner_start");
        let refiner = match (&spec.refiner, spec.refiner_start) {
            (None, Some(_)) => {
                return Err(self.error(
                    &start_at,
                    "is given without `refiner`; name the refiner model too",
                ));
            }
            (None, None) => None,
            (Some(model), start) => {
                if !self.config.models().contains_key(model) {
                    let names: Vec<&str> =
                        self.config.models().keys().map(String::as_str).collect();
                    return Err(self.error(
                        &Field::named("refiner"),
                        format!(
                            "{model:?} is not configured; config.yaml has {}",
                            names.join(", ")
                        ),
                    ));
                }
                let start = c.refiner_start(&start_at, start.unwrap_or(DEFAULT_REFINER_START))?;
                Some(JobRefiner {
                    model: model.clone(),
                    start,
                })
            }
        };
        let mut sdxl = SdxlConditioning::default();
        let pair = |name: &str, v: Option<[u32; 2]>, crop| {
            v.map(|v| c.sdxl_pair(&Field::named(name), v, crop))
                .transpose()
        };
        sdxl.original_size = pair("original_size", spec.original_size, false)?;
        sdxl.target_size = pair("target_size", spec.target_size, false)?;
        if let Some(crop) = pair("crop_top_left", spec.crop_top_left, true)? {
            sdxl.crop_top_left = crop;
        }
        if let Some(s) = spec.aesthetic_score {
            sdxl.aesthetic_score = c.aesthetic_score(&Field::named("aesthetic_score"), s)?;
        }
        if let Some(s) = spec.negative_aesthetic_score {
            sdxl.negative_aesthetic_score =
                c.aesthetic_score(&Field::named("negative_aesthetic_score"), s)?;
        }
        Ok((refiner, sdxl))
    }

    /// The job's own settings over `config.yaml`'s defaults (checked too).
    fn job_lists(&self, spec: &JobSpec) -> Result<Lists, JobError> {
        let d = &self.config.defaults();
        let job = Field::job();
        let defaults = Lists {
            sizes: vec![self.checks.size(SizeAt::Sides(&job), (d.width, d.height))?],
            schedulers: vec![None],
            steps: vec![self.checks.steps(&job.child("steps"), d.steps)?],
            guidance: vec![self.checks.guidance(&job.child("guidance"), d.guidance)?],
        };
        let settings = Settings {
            size: spec.size.clone(),
            width: spec.width,
            height: spec.height,
            scheduler: spec.scheduler.clone(),
            steps: spec.steps.clone(),
            guidance: spec.guidance.clone(),
        };
        self.lists(&job, &settings, &defaults)
    }

    /// `settings` written at `at`, checked, over `base` for what they leave out.
    fn lists(&self, at: &Field, settings: &Settings, base: &Lists) -> Result<Lists, JobError> {
        let c = &self.checks;
        let s = settings;
        Ok(Lists {
            sizes: c.sizes(at, s.size.as_ref(), (s.width, s.height), &base.sizes)?,
            schedulers: match &s.scheduler {
                None => base.schedulers.clone(),
                Some(v) => c.list(&at.child("scheduler"), v, |_, k| Ok(Some(k.0)))?,
            },
            steps: match &s.steps {
                None => base.steps.clone(),
                Some(v) => c.list(&at.child("steps"), v, |f, n| c.steps(f, n))?,
            },
            guidance: match &s.guidance {
                None => base.guidance.clone(),
                Some(v) => c.list(&at.child("guidance"), v, |f, g| c.guidance(f, g))?,
            },
        })
    }

    /// `subseed` with `subseed_strength` (0 to 1), `seed_resize_from_w/h` (both or neither, at
    /// least 8), `eta_noise_seed_delta`.
    fn seed_settings(&self, spec: &JobSpec) -> Result<SeedSettings, JobError> {
        let subseed = match (spec.subseed, spec.subseed_strength) {
            (_, Some(s)) if !(0.0..=1.0).contains(&s) => {
                return Err(self.error(
                    &Field::named("subseed_strength"),
                    format!("is {s}; it must be 0 to 1"),
                ));
            }
            (None, Some(s)) if s > 0.0 => {
                return Err(self.error(
                    &Field::named("subseed_strength"),
                    "needs `subseed`, the variation seed",
                ));
            }
            (Some(seed), strength) => Some((seed, strength.unwrap_or(0.0) as f32)),
            (None, _) => None,
        };
        let resize_from = match (spec.seed_resize_from_w, spec.seed_resize_from_h) {
            (None, None) => None,
            (Some(w), Some(h)) if w >= 8 && h >= 8 => Some((w, h)),
            (w, _) => {
                let field = if w.is_none_or(|w| w < 8) {
                    "seed_resize_from_w"
                } else {
                    "seed_resize_from_h"
                };
                return Err(self.error(
                    &Field::named(field),
                    "must be given with the other of seed_resize_from_w/h, at least 8 pixels",
                ));
            }
        };
        Ok(SeedSettings {
            subseed,
            resize_from,
            eta_noise_seed_delta: spec.eta_noise_seed_delta.unwrap_or(0),
        })
    }

    /// `infotext`: the fields it gives where the job file does not give them; the LoRAs it used,
    /// to be checked against the job's model ([`Self::infotext_loras`]).
    fn infotext(&self, spec: &mut JobSpec) -> Result<Option<infotext::LoraUse>, JobError> {
        let Some(text) = spec.infotext.clone() else {
            return Ok(None);
        };
        let at = Field::named("infotext");
        let refused =
            |r: infotext::Refused| self.error(&at, format!("`{}` {}", r.setting, r.message));
        let mut info = infotext::parse(&text);
        let loras = infotext::take_loras(&mut info).map_err(refused)?;
        let yaml =
            infotext::job_yaml(&info, &ConfiguredModels(self.config.models())).map_err(refused)?;
        let from =
            crate::sys::yaml::parse_with::<JobSpec>(&yaml, crate::sys::yaml::strict_options())
                .map_err(|e| self.error(&at, format!("`{}` {}", e.key, e.message)))?;
        infotext::fill(spec, from);
        Ok(Some(loras))
    }

    /// The LoRAs an infotext used: those fused into `model` (its provenance file's) must all be
    /// used at their weights, with hashes that agree; the others are applied per job (returned).
    fn infotext_loras(&self, loras: &infotext::LoraUse, model: &str) -> Result<Vec<Tag>, JobError> {
        let at = Field::named("infotext");
        let config = &self.config.models()[model];
        let provenance = config
            .provenance()
            .map_err(|e| self.error(&at, format!("model `{model}`: {e}")))?;
        let fused = provenance.as_ref().map_or(&[][..], |p| &p.loras[..]);
        let is_fused = |name: &str| fused.iter().any(|l| l.name == name);
        let own = job_loras::unfused(&loras.tags, model, fused)
            .map_err(|m| self.error(&at, format!("`Prompt` {m}")))?;
        let fused_use = infotext::LoraUse {
            tags: loras
                .tags
                .iter()
                .filter(|(n, _)| is_fused(n))
                .cloned()
                .collect(),
            hashes: loras
                .hashes
                .iter()
                .filter(|(n, _)| is_fused(n) || !own.iter().any(|(o, _)| o == n))
                .cloned()
                .collect(),
        };
        fused_use
            .check(model, fused)
            .map_err(|r| self.error(&at, format!("`{}` {}", r.setting, r.message)))?;
        Ok(own)
    }

    /// `clip_skip`: 1 (none, the default) to 12, as AUTOMATIC1111 offers it.
    fn clip_skip(&self, spec: &JobSpec) -> Result<u32, JobError> {
        match spec.clip_skip {
            None => Ok(1),
            Some(n @ 1..=12) => Ok(n),
            Some(n) => Err(self.error(
                &Field::named("clip_skip"),
                format!("is {n}; it must be 1 (no skip) to 12"),
            )),
        }
    }

    /// What every prompt gets: the job's settings, negative prompt, candidates and seeds.
    fn shared<'s>(
        &self,
        spec: &'s JobSpec,
        lists: &'s Lists,
        fallback_seed: u64,
        model: &'s str,
    ) -> Result<Shared<'s>, JobError> {
        // Candidates per prompt: `candidates`, `seed_count` or the length of `seeds`, which
        // must agree.
        let mut candidates = None;
        for (field, n) in [
            ("candidates", spec.candidates),
            ("seed_count", spec.seed_count),
            ("seeds", spec.seeds.as_ref().map(|s| s.len() as u32)),
        ] {
            let Some(n) = n else { continue };
            match candidates {
                Some((other, m)) if m != n => {
                    return Err(self.error(
                        &Field::named(field),
                        format!("says {n} candidates but `{other}` says {m}; give one of them"),
                    ));
                }
                _ => candidates = Some((field, n)),
            }
        }
        let negative = spec.negative.as_deref().unwrap_or_default();
        self.checks
            .prompt_chars(&Field::named("negative"), negative.chars().count(), false)?;
        Ok(Shared {
            lists,
            negative,
            candidates: candidates.map_or(self.config.defaults().candidates, |(_, n)| n),
            seed: spec.seed.unwrap_or(fallback_seed),
            seeds: spec.seeds.as_deref(),
            syntax: spec
                .prompt_syntax
                .unwrap_or(self.config.defaults().prompt_syntax),
            model,
        })
    }

    /// The lines of the prompt file (embedded as `prompt_lines`, or read when `files` allows),
    /// and the field their errors name.
    fn prompt_lines(
        &self,
        spec: &JobSpec,
        files: PromptFiles,
    ) -> Result<(Vec<Line>, &'static str), JobError> {
        let field = if spec.prompt_file.is_some() {
            "prompt_file"
        } else {
            "prompt_lines"
        };
        let at = Field::named(field);
        let lines = match (&spec.prompt_lines, &spec.prompt_file) {
            (Some(lines), _) => prompt_file::parse(lines)
                .map_err(|e| self.error(&Field::named("prompt_lines"), e))?,
            (None, Some(name)) => match files {
                PromptFiles::Read => {
                    let max = self.config.limits().max_job_bytes;
                    let lines = prompt_file::read(self.checks.file, name, max)
                        .map_err(|e| self.error(&at, e))?;
                    prompt_file::parse(&lines)
                        .map_err(|e| self.error(&at, format!("{name}: {e}")))?
                }
                PromptFiles::Refuse => {
                    return Err(self.error(
                        &at,
                        format!(
                            "{name:?}: a job in the spool does not read other files; submit it with `sdspool submit`, which embeds the prompt file's lines as `prompt_lines`"
                        ),
                    ));
                }
            },
            (None, None) => Vec::new(),
        };
        Ok((lines, field))
    }

    /// At least one prompt, and at most `limits.max_prompts` as written.
    fn written_count(&self, spec: &JobSpec, lines: usize) -> Result<(), JobError> {
        let written = spec.prompts.len() + lines;
        if written == 0 {
            let field = if spec.prompt_file.is_some() || spec.prompt_lines.is_some() {
                "prompt_file"
            } else {
                "prompts"
            };
            return Err(self.error(
                &Field::named(field),
                "is empty: a job needs at least one prompt",
            ));
        }
        let max = self.config.limits().max_prompts;
        if written > max as usize {
            return Err(self.error(
                &Field::named("prompts"),
                format!("has {written} prompts; the limit is {max} (limits.max_prompts)"),
            ));
        }
        Ok(())
    }

    /// A line of the prompt file as a prompt as written.
    fn of_line(&self, line: &'a Line, field: &'static str) -> Result<Written<'a>, JobError> {
        let at = Field::Line {
            field,
            number: line.number,
        };
        let scheduler = match &line.scheduler {
            Some(name) => Some(OneOrMany::One(SchedulerChoice(
                prompt_file::scheduler_from_a1111(name).map_err(|e| self.error(&at, e))?,
            ))),
            None => None,
        };
        Ok(Written {
            negative: line.negative.as_deref().map(|n| (n, at.clone())),
            settings_at: at.clone(),
            at,
            text: &line.prompt,
            settings: Settings {
                size: None,
                width: line.width,
                height: line.height,
                scheduler,
                steps: line.steps.map(OneOrMany::One),
                guidance: line.guidance.map(OneOrMany::One),
            },
            candidates: line.candidates,
            seeds: None,
            seed: line.seed,
        })
    }

    /// One prompt as written, checked: its settings over the job's, its text and negative
    /// prompt, its candidates' seeds (its own `seeds`, else `seed` and `candidates`, else the
    /// job's).
    fn source(&self, w: &Written, shared: &Shared, matrix: bool) -> Result<Source, JobError> {
        let lists = self.lists(&w.settings_at, &w.settings, shared.lists)?;
        if w.text.trim().is_empty() {
            let message = if w.at.is_line() {
                "the prompt is empty"
            } else {
                "is empty"
            };
            return Err(self.error(&w.at, message));
        }
        let negative = w.negative.as_ref().map_or(shared.negative, |(n, _)| n);
        let negative_at = w
            .negative
            .as_ref()
            .map_or_else(|| Field::named("negative"), |(_, at)| at.clone());
        let (text, mut loras) = self.without_lora_tags(w.text, &w.at, shared)?;
        let (negative, negative_loras) = self.without_lora_tags(negative, &negative_at, shared)?;
        for tag in negative_loras {
            if !loras.iter().any(|(n, _)| *n == tag.0) {
                loras.push(tag);
            }
        }
        let (text, negative) = (text.as_str(), negative.as_str());
        if text.contains('\0') || negative.contains('\0') {
            return Err(self.error(&w.at, "contains a NUL character"));
        }
        let chars = sweep::longest_text_chars(text, matrix);
        self.checks
            .prompt_chars(&w.at, chars, matrix && text.contains('|'))?;
        if let Some((n, at)) = &w.negative {
            self.checks.prompt_chars(at, n.chars().count(), false)?;
        }
        if shared.syntax == PromptSyntax::A1111 {
            for (text, at) in [(text, &w.at), (negative, &negative_at)] {
                for &steps in &lists.steps {
                    if let Err(e) = prompt::read(text, steps as usize) {
                        return Err(self.error(at, e));
                    }
                }
            }
        }
        let (count, list) = match (w.seeds, w.candidates) {
            (Some(s), _) => (w.candidates.unwrap_or(s.len() as u32), Some(s)),
            (None, Some(c)) => (c, None),
            (None, None) if w.seed.is_some() => (shared.candidates, None),
            (None, None) => (shared.candidates, shared.seeds),
        };
        let base = w.seed.unwrap_or(shared.seed);
        Ok(Source {
            at: w.at.clone(),
            loras,
            seeds: self.checks.seeds(&w.settings_at, list, count, base)?,
            text: text.to_string(),
            negative: negative.to_string(),
            lists,
        })
    }

    /// `text` without its `<lora:name:weight>` tags when prompts are read as AUTOMATIC1111 reads
    /// them (it takes them out before encoding), and the tags naming LoRAs not fused into the
    /// job's model (applied per job: [`job_loras`]); a tag naming a fused LoRA must give the
    /// weight it was fused at.
    fn without_lora_tags(
        &self,
        text: &str,
        at: &Field,
        shared: &Shared,
    ) -> Result<(String, Vec<Tag>), JobError> {
        if shared.syntax != PromptSyntax::A1111 {
            return Ok((text.to_string(), Vec::new()));
        }
        let Some((text, tags)) = infotext::take_lora_tags(text).map_err(|m| self.error(at, m))?
        else {
            return Ok((text.to_string(), Vec::new()));
        };
        let model = shared.model;
        let provenance = self.config.models()[model]
            .provenance()
            .map_err(|e| self.error(at, format!("model `{model}`: {e}")))?;
        let fused = provenance.as_ref().map_or(&[][..], |p| &p.loras[..]);
        let own = job_loras::unfused(&tags, model, fused).map_err(|m| self.error(at, m))?;
        Ok((text, own))
    }

    /// `limits.max_prompts` and `limits.max_images` on the job as it will be rendered, counted
    /// without expanding anything.
    fn expanded_limits(&self, sources: &[Source], matrix: bool) -> Result<(), JobError> {
        let l = &self.config.limits();
        let mut prompt_count: u64 = 0;
        let mut image_count: u64 = 0;
        for s in sources {
            let n = sweep::text_count(&s.text, matrix).saturating_mul(s.lists.count());
            prompt_count = prompt_count.saturating_add(n);
            image_count = image_count.saturating_add(n.saturating_mul(s.seeds.len() as u64));
        }
        let prompts = Field::named("prompts");
        if prompt_count > u64::from(l.max_prompts) {
            let made = if prompt_count == u64::MAX {
                "too many".to_string()
            } else {
                prompt_count.to_string()
            };
            return Err(self.error(
                &prompts,
                format!(
                    "make {made} prompts once sweeps and prompt matrices are expanded; the limit is {} (limits.max_prompts)",
                    l.max_prompts
                ),
            ));
        }
        if image_count > l.max_images {
            return Err(self.error(
                &prompts,
                format!(
                    "make {image_count} images once sweeps and prompt matrices are expanded; the limit is {} (limits.max_images)",
                    l.max_images
                ),
            ));
        }
        Ok(())
    }

    /// `rerank` needs a rerank model; `keep_top` needs reranking and at least one image.
    fn rerank(&self, spec: &JobSpec) -> Result<(), JobError> {
        let available = self.config.rerank().is_some_and(|r| r.enabled);
        if spec.rerank == Some(true) && !available {
            return Err(self.error(
                &Field::named("rerank"),
                "is true but no rerank model is configured (or `rerank.enabled` is false in config.yaml)",
            ));
        }
        let reranked = spec.rerank.unwrap_or(true) && available;
        if spec.keep_top.is_some() && !reranked {
            return Err(self.error(
                &Field::named("keep_top"),
                "needs CLIP scores, but reranking is off for this job (no rerank model configured, or `rerank: false`)",
            ));
        }
        if spec.keep_top == Some(0) {
            return Err(self.error(
                &Field::named("keep_top"),
                "is 0; keep at least one image per prompt, or leave keep_top out",
            ));
        }
        Ok(())
    }
}

/// Every prompt of the job: each source's variants, in order. Call
/// [`Resolver::expanded_limits`] first.
fn expand(sources: Vec<Source>, matrix: bool) -> Vec<JobPrompt> {
    let mut prompts = Vec::new();
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
    prompts
}
