//! Reading YAML into typed structs with errors that name the key, the line and the column.
//!
//! YAML comes from `serde-saphyr` (maintained, pure Rust, no unsafe; it bounds alias expansion,
//! nesting depth and document size through its budget options). `serde_path_to_error` adds the
//! dotted path of the key that failed, e.g. `execution.intra_threads`.

use serde::de::DeserializeOwned;

/// A YAML document that does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Dotted path of the failing key (`execution.providers[1]`), empty when the document
    /// itself is broken.
    pub key: String,
    /// Line and column, 1-based, when known.
    pub line: Option<(usize, usize)>,
    /// The parser's message with a snippet of the offending lines.
    pub message: String,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Parses one YAML document into `T`.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let mut key = String::new();
    serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            if path != "." {
                key = path;
            }
            e.into_inner()
        })
    })
    .map_err(|e| YamlError {
        key,
        line: e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize)),
        message: e.to_string(),
    })
}
