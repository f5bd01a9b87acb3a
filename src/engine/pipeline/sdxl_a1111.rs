//! SDXL's text conditioning as AUTOMATIC1111 computes it (its `sd_hijack_clip` and
//! `sd_hijack_open_clip` wrappers around the sgm conditioner's two text embedders):
//!
//! - each text encoder reads the prompt on its own with its own tokenizer
//!   ([`super::a1111::read`]: syntax, 75-token windows with the comma backtrack, `BREAK`); CLIP
//!   ViT-L pads a window with the end token, OpenCLIP bigG with its pad id 0 after the first end
//!   token. The two share the vocabulary, so both cut the same windows (checked);
//! - each window through each encoder: the hidden state the family picks (the penultimate; CLIP
//!   skip moves CLIP ViT-L's, see [`super::sdxl`]), weighted and rescaled to its mean for each
//!   encoder on its own, and as for SD over the batch of the schedule's texts (each text padded
//!   to the schedule's number of windows, [`super::a1111::weigh`]), the two concatenated along
//!   the width and a text's windows along the sequence;
//! - the pooled `text_embeds` of a text is the last encoder's for the text's first window;
//! - the prompt and the negative prompt are padded to the same number of windows with the empty
//!   prompt's window; a negative prompt given as zeros (`force_zeros_for_empty_prompt`) is zeros
//!   as long as the prompt's conditioning.

use std::time::{Duration, Instant};

use ndarray::{Array2, ArrayD, Axis, concatenate};

use super::PipelineError;
use super::a1111::{self, PhaseWindows, Windows};
use super::text::run_outputs;
use crate::engine::model::Part;
use crate::engine::prompt::{Chunk, Reading};
use crate::engine::tokenizer::{ClipTokenizer, TextCleaning};

/// One text encoder of the model, as the reading uses it.
pub struct XlEncoder<'a> {
    pub part: &'a mut Part,
    pub tokenizer: &'a ClipTokenizer,
    /// The ONNX input taking the token ids.
    pub input_ids: &'a str,
    /// The hidden-state output conditioning the UNet (`hidden_states.N`).
    pub hidden: &'a str,
    /// The pooled output the UNet takes as `text_embeds`, for the encoder that gives it.
    pub pooled: Option<&'a str>,
}

/// What to read: the prompt and how its negative half is made.
pub struct XlPrompts<'a> {
    pub prompt: &'a str,
    pub negative: XlNegative<'a>,
    pub steps: usize,
    pub cleaning: TextCleaning,
}

/// The negative half of the UNet batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum XlNegative<'a> {
    /// No classifier-free guidance.
    None,
    /// Zero embeddings and zero pooled (`force_zeros_for_empty_prompt` with no negative prompt).
    Zeros,
    /// This negative prompt, read like the prompt.
    Text(&'a str),
}

/// The conditioning of one phase: `[1, 77 * windows, width]` and `[1, projection]` each.
#[derive(Debug, Clone)]
pub struct XlPhase {
    /// The 0-based UNet call from which this phase is used.
    pub from_step: usize,
    pub cond: ArrayD<f32>,
    pub uncond: Option<ArrayD<f32>>,
    pub pooled: ArrayD<f32>,
    pub negative_pooled: Option<ArrayD<f32>>,
}

