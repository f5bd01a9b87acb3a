//! CLIP reranking: how well each candidate image fits its prompt.
//!
//! A [`Reranker`] holds a CLIP model's ONNX sessions (created once, reused for every prompt),
//! its tokenizer and its image preprocessing. Each image is scored by the cosine similarity of
//! the L2-normalised text and image embeddings ([`Score::cosine`]) and by CLIPScore
//! (`100 * max(cos, 0)`, [`Score::clip_score`]); [`rank`] orders a prompt's candidates. The
//! embeddings are normalised here whatever the export returns: optimum's `CLIPModel` export
//! normalises them already, separately exported towers return raw projections.
//!
//! * [`model`]: the accepted folder layouts (optimum's one `model.onnx`, or
//!   `text_model.onnx` + `vision_model.onnx`) and their signature checks;
//! * [`preprocess`]: transformers' `CLIPImageProcessor` from `preprocessor_config.json`, with
//!   Pillow's resampling ported in [`resample`], so `pixel_values` are transformers' bit for bit;
//! * prompts go through [`crate::engine::tokenizer::ClipTokenizer`] (the model folder's own files),
//!   padded to 77 with an attention mask, as `CLIPProcessor(padding="max_length")` does.
//!
//! **Feeding the one-file export.** optimum's `CLIPModel` graph has both towers and takes
//! `input_ids`, `attention_mask` and `pixel_values` on every run, with separate batch axes for
//! texts and images (a zero-sized batch is refused by its Reshape nodes, checked with ONNX
//! Runtime 1.31). The reranker therefore
//! * encodes a prompt's text together with the first batch of its images in one run (no extra
//!   work), and remembers the normalised text embedding (the last 64 prompts), so a prompt's text
//!   is encoded once however many batches or calls its candidates take;
//! * runs the other image batches with a placeholder text of two tokens
//!   (`<|startoftext|><|endoftext|>`: a negligible text-tower cost; the export's own fixed
//!   length when it has one);
//! * only when a text embedding is asked for on its own ([`Reranker::text_embedding`] with an
//!   uncached prompt) runs the vision tower on one placeholder image (zeros), the one case that
//!   costs a wasted vision pass.
//!
//! With the two-tower layout every run is useful: texts through `text_model.onnx`, images in
//! batches of `batch_size` through `vision_model.onnx`. [`Reranker::stats`] counts runs and
//! placeholder inputs.

pub mod model;
pub mod preprocess;
pub mod resample;

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use image::RgbImage;
use serde::Deserialize;

use crate::runtime::signature::{Signature, SignatureError};
use crate::runtime::tensors;
use crate::runtime::{LoadedSession, Runtime, RuntimeError};
use crate::engine::tokenizer::{ClipTokenizer, TokenizerError};
use model::{Layout, RerankFolder, TextFeed, VisionFeed};
pub use preprocess::ImageProcessor;

/// How many prompts' text embeddings a reranker keeps.
const TEXT_CACHE: usize = 64;

/// `rerank:` section of config.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankConfig {
    /// The CLIP model folder (see [`model`]); relative to the config file's folder.
    pub model: PathBuf,
    /// Whether candidates are scored. The daemon does not load the model when false;
    /// [`Reranker::load`] itself does not look at it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most images in one vision run.
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
}

fn yes() -> bool {
    true
}

fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(8).expect("8 is not zero")
}

/// Why a rerank model could not be loaded or run. Each names the file, and the field or key.
#[derive(Debug, thiserror::Error)]
pub enum RerankError {
    #[error("rerank model {}: {source}", folder.display())]
    Folder {
        folder: PathBuf,
        #[source]
        source: model::FolderError,
    },
    #[error("{}: {}{problem}", file.display(), if field.is_empty() { String::new() } else { format!("`{field}` ") })]
    Preprocessor {
        file: PathBuf,
        /// The key of preprocessor_config.json; empty for the file as a whole.
        field: String,
        problem: String,
    },
    #[error("{}: cannot read: {source}", file.display())]
    PreprocessorRead {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: is not valid JSON: {source}", file.display())]
    PreprocessorJson {
        file: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("rerank tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("rerank model: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("rerank model: {0}")]
    Signature(#[from] SignatureError),
    #[error("{}: ONNX Runtime failed: {source}", file.display())]
    Run {
        file: PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error("{}: output '{output}' {problem}", file.display())]
    Output {
        file: PathBuf,
        output: String,
        problem: String,
    },
}

/// One image's fit to its prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Cosine similarity of the normalised embeddings, in [-1, 1].
    pub cosine: f32,
    /// CLIPScore: `100 * max(cosine, 0)`.
    pub clip_score: f32,
}

impl Score {
    pub fn from_cosine(cosine: f32) -> Score {
        Score {
            cosine,
            clip_score: clip_score(cosine),
        }
    }
}

/// CLIPScore of one image: `100 * max(cos, 0)` (torchmetrics' `CLIPScore` for a single image;
/// for a batch it averages `100 * cos` before clamping).
pub fn clip_score(cosine: f32) -> f32 {
    100.0 * cosine.max(0.0)
}

/// Cosine similarity of two vectors (computed in float64).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

/// The rank of each candidate (0 = best): higher scores first, ties to the lower candidate
/// index, NaN after every number.
pub fn rank(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        let by_score = match (x.is_nan(), y.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => y.partial_cmp(&x).expect("not NaN"),
        };
        by_score.then(a.cmp(&b))
    });
    let mut ranks = vec![0; scores.len()];
    for (r, i) in order.into_iter().enumerate() {
        ranks[i] = r;
    }
    ranks
}

