//! How long jobs take: measured speed, kept in `<spool>/control/timings.json`, and the ETAs
//! `sdspool status` and `sdspool check` print from it.
//!
//! The daemon times every UNet call of every job (the time from one step to the next within a
//! batch) and, after the job, folds the job's mean into an exponential moving average per
//! **model, image size and UNet batch** (candidates in the batch, twice that with classifier-free
//! guidance: the batch the UNet really runs). It also keeps, per model and size, the seconds per
//! image spent outside the UNet loop (text encoding, VAE decoding, CLIP scoring, writing). The
//! file is rewritten atomically under a lock after each job.
//!
//! The same figures are kept per device too (`devices`, by `<host>/<device id>`): a running
//! job's ETA uses its own device's where that device has measured them ([`Timings::on_device`]),
//! so a fast and a slow card on one spool each estimate at their own speed. Queued jobs, whose
//! device is not known yet, are estimated from the figures of all devices together.
//!
//! An estimate for a job adds, per prompt, UNet calls × seconds per step of its size and batch,
//! plus images × seconds per image. A size or batch never measured for that model is scaled from
//! the nearest measured one by pixels × batch (marked `scaled`); a model never measured has no
//! estimate.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::engine::scheduler::{self, SchedulerConfig, SchedulerKind};
use crate::jobs::job::Job;
use crate::jobs::settings::JobSettings;
use crate::spool::fsops::rfc3339;
/// A job's expected cost, and how its rates were found: data the spool's status carries.
pub use crate::spool::status::{Basis, Estimate};

/// File name inside the spool's control folder.
pub const TIMINGS_FILE: &str = "timings.json";
/// Weight of the newest job in the moving averages.
pub const ALPHA: f64 = 0.3;

/// Seconds per UNet call for one model, size and UNet batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub model: String,
    pub width: u32,
    pub height: u32,
    /// The UNet's batch: candidates per call, doubled with guidance.
    pub batch: u32,
    pub seconds_per_step: f64,
    /// Jobs folded into the average.
    pub samples: u64,
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
    pub host: String,
    pub provider: String,
}

/// Seconds per image outside the UNet loop for one model and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTiming {
    pub model: String,
    pub width: u32,
    pub height: u32,
    pub seconds_per_image: f64,
    pub samples: u64,
    #[serde(with = "rfc3339")]
    pub updated_at: SystemTime,
    pub host: String,
}

/// `control/timings.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// By `"<model> <W>x<H> b<batch>"`.
    #[serde(default)]
    pub unet: BTreeMap<String, StepTiming>,
    /// By `"<model> <W>x<H>"`.
    #[serde(default)]
    pub images: BTreeMap<String, ImageTiming>,
    /// The figures each device measured, by [`device_key`] (absent in files written before
    /// sdspool kept them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub devices: BTreeMap<String, Timings>,
}

/// `"<host>/<device id>"`.
pub fn device_key(host: &str, device: i32) -> String {
    format!("{host}/{device}")
}

/// `"<model> <W>x<H> b<batch>"`.
pub fn step_key(model: &str, width: u32, height: u32, batch: u32) -> String {
    format!("{model} {width}x{height} b{batch}")
}

/// `"<model> <W>x<H>"`.
pub fn image_key(model: &str, width: u32, height: u32) -> String {
    format!("{model} {width}x{height}")
}

/// What one job measured.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    /// (model, width, height, UNet batch) -> (seconds, UNet calls).
    pub steps: BTreeMap<(String, u32, u32, u32), (f64, u64)>,
    /// (model, width, height) -> (seconds, images).
    pub images: BTreeMap<(String, u32, u32), (f64, u64)>,
}

impl Measurements {
    /// One UNet call took `seconds`.
    pub fn add_step(&mut self, model: &str, width: u32, height: u32, batch: u32, seconds: f64) {
        let e = self
            .steps
            .entry((model.to_string(), width, height, batch))
            .or_default();
        e.0 += seconds;
        e.1 += 1;
    }

