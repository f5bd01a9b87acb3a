//! `sdspool import CHECKPOINT --name NAME [--family F] [--lora FILE[:WEIGHT]]... [--vae FILE]
//! [--fp16] [--optimize [--optimize-target cpu|cuda]] [--replace]`: a single-file checkpoint
//! (plus LoRAs fused at their weights, plus a replacement VAE) into `<models dir>/NAME/`, the
//! optimum ONNX layout sdspool loads, and the model's entry in the configuration file.
//!
//! Everything that can be checked without Python is checked before the conversion starts: the
//! files are complete safetensors files, the family is known, the LoRAs fit it, the name is free,
//! the disk has room for the estimate. The conversion itself goes through an import template the
//! checkpoint fits (Rust only: the template's graphs with the checkpoint's tensors written into
//! their data files, see [`crate::app::importer::route`]) or the pinned Python tooling
//! (`onnx/import_checkpoint.py`, see [`crate::app::importer`]); either writes into a staging
//! folder beside the target, which is renamed into place when it succeeded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::config::Config;
use crate::app::importer::events::{Event, Stage, StageState};
use crate::app::importer::route::{self, Asks, Chosen, Route};
use crate::app::importer::runner::{self, Converted, OptimizeTarget, Request, Runner};
use crate::app::importer::staging::{self, Staging};
use crate::app::importer::template_route::{self, TemplateImport};
use crate::app::importer::{ImportError, config_edit, disk, template_build, tools};
use crate::engine::checkpoint::template::{self, Replacement, Template};
use crate::engine::checkpoint::{self, CheckpointError, Family, Header};

/// The command line of `sdspool import`.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub checkpoint: PathBuf,
    pub name: String,
    pub family: Option<Family>,
    /// `FILE` or `FILE:WEIGHT` (weight 1 when left out).
    pub loras: Vec<String>,
    pub vae: Option<PathBuf>,
    pub fp16: bool,
    pub optimize: bool,
    /// The provider `--optimize` fuses for; default from the configuration's execution providers.
    pub optimize_target: Option<OptimizeTarget>,
    pub replace: bool,
    /// Where model folders go; default `local/models` beside the configuration file.
    pub models_dir: Option<PathBuf>,
    /// The `onnx/` tool folder; default found beside the configuration file.
    pub tools: Option<PathBuf>,
    /// Replay a recorded run (transcript, folder) instead of running Python (tests).
    pub replay: Option<(PathBuf, PathBuf)>,
    /// With `replay`: a pause before each event (tests that stop an import part-way).
    pub replay_delay: Duration,
    /// Through an import template, Python, or the first that can (`--route`).
    pub route: Route,
    /// Build the import template first when none fits (`--build-template`).
    pub build_template: bool,
}

/// What happened to the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigUpdate {
    Added,
    /// It already names this folder under this name.
    AlreadyThere,
    /// It could not be edited: the reason, and the lines to add by hand.
    Manual {
        reason: String,
        lines: String,
    },
}

/// A finished import.
#[derive(Debug, Clone)]
pub struct Imported {
    pub folder: PathBuf,
    pub family: String,
    pub prediction_type: Option<String>,
    pub config: ConfigUpdate,
}

/// Everything checked before the conversion starts.
#[derive(Debug)]
pub struct Plan {
    pub target: PathBuf,
    pub family: Option<Family>,
    pub loras: Vec<(PathBuf, f32)>,
    pub estimate: u64,
    /// Through a template or Python.
    pub route: Chosen,
    /// Said before starting (e.g. that a .ckpt cannot be checked without Python).
    pub notes: Vec<String>,
}

fn refuse(path: &Path, reason: impl Into<String>) -> ImportError {
    ImportError::Refuse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A model name is a folder name and a YAML key: letters, digits, `.`, `_`, `-`.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--name {name:?}: use letters, digits, '.', '_' and '-' (not starting with '.'), at most 100"
        ))
    }
}

