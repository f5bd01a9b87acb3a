//! A model's checkpoint hash as AUTOMATIC1111 computes it, so that an infotext's
//! `Model hash:` finds the configured model and sdspool's PNGs carry it:
//!
//! - the hash it writes since version 1.0: SHA-256 of the whole checkpoint file, of which its
//!   infotext shows the first 10 hex digits (the "short hash");
//! - the old one of earlier infotexts: SHA-256 of the 64 KiB (`0x10000` bytes) at offset 1 MiB
//!   (`0x100000`; fewer bytes when the file is shorter, none when it ends before), first 8 hex
//!   digits.
//!
//! sdspool runs ONNX folders; the hashed file is the single-file checkpoint the folder was made
//! from, known from its provenance file ([`super::provenance`]) or from the model's
//! `checkpoint:` path in config.yaml, which is hashed once per process, when first needed.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::provenance::{LegacyHash, LoraSource, Provenance, Sha256Hex};

/// Where the old hash reads, and how much.
const LEGACY_OFFSET: u64 = 0x10_0000;
const LEGACY_LEN: u64 = 0x1_0000;

/// A checkpoint's hashes in AUTOMATIC1111's forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointHash {
    /// SHA-256 of the whole file.
    pub sha256: Sha256Hex,
    /// The old 8-digit hash, when known (it needs the file itself).
    pub legacy: Option<LegacyHash>,
}

impl CheckpointHash {
    /// The 10 hex digits AUTOMATIC1111 writes as `Model hash`.
    pub fn short(&self) -> &str {
        self.sha256.short()
    }

    /// Whether an infotext's `Model hash` (10 digits, the old 8, or the full 64; any case)
    /// names this checkpoint.
    pub fn matches(&self, written: &str) -> bool {
        let w = written.trim().to_ascii_lowercase();
        match w.len() {
            10 => w == self.short(),
            8 => self.legacy.as_ref().is_some_and(|l| l.as_str() == w),
            64 => w == self.sha256.as_str(),
            _ => false,
        }
    }

    /// `0123456789` or `0123456789, old 01234567`, for lists of models.
    pub fn display(&self) -> String {
        match &self.legacy {
            Some(l) => format!("{}, old {}", self.short(), l.as_str()),
            None => self.short().to_string(),
        }
    }

    /// The hashes a provenance file records.
    pub fn of_provenance(p: &Provenance) -> CheckpointHash {
        CheckpointHash {
            sha256: p.checkpoint.sha256.clone(),
            legacy: p.checkpoint.legacy_hash.clone(),
        }
    }
}

/// Why a checkpoint could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the checkpoint {}: {source}", path.display())]
pub struct HashError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// SHA-256 of the whole file at `path` and its old hash, read once.
pub fn hash_file(path: &Path) -> std::io::Result<CheckpointHash> {
    let mut file = std::fs::File::open(path)?;
    let mut whole = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
    }
    let sha256 = hex(&whole.finalize());
    Ok(CheckpointHash {
        sha256: Sha256Hex::try_from(sha256).expect("64 hex digits"),
        legacy: Some(legacy_hash(&mut file)?),
    })
}

/// SHA-256 of the whole safetensors file at `path`, and the hash AUTOMATIC1111 writes for it in
/// `Lora hashes`: the file's `sshs_model_hash` metadata when it has one, else kohya's "addnet"
/// hash (SHA-256 of the file after its header); in one read.
pub fn lora_hashes(path: &Path) -> std::io::Result<(Sha256Hex, Sha256Hex)> {
    let mut file = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let mut header = Vec::new();
    (&mut file)
        .take(u64::from_le_bytes(len))
        .read_to_end(&mut header)?;
    let (mut whole, mut after) = (Sha256::new(), Sha256::new());
    whole.update(len);
    whole.update(&header);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let got = file.read(&mut buf)?;
        if got == 0 {
            break;
        }
        whole.update(&buf[..got]);
        after.update(&buf[..got]);
    }
    let sha = |bytes: &[u8]| Sha256Hex::try_from(hex(bytes)).expect("64 hex digits");
    let stored = serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .and_then(|v| {
            v["__metadata__"]["sshs_model_hash"]
                .as_str()
                .map(str::to_owned)
        })
        .and_then(|h| Sha256Hex::try_from(h).ok());
    let addnet = stored.unwrap_or_else(|| sha(&after.finalize()));
    Ok((sha(&whole.finalize()), addnet))
}

