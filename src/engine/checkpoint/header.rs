//! The header of a `.safetensors` file: an 8-byte little-endian length, that many bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}`), then the
//! tensor data. Read without loading the data; a file shorter than its header says is truncated.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::CheckpointError;

/// The largest header the safetensors format allows (100 MB).
const MAX_HEADER: u64 = 100 * 1000 * 1000;

/// One tensor's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Offsets into the data section (after the header).
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A checked header: every tensor's data lies inside the file.
#[derive(Debug, Clone)]
pub struct Header {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, TensorInfo>,
    pub file_len: u64,
    /// Where the data section starts in the file (8 + the JSON's length).
    pub data_start: u64,
}

impl Header {
    pub fn shape(&self, key: &str) -> Option<&[u64]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// The first `n` tensor names, for error messages.
    pub fn first_keys(&self, n: usize) -> Vec<String> {
        self.tensors.keys().take(n).cloned().collect()
    }
}

#[derive(serde::Deserialize)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

fn not_safetensors(path: &Path, detail: String) -> CheckpointError {
    CheckpointError::NotSafetensors {
        path: path.to_path_buf(),
        detail,
    }
}

fn truncated(path: &Path, detail: String) -> CheckpointError {
    CheckpointError::Truncated {
        path: path.to_path_buf(),
        detail,
    }
}

/// Reads and checks the header of `path`.
pub fn read(path: &Path) -> Result<Header, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < 8 {
        return Err(truncated(
            path,
            format!("{file_len} bytes: shorter than the 8-byte header length"),
        ));
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(not_safetensors(
            path,
            format!("header length {n} is over the format's 100 MB limit"),
        ));
    }
    if 8 + n > file_len {
        return Err(truncated(
            path,
            format!(
                "the header says {n} bytes of JSON, the file has {} after the length",
                file_len - 8
            ),
        ));
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json).map_err(io)?;
    let tensors = parse_entries(path, &json)?;
    let data_len = file_len - 8 - n;
    if let Some((name, t)) = tensors.iter().max_by_key(|(_, t)| t.end)
        && t.end > data_len
    {
        return Err(truncated(
            path,
            format!(
                "tensor {name} ends at byte {} of the data, the file holds {data_len} bytes of data",
                t.end
            ),
        ));
    }
    Ok(Header {
        path: path.to_path_buf(),
        tensors,
        file_len,
        data_start: 8 + n,
    })
}

fn parse_entries(
    path: &Path,
    json: &[u8],
) -> Result<BTreeMap<String, TensorInfo>, CheckpointError> {
    let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| not_safetensors(path, format!("the header is not a JSON object: {e}")))?;
    let mut tensors = BTreeMap::new();
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let t: RawTensor = serde_json::from_value(value)
            .map_err(|e| not_safetensors(path, format!("tensor {name}: {e}")))?;
        let size = dtype_size(&t.dtype).ok_or_else(|| {
            not_safetensors(path, format!("tensor {name}: unknown dtype {}", t.dtype))
        })?;
        let [start, end] = t.data_offsets;
        let elements = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        if start > end || elements.and_then(|e| e.checked_mul(size)) != Some(end - start) {
            return Err(not_safetensors(
                path,
                format!(
                    "tensor {name}: data_offsets [{start}, {end}] do not hold a {} tensor of shape {:?}",
                    t.dtype, t.shape
                ),
            ));
        }
        tensors.insert(
            name,
            TensorInfo {
                dtype: t.dtype,
                shape: t.shape,
                start,
                end,
            },
        );
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        f
    }

    fn safetensors(json: &str, data: usize) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data));
        out
    }

    const ONE: &str = r#"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]}}"#;

    #[test]
    fn a_complete_file_gives_its_shapes() {
        let f = file(&safetensors(ONE, 12));
        let h = read(f.path()).unwrap();
        assert_eq!(h.shape("a.weight"), Some(&[2u64, 3][..]));
        assert_eq!(h.tensors["a.weight"].elements(), 6);
    }

    #[test]
    fn a_file_cut_in_its_data_is_truncated() {
        let f = file(&safetensors(ONE, 11));
        let e = read(f.path()).unwrap_err();
        assert!(matches!(e, CheckpointError::Truncated { .. }), "{e}");
        assert!(e.to_string().contains("a.weight ends at byte 12"), "{e}");
    }

    #[test]
    fn a_file_cut_in_its_header_is_truncated() {
        let bytes = safetensors(ONE, 12);
        let f = file(&bytes[..20]);
        assert!(matches!(
            read(f.path()),
            Err(CheckpointError::Truncated { .. })
        ));
        let f = file(&bytes[..5]);
        assert!(matches!(
            read(f.path()),
            Err(CheckpointError::Truncated { .. })
        ));
    }

    #[test]
    fn offsets_that_do_not_fit_the_shape_are_refused() {
        let bad = ONE.replace("[0,12]", "[0,10]");
        let f = file(&safetensors(&bad, 12));
        let e = read(f.path()).unwrap_err();
        assert!(matches!(e, CheckpointError::NotSafetensors { .. }), "{e}");
    }

    #[test]
    fn a_pickle_is_not_a_safetensors_file() {
        let f = file(b"PK\x03\x04 zip of a .ckpt pickle, not a header........");
        assert!(matches!(
            read(f.path()),
            Err(CheckpointError::NotSafetensors { .. })
        ));
    }
}
