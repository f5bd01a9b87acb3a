//! Text conditioning as AUTOMATIC1111 computes it ([`crate::engine::prompt`] reads the syntax):
//! every 77-id window of every distinct text of the prompt's and the negative prompt's schedules
//! goes through the text encoder (one run for all); each window's hidden state is multiplied
//! token by token by its weights and rescaled so that its mean is the mean before weighting
//! (AUTOMATIC1111's "Original" emphasis); a text's windows are concatenated along the sequence.
//! Where the prompt and the negative prompt have different numbers of windows at a step, the
//! shorter is padded with the empty prompt's window (AUTOMATIC1111's `pad_cond_uncond`), so that
//! both halves of the guided UNet batch have the same length.

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
    // Every window, in order: the prompt's texts, the negative's, then the empty window.
    let mut windows: Vec<&Chunk> = Vec::new();
    for reading in std::iter::once(prompt).chain(negative) {
        for text in &reading.texts {
            windows.extend(&text.chunks);
        }
    }
    windows.push(&empty);
    let seq = empty.ids.len();
    let ids: Vec<i64> = windows
        .iter()
        .flat_map(|c| c.ids.iter().map(|&id| i64::from(id)))
        .collect();
    let hidden = encode_ids(text_encoder, graph, &ids, windows.len(), seq, skip)?;
    let weighted: Vec<Array2<f32>> = windows
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
            file: text_encoder.file().display().to_string(),
            source,
        })?;
    let mut next = 0;
    let mut texts_of = |reading: &Reading| -> Vec<Vec<usize>> {
        reading
            .texts
            .iter()
            .map(|t| {
                let ids = (next..next + t.chunks.len()).collect();
                next += t.chunks.len();
                ids
            })
            .collect()
    };
    let prompt_windows = texts_of(prompt);
    let negative_windows = negative.map(&mut texts_of);
    let empty_window = weighted.len() - 1;

    let mut phases: Vec<HiddenPhase> = Vec::new();
    let mut last = None;
    for step in 0..calls.max(1) {
        let key = (prompt.text_at(step), negative.map(|n| n.text_at(step)));
        if last == Some(key) {
            continue;
        }
        last = Some(key);
        let mut cond = prompt_windows[key.0].clone();
        let mut uncond = key
            .1
            .zip(negative_windows.as_ref())
            .map(|(i, w)| w[i].clone());
        if let Some(u) = uncond.as_mut() {
            let n = cond.len().max(u.len());
            cond.resize(n, empty_window);
            u.resize(n, empty_window);
        }
        let join = |ws: &[usize]| -> Result<ArrayD<f32>, PipelineError> {
            let views: Vec<ArrayView2<f32>> = ws.iter().map(|&i| weighted[i].view()).collect();
            let joined =
                concatenate(Axis(0), &views).map_err(|source| PipelineError::Concatenate {
                    file: "(conditioning)".into(),
                    source,
                })?;
            Ok(joined.insert_axis(Axis(0)).into_dyn())
        };
        phases.push(HiddenPhase {
            from_step: step,
            cond: join(&cond)?,
            uncond: uncond.as_deref().map(join).transpose()?,
        });
    }
    Ok(phases)
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
