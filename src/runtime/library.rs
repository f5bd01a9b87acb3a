//! Finding and loading the ONNX Runtime shared library.
//!
//! sdspool links ONNX Runtime at run time (`ort`'s `load-dynamic`), so the same binary serves
//! the CPU wheel and the GPU wheel. Places tried, in order:
//!
//! 1. `onnxruntime.library` in `config.yaml`;
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. the project-local folder `.ort/` beside the config file, where `make setup` installs the
//!    `onnxruntime` (or, with `GPU=1`, `onnxruntime-gpu`) wheel from PyPI.
//!
//! The first one that loads wins; each one that fails is logged. When none loads, the error lists
//! every place tried, why it failed, and the command that fixes it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable naming the library, as `ort` itself understands it.
pub const ENV_VAR: &str = "ORT_DYLIB_PATH";

/// Name of the project-local install folder, beside the config file.
pub const LOCAL_DIR: &str = ".ort";

/// The command that installs the library into the project-local folder.
pub const SETUP_COMMAND: &str = "make setup";

/// Where a candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Env,
    Local,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Config => "onnxruntime.library in the config",
            Source::Env => "ORT_DYLIB_PATH",
            Source::Local => "project-local folder",
        })
    }
}

/// One place that was tried and why it did not work.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub source: Source,
    pub path: PathBuf,
    pub reason: LoadFailure,
}

/// Why a candidate library did not load.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadFailure {
    #[error("is a folder with no onnxruntime/capi/libonnxruntime.so* inside (not installed yet?)")]
    EmptyFolder,
    #[error("does not exist")]
    Missing,
    /// `ort` refused it (wrong version, not a shared library); its message.
    #[error("{0}")]
    Init(String),
}

/// No ONNX Runtime library could be loaded.
#[derive(Debug)]
pub struct LibraryNotFound {
    pub attempts: Vec<Attempt>,
    pub local_dir: PathBuf,
}

impl fmt::Display for LibraryNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "could not load the ONNX Runtime library (libonnxruntime.so). Tried:"
        )?;
        for a in &self.attempts {
            writeln!(f, "  - {} ({}): {}", a.path.display(), a.source, a.reason)?;
        }
        write!(
            f,
            "Fix: run `{SETUP_COMMAND}` in the sdspool checkout to install the onnxruntime wheel into {} \
             (`{SETUP_COMMAND} GPU=1` for CUDA/TensorRT), or point `onnxruntime.library` in the config \
             or {ENV_VAR} at an existing libonnxruntime.so.1.31 or newer.",
            self.local_dir.display()
        )
    }
}

impl std::error::Error for LibraryNotFound {}

/// A loaded library.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub source: Source,
}

/// The candidates in the order they are tried. `configured` is `onnxruntime.library`, `env` the
/// value of `ORT_DYLIB_PATH`, `base` the config file's folder.
pub fn candidates(
    configured: Option<&Path>,
    env: Option<&std::ffi::OsStr>,
    base: &Path,
) -> Vec<(Source, PathBuf)> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push((Source::Config, p.to_path_buf()));
    }
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        out.push((Source::Env, PathBuf::from(v)));
    }
    let local = base.join(LOCAL_DIR);
    match find_in_local_dir(&local) {
        Some(p) => out.push((Source::Local, p)),
        None => out.push((Source::Local, local)),
    }
    out
}

/// Looks for `onnxruntime/capi/libonnxruntime.so*` below the project-local folder, as
/// `pip install --target` lays the wheel out.
pub fn find_in_local_dir(local: &Path) -> Option<PathBuf> {
    let capi = local.join("onnxruntime").join("capi");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    // Prefer the fully versioned name (the real file, not a link).
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// Tries each candidate in turn and initialises `ort` from the first that loads.
pub fn load(configured: Option<&Path>, base: &Path) -> Result<Loaded, LibraryNotFound> {
    let env = std::env::var_os(ENV_VAR);
    let mut attempts: Vec<Attempt> = Vec::new();
    for (source, path) in candidates(configured, env.as_deref(), base) {
        match try_load(&path) {
            Ok(()) => {
                for a in &attempts {
                    tracing::warn!(path = %a.path.display(), source = %a.source, reason = %a.reason, "skipped an ONNX Runtime library that did not load");
                }
                return Ok(Loaded { path, source });
            }
            Err(reason) => attempts.push(Attempt {
                source,
                path,
                reason,
            }),
        }
    }
    Err(LibraryNotFound {
        attempts,
        local_dir: base.join(LOCAL_DIR),
    })
}

fn try_load(path: &Path) -> Result<(), LoadFailure> {
    if path.is_dir() {
        return Err(LoadFailure::EmptyFolder);
    }
    if !path.exists() {
        return Err(LoadFailure::Missing);
    }
    ort::init_from(path)
        .map(|_| ())
        .map_err(|e| LoadFailure::Init(e.to_string()))
}
