//! `sdspool import`'s machinery below the command: the route it takes ([`route`]: an import
//! template the checkpoint fits, or Python), the import through a template ([`template_route`],
//! [`source_file`]; `--build-template` builds one first: [`template_build`]),
//! the events of the Python conversion ([`events`]), running it or replaying a recorded run
//! ([`runner`]), the tooling and its venv ([`tools`]), the disk-space estimate ([`disk`]) and the
//! configuration edit ([`config_edit`]).
//! The checks of the input files are in [`crate::engine::checkpoint`].

pub mod config_edit;
pub mod disk;
pub mod events;
pub mod route;
pub mod runner;
pub mod source_file;
pub mod staging;
pub mod template_build;
pub mod template_route;
pub mod tools;

use std::path::PathBuf;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Checkpoint(#[from] crate::engine::checkpoint::CheckpointError),
    #[error(transparent)]
    Template(Box<crate::engine::checkpoint::template::TemplateError>),
    #[error("deciding the prediction type on the imported UNet: {0}")]
    Prediction(#[from] crate::engine::checkpoint::prediction::PredictionError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the Python tooling failed ({status}): {command}")]
    Install { command: String, status: String },
    #[error("no import tool (onnx/import_checkpoint.py) in {}; pass --tools DIR", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or "))]
    NoTools { looked: Vec<PathBuf> },
    #[error("{}{kind}: {message}{}", file.as_ref().map(|f| format!("{f}: ")).unwrap_or_default(), if keys.is_empty() { String::new() } else { format!(" (first keys: {})", keys.join(", ")) })]
    Refused {
        kind: String,
        file: Option<String>,
        message: String,
        keys: Vec<String>,
    },
    #[error("the import tool failed ({status}); the end of its output:\n{stderr_tail}")]
    ToolFailed { status: String, stderr_tail: String },
    #[error("the import tool wrote a line that is not one of its events ({error}): {line}")]
    BadEvent { line: String, error: String },
    #[error("the import tool ended without a result for {}", out.display())]
    NoResult { out: PathBuf },
    #[error("the import tool wrote {} instead of {}", got.display(), want.display())]
    WrongFolder { want: PathBuf, got: PathBuf },
    #[error("{}: {reason}", path.display())]
    Refuse { path: PathBuf, reason: String },
}

impl From<crate::engine::checkpoint::template::TemplateError> for ImportError {
    fn from(e: crate::engine::checkpoint::template::TemplateError) -> Self {
        ImportError::Template(Box::new(e))
    }
}
