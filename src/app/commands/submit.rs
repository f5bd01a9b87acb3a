//! `sdspool submit JOB`: checks a job file against the configuration and copies it into the
//! spool's `incoming/` atomically (a temporary dotfile in `incoming/`, fsync, rename), so the
//! daemon never sees it half-written.

use std::path::{Path, PathBuf};

use crate::app::config::Config;
use crate::jobs::job::{self, JobError};
use crate::spool::fsops::{self, Moved, Mover};
use crate::spool::names::{self, NameKind};
use crate::spool::{Layout, SpoolError};
use crate::sys::atomic;

/// Why a job was not submitted.
/// Permissions of a submitted job file.
const JOB_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The job file is not valid: the file and the field.
    #[error(transparent)]
    Invalid(#[from] JobError),
    /// The job is valid but was not copied, and why.
    #[error("{}: {message}", path.display())]
    Refused { path: PathBuf, message: String },
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// `incoming/<name>`.
    pub path: PathBuf,
    /// An earlier file of the same name waiting in `incoming/` was replaced (`--replace`).
    pub replaced: bool,
    /// A job of the same name is running: this one runs after it.
    pub waits_for_running: bool,
}

/// `text` as a YAML double-quoted scalar: characters YAML does not allow as they are (controls,
/// DEL, C1 controls, ...) are escaped.
fn yaml_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        let printable = matches!(c, '\u{20}'..='\u{7E}' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
            && c != '\u{FEFF}';
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if printable => out.push(c),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// The job file's text with `prompt_lines:` appended: the lines of its prompt file as YAML
/// double-quoted strings.
pub fn embed_prompt_lines(mut bytes: Vec<u8>, name: &str, lines: &[String]) -> Vec<u8> {
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    let mut block = format!(
        "# The lines of prompt_file {}, embedded by `sdspool submit`:\nprompt_lines:\n",
        yaml_quoted(name)
    );
    if lines.is_empty() {
        block = block.replace("prompt_lines:\n", "prompt_lines: []\n");
    }
    for line in lines {
        block.push_str("  - ");
        block.push_str(&yaml_quoted(line));
        block.push('\n');
    }
    bytes.extend_from_slice(block.as_bytes());
    bytes
}

/// The job file's text with `seed:` appended.
pub fn embed_seed(mut bytes: Vec<u8>, seed: u64) -> Vec<u8> {
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(
        format!(
            "# The seed derived from the submitted file, kept by `sdspool submit`:\nseed: {seed}\n"
        )
        .as_bytes(),
    );
    bytes
}

/// Whether a job file's text has `key` at the top, even with no value (`seed: ~`, which
/// another `seed:` line would duplicate).
fn has_key(text: &str, key: &str) -> bool {
    crate::sys::yaml::parse_with::<std::collections::BTreeMap<String, serde::de::IgnoredAny>>(
        text,
        crate::sys::yaml::strict_options(),
    )
    .is_ok_and(|map| map.contains_key(key))
}

/// For a `.png` file: the job file name (`<stem>.yaml`) and text (`infotext:` with the image's
/// `parameters` text) to submit, or why not; `None` for other files.
fn png_job(path: &Path, max: u64) -> Option<Result<(std::ffi::OsString, job::JobFile), String>> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return None;
    }
    let made = (|| {
        let meta = std::fs::symlink_metadata(path).map_err(|e| format!("cannot read: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("is not a regular file".to_string());
        }
        let parameters = crate::jobs::output::png::read_parameters(path)?.ok_or_else(|| {
            "has no `parameters` text (AUTOMATIC1111's infotext) to make a job from".to_string()
        })?;
        let text = format!(
            "# The parameters of {}, by `sdspool submit`:\ninfotext: {}\n",
            yaml_quoted(&path.display().to_string()),
            yaml_quoted(&parameters)
        );
        if text.len() as u64 > max {
            return Err(format!(
                "its parameters make a job of {} bytes; job files are at most {max} bytes \
                 (limits.max_job_bytes)",
                text.len()
            ));
        }
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let name = std::ffi::OsString::from(format!("{stem}.yaml"));
        let seed = crate::sys::hash::fnv1a64(text.bytes());
        Ok((
            name,
            job::JobFile {
                path: path.to_path_buf(),
                text,
                seed,
            },
        ))
    })();
    Some(made)
}

