//! Token-id parity of `sdspool::engine::tokenizer::ClipTokenizer` with transformers' slow CLIPTokenizer
//! (no ftfy), on the corpus in tests/golden/tokenizer/clip_tokens.json written by
//! onnx/golden_tokenizer.py, for every kind of tokenizer folder: SD 1.x (pad `<|endoftext|>`),
//! SD 2.x (pad `!`), the format transformers 4.57 / optimum save, a tokenizer.json-only folder
//! (transformers 5.x) and added tokens with lstrip/rstrip/single_word flags.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sdspool::engine::tokenizer::{ClipTokenizer, Encoded};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    reference: String,
    max_length: usize,
    prompts: Vec<String>,
    variants: std::collections::HashMap<String, Variant>,
}

#[derive(Deserialize)]
struct Variant {
    pad_id: u32,
    bos_id: u32,
    eos_id: u32,
    encodings: Vec<Expected>,
}

#[derive(Deserialize)]
struct Expected {
    ids: Vec<i64>,
    untruncated: Vec<u32>,
    n_tokens: usize,
    dropped: Option<String>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> Golden {
    golden_file("clip_tokens.json")
}

fn golden_file(name: &str) -> Golden {
    let path = repo().join("tests/golden/tokenizer").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A tokenizer folder: the config files of tests/golden/tokenizer/<configs>/ plus the named
/// vocabulary files of tests/data/clip-vocab/.
fn folder(configs: &str, vocab_files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("tests/golden/tokenizer").join(configs)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    for name in vocab_files {
        std::fs::copy(
            repo().join("tests/data/clip-vocab").join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    dir
}

fn first_difference<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Compares every corpus prompt; returns the failures as readable lines.
/// Taken by every test that truncates prompts. tracing caches per call site whether anyone
/// listens; a test that truncates on another thread (no subscriber there) while
/// `truncation_warns_with_the_dropped_words` installs its thread-local one can leave the warning's
/// call site marked as unheard, and the capture empty. The shapes corpus (24 positions)
/// truncates hundreds of prompts, which made that race show.
static TRUNCATING: Mutex<()> = Mutex::new(());

fn compare(tok: &ClipTokenizer, golden: &Golden, expected: &Variant) -> Vec<String> {
    let _serial = TRUNCATING.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures = Vec::new();
    for (prompt, want) in golden.prompts.iter().zip(&expected.encodings) {
        let got: Encoded = match tok.encode(prompt) {
            Ok(enc) => enc,
            Err(e) => {
                failures.push(format!("prompt {prompt:?}: error {e}"));
                continue;
            }
        };
        if got.ids != want.ids {
            let i = first_difference(&got.ids, &want.ids);
            let window = |v: &[i64]| v[i..v.len().min(i + 8)].to_vec();
            failures.push(format!(
                "prompt {prompt:?}: ids differ first at position {i}: expected {:?}..., got {:?}...",
                window(&want.ids),
                window(&got.ids)
            ));
            continue;
        }
        let untruncated = tok.token_ids(prompt).unwrap();
        if untruncated != want.untruncated {
            let i = first_difference(&untruncated, &want.untruncated);
            failures.push(format!(
                "prompt {prompt:?}: untruncated ids differ first at position {i} (expected {} ids, got {})",
                want.untruncated.len(),
                untruncated.len()
            ));
        }
        if got.n_tokens != want.n_tokens || got.truncated != want.dropped {
            failures.push(format!(
                "prompt {prompt:?}: n_tokens {} / dropped {:?}, expected {} / {:?}",
                got.n_tokens, got.truncated, want.n_tokens, want.dropped
            ));
        }
        if got.n_dropped != want.untruncated.len().saturating_sub(golden.max_length - 2) {
            failures.push(format!("prompt {prompt:?}: n_dropped {}", got.n_dropped));
        }
    }
    failures
}

fn check(variant: &str, configs: &str, vocab_files: &[&str]) {
    let dir = folder(configs, vocab_files);
    check_folder(
        &golden(),
        variant,
        dir.path(),
        configs,
        &vocab_files.join(" + "),
    );
}

fn check_folder(
    golden: &Golden,
    variant: &str,
    dir: &std::path::Path,
    configs: &str,
    vocab_files: &str,
) {
    assert!(
        golden.prompts.len() >= 250,
        "corpus has only {} prompts",
        golden.prompts.len()
    );
    let expected = &golden.variants[variant];
    assert_eq!(expected.encodings.len(), golden.prompts.len());
    let tok = ClipTokenizer::from_dir(dir).unwrap();
    assert_eq!(
        (
            tok.bos_id(),
            tok.eos_id(),
            tok.pad_id(),
            tok.model_max_length()
        ),
        (
            expected.bos_id,
            expected.eos_id,
            expected.pad_id,
            golden.max_length
        ),
        "special ids of {configs}"
    );
    let failures = compare(&tok, golden, expected);
    let n = golden.prompts.len();
    eprintln!(
        "{configs} folder ({vocab_files}): {}/{n} prompts identical to {}",
        n - failures.len(),
        golden.reference
    );
    assert!(
        failures.is_empty(),
        "{configs}: {} of {n} prompts differ from {}:\n{}",
        failures.len(),
        golden.reference,
        failures
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn sd1_tokenizer_matches_clip_tokenizer() {
    check("sd1", "sd1", &["vocab.json", "merges.txt"]);
}

/// The trained demo model's own BPE (86 merges learnt from the captions, 24 positions), as
/// committed in onnx/models/shapes-sd/tokenizer.
#[test]
fn shapes_demo_tokenizer_matches_clip_tokenizer() {
    let golden = golden_file("shapes_tokens.json");
    assert_eq!(golden.max_length, 24);
    let dir = repo().join("onnx/models/shapes-sd/tokenizer");
    check_folder(
        &golden,
        "shapes",
        &dir,
        "shapes-sd",
        "vocab.json + merges.txt",
    );
}

#[test]
fn sd2_tokenizer_pads_with_bang_and_matches() {
    check("sd2", "sd2", &["vocab.json", "merges.txt"]);
}

#[test]
fn folder_saved_by_transformers_4_matches() {
    check("sd1", "saved", &["vocab.json", "merges.txt"]);
}

#[test]
fn tokenizer_json_only_folder_matches() {
    check("sd1", "json_only", &["tokenizer.json"]);
}

#[test]
fn added_token_flags_match() {
    check("flags", "flags", &["vocab.json", "merges.txt"]);
}

#[test]
fn sd2_padding_and_known_ids() {
    let dir = folder("sd2", &["vocab.json", "merges.txt"]);
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    let enc = tok.encode("a photo of a cat").unwrap();
    assert_eq!(enc.ids[..7], [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert!(enc.ids[7..].iter().all(|&id| id == 0));
    // The pad token `!` is an added token in SD 2.x folders, so every `!` in a prompt is id 0.
    assert_eq!(tok.token_ids("wow!!!").unwrap(), [2781, 0, 0, 0]);
    let sd1 = folder("sd1", &["vocab.json", "merges.txt"]);
    let sd1 = ClipTokenizer::from_dir(sd1.path()).unwrap();
    assert_eq!(sd1.token_ids("wow!!!").unwrap(), [2781, 995]);
}

/// Collects what `tracing` writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn truncation_warns_with_the_dropped_words() {
    let _serial = TRUNCATING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = folder("sd1", &["vocab.json", "merges.txt"]);
    let tok = ClipTokenizer::from_dir(dir.path()).unwrap();
    let prompt = format!("{} purple elephant dancing", "cat ".repeat(75));
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let enc = tracing::subscriber::with_default(subscriber, || tok.encode(&prompt).unwrap());
    assert_eq!(enc.truncated.as_deref(), Some("purple elephant dancing"));
    assert_eq!((enc.n_tokens, enc.n_dropped), (77, 3));
    assert_eq!(enc.ids[76], 49407);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("WARN") && log.contains("purple elephant dancing"),
        "{log}"
    );

    // At the limit exactly: nothing dropped, no warning.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .finish();
    let enc =
        tracing::subscriber::with_default(subscriber, || tok.encode(&"cat ".repeat(75)).unwrap());
    assert_eq!((enc.truncated, enc.n_tokens, enc.n_dropped), (None, 77, 0));
    assert!(captured.0.lock().unwrap().is_empty());
}

#[test]
fn vocabulary_files_agree() {
    // vocab.json + merges.txt and tokenizer.json hold the same vocabulary.
    let a = folder("sd1", &["vocab.json", "merges.txt"]);
    let b = folder("json_only", &["tokenizer.json"]);
    let a = ClipTokenizer::from_dir(a.path()).unwrap();
    let b = ClipTokenizer::from_dir(b.path()).unwrap();
    assert_eq!(a.vocab_size(), 49408);
    assert_eq!(b.vocab_size(), 49408);
    assert!(a.source().ends_with("vocab.json"));
    assert!(b.source().ends_with("tokenizer.json"));
}
