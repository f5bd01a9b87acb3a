//! How `sdspool check` shows the way each prompt is read in AUTOMATIC1111's syntax: its encoder
//! windows, the words with a weight other than 1, `BREAK`s, and the texts prompt editing and
//! alternation switch between, by step.

use std::fmt::Write as _;

use crate::engine::pipeline::a1111;
use crate::engine::prompt::{Piece, Reading};
use crate::engine::tokenizer::{ClipTokenizer, TextCleaning};

/// One line describing `text` (a prompt or negative prompt) read over `steps` steps with the
/// `cleaning` clean-up; `Err` with the reason it cannot be read.
pub fn describe(
    tokenizer: &ClipTokenizer,
    text: &str,
    steps: usize,
    cleaning: TextCleaning,
) -> Result<String, String> {
    let reading =
        a1111::read(tokenizer, text, steps, cleaning, "prompt").map_err(|e| e.to_string())?;
    Ok(describe_reading(&reading, tokenizer.model_max_length()))
}

fn describe_reading(reading: &Reading, window: usize) -> String {
    let windows = reading
        .texts
        .iter()
        .map(|t| t.chunks.len())
        .max()
        .unwrap_or(1);
    let mut out = format!(
        "{windows} window{} of {window} tokens",
        if windows == 1 { "" } else { "s" }
    );
    let first = &reading.texts[0];
    let weighted: Vec<String> = first
        .pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Text { text, weight } if *weight != 1.0 && !text.trim().is_empty() => {
                Some(format!("{:?} x{}", short(text.trim(), 24), round(*weight)))
            }
            _ => None,
        })
        .collect();
    if !weighted.is_empty() {
        let _ = write!(out, "; weighted {}", list(&weighted, 8));
    }
    let breaks = first.pieces.iter().filter(|p| **p == Piece::Break).count();
    if breaks > 0 {
        let _ = write!(out, "; {breaks} BREAK");
    }
    if reading.texts.len() > 1 {
        let mut from = 1;
        let mut spans = Vec::new();
        for &(end, i) in &reading.schedule {
            let steps = if from == end {
                format!("step {end}")
            } else {
                format!("steps {from}-{end}")
            };
            spans.push(format!("{steps} {:?}", short(&reading.texts[i].text, 40)));
            from = end + 1;
        }
        let _ = write!(
            out,
            "; {} texts over the steps: {}",
            reading.texts.len(),
            list(&spans, 6)
        );
    }
    out
}

fn list(items: &[String], most: usize) -> String {
    let mut s = items[..items.len().min(most)].join(", ");
    if items.len() > most {
        let _ = write!(s, ", … ({} more)", items.len() - most);
    }
    s
}

fn round(w: f64) -> String {
    let s = format!("{w:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn short(text: &str, most: usize) -> String {
    let mut s: String = text.chars().take(most).collect();
    if text.chars().count() > most {
        s.push('…');
    }
    s
}