/// Counters of what a reranker ran, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RerankStats {
    /// ONNX Runtime session runs.
    pub runs: usize,
    /// Prompts whose text went through the text tower (the others came from the cache).
    pub texts_encoded: usize,
    /// Images that went through the vision tower.
    pub images_encoded: usize,
    /// One-file model only: runs that carried a placeholder text / a placeholder image.
    pub placeholder_texts: usize,
    pub placeholder_images: usize,
}

/// One tokenized text: `len` ids and their attention mask.
struct Tokens {
    ids: Vec<i64>,
    mask: Vec<i64>,
}

enum Towers {
    Joint {
        session: LoadedSession,
        text: TextFeed,
        vision: VisionFeed,
    },
    Split {
        text_session: LoadedSession,
        text: TextFeed,
        vision_session: LoadedSession,
        vision: VisionFeed,
    },
}

/// A loaded CLIP model: sessions, tokenizer and preprocessing (see the [module docs](self)).
pub struct Reranker {
    folder: RerankFolder,
    tokenizer: ClipTokenizer,
    processor: ImageProcessor,
    /// (height, width) of `pixel_values`.
    image_size: (u32, u32),
    towers: Towers,
    batch_size: usize,
    /// Most recently computed last.
    cache: Vec<(String, Vec<f32>)>,
    stats: RerankStats,
}

impl std::fmt::Debug for Reranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reranker")
            .field("folder", &self.folder)
            .field("image_size", &self.image_size)
            .field("batch_size", &self.batch_size)
            .field("stats", &self.stats)
            .finish()
    }
}

fn run_err(file: &Path, source: ort::Error) -> RerankError {
    RerankError::Run {
        file: file.to_path_buf(),
        source,
    }
}

/// Rows of a `[n, d]` output, L2-normalised.
fn normalized_rows(
    value: &ort::value::DynValue,
    file: &Path,
    output: &str,
    n: usize,
) -> Result<Vec<Vec<f32>>, RerankError> {
    let out_err = |problem: String| RerankError::Output {
        file: file.to_path_buf(),
        output: output.to_string(),
        problem,
    };
    let a = tensors::extract_float(value).map_err(|e| run_err(file, e))?;
    if a.ndim() != 2 || a.shape()[0] != n || a.shape()[1] == 0 {
        return Err(out_err(format!(
            "has shape {:?}, expected [{n}, embedding]",
            a.shape()
        )));
    }
    let d = a.shape()[1];
    let flat: Vec<f32> = a.iter().copied().collect();
    flat.chunks(d)
        .map(|row| {
            let norm = row
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum::<f64>()
                .sqrt();
            if !(norm.is_finite() && norm > 0.0) {
                return Err(out_err(format!(
                    "has a row of norm {norm}: cannot normalise it"
                )));
            }
            Ok(row.iter().map(|&x| (f64::from(x) / norm) as f32).collect())
        })
        .collect()
}

fn output<'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    name: &str,
    file: &Path,
) -> Result<&'a ort::value::DynValue, RerankError> {
    outputs.get(name).ok_or_else(|| RerankError::Output {
        file: file.to_path_buf(),
        output: name.to_string(),
        problem: "was not returned".to_string(),
    })
}

