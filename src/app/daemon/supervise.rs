//! The daemon's main thread once the workers are loaded: signals, the grace period, the
//! watchdog and hang check, cancel polling, and the workers' ends.
//!
//! - SIGTERM, SIGINT: no new jobs; running jobs get `daemon.grace_seconds` to finish, then stop
//!   at their next step. A second one stops them at once.
//! - SIGHUP: re-reads the configuration file; `defaults`, `limits` and `daemon` apply from the
//!   next job (see [`reloaded`]); an invalid file is reported and the running configuration
//!   kept.
//! - SIGUSR1: logs a status summary: each worker's state, job and time since its last sign of
//!   life, the spool's counts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::UnboundedReceiver;

use super::heartbeat::WorkerReport;
use super::{Shared, notify};
use crate::app::config::Config;
use crate::spool::Spool;
use crate::spool::control::Control;

/// How often running jobs' cancel requests are looked for.
const CANCEL_POLL: Duration = Duration::from_millis(250);
/// How often hangs are checked for without a systemd watchdog.
const HEALTH_CHECK: Duration = Duration::from_secs(5);
/// The hang limit without `daemon.hang_seconds` or a systemd watchdog.
const DEFAULT_HANG: Duration = Duration::from_secs(300);

/// The signals the daemon handles, installed before anything slow starts so that none of them
/// kills the process with its default action.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime's context).
    pub fn install() -> anyhow::Result<Signals> {
        let one = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            term: one(SignalKind::terminate(), "SIGTERM")?,
            int: one(SignalKind::interrupt(), "SIGINT")?,
            hup: one(SignalKind::hangup(), "SIGHUP")?,
            usr1: one(SignalKind::user_defined1(), "SIGUSR1")?,
        })
    }
}

/// The hang limit: `daemon.hang_seconds`, else systemd's watchdog period (twice the ping
/// interval), else [`DEFAULT_HANG`].
pub fn hang_limit(config: &Config, ping_interval: Option<Duration>) -> Duration {
    config
        .daemon
        .hang_seconds
        .map(Duration::from_secs)
        .or(ping_interval.map(|i| i * 2))
        .unwrap_or(DEFAULT_HANG)
}

/// What `SIGHUP` applies of a freshly read configuration: the job defaults, the limits and the
/// daemon section. Everything else (models, devices, providers, the spool, the output folder,
/// reranking) stays as loaded until the next start.
pub fn reloaded(running: &Config, fresh: Config) -> Config {
    let mut next = running.clone();
    next.defaults = fresh.defaults;
    next.limits = fresh.limits;
    next.daemon = fresh.daemon;
    next
}

/// The supervisor's state.
pub struct Supervisor<'a> {
    pub shared: &'a Shared,
    pub spool: &'a Spool,
    pub workers: usize,
    /// Half of `WATCHDOG_USEC`, when systemd set one.
    pub ping_interval: Option<Duration>,
    grace_deadline: Option<tokio::time::Instant>,
    /// Workers reported hung and not yet recovered.
    hung: BTreeSet<usize>,
    first_error: Option<anyhow::Error>,
}

