//! Putting a checkpoint into a copy of a template: [`copy_folder`] copies everything but
//! `template.json` and the parts' data files, [`fill`] writes each data file anew, front to back,
//! one initializer at a time: the template's bytes where it has constants or gaps, the checkpoint's
//! tensor (its rows, plus a LoRA delta, transposed where the export made a MatMul of a linear
//! layer) as float32 where an initializer is mapped. At most one checkpoint tensor and one
//! initializer are in memory at once (an OpenCLIP `in_proj_weight` is read once for q, k and v).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::TemplateError;
use super::format::{Initializer, Part, Source, TEMPLATE_FILE, Template};
use super::vae::VaeLayout;
use crate::engine::checkpoint::CheckpointError;
use crate::engine::checkpoint::names::Component;
use crate::engine::checkpoint::tensors::{self, TensorFile};

/// LoRA deltas to add (see [`crate::engine::checkpoint::lora_fuse`]): (component, dotted diffusers
/// module) -> what diffusers' `fuse_lora` adds to `<module>.weight`, in the parameter's shape.
pub use crate::engine::checkpoint::lora_fuse::Deltas;

/// What [`fill`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FillStats {
    /// Initializers written from the checkpoint.
    pub mapped: usize,
    /// Bytes of them.
    pub mapped_bytes: u64,
    /// Bytes copied from the template's data files (constants and gaps).
    pub copied_bytes: u64,
}

/// The write buffer (and the unit data files are converted in).
const CHUNK: usize = 8 << 20;

/// Copies the template folder into `out` (created), leaving out `template.json`, any
/// `sdspool-source.json` and the parts' data files, which [`fill`] writes.
pub fn copy_folder(template: &Template, out: &Path) -> Result<(), TemplateError> {
    let skip: HashSet<PathBuf> = template
        .parts
        .values()
        .map(|p| p.data.clone())
        .chain([
            PathBuf::from(TEMPLATE_FILE),
            PathBuf::from("sdspool-source.json"),
        ])
        .collect();
    copy_dir(&template.dir, out, Path::new(""), &skip)
}

fn copy_dir(
    from: &Path,
    to: &Path,
    rel: &Path,
    skip: &HashSet<PathBuf>,
) -> Result<(), TemplateError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TemplateError::Read { path, source }
    };
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TemplateError::Write { path, source }
    };
    std::fs::create_dir_all(to).map_err(write(to))?;
    for entry in std::fs::read_dir(from).map_err(read(from))? {
        let entry = entry.map_err(read(from))?;
        let (path, name) = (entry.path(), entry.file_name());
        let rel = rel.join(&name);
        let kind = entry.file_type().map_err(read(&path))?;
        if kind.is_dir() {
            copy_dir(&path, &to.join(&name), &rel, skip)?;
        } else if !kind.is_file() {
            return Err(TemplateError::Data {
                path,
                detail:
                    "a template holds plain files and folders only (this is a link or a device)"
                        .into(),
            });
        } else if !skip.contains(&rel) {
            std::fs::copy(&path, to.join(&name)).map_err(write(&to.join(&name)))?;
        }
    }
    Ok(())
}

/// Writes every part's data file into `out` (a [`copy_folder`] of `template`) from the template's
/// data and the checkpoint's tensors (the VAE's from `vae`, when given), adding `deltas`; every
/// delta must find its initializer.
pub fn fill(
    template: &Template,
    out: &Path,
    checkpoint: &mut TensorFile,
    vae: Option<(&mut TensorFile, VaeLayout)>,
    deltas: &Deltas,
) -> Result<FillStats, TemplateError> {
    let mut reader = Reader {
        file: checkpoint,
        vae,
        last: None,
    };
    let mut stats = FillStats::default();
    let mut used = HashSet::new();
    for part in template.parts.values() {
        fill_part(
            template,
            part,
            out,
            &mut reader,
            deltas,
            &mut used,
            &mut stats,
        )?;
    }
    if used.len() < deltas.len() {
        let mut unused: Vec<String> = deltas
            .keys()
            .filter(|k| !used.contains(*k))
            .map(|(c, m)| format!("{c:?} {m}"))
            .collect();
        unused.sort();
        return Err(TemplateError::UnusedDeltas {
            template: template.dir.clone(),
            count: unused.len(),
            first: unused.into_iter().take(4).collect(),
        });
    }
    Ok(stats)
}

/// The checkpoint (and a replacement VAE), with the last tensor read kept (q, k and v are rows of
/// one OpenCLIP tensor).
struct Reader<'a> {
    file: &'a mut TensorFile,
    vae: Option<(&'a mut TensorFile, VaeLayout)>,
    last: Option<(String, Vec<f32>)>,
}

impl Reader<'_> {
    /// The file a template key is read from, and its name there.
    fn locate(&mut self, key: &str) -> (&mut TensorFile, String) {
        if let Some((vae, layout)) = self.vae.as_mut()
            && let Some(name) = layout.file_key(key)
        {
            return (vae, name);
        }
        (self.file, key.to_string())
    }

    fn tensor(&mut self, key: &str) -> Result<&[f32], CheckpointError> {
        if self.last.as_ref().is_none_or(|(k, _)| k != key) {
            self.last = None;
            let (file, name) = self.locate(key);
            let values = file.read_f32(&name)?;
            self.last = Some((key.to_string(), values));
        }
        Ok(&self.last.as_ref().expect("just read").1)
    }

    fn shape(&mut self, key: &str) -> Vec<u64> {
        let (file, name) = self.locate(key);
        file.header
            .shape(&name)
            .map(<[u64]>::to_vec)
            .unwrap_or_default()
    }
}

