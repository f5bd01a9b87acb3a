//! Text conditioning as AUTOMATIC1111 computes it ([`crate::engine::prompt`] reads the syntax):
//! every 77-id window of every distinct text of the prompt's and the negative prompt's schedules
//! goes through the text encoder (one run for all); each window's hidden state is multiplied
//! token by token by its weights and rescaled so that its mean is the mean before weighting
//! (AUTOMATIC1111's "Original" emphasis); a text's windows are concatenated along the sequence.
//! Where the prompt and the negative prompt have different numbers of windows at a step, the
//! shorter is padded with the empty prompt's window (AUTOMATIC1111's `pad_cond_uncond`), so that
//! both halves of the guided UNet batch have the same length.

use std::ops::Range;
use std::path::Path;

use ndarray::{Array2, ArrayD, ArrayView2, Axis, concatenate};

use super::PipelineError;
use super::text::{ClipSkip, encode_ids};
use crate::engine::model::Part;
use crate::engine::model::family::TextEncoderGraph;
use crate::engine::prompt::{self, Chunk, ReadError, Reading, SpecialIds};
use crate::engine::tokenizer::{ClipTokenizer, TextCleaning};

/// The ids chunking needs from `tokenizer`.
pub fn special_ids(tokenizer: &ClipTokenizer) -> SpecialIds {
    SpecialIds {
        bos: tokenizer.bos_id(),
        eos: tokenizer.eos_id(),
        pad: tokenizer.pad_id(),
        comma: tokenizer.token_to_id(",</w>"),
        chunk_length: tokenizer.model_max_length().saturating_sub(2).max(1),
    }
}

/// `prompt` read over `steps` steps and chunked by `tokenizer` (cleaning text as `cleaning`
/// says); `field` names it in errors.
pub fn read(
    tokenizer: &ClipTokenizer,
    prompt: &str,
    steps: usize,
    cleaning: TextCleaning,
    field: &'static str,
) -> Result<Reading, PipelineError> {
    prompt::read_chunked(prompt, steps, special_ids(tokenizer), |t| {
        tokenizer.token_ids_cleaned(t, cleaning)
    })
    .map_err(|e| match e {
        ReadError::Emphasis(e) => PipelineError::Request {
            field,
            problem: e.to_string(),
        },
        ReadError::Tokenize(e) => PipelineError::Tokenizer(e),
    })
}

/// The hidden states of one conditioning phase, `[1, sequence, hidden]` each.
#[derive(Debug, Clone)]
pub struct HiddenPhase {
    /// The 0-based UNet call from which this phase is used.
    pub from_step: usize,
    pub cond: ArrayD<f32>,
    pub uncond: Option<ArrayD<f32>>,
}

/// Encodes the readings of the prompt and (with guidance) the negative prompt; the phases over
/// UNet calls `0..calls`, the first from call 0.
pub fn encode(
    text_encoder: &mut Part,
    graph: &TextEncoderGraph,
    special: SpecialIds,
    prompt: &Reading,
    negative: Option<&Reading>,
    calls: usize,
    skip: ClipSkip,
) -> Result<Vec<HiddenPhase>, PipelineError> {
    let empty = Chunk::empty(&special);
    let windows = Windows::new(prompt, negative, &empty);
    let hidden = encode_ids(
        text_encoder,
        graph,
        &windows.ids(),
        windows.chunks.len(),
        windows.seq(),
        skip,
    )?;
    let weighted = weigh(&hidden, &windows.chunks, text_encoder.file())?;
    windows
        .phases(prompt, negative, calls)
        .into_iter()
        .map(|p| {
            Ok(HiddenPhase {
                from_step: p.from_step,
                cond: join(&weighted, &p.cond)?,
                uncond: p
                    .uncond
                    .as_deref()
                    .map(|u| join(&weighted, u))
                    .transpose()?,
            })
        })
        .collect()
}

/// Every window to encode for a prompt and its negative prompt, in order: the prompt's texts',
/// the negative's, then the empty prompt's window (what the shorter of the two is padded with).
pub struct Windows<'a> {
    pub chunks: Vec<&'a Chunk>,
    /// For each text of the prompt's reading, the indices of its windows in `chunks`.
    prompt: Vec<Range<usize>>,
    negative: Option<Vec<Range<usize>>>,
    empty: usize,
}

/// Which windows make up one conditioning phase, indices into [`Windows::chunks`].
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseWindows {
    /// The 0-based UNet call from which this phase is used.
    pub from_step: usize,
    /// The prompt's text's windows (its first window first), padded with the empty window.
    pub cond: Vec<usize>,
    /// The negative prompt's, padded to the same number; `None` without one.
    pub uncond: Option<Vec<usize>>,
}

