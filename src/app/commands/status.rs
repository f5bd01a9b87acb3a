//! `sdspool status`: jobs per state, the running jobs with their progress and ETA (stale ones
//! marked), and the queued jobs in the order they will run; `--json` for machines.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::app::config::Config;
use crate::jobs::eta::{self, Timings};
use crate::spool::control::Control;
use crate::spool::names::{self, NameKind};
use crate::spool::status::{self, Overview, QueuedJob, RunningJob};
use crate::spool::{JobStatus, SpoolError};

/// How the note of a queued job that a cancel request names begins.
const CANCEL_NOTE: &str = "CANCEL requested";

/// The spool's state as text (or JSON with `json`).
pub fn run(config: &Config, json: bool) -> Result<String, SpoolError> {
    let mut overview = status::overview(&config.spool, config.limits.max_job_bytes)?;
    note_cancel_requests(&mut overview);
    estimate_queue(config, &mut overview);
    if json {
        let mut text = serde_json::to_string_pretty(&overview).map_err(|e| {
            SpoolError::new(
                &config.spool.dir,
                "formatting the status",
                std::io::Error::other(e),
            )
        })?;
        text.push('\n');
        return Ok(text);
    }
    Ok(render(&overview))
}

/// Notes the queued jobs that a cancel request names (left by a user who may not move them to
/// failed/ himself): a daemon files them as cancelled instead of running them.
fn note_cancel_requests(o: &mut Overview) {
    let control = Control::new(&o.spool_dir);
    let incoming = o.spool_dir.join(crate::spool::INCOMING);
    for q in &mut o.queued {
        let NameKind::Job { stem } = names::classify(std::ffi::OsStr::new(&q.name)) else {
            continue;
        };
        if let Some(r) = control
            .cancel_request_of(&stem)
            .filter(|r| r.names(&incoming.join(&q.name)))
        {
            q.note = Some(format!(
                "{CANCEL_NOTE} by {}: a daemon files it in failed/ instead of running it",
                r.by
            ));
        }
    }
}

/// Fills in each queued job's estimate from the spool's measured timings, and when it starts
/// and finishes: the queue is laid out in order over the workers (one per configured device),
/// each free once its running job's ETA has passed.
pub fn estimate_queue(config: &Config, o: &mut Overview) {
    let timings = Timings::read(&Timings::path(&o.spool_dir));
    let mut counter = eta::StepCounter::new(config);
    let workers = config.execution.device_ids.len().max(1);
    // Seconds until each worker is free; `None`: unknown.
    let mut free: Vec<Option<f64>> = o
        .running
        .iter()
        .filter(|r| !r.stale)
        .map(|r| r.finishes_in_seconds.map(|s| s as f64))
        .collect();
    while free.len() < workers {
        free.push(Some(0.0));
    }
    for q in &mut o.queued {
        if q.note
            .as_deref()
            .is_some_and(|n| n.starts_with("will fail") || n.starts_with(CANCEL_NOTE))
        {
            continue;
        }
        let path = o.spool_dir.join(crate::spool::INCOMING).join(&q.name);
        let Ok(job) = crate::jobs::job::load_spooled(&path, config) else {
            continue;
        };
        let estimate = eta::estimate_job(&timings, &mut counter, &job);
        // The worker free first; unknown ones last.
        let (i, start) = free
            .iter()
            .enumerate()
            .min_by(|a, b| match (a.1, b.1) {
                (Some(x), Some(y)) => x.total_cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            })
            .map(|(i, s)| (i, *s))
            .unwrap_or((0, None));
        let end = start.zip(estimate.seconds).map(|(a, b)| a + b);
        q.starts_in_seconds = start.map(|s| s.round() as u64);
        q.finishes_in_seconds = end.map(|s| s.round() as u64);
        free[i] = end;
        q.estimate = Some(estimate);
    }
}

fn duration(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The text form.
pub fn render(o: &Overview) -> String {
    let mut out = header(o);
    if !o.running.is_empty() {
        out.push_str("\nrunning:\n");
    }
    for r in &o.running {
        out.push_str(&running_line(o, r));
    }
    if !o.queued.is_empty() {
        out.push_str("\nqueued, in the order they will run:\n");
    }
    for (i, q) in o.queued.iter().enumerate() {
        out.push_str(&queued_line(o, i, q));
    }
    out
}

/// The spool, the counts per state, and the pause.
fn header(o: &Overview) -> String {
    let mut out = String::new();
    let c = &o.counts;
    let _ = writeln!(out, "spool {}", o.spool_dir.display());
    let _ = writeln!(
        out,
        "incoming {}, running {}, done {}, failed {}",
        c.incoming, c.running, c.done, c.failed
    );
    if let Some(p) = &o.paused {
        let by = if p.by.is_empty() {
            String::new()
        } else {
            format!(" by {}", p.by)
        };
        let reason = p
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "PAUSED since {}{by}{reason}: no job starts until `sdspool resume`; running jobs finish",
            crate::spool::fsops::rfc3339::format(p.paused_at)
        );
    }
    out
}

