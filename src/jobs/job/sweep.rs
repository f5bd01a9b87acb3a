//! Sweeps: one prompt rendered with every combination of several settings, like
//! AUTOMATIC1111's X/Y plot, and AUTOMATIC1111's prompt matrix.
//!
//! A prompt with `steps: [20, 30]` and `guidance: [5, 7.5]` becomes four prompts of the job,
//! one per combination (a *variant*), each rendered with its own settings and all of the
//! prompt's candidate seeds. The axes, outermost first: `size`, `scheduler`, `steps`,
//! `guidance`, then the optional parts of a prompt matrix, the last part outermost and the
//! first innermost. Variants are rendered with the innermost axis changing fastest, so a prompt
//! matrix alone comes out in AUTOMATIC1111's order.
//!
//! Prompt matrix (`prompt_matrix: true`): `a cat | in the snow | oil painting` renders the first
//! part always, with each later part on or off: `a cat`, `a cat, in the snow`,
//! `a cat, oil painting`, `a cat, in the snow, oil painting`. Each optional part is an axis with
//! the values `-part` and `+part`.
//!
//! Each variant of a swept prompt records its [`SweepCell`]: the sweep it belongs to (the index
//! of the prompt as written) and its value on every axis that has more than one value; the
//! manifest keeps them and the sweep's grid image is laid out from them.

use serde::{Deserialize, Serialize};

use super::spec::{Size, SizeError};
use crate::engine::scheduler::SchedulerKind;

/// A variant's value on one axis of its sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AxisValue {
    /// `size`, `scheduler`, `steps`, `guidance`, or the text of a prompt-matrix part.
    pub axis: String,
    /// `512x768`, `euler_a`, `20`, `7.5`, or `+` / `-` for a prompt-matrix part.
    pub value: String,
    /// How grids print it: `Size: 512x768`, `Sampler: Euler a`, `Steps: 20`, `CFG: 7.5`,
    /// `+in the snow`.
    pub label: String,
}

/// Where a variant sits in its sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepCell {
    /// The sweep: index of the prompt as written (prompts first, then prompt-file lines).
    pub group: usize,
    /// Its value on every axis of the sweep, outermost first.
    pub axes: Vec<AxisValue>,
}

/// The values a prompt sweeps over (one value each when it sweeps over nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Lists {
    pub sizes: Vec<(u32, u32)>,
    pub schedulers: Vec<Option<SchedulerKind>>,
    pub steps: Vec<u32>,
    pub guidance: Vec<f64>,
}

impl Lists {
    /// Variants per prompt text (saturating).
    pub fn count(&self) -> u64 {
        [
            self.sizes.len(),
            self.schedulers.len(),
            self.steps.len(),
            self.guidance.len(),
        ]
        .iter()
        .fold(1u64, |a, n| a.saturating_mul(*n as u64))
    }
}

/// One variant of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub text: String,
    pub width: u32,
    pub height: u32,
    pub scheduler: Option<SchedulerKind>,
    pub steps: u32,
    pub guidance: f64,
    /// Values on the axes with more than one value, outermost first.
    pub axes: Vec<AxisValue>,
}

/// `512x768` as (width, height).
pub fn parse_size(text: &str) -> Result<(u32, u32), SizeError> {
    let size: Size = text.parse()?;
    Ok((size.width, size.height))
}

/// The longest text a prompt makes, in characters: the text itself, or with the prompt matrix
/// every part (what `variants` joins when all optional parts are on). Nothing is expanded.
pub fn longest_text_chars(text: &str, matrix: bool) -> usize {
    if !matrix {
        return text.chars().count();
    }
    let (base, optional) = matrix_parts(text);
    let parts: Vec<usize> = std::iter::once(&base)
        .chain(&optional)
        .filter(|p| !p.is_empty())
        .map(|p| p.chars().count())
        .collect();
    // Joined with ", ".
    parts.iter().sum::<usize>() + 2 * parts.len().saturating_sub(1)
}

/// The base and the optional parts of a prompt matrix (`|`-separated; spaces and commas at the
/// ends of each part trimmed).
pub fn matrix_parts(text: &str) -> (String, Vec<String>) {
    let mut parts = text
        .split('|')
        .map(|p| p.trim().trim_matches(',').trim().to_string());
    let base = parts.next().unwrap_or_default();
    (base, parts.collect())
}

/// Prompts a text makes: 2^(optional parts) with the matrix, else 1 (saturating).
pub fn text_count(text: &str, matrix: bool) -> u64 {
    if !matrix {
        return 1;
    }
    let n = matrix_parts(text).1.len();
    if n >= 63 { u64::MAX } else { 1u64 << n }
}

/// A number as people write it: `7.5`, `5`.
pub fn number_label(v: f64) -> String {
    let s = format!("{v}");
    s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
}

