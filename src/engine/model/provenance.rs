//! Where a model folder came from: `sdspool-source.json`, which `sdspool import` writes beside
//! the ONNX parts. sdspool runs ONNX folders, but AUTOMATIC1111's infotext names a model by the
//! hash of the single-file checkpoint it was made from, and LoRAs fused at import by their file
//! names and weights; this file is where sdspool learns them.
//!
//! ```json
//! {"format": 1,
//!  "checkpoint": {"file": "model.safetensors", "sha256": "<64 hex>", "family": "sd15"},
//!  "loras": [{"name": "detail", "file": "detail.safetensors", "sha256": "<64 hex>", "weight": 0.8}],
//!  "vae": {"file": "vae.safetensors", "sha256": "<64 hex>"},
//!  "dtype": "float32", "optimized": false,
//!  "tool": {"sdspool_import": 1, "diffusers": "0.39.0", "optimum_onnx": "0.1.0"}}
//! ```
//!
//! Unknown fields are allowed (later importers may add some); a missing file means no
//! provenance; a malformed one is an error naming the file and the field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::family::Family;

/// The file name inside a model folder.
pub const FILE: &str = "sdspool-source.json";

/// The `format` this sdspool reads.
pub const FORMAT: u32 = 1;

/// Largest provenance file read (a few hundred bytes is usual).
const MAX_BYTES: u64 = 1 << 20;

/// A provenance file that cannot be used: the file and, for a malformed one, the field.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: `{field}` {problem}")]
    Field {
        path: std::path::PathBuf,
        field: String,
        problem: String,
    },
}

/// The contents of `sdspool-source.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Version of the file's layout ([`FORMAT`]).
    pub format: u32,
    /// The single-file checkpoint the folder was exported from.
    pub checkpoint: CheckpointSource,
    /// LoRAs fused into the weights at import, in the order applied.
    #[serde(default)]
    pub loras: Vec<LoraSource>,
    /// A replacement VAE put in at import.
    #[serde(default)]
    pub vae: Option<FileSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<SourceDtype>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimized: Option<bool>,
    /// The tools and their versions that made the folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ImportTool>,
}

/// `checkpoint`: the file, its SHA-256 and the family it was read as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSource {
    /// The file name as the user had it (AUTOMATIC1111 names a model by its stem).
    pub file: String,
    /// SHA-256 of the whole file (AUTOMATIC1111's `Model hash` is its first 10 hex digits).
    pub sha256: Sha256Hex,
    pub family: SourceFamily,
    /// AUTOMATIC1111's old 8-hex-digit hash (SHA-256 of the 64 KiB at 1 MiB), which infotexts
    /// written before its version 1.0 carry; optional, as only the file itself gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_hash: Option<LegacyHash>,
}

/// One LoRA fused at import.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSource {
    /// AUTOMATIC1111's name for it: the file stem, as `<lora:name:weight>` writes it.
    pub name: String,
    pub file: String,
    /// SHA-256 of the whole file.
    pub sha256: Sha256Hex,
    pub weight: f64,
    /// For a `.safetensors` LoRA, the hash AUTOMATIC1111 records in `Lora hashes` (kohya's
    /// "addnet" hash: SHA-256 of the file after its header, or the file's `sshs_model_hash`
    /// metadata); other files are recorded by [`Self::sha256`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addnet_sha256: Option<Sha256Hex>,
}

impl LoraSource {
    /// The hash AUTOMATIC1111 writes for this LoRA in `Lora hashes` (12 hex digits), when known.
    pub fn a1111_short_hash(&self) -> Option<&str> {
        let safetensors = Path::new(&self.file)
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        let hash = if safetensors {
            self.addnet_sha256.as_ref()?
        } else {
            &self.sha256
        };
        Some(&hash.0[..12])
    }
}

/// A file put in at import and its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSource {
    pub file: String,
    pub sha256: Sha256Hex,
}

/// `checkpoint.family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceFamily {
    #[serde(rename = "sd15")]
    Sd15,
    #[serde(rename = "sd2")]
    Sd2,
    #[serde(rename = "sdxl")]
    Sdxl,
    #[serde(rename = "sdxl-refiner")]
    SdxlRefiner,
}

impl SourceFamily {
    /// Whether a folder of `family` can have been made from a checkpoint of this family.
    fn fits(self, family: Family) -> bool {
        match self {
            SourceFamily::Sd15 | SourceFamily::Sd2 => matches!(family, Family::Sd | Family::Lcm),
            SourceFamily::Sdxl => matches!(family, Family::Sdxl | Family::Lcm),
            SourceFamily::SdxlRefiner => family == Family::SdxlRefiner,
        }
    }
}

