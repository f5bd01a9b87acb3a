//! The resume fingerprint: what identifies a job's settings in its manifest, so that a run
//! continues a manifest only of the same job (same prompts, seeds and settings, same supplied
//! noise) and never mixes two jobs' images in one folder.
//!
//! Version 2 ([`VERSION`]) is the fnv1a64 of the JSON of [`Settings`]: fields with fixed names,
//! and values written as the names users write in job files (`euler_a`, `torch_cpu`, `move`), so
//! renaming a Rust type or variant does not change it. A change to what it covers gets a new
//! version.
//!
//! Manifests without `fingerprint_version` were written before it (version 1) and carry the
//! fnv1a64 of a `{:?}` text; [`legacy`] recomputes that, so their jobs still continue where they
//! stopped. It is frozen: it spells out the text the old code produced instead of formatting
//! today's types.

use serde::Serialize;

use super::RunOptions;
use super::manifest::Manifest;
use crate::engine::pipeline::SdxlConditioning;
use crate::engine::prompt::{self, PromptSyntax};
use crate::engine::scheduler::SchedulerKind;
use crate::engine::tokenizer::{TextCleaning, cleans_alike};
use crate::jobs::job::{Job, Rejected, SeedSettings};

/// The fingerprint version new manifests carry.
pub const VERSION: u32 = 2;

/// The version of a manifest that has no `fingerprint_version`.
pub const LEGACY_VERSION: u32 = super::manifest::LEGACY_FINGERPRINT_VERSION;

/// A job's fingerprint, in the current version and in the legacy one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    current: String,
    legacy: String,
    /// Whether the job reads prompts as plain text without CLIP skip (as every job did before
    /// `prompt_syntax` and `clip_skip`).
    plain_prompts: bool,
}

impl Fingerprint {
    /// The fingerprint of `job` rendered with `options`' noise.
    pub fn of(job: &Job, options: &RunOptions) -> Fingerprint {
        let settings = Settings::of(job, options);
        let json = serde_json::to_vec(&settings).expect("plain data serializes");
        // A job with SDXL settings cannot have run before version 2: no legacy manifest is its.
        let legacy = match (&settings.sdxl, &settings.loras) {
            (Some(_), _) => "<not in version 1: sdxl settings>".to_string(),
            (_, Some(_)) => "<not in version 1: loras>".to_string(),
            (None, None) => legacy::fingerprint(job, options),
        };
        Fingerprint {
            current: format!("{:016x}", crate::sys::hash::fnv1a64(json)),
            legacy,
            plain_prompts: renders_as_plain(job)
                && cleans_as_before(job)
                && job.clip_skip == 1
                && job.seed_options == SeedSettings::default(),
        }
    }

    /// The value new manifests record (with `fingerprint_version` [`VERSION`]).
    pub fn value(&self) -> &str {
        &self.current
    }

    /// Whether `manifest` was written for this job, by this release or by one before the
    /// version was recorded.
    pub fn matches(&self, manifest: &Manifest) -> bool {
        match manifest.fingerprint_version {
            VERSION => manifest.fingerprint == self.current,
            // Legacy manifests were rendered before `prompt_syntax`, as `plain` renders.
            LEGACY_VERSION => self.plain_prompts && manifest.fingerprint == self.legacy,
            _ => false,
        }
    }

    /// Records this fingerprint in `manifest` (in the current version).
    pub fn stamp(&self, manifest: &mut Manifest) {
        manifest.fingerprint = self.current.clone();
        manifest.fingerprint_version = VERSION;
    }
}

/// Whether the job's prompts render as they did before `prompt_syntax` (plain text): plain
/// syntax, or AUTOMATIC1111's with prompts that read the same ([`prompt::reads_as_plain`]).
/// Such jobs keep the fingerprint they had.
fn renders_as_plain(job: &Job) -> bool {
    job.prompt_syntax == PromptSyntax::Plain
        || job
            .prompts
            .iter()
            .all(|p| prompt::reads_as_plain(&p.text) && prompt::reads_as_plain(&p.negative))
}

