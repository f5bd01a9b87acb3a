//! Which names in the spool folders are job files, and the names of their side files.
//!
//! A job is identified in the spool by the stem of its file name: `cats.yaml` and `cats.yml`
//! are both the job `cats`, claimed as `running/cats.yaml`, so the side files of a job never
//! collide with another job's:
//!
//! | folder | job file | side files |
//! |---|---|---|
//! | `running/` | `cats.yaml` | `cats.attempts`, `cats.status.json` |
//! | `done/` | `cats.yaml` (or `cats-2.yaml`, ...) | `cats.result.yaml` |
//! | `failed/` | `cats.yaml` (or `cats-2.yaml`, ...) | `cats.error.yaml` |

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;

use crate::sys::atomic::TEMP_PREFIX;

/// Extensions of job files: `x.yaml`, `x.yml`, in any case (`X.YAML` is a job too; these are
/// the spellings commands look for by name).
pub const JOB_EXTENSIONS: [&str; 4] = ["yaml", "yml", "YAML", "YML"];
/// Side file of a job in `running/`: how many times work on it started.
pub const ATTEMPTS_SUFFIX: &str = ".attempts";
/// Side file of a job in `running/`: the worker's progress ([`super::status::JobStatus`]).
pub const STATUS_SUFFIX: &str = ".status.json";
/// Side file of a job in `done/`: the worker's summary.
pub const RESULT_SUFFIX: &str = ".result.yaml";
/// Side file of a job in `failed/`: why it failed ([`super::finish::ErrorFile`]).
pub const ERROR_SUFFIX: &str = ".error.yaml";
/// Ends the name of a takeover token in `<spool>/.claimed/`.
pub const TAKEOVER_SUFFIX: &str = ".takeover";
/// Longest usable stem in bytes, so that every side-file name stays under the 255-byte limit.
pub const MAX_STEM_BYTES: usize = 200;

/// What a name in `incoming/` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameKind {
    /// A job file: `<stem>.yaml` or `<stem>.yml`.
    Job { stem: String },
    /// A job file by its extension whose name sdspool cannot use; it is moved to `failed/` under
    /// `sanitized` + `.yaml`.
    Unusable { reason: String, sanitized: String },
    /// Not a job: dotfiles (temporary files of sdspool and of editors, `.nfs*`), other
    /// extensions. Left alone ([`ignored_reason`] says why, for the log, when it looks like a
    /// job file).
    Ignored,
}

/// The extension of a job file name, matched without regard to case: `Some(stem bytes)`.
fn job_stem(bytes: &[u8]) -> Option<&[u8]> {
    ["yaml", "yml"].iter().find_map(|ext| {
        let dot = bytes.len().checked_sub(ext.len() + 1)?;
        (bytes[dot] == b'.' && bytes[dot + 1..].eq_ignore_ascii_case(ext.as_bytes()))
            .then(|| &bytes[..dot])
    })
}

/// Why a name in `incoming/` that looks like a job file is left alone, for one line in the log:
/// a hidden name (`.cats.yaml`) or one of sdspool's temporary files. `None` for names that do
/// not look like job files at all (`notes.txt`, `.nfs000123`) and for jobs.
pub fn ignored_reason(name: &OsStr) -> Option<&'static str> {
    if is_temp(name) {
        return Some(
            "has the prefix of sdspool's temporary files: it is a file being written, or one a killed writer left; it never runs (write elsewhere and rename it in without the prefix)",
        );
    }
    let bytes = name.as_bytes();
    if bytes.first() == Some(&b'.') && job_stem(&bytes[1..]).is_some_and(|s| !s.is_empty()) {
        return Some(
            "is a hidden file (its name starts with '.'): it never runs; rename it without the dot to submit it",
        );
    }
    None
}

/// Classifies a file name found in `incoming/`.
pub fn classify(name: &OsStr) -> NameKind {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0] == b'.' {
        return NameKind::Ignored;
    }
    let Some(stem_bytes) = job_stem(bytes) else {
        return NameKind::Ignored;
    };
    let lossy = String::from_utf8_lossy(stem_bytes).into_owned();
    let unusable = |reason: String| NameKind::Unusable {
        reason,
        sanitized: sanitize(&lossy),
    };
    let Ok(stem) = std::str::from_utf8(stem_bytes) else {
        return unusable("the file name is not valid UTF-8".into());
    };
    if stem.is_empty() {
        return NameKind::Ignored;
    }
    if stem.len() > MAX_STEM_BYTES {
        return unusable(format!(
            "the file name is {} bytes long; job file names are at most {MAX_STEM_BYTES} bytes before the extension",
            stem.len()
        ));
    }
    if stem.chars().any(char::is_control) {
        return unusable("the file name contains control characters".into());
    }
    for reserved in [".result", ".error"] {
        if stem.ends_with(reserved) {
            return unusable(format!(
                "names ending in `{reserved}.yaml` are reserved for sdspool's side files; rename the job file"
            ));
        }
    }
    NameKind::Job {
        stem: stem.to_string(),
    }
}

