//! The HTML pages (server-rendered from the templates in `templates/`), the queue as JSON for
//! the page's live updates, `/metrics`, `/healthz` and `/readyz`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::files::{open_job_folder, safe_rel};
use super::gallery::{JobQuery, JobsQuery};
use super::metrics::{SpoolGauges, telemetry};
use super::respond::{blocking, error};
use crate::jobs::run::manifest::{FILE as MANIFEST, Manifest};

type Shared = State<Arc<AppState>>;

/// The templates, compiled once.
pub fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, text) in [
        ("base.html", include_str!("templates/base.html")),
        ("queue.html", include_str!("templates/queue.html")),
        ("job.html", include_str!("templates/job.html")),
        ("jobs.html", include_str!("templates/jobs.html")),
        ("image.html", include_str!("templates/image.html")),
    ] {
        env.add_template(name, text).expect("the templates parse");
    }
    env
}

/// A page, or a plain-text error with its status.
pub fn render(state: &AppState, name: &str, ctx: impl Serialize) -> Response {
    match state
        .templates
        .get_template(name)
        .and_then(|t| t.render(ctx))
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::warn!(template = name, error = %e, "cannot render a page");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the page\n",
            )
                .into_response()
        }
    }
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz() -> Response {
    if telemetry().is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the daemon is starting",
        )
    }
}

pub async fn metrics(State(state): Shared) -> Response {
    let config = state.config.clone();
    let gauges = blocking(move || SpoolGauges::read(&config)).await;
    let gauges = match gauges {
        Some(Ok(g)) => g,
        Some(Err(e)) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the spool: {e}"),
            );
        }
        None => return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the spool"),
    };
    match telemetry().encode(&gauges) {
        Ok(text) => ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        ),
    }
}

/// The queue page's data.
#[derive(Serialize)]
struct QueueView {
    overview: crate::spool::status::Overview,
    recent: Vec<super::queue::Ended>,
    control: bool,
}

async fn queue_view(state: &Arc<AppState>) -> Result<QueueView, Response> {
    let config = state.config.clone();
    let control = config.serve.control_token.is_some();
    let read = blocking(move || {
        super::queue::overview(&config)
            .map(|o| (o, super::queue::recent(&config, super::queue::RECENT)))
    })
    .await;
    match read {
        Some(Ok((overview, recent))) => Ok(QueueView {
            overview,
            recent,
            control,
        }),
        Some(Err(e)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the spool: {e}"),
        )),
        None => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the spool",
        )),
    }
}

pub async fn queue_page(State(state): Shared) -> Response {
    match queue_view(&state).await {
        Ok(v) => render(&state, "queue.html", v),
        Err(r) => r,
    }
}

pub async fn queue_json(State(state): Shared) -> Response {
    match queue_view(&state).await {
        Ok(v) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&v).unwrap_or_default(),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// Parsed manifests, kept while their file is unchanged (a 100,000-image manifest is parsed
/// once, not per page); at most [`MANIFESTS_KEPT`].
#[derive(Default)]
pub struct ManifestCache {
    entries: Mutex<Entries>,
}

/// Folder -> (manifest mtime, length, parsed).
type Entries = HashMap<PathBuf, (SystemTime, u64, Arc<Manifest>)>;

const MANIFESTS_KEPT: usize = 8;

impl ManifestCache {
    /// The manifest of the job folder `rel` under the output root.
    pub fn get(&self, root: &std::path::Path, rel: &str) -> Option<Arc<Manifest>> {
        let dir = open_job_folder(root, rel)?;
        let meta = std::fs::symlink_metadata(dir.join(MANIFEST)).ok()?;
        let key = (meta.modified().ok()?, meta.len());
        let path = dir.path().to_path_buf();
        if let Some((m, l, man)) = self.lock().get(&path)
            && (*m, *l) == key
        {
            return Some(man.clone());
        }
        let manifest = Arc::new(Manifest::read_in(&dir)?);
        let mut entries = self.lock();
        if entries.len() >= MANIFESTS_KEPT {
            let oldest = entries.iter().min_by_key(|e| e.1.0).map(|e| e.0.clone());
            oldest.map(|k| entries.remove(&k));
        }
        entries.insert(path, (key.0, key.1, manifest.clone()));
        Some(manifest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub async fn job_page(
    State(state): Shared,
    Path(folder): Path<String>,
    Query(query): Query<JobQuery>,
) -> Response {
    let Some(rel) = safe_rel(&folder) else {
        return error(StatusCode::NOT_FOUND, "no such job folder");
    };
    let st = state.clone();
    let view = blocking(move || super::gallery::job_view(&st, &rel, &query))
        .await
        .flatten();
    match view {
        Some(super::gallery::JobPage::Gallery(v)) => render(&state, "job.html", v),
        Some(super::gallery::JobPage::Image(v)) => render(&state, "image.html", v),
        None => error(
            StatusCode::NOT_FOUND,
            "no such job folder (or it has no manifest.json)",
        ),
    }
}

pub async fn jobs_page(State(state): Shared, Query(query): Query<JobsQuery>) -> Response {
    let st = state.clone();
    match blocking(move || super::gallery::jobs_view(&st, &query)).await {
        Some(v) => render(&state, "jobs.html", v),
        None => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot list the jobs"),
    }
}
