//! The files of a Stable Diffusion model folder as Hugging Face optimum exports it, and the
//! model family its model_index.json names ([`Family`]).
//!
//! ```text
//! model_index.json
//! text_encoder/model.onnx
//! unet/model.onnx            (+ model.onnx_data when the weights are over 2 GB)
//! vae_decoder/model.onnx     (+ config.json with the VAE's scaling_factor)
//! vae_encoder/model.onnx     (optional: only image-to-image needs it)
//! tokenizer/vocab.json + merges.txt, or tokenizer/tokenizer.json
//! scheduler/scheduler_config.json
//! ```

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::family::Family;
use super::signature::Component;

/// SD 1.x and 2.x VAEs; used when an export carries no VAE config.
pub const DEFAULT_VAE_SCALING_FACTOR: f32 = 0.18215;
/// SD's VAE: four levels, three downsamplings.
pub const DEFAULT_VAE_DOWNSAMPLING: usize = 8;

/// Most latent channels a config may state (SD's VAE has 4; later latent spaces 16).
const MAX_LATENT_CHANNELS: usize = 1024;

/// Largest JSON file read from a model folder (configs are a few kilobytes; tokenizer.json of
/// CLIP is about 2 MB).
const MAX_JSON_BYTES: u64 = 64 << 20;

/// A model folder that is not usable.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("model folder {0} does not exist or is not a folder")]
    NoFolder(PathBuf),
    #[error("{path}: missing {what}")]
    Missing { path: PathBuf, what: String },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: `{field}` {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error(transparent)]
    Provenance(#[from] super::provenance::ProvenanceError),
}

/// An image side (`width` or `height`) the model cannot take; worded to follow the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "is {value}; this model needs a positive multiple of {multiple} (VAE downsampling {vae_downsampling} x UNet downsampling {unet_downsampling})"
)]
pub struct SideError {
    pub value: u32,
    pub multiple: usize,
    pub vae_downsampling: usize,
    pub unet_downsampling: usize,
}

/// Where the tokenizer's vocabulary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerFiles {
    /// `tokenizer.json` (transformers' fast tokenizer format).
    Json(PathBuf),
    /// `vocab.json` + `merges.txt` (CLIP's slow tokenizer format, what optimum saves).
    VocabMerges { vocab: PathBuf, merges: PathBuf },
}

/// The checked files of a model folder; nothing loaded into ONNX Runtime yet.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    pub root: PathBuf,
    /// `_class_name` from model_index.json, e.g. `StableDiffusionPipeline`; `None` when the file
    /// names no class.
    pub pipeline_class: Option<String>,
    /// The model family `pipeline_class` names (SD 1.x/2.x when there is none).
    pub family: Family,
    /// The family's first text encoder: `text_encoder/model.onnx`, or for the SDXL refiner
    /// (which has only the second) `text_encoder_2/model.onnx`.
    pub text_encoder: PathBuf,
    /// SDXL base's second text encoder, `text_encoder_2/model.onnx`.
    pub text_encoder_2: Option<PathBuf>,
    pub unet: PathBuf,
    pub vae_decoder: PathBuf,
    pub vae_encoder: Option<PathBuf>,
    /// The tokenizer of [`Self::text_encoder`] (`tokenizer/`, the refiner's `tokenizer_2/`).
    pub tokenizer_dir: PathBuf,
    pub tokenizer: TokenizerFiles,
    /// The tokenizer of [`Self::text_encoder_2`] (`tokenizer_2/`).
    pub tokenizer_2_dir: Option<PathBuf>,
    pub scheduler_config: PathBuf,
    /// model_index.json's `force_zeros_for_empty_prompt` (SDXL; diffusers' default true): no
    /// negative prompt gives zero negative conditioning rather than an encoded empty string.
    pub force_zeros_for_empty_prompt: bool,
    /// model_index.json's `requires_aesthetics_score` (the SDXL refiner; default false).
    pub requires_aesthetics_score: bool,
    /// The VAE config's `force_upcast`: the VAE overflows in float16 (SDXL's), so a float16
    /// folder must decode in float32.
    pub vae_force_upcast: bool,
    /// From the VAE config's `scaling_factor`.
    pub vae_scaling_factor: f32,
    /// Where the scaling factor came from: the config file, or `None` for the default.
    pub vae_scaling_source: Option<PathBuf>,
    /// Image pixels per latent pixel along each side: `2^(levels - 1)` for a VAE config with
    /// `block_out_channels` of `levels` entries (diffusers' `vae_scale_factor`); 8 without one.
    pub vae_downsampling: usize,
    /// Latent pixels per pixel of the UNet's coarsest level: `2^(levels - 1)` for a UNet config
    /// with `block_out_channels` of `levels` entries; 1 (no rule) without one. An exported UNet
    /// takes only latents divisible by it (the trace fixes each upsampling at 2x).
    pub unet_downsampling: usize,
    /// unet/config.json's `out_channels`: the latent channels the UNet predicts, when stated.
    pub unet_out_channels: Option<usize>,
    /// The VAE config's `latent_channels`, when stated.
    pub vae_latent_channels: Option<usize>,
    /// Where the folder came from (`sdspool-source.json`), when it says.
    pub provenance: Option<super::provenance::Provenance>,
}