/// Whether a name is one of sdspool's temporary files.
pub fn is_temp(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// Whether a name in `done/` or `failed/` is a job file (not a side file, not ignored).
pub fn is_finished_job(name: &OsStr) -> bool {
    let Some(s) = name.to_str() else {
        return false;
    };
    !s.starts_with('.')
        && job_stem(s.as_bytes()).is_some_and(|stem| !stem.is_empty())
        && !s.ends_with(RESULT_SUFFIX)
        && !s.ends_with(ERROR_SUFFIX)
}

/// A plain, usable stem for a name that is not: every character outside letters, digits, '.',
/// '_' and '-' becomes '_', reserved endings lose their dot, at most 100 bytes.
pub fn sanitize(stem: &str) -> String {
    let mut s = crate::sys::names::plain(stem);
    s.truncate(100);
    for reserved in [".result", ".error"] {
        if let Some(base) = s.strip_suffix(reserved) {
            s = format!("{base}_{}", &reserved[1..]);
        }
    }
    let s = s.trim_start_matches('.').to_string();
    if s.is_empty() { "job".to_string() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> NameKind {
        classify(OsStr::new(name))
    }

    #[test]
    fn job_names_and_ignored_names() {
        assert_eq!(
            kind("cats.yaml"),
            NameKind::Job {
                stem: "cats".into()
            }
        );
        assert_eq!(kind("a b.yml"), NameKind::Job { stem: "a b".into() });
        // Any case of the extension: `X.YAML` sat in incoming/ forever before.
        for upper in ["X.YAML", "X.YML", "X.Yaml"] {
            assert_eq!(kind(upper), NameKind::Job { stem: "X".into() }, "{upper}");
        }
        assert_eq!(
            kind("v1.2.yaml"),
            NameKind::Job {
                stem: "v1.2".into()
            }
        );
        for ignored in [
            ".cats.yaml",
            ".sdspool-tmp-1-2-cats.yaml",
            "cats.yaml.part",
            "notes.txt",
            ".yaml",
            "yaml",
            ".nfs000123",
        ] {
            assert_eq!(kind(ignored), NameKind::Ignored, "{ignored}");
        }
    }

    #[test]
    fn hidden_and_temporary_job_names_have_a_reason_for_the_log() {
        let reason = |n: &str| ignored_reason(OsStr::new(n));
        assert!(reason(".cats.yaml").unwrap().contains("hidden"));
        assert!(reason(".cats.YML").unwrap().contains("hidden"));
        assert!(
            reason(".sdspool-tmp-1-2-cats.yaml")
                .unwrap()
                .contains("temporary")
        );
        for quiet in [
            "notes.txt",
            ".nfs000123",
            ".yaml",
            "cats.yaml",
            ".cats.yaml.swp",
        ] {
            assert_eq!(reason(quiet), None, "{quiet}");
        }
    }

    #[test]
    fn reserved_and_odd_names_are_unusable_with_a_plain_replacement() {
        match kind("a.result.yaml") {
            NameKind::Unusable { reason, sanitized } => {
                assert!(reason.contains("reserved"), "{reason}");
                assert_eq!(sanitized, "a_result");
            }
            other => panic!("{other:?}"),
        }
        match kind("bad\nname.yaml") {
            NameKind::Unusable { sanitized, .. } => assert_eq!(sanitized, "bad_name"),
            other => panic!("{other:?}"),
        }
        let long = format!("{}.yaml", "x".repeat(MAX_STEM_BYTES + 1));
        assert!(matches!(kind(&long), NameKind::Unusable { .. }));
        let non_utf8 = OsStr::from_bytes(b"caf\xe9.yaml");
        assert!(matches!(classify(non_utf8), NameKind::Unusable { .. }));
    }

    #[test]
    fn finished_job_names_exclude_side_files() {
        assert!(is_finished_job(OsStr::new("cats.yaml")));
        assert!(is_finished_job(OsStr::new("cats-2.yml")));
        assert!(!is_finished_job(OsStr::new("cats.result.yaml")));
        assert!(!is_finished_job(OsStr::new("cats.error.yaml")));
        assert!(!is_finished_job(OsStr::new(".sdspool-tmp-1-1-cats.yaml")));
        assert!(!is_finished_job(OsStr::new("cats.attempts")));
    }
}
