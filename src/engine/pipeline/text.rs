//! Prompts to text embeddings: the CLIP tokenizer, then a text encoder's hidden state (the
//! output the family's graph names).

use std::time::{Duration, Instant};

use ndarray::{ArrayD, Axis};

use super::PipelineError;
use crate::engine::model::Part;
use crate::engine::model::family::TextEncoderGraph;
use crate::engine::tokenizer::ClipTokenizer;
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

/// Tokenizes and encodes each prompt (one text-encoder run for all of them).
pub fn encode(
    tokenizer: &ClipTokenizer,
    text_encoder: &mut Part,
    graph: &TextEncoderGraph,
    prompts: &[&str],
) -> Result<TextEmbeddings, PipelineError> {
    let mut out = encode_outputs(
        tokenizer,
        text_encoder,
        graph.input_ids,
        prompts,
        &[(graph.hidden_state, 3)],
    )?;
    Ok(TextEmbeddings {
        hidden: out.outputs.remove(0),
        truncated: out.truncated,
        tokenize: out.tokenize,
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

/// Tokenizes each prompt and runs the text encoder once for all of them; returns the outputs
/// named in `wanted` (name and rank), each checked to have one row per prompt.
pub fn encode_outputs(
    tokenizer: &ClipTokenizer,
    text_encoder: &mut Part,
    input_ids: &str,
    prompts: &[&str],
    wanted: &[(&str, usize)],
) -> Result<EncoderOutputs, PipelineError> {
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut truncated = Vec::new();
    let mut seq = 0;
    for p in prompts {
        let enc = tokenizer.encode(p)?;
        seq = enc.ids.len();
        ids.extend_from_slice(&enc.ids);
        truncated.push(enc.truncated);
    }
    let tokenize = started.elapsed();
    let file = text_encoder.loaded.file.clone();
    let input = int_tensor(&[prompts.len(), seq], &ids, text_encoder.feeding.aux)
        .map_err(|e| ort_err(&file, e))?;
    let outputs = text_encoder
        .loaded
        .run(ort::inputs![input_ids => input])
        .map_err(|e| ort_err(&file, e))?;
    let mut got = Vec::with_capacity(wanted.len());
    for &(name, rank) in wanted {
        let value = extract_float(&outputs[name]).map_err(|e| ort_err(&file, e))?;
        if value.ndim() != rank || value.len_of(Axis(0)) != prompts.len() {
            return Err(PipelineError::Shape {
                file: file.display().to_string(),
                what: format!(
                    "{name} has shape {:?}, expected rank {rank} with {} rows",
                    value.shape(),
                    prompts.len()
                ),
            });
        }
        got.push(value);
    }
    Ok(EncoderOutputs {
        outputs: got,
        truncated,
        tokenize,
    })
}
