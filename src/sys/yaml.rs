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

/// Parses one YAML document into `T` with serde-saphyr's default budgets (depth 64, at most
/// 50,000 aliases, alias/anchor expansion ratio enforced, duplicate keys rejected).
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    parse_with(text, serde_saphyr::Options::default())
}

/// Budgets for small untrusted documents such as job files: shallow nesting, few aliases and
/// nodes, so an alias bomb or a nesting bomb is refused early.
pub fn strict_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 16;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 200_000;
    budget.max_events = 400_000;
    budget.max_recorded_anchor_events = 10_000;
    budget.max_recorded_anchor_bytes = 1 << 20;
    budget.max_documents = 1;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses one YAML document into `T` under the given options.
pub fn parse_with<T: DeserializeOwned>(
    text: &str,
    options: serde_saphyr::Options,
) -> Result<T, YamlError> {
    let mut key = String::new();
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // `?` stands for a map key not read yet (a duplicate key, a broken mapping): it
            // names nothing, so the path stops before it.
            let known = path
                .trim_end_matches('?')
                .trim_end_matches('.')
                .trim_end_matches('?');
            if !known.is_empty() && known != "." {
                key = known.to_string();
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
