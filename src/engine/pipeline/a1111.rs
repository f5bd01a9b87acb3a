//! Text conditioning as AUTOMATIC1111 computes it ([`crate::engine::prompt`] reads the syntax):
//! every 77-id window of every distinct text of the prompt's and the negative prompt's schedules
//! goes through the text encoder (one run for all). As AUTOMATIC1111 encodes all texts of one
//! prompt's schedule as one batch (and the negative prompt's as another), each text of a schedule
//! is padded with the empty prompt's window to the schedule's largest number of windows, and the
//! hidden states of window `i` of every schedule entry are multiplied token by token by their
//! weights and rescaled together so that their mean over the whole batch is the mean before
//! weighting (its "Original" emphasis; one scalar per window index and batch, schedule entries
//! counted as often as they occur); a text's windows are concatenated along the sequence.
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
    let weighted = weigh(&hidden, &windows, prompt, negative, text_encoder.file())?;
    weighted
        .phases(prompt, negative, calls)
        .into_iter()
        .map(|p| {
            Ok(HiddenPhase {
                from_step: p.from_step,
                cond: join(&weighted.windows, &p.cond)?,
                uncond: p
                    .uncond
                    .as_deref()
                    .map(|u| join(&weighted.windows, u))
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

/// Which windows make up one conditioning phase, indices into [`Weighted::windows`].
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
}

/// The encoded windows weighted as AUTOMATIC1111 weighs the batch of each schedule, and which of
/// them make up each text: a text's windows padded to its schedule's number of windows.
pub struct Weighted {
    pub windows: Vec<Array2<f32>>,
    /// For each of `windows`, the encoded window (index into [`Windows::chunks`]) it comes from.
    pub source: Vec<usize>,
    /// For each text of the prompt's reading, its windows' indices in `windows`.
    prompt: Vec<Vec<usize>>,
    negative: Option<Vec<Vec<usize>>>,
    /// The empty prompt's window as encoded (what `pad_cond_uncond` pads with).
    empty: usize,
}

impl Weighted {
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
            let mut cond = self.prompt[key.0].clone();
            let mut uncond = key.1.zip(self.negative.as_ref()).map(|(i, w)| w[i].clone());
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

/// The hidden states of `windows` (`hidden`: `[windows, 77, width]`) weighted schedule by
/// schedule as [`emphasize_batch`] does: the prompt's reading is one batch, the negative's
/// another; `file` names the encoder in errors.
pub fn weigh(
    hidden: &ArrayD<f32>,
    windows: &Windows<'_>,
    prompt: &Reading,
    negative: Option<&Reading>,
    file: &Path,
) -> Result<Weighted, PipelineError> {
    let to_error = |source| PipelineError::Concatenate {
        file: file.display().to_string(),
        source,
    };
    let mut out = Weighted {
        windows: Vec::new(),
        source: Vec::new(),
        prompt: Vec::new(),
        negative: None,
        empty: 0,
    };
    out.prompt =
        weigh_schedule(hidden, windows, &windows.prompt, prompt, &mut out).map_err(to_error)?;
    if let (Some(ranges), Some(reading)) = (windows.negative.as_ref(), negative) {
        let texts = weigh_schedule(hidden, windows, ranges, reading, &mut out).map_err(to_error)?;
        out.negative = Some(texts);
    }
    let z = hidden.index_axis(Axis(0), windows.empty);
    out.windows
        .push(z.into_dimensionality().map_err(to_error)?.to_owned());
    out.source.push(windows.empty);
    out.empty = out.windows.len() - 1;
    Ok(out)
}

/// One schedule's batch (`ranges`: each text's encoded windows; `reading`: how often each text
/// occurs in the schedule), window index by window index, appended to `out`; each text's indices
/// into `out.windows`.
fn weigh_schedule(
    hidden: &ArrayD<f32>,
    windows: &Windows<'_>,
    ranges: &[Range<usize>],
    reading: &Reading,
    out: &mut Weighted,
) -> Result<Vec<Vec<usize>>, ndarray::ShapeError> {
    let mut count = vec![0usize; ranges.len()];
    for &(_, text) in &reading.schedule {
        count[text] += 1;
    }
    let chunk_count = ranges.iter().map(Range::len).max().unwrap_or(0);
    let mut texts = vec![Vec::with_capacity(chunk_count); ranges.len()];
    for i in 0..chunk_count {
        let sources: Vec<usize> = ranges
            .iter()
            .map(|r| r.clone().nth(i).unwrap_or(windows.empty))
            .collect();
        let batch = sources
            .iter()
            .zip(&count)
            .map(|(&s, &n)| {
                let z = hidden.index_axis(Axis(0), s).into_dimensionality()?;
                Ok((z, windows.chunks[s].weights.as_slice(), n))
            })
            .collect::<Result<Vec<_>, ndarray::ShapeError>>()?;
        for (t, z) in emphasize_batch(&batch)?.into_iter().enumerate() {
            texts[t].push(out.windows.len());
            out.windows.push(z);
            out.source.push(sources[t]);
        }
    }
    Ok(texts)
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

/// AUTOMATIC1111's "Original" emphasis on one window index of a schedule's batch: each member
/// `(hidden state [77, width], its per-token weights, how many schedule entries use it)` times
/// its weights, all rescaled by one factor so that the batch's mean (every schedule entry
/// counted) is the mean before weighting. A batch whose weights are all 1 is left as it is (the
/// rescale is then exactly 1); a batch of one is the rescale of that window alone.
pub fn emphasize_batch(
    batch: &[(ArrayView2<f32>, &[f64], usize)],
) -> Result<Vec<Array2<f32>>, ndarray::ShapeError> {
    if batch.iter().any(|(z, w, _)| w.len() != z.nrows()) {
        return Err(ndarray::ShapeError::from_kind(
            ndarray::ErrorKind::IncompatibleShape,
        ));
    }
    if batch.iter().all(|(_, w, _)| w.iter().all(|&w| w == 1.0)) {
        return Ok(batch.iter().map(|(z, _, _)| z.to_owned()).collect());
    }
    let weighted: Vec<Array2<f32>> = batch
        .iter()
        .map(|(z, weights, _)| {
            let mut out = z.to_owned();
            for (mut row, &w) in out.rows_mut().into_iter().zip(*weights) {
                // torch multiplies by the float32 weight tensor.
                row *= w as f32;
            }
            out
        })
        .collect();
    let before = mean(batch.iter().map(|(z, _, n)| (*z, *n)));
    let after = mean(
        weighted
            .iter()
            .zip(batch)
            .map(|(z, (_, _, n))| (z.view(), *n)),
    );
    let factor = before / after;
    Ok(weighted.into_iter().map(|z| z * factor).collect())
}

/// Mean of all elements of a batch whose members occur `n` times each (accumulated in f64,
/// returned as torch's float32 mean is).
fn mean<'a>(batch: impl Iterator<Item = (ArrayView2<'a, f32>, usize)>) -> f32 {
    let (mut sum, mut len) = (0.0f64, 0usize);
    for (z, n) in batch {
        sum += n as f64 * z.iter().map(|&v| f64::from(v)).sum::<f64>();
        len += n * z.len();
    }
    (sum / len as f64) as f32
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, array};

    use super::emphasize_batch;

    fn total(z: &Array2<f32>) -> f64 {
        z.iter().map(|&v| f64::from(v)).sum()
    }

    #[test]
    fn one_rescale_restores_the_mean_of_the_whole_batch_counting_repeats() {
        let a = array![[1.0f32, 2.0], [3.0, 4.0]];
        let b = array![[0.5f32, -1.0], [2.0, 1.0]];
        let (wa, wb) = ([1.0, 2.0], [1.0, 1.0]);
        let out = emphasize_batch(&[(a.view(), &wa, 1), (b.view(), &wb, 3)]).unwrap();
        let before = (total(&a) + 3.0 * total(&b)) / 16.0;
        let after = (total(&out[0]) + 3.0 * total(&out[1])) / 16.0;
        assert!((before - after).abs() < 1e-6, "{before} vs {after}");
        // One factor for the batch: b, unweighted, is scaled too, by the same factor as a's
        // unweighted first row.
        let factor = out[1][[0, 0]] / b[[0, 0]];
        assert!((factor - 1.0).abs() > 1e-3);
        assert!((out[0][[0, 0]] / a[[0, 0]] - factor).abs() < 1e-6);
    }

    #[test]
    fn a_batch_of_one_restores_its_own_mean_and_weights_of_one_change_nothing() {
        let a = array![[1.0f32, 2.0], [3.0, 4.0]];
        let out = emphasize_batch(&[(a.view(), &[1.5, 1.0], 1)]).unwrap();
        assert!((total(&out[0]) - total(&a)).abs() < 1e-5);
        let same = emphasize_batch(&[(a.view(), &[1.0, 1.0], 2)]).unwrap();
        assert_eq!(same[0], a);
        assert!(emphasize_batch(&[(a.view(), &[1.0], 1)]).is_err());
    }
}
