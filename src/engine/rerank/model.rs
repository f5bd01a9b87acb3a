//! A rerank model folder: which ONNX files it holds and the signatures they must have.
//!
//! Two layouts are accepted (the tokenizer either in a `tokenizer/` subfolder or at the root, as
//! optimum saves a CLIP folder; `preprocessor_config.json` at the root):
//!
//! * **one model**: `model.onnx`, optimum's export of a transformers `CLIPModel` (task
//!   `zero-shot-image-classification`): inputs `input_ids` [text_batch, sequence], `pixel_values`
//!   [image_batch, 3, H, W], optionally `attention_mask` [text_batch, sequence]; outputs
//!   `text_embeds` [text_batch, D] and `image_embeds` [image_batch, D] (any others, such as the
//!   logits, are ignored). The two batch axes are separate, but every run needs both inputs.
//! * **two towers**: `text_model.onnx` (`input_ids`, optionally `attention_mask` ->
//!   `text_embeds`) and `vision_model.onnx` (`pixel_values` -> `image_embeds`): the input and
//!   output names of `CLIPTextModelWithProjection` / `CLIPVisionModelWithProjection`, whose
//!   embeddings are projections, not normalised (sdspool normalises them).
//!
//! When both layouts are present the towers are used (no run then carries a dummy input).
//! `input_ids` / `attention_mask` may be int64 or int32; float tensors float32 or float16 (one
//! type per file). Fixed dimensions in a signature must fit: 3 channels, the preprocessor's crop
//! size, the tokenizer's length, the same embedding size for text and images.

use std::path::{Path, PathBuf};

use crate::runtime::signature::{Elem, Port, PortChecker, Signature, SignatureError};

/// Which files make up the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One `model.onnx` with both towers.
    Joint { model: PathBuf },
    /// `text_model.onnx` and `vision_model.onnx`.
    Split { text: PathBuf, vision: PathBuf },
}

pub const JOINT_FILE: &str = "model.onnx";
pub const TEXT_FILE: &str = "text_model.onnx";
pub const VISION_FILE: &str = "vision_model.onnx";
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// What is wrong with a rerank model folder's files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("does not exist")]
    Missing,
    #[error("is not a folder")]
    NotAFolder,
    #[error("has {have} but no {lacks}; the two towers go together")]
    OneTower {
        have: &'static str,
        lacks: &'static str,
    },
    #[error("has no {JOINT_FILE} (optimum's CLIPModel export) nor {TEXT_FILE} + {VISION_FILE}")]
    NoModel,
    #[error(
        "has no tokenizer (vocab.json + merges.txt or tokenizer.json, in tokenizer/ or at the root)"
    )]
    NoTokenizer,
    #[error("has no {PREPROCESSOR_FILE} (the CLIP image processor settings)")]
    NoPreprocessor,
}

/// The files of a rerank model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerankFolder {
    pub root: PathBuf,
    pub layout: Layout,
    /// `tokenizer/` when it holds vocab.json or tokenizer.json, else the root.
    pub tokenizer_dir: PathBuf,
    pub preprocessor: PathBuf,
}

impl RerankFolder {
    /// Finds the files; an error says what is missing in which folder.
    pub fn open(root: &Path) -> Result<RerankFolder, FolderError> {
        if !root.is_dir() {
            return Err(if root.exists() {
                FolderError::NotAFolder
            } else {
                FolderError::Missing
            });
        }
        let (text, vision, joint) = (
            root.join(TEXT_FILE),
            root.join(VISION_FILE),
            root.join(JOINT_FILE),
        );
        let layout = match (text.is_file(), vision.is_file()) {
            (true, true) => Layout::Split { text, vision },
            (true, false) => {
                return Err(FolderError::OneTower {
                    have: TEXT_FILE,
                    lacks: VISION_FILE,
                });
            }
            (false, true) => {
                return Err(FolderError::OneTower {
                    have: VISION_FILE,
                    lacks: TEXT_FILE,
                });
            }
            (false, false) if joint.is_file() => Layout::Joint { model: joint },
            (false, false) => return Err(FolderError::NoModel),
        };
        let sub = root.join("tokenizer");
        let has_tokenizer =
            |d: &Path| d.join("vocab.json").is_file() || d.join("tokenizer.json").is_file();
        let tokenizer_dir = if has_tokenizer(&sub) {
            sub
        } else if has_tokenizer(root) {
            root.to_path_buf()
        } else {
            return Err(FolderError::NoTokenizer);
        };
        let preprocessor = root.join(PREPROCESSOR_FILE);
        if !preprocessor.is_file() {
            return Err(FolderError::NoPreprocessor);
        }
        Ok(RerankFolder {
            root: root.to_path_buf(),
            layout,
            tokenizer_dir,
            preprocessor,
        })
    }
}

