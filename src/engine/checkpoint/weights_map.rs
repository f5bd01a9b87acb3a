//! `sdspool-weights.json`: what a template-route import writes beside its data files so that LoRA
//! files can be applied when sessions are created, per job, without a new import. It holds the
//! checkpoint keys and shapes the template read (the names LoRA layers are matched against, as
//! [`super::names::layers`] reads them from a checkpoint header) and, per part, every initializer
//! a LoRA can change: where its float32 bytes are in the part's data file, its shape, whether it is
//! the parameter transposed, and the diffusers component, module and parameter it holds.
//!
//! [`WeightsMap::header`] gives those keys as a header without data, so [`super::lora::check`] and
//! [`super::lora_fuse::deltas`] work on an imported folder exactly as on the checkpoint;
//! [`WeightsMap::overrides`] reads the initializers a set of deltas changes and adds them.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Family;
use super::header::{Header, TensorInfo};
use super::lora_fuse::Deltas;
use super::names::Component;
use super::template::Template;
use super::template::format::{Dtype, SourceComponent};
use super::tensors;

/// The file name inside an imported model folder.
pub const FILE: &str = "sdspool-weights.json";

/// The `format` this sdspool writes and reads.
const FORMAT: u32 = 1;

/// Largest map read (SD 1.5's is a few hundred kilobytes).
const MAX_BYTES: u64 = 64 << 20;

/// One initializer a LoRA can change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The initializer's name in the part's graph.
    pub name: String,
    /// Its bytes in the part's data file.
    pub offset: u64,
    pub length: u64,
    pub dtype: Dtype,
    /// The initializer's shape.
    pub shape: Vec<u64>,
    /// The diffusers parameter's shape (the one LoRA deltas have).
    pub param_shape: Vec<u64>,
    /// The initializer is the parameter viewed as `[d0, rest]` and transposed.
    pub transpose: bool,
    pub component: Component,
    /// Dotted diffusers module path.
    pub module: String,
    /// Always `weight` (only weights take LoRA deltas).
    pub param: String,
}

/// One part's data file and its LoRA targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapPart {
    /// Relative to the model folder, e.g. `unet/model.onnx_data`.
    pub data: PathBuf,
    pub targets: Vec<Target>,
}

/// The weights map of one imported folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsMap {
    pub format: u32,
    pub family: String,
    /// The template's checkpoint keys with their shapes.
    pub checkpoint: BTreeMap<String, Vec<u64>>,
    /// Part folder name (`unet`, `text_encoder`, `text_encoder_2`) -> its targets.
    pub parts: BTreeMap<String, MapPart>,
}

/// Why a weights map cannot be read, or its data cannot be taken; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsMapError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: `{field}` {problem}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

/// One initializer with its LoRA delta added: the values to give ONNX Runtime for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub name: String,
    pub shape: Vec<i64>,
    pub values: Vec<f32>,
}

impl WeightsMap {
    /// The map of a folder imported through `template`: every initializer whose source is a
    /// weight of the UNet or a text encoder.
    pub fn of(template: &Template) -> WeightsMap {
        let mut parts = BTreeMap::new();
        for (name, part) in &template.parts {
            let targets: Vec<Target> = part
                .tensors
                .iter()
                .filter_map(|t| {
                    let s = t.source.as_ref()?;
                    let component = s.component.and_then(SourceComponent::lora_component)?;
                    let module = s.module.clone()?;
                    if s.param.as_deref() != Some("weight") {
                        return None;
                    }
                    let mut param_shape = template.checkpoint.required.get(&s.key)?.clone();
                    if let (Some([start, end]), Some(first)) = (s.rows, param_shape.first_mut()) {
                        *first = end - start;
                    }
                    Some(Target {
                        name: t.name.clone(),
                        offset: t.offset,
                        length: t.length,
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        param_shape,
                        transpose: s.transpose,
                        component,
                        module,
                        param: "weight".into(),
                    })
                })
                .collect();
            if !targets.is_empty() {
                parts.insert(
                    name.clone(),
                    MapPart {
                        data: part.data.clone(),
                        targets,
                    },
                );
            }
        }
        WeightsMap {
            format: FORMAT,
            family: template.family.as_str().into(),
            checkpoint: template.checkpoint.required.clone(),
            parts,
        }
    }

