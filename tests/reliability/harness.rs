//! The real binary in a temporary spool: a config per test, daemons started with their log in a
//! file (a pipe nobody reads would block a busy daemon), and checks over what the spool and the
//! output folder hold at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::common;

/// What a test's config differs in.
#[derive(Debug, Clone)]
pub struct Settings {
    pub grace_seconds: u64,
    pub max_crashes: u32,
    pub rescan_seconds: u64,
    /// Default: `<root>/output`.
    pub output_dir: Option<PathBuf>,
    /// Default: the committed tiny-sd.
    pub model: Option<PathBuf>,
    pub rerank: bool,
    /// Default: the committed tiny-clip.
    pub rerank_model: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            grace_seconds: 5,
            max_crashes: 3,
            rescan_seconds: 1,
            output_dir: None,
            model: None,
            rerank: true,
            rerank_model: None,
        }
    }
}

pub struct Env {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    pub output: PathBuf,
    starts: std::cell::Cell<u32>,
}

impl Env {
    pub fn new(s: Settings) -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Env::at(tmp, root, s)
    }

    fn at(tmp: tempfile::TempDir, root: PathBuf, s: Settings) -> Env {
        let lib =
            sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort")).unwrap();
        let output = s.output_dir.clone().unwrap_or_else(|| root.join("output"));
        let model = s
            .model
            .clone()
            .unwrap_or_else(|| common::model_dir("tiny-sd"));
        let rerank = if s.rerank {
            let clip = s
                .rerank_model
                .clone()
                .unwrap_or_else(|| common::model_dir("tiny-clip"));
            format!("rerank:\n  model: {}\n", clip.display())
        } else {
            String::new()
        };
        let config = root.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "onnxruntime:\n  library: {lib}\nexecution:\n  intra_threads: 1\n  inter_threads: 1\n\
                 spool:\n  dir: {root}/spool\n  rescan_seconds: {rescan}\n  settle_seconds: 0\n  max_crashes: {crashes}\n\
                 output_dir: {output}\ndaemon:\n  grace_seconds: {grace}\n\
                 defaults:\n  width: 64\n  height: 64\n  steps: 2\n  candidates: 1\n\
                 default_model: tiny-sd\nmodels:\n  tiny-sd:\n    path: {model}\n{rerank}",
                lib = lib.display(),
                root = root.display(),
                rescan = s.rescan_seconds,
                crashes = s.max_crashes,
                output = output.display(),
                grace = s.grace_seconds,
                model = model.display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("spool/incoming")).unwrap();
        Env {
            _tmp: tmp,
            root,
            config,
            output,
            starts: std::cell::Cell::new(0),
        }
    }

    pub fn spool(&self, sub: &str) -> PathBuf {
        self.root.join("spool").join(sub)
    }

    /// The daemon's command line (without the program).
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            "--config".to_string(),
            self.config.display().to_string(),
            "run".to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Starts `sdspool run` with its log appended to `<root>/daemon-<n>.log`.
    pub fn start(&self, extra: &[&str]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdspool"));
        cmd.args(self.run_args(extra));
        self.spawn(cmd)
    }

    /// Starts a prepared command (e.g. wrapped in `unshare`) with the log in a file.
    pub fn spawn(&self, mut cmd: Command) -> Daemon {
        let n = self.starts.get() + 1;
        self.starts.set(n);
        let log = self.root.join(format!("daemon-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("SDSPOOL_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Drops a job the way users are told to: written elsewhere, renamed in.
    pub fn submit(&self, name: &str, body: &[u8]) {
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.spool("incoming").join(name)).unwrap();
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                self.kill9();
                panic!(
                    "the daemon did not exit within {timeout:?}; log:\n{}",
                    tail(&self.log_text(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory in KiB, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub use common::{is_candidate_image, names, tree, wait_for};

/// `.sdspool-tmp-*` files anywhere under `dir`.
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".sdspool-tmp-"))
        })
        .collect()
}

/// A small deterministic random source (splitmix64); the seed is printed so a run can be
/// repeated.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// A seed from the environment variable, else from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

pub fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Every inode each rendered candidate's image has had, by (job folder, file name), wherever
/// keep_top moved it: a candidate rendered again gets a second inode (images are written by
/// rename).
pub type ImageIds = BTreeMap<(String, String), BTreeSet<u64>>;

/// Adds the image files of every job folder under `output` to `ids`.
pub fn add_image_ids(output: &Path, ids: &mut ImageIds) {
    for job in names(output) {
        let dir = output.join(&job);
        for sub in [dir.clone(), dir.join("rejected")] {
            for name in names(&sub) {
                if !is_candidate_image(&name) {
                    continue;
                }
                if let Ok(m) = std::fs::symlink_metadata(sub.join(&name)) {
                    ids.entry((job.clone(), name)).or_default().insert(m.ino());
                }
            }
        }
    }
}

/// Problems found in a finished job's output folder: the manifest parses, is complete, lists
/// every candidate of every prompt with a file that exists and decodes (or is recorded as
/// deleted by keep_top), and no image lies there that the manifest does not list.
pub fn check_output(dir: &Path, prompts: usize, candidates: usize) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut decoded = 0;
    let text = match std::fs::read_to_string(dir.join("manifest.json")) {
        Ok(t) => t,
        Err(e) => return (0, vec![format!("{}: no manifest: {e}", dir.display())]),
    };
    let m: sdspool::jobs::run::manifest::Manifest = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => return (0, vec![format!("{}: manifest: {e}", dir.display())]),
    };
    if !m.complete {
        problems.push(format!("{}: manifest not complete", dir.display()));
    }
    if m.prompts.len() != prompts {
        problems.push(format!(
            "{}: {} prompts in the manifest, {prompts} in the job",
            dir.display(),
            m.prompts.len()
        ));
    }
    let mut listed = BTreeSet::new();
    for p in &m.prompts {
        let got: Vec<usize> = p.candidates.iter().map(|c| c.candidate).collect();
        if got != (0..candidates).collect::<Vec<_>>() {
            problems.push(format!(
                "{}: prompt {} lists candidates {got:?}",
                dir.display(),
                p.index
            ));
        }
        if !p.finished {
            problems.push(format!(
                "{}: prompt {} not finished",
                dir.display(),
                p.index
            ));
        }
        for c in &p.candidates {
            let Some(file) = &c.file else {
                if c.kept {
                    problems.push(format!(
                        "{}: kept candidate {} without a file",
                        dir.display(),
                        c.candidate
                    ));
                }
                continue;
            };
            listed.insert(file.clone());
            match image::open(dir.join(file)) {
                Ok(img) if img.width() > 0 => decoded += 1,
                Ok(_) => problems.push(format!("{}: {file} is empty", dir.display())),
                Err(e) => problems.push(format!("{}: {file} does not decode: {e}", dir.display())),
            }
        }
        if let Some(sheet) = &p.contact_sheet {
            listed.insert(sheet.clone());
            if let Err(e) = image::open(dir.join(sheet)) {
                problems.push(format!("{}: {sheet} does not decode: {e}", dir.display()));
            }
        }
    }
    for rel in tree(dir) {
        let s = rel.to_string_lossy().into_owned();
        if s.ends_with(".png") && !listed.contains(&s) {
            problems.push(format!("{}: {s} is not in the manifest", dir.display()));
        }
    }
    (decoded, problems)
}