/// How to feed a text tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextFeed {
    /// int64 or int32.
    pub ids: Elem,
    /// Whether the model takes `attention_mask`, and as which integer type.
    pub mask: Option<Elem>,
    /// The sequence length when the signature fixes it.
    pub fixed_len: Option<usize>,
    /// The embedding size when the signature fixes it.
    pub dim: Option<usize>,
    /// Element type of `text_embeds`.
    pub out: Elem,
}

/// How to feed a vision tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisionFeed {
    /// Element type of `pixel_values` (and `image_embeds`).
    pub float: Elem,
    pub dim: Option<usize>,
}

/// The shared port checks plus the CLIP-specific ones.
struct Checker<'a>(PortChecker<'a>);

impl<'a> std::ops::Deref for Checker<'a> {
    type Target = PortChecker<'a>;
    fn deref(&self) -> &PortChecker<'a> {
        &self.0
    }
}

impl<'a> Checker<'a> {
    fn new(file: &'a Path, sig: &'a Signature) -> Checker<'a> {
        Checker(PortChecker {
            file,
            sig,
            hint: "is this a CLIP export as sdspool reads it? see the rerank docs",
        })
    }

    fn field(input: bool, name: &str) -> String {
        PortChecker::field(input, name)
    }

    fn integer(&self, port: &Port) -> Result<(Elem, Option<usize>), SignatureError> {
        if !matches!(port.elem, Elem::I64 | Elem::I32) {
            return Err(self.err(
                Self::field(true, &port.name),
                format!("is {}, expected int64 or int32", port.elem),
            ));
        }
        self.rank(true, port, 2, "[batch, sequence]")?;
        Ok((port.elem, fixed(port.dims[1])))
    }

    fn no_extra_inputs(&self, known: &[&str]) -> Result<(), SignatureError> {
        if let Some(extra) = self.extra_input(known) {
            return Err(self.err(
                Self::field(true, &extra.name),
                format!(
                    "is not one sdspool feeds (it feeds {})",
                    PortChecker::quoted(known)
                ),
            ));
        }
        Ok(())
    }

    fn text(&self, seq_len: usize, float: &mut Option<Elem>) -> Result<TextFeed, SignatureError> {
        let (ids, fixed_len) = self.integer(self.port(true, "input_ids")?)?;
        let mask = match self.sig.input("attention_mask") {
            Some(p) => Some(self.integer(p)?),
            None => None,
        };
        let mut fixed_len = fixed_len;
        if let Some((_, Some(m))) = mask {
            match fixed_len {
                Some(l) if l != m => {
                    return Err(self.err(
                        Self::field(true, "attention_mask"),
                        format!("has {m} positions while 'input_ids' has {l}"),
                    ));
                }
                _ => fixed_len = Some(m),
            }
        }
        if let Some(l) = fixed_len
            && l != seq_len
        {
            return Err(self.err(
                Self::field(true, "input_ids"),
                format!("takes exactly {l} tokens, but the tokenizer pads prompts to {seq_len}"),
            ));
        }
        let out = self.float(false, "text_embeds", 2, "[batch, embedding]", float)?;
        Ok(TextFeed {
            ids,
            mask: mask.map(|(e, _)| e),
            fixed_len,
            dim: fixed(out.dims[1]),
            out: out.elem,
        })
    }

    fn vision(
        &self,
        crop: Option<(u32, u32)>,
        float: &mut Option<Elem>,
    ) -> Result<VisionFeed, SignatureError> {
        let px = self.float(true, "pixel_values", 4, "[batch, 3, height, width]", float)?;
        if let Some(c) = fixed(px.dims[1])
            && c != 3
        {
            return Err(self.err(
                Self::field(true, "pixel_values"),
                format!("has {c} channels (shape {:?}), expected 3", px.dims),
            ));
        }
        if let Some((h, w)) = crop {
            for (axis, want, what) in [(2, h, "height"), (3, w, "width")] {
                if let Some(d) = fixed(px.dims[axis])
                    && d != want as usize
                {
                    return Err(self.err(
                        Self::field(true, "pixel_values"),
                        format!(
                            "has {what} {d} (shape {:?}), but preprocessor_config.json makes images {h}x{w} (height x width)",
                            px.dims
                        ),
                    ));
                }
            }
        }
        let out = self.float(false, "image_embeds", 2, "[batch, embedding]", float)?;
        Ok(VisionFeed {
            float: px.elem,
            dim: fixed(out.dims[1]),
        })
    }

    fn same_dim(
        &self,
        text: &TextFeed,
        vision: &VisionFeed,
        vision_file: &Path,
    ) -> Result<(), SignatureError> {
        if let (Some(t), Some(v)) = (text.dim, vision.dim)
            && t != v
        {
            return Err(SignatureError {
                file: vision_file.to_path_buf(),
                field: "output 'image_embeds'".into(),
                problem: format!(
                    "has {v} dimensions, but 'text_embeds' of {} has {t}: the towers do not belong together",
                    self.file.display()
                ),
            });
        }
        Ok(())
    }
}

