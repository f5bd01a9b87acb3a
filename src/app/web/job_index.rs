//! The index of the job folders under the output root: one row per folder with a manifest (job,
//! model, prompts, images, whether complete, when the manifest was last written), kept up to date
//! incrementally. A refresh lists the root and looks at each manifest's modification time and
//! length; only a manifest that is new or changed since its row was made is read again, and
//! folders that are gone drop out. So a root of 1,000 jobs and 100,000 images costs one
//! directory listing and 1,000 `stat` calls per refresh once the rows are known, not 1,000
//! manifests parsed.
//!
//! The rows are kept beside the root's `index.html` in a hidden file ([`CACHE_FILE`], never
//! served), so the daemon writing the static root page after a job and a server started later
//! both begin from the rows already known. The file is only a cache: a row whose manifest's time
//! or length differs from the one it records is read again, so several processes writing it at
//! once (each atomically) lose nothing but a re-read.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::files::open_job_folder;
use crate::jobs::run::manifest::{FILE as MANIFEST, Manifest};

/// The rows, in the output root (hidden: the file server refuses names starting with a dot).
pub const CACHE_FILE: &str = ".index-rows.json";

/// What a manifest's file was when its row was read: a row is current while both still match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub modified: SystemTime,
    pub len: u64,
}

/// One job folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub stamp: Stamp,
    pub job: String,
    pub model: String,
    /// Every prompt's text, in the manifest's order (what the search looks in).
    pub prompts: Vec<String>,
    pub first_prompt: String,
    pub images: usize,
    pub complete: bool,
}

impl Row {
    fn of(m: &Manifest, stamp: Stamp) -> Row {
        Row {
            stamp,
            job: m.job.clone(),
            model: m.model.clone(),
            prompts: m.prompts.iter().map(|p| p.prompt.clone()).collect(),
            first_prompt: m.first_prompt(),
            images: m.images_written(),
            complete: m.complete,
        }
    }

    /// Whether any prompt contains `lowercase_text` (already lowercased), ignoring case.
    pub fn prompt_contains(&self, lowercase_text: &str) -> bool {
        lowercase_text.is_empty()
            || self
                .prompts
                .iter()
                .any(|p| p.to_lowercase().contains(lowercase_text))
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// Manifests read (new or changed since their row was made).
    pub read: usize,
    /// Rows dropped (folder or manifest gone).
    pub dropped: usize,
}

impl Refreshed {
    pub fn changed(&self) -> bool {
        self.read > 0 || self.dropped > 0
    }
}

/// The rows by folder name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct JobIndex {
    rows: BTreeMap<String, Row>,
}

