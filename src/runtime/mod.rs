//! ONNX Runtime: loading the library, choosing execution providers, creating sessions and
//! reporting which provider really serves each one.

pub mod assignment;
pub mod binding;
pub mod clock;
pub mod config;
pub mod graphs;
pub mod library;
pub mod onnx_inputs;
pub mod providers;
pub mod signature;
pub mod tensorrt;
pub mod tensors;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, RunOptions, Session, SessionInputs, SessionOutputs};

use crate::runtime::config::{ExecutionConfig, GraphOptimization};
use assignment::Assignment;
use binding::{BindingSpec, Bound, Placement};
use clock::{BusyClock, SessionClock};
use graphs::{BindingCache, GraphChoice, GraphIds};
use providers::{ProviderKind, Registration};

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Library(#[from] library::LibraryNotFound),
    #[error("ONNX Runtime could not start its environment: {0}")]
    Environment(String),
    #[error("{file}: ONNX Runtime could not load this model: {message}")]
    Session { file: PathBuf, message: String },
    #[error(
        "{file}: `execution.require_gpu` is true but no GPU provider serves this model (it runs on {serving}). {hint}"
    )]
    GpuRequired {
        file: PathBuf,
        /// Where the nodes landed, e.g. `cpu (CPUExecutionProvider 156 nodes)`.
        serving: String,
        /// Why each GPU provider did not load.
        hint: String,
    },
}

/// The loaded ONNX Runtime and the execution settings sessions are built with.
pub struct Runtime {
    library: library::Loaded,
    version: String,
    env: Environment,
    exec: ExecutionConfig,
    /// Wall time with at least one session run in progress (see [`clock`]).
    busy: Arc<BusyClock>,
    /// TensorRT's version when it is configured (the engine cache key), else empty.
    trt_version: String,
    /// The TensorRT sessions being created now (engine builds may take minutes), with when
    /// each began.
    trt_building: std::sync::Mutex<Vec<(PathBuf, Instant)>>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("version", &self.version)
            .finish()
    }
}

