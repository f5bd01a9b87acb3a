//! Reading a Stable Diffusion `tokenizer/` folder the way transformers' `CLIPTokenizer.from_pretrained`
//! does: the vocabulary (vocab.json + merges.txt, or tokenizer.json), the special tokens
//! (tokenizer_config.json, special_tokens_map.json, added_tokens.json, tokenizer.json's
//! `added_tokens`) and `model_max_length`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::TokenizerError;

/// Merges the slow CLIPTokenizer reads from merges.txt: `lines[1 : 49152 - 256 - 2 + 1]`.
const SLOW_MERGES: usize = 49152 - 256 - 2;

/// transformers' `VERY_LARGE_INTEGER` (`int(1e30)`) stands for "no limit"; anything this large is
/// treated as unset.
const UNSET_MAX_LENGTH: f64 = 1e12;

/// CLIP's text encoders have 77 positions.
pub(crate) const DEFAULT_MAX_LENGTH: usize = 77;

/// A token that transformers splits out of the prompt before any clean-up (its `tokens_trie`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AddedToken {
    pub content: String,
    /// The id the files declare for it; otherwise the vocabulary's.
    pub id: Option<u32>,
    pub lstrip: bool,
    pub rstrip: bool,
    pub single_word: bool,
}

impl AddedToken {
    fn plain(content: &str) -> Self {
        AddedToken {
            content: content.to_owned(),
            id: None,
            lstrip: false,
            rstrip: false,
            single_word: false,
        }
    }
}

/// Everything read from a tokenizer folder.
#[derive(Debug)]
pub(crate) struct TokenizerFiles {
    pub vocab: HashMap<String, u32>,
    pub merges: Vec<(String, String)>,
    /// `end_of_word_suffix` of the BPE model (CLIP: `</w>`).
    pub suffix: String,
    pub bos: AddedToken,
    pub eos: AddedToken,
    pub unk: AddedToken,
    pub pad: AddedToken,
    /// All tokens split out of prompts: the special tokens above, additional special tokens and
    /// added tokens, each content once.
    pub added: Vec<AddedToken>,
    pub model_max_length: usize,
    /// Where the vocabulary came from, for messages.
    pub source: PathBuf,
}

fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_owned(),
        source,
    })
}

fn read_optional_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

fn invalid(path: &Path, message: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn as_object<'a>(
    path: &Path,
    value: &'a Value,
    what: &str,
) -> Result<&'a Map<String, Value>, TokenizerError> {
    value
        .as_object()
        .ok_or_else(|| invalid(path, format!("{what} is not a JSON object")))
}

fn parse_vocab(path: &Path, value: &Value) -> Result<HashMap<String, u32>, TokenizerError> {
    let map = as_object(path, value, "the vocabulary")?;
    let mut vocab = HashMap::with_capacity(map.len());
    for (token, id) in map {
        let id = id
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| invalid(path, format!("token {token:?} has id {id}, not a u32")))?;
        vocab.insert(token.clone(), id);
    }
    if vocab.is_empty() {
        return Err(invalid(path, "the vocabulary is empty"));
    }
    Ok(vocab)
}

/// merges.txt as the slow CLIPTokenizer reads it: `read().strip().split("\n")[1 : 48895]`, each
/// line split on whitespace. The first line is skipped whatever it holds (transformers writes
/// `#version: 0.2` there).
fn parse_merges_txt(path: &Path) -> Result<Vec<(String, String)>, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut merges = Vec::with_capacity(SLOW_MERGES);
    for (n, line) in text
        .trim()
        .split('\n')
        .enumerate()
        .skip(1)
        .take(SLOW_MERGES)
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            [a, b] => merges.push(((*a).to_owned(), (*b).to_owned())),
            _ => {
                return Err(invalid(
                    path,
                    format!(
                        "line {}: expected two symbols separated by a space, found {line:?}",
                        n + 1
                    ),
                ));
            }
        }
    }
    Ok(merges)
}

/// `model.merges` of tokenizer.json: `["a b", ...]` (tokenizers < 0.20) or `[["a", "b"], ...]`.
fn parse_json_merges(path: &Path, value: &Value) -> Result<Vec<(String, String)>, TokenizerError> {
    let list = value
        .as_array()
        .ok_or_else(|| invalid(path, "model.merges is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, merge)| {
            let pair = match merge {
                Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())),
                Value::Array(items) => match items.as_slice() {
                    [Value::String(a), Value::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| {
                invalid(
                    path,
                    format!("model.merges[{i}] is not a pair of symbols: {merge}"),
                )
            })
        })
        .collect()
}

