//! Prompts to text embeddings: the CLIP tokenizer, then a text encoder's hidden state (the
//! output the family's graph names).

use std::time::{Duration, Instant};

use ndarray::{ArrayD, Axis};

use super::{PipelineError, clip_skip};
use crate::engine::model::Part;
use crate::engine::model::family::TextEncoderGraph;
use crate::engine::tokenizer::{ClipTokenizer, TextCleaning};
use crate::runtime::tensors::{extract_float, int_tensor, ort_err};

/// The embeddings of some prompts, `[n, sequence, hidden]`, plus the text dropped by truncation.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    pub hidden: ArrayD<f32>,
    /// For each prompt, the words cut off beyond the tokenizer's limit.
    pub truncated: Vec<Option<String>>,
    /// Time spent in the tokenizer.
    pub tokenize: Duration,
}

/// Which hidden state of the text encoder conditions the UNet ([`super::clip_skip`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSkip {
    /// 1: the last (`last_hidden_state`); `N`: the one `N - 1` layers before it.
    pub n: usize,
    /// The encoder's `layer_norm_eps` (from its config.json; CLIP's 1e-5 when absent).
    pub layer_norm_eps: f64,
}

impl ClipSkip {
    pub const NONE: ClipSkip = ClipSkip {
        n: 1,
        layer_norm_eps: 1e-5,
    };
}

/// Tokenizes and encodes each prompt (one text-encoder run for all of them).
pub fn encode(
    tokenizer: &ClipTokenizer,
    text_encoder: &mut Part,
    graph: &TextEncoderGraph,
    prompts: &[&str],
) -> Result<TextEmbeddings, PipelineError> {
    encode_skipping(
        tokenizer,
        text_encoder,
        graph,
        prompts,
        ClipSkip::NONE,
        TextCleaning::Basic,
    )
}

/// [`encode`] conditioning on the hidden state `skip` selects, the text cleaned as `cleaning`
/// says.
pub fn encode_skipping(
    tokenizer: &ClipTokenizer,
    text_encoder: &mut Part,
    graph: &TextEncoderGraph,
    prompts: &[&str],
    skip: ClipSkip,
    cleaning: TextCleaning,
) -> Result<TextEmbeddings, PipelineError> {
    let tokens = tokenize(tokenizer, prompts, cleaning)?;
    let hidden = encode_ids(
        text_encoder,
        graph,
        &tokens.ids,
        prompts.len(),
        tokens.seq,
        skip,
    )?;
    Ok(TextEmbeddings {
        hidden,
        truncated: tokens.truncated,
        tokenize: tokens.tokenize,
    })
}

/// Several outputs of one text-encoder run, in the order asked for, each batch first.
#[derive(Debug, Clone)]
pub struct EncoderOutputs {
    pub outputs: Vec<ArrayD<f32>>,
    /// For each prompt, the words cut off beyond the tokenizer's limit.
    pub truncated: Vec<Option<String>>,
    /// Time spent in the tokenizer.
    pub tokenize: Duration,
}

/// Tokenizes each prompt (cleaned as `cleaning` says) and runs the text encoder once for all of
/// them; returns the outputs named in `wanted` (name and rank), each checked to have one row
/// per prompt.
pub fn encode_outputs(
    tokenizer: &ClipTokenizer,
    text_encoder: &mut Part,
    input_ids: &str,
    prompts: &[&str],
    wanted: &[(&str, usize)],
    cleaning: TextCleaning,
) -> Result<EncoderOutputs, PipelineError> {
    let tokens = tokenize(tokenizer, prompts, cleaning)?;
    let outputs = run_outputs(
        text_encoder,
        input_ids,
        &tokens.ids,
        prompts.len(),
        tokens.seq,
        wanted,
    )?;
    Ok(EncoderOutputs {
        outputs,
        truncated: tokens.truncated,
        tokenize: tokens.tokenize,
    })
}

