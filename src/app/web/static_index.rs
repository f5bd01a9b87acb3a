//! A static `index.html` in each job folder, written with its outputs, and one at the output
//! root listing the job folders: the same gallery as the server's job page with links relative
//! to the folder, no script and no server, so a night's results copied elsewhere open from
//! `file://`. Written atomically (a temporary name, then renamed over the old one).

use std::path::Path;

use super::gallery::{GalleryView, Links, gallery};
use crate::jobs::run::manifest::Manifest;

/// File name in each folder.
pub const FILE: &str = "index.html";

/// Every candidate on one page: a static page cannot page on request.
const ALL: usize = usize::MAX / 2;

pub fn job_html(manifest: &Manifest, folder: &str) -> Result<String, minijinja::Error> {
    let view: GalleryView = gallery(manifest, folder, Links::Static, "", 1, ALL);
    super::pages::templates().get_template("job.html")?.render(
        minijinja::context! { static_page => true, ..minijinja::Value::from_serialize(&view) },
    )
}

/// Writes `<dir>/index.html` for the job whose manifest is in `dir`, then the root's. The job
/// folder is reached from the output root without following links, as every output file is.
pub fn write_job(output_root: &Path, dir: &Path) -> std::io::Result<()> {
    let manifest = Manifest::read(dir)
        .ok_or_else(|| std::io::Error::other(format!("{}: no manifest.json", dir.display())))?;
    let folder = dir
        .strip_prefix(output_root)
        .unwrap_or(dir)
        .to_string_lossy()
        .into_owned();
    let html = job_html(&manifest, &folder).map_err(std::io::Error::other)?;
    let job_dir = super::files::open_job_folder(output_root, &folder).ok_or_else(|| {
        std::io::Error::other(format!(
            "{}: not a folder under the output root (links are not followed)",
            dir.display()
        ))
    })?;
    job_dir.write(FILE, html.as_bytes())?;
    write_root(output_root)
}

/// One job folder in the root's list.
#[derive(serde::Serialize)]
struct Row {
    href: String,
    job: String,
    model: String,
    first_prompt: String,
    images: usize,
    complete: bool,
}

/// Writes `<output_root>/index.html`: every folder with a manifest, by name.
pub fn write_root(output_root: &Path) -> std::io::Result<()> {
    let mut rows = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(output_root)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let Some(m) = Manifest::read(&output_root.join(&name)) else {
            continue;
        };
        rows.push(Row {
            href: format!("{name}/{FILE}"),
            job: m.job.clone(),
            model: m.model.clone(),
            first_prompt: m
                .prompts
                .first()
                .map(|p| p.prompt.clone())
                .unwrap_or_default(),
            images: m.candidates().filter(|c| c.file.is_some()).count(),
            complete: m.complete,
        });
    }
    let html = super::pages::templates()
        .get_template("jobs.html")
        .and_then(|t| {
            t.render(minijinja::context! { rows => rows, static_page => true, page => 1, pages => 1, total => rows.len() })
        })
        .map_err(std::io::Error::other)?;
    crate::sys::atomic::write(&output_root.join(FILE), html.as_bytes())
}
