//! config.yaml for tests, from typed settings: the one place that writes a test's configuration
//! file (the tests that check how config.yaml itself is parsed write their own text).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where ONNX Runtime comes from.
#[derive(Debug, Clone)]
pub enum Library {
    /// The project-local install (`make setup`).
    Local,
    /// This path (e.g. one that does not exist, for commands that must not load it).
    At(PathBuf),
}

/// Job defaults a test sets (`defaults:`).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub candidates: Option<u32>,
    pub max_batch: Option<u32>,
}

impl Defaults {
    /// 64x64 pictures, `steps` steps, `candidates` candidates: seconds per job on a CPU.
    pub fn small(steps: u32, candidates: u32) -> Defaults {
        Defaults {
            width: Some(64),
            height: Some(64),
            steps: Some(steps),
            candidates: Some(candidates),
            max_batch: None,
        }
    }
}

/// A test's config.yaml. Start from [`TestConfig::daemon`] or [`TestConfig::offline`], change
/// fields, then [`TestConfig::write`].
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub library: Library,
    pub spool_dir: PathBuf,
    pub rescan_seconds: Option<u64>,
    pub settle_seconds: Option<u64>,
    pub lease_seconds: Option<u64>,
    pub max_crashes: Option<u32>,
    pub output_dir: PathBuf,
    pub grace_seconds: Option<u64>,
    pub hang_seconds: Option<u64>,
    pub single_thread: bool,
    pub device_ids: Vec<i32>,
    /// `execution.devices.<id>.models`.
    pub device_models: Vec<(i32, Vec<String>)>,
    /// `execution.model_memory`, as written (`12GiB`).
    pub model_memory: Option<String>,
    pub defaults: Defaults,
    pub default_model: Option<String>,
    /// `models:`, by name.
    pub models: Vec<(String, PathBuf)>,
    pub rerank: Option<PathBuf>,
    /// `serve.listen` and `serve.control_token`.
    pub serve_listen: Option<String>,
    pub control_token: Option<String>,
    /// `notify:`: webhook URLs, their timeout and retries, and the command.
    pub webhooks: Vec<String>,
    pub webhook_timeout_seconds: Option<u64>,
    pub webhook_retries: Option<u64>,
    pub notify_command: Option<String>,
}

impl TestConfig {
    /// A daemon under `root`: the local ONNX Runtime, `root/spool` rescanned every second with no
    /// settle delay, `root/output`, the committed tiny-sd as the default model, tiny-clip for
    /// reranking.
    pub fn daemon(root: &Path) -> TestConfig {
        TestConfig {
            library: Library::Local,
            spool_dir: root.join("spool"),
            rescan_seconds: Some(1),
            settle_seconds: Some(0),
            lease_seconds: None,
            max_crashes: None,
            output_dir: root.join("output"),
            grace_seconds: None,
            hang_seconds: None,
            single_thread: false,
            device_ids: Vec::new(),
            device_models: Vec::new(),
            model_memory: None,
            defaults: Defaults::default(),
            default_model: Some("tiny-sd".into()),
            models: vec![("tiny-sd".into(), super::model_dir("tiny-sd"))],
            rerank: Some(super::model_dir("tiny-clip")),
            serve_listen: None,
            control_token: None,
            webhooks: Vec::new(),
            webhook_timeout_seconds: None,
            webhook_retries: None,
            notify_command: None,
        }
    }

    /// For commands that must not load ONNX Runtime: a library path that does not exist, tiny-sd,
    /// no reranking, the spool at `spool` beside the file, the output in `root/out`.
    pub fn offline(root: &Path) -> TestConfig {
        TestConfig {
            library: Library::At(root.join("no-such-libonnxruntime.so")),
            spool_dir: PathBuf::from("spool"),
            rescan_seconds: None,
            settle_seconds: None,
            output_dir: root.join("out"),
            default_model: None,
            rerank: None,
            ..TestConfig::daemon(root)
        }
    }

    /// Adds a committed model folder under its own name.
    pub fn with_model(mut self, name: &str) -> TestConfig {
        self.models.push((name.into(), super::model_dir(name)));
        self
    }