/// Whether the job's prompts are cleaned as before `text_cleaning` (`basic`): `basic`, or
/// `clip` with prompts both clean-ups clean alike.
fn cleans_as_before(job: &Job) -> bool {
    job.text_cleaning == TextCleaning::Basic
        || job
            .prompts
            .iter()
            .all(|p| cleans_alike(&p.text) && cleans_alike(&p.negative))
}

/// What version 2 covers. The field names and the order are part of the format.
#[derive(Debug, Serialize)]
struct Settings<'a> {
    version: u32,
    id: &'a str,
    model: &'a str,
    rng: &'static str,
    /// Written only for `a1111` jobs whose prompts do not read as plain text: jobs from before
    /// the option rendered `plain`, and their manifests keep matching jobs that render so.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_syntax: Option<&'static str>,
    /// Written only when it skips (above 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    clip_skip: Option<u32>,
    /// Written only for `clip` when a prompt cleans differently from `basic` (what jobs used
    /// before the option).
    #[serde(skip_serializing_if = "Option::is_none")]
    text_cleaning: Option<&'static str>,
    /// Written only when set: variation seed and strength, seed resize, ENSD.
    #[serde(skip_serializing_if = "Option::is_none")]
    seed_options: Option<String>,
    keep_top: Option<u32>,
    rejected: &'static str,
    rerank: Option<bool>,
    prompts: Vec<PromptSettings<'a>>,
    /// fnv1a64 over the supplied initial latents and step noise (shape, then values), when any.
    noise: Option<String>,
    /// The SDXL refiner and conditioning, only when the job sets any (so that the fingerprint
    /// of every other job stays what it was before they existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    sdxl: Option<SdxlSettings<'a>>,
    /// The LoRAs the job applies (`<lora:name:weight>` each), only when it applies any.
    #[serde(skip_serializing_if = "Option::is_none")]
    loras: Option<Vec<String>>,
}

/// A job's SDXL refiner and conditioning, as diffusers takes them (`[height, width]`).
#[derive(Debug, Serialize)]
struct SdxlSettings<'a> {
    refiner: Option<&'a str>,
    refiner_start: Option<f64>,
    original_size: Option<[u32; 2]>,
    crop_top_left: [u32; 2],
    target_size: Option<[u32; 2]>,
    aesthetic_score: f32,
    negative_aesthetic_score: f32,
}

impl<'a> SdxlSettings<'a> {
    fn of(job: &'a Job) -> Option<SdxlSettings<'a>> {
        let c = &job.sdxl;
        if job.refiner.is_none() && *c == SdxlConditioning::default() {
            return None;
        }
        Some(SdxlSettings {
            refiner: job.refiner.as_ref().map(|r| r.model.as_str()),
            refiner_start: job.refiner.as_ref().map(|r| r.start),
            original_size: c.original_size,
            crop_top_left: c.crop_top_left,
            target_size: c.target_size,
            aesthetic_score: c.aesthetic_score,
            negative_aesthetic_score: c.negative_aesthetic_score,
        })
    }
}

/// One prompt with everything it is rendered with.
#[derive(Debug, Serialize)]
struct PromptSettings<'a> {
    text: &'a str,
    negative: &'a str,
    seeds: &'a [u64],
    steps: u32,
    guidance: f32,
    /// The sdspool name; `None`: the model's own.
    scheduler: Option<String>,
    width: u32,
    height: u32,
}