impl Runtime {
    /// Finds and loads ONNX Runtime (see [`library`]) and starts its environment.
    pub fn init(
        configured_library: Option<&Path>,
        base_dir: &Path,
        exec: &ExecutionConfig,
    ) -> Result<Runtime, RuntimeError> {
        let loaded = library::load(configured_library, base_dir)?;
        if exec.providers.contains(&ProviderKind::Cuda)
            || exec.providers.contains(&ProviderKind::Tensorrt)
        {
            providers::preload_pip_cuda(&loaded.path);
        }
        if exec.providers.contains(&ProviderKind::Tensorrt) {
            // Made beforehand: whether the TensorRT provider creates missing folders (and their
            // parents) depends on its version.
            let t = &exec.tensorrt;
            for dir in [&t.engine_cache, &t.timing_cache].into_iter().flatten() {
                if let Err(e) = std::fs::create_dir_all(dir) {
                    tracing::warn!(folder = %dir.display(), error = %e, "cannot create the TensorRT cache folder");
                }
            }
        }
        let env = ort::init()
            .with_name("sdspool")
            .with_telemetry(false)
            .build()
            .map_err(|e| RuntimeError::Environment(e.to_string()))?;
        let version = ort_version(&loaded.path);
        tracing::info!(library = %loaded.path.display(), source = %loaded.source, version = %version, "loaded ONNX Runtime");
        let trt_version = if exec.providers.contains(&ProviderKind::Tensorrt) {
            let v = tensorrt::version_in(&tensorrt::library_dirs(&loaded.path));
            tracing::info!(version = %v, "TensorRT version (the engine cache key)");
            v
        } else {
            String::new()
        };
        Ok(Runtime {
            library: loaded,
            version,
            env,
            exec: exec.clone(),
            busy: Arc::new(BusyClock::default()),
            trt_version,
            trt_building: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Wall time so far during which at least one of this runtime's sessions was running, on
    /// any thread (overlapping runs counted once).
    pub fn busy_time(&self) -> Duration {
        self.busy.total()
    }

    pub fn library_path(&self) -> &Path {
        &self.library.path
    }

    /// ONNX Runtime's version string, e.g. `1.31.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The execution settings sessions are built with.
    pub fn execution(&self) -> &ExecutionConfig {
        &self.exec
    }

    /// The TensorRT session being created for the longest time now (its engine may be
    /// building), and for how long: for the service manager's status line.
    pub fn tensorrt_building(&self) -> Option<(PathBuf, Duration)> {
        let building = self.trt_building.lock().unwrap_or_else(|e| e.into_inner());
        building
            .iter()
            .min_by_key(|(_, since)| *since)
            .map(|(file, since)| (file.clone(), since.elapsed()))
    }

    /// Which configured providers the loaded library was built with.
    pub fn built_providers(&self) -> Vec<(ProviderKind, bool)> {
        self.exec
            .providers
            .iter()
            .map(|p| (*p, providers::is_built(*p)))
            .collect()
    }

    /// Creates a session for `file` on `device_id` with the configured providers, in order, and
    /// reports what serves it. With `execution.require_gpu`, a session that no GPU provider
    /// serves is an error that says why. With `execution.optimized_model_dir`, ONNX Runtime also
    /// writes the optimised graph there ([`Runtime::optimized_model_path`]); when it cannot, the
    /// session is created without saving and a warning says why.
    pub fn session(&self, file: &Path, device_id: i32) -> Result<LoadedSession, RuntimeError> {
        self.session_with(file, device_id, &SessionPlan::default())
    }

    /// [`Runtime::session`] for a part with its own [`SessionPlan`] (CUDA graphs, a TensorRT
    /// profile).
    pub fn session_with(
        &self,
        file: &Path,
        device_id: i32,
        plan: &SessionPlan,
    ) -> Result<LoadedSession, RuntimeError> {
        self.session_overriding(file, device_id, plan, &[])
    }

    /// [`Runtime::session_with`] with some of the graph's external initializers replaced by
    /// values from memory (same name, shape and type; ONNX Runtime's `AddExternalInitializers`):
    /// a model with LoRAs applied. Such a session's optimised graph is not saved (it would stand
    /// for the model without them).
    pub fn session_overriding(
        &self,
        file: &Path,
        device_id: i32,
        plan: &SessionPlan,
        initializers: &[(String, Arc<ort::value::DynValue>)],
    ) -> Result<LoadedSession, RuntimeError> {
        let watch = self.tensorrt_watch(file, plan);
        let created = self.create(file, device_id, plan, initializers);
        if let Some(watch) = watch {
            self.tensorrt_done(file, watch, created.is_ok());
        }
        let (session, registrations) = created?;
        let assignment = assignment::read(&session);
        let report = ProviderReport {
            registrations,
            assignment,
        };
        if self.exec.require_gpu && !report.gpu_serves() {
            return Err(RuntimeError::GpuRequired {
                file: file.to_path_buf(),
                serving: report.serving_summary(),
                hint: report.gpu_hint(),
            });
        }
        let placement = if report.gpu_serves() {
            Placement::Cuda(device_id)
        } else {
            Placement::Host
        };
        let graphs = GraphIds::new(
            providers::captures_cuda_graphs(&self.exec, plan) && placement != Placement::Host,
            self.exec.cuda.max_graphs,
        );
        Ok(LoadedSession {
            session,
            file: file.to_path_buf(),
            providers: report,
            clock: SessionClock::default(),
            busy: Arc::clone(&self.busy),
            io_binding: self.exec.io_binding,
            placement,
            bindings: Box::new(BindingCache::new(graphs)),
        })
    }
}

impl Runtime {
    /// Before creating a session that TensorRT may serve: its engine folder made and its files
    /// noted, the creation logged and listed as building. None without TensorRT.
    fn tensorrt_watch(&self, file: &Path, plan: &SessionPlan) -> Option<tensorrt::BuildWatch> {
        if !self.exec.providers.contains(&ProviderKind::Tensorrt)
            || !providers::is_built(ProviderKind::Tensorrt)
        {
            return None;
        }
        let t = &self.exec.tensorrt;
        let engine_dir = t.engine_cache.as_ref().map(|root| match &plan.tensorrt {
            Some(p) => p.engine_dir(root, &self.trt_version),
            None => root.clone(),
        });
        let timing_dir = t
            .timing_cache
            .as_ref()
            .map(|root| tensorrt::timing_dir(root, &self.trt_version));
        for dir in engine_dir.iter().chain(timing_dir.iter()) {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(folder = %dir.display(), error = %e, "cannot create the TensorRT cache folder");
            }
        }
        let profile = plan.tensorrt.as_ref().and_then(|p| p.profile.as_ref());
        tracing::info!(
            file = %file.display(),
            engine_cache = %engine_dir.as_deref().map(|d| d.display().to_string()).unwrap_or_else(|| "none".into()),
            profile_min = %profile.map(|p| p.min_shapes()).unwrap_or_default(),
            profile_opt = %profile.map(|p| p.opt_shapes()).unwrap_or_default(),
            profile_max = %profile.map(|p| p.max_shapes()).unwrap_or_default(),
            "creating a TensorRT session (its engine is built unless cached; this may take minutes)"
        );
        let watch = tensorrt::BuildWatch::start(engine_dir);
        self.trt_building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((file.to_path_buf(), watch.started));
        Some(watch)
    }

    /// After creating a session that TensorRT may serve: how long it took and whether the
    /// engine came from the cache, logged.
    fn tensorrt_done(&self, file: &Path, watch: tensorrt::BuildWatch, created: bool) {
        self.trt_building
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(f, since)| !(f == file && *since == watch.started));
        let seconds = watch.started.elapsed().as_secs_f64();
        if !created {
            tracing::warn!(file = %file.display(), seconds, "the TensorRT session could not be created");
            return;
        }
        match watch.outcome() {
            Some(tensorrt::CacheOutcome::Hit { engines }) => {
                tracing::info!(file = %file.display(), seconds, engines, "TensorRT engine cache hit: loaded the cached engines")
            }
            Some(tensorrt::CacheOutcome::Built { written }) => {
                tracing::info!(file = %file.display(), seconds, written = %written.join(", "), "TensorRT engine cache miss: built the engines and saved them for the next start")
            }
            Some(tensorrt::CacheOutcome::NoEngine) => {
                tracing::info!(file = %file.display(), seconds, "TensorRT session created without an engine in the cache (TensorRT serves no part of it)")
            }
            None => {
                tracing::info!(file = %file.display(), seconds, "TensorRT session created; without `execution.tensorrt.engine_cache` its engines are built again at every start")
            }
        }
    }

    /// Creates the session, saving the optimized graph when configured.
    fn create(
        &self,
        file: &Path,
        device_id: i32,
        plan: &SessionPlan,
        initializers: &[(String, Arc<ort::value::DynValue>)],
    ) -> Result<(Session, Vec<(ProviderKind, Registration)>), RuntimeError> {
        let session_err = |message: String| RuntimeError::Session {
            file: file.to_path_buf(),
            message,
        };
        let save = self
            .optimized_model_path(file)
            .filter(|_| initializers.is_empty());
        Ok(match &save {
            Some(path) => {
                let prepared = path
                    .parent()
                    .map(std::fs::create_dir_all)
                    .unwrap_or(Ok(()))
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))
                    .and_then(|()| {
                        self.build_session(file, device_id, plan, Some(path), initializers)
                            .map_err(|e| e.to_string())
                    });
                match prepared {
                    Ok(built) => {
                        tracing::info!(file = %file.display(), optimized = %path.display(), "saved the optimized model");
                        built
                    }
                    Err(reason) => {
                        // A model that does not load at all fails again here, with its own error.
                        let built = self
                            .build_session(file, device_id, plan, None, initializers)
                            .map_err(|e| session_err(e.to_string()))?;
                        tracing::warn!(file = %file.display(), optimized = %path.display(), reason = %reason, "could not save the optimized model; the session runs without it");
                        built
                    }
                }
            }
            None => self
                .build_session(file, device_id, plan, None, initializers)
                .map_err(|e| session_err(e.to_string()))?,
        })
    }

    /// Where `execution.optimized_model_dir` puts the optimised graph of `file`: the model file's
    /// last two folders and its name below the configured folder, e.g.
    /// `<dir>/tiny-sd/unet/model.onnx` for `.../tiny-sd/unet/model.onnx`. `None` when not
    /// configured.
    pub fn optimized_model_path(&self, file: &Path) -> Option<PathBuf> {
        let dir = self.exec.optimized_model_dir.as_ref()?;
        let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        let mut tail: Vec<&std::ffi::OsStr> = real
            .iter()
            .rev()
            .filter(|c| !c.is_empty() && *c != "/")
            .take(3)
            .collect();
        tail.reverse();
        Some(tail.iter().fold(dir.clone(), |p, c| p.join(c)))
    }

    /// A session builder with the configured options and providers, committed from `file`.
    fn build_session(
        &self,
        file: &Path,
        device_id: i32,
        plan: &SessionPlan,
        save_optimized: Option<&Path>,
        initializers: &[(String, Arc<ort::value::DynValue>)],
    ) -> ort::Result<(Session, Vec<(ProviderKind, Registration)>)> {
        let mut builder =
            Session::builder(&self.env)?.with_config_entry(assignment::RECORD_KEY, "1")?;
        for (name, value) in initializers {
            builder = builder.with_external_initializer(name, Arc::clone(value))?;
        }
        if self.exec.intra_threads > 0 {
            builder = builder.with_intra_threads(self.exec.intra_threads)?;
        }
        if self.exec.inter_threads > 0 {
            builder = builder.with_inter_threads(self.exec.inter_threads)?;
        }
        if let Some(path) = save_optimized {
            // Weights go to a file beside it, so models over 2 GB can be saved too.
            let data = format!(
                "{}.data",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model.onnx".into())
            );
            builder = builder
                .with_optimized_model_path(path)?
                .with_config_entry(
                    "session.optimized_model_external_initializers_file_name",
                    data,
                )?
                .with_config_entry(
                    "session.optimized_model_external_initializers_min_size_in_bytes",
                    "1024",
                )?;
        }

        let mut registrations = Vec::new();
        for &kind in &self.exec.providers {
            if !providers::is_built(kind) {
                registrations.push((kind, Registration::NotBuilt));
                continue;
            }
            let ep = providers::dispatch(kind, &self.exec, device_id, plan, &self.trt_version);
            match builder.with_execution_providers([ep]) {
                Ok(b) => {
                    builder = b;
                    registrations.push((kind, Registration::Registered));
                }
                Err(e) => {
                    let reason = e.message().trim().to_string();
                    builder = e.recover();
                    registrations.push((kind, Registration::Failed(reason)));
                }
            }
        }
        let tensorrt = registrations.contains(&(ProviderKind::Tensorrt, Registration::Registered));
        builder = builder
            .with_optimization_level(optimization_level(self.exec.graph_optimization, tensorrt))?;
        let session = builder.commit_from_file(file)?;
        Ok((session, registrations))
    }
}