    /// `images` images of this size took `seconds` outside the UNet loop.
    pub fn add_images(&mut self, model: &str, width: u32, height: u32, seconds: f64, images: u64) {
        let e = self
            .images
            .entry((model.to_string(), width, height))
            .or_default();
        e.0 += seconds.max(0.0);
        e.1 += images;
    }

    /// Mean seconds per UNet call measured for a key.
    pub fn mean_step(&self, model: &str, width: u32, height: u32, batch: u32) -> Option<f64> {
        self.steps
            .get(&(model.to_string(), width, height, batch))
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| s / *n as f64)
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.images.is_empty()
    }
}

fn ema(old: f64, new: f64, samples: u64) -> f64 {
    if samples == 0 || !old.is_finite() {
        new
    } else {
        ALPHA * new + (1.0 - ALPHA) * old
    }
}

impl Timings {
    /// `<spool>/control/timings.json`.
    pub fn path(spool_root: &Path) -> PathBuf {
        spool_root
            .join(crate::spool::control::CONTROL)
            .join(TIMINGS_FILE)
    }

    /// Reads the file; missing or unreadable gives empty timings (an unreadable one is logged).
    pub fn read(path: &Path) -> Timings {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "timings file unreadable; starting afresh");
                Timings::default()
            }),
            Err(_) => Timings::default(),
        }
    }

    /// Folds one job's measurements into the averages.
    pub fn merge(&mut self, m: &Measurements, host: &str, provider: &str) {
        let now = SystemTime::now();
        for ((model, w, h, b), (secs, n)) in &m.steps {
            if *n == 0 {
                continue;
            }
            let mean = secs / *n as f64;
            let e = self
                .unet
                .entry(step_key(model, *w, *h, *b))
                .or_insert_with(|| StepTiming {
                    model: model.clone(),
                    width: *w,
                    height: *h,
                    batch: *b,
                    seconds_per_step: mean,
                    samples: 0,
                    updated_at: now,
                    host: String::new(),
                    provider: String::new(),
                });
            e.seconds_per_step = ema(e.seconds_per_step, mean, e.samples);
            e.samples += 1;
            e.updated_at = now;
            e.host = host.to_string();
            e.provider = provider.to_string();
        }
        for ((model, w, h), (secs, n)) in &m.images {
            if *n == 0 {
                continue;
            }
            let mean = secs / *n as f64;
            let e = self
                .images
                .entry(image_key(model, *w, *h))
                .or_insert_with(|| ImageTiming {
                    model: model.clone(),
                    width: *w,
                    height: *h,
                    seconds_per_image: mean,
                    samples: 0,
                    updated_at: now,
                    host: String::new(),
                });
            e.seconds_per_image = ema(e.seconds_per_image, mean, e.samples);
            e.samples += 1;
            e.updated_at = now;
            e.host = host.to_string();
        }
    }

    /// These timings as `device` of `host` measured them: its own figures where it has them,
    /// those of all devices together elsewhere.
    pub fn on_device(&self, host: &str, device: i32) -> Timings {
        let mut t = Timings {
            unet: self.unet.clone(),
            images: self.images.clone(),
            devices: BTreeMap::new(),
        };
        if let Some(own) = self.devices.get(&device_key(host, device)) {
            t.unet.extend(own.unet.clone());
            t.images.extend(own.images.clone());
        }
        t
    }

    /// Adds a job's measurements to the file at `path`, to the figures of all devices only (see
    /// [`Timings::record_on_device`]).
    pub fn record(path: &Path, m: &Measurements, host: &str, provider: &str) -> io::Result<()> {
        Timings::update(path, m, |t| t.merge(m, host, provider))
    }

    /// Adds a job's measurements, made on `device` of `host`, to the file at `path`: to the
    /// figures of all devices and to the device's own.
    pub fn record_on_device(
        path: &Path,
        m: &Measurements,
        host: &str,
        provider: &str,
        device: i32,
    ) -> io::Result<()> {
        Timings::update(path, m, |t| {
            t.merge(m, host, provider);
            t.devices
                .entry(device_key(host, device))
                .or_default()
                .merge(m, host, provider);
        })
    }

    /// Changes the file at `path` with `change` unless `m` is empty: under an exclusive lock on
    /// `timings.json.lock` (daemons of several devices or hosts may finish jobs at once), read,
    /// change, write atomically.
    fn update(path: &Path, m: &Measurements, change: impl FnOnce(&mut Timings)) -> io::Result<()> {
        if m.is_empty() {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let lock_path = path.with_extension("json.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        let mut t = Timings::read(path);
        change(&mut t);
        let text = serde_json::to_string_pretty(&t).map_err(io::Error::other)?;
        let result = crate::sys::atomic::write(path, text.as_bytes());
        drop(lock);
        result
    }

    /// These timings with the means a running job measured so far in place of the averages:
    /// the job's own speed is the best guess for its rest.
    pub fn with_live(&self, live: &Measurements) -> Timings {
        let mut t = self.clone();
        for ((model, w, h, b), (secs, n)) in &live.steps {
            if *n == 0 {
                continue;
            }
            let e = t
                .unet
                .entry(step_key(model, *w, *h, *b))
                .or_insert_with(|| StepTiming {
                    model: model.clone(),
                    width: *w,
                    height: *h,
                    batch: *b,
                    seconds_per_step: 0.0,
                    samples: 0,
                    updated_at: SystemTime::now(),
                    host: String::new(),
                    provider: String::new(),
                });
            e.seconds_per_step = secs / *n as f64;
        }
        t
    }

    /// Seconds per UNet call for a model, size and UNet batch.
    pub fn seconds_per_step(
        &self,
        model: &str,
        width: u32,
        height: u32,
        batch: u32,
    ) -> Option<(f64, Basis)> {
        if let Some(t) = self.unet.get(&step_key(model, width, height, batch)) {
            return Some((t.seconds_per_step, Basis::Measured));
        }
        let work = |w: u32, h: u32, b: u32| f64::from(w) * f64::from(h) * f64::from(b.max(1));
        let target = work(width, height, batch);
        self.unet
            .values()
            .filter(|t| t.model == model && t.seconds_per_step.is_finite())
            .min_by(|a, b| {
                let d = |t: &StepTiming| (work(t.width, t.height, t.batch) / target).ln().abs();
                d(a).total_cmp(&d(b))
            })
            .map(|t| {
                (
                    t.seconds_per_step * target / work(t.width, t.height, t.batch),
                    Basis::Scaled,
                )
            })
    }

    /// Seconds per image outside the UNet loop; scaled by pixels from another size of the model,
    /// 0 when the model has none measured.
    pub fn seconds_per_image(&self, model: &str, width: u32, height: u32) -> f64 {
        if let Some(t) = self.images.get(&image_key(model, width, height)) {
            return t.seconds_per_image;
        }
        let px = |w: u32, h: u32| f64::from(w) * f64::from(h);
        self.images
            .values()
            .filter(|t| t.model == model)
            .min_by(|a, b| {
                let d = |t: &ImageTiming| (px(t.width, t.height) / px(width, height)).ln().abs();
                d(a).total_cmp(&d(b))
            })
            .map(|t| t.seconds_per_image * px(width, height) / px(t.width, t.height))
            .unwrap_or(0.0)
    }
}

/// The work of one prompt of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptWork {
    pub width: u32,
    pub height: u32,
    /// Classifier-free guidance (guidance above 1) doubles the UNet batch.
    pub guided: bool,
    /// UNet calls per batch (PNDM makes one more than its steps).
    pub calls_per_batch: u64,
    /// Candidates to render.
    pub candidates: usize,
}

