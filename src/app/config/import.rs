//! The `import:` section of config.yaml: where `sdspool import` looks for import templates
//! (see [`crate::engine::checkpoint::template`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `import:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportConfig {
    /// Folders holding template folders (`<family>-<sig>/template.json`), searched in order;
    /// `--build-template` writes into the first. Default: `.templates` in the models folder.
    pub templates: Option<Vec<PathBuf>>,
}

impl ImportConfig {
    /// The template folders for a models folder `models_dir`.
    pub fn template_dirs(&self, models_dir: &Path) -> Vec<PathBuf> {
        match &self.templates {
            Some(dirs) => dirs.clone(),
            None => vec![models_dir.join(".templates")],
        }
    }
}
