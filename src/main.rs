//! The `sdspool` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sdspool::app::config::Config;
use sdspool::app::logging::{self, LogFormat};

/// Overnight bulk Stable Diffusion rendering with ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "sdspool", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "SDSPOOL_CONFIG",
        default_value = "config.yaml"
    )]
    config: PathBuf,
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the spool daemon: claim jobs from incoming/, render them, file them in done/ or
    /// failed/. SIGTERM or SIGINT stop it gracefully.
    Run {
        /// Exit once incoming/ and running/ are empty instead of waiting for more jobs.
        #[arg(long)]
        until_idle: bool,
    },
    /// Load every configured model, check its signatures, and show the execution provider that
    /// serves each session.
    Models,
    /// Render one job file in the foreground, with a progress bar, and write its images.
    Render {
        /// The job file (YAML).
        job: PathBuf,
        /// Folder for the images (default: `<output_dir>/<job output>` from the config).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Initial latents `[candidates, 4, h/8, w/8]` (float32 .npy) instead of drawing them
        /// from the seeds; one-prompt jobs only.
        #[arg(long, value_name = "NPY")]
        latents: Option<PathBuf>,
        /// Per-step noise `[draws, candidates, 4, h/8, w/8]` (float32 .npy) for stochastic
        /// schedulers, instead of drawing it from the seeds.
        #[arg(long, value_name = "NPY")]
        step_noise: Option<PathBuf>,
        /// The device to render on (default: the first of `execution.device_ids`).
        #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
        device: Option<i32>,
    },
    /// Check a job file and copy it atomically into the spool's incoming/ folder.
    Submit {
        /// The job file (YAML).
        job: PathBuf,
        /// Replace a job of the same name still waiting in incoming/.
        #[arg(long)]
        replace: bool,
    },
    /// Show the spool: jobs per state, running jobs with progress, the queue in run order.
    Status {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause the spool: running jobs finish, no job starts until `sdspool resume` (a flag file
    /// in the spool: it holds across daemon restarts).
    Pause {
        /// Why, shown by `sdspool status`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused spool.
    Resume,
    /// Cancel a job: one still queued goes straight to failed/; a running one stops at its next
    /// step and goes to failed/ as cancelled, keeping its finished images and manifest.
    Cancel {
        /// The job's name in the spool (`cats`, `cats.yaml`) or a running job's id.
        job: String,
    },
    /// Check a job file and explain what it will render (no models are loaded).
    Check {
        /// The job file (YAML).
        job: PathBuf,
    },
    /// Render a fixed workload through the daemon's pipeline and report images per second,
    /// seconds per UNet step, time in ONNX Runtime against wall time, peak memory, time per
    /// phase and time to first image (a table, and JSON with --json).
    Bench(BenchArgs),
    /// Convert a single-file checkpoint (.safetensors or .ckpt, as AUTOMATIC1111 and ComfyUI
    /// use them), with LoRAs fused at their weights and an optional replacement VAE, into a
    /// model folder under the models directory, and add it to the configuration file.
    Import(ImportArgs),
    /// Serve the queue and job pages, /metrics, /healthz and /readyz without rendering (a
    /// viewer of a shared spool), until SIGTERM or SIGINT.
    Serve {
        /// Address to listen on (`HOST:PORT` or a port on 127.0.0.1); default `serve.listen`.
        #[arg(long)]
        listen: Option<String>,
    },
}

/// `sdspool bench` options; the defaults are the documented workload.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// A model name from the config, or a model folder (default: the config's default model).
    #[arg(long)]
    model: Option<String>,
    /// Prompts (fixed texts, see `sdspool::app::commands::bench::PROMPTS`).
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Candidates per prompt.
    #[arg(long, default_value_t = 2)]
    candidates: usize,
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Classifier-free guidance scale (1 or less: no guidance, half the UNet batch).
    #[arg(long, default_value_t = 7.5)]
    guidance: f32,
    /// Scheduler (default: the model's own).
    #[arg(long)]
    scheduler: Option<String>,
    /// Image size, WIDTHxHEIGHT.
    #[arg(long, default_value = "256x256")]
    size: String,
    /// Candidates per UNet batch (default: all candidates of a prompt in one batch).
    #[arg(long, alias = "max-batch")]
    batch: Option<usize>,
    /// ONNX Runtime intra-op threads (default: `execution.intra_threads`; 0 lets it choose).
    #[arg(long)]
    threads: Option<usize>,
    /// Measured runs of the whole workload.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Runs before the measured ones (not measured; the first run gives the cold figures).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Render without CLIP reranking.
    #[arg(long)]
    no_rerank: bool,
    /// Seed of candidate 0 of each prompt.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Folder for the images (kept); default `<output_dir>/bench-<pid>`, removed afterwards.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Keep the default output folder.
    #[arg(long)]
    keep: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The device to render on (default: the first of `execution.device_ids`).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    device: Option<i32>,
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// The checkpoint file.
    checkpoint: PathBuf,
    /// The model's name: its folder under the models directory and its key under `models:`.
    #[arg(long)]
    name: String,
    /// sd15, sd2, sdxl or sdxl-refiner (default: detected from the checkpoint's keys and shapes).
    #[arg(long)]
    family: Option<String>,
    /// A LoRA file fused into the UNet and text encoders, with its weight (default 1); repeatable.
    #[arg(long, value_name = "FILE[:WEIGHT]")]
    lora: Vec<String>,
    /// A replacement VAE (e.g. the float16-fixed SDXL VAE).
    #[arg(long, value_name = "FILE")]
    vae: Option<PathBuf>,
    /// Export in float16 (half the size; the SDXL VAE needs the fixed VAE or a float32 one).
    #[arg(long)]
    fp16: bool,
    /// Run onnx/optimize.py on the export (ONNX Runtime's fusions).
    #[arg(long)]
    optimize: bool,
    /// The provider --optimize fuses for: cpu (runs on CPU and CUDA) or cuda (CUDA-only fusions);
    /// default cuda when execution.providers lists tensorrt or cuda, else cpu.
    #[arg(long, value_name = "cpu|cuda", requires = "optimize")]
    optimize_target: Option<String>,
    /// Overwrite an existing model folder of that name.
    #[arg(long)]
    replace: bool,
    /// Where model folders go (default: local/models beside the configuration file).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// The folder with import_checkpoint.py (default: onnx/ beside the configuration file).
    #[arg(long, value_name = "DIR")]
    tools: Option<PathBuf>,
    /// template: through an import template the checkpoint fits (no Python; `import.templates`
    /// in the configuration, default <models dir>/.templates); python: through
    /// onnx/import_checkpoint.py; auto: a template when one fits and nothing it cannot do is
    /// asked (--fp16, --optimize, a pickled .ckpt, LoRA or VAE, a VAE in diffusers' layout),
    /// else Python.
    #[arg(long, value_name = "auto|template|python", default_value = "auto")]
    route: String,
    /// When no import template fits, build one first with onnx/build_import_template.py (Python,
    /// once per architecture) into the first template folder, then import through it.
    #[arg(long)]
    build_template: bool,
    /// Tests: replay this recorded transcript of a real conversion instead of running Python.
    #[arg(long, hide = true, requires = "replay_folder")]
    replay_transcript: Option<PathBuf>,
    /// Tests: the folder the recorded conversion wrote.
    #[arg(long, hide = true, requires = "replay_transcript")]
    replay_folder: Option<PathBuf>,
    /// Tests: milliseconds to wait before each replayed event.
    #[arg(long, hide = true, requires = "replay_transcript", default_value_t = 0)]
    replay_delay_ms: u64,
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = Config::load(&cli.config)
        .map_err(Failure::usage)
        .and_then(|config| execute(cli.command, &config, started));
    match result {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// Why a command failed: the error (with its causes) and the exit status.
struct Failure {
    error: anyhow::Error,
    /// 2: the configuration or ONNX Runtime could not be used; 1: the command failed.
    status: u8,
    /// Also log it (the daemon's failures go to its log as well as to standard error).
    log: bool,
}

impl Failure {
    fn usage(e: impl Into<anyhow::Error>) -> Failure {
        Failure {
            error: e.into(),
            status: 2,
            log: false,
        }
    }

    /// The one place a command's failure is printed: `sdspool: ` and the error with its cause
    /// chain on one line.
    fn report(self) -> ExitCode {
        let text = logging::error_chain(&self.error);
        if self.log {
            tracing::error!(error = %text, "sdspool stopped with an error");
        }
        eprintln!("sdspool: {text}");
        ExitCode::from(self.status)
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure {
            error: e.into(),
            status: 1,
            log: false,
        }
    }
}

type Outcome = Result<ExitCode, Failure>;

fn execute(command: Command, config: &Config, started: std::time::Instant) -> Outcome {
    match command {
        Command::Run { until_idle } => run(config, until_idle),
        Command::Models => models(config),
        Command::Render {
            job,
            output,
            latents,
            step_noise,
            device,
        } => {
            let noise = sdspool::app::commands::render::NoiseFiles {
                latents,
                step_noise,
            };
            render(config, &job, output.as_deref(), &noise, device)
        }
        Command::Submit { job, replace } => submit(config, &job, replace),
        Command::Status { json } => {
            print!("{}", sdspool::app::commands::status::run(config, json)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { reason } => pause(config, reason),
        Command::Resume => resume(config),
        Command::Cancel { job } => {
            let cancelled = sdspool::app::commands::control::cancel(config, &job)?;
            print!("{}", sdspool::app::commands::control::describe(&cancelled));
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { job } => {
            print!("{}", sdspool::app::commands::check::run(config, &job)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen } => {
            sdspool::app::web::serve(config, listen.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Import(args) => import(config, args),
        Command::Bench(args) => {
            bench(config, args, started)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(config: &Config, until_idle: bool) -> Outcome {
    sdspool::app::daemon::run(config, sdspool::app::daemon::DaemonOptions { until_idle }).map_err(
        |e| Failure {
            error: e,
            status: 1,
            log: true,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

fn models(config: &Config) -> Outcome {
    let runtime = config.runtime().map_err(Failure::usage)?;
    let mut out = String::new();
    let ok = sdspool::app::commands::models::run(config, &runtime, &mut out);
    print!("{out}");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render(
    config: &Config,
    job: &std::path::Path,
    output: Option<&std::path::Path>,
    noise: &sdspool::app::commands::render::NoiseFiles,
    device: Option<i32>,
) -> Outcome {
    let outcome = sdspool::app::commands::render::run(config, job, output, noise, device)?;
    for c in outcome.manifest.candidates() {
        let Some(file) = &c.file else { continue };
        match (c.rank, c.clip_score) {
            (Some(r), Some(s)) => println!(
                "{}\trank {r}\tCLIPScore {s:.2}",
                outcome.dir.join(file).display()
            ),
            _ => println!("{}", outcome.dir.join(file).display()),
        }
    }
    println!(
        "{}",
        outcome
            .dir
            .join(sdspool::jobs::run::manifest::FILE)
            .display()
    );
    Ok(ExitCode::SUCCESS)
}

fn submit(config: &Config, job: &std::path::Path, replace: bool) -> Outcome {
    let s = sdspool::app::commands::submit::run(config, job, replace)?;
    println!("{}", s.path.display());
    if s.waits_for_running {
        eprintln!("sdspool: a job of the same name is running; this one runs after it");
    }
    Ok(ExitCode::SUCCESS)
}

fn pause(config: &Config, reason: Option<String>) -> Outcome {
    match sdspool::app::commands::control::pause(config, reason)? {
        (record, true) => println!(
            "paused: running jobs finish, no job starts until `sdspool resume` ({})",
            record.by
        ),
        (record, false) => println!(
            "already paused since {} by {}",
            sdspool::spool::control::format_time(record.paused_at),
            record.by
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn resume(config: &Config) -> Outcome {
    match sdspool::app::commands::control::resume(config)? {
        Some(_) => println!("resumed: jobs start again"),
        None => println!("not paused"),
    }
    Ok(ExitCode::SUCCESS)
}

fn import(config: &Config, args: ImportArgs) -> Outcome {
    use sdspool::app::commands::import::{self, ConfigUpdate, ImportOptions};
    let family = match &args.family {
        Some(f) => Some(
            f.parse()
                .map_err(|e: String| Failure::usage(anyhow::anyhow!("--family: {e}")))?,
        ),
        None => None,
    };
    let optimize_target = match args.optimize_target {
        Some(t) => Some(
            t.parse()
                .map_err(|e: String| Failure::usage(anyhow::anyhow!("--optimize-target: {e}")))?,
        ),
        None => None,
    };
    let route = args
        .route
        .parse()
        .map_err(|e: String| Failure::usage(anyhow::anyhow!("--route: {e}")))?;
    let opts = ImportOptions {
        route,
        build_template: args.build_template,
        checkpoint: args.checkpoint,
        name: args.name,
        family,
        loras: args.lora,
        vae: args.vae,
        fp16: args.fp16,
        optimize: args.optimize,
        optimize_target,
        replace: args.replace,
        models_dir: args.models_dir,
        tools: args.tools,
        replay: args.replay_transcript.zip(args.replay_folder),
        replay_delay: std::time::Duration::from_millis(args.replay_delay_ms),
    };
    let done = import::run(config, &opts)?;
    println!(
        "imported {} ({}{}) into {}",
        opts.name,
        done.family,
        done.prediction_type
            .map(|p| format!(", {p}"))
            .unwrap_or_default(),
        done.folder.display()
    );
    match done.config {
        ConfigUpdate::Added => println!("added model {} to {}", opts.name, config.source.display()),
        ConfigUpdate::AlreadyThere => println!("{} already lists it", config.source.display()),
        ConfigUpdate::Manual { reason, lines } => {
            eprintln!(
                "sdspool: {} not updated: {reason}; add these lines:",
                config.source.display()
            );
            print!("{lines}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(config: &Config, args: BenchArgs, started: std::time::Instant) -> anyhow::Result<()> {
    use sdspool::app::commands::bench::{self, BenchOptions};
    let (width, height) =
        bench::parse_size(&args.size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    let scheduler = match &args.scheduler {
        Some(s) => Some(s.parse().map_err(|e| anyhow::anyhow!("--scheduler: {e}"))?),
        None => None,
    };
    let opts = BenchOptions {
        model: args.model,
        prompts: args.prompts,
        candidates: args.candidates,
        steps: args.steps,
        guidance: args.guidance,
        scheduler,
        width,
        height,
        batch: args.batch,
        threads: args.threads,
        runs: args.runs,
        warmup: args.warmup,
        rerank: !args.no_rerank,
        seed: args.seed,
        output: args.output,
        keep: args.keep,
        device: args.device,
    };
    let report = bench::run(config, &opts, started)?;
    print!("{}", bench::table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        std::fs::write(path, text).map_err(|e| {
            anyhow::anyhow!("{}: cannot write the JSON report: {e}", path.display())
        })?;
    }
    Ok(())
}
