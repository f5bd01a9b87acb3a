//! AUTOMATIC1111 prompt reading (`sdspool::prompt`) against tests/golden/prompt/a1111.json,
//! written by onnx/golden_prompts.py: the schedule of each prompt (editing, alternation), the
//! weighted pieces (emphasis, escapes, unbalanced brackets, BREAK) and the 77-id chunks with
//! their weights, tokenized by the SD 1.x tokenizer (and the SD 2.x one for a subset).

use std::path::PathBuf;

use sdspool::engine::prompt::{self, Chunk, Piece, SpecialIds};
use sdspool::engine::tokenizer::{ClipTokenizer, TextCleaning};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    chunk_length: usize,
    comma_backtrack: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    steps: usize,
    #[serde(default)]
    schedule: Vec<(usize, usize)>,
    #[serde(default)]
    texts: Vec<Text>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Text {
    text: String,
    pieces: Vec<serde_json::Value>,
    chunks: Vec<GoldenChunk>,
    sd2_ids: Option<Vec<Vec<u32>>>,
}

#[derive(Deserialize)]
struct GoldenChunk {
    ids: Vec<u32>,
    weights: Option<Vec<f64>>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tokenizer(configs: &str) -> ClipTokenizer {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("tests/golden/tokenizer").join(configs)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    for name in ["vocab.json", "merges.txt"] {
        std::fs::copy(
            repo().join("tests/data/clip-vocab").join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    ClipTokenizer::from_dir(dir.path()).unwrap()
}

fn special(tok: &ClipTokenizer) -> SpecialIds {
    SpecialIds {
        bos: tok.bos_id(),
        eos: tok.eos_id(),
        pad: tok.pad_id(),
        comma: tok.token_to_id(",</w>"),
        chunk_length: tok.model_max_length() - 2,
    }
}

fn golden() -> Golden {
    let path = repo().join("tests/golden/prompt/a1111.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Equal weights: serde_json's float parsing (without its `float_roundtrip` feature) may be a
/// unit in the last place off Python's `repr`, so allow 1e-15 relative.
fn same_weight(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-15 * b.abs().max(1.0)
}

fn same_piece(p: &Piece, golden: &serde_json::Value) -> bool {
    match (p, golden) {
        (Piece::Break, serde_json::Value::String(s)) => s == "BREAK",
        (Piece::Text { text, weight }, serde_json::Value::Array(a)) => {
            a.len() == 2
                && a[0].as_str() == Some(text.as_str())
                && a[1].as_f64().is_some_and(|w| same_weight(*weight, w))
        }
        _ => false,
    }
}

fn chunks(tok: &ClipTokenizer, pieces: &[Piece]) -> Vec<Chunk> {
    prompt::chunk_pieces(pieces, special(tok), |t| tok.token_ids(t)).unwrap()
}

/// Differences of one case from its golden, as messages.
fn check_case(case: &Case, sd1: &ClipTokenizer, sd2: &ClipTokenizer) -> Vec<String> {
    let name = format!("{:?} ({} steps)", case.prompt, case.steps);
    let read = prompt::read(&case.prompt, case.steps);
    if let Some(err) = &case.error {
        return match read {
            Err(_) => vec![],
            Ok(_) => vec![format!("{name}: read, but AUTOMATIC1111 fails: {err}")],
        };
    }
    let read = match read {
        Ok(r) => r,
        Err(e) => return vec![format!("{name}: {e}")],
    };
    let got: Vec<(usize, &str)> = read
        .iter()
        .map(|s| (s.end_at_step, s.text.as_str()))
        .collect();
    let want: Vec<(usize, &str)> = case
        .schedule
        .iter()
        .map(|&(end, i)| (end, case.texts[i].text.as_str()))
        .collect();
    if got != want {
        return vec![format!("{name}: schedule {got:?}, expected {want:?}")];
    }
    let mut errors = Vec::new();
    for (scheduled, &(_, i)) in read.iter().zip(&case.schedule) {
        let text = &case.texts[i];
        let same = scheduled.pieces.len() == text.pieces.len()
            && scheduled
                .pieces
                .iter()
                .zip(&text.pieces)
                .all(|(p, g)| same_piece(p, g));
        if !same {
            errors.push(format!(
                "{name}: pieces {:?}, expected {:?}",
                scheduled.pieces, text.pieces
            ));
            continue;
        }
        let got = chunks(sd1, &scheduled.pieces);
        let ids: Vec<&Vec<u32>> = got.iter().map(|c| &c.ids).collect();
        let want: Vec<&Vec<u32>> = text.chunks.iter().map(|c| &c.ids).collect();
        if ids != want {
            errors.push(format!("{name}: {:?}: chunk ids differ", text.text));
            continue;
        }
        for (c, g) in got.iter().zip(&text.chunks) {
            let want = g.weights.clone().unwrap_or_else(|| vec![1.0; c.ids.len()]);
            let same = c.weights.len() == want.len()
                && c.weights
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| same_weight(*a, *b));
            if !same {
                errors.push(format!(
                    "{name}: weights {:?}, expected {want:?}",
                    c.weights
                ));
            }
        }
        if let Some(sd2_ids) = &text.sd2_ids {
            let got: Vec<Vec<u32>> = chunks(sd2, &scheduled.pieces)
                .into_iter()
                .map(|c| c.ids)
                .collect();
            if &got != sd2_ids {
                errors.push(format!("{name}: SD 2.x chunk ids differ"));
            }
        }
    }
    errors
}

#[test]
fn prompts_read_as_automatic1111_reads_them() {
    let golden = golden();
    assert_eq!(golden.chunk_length, prompt::chunk::CHUNK_LENGTH);
    assert_eq!(golden.comma_backtrack, prompt::chunk::COMMA_BACKTRACK);
    assert!(golden.cases.len() >= 300, "{} cases", golden.cases.len());
    let sd1 = tokenizer("sd1");
    let sd2 = tokenizer("sd2");
    let errors: Vec<String> = golden
        .cases
        .iter()
        .flat_map(|c| check_case(c, &sd1, &sd2))
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {} cases differ:\n{}",
        errors.len(),
        golden.cases.len(),
        errors.join("\n")
    );
}

#[test]
fn golden_covers_the_syntax() {
    let golden = golden();
    let multi_chunk = golden
        .cases
        .iter()
        .filter(|c| c.texts.iter().any(|t| t.chunks.len() > 1))
        .count();
    let scheduled = golden.cases.iter().filter(|c| c.schedule.len() > 1).count();
    let breaks = golden
        .cases
        .iter()
        .filter(|c| {
            c.texts
                .iter()
                .any(|t| t.pieces.iter().any(|p| p == "BREAK"))
        })
        .count();
    assert!(
        multi_chunk >= 30 && scheduled >= 100 && breaks >= 15,
        "{multi_chunk} {scheduled} {breaks}"
    );
}

/// `text_cleaning: clip` against transformers' CLIPTokenizer with ftfy
/// (tests/golden/tokenizer/ftfy_tokens.json, onnx/golden_ftfy.py); the prompts ftfy's mojibake
/// repair changes (not ported) expect the text to pass through that step unchanged.
#[test]
fn clip_text_cleaning_matches_clip_tokenizer_with_ftfy() {
    #[derive(Deserialize)]
    struct Ftfy {
        cases: Vec<FtfyCase>,
    }
    #[derive(Deserialize)]
    struct FtfyCase {
        prompt: String,
        ids: Vec<u32>,
        #[serde(default)]
        mojibake: bool,
    }
    let path = repo().join("tests/golden/tokenizer/ftfy_tokens.json");
    let golden: Ftfy = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(golden.cases.len() >= 400);
    assert!(golden.cases.iter().filter(|c| c.mojibake).count() >= 3);
    let tok = tokenizer("sd1");
    let mut differ = Vec::new();
    let mut from_basic = 0;
    for case in &golden.cases {
        let got = tok
            .token_ids_cleaned(&case.prompt, TextCleaning::Clip)
            .unwrap();
        if got != case.ids {
            differ.push(format!("{:?}: {got:?} vs {:?}", case.prompt, case.ids));
        }
        from_basic += usize::from(tok.token_ids(&case.prompt).unwrap() != case.ids);
    }
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
    // The two clean-ups really differ on this corpus (the check can fail).
    assert!(from_basic >= 100, "{from_basic}");
}
