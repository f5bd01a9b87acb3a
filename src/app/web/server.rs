//! Listening and the routes. Each connection is bounded: the request head must arrive within
//! [`HEAD_TIMEOUT`] (a slow client cannot hold a connection open by trickling headers), the
//! whole connection lasts at most [`CONNECTION_LIFETIME`], the head is at most [`MAX_HEAD_BYTES`]
//! (a huge query string gets 431), and at most [`MAX_CONNECTIONS`] are open at once (more are
//! closed on accept). The server runs on its own thread with its own tokio runtime, so a page
//! never competes with the daemon's supervisor, and it answers while models still load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use super::AppState;
use crate::app::config::Config;

pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
pub const MAX_CONNECTIONS: usize = 64;

/// The running server; dropping it stops it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts serving `config` on `addr` (bound before this returns, so a taken port is an error).
pub fn start(config: Arc<Config>, addr: SocketAddr) -> anyhow::Result<Server> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("serve.listen: cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        templates: super::pages::templates(),
        thumbs: super::thumbs::ThumbCache::new(&config),
        manifests: super::pages::ManifestCache::default(),
        jobs: super::job_index::LiveIndex::default(),
        config,
    });
    let app = router(state);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("sdspool-web".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the web server's runtime");
                    return;
                }
            };
            rt.block_on(accept_loop(listener, app, stopped));
        })?;
    tracing::info!(address = %addr, "serving the web page and /metrics");
    Ok(Server {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Starts the server when `serve.listen` is set (the daemon's call).
pub fn start_if_configured(config: &Config) -> anyhow::Result<Option<Server>> {
    match config.serve.address().map_err(anyhow::Error::msg)? {
        Some(addr) => start(Arc::new(config.clone()), addr).map(Some),
        None => Ok(None),
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    use super::{control, files, pages, thumbs};
    Router::new()
        .route("/", get(pages::queue_page))
        .route("/api/queue", get(pages::queue_json))
        .route("/jobs", get(pages::jobs_page))
        .route("/jobs/{*folder}", get(pages::job_page))
        .route("/files/{*path}", get(files::output_file))
        .route("/thumbs/{*path}", get(thumbs::thumbnail))
        .route("/spool/{state}/{name}", get(files::spool_file))
        .route("/metrics", get(pages::metrics))
        .route("/healthz", get(pages::healthz))
        .route("/readyz", get(pages::readyz))
        .route("/control/{action}", post(control::act))
        .with_state(state)
}

async fn accept_loop(
    listener: std::net::TcpListener,
    app: Router,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            drop(slot);
        });
    }
}
