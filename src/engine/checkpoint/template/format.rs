//! `template.json` (format 1), read into typed values and checked before anything is written:
//! every path stays inside the template folder, every initializer's bytes hold its shape in its
//! dtype, no two initializers overlap, every source key is a required key and its (sliced) tensor
//! has as many elements as the initializer. A problem names the file and the field
//! (`parts.unet.tensors[3].length`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TemplateError;
use crate::engine::checkpoint::Family;
use crate::engine::checkpoint::names::Component;

/// The file name inside a template folder.
pub const TEMPLATE_FILE: &str = "template.json";

/// The `format` this sdspool reads.
pub const FORMAT: u32 = 1;

/// Largest `template.json` read (SD 1.5's is a few hundred kilobytes).
const MAX_BYTES: u64 = 64 << 20;

/// An initializer's element type (also in `sdspool-weights.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Float32,
}

impl Dtype {
    pub fn size(self) -> u64 {
        match self {
            Dtype::Float32 => 4,
        }
    }
}

/// The pipeline component a mapped initializer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceComponent {
    Unet,
    TextEncoder,
    #[serde(rename = "text_encoder_2")]
    TextEncoder2,
    Vae,
}

impl SourceComponent {
    /// The component LoRA deltas are keyed by (none for the VAE).
    pub fn lora_component(self) -> Option<Component> {
        match self {
            SourceComponent::Unet => Some(Component::Unet),
            SourceComponent::TextEncoder => Some(Component::TextEncoder),
            SourceComponent::TextEncoder2 => Some(Component::TextEncoder2),
            SourceComponent::Vae => None,
        }
    }
}

/// Which checkpoint tensor an initializer is made of.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub key: String,
    /// Rows `start..end` of the tensor's first dimension.
    pub rows: Option<[u64; 2]>,
    /// The parameter viewed as 2-D `[d0, rest]` and transposed.
    pub transpose: bool,
    /// The diffusers parameter the values equal: component, dotted module path, parameter;
    /// null where none does (OpenCLIP's `text_projection` is stored transposed): filled from the
    /// checkpoint, no LoRA target.
    pub component: Option<SourceComponent>,
    pub module: Option<String>,
    pub param: Option<String>,
}

/// One initializer of a part's data file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initializer {
    pub name: String,
    pub offset: u64,
    pub length: u64,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// `None`: a constant of the graph, whose bytes the template's data file holds.
    pub source: Option<Source>,
}

impl Initializer {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }

    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// One part (`unet`, `text_encoder`, …): its data file and initializers, sorted by offset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// Relative to the template folder, e.g. `unet/model.onnx_data`.
    pub data: PathBuf,
    pub tensors: Vec<Initializer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointKeys {
    /// Every key the template reads, with its shape.
    pub required: BTreeMap<String, Vec<u64>>,
    /// Keys a checkpoint may have under the template's prefixes that it does not read.
    #[serde(default)]
    pub ignored: BTreeSet<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    format: u32,
    family: String,
    dtype: Dtype,
    checkpoint: CheckpointKeys,
    scheduler_config: PathBuf,
    parts: BTreeMap<String, Part>,
}

/// A checked template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The template folder.
    pub dir: PathBuf,
    pub family: Family,
    pub checkpoint: CheckpointKeys,
    /// Relative to the folder.
    pub scheduler_config: PathBuf,
    pub parts: BTreeMap<String, Part>,
}

