//! Prompts as AUTOMATIC1111 reads them: prompt editing and alternation ([`schedule`]), emphasis
//! and `BREAK` ([`emphasis`]), and the 75-token chunks long prompts are encoded in ([`chunk`]).
//!
//! Engine level: nothing here knows about jobs, files or ONNX; chunking takes the tokenizer as a
//! function.

pub mod chunk;
pub mod emphasis;
pub mod schedule;

pub use chunk::{Chunk, ChunkError, SpecialIds, chunk_pieces};
pub use emphasis::{EmphasisError, Piece};
pub use schedule::{Schedule, schedule};

/// How a prompt's brackets are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptSyntax {
    /// AUTOMATIC1111's syntax: emphasis, `BREAK`, editing, alternation, long prompts in chunks.
    #[default]
    A1111,
    /// Brackets are text; one 77-token window, longer prompts cut (diffusers' behaviour).
    Plain,
}

impl std::fmt::Display for PromptSyntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for PromptSyntax {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for PromptSyntax {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        PromptSyntax::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown prompt syntax {name:?}; supported: {}",
                PromptSyntax::NAMES.join(", ")
            ))
        })
    }
}

impl PromptSyntax {
    pub const NAMES: [&'static str; 2] = ["a1111", "plain"];

    pub fn from_name(name: &str) -> Option<PromptSyntax> {
        match name {
            "a1111" => Some(PromptSyntax::A1111),
            "plain" => Some(PromptSyntax::Plain),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Plain => "plain",
        }
    }
}

/// Whether `text` renders the same in AUTOMATIC1111's syntax as in plain text, without
/// tokenizing it: no bracket, backslash or `BREAK`, and short enough (at most
/// [`chunk::CHUNK_LENGTH`] bytes, so at most that many tokens) to fit one window.
pub fn reads_as_plain(text: &str) -> bool {
    text.len() <= chunk::CHUNK_LENGTH
        && !text.contains(['(', ')', '[', ']', '\\'])
        && !text.contains("BREAK")
}

/// One text of a prompt's schedule, read for emphasis.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledText {
    /// The last 1-based schedule step this text is used for (see [`Schedule::at_sampler_step`]).
    pub end_at_step: usize,
    pub text: String,
    pub pieces: Vec<Piece>,
}

/// A prompt read in AUTOMATIC1111's syntax over `steps` steps: its texts with their steps and
/// emphasis.
pub fn read(prompt: &str, steps: usize) -> Result<Vec<ScheduledText>, EmphasisError> {
    schedule(prompt, steps)
        .entries
        .into_iter()
        .map(|(end_at_step, text)| {
            let pieces = emphasis::parse(&text)?;
            Ok(ScheduledText {
                end_at_step,
                text,
                pieces,
            })
        })
        .collect()
}

/// A distinct text of a prompt's schedule with its emphasis and its encoder windows.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadText {
    pub text: String,
    pub pieces: Vec<Piece>,
    pub chunks: Vec<Chunk>,
}

/// A prompt read in AUTOMATIC1111's syntax and chunked: each distinct text once, and which one
/// each schedule entry uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// `(last 1-based schedule step, index into texts)`, by increasing step.
    pub schedule: Vec<(usize, usize)>,
    pub texts: Vec<ReadText>,
}

impl Reading {
    /// The index into [`Reading::texts`] used at the sampler's 0-based step (UNet call) `step`:
    /// the first entry whose last step is not before it, else the first entry (as
    /// AUTOMATIC1111's `reconstruct_cond_batch` does past the end).
    pub fn text_at(&self, step: usize) -> usize {
        self.schedule
            .iter()
            .find(|(end, _)| step <= *end)
            .or(self.schedule.first())
            .map_or(0, |(_, i)| *i)
    }
}

/// Why a prompt could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Emphasis(#[from] EmphasisError),
    #[error(transparent)]
    Tokenize(E),
}

/// [`read`], each distinct text chunked with `tokenize` (ids without start/end, untruncated).
pub fn read_chunked<E, F>(
    prompt: &str,
    steps: usize,
    special: SpecialIds,
    mut tokenize: F,
) -> Result<Reading, ReadError<E>>
where
    E: std::error::Error + 'static,
    F: FnMut(&str) -> Result<Vec<u32>, E>,
{
    let mut reading = Reading {
        schedule: Vec::new(),
        texts: Vec::new(),
    };
    for (end, text) in schedule(prompt, steps).entries {
        let index = match reading.texts.iter().position(|t| t.text == text) {
            Some(i) => i,
            None => {
                let pieces = emphasis::parse(&text)?;
                let chunks =
                    chunk_pieces(&pieces, special, &mut tokenize).map_err(|e| match e {
                        ChunkError::Tokenize(e) => ReadError::Tokenize(e),
                    })?;
                reading.texts.push(ReadText {
                    text,
                    pieces,
                    chunks,
                });
                reading.texts.len() - 1
            }
        };
        reading.schedule.push((end, index));
    }
    Ok(reading)
}

#[cfg(test)]
mod tests;