/// UNet calls per batch of each scheduler and step count, from the models' scheduler
/// configurations (read once per model).
pub struct StepCounter<'a> {
    config: &'a dyn JobSettings,
    configs: HashMap<String, Option<SchedulerConfig>>,
    calls: HashMap<(String, Option<SchedulerKind>, u32), u64>,
}

impl<'a> StepCounter<'a> {
    pub fn new(config: &'a dyn JobSettings) -> StepCounter<'a> {
        StepCounter {
            config,
            configs: HashMap::new(),
            calls: HashMap::new(),
        }
    }

    /// UNet calls for `steps` steps of `kind` (`None`: the model's own scheduler); `steps` when
    /// the model's scheduler configuration cannot be read.
    pub fn calls(&mut self, model: &str, kind: Option<SchedulerKind>, steps: u32) -> u64 {
        let key = (model.to_string(), kind, steps);
        if let Some(n) = self.calls.get(&key) {
            return *n;
        }
        let config = self.config;
        let cfg = self
            .configs
            .entry(model.to_string())
            .or_insert_with(|| {
                let path = config
                    .models()
                    .get(model)?
                    .path
                    .join("scheduler/scheduler_config.json");
                SchedulerConfig::from_file(path).ok()
            })
            .as_ref();
        let n = cfg
            .and_then(|c| {
                let kind = kind.or_else(|| c.kind().ok())?;
                scheduler::build(kind, c, steps as usize).ok()
            })
            .map(|s| s.timesteps().len() as u64)
            .unwrap_or(u64::from(steps));
        self.calls.insert(key, n);
        n
    }

    /// The work of each prompt of `job`, all candidates counted.
    pub fn job_work(&mut self, job: &Job) -> Vec<PromptWork> {
        job.prompts
            .iter()
            .map(|p| PromptWork {
                width: p.width,
                height: p.height,
                guided: crate::engine::pipeline::is_guided(p.guidance),
                calls_per_batch: self.calls(&job.model, p.scheduler, p.steps),
                candidates: p.seeds.len(),
            })
            .collect()
    }
}

/// The UNet batches of `candidates` split by `max_batch`: (candidates in the batch, how many
/// such batches).
fn batches(candidates: usize, max_batch: usize) -> [(usize, usize); 2] {
    let max_batch = max_batch.max(1);
    [
        (max_batch, candidates / max_batch),
        (
            candidates % max_batch,
            usize::from(!candidates.is_multiple_of(max_batch)),
        ),
    ]
}

/// Seconds for one prompt's work; `None` when the model has no measurement.
fn prompt_seconds(
    timings: &Timings,
    model: &str,
    p: &PromptWork,
    max_batch: usize,
) -> Option<(f64, Basis)> {
    let mut total = 0.0;
    let mut basis = Basis::Measured;
    for (n, count) in batches(p.candidates, max_batch) {
        if count == 0 || n == 0 {
            continue;
        }
        let unet_batch = (n * if p.guided { 2 } else { 1 }) as u32;
        let (rate, b) = timings.seconds_per_step(model, p.width, p.height, unet_batch)?;
        if b == Basis::Scaled {
            basis = Basis::Scaled;
        }
        total += rate * p.calls_per_batch as f64 * count as f64;
    }
    total += timings.seconds_per_image(model, p.width, p.height) * p.candidates as f64;
    Some((total, basis))
}

/// The estimate for work `prompts` of `model`.
pub fn estimate(
    timings: &Timings,
    model: &str,
    prompts: &[PromptWork],
    max_batch: usize,
) -> Estimate {
    let images = prompts.iter().map(|p| p.candidates).sum();
    let unet_calls = prompts
        .iter()
        .map(|p| {
            batches(p.candidates, max_batch)
                .iter()
                .map(|(n, c)| if *n > 0 { *c as u64 } else { 0 })
                .sum::<u64>()
                * p.calls_per_batch
        })
        .sum();
    let mut seconds = Some(0.0);
    let mut basis = Some(Basis::Measured);
    for p in prompts {
        match prompt_seconds(timings, model, p, max_batch) {
            Some((s, b)) => {
                seconds = seconds.map(|t| t + s);
                if b == Basis::Scaled {
                    basis = Some(Basis::Scaled);
                }
            }
            None => {
                seconds = None;
                basis = None;
                break;
            }
        }
    }
    Estimate {
        images,
        unet_calls,
        seconds,
        basis,
    }
}

/// Seconds left in a running job: the images not yet done, each at its prompt's cost per image,
/// less the part of the running batch already denoised. `images_done` counts in prompt order.
/// `timings` should be [`Timings::with_live`] of the job's own measurements.
pub fn remaining_seconds(
    timings: &Timings,
    model: &str,
    prompts: &[PromptWork],
    max_batch: usize,
    images_done: usize,
    batch_fraction_done: (usize, f64),
) -> Option<f64> {
    let mut left = 0.0;
    let mut first = 0;
    for p in prompts {
        let last = first + p.candidates;
        let (cost, _) = prompt_seconds(timings, model, p, max_batch)?;
        let per_image = cost / p.candidates.max(1) as f64;
        let todo = last.saturating_sub(images_done.max(first));
        left += per_image * todo as f64;
        let (batch, fraction) = batch_fraction_done;
        if (first..last).contains(&images_done) {
            left -= per_image * batch.min(todo) as f64 * fraction.clamp(0.0, 1.0);
        }
        first = last;
    }
    Some(left.max(0.0))
}

/// The estimate of a job from the spool's timings, as `sdspool check` and `status` print it.
pub fn estimate_job(timings: &Timings, counter: &mut StepCounter<'_>, job: &Job) -> Estimate {
    let work = counter.job_work(job);
    estimate(timings, &job.model, &work, job.max_batch as usize)
}

/// `1h 2m`, `3m 20s`, `12s`: durations rounded for people.
pub fn human(seconds: f64) -> String {
    if seconds < 0.5 {
        return "<1s".into();
    }
    let s = seconds.round() as u64;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(candidates: usize, calls: u64, guided: bool) -> PromptWork {
        PromptWork {
            width: 64,
            height: 64,
            guided,
            calls_per_batch: calls,
            candidates,
        }
    }

    #[test]
    fn moving_average_and_lookup() {
        let mut t = Timings::default();
        let mut m = Measurements::default();
        m.add_step("sd", 64, 64, 4, 0.1);
        m.add_step("sd", 64, 64, 4, 0.3);
        m.add_images("sd", 64, 64, 1.0, 4);
        t.merge(&m, "h", "cpu");
        assert_eq!(
            t.seconds_per_step("sd", 64, 64, 4),
            Some((0.2, Basis::Measured))
        );
        let mut m2 = Measurements::default();
        m2.add_step("sd", 64, 64, 4, 1.2);
        t.merge(&m2, "h", "cpu");
        let (s, _) = t.seconds_per_step("sd", 64, 64, 4).unwrap();
        assert!((s - (0.3 * 1.2 + 0.7 * 0.2)).abs() < 1e-12, "{s}");
        assert_eq!(t.unet["sd 64x64 b4"].samples, 2);
        // Another batch and size of the model: scaled by pixels x batch.
        let (s2, b) = t.seconds_per_step("sd", 128, 64, 2).unwrap();
        assert_eq!(b, Basis::Scaled);
        assert!((s2 - s).abs() < 1e-12, "same work: {s2} vs {s}");
        assert!(t.seconds_per_step("other", 64, 64, 4).is_none());
        assert!((t.seconds_per_image("sd", 64, 64) - 0.25).abs() < 1e-12);
        assert!((t.seconds_per_image("sd", 128, 128) - 1.0).abs() < 1e-12);
        assert_eq!(t.seconds_per_image("other", 64, 64), 0.0);
    }

    #[test]
    fn estimates_count_batches_and_guidance() {
        let mut t = Timings::default();
        let mut m = Measurements::default();
        m.add_step("sd", 64, 64, 8, 2.0); // 4 guided candidates
        m.add_step("sd", 64, 64, 2, 0.5); // 1 guided candidate
        t.merge(&m, "h", "cpu");
        // 5 candidates, max_batch 4: one batch of 4 and one of 1, 10 calls each.
        let e = estimate(&t, "sd", &[work(5, 10, true)], 4);
        assert_eq!(e.images, 5);
        assert_eq!(e.unet_calls, 20);
        assert_eq!(e.seconds, Some(10.0 * 2.0 + 10.0 * 0.5));
        assert_eq!(e.basis, Some(Basis::Measured));
        // Nothing measured for the model: no seconds.
        assert_eq!(estimate(&t, "x", &[work(1, 1, true)], 4).seconds, None);
        // Remaining: half of the first batch done.
        let left = remaining_seconds(&t, "sd", &[work(4, 10, true)], 4, 0, (4, 0.5)).unwrap();
        assert!((left - 10.0).abs() < 1e-9, "{left}");
        let two = [work(4, 10, true), work(4, 10, true)];
        let left = remaining_seconds(&t, "sd", &two, 4, 4, (4, 0.0)).unwrap();
        assert!((left - 20.0).abs() < 1e-9, "{left}");
        // The job's own speed replaces the average.
        let mut live = Measurements::default();
        live.add_step("sd", 64, 64, 8, 1.0);
        let left = remaining_seconds(&t.with_live(&live), "sd", &two, 4, 4, (4, 0.0)).unwrap();
        assert!((left - 10.0).abs() < 1e-9, "{left}");
    }

    #[test]
    fn record_writes_the_file_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let path = Timings::path(tmp.path());
        let mut m = Measurements::default();
        m.add_step("sd", 64, 64, 2, 0.5);
        Timings::record(&path, &m, "h", "cpu").unwrap();
        Timings::record(&path, &m, "h", "cpu").unwrap();
        let t = Timings::read(&path);
        assert_eq!(t.unet["sd 64x64 b2"].samples, 2);
        assert_eq!(t.unet["sd 64x64 b2"].seconds_per_step, 0.5);
        std::fs::write(&path, "{").unwrap();
        assert_eq!(Timings::read(&path), Timings::default());
    }

