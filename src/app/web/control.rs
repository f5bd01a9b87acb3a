//! Control from the page: pause, resume, cancel and priority, only when `serve.control_token`
//! is set, and only with that token on the request itself (the form's `token` field or an
//! `Authorization: Bearer` header; compared in constant time). No cookie or session carries it,
//! so another site cannot make a browser send a state-changing request (no CSRF). Without a
//! configured token every control request is refused: the server is read-only.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::AppState;
use super::respond::{blocking, error};
use crate::app::config::Config;

/// The form of a control request.
#[derive(Debug, Default, Deserialize)]
pub struct ControlForm {
    pub token: Option<String>,
    /// The job's name in the spool (cancel, priority).
    pub job: Option<String>,
    pub priority: Option<i32>,
    pub reason: Option<String>,
}

/// What a control request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Pause(Option<String>),
    Resume,
    Cancel(String),
    Priority(String, i32),
}

/// Whether `given` is `expected`, in time that does not depend on where they differ.
pub fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = (a.len() != b.len()) as u8;
    for (k, x) in a.iter().enumerate() {
        diff |= x ^ b.get(k).copied().unwrap_or(0);
    }
    diff == 0
}

/// Why a request may not change anything, if it may not (the refusal, ready to send).
#[allow(clippy::result_large_err)]
pub fn authorize(
    config: &Config,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), Response> {
    let Some(expected) = config.serve.control_token.as_deref() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "control is off: this server is read-only (serve.control_token is not set)",
        ));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match form_token.or(bearer) {
        Some(t) if token_matches(expected, t) => Ok(()),
        Some(_) => Err(error(StatusCode::FORBIDDEN, "wrong control token")),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "a control token is required",
        )),
    }
}

fn action(name: &str, form: &ControlForm) -> Result<Action, String> {
    let job = || {
        form.job
            .clone()
            .filter(|j| !j.is_empty())
            .ok_or("`job` is missing")
    };
    Ok(match name {
        "pause" => Action::Pause(form.reason.clone().filter(|r| !r.is_empty())),
        "resume" => Action::Resume,
        "cancel" => Action::Cancel(job()?),
        "priority" => Action::Priority(job()?, form.priority.ok_or("`priority` is missing")?),
        other => return Err(format!("no such action `{other}`")),
    })
}

/// `POST /control/<pause|resume|cancel|priority>`.
pub async fn act(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<ControlForm>,
) -> Response {
    if let Err(refused) = authorize(&state.config, &headers, form.token.as_deref()) {
        return refused;
    }
    let act = match action(&name, &form) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let config = state.config.clone();
    tracing::info!(action = ?act, "control request from the web page");
    match blocking(move || apply(&config, act)).await {
        Some(Ok(())) => Redirect::to("/").into_response(),
        Some(Err(e)) => error(StatusCode::CONFLICT, e),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "the request failed"),
    }
}

/// Does `act` through the same code as the command line.
pub fn apply(config: &Config, act: Action) -> Result<(), String> {
    use crate::app::commands::control;
    match act {
        Action::Pause(reason) => {
            control::pause(config, reason.or(Some("from the web page".into())))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Action::Resume => control::resume(config)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Action::Cancel(job) => control::cancel(config, &job)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Action::Priority(job, p) => set_priority(config, &job, p),
    }
}

#[derive(Deserialize)]
struct PriorityOnly {
    priority: Option<i32>,
}

/// Sets a queued job's `priority:` by rewriting its file in incoming/ (atomically, keeping its
/// modification time, so it keeps its place among jobs of the same priority); the daemon reads
/// it again.
pub fn set_priority(config: &Config, job: &str, priority: i32) -> Result<(), String> {
    let stem = job.trim_end_matches(".yaml");
    if super::files::safe_rel(stem).is_none_or(|s| s.contains('/')) {
        return Err(format!("`{job}` is not a job name"));
    }
    let path = crate::spool::Layout::new(&config.spool.dir)
        .incoming
        .join(format!("{stem}.yaml"));
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{job} is not queued: {e}"))?;
    if !meta.is_file() || meta.len() > config.limits.max_job_bytes {
        return Err(format!("{job} is not a queued job file"));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let changed = with_priority(&text, priority);
    match serde_saphyr::from_str::<PriorityOnly>(&changed) {
        Ok(p) if p.priority == Some(priority) => {}
        _ => {
            return Err(format!(
                "{job}: cannot set its priority in place (write `priority:` as a top-level line)"
            ));
        }
    }
    let tmp = crate::sys::atomic::temp_path(&path);
    let write = || -> std::io::Result<()> {
        let f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut &f, changed.as_bytes())?;
        f.set_modified(meta.modified()?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: cannot rewrite it: {e}", path.display())
    })
}

/// `text` with its top-level `priority:` line set to `priority` (added when there is none).
pub fn with_priority(text: &str, priority: i32) -> String {
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("priority:") || line.starts_with("priority :") {
                found = true;
                format!("priority: {priority}")
            } else {
                line.to_string()
            }
        })
        .collect();
    if !found {
        out.push(format!("priority: {priority}"));
    }
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_match_exactly() {
        assert!(token_matches("0123456789abcdef", "0123456789abcdef"));
        for wrong in [
            "",
            "0123456789abcdeF",
            "0123456789abcde",
            "0123456789abcdef0",
        ] {
            assert!(!token_matches("0123456789abcdef", wrong), "{wrong}");
        }
    }

    #[test]
    fn priority_is_replaced_or_added() {
        assert_eq!(
            with_priority("prompts: [a]\npriority: 1\n", 5),
            "prompts: [a]\npriority: 5\n"
        );
        assert_eq!(
            with_priority("prompts: [a]", -2),
            "prompts: [a]\npriority: -2\n"
        );
    }
}
