//! The small JSON files sdspool writes beside models and reads back (provenance, import
//! templates, weights maps): read under a size limit, parsed, and deserialized with the path of
//! the field that does not fit (`parts.unet.tensors[3].length`), so each reader's error names
//! the file and the field.

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Why a JSON file could not be read into its type.
#[derive(Debug)]
pub enum JsonFileError {
    /// Opening or reading it (`NotFound` among others).
    Read(std::io::Error),
    /// Not JSON.
    Syntax(serde_json::Error),
    /// JSON, but the field (dotted path) does not fit the type.
    Field { field: String, problem: String },
}

/// The JSON file `path` (its first `max` bytes) as a `T`.
pub fn read<T: DeserializeOwned>(path: &Path, max: u64) -> Result<T, JsonFileError> {
    let file = std::fs::File::open(path).map_err(JsonFileError::Read)?;
    let mut text = Vec::new();
    file.take(max)
        .read_to_end(&mut text)
        .map_err(JsonFileError::Read)?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(JsonFileError::Syntax)?;
    serde_path_to_error::deserialize(value).map_err(|e| JsonFileError::Field {
        field: e.path().to_string(),
        problem: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        parts: Vec<Part>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Part {
        length: u64,
    }

    #[test]
    fn each_failure_says_what_kind_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("doc.json");
        assert!(
            matches!(read::<Doc>(&path, 100), Err(JsonFileError::Read(e)) if e.kind() == std::io::ErrorKind::NotFound)
        );
        std::fs::write(&path, "{\"parts\": [").unwrap();
        assert!(matches!(
            read::<Doc>(&path, 100),
            Err(JsonFileError::Syntax(_))
        ));
        std::fs::write(&path, r#"{"parts": [{"length": 1}, {"length": "x"}]}"#).unwrap();
        match read::<Doc>(&path, 100) {
            Err(JsonFileError::Field { field, .. }) => assert_eq!(field, "parts[1].length"),
            other => panic!("{other:?}"),
        }
        // cut at the limit: no longer JSON
        assert!(matches!(
            read::<Doc>(&path, 10),
            Err(JsonFileError::Syntax(_))
        ));
    }
}