    #[test]
    fn each_device_estimates_at_its_own_speed_where_it_has_measured() {
        let tmp = tempfile::tempdir().unwrap();
        let path = Timings::path(tmp.path());
        let (mut fast, mut slow) = (Measurements::default(), Measurements::default());
        fast.add_step("sd", 64, 64, 2, 0.1);
        slow.add_step("sd", 64, 64, 2, 1.0);
        Timings::record_on_device(&path, &fast, "h", "cuda", 0).unwrap();
        Timings::record_on_device(&path, &slow, "h", "cuda", 1).unwrap();
        let t = Timings::read(&path);
        let step = |t: &Timings| t.seconds_per_step("sd", 64, 64, 2).unwrap().0;
        assert!((step(&t.on_device("h", 0)) - 0.1).abs() < 1e-9);
        assert!((step(&t.on_device("h", 1)) - 1.0).abs() < 1e-9);
        // Another device, or a queued job: all devices together.
        let pooled = ALPHA * 1.0 + (1.0 - ALPHA) * 0.1;
        assert!((step(&t.on_device("other", 0)) - pooled).abs() < 1e-9);
        assert!((step(&t) - pooled).abs() < 1e-9);
        assert_eq!(t.devices["h/1"].unet["sd 64x64 b2"].samples, 1);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(12.4), "12s");
        assert_eq!(human(0.2), "<1s");
        assert_eq!(human(200.0), "3m 20s");
        assert_eq!(human(3720.0), "1h 2m");
    }
}
