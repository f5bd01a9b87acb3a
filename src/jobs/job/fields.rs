//! Typed checks of a job's values against the limits, and the one place that says which field
//! an error names: a dotted path such as `prompts[2].size[1]`, or a line of the prompt file.

use std::fmt::Display;
use std::path::Path;

use super::JobError;
use super::spec::{OneOrMany, Size};
use crate::jobs::settings::Limits;

/// Where a value was written in a job file: what an error about it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Field {
    /// A dotted path (`steps`, `prompts[2].size[1]`); empty for the job itself.
    Path(String),
    /// A line of the prompt file: errors name `field` (`prompt_file` or `prompt_lines`) and
    /// start with the line's number. Everything written on the line is at this place.
    Line { field: &'static str, number: usize },
}

impl Field {
    /// The job itself: its fields are named as they are.
    pub fn job() -> Field {
        Field::Path(String::new())
    }

    /// A field of the job.
    pub fn named(name: &str) -> Field {
        Field::Path(name.to_string())
    }

    /// A field inside this one: `prompts[2]` and `steps` make `prompts[2].steps`.
    pub fn child(&self, name: &str) -> Field {
        match self {
            Field::Path(p) if p.is_empty() => Field::Path(name.to_string()),
            Field::Path(p) => Field::Path(format!("{p}.{name}")),
            line => line.clone(),
        }
    }

    /// Element `i` of a list written here: `steps[1]`.
    pub fn index(&self, i: usize) -> Field {
        match self {
            Field::Path(p) => Field::Path(format!("{p}[{i}]")),
            line => line.clone(),
        }
    }

    /// How a message names this place: `prompts[2]`, `prompt_file line 3`.
    pub fn describe(&self) -> String {
        match self {
            Field::Path(p) => p.clone(),
            Field::Line { field, number } => format!("{field} line {number}"),
        }
    }

    pub fn is_line(&self) -> bool {
        matches!(self, Field::Line { .. })
    }

    /// The error `message` about the value written here, in `file`.
    pub fn error(&self, file: &Path, message: impl Display) -> JobError {
        let (field, message) = match self {
            Field::Path(p) => (p.clone(), message.to_string()),
            Field::Line { field, number } => {
                (field.to_string(), format!("line {number}: {message}"))
            }
        };
        JobError {
            file: file.to_path_buf(),
            field,
            message,
        }
    }
}

/// Where an image size was written: a `size` value (`512x768`; errors say which side is at
/// fault), or the `width` and `height` at a place.
#[derive(Debug, Clone, Copy)]
pub(super) enum SizeAt<'a> {
    Size(&'a Field),
    Sides(&'a Field),
}

/// The checks of single values against the limits, for one job file.
pub(super) struct Checks<'a> {
    pub file: &'a Path,
    pub limits: &'a Limits,
}

