//! Runs the conversion and reads its events: the Python tool (`onnx/import_checkpoint.py`), or —
//! for tests without Python — the recorded transcript of a real run of it replayed with the folder
//! that run wrote ([`Runner::Replay`]; it converts nothing, it stands in for the process).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::ImportError;
use super::events::{self, Event};
use crate::engine::checkpoint::Family;

/// What the conversion is asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub checkpoint: PathBuf,
    /// The folder the tool creates (inside the staging folder).
    pub out: PathBuf,
    pub name: String,
    pub family: Option<Family>,
    pub loras: Vec<(PathBuf, f32)>,
    pub vae: Option<PathBuf>,
    pub fp16: bool,
    /// Run onnx/optimize.py on the export, fusing for this provider.
    pub optimize: Option<OptimizeTarget>,
}

/// The provider `--optimize` fuses for (onnx/optimize.py `--target`): `cuda` enables fusions whose
/// operators only CUDA has (such a graph does not load on the CPU provider); `cpu` only those the
/// CPU provider has too (the graph runs on both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizeTarget {
    Cpu,
    Cuda,
}

impl OptimizeTarget {
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizeTarget::Cpu => "cpu",
            OptimizeTarget::Cuda => "cuda",
        }
    }

    /// `cuda` when the configuration asks for a GPU provider (tensorrt, cuda), else `cpu`.
    pub fn for_providers(providers: &[crate::runtime::config::ProviderKind]) -> Self {
        if providers.iter().any(|p| p.is_gpu()) {
            OptimizeTarget::Cuda
        } else {
            OptimizeTarget::Cpu
        }
    }
}

impl std::str::FromStr for OptimizeTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(OptimizeTarget::Cpu),
            "cuda" => Ok(OptimizeTarget::Cuda),
            _ => Err(format!("{s:?} is not cpu or cuda")),
        }
    }
}

/// Who converts.
#[derive(Debug, Clone)]
pub enum Runner {
    /// `python import_checkpoint.py …`, with its temporary files in `tmp`.
    Python {
        python: PathBuf,
        script: PathBuf,
        tmp: PathBuf,
    },
    /// The JSON lines of a recorded real run (its `done` event's `"$OUT"` stands for the output
    /// folder), and the folder that run wrote, copied to the output when the export stage ends.
    Replay {
        transcript: PathBuf,
        folder: PathBuf,
        /// A pause before each event (tests that stop an import part-way).
        delay: Duration,
    },
}

/// What a finished conversion reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    pub family: Option<String>,
    pub prediction_type: Option<String>,
    pub out: PathBuf,
}

fn arguments(r: &Request) -> Vec<String> {
    let mut args = vec![
        "--checkpoint".into(),
        r.checkpoint.display().to_string(),
        "--out".into(),
        r.out.display().to_string(),
        "--name".into(),
        r.name.clone(),
    ];
    if let Some(f) = r.family {
        args.extend(["--family".into(), f.as_str().into()]);
    }
    for (path, weight) in &r.loras {
        args.extend(["--lora".into(), format!("{}:{weight}", path.display())]);
    }
    if let Some(v) = &r.vae {
        args.extend(["--vae".into(), v.display().to_string()]);
    }
    args.extend(r.fp16.then(|| "--fp16".to_string()));
    if let Some(target) = r.optimize {
        args.extend([
            "--optimize".into(),
            "--target".into(),
            target.as_str().into(),
        ]);
    }
    args
}

/// Runs the conversion; `on_event` sees every event as it arrives.
pub fn run(
    runner: &Runner,
    request: &Request,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Converted, ImportError> {
    match runner {
        Runner::Python {
            python,
            script,
            tmp,
        } => run_python(python, script, tmp, request, on_event),
        Runner::Replay {
            transcript,
            folder,
            delay,
        } => replay(transcript, folder, *delay, request, on_event),
    }
}

fn run_python(
    python: &Path,
    script: &Path,
    tmp: &Path,
    request: &Request,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Converted, ImportError> {
    run_tool(python, script, &arguments(request), tmp, |lines| {
        drive(lines, request, on_event, &mut |_| Ok(()))
    })
}

/// Runs `python script args…` offline, in its own process group (which a signal stopping the
/// import kills whole), its temporary files in `tmp`; `read` takes its standard output line by
/// line. A tool that exits unsuccessfully without a result `read` understood is a
/// [`ImportError::ToolFailed`] with the end of its standard error.
pub fn run_tool<T>(
    python: &Path,
    script: &Path,
    args: &[String],
    tmp: &Path,
    read: impl FnOnce(&mut dyn Iterator<Item = String>) -> Result<T, ImportError>,
) -> Result<T, ImportError> {
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // its own process group, which a signal stopping the import kills whole (optimize.py too)
        .process_group(0)
        .spawn()
        .map_err(|source| ImportError::Spawn {
            program: python.to_path_buf(),
            source,
        })?;
    super::staging::set_conversion_group(Some(child.id()));
    let mut stderr = child.stderr.take().expect("piped");
    let tail = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all).into_owned();
        let start = text.len().saturating_sub(4000);
        text[text.ceil_char_boundary(start)..].to_string()
    });
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let result = read(&mut stdout.lines().map_while(Result::ok));
    if matches!(
        result,
        Err(ImportError::BadEvent { .. } | ImportError::WrongFolder { .. })
    ) {
        // stdout is no longer read: stop the tool rather than wait on a full pipe
        let _ = child.kill();
    }
    let status = child.wait().map_err(|source| ImportError::Spawn {
        program: python.to_path_buf(),
        source,
    });
    super::staging::set_conversion_group(None);
    super::staging::wait_if_stopping();
    let status = status?;
    let stderr_tail = tail.join().unwrap_or_default();
    match result {
        Err(ImportError::NoResult { .. }) | Ok(_) if !status.success() => {
            Err(ImportError::ToolFailed {
                status: status.to_string(),
                stderr_tail,
            })
        }
        other => other,
    }
}

