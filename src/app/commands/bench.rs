//! `sdspool bench`: renders a fixed workload through the daemon's own code (a job file loaded
//! and checked like any other, then [`Worker::run`]: the pipeline, the finishing thread with PNG
//! encoding, atomic writes, CLIP reranking, contact sheets and manifest) and reports where the
//! time went.
//!
//! The workload: `--prompts` prompts from [`PROMPTS`] (cycled, with ` (variant k)` appended past
//! the eighth), `--candidates` candidates each (seeds `--seed + i`), `--steps`, `--guidance`,
//! `--scheduler`, `--size`, no negative prompt, `--batch` candidates per UNet batch. Each run
//! renders the whole workload into a fresh folder; `--warmup` runs come first and are not
//! measured; the first run of all (warm-up or not) gives the cold time to first image, which
//! includes loading ONNX Runtime and creating the sessions.
//!
//! Per measured run: wall time, images per second, seconds per UNet call and per image-step,
//! runs and time of each ONNX Runtime session, the time during which any session ran (the union
//! over threads) and the rest (the pipeline's own overhead), time per phase, time to the first
//! image. The report gives the mean over the measured runs (so sums stay sums) and each run;
//! peak resident memory is the process's `VmHWM`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::app::config::{Config, ModelConfig};
use crate::engine::scheduler::SchedulerKind;
use crate::jobs::job;
use crate::jobs::run::{PhaseDurations, RunOptions, Worker};
use crate::runtime::Runtime;
use crate::runtime::clock::SessionClock;

/// The bench's prompts, in order.
pub const PROMPTS: [&str; 8] = [
    "a photo of a cat",
    "a watercolor painting of a lighthouse at dusk",
    "an astronaut riding a horse on the moon",
    "a bowl of ramen, studio lighting",
    "a red circle on a blue background",
    "an oil painting of a harbor in the rain",
    "a cozy cabin in a snowy forest",
    "a macro photograph of a dragonfly",
];

/// Prompt `i` of the workload.
pub fn prompt(i: usize) -> String {
    let base = PROMPTS[i % PROMPTS.len()];
    match i / PROMPTS.len() {
        0 => base.to_string(),
        k => format!("{base} (variant {k})"),
    }
}

/// What to render and how often.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// A model name from the config, or a model folder; default: the config's default model.
    pub model: Option<String>,
    pub prompts: usize,
    pub candidates: usize,
    pub steps: u32,
    pub guidance: f32,
    /// Default: the model's own.
    pub scheduler: Option<SchedulerKind>,
    pub width: u32,
    pub height: u32,
    /// Candidates per UNet batch; default: all candidates of a prompt in one batch.
    pub batch: Option<usize>,
    /// ONNX Runtime intra-op threads; default: `execution.intra_threads` of the config.
    pub threads: Option<usize>,
    pub runs: usize,
    pub warmup: usize,
    /// CLIP reranking (when the config has a rerank model).
    pub rerank: bool,
    pub seed: u64,
    /// Folder for the images; default `<output_dir>/bench-<pid>`, removed afterwards.
    pub output: Option<PathBuf>,
    /// Keep the images (always kept with `--output`).
    pub keep: bool,
    /// The device to render on; default: the first of `execution.device_ids`.
    pub device: Option<i32>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            model: None,
            prompts: 4,
            candidates: 2,
            steps: 20,
            guidance: 7.5,
            scheduler: None,
            width: 256,
            height: 256,
            batch: None,
            threads: None,
            runs: 3,
            warmup: 1,
            rerank: true,
            seed: 1234,
            output: None,
            keep: false,
            device: None,
        }
    }
}

/// Everything `sdspool bench` measured; serialised as its `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub sdspool_version: &'static str,
    pub onnxruntime_version: String,
    /// The provider ONNX Runtime runs the UNet on.
    pub provider: String,
    /// Logical CPUs the process may use.
    pub cpus: usize,
    /// Seconds since the Unix epoch when the bench started.
    pub started_unix: u64,
    pub workload: Workload,
    pub cold: Cold,
    /// Mean over the measured runs.
    pub mean: RunReport,
    pub runs: Vec<RunReport>,
    /// Peak resident memory of the process (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub model: String,
    pub model_path: String,
    pub prompts: usize,
    pub prompt_texts: Vec<String>,
    pub candidates: usize,
    pub images: usize,
    pub steps: u32,
    pub guidance: f32,
    pub scheduler: String,
    pub width: u32,
    pub height: u32,
    /// Candidates per UNet batch.
    pub batch: usize,
    /// Images in one UNet call (twice `batch` with guidance).
    pub unet_batch: usize,
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub graph_optimization: String,
    pub rerank: bool,
    /// The device it rendered on.
    pub device: i32,
    pub seed: u64,
    pub runs: usize,
    pub warmup: usize,
    pub output: String,
}