/// Runs the text encoder once on `n` rows of `seq` token ids; returns the outputs named in
/// `wanted` (name and rank), each checked to have `n` rows.
pub fn run_outputs(
    text_encoder: &mut Part,
    input_ids: &str,
    ids: &[i64],
    n: usize,
    seq: usize,
    wanted: &[(&str, usize)],
) -> Result<Vec<ArrayD<f32>>, PipelineError> {
    let file = text_encoder.loaded.file.clone();
    let input =
        int_tensor(&[n, seq], ids, text_encoder.feeding.aux).map_err(|e| ort_err(&file, e))?;
    let outputs = text_encoder
        .loaded
        .run(ort::inputs![input_ids => input])
        .map_err(|e| ort_err(&file, e))?;
    let mut got = Vec::with_capacity(wanted.len());
    for &(name, rank) in wanted {
        let value = extract_float(&outputs[name]).map_err(|e| ort_err(&file, e))?;
        if value.ndim() != rank || value.len_of(Axis(0)) != n {
            return Err(PipelineError::Shape {
                file: file.display().to_string(),
                what: format!(
                    "{name} has shape {:?}, expected rank {rank} with {n} rows",
                    value.shape(),
                ),
            });
        }
        got.push(value);
    }
    Ok(got)
}

/// Prompts as token ids, one row of `seq` each.
struct Tokens {
    ids: Vec<i64>,
    seq: usize,
    truncated: Vec<Option<String>>,
    tokenize: Duration,
}

fn tokenize(
    tokenizer: &ClipTokenizer,
    prompts: &[&str],
    cleaning: TextCleaning,
) -> Result<Tokens, PipelineError> {
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut truncated = Vec::new();
    let mut seq = 0;
    for p in prompts {
        let enc = tokenizer.encode_cleaned(p, cleaning)?;
        seq = enc.ids.len();
        ids.extend_from_slice(&enc.ids);
        truncated.push(enc.truncated);
    }
    Ok(Tokens {
        ids,
        seq,
        truncated,
        tokenize: started.elapsed(),
    })
}

/// Runs the text encoder on `n` rows of `seq` token ids (one run): its hidden state
/// `[n, seq, hidden]` (the one `skip` selects).
pub fn encode_ids(
    text_encoder: &mut Part,
    graph: &TextEncoderGraph,
    ids: &[i64],
    n: usize,
    seq: usize,
    skip: ClipSkip,
) -> Result<ArrayD<f32>, PipelineError> {
    let file = text_encoder.loaded.file.clone();
    let names: Vec<String> = text_encoder
        .signature
        .outputs
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let states = clip_skip::hidden_state_count(&names);
    let skipped = (skip.n > 1)
        .then(|| clip_skip::skipped_output(skip.n, states, &file.display().to_string()))
        .transpose()?;
    let input =
        int_tensor(&[n, seq], ids, text_encoder.feeding.aux).map_err(|e| ort_err(&file, e))?;
    let outputs = text_encoder
        .loaded
        .run(ort::inputs![graph.input_ids => input])
        .map_err(|e| ort_err(&file, e))?;
    let mut hidden = extract_float(&outputs[graph.hidden_state]).map_err(|e| ort_err(&file, e))?;
    if let Some(name) = skipped {
        let get = |name: &str| extract_float(&outputs[name]).map_err(|e| ort_err(&file, e));
        let last = get(&format!("hidden_states.{}", states - 1))?;
        hidden = clip_skip::final_layer_norm(get(&name)?, last, &hidden, skip.layer_norm_eps)
            .map_err(|source| PipelineError::Concatenate {
                file: file.display().to_string(),
                source,
            })?;
    }
    if hidden.ndim() != 3 || hidden.len_of(Axis(0)) != n || hidden.len_of(Axis(1)) != seq {
        return Err(PipelineError::Shape {
            file: file.display().to_string(),
            what: format!(
                "{} has shape {:?}, expected [{n}, {seq}, hidden]",
                graph.hidden_state,
                hidden.shape(),
            ),
        });
    }
    Ok(hidden)
}