impl<'a> Windows<'a> {
    pub fn new(prompt: &'a Reading, negative: Option<&'a Reading>, empty: &'a Chunk) -> Self {
        let mut chunks: Vec<&Chunk> = Vec::new();
        let mut texts_of = |reading: &'a Reading| -> Vec<Range<usize>> {
            reading
                .texts
                .iter()
                .map(|t| {
                    let start = chunks.len();
                    chunks.extend(&t.chunks);
                    start..chunks.len()
                })
                .collect()
        };
        let prompt = texts_of(prompt);
        let negative = negative.map(&mut texts_of);
        chunks.push(empty);
        Windows {
            empty: chunks.len() - 1,
            chunks,
            prompt,
            negative,
        }
    }

    /// The token ids of every window, one row of [`Windows::seq`] each.
    pub fn ids(&self) -> Vec<i64> {
        self.chunks
            .iter()
            .flat_map(|c| c.ids.iter().map(|&id| i64::from(id)))
            .collect()
    }

    /// Ids per window (77 for CLIP).
    pub fn seq(&self) -> usize {
        self.chunks[self.empty].ids.len()
    }

    /// The phases over UNet calls `0..calls` of the readings `self` was made from: a new phase
    /// wherever the prompt's or the negative's text changes, each padded to the same number of
    /// windows (AUTOMATIC1111's `pad_cond_uncond`).
    pub fn phases(
        &self,
        prompt: &Reading,
        negative: Option<&Reading>,
        calls: usize,
    ) -> Vec<PhaseWindows> {
        let mut phases: Vec<PhaseWindows> = Vec::new();
        let mut last = None;
        for step in 0..calls.max(1) {
            let key = (prompt.text_at(step), negative.map(|n| n.text_at(step)));
            if last == Some(key) {
                continue;
            }
            last = Some(key);
            let mut cond: Vec<usize> = self.prompt[key.0].clone().collect();
            let mut uncond = key
                .1
                .zip(self.negative.as_ref())
                .map(|(i, w)| w[i].clone().collect::<Vec<usize>>());
            if let Some(u) = uncond.as_mut() {
                let n = cond.len().max(u.len());
                cond.resize(n, self.empty);
                u.resize(n, self.empty);
            }
            phases.push(PhaseWindows {
                from_step: step,
                cond,
                uncond,
            });
        }
        phases
    }
}

/// Each window's hidden state (`hidden`: `[windows, 77, width]`) weighted as [`emphasize`]
/// does; `file` names the encoder in errors.
pub fn weigh(
    hidden: &ArrayD<f32>,
    chunks: &[&Chunk],
    file: &Path,
) -> Result<Vec<Array2<f32>>, PipelineError> {
    chunks
        .iter()
        .enumerate()
        .map(|(i, w)| {
            emphasize(
                hidden.index_axis(Axis(0), i).into_dimensionality()?,
                &w.weights,
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|source| PipelineError::Concatenate {
            file: file.display().to_string(),
            source,
        })
}

/// The windows `ids` of `weighted` concatenated along the sequence: `[1, 77 * n, width]`.
pub fn join(weighted: &[Array2<f32>], ids: &[usize]) -> Result<ArrayD<f32>, PipelineError> {
    let views: Vec<ArrayView2<f32>> = ids.iter().map(|&i| weighted[i].view()).collect();
    let joined = concatenate(Axis(0), &views).map_err(|source| PipelineError::Concatenate {
        file: "(conditioning)".into(),
        source,
    })?;
    Ok(joined.insert_axis(Axis(0)).into_dyn())
}

/// A UNet exported with a fixed sequence length cannot take a prompt of several windows of
/// `window` ids: `longest` is the longest conditioning, `input` the UNet's input taking it.
pub fn check_sequence(
    unet: &Part,
    input: &str,
    longest: Option<usize>,
    window: usize,
) -> Result<(), PipelineError> {
    let Some(longest) = longest else {
        return Ok(());
    };
    let fixed = unet
        .signature
        .input(input)
        .and_then(|port| port.dims.get(1).copied())
        .filter(|&d| d > 0);
    match fixed {
        Some(d) if d as usize != longest => Err(PipelineError::Request {
            field: "prompt",
            problem: format!(
                "needs {longest} tokens of conditioning ({} windows of {window}), but {} takes {} \
                 with a fixed sequence length of {d}; export the UNet with a dynamic sequence \
                 axis (optimum-cli export onnx without --no-dynamic-axes), shorten the prompt, \
                 or use prompt_syntax: plain (cuts at {window} tokens)",
                longest / window.max(1),
                unet.file().display(),
                input,
            ),
        }),
        _ => Ok(()),
    }
}

/// One window's hidden state `[77, hidden]` times its per-token weights, rescaled to the mean
/// it had before. All weights 1 leave it as it is (the rescale is then exactly 1).
pub fn emphasize(z: ArrayView2<f32>, weights: &[f64]) -> Result<Array2<f32>, ndarray::ShapeError> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(z.to_owned());
    }
    if weights.len() != z.nrows() {
        return Err(ndarray::ShapeError::from_kind(
            ndarray::ErrorKind::IncompatibleShape,
        ));
    }
    let before = mean(z);
    let mut out = z.to_owned();
    for (mut row, &w) in out.rows_mut().into_iter().zip(weights) {
        // torch multiplies by the float32 weight tensor.
        row *= w as f32;
    }
    let after = mean(out.view());
    out *= before / after;
    Ok(out)
}

/// Mean of all elements (accumulated in f64, returned as torch's float32 mean is).
fn mean(z: ArrayView2<f32>) -> f32 {
    (z.iter().map(|&v| f64::from(v)).sum::<f64>() / z.len() as f64) as f32
}