    /// The YAML text.
    pub fn yaml(&self) -> String {
        let mut y = String::new();
        let library = match &self.library {
            Library::Local => {
                sdspool::runtime::library::find_in_local_dir(&super::root().join(".ort")).unwrap()
            }
            Library::At(p) => p.clone(),
        };
        let _ = writeln!(y, "onnxruntime:\n  library: {}", library.display());
        self.execution(&mut y);
        let _ = writeln!(y, "spool:\n  dir: {}", self.spool_dir.display());
        let spool = [
            ("rescan_seconds", self.rescan_seconds),
            ("settle_seconds", self.settle_seconds),
            ("lease_seconds", self.lease_seconds),
            ("max_crashes", self.max_crashes.map(u64::from)),
        ];
        section_fields(&mut y, &spool);
        let _ = writeln!(y, "output_dir: {}", self.output_dir.display());
        let daemon = [
            ("grace_seconds", self.grace_seconds),
            ("hang_seconds", self.hang_seconds),
        ];
        if daemon.iter().any(|(_, v)| v.is_some()) {
            y.push_str("daemon:\n");
            section_fields(&mut y, &daemon);
        }
        self.job_defaults(&mut y);
        if let Some(m) = &self.default_model {
            let _ = writeln!(y, "default_model: {m}");
        }
        y.push_str("models:\n");
        for (name, path) in &self.models {
            let _ = writeln!(y, "  {name}:\n    path: {}", path.display());
        }
        if let Some(clip) = &self.rerank {
            let _ = writeln!(y, "rerank:\n  model: {}", clip.display());
        }
        self.web(&mut y);
        y
    }

    fn web(&self, y: &mut String) {
        if let Some(listen) = &self.serve_listen {
            let _ = writeln!(y, "serve:\n  listen: {listen}");
            if let Some(token) = &self.control_token {
                let _ = writeln!(y, "  control_token: {token}");
            }
        }
        if self.webhooks.is_empty() && self.notify_command.is_none() {
            return;
        }
        y.push_str("notify:\n");
        if !self.webhooks.is_empty() {
            let urls: Vec<String> = self.webhooks.iter().map(|u| format!("{u:?}")).collect();
            let _ = writeln!(y, "  webhooks: [{}]", urls.join(", "));
        }
        let timing = [
            ("timeout_seconds", self.webhook_timeout_seconds),
            ("retries", self.webhook_retries),
        ];
        section_fields(y, &timing);
        if let Some(cmd) = &self.notify_command {
            let _ = writeln!(y, "  command: {cmd}");
        }
    }

    fn execution(&self, y: &mut String) {
        if !self.single_thread && self.device_ids.is_empty() && self.model_memory.is_none() {
            return;
        }
        y.push_str("execution:\n");
        if let Some(m) = &self.model_memory {
            let _ = writeln!(y, "  model_memory: {m}");
        }
        if self.single_thread {
            y.push_str("  intra_threads: 1\n  inter_threads: 1\n");
        }
        if !self.device_ids.is_empty() {
            let ids: Vec<String> = self.device_ids.iter().map(i32::to_string).collect();
            let _ = writeln!(y, "  device_ids: [{}]", ids.join(", "));
        }
        if !self.device_models.is_empty() {
            y.push_str("  devices:\n");
            for (id, models) in &self.device_models {
                let _ = writeln!(y, "    {id}:\n      models: [{}]", models.join(", "));
            }
        }
    }

    fn job_defaults(&self, y: &mut String) {
        let d = &self.defaults;
        let fields = [
            ("width", d.width),
            ("height", d.height),
            ("steps", d.steps),
            ("candidates", d.candidates),
            ("max_batch", d.max_batch),
        ];
        if fields.iter().any(|(_, v)| v.is_some()) {
            y.push_str("defaults:\n");
            let fields = fields.map(|(k, v)| (k, v.map(u64::from)));
            section_fields(y, &fields);
        }
    }

    /// Writes `dir/config.yaml`; its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("config.yaml");
        std::fs::write(&path, self.yaml()).unwrap();
        path
    }
}

fn section_fields(y: &mut String, fields: &[(&str, Option<u64>)]) {
    for (key, value) in fields {
        if let Some(v) = value {
            let _ = writeln!(y, "  {key}: {v}");
        }
    }
}