impl Template {
    /// The folder's name (`sd15-0123456789ab`), as provenance records it.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Reads and checks `<dir>/template.json`.
    pub fn read(dir: &Path) -> Result<Template, TemplateError> {
        let path = dir.join(TEMPLATE_FILE);
        let read_err = |source| TemplateError::Read {
            path: path.clone(),
            source,
        };
        use crate::sys::json::{self, JsonFileError};
        let raw: RawTemplate = json::read(&path, MAX_BYTES).map_err(|e| match e {
            JsonFileError::Read(source) => read_err(source),
            JsonFileError::Syntax(source) => TemplateError::Json {
                path: path.clone(),
                source,
            },
            JsonFileError::Field { field, problem } => TemplateError::Field {
                path: path.clone(),
                field,
                problem,
            },
        })?;
        let field = |field: String, problem: String| TemplateError::Field {
            path: path.clone(),
            field,
            problem,
        };
        if raw.format != FORMAT {
            return Err(field(
                "format".into(),
                format!("is {}; this sdspool reads format {FORMAT}", raw.format),
            ));
        }
        let family = raw.family.parse().map_err(|e| field("family".into(), e))?;
        // `dtype`: float32 is the only one format 1 has (serde refused any other)
        let _: Dtype = raw.dtype;
        inside("scheduler_config", &raw.scheduler_config).map_err(|p| field(p.0, p.1))?;
        for (name, part) in &raw.parts {
            check_part(name, part, &raw.checkpoint.required).map_err(|p| field(p.0, p.1))?;
        }
        let mut parts = raw.parts;
        for part in parts.values_mut() {
            part.tensors.sort_by_key(|t| t.offset);
        }
        Ok(Template {
            dir: dir.to_path_buf(),
            family,
            checkpoint: raw.checkpoint,
            scheduler_config: raw.scheduler_config,
            parts,
        })
    }
}

/// A problem: the field and what is wrong with it.
type Problem = (String, String);

/// `path` is relative and stays inside the folder (no `..`, no root).
fn inside(field: &str, path: &Path) -> Result<(), Problem> {
    if crate::sys::names::is_inside(path) {
        Ok(())
    } else {
        Err((
            field.to_string(),
            format!(
                "is {:?}; it must be a relative path inside the template folder",
                path.display().to_string()
            ),
        ))
    }
}

fn check_part(
    name: &str,
    part: &Part,
    required: &BTreeMap<String, Vec<u64>>,
) -> Result<(), Problem> {
    let base = format!("parts.{name}");
    inside(&format!("{base}.data"), &part.data)?;
    let mut order: Vec<(usize, &Initializer)> = part.tensors.iter().enumerate().collect();
    order.sort_by_key(|(_, t)| t.offset);
    let mut end = 0u64;
    for (i, t) in order {
        let at = format!("{base}.tensors[{i}]");
        check_initializer(&at, t, required)?;
        if t.offset < end {
            return Err((
                format!("{at}.offset"),
                format!(
                    "{} of {} overlaps the initializer before it",
                    t.offset, t.name
                ),
            ));
        }
        end = t.end();
    }
    Ok(())
}

fn check_initializer(
    at: &str,
    t: &Initializer,
    required: &BTreeMap<String, Vec<u64>>,
) -> Result<(), Problem> {
    let bytes = t
        .shape
        .iter()
        .try_fold(t.dtype.size(), |a, &d| a.checked_mul(d));
    if bytes != Some(t.length) || t.offset.checked_add(t.length).is_none() {
        return Err((
            format!("{at}.length"),
            format!(
                "is {}; {} of shape {:?} takes {:?} bytes",
                t.length, t.name, t.shape, bytes
            ),
        ));
    }
    let Some(source) = &t.source else {
        return Ok(());
    };
    let Some(shape) = required.get(&source.key) else {
        return Err((
            format!("{at}.source.key"),
            format!("{} is not in checkpoint.required", source.key),
        ));
    };
    let taken = match source.rows {
        None => shape.iter().product::<u64>(),
        Some([start, end]) if start < end && shape.first().is_some_and(|d| end <= *d) => {
            (end - start) * shape[1..].iter().product::<u64>()
        }
        Some(rows) => {
            return Err((
                format!("{at}.source.rows"),
                format!("{rows:?} is not a range of the first dimension of {shape:?}"),
            ));
        }
    };
    if taken != t.elements() {
        return Err((
            format!("{at}.shape"),
            format!(
                "{:?} holds {} values; {} ({shape:?}, rows {:?}) gives {taken}",
                t.shape,
                t.elements(),
                source.key,
                source.rows
            ),
        ));
    }
    Ok(())
}
