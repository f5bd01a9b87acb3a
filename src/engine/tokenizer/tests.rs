//! Unit tests: per-code-point parity of the clean-up pieces with the reference Python
//! (tests/golden/tokenizer/unicode_props.json, written by onnx/golden_tokenizer.py), and folder
//! handling. Whole-prompt parity is in tests/tokenizer_parity.rs.

use std::path::{Path, PathBuf};

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::normalize::is_py_space;
use super::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unicode_props() -> Value {
    let path = repo().join("tests/golden/tokenizer/unicode_props.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The words the CLIP pre-tokenizer regex finds in `text`.
fn regex_words(split: &Split, text: &str) -> Vec<String> {
    let mut pts = PreTokenizedString::from(text);
    split.pre_tokenize(&mut pts).unwrap();
    pts.get_splits(OffsetReferential::Original, OffsetType::None)
        .into_iter()
        .map(|(w, _, _)| w.to_owned())
        .collect()
}

#[test]
fn tables_match_the_reference_unicode_version() {
    assert_eq!(
        unicode_version(),
        unicode_props()["unicode"].as_str().unwrap()
    );
}

/// What survives clean-up as a non-space character (onnx/golden_tokenizer.py's `survives`).
fn survives(c: char) -> bool {
    !normalize::basic_clean(&c.to_string()).is_empty() && !is_py_space(c)
}

#[test]
fn lower_casing_matches_python_str_lower_for_every_code_point() {
    let props = unicode_props();
    let mut expected = std::collections::HashMap::new();
    for entry in props["lower"].as_array().unwrap() {
        let cp = entry[0].as_u64().unwrap() as u32;
        expected.insert(cp, entry[1].as_str().unwrap().to_owned());
    }
    let mut mismatches = Vec::new();
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        let want = match expected.get(&(c as u32)) {
            Some(lower) => lower.clone(),
            None if survives(c) => c.to_string(),
            None => continue,
        };
        if c.to_string().to_lowercase() != want {
            mismatches.push(format!(
                "U+{:04X}: rust {:?}, python {:?}",
                c as u32,
                c.to_lowercase().to_string(),
                want
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(20)]
    );
}

#[test]
fn nfc_matches_python_unicodedata() {
    let props = unicode_props();
    let cases = props["nfc"].as_array().unwrap();
    assert!(cases.len() > 1000);
    for case in cases {
        let (input, want) = (case[0].as_str().unwrap(), case[1].as_str().unwrap());
        let got: String = input.nfc().collect();
        assert_eq!(
            got,
            want,
            "NFC of {input:?} ({:x?})",
            input.chars().map(|c| c as u32).collect::<Vec<_>>()
        );
    }
}

/// The words the regex should find in "cc" and in "ac" for a character `c` of each class that
/// onnx/golden_tokenizer.py's `unicode_props` gives.
fn expected_words(class: &str, c: char) -> (Vec<String>, Vec<String>) {
    let (cc, one, ac) = (format!("{c}{c}"), c.to_string(), format!("a{c}"));
    match class {
        // Letters: runs, and "a" joins them.
        "L" => (vec![cc], vec![ac]),
        // Numbers: one per word.
        "N" => (vec![one.clone(), one.clone()], vec!["a".into(), one]),
        // Anything else: runs of their own.
        "O" => (vec![cc], vec!["a".into(), one]),
        // Matched by no alternative: dropped.
        "X" => (vec![], vec!["a".into()]),
        other => panic!("unknown class {other}"),
    }
}

#[test]
fn pre_tokenizer_classes_match_python_regex_for_every_code_point() {
    let props = unicode_props();
    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.to_owned()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .unwrap();
    let mut checked = 0usize;
    for run in props["pretokenizer_classes"].as_array().unwrap() {
        let (lo, hi) = (
            run[0].as_u64().unwrap() as u32,
            run[1].as_u64().unwrap() as u32,
        );
        let class = run[2].as_str().unwrap();
        let chars: Vec<char> = (lo..=hi).filter_map(char::from_u32).collect();
        // Many characters per regex run, separated by spaces (which no alternative matches).
        for chunk in chars.chunks(2048) {
            checked += chunk.len();
            let mut pairs = (String::new(), Vec::new());
            let mut after_a = (String::new(), Vec::new());
            for &c in chunk {
                let (want_cc, want_ac) = expected_words(class, c);
                pairs.0.push_str(&format!("{c}{c} "));
                pairs.1.extend(want_cc);
                after_a.0.push_str(&format!("a{c} "));
                after_a.1.extend(want_ac);
            }
            if regex_words(&split, &pairs.0) == pairs.1
                && regex_words(&split, &after_a.0) == after_a.1
            {
                continue;
            }
            let bad = chunk.iter().find(|&&c| {
                let (want_cc, want_ac) = expected_words(class, c);
                regex_words(&split, &format!("{c}{c}")) != want_cc
                    || regex_words(&split, &format!("a{c}")) != want_ac
            });
            panic!(
                "Python puts U+{:04X} {bad:?} in class {class} (run U+{lo:04X}..U+{hi:04X}); the Rust regex does not",
                bad.map_or(0, |&c| c as u32)
            );
        }
    }
    assert!(checked > 100_000, "only {checked} code points checked");
}

#[test]
fn the_ignorecase_cases_behave_as_in_python() {
    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.to_owned()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .unwrap();
    assert_eq!(regex_words(&split, "it's 'ſ ſ"), ["it", "'s", "'ſ", "ſ"]);
    assert_eq!(regex_words(&split, "a\u{345}b \u{345}"), ["a", "b"]);
    assert_eq!(
        regex_words(&split, "!<|endoftext|> <|endoftext|>x"),
        ["!<|", "endoftext", "|>", "<|endoftext|>", "x"]
    );
}

fn copy_vocab(dir: &Path, names: &[&str]) {
    for name in names {
        std::fs::copy(
            repo().join("tests/data/clip-vocab").join(name),
            dir.join(name),
        )
        .unwrap();
    }
}

#[test]
fn missing_vocab_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_vocab(dir.path(), &["merges.txt"]);
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains(&dir.path().join("vocab.json").display().to_string()),
        "{err}"
    );
    assert!(err.contains("not found"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_dir(empty.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("vocab.json") && err.contains("merges.txt") && err.contains("tokenizer.json"),
        "{err}"
    );

    let err = ClipTokenizer::from_dir(&empty.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope") && err.contains("tokenizer folder"),
        "{err}"
    );
}

#[test]
fn broken_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_vocab(dir.path(), &["merges.txt"]);
    std::fs::write(dir.path().join("vocab.json"), "{\"a\": 0,").unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("vocab.json") && err.contains("invalid JSON"),
        "{err}"
    );

    // A merge whose symbols are not in the vocabulary.
    copy_vocab(dir.path(), &["vocab.json"]);
    let merges = std::fs::read_to_string(dir.path().join("merges.txt")).unwrap();
    std::fs::write(
        dir.path().join("merges.txt"),
        merges.replacen("i n\n", "i qqqq\n", 1),
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("qqqq"), "{err}");

    copy_vocab(dir.path(), &["merges.txt"]);
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"pad_token": "<|nope|>"}"#,
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("<|nope|>"), "{err}");

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"model_max_length": 1}"#,
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("model_max_length"),
        "{err}"
    );
}

#[test]
fn bare_vocab_uses_clip_defaults() {
    let dir = tempfile::tempdir().unwrap();
    copy_vocab(dir.path(), &["vocab.json", "merges.txt"]);
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    assert_eq!(tok.model_max_length(), 77);
    assert_eq!(tok.vocab_size(), 49408);
    let enc = tok.encode("a photo of a cat").unwrap();
    assert_eq!(enc.ids[..7], [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(enc.ids[7..].iter().all(|&id| id == 49407));
    assert_eq!(
        (enc.ids.len(), enc.n_tokens, enc.n_dropped, enc.truncated),
        (77, 7, 0, None)
    );
    assert_eq!(tok.decode(&[320, 1125, 539, 320, 2368]), "a photo of a cat");
}

#[test]
fn tokenizer_json_must_be_a_clip_bpe() {
    let dir = tempfile::tempdir().unwrap();
    let json =
        std::fs::read_to_string(repo().join("tests/data/clip-vocab/tokenizer.json")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        json.replace("\"</w>\"", "\"\""),
    )
    .unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("end_of_word_suffix"),
        "{err}"
    );
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ClipTokenizer>();
}
