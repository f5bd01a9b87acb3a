//! `prompt_file: prompts.txt`: one prompt a line, in the format of AUTOMATIC1111's "Prompts from
//! file or textbox" script.
//!
//! ```text
//! # comments and blank lines are skipped
//! a photo of a cat
//! --prompt "a dog in the snow" --negative_prompt "blurry" --steps 30 --cfg_scale 5
//! --prompt "a red fox" --sampler_name "Euler a" --width 512 --height 768 --seed 7 --batch_size 2
//! ```
//!
//! A line that starts with `--` is a list of options, split like a shell does (quotes,
//! backslashes): `--prompt`, `--negative_prompt`, `--steps`, `--cfg_scale`, `--sampler_name`
//! (AUTOMATIC1111's names such as `Euler a`, `DPM++ 2M Karras`, or sdspool's such as `euler_a`),
//! `--width`, `--height`, `--seed`, and `--batch_size` and `--n_iter` (candidates: their
//! product). Any other line is a prompt as it stands.
//!
//! The file is resolved relative to the job file's folder and must lie inside it: absolute
//! paths, `..` and symbolic links leading out are refused. A job in the spool never reads
//! files: `sdspool submit` embeds the lines as `prompt_lines:` in the copy it spools.
//!
//! The shell-style splitting is written here rather than taken from the `shlex` crate, which
//! differs from the reference, Python's `shlex.split` (what AUTOMATIC1111's script calls): the
//! crate reads a word that starts with `#` as a comment to the end of the line (Python's
//! `shlex.split` does not, so `--negative_prompt #ugly` is an option and its value), and gives no
//! reason when a line does not split.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use crate::engine::scheduler::{SchedulerError, SchedulerKind};

/// Why a prompt file cannot be read; each says why in a sentence.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("is empty")]
    Empty,
    #[error("{0:?} is an absolute path; give a path relative to the job file's folder")]
    Absolute(String),
    #[error("{0:?} leaves the job file's folder; the prompt file must lie inside it")]
    LeavesFolder(String),
    #[error("cannot resolve the job file's folder: {0}")]
    Folder(#[source] std::io::Error),
    #[error(
        "{relative:?} is a link to {}, outside the job file's folder; the prompt file must lie inside it",
        target.display()
    )]
    LinkOutside { relative: String, target: PathBuf },
    #[error("{}: cannot be read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: is not a regular file", .0.display())]
    NotRegular(PathBuf),
    #[error("{}: is larger than {max} bytes (limits.max_job_bytes)", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{}: is not UTF-8 text (invalid byte at offset {offset})", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
}

/// Why a line does not split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("a single quote is not closed")]
    SingleQuote,
    #[error("a double quote is not closed")]
    DoubleQuote,
    #[error("the line ends with a backslash")]
    Backslash,
}

/// Why one line of a prompt file is not a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("{0:?} is not an option (options start with --)")]
    NotAnOption(String),
    #[error("--{0} needs a value")]
    NoValue(String),
    #[error("--{option} {value:?}: {expected}")]
    BadValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "unknown option --{0}; known: --prompt --negative_prompt --steps --cfg_scale --sampler_name --width --height --seed --batch_size --n_iter"
    )]
    UnknownOption(String),
    #[error("has options but no --prompt")]
    NoPrompt,
    #[error("--batch_size times --n_iter is too large")]
    TooManyCandidates,
}

/// A line of a prompt file that is not a prompt, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {number}: {error}")]
pub struct ParseError {
    pub number: usize,
    #[source]
    pub error: LineError,
}

/// One prompt of a prompt file, with its overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: usize,
    pub prompt: String,
    pub negative: Option<String>,
    pub steps: Option<u32>,
    pub guidance: Option<f64>,
    /// As written; parsed by [`scheduler_from_a1111`] during resolution.
    pub scheduler: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seed: Option<u64>,
    pub candidates: Option<u32>,
}

