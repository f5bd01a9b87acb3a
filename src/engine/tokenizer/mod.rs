//! CLIP byte-level BPE tokenizer.
//!
//! [`ClipTokenizer`] turns a prompt into the 77 `input_ids` a Stable Diffusion text encoder takes,
//! with the same ids as transformers' slow `CLIPTokenizer` (the one diffusers loads from a model
//! folder's `tokenizer/`) on its path without ftfy: ftfy is a dependency of neither diffusers nor
//! transformers, and without it `CLIPTokenizer` cleans text with its `BasicTokenizer` instead
//! (step 2 below). The steps:
//!
//! 1. tokens the tokenizer files name as special or added (`<|startoftext|>`, `<|endoftext|>`,
//!    and for SD 2.x the pad token `!`) are split out of the raw prompt and map straight to
//!    their ids, as transformers' `tokens_trie` does;
//! 2. every other piece is cleaned: control and format characters dropped, whitespace collapsed,
//!    CJK ideographs spaced, NFC, lower case;
//! 3. the CLIP pre-tokenizer regex (`'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`)
//!    splits words, which are mapped to byte-level characters and run through BPE with the
//!    `</w>` end-of-word suffix (the `tokenizers` crate's `Split`, `ByteLevel` and `BPE`);
//! 4. the ids are truncated to `model_max_length - 2`, wrapped in bos/eos and padded with the
//!    pad token to `model_max_length`.
//!
//! The tokenizer files may be vocab.json + merges.txt (what optimum and transformers 4.x save)
//! or tokenizer.json (transformers 5.x); tokenizer_config.json, special_tokens_map.json and
//! added_tokens.json are read when present.

mod files;
mod ftfy;
mod ftfy_tables;
mod normalize;
mod tables;

/// How prompt text is cleaned before the pre-tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextCleaning {
    /// CLIP's own (transformers' CLIPTokenizer with ftfy installed, as in AUTOMATIC1111):
    /// ftfy's `fix_text` (without its mojibake repair, see the `ftfy` module), whitespace
    /// collapsed, lower case.
    Clip,
    /// transformers' CLIPTokenizer without ftfy (diffusers' usual setup): its BasicTokenizer
    /// clean-up (step 2 of the module docs).
    #[default]
    Basic,
}

impl std::fmt::Display for TextCleaning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for TextCleaning {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TextCleaning::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown text cleaning {name:?}; supported: {}",
                TextCleaning::NAMES.join(", ")
            ))
        })
    }
}

/// Whether both clean-ups give `text` the same cleaned text (so the same tokens).
pub fn cleans_alike(text: &str) -> bool {
    normalize::basic_clean(text) == ftfy::clip_clean(text)
}

impl TextCleaning {
    pub const NAMES: [&'static str; 2] = ["clip", "basic"];

    pub fn from_name(name: &str) -> Option<TextCleaning> {
        match name {
            "clip" => Some(TextCleaning::Clip),
            "basic" => Some(TextCleaning::Basic),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TextCleaning::Clip => "clip",
            TextCleaning::Basic => "basic",
        }
    }
}

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    Decoder, Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    SplitDelimiterBehavior,
};

/// CLIPTokenizer's pre-tokenizer regex. transformers compiles it with `re.IGNORECASE` (Python's
/// `regex` module). After lower-casing, that flag changes the result in two ways only, both kept
/// here: the literal alternatives also match case-fold variants (`'ſ` is `'s`), and U+0345
/// COMBINING GREEK YPOGEGRAMMENI (which folds to ι) matches no alternative and is dropped. The
/// letter and number classes are matched without case folding, as Python does in effect.
/// (`tests/golden/tokenizer/unicode_props.json` checks this for every code point.)
const CLIP_PATTERN: &str = concat!(
    r"(?i:<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d)",
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}",
    "\u{345}",
    "]+"
);

/// The two words CLIPTokenizer's BPE cache maps to themselves (and so to their vocabulary ids)
/// when the regex finds them in cleaned text, whatever the special tokens are.
const CACHED_WORDS: [&str; 2] = ["<|startoftext|>", "<|endoftext|>"];

