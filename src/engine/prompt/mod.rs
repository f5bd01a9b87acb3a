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

#[cfg(test)]
mod tests;
