//! `sdspool run`: the spool daemon.
//!
//! One worker thread per configured device id, each with its own sessions of the models that
//! device serves (`execution.devices`; all by default), loaded when a job first needs them and
//! kept within the device's memory budget (see [`crate::jobs::run::resident`]): the daemon is
//! ready once its workers take jobs, without loading anything first. Each worker claims jobs
//! from the spool (highest priority, then oldest), renders them with [`crate::jobs::run::Worker`],
//! and files them in done/ or failed/. Jobs left in running/ by a crash are resumed first. A job
//! claimed by a worker that does not serve its model goes to one that does; one that no device
//! of this daemon serves fails at claim (step `claim`, field `model`).
//!
//! The main thread runs the [`supervise::Supervisor`]: signals (see there for SIGTERM, SIGINT,
//! SIGHUP and SIGUSR1), the grace period, cancel requests, and the systemd watchdog, pinged only
//! while every worker shows progress ([`heartbeat`]).
//!
//! Modules: [`shutdown`] (the stop signal and each running job's stop switch), [`dispatch`]
//! (claimed jobs waiting for a worker), [`worker`] (a worker's loop), [`process`] (one job,
//! step by step), [`progress`] (where a job's progress goes), [`storage`] (jobs waiting for a
//! writable disk), [`notify`] (sd_notify).

pub mod dispatch;
pub mod heartbeat;
pub mod notify;
pub mod process;
pub mod progress;
pub mod shutdown;
pub mod storage;
pub mod supervise;
pub mod worker;

use std::sync::{Arc, RwLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::app::config::Config;
use crate::runtime::Runtime;
use crate::spool::control::Control;
use crate::spool::{Spool, SpoolOptions};
use dispatch::Dispatch;
use heartbeat::{Heartbeats, Pulse};
use shutdown::Shutdown;
use supervise::{Signals, Supervisor};

/// `sdspool run` options.
#[derive(Debug, Clone, Copy, Default)]
pub struct DaemonOptions {
    /// Exit once incoming/ and running/ are empty (batch use, demos and tests).
    pub until_idle: bool,
}

/// State shared by the supervisor and the workers.
pub struct Shared {
    pub shutdown: Shutdown,
    pub heartbeats: Heartbeats,
    pub dispatch: Dispatch,
    /// The configuration; SIGHUP replaces the parts that may change at runtime.
    config: RwLock<Arc<Config>>,
}

impl Shared {
    /// The configuration now (a job keeps the one it started with).
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

/// What a worker thread reports when it ends.
type WorkerEnd = (i32, anyhow::Result<()>);

/// Runs the daemon until a signal (or, with `until_idle`, until the spool is empty).
pub fn run(config: &Config, options: DaemonOptions) -> anyhow::Result<()> {
    // tokio drives the signals, the watchdog and the grace timer; the workers are plain
    // threads, since ONNX Runtime calls block.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let signals = {
        let _context = rt.enter();
        Signals::install()?
    };
    notify::status("loading ONNX Runtime");
    let runtime = config.runtime()?;
    let spool_options = SpoolOptions {
        max_job_bytes: config.limits.max_job_bytes,
        ..SpoolOptions::default()
    };
    let spool = Spool::open_with(&config.spool, spool_options)?;
    let _web = crate::app::web::hooks::daemon_starting(config)?;
    // Claimed now, started once the workers run: a kill meanwhile is not held against them.
    let recovered = spool.recover_queued()?;
    if !recovered.is_empty() {
        tracing::info!(jobs = recovered.len(), "resuming jobs left in running/");
    }
    let devices = config.execution.device_ids.clone();
    let shared = Shared {
        shutdown: Shutdown::default(),
        heartbeats: Heartbeats::new(&devices, Instant::now()),
        dispatch: Dispatch::new(recovered, devices.len()),
        config: RwLock::new(Arc::new(config.clone())),
    };
    let daemon = Daemon {
        shared: &shared,
        spool: &spool,
        runtime: &runtime,
        devices: &devices,
        options,
    };
    let result = std::thread::scope(|scope| daemon.serve(scope, &rt, signals));
    daemon.release_waiting();
    crate::app::web::hooks::daemon_stopping();
    result?;
    notify::stopping("stopped");
    tracing::info!("sdspool stopped");
    Ok(())
}

/// What the daemon runs on.
/// What a worker works with.
pub struct WorkerCtx<'a> {
    pub device: i32,
    /// ONNX Runtime, to load models with.
    pub runtime: &'a Runtime,
    pub shared: &'a Shared,
    pub spool: &'a Spool,
    pub control: Control,
    pub pulse: Pulse<'a>,
    pub options: DaemonOptions,
}