impl Checks<'_> {
    /// The error `message` about the value at `at`.
    pub fn error(&self, at: &Field, message: impl Display) -> JobError {
        at.error(self.file, message)
    }

    pub fn steps(&self, at: &Field, steps: u32) -> Result<u32, JobError> {
        let max = self.limits.max_steps;
        if steps == 0 || steps > max {
            return Err(self.error(
                at,
                format!("is {steps}; it must be between 1 and {max} (limits.max_steps)"),
            ));
        }
        Ok(steps)
    }

    pub fn guidance(&self, at: &Field, guidance: f64) -> Result<f64, JobError> {
        if !guidance.is_finite() || !(0.0..=100.0).contains(&guidance) {
            // `1e308` is not written out as 309 digits.
            let shown = if guidance.abs() >= 1e6 {
                format!("{guidance:e}")
            } else {
                guidance.to_string()
            };
            return Err(self.error(
                at,
                format!("is {shown}; it must be a number from 0 to 100 (7.5 is usual)"),
            ));
        }
        Ok(guidance)
    }

    /// A width and height: multiples of 8 within `limits.max_side` and `limits.max_pixels`.
    pub fn size(&self, at: SizeAt, (width, height): (u32, u32)) -> Result<(u32, u32), JobError> {
        let l = self.limits;
        for (name, v) in [("width", width), ("height", height)] {
            let problem = if v == 0 || v % 8 != 0 {
                format!("is {v}; it must be a positive multiple of 8")
            } else if v > l.max_side {
                format!(
                    "is {v}; the longest side allowed is {} (limits.max_side)",
                    l.max_side
                )
            } else {
                continue;
            };
            return Err(match at {
                SizeAt::Size(f) => self.error(f, format!("{name} {problem}")),
                SizeAt::Sides(f) => self.error(&f.child(name), problem),
            });
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > l.max_pixels {
            let f = match at {
                SizeAt::Size(f) => f.clone(),
                SizeAt::Sides(f) => f.child("width"),
            };
            return Err(self.error(
                &f,
                format!(
                    "{width}x{height} is {pixels} pixels; the limit is {} (limits.max_pixels)",
                    l.max_pixels
                ),
            ));
        }
        Ok((width, height))
    }

    /// The sizes written at `at` as `size` (one or a list) or `width`/`height` (each side in
    /// turn over `default`'s sizes); `default` itself when none is written.
    pub fn sizes(
        &self,
        at: &Field,
        size: Option<&OneOrMany<Size>>,
        (width, height): (Option<u32>, Option<u32>),
        default: &[(u32, u32)],
    ) -> Result<Vec<(u32, u32)>, JobError> {
        match size {
            Some(size) => {
                let field = at.child("size");
                if width.is_some() || height.is_some() {
                    return Err(self.error(
                        &field,
                        "is given together with width or height; use one or the other",
                    ));
                }
                self.list(&field, size, |f, s| {
                    self.size(SizeAt::Size(f), (s.width, s.height))
                })
            }
            None if width.is_none() && height.is_none() => Ok(default.to_vec()),
            None => default
                .iter()
                .map(|(w, h)| {
                    self.size(
                        SizeAt::Sides(at),
                        (width.unwrap_or(*w), height.unwrap_or(*h)),
                    )
                })
                .collect(),
        }
    }

    /// The values of a field written at `at` (one, or a list: each named by its index), each
    /// checked.
    pub fn list<T: Clone, U>(
        &self,
        at: &Field,
        value: &OneOrMany<T>,
        check: impl Fn(&Field, T) -> Result<U, JobError>,
    ) -> Result<Vec<U>, JobError> {
        let values = value.values();
        if values.is_empty() {
            return Err(self.error(at, "is an empty list; give at least one value"));
        }
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let f = if value.is_list() {
                    at.index(i)
                } else {
                    at.clone()
                };
                check(&f, v)
            })
            .collect()
    }

    /// The seeds of one prompt's candidates: `list` (which must have `count` seeds), or
    /// `base`, `base + 1`, ...; at least one and at most `limits.max_candidates`. `at` is where
    /// the prompt's `seeds` and `candidates` are written.
    pub fn seeds(
        &self,
        at: &Field,
        list: Option<&[u64]>,
        count: u32,
        base: u64,
    ) -> Result<Vec<u64>, JobError> {
        let max = self.limits.max_candidates;
        let out_of_limits = |n: usize| {
            self.error(
                &at.child("candidates"),
                format!("is {n}; it must be between 1 and {max} (limits.max_candidates)"),
            )
        };
        let seeds = match list {
            Some(s) if s.len() != count as usize => {
                return Err(self.error(
                    &at.child("seeds"),
                    format!(
                        "lists {} seeds for {count} candidates; give one seed per candidate",
                        s.len()
                    ),
                ));
            }
            Some(s) => s.to_vec(),
            // Checked before the seeds are made: `candidates: 4000000000` must not allocate them.
            None if count == 0 || count > max => return Err(out_of_limits(count as usize)),
            None => (0..u64::from(count))
                .map(|k| base.wrapping_add(k))
                .collect(),
        };
        if seeds.is_empty() || seeds.len() > max as usize {
            return Err(out_of_limits(seeds.len()));
        }
        Ok(seeds)
    }

    /// Where an SDXL refiner takes over: a fraction of the schedule strictly between 0 and 1.
    pub fn refiner_start(&self, at: &Field, start: f64) -> Result<f64, JobError> {
        if !(start > 0.0 && start < 1.0) {
            return Err(self.error(
                at,
                format!("is {start}; it must be between 0 and 1, not either (0.8 is usual)"),
            ));
        }
        Ok(start)
    }

    /// An SDXL size-conditioning pair written `[width, height]` (`[left, top]` for a crop),
    /// as diffusers takes it: `[height, width]` (`[top, left]`). Sizes must be positive and
    /// every value at most `limits.max_side` times 4 (SDXL was trained on original sizes up to
    /// a few thousand pixels).
    pub fn sdxl_pair(
        &self,
        at: &Field,
        [x, y]: [u32; 2],
        crop: bool,
    ) -> Result<[u32; 2], JobError> {
        let max = self.limits.max_side.saturating_mul(4);
        for (i, v) in [x, y].into_iter().enumerate() {
            if (v == 0 && !crop) || v > max {
                let least = if crop { 0 } else { 1 };
                return Err(self.error(
                    &at.index(i),
                    format!(
                        "is {v}; it must be from {least} to {max} (4 × limits.max_side); write [{}]",
                        if crop { "left, top" } else { "width, height" }
                    ),
                ));
            }
        }
        Ok([y, x])
    }

    /// An aesthetic score for SDXL's refiner: a finite number from 0 to 10 (diffusers' defaults
    /// are 6 and 2.5).
    pub fn aesthetic_score(&self, at: &Field, score: f64) -> Result<f32, JobError> {
        if !score.is_finite() || !(0.0..=10.0).contains(&score) {
            return Err(self.error(at, format!("is {score}; it must be a number from 0 to 10")));
        }
        Ok(score as f32)
    }

    /// A prompt or negative prompt of `chars` characters (the longest its prompt matrix makes,
    /// when `matrix`) against `limits.max_prompt_chars`.
    pub fn prompt_chars(&self, at: &Field, chars: usize, matrix: bool) -> Result<(), JobError> {
        let max = self.limits.max_prompt_chars;
        if chars <= max {
            return Ok(());
        }
        let what = if matrix {
            format!("makes a prompt of {chars} characters once its prompt matrix is expanded")
        } else {
            format!("is {chars} characters long")
        };
        Err(self.error(
            at,
            format!("{what}; the limit is {max} (limits.max_prompt_chars)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_named_by_their_path_or_their_line() {
        let file = Path::new("j.yaml");
        let p = Field::named("prompts").index(2);
        let e = p.child("size").index(1).error(file, "is bad");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("prompts[2].size[1]", "is bad")
        );
        assert_eq!(Field::job().child("steps"), Field::named("steps"));
        let line = Field::Line {
            field: "prompt_file",
            number: 3,
        };
        let e = line.child("steps").index(4).error(file, "is 0");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("prompt_file", "line 3: is 0")
        );
        assert_eq!(
            e.to_string(),
            "j.yaml: `prompt_file` line 3: is 0",
            "the file, the field, the line"
        );
    }

    #[test]
    fn size_errors_name_the_size_or_the_side() {
        let limits = Limits::default();
        let checks = Checks {
            file: Path::new("j.yaml"),
            limits: &limits,
        };
        let size = Field::named("size").index(1);
        let e = checks.size(SizeAt::Size(&size), (64, 65)).unwrap_err();
        assert_eq!(e.field, "size[1]");
        assert!(e.message.starts_with("height is 65;"), "{e}");
        let prompt = Field::named("prompts").index(0);
        let e = checks.size(SizeAt::Sides(&prompt), (64, 65)).unwrap_err();
        assert_eq!(e.field, "prompts[0].height");
        assert!(e.message.starts_with("is 65;"), "{e}");
        let e = checks
            .size(SizeAt::Sides(&Field::job()), (2048, 2048))
            .unwrap_err();
        assert_eq!(e.field, "width");
        assert!(e.message.contains("limits.max_pixels"), "{e}");
    }
}