/// ONNX Runtime's graph optimisation level: as configured, but none for a session the
/// TensorRT provider serves (TensorRT optimises the graph itself; ONNX Runtime's fusions would
/// only hand it operators it does not know, as ONNX Runtime's Stable Diffusion demo notes).
fn optimization_level(configured: GraphOptimization, tensorrt: bool) -> GraphOptimizationLevel {
    if tensorrt {
        return GraphOptimizationLevel::Disable;
    }
    match configured {
        GraphOptimization::Disable => GraphOptimizationLevel::Disable,
        GraphOptimization::Basic => GraphOptimizationLevel::Level1,
        GraphOptimization::Extended => GraphOptimizationLevel::Level2,
        GraphOptimization::All => GraphOptimizationLevel::All,
    }
}

/// ONNX Runtime's version: from the library's file name (`libonnxruntime.so.1.31.1`, after
/// following links), else from the build info's release branch.
fn ort_version(library: &Path) -> String {
    let real = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
    let from_name = real
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .filter(|v| {
            v.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
        .map(str::to_string);
    from_name.unwrap_or_else(|| {
        ort::info()
            .split(|c: char| c == ',' || c.is_whitespace())
            .find_map(|part| part.strip_prefix("git-branch=rel-"))
            .map(str::to_string)
            .unwrap_or_else(|| "(version unknown)".to_string())
    })
}

/// What one session is created for, beyond the configured execution settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPlan {
    /// The part can be captured in CUDA graphs (the UNet; not the text encoders, as ONNX
    /// Runtime's own SDXL demo finds for the second one): they are captured when
    /// `execution.cuda.cuda_graph` is on and a GPU provider serves the session.
    pub cuda_graph: bool,
    /// The TensorRT provider's profile, engine cache key and precision for this part.
    pub tensorrt: Option<tensorrt::TrtPlan>,
}

/// A session and the report of what serves it.
pub struct LoadedSession {
    pub session: Session,
    pub file: PathBuf,
    pub providers: ProviderReport,
    /// Runs of this session through [`LoadedSession::run`] and their wall time.
    pub clock: SessionClock,
    busy: Arc<BusyClock>,
    /// Whether callers that can bind their tensors should (`execution.io_binding`).
    pub io_binding: bool,
    /// Where bound tensors live: on the device of the provider that serves the session.
    pub placement: Placement,
    /// Bound buffers by shape, with their CUDA graphs (see [`graphs`]).
    bindings: Box<BindingCache<(Bound, Option<RunOptions>)>>,
}

impl LoadedSession {
    /// `session.run`, timed into [`LoadedSession::clock`] and the runtime's busy time.
    pub fn run<'s, 'i, 'v: 'i, const N: usize>(
        &'s mut self,
        inputs: impl Into<SessionInputs<'i, 'v, N>>,
    ) -> ort::Result<SessionOutputs<'s>> {
        let inputs = inputs.into();
        let started = Instant::now();
        self.busy.enter(started);
        let result = self.session.run(inputs);
        let ended = Instant::now();
        self.busy.exit(ended);
        self.clock.add(ended - started);
        result
    }

    /// `session.run_binding`, timed like [`LoadedSession::run`].
    pub fn run_binding<'s, 'b>(
        &'s mut self,
        binding: &'b IoBinding,
    ) -> ort::Result<SessionOutputs<'b>>
    where
        's: 'b,
    {
        let started = Instant::now();
        self.busy.enter(started);
        let result = self.session.run_binding(binding);
        let ended = Instant::now();
        self.busy.exit(ended);
        self.clock.add(ended - started);
        result
    }
}

