//! The files of a Stable Diffusion model folder as Hugging Face optimum exports it.
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

use super::signature::Component;

/// SD 1.x and 2.x VAEs; used when an export carries no VAE config.
pub const DEFAULT_VAE_SCALING_FACTOR: f32 = 0.18215;
/// SD's VAE: four levels, three downsamplings.
pub const DEFAULT_VAE_DOWNSAMPLING: usize = 8;

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
    #[error("{path}: not valid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("{path}: `{field}` {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
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
    /// `_class_name` from model_index.json, e.g. `StableDiffusionPipeline`.
    pub pipeline_class: String,
    pub text_encoder: PathBuf,
    pub unet: PathBuf,
    pub vae_decoder: PathBuf,
    pub vae_encoder: Option<PathBuf>,
    pub tokenizer_dir: PathBuf,
    pub tokenizer: TokenizerFiles,
    pub scheduler_config: PathBuf,
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
        let pipeline_class = match index.get("_class_name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(LayoutError::Field {
                    path: index_path,
                    field: "_class_name".into(),
                    problem: "is not a string".into(),
                });
            }
            None => "unknown".to_string(),
        };

        let onnx = |c: Component| -> Result<PathBuf, LayoutError> {
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
        };
        let text_encoder = onnx(Component::TextEncoder)?;
        let unet = onnx(Component::Unet)?;
        let vae_decoder = onnx(Component::VaeDecoder)?;
        let vae_encoder = onnx(Component::VaeEncoder).ok();

        let tokenizer_dir = root.join("tokenizer");
        let tokenizer = tokenizer_files(&tokenizer_dir)?;

        let scheduler_config = root.join("scheduler").join("scheduler_config.json");
        read_json(&scheduler_config, "the scheduler configuration")?;

        let vae = vae_config(root)?;
        let unet_downsampling = unet_downsampling(root)?;

        Ok(ModelFolder {
            root: root.to_path_buf(),
            pipeline_class,
            text_encoder,
            unet,
            vae_decoder,
            vae_encoder,
            tokenizer_dir,
            tokenizer,
            scheduler_config,
            vae_scaling_factor: vae.scaling_factor,
            vae_scaling_source: vae.source,
            vae_downsampling: vae.downsampling,
            unet_downsampling,
        })
    }

    /// What every image side must be a multiple of: the VAE's downsampling times the UNet's
    /// (at least 8).
    pub fn size_multiple(&self) -> usize {
        (self.vae_downsampling * self.unet_downsampling).max(8)
    }

    /// Checks one image side (`width` or `height`) against [`Self::size_multiple`]; the problem,
    /// worded to follow the field's name, when it does not fit.
    pub fn check_side(&self, v: u32) -> Result<(), String> {
        let multiple = self.size_multiple();
        if v == 0 || !(v as usize).is_multiple_of(multiple) {
            return Err(format!(
                "is {v}; this model needs a positive multiple of {multiple} (VAE downsampling {} x UNet downsampling {})",
                self.vae_downsampling, self.unet_downsampling
            ));
        }
        Ok(())
    }

    /// The ONNX file of a component.
    pub fn onnx(&self, c: Component) -> Option<&Path> {
        match c {
            Component::TextEncoder => Some(&self.text_encoder),
            Component::Unet => Some(&self.unet),
            Component::VaeDecoder => Some(&self.vae_decoder),
            Component::VaeEncoder => self.vae_encoder.as_deref(),
        }
    }
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

/// `2^(levels - 1)` from unet/config.json's `block_out_channels`; 1 when there is no config.
fn unet_downsampling(root: &Path) -> Result<usize, LayoutError> {
    let path = root.join("unet").join("config.json");
    if !path.is_file() {
        return Ok(1);
    }
    let config = read_json(&path, "the UNet configuration")?;
    Ok(downsampling(&config, &path, "UNet")?.unwrap_or(1))
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
    scaling_factor: f32,
    source: Option<PathBuf>,
    downsampling: usize,
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
        return Ok(VaeConfig {
            scaling_factor,
            source,
            downsampling,
        });
    }
    Ok(VaeConfig {
        scaling_factor: DEFAULT_VAE_SCALING_FACTOR,
        source: None,
        downsampling: DEFAULT_VAE_DOWNSAMPLING,
    })
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
    serde_json::from_str(&text).map_err(|e| LayoutError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
