//! `/metrics` in the Prometheus text format, and the daemon's side of it.
//!
//! Two kinds of figures. What only the daemon process sees (UNet seconds per step, images
//! rendered, failures by reason, storage waits, each worker's state and execution provider) is
//! recorded as it happens into the process-wide [`Telemetry`] ([`telemetry`]), through the
//! `record_*` methods the daemon calls. What the spool folder says (jobs by state, queue length
//! and ETA, paused) is read from the spool at each scrape ([`SpoolGauges`]), so `sdspool serve`
//! on another host of a shared spool reports it too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::app::config::Config;
use crate::app::worker_state::WorkerState;

/// Content type of [`Telemetry::encode`]'s output: the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    model: String,
    /// `512x512`.
    size: String,
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    /// The step the job failed at (`validate`, `render`, `cancelled`, ...).
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    device: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    device: String,
    model: String,
    provider: String,
}

type HistogramFamily = Family<StepLabels, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

const WORKER_STATES: [WorkerState; 4] = [
    WorkerState::Loading,
    WorkerState::Idle,
    WorkerState::Rendering,
    WorkerState::Stopped,
];

/// The figures, registered once.
pub struct Telemetry {
    registry: Registry,
    jobs: Family<StateLabel, Gauge>,
    queue_length: Gauge,
    queue_eta: Gauge<f64, AtomicU64>,
    paused: Gauge,
    images: Counter,
    unet_step: HistogramFamily,
    failures: Family<ReasonLabel, Counter>,
    workers: Family<WorkerLabels, Gauge>,
    providers: Family<ProviderLabels, Gauge>,
    /// The provider series each device has now, so that those of unloaded models go.
    resident: Mutex<std::collections::HashMap<i32, Vec<ProviderLabels>>>,
    models_loaded: Family<DeviceLabel, Gauge>,
    storage_waits: Counter,
    manifests_read: Counter,
    thumbnails_made: Counter,
    ready: AtomicBool,
    /// Scrapes set the spool gauges and encode under this lock, so two scrapes do not mix.
    scrape: Mutex<()>,
}

