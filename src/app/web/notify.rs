//! Webhooks and the notify command: a JSON summary when a job is done or failed, and when the
//! queue empties (the night's summary: jobs, images, failures, time).
//!
//! Rendering never waits for them: events go into a bounded channel ([`QUEUE`] deep; when it is
//! full the event is dropped with a warning) and one sender thread delivers them, each POST with
//! a timeout (`notify.timeout_seconds`) and `notify.retries` further tries after 1 s, 2 s, 4 s,
//! ...; a receiver that hangs or answers 500 costs that thread time, not the workers. The
//! command (`notify.command`) gets the event's JSON file as its first argument and the job's
//! result or error file, when there is one, as its second; it is killed after the timeout.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::app::config::serve::NotifyConfig;

/// Events waiting for the sender thread at most.
pub const QUEUE: usize = 256;

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    JobDone {
        job: String,
        model: String,
        images: usize,
        kept: usize,
        seconds: f64,
        output: String,
        manifest: String,
        result_file: String,
    },
    JobFailed {
        job: String,
        step: String,
        message: String,
        error_file: String,
    },
    QueueEmpty(Night),
}

/// The work since the queue was last empty.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Night {
    pub jobs: usize,
    pub done: usize,
    pub failed: usize,
    pub images: usize,
    /// Seconds from the first job's end to the last.
    pub seconds: f64,
    #[serde(with = "crate::spool::fsops::rfc3339")]
    pub since: SystemTime,
}

/// What a delivery carries: the event, where and when.
#[derive(Debug, Clone, Serialize)]
struct Envelope<'a> {
    #[serde(flatten)]
    event: &'a Event,
    host: String,
    #[serde(with = "crate::spool::fsops::rfc3339")]
    at: SystemTime,
}

/// The daemon's notifier (when `notify:` configures anything).
pub struct Notifier {
    tx: SyncSender<Event>,
    night: Mutex<Option<(Night, Instant)>>,
    /// Events sent and not yet delivered (or given up).
    pending: Mutex<usize>,
    settled: Condvar,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// The process's notifier, once [`install`]ed.
pub fn notifier() -> Option<&'static Notifier> {
    NOTIFIER.get()
}