/// The job names (stems) in each spool folder, and problems with the filing: a job file
/// without its side file or the other way round.
pub fn filed(spool: &Path) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let mut where_ = BTreeMap::<String, Vec<String>>::new();
    let mut problems = Vec::new();
    for folder in ["incoming", "running", "done", "failed"] {
        let dir = spool.join(folder);
        let all = names(&dir);
        let set: BTreeSet<&String> = all.iter().collect();
        for n in &all {
            if n.starts_with('.') {
                continue;
            }
            let side = if folder == "done" {
                ".result.yaml"
            } else {
                ".error.yaml"
            };
            if let Some(stem) = n.strip_suffix(side) {
                if (folder == "done" || folder == "failed")
                    && !set.contains(&format!("{stem}.yaml"))
                {
                    problems.push(format!("{folder}/{n} has no job file beside it"));
                }
                continue;
            }
            if let Some(stem) = n.strip_suffix(".yaml") {
                if (folder == "done" || folder == "failed")
                    && !set.contains(&format!("{stem}{side}"))
                {
                    problems.push(format!("{folder}/{n} has no {side} beside it"));
                }
                where_
                    .entry(stem.to_string())
                    .or_default()
                    .push(folder.to_string());
            }
        }
    }
    (where_, problems)
}

/// A line of figures for the README, printed by the tests (run with `--nocapture`).
pub fn report(what: &str, figures: &[(&str, String)]) {
    let mut s = format!("RELIABILITY {what}:");
    for (k, v) in figures {
        let _ = write!(s, " {k}={v}");
    }
    eprintln!("{s}");
}

/// Whether this process runs with uid 0 (from /proc/self/status: real, effective, ...).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