/// Reads the prompt file `relative` to the folder of `job_file`.
pub fn read(job_file: &Path, relative: &str, max_bytes: u64) -> Result<Vec<String>, ReadError> {
    let rel = Path::new(relative);
    if relative.is_empty() {
        return Err(ReadError::Empty);
    }
    if rel.is_absolute() {
        return Err(ReadError::Absolute(relative.to_string()));
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ReadError::LeavesFolder(relative.to_string()));
    }
    let folder = job_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let folder = folder.canonicalize().map_err(ReadError::Folder)?;
    let path = folder.join(rel);
    let real = path.canonicalize().map_err(|source| ReadError::Io {
        path: path.clone(),
        source,
    })?;
    if !real.starts_with(&folder) {
        return Err(ReadError::LinkOutside {
            relative: relative.to_string(),
            target: real,
        });
    }
    let io = |source| ReadError::Io {
        path: real.clone(),
        source,
    };
    // Checked before opening: opening a FIFO or a device may wait or act.
    let is_file = std::fs::metadata(&real)
        .map(|m| m.is_file())
        .unwrap_or(false);
    if !is_file {
        return Err(ReadError::NotRegular(real));
    }
    // Without following a link put in place of the checked file since.
    let file = crate::spool::fsops::open_nofollow_read(&real).map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(ReadError::NotRegular(real));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge {
            path: real,
            max: max_bytes,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8 {
        path: real.clone(),
        offset: e.utf8_error().valid_up_to(),
    })?;
    Ok(text.lines().map(str::to_string).collect())
}

/// The prompts of a prompt file's lines (blank lines and `#` comments skipped).
pub fn parse(lines: &[String]) -> Result<Vec<Line>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let number = i + 1;
        if let Some(line) = parse_line(raw).map_err(|error| ParseError { number, error })? {
            out.push(Line { number, ..line });
        }
    }
    Ok(out)
}

/// One line: `None` for a blank line or a comment.
pub fn parse_line(raw: &str) -> Result<Option<Line>, LineError> {
    let line = raw.trim_end_matches('\r').trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if !line.starts_with("--") {
        return Ok(Some(Line {
            prompt: line.to_string(),
            ..Line::default()
        }));
    }
    let mut out = Line::default();
    let mut prompt = None;
    let (mut batch_size, mut n_iter) = (None::<u32>, None::<u32>);
    let mut it = shell_split(line)?.into_iter();
    while let Some(option) = it.next() {
        let name = option
            .strip_prefix("--")
            .ok_or_else(|| LineError::NotAnOption(option.clone()))?;
        let value = it
            .next()
            .ok_or_else(|| LineError::NoValue(name.to_string()))?;
        let bad = |expected| LineError::BadValue {
            option: name.to_string(),
            value: value.clone(),
            expected,
        };
        let number = |what| value.parse::<u64>().map_err(|_| bad(what));
        let small = |what| value.parse::<u32>().map_err(|_| bad(what));
        match name {
            "prompt" => prompt = Some(value.clone()),
            "negative_prompt" => out.negative = Some(value.clone()),
            "steps" => out.steps = Some(small("expected a whole number of steps")?),
            "cfg_scale" => {
                out.guidance = Some(value.parse::<f64>().map_err(|_| bad("expected a number"))?)
            }
            "sampler_name" => out.scheduler = Some(value.clone()),
            "width" => out.width = Some(small("expected a width in pixels")?),
            "height" => out.height = Some(small("expected a height in pixels")?),
            "seed" => out.seed = Some(number("expected a seed (a whole number from 0)")?),
            "batch_size" => batch_size = Some(small("expected a whole number")?),
            "n_iter" => n_iter = Some(small("expected a whole number")?),
            other => return Err(LineError::UnknownOption(other.to_string())),
        }
    }
    out.prompt = prompt.ok_or(LineError::NoPrompt)?;
    if batch_size.is_some() || n_iter.is_some() {
        out.candidates = Some(
            batch_size
                .unwrap_or(1)
                .checked_mul(n_iter.unwrap_or(1))
                .ok_or(LineError::TooManyCandidates)?,
        );
    }
    Ok(Some(out))
}

/// A scheduler by AUTOMATIC1111's sampler name (`Euler a`, `DPM++ 2M Karras`, ...) or by
/// sdspool's (`euler_a`).
pub fn scheduler_from_a1111(name: &str) -> Result<SchedulerKind, SchedulerError> {
    if let Some(kind) = SchedulerKind::ALL
        .iter()
        .find(|k| crate::jobs::output::png::a1111_sampler(**k).eq_ignore_ascii_case(name.trim()))
    {
        return Ok(*kind);
    }
    name.parse::<SchedulerKind>()
}