/// Starts the sender thread for `config` (once per process; the daemon's call). `events_dir`
/// holds the event files passed to the command.
pub fn install(config: &NotifyConfig, base_dir: &Path, events_dir: PathBuf) {
    if config.is_empty() || NOTIFIER.get().is_some() {
        return;
    }
    let (tx, rx) = sync_channel::<Event>(QUEUE);
    let _ = NOTIFIER.set(Notifier {
        tx,
        night: Mutex::new(None),
        pending: Mutex::new(0),
        settled: Condvar::new(),
    });
    let sender = Sender {
        agent: webhook_agent(config),
        config: config.clone(),
        command: config.command.as_ref().map(|c| resolve(c, base_dir)),
        events_dir,
    };
    let spawned = std::thread::Builder::new()
        .name("sdspool-notify".into())
        .spawn(move || {
            for event in rx {
                sender.deliver(&event);
                if let Some(n) = notifier() {
                    n.settle_one();
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the notify thread; webhooks are off");
    }
}

fn resolve(command: &Path, base: &Path) -> PathBuf {
    if command.is_relative() && command.components().count() > 1 {
        base.join(command)
    } else {
        command.to_path_buf()
    }
}

impl Notifier {
    /// Queues `event` without waiting; dropped (and logged) when the queue is full.
    pub fn send(&self, event: Event) {
        *self.lock_pending() += 1;
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => {
                self.settle_one();
                tracing::warn!(event = ?e, "the notify queue is full; event dropped");
            }
        }
    }

    /// A job ended: counts it into the night, sends its event, and, when `queue_empty` says
    /// nothing is left, the night's summary.
    pub fn job_ended(&self, event: Event, queue_empty: bool) {
        let now = Instant::now();
        let summary = {
            let mut night = self.night.lock().unwrap_or_else(|e| e.into_inner());
            let (n, started) = night.get_or_insert_with(|| {
                (
                    Night {
                        jobs: 0,
                        done: 0,
                        failed: 0,
                        images: 0,
                        seconds: 0.0,
                        since: SystemTime::now(),
                    },
                    now,
                )
            });
            n.jobs += 1;
            match &event {
                Event::JobDone { images, .. } => {
                    n.done += 1;
                    n.images += images;
                }
                Event::JobFailed { .. } => n.failed += 1,
                Event::QueueEmpty(_) => {}
            }
            n.seconds = now.duration_since(*started).as_secs_f64();
            if queue_empty {
                night.take().map(|(n, _)| n)
            } else {
                None
            }
        };
        self.send(event);
        if let Some(n) = summary {
            self.send(Event::QueueEmpty(n));
        }
    }

    /// Waits until every event sent so far is delivered or given up, at most `limit` (the
    /// daemon's exit).
    pub fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut pending = self.lock_pending();
        while *pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    events = *pending,
                    "exiting with notifications not delivered"
                );
                return;
            }
            pending = self
                .settled
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn settle_one(&self) {
        let mut p = self.lock_pending();
        *p = p.saturating_sub(1);
        self.settled.notify_all();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, usize> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sender thread's side.
struct Sender {
    agent: ureq::Agent,
    config: NotifyConfig,
    command: Option<PathBuf>,
    events_dir: PathBuf,
}

impl Sender {
    fn deliver(&self, event: &Event) {
        let body = match serde_json::to_string(&Envelope {
            event,
            host: crate::spool::hostname(),
            at: SystemTime::now(),
        }) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "cannot encode a notification"),
        };
        for url in &self.config.webhooks {
            post_with_retries(&self.agent, url, &body, self.config.retries);
        }
        if let Some(command) = &self.command {
            self.run_command(command, event, &body);
        }
    }

    fn run_command(&self, command: &Path, event: &Event, body: &str) {
        let file = self.events_dir.join(format!(
            "event-{}-{}.json",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        if let Err(e) = std::fs::create_dir_all(&self.events_dir)
            .and_then(|()| crate::sys::atomic::write(&file, body.as_bytes()))
        {
            return tracing::warn!(file = %file.display(), error = %e, "cannot write the event file for notify.command");
        }
        let second = match event {
            Event::JobDone { result_file, .. } => Some(result_file.as_str()),
            Event::JobFailed { error_file, .. } => Some(error_file.as_str()),
            Event::QueueEmpty(_) => None,
        };
        let mut cmd = std::process::Command::new(command);
        cmd.arg(&file)
            .args(second)
            .stdin(std::process::Stdio::null());
        match run_bounded(&mut cmd, self.config.timeout()) {
            Ok(status) if status.success() => {}
            Ok(status) => {
                tracing::warn!(command = %command.display(), %status, "notify.command failed")
            }
            Err(e) => {
                tracing::warn!(command = %command.display(), error = %e, "notify.command could not run")
            }
        }
        let _ = std::fs::remove_file(&file);
    }
}

/// Runs `cmd`, killing it after `limit`.
fn run_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("killed after {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The HTTP client of webhook deliveries: `notify.timeout_seconds` per delivery, TLS checked
/// against the system's CAs and `notify.ca_file` ([`crate::sys::trust`]). A CA file that cannot be
/// read now (the config check read it at start) is logged and left out.
pub fn webhook_agent(config: &NotifyConfig) -> ureq::Agent {
    let tls = crate::sys::trust::tls_config(config.ca_file.as_deref()).unwrap_or_else(|e| {
        let e = crate::app::logging::error_chain(&e.into());
        tracing::error!(error = %e, "notify.ca_file left out");
        crate::sys::trust::tls_config(None).unwrap_or_default()
    });
    ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout()))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into()
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the receiver answered {0}")]
    Refused(u16),
    #[error(
        "the receiver's TLS certificate is not trusted (for a private CA, set notify.ca_file to its PEM certificate)"
    )]
    Untrusted(#[source] ureq::Error),
    #[error("cannot reach the receiver")]
    Unreachable(#[source] ureq::Error),
}

/// One POST of `body` to `url`.
pub fn post_once(agent: &ureq::Agent, url: &str, body: &str) -> Result<(), DeliveryError> {
    match agent
        .post(url)
        .header("content-type", "application/json")
        .send(body)
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(DeliveryError::Refused(r.status().as_u16())),
        Err(e) if is_certificate_error(&e) => Err(DeliveryError::Untrusted(e)),
        Err(e) => Err(DeliveryError::Unreachable(e)),
    }
}

/// Whether rustls refused the receiver's certificate (ureq reports it as itself, or inside the
/// I/O error of the handshake).
fn is_certificate_error(e: &ureq::Error) -> bool {
    let tls = match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(
        tls,
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// Posts `body` to `url`: `retries` further tries after a failure, waiting 1 s, 2 s, 4 s, ...
/// (at most 30 s). Returns whether it was delivered (a 2xx answer).
pub fn post_with_retries(agent: &ureq::Agent, url: &str, body: &str, retries: u32) -> bool {
    let mut wait = Duration::from_secs(1);
    for attempt in 0..=retries {
        match post_once(agent, url, body) {
            Ok(()) => return true,
            Err(e) => {
                let e = crate::app::logging::error_chain(&e.into());
                tracing::warn!(url, attempt, error = %e, "webhook not delivered")
            }
        }
        if attempt < retries {
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
    tracing::warn!(url, "giving up on a notification");
    false
}