impl JobIndex {
    /// The rows kept in `root`'s [`CACHE_FILE`]; none when it is missing or unreadable (an
    /// older or damaged file: every manifest is read again).
    pub fn load(root: &Path) -> JobIndex {
        std::fs::read(root.join(CACHE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the rows to `root`'s [`CACHE_FILE`] atomically.
    pub fn save(&self, root: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::sys::atomic::write(&root.join(CACHE_FILE), &bytes)
    }

    /// The rows, by folder name.
    pub fn rows(&self) -> impl Iterator<Item = (&str, &Row)> {
        self.rows.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Brings the rows up to date with the folders directly under `root` (plain folders, not
    /// hidden, not links): reads the manifests that are new or changed, drops folders that are
    /// gone. A changed manifest that cannot be parsed (being copied in, say) keeps its last row
    /// and is read again next time.
    pub fn refresh(&mut self, root: &Path) -> std::io::Result<Refreshed> {
        let mut done = Refreshed::default();
        let mut rows = BTreeMap::new();
        for name in job_folders(root)? {
            let old = self.rows.remove(&name);
            let Some(stamp) = manifest_stamp(root, &name) else {
                done.dropped += usize::from(old.is_some());
                continue;
            };
            let row = match old {
                Some(row) if row.stamp == stamp => row,
                old => {
                    done.read += 1;
                    let read = open_job_folder(root, &name).and_then(|d| Manifest::read_in(&d));
                    match (read, old) {
                        (Some(m), _) => Row::of(&m, stamp),
                        (None, Some(row)) => row,
                        (None, None) => continue,
                    }
                }
            };
            rows.insert(name, row);
        }
        done.dropped += self.rows.len();
        self.rows = rows;
        Ok(done)
    }
}

/// The server's index: loaded from the [`CACHE_FILE`] on first use, refreshed on each use, and
/// saved back when a refresh changed it (best effort: a read-only viewer keeps it in memory).
#[derive(Default)]
pub struct LiveIndex {
    index: std::sync::Mutex<Option<JobIndex>>,
}

impl LiveIndex {
    /// `f` of the index brought up to date with `root` (empty when `root` cannot be listed).
    pub fn with<T>(&self, root: &Path, f: impl FnOnce(&JobIndex) -> T) -> T {
        let mut guard = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let index = guard.get_or_insert_with(|| JobIndex::load(root));
        let refreshed = index.refresh(root);
        if let Ok(done) = &refreshed {
            super::metrics::telemetry().record_manifests_read(done.read);
        }
        match refreshed {
            Ok(done) if done.changed() => {
                tracing::debug!(
                    read = done.read,
                    dropped = done.dropped,
                    "job index refreshed"
                );
                if let Err(e) = index.save(root) {
                    tracing::debug!(error = %e, "cannot save the job index");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(root = %root.display(), error = %e, "cannot list the output root");
                *index = JobIndex::default();
            }
        }
        f(index)
    }
}

/// The names of the plain, not hidden folders directly under `root`.
fn job_folders(root: &Path) -> std::io::Result<Vec<String>> {
    Ok(std::fs::read_dir(root)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !n.starts_with('.'))
        .collect())
}

/// The stamp of `root/<name>/manifest.json` when it is a regular file (a link is not followed).
fn manifest_stamp(root: &Path, name: &str) -> Option<Stamp> {
    let meta = std::fs::symlink_metadata(root.join(name).join(MANIFEST)).ok()?;
    meta.is_file().then_some(Stamp {
        modified: meta.modified().ok()?,
        len: meta.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job folder `name` under `root` whose manifest (a committed one) has `prompt` first.
    fn job(root: &Path, name: &str, prompt: &str) {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/legacy-resume/output/legacy-plain/manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
        m["job"] = name.into();
        m["prompts"][0]["prompt"] = prompt.into();
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MANIFEST), m.to_string()).unwrap();
    }

    #[test]
    fn a_refresh_reads_only_new_and_changed_manifests() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for (name, prompt) in [("a", "a red fox"), ("b", "a cat"), ("c", "a dog")] {
            job(root, name, prompt);
        }
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let mut index = JobIndex::default();
        let first = index.refresh(root).unwrap();
        assert_eq!((first.read, first.dropped), (3, 0));
        assert_eq!(index.len(), 3);

        // Nothing changed: nothing read.
        assert_eq!(index.refresh(root).unwrap(), Refreshed::default());

        // One manifest rewritten: that one is read, and its row shows the change.
        job(root, "b", "a black cat on a wall");
        let again = index.refresh(root).unwrap();
        assert_eq!((again.read, again.dropped), (1, 0));
        let b = index.rows().find(|(n, _)| *n == "b").unwrap().1;
        assert!(b.prompt_contains("black cat"));

        // A folder removed drops out; a new one is read.
        std::fs::remove_dir_all(root.join("c")).unwrap();
        job(root, "d", "a horse");
        let last = index.refresh(root).unwrap();
        assert_eq!((last.read, last.dropped), (1, 1));
        let names: Vec<&str> = index.rows().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b", "d"]);

        // Saved and loaded: a fresh process reads nothing until something changes.
        index.save(root).unwrap();
        let mut loaded = JobIndex::load(root);
        assert_eq!(loaded.refresh(root).unwrap(), Refreshed::default());
        assert_eq!(loaded.len(), 3);
    }

    #[test]
    fn a_link_in_place_of_a_folder_or_manifest_is_not_indexed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out");
        let elsewhere = tmp.path().join("elsewhere");
        job(&elsewhere, "secret", "not to be listed");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("secret"), root.join("linked")).unwrap();
        std::fs::create_dir_all(root.join("j")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.join("secret").join(MANIFEST),
            root.join("j").join(MANIFEST),
        )
        .unwrap();
        let mut index = JobIndex::default();
        index.refresh(&root).unwrap();
        assert!(index.is_empty());
    }
}
