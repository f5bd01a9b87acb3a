//! The text clean-up of transformers' slow `CLIPTokenizer` when ftfy is not installed.
//!
//! `CLIPTokenizer._tokenize` then runs `" ".join(BasicTokenizer(strip_accents=False,
//! do_split_on_punc=False).tokenize(text))`, which is, in order:
//!
//! 1. `_clean_text`: drop U+0000, U+FFFD and every character of general category C* (control,
//!    format, surrogate, private use, unassigned) except tab, newline and carriage return; turn
//!    space, tab, newline, carriage return and category Zs into a space;
//! 2. `_tokenize_chinese_chars`: put spaces around CJK ideographs;
//! 3. NFC;
//! 4. split on Python whitespace (`str.split()`), lower-case each piece with Python's `str.lower`
//!    (full case mapping, final sigma), and join the pieces with single spaces.
//!
//! The character classes come from [`super::tables`], generated from the reference Python's
//! `unicodedata`; NFC from the `unicode-normalization` crate (normalisation is stable across
//! Unicode versions for assigned characters, and unassigned ones were dropped in step 1); lower
//! casing from `str::to_lowercase`, which implements the same final-sigma rule as CPython.
//!
//! **Why hand-written, not the `tokenizers` crate's normalizers.** The fast CLIP tokenizer's
//! normalizer (NFC, a whitespace regex, lower case) is not what the slow `CLIPTokenizer` that
//! diffusers loads from a model folder does: it keeps control and format characters and does
//! not space CJK ideographs. Prompts with such characters would get other token ids, so other
//! images; `tests/tokenizer_parity.rs` checks the slow tokenizer's ids.

use unicode_normalization::UnicodeNormalization;

use super::tables::{OTHER, PY_WHITESPACE, SPACE_SEPARATOR};

fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let cp = c as u32;
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// transformers' `_is_control`.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && in_ranges(OTHER, c)
}

/// transformers' `_is_whitespace`.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || in_ranges(SPACE_SEPARATOR, c)
}

/// Python's `str.isspace()` for one character.
pub(crate) fn is_py_space(c: char) -> bool {
    in_ranges(PY_WHITESPACE, c)
}

/// transformers' `BasicTokenizer._is_chinese_char`: the CJK Unified Ideographs blocks.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// Python's `" ".join(text.split())`.
fn split_join(text: &str, map: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in text.split(is_py_space).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&map(piece));
    }
    out
}

/// The slow CLIPTokenizer's no-ftfy text clean-up (see the module doc). The result has no
/// leading, trailing or repeated spaces and no other whitespace.
pub(crate) fn basic_clean(text: &str) -> String {
    let mut spaced = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            spaced.push(' ');
        } else if is_cjk(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let composed: String = spaced.nfc().collect();
    let lowered = split_join(&composed, str::to_lowercase);
    // BasicTokenizer splits once more after lower-casing (`whitespace_tokenize(" ".join(...))`).
    split_join(&lowered, str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_matches_basic_tokenizer_on_hand_picked_cases() {
        // Control and format characters go, Zs becomes a space, other Python whitespace splits.
        assert_eq!(
            basic_clean("a\u{200B}b\u{00A0}c\u{2028}d\u{0085}e\tf"),
            "ab c de f"
        );
        assert_eq!(basic_clean("\u{FEFF}\0x\u{FFFD}y\u{E000}"), "xy");
        // CJK ideographs are spaced out; kana and hangul are not.
        assert_eq!(basic_clean("日本語とEnglish"), "日 本 語 とenglish");
        // NFC before lower-casing; full lower-casing with final sigma per piece.
        assert_eq!(basic_clean("CAFE\u{301} ΟΔΟΣ Σ İ"), "café οδος σ i\u{307}");
        assert_eq!(basic_clean("  \t\n "), "");
    }

    #[test]
    fn tables_are_sorted_and_disjoint() {
        for table in [OTHER, SPACE_SEPARATOR, PY_WHITESPACE] {
            assert!(table.iter().all(|&(lo, hi)| lo <= hi));
            assert!(table.windows(2).all(|w| w[0].1 < w[1].0));
        }
        assert!(is_control('\u{0378}'), "unassigned code points are C* (Cn)");
        assert!(!is_control('\n') && is_whitespace('\n') && is_py_space('\u{2028}'));
    }
}
