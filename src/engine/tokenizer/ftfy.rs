//! `text_cleaning: clip`: the clean-up transformers' CLIPTokenizer does when ftfy is installed
//! (CLIP's own, and what AUTOMATIC1111 installations run): `whitespace_clean(ftfy.fix_text(text))
//! .lower()`. The ftfy steps are ported in ftfy 6's order and repeated until the text no longer
//! changes, as `fix_text` does:
//!
//! 1. HTML entities ending in `;` (ftfy's table, all-caps Latin ones included) and numeric
//!    character references as Python's `html.unescape` decodes them, unless the text contains
//!    `<` (then it may be HTML and is left alone);
//! 2. C1 controls (U+0080..U+009F) decoded as windows-1252 bytes; Latin ligatures (`ﬁ` → `fi`);
//!    fullwidth and halfwidth forms to their usual width; curly quotes straightened; line breaks
//!    (`\r\n`, `\r`, U+2028, U+2029, U+0085) to `\n`; terminal escapes (`ESC [ … letter`)
//!    removed; ftfy's control characters removed; NFC.
//!
//! **Not ported:** ftfy's mojibake repair (`fix_encoding` and its `restore_byte_a0`,
//! `replace_lossy_sequences`, `decode_inconsistent_utf8`): it guesses, by heuristics over
//! character classes, that text was decoded with the wrong codec and re-decodes it
//! (`cafÃ©` → `café`). Such text passes through unchanged here (checked by the goldens).

use unicode_normalization::UnicodeNormalization;

use super::ftfy_tables::{
    C1_CONTROLS, CONTROL_CHARS, HTML_ENTITIES, INVALID_CHARREFS, INVALID_CODEPOINTS, LIGATURES,
    WIDTH_MAP,
};
use super::normalize::is_py_space;

/// `whitespace_clean(fix_text(text)).lower()`.
pub(crate) fn clip_clean(text: &str) -> String {
    let fixed = fix_text(text);
    let mut out = String::with_capacity(fixed.len());
    for piece in fixed.split(is_py_space).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(piece);
    }
    out.to_lowercase()
}

/// ftfy's `fix_text` without its mojibake repair.
pub(crate) fn fix_text(text: &str) -> String {
    let unescape = !text.contains('<');
    let mut text = text.to_string();
    loop {
        let before = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        text = translate(&text, C1_CONTROLS);
        text = translate(&text, LIGATURES);
        text = translate(&text, WIDTH_MAP);
        text = text
            .chars()
            .map(|c| match c {
                '\u{2BC}' | '\u{2018}'..='\u{201B}' => '\'',
                '\u{201C}'..='\u{201F}' => '"',
                c => c,
            })
            .collect();
        text = text
            .replace("\r\n", "\n")
            .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
        text = remove_terminal_escapes(&text);
        text = translate(&text, CONTROL_CHARS);
        text = text.nfc().collect();
        if text == before {
            return text;
        }
    }
}

/// Python's `str.translate` with a sorted `(char, replacement)` table (`None`: delete).
fn translate(text: &str, table: &[(char, Option<&str>)]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match table.binary_search_by(|(k, _)| k.cmp(&c)) {
            Ok(i) => out.push_str(table[i].1.unwrap_or("")),
            Err(_) => out.push(c),
        }
    }
    out
}

/// `\x1b\[((?:\d|;)*)([a-zA-Z])` removed.
fn remove_terminal_escapes(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\x1b' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if chars.get(j).is_some_and(char::is_ascii_alphabetic) {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// ftfy's `unescape_html`: each `&#?[0-9A-Za-z]{1,24};` that is a known entity or a whole
/// numeric reference is decoded.
fn unescape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp..];
        match reference_at(tail) {
            Some((len, decoded)) => {
                out.push_str(&decoded);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The reference at the start of `s` (which starts with `&`): its length and its text.
fn reference_at(s: &str) -> Option<(usize, String)> {
    let body = &s[1..];
    let hash = body.starts_with('#');
    let name_start = usize::from(hash);
    let name_len = body[name_start..]
        .bytes()
        .take_while(u8::is_ascii_alphanumeric)
        .count();
    if name_len == 0 || name_len > 24 || body.as_bytes().get(name_start + name_len) != Some(&b';') {
        return None;
    }
    let len = 1 + name_start + name_len + 1;
    let whole = &s[..len];
    if let Ok(i) = HTML_ENTITIES.binary_search_by(|(k, _)| k.cmp(&whole)) {
        return Some((len, HTML_ENTITIES[i].1.to_string()));
    }
    if !hash {
        return None;
    }
    let digits = &body[1..1 + name_len];
    let (radix, digits) = match digits.strip_prefix(['x', 'X']) {
        Some(hex) => (16, hex),
        None => (10, digits),
    };
    // html.unescape must consume the whole reference, else ftfy keeps it.
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let value = u32::from_str_radix(digits, radix).unwrap_or(u32::MAX);
    Some((len, charref(value)))
}

/// Python's `html.unescape` of a numeric reference.
fn charref(n: u32) -> String {
    if let Ok(i) = INVALID_CHARREFS.binary_search_by(|(k, _)| k.cmp(&n)) {
        return INVALID_CHARREFS[i].1.to_string();
    }
    if (0xD800..=0xDFFF).contains(&n) || n > 0x10FFFF {
        return "\u{FFFD}".into();
    }
    if INVALID_CODEPOINTS.binary_search(&n).is_ok() {
        return String::new();
    }
    char::from_u32(n).map(String::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ftfy_steps_on_hand_picked_cases() {
        assert_eq!(fix_text("Tom &amp; Jerry"), "Tom & Jerry");
        assert_eq!(fix_text("&amp;lt;"), "<");
        assert_eq!(fix_text("<b>&amp;</b>"), "<b>&amp;</b>");
        assert_eq!(fix_text("P&EACUTE;REZ"), "PÉREZ");
        assert_eq!(fix_text("it&#39;s &#x2764;"), "it's ❤");
        assert_eq!(fix_text("&#12abc;"), "&#12abc;");
        assert_eq!(fix_text("this&not that"), "this&not that");
        assert_eq!(fix_text("Don’t “x”"), "Don't \"x\"");
        assert_eq!(fix_text("ﬁne"), "fine");
        assert_eq!(fix_text("ＡＢＣ１"), "ABC1");
        assert_eq!(fix_text("\x1b[31mred\x1b[0m"), "red");
        assert_eq!(fix_text("a\r\nb\rc"), "a\nb\nc");
        assert_eq!(fix_text("cafÃ©"), "cafÃ©", "mojibake repair is not ported");
        assert_eq!(clip_clean("  A\u{3000}B  "), "a b");
    }

    #[test]
    fn tables_are_sorted() {
        assert!(HTML_ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
        for t in [C1_CONTROLS, LIGATURES, WIDTH_MAP, CONTROL_CHARS] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert!(INVALID_CHARREFS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(INVALID_CODEPOINTS.windows(2).all(|w| w[0] < w[1]));
    }
}