/// The phases over UNet calls `0..calls`, the first from call 0, and the time spent reading.
pub fn encode(
    encoders: &mut [XlEncoder<'_>],
    prompts: &XlPrompts<'_>,
    calls: usize,
) -> Result<(Vec<XlPhase>, Duration), PipelineError> {
    let started = Instant::now();
    let mut readings = Vec::with_capacity(encoders.len());
    for e in encoders.iter() {
        readings.push(read(e.tokenizer, prompts)?);
    }
    let tokenize = started.elapsed();
    same_windows(&readings)?;
    let empties: Vec<Chunk> = encoders
        .iter()
        .map(|e| Chunk::empty(&a1111::special_ids(e.tokenizer)))
        .collect();
    let mut per_encoder = Vec::with_capacity(encoders.len());
    let mut pooled = None;
    let mut layout = None;
    let mut source = Vec::new();
    for ((e, (prompt, negative)), empty) in encoders.iter_mut().zip(&readings).zip(&empties) {
        let windows = Windows::new(prompt, negative.as_ref(), empty);
        let mut wanted = vec![(e.hidden, 3)];
        wanted.extend(e.pooled.map(|name| (name, 2)));
        let n = windows.chunks.len();
        let mut out = run_outputs(
            e.part,
            e.input_ids,
            &windows.ids(),
            n,
            windows.seq(),
            &wanted,
        )?;
        if e.pooled.is_some() {
            pooled = out.pop();
        }
        let weighted = a1111::weigh(&out[0], &windows, prompt, negative.as_ref(), e.part.file())?;
        layout.get_or_insert_with(|| weighted.phases(prompt, negative.as_ref(), calls));
        source = weighted.source;
        per_encoder.push(weighted.windows);
    }
    let pooled = pooled.ok_or_else(|| PipelineError::Shape {
        file: "(SDXL text encoders)".into(),
        what: "no text encoder gives the pooled text_embeds".into(),
    })?;
    let windows = side_by_side(per_encoder)?;
    layout
        .unwrap_or_default()
        .into_iter()
        .map(|p| phase(&windows, &source, &pooled, p, prompts.negative))
        .collect::<Result<Vec<_>, _>>()
        .map(|phases| (phases, tokenize))
}

/// The prompt's reading and, when the negative half is encoded, the negative prompt's.
fn read(
    tokenizer: &ClipTokenizer,
    p: &XlPrompts<'_>,
) -> Result<(Reading, Option<Reading>), PipelineError> {
    let prompt = a1111::read(tokenizer, p.prompt, p.steps, p.cleaning, "prompt")?;
    let negative = match p.negative {
        XlNegative::Text(text) => Some(a1111::read(
            tokenizer, text, p.steps, p.cleaning, "negative",
        )?),
        XlNegative::None | XlNegative::Zeros => None,
    };
    Ok((prompt, negative))
}

/// The encoders' windows must line up to be concatenated along the width: the same number for
/// every text (AUTOMATIC1111 would fail on a mismatch too).
fn same_windows(readings: &[(Reading, Option<Reading>)]) -> Result<(), PipelineError> {
    let counts = |(p, n): &(Reading, Option<Reading>)| -> Vec<usize> {
        p.texts
            .iter()
            .chain(n.iter().flat_map(|n| &n.texts))
            .map(|t| t.chunks.len())
            .collect()
    };
    let first = readings.first().map(counts);
    match readings
        .iter()
        .map(counts)
        .find(|c| Some(c) != first.as_ref())
    {
        None => Ok(()),
        Some(other) => Err(PipelineError::Request {
            field: "prompt",
            problem: format!(
                "splits into windows of {:?} tokens with the first tokenizer but {other:?} with \
                 the second; the model's two tokenizers do not share a vocabulary",
                first.unwrap_or_default()
            ),
        }),
    }
}

/// Window by window, the encoders' weighted hidden states concatenated along the width.
fn side_by_side(per_encoder: Vec<Vec<Array2<f32>>>) -> Result<Vec<Array2<f32>>, PipelineError> {
    let n = per_encoder.first().map_or(0, Vec::len);
    (0..n)
        .map(|i| {
            let views: Vec<_> = per_encoder.iter().map(|w| w[i].view()).collect();
            concatenate(Axis(1), &views).map_err(|source| PipelineError::Concatenate {
                file: "(SDXL text encoders)".into(),
                source,
            })
        })
        .collect()
}

/// One phase's arrays: its windows joined, the pooled rows of the texts' first windows
/// (`source`: the encoded window each of `windows` comes from, the rows of `pooled`).
fn phase(
    windows: &[Array2<f32>],
    source: &[usize],
    pooled: &ArrayD<f32>,
    p: PhaseWindows,
    negative: XlNegative<'_>,
) -> Result<XlPhase, PipelineError> {
    let pooled_of = |window: usize| {
        let row = source[window];
        pooled.slice_axis(Axis(0), (row..row + 1).into())
    };
    let cond = a1111::join(windows, &p.cond)?;
    let pooled_cond = pooled_of(p.cond[0]).to_owned();
    let (uncond, negative_pooled) = match (negative, &p.uncond) {
        (XlNegative::Zeros, _) => (
            Some(ArrayD::zeros(cond.raw_dim())),
            Some(ArrayD::zeros(pooled_cond.raw_dim())),
        ),
        (XlNegative::Text(_), Some(u)) => (
            Some(a1111::join(windows, u)?),
            Some(pooled_of(u[0]).to_owned()),
        ),
        _ => (None, None),
    };
    Ok(XlPhase {
        from_step: p.from_step,
        cond,
        uncond,
        pooled: pooled_cond,
        negative_pooled,
    })
}