/// Why a tokenizer could not be loaded or a prompt not encoded. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required file or folder is missing.
    #[error("{}: {what}", path.display())]
    NotFound { path: PathBuf, what: String },
    /// A file exists but cannot be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not valid JSON.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A file is readable but its content does not make a CLIP tokenizer.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// The `tokenizers` crate failed (building the BPE model or tokenizing a word).
    #[error("{}: {doing}: {source}", path.display())]
    Tokenizers {
        path: PathBuf,
        /// What the tokenizer was doing, e.g. `building the BPE model`.
        doing: String,
        #[source]
        source: tokenizers::Error,
    },
}

/// A prompt's token ids, ready for the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Exactly [`ClipTokenizer::model_max_length`] ids: bos, the prompt's tokens (at most
    /// `model_max_length - 2`), eos, then the pad id. `i64` as the text encoders' `input_ids`
    /// are int64 (cast for the older int32 exports).
    pub ids: Vec<i64>,
    /// When the prompt was longer than the text encoder takes: the dropped tail, decoded from the
    /// dropped tokens as transformers decodes them (lower case, cleaned; a word cut by the limit
    /// appears as its dropped part). The same tokens diffusers names in its truncation warning.
    pub truncated: Option<String>,
    /// How many of `ids` are not padding: bos + kept tokens + eos.
    pub n_tokens: usize,
    /// How many of the prompt's tokens were dropped (0 unless `truncated`).
    pub n_dropped: usize,
}

/// A token that is split out of prompts before clean-up.
#[derive(Debug, Clone)]
struct Added {
    content: String,
    id: u32,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

/// CLIP tokenizer of a Stable Diffusion model folder (see the [module docs](self)).
pub struct ClipTokenizer {
    bpe: BPE,
    split: Split,
    byte_level: ByteLevel,
    /// Longest content first, so that the first match at a position is the longest.
    added: Vec<Added>,
    cached_words: [(&'static str, u32); 2],
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    model_max_length: usize,
    source: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.bpe.get_vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("model_max_length", &self.model_max_length)
            .field(
                "added",
                &self
                    .added
                    .iter()
                    .map(|a| (&a.content, a.id))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads the tokenizer from `dir`, a model folder's `tokenizer/`: vocab.json + merges.txt
    /// (preferred when both are there, as the slow CLIPTokenizer reads them), else tokenizer.json;
    /// plus tokenizer_config.json, special_tokens_map.json and added_tokens.json when present.
    /// Without a `model_max_length` in tokenizer_config.json, 77 is used.
    ///
    /// Errors name the file and what is wrong with it (missing, unreadable, not JSON, a merge of
    /// tokens the vocabulary lacks, a special token with no id, ...).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let files = files::read_dir(dir)?;
        let source = files.source.clone();
        let tokenizers_err = |doing: &str, e: tokenizers::Error| TokenizerError::Tokenizers {
            path: source.clone(),
            doing: doing.to_string(),
            source: e,
        };

        let vocab_id = |content: &str| files.vocab.get(content).copied();
        let mut added: Vec<Added> = Vec::with_capacity(files.added.len());
        for token in &files.added {
            let id = token.id.or_else(|| vocab_id(&token.content)).ok_or_else(|| TokenizerError::Invalid {
                path: dir.to_owned(),
                message: format!(
                    "token {:?} named in the tokenizer files is not in the vocabulary ({}) and has no id",
                    token.content,
                    source.display()
                ),
            })?;
            added.push(Added {
                content: token.content.clone(),
                id,
                lstrip: token.lstrip,
                rstrip: token.rstrip,
                single_word: token.single_word,
            });
        }
        added.sort_by_key(|a| std::cmp::Reverse(a.content.len()));
        let id_of = |content: &str| -> u32 {
            // Every special token is in `added` (files::read_dir puts it there).
            added
                .iter()
                .find(|a| a.content == content)
                .map(|a| a.id)
                .expect("special token is an added token")
        };
        let (bos_id, eos_id, pad_id, unk_id) = (
            id_of(&files.bos.content),
            id_of(&files.eos.content),
            id_of(&files.pad.content),
            id_of(&files.unk.content),
        );
        // Looked up as transformers' `convert_tokens_to_ids` does: added tokens, vocabulary, unk.
        let cached_words = CACHED_WORDS.map(|w| {
            let added_id = added.iter().find(|a| a.content == w).map(|a| a.id);
            (w, added_id.or_else(|| vocab_id(w)).unwrap_or(unk_id))
        });

        let bpe = BPE::builder()
            .vocab_and_merges(
                files
                    .vocab
                    .into_iter()
                    .collect::<tokenizers::models::bpe::Vocab>(),
                files.merges,
            )
            .end_of_word_suffix(files.suffix)
            .unk_token(files.unk.content.clone())
            .build()
            .map_err(|e| tokenizers_err("building the BPE model", e))?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_PATTERN.to_owned()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| tokenizers_err("compiling the CLIP pre-tokenizer regex", e))?;

        Ok(ClipTokenizer {
            bpe,
            split,
            byte_level: ByteLevel::new(false, false, false),
            added,
            cached_words,
            bos_id,
            eos_id,
            pad_id,
            model_max_length: files.model_max_length,
            source,
        })
    }

    /// Length of every [`Encoded::ids`]: tokenizer_config.json's `model_max_length` (77 for
    /// Stable Diffusion).
    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    /// The pad token's id: 49407 (`<|endoftext|>`) for SD 1.x, 0 (`!`) for SD 2.x.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The bos token's id (`<|startoftext|>`, 49406).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// The eos token's id (`<|endoftext|>`, 49407).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The file the vocabulary was read from (vocab.json or tokenizer.json).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Number of tokens in the vocabulary (49408 for CLIP).
    pub fn vocab_size(&self) -> usize {
        self.bpe.get_vocab_size()
    }

    /// The vocabulary id of `token` (a BPE token such as `,</w>`), if it has one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.bpe.token_to_id(token)
    }

