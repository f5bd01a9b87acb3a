//! Weighted pieces to text-encoder windows, as AUTOMATIC1111's `tokenize_line` fills them: the
//! tokens of each piece (tokenized on its own, no start/end tokens, not truncated) go into chunks
//! of 75 (the tokenizer's `model_max_length - 2`); a chunk that fills up while the last comma is at most 20 tokens back moves what follows
//! the comma into the next chunk; `BREAK` closes the chunk; each chunk is padded with the end
//! token to 75 and wrapped in start/end tokens (77 ids, weight 1 outside the prompt's tokens). A
//! tokenizer whose pad token is not the end token (SD 2.x) gets the pad id after the first end
//! token of each window.

use super::emphasis::Piece;

/// Tokens per chunk between the start and end tokens for CLIP's 77-token window (a tokenizer
/// with another `model_max_length` gets that minus 2, see [`SpecialIds::chunk_length`]).
pub const CHUNK_LENGTH: usize = 75;
/// How far back a comma may be for the text after it to move to the next chunk
/// (AUTOMATIC1111's `comma_padding_backtrack` default).
pub const COMMA_BACKTRACK: usize = 20;

/// The tokenizer's ids chunking needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// The id of `,</w>`, if the vocabulary has it.
    pub comma: Option<u32>,
    /// Tokens per chunk between start and end: the tokenizer's `model_max_length - 2`
    /// ([`CHUNK_LENGTH`] for CLIP).
    pub chunk_length: usize,
}

/// One text-encoder window: `chunk_length + 2` ids and the weight of each position.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f64>,
}

impl Chunk {
    /// The window of the empty prompt (what negative prompts are padded with).
    pub fn empty(special: &SpecialIds) -> Chunk {
        Builder::new(*special).close(Vec::new(), Vec::new())
    }
}

/// Why a prompt could not be chunked.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Tokenize(E),
}

/// Open chunk state.
struct Builder {
    special: SpecialIds,
    tokens: Vec<u32>,
    weights: Vec<f64>,
    last_comma: Option<usize>,
    chunks: Vec<Chunk>,
}

impl Builder {
    fn new(special: SpecialIds) -> Builder {
        Builder {
            special,
            tokens: Vec::new(),
            weights: Vec::new(),
            last_comma: None,
            chunks: Vec::new(),
        }
    }

    /// Pads and wraps `tokens` into a window.
    fn close(&self, mut tokens: Vec<u32>, mut weights: Vec<f64>) -> Chunk {
        let s = &self.special;
        tokens.resize(s.chunk_length, s.eos);
        weights.resize(s.chunk_length, 1.0);
        let mut ids = Vec::with_capacity(s.chunk_length + 2);
        ids.push(s.bos);
        ids.extend(tokens);
        ids.push(s.eos);
        if s.pad != s.eos
            && let Some(first_end) = ids.iter().position(|&id| id == s.eos)
        {
            ids[first_end + 1..].fill(s.pad);
        }
        let mut w = Vec::with_capacity(s.chunk_length + 2);
        w.push(1.0);
        w.extend(weights);
        w.push(1.0);
        Chunk { ids, weights: w }
    }

    fn next_chunk(&mut self) {
        let tokens = std::mem::take(&mut self.tokens);
        let weights = std::mem::take(&mut self.weights);
        let chunk = self.close(tokens, weights);
        self.chunks.push(chunk);
        self.last_comma = None;
    }

    fn push(&mut self, token: u32, weight: f64) {
        if Some(token) == self.special.comma {
            self.last_comma = Some(self.tokens.len());
        } else if let Some(comma) = self.last_comma
            && self.tokens.len() == self.special.chunk_length
            && self.tokens.len() - comma <= COMMA_BACKTRACK
        {
            let moved = self.tokens.split_off(comma + 1);
            let moved_weights = self.weights.split_off(comma + 1);
            self.next_chunk();
            self.tokens = moved;
            self.weights = moved_weights;
        }
        if self.tokens.len() == self.special.chunk_length {
            self.next_chunk();
        }
        self.tokens.push(token);
        self.weights.push(weight);
    }
}

/// The windows of one prompt text read into `pieces`; `tokenize` gives a text's ids without
/// start/end tokens, untruncated.
pub fn chunk_pieces<E, F>(
    pieces: &[Piece],
    special: SpecialIds,
    mut tokenize: F,
) -> Result<Vec<Chunk>, ChunkError<E>>
where
    E: std::error::Error + 'static,
    F: FnMut(&str) -> Result<Vec<u32>, E>,
{
    let mut b = Builder::new(special);
    for piece in pieces {
        match piece {
            Piece::Break => b.next_chunk(),
            Piece::Text { text, weight } => {
                for id in tokenize(text).map_err(ChunkError::Tokenize)? {
                    b.push(id, *weight);
                }
            }
        }
    }
    if !b.tokens.is_empty() || b.chunks.is_empty() {
        b.next_chunk();
    }
    Ok(b.chunks)
}