/// `FILE[:WEIGHT]`.
pub fn parse_lora(text: &str) -> (PathBuf, f32) {
    match text.rsplit_once(':') {
        Some((file, w)) if !file.is_empty() => match w.parse::<f32>() {
            Ok(weight) if weight.is_finite() => (PathBuf::from(file), weight),
            _ => (PathBuf::from(text), 1.0),
        },
        _ => (PathBuf::from(text), 1.0),
    }
}

fn is_ckpt(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "ckpt" || e == "pt" || e == "pth")
}

pub fn models_dir(config: &Config, opts: &ImportOptions) -> PathBuf {
    opts.models_dir
        .clone()
        .unwrap_or_else(|| config.base_dir().join("local/models"))
}

/// The checks before any Python runs.
pub fn plan(config: &Config, opts: &ImportOptions) -> Result<Plan, ImportError> {
    check_name(&opts.name).map_err(|r| refuse(&opts.checkpoint, r))?;
    let target = models_dir(config, opts).join(&opts.name);
    check_target(config, opts, &target)?;
    let mut notes = Vec::new();
    let (family, header) = if is_ckpt(&opts.checkpoint) {
        std::fs::metadata(&opts.checkpoint).map_err(|source| CheckpointError::Io {
            path: opts.checkpoint.clone(),
            source,
        })?;
        notes.push(format!(
            "{}: a pickled checkpoint cannot be checked without Python (completeness, family, LoRA fit are checked by the conversion)",
            opts.checkpoint.display()
        ));
        (opts.family, None)
    } else {
        let header = checkpoint::header::read(&opts.checkpoint)?;
        let found = checkpoint::family::detect(&header)?;
        if let Some(f) = opts.family.filter(|f| *f != found) {
            notes.push(format!(
                "{}: looks like {found}; converting as {f} (--family)",
                opts.checkpoint.display()
            ));
        }
        (Some(opts.family.unwrap_or(found)), Some(header))
    };
    let loras = check_loras(opts, header.as_ref(), family)?;
    let vae = match &opts.vae {
        None => None,
        Some(v) if is_ckpt(v) => Some(Err(
            "a pickled VAE (.ckpt/.pt; its tensors need Python to read)",
        )),
        Some(v) => {
            let header = checkpoint::header::read(v)?;
            check_vae(&header)?;
            Some(match template::vae::layout(&header) {
                Some(layout) => Ok(Replacement { header, layout }),
                None => Err("--vae in diffusers' layout (encoder.down_blocks.*)"),
            })
        }
    };
    let asks = Asks {
        pickled_lora: loras.iter().any(|(p, _)| is_ckpt(p)),
        vae,
        fp16: opts.fp16,
        optimize: opts.optimize,
    };
    let dirs = config.import.template_dirs(&models_dir(config, opts));
    let route = route::choose(
        opts.route,
        opts.build_template,
        asks,
        &opts.checkpoint,
        header.as_ref(),
        family,
        &dirs,
    )?;
    match &route {
        Chosen::Template { template, .. } => notes.push(format!(
            "through the import template {} (no Python)",
            template.dir.display()
        )),
        Chosen::Python { why: Some(why) } => notes.push(format!("through Python: {why}")),
        Chosen::Build { into, .. } => notes.push(format!(
            "no import template fits; building one into {} (Python), then through it",
            into.display()
        )),
        Chosen::Python { why: None } => {}
    }
    let through_template = !matches!(route, Chosen::Python { .. });
    let estimate = check_disk(opts, header.as_ref(), &target, through_template)?;
    Ok(Plan {
        target,
        family,
        loras,
        estimate,
        route,
        notes,
    })
}

fn check_target(config: &Config, opts: &ImportOptions, target: &Path) -> Result<(), ImportError> {
    if opts.replace {
        return Ok(());
    }
    if target.exists() {
        return Err(refuse(
            target,
            format!(
                "model folder exists; --replace to overwrite it (model {})",
                opts.name
            ),
        ));
    }
    if let Some(m) = config.models.get(&opts.name) {
        return Err(refuse(
            &config.source,
            format!(
                "already has a model named {} ({}); choose another --name or --replace",
                opts.name,
                m.path.display()
            ),
        ));
    }
    Ok(())
}

