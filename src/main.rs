//! The `sdspool` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sdspool::config::Config;
use sdspool::logging::{self, LogFormat};
use sdspool::runtime::Runtime;

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
}

/// `sdspool bench` options; the defaults are the documented workload.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// A model name from the config, or a model folder (default: the config's default model).
    #[arg(long)]
    model: Option<String>,
    /// Prompts (fixed texts, see `sdspool::commands::bench::PROMPTS`).
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
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sdspool: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Submit { job, replace } => {
            match sdspool::commands::submit::run(&config, &job, replace) {
                Ok(s) => {
                    println!("{}", s.path.display());
                    if s.waits_for_running {
                        eprintln!(
                            "sdspool: a job of the same name is running; this one runs after it"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sdspool: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json } => match sdspool::commands::status::run(&config, json) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sdspool: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Pause { reason } => match sdspool::commands::control::pause(&config, reason) {
            Ok((record, true)) => {
                println!(
                    "paused: running jobs finish, no job starts until `sdspool resume` ({})",
                    record.by
                );
                ExitCode::SUCCESS
            }
            Ok((record, false)) => {
                println!(
                    "already paused since {} by {}",
                    sdspool::spool::control::format_time(record.paused_at),
                    record.by
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sdspool: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Resume => match sdspool::commands::control::resume(&config) {
            Ok(Some(_)) => {
                println!("resumed: jobs start again");
                ExitCode::SUCCESS
            }
            Ok(None) => {
                println!("not paused");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sdspool: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Cancel { job } => match sdspool::commands::control::cancel(&config, &job) {
            Ok(c) => {
                for f in &c.queued {
                    println!(
                        "cancelled {} before it started: {}",
                        c.stem,
                        f.job.display()
                    );
                }
                if c.running.is_some() {
                    println!(
                        "cancel requested for the running job {}: its daemon stops it at the next step and files it in failed/ (finished images and manifest kept)",
                        c.stem
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sdspool: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { job } => match sdspool::commands::check::run(&config, &job) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sdspool: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match bench(&config, args, started) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sdspool: {}", logging::error_chain(&e));
                ExitCode::FAILURE
            }
        },
        Command::Run { until_idle } => {
            match sdspool::daemon::run(&config, sdspool::daemon::DaemonOptions { until_idle }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let text = logging::error_chain(&e);
                    tracing::error!(error = %text, "sdspool stopped with an error");
                    eprintln!("sdspool: {text}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Models => {
            let runtime = match Runtime::init(
                config.onnxruntime.library.as_deref(),
                &config.base_dir(),
                &config.execution,
            ) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("sdspool: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut out = String::new();
            let ok = sdspool::commands::models::run(&config, &runtime, &mut out);
            print!("{out}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Render {
            job,
            output,
            latents,
            step_noise,
        } => {
            let noise = sdspool::commands::render::NoiseFiles {
                latents,
                step_noise,
            };
            match sdspool::commands::render::run(&config, &job, output.as_deref(), &noise) {
                Ok(outcome) => {
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
                        outcome.dir.join(sdspool::jobrun::manifest::FILE).display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sdspool: {}", logging::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn bench(config: &Config, args: BenchArgs, started: std::time::Instant) -> anyhow::Result<()> {
    use sdspool::commands::bench::{self, BenchOptions};
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
