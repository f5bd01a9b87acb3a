//! The job's output folder: `<output_dir>/<job output>`, or `-2`, `-3`, ... when that name is
//! taken by another job's folder, a file or a link (never followed; see
//! [`crate::jobs::output::folder`]). A job holds its folder's lock ([`Folder::try_lock`]) while it
//! runs, so two jobs never write into one folder, whichever process runs them.

use std::path::Path;

use super::fingerprint::Fingerprint;
use super::manifest::Manifest;
use super::{JobRunError, RunOptions};
use crate::jobs::job::Job;
use crate::jobs::output::folder::Folder;

/// Name of the folder keep_top moves candidates into.
pub const REJECTED: &str = "rejected";

/// Opens the output folder of `job`: the one `options` names (created when missing), or the
/// first usable one under `root` ([`choose`]).
pub fn open(
    root: &Path,
    job: &Job,
    options: &RunOptions,
    fingerprint: &Fingerprint,
) -> Result<Folder, JobRunError> {
    match &options.dir {
        Some(d) => {
            let writing = |e: std::io::Error| {
                JobRunError::writing(format!("creating the output folder {}", d.display()), &e)
            };
            let dir = Folder::open_root(d).map_err(writing)?;
            if !dir.try_lock().map_err(writing)? {
                return Err(JobRunError::Output {
                    step: format!("opening the output folder {}", d.display()),
                    message: "another sdspool run is writing into it".to_string(),
                });
            }
            Ok(dir)
        }
        None => choose(root, &job.output, fingerprint),
    }
}

/// `<root>/<name>`, or `<name>-2`, `-3`, ...: the first name that is free (the folder is
/// created) or a folder holding this job's manifest, or nothing but what a run killed during
/// its first write left behind. A name taken by a file or a link, even a dangling one, or by a
/// folder another running job holds, is skipped.
fn choose(root: &Path, name: &str, fingerprint: &Fingerprint) -> Result<Folder, JobRunError> {
    let root_folder = Folder::open_root(root).map_err(|e| {
        JobRunError::writing(format!("creating the output folder {}", root.display()), &e)
    })?;
    for n in 1..10_000 {
        let name = if n == 1 {
            name.to_string()
        } else {
            format!("{name}-{n}")
        };
        let creating = |e: std::io::Error| {
            JobRunError::writing(
                format!("creating the output folder {}", root.join(&name).display()),
                &e,
            )
        };
        if let Some(dir) = root_folder.create_new_dir(&name).map_err(creating)? {
            // Another job can open the new folder before this one locks it; then it is theirs.
            if dir.try_lock().map_err(creating)? {
                return Ok(dir);
            }
            continue;
        }
        // Taken; by a folder (not a link) no running job holds and this job can use?
        let Ok(Some(dir)) = root_folder.open_dir(&name) else {
            continue;
        };
        if !dir.try_lock().map_err(creating)? {
            continue;
        }
        let usable = match Manifest::read_in(&dir) {
            Some(m) => fingerprint.matches(&m),
            None => dir.only_leftovers().unwrap_or(false),
        };
        if usable {
            return Ok(dir);
        }
    }
    Err(JobRunError::Output {
        step: format!("choosing an output folder under {}", root.display()),
        message: format!("{name} and 9,999 numbered variants are all taken"),
    })
}

/// Removes the temporary files a run killed while writing an image or the manifest left in the
/// folder and in its `rejected/`.
pub fn remove_leftovers(dir: &Folder) {
    let rejected = match dir.open_dir(REJECTED) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(folder = %dir.join(REJECTED).display(), error = %e, "cannot clean up temporary files");
            None
        }
    };
    for folder in std::iter::once(dir).chain(rejected.as_ref()) {
        match folder.remove_leftovers() {
            Ok(removed) => {
                for path in removed {
                    tracing::info!(file = %path.display(), "removed a temporary file left by an earlier run");
                }
            }
            Err(e) => {
                tracing::warn!(folder = %folder.path().display(), error = %e, "cannot clean up temporary files")
            }
        }
    }
}

/// Opens `rejected/` in `dir`, creating it when missing. A link in its place (sdspool never
/// makes one) is removed, not followed; a file there is an error.
pub fn rejected(dir: &Folder) -> std::io::Result<Folder> {
    use crate::jobs::output::folder::Entry;
    for _ in 0..3 {
        match dir.entry(REJECTED)? {
            Entry::Folder => {
                if let Some(f) = dir.open_dir(REJECTED)? {
                    return Ok(f);
                }
            }
            Entry::Missing => {
                if let Some(f) = dir.create_new_dir(REJECTED)? {
                    return Ok(f);
                }
            }
            Entry::Other => {
                tracing::warn!(path = %dir.join(REJECTED).display(), "removing what is in place of the rejected/ folder (a link, FIFO or socket); links are never followed");
                dir.remove_file(REJECTED)?;
            }
            Entry::File { .. } => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is a file; keep_top moves candidates into a folder of that name",
                        dir.join(REJECTED).display()
                    ),
                ));
            }
        }
    }
    Err(std::io::Error::other(format!(
        "{} keeps changing while it is opened",
        dir.join(REJECTED).display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint() -> Fingerprint {
        Fingerprint::of(
            &super::super::fingerprint::tests::job(),
            &RunOptions::default(),
        )
    }

    #[test]
    fn a_folder_a_running_job_holds_is_not_given_to_another() {
        let root = tempfile::tempdir().unwrap();
        let fp = fingerprint();
        let first = choose(root.path(), "night", &fp).unwrap();
        // Empty and of no other job: usable, were it not held by the first job.
        let second = choose(root.path(), "night", &fp).unwrap();
        assert_eq!(first.path(), root.path().join("night"));
        assert_eq!(second.path(), root.path().join("night-2"));
        drop(first);
        let third = choose(root.path(), "night", &fp).unwrap();
        assert_eq!(third.path(), root.path().join("night"));
    }

    #[test]
    fn a_named_folder_another_run_writes_into_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let job = super::super::fingerprint::tests::job();
        let options = RunOptions {
            dir: Some(root.path().join("mine")),
            ..RunOptions::default()
        };
        let held = open(root.path(), &job, &options, &fingerprint()).unwrap();
        let e = open(root.path(), &job, &options, &fingerprint()).unwrap_err();
        assert!(
            e.to_string()
                .contains("another sdspool run is writing into it"),
            "{e}"
        );
        drop(held);
        open(root.path(), &job, &options, &fingerprint()).unwrap();
    }
}