/// The first run of the process.
#[derive(Debug, Clone, Serialize)]
pub struct Cold {
    /// Loading ONNX Runtime and creating every session (and the rerank model's).
    pub load_s: f64,
    /// From the start of the command until the first image file of the first run was in place.
    pub first_image_s: f64,
}

/// Runs and time of one session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionTime {
    pub calls: f64,
    pub seconds: f64,
}

/// One run (or the mean of the measured runs).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub total_s: f64,
    pub images: f64,
    pub images_per_s: f64,
    pub seconds_per_image: f64,
    pub unet_calls: f64,
    /// UNet session time per call.
    pub unet_s_per_call: f64,
    /// UNet session time per image and step (a call of batch b counts b image-steps).
    pub unet_s_per_image_step: f64,
    /// The denoise phase outside the UNet session (scheduler, noise, tensors, guidance) per
    /// UNet call.
    pub denoise_overhead_s_per_call: f64,
    pub sessions: Sessions,
    /// Time during which at least one session ran (any thread).
    pub session_s: f64,
    /// `total_s - session_s`: the pipeline's own time.
    pub overhead_s: f64,
    pub overhead_pct: f64,
    pub phases: Phases,
    /// Sum of the render thread's phases (at most `total_s`).
    pub render_thread_s: f64,
    /// Sum of the finishing thread's phases (at most `total_s`; overlaps the render thread).
    pub finish_thread_s: f64,
    /// From the start of the run until its first image file was in place.
    pub first_image_s: f64,
}

/// Time per session. Both of SDXL's text encoders are text encoding (the `text_encode` phase);
/// `text_encoder_2` has no calls for a model without one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sessions {
    pub text_encoder: SessionTime,
    pub text_encoder_2: SessionTime,
    pub unet: SessionTime,
    pub vae_decoder: SessionTime,
    pub rerank: SessionTime,
}

/// Seconds per phase. Render thread: tokenize, text_encode, denoise, decode, handoff_wait,
/// finish_wait; finishing thread (beside it): rerank, png_encode, png_write, finish_other.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    pub tokenize: f64,
    pub text_encode: f64,
    pub denoise: f64,
    pub decode: f64,
    pub handoff_wait: f64,
    pub finish_wait: f64,
    pub rerank: f64,
    pub png_encode: f64,
    pub png_write: f64,
    pub finish_other: f64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Parses `256x256`, `512x768` or `256`.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?} is not a size; write WIDTHxHEIGHT, e.g. 256x256"))
    };
    match s.split_once(['x', 'X']) {
        Some((w, h)) => Ok((parse(w)?, parse(h)?)),
        None => {
            let v = parse(s)?;
            Ok((v, v))
        }
    }
}

/// Peak resident memory (`VmHWM` in /proc/self/status), KiB; 0 where there is none.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The model's name in the (cloned) config: a configured name, or a folder added as a model.
fn choose_model(config: &mut Config, wanted: Option<&str>) -> anyhow::Result<String> {
    let Some(wanted) = wanted else {
        return config
            .default_model
            .clone()
            .or_else(|| config.models.keys().next().cloned())
            .ok_or_else(|| anyhow::anyhow!("no model configured"));
    };
    if config.models.contains_key(wanted) {
        return Ok(wanted.to_string());
    }
    let path = Path::new(wanted);
    if path.is_dir() {
        let path = std::fs::canonicalize(path)?;
        let mut name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| crate::app::config::valid_model_name(n))
            .unwrap_or("bench-model")
            .to_string();
        if let Some(existing) = config.models.get(&name)
            && std::fs::canonicalize(&existing.path).ok().as_deref() != Some(path.as_path())
        {
            name = "bench-model".to_string();
        }
        config.models.insert(
            name.clone(),
            ModelConfig {
                path,
                vae: None,
                checkpoint: None,
            },
        );
        return Ok(name);
    }
    anyhow::bail!(
        "--model {wanted:?} is neither a configured model ({}) nor a model folder",
        config.models.keys().cloned().collect::<Vec<_>>().join(", ")
    )
}

