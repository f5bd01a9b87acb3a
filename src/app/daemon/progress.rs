//! What the daemon does with a running job's progress: one [`ProgressSink`] per job, with one
//! method per concern: the worker's heartbeat, the job's measured speed ([`JobClock`]), the
//! status file `running/<job>.status.json` with its ETA, systemd's STATUS= line, and the log.
//! Cancels and stops do not pass through here: they flip the job's
//! [`super::shutdown::JobSwitch`] from outside.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::heartbeat::Pulse;
use super::notify;
use crate::app::config::Config;
use crate::jobs::eta::{self, Measurements, PromptWork, Timings};
use crate::jobs::job::Job;
use crate::jobs::run::Progress;
use crate::spool::{Claimed, JobStatus, Spool};

/// Least time between two status file writes (the last step of a batch is always written).
const REPORT_EVERY: Duration = Duration::from_millis(500);

/// The speed of one job's UNet steps, measured as it runs, and the time per image outside the
/// UNet, folded into the spool's `control/timings.json` when it ends.
#[derive(Debug)]
pub struct JobClock {
    started: Instant,
    measured: Measurements,
    /// UNet calls seen per (width, height, UNet batch), the first of each batch included.
    calls: BTreeMap<(u32, u32, u32), u64>,
    /// The previous step: (prompt, images done before its batch, step) and when it ended.
    previous: Option<((usize, usize, usize), Instant)>,
}

impl JobClock {
    pub fn start() -> JobClock {
        JobClock {
            started: Instant::now(),
            measured: Measurements::default(),
            calls: BTreeMap::new(),
            previous: None,
        }
    }

    /// Records step `p` (of a prompt whose work is `w`), ended at `now`: the time since the
    /// previous step of the same batch is one UNet call's (returned, when measured).
    pub fn step(&mut self, model: &str, w: &PromptWork, p: &Progress, now: Instant) -> Option<f64> {
        let unet_batch = (p.batch * if w.guided { 2 } else { 1 }) as u32;
        *self
            .calls
            .entry((w.width, w.height, unet_batch))
            .or_default() += 1;
        if let Some(((prompt, done, step), at)) = self.previous
            && prompt == p.prompt
            && done == p.images_done
            && step + 1 == p.step
        {
            let seconds = now.duration_since(at).as_secs_f64();
            self.measured
                .add_step(model, w.width, w.height, unet_batch, seconds);
            self.previous = Some(((p.prompt, p.images_done, p.step), now));
            return Some(seconds);
        }
        self.previous = Some(((p.prompt, p.images_done, p.step), now));
        None
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The measurements with the time per image outside the UNet added: the run's time less
    /// its UNet calls, over the `rendered` images.
    pub fn finish(mut self, model: &str, work: &[PromptWork], rendered: usize) -> Measurements {
        if rendered == 0 {
            return self.measured;
        }
        let unet_seconds: f64 = self
            .calls
            .iter()
            .filter_map(|((w, h, b), n)| {
                self.measured
                    .mean_step(model, *w, *h, *b)
                    .map(|r| r * *n as f64)
            })
            .sum();
        let per_image = (self.elapsed().as_secs_f64() - unet_seconds) / rendered as f64;
        let mut sizes: Vec<(u32, u32)> = work.iter().map(|w| (w.width, w.height)).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for (w, h) in sizes {
            self.measured.add_images(model, w, h, per_image, 1);
        }
        self.measured
    }
}

/// Where one running job's progress goes.
pub struct ProgressSink<'a> {
    spool: &'a Spool,
    claimed: &'a Claimed,
    job: &'a Job,
    pulse: Pulse<'a>,
    device: i32,
    /// The spool's timings when the job started (this device's own where it has them), and the
    /// job's work, for the ETA.
    timings: Timings,
    work: Vec<PromptWork>,
    clock: JobClock,
    status: JobStatus,
    last_report: Instant,
    /// The latest progress seen.
    pub last: Option<Progress>,
    stall: stall::Hook<'a>,
}

