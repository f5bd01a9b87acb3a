//! `sdspool status`: jobs per state, the running jobs with their progress and ETA (stale ones
//! marked), and the queued jobs in the order they will run; `--json` for machines.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::Config;
use crate::spool::SpoolError;
use crate::spool::status::{self, Overview};

/// The spool's state as text (or JSON with `json`).
pub fn run(config: &Config, json: bool) -> Result<String, SpoolError> {
    let overview = status::overview(&config.spool, config.limits.max_job_bytes)?;
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

fn duration(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The text form.
pub fn render(o: &Overview) -> String {
    let mut out = String::new();
    let c = &o.counts;
    let _ = writeln!(out, "spool {}", o.spool_dir.display());
    let _ = writeln!(
        out,
        "incoming {}, running {}, done {}, failed {}",
        c.incoming, c.running, c.done, c.failed
    );
    if !o.running.is_empty() {
        let _ = writeln!(out, "\nrunning:");
    }
    for r in &o.running {
        let owner = match (&r.host, r.pid) {
            (Some(h), Some(pid)) => format!("pid {pid} on {h}"),
            _ => "owner unknown".to_string(),
        };
        let attempt = r
            .attempts
            .map(|a| format!("attempt {a}, "))
            .unwrap_or_default();
        let progress = match &r.progress {
            Some(p) => {
                let eta = p
                    .eta_seconds
                    .map(|s| format!(", ETA {}", duration(s)))
                    .unwrap_or_default();
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
                Some(s)
                    if s > status::STALE_AFTER.as_secs() && r.host.as_deref() != Some(&o.host) =>
                {
                    format!(
                        "  (no update for {}; its host cannot be checked from here)",
                        duration(s)
                    )
                }
                _ => String::new(),
            }
        };
        let _ = writeln!(out, "  {}  {progress}  ({attempt}{owner}){stale}", r.name);
    }
    if !o.queued.is_empty() {
        let _ = writeln!(out, "\nqueued, in the order they will run:");
    }
    for (i, q) in o.queued.iter().enumerate() {
        let age = crate::spool::fsops::age(q.submitted).as_secs();
        let note = q
            .note
            .as_deref()
            .map(|n| format!("  -- {n}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:>3}. {}  priority {}  submitted {} ago{note}",
            i + 1,
            q.name,
            q.priority,
            duration(age)
        );
    }
    out
}