/// The job file of the workload (JSON, which is YAML), loaded and checked like any job.
fn workload_job(
    config: &Config,
    dir: &Path,
    model: &str,
    opts: &BenchOptions,
) -> anyhow::Result<job::Job> {
    let prompts: Vec<String> = (0..opts.prompts).map(prompt).collect();
    let mut spec = serde_json::json!({
        "id": "bench",
        "model": model,
        "prompts": prompts,
        "candidates": opts.candidates,
        "steps": opts.steps,
        "guidance": opts.guidance,
        "seed": opts.seed,
        "width": opts.width,
        "height": opts.height,
        "rerank": opts.rerank,
    });
    if let Some(s) = opts.scheduler {
        spec["scheduler"] = serde_json::Value::String(s.to_string());
    }
    let file = dir.join("bench.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&spec)?)?;
    let mut job = job::load(&file, config)?;
    job.max_batch = opts.batch.unwrap_or(opts.candidates).max(1) as u32;
    Ok(job)
}

/// Runs the bench; `started` is when the command started (for the cold time to first image).
pub fn run(config: &Config, opts: &BenchOptions, started: Instant) -> anyhow::Result<BenchReport> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if opts.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    if opts.prompts == 0 || opts.candidates == 0 {
        anyhow::bail!("--prompts and --candidates must be at least 1");
    }
    let (config, model) = bench_config(config, opts)?;
    let (root, remove_root) = match &opts.output {
        Some(d) => (d.clone(), false),
        None => (
            config
                .output_dir
                .join(format!("bench-{}", std::process::id())),
            !opts.keep,
        ),
    };
    std::fs::create_dir_all(&root)?;
    let job = workload_job(&config, &root, &model, opts)?;

    let runtime = config.runtime()?;
    let device = opts.device.unwrap_or(config.execution.device_ids[0]);
    // Only what the workload needs: its model, and the rerank model when it reranks.
    let mut worker = Worker::new(&config, device, None);
    worker.prepare(&runtime, &job)?;
    let load_s = secs(started.elapsed());
    let bench = Bench {
        runtime: &runtime,
        model: &model,
        job: &job,
        root: &root,
        started,
    };
    let measured = bench.measure(&mut worker, opts)?;
    if remove_root {
        std::fs::remove_dir_all(&root)?;
    }
    Ok(BenchReport {
        sdspool_version: env!("CARGO_PKG_VERSION"),
        onnxruntime_version: runtime.version().to_string(),
        provider: worker.provider(&model).unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        started_unix,
        workload: bench.workload(&config, &worker, opts),
        cold: Cold {
            load_s,
            first_image_s: measured.cold_first_image.unwrap_or(f64::NAN),
        },
        mean: mean(&measured.runs),
        runs: measured.runs,
        peak_rss_kib: peak_rss_kib(),
    })
}

/// The config the bench renders with: the model chosen (a folder added as a model), and the
/// threads and reranking of the options.
fn bench_config(config: &Config, opts: &BenchOptions) -> anyhow::Result<(Config, String)> {
    let mut config = config.clone();
    let model = choose_model(&mut config, opts.model.as_deref())?;
    if let Some(t) = opts.threads {
        config.execution.intra_threads = t;
    }
    if !opts.rerank {
        config.rerank = None;
    }
    Ok((config, model))
}

/// One bench: the loaded runtime, the workload's job and where its runs write.
struct Bench<'a> {
    runtime: &'a Runtime,
    model: &'a str,
    job: &'a job::Job,
    root: &'a Path,
    /// When the command started.
    started: Instant,
}

/// The measured runs, and the first image's time of the first run from the command's start.
struct Measured {
    runs: Vec<RunReport>,
    cold_first_image: Option<f64>,
}

