//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod config_file;
pub mod import_golden;
pub mod served;
pub mod spool_env;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sdspool::app::config::ExecutionConfig;
use sdspool::runtime::Runtime;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A committed demo model folder.
pub fn model_dir(name: &str) -> PathBuf {
    root().join("onnx").join("models").join(name)
}

/// config.yaml with the small random-weight fixture `tiny-sd` as the default model: the tests
/// that run jobs load that model (config.yaml's own default is the trained demo model).
pub fn fixture_config() -> sdspool::app::config::Config {
    let mut c = sdspool::app::config::Config::load(&root().join("config.yaml")).unwrap();
    c.default_model = Some("tiny-sd".into());
    c
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

/// Runs the sdspool binary in `cwd` with `--config config` and `args`, logging warnings only;
/// Python must not run (`SDSPOOL_PYTHON` points nowhere), so what needs it fails loudly.
pub fn sdspool_without_python(
    cwd: &Path,
    config: &Path,
    args: &[&std::ffi::OsStr],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SDSPOOL_LOG", "warn")
        .env("SDSPOOL_PYTHON", "/nonexistent/python-must-not-run")
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// A finished command's stdout and stderr, for checks and failure messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Reads one HTTP request from `stream` (a webhook receiver's connection) until its whole body
/// (`Content-Length`) has come: the body, or `None` when the stream ended or timed out first.
pub fn read_request_body(stream: &mut impl std::io::Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        if body.len() >= len {
            return Some(body.to_string());
        }
    }
    None
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

/// Polls `ok` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The sorted file names in `dir` (none when it does not exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What an output root holds besides its gallery page (`index.html`, written after every job,
/// and its rows cache `.index-rows.json`): the job folders, and anything that should not be there.
pub fn output_entries(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n != "index.html" && n != ".index-rows.json")
        .collect()
}

/// Every path under `dir` (links not followed), relative to it.
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Waits for a child process to exit; panics after `timeout`.
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "the daemon did not exit within {timeout:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Everything the daemon wrote to its standard error, once it has exited (waits for that).
pub fn stderr_of(daemon: &mut Running) -> String {
    daemon
        .stderr
        .take()
        .map(|reader| reader.join().unwrap())
        .unwrap_or_default()
}

/// Whether `name` is a candidate's image under its final name: not a contact sheet, not an
/// `.sdspool-tmp-*` file still being written.
pub fn is_candidate_image(name: &str) -> bool {
    name.ends_with(".png") && !name.contains("-sheet") && !name.starts_with('.')
}

/// The `parameters` text chunk of a PNG (AUTOMATIC1111's settings line).
pub fn parameters_chunk(path: &Path) -> String {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return t.text.clone();
    }
    info.utf8_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .and_then(|t| t.get_text().ok())
        .unwrap_or_else(|| panic!("{}: no parameters chunk", path.display()))
}

/// A daemon that is killed when the test ends, passed or not (no orphans left running). Its
/// standard error is read on a thread as it comes, so a chatty daemon never blocks on a full pipe.
pub struct Running {
    child: std::process::Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts `command` with its standard error piped to [`stderr_of`].
    pub fn spawn(command: &mut std::process::Command) -> Running {
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            use std::io::Read;
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Running {
            child,
            stderr: Some(stderr),
        }
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.child
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.child
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Standard base64 (`=` padding) decoded: the recorded GPU draws are stored as base64 text in
/// the goldens.
pub fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut acc = 0u32;
        for (i, c) in data.iter().enumerate() {
            acc |= value(*c) << (18 - 6 * i);
        }
        for i in 0..data.len().saturating_sub(1) {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}