impl Reranker {
    /// Opens the folder `cfg.model`, creates its sessions on `device_id` with the runtime's
    /// providers, and checks their signatures against the tokenizer and the preprocessor.
    pub fn load(
        runtime: &Runtime,
        cfg: &RerankConfig,
        device_id: i32,
    ) -> Result<Reranker, RerankError> {
        let folder = RerankFolder::open(&cfg.model).map_err(|source| RerankError::Folder {
            folder: cfg.model.clone(),
            source,
        })?;
        let tokenizer = ClipTokenizer::from_dir(&folder.tokenizer_dir)?;
        let processor = ImageProcessor::from_file(&folder.preprocessor)?;
        let image_size = processor.output_size().ok_or_else(|| RerankError::Preprocessor {
            file: folder.preprocessor.clone(),
            field: "do_center_crop".into(),
            problem: "is false and `size` is not an exact height and width: images of different shapes could not share a batch".into(),
        })?;
        let seq_len = tokenizer.model_max_length();
        let towers = match &folder.layout {
            Layout::Joint { model } => {
                let session = runtime.session(model, device_id)?;
                let sig = Signature::of(&session.session);
                let (text, vision) = model::check_joint(model, &sig, seq_len, Some(image_size))?;
                tracing::info!(file = %model.display(), providers = %session.providers, "rerank session ready (one-file CLIP export)");
                Towers::Joint {
                    session,
                    text,
                    vision,
                }
            }
            Layout::Split { text, vision } => {
                let text_session = runtime.session(text, device_id)?;
                let text_feed =
                    model::check_text(text, &Signature::of(&text_session.session), seq_len)?;
                let vision_session = runtime.session(vision, device_id)?;
                let vision_feed = model::check_vision(
                    vision,
                    &Signature::of(&vision_session.session),
                    Some(image_size),
                    (text, &text_feed),
                )?;
                tracing::info!(file = %text.display(), providers = %text_session.providers, "rerank text session ready");
                tracing::info!(file = %vision.display(), providers = %vision_session.providers, "rerank vision session ready");
                Towers::Split {
                    text_session,
                    text: text_feed,
                    vision_session,
                    vision: vision_feed,
                }
            }
        };
        Ok(Reranker {
            folder,
            tokenizer,
            processor,
            image_size,
            towers,
            batch_size: cfg.batch_size.get(),
            cache: Vec::new(),
            stats: RerankStats::default(),
        })
    }

    /// The folder's files and layout.
    pub fn folder(&self) -> &RerankFolder {
        &self.folder
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn stats(&self) -> RerankStats {
        self.stats
    }

    /// The sessions, with the report of which provider serves each.
    pub fn sessions(&self) -> Vec<&LoadedSession> {
        match &self.towers {
            Towers::Joint { session, .. } => vec![session],
            Towers::Split {
                text_session,
                vision_session,
                ..
            } => vec![text_session, vision_session],
        }
    }

    /// The normalised text embedding of `prompt` (from the cache when it was computed lately).
    pub fn text_embedding(&mut self, prompt: &str) -> Result<Vec<f32>, RerankError> {
        if let Some(t) = self.cached(prompt) {
            return Ok(t);
        }
        let tokens = self.prompt_tokens(prompt)?;
        let t = match &self.towers {
            Towers::Split { .. } => self.run_text(&tokens)?,
            Towers::Joint { .. } => {
                let (h, w) = self.image_size;
                let placeholder = vec![0.0f32; 3 * h as usize * w as usize];
                let t = self.run_joint(&tokens, &placeholder, 1)?.0;
                self.stats.placeholder_images += 1;
                self.stats.texts_encoded += 1;
                t
            }
        };
        self.remember(prompt, t.clone());
        Ok(t)
    }

    /// The normalised embeddings of `images`, `batch_size` images per run.
    pub fn image_embeddings(&mut self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, RerankError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch_size) {
            let pixels = self.pixel_values(chunk);
            let embeds = match &self.towers {
                Towers::Split { .. } => self.run_vision(&pixels, chunk.len())?,
                Towers::Joint { .. } => {
                    let tokens = self.placeholder_tokens();
                    let embeds = self.run_joint(&tokens, &pixels, chunk.len())?.1;
                    self.stats.placeholder_texts += 1;
                    self.stats.images_encoded += chunk.len();
                    embeds
                }
            };
            out.extend(embeds);
        }
        Ok(out)
    }