impl LoadedSession {
    /// The bound buffers of `spec`, allocated on first use (and then given a CUDA graph if the
    /// session captures graphs) and kept for later calls with the same shapes.
    pub fn bound(&mut self, spec: &BindingSpec) -> ort::Result<&mut Bound> {
        let (session, placement) = (&self.session, self.placement);
        let ((bound, _), choice, made) = self.bindings.get_or_make(spec, |choice| {
            let options = match choice.run_option() {
                Some(id) => {
                    let mut o = RunOptions::new()?;
                    o.set(graphs::GRAPH_ID_KEY, id.to_string())?;
                    Some(o)
                }
                None => None,
            };
            Ok::<_, ort::Error>((Bound::new(session, placement, spec.clone())?, options))
        })?;
        if made {
            match choice {
                GraphChoice::Graph(id) => {
                    tracing::info!(file = %self.file.display(), graph_id = id, shapes = %spec.describe(), "bound buffers allocated; ONNX Runtime captures a CUDA graph for these shapes after its warm-up runs")
                }
                GraphChoice::Full { max } => {
                    tracing::info!(file = %self.file.display(), shapes = %spec.describe(), max_graphs = max, "bound buffers allocated; these shapes run without a CUDA graph (execution.cuda.max_graphs reached)")
                }
                GraphChoice::Off => {
                    tracing::debug!(file = %self.file.display(), placement = ?placement, shapes = %spec.describe(), "bound buffers allocated")
                }
            }
        }
        Ok(bound)
    }

