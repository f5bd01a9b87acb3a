//! The pinned Python tooling `sdspool import` drives: `onnx/import_checkpoint.py` and the venv
//! `onnx/.venv` made from `onnx/requirements.txt`, installed on first use as `make venv` does
//! (`python3 -m venv onnx/.venv`, then `pip install -r onnx/requirements.txt`; about 6 GB).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ImportError;

pub const SCRIPT: &str = "import_checkpoint.py";

/// The tool folder (`onnx/`): `--tools`, else `onnx/` beside the configuration file, else
/// `onnx/` in the current folder.
pub fn find(explicit: Option<&Path>, config_base: &Path) -> Result<PathBuf, ImportError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => vec![config_base.join("onnx"), PathBuf::from("onnx")],
    };
    candidates
        .iter()
        .find(|d| d.join(SCRIPT).is_file())
        .cloned()
        .ok_or(ImportError::NoTools { looked: candidates })
}

/// The interpreter: `$SDSPOOL_PYTHON` when set, else `<tools>/.venv/bin/python`, installed when
/// missing (its output goes to the terminal).
pub fn python(tools: &Path) -> Result<PathBuf, ImportError> {
    if let Some(p) = std::env::var_os("SDSPOOL_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let venv = tools.join(".venv");
    let python = venv.join("bin/python");
    if python.is_file() {
        return Ok(python);
    }
    eprintln!(
        "sdspool: installing the Python tooling into {} from {} (once; about 6 GB, a few minutes)",
        venv.display(),
        tools.join("requirements.txt").display()
    );
    let steps: [(String, Vec<String>); 2] = [
        (
            "python3".into(),
            vec!["-m".into(), "venv".into(), venv.display().to_string()],
        ),
        (
            venv.join("bin/pip").display().to_string(),
            vec![
                "install".into(),
                "--quiet".into(),
                "--disable-pip-version-check".into(),
                "-r".into(),
                tools.join("requirements.txt").display().to_string(),
            ],
        ),
    ];
    for (program, args) in steps {
        let status = Command::new(&program)
            .args(&args)
            .status()
            .map_err(|source| ImportError::Spawn {
                program: PathBuf::from(&program),
                source,
            })?;
        if !status.success() {
            return Err(ImportError::Install {
                command: format!("{program} {}", args.join(" ")),
                status: status.to_string(),
            });
        }
    }
    Ok(python)
}