fn fill_part(
    template: &Template,
    part: &Part,
    out: &Path,
    reader: &mut Reader,
    deltas: &Deltas,
    used: &mut HashSet<(Component, String)>,
    stats: &mut FillStats,
) -> Result<(), TemplateError> {
    let (from, to) = (template.dir.join(&part.data), out.join(&part.data));
    let read_err = |source| TemplateError::Read {
        path: from.clone(),
        source,
    };
    let write_err = |source| TemplateError::Write {
        path: to.clone(),
        source,
    };
    let mut src = File::open(&from).map_err(read_err)?;
    let len = src.metadata().map_err(read_err)?.len();
    if let Some(last) = part.tensors.iter().max_by_key(|t| t.end())
        && last.end() > len
    {
        return Err(TemplateError::Data {
            path: from.clone(),
            detail: format!(
                "holds {len} bytes, but initializer {} ends at byte {}",
                last.name,
                last.end()
            ),
        });
    }
    let mut dst = BufWriter::with_capacity(CHUNK, File::create(&to).map_err(write_err)?);
    let mut pos = 0;
    for t in &part.tensors {
        let Some(source) = &t.source else { continue };
        stats.copied_bytes += copy_range(&mut src, pos, t.offset, &mut dst, &from, &to)?;
        let delta_key = source.lora_key().filter(|k| deltas.contains_key(k));
        let delta = delta_key.as_ref().map(|k| deltas[k].as_slice());
        let values = initializer_values(t, source, reader, delta).map_err(|e| match e {
            Failed::Checkpoint(source_err) => TemplateError::Checkpoint {
                data: to.clone(),
                tensor: t.name.clone(),
                key: source.key.clone(),
                source: Box::new(source_err),
            },
            Failed::Shape(problem) => TemplateError::Tensor {
                data: to.clone(),
                tensor: t.name.clone(),
                key: source.key.clone(),
                problem,
            },
        })?;
        used.extend(delta_key);
        write_f32(&mut dst, &values).map_err(write_err)?;
        stats.mapped += 1;
        stats.mapped_bytes += t.length;
        pos = t.end();
    }
    stats.copied_bytes += copy_range(&mut src, pos, len, &mut dst, &from, &to)?;
    let file = dst.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)
}

impl Source {
    /// The key LoRA deltas for this initializer are found under (weights only).
    fn lora_key(&self) -> Option<(Component, String)> {
        let component = self.component?.lora_component()?;
        let module = self.module.as_ref()?;
        (self.param.as_deref() == Some("weight")).then(|| (component, module.clone()))
    }
}

/// Copies bytes `start..end` of the template's data file.
fn copy_range(
    src: &mut File,
    start: u64,
    end: u64,
    dst: &mut impl Write,
    from: &Path,
    to: &Path,
) -> Result<u64, TemplateError> {
    if end <= start {
        return Ok(0);
    }
    src.seek(SeekFrom::Start(start))
        .map_err(|source| TemplateError::Read {
            path: from.to_path_buf(),
            source,
        })?;
    let copied =
        std::io::copy(&mut src.take(end - start), dst).map_err(|source| TemplateError::Write {
            path: to.to_path_buf(),
            source,
        })?;
    if copied != end - start {
        return Err(TemplateError::Data {
            path: from.to_path_buf(),
            detail: format!(
                "ended at byte {} while copying bytes {start}..{end}",
                start + copied
            ),
        });
    }
    Ok(copied)
}

fn write_f32(dst: &mut impl Write, values: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(CHUNK.min(values.len() * 4));
    for chunk in values.chunks(CHUNK / 4) {
        bytes.clear();
        bytes.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        dst.write_all(&bytes)?;
    }
    Ok(())
}

enum Failed {
    Checkpoint(CheckpointError),
    Shape(String),
}

/// The initializer's values: the source tensor's rows, plus the delta, transposed when asked.
fn initializer_values(
    t: &Initializer,
    source: &Source,
    reader: &mut Reader,
    delta: Option<&[f32]>,
) -> Result<Vec<f32>, Failed> {
    let shape = reader.shape(&source.key);
    let full = reader.tensor(&source.key).map_err(Failed::Checkpoint)?;
    let row: usize = shape.iter().skip(1).product::<u64>() as usize;
    let (start, end) = match source.rows {
        Some([s, e]) => (s as usize * row, e as usize * row),
        None => (0, full.len()),
    };
    if end > full.len() || end - start != t.elements() as usize {
        return Err(Failed::Shape(format!(
            "the checkpoint's {shape:?} tensor does not give the {:?} initializer (rows {:?})",
            t.shape, source.rows
        )));
    }
    let mut values = full[start..end].to_vec();
    if let Some(delta) = delta {
        if delta.len() != values.len() {
            return Err(Failed::Shape(format!(
                "the LoRA delta for {} has {} values, the weight {}",
                source.module.as_deref().unwrap_or_default(),
                delta.len(),
                values.len()
            )));
        }
        values.iter_mut().zip(delta).for_each(|(v, d)| *v += d);
    }
    if source.transpose {
        let d0 = match source.rows {
            Some([s, e]) => (e - s) as usize,
            None => shape.first().copied().unwrap_or(1) as usize,
        };
        values = tensors::transposed(&values, d0);
    }
    Ok(values)
}
