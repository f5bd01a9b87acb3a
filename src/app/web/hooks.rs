//! What the daemon tells the web side, one call per event, so the daemon's code changes by a
//! line at each place: a job filed in done/ or failed/ (metrics, the static index, webhooks and
//! the night's summary), and the daemon's start and end.

use std::path::Path;
use std::time::Duration;

use super::metrics::telemetry;
use super::notify::{Event, notifier};
use crate::app::config::Config;
use crate::spool::{Failure, Spool};

/// How long the daemon's exit waits for notifications still being delivered.
pub const FLUSH_AT_EXIT: Duration = Duration::from_secs(30);

/// The daemon starts: the notify thread, and the server when `serve.listen` is set.
pub fn daemon_starting(config: &Config) -> anyhow::Result<Option<super::Server>> {
    super::notify::install(
        &config.notify,
        &config.base_dir(),
        config.spool.dir.join("web-cache").join("events"),
    );
    super::server::start_if_configured(config)
}

/// The workers take jobs.
pub fn daemon_ready() {
    telemetry().set_ready();
}

/// The daemon exits: waits for the notifications in flight (bounded).
pub fn daemon_stopping() {
    if let Some(n) = notifier() {
        n.flush(FLUSH_AT_EXIT);
    }
}

/// Whether nothing is left to do in the spool (nothing queued or running).
fn queue_empty(spool: &Spool) -> bool {
    spool
        .overview()
        .map(|o| o.counts.incoming == 0 && o.counts.running == 0)
        .unwrap_or(false)
}

/// What a finished job reports.
pub struct Done<'a> {
    pub stem: &'a str,
    pub model: &'a str,
    pub images: usize,
    pub kept: usize,
    pub rendered: usize,
    pub seconds: f64,
    pub output: &'a Path,
}

/// A job's outputs are complete and it is about to be filed in done/: its folder's
/// `index.html` (and the output root's) is written now, as part of the job, so that a kill
/// before the filing leaves the job in running/ and its resume, which removes the temporaries a
/// killed writer left in the folder, writes the page again.
pub fn job_outputs_written(config: &Config, output: &Path) {
    if let Err(e) = super::static_index::write_job(&config.output_dir, output) {
        tracing::warn!(error = %e, "cannot write the job folder's index.html");
    }
}

/// A job was filed in done/.
pub fn job_done(spool: &Spool, d: Done<'_>, side_file: &Path) {
    telemetry().record_images(d.rendered);
    if let Some(n) = notifier() {
        let manifest = d.output.join(crate::jobs::run::manifest::FILE);
        n.job_ended(
            Event::JobDone {
                job: d.stem.to_string(),
                model: d.model.to_string(),
                images: d.images,
                kept: d.kept,
                seconds: d.seconds,
                output: d.output.display().to_string(),
                manifest: manifest.display().to_string(),
                result_file: side_file.display().to_string(),
            },
            queue_empty(spool),
        );
    }
}

/// A job was filed in failed/.
pub fn job_failed(spool: &Spool, stem: &str, failure: &Failure, side_file: &Path) {
    telemetry().record_failure(&failure.step);
    if let Some(n) = notifier() {
        n.job_ended(
            Event::JobFailed {
                job: stem.to_string(),
                step: failure.step.clone(),
                message: failure.message.clone(),
                error_file: side_file.display().to_string(),
            },
            queue_empty(spool),
        );
    }
}