impl<'a> Settings<'a> {
    fn of(job: &'a Job, options: &RunOptions) -> Settings<'a> {
        Settings {
            version: VERSION,
            id: &job.id,
            model: &job.model,
            rng: job.rng.as_str(),
            prompt_syntax: (!renders_as_plain(job)).then(|| job.prompt_syntax.name()),
            clip_skip: (job.clip_skip > 1).then_some(job.clip_skip),
            text_cleaning: (!cleans_as_before(job)).then(|| job.text_cleaning.name()),
            seed_options: (job.seed_options != SeedSettings::default()).then(|| {
                let s = &job.seed_options;
                format!(
                    "subseed {:?} resize_from {:?} ensd {}",
                    s.subseed, s.resize_from, s.eta_noise_seed_delta
                )
            }),
            keep_top: job.keep_top,
            rejected: match job.rejected {
                Rejected::Move => "move",
                Rejected::Delete => "delete",
            },
            rerank: job.rerank,
            prompts: job
                .prompts
                .iter()
                .map(|p| PromptSettings {
                    text: &p.text,
                    negative: &p.negative,
                    seeds: &p.seeds,
                    steps: p.steps,
                    guidance: p.guidance,
                    scheduler: p.scheduler.map(|s| s.to_string()),
                    width: p.width,
                    height: p.height,
                })
                .collect(),
            noise: noise_digest(options),
            sdxl: SdxlSettings::of(job),
            loras: (!job.loras.is_empty()).then(|| {
                job.loras
                    .iter()
                    .map(|l| format!("<lora:{}:{}>", l.name, l.weight))
                    .collect()
            }),
        }
    }
}

fn noise_digest(options: &RunOptions) -> Option<String> {
    let arrays: Vec<&ndarray::ArrayD<f32>> = options
        .initial_latents
        .iter()
        .chain(options.step_noise.iter().flatten())
        .collect();
    if arrays.is_empty() {
        return None;
    }
    let bytes = arrays.iter().flat_map(|a| {
        let shape = a.shape().iter().flat_map(|&d| (d as u64).to_le_bytes());
        shape.chain(a.iter().flat_map(|v| v.to_le_bytes()))
    });
    Some(format!("{:016x}", crate::sys::hash::fnv1a64(bytes)))
}

/// Version 1, frozen: the fnv1a64 of the text the code before the version was recorded built
/// with `format!("{:?}")`, written out here value by value so that it never changes.
pub mod legacy {
    use super::*;

    /// `{:?}` of an `Option` of a value printed as `inner`.
    fn option(value: Option<String>) -> String {
        match value {
            Some(v) => format!("Some({v})"),
            None => "None".into(),
        }
    }

    /// `{:?}` of the scheduler kind as it was named then, from its sdspool name. A scheduler
    /// added since cannot be in a version 1 manifest: it gets a text no old fingerprint has.
    fn scheduler(kind: Option<SchedulerKind>) -> String {
        option(kind.map(|k| {
            let name = k.to_string();
            let old = match name.as_str() {
                "ddim" => "Ddim",
                "pndm" => "Pndm",
                "lms" => "Lms",
                "euler" => "Euler",
                "euler_a" => "EulerAncestral",
                "dpmpp_2m" => "DpmPp2m",
                "dpmpp_2m_karras" => "DpmPp2mKarras",
                "ddpm" => "Ddpm",
                "unipc" => "UniPc",
                _ => return format!("<not in version 1: {name}>"),
            };
            old.to_string()
        }))
    }

    /// `{:?}` of a `Vec<u64>`.
    fn seeds(seeds: &[u64]) -> String {
        let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
        format!("[{}]", list.join(", "))
    }