    /// The prompt's token ids without bos/eos, not truncated (transformers'
    /// `tokenizer(prompt, add_special_tokens=False).input_ids`).
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>, TokenizerError> {
        self.token_ids_cleaned(prompt, TextCleaning::Basic)
    }

    /// [`token_ids`](Self::token_ids) with the given text clean-up.
    pub fn token_ids_cleaned(
        &self,
        prompt: &str,
        cleaning: TextCleaning,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        for piece in self.split_added(prompt) {
            match piece {
                Piece::Added(id) => ids.push(id),
                Piece::Text(text) => self.tokenize_text(&text, cleaning, &mut ids)?,
            }
        }
        Ok(ids)
    }

    /// Encodes `prompt` as transformers' `tokenizer(prompt, padding="max_length",
    /// max_length=model_max_length, truncation=True).input_ids`. A prompt longer than
    /// `model_max_length - 2` tokens is cut; the dropped text is logged (`warn`) and returned in
    /// [`Encoded::truncated`].
    pub fn encode(&self, prompt: &str) -> Result<Encoded, TokenizerError> {
        self.encode_cleaned(prompt, TextCleaning::Basic)
    }

    /// [`encode`](Self::encode) with the given text clean-up.
    pub fn encode_cleaned(
        &self,
        prompt: &str,
        cleaning: TextCleaning,
    ) -> Result<Encoded, TokenizerError> {
        let tokens = self.token_ids_cleaned(prompt, cleaning)?;
        let room = self.model_max_length - 2;
        let kept = tokens.len().min(room);
        let mut ids = Vec::with_capacity(self.model_max_length);
        ids.push(i64::from(self.bos_id));
        ids.extend(tokens[..kept].iter().map(|&id| i64::from(id)));
        ids.push(i64::from(self.eos_id));
        let n_tokens = ids.len();
        ids.resize(self.model_max_length, i64::from(self.pad_id));

        let dropped = &tokens[kept..];
        let truncated = if dropped.is_empty() {
            None
        } else {
            let text = self.decode(dropped);
            // Once, briefly: counts and the start of what was cut off (a prompt may be long).
            let excerpt: String = text.chars().take(60).collect();
            tracing::warn!(
                kept = kept,
                dropped_tokens = dropped.len(),
                dropped_chars = text.chars().count(),
                "prompt is longer than the text encoder's {} tokens; its end was cut off, from {excerpt:?}{}",
                self.model_max_length,
                if excerpt.len() < text.len() {
                    "…"
                } else {
                    ""
                }
            );
            Some(text)
        };
        Ok(Encoded {
            ids,
            truncated,
            n_tokens,
            n_dropped: dropped.len(),
        })
    }

    /// Text of `ids` as transformers' `CLIPTokenizer.decode` gives it: byte-level tokens back to
    /// UTF-8 (invalid sequences become U+FFFD), `</w>` as a space, trimmed. Unknown ids are
    /// skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let tokens: Vec<String> = ids
            .iter()
            .filter_map(|&id| self.bpe.id_to_token(id))
            .collect();
        let text = ByteLevel::default()
            .decode_chain(tokens)
            .map(|parts| parts.concat())
            .unwrap_or_default();
        text.replace("</w>", " ").trim().to_owned()
    }