impl<'a> Supervisor<'a> {
    pub fn new(shared: &'a Shared, spool: &'a Spool, workers: usize) -> Supervisor<'a> {
        Supervisor {
            shared,
            spool,
            workers,
            ping_interval: notify::watchdog_interval(),
            grace_deadline: None,
            hung: BTreeSet::new(),
            first_error: None,
        }
    }

    /// Runs until every worker has ended; the first worker error, if any.
    pub async fn run(
        mut self,
        mut signals: Signals,
        mut done: UnboundedReceiver<(i32, anyhow::Result<()>)>,
    ) -> anyhow::Result<()> {
        let control = Control::of(self.spool.layout());
        let mut health = tokio::time::interval(self.ping_interval.unwrap_or(HEALTH_CHECK));
        let mut cancels = tokio::time::interval(CANCEL_POLL);
        let mut workers_left = self.workers;
        while workers_left > 0 {
            let deadline = self.grace_deadline;
            let grace_over = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signals.term.recv() => self.on_stop_signal("SIGTERM"),
                _ = signals.int.recv() => self.on_stop_signal("SIGINT"),
                _ = signals.hup.recv() => self.on_reload(),
                _ = signals.usr1.recv() => self.on_status_request(),
                _ = grace_over => self.on_grace_over(),
                _ = health.tick() => self.check_health(Instant::now()),
                _ = cancels.tick() => self.shared.shutdown.poll_cancels(&control),
                Some((device, result)) = done.recv() => {
                    workers_left -= 1;
                    self.on_worker_end(device, result);
                }
            }
        }
        self.first_error.map_or(Ok(()), Err)
    }

    fn on_stop_signal(&mut self, name: &str) {
        let grace = Duration::from_secs(self.shared.config().daemon.grace_seconds);
        if self.shared.shutdown.stop_taking() {
            tracing::warn!(
                signal = name,
                "second signal: stopping running jobs now (they resume on the next start)"
            );
            self.shared.shutdown.stop_now();
            return;
        }
        tracing::info!(
            signal = name,
            grace_seconds = grace.as_secs(),
            "stopping: no new jobs; running jobs get the grace period to finish"
        );
        notify::stopping(&format!("stopping ({name}): finishing the current jobs"));
        self.grace_deadline = Some(tokio::time::Instant::now() + grace);
    }

    fn on_grace_over(&mut self) {
        tracing::warn!(
            "grace period over; stopping running jobs at their next step (they resume on the next start)"
        );
        self.shared.shutdown.stop_now();
        self.grace_deadline = None;
    }

    fn on_worker_end(&mut self, device: i32, result: anyhow::Result<()>) {
        if let Err(e) = result {
            tracing::error!(device, error = %crate::app::logging::error_chain(&e), "worker stopped with an error");
            self.shared.shutdown.stop_taking();
            self.first_error.get_or_insert(e);
        }
    }

    /// Reports hung workers (once each) and pings the watchdog only while none is hung.
    fn check_health(&mut self, now: Instant) {
        let limit = hang_limit(&self.shared.config(), self.ping_interval);
        let hung = self.shared.heartbeats.hung(now, limit);
        let ids: BTreeSet<usize> = hung.iter().map(|r| r.worker).collect();
        for r in hung.iter().filter(|r| !self.hung.contains(&r.worker)) {
            tracing::error!(
                device = r.device, state = %r.state, job = r.job.as_deref().unwrap_or("-"),
                quiet_seconds = r.quiet.as_secs(), hang_seconds = limit.as_secs(),
                "worker shows no progress: hung; not pinging the systemd watchdog (systemd restarts the daemon)"
            );
        }
        for r in self.shared.heartbeats.reports(now) {
            if self.hung.contains(&r.worker) && !ids.contains(&r.worker) {
                tracing::info!(device = r.device, "worker shows progress again");
            }
        }
        self.hung = ids;
        if self.hung.is_empty() && self.ping_interval.is_some() {
            notify::watchdog();
        }
    }

    fn on_reload(&mut self) {
        let running = self.shared.config();
        let path = running.source.clone();
        notify::reloading("re-reading the configuration (SIGHUP)");
        match Config::load(&path) {
            Ok(fresh) => {
                self.shared.set_config(reloaded(&running, fresh));
                tracing::info!(
                    file = %path.display(),
                    "configuration re-read (SIGHUP): `defaults`, `limits` and `daemon` apply from the next job; other sections take effect at the next start"
                );
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                tracing::error!(
                    file = %path.display(), error = %crate::app::logging::error_chain(&e),
                    "cannot re-read the configuration (SIGHUP); keeping the running one"
                );
            }
        }
        notify::ready("running; configuration re-read");
    }

    fn on_status_request(&self) {
        let counts = spool_counts(self.spool);
        tracing::info!(
            workers = self.workers,
            paused = Control::of(self.spool.layout()).is_paused(),
            waiting_for_a_worker = self.shared.dispatch.len(),
            stopping = self.shared.shutdown.is_stopping(),
            spool = %counts,
            "status (SIGUSR1)"
        );
        for r in self.shared.heartbeats.reports(Instant::now()) {
            log_worker(&r);
        }
    }
}

fn log_worker(r: &WorkerReport) {
    tracing::info!(
        device = r.device,
        state = %r.state,
        job = r.job.as_deref().unwrap_or("-"),
        last_sign_of_life_seconds_ago = r.quiet.as_secs_f64(),
        "worker status (SIGUSR1)"
    );
}

/// `2 incoming, 1 running, 3 done, 0 failed`; empty when the spool cannot be read.
pub fn spool_counts(spool: &Spool) -> String {
    spool
        .overview()
        .map(|o| {
            let c = o.counts;
            format!(
                "{} incoming, {} running, {} done, {} failed",
                c.incoming, c.running, c.done, c.failed
            )
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        let base = "models:\n  m:\n    path: /m\n  n:\n    path: /n\ndefault_model: m\n";
        Config::parse(
            &format!("{base}{text}"),
            Path::new("/etc/sdspool/config.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn sighup_applies_defaults_limits_and_daemon_and_keeps_the_rest() {
        let running = config(
            "execution:\n  device_ids: [0, 1]\ndefaults:\n  steps: 20\nlimits:\n  max_steps: 50\ndaemon:\n  grace_seconds: 5\n",
        );
        let mut fresh = config(
            "defaults:\n  steps: 9\nlimits:\n  max_steps: 99\ndaemon:\n  grace_seconds: 1\n  hang_seconds: 30\n",
        );
        fresh.execution.device_ids = vec![7];
        fresh.default_model = Some("n".into());
        fresh.output_dir = "/elsewhere".into();
        let next = reloaded(&running, fresh);
        assert_eq!(next.defaults.steps, 9);
        assert_eq!(next.limits.max_steps, 99);
        assert_eq!(
            (next.daemon.grace_seconds, next.daemon.hang_seconds),
            (1, Some(30))
        );
        assert_eq!(next.execution.device_ids, [0, 1], "devices stay");
        assert_eq!(next.default_model.as_deref(), Some("m"));
        assert_eq!(next.output_dir, running.output_dir);
    }

    #[test]
    fn the_hang_limit_is_the_setting_else_the_watchdog_period_else_five_minutes() {
        let ping = Some(Duration::from_secs(15));
        assert_eq!(hang_limit(&config(""), ping), Duration::from_secs(30));
        assert_eq!(hang_limit(&config(""), None), DEFAULT_HANG);
        let set = config("daemon:\n  hang_seconds: 7\n");
        assert_eq!(hang_limit(&set, ping), Duration::from_secs(7));
    }
}
