//! Emphasis `(word)`, `[word]`, `(word:1.3)`, escapes and `BREAK`, read as AUTOMATIC1111's
//! `parse_prompt_attention` reads them.
//!
//! The text is scanned left to right; at each position the first of these that matches wins:
//! `\(` `\)` `\[` `\]` `\\` (the escaped character, weight 1), a lone `\` (dropped), `(` and
//! `[` (open), `:` + number + `)` (closes the innermost open `(` with that weight, whitespace
//! allowed around the number), `)` (closes `(`: ×1.1), `]` (closes `[`: ÷1.1), a run of other
//! text, a lone `:`. A closer with nothing open to close is text. Brackets still open at the end
//! apply to everything after them. Every piece of text is split at `BREAK` (a whole word, with
//! the whitespace around it); the markers take part in the weighting like text, and only one
//! whose weight is still exactly -1 starts a new chunk (so `(a BREAK b)` reads `BREAK` as a word
//! with weight -1.1, as AUTOMATIC1111 does). Neighbouring pieces with equal weights are merged.

/// A piece of a prompt as read: text with its weight, or a chunk break.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text { text: String, weight: f64 },
    Break,
}

/// Why a prompt's emphasis cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmphasisError {
    /// `(word:1.2.3)`: AUTOMATIC1111 fails on it too (Python's `float()` raises).
    #[error("`{text}` is not a number (in the emphasis `(…:{text})`)")]
    BadWeight { text: String },
}

const ROUND: f64 = 1.1;
const SQUARE: f64 = 1.0 / 1.1;
/// The (text, weight) AUTOMATIC1111 uses as its chunk-break marker.
const BREAK_TEXT: &str = "BREAK";
const BREAK_WEIGHT: f64 = -1.0;

/// The prompt's pieces with their weights.
pub fn parse(text: &str) -> Result<Vec<Piece>, EmphasisError> {
    let chars: Vec<char> = text.chars().collect();
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<(String, f64)>, from: usize, m: f64| {
        for piece in &mut res[from..] {
            piece.1 *= m;
        }
    };
    let mut pos = 0;
    while pos < chars.len() {
        let c = chars[pos];
        match c {
            '\\' => {
                let next = chars.get(pos + 1).copied();
                if let Some(n @ ('(' | ')' | '[' | ']' | '\\')) = next {
                    res.push((n.to_string(), 1.0));
                    pos += 2;
                } else {
                    res.push((String::new(), 1.0));
                    pos += 1;
                }
            }
            '(' => {
                round.push(res.len());
                pos += 1;
            }
            '[' => {
                square.push(res.len());
                pos += 1;
            }
            ':' => match weight_closer(&chars, pos) {
                Some((number, end)) if !round.is_empty() => {
                    let w: f64 = number
                        .parse()
                        .map_err(|_| EmphasisError::BadWeight { text: number })?;
                    let from = round.pop().unwrap_or_default();
                    multiply(&mut res, from, w);
                    pos = end;
                }
                Some((_, end)) => {
                    push_text(&mut res, chars[pos..end].iter().collect());
                    pos = end;
                }
                None => {
                    push_text(&mut res, ":".into());
                    pos += 1;
                }
            },
            ')' | ']' => {
                let open = if c == ')' { &mut round } else { &mut square };
                match open.pop() {
                    Some(from) => multiply(&mut res, from, if c == ')' { ROUND } else { SQUARE }),
                    None => push_text(&mut res, c.to_string()),
                }
                pos += 1;
            }
            _ => {
                let end = (pos..chars.len())
                    .find(|&i| matches!(chars[i], '\\' | '(' | ')' | '[' | ']' | ':'))
                    .unwrap_or(chars.len());
                push_text(&mut res, chars[pos..end].iter().collect());
                pos = end;
            }
        }
    }
    for from in round {
        multiply(&mut res, from, ROUND);
    }
    for from in square {
        multiply(&mut res, from, SQUARE);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    Ok(merged
        .into_iter()
        .map(|(text, weight)| {
            if text == BREAK_TEXT && weight == BREAK_WEIGHT {
                Piece::Break
            } else {
                Piece::Text { text, weight }
            }
        })
        .collect())
}

/// `:` `\s*` `[+-]?[.\d]+` `\s*` `)` at `pos` (a `:`): the number and the position after `)`.
fn weight_closer(chars: &[char], pos: usize) -> Option<(String, usize)> {
    let mut p = pos + 1;
    while p < chars.len() && super::schedule::is_py_space(chars[p]) {
        p += 1;
    }
    let start = p;
    if matches!(chars.get(p), Some('+' | '-')) {
        p += 1;
    }
    let digits_from = p;
    while p < chars.len() && (chars[p] == '.' || chars[p].is_ascii_digit()) {
        p += 1;
    }
    if p == digits_from {
        return None;
    }
    let number: String = chars[start..p].iter().collect();
    while p < chars.len() && super::schedule::is_py_space(chars[p]) {
        p += 1;
    }
    (chars.get(p) == Some(&')')).then_some((number, p + 1))
}

/// Appends text, split at `BREAK` markers.
fn push_text(res: &mut Vec<(String, f64)>, text: String) {
    for (i, part) in split_breaks(&text).into_iter().enumerate() {
        if i > 0 {
            res.push((BREAK_TEXT.into(), BREAK_WEIGHT));
        }
        res.push((part.to_string(), 1.0));
    }
}

/// Python's `re.split(r"\s*\bBREAK\b\s*", text)`.
fn split_breaks(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut last = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(BREAK_TEXT) {
        let at = search + found;
        let end = at + BREAK_TEXT.len();
        let before = text[..at].chars().next_back();
        let after = text[end..].chars().next();
        if before.is_some_and(is_word) || after.is_some_and(is_word) {
            search = at + 1;
            continue;
        }
        // Whitespace before the word, but not before what the last split already took.
        let mut start = at;
        for (i, c) in text[last..at].char_indices().rev() {
            if !super::schedule::is_py_space(c) {
                break;
            }
            start = last + i;
        }
        let mut stop = end;
        for (i, c) in text[end..].char_indices() {
            if !super::schedule::is_py_space(c) {
                break;
            }
            stop = end + i + c.len_utf8();
        }
        parts.push(&text[last..start]);
        last = stop;
        search = stop.max(end);
    }
    parts.push(&text[last..]);
    parts
}

/// Python's `\w` for `str` patterns: alphanumeric (`str.isalnum()`) or `_`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}