    /// The id of the added token whose content is `token`.
    fn added_id(&self, token: &str) -> Option<u32> {
        self.added.iter().find(|a| a.content == token).map(|a| a.id)
    }

    /// Splits the raw prompt on added tokens and applies their lstrip/rstrip/single_word flags,
    /// as `PreTrainedTokenizer.tokenize` does.
    fn split_added(&self, text: &str) -> Vec<Piece> {
        // Leftmost match, longest at that position (the trie transformers uses finds the same for
        // any set of tokens in which no token contains another).
        let mut pieces: Vec<String> = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < text.len() {
            if let Some(a) = self
                .added
                .iter()
                .find(|a| text[i..].starts_with(a.content.as_str()))
            {
                if start < i {
                    pieces.push(text[start..i].to_owned());
                }
                pieces.push(a.content.clone());
                i += a.content.len();
                start = i;
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if start < text.len() {
            pieces.push(text[start..].to_owned());
        }

        let find = |s: &str| self.added.iter().find(|a| a.content == s);
        for i in 0..pieces.len() {
            let Some(a) = find(&pieces[i]) else { continue };
            let token = pieces[i].clone();
            // transformers tests the neighbours as they were before this token's stripping.
            let left = (i > 0)
                .then(|| pieces[i - 1].clone())
                .filter(|s| !s.is_empty());
            let right = pieces.get(i + 1).cloned().filter(|s| !s.is_empty());
            if a.rstrip && right.is_some() {
                pieces[i + 1] = pieces[i + 1]
                    .trim_start_matches(normalize::is_py_space)
                    .to_owned();
            }
            if a.lstrip && left.is_some() {
                pieces[i - 1] = pieces[i - 1]
                    .trim_end_matches(normalize::is_py_space)
                    .to_owned();
            }
            if a.single_word && left.as_deref().is_some_and(|l| !l.ends_with(' ')) {
                pieces[i - 1].push_str(&token);
                pieces[i].clear();
            } else if a.single_word && right.as_deref().is_some_and(|r| !r.starts_with(' ')) {
                pieces[i + 1] = format!("{token}{}", pieces[i + 1]);
                pieces[i].clear();
            }
        }
        pieces
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(|p| match find(&p) {
                Some(a) => Piece::Added(a.id),
                None => Piece::Text(p),
            })
            .collect()
    }

    /// Clean-up, pre-tokenizer regex, byte-level mapping and BPE for one piece of prompt that
    /// holds no added token.
    fn tokenize_text(
        &self,
        text: &str,
        cleaning: TextCleaning,
        ids: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let cleaned = match cleaning {
            TextCleaning::Basic => normalize::basic_clean(text),
            TextCleaning::Clip => ftfy::clip_clean(text),
        };
        if cleaned.is_empty() {
            return Ok(());
        }
        let err = |e: tokenizers::Error| TokenizerError::Tokenizers {
            path: self.source.clone(),
            doing: format!("tokenizing {text:?}"),
            source: e,
        };
        let mut words = PreTokenizedString::from(cleaned.as_str());
        self.split.pre_tokenize(&mut words).map_err(err)?;
        self.byte_level.pre_tokenize(&mut words).map_err(err)?;
        for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::None) {
            // ASCII maps to itself at byte level, so the cached words are still recognisable.
            if let Some(&(_, id)) = self.cached_words.iter().find(|(w, _)| *w == word) {
                ids.push(id);
                continue;
            }
            for token in self.bpe.tokenize(word).map_err(err)? {
                // transformers looks a token up among the added tokens before the vocabulary.
                ids.push(self.added_id(&token.value).unwrap_or(token.id));
            }
        }
        Ok(())
    }
}

enum Piece {
    Added(u32),
    Text(String),
}

/// The Unicode version of the character classes used in clean-up (that of the reference
/// Python's `unicodedata`). Characters assigned after it count as unassigned and are dropped,
/// The ftfy version whose clean-up [`TextCleaning::Clip`] ports.
pub fn ftfy_version() -> &'static str {
    ftfy_tables::FTFY_VERSION
}

/// as the reference drops them.
pub fn unicode_version() -> &'static str {
    tables::UNICODE_VERSION
}

#[cfg(test)]
mod tests;