impl Bench<'_> {
    /// Renders the warm-up runs and the measured ones, each into its own folder.
    fn measure(&self, worker: &mut Worker, opts: &BenchOptions) -> anyhow::Result<Measured> {
        let images = self.job.image_count();
        let batches = opts.prompts * opts.candidates.div_ceil(self.job.max_batch as usize);
        let mut measured = Measured {
            runs: Vec::new(),
            cold_first_image: None,
        };
        for k in 0..opts.warmup + opts.runs {
            let warm = k < opts.warmup;
            let name = if warm {
                format!("warmup-{}", k + 1)
            } else {
                format!("run-{}", k - opts.warmup + 1)
            };
            let dir = self.root.join(&name);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            let clocks_before = worker.session_clocks(self.model);
            let busy_before = self.runtime.busy_time();
            let run_started = Instant::now();
            let options = RunOptions {
                dir: Some(dir.clone()),
                ..RunOptions::default()
            };
            let outcome = worker.run(self.job, &options, &AtomicBool::new(false), &mut |_| {})?;
            let total = run_started.elapsed();
            let busy = self.runtime.busy_time().saturating_sub(busy_before);
            let clocks: Vec<(&str, SessionClock)> = worker
                .session_clocks(self.model)
                .into_iter()
                .zip(&clocks_before)
                .map(|((n, after), (_, before))| (n, after.since(before)))
                .collect();
            if k == 0 {
                measured.cold_first_image = outcome
                    .phases
                    .first_image
                    .map(|d| secs(run_started.duration_since(self.started) + d));
            }
            let report = run_report(total, busy, &clocks, &outcome.phases, images, batches);
            eprintln!(
                "{name}: {:.2} s, {:.3} images/s, overhead {:.1} %",
                report.total_s, report.images_per_s, report.overhead_pct
            );
            if !warm {
                measured.runs.push(report);
            }
        }
        Ok(measured)
    }

    /// What was rendered, with which settings.
    fn workload(&self, config: &Config, worker: &Worker, opts: &BenchOptions) -> Workload {
        let guided = crate::engine::pipeline::is_guided(opts.guidance);
        let batch = self.job.max_batch as usize;
        Workload {
            model: self.model.to_string(),
            model_path: config.models[self.model].path.display().to_string(),
            prompts: opts.prompts,
            prompt_texts: self.job.prompts.iter().map(|p| p.text.clone()).collect(),
            candidates: opts.candidates,
            images: self.job.image_count(),
            steps: opts.steps,
            guidance: opts.guidance,
            scheduler: worker
                .scheduler_of(self.model, opts.scheduler)
                .map(|s| s.to_string())
                .unwrap_or_default(),
            width: opts.width,
            height: opts.height,
            batch,
            unet_batch: if guided { 2 * batch } else { batch },
            intra_threads: config.execution.intra_threads,
            inter_threads: config.execution.inter_threads,
            graph_optimization: config.execution.graph_optimization.to_string(),
            rerank: opts.rerank && worker.can_rerank(),
            device: worker.device,
            seed: opts.seed,
            runs: opts.runs,
            warmup: opts.warmup,
            output: self.root.display().to_string(),
        }
    }
}

fn run_report(
    total: Duration,
    busy: Duration,
    clocks: &[(&str, SessionClock)],
    phases: &PhaseDurations,
    images: usize,
    batches: usize,
) -> RunReport {
    let get = |name: &str| {
        clocks
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| SessionTime {
                calls: c.calls as f64,
                seconds: secs(c.time),
            })
            .unwrap_or_default()
    };
    let sessions = Sessions {
        text_encoder: get("text_encoder"),
        text_encoder_2: get("text_encoder_2"),
        unet: get("unet"),
        vae_decoder: get("vae_decoder"),
        rerank: get("rerank"),
    };
    let total_s = secs(total);
    // The busy clock is read outside the run; the run's own wall time bounds it.
    let session_s = secs(busy).min(total_s);
    let p = Phases {
        tokenize: secs(phases.tokenize),
        text_encode: secs(phases.text_encode),
        denoise: secs(phases.denoise),
        decode: secs(phases.decode),
        handoff_wait: secs(phases.handoff_wait),
        finish_wait: secs(phases.finish_wait),
        rerank: secs(phases.rerank),
        png_encode: secs(phases.png_encode),
        png_write: secs(phases.png_write),
        finish_other: secs(phases.finish_other),
    };
    let images_f = images as f64;
    let unet_calls = sessions.unet.calls;
    // Every batch runs the same schedule: a call of a batch of b candidates is b image-steps.
    let image_steps = images_f * unet_calls / batches.max(1) as f64;
    RunReport {
        total_s,
        images: images_f,
        images_per_s: images_f / total_s,
        seconds_per_image: total_s / images_f,
        unet_calls,
        unet_s_per_call: sessions.unet.seconds / unet_calls.max(1.0),
        unet_s_per_image_step: sessions.unet.seconds / image_steps.max(1.0),
        denoise_overhead_s_per_call: (p.denoise - sessions.unet.seconds).max(0.0)
            / unet_calls.max(1.0),
        session_s,
        overhead_s: total_s - session_s,
        overhead_pct: 100.0 * (total_s - session_s) / total_s,
        render_thread_s: p.tokenize
            + p.text_encode
            + p.denoise
            + p.decode
            + p.handoff_wait
            + p.finish_wait,
        finish_thread_s: p.rerank + p.png_encode + p.png_write + p.finish_other,
        first_image_s: phases.first_image.map(secs).unwrap_or(f64::NAN),
        phases: p,
        sessions,
    }
}