    /// Writes `<dir>/sdspool-weights.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<(), WeightsMapError> {
        let path = dir.join(FILE);
        let text = serde_json::to_vec(self).expect("the weights map serializes");
        crate::sys::atomic::write(&path, &text)
            .map_err(|source| WeightsMapError::Write { path, source })
    }

    /// `<dir>/sdspool-weights.json`, checked; `None` when the folder has none.
    pub fn read(dir: &Path) -> Result<Option<WeightsMap>, WeightsMapError> {
        let path = dir.join(FILE);
        let read_err = |source| WeightsMapError::Read {
            path: path.clone(),
            source,
        };
        let field = |field: String, problem: String| WeightsMapError::Field {
            path: path.clone(),
            field,
            problem,
        };
        use crate::sys::json::{self, JsonFileError};
        let map: WeightsMap = match json::read(&path, MAX_BYTES) {
            Ok(map) => map,
            Err(JsonFileError::Read(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(JsonFileError::Read(e)) => return Err(read_err(e)),
            Err(JsonFileError::Syntax(source)) => {
                return Err(WeightsMapError::Json {
                    path: path.clone(),
                    source,
                });
            }
            Err(JsonFileError::Field { field: f, problem }) => return Err(field(f, problem)),
        };
        if map.format != FORMAT {
            return Err(field(
                "format".into(),
                format!("is {}; this sdspool reads format {FORMAT}", map.format),
            ));
        }
        map.family
            .parse::<Family>()
            .map_err(|e| field("family".into(), e))?;
        for (name, part) in &map.parts {
            check_part(name, part).map_err(|(f, p)| field(f, p))?;
        }
        Ok(Some(map))
    }

    pub fn family(&self) -> Family {
        self.family.parse().expect("checked when read")
    }

    /// The checkpoint's keys and shapes as a header without data (`path`: the map's file), for
    /// matching LoRA files as against the checkpoint itself.
    pub fn header(&self, dir: &Path) -> Header {
        let tensors = self
            .checkpoint
            .iter()
            .map(|(k, shape)| {
                let info = TensorInfo {
                    dtype: "F32".into(),
                    shape: shape.clone(),
                    start: 0,
                    end: 0,
                };
                (k.clone(), info)
            })
            .collect();
        Header {
            path: dir.join(FILE),
            tensors,
            file_len: 0,
            data_start: 0,
        }
    }

    /// The initializers of part `part` (of the folder `dir`) that `deltas` change, read from the
    /// part's data file with the delta added (transposed where the initializer is). Deltas for
    /// modules of other parts are left for those parts.
    pub fn overrides(
        &self,
        dir: &Path,
        part: &str,
        deltas: &Deltas,
    ) -> Result<Vec<Override>, WeightsMapError> {
        let Some(p) = self.parts.get(part) else {
            return Ok(Vec::new());
        };
        let path = dir.join(&p.data);
        let read_err = |source| WeightsMapError::Read {
            path: path.clone(),
            source,
        };
        let mut file = None;
        let mut out = Vec::new();
        for (i, t) in p.targets.iter().enumerate() {
            let Some(delta) = deltas.get(&(t.component, t.module.clone())) else {
                continue;
            };
            let at = format!("parts.{part}.targets[{i}]");
            let field = |problem: String| WeightsMapError::Field {
                path: dir.join(FILE),
                field: at.clone(),
                problem,
            };
            if delta.len() as u64 != t.param_shape.iter().product::<u64>() {
                return Err(field(format!(
                    "{} holds {:?}, but the LoRA delta for it has {} values",
                    t.module,
                    t.param_shape,
                    delta.len()
                )));
            }
            let f = match &mut file {
                Some(f) => f,
                None => file.insert(File::open(&path).map_err(read_err)?),
            };
            let mut bytes = vec![0u8; t.length as usize];
            f.seek(SeekFrom::Start(t.offset)).map_err(read_err)?;
            f.read_exact(&mut bytes).map_err(read_err)?;
            let mut values = tensors::to_f32("F32", &bytes).expect("float32 is a float type");
            add_delta(&mut values, delta, t);
            out.push(Override {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                values,
            });
        }
        Ok(out)
    }

    /// The (component, module) keys of `deltas` no target of the map takes.
    pub fn untargeted<'d>(&self, deltas: &'d Deltas) -> Vec<&'d (Component, String)> {
        let known: HashSet<(Component, &str)> = self
            .parts
            .values()
            .flat_map(|p| &p.targets)
            .map(|t| (t.component, t.module.as_str()))
            .collect();
        let mut out: Vec<_> = deltas
            .keys()
            .filter(|(c, m)| !known.contains(&(*c, m.as_str())))
            .collect();
        out.sort();
        out
    }
}