/// One running job: its progress, owner, and whether it is stale or asked to stop.
fn running_line(o: &Overview, r: &RunningJob) -> String {
    let owner = match (&r.host, r.pid) {
        (Some(h), Some(pid)) => format!("pid {pid} on {h}"),
        _ => "owner unknown".to_string(),
    };
    let attempt = r
        .attempts
        .map(|a| format!("attempt {a}, "))
        .unwrap_or_default();
    let progress = match &r.progress {
        Some(p) => progress_text(p),
        None => match &r.progress_error {
            Some(e) => format!("progress unreadable: {e}"),
            None => "starting (no progress yet)".to_string(),
        },
    };
    let stale = if r.stale {
        format!(
            "  STALE: no update for {} and pid {} is not running on this host",
            duration(r.seconds_since_update.unwrap_or(0)),
            r.pid.unwrap_or(0)
        )
    } else {
        match r.seconds_since_update {
            Some(s) if s > status::STALE_AFTER.as_secs() && r.host.as_deref() != Some(&o.host) => {
                format!(
                    "  (no update for {}; its host cannot be checked from here)",
                    duration(s)
                )
            }
            _ => String::new(),
        }
    };
    let cancel = r
        .cancel_requested
        .as_ref()
        .map(|c| format!("  CANCEL requested by {}: stops at its next step", c.by))
        .unwrap_or_default();
    format!(
        "  {}  {progress}  ({attempt}{owner}){stale}{cancel}\n",
        r.name
    )
}

/// Where a running job is, and its ETA or why it waits.
fn progress_text(p: &JobStatus) -> String {
    let eta = match &p.waiting {
        Some(w) => format!(
            "; WAITING: cannot write its files ({}), next try in {}",
            w.reason,
            duration(
                w.retry_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs()
            )
        ),
        None => p
            .eta_seconds
            .map(|s| format!(", ETA {}", duration(s)))
            .unwrap_or_default(),
    };
    format!(
        "{} {}: prompt {}/{}, step {}/{}, images {}/{}{eta}",
        p.job_id,
        p.model,
        (p.prompt_index + 1).min(p.prompt_total.max(1)),
        p.prompt_total,
        p.step,
        p.step_total,
        p.images_done,
        p.images_total
    )
}

/// One queued job (the `i`-th in run order): its work, when it starts and ends, and its note.
fn queued_line(o: &Overview, i: usize, q: &QueuedJob) -> String {
    let age = crate::spool::fsops::age(q.submitted).as_secs();
    let note = q
        .note
        .as_deref()
        .map(|n| format!("  -- {n}"))
        .unwrap_or_default();
    let work = match &q.estimate {
        Some(e) => format!(
            "  {} image{}, {} UNet steps, {}",
            e.images,
            if e.images == 1 { "" } else { "s" },
            e.unet_calls,
            time_text(o, q, e)
        ),
        None => String::new(),
    };
    format!(
        "  {:>3}. {}  priority {}  submitted {} ago{work}{note}\n",
        q.position.max(i + 1),
        q.name,
        q.priority,
        duration(age)
    )
}

/// How long a queued job takes, and when it starts and is done.
fn time_text(o: &Overview, q: &QueuedJob, e: &eta::Estimate) -> String {
    let Some(s) = e.seconds else {
        return "no speed measured for its model yet".to_string();
    };
    let scaled = if e.basis == Some(eta::Basis::Scaled) {
        ", scaled from other sizes"
    } else {
        ""
    };
    let when = match (q.starts_in_seconds, q.finishes_in_seconds) {
        (Some(a), Some(b)) => format!(
            "; {}starts in ~{}, done in ~{}",
            if o.paused.is_some() {
                "once resumed, "
            } else {
                ""
            },
            eta::human(a as f64),
            eta::human(b as f64)
        ),
        _ => String::new(),
    };
    format!("takes ~{}{scaled}{when}", eta::human(s))
}