fn fixed(d: i64) -> Option<usize> {
    (d > 0).then_some(d as usize)
}

/// Checks optimum's one-file CLIPModel export. `seq_len` is the tokenizer's padded length,
/// `crop` the preprocessor's output size.
pub fn check_joint(
    file: &Path,
    sig: &Signature,
    seq_len: usize,
    crop: Option<(u32, u32)>,
) -> Result<(TextFeed, VisionFeed), SignatureError> {
    let c = Checker::new(file, sig);
    let mut float = None;
    let vision = c.vision(crop, &mut float)?;
    let text = c.text(seq_len, &mut float)?;
    c.no_extra_inputs(&["input_ids", "attention_mask", "pixel_values"])?;
    c.same_dim(&text, &vision, file)?;
    Ok((text, vision))
}

/// Checks the text tower of a split export.
pub fn check_text(
    file: &Path,
    sig: &Signature,
    seq_len: usize,
) -> Result<TextFeed, SignatureError> {
    let c = Checker::new(file, sig);
    let text = c.text(seq_len, &mut None)?;
    c.no_extra_inputs(&["input_ids", "attention_mask"])?;
    Ok(text)
}

/// Checks the vision tower of a split export against its text tower.
pub fn check_vision(
    file: &Path,
    sig: &Signature,
    crop: Option<(u32, u32)>,
    text: (&Path, &TextFeed),
) -> Result<VisionFeed, SignatureError> {
    let c = Checker::new(file, sig);
    let vision = c.vision(crop, &mut None)?;
    c.no_extra_inputs(&["pixel_values"])?;
    let t = Checker::new(text.0, sig);
    t.same_dim(text.1, &vision, file)?;
    Ok(vision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::signature::port;

    /// tiny-clip's signature as optimum writes it.
    fn optimum() -> Signature {
        Signature {
            inputs: vec![
                port("input_ids", Elem::I64, &[-1, -1]),
                port("pixel_values", Elem::F32, &[-1, -1, -1, -1]),
                port("attention_mask", Elem::I64, &[-1, -1]),
            ],
            outputs: vec![
                port("logits_per_image", Elem::F32, &[-1, -1]),
                port("logits_per_text", Elem::F32, &[-1, -1]),
                port("text_embeds", Elem::F32, &[-1, 16]),
                port("image_embeds", Elem::F32, &[-1, 16]),
            ],
        }
    }

    const CROP: Option<(u32, u32)> = Some((224, 224));

    #[test]
    fn optimum_clip_export_is_accepted() {
        let (t, v) = check_joint(Path::new("m.onnx"), &optimum(), 77, CROP).unwrap();
        assert_eq!(t.ids, Elem::I64);
        assert_eq!(t.mask, Some(Elem::I64));
        assert_eq!(t.dim, Some(16));
        assert_eq!(v.float, Elem::F32);
    }

    #[test]
    fn missing_output_names_file_and_field() {
        let mut sig = optimum();
        sig.outputs.retain(|p| p.name != "image_embeds");
        let e = check_joint(Path::new("r/model.onnx"), &sig, 77, CROP).unwrap_err();
        assert_eq!(e.file, Path::new("r/model.onnx"));
        assert_eq!(e.field, "output 'image_embeds'");
        assert!(e.problem.contains("'text_embeds'"), "{}", e.problem);
    }

    #[test]
    fn float_ids_wrong_rank_and_channels_are_rejected() {
        let mut sig = optimum();
        sig.inputs[0].elem = Elem::F32;
        assert_eq!(
            check_joint(Path::new("m"), &sig, 77, CROP)
                .unwrap_err()
                .field,
            "input 'input_ids'"
        );

        let mut sig = optimum();
        sig.inputs[1].dims = vec![-1, 3, 224];
        let e = check_joint(Path::new("m"), &sig, 77, CROP).unwrap_err();
        assert!(e.problem.contains("rank 3"), "{}", e.problem);

        let mut sig = optimum();
        sig.inputs[1].dims = vec![-1, 4, 224, 224];
        assert!(
            check_joint(Path::new("m"), &sig, 77, CROP)
                .unwrap_err()
                .problem
                .contains("4 channels")
        );

        let mut sig = optimum();
        sig.inputs[1].dims = vec![-1, 3, 336, 336];
        let e = check_joint(Path::new("m"), &sig, 77, CROP).unwrap_err();
        assert!(e.problem.contains("height 336"), "{}", e.problem);
    }

    #[test]
    fn fixed_sequence_must_match_the_tokenizer() {
        let mut sig = optimum();
        sig.inputs[0].dims = vec![-1, 64];
        let e = check_joint(Path::new("m"), &sig, 77, CROP).unwrap_err();
        assert!(e.problem.contains("64 tokens"), "{}", e.problem);
        sig.inputs[0].dims = vec![-1, 77];
        let (t, _) = check_joint(Path::new("m"), &sig, 77, CROP).unwrap();
        assert_eq!(t.fixed_len, Some(77));
    }

    #[test]
    fn mixed_precision_and_extra_inputs_are_rejected() {
        let mut sig = optimum();
        sig.outputs[2].elem = Elem::F16;
        let e = check_joint(Path::new("m"), &sig, 77, CROP).unwrap_err();
        assert_eq!(e.field, "output 'text_embeds'");

        let mut sig = optimum();
        sig.inputs.push(port("position_ids", Elem::I64, &[-1, -1]));
        assert_eq!(
            check_joint(Path::new("m"), &sig, 77, CROP)
                .unwrap_err()
                .field,
            "input 'position_ids'"
        );
    }

    #[test]
    fn split_towers_without_mask_and_with_mismatched_dims() {
        let text = Signature {
            inputs: vec![port("input_ids", Elem::I32, &[-1, 77])],
            outputs: vec![
                port("text_embeds", Elem::F16, &[-1, 512]),
                port("last_hidden_state", Elem::F16, &[-1, 77, 512]),
            ],
        };
        let t = check_text(Path::new("t.onnx"), &text, 77).unwrap();
        assert_eq!((t.ids, t.mask, t.out), (Elem::I32, None, Elem::F16));
        let vision = Signature {
            inputs: vec![port("pixel_values", Elem::F16, &[-1, 3, 224, 224])],
            outputs: vec![port("image_embeds", Elem::F16, &[-1, 768])],
        };
        let e = check_vision(
            Path::new("v.onnx"),
            &vision,
            CROP,
            (Path::new("t.onnx"), &t),
        )
        .unwrap_err();
        assert_eq!(e.file, Path::new("v.onnx"));
        assert!(
            e.problem.contains("768") && e.problem.contains("512") && e.problem.contains("t.onnx"),
            "{}",
            e.problem
        );
    }

    #[test]
    fn folder_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let touch = |p: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        assert!(
            RerankFolder::open(&root.join("nope"))
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        assert!(
            RerankFolder::open(root)
                .unwrap_err()
                .to_string()
                .contains("model.onnx")
        );
        touch("text_model.onnx");
        assert!(
            RerankFolder::open(root)
                .unwrap_err()
                .to_string()
                .contains("no vision_model.onnx")
        );
        touch("vision_model.onnx");
        assert!(
            RerankFolder::open(root)
                .unwrap_err()
                .to_string()
                .contains("tokenizer")
        );
        touch("vocab.json");
        assert!(
            RerankFolder::open(root)
                .unwrap_err()
                .to_string()
                .contains("preprocessor_config.json")
        );
        touch("preprocessor_config.json");
        let f = RerankFolder::open(root).unwrap();
        assert!(matches!(f.layout, Layout::Split { .. }));
        assert_eq!(f.tokenizer_dir, root);
        touch("tokenizer/tokenizer.json");
        touch("model.onnx");
        let f = RerankFolder::open(root).unwrap();
        assert!(
            matches!(f.layout, Layout::Split { .. }),
            "towers win over model.onnx"
        );
        assert_eq!(f.tokenizer_dir, root.join("tokenizer"));
        std::fs::remove_file(root.join("text_model.onnx")).unwrap();
        assert!(
            RerankFolder::open(root)
                .unwrap_err()
                .to_string()
                .contains("no text_model.onnx")
        );
        std::fs::remove_file(root.join("vision_model.onnx")).unwrap();
        assert!(matches!(
            RerankFolder::open(root).unwrap().layout,
            Layout::Joint { .. }
        ));
    }
}