    /// The shapes with bound buffers now, least recently used first, and their CUDA graphs.
    pub fn bound_shapes(&self) -> Vec<(BindingSpec, GraphChoice)> {
        self.bindings
            .shapes()
            .map(|(s, c)| (s.clone(), c))
            .collect()
    }

    /// Runs the session on the bound buffers of `spec` (made by [`LoadedSession::bound`]), with
    /// their CUDA graph if they have one; timed like [`LoadedSession::run`]. The outputs stay in
    /// the buffers: read them with [`Bound::read_float`].
    pub fn run_bound(&mut self, spec: &BindingSpec) -> ort::Result<()> {
        let Some(((bound, options), _)) = self.bindings.get(spec) else {
            return Err(ort::Error::new(format!(
                "{}: no bound buffers for {}",
                self.file.display(),
                spec.describe()
            )));
        };
        let started = Instant::now();
        self.busy.enter(started);
        let result = match options {
            Some(o) => self
                .session
                .run_binding_with_options(bound.binding(), o)
                .map(drop),
            None => self.session.run_binding(bound.binding()).map(drop),
        };
        let ended = Instant::now();
        self.busy.exit(ended);
        self.clock.add(ended - started);
        result
    }
}

impl fmt::Debug for LoadedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedSession")
            .field("file", &self.file)
            .field("providers", &self.providers)
            .finish()
    }
}