/// The process's telemetry.
pub fn telemetry() -> &'static Telemetry {
    static T: LazyLock<Telemetry> = LazyLock::new(Telemetry::new);
    &T
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut r = Registry::with_prefix("sdspool");
        let jobs = Family::<StateLabel, Gauge>::default();
        r.register(
            "jobs",
            "Jobs in the spool by state (incoming, running, done, failed)",
            jobs.clone(),
        );
        let queue_length = Gauge::default();
        r.register(
            "queue_length",
            "Jobs waiting in incoming/",
            queue_length.clone(),
        );
        let queue_eta = Gauge::<f64, AtomicU64>::default();
        r.register(
            "queue_eta_seconds",
            "Seconds until the queue is done, from the measured timings (0 when empty or unknown)",
            queue_eta.clone(),
        );
        let paused = Gauge::default();
        r.register("paused", "1 while the spool is paused", paused.clone());
        let images = Counter::default();
        r.register(
            "images_rendered",
            "Images rendered by this daemon since it started",
            images.clone(),
        );
        let unet_step: HistogramFamily = Family::new_with_constructor(step_histogram);
        r.register(
            "unet_step_seconds",
            "Seconds per UNet step by model, image size and device",
            unet_step.clone(),
        );
        let failures = Family::<ReasonLabel, Counter>::default();
        r.register(
            "job_failures",
            "Jobs this daemon filed in failed/, by the step that failed",
            failures.clone(),
        );
        let workers = Family::<WorkerLabels, Gauge>::default();
        r.register(
            "worker_state",
            "1 for the state each device's worker is in",
            workers.clone(),
        );
        let providers = Family::<ProviderLabels, Gauge>::default();
        r.register(
            "worker_execution_provider",
            "1 for the execution provider ONNX Runtime runs each device's UNet of each model on",
            providers.clone(),
        );
        let models_loaded = Family::<DeviceLabel, Gauge>::default();
        r.register(
            "models_loaded",
            "Diffusion models resident on each device (they load on first use)",
            models_loaded.clone(),
        );
        let storage_waits = Counter::default();
        r.register(
            "storage_waits",
            "Times a job waited because its files could not be written (disk full, read-only)",
            storage_waits.clone(),
        );
        let manifests_read = Counter::default();
        r.register(
            "web_manifests_read",
            "Manifests the job list read because they were new or changed (unchanged ones are not read again)",
            manifests_read.clone(),
        );
        let thumbnails_made = Counter::default();
        r.register(
            "web_thumbnails_made",
            "Thumbnails decoded and made (not found in the thumbnail cache)",
            thumbnails_made.clone(),
        );
        Telemetry {
            registry: r,
            jobs,
            queue_length,
            queue_eta,
            paused,
            images,
            unet_step,
            failures,
            workers,
            providers,
            resident: Mutex::default(),
            models_loaded,
            storage_waits,
            manifests_read,
            thumbnails_made,
            ready: AtomicBool::new(false),
            scrape: Mutex::new(()),
        }
    }

    /// One UNet step of `seconds` on `device`.
    pub fn record_unet_step(
        &self,
        model: &str,
        width: u32,
        height: u32,
        device: i32,
        seconds: f64,
    ) {
        self.unet_step
            .get_or_create(&StepLabels {
                model: model.to_string(),
                size: format!("{width}x{height}"),
                device: device.to_string(),
            })
            .observe(seconds);
    }

    pub fn record_images(&self, images: usize) {
        self.images.inc_by(images as u64);
    }

    /// A job filed in failed/ at `step`.
    pub fn record_failure(&self, step: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: step.to_string(),
            })
            .inc();
    }

    /// The job list read `n` manifests (new or changed ones).
    pub fn record_manifests_read(&self, n: usize) {
        self.manifests_read.inc_by(n as u64);
    }

    pub fn record_thumbnail_made(&self) {
        self.thumbnails_made.inc();
    }

    pub fn record_storage_wait(&self) {
        self.storage_waits.inc();
    }

    /// `device`'s worker is now in `state`.
    pub fn record_worker_state(&self, device: i32, state: WorkerState) {
        for s in WORKER_STATES {
            self.workers
                .get_or_create(&WorkerLabels {
                    device: device.to_string(),
                    state: s.to_string(),
                })
                .set(i64::from(s == state));
        }
    }

    /// `device`'s worker has these models resident, each run on its execution provider: the
    /// provider gauge shows exactly these (an unloaded model's series goes), and the count.
    pub fn record_resident(&self, device: i32, models: &[(&str, String)]) {
        let now: Vec<ProviderLabels> = models
            .iter()
            .map(|(model, provider)| ProviderLabels {
                device: device.to_string(),
                model: model.to_string(),
                provider: provider.clone(),
            })
            .collect();
        let mut resident = self.resident.lock().unwrap_or_else(|e| e.into_inner());
        for gone in resident.remove(&device).unwrap_or_default() {
            if !now.contains(&gone) {
                self.providers.remove(&gone);
            }
        }
        for labels in &now {
            self.providers.get_or_create(labels).set(1);
        }
        resident.insert(device, now);
        self.record_models_loaded(device, models.len());
    }

    /// `device`'s worker has `count` diffusion models resident.
    fn record_models_loaded(&self, device: i32, count: usize) {
        self.models_loaded
            .get_or_create(&DeviceLabel {
                device: device.to_string(),
            })
            .set(count as i64);
    }

    /// The daemon's workers take jobs (models load when a job needs them), or nothing needs
    /// loading (`sdspool serve`).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The text a scrape gets, with the spool gauges set from `spool`.
    pub fn encode(&self, spool: &SpoolGauges) -> Result<String, std::fmt::Error> {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for (state, n) in [
            ("incoming", spool.incoming),
            ("running", spool.running),
            ("done", spool.done),
            ("failed", spool.failed),
        ] {
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.queue_length.set(spool.incoming as i64);
        self.queue_eta.set(spool.queue_eta_seconds);
        self.paused.set(i64::from(spool.paused));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(prometheus_text(&out))
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

/// The Prometheus text format (0.0.4) of the encoder's OpenMetrics text: a counter's family is
/// named with its `_total` suffix in `# HELP` and `# TYPE` (the Prometheus parser, and
/// `promtool check metrics`, match those lines to the sample names), and no `# EOF`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// What the spool folder says, read at a scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpoolGauges {
    pub incoming: usize,
    pub running: usize,
    pub done: usize,
    pub failed: usize,
    pub paused: bool,
    pub queue_eta_seconds: f64,
}

impl SpoolGauges {
    /// From the spool's overview with the queue's estimates filled in.
    pub fn read(config: &Config) -> Result<SpoolGauges, crate::spool::SpoolError> {
        let o = crate::app::web::queue::overview(config)?;
        Ok(SpoolGauges::from_overview(&o))
    }

    pub fn from_overview(o: &crate::spool::status::Overview) -> SpoolGauges {
        let running_eta = o
            .running
            .iter()
            .filter_map(|r| r.finishes_in_seconds)
            .max()
            .unwrap_or(0);
        let queue_eta = o
            .queued
            .iter()
            .filter_map(|q| q.finishes_in_seconds)
            .max()
            .unwrap_or(0)
            .max(running_eta);
        SpoolGauges {
            incoming: o.counts.incoming,
            running: o.counts.running,
            done: o.counts.done,
            failed: o.counts.failed,
            paused: o.paused.is_some(),
            queue_eta_seconds: queue_eta as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_figures_appear_with_their_labels() {
        let t = Telemetry::new();
        t.record_unet_step("tiny-sd", 64, 64, 0, 0.004);
        t.record_images(3);
        t.record_failure("cancelled");
        t.record_worker_state(1, WorkerState::Rendering);
        t.record_resident(1, &[("tiny-sd", "cpu".to_string())]);
        let text = t
            .encode(&SpoolGauges {
                incoming: 2,
                queue_eta_seconds: 12.0,
                ..SpoolGauges::default()
            })
            .unwrap();
        for line in [
            "sdspool_images_rendered_total 3",
            "sdspool_job_failures_total{reason=\"cancelled\"} 1",
            "sdspool_worker_state{device=\"1\",state=\"rendering\"} 1",
            "sdspool_worker_state{device=\"1\",state=\"idle\"} 0",
            "sdspool_worker_execution_provider{device=\"1\",model=\"tiny-sd\",provider=\"cpu\"} 1",
            "sdspool_queue_length 2",
            "sdspool_queue_eta_seconds 12.0",
            "sdspool_jobs{state=\"incoming\"} 2",
            "sdspool_unet_step_seconds_count{model=\"tiny-sd\",size=\"64x64\",device=\"0\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn the_models_resident_on_each_device_are_counted_with_their_providers() {
        let t = Telemetry::new();
        let cpu = || "cpu".to_string();
        t.record_resident(0, &[("a", cpu()), ("b", cpu())]);
        t.record_resident(1, &[("a", "cuda".to_string())]);
        t.record_resident(0, &[("b", cpu())]);
        let text = t.encode(&SpoolGauges::default()).unwrap();
        for line in [
            "sdspool_models_loaded{device=\"0\"} 1",
            "sdspool_models_loaded{device=\"1\"} 1",
            "sdspool_worker_execution_provider{device=\"0\",model=\"b\",provider=\"cpu\"} 1",
            "sdspool_worker_execution_provider{device=\"1\",model=\"a\",provider=\"cuda\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        // Model a was unloaded from device 0: its series is gone, not left at 1.
        let gone = "sdspool_worker_execution_provider{device=\"0\",model=\"a\"";
        assert!(!text.contains(gone), "{gone} still in\n{text}");
    }
}