impl ModelFolder {
    /// Checks that every file the pipeline needs is there and reads the small JSON configs.
    pub fn open(root: &Path) -> Result<ModelFolder, LayoutError> {
        if !root.is_dir() {
            return Err(LayoutError::NoFolder(root.to_path_buf()));
        }
        let index_path = root.join("model_index.json");
        let index = read_json(
            &index_path,
            "model_index.json (the pipeline description optimum copies from the PyTorch model)",
        )?;
        let (pipeline_class, family) = family(&index, &index_path)?;

        let parts = family_parts(root, family, &index_path, pipeline_class.as_deref())?;
        let vae_encoder = onnx_file(root, Component::VaeEncoder).ok();

        let scheduler_config = root.join("scheduler").join("scheduler_config.json");
        read_json(&scheduler_config, "the scheduler configuration")?;

        let vae = vae_config(root)?;
        let unet_config = unet_config(root)?;

        let provenance = super::provenance::Provenance::read(root, Some(family))?;

        let flag =
            |key: &str, default: bool| index.get(key).and_then(Value::as_bool).unwrap_or(default);
        Ok(ModelFolder {
            root: root.to_path_buf(),
            pipeline_class,
            family,
            text_encoder: parts.text_encoder,
            text_encoder_2: parts.text_encoder_2,
            unet: parts.unet,
            vae_decoder: parts.vae_decoder,
            vae_encoder,
            tokenizer_dir: parts.tokenizer_dir,
            tokenizer: parts.tokenizer,
            tokenizer_2_dir: parts.tokenizer_2_dir,
            scheduler_config,
            force_zeros_for_empty_prompt: flag("force_zeros_for_empty_prompt", true),
            requires_aesthetics_score: flag("requires_aesthetics_score", false),
            vae_force_upcast: vae.force_upcast,
            vae_scaling_factor: vae.scaling_factor,
            vae_scaling_source: vae.source,
            vae_downsampling: vae.downsampling,
            unet_downsampling: unet_config.downsampling,
            unet_out_channels: unet_config.out_channels,
            vae_latent_channels: vae.latent_channels,
            provenance,
        })
    }

    /// What every image side must be a multiple of: the VAE's downsampling times the UNet's
    /// (at least 8).
    pub fn size_multiple(&self) -> usize {
        (self.vae_downsampling * self.unet_downsampling).max(8)
    }

    /// Checks one image side (`width` or `height`) against [`Self::size_multiple`]; the problem,
    /// worded to follow the field's name, when it does not fit.
    pub fn check_side(&self, v: u32) -> Result<(), SideError> {
        let multiple = self.size_multiple();
        if v == 0 || !(v as usize).is_multiple_of(multiple) {
            return Err(SideError {
                value: v,
                multiple,
                vae_downsampling: self.vae_downsampling,
                unet_downsampling: self.unet_downsampling,
            });
        }
        Ok(())
    }

    /// The ONNX file of a component.
    pub fn onnx(&self, c: Component) -> Option<&Path> {
        match c {
            Component::TextEncoder if self.family == Family::SdxlRefiner => None,
            Component::TextEncoder => Some(&self.text_encoder),
            Component::TextEncoder2 if self.family == Family::SdxlRefiner => {
                Some(&self.text_encoder)
            }
            Component::TextEncoder2 => self.text_encoder_2.as_deref(),
            Component::Unet => Some(&self.unet),
            Component::VaeDecoder => Some(&self.vae_decoder),
            Component::VaeEncoder => self.vae_encoder.as_deref(),
        }
    }
}

/// `<part>/model.onnx`, or what is missing.
fn onnx_file(root: &Path, c: Component) -> Result<PathBuf, LayoutError> {
    let p = root.join(c.dir()).join("model.onnx");
    if p.is_file() {
        Ok(p)
    } else {
        Err(LayoutError::Missing {
            path: p,
            what: format!(
                "the {c} model (export the pipeline with optimum's `--task text-to-image`)"
            ),
        })
    }
}