fn flag(obj: &Map<String, Value>, key: &str) -> bool {
    obj.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// A special token as transformers serialises it: a string, or an AddedToken object
/// (`{"content": ..., "lstrip": ..., ...}`, with `"__type": "AddedToken"` in older files).
fn parse_added(
    path: &Path,
    key: &str,
    value: &Value,
) -> Result<Option<AddedToken>, TokenizerError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(AddedToken::plain(s))),
        Value::Object(obj) => {
            let content = obj
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(path, format!("{key} has no string \"content\"")))?;
            Ok(Some(AddedToken {
                content: content.to_owned(),
                id: None,
                lstrip: flag(obj, "lstrip"),
                rstrip: flag(obj, "rstrip"),
                single_word: flag(obj, "single_word"),
            }))
        }
        other => Err(invalid(
            path,
            format!("{key} is neither a string nor an object: {other}"),
        )),
    }
}

const SPECIAL_KEYS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

#[derive(Default)]
struct Specials {
    named: HashMap<&'static str, Option<AddedToken>>,
    additional: Vec<AddedToken>,
}

impl Specials {
    /// Reads the special-token keys of tokenizer_config.json or special_tokens_map.json; keys the
    /// file does not name are left as they were.
    fn update_from(&mut self, path: &Path, obj: &Map<String, Value>) -> Result<(), TokenizerError> {
        for key in SPECIAL_KEYS {
            if let Some(value) = obj.get(key) {
                self.named.insert(key, parse_added(path, key, value)?);
            }
        }
        if let Some(value) = obj.get("additional_special_tokens") {
            let list = value
                .as_array()
                .ok_or_else(|| invalid(path, "additional_special_tokens is not a list"))?;
            for item in list {
                if let Some(token) = parse_added(path, "additional_special_tokens[]", item)?
                    && !self.additional.iter().any(|t| t.content == token.content)
                {
                    self.additional.push(token);
                }
            }
        }
        Ok(())
    }
}

/// `added_tokens_decoder` of tokenizer_config.json or `added_tokens` of tokenizer.json.
fn parse_added_list(
    path: &Path,
    entries: impl Iterator<Item = (Option<u32>, Value)>,
) -> Result<Vec<AddedToken>, TokenizerError> {
    let mut out = Vec::new();
    for (id, entry) in entries {
        let obj = as_object(path, &entry, "an added token")?;
        let id = match id {
            Some(id) => id,
            None => obj
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    invalid(path, format!("added token without a u32 \"id\": {entry}"))
                })?,
        };
        let mut token = parse_added(path, "added token", &entry)?
            .ok_or_else(|| invalid(path, "added token is null"))?;
        token.id = Some(id);
        out.push(token);
    }
    Ok(out)
}

fn parse_max_length(
    path: &Path,
    config: &Map<String, Value>,
) -> Result<Option<usize>, TokenizerError> {
    let Some(value) = config.get("model_max_length") else {
        return Ok(None);
    };
    let n = value
        .as_f64()
        .ok_or_else(|| invalid(path, format!("model_max_length is not a number: {value}")))?;
    if n >= UNSET_MAX_LENGTH {
        return Ok(None);
    }
    if n.fract() != 0.0 || n < 2.0 {
        return Err(invalid(
            path,
            format!("model_max_length {value} is not an integer of at least 2"),
        ));
    }
    Ok(Some(n as usize))
}

/// The files a tokenizer folder may hold.
struct Paths {
    vocab: PathBuf,
    merges: PathBuf,
    json: PathBuf,
    config: PathBuf,
    special_map: PathBuf,
    added: PathBuf,
}

impl Paths {
    fn in_dir(dir: &Path) -> Paths {
        Paths {
            vocab: dir.join("vocab.json"),
            merges: dir.join("merges.txt"),
            json: dir.join("tokenizer.json"),
            config: dir.join("tokenizer_config.json"),
            special_map: dir.join("special_tokens_map.json"),
            added: dir.join("added_tokens.json"),
        }
    }
}

/// The BPE model: vocabulary, merges, end-of-word suffix, and the file they came from.
struct Vocabulary {
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    suffix: String,
    source: PathBuf,
}

