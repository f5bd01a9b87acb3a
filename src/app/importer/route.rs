//! Which way an import goes (`--route auto|template|python`): through an import template that
//! the checkpoint fits (Rust only, seconds), or through the Python conversion
//! (`onnx/import_checkpoint.py`, the reference). `auto` takes the template route when a template
//! fits and nothing is asked that it cannot do (`--fp16`, `--optimize`, a pickled checkpoint,
//! LoRA or VAE, a VAE in diffusers' layout), and says why when it does not; `template` refuses
//! instead of falling back.

use std::path::{Path, PathBuf};

use super::ImportError;
use crate::engine::checkpoint::template::{self, Replacement, Template};
use crate::engine::checkpoint::{Family, Header};

/// `--route`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Route {
    #[default]
    Auto,
    Template,
    Python,
}

impl std::str::FromStr for Route {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Route::Auto),
            "template" => Ok(Route::Template),
            "python" => Ok(Route::Python),
            _ => Err(format!("{s:?} is not auto, template or python")),
        }
    }
}

/// What the import asks for beyond the checkpoint itself.
#[derive(Debug, Default)]
pub struct Asks {
    /// A LoRA that is not a `.safetensors` file (a pickle needs Python to read).
    pub pickled_lora: bool,
    /// `--vae`: a file the template route reads, or what it cannot read.
    pub vae: Option<Result<Replacement, &'static str>>,
    pub fp16: bool,
    pub optimize: bool,
}

/// The route an import takes.
#[derive(Debug)]
pub enum Chosen {
    /// Through this template, with the checked header of the checkpoint and the replacement VAE.
    Template {
        template: Box<Template>,
        header: Box<Header>,
        vae: Option<Box<Replacement>>,
    },
    /// Through Python; why not a template (for the log), unless `--route python` asked for it.
    Python { why: Option<String> },
    /// `--build-template` and no template fits: build one into `into`, then through it.
    Build {
        header: Box<Header>,
        vae: Option<Box<Replacement>>,
        family: Family,
        into: PathBuf,
    },
}

/// What the template route cannot do of what `asks` asks, if anything.
fn cannot(asks: &Asks, header: Option<&Header>) -> Option<&'static str> {
    if header.is_none() {
        Some("a pickled .ckpt checkpoint (its tensors need Python to read)")
    } else if asks.fp16 {
        Some("--fp16")
    } else if asks.optimize {
        Some("--optimize")
    } else if let Some(Err(what)) = &asks.vae {
        Some(what)
    } else if asks.pickled_lora {
        Some("a pickled LoRA (.pt/.ckpt; its tensors need Python to read)")
    } else {
        None
    }
}

/// Chooses the route for a checkpoint (`header`: none for a `.ckpt`) of `family`; with `build`
/// (`--build-template`), a template is built when none fits.
pub fn choose(
    route: Route,
    build: bool,
    asks: Asks,
    checkpoint: &Path,
    header: Option<&Header>,
    family: Option<Family>,
    dirs: &[PathBuf],
) -> Result<Chosen, ImportError> {
    let refuse = |reason: String| ImportError::Refuse {
        path: checkpoint.to_path_buf(),
        reason,
    };
    let asked = if build {
        "--build-template"
    } else {
        "--route template"
    };
    match route {
        Route::Python if build => {
            return Err(refuse(
                "--build-template is for the template route, not --route python".into(),
            ));
        }
        Route::Python => return Ok(Chosen::Python { why: None }),
        _ => {}
    }
    if let Some(what) = cannot(&asks, header) {
        let why = format!("the template route cannot do {what}");
        return match route {
            Route::Auto if !build => Ok(Chosen::Python { why: Some(why) }),
            _ => Err(refuse(format!("{asked}: {why}"))),
        };
    }
    let (Some(header), Some(family)) = (header, family) else {
        return Ok(Chosen::Python {
            why: Some("the checkpoint's family is not known".into()),
        });
    };
    let vae = match asks.vae {
        Some(Ok(replacement)) => Some(Box::new(replacement)),
        _ => None,
    };
    match find(dirs, header, family, vae.as_deref()) {
        Ok(template) => Ok(Chosen::Template {
            template: Box::new(template),
            header: Box::new(header.clone()),
            vae,
        }),
        Err(_) if build => match dirs.first() {
            Some(into) => Ok(Chosen::Build {
                header: Box::new(header.clone()),
                vae,
                family,
                into: into.clone(),
            }),
            None => Err(refuse(
                "--build-template: no template folder (import.templates is empty)".into(),
            )),
        },
        Err(reasons) => {
            let why = format!("no import template fits: {}", reasons.join("; "));
            match route {
                Route::Template => Err(refuse(format!("--route template: {why}"))),
                _ => Ok(Chosen::Python { why: Some(why) }),
            }
        }
    }
}

/// The first template of `family` in `dirs` (each searched in name order) that the checkpoint
/// fits; or why none does, one reason per template looked at.
pub fn find(
    dirs: &[PathBuf],
    header: &Header,
    family: Family,
    vae: Option<&Replacement>,
) -> Result<Template, Vec<String>> {
    let mut reasons = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            reasons.push(format!("{}: no such folder", dir.display()));
            continue;
        };
        let mut folders: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(template::TEMPLATE_FILE).is_file())
            .collect();
        folders.sort();
        for folder in folders {
            let template = match Template::read(&folder) {
                Ok(t) => t,
                Err(e) => {
                    reasons.push(e.to_string());
                    continue;
                }
            };
            if template.family != family {
                continue;
            }
            match template::fit::check(&template, header, vae) {
                Ok(()) => return Ok(template),
                Err(misfit) => reasons.push(format!("{}: {misfit}", folder.display())),
            }
        }
    }
    if reasons.is_empty() {
        reasons.push(format!("no {family} template in {}", shown(dirs)));
    }
    Err(reasons)
}

fn shown(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