/// `values` (the initializer) plus `delta` (in the parameter's shape), transposed into the
/// initializer's layout where it is the parameter transposed.
fn add_delta(values: &mut [f32], delta: &[f32], t: &Target) {
    let transposed;
    let delta = if t.transpose {
        let d0 = t.param_shape.first().copied().unwrap_or(1) as usize;
        transposed = tensors::transposed(delta, d0);
        &transposed
    } else {
        delta
    };
    values.iter_mut().zip(delta).for_each(|(v, d)| *v += d);
}

fn check_part(name: &str, part: &MapPart) -> Result<(), (String, String)> {
    if !crate::sys::names::is_inside(&part.data) {
        return Err((
            format!("parts.{name}.data"),
            format!(
                "is {:?}; it must be a relative path inside the model folder",
                part.data.display().to_string()
            ),
        ));
    }
    for (i, t) in part.targets.iter().enumerate() {
        let at = format!("parts.{name}.targets[{i}]");
        let elements: u64 = t.shape.iter().product();
        if elements.checked_mul(t.dtype.size()) != Some(t.length)
            || t.offset.checked_add(t.length).is_none()
        {
            return Err((
                format!("{at}.length"),
                format!(
                    "is {}; shape {:?} in float32 takes {} bytes",
                    t.length,
                    t.shape,
                    elements * 4
                ),
            ));
        }
        if t.param_shape.iter().product::<u64>() != elements || t.param != "weight" {
            return Err((
                format!("{at}.param_shape"),
                format!(
                    "{:?} ({}) does not hold the initializer's {} values",
                    t.param_shape, t.param, elements
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(transpose: bool) -> Target {
        Target {
            name: "w".into(),
            offset: 0,
            length: 24,
            dtype: Dtype::Float32,
            shape: if transpose { vec![3, 2] } else { vec![2, 3] },
            param_shape: vec![2, 3],
            transpose,
            component: Component::Unet,
            module: "m".into(),
            param: "weight".into(),
        }
    }

    #[test]
    fn a_delta_is_added_in_the_initializers_layout() {
        let delta = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut plain = vec![0.5; 6];
        add_delta(&mut plain, &delta, &target(false));
        assert_eq!(plain, [1.5, 2.5, 3.5, 4.5, 5.5, 6.5]);
        // the initializer is the [2, 3] parameter transposed: [3, 2]
        let mut t = vec![0.0; 6];
        add_delta(&mut t, &delta, &target(true));
        assert_eq!(t, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn a_map_that_escapes_its_folder_or_lies_about_sizes_is_refused_with_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut map = WeightsMap {
            format: 1,
            family: "sd15".into(),
            checkpoint: BTreeMap::new(),
            parts: BTreeMap::from([(
                "unet".to_string(),
                MapPart {
                    data: "../unet/model.onnx_data".into(),
                    targets: vec![target(false)],
                },
            )]),
        };
        map.write(dir.path()).unwrap();
        let e = WeightsMap::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("sdspool-weights.json: `parts.unet.data`"), "{e}");
        let part = map.parts.get_mut("unet").unwrap();
        part.data = "unet/model.onnx_data".into();
        part.targets[0].length = 20;
        map.write(dir.path()).unwrap();
        let e = WeightsMap::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`parts.unet.targets[0].length` is 20"), "{e}");
        part_fix(&mut map);
        map.write(dir.path()).unwrap();
        assert_eq!(WeightsMap::read(dir.path()).unwrap(), Some(map));
        assert_eq!(WeightsMap::read(&dir.path().join("none")).unwrap(), None);
    }

    fn part_fix(map: &mut WeightsMap) {
        map.parts.get_mut("unet").unwrap().targets[0].length = 24;
    }
}
