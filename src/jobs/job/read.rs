//! Reading a job file, the one way every caller does it (`check`, `submit`, `render`, the
//! daemon): opened without following a link, a regular file of at most `limits.max_job_bytes`,
//! UTF-8, one YAML document within tight parser budgets (aliases, nesting, nodes).

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use super::JobError;
use super::spec::{self, JobSpec};

/// A job file as read: its text, and the seed a job gets when it names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    pub path: PathBuf,
    pub text: String,
    /// A hash of the file's bytes, inode and modification time (see [`file_seed`]).
    pub seed: u64,
}

const NOT_REGULAR: &str =
    "is not a regular file (a folder, link, FIFO or device); job files must be plain files";

/// Reads a job file (not parsed yet).
pub fn read(path: &Path, max_bytes: u64) -> Result<JobFile, JobError> {
    let whole = |message: String| JobError {
        file: path.to_path_buf(),
        field: String::new(),
        message,
    };
    let cannot = |e: std::io::Error| whole(format!("cannot read: {e}"));
    // Checked before opening: opening a FIFO or a device may wait or act.
    let meta = std::fs::symlink_metadata(path).map_err(cannot)?;
    if !meta.file_type().is_file() {
        return Err(whole(NOT_REGULAR.into()));
    }
    if meta.len() > max_bytes {
        return Err(whole(format!(
            "is {} bytes; job files are at most {max_bytes} bytes (limits.max_job_bytes)",
            meta.len()
        )));
    }
    // A link put in its place since is not followed (ELOOP), nor is anything else opened.
    let file = crate::spool::fsops::open_nofollow_read(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            whole(NOT_REGULAR.into())
        } else {
            cannot(e)
        }
    })?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(whole(NOT_REGULAR.into()));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > max_bytes {
        return Err(whole(format!(
            "grew past {max_bytes} bytes while being read (limits.max_job_bytes)"
        )));
    }
    let seed = file_seed(&bytes, &meta);
    let text = String::from_utf8(bytes).map_err(|e| {
        whole(format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(JobFile {
        path: path.to_path_buf(),
        text,
        seed,
    })
}

/// The seed of a job file that names none: a hash of the file's bytes, inode and modification
/// time. It stays the same while the file is claimed, resumed after a crash and moved (renames
/// keep inode and mtime), so a resumed job continues with the same seeds; a copy gets new ones
/// (`sdspool submit` writes the seed of the file it was given into its copy, so that `check`,
/// `submit` and the daemon agree). The manifest and every PNG record it, so the images can be
/// reproduced.
fn file_seed(bytes: &[u8], meta: &std::fs::Metadata) -> u64 {
    let tail = [
        meta.ino().to_le_bytes(),
        meta.mtime().to_le_bytes(),
        meta.mtime_nsec().to_le_bytes(),
    ];
    // Within 32 bits, which torch.manual_seed and the tools users come from all accept.
    crate::sys::hash::fnv1a64(bytes.iter().copied().chain(tail.into_iter().flatten())) >> 32
}

/// Parses a job file's text: unknown fields get a "did you mean".
pub fn parse(file: &JobFile) -> Result<JobSpec, JobError> {
    crate::sys::yaml::parse_with::<JobSpec>(&file.text, crate::sys::yaml::strict_options()).map_err(|e| {
        let mut message = e.message.clone();
        if let Some(hint) = did_you_mean(&e.message) {
            message.push_str(&hint);
        }
        JobError {
            file: file.path.clone(),
            field: e.key,
            message,
        }
    })
}

/// Reads and parses a job file.
pub fn read_spec(path: &Path, max_bytes: u64) -> Result<JobSpec, JobError> {
    parse(&read(path, max_bytes)?)
}

/// "did you mean" for an unknown-field message from serde.
fn did_you_mean(message: &str) -> Option<String> {
    let start = message.find("unknown field `")? + "unknown field `".len();
    let name = &message[start..start + message[start..].find('`')?];
    let candidates = if message.contains("expected one of `prompt`")
        || message.contains("expected one of prompt,")
    {
        spec::PROMPT_FIELDS
    } else {
        spec::JOB_FIELDS
    };
    let best = candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), *c))
        .min()?;
    (best.0 <= 2 || (best.0 <= 3 && name.len() > 6))
        .then(|| format!(" (did you mean `{}`?)", best.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("real.yaml");
        std::fs::write(&target, "prompts: [a]\n").unwrap();
        let link = tmp.path().join("link.yaml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = read(&link, 1000).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        assert!(read(&target, 1000).is_ok());
        // The open itself refuses it, for a link put in place after the check.
        let e = crate::spool::fsops::open_nofollow_read(&link).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
    }

    /// The seed of a job that names none is what earlier releases derived from the same file,
    /// so a job resumed after an upgrade keeps its seeds.
    #[test]
    fn the_seed_is_derived_as_before() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("j.yaml");
        std::fs::write(&p, "prompts: [a cat]\n").unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        for part in [
            meta.ino().to_le_bytes(),
            meta.mtime().to_le_bytes(),
            meta.mtime_nsec().to_le_bytes(),
        ] {
            bytes.extend_from_slice(&part);
        }
        assert_eq!(
            read(&p, 1000).unwrap().seed,
            crate::sys::hash::fnv1a64(bytes) >> 32
        );
    }

    #[test]
    fn the_seed_follows_the_bytes_and_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.yaml");
        std::fs::write(&a, "prompts: [a]\n").unwrap();
        let first = read(&a, 1000).unwrap().seed;
        assert_eq!(read(&a, 1000).unwrap().seed, first, "same file, same seed");
        assert!(first < 1 << 32);
        // A rename keeps it (the daemon claims and files jobs by renaming them).
        let b = tmp.path().join("b.yaml");
        std::fs::rename(&a, &b).unwrap();
        assert_eq!(read(&b, 1000).unwrap().seed, first);
        // A copy is another file.
        let c = tmp.path().join("c.yaml");
        std::fs::copy(&b, &c).unwrap();
        assert_ne!(read(&c, 1000).unwrap().seed, first);
    }
}