/// Every variant of one prompt text, innermost axis fastest. Call [`text_count`] and
/// [`Lists::count`] first to keep the number within the limits.
pub fn variants(text: &str, matrix: bool, lists: &Lists) -> Vec<Variant> {
    // Axes outermost first: (name, labels per value).
    let mut axes: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let sizes: Vec<(String, String)> = lists
        .sizes
        .iter()
        .map(|(w, h)| (format!("{w}x{h}"), format!("Size: {w}x{h}")))
        .collect();
    let schedulers: Vec<(String, String)> = lists
        .schedulers
        .iter()
        .map(|k| match k {
            Some(k) => (
                k.to_string(),
                format!("Sampler: {}", crate::jobs::output::png::a1111_sampler(*k)),
            ),
            None => ("default".into(), "Sampler: default".into()),
        })
        .collect();
    let steps: Vec<(String, String)> = lists
        .steps
        .iter()
        .map(|s| (s.to_string(), format!("Steps: {s}")))
        .collect();
    let guidance: Vec<(String, String)> = lists
        .guidance
        .iter()
        .map(|g| (number_label(*g), format!("CFG: {}", number_label(*g))))
        .collect();
    let settings = [
        ("size", sizes),
        ("scheduler", schedulers),
        ("steps", steps),
        ("guidance", guidance),
    ];
    let (base, optional) = if matrix {
        matrix_parts(text)
    } else {
        (text.to_string(), Vec::new())
    };
    for (name, values) in &settings {
        axes.push((name.to_string(), values.clone()));
    }
    // The last optional part outermost, the first innermost.
    for part in optional.iter().rev() {
        axes.push((
            part.clone(),
            vec![
                ("-".into(), format!("-{part}")),
                ("+".into(), format!("+{part}")),
            ],
        ));
    }
    let lens: Vec<usize> = axes.iter().map(|(_, v)| v.len()).collect();
    let total: usize = lens.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut index = vec![0usize; axes.len()];
    for _ in 0..total {
        let (w, h) = lists.sizes[index[0]];
        let on: Vec<bool> = (0..optional.len())
            .map(|j| index[axes.len() - 1 - j] == 1)
            .collect();
        let text = if matrix {
            std::iter::once(base.as_str())
                .chain(
                    optional
                        .iter()
                        .zip(&on)
                        .filter(|(_, on)| **on)
                        .map(|(p, _)| p.as_str()),
                )
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            base.clone()
        };
        out.push(Variant {
            text,
            width: w,
            height: h,
            scheduler: lists.schedulers[index[1]],
            steps: lists.steps[index[2]],
            guidance: lists.guidance[index[3]],
            axes: axes
                .iter()
                .zip(&index)
                .filter(|((_, values), _)| values.len() > 1)
                .map(|((name, values), i)| AxisValue {
                    axis: name.clone(),
                    value: values[*i].0.clone(),
                    label: values[*i].1.clone(),
                })
                .collect(),
        });
        // Odometer: the innermost axis first.
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < lens[k] {
                break;
            }
            index[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> Lists {
        Lists {
            sizes: vec![(64, 64)],
            schedulers: vec![None],
            steps: vec![20],
            guidance: vec![7.5],
        }
    }

    #[test]
    fn prompt_matrix_in_automatic1111_order() {
        let v = variants("a cat | in the snow | oil painting,", true, &lists());
        let texts: Vec<&str> = v.iter().map(|v| v.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "a cat",
                "a cat, in the snow",
                "a cat, oil painting",
                "a cat, in the snow, oil painting"
            ]
        );
        let labels: Vec<Vec<&str>> = v
            .iter()
            .map(|v| v.axes.iter().map(|a| a.label.as_str()).collect())
            .collect();
        assert_eq!(labels[1], ["-oil painting", "+in the snow"]);
        assert_eq!(text_count("a | b | c", true), 4);
        assert_eq!(text_count("a | b | c", false), 1);
        // Without the matrix a `|` is text.
        let v = variants("a | b", false, &lists());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].text, "a | b");
        assert!(v[0].axes.is_empty());
    }

    #[test]
    fn cartesian_product_innermost_fastest() {
        let l = Lists {
            sizes: vec![(64, 64), (96, 64)],
            schedulers: vec![Some(SchedulerKind::Ddim)],
            steps: vec![10, 20],
            guidance: vec![5.0, 7.5],
        };
        assert_eq!(l.count(), 8);
        let v = variants("x", false, &l);
        assert_eq!(v.len(), 8);
        assert_eq!((v[0].width, v[0].steps, v[0].guidance), (64, 10, 5.0));
        assert_eq!((v[1].width, v[1].steps, v[1].guidance), (64, 10, 7.5));
        assert_eq!((v[2].width, v[2].steps, v[2].guidance), (64, 20, 5.0));
        assert_eq!((v[4].width, v[4].steps, v[4].guidance), (96, 10, 5.0));
        let axes: Vec<&str> = v[7].axes.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(
            axes,
            ["Size: 96x64", "Steps: 20", "CFG: 7.5"],
            "single values are no axis"
        );
        assert!(v.iter().all(|v| v.scheduler == Some(SchedulerKind::Ddim)));
    }

    #[test]
    fn the_longest_text_is_counted_without_expanding() {
        for (text, matrix) in [
            ("a cat | in the snow | oil painting,", true),
            ("a | | b", true),
            ("| a", true),
            ("a | b", false),
            ("ünïcode | ✓", true),
        ] {
            let longest = variants(text, matrix, &lists())
                .iter()
                .map(|v| v.text.chars().count())
                .max()
                .unwrap();
            assert_eq!(longest_text_chars(text, matrix), longest, "{text}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512x768").unwrap(), (512, 768));
        assert_eq!(parse_size(" 64 X 32 ").unwrap(), (64, 32));
        assert!(parse_size("512").is_err());
        assert!(parse_size("axb").is_err());
        assert!(parse_size("-8x8").is_err());
        assert_eq!(number_label(7.0), "7");
        assert!(
            parse_size("big")
                .unwrap_err()
                .to_string()
                .contains("WIDTHxHEIGHT")
        );
        assert_eq!(number_label(7.5), "7.5");
    }
}