/// Splits a line into words like a POSIX shell (and Python's `shlex.split`): whitespace
/// separates, single quotes keep everything, double quotes keep everything but `\"` and `\\`,
/// a backslash outside quotes escapes the next character.
pub fn shell_split(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(SplitError::SingleQuote),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SplitError::DoubleQuote),
                        },
                        Some(c) => word.push(c),
                        None => return Err(SplitError::DoubleQuote),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(SplitError::Backslash),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_split(r#"--prompt "a \"big\" cat" --x 'it''s' a\ b"#).unwrap(),
            ["--prompt", "a \"big\" cat", "--x", "its", "a b"]
        );
        assert!(shell_split("--prompt \"open").is_err());
        assert_eq!(shell_split("  ").unwrap(), Vec::<String>::new());
    }

    /// As Python's `shlex.split` (comments off, the default) splits them: a word that starts
    /// with `#` is a word, not a comment.
    #[test]
    fn a_hash_starts_a_word_not_a_comment() {
        let l = parse_line("--prompt cat --negative_prompt #ugly --steps 3")
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.prompt.as_str(), l.negative.as_deref(), l.steps),
            ("cat", Some("#ugly"), Some(3))
        );
    }

    #[test]
    fn a1111_lines() {
        assert_eq!(parse_line("  # note").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
        assert_eq!(
            parse_line("a photo of a cat, 4k").unwrap().unwrap().prompt,
            "a photo of a cat, 4k"
        );
        let l = parse_line(
            r#"--prompt "a dog" --negative_prompt blurry --steps 30 --cfg_scale 5.5 --sampler_name "Euler a" --width 512 --height 768 --seed 7 --batch_size 2 --n_iter 3"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            l,
            Line {
                number: 0,
                prompt: "a dog".into(),
                negative: Some("blurry".into()),
                steps: Some(30),
                guidance: Some(5.5),
                scheduler: Some("Euler a".into()),
                width: Some(512),
                height: Some(768),
                seed: Some(7),
                candidates: Some(6),
            }
        );
        assert!(
            parse_line("--prompt a --styles x")
                .unwrap_err()
                .to_string()
                .contains("unknown option --styles")
        );
        assert!(
            parse_line("--steps 3")
                .unwrap_err()
                .to_string()
                .contains("no --prompt")
        );
        assert!(
            parse_line("--prompt a --steps")
                .unwrap_err()
                .to_string()
                .contains("needs a value")
        );
        assert!(parse_line("--prompt a --steps -1").is_err());
        let lines: Vec<String> = ["# x", "a", "", "--prompt b --steps 2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let parsed = parse(&lines).unwrap();
        assert_eq!(parsed.iter().map(|l| l.number).collect::<Vec<_>>(), [2, 4]);
        let bad: Vec<String> = vec!["a".into(), "--prompt x --bogus 1".into()];
        assert!(parse(&bad).unwrap_err().to_string().starts_with("line 2: "));
    }

    #[test]
    fn sampler_names() {
        assert_eq!(
            scheduler_from_a1111("Euler a").unwrap(),
            SchedulerKind::EulerAncestral
        );
        assert_eq!(
            scheduler_from_a1111("DPM++ 2M Karras").unwrap(),
            SchedulerKind::DpmPp2mKarras
        );
        assert_eq!(scheduler_from_a1111("ddim").unwrap(), SchedulerKind::Ddim);
        assert!(scheduler_from_a1111("Heun").is_err());
    }

    #[test]
    fn paths_stay_inside_the_job_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = tmp.path().join("jobs");
        std::fs::create_dir_all(jobs.join("sub")).unwrap();
        let job = jobs.join("job.yaml");
        std::fs::write(&job, "").unwrap();
        std::fs::write(jobs.join("p.txt"), "a\nb\n").unwrap();
        std::fs::write(jobs.join("sub/q.txt"), "c\n").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "s\n").unwrap();
        assert_eq!(read(&job, "p.txt", 1000).unwrap(), ["a", "b"]);
        assert_eq!(read(&job, "./sub/q.txt", 1000).unwrap(), ["c"]);
        for bad in ["../secret.txt", "sub/../../secret.txt", "/etc/passwd", ""] {
            assert!(read(&job, bad, 1000).is_err(), "{bad}");
        }
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), jobs.join("link.txt")).unwrap();
        let e = read(&job, "link.txt", 1000).unwrap_err().to_string();
        assert!(e.contains("outside the job file's folder"), "{e}");
        // A link that stays inside is fine.
        std::os::unix::fs::symlink(jobs.join("p.txt"), jobs.join("alias.txt")).unwrap();
        assert_eq!(read(&job, "alias.txt", 1000).unwrap(), ["a", "b"]);
        assert!(
            read(&job, "sub", 1000)
                .unwrap_err()
                .to_string()
                .contains("regular file")
        );
        assert!(
            read(&job, "p.txt", 2)
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
        assert!(read(&job, "missing.txt", 1000).is_err());
        // A FIFO is refused without waiting for a writer.
        let fifo = jobs.join("fifo.txt");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert!(
            read(&job, "fifo.txt", 1000)
                .unwrap_err()
                .to_string()
                .contains("regular file")
        );
    }
}