/// The files of a family's required parts.
struct FamilyParts {
    text_encoder: PathBuf,
    text_encoder_2: Option<PathBuf>,
    unet: PathBuf,
    vae_decoder: PathBuf,
    tokenizer_dir: PathBuf,
    tokenizer: TokenizerFiles,
    tokenizer_2_dir: Option<PathBuf>,
}

/// The parts `family` needs. A folder that lacks one of them but has every part of another
/// family (parts of two pipelines mixed, or a model_index.json from another model) is refused
/// naming the class, the missing part and the families the parts fit.
fn family_parts(
    root: &Path,
    family: Family,
    index_path: &Path,
    class: Option<&str>,
) -> Result<FamilyParts, LayoutError> {
    let has = |c: &Component| onnx_file(root, *c).is_ok();
    if let Some(missing) = family.required_parts().iter().find(|c| !has(c))
        && let Some(class) = class
    {
        let fits: Vec<String> = Family::ALL
            .iter()
            .filter(|f| f.required_parts().iter().all(has))
            .map(|f| format!("{} ({})", f.pipeline_classes()[0], f.name()))
            .collect();
        if !fits.is_empty() {
            return Err(LayoutError::Field {
                path: index_path.to_path_buf(),
                field: "_class_name".into(),
                problem: format!(
                    "is {class:?} (the {} family), which needs {missing}/model.onnx, but the                      folder has none; its parts are those of {}: a folder that mixes two                      pipelines, or the wrong model_index.json",
                    family.name(),
                    fits.join(" or ")
                ),
            });
        }
    }
    let mut encoders = Vec::new();
    let mut tokenizers = Vec::new();
    for c in family.required_parts() {
        if matches!(c, Component::TextEncoder | Component::TextEncoder2) {
            encoders.push(onnx_file(root, *c)?);
            let dir = root.join(match c {
                Component::TextEncoder2 => "tokenizer_2",
                _ => "tokenizer",
            });
            let files = tokenizer_files(&dir)?;
            tokenizers.push((dir, files));
        }
    }
    let mut encoders = encoders.into_iter();
    let mut tokenizers = tokenizers.into_iter();
    let (tokenizer_dir, tokenizer) = tokenizers.next().expect("every family has a text encoder");
    Ok(FamilyParts {
        text_encoder: encoders.next().expect("every family has a text encoder"),
        text_encoder_2: encoders.next(),
        unet: onnx_file(root, Component::Unet)?,
        vae_decoder: onnx_file(root, Component::VaeDecoder)?,
        tokenizer_dir,
        tokenizer,
        tokenizer_2_dir: tokenizers.next().map(|(dir, _)| dir),
    })
}

fn tokenizer_files(dir: &Path) -> Result<TokenizerFiles, LayoutError> {
    let json = dir.join("tokenizer.json");
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    if vocab.is_file() && merges.is_file() {
        Ok(TokenizerFiles::VocabMerges { vocab, merges })
    } else if json.is_file() {
        Ok(TokenizerFiles::Json(json))
    } else if vocab.is_file() {
        Err(LayoutError::Missing {
            path: merges,
            what: "the BPE merges that go with vocab.json".into(),
        })
    } else {
        Err(LayoutError::Missing {
            path: dir.to_path_buf(),
            what: "the tokenizer: vocab.json + merges.txt, or tokenizer.json".into(),
        })
    }
}

/// The pipeline class model_index.json names, and its family. A file without `_class_name`
/// (a hand-assembled folder) is taken as SD 1.x/2.x, as sdspool always read such folders; the
/// UNet's check still refuses a folder of another family.
fn family(index: &Value, index_path: &Path) -> Result<(Option<String>, Family), LayoutError> {
    let field = |problem: String| LayoutError::Field {
        path: index_path.to_path_buf(),
        field: "_class_name".into(),
        problem,
    };
    match index.get("_class_name") {
        None | Some(Value::Null) => Ok((None, Family::Sd)),
        Some(Value::String(class)) => match Family::from_pipeline_class(class) {
            Some(family) => Ok((Some(class.clone()), family)),
            None => Err(field(format!(
                "is {class:?}, a pipeline sdspool does not render; it renders {}",
                Family::supported_classes()
            ))),
        },
        Some(_) => Err(field("is not a string".into())),
    }
}

/// What the pipeline needs from unet/config.json.
struct UnetConfig {
    downsampling: usize,
    out_channels: Option<usize>,
}