/// The LoRA file `path` as provenance records it, under AUTOMATIC1111's `name` for it: file
/// name, SHA-256, `weight` and, for a `.safetensors` file, the `Lora hashes` hash
/// ([`lora_hashes`]).
pub fn lora_source(path: &Path, name: String, weight: f64) -> std::io::Result<LoraSource> {
    let (sha256, addnet_sha256) = if path.extension().is_some_and(|e| e == "safetensors") {
        let (whole, addnet) = lora_hashes(path)?;
        (whole, Some(addnet))
    } else {
        (hash_file(path)?.sha256, None)
    };
    Ok(LoraSource {
        name,
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256,
        weight,
        addnet_sha256,
    })
}

/// AUTOMATIC1111's old hash of `file` (read from its offset, whatever the position).
fn legacy_hash(file: &mut std::fs::File) -> std::io::Result<LegacyHash> {
    file.seek(SeekFrom::Start(LEGACY_OFFSET))?;
    let mut part = Vec::new();
    file.take(LEGACY_LEN).read_to_end(&mut part)?;
    let digest = hex(&Sha256::digest(&part));
    Ok(LegacyHash::try_from(digest[..8].to_string()).expect("8 hex digits"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's identity for the cache: a changed file is hashed again.
type Stamp = (u64, Option<SystemTime>);

/// Hashes computed by this process, by path.
static CACHE: Mutex<Option<HashMap<PathBuf, (Stamp, CheckpointHash)>>> = Mutex::new(None);

/// The hashes of the checkpoint at `path`, computed the first time this process asks (and again
/// only when the file changed); logged, since a checkpoint of several GB takes a while.
pub fn hash_cached(path: &Path) -> Result<CheckpointHash, HashError> {
    let err = |source| HashError {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let stamp = (meta.len(), meta.modified().ok());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some((s, h)) = cache.get(path)
        && *s == stamp
    {
        return Ok(h.clone());
    }
    tracing::info!(file = %path.display(), bytes = meta.len(), "hashing the model's checkpoint (SHA-256, as AUTOMATIC1111 does)");
    let started = Instant::now();
    let hash = hash_file(path).map_err(err)?;
    tracing::info!(file = %path.display(), hash = %hash.short(), seconds = started.elapsed().as_secs_f64(), "checkpoint hashed");
    cache.insert(path.to_path_buf(), (stamp, hash.clone()));
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_old_forms_match_case_insensitively() {
        let h = CheckpointHash {
            sha256: Sha256Hex::try_from("ab".repeat(32)).unwrap(),
            legacy: Some(LegacyHash::try_from("0123abcd".to_string()).unwrap()),
        };
        assert!(h.matches("ABABABABAB"));
        assert!(h.matches(" 0123ABCD"));
        assert!(h.matches(&"ab".repeat(32)));
        assert!(!h.matches("abababab"));
        assert!(!h.matches("ababababa"));
        assert_eq!(h.display(), "ababababab, old 0123abcd");
    }

    #[test]
    fn the_old_hash_of_a_file_shorter_than_its_offset_is_that_of_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.bin");
        std::fs::write(&path, b"abc").unwrap();
        let h = hash_file(&path).unwrap();
        // SHA-256 of "abc" and of the empty string (FIPS 180-2 examples).
        assert_eq!(
            h.sha256.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.legacy.unwrap().as_str(), "e3b0c442");
    }
}