fn mean(runs: &[RunReport]) -> RunReport {
    let n = runs.len().max(1) as f64;
    let avg = |f: &dyn Fn(&RunReport) -> f64| runs.iter().map(f).sum::<f64>() / n;
    let session = |f: &dyn Fn(&RunReport) -> &SessionTime| SessionTime {
        calls: avg(&|r| f(r).calls),
        seconds: avg(&|r| f(r).seconds),
    };
    let total_s = avg(&|r| r.total_s);
    let session_s = avg(&|r| r.session_s);
    let images = avg(&|r| r.images);
    RunReport {
        total_s,
        images,
        images_per_s: images / total_s,
        seconds_per_image: total_s / images,
        unet_calls: avg(&|r| r.unet_calls),
        unet_s_per_call: avg(&|r| r.unet_s_per_call),
        unet_s_per_image_step: avg(&|r| r.unet_s_per_image_step),
        denoise_overhead_s_per_call: avg(&|r| r.denoise_overhead_s_per_call),
        sessions: Sessions {
            text_encoder: session(&|r| &r.sessions.text_encoder),
            text_encoder_2: session(&|r| &r.sessions.text_encoder_2),
            unet: session(&|r| &r.sessions.unet),
            vae_decoder: session(&|r| &r.sessions.vae_decoder),
            rerank: session(&|r| &r.sessions.rerank),
        },
        session_s,
        overhead_s: total_s - session_s,
        overhead_pct: 100.0 * (total_s - session_s) / total_s,
        phases: Phases {
            tokenize: avg(&|r| r.phases.tokenize),
            text_encode: avg(&|r| r.phases.text_encode),
            denoise: avg(&|r| r.phases.denoise),
            decode: avg(&|r| r.phases.decode),
            handoff_wait: avg(&|r| r.phases.handoff_wait),
            finish_wait: avg(&|r| r.phases.finish_wait),
            rerank: avg(&|r| r.phases.rerank),
            png_encode: avg(&|r| r.phases.png_encode),
            png_write: avg(&|r| r.phases.png_write),
            finish_other: avg(&|r| r.phases.finish_other),
        },
        render_thread_s: avg(&|r| r.render_thread_s),
        finish_thread_s: avg(&|r| r.finish_thread_s),
        first_image_s: avg(&|r| r.first_image_s),
    }
}

/// The report as a table for people.
pub fn table(r: &BenchReport) -> String {
    let mut out = table_header(r);
    out.push('\n');
    out.push_str(&table_figures(r));
    out.push('\n');
    out.push_str(&table_phases(&r.mean));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  runs: {}",
        r.runs
            .iter()
            .map(|x| format!("{:.3} s", x.total_s))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}