/// `dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceDtype {
    Float32,
    Float16,
}

/// `tool`: what made the folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportTool {
    /// Version of `sdspool import`'s conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdspool_import: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusers: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimum_onnx: Option<String>,
}

/// A SHA-256 as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// AUTOMATIC1111's short hash of a checkpoint: the first 10 hex digits.
    pub fn short(&self) -> &str {
        &self.0[..10]
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        hex_of_len(&s, 64).map(Sha256Hex)
    }
}

impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.0
    }
}

/// AUTOMATIC1111's old model hash: 8 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LegacyHash(String);

impl LegacyHash {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LegacyHash {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        hex_of_len(&s, 8).map(LegacyHash)
    }
}

impl From<LegacyHash> for String {
    fn from(h: LegacyHash) -> String {
        h.0
    }
}

/// The dotted name of the field serde's "missing field `x`" at `at` means.
fn missing_field(at: &str, message: &str) -> Option<String> {
    let name = message.strip_prefix("missing field `")?.split('`').next()?;
    Some(if at == "." {
        name.to_string()
    } else {
        format!("{at}.{name}")
    })
}

/// `s` lowercased when it is `len` hex digits.
fn hex_of_len(s: &str, len: usize) -> Result<String, String> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not {len} hex digits"))
    }
}

impl Provenance {
    /// Reads `<folder>/sdspool-source.json`: `None` when there is none; an error naming the
    /// file and the field when it is malformed, of another format, or made from a checkpoint
    /// of another family than the folder holds (`family`, when known).
    pub fn read(
        folder: &Path,
        family: Option<Family>,
    ) -> Result<Option<Provenance>, ProvenanceError> {
        let path = folder.join(FILE);
        let read_err = |source| ProvenanceError::Read {
            path: path.clone(),
            source,
        };
        let field_err = |field: String, problem: String| ProvenanceError::Field {
            path: path.clone(),
            field,
            problem,
        };
        use crate::sys::json::{self, JsonFileError};
        let p: Provenance = match json::read(&path, MAX_BYTES) {
            Ok(p) => p,
            Err(JsonFileError::Read(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(JsonFileError::Read(e)) => return Err(read_err(e)),
            Err(JsonFileError::Syntax(source)) => {
                return Err(ProvenanceError::Json {
                    path: path.clone(),
                    source,
                });
            }
            Err(JsonFileError::Field { field, problem }) => {
                return Err(missing_field(&field, &problem)
                    .map(|f| field_err(f, "is missing".into()))
                    .unwrap_or_else(|| field_err(field, problem)));
            }
        };
        if p.format != FORMAT {
            return Err(field_err(
                "format".into(),
                format!(
                    "is {}; this sdspool reads format {FORMAT} (a newer sdspool wrote it?)",
                    p.format
                ),
            ));
        }
        if let Some(family) = family
            && !p.checkpoint.family.fits(family)
        {
            return Err(field_err(
                "checkpoint.family".into(),
                format!(
                    "is {:?}, but the folder holds a {family} model",
                    p.checkpoint.family
                ),
            ));
        }
        for (i, lora) in p.loras.iter().enumerate() {
            if lora.name.is_empty() || lora.name.contains([':', '<', '>']) {
                return Err(field_err(
                    format!("loras[{i}].name"),
                    format!(
                        "is {:?}; a LoRA name is its file stem, without `:`, `<` or `>`",
                        lora.name
                    ),
                ));
            }
            if !lora.weight.is_finite() {
                return Err(field_err(
                    format!("loras[{i}].weight"),
                    "must be a finite number".into(),
                ));
            }
        }
        Ok(Some(p))
    }

    /// The LoRAs as AUTOMATIC1111 writes them into a prompt: `<lora:detail:0.8>` each,
    /// separated by spaces.
    pub fn lora_tags(&self) -> String {
        self.loras
            .iter()
            .map(|l| format!("<lora:{}:{}>", l.name, l.weight))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// AUTOMATIC1111's `Lora hashes` value (`detail: 0123456789ab, ...`), `None` when no LoRA's
    /// hash is known in its form.
    pub fn lora_hashes(&self) -> Option<String> {
        let parts: Vec<String> = self
            .loras
            .iter()
            .filter_map(|l| {
                let name: String = l.name.chars().filter(|c| !matches!(c, ':' | ',')).collect();
                l.a1111_short_hash().map(|h| format!("{name}: {h}"))
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// One line for people: `model.safetensors [0123456789], LoRAs detail 0.8, ...`.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} [{}]",
            self.checkpoint.file,
            self.checkpoint.sha256.short()
        );
        if !self.loras.is_empty() {
            let loras: Vec<String> = self
                .loras
                .iter()
                .map(|l| format!("{} {}", l.name, l.weight))
                .collect();
            text.push_str(&format!(", LoRAs {}", loras.join(", ")));
        }
        if let Some(vae) = &self.vae {
            text.push_str(&format!(", VAE {}", vae.file));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(FILE), text).unwrap();
    }

    fn full() -> String {
        format!(
            r#"{{"format": 1,
              "checkpoint": {{"file": "model.safetensors", "sha256": "{SHA}", "family": "sd15"}},
              "loras": [{{"name": "detail", "file": "detail.safetensors", "sha256": "{SHA}", "weight": 0.8,
                          "addnet_sha256": "{}"}},
                        {{"name": "old", "file": "old.pt", "sha256": "{}", "weight": 1}}],
              "vae": null, "dtype": "float16", "optimized": false,
              "tool": {{"sdspool_import": 1, "diffusers": "0.39.0", "optimum_onnx": "0.1.0"}},
              "later_field": [1, 2]}}"#,
            "a".repeat(64),
            "B".repeat(64)
        )
    }

    #[test]
    fn reads_the_schema_with_unknown_fields_and_none_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Provenance::read(dir.path(), None).unwrap(), None);
        write(dir.path(), &full());
        let p = Provenance::read(dir.path(), Some(Family::Sd))
            .unwrap()
            .unwrap();
        assert_eq!(p.checkpoint.sha256.short(), "0123456789");
        assert_eq!(p.checkpoint.family, SourceFamily::Sd15);
        assert_eq!(p.dtype, Some(SourceDtype::Float16));
        assert_eq!(p.loras.len(), 2);
        assert_eq!(p.loras[1].sha256.as_str(), "b".repeat(64), "lowercased");
        assert_eq!(p.lora_tags(), "<lora:detail:0.8> <lora:old:1>");
        assert_eq!(
            p.lora_hashes().as_deref(),
            Some("detail: aaaaaaaaaaaa, old: bbbbbbbbbbbb")
        );
        assert_eq!(
            p.summary(),
            "model.safetensors [0123456789], LoRAs detail 0.8, old 1"
        );
    }