fn replay(
    transcript: &Path,
    folder: &Path,
    delay: Duration,
    request: &Request,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Converted, ImportError> {
    let text = std::fs::read_to_string(transcript).map_err(|source| ImportError::Io {
        path: transcript.to_path_buf(),
        source,
    })?;
    let out = request.out.display().to_string();
    let lines = text.lines().map(|l| {
        std::thread::sleep(delay);
        l.replace("$OUT", &out)
    });
    let mut copy = |event: &Event| match event {
        Event::Stage {
            stage: events::Stage::Export,
            state: events::StageState::Done,
            ..
        } => copy_dir(folder, &request.out),
        _ => Ok(()),
    };
    drive(lines, request, on_event, &mut copy)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), ImportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(io(&entry.path()))?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(io(&target))?;
        }
    }
    Ok(())
}

/// Reads the events: progress to `on_event`, then the result of the `done` or `error` event.
fn drive(
    lines: impl Iterator<Item = String>,
    request: &Request,
    on_event: &mut dyn FnMut(&Event),
    side: &mut dyn FnMut(&Event) -> Result<(), ImportError>,
) -> Result<Converted, ImportError> {
    let mut converted = Converted {
        family: None,
        prediction_type: None,
        out: request.out.clone(),
    };
    for line in lines {
        let event = match events::parse(&line) {
            None => continue,
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                return Err(ImportError::BadEvent {
                    line: line.chars().take(300).collect(),
                    error: e.to_string(),
                });
            }
        };
        on_event(&event);
        side(&event)?;
        match event {
            Event::Detected {
                family,
                prediction_type,
            } => {
                converted.family = Some(family);
                converted.prediction_type = Some(prediction_type);
            }
            Event::Done { out } => {
                if Path::new(&out) != request.out {
                    return Err(ImportError::WrongFolder {
                        want: request.out.clone(),
                        got: out.into(),
                    });
                }
                return Ok(converted);
            }
            Event::Error {
                kind,
                file,
                message,
                keys,
            } => {
                return Err(ImportError::Refused {
                    kind,
                    file,
                    message,
                    keys,
                });
            }
            Event::Stage { .. } => {}
        }
    }
    Err(ImportError::NoResult {
        out: request.out.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::config::ProviderKind;

    fn request(optimize: Option<OptimizeTarget>) -> Request {
        Request {
            checkpoint: "c.safetensors".into(),
            out: "/m/.x.import-1/x".into(),
            name: "x".into(),
            family: None,
            loras: Vec::new(),
            vae: None,
            fp16: false,
            optimize,
        }
    }

    #[test]
    fn optimize_fuses_for_a_gpu_only_when_the_configuration_asks_for_one() {
        use ProviderKind::*;
        assert_eq!(OptimizeTarget::for_providers(&[Cpu]), OptimizeTarget::Cpu);
        assert_eq!(
            OptimizeTarget::for_providers(&[Cuda, Cpu]),
            OptimizeTarget::Cuda
        );
        assert_eq!(
            OptimizeTarget::for_providers(&[Tensorrt, Cuda, Cpu]),
            OptimizeTarget::Cuda
        );
        assert_eq!("cpu".parse(), Ok(OptimizeTarget::Cpu));
        assert!("gpu".parse::<OptimizeTarget>().is_err());
    }

    #[test]
    fn the_tool_gets_the_optimize_target() {
        let args = arguments(&request(Some(OptimizeTarget::Cpu)));
        assert!(args.ends_with(&["--optimize".into(), "--target".into(), "cpu".into()]));
        let args = arguments(&request(None));
        assert!(!args.iter().any(|a| a == "--optimize" || a == "--target"));
    }
}