struct Daemon<'a> {
    shared: &'a Shared,
    spool: &'a Spool,
    runtime: &'a Runtime,
    devices: &'a [i32],
    options: DaemonOptions,
}

impl<'env> Daemon<'env> {
    /// Starts the workers, waits for them to take jobs, says it is ready, and supervises them
    /// until they end.
    fn serve<'scope>(
        &self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        rt: &tokio::runtime::Runtime,
        signals: Signals,
    ) -> anyhow::Result<()> {
        let (started_tx, started_rx) = mpsc::channel::<Result<i32, String>>();
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<WorkerEnd>();
        for (index, &device) in self.devices.iter().enumerate() {
            self.spawn_worker(scope, index, device, started_tx.clone(), done_tx.clone());
        }
        drop((started_tx, done_tx));
        self.wait_until_started(&started_rx)?;
        crate::app::web::hooks::daemon_ready();
        let counts = supervise::spool_counts(self.spool);
        notify::ready(&format!(
            "ready: {} worker(s); {counts}",
            self.devices.len()
        ));
        tracing::info!(workers = self.devices.len(), spool = %self.spool.layout().root.display(), "sdspool is ready");
        let supervisor = Supervisor::new(self.shared, self.spool, self.devices.len());
        rt.block_on(supervisor.run(signals, done_rx))
    }

    fn spawn_worker<'scope>(
        &self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        index: usize,
        device: i32,
        started: mpsc::Sender<Result<i32, String>>,
        done: tokio::sync::mpsc::UnboundedSender<WorkerEnd>,
    ) {
        let ctx = WorkerCtx {
            device,
            runtime: self.runtime,
            shared: self.shared,
            spool: self.spool,
            control: Control::of(self.spool.layout()),
            pulse: self.shared.heartbeats.pulse(index),
            options: self.options,
        };
        scope.spawn(move || {
            let result = worker::run(ctx, &started);
            if let Err(e) = &result {
                let _ = started.send(Err(crate::app::logging::error_chain(e)));
            }
            let _ = done.send((device, result));
        });
    }

    /// Waits for every worker to start taking jobs.
    fn wait_until_started(
        &self,
        started: &mpsc::Receiver<Result<i32, String>>,
    ) -> anyhow::Result<()> {
        let mut ready = 0;
        while ready < self.devices.len() {
            notify::extend_timeout(Duration::from_secs(120));
            if let Some((file, so_far)) = self.runtime.tensorrt_building() {
                notify::status(&format!(
                    "building the TensorRT engine of {} ({} s so far; cached for the next start)",
                    file.display(),
                    so_far.as_secs()
                ));
            }
            match started.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(device)) => {
                    ready += 1;
                    tracing::info!(device, "worker ready");
                }
                Ok(Err(e)) => {
                    self.shared.shutdown.stop_now();
                    anyhow::bail!("a worker could not start: {e}");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("the workers exited while starting")
                }
            }
        }
        Ok(())
    }

    /// Jobs still waiting for a worker at exit (recovered at startup and never taken because a
    /// worker could not start or a signal came first, or handed over and not taken)
    /// did not run: their attempt is taken back instead of counting as a crash, or a broken
    /// model file would send every running job to failed/ after `max_crashes` restarts.
    fn release_waiting(&self) {
        for claimed in self.shared.dispatch.drain() {
            if let Err(e) = self.spool.release(claimed) {
                tracing::warn!(error = %e, "cannot release a job that waited for a worker");
            }
        }
    }
}
