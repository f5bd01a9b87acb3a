//! A static `index.html` in each job folder, written with its outputs, and one at the output
//! root listing the job folders: the same gallery as the server's job page with links relative
//! to the folder, no script and no server, so a night's results copied elsewhere open from
//! `file://`. Written atomically (a temporary name, then renamed over the old one).

use std::collections::BTreeMap;
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
    write_root_with(
        output_root,
        Some((folder.clone(), Row::of(&folder, &manifest))),
    )
}

/// One job folder in the root's list.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Row {
    href: String,
    job: String,
    model: String,
    first_prompt: String,
    images: usize,
    complete: bool,
}

impl Row {
    fn of(name: &str, m: &Manifest) -> Row {
        Row {
            href: format!("{name}/{FILE}"),
            job: m.job.clone(),
            model: m.model.clone(),
            first_prompt: m.first_prompt(),
            images: m.images_written(),
            complete: m.complete,
        }
    }
}

/// The root page's rows by folder name, kept beside it (a hidden file, never served) so that
/// writing the page after a job reads that job's manifest only, not every manifest in the root.
const ROWS_CACHE: &str = ".index-rows.json";

fn read_rows_cache(output_root: &Path) -> BTreeMap<String, Row> {
    std::fs::read(output_root.join(ROWS_CACHE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `<output_root>/index.html`: every folder with a manifest, by name.
pub fn write_root(output_root: &Path) -> std::io::Result<()> {
    write_root_with(output_root, None)
}

/// The root page with `updated`'s row (a job just written) new: the other folders' rows come
/// from the rows cache, and only folders it does not know have their manifest read (the first
/// time, or a folder copied in). Folders that are gone drop out. Several daemons writing at
/// once may lose a row from the cache; it is read again from its manifest the next time.
fn write_root_with(output_root: &Path, updated: Option<(String, Row)>) -> std::io::Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(output_root)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut cache = read_rows_cache(output_root);
    if let Some((name, row)) = updated {
        cache.insert(name, row);
    }
    let mut rows = BTreeMap::new();
    for name in names {
        let row = match cache.remove(&name) {
            Some(row) => row,
            None => match Manifest::read(&output_root.join(&name)) {
                Some(m) => Row::of(&name, &m),
                None => continue,
            },
        };
        rows.insert(name, row);
    }
    let list: Vec<&Row> = rows.values().collect();
    let html = super::pages::templates()
        .get_template("jobs.html")
        .and_then(|t| {
            t.render(minijinja::context! { rows => list, static_page => true, page => 1, pages => 1, total => list.len() })
        })
        .map_err(std::io::Error::other)?;
    let cache = serde_json::to_vec(&rows).map_err(std::io::Error::other)?;
    crate::sys::atomic::write(&output_root.join(ROWS_CACHE), &cache)?;
    crate::sys::atomic::write(&output_root.join(FILE), html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
