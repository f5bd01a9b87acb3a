//! The disk space an import needs, estimated before it starts, and the space there is.
//!
//! The conversion writes the PyTorch pipeline once in float32 (`save_pretrained`, in a temporary
//! folder beside the output, removed at the end), then the ONNX files (4 bytes a weight, 2 with
//! `--fp16`), and with `--optimize` the optimised copy too; an import through a template writes
//! the float32 ONNX files only. Weights are counted from the
//! checkpoint's header (UNet, VAE and text encoders; EMA copies and other extras are not
//! exported). A `.ckpt` cannot be read without Python: its file size stands in for float32 weights.

use std::path::Path;

use crate::engine::checkpoint::Header;
use crate::engine::checkpoint::family::{REFINER_TE, SD1_TE, SD2_TE, UNET, VAE, XL_TE1, XL_TE2};

/// Margin on top of the weights: graphs, configs, tokenizers, the file system's rounding.
const MARGIN: u64 = 64 << 20;

/// The bytes an import of a checkpoint with `weights` exported weights needs.
pub fn estimate(weights: u64, fp16: bool, optimize: bool) -> u64 {
    let onnx = weights * if fp16 { 2 } else { 4 };
    let pytorch = weights * 4;
    let optimized = if optimize { onnx } else { 0 };
    (pytorch + onnx + optimized) * 21 / 20 + MARGIN
}

/// The bytes an import through a template needs: the float32 ONNX files only (no PyTorch copy).
pub fn estimate_template(weights: u64) -> u64 {
    weights * 4 * 21 / 20 + MARGIN
}

/// The number of weights the export keeps, from a safetensors header.
pub fn exported_weights(header: &Header) -> u64 {
    const PARTS: [&str; 7] = [UNET, VAE, SD1_TE, SD2_TE, XL_TE1, XL_TE2, REFINER_TE];
    header
        .tensors
        .iter()
        .filter(|(k, _)| PARTS.iter().any(|p| k.starts_with(p)))
        .map(|(_, t)| t.elements())
        .sum()
}

/// Bytes free for an unprivileged user on the file system holding `dir` (or its nearest
/// existing ancestor).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("."));
        if probe.as_os_str().is_empty() {
            probe = Path::new(".");
        }
    }
    let s = rustix::fs::statvfs(probe).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// `1.23 GB`-style sizes for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_size_estimate() {
        // SD 1.5: about 1.07 G weights (UNet 860 M, VAE 84 M, text 123 M).
        let e = estimate(1_066_000_000, false, false);
        assert!((8_900_000_000..9_100_000_000).contains(&e), "{e}");
        assert!(estimate(1_066_000_000, true, false) < e);
        assert_eq!(human(1_500), "1.50 kB");
    }

    #[test]
    fn free_space_of_a_folder_not_made_yet_is_its_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let free = free_bytes(&tmp.path().join("a/b")).unwrap();
        assert!(free > 0);
    }
}