    /// The version 1 fingerprint of `job` with `options`' noise.
    pub fn fingerprint(job: &Job, options: &RunOptions) -> String {
        let rejected = match job.rejected {
            Rejected::Move => "Move",
            Rejected::Delete => "Delete",
        };
        let mut text = format!(
            "{}|{}|{}|{}|{}|{}x{}|{}|{}|{}|{}",
            job.id,
            job.model,
            job.steps,
            job.guidance,
            scheduler(job.scheduler),
            job.width,
            job.height,
            job.rng.as_str(),
            option(job.keep_top.map(|k| k.to_string())),
            rejected,
            option(job.rerank.map(|r| r.to_string())),
        );
        for p in &job.prompts {
            text.push_str(&format!("|{}|{}|{}", p.text, p.negative, seeds(&p.seeds)));
            // Only a prompt with settings of its own added them.
            if !p.has_job_settings(job) {
                text.push_str(&format!(
                    "|{}|{}|{}|{}x{}",
                    p.steps,
                    p.guidance,
                    scheduler(p.scheduler),
                    p.width,
                    p.height
                ));
            }
        }
        let arrays = options
            .initial_latents
            .iter()
            .chain(options.step_noise.iter().flatten());
        let noise_bytes = arrays.flat_map(|a| a.iter().flat_map(|v| v.to_le_bytes()));
        format!(
            "{:016x}",
            crate::sys::hash::fnv1a64(text.bytes().chain(noise_bytes))
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A small job (also for the other run modules' tests).
    pub(in crate::jobs::run) fn job() -> Job {
        Job {
            id: "fp".into(),
            model: "m".into(),
            prompts: vec![crate::jobs::job::JobPrompt {
                text: "a cat".into(),
                negative: String::new(),
                seeds: vec![5, 6],
                steps: 3,
                guidance: 7.5,
                scheduler: Some(SchedulerKind::EulerAncestral),
                width: 64,
                height: 64,
                sweep: None,
            }],
            steps: 3,
            guidance: 7.5,
            scheduler: Some(SchedulerKind::EulerAncestral),
            width: 64,
            height: 64,
            rng: crate::engine::noise::RngKind::TorchCpu,
            prompt_syntax: PromptSyntax::Plain,
            clip_skip: 1,
            text_cleaning: TextCleaning::Clip,
            seed_options: SeedSettings::default(),
            seed: 5,
            priority: 0,
            output: "fp".into(),
            keep_top: Some(1),
            rerank: Some(true),
            rejected: Rejected::Move,
            max_batch: 4,
            refiner: None,
            sdxl: SdxlConditioning::default(),
            loras: Vec::new(),
        }
    }

    #[test]
    fn the_loras_a_job_applies_change_the_fingerprint() {
        let options = RunOptions::default();
        let plain = Fingerprint::of(&job(), &options);
        let mut with = job();
        with.loras = vec![crate::jobs::job::JobLora {
            name: "style".into(),
            file: "/loras/style.safetensors".into(),
            weight: 0.8,
        }];
        let one = Fingerprint::of(&with, &options);
        assert_ne!(one.value(), plain.value());
        with.loras[0].weight = 0.5;
        assert_ne!(Fingerprint::of(&with, &options).value(), one.value());
        assert!(!one.plain_prompts || one.legacy != plain.legacy);
    }

    #[test]
    fn the_version_2_text_names_settings_as_job_files_do() {
        let text = serde_json::to_string(&Settings::of(&job(), &RunOptions::default())).unwrap();
        assert_eq!(
            text,
            r#"{"version":2,"id":"fp","model":"m","rng":"torch_cpu","keep_top":1,"rejected":"move","rerank":true,"prompts":[{"text":"a cat","negative":"","seeds":[5,6],"steps":3,"guidance":7.5,"scheduler":"euler_a","width":64,"height":64}],"noise":null}"#
        );
    }

    #[test]
    fn prompt_syntax_and_clip_skip_change_the_fingerprint_and_keep_legacy_manifests_plain() {
        let options = RunOptions::default();
        let mut plain_emphasis = job();
        plain_emphasis.prompts[0].text = "a (cat:1.2)".into();
        let plain = Fingerprint::of(&plain_emphasis, &options);
        let mut a1111 = job();
        a1111.prompt_syntax = PromptSyntax::A1111;
        assert_eq!(
            Fingerprint::of(&a1111, &options),
            Fingerprint::of(&job(), &options),
            "`a cat` reads the same"
        );
        a1111.prompts[0].text = "a (cat:1.2)".into();
        let a = Fingerprint::of(&a1111, &options);
        let mut skip = plain_emphasis.clone();
        skip.clip_skip = 2;
        let s = Fingerprint::of(&skip, &options);
        assert_ne!(plain.current, a.current);
        assert_ne!(plain.current, s.current);
        assert_ne!(a.current, s.current);
        let mut legacy: Manifest = serde_json::from_str(
            r#"{"job":"fp","fingerprint":"x","model":"m","scheduler":"","execution_provider":"cpu","steps":3,"guidance":7.5,"width":64,"height":64,"rng":"torch_cpu","rerank_model":null,"keep_top":1,"complete":false,"runs":1,"timings":{"text_ms":0,"denoise_ms":0,"decode_ms":0,"rerank_ms":0,"write_ms":0,"total_ms":0},"prompts":[]}"#,
        )
        .unwrap();
        assert_eq!(legacy.fingerprint_version, LEGACY_VERSION);
        legacy.fingerprint = plain.legacy.clone();
        assert!(plain.matches(&legacy));
        assert!(!a.matches(&legacy), "a legacy manifest was rendered plain");
        assert!(
            !s.matches(&legacy),
            "a legacy manifest was rendered without clip skip"
        );
    }

    #[test]
    fn any_setting_changes_the_fingerprint() {
        let options = RunOptions::default();
        let a = Fingerprint::of(&job(), &options);
        assert_eq!(a, Fingerprint::of(&job(), &options));
        let changes: [fn(&mut Job); 9] = [
            |j| j.id = "other".into(),
            |j| j.model = "other".into(),
            |j| j.prompts[0].text = "a dog".into(),
            |j| j.prompts[0].negative = "blurry".into(),
            |j| j.prompts[0].seeds = vec![5, 7],
            |j| j.prompts[0].steps = 4,
            |j| j.prompts[0].scheduler = Some(SchedulerKind::Ddim),
            |j| j.keep_top = None,
            |j| j.rejected = Rejected::Delete,
        ];
        for change in changes {
            let mut j = job();
            change(&mut j);
            let b = Fingerprint::of(&j, &options);
            assert_ne!(a.current, b.current, "{j:?}");
            assert_ne!(a.legacy, b.legacy, "{j:?}");
        }
        let noise = RunOptions {
            initial_latents: Some(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 4, 8, 8]))),
            ..Default::default()
        };
        assert_ne!(a, Fingerprint::of(&job(), &noise));
    }