    /// Scores each image against `prompt`. The prompt's text is encoded once (with the
    /// one-file export, in the run of the first image batch).
    pub fn score(&mut self, prompt: &str, images: &[RgbImage]) -> Result<Vec<Score>, RerankError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let cached = self.cached(prompt);
        let joint = matches!(self.towers, Towers::Joint { .. });
        let (text, embeds) = match cached {
            None if joint => {
                let first = &images[..images.len().min(self.batch_size)];
                let tokens = self.prompt_tokens(prompt)?;
                let pixels = self.pixel_values(first);
                let (text, mut embeds) = self.run_joint(&tokens, &pixels, first.len())?;
                self.stats.texts_encoded += 1;
                self.stats.images_encoded += first.len();
                self.remember(prompt, text.clone());
                embeds.extend(self.image_embeddings(&images[first.len()..])?);
                (text, embeds)
            }
            Some(text) => (text, self.image_embeddings(images)?),
            None => {
                let text = self.text_embedding(prompt)?;
                (text, self.image_embeddings(images)?)
            }
        };
        Ok(embeds
            .iter()
            .map(|e| Score::from_cosine(cosine(&text, e)))
            .collect())
    }

    /// `pixel_values` of some images, `[n, 3, h, w]` flattened.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Vec<f32> {
        let mut out = Vec::with_capacity(
            images.len() * 3 * self.image_size.0 as usize * self.image_size.1 as usize,
        );
        for image in images {
            let crop = self.processor.resize_and_crop(image);
            self.processor.normalize_into(&crop, &mut out);
        }
        out
    }

    fn cached(&mut self, prompt: &str) -> Option<Vec<f32>> {
        let i = self.cache.iter().position(|(p, _)| p == prompt)?;
        let entry = self.cache.remove(i);
        let t = entry.1.clone();
        self.cache.push(entry);
        Some(t)
    }

    fn remember(&mut self, prompt: &str, text: Vec<f32>) {
        if self.cache.len() >= TEXT_CACHE {
            self.cache.remove(0);
        }
        self.cache.push((prompt.to_string(), text));
    }

    fn text_feed(&self) -> TextFeed {
        match &self.towers {
            Towers::Joint { text, .. } | Towers::Split { text, .. } => *text,
        }
    }

    /// The prompt's ids padded to the tokenizer's length, mask 1 over bos..eos.
    fn prompt_tokens(&self, prompt: &str) -> Result<Tokens, RerankError> {
        let enc = self.tokenizer.encode(prompt)?;
        let mask = (0..enc.ids.len())
            .map(|i| i64::from(i < enc.n_tokens))
            .collect();
        Ok(Tokens { ids: enc.ids, mask })
    }

    /// `<|startoftext|><|endoftext|>`, padded when the export fixes the sequence length.
    fn placeholder_tokens(&self) -> Tokens {
        let len = self.text_feed().fixed_len.unwrap_or(2).max(2);
        let mut ids = vec![i64::from(self.tokenizer.pad_id()); len];
        ids[0] = i64::from(self.tokenizer.bos_id());
        ids[1] = i64::from(self.tokenizer.eos_id());
        let mask = (0..len).map(|i| i64::from(i < 2)).collect();
        Tokens { ids, mask }
    }

    fn text_inputs(
        feed: &TextFeed,
        tokens: &Tokens,
        file: &Path,
    ) -> Result<Vec<(Cow<'static, str>, ort::session::SessionInputValue<'static>)>, RerankError>
    {
        let shape = [1, tokens.ids.len()];
        let mut inputs = vec![(
            Cow::Borrowed("input_ids"),
            tensors::int_tensor(&shape, &tokens.ids, feed.ids)
                .map_err(|e| run_err(file, e))?
                .into(),
        )];
        if let Some(elem) = feed.mask {
            inputs.push((
                Cow::Borrowed("attention_mask"),
                tensors::int_tensor(&shape, &tokens.mask, elem)
                    .map_err(|e| run_err(file, e))?
                    .into(),
            ));
        }
        Ok(inputs)
    }

    /// One run of the one-file export: the text's embedding and the images', normalised. The
    /// callers count what was real in [`RerankStats`].
    fn run_joint(
        &mut self,
        tokens: &Tokens,
        pixels: &[f32],
        n: usize,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>), RerankError> {
        let (h, w) = (self.image_size.0 as usize, self.image_size.1 as usize);
        let Towers::Joint {
            session,
            text,
            vision,
        } = &mut self.towers
        else {
            unreachable!("run_joint is only called for the one-file layout")
        };
        let file = session.file.clone();
        let mut inputs = Self::text_inputs(text, tokens, &file)?;
        inputs.push((
            Cow::Borrowed("pixel_values"),
            tensors::float_tensor_from(&[n, 3, h, w], pixels, vision.float)
                .map_err(|e| run_err(&file, e))?
                .into(),
        ));
        let outputs = session.run(inputs).map_err(|e| run_err(&file, e))?;
        let t = normalized_rows(
            output(&outputs, "text_embeds", &file)?,
            &file,
            "text_embeds",
            1,
        )?;
        let i = normalized_rows(
            output(&outputs, "image_embeds", &file)?,
            &file,
            "image_embeds",
            n,
        )?;
        if t[0].len() != i[0].len() {
            return Err(RerankError::Output {
                file,
                output: "image_embeds".into(),
                problem: format!(
                    "has {} dimensions but text_embeds has {}",
                    i[0].len(),
                    t[0].len()
                ),
            });
        }
        self.stats.runs += 1;
        let text = t.into_iter().next().expect("one row");
        Ok((text, i))
    }

    fn run_text(&mut self, tokens: &Tokens) -> Result<Vec<f32>, RerankError> {
        let Towers::Split {
            text_session, text, ..
        } = &mut self.towers
        else {
            unreachable!("run_text is only called for the two-tower layout")
        };
        let file = text_session.file.clone();
        let inputs = Self::text_inputs(text, tokens, &file)?;
        let outputs = text_session.run(inputs).map_err(|e| run_err(&file, e))?;
        let t = normalized_rows(
            output(&outputs, "text_embeds", &file)?,
            &file,
            "text_embeds",
            1,
        )?;
        self.stats.runs += 1;
        self.stats.texts_encoded += 1;
        Ok(t.into_iter().next().expect("one row"))
    }

    fn run_vision(&mut self, pixels: &[f32], n: usize) -> Result<Vec<Vec<f32>>, RerankError> {
        let (h, w) = (self.image_size.0 as usize, self.image_size.1 as usize);
        let Towers::Split {
            vision_session,
            vision,
            ..
        } = &mut self.towers
        else {
            unreachable!("run_vision is only called for the two-tower layout")
        };
        let file = vision_session.file.clone();
        let input = tensors::float_tensor_from(&[n, 3, h, w], pixels, vision.float)
            .map_err(|e| run_err(&file, e))?;
        let outputs = vision_session
            .run(ort::inputs!["pixel_values" => input])
            .map_err(|e| run_err(&file, e))?;
        let i = normalized_rows(
            output(&outputs, "image_embeds", &file)?,
            &file,
            "image_embeds",
            n,
        )?;
        self.stats.runs += 1;
        self.stats.images_encoded += n;
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_orders_best_first_ties_to_lower_index_nan_last() {
        assert_eq!(rank(&[0.1, 0.3, 0.2]), vec![2, 0, 1]);
        assert_eq!(rank(&[0.5, 0.5, 0.7, 0.5]), vec![1, 2, 0, 3]);
        assert_eq!(rank(&[f32::NAN, -1.0, 0.0, -0.0]), vec![3, 2, 0, 1]);
        assert_eq!(rank(&[]), Vec::<usize>::new());
    }

    #[test]
    fn clip_score_clamps_negative_cosines() {
        assert_eq!(
            Score::from_cosine(0.25),
            Score {
                cosine: 0.25,
                clip_score: 25.0
            }
        );
        assert_eq!(Score::from_cosine(-0.3).clip_score, 0.0);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-7);
        assert_eq!(cosine(&[2.0, 0.0], &[-5.0, 0.0]), -1.0);
    }

    #[test]
    fn config_defaults_and_unknown_keys() {
        let c: RerankConfig = crate::sys::yaml::parse("model: clip\n").unwrap();
        assert_eq!(
            c,
            RerankConfig {
                model: "clip".into(),
                enabled: true,
                batch_size: NonZeroUsize::new(8).unwrap()
            }
        );
        let c: RerankConfig =
            crate::sys::yaml::parse("model: m\nenabled: false\nbatch_size: 3\n").unwrap();
        assert_eq!((c.enabled, c.batch_size.get()), (false, 3));
        let e = crate::sys::yaml::parse::<RerankConfig>("model: m\nbatch_size: 0\n").unwrap_err();
        assert_eq!(e.key, "batch_size", "{e}");
        let e = crate::sys::yaml::parse::<RerankConfig>("model: m\nbatchsize: 4\n").unwrap_err();
        assert!(e.to_string().contains("batchsize"), "{e}");
        assert!(crate::sys::yaml::parse::<RerankConfig>("enabled: true\n").is_err());
    }
}
