//! A job from AUTOMATIC1111's infotext (the `parameters` text its PNGs carry), as its
//! `parse_generation_parameters` reads it: the lines up to `Negative prompt:` are the prompt,
//! the lines after it the negative prompt, and the last line, when it has at least three
//! `Key: value` pairs (a value is a JSON string in double quotes or anything up to the next
//! comma), the settings. Each setting sdspool can honour becomes the job field it means; any
//! other is refused naming it, never dropped. Fields the job file writes itself win over the
//! infotext's.

use super::spec::JobSpec;
use crate::engine::scheduler::SchedulerKind;

/// Settings that are read with another (or change nothing sdspool does).
const ACCEPTED: &[(&str, &str)] = &[("Version", ""), ("Emphasis", "Original")];

/// An infotext split into prompt, negative prompt and settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Infotext {
    pub prompt: String,
    pub negative: String,
    /// `(key, value)` in order, values unquoted.
    pub settings: Vec<(String, String)>,
}

/// Splits `text` as AUTOMATIC1111 does.
pub fn parse(text: &str) -> Infotext {
    let text = text.trim();
    let mut lines: Vec<&str> = text.split('\n').collect();
    let last = lines.pop().unwrap_or_default();
    let settings = settings_of(last);
    if settings.len() < 3 {
        lines.push(last);
    }
    let (mut prompt, mut negative) = (String::new(), String::new());
    let mut in_negative = false;
    for line in lines {
        let mut line = line.trim();
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            in_negative = true;
            line = rest.trim();
        }
        let target = if in_negative {
            &mut negative
        } else {
            &mut prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }
    Infotext {
        prompt,
        negative,
        settings: if settings.len() < 3 {
            Vec::new()
        } else {
            settings
        },
    }
}

/// `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)` over `line`, every match.
fn settings_of(line: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        match setting_at(&chars, pos) {
            Some((key, value, end)) => {
                out.push((key, value));
                pos = end.max(pos + 1);
            }
            None => pos += 1,
        }
    }
    out
}

/// One `key: value` starting at `pos` (leading whitespace allowed): key, value, end.
fn setting_at(c: &[char], mut pos: usize) -> Option<(String, String, usize)> {
    while pos < c.len() && c[pos].is_whitespace() {
        pos += 1;
    }
    let is_word = |ch: char| ch.is_alphanumeric() || ch == '_';
    if !c.get(pos).copied().is_some_and(is_word) {
        return None;
    }
    let start = pos;
    pos += 1;
    while pos < c.len() && (is_word(c[pos]) || matches!(c[pos], ' ' | '-' | '/')) {
        pos += 1;
    }
    // Key characters exclude ':', so the key ends where they do, at a ':' (2 characters or more).
    let key_end = pos;
    if c.get(key_end) != Some(&':') || key_end < start + 2 {
        return None;
    }
    let key: String = c[start..key_end].iter().collect();
    let mut p = key_end + 1;
    while p < c.len() && c[p].is_whitespace() {
        p += 1;
    }
    if c.get(p) == Some(&'"')
        && let Some((value, end)) = quoted(c, p)
        && (end == c.len() || c[end] == ',')
    {
        return Some((key, value, end + 1));
    }
    let end = (p..c.len()).find(|&i| c[i] == ',').unwrap_or(c.len());
    Some((key, c[p..end].iter().collect(), end + 1))
}

/// A JSON string starting at `c[pos] == '"'`: its value and the position after it.
fn quoted(c: &[char], pos: usize) -> Option<(String, usize)> {
    let mut p = pos + 1;
    while p < c.len() {
        match c[p] {
            '\\' => p += 2,
            '"' => {
                let raw: String = c[pos..=p].iter().collect();
                let value = serde_json::from_str::<String>(&raw).unwrap_or(raw);
                return Some((value, p + 1));
            }
            _ => p += 1,
        }
    }
    None
}

/// Why an infotext cannot make a job: the setting (or `Prompt`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub setting: String,
    pub message: String,
}

