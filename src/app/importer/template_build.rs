//! `sdspool import --build-template`: `onnx/build_import_template.py CHECKPOINT TEMPLATES_DIR`
//! (through the same tooling and venv as the Python conversion, see [`super::tools`]) builds the
//! import template of the checkpoint's architecture from its shapes, before the import goes
//! through it. Its standard output is one JSON event a line, as the conversion's: stages are
//! shown as they end, `{"event":"done","out":DIR}` names the template folder it wrote.

use std::path::{Path, PathBuf};

use super::ImportError;
use super::runner::run_tool;
use crate::engine::checkpoint::Family;

/// The builder, in the tool folder.
pub const SCRIPT: &str = "build_import_template.py";

/// Builds the template of `checkpoint` (read as `family`) into `templates`: the template folder.
pub fn build(
    python: &Path,
    script: &Path,
    tmp: &Path,
    checkpoint: &Path,
    templates: &Path,
    family: Family,
) -> Result<PathBuf, ImportError> {
    let args = [
        checkpoint.display().to_string(),
        templates.display().to_string(),
        "--family".into(),
        family.as_str().into(),
        // a template of the same signature that did not fit is a broken one: rebuilt
        "--replace".into(),
    ];
    run_tool(python, script, &args, tmp, |lines| {
        read_events(lines, templates)
    })
}

/// Reads the builder's events: stages shown as they end, the folder of `done`, or its error.
fn read_events(
    lines: &mut dyn Iterator<Item = String>,
    templates: &Path,
) -> Result<PathBuf, ImportError> {
    for line in lines {
        if line.trim().is_empty() {
            continue;
        }
        let event: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| ImportError::BadEvent {
                line: line.chars().take(300).collect(),
                error: e.to_string(),
            })?;
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_string();
        match event["event"].as_str() {
            Some("stage") if event["state"] == "done" => eprintln!(
                "  building the import template: {:<31} {:>8.1} s",
                text("stage"),
                event["seconds"].as_f64().unwrap_or(0.0)
            ),
            Some("done") => return Ok(PathBuf::from(text("out"))),
            Some("error") => {
                return Err(ImportError::Refused {
                    kind: text("kind"),
                    file: event["file"].as_str().map(str::to_string),
                    message: text("message"),
                    keys: serde_json::from_value(event["keys"].clone()).unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    Err(ImportError::NoResult {
        out: templates.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_builders_events_give_its_folder_or_its_error() {
        let done = lines(
            r#"{"event": "stage", "stage": "map", "state": "done", "seconds": 1.5}
{"event": "template", "out": "/t/sd15-0123456789ab", "required": 10, "ignored": 1}
{"event": "done", "out": "/t/sd15-0123456789ab"}"#,
        );
        let out = read_events(&mut done.into_iter(), Path::new("/t")).unwrap();
        assert_eq!(out, PathBuf::from("/t/sd15-0123456789ab"));
        let error = lines(
            r#"{"event": "error", "kind": "unknown_architecture", "file": "c.safetensors", "message": "m", "keys": ["a"]}"#,
        );
        let e = read_events(&mut error.into_iter(), Path::new("/t")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "c.safetensors: unknown_architecture: m (first keys: a)"
        );
        let e = read_events(&mut lines("Loading...").into_iter(), Path::new("/t")).unwrap_err();
        assert!(matches!(e, ImportError::BadEvent { .. }), "{e}");
        let e = read_events(&mut Vec::new().into_iter(), Path::new("/t")).unwrap_err();
        assert!(matches!(e, ImportError::NoResult { .. }), "{e}");
    }
}