/// The workload and the runtime's settings.
fn table_header(r: &BenchReport) -> String {
    let w = &r.workload;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sdspool bench: model {} ({} on device {}), {}x{}, {} prompts x {} candidates = {} images, {} {} steps, guidance {}, UNet batch {}{}",
        w.model,
        r.provider,
        w.device,
        w.width,
        w.height,
        w.prompts,
        w.candidates,
        w.images,
        w.scheduler,
        w.steps,
        w.guidance,
        w.unet_batch,
        if w.rerank {
            ", CLIP rerank"
        } else {
            ", no rerank"
        }
    );
    let threads = |n: usize| {
        if n == 0 {
            "auto".to_string()
        } else {
            n.to_string()
        }
    };
    let _ = writeln!(
        out,
        "ONNX Runtime {}, intra-op threads {}, inter-op threads {}, graph optimization {}, {} CPUs; mean of {} runs after {} warm-up",
        r.onnxruntime_version,
        threads(w.intra_threads),
        threads(w.inter_threads),
        w.graph_optimization,
        r.cpus,
        w.runs,
        w.warmup
    );
    out
}

/// The headline figures, one per row.
fn table_figures(r: &BenchReport) -> String {
    let m = &r.mean;
    let rows = [
        ("wall time per run", format!("{:.3} s", m.total_s)),
        ("images per second", format!("{:.4}", m.images_per_s)),
        ("seconds per image", format!("{:.4}", m.seconds_per_image)),
        ("UNet calls per run", format!("{:.0}", m.unet_calls)),
        (
            "UNet s per call",
            format!("{:.5} (batch {})", m.unet_s_per_call, r.workload.unet_batch),
        ),
        (
            "UNet s per image-step",
            format!("{:.5}", m.unet_s_per_image_step),
        ),
        (
            "denoise outside UNet, per call",
            format!("{:.1} us", 1e6 * m.denoise_overhead_s_per_call),
        ),
        (
            "time in ONNX Runtime sessions",
            format!(
                "{:.3} s ({:.2} % of wall time)",
                m.session_s,
                100.0 * m.session_s / m.total_s
            ),
        ),
        (
            "pipeline overhead (wall - sessions)",
            format!("{:.3} s ({:.2} %)", m.overhead_s, m.overhead_pct),
        ),
        (
            "peak resident memory (VmHWM)",
            format!("{:.1} MiB", r.peak_rss_kib as f64 / 1024.0),
        ),
        (
            "first image, cold (load included)",
            format!(
                "{:.3} s (load {:.3} s)",
                r.cold.first_image_s, r.cold.load_s
            ),
        ),
        ("first image, warm", format!("{:.3} s", m.first_image_s)),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<36} {v}");
    }
    out
}

/// Time per phase of the render and finishing threads, beside time per session.
fn table_phases(m: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<22} {:>10} {:>8}   {:<26} {:>10} {:>8}",
        "render thread", "s", "%", "sessions", "s", "calls"
    );
    let pct = |v: f64| 100.0 * v / m.total_s;
    let left = [
        ("tokenize", m.phases.tokenize),
        ("text encode", m.phases.text_encode),
        ("denoise", m.phases.denoise),
        ("decode", m.phases.decode),
        ("hand-off wait", m.phases.handoff_wait),
        ("wait for finishing", m.phases.finish_wait),
        ("(sum)", m.render_thread_s),
    ];
    let s = &m.sessions;
    let right = [
        ("text_encoder", &s.text_encoder),
        ("text_encoder_2", &s.text_encoder_2),
        ("unet", &s.unet),
        ("vae_decoder", &s.vae_decoder),
        ("rerank (CLIP)", &s.rerank),
    ];
    for (i, &(ln, lv)) in left.iter().enumerate() {
        let mut line = format!("  {ln:<22} {lv:>10.4} {:>7.2}%", pct(lv));
        if let Some((rn, rv)) = right.get(i) {
            let _ = write!(line, "   {rn:<26} {:>10.4} {:>8.0}", rv.seconds, rv.calls);
        } else if i == right.len() {
            let _ = write!(
                line,
                "   {:<26} {:>10.4}",
                "(any session running)", m.session_s
            );
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "  {:<22} {:>10} {:>8}", "finishing thread", "s", "%");
    for (n, v) in [
        ("rerank", m.phases.rerank),
        ("PNG encode", m.phases.png_encode),
        ("PNG write", m.phases.png_write),
        ("manifest, sheets, rest", m.phases.finish_other),
        ("(sum)", m.finish_thread_s),
    ] {
        let _ = writeln!(out, "  {n:<22} {v:>10.4} {:>7.2}%", pct(v));
    }
    out
}