    #[test]
    fn sdxl_settings_change_the_fingerprint_only_when_set() {
        let options = RunOptions::default();
        let a = Fingerprint::of(&job(), &options);
        let changes: [fn(&mut Job); 5] = [
            |j| {
                j.refiner = Some(crate::jobs::job::JobRefiner {
                    model: "r".into(),
                    start: 0.8,
                })
            },
            |j| j.sdxl.original_size = Some([64, 32]),
            |j| j.sdxl.crop_top_left = [8, 0],
            |j| j.sdxl.target_size = Some([64, 32]),
            |j| j.sdxl.aesthetic_score = 7.0,
        ];
        let mut seen = vec![a.current.clone()];
        for change in changes {
            let mut j = job();
            change(&mut j);
            let b = Fingerprint::of(&j, &options);
            assert!(!seen.contains(&b.current), "{j:?}");
            assert_ne!(a.legacy, b.legacy, "{j:?}");
            seen.push(b.current);
        }
        let mut later = job();
        later.refiner = Some(crate::jobs::job::JobRefiner {
            model: "r".into(),
            start: 0.7,
        });
        let mut earlier = later.clone();
        earlier.refiner.as_mut().unwrap().start = 0.8;
        assert_ne!(
            Fingerprint::of(&later, &options),
            Fingerprint::of(&earlier, &options)
        );
    }

    #[test]
    fn a_manifest_matches_in_its_own_version_only() {
        let j = job();
        let fp = Fingerprint::of(&j, &RunOptions::default());
        let mut m: Manifest = serde_json::from_str(
            r#"{"job":"fp","fingerprint":"x","model":"m","scheduler":"","execution_provider":"cpu","steps":3,"guidance":7.5,"width":64,"height":64,"rng":"torch_cpu","rerank_model":null,"keep_top":1,"complete":false,"runs":1,"timings":{"text_ms":0,"denoise_ms":0,"decode_ms":0,"rerank_ms":0,"write_ms":0,"total_ms":0},"prompts":[]}"#,
        )
        .unwrap();
        assert_eq!(m.fingerprint_version, LEGACY_VERSION, "no field: version 1");
        m.fingerprint = fp.legacy.clone();
        assert!(fp.matches(&m));
        m.fingerprint_version = VERSION;
        assert!(!fp.matches(&m), "the legacy value read as version 2");
        fp.stamp(&mut m);
        assert!(fp.matches(&m));
        m.fingerprint_version = 3;
        assert!(!fp.matches(&m));
    }
}
