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
    let hidden = encode_ids(text_encoder, graph, &ids, prompts.len(), seq)?;
    Ok(TextEmbeddings {
        hidden,
        truncated,
        tokenize,
    })
}

/// Runs the text encoder on `n` rows of `seq` token ids (one run): its hidden state
/// `[n, seq, hidden]`.
pub fn encode_ids(
    text_encoder: &mut Part,
    graph: &TextEncoderGraph,
    ids: &[i64],
    n: usize,
    seq: usize,
) -> Result<ArrayD<f32>, PipelineError> {
    let file = text_encoder.loaded.file.clone();
    let input =
        int_tensor(&[n, seq], ids, text_encoder.feeding.aux).map_err(|e| ort_err(&file, e))?;
    let outputs = text_encoder
        .loaded
        .run(ort::inputs![graph.input_ids => input])
        .map_err(|e| ort_err(&file, e))?;
    let hidden = extract_float(&outputs[graph.hidden_state]).map_err(|e| ort_err(&file, e))?;
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
