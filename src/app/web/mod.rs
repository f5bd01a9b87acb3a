//! The web side of sdspool (app layer): the queue and job pages, `/metrics`, `/healthz` and
//! `/readyz`, control from the page, webhooks and the notify command, and the static
//! `index.html` written into each job folder.
//!
//! Served by the daemon when `serve.listen` is set, and by `sdspool serve` alone (a read-only
//! viewer of a shared spool on another host). Everything on the pages is read from the spool and
//! the output folders, so both show the same; what only a daemon process knows (UNet step times,
//! worker states) is in [`metrics::telemetry`].
//!
//! Modules: [`settings`] (config sections), [`metrics`], [`queue`] (the queue's state and ETAs),
//! [`server`] (listening, limits, routes), [`pages`] (HTML), [`files`] (serving files from the
//! output root and the spool, safely), [`thumbs`] (thumbnails cached on disk), [`control`]
//! (pause, resume, cancel, priority with a token), [`notify`] (webhooks and the command),
//! [`job_index`] (the job folders' rows for the job list and search, kept up to date
//! incrementally), [`static_index`] (index.html per job folder).

pub mod control;
pub mod files;
pub mod gallery;
pub mod hooks;
pub mod job_index;
pub mod metrics;
pub mod notify;
pub mod pages;
pub mod queue;
pub mod respond;
pub mod server;
pub mod static_index;
pub mod thumbs;

pub use server::{Server, start};

/// `sdspool serve`: the page and `/metrics` alone (no rendering), until SIGTERM or SIGINT.
/// `listen` overrides `serve.listen`.
pub fn serve(config: &crate::app::config::Config, listen: Option<&str>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let addr = match listen {
        Some(l) => crate::app::config::serve::parse_listen(l)
            .map_err(|e| anyhow::anyhow!("--listen: {e}"))?,
        None => config
            .serve
            .address()
            .map_err(anyhow::Error::msg)?
            .context("nothing to listen on: set `serve.listen` in the config or pass --listen")?,
    };
    metrics::telemetry().set_ready();
    let server = start(std::sync::Arc::new(config.clone()), addr)?;
    println!("serving http://{}/", server.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        anyhow::Ok(())
    })?;
    drop(server);
    Ok(())
}

/// What the handlers share.
pub struct AppState {
    pub config: std::sync::Arc<crate::app::config::Config>,
    pub templates: minijinja::Environment<'static>,
    pub thumbs: thumbs::ThumbCache,
    pub manifests: pages::ManifestCache,
    pub jobs: job_index::LiveIndex,
}
