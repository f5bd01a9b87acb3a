//! Reading one tensor's data from a `.safetensors` file whose [`Header`] was checked, as `f32`
//! (float16 and bfloat16 widen exactly; float64 narrows as torch's `.float()` does). Used where
//! Rust puts a checkpoint's or a LoRA's weights into a model itself (no Python).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::{CheckpointError, Header};

/// An open checkpoint: its header and the file, read tensor by tensor.
pub struct TensorFile {
    pub header: Header,
    file: File,
}

impl TensorFile {
    /// Opens `header.path` (already checked by [`super::header::read`]).
    pub fn open(header: Header) -> Result<Self, CheckpointError> {
        let file = File::open(&header.path).map_err(|source| CheckpointError::Io {
            path: header.path.clone(),
            source,
        })?;
        Ok(Self { header, file })
    }

    /// The tensor `key` as `f32` values in its stored (row-major) order.
    pub fn read_f32(&mut self, key: &str) -> Result<Vec<f32>, CheckpointError> {
        let path = self.header.path.clone();
        let t = self
            .header
            .tensors
            .get(key)
            .ok_or_else(|| CheckpointError::NotSafetensors {
                path: path.clone(),
                detail: format!("no tensor {key}"),
            })?;
        let (dtype, start, end) = (t.dtype.clone(), t.start, t.end);
        let mut bytes = vec![0u8; (end - start) as usize];
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        self.file
            .seek(SeekFrom::Start(self.header.data_start + start))
            .map_err(io)?;
        self.file.read_exact(&mut bytes).map_err(io)?;
        to_f32(&dtype, &bytes).ok_or_else(|| CheckpointError::NotSafetensors {
            path,
            detail: format!("tensor {key}: dtype {dtype} is not a floating-point type"),
        })
    }
}

/// Little-endian `bytes` of `dtype` (safetensors' names) as `f32`; `None` for non-float dtypes.
pub fn to_f32(dtype: &str, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    })
}

/// `values` viewed as `[d0, len / d0]`, transposed (row-major): how a linear layer's weight
/// becomes the initializer of the MatMul an export made of it.
pub fn transposed(values: &[f32], d0: usize) -> Vec<f32> {
    let rest = values.len() / d0.max(1);
    let mut out = vec![0.0; values.len()];
    for i in 0..d0 {
        for j in 0..rest {
            out[j * d0 + i] = values[i * rest + j];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_widens_exactly() {
        let h = half::f16::from_f32(0.333).to_le_bytes();
        let b = half::bf16::from_f32(-2.5).to_le_bytes();
        assert_eq!(
            to_f32("F16", &h).unwrap(),
            vec![half::f16::from_f32(0.333).to_f32()]
        );
        assert_eq!(to_f32("BF16", &b).unwrap(), vec![-2.5]);
        assert_eq!(to_f32("F32", &1.5f32.to_le_bytes()).unwrap(), vec![1.5]);
        assert_eq!(to_f32("I64", &[0; 8]), None);
    }

    #[test]
    fn a_tensor_is_read_from_its_offsets() {
        let json = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1],"data_offsets":[8,10]}}"#;
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(json.as_bytes());
        bytes.extend_from_slice(&1.0f32.to_le_bytes());
        bytes.extend_from_slice(&(-3.0f32).to_le_bytes());
        bytes.extend_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        let header = super::super::header::read(f.path()).unwrap();
        let mut t = TensorFile::open(header).unwrap();
        assert_eq!(t.read_f32("b").unwrap(), vec![0.5]);
        assert_eq!(t.read_f32("a").unwrap(), vec![1.0, -3.0]);
        assert!(
            t.read_f32("c")
                .unwrap_err()
                .to_string()
                .contains("no tensor c")
        );
    }
}
