//! Whether a checkpoint fits a template, from its header: every required key is there with
//! exactly the template's shape in a floating-point dtype, and every key under the template's
//! component prefixes (the single-file prefixes of its required keys) is required, ignored, or a
//! buffer that is no weight (`…position_ids`). When it does not, [`Misfit`] says why, for the log
//! and for `--route template`'s refusal.

use std::collections::BTreeSet;
use std::fmt;

use super::Template;
use super::vae::Replacement;
use crate::engine::checkpoint::Header;
use crate::engine::checkpoint::family::{REFINER_TE, SD1_TE, SD2_TE, UNET, VAE, XL_TE1, XL_TE2};

/// The single-file prefixes a template's components live under.
const PREFIXES: [&str; 7] = [UNET, VAE, SD1_TE, SD2_TE, XL_TE1, XL_TE2, REFINER_TE];

/// How many keys of each kind a message names.
const SHOWN: usize = 4;

/// Why a checkpoint does not fit a template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Misfit {
    /// Required keys the checkpoint lacks.
    pub missing: Vec<String>,
    /// Required keys of another shape: key, the checkpoint's shape, the template's.
    pub shapes: Vec<(String, Vec<u64>, Vec<u64>)>,
    /// Required keys whose dtype is no floating-point type: key, dtype.
    pub dtypes: Vec<(String, String)>,
    /// Keys under the template's prefixes that it neither reads nor ignores.
    pub unknown: Vec<String>,
}

impl Misfit {
    fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.shapes.is_empty()
            && self.dtypes.is_empty()
            && self.unknown.is_empty()
    }
}

fn first(keys: &[String]) -> String {
    keys.iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = Vec::new();
        if let Some((key, got, want)) = self.shapes.first() {
            said.push(format!(
                "{} key(s) of another shape: {key} is {got:?}, the template's {want:?}",
                self.shapes.len()
            ));
        }
        if !self.missing.is_empty() {
            said.push(format!(
                "{} key(s) missing (first: {})",
                self.missing.len(),
                first(&self.missing)
            ));
        }
        if let Some((key, dtype)) = self.dtypes.first() {
            said.push(format!(
                "{} key(s) not floating-point: {key} is {dtype}",
                self.dtypes.len()
            ));
        }
        if !self.unknown.is_empty() {
            said.push(format!(
                "{} key(s) the template does not know (first: {})",
                self.unknown.len(),
                first(&self.unknown)
            ));
        }
        f.write_str(&said.join("; "))
    }
}

/// Whether a key is a buffer rather than a weight (kept by some checkpoints, never exported).
fn is_buffer(key: &str) -> bool {
    key.ends_with("position_ids")
}

/// Checks that the checkpoint of `header` (with the VAE of `vae` in place of its own, when
/// given) fits `template`.
pub fn check(
    template: &Template,
    header: &Header,
    vae: Option<&Replacement>,
) -> Result<(), Misfit> {
    let mut misfit = Misfit::default();
    let required = &template.checkpoint.required;
    let mut prefixes: BTreeSet<&str> = BTreeSet::new();
    for (key, want) in required {
        prefixes.extend(PREFIXES.iter().copied().find(|p| key.starts_with(*p)));
        let (file, name) = match vae.and_then(|v| Some((v, v.layout.file_key(key)?))) {
            Some((v, name)) => (&v.header, name),
            None => (header, key.clone()),
        };
        match file.tensors.get(&name) {
            None => misfit.missing.push(name),
            Some(t) if &t.shape != want => {
                misfit.shapes.push((name, t.shape.clone(), want.clone()))
            }
            Some(t) if !matches!(t.dtype.as_str(), "F32" | "F16" | "BF16" | "F64") => {
                misfit.dtypes.push((name, t.dtype.clone()))
            }
            Some(_) => {}
        }
    }
    if vae.is_some() {
        prefixes.remove(VAE);
    }
    let known = |k: &String| {
        required.contains_key(k) || template.checkpoint.ignored.contains(k) || is_buffer(k)
    };
    misfit.unknown = header
        .tensors
        .keys()
        .filter(|k| prefixes.iter().any(|p| k.starts_with(p)) && !known(k))
        .cloned()
        .collect();
    if let Some(v) = vae {
        misfit.unknown.extend(
            v.header
                .tensors
                .keys()
                .filter(|k| v.layout.template_key(k).is_some_and(|t| !known(&t)))
                .cloned(),
        );
    }
    if misfit.is_empty() {
        Ok(())
    } else {
        Err(misfit)
    }
}