/// The job fields `info` gives, as YAML text of a job file (model names are checked by the
/// job's resolution like any other).
pub fn job_yaml(info: &Infotext, model_names: &[&str]) -> Result<String, Refused> {
    let refuse = |setting: &str, message: String| Refused {
        setting: setting.to_string(),
        message,
    };
    if info.prompt.trim().is_empty() {
        return Err(refuse("Prompt", "is empty".into()));
    }
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let mut yaml = format!(
        "prompts: [{}]\nnegative: {}\n",
        q(&info.prompt),
        q(&info.negative)
    );
    let get = |k: &str| {
        info.settings
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let number = |k: &str, v: &str| -> Result<String, Refused> {
        v.trim()
            .parse::<f64>()
            .map(|_| v.trim().to_string())
            .map_err(|_| refuse(k, format!("{v:?} is not a number")))
    };
    for (key, value) in &info.settings {
        let v = value.trim();
        let line = match key.as_str() {
            "Steps" => format!("steps: {}", number(key, v)?),
            "CFG scale" => format!("guidance: {}", number(key, v)?),
            "Seed" => format!("seed: {}", number(key, v)?),
            "Clip skip" => format!("clip_skip: {}", number(key, v)?),
            "ENSD" => format!("eta_noise_seed_delta: {}", number(key, v)?),
            "Variation seed" => format!("subseed: {}", number(key, v)?),
            "Variation seed strength" => format!("subseed_strength: {}", number(key, v)?),
            "Size" | "Seed resize from" => {
                let (w, h) = v
                    .split_once('x')
                    .filter(|(w, h)| w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok())
                    .ok_or_else(|| refuse(key, format!("{v:?} is not WIDTHxHEIGHT")))?;
                if key == "Size" {
                    format!("width: {w}\nheight: {h}")
                } else {
                    format!("seed_resize_from_w: {w}\nseed_resize_from_h: {h}")
                }
            }
            "Sampler" => {
                // The scheduler registry's AUTOMATIC1111 names; a schedule type other than
                // Automatic is part of the name there (`DPM++ 2M Karras`).
                let name = match get("Schedule type").map(str::trim) {
                    None | Some("Automatic") => v.to_string(),
                    Some(t) if v.ends_with(t) => v.to_string(),
                    Some(t) => format!("{v} {t}"),
                };
                let kind = SchedulerKind::from_a1111_name(&name)
                    .ok_or_else(|| refuse(key, format!("{name:?} is not a sampler sdspool has")))?;
                format!("scheduler: {}", kind.name())
            }
            "Schedule type" => continue, // read with Sampler
            "RNG" => match v {
                "GPU" | "NV" => "rng: philox".to_string(),
                "CPU" => "rng: torch_cpu".to_string(),
                _ => {
                    return Err(refuse(
                        key,
                        format!("{v:?} is not a random source sdspool has"),
                    ));
                }
            },
            "Model" => {
                if !model_names.contains(&v) {
                    return Err(refuse(
                        key,
                        format!(
                            "{v:?} is not a configured model (configured: {})",
                            model_names.join(", ")
                        ),
                    ));
                }
                format!("model: {}", q(v))
            }
            // Matched through `Model`; the hash alone cannot name an ONNX folder.
            "Model hash" if get("Model").is_some() => continue,
            "Model hash" => {
                return Err(refuse(
                    key,
                    format!(
                        "{v:?} alone does not name a configured model; add `Model: NAME` \
                         (configured: {})",
                        model_names.join(", ")
                    ),
                ));
            }
            other => match ACCEPTED.iter().find(|(k, _)| *k == other) {
                Some((_, "")) => continue,
                Some((_, only)) if *only == v => continue,
                _ => {
                    return Err(refuse(
                        other,
                        format!("{v:?} cannot be honoured by sdspool"),
                    ));
                }
            },
        };
        yaml.push_str(&line);
        yaml.push('\n');
    }
    Ok(yaml)
}

/// `spec` with every field it leaves unset taken from `from` (an infotext's job).
pub fn fill(spec: &mut JobSpec, from: JobSpec) {
    if spec.prompts.is_empty() && spec.prompt_file.is_none() && spec.prompt_lines.is_none() {
        spec.prompts = from.prompts;
    }
    macro_rules! take {
        ($($f:ident),*) => { $( if spec.$f.is_none() { spec.$f = from.$f; } )* };
    }
    take!(
        model,
        negative,
        steps,
        guidance,
        scheduler,
        seed,
        width,
        height,
        rng,
        clip_skip,
        eta_noise_seed_delta,
        subseed,
        subseed_strength,
        seed_resize_from_w,
        seed_resize_from_h
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "girl with an artist's beret, (determined:1.2), blue eyes\nsecond line\nNegative prompt: ugly, [blurry]\nsecond negative\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 965400086, Size: 512x768, Model hash: 45dee52b, Model: tiny-sd, Clip skip: 2, ENSD: 31337, Lora hashes: \"a: 1, b: 2\", Version: v1.10.0";

    #[test]
    fn splits_prompt_negative_and_settings_as_automatic1111() {
        let info = parse(TEXT);
        assert_eq!(
            info.prompt,
            "girl with an artist's beret, (determined:1.2), blue eyes\nsecond line"
        );
        assert_eq!(info.negative, "ugly, [blurry]\nsecond negative");
        let keys: Vec<&str> = info.settings.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Steps",
                "Sampler",
                "Schedule type",
                "CFG scale",
                "Seed",
                "Size",
                "Model hash",
                "Model",
                "Clip skip",
                "ENSD",
                "Lora hashes",
                "Version"
            ]
        );
        assert_eq!(info.settings[10].1, "a: 1, b: 2");
        // Fewer than three settings: the last line is prompt.
        let info = parse("a cat\nSteps: 20, Seed: 1");
        assert_eq!(info.prompt, "a cat\nSteps: 20, Seed: 1");
        assert!(info.settings.is_empty());
    }

    #[test]
    fn settings_become_job_fields_and_others_are_refused_by_name() {
        let info = parse(TEXT);
        let e = job_yaml(&info, &["tiny-sd"]).unwrap_err();
        assert_eq!(e.setting, "Lora hashes");
        let text = TEXT.replace(", Lora hashes: \"a: 1, b: 2\"", "");
        let yaml = job_yaml(&parse(&text), &["tiny-sd"]).unwrap();
        for want in [
            "steps: 20",
            "scheduler: dpmpp_2m_karras",
            "guidance: 7",
            "seed: 965400086",
            "width: 512\nheight: 768",
            "model: \"tiny-sd\"",
            "clip_skip: 2",
            "eta_noise_seed_delta: 31337",
        ] {
            assert!(yaml.contains(want), "{want} in {yaml}");
        }
        let e = job_yaml(&parse(&text), &["other"]).unwrap_err();
        assert_eq!(e.setting, "Model");
        let e = job_yaml(&parse(&text.replace("DPM++ 2M", "Heun")), &["tiny-sd"]).unwrap_err();
        assert_eq!(e.setting, "Sampler");
        let e = job_yaml(&parse(&format!("{text}, Hires upscale: 2")), &["tiny-sd"]).unwrap_err();
        assert_eq!(e.setting, "Hires upscale");
    }
}
