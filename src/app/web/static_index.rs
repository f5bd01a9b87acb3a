//! A static `index.html` in each job folder, written with its outputs, and one at the output
//! root listing the job folders: the same gallery as the server's job page with links relative
//! to the folder, no script and no server, so a night's results copied elsewhere open from
//! `file://`. Written atomically (a temporary name, then renamed over the old one).

use std::path::Path;

use super::gallery::{GalleryView, Links, gallery};
use super::job_index::JobIndex;
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
#[derive(Debug, serde::Serialize)]
struct Row<'a> {
    href: String,
    job: &'a str,
    model: &'a str,
    first_prompt: &'a str,
    images: usize,
    complete: bool,
}

/// Writes `<output_root>/index.html`: every folder with a manifest, by name. The rows come from
/// the job index ([`JobIndex`]) kept beside the page, so only manifests that are new or changed
/// since the page was last written are read (after a job: that job's), and folders that are
/// gone drop out.
pub fn write_root(output_root: &Path) -> std::io::Result<()> {
    // A kill while this page or its rows were written left a temporary file here; nothing else
    // in the output root would ever remove it.
    for gone in crate::sys::atomic::remove_leftovers(output_root)? {
        tracing::info!(file = %gone.display(), "removed a temporary file a killed writer left");
    }
    let mut index = JobIndex::load(output_root);
    index.refresh(output_root)?;
    let list: Vec<Row> = index
        .rows()
        .map(|(name, r)| Row {
            href: format!("{name}/{FILE}"),
            job: &r.job,
            model: &r.model,
            first_prompt: &r.first_prompt,
            images: r.images,
            complete: r.complete,
        })
        .collect();
    let html = super::pages::templates()
        .get_template("jobs.html")
        .and_then(|t| {
            t.render(minijinja::context! { rows => list, static_page => true, page => 1, pages => 1, total => list.len() })
        })
        .map_err(std::io::Error::other)?;
    index.save(output_root)?;
    crate::sys::atomic::write(&output_root.join(FILE), html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::web::job_index::CACHE_FILE as ROWS_CACHE;

    /// A job folder `name` under `root` with a copy of a committed manifest naming it.
    fn job(root: &Path, name: &str) -> std::path::PathBuf {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/legacy-resume/output/legacy-plain/manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
        m["job"] = name.into();
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
        dir
    }

    fn listed(root: &Path) -> Vec<String> {
        let html = std::fs::read_to_string(root.join(FILE))
            .unwrap()
            .replace("&#x2f;", "/");
        html.split("href=\"")
            .skip(1)
            .filter_map(|r| r.split('"').next()?.strip_suffix("/index.html"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_root_page_reads_only_the_manifest_of_the_job_just_written() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a = job(root, "a");
        write_job(root, &a).unwrap();
        assert_eq!(listed(root), ["a"]);
        // a's manifest is not read again when b is written: its row comes from the cache.
        std::fs::write(a.join("manifest.json"), "not a manifest").unwrap();
        let b = job(root, "b");
        write_job(root, &b).unwrap();
        assert_eq!(listed(root), ["a", "b"]);
        // A folder copied in is read once; a folder removed drops out.
        job(root, "c");
        std::fs::remove_dir_all(&b).unwrap();
        let d = job(root, "d");
        write_job(root, &d).unwrap();
        assert_eq!(listed(root), ["a", "c", "d"]);
        // Without the cache the page is rebuilt from the manifests.
        std::fs::remove_file(root.join(ROWS_CACHE)).unwrap();
        write_root(root).unwrap();
        assert_eq!(listed(root), ["c", "d"]);
    }

    #[test]
    fn writing_the_root_page_removes_what_a_killed_writer_left() {
        // Seen in a crash storm: a kill -9 while `.index-rows.json` was written.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let a = job(root, "a");
        let tag = crate::sys::atomic::host_tag();
        // pid 0 is never a live process.
        let left = root.join(format!(".sdspool-tmp-{tag}-0-7-{ROWS_CACHE}"));
        std::fs::write(&left, "{").unwrap();
        write_job(root, &a).unwrap();
        assert!(!left.exists(), "{} is still there", left.display());
        assert_eq!(listed(root), ["a"]);
    }
}