/// What each configured provider did, and which provider ONNX Runtime assigned the nodes to.
#[derive(Debug, Clone)]
pub struct ProviderReport {
    pub registrations: Vec<(ProviderKind, Registration)>,
    /// Nodes per provider; an error text when ONNX Runtime could not say.
    pub assignment: Result<Assignment, assignment::AssignmentError>,
}

impl ProviderReport {
    /// The provider that runs most of the model, as ONNX Runtime assigned it. When the
    /// assignment cannot be read, the first registered provider (ONNX Runtime's own choice).
    pub fn serving(&self) -> String {
        match &self.assignment {
            Ok(a) => match a.main_provider() {
                Some(name) => ProviderKind::from_ort_name(name)
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| name.to_string()),
                None => "none".to_string(),
            },
            Err(_) => self
                .registrations
                .iter()
                .find(|(_, r)| *r == Registration::Registered)
                .map(|(k, _)| k.to_string())
                .unwrap_or_else(|| "cpu".to_string()),
        }
    }

    /// Whether a GPU provider runs any node.
    pub fn gpu_serves(&self) -> bool {
        match &self.assignment {
            Ok(a) => a.nodes_per_provider.iter().any(|(name, n)| {
                *n > 0 && ProviderKind::from_ort_name(name).is_some_and(ProviderKind::is_gpu)
            }),
            Err(_) => self
                .registrations
                .iter()
                .any(|(k, r)| k.is_gpu() && *r == Registration::Registered),
        }
    }

    /// Why no GPU provider serves, for the error message.
    pub fn gpu_hint(&self) -> String {
        let reasons: Vec<String> = self
            .registrations
            .iter()
            .filter(|(k, _)| k.is_gpu())
            .map(|(k, r)| format!("{k}: {r}"))
            .collect();
        if reasons.is_empty() {
            "No GPU provider is listed in `execution.providers`.".to_string()
        } else {
            reasons.join("; ")
        }
    }
}

impl ProviderReport {
    /// The serving provider with the node counts, e.g. `cuda (CUDAExecutionProvider 520 nodes,
    /// CPUExecutionProvider 184 nodes)`.
    pub fn serving_summary(&self) -> String {
        match &self.assignment {
            Ok(a) => format!("{} ({})", self.serving(), a.summary()),
            Err(e) => format!("{} (node assignment unavailable: {e})", self.serving()),
        }
    }
}

impl fmt::Display for ProviderReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "serving: {}", self.serving_summary())?;
        for (kind, reg) in &self.registrations {
            if *reg != Registration::Registered {
                write!(f, "; {kind} {reg}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_tensorrt_serves_skip_onnx_runtimes_graph_optimisation() {
        use GraphOptimizationLevel as L;
        assert_eq!(optimization_level(GraphOptimization::All, false), L::All);
        assert_eq!(
            optimization_level(GraphOptimization::Basic, false),
            L::Level1
        );
        for configured in [GraphOptimization::All, GraphOptimization::Extended] {
            assert_eq!(optimization_level(configured, true), L::Disable);
        }
    }
}