/// Reads `dir` (a model folder's `tokenizer/`) in the order of transformers'
/// `_from_pretrained`: the BPE model, the special and added tokens, `model_max_length`.
pub(crate) fn read_dir(dir: &Path) -> Result<TokenizerFiles, TokenizerError> {
    if !dir.is_dir() {
        return Err(TokenizerError::NotFound {
            path: dir.to_owned(),
            what: "tokenizer folder".into(),
        });
    }
    let paths = Paths::in_dir(dir);
    let tokenizer_json = read_optional_json(&paths.json)?;
    let vocabulary = read_vocabulary(dir, &paths, tokenizer_json.as_ref())?;
    let config = read_optional_json(&paths.config)?;
    let config = match &config {
        Some(value) => Some(as_object(&paths.config, value, "tokenizer_config.json")?),
        None => None,
    };
    let mut specials = Specials::default();
    let mut model_max_length = None;
    if let Some(config) = config {
        specials.update_from(&paths.config, config)?;
        model_max_length = parse_max_length(&paths.config, config)?;
    }
    let added = read_added_tokens(&paths, config, &mut specials, tokenizer_json.as_ref())?;

    // CLIPTokenizer's defaults for what the files leave out (or set to null).
    let mut special = |key: &'static str, default: &str| {
        specials
            .named
            .remove(key)
            .flatten()
            .unwrap_or_else(|| AddedToken::plain(default))
    };
    let bos = special("bos_token", "<|startoftext|>");
    let eos = special("eos_token", "<|endoftext|>");
    let unk = special("unk_token", "<|endoftext|>");
    let pad = special("pad_token", "<|endoftext|>");
    let added = all_added_tokens(added, [&bos, &eos, &unk, &pad], &specials.additional);

    Ok(TokenizerFiles {
        vocab: vocabulary.vocab,
        merges: vocabulary.merges,
        suffix: vocabulary.suffix,
        bos,
        eos,
        unk,
        pad,
        added,
        model_max_length: max_length_or_default(dir, model_max_length),
        source: vocabulary.source,
    })
}

/// vocab.json + merges.txt when both are there (what the slow tokenizer reads), else
/// tokenizer.json's BPE model.
fn read_vocabulary(
    dir: &Path,
    paths: &Paths,
    tokenizer_json: Option<&Value>,
) -> Result<Vocabulary, TokenizerError> {
    if paths.vocab.is_file() && paths.merges.is_file() {
        return Ok(Vocabulary {
            vocab: parse_vocab(&paths.vocab, &read_json(&paths.vocab)?)?,
            merges: parse_merges_txt(&paths.merges)?,
            suffix: "</w>".to_owned(),
            source: paths.vocab.clone(),
        });
    }
    if let Some(json) = tokenizer_json {
        return json_vocabulary(&paths.json, json);
    }
    // Name the file that is missing from the pair the folder has started, or all of them.
    let missing = match (paths.vocab.is_file(), paths.merges.is_file()) {
        (false, true) => paths.vocab.display().to_string(),
        (true, false) => paths.merges.display().to_string(),
        _ => format!(
            "{} and {} (or {})",
            paths.vocab.display(),
            paths.merges.display(),
            paths.json.display()
        ),
    };
    Err(TokenizerError::NotFound {
        path: dir.to_owned(),
        what: format!("{missing}: not found"),
    })
}

/// The `model` of tokenizer.json, which must be CLIP's BPE (suffix `</w>`).
fn json_vocabulary(json_path: &Path, json: &Value) -> Result<Vocabulary, TokenizerError> {
    let model = json
        .get("model")
        .ok_or_else(|| invalid(json_path, "no \"model\""))?;
    let model = as_object(json_path, model, "model")?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") | None => {}
        Some(other) => {
            return Err(invalid(
                json_path,
                format!("model.type is {other:?}, not \"BPE\""),
            ));
        }
    }
    let vocab = parse_vocab(
        json_path,
        model
            .get("vocab")
            .ok_or_else(|| invalid(json_path, "no model.vocab"))?,
    )?;
    let merges = parse_json_merges(
        json_path,
        model
            .get("merges")
            .ok_or_else(|| invalid(json_path, "no model.merges"))?,
    )?;
    let suffix = model
        .get("end_of_word_suffix")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if suffix != "</w>" {
        return Err(invalid(
            json_path,
            format!("model.end_of_word_suffix is {suffix:?}; a CLIP BPE model has \"</w>\""),
        ));
    }
    Ok(Vocabulary {
        vocab,
        merges,
        suffix,
        source: json_path.to_owned(),
    })
}

