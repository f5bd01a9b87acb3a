//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sdspool::config::ExecutionConfig;
use sdspool::runtime::Runtime;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed demo model folder.
pub fn model_dir(name: &str) -> PathBuf {
    root().join("onnx").join("models").join(name)
}

/// ONNX Runtime from the project-local folder (`make setup`), CPU provider, shared by the tests
/// of one test binary (ONNX Runtime is loaded once per process).
pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::init(None, &root(), &ExecutionConfig::default()).unwrap_or_else(|e| {
            panic!("ONNX Runtime must be installed for the tests (`make setup`): {e}")
        })
    })
}

/// Copies a folder tree (model folders are small).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A private copy of a committed model that a test may break.
pub fn model_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy_dir(&model_dir(name), &dir);
    (tmp, dir)
}