/// Validates `job_file` and copies it into `incoming/` under its own name. An existing
/// `incoming/` file of that name is replaced only with `replace` (if the daemon claimed that
/// one meanwhile, the new file simply becomes the next job of that name).
pub fn run(config: &Config, job_file: &Path, replace: bool) -> Result<Submitted, SubmitError> {
    let refused = |message: String| SubmitError::Refused {
        path: job_file.to_path_buf(),
        message,
    };
    let Some(name) = job_file.file_name() else {
        return Err(refused("is not a file name".into()));
    };
    let max = config.limits.max_job_bytes;
    // A PNG with AUTOMATIC1111's `parameters`: the job `<stem>.yaml` of its infotext.
    let (png_name, png_file) = png_job(job_file, max).transpose().map_err(refused)?.unzip();
    let name = png_name.as_deref().unwrap_or(name);
    let stem = match names::classify(name) {
        NameKind::Job { stem } => stem,
        NameKind::Unusable { reason, .. } => return Err(refused(reason)),
        NameKind::Ignored => {
            return Err(refused(
                "the daemon takes only files named *.yaml or *.yml that do not start with '.'; rename it".into(),
            ));
        }
    };
    // Read once: the bytes checked are the bytes spooled.
    let file = match png_file {
        Some(f) => f,
        None => job::read::read(job_file, max)?,
    };
    let job = job::resolve_file(&file, config, job::PromptFiles::Read)?;
    // The model's size rule, when its folder can be read here; a folder that cannot is the
    // daemon's to report when it claims the job (it may be mounted only there).
    job::fits_model(&job, config, job_file)?;

    let spec = job::read::parse(&file)?;
    let names_seed = spec.seed.is_some() || has_key(&file.text, "seed");
    let mut bytes = file.text.into_bytes();
    // A job in the spool never reads other files: its prompt file's lines go with it.
    if let (Some(name), None) = (&spec.prompt_file, &spec.prompt_lines) {
        let lines = job::prompt_file::read(job_file, name, max).map_err(|e| JobError {
            file: job_file.to_path_buf(),
            field: "prompt_file".into(),
            message: e.to_string(),
        })?;
        bytes = embed_prompt_lines(bytes, name, &lines);
    }
    // The spooled copy is another file, which would get another seed: it gets this file's,
    // the one `sdspool check` shows.
    if !names_seed {
        bytes = embed_seed(bytes, job.seed);
    }

    let layout = Layout::new(&config.spool.dir);
    layout.create()?;
    let dest = layout.incoming.join(name);
    let tmp = atomic::temp_path(&dest);
    let io = |op: &str, e: std::io::Error| SubmitError::Spool(SpoolError::new(&tmp, op, e));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            // The daemon, another user under the shipped layout, reads it whatever the
            // submitter's umask.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(JOB_MODE))?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        })
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io("writing the job into incoming/", e)
        })?;
    // Validate exactly the bytes that will run (the file may have changed since it was read).
    if let Err(mut e) =
        job::read_spec(&tmp, max).and_then(|spec| job::resolve(spec, &stem, job_file, config, 0))
    {
        let _ = std::fs::remove_file(&tmp);
        e.file = job_file.to_path_buf();
        return Err(e.into());
    }

    let existed = std::fs::symlink_metadata(&dest).is_ok();
    let published = if replace {
        std::fs::rename(&tmp, &dest).map(|()| Moved::Done)
    } else {
        Mover::new(Default::default()).move_noreplace(&tmp, &dest)
    };
    match published {
        Ok(Moved::Done) => {}
        Ok(Moved::Exists) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(SubmitError::Refused {
                path: dest,
                message: "already exists: a job of that name is waiting to run; pass --replace to replace it".into(),
            });
        }
        Ok(Moved::SourceGone) => {
            return Err(io(
                "moving the job into incoming/",
                std::io::Error::other(
                    "the temporary file was removed (by a starting daemon?); submit again",
                ),
            ));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io("moving the job into incoming/", e));
        }
    }
    fsops::sync_parent(&dest)
        .map_err(|e| SpoolError::new(&layout.incoming, "syncing the folder", e))?;
    let waits_for_running =
        std::fs::symlink_metadata(layout.running.join(format!("{stem}.yaml"))).is_ok();
    Ok(Submitted {
        path: dest,
        replaced: replace && existed,
        waits_for_running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_prompt_lines_read_back_exactly() {
        let lines: Vec<String> = [
            "a cat",
            "--prompt \"a \\\"dog\\\"\" --steps 3",
            "tab\there, del\u{7f}, c1\u{85}\u{9b}, bom\u{feff}, emoji 🐱, \\ back",
            "# a comment",
            "",
            "key: value: not yaml",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let bytes = embed_prompt_lines(b"prompts: []\nseed: 1".to_vec(), "p\n.txt", &lines);
        let spec: JobSpecLines =
            crate::sys::yaml::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
        assert_eq!(spec.prompt_lines, lines);
        let empty = embed_prompt_lines(b"prompts: [a]\n".to_vec(), "p.txt", &[]);
        let spec: JobSpecLines =
            crate::sys::yaml::parse(std::str::from_utf8(&empty).unwrap()).unwrap();
        assert!(spec.prompt_lines.is_empty());
    }

    #[derive(serde::Deserialize)]
    struct JobSpecLines {
        prompt_lines: Vec<String>,
        #[allow(dead_code)]
        prompts: Vec<String>,
        #[allow(dead_code)]
        #[serde(default)]
        seed: u64,
    }
}