/// `2^(levels - 1)` from unet/config.json's `block_out_channels` (1 when there is no config)
/// and its `out_channels`.
fn unet_config(root: &Path) -> Result<UnetConfig, LayoutError> {
    let path = root.join("unet").join("config.json");
    if !path.is_file() {
        return Ok(UnetConfig {
            downsampling: 1,
            out_channels: None,
        });
    }
    let config = read_json(&path, "the UNet configuration")?;
    Ok(UnetConfig {
        downsampling: downsampling(&config, &path, "UNet")?.unwrap_or(1),
        out_channels: channels(&config, &path, "out_channels")?,
    })
}

/// A channel count of a diffusers config; `None` without the key (or null).
fn channels(config: &Value, path: &Path, key: &str) -> Result<Option<usize>, LayoutError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_LATENT_CHANNELS as u64).contains(&n) => Ok(Some(n as usize)),
            _ => Err(LayoutError::Field {
                path: path.to_path_buf(),
                field: key.into(),
                problem: format!(
                    "is {v}, expected a channel count from 1 to {MAX_LATENT_CHANNELS}"
                ),
            }),
        },
    }
}

/// `2^(levels - 1)` for a diffusers config whose `block_out_channels` lists `levels` channel
/// counts (one downsampling between levels); `None` without the key.
fn downsampling(config: &Value, path: &Path, part: &str) -> Result<Option<usize>, LayoutError> {
    match config.get("block_out_channels") {
        None => Ok(None),
        Some(Value::Array(levels)) if (1..=6).contains(&levels.len()) => {
            Ok(Some(1 << (levels.len() - 1)))
        }
        Some(v) => Err(LayoutError::Field {
            path: path.to_path_buf(),
            field: "block_out_channels".into(),
            problem: format!(
                "is {v}, expected a list of 1 to 6 channel counts (one per {part} level)"
            ),
        }),
    }
}

/// What the pipeline needs from the VAE's config.json.
struct VaeConfig {
    force_upcast: bool,
    scaling_factor: f32,
    source: Option<PathBuf>,
    downsampling: usize,
    latent_channels: Option<usize>,
}

/// The VAE's latent scaling factor and downsampling: optimum writes the VAE config beside each
/// VAE model. Without one, SD's values (0.18215, 8).
fn vae_config(root: &Path) -> Result<VaeConfig, LayoutError> {
    for dir in ["vae_decoder", "vae_encoder", "vae"] {
        let path = root.join(dir).join("config.json");
        if !path.is_file() {
            continue;
        }
        let config = read_json(&path, "the VAE configuration")?;
        let downsampling = downsampling(&config, &path, "VAE")?.unwrap_or(DEFAULT_VAE_DOWNSAMPLING);
        let latent_channels = channels(&config, &path, "latent_channels")?;
        let (scaling_factor, source) = match config.get("scaling_factor") {
            None => (DEFAULT_VAE_SCALING_FACTOR, None),
            Some(v) => match v.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => (f as f32, Some(path)),
                _ => {
                    return Err(LayoutError::Field {
                        path,
                        field: "scaling_factor".into(),
                        problem: format!("is {v}, expected a positive number such as 0.18215"),
                    });
                }
            },
        };
        let force_upcast = config
            .get("force_upcast")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        return Ok(VaeConfig {
            force_upcast,
            scaling_factor,
            source,
            downsampling,
            latent_channels,
        });
    }
    Ok(VaeConfig {
        force_upcast: false,
        scaling_factor: DEFAULT_VAE_SCALING_FACTOR,
        source: None,
        downsampling: DEFAULT_VAE_DOWNSAMPLING,
        latent_channels: None,
    })
}

/// `force_upcast` of the VAE config in a (model or VAE) folder; false without one.
pub fn vae_force_upcast(root: &Path) -> Result<bool, LayoutError> {
    Ok(vae_config(root)?.force_upcast)
}

/// Reads a JSON file of a model folder; `what` says what the file is for in the error.
pub fn read_json(path: &Path, what: &str) -> Result<Value, LayoutError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LayoutError::Missing {
                path: path.to_path_buf(),
                what: what.to_string(),
            });
        }
        Err(source) => {
            return Err(LayoutError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if meta.len() > MAX_JSON_BYTES {
        return Err(LayoutError::Field {
            path: path.to_path_buf(),
            field: "(file size)".into(),
            problem: format!(
                "is {} bytes; more than the {MAX_JSON_BYTES} bytes a config can be",
                meta.len()
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| LayoutError::Json {
        path: path.to_path_buf(),
        source,
    })
}