/// The added tokens the files declare, in the order of transformers' `_from_pretrained`; the
/// legacy files may also override `specials`.
fn read_added_tokens(
    paths: &Paths,
    config: Option<&Map<String, Value>>,
    specials: &mut Specials,
    tokenizer_json: Option<&Value>,
) -> Result<Vec<AddedToken>, TokenizerError> {
    match config.and_then(|c| c.get("added_tokens_decoder")) {
        // The current format: tokenizer_config.json has it all; special_tokens_map.json is not
        // read.
        Some(decoder) => added_tokens_decoder(&paths.config, decoder),
        None => legacy_added_tokens(paths, specials, tokenizer_json),
    }
}

/// `added_tokens_decoder` of tokenizer_config.json: `{"id": {token}, ...}`.
fn added_tokens_decoder(
    config_path: &Path,
    decoder: &Value,
) -> Result<Vec<AddedToken>, TokenizerError> {
    let decoder = as_object(config_path, decoder, "added_tokens_decoder")?;
    let mut entries = Vec::with_capacity(decoder.len());
    for (id, entry) in decoder {
        let id = id.parse::<u32>().map_err(|_| {
            invalid(
                config_path,
                format!("added_tokens_decoder key {id:?} is not an id"),
            )
        })?;
        entries.push((Some(id), entry.clone()));
    }
    parse_added_list(config_path, entries.into_iter())
}

/// The legacy files: special_tokens_map.json overrides tokenizer_config.json's special tokens,
/// then added_tokens.json, then tokenizer.json's `added_tokens`.
fn legacy_added_tokens(
    paths: &Paths,
    specials: &mut Specials,
    tokenizer_json: Option<&Value>,
) -> Result<Vec<AddedToken>, TokenizerError> {
    let mut added = Vec::new();
    if let Some(map) = read_optional_json(&paths.special_map)? {
        specials.update_from(
            &paths.special_map,
            as_object(&paths.special_map, &map, "special_tokens_map.json")?,
        )?;
    }
    if let Some(file) = read_optional_json(&paths.added)? {
        let obj = as_object(&paths.added, &file, "added_tokens.json")?;
        for (content, id) in obj {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    invalid(&paths.added, format!("{content:?} has id {id}, not a u32"))
                })?;
            added.push(AddedToken {
                id: Some(id),
                ..AddedToken::plain(content)
            });
        }
    }
    if let Some(list) = tokenizer_json.and_then(|j| j.get("added_tokens")) {
        let list = list
            .as_array()
            .ok_or_else(|| invalid(&paths.json, "added_tokens is not a list"))?;
        added.extend(parse_added_list(
            &paths.json,
            list.iter().map(|v| (None, v.clone())),
        )?);
    }
    Ok(added)
}

/// Every token split out of prompts, each content once: the declared added tokens, then every
/// special token that is not yet one (transformers' `_add_tokens(..., special_tokens=True)`: a
/// content already added keeps its first entry); a later entry for the same content replaces an
/// earlier one, as in transformers' dicts; empty contents are dropped.
fn all_added_tokens(
    mut added: Vec<AddedToken>,
    named: [&AddedToken; 4],
    additional: &[AddedToken],
) -> Vec<AddedToken> {
    for token in named.into_iter().chain(additional.iter()) {
        if !added.iter().any(|t| t.content == token.content) {
            added.push(token.clone());
        }
    }
    let mut unique: Vec<AddedToken> = Vec::with_capacity(added.len());
    for token in added {
        if token.content.is_empty() {
            continue;
        }
        match unique.iter_mut().find(|t| t.content == token.content) {
            Some(existing) => *existing = token,
            None => unique.push(token),
        }
    }
    unique
}

/// `model_max_length` as the files set it, or CLIP's 77.
fn max_length_or_default(dir: &Path, model_max_length: Option<usize>) -> usize {
    match model_max_length {
        Some(n) => n,
        None => {
            tracing::info!(
                dir = %dir.display(),
                "tokenizer_config.json sets no model_max_length; using CLIP's {DEFAULT_MAX_LENGTH}"
            );
            DEFAULT_MAX_LENGTH
        }
    }
}