    #[test]
    fn a_safetensors_lora_without_its_addnet_hash_has_no_a1111_hash() {
        let lora = LoraSource {
            name: "x".into(),
            file: "x.safetensors".into(),
            sha256: Sha256Hex(SHA.into()),
            weight: 1.0,
            addnet_sha256: None,
        };
        assert_eq!(lora.a1111_short_hash(), None);
    }

    #[test]
    fn malformed_files_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (full().replace(SHA, "abc"), "checkpoint.sha256"),
            (full().replace("\"sd15\"", "\"sd3\""), "checkpoint.family"),
            (full().replace("\"format\": 1", "\"format\": 2"), "format"),
            (
                full().replace("\"weight\": 1", "\"weight\": \"1\""),
                "loras[1].weight",
            ),
            (
                full().replace("\"name\": \"old\"", "\"name\": \"a:b\""),
                "loras[1].name",
            ),
            (
                full().replace("\"dtype\": \"float16\"", "\"dtype\": \"int8\""),
                "dtype",
            ),
            ("{\"format\": 1}".to_string(), "checkpoint"),
            (
                full().replace(", \"family\": \"sd15\"", ""),
                "checkpoint.family",
            ),
        ];
        for (text, field) in cases {
            write(dir.path(), &text);
            let e = Provenance::read(dir.path(), Some(Family::Sd)).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(FILE), "{msg}");
            match e {
                ProvenanceError::Field { field: f, .. } => {
                    assert_eq!(f, field, "{msg}")
                }
                other => panic!("{other}"),
            }
        }
        write(dir.path(), "{not json");
        assert!(matches!(
            Provenance::read(dir.path(), None),
            Err(ProvenanceError::Json { .. })
        ));
        write(dir.path(), &full());
        let e = Provenance::read(dir.path(), Some(Family::Sdxl)).unwrap_err();
        assert!(e.to_string().contains("checkpoint.family"), "{e}");
    }
}