impl<'a> ProgressSink<'a> {
    /// Starts reporting on `job`: writes its first status and tells systemd.
    pub fn start(
        config: &Config,
        spool: &'a Spool,
        claimed: &'a Claimed,
        job: &'a Job,
        pulse: Pulse<'a>,
        device: i32,
        stall: stall::Hook<'a>,
    ) -> ProgressSink<'a> {
        let status = JobStatus::starting(
            &job.id,
            &job.model,
            job.prompts.len(),
            job.steps,
            job.image_count(),
        );
        let _ = spool.write_status(claimed, &status);
        notify::status(&format!("job {}: starting", job.id));
        ProgressSink {
            spool,
            claimed,
            job,
            pulse,
            device,
            timings: Timings::read(&Timings::path(&spool.layout().root))
                .on_device(&crate::spool::hostname(), device),
            work: eta::StepCounter::new(config).job_work(job),
            clock: JobClock::start(),
            status,
            last_report: Instant::now(),
            last: None,
            stall,
        }
    }

    /// The job run's progress callback.
    pub fn on_progress(&mut self, p: &Progress) {
        self.stall.wait();
        self.pulse.beat();
        let now = Instant::now();
        let w = &self.work[p.prompt.min(self.work.len().saturating_sub(1))];
        if let Some(seconds) = self.clock.step(&self.job.model, w, p, now) {
            crate::app::web::metrics::telemetry().record_unet_step(
                &self.job.model,
                w.width,
                w.height,
                self.device,
                seconds,
            );
        }
        self.last = Some(*p);
        if !self.report_due(p, now) {
            return;
        }
        self.write_status(p);
        self.tell_systemd(p);
        tracing::debug!(
            prompt = p.prompt,
            step = p.step,
            of = p.steps,
            images_done = p.images_done,
            "progress"
        );
    }

    /// Whether to report `p`: at most every [`REPORT_EVERY`], and always a batch's last step.
    fn report_due(&mut self, p: &Progress, now: Instant) -> bool {
        if now.duration_since(self.last_report) < REPORT_EVERY && p.step != p.steps {
            return false;
        }
        self.last_report = now;
        true
    }

    fn write_status(&mut self, p: &Progress) {
        self.status.prompt_index = p.prompt;
        self.status.step = p.step as u32;
        self.status.step_total = p.steps as u32;
        self.status.images_done = p.images_done;
        self.status.updated_at = SystemTime::now();
        self.status.eta_seconds = Some(self.eta_seconds(p));
        if let Err(e) = self.spool.write_status(self.claimed, &self.status) {
            tracing::warn!(error = %e, "could not write the job status");
        }
    }

    /// Seconds left: from the speed measured on this spool and in this job, or, with nothing
    /// measured yet, extrapolated from the time spent so far.
    fn eta_seconds(&self, p: &Progress) -> u64 {
        let fraction_of_batch = p.step as f64 / p.steps.max(1) as f64;
        let measured = eta::remaining_seconds(
            &self.timings.with_live(&self.clock.measured),
            &self.job.model,
            &self.work,
            self.job.max_batch as usize,
            p.images_done,
            (p.batch, fraction_of_batch),
        );
        match measured {
            Some(s) => s.round() as u64,
            None => {
                let done = p.images_done as f64 + p.batch as f64 * fraction_of_batch;
                let fraction = (done / p.images_total.max(1) as f64).clamp(1e-6, 1.0);
                (self.clock.elapsed().as_secs_f64() * (1.0 - fraction) / fraction) as u64
            }
        }
    }

    fn tell_systemd(&self, p: &Progress) {
        notify::status(&format!(
            "job {}: prompt {}/{}, step {}/{}, {}/{} images",
            self.job.id,
            p.prompt + 1,
            p.prompts,
            p.step,
            p.steps,
            p.images_done,
            p.images_total
        ));
    }

    /// Ends the job's reporting: folds its measured speed into the spool's timings (also for a
    /// job stopped part-way; `rendered` images were made by this run). Returns the run's time.
    pub fn finish(self, rendered: usize, host: &str, provider: &str) -> Duration {
        let elapsed = self.clock.elapsed();
        let measured = self.clock.finish(&self.job.model, &self.work, rendered);
        let path = Timings::path(&self.spool.layout().root);
        if let Err(e) = Timings::record_on_device(&path, &measured, host, provider, self.device) {
            tracing::warn!(file = %path.display(), error = %e, "cannot record the job's timings");
        }
        elapsed
    }
}

/// A fault injected for the tests of the watchdog, in debug builds only: with
/// `SDSPOOL_TEST_STALL_DEVICE=<id>` in the environment, the worker of that device stops at its
/// first denoising step, without beating, until its job is stopped (a hung GPU call, as far as
/// the heartbeat can tell).
pub mod stall {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// The environment variable naming the device whose worker stalls.
    pub const ENV: &str = "SDSPOOL_TEST_STALL_DEVICE";

    /// The hook of one job run; does nothing unless armed.
    pub struct Hook<'a> {
        stop: Option<&'a AtomicBool>,
    }

    impl<'a> Hook<'a> {
        /// Armed when this is a debug build and [`ENV`] names `device`; `stop` ends the stall.
        pub fn new(device: i32, stop: &'a AtomicBool) -> Hook<'a> {
            let armed = cfg!(debug_assertions)
                && std::env::var(ENV).is_ok_and(|v| v.trim() == device.to_string());
            Hook {
                stop: armed.then_some(stop),
            }
        }

        /// Stalls once, when armed.
        pub fn wait(&mut self) {
            if let Some(stop) = self.stop.take() {
                tracing::warn!("{ENV}: stalling this worker until its job is stopped");
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work() -> PromptWork {
        PromptWork {
            width: 64,
            height: 64,
            guided: true,
            calls_per_batch: 3,
            candidates: 2,
        }
    }

    fn progress(step: usize) -> Progress {
        Progress {
            prompt: 0,
            prompts: 1,
            step,
            steps: 3,
            batch: 2,
            images_done: 0,
            images_total: 2,
        }
    }

    #[test]
    fn consecutive_steps_of_a_batch_measure_the_unet_and_the_rest_is_per_image() {
        let w = work();
        let mut clock = JobClock::start();
        let t0 = Instant::now();
        for step in 1..=3 {
            let at = t0 + Duration::from_millis(100 * step as u64);
            clock.step("m", &w, &progress(step), at);
        }
        // Two gaps of 100 ms between three calls, at UNet batch 4 (2 candidates, guided).
        let mean = clock.measured.mean_step("m", 64, 64, 4).unwrap();
        assert!((mean - 0.1).abs() < 1e-9, "{mean}");
        assert!(clock.measured.mean_step("m", 64, 64, 2).is_none());
        // A step that does not follow the previous one (another batch) measures nothing.
        let mut other = JobClock::start();
        other.step("m", &w, &progress(1), t0);
        other.step("m", &w, &progress(3), t0 + Duration::from_secs(9));
        assert!(other.measured.mean_step("m", 64, 64, 4).is_none());
        let m = clock.finish("m", &[w], 2);
        assert!(!m.is_empty());
    }

    #[test]
    fn the_stall_hook_is_off_unless_the_environment_names_the_device() {
        let stop = std::sync::atomic::AtomicBool::new(false);
        // The tests never set the variable: a disarmed hook returns at once.
        assert!(std::env::var(stall::ENV).is_err());
        stall::Hook::new(0, &stop).wait();
    }
}