fn check_loras(
    opts: &ImportOptions,
    checkpoint: Option<&Header>,
    family: Option<Family>,
) -> Result<Vec<(PathBuf, f32)>, ImportError> {
    let mut out = Vec::new();
    for text in &opts.loras {
        let (path, weight) = parse_lora(text);
        if !is_ckpt(&path) {
            let lora = checkpoint::header::read(&path)?;
            if let (Some(ckpt), Some(family)) = (checkpoint, family) {
                checkpoint::lora::check(&lora, ckpt, family)?;
            }
        }
        out.push((path, weight));
    }
    Ok(out)
}

fn check_vae(vae: &Header) -> Result<(), ImportError> {
    let fits = vae.tensors.keys().any(|k| {
        k.starts_with("encoder.")
            || k.starts_with("decoder.")
            || k.starts_with(checkpoint::family::VAE)
    });
    if fits {
        Ok(())
    } else {
        Err(CheckpointError::UnknownArchitecture {
            path: vae.path.clone(),
            reason: "not a VAE (no encoder.* / decoder.* / first_stage_model.* keys)".into(),
            keys: vae.first_keys(6),
        }
        .into())
    }
}

fn check_disk(
    opts: &ImportOptions,
    header: Option<&Header>,
    target: &Path,
    through_template: bool,
) -> Result<u64, ImportError> {
    let weights = match header {
        Some(h) => disk::exported_weights(h),
        None => std::fs::metadata(&opts.checkpoint)
            .map(|m| m.len() / 4)
            .unwrap_or(0),
    };
    let need = if through_template {
        disk::estimate_template(weights)
    } else {
        disk::estimate(weights, opts.fp16, opts.optimize)
    };
    let dir = target.parent().unwrap_or(Path::new("."));
    let free = disk::free_bytes(dir).map_err(|source| ImportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if free < need {
        return Err(refuse(
            dir,
            format!(
                "not enough disk space: the import needs about {} ({} weights: {}{} ONNX{}), {} free",
                disk::human(need),
                weights,
                if through_template {
                    ""
                } else {
                    "float32 PyTorch copy + "
                },
                if opts.fp16 { "float16" } else { "float32" },
                if opts.optimize {
                    " + optimised copy"
                } else {
                    ""
                },
                disk::human(free)
            ),
        ));
    }
    Ok(need)
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Runs the checks, the conversion (with a progress display on standard error), the rename into
/// place and the configuration update.
pub fn run(config: &Config, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let plan = plan(config, opts)?;
    for note in &plan.notes {
        eprintln!("sdspool: {note}");
    }
    eprintln!(
        "sdspool: importing {} as {} (about {} of disk during the import)",
        opts.checkpoint.display(),
        opts.name,
        disk::human(plan.estimate)
    );
    let parent = plan.target.parent().unwrap_or(Path::new(".")).to_path_buf();
    for stale in staging::remove_stale(&parent) {
        eprintln!(
            "sdspool: removed {}, left by an import that was killed",
            stale.display()
        );
    }
    let staging =
        Staging::create(parent.join(staging::folder_name(&opts.name, std::process::id())))?;
    staging::watch_signals()?;
    let result = convert_and_place(config, opts, &plan, staging.path());
    staging::wait_if_stopping();
    result
}

fn convert_and_place(
    config: &Config,
    opts: &ImportOptions,
    plan: &Plan,
    staging: &Path,
) -> Result<Imported, ImportError> {
    let request = request(config, opts, plan, staging);
    let converted = match &plan.route {
        Chosen::Template {
            template,
            header,
            vae,
        } => through_template(config, template, header, vae.as_deref(), &request)?,
        Chosen::Build {
            header,
            vae,
            family,
            into,
        } => {
            let vae = vae.as_deref();
            let template = build_template(config, opts, staging, (header, vae), *family, into)?;
            through_template(config, &template, header, vae, &request)?
        }
        Chosen::Python { .. } => {
            let runner = python_runner(config, opts, staging)?;
            with_progress(python_stages(opts), |on_event| {
                runner::run(&runner, &request, on_event)
            })?
        }
    };
    place(&converted, &plan.target, staging)?;
    let update = update_config(config, &opts.name, &plan.target);
    Ok(Imported {
        folder: plan.target.clone(),
        family: converted
            .family
            .or(plan.family.map(|f| f.as_str().to_string()))
            .unwrap_or_default(),
        prediction_type: converted.prediction_type,
        config: update,
    })
}

fn through_template(
    config: &Config,
    template: &Template,
    header: &Header,
    vae: Option<&Replacement>,
    request: &Request,
) -> Result<Converted, ImportError> {
    let runtime = || config.runtime();
    let job = TemplateImport {
        template,
        header: header.clone(),
        vae: vae.cloned(),
        runtime: &runtime,
        device_id: config.execution.device_ids.first().copied().unwrap_or(0),
    };
    let stages = template_route::stages(template.family, !request.loras.is_empty());
    with_progress(stages, |on_event| {
        template_route::convert(job, request, on_event)
    })
}

/// `--build-template`: the template of the checkpoint's architecture built into `into` by
/// onnx/build_import_template.py, checked to fit.
fn build_template(
    config: &Config,
    opts: &ImportOptions,
    staging: &Path,
    (header, vae): (&Header, Option<&Replacement>),
    family: Family,
    into: &Path,
) -> Result<Template, ImportError> {
    let tools = tools::find(opts.tools.as_deref(), &config.base_dir())?;
    let script = tools.join(template_build::SCRIPT);
    if !script.is_file() {
        return Err(refuse(
            &script,
            "--build-template needs it, and this checkout does not have it",
        ));
    }
    let dest = template_build::build(
        &tools::python(&tools)?,
        &absolute(&script),
        &absolute(&staging.join("tmp")),
        &absolute(&opts.checkpoint),
        &absolute(into),
        family,
    )?;
    let template = Template::read(&dest)?;
    template::fit::check(&template, header, vae).map_err(|misfit| {
        refuse(
            &dest,
            format!("the template just built does not fit the checkpoint: {misfit}"),
        )
    })?;
    eprintln!("sdspool: built the import template {}", dest.display());
    Ok(template)
}

fn python_runner(
    config: &Config,
    opts: &ImportOptions,
    staging: &Path,
) -> Result<Runner, ImportError> {
    Ok(match &opts.replay {
        Some((transcript, folder)) => Runner::Replay {
            transcript: transcript.clone(),
            folder: folder.clone(),
            delay: opts.replay_delay,
        },
        None => {
            let tools = tools::find(opts.tools.as_deref(), &config.base_dir())?;
            let optimizer = tools.join("optimize.py");
            if opts.optimize && !optimizer.is_file() {
                return Err(refuse(
                    &optimizer,
                    "--optimize needs it, and this checkout does not have it",
                ));
            }
            Runner::Python {
                python: tools::python(&tools)?,
                script: absolute(&tools.join(tools::SCRIPT)),
                tmp: absolute(&staging.join("tmp")),
            }
        }
    })
}

fn request(config: &Config, opts: &ImportOptions, plan: &Plan, staging: &Path) -> Request {
    Request {
        checkpoint: absolute(&opts.checkpoint),
        out: absolute(&staging.join(&opts.name)),
        name: opts.name.clone(),
        family: plan.family,
        loras: plan.loras.iter().map(|(p, w)| (absolute(p), *w)).collect(),
        vae: opts.vae.as_deref().map(absolute),
        fp16: opts.fp16,
        optimize: opts.optimize.then(|| {
            opts.optimize_target
                .unwrap_or_else(|| OptimizeTarget::for_providers(&config.execution.providers))
        }),
    }
}

/// The stages the Python conversion reports for these options.
fn python_stages(opts: &ImportOptions) -> Vec<Stage> {
    Stage::PYTHON
        .into_iter()
        .filter(|s| match s {
            Stage::Lora => !opts.loras.is_empty(),
            Stage::Vae => opts.vae.is_some(),
            _ => true,
        })
        .collect()
}

fn with_progress(
    stages: Vec<Stage>,
    run: impl FnOnce(&mut dyn FnMut(&Event)) -> Result<Converted, ImportError>,
) -> Result<Converted, ImportError> {
    let bar = ProgressBar::new(stages.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut on_event = |event: &Event| match event {
        Event::Stage {
            stage,
            state: StageState::Start,
            ..
        } => bar.set_message(stage.describe()),
        Event::Stage {
            stage,
            state: StageState::Done,
            seconds,
        } => {
            bar.inc(1);
            bar.suspend(|| {
                eprintln!(
                    "  {:<60} {:>8.1} s",
                    stage.describe(),
                    seconds.unwrap_or(0.0)
                )
            });
        }
        Event::Detected {
            family,
            prediction_type,
        } => {
            bar.suspend(|| eprintln!("  family {family}, prediction type {prediction_type}"));
        }
        _ => {}
    };
    let result = run(&mut on_event);
    bar.finish_and_clear();
    result
}

/// Renames the converted folder into place (the old one aside first with --replace).
fn place(converted: &Converted, target: &Path, staging: &Path) -> Result<(), ImportError> {
    for needed in ["model_index.json", "sdspool-source.json"] {
        if !converted.out.join(needed).is_file() {
            return Err(refuse(
                &converted.out,
                format!("the conversion left no {needed}"),
            ));
        }
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    if target.exists() {
        std::fs::rename(target, staging.join("replaced")).map_err(io(target))?;
    }
    std::fs::rename(&converted.out, target).map_err(io(target))?;
    crate::sys::atomic::sync_dir(target.parent().unwrap_or(Path::new("."))).map_err(io(target))
}

/// Adds `name: {path: folder}` to the configuration file it was loaded from, keeping its text.
pub fn update_config(config: &Config, name: &str, folder: &Path) -> ConfigUpdate {
    let base = absolute(&config.base_dir());
    let folder = absolute(folder);
    let shown = folder
        .strip_prefix(&base)
        .map(Path::to_path_buf)
        .unwrap_or(folder.clone());
    if config
        .models
        .get(name)
        .is_some_and(|m| absolute(&m.path) == folder)
    {
        return ConfigUpdate::AlreadyThere;
    }
    let manual = |reason: String| ConfigUpdate::Manual {
        reason,
        lines: format!("models:\n{}", config_edit::entry_lines(name, &shown, "  ")),
    };
    if config.models.contains_key(name) {
        return manual(format!(
            "it names another folder for {name}; change its path by hand"
        ));
    }
    let text = match std::fs::read_to_string(&config.source) {
        Ok(t) => t,
        Err(e) => return manual(format!("cannot read {}: {e}", config.source.display())),
    };
    let Some(mut new) = config_edit::add_model(&text, name, &shown) else {
        return manual(format!(
            "{}: its models: block is not one sdspool can extend",
            config.source.display()
        ));
    };
    // A single model was the default without being named; with two, the file must name it.
    if config.default_model.is_none()
        && let [only] = config.models.keys().collect::<Vec<_>>()[..]
    {
        new = config_edit::add_default_model(&new, only);
    }
    if let Err(e) = Config::parse(&new, &config.source) {
        return manual(format!("the edited file would not load: {e}"));
    }
    // absolute: the atomic write syncs the file's folder, which a bare file name does not name
    match crate::sys::atomic::write(&absolute(&config.source), new.as_bytes()) {
        Ok(()) => ConfigUpdate::Added,
        Err(e) => manual(format!("cannot write it: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_arguments_take_an_optional_weight() {
        assert_eq!(
            parse_lora("a.safetensors:0.8"),
            (PathBuf::from("a.safetensors"), 0.8)
        );
        assert_eq!(
            parse_lora("a.safetensors"),
            (PathBuf::from("a.safetensors"), 1.0)
        );
        assert_eq!(
            parse_lora("dir:x/a.safetensors"),
            (PathBuf::from("dir:x/a.safetensors"), 1.0)
        );
        assert_eq!(
            parse_lora("a.safetensors:-0.5"),
            (PathBuf::from("a.safetensors"), -0.5)
        );
    }

    #[test]
    fn model_names_are_safe_folder_names() {
        assert!(check_name("my-model_v1.5").is_ok());
        for bad in ["", ".hidden", "a/b", "../x", "a b", "ü"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
