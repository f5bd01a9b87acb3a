//! A job from AUTOMATIC1111's infotext (the `parameters` text its PNGs carry), as its
//! `parse_generation_parameters` reads it: the lines up to `Negative prompt:` are the prompt,
//! the lines after it the negative prompt, and the last line, when it has at least three
//! `Key: value` pairs (a value is a JSON string in double quotes or anything up to the next
//! comma), the settings. Each setting sdspool can honour becomes the job field it means; any
//! other is refused naming it, never dropped. Fields the job file writes itself win over the
//! infotext's.

use super::spec::JobSpec;
use crate::engine::model::checkpoint_hash::CheckpointHash;
use crate::engine::model::provenance::LoraSource;
use crate::engine::scheduler::a1111;

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

/// The configured models an infotext's `Model`, `Model hash` and `Refiner` are matched
/// against.
pub trait ModelCatalog {
    /// The configured names.
    fn names(&self) -> Vec<&str>;
    /// The checkpoint hash of the model `name`, when known; asked only when a name does not
    /// match, since a configured checkpoint file is hashed the first time (see
    /// [`crate::engine::model::config::ModelConfig::checkpoint_hash`]).
    fn hash(&self, name: &str) -> Result<Option<CheckpointHash>, String>;
}

/// Names only, no hashes.
impl ModelCatalog for [&str] {
    fn names(&self) -> Vec<&str> {
        self.to_vec()
    }

    fn hash(&self, _: &str) -> Result<Option<CheckpointHash>, String> {
        Ok(None)
    }
}

impl<const N: usize> ModelCatalog for [&str; N] {
    fn names(&self) -> Vec<&str> {
        self.to_vec()
    }

    fn hash(&self, _: &str) -> Result<Option<CheckpointHash>, String> {
        Ok(None)
    }
}

/// The configured model an infotext names: by `name` first (`Model: tiny-sd`), else by
/// `hash` (`Model hash:` in its short 10-digit form, the old 8-digit one, or the full SHA-256).
/// `field` is the setting refused when neither finds one: the name's when it was given.
fn match_model<'m, M: ModelCatalog + ?Sized>(
    models: &'m M,
    name: Option<&str>,
    hash: Option<&str>,
    field: (&str, &str),
) -> Result<Option<&'m str>, Refused> {
    let names = models.names();
    if let Some(n) = name.and_then(|n| names.iter().find(|m| **m == n.trim())) {
        return Ok(Some(n));
    }
    if name.is_none() && hash.is_none() {
        return Ok(None);
    }
    let mut known = Vec::new();
    for n in &names {
        let h = models.hash(n).map_err(|message| Refused {
            setting: field.1.to_string(),
            message,
        })?;
        if let (Some(want), Some(h)) = (hash, &h)
            && h.matches(want)
        {
            return Ok(Some(n));
        }
        known.push(match h {
            Some(h) => format!("{n} [{}]", h.display()),
            None => format!("{n} (hash unknown)"),
        });
    }
    let (setting, value) = match name {
        Some(n) => (field.0, n),
        None => (field.1, hash.unwrap_or_default()),
    };
    let also = match (name, hash) {
        (Some(_), Some(h)) => format!(" and {:?} is not the hash of one", h.trim()),
        _ => String::new(),
    };
    Err(Refused {
        setting: setting.to_string(),
        message: format!(
            "{:?} is not a configured model{also} (configured: {})",
            value.trim(),
            known.join(", ")
        ),
    })
}

/// The LoRAs an infotext used: its prompt's `<lora:name:weight>` tags and its `Lora hashes`.
/// They are not job settings: they must be the LoRAs fused into the job's model
/// ([`LoraUse::check`]), or LoRAs the job applies itself (`super::job_loras`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraUse {
    /// `(name, weight)` of each tag, in order.
    pub tags: Vec<(String, f64)>,
    /// `(name, short hash)` of `Lora hashes`.
    pub hashes: Vec<(String, String)>,
}

/// Takes AUTOMATIC1111's extra-network tags (`<lora:name:weight>`) out of `info`'s prompt, as
/// it does before encoding, and its `Lora hashes` out of the settings. Other extra networks
/// (hypernetworks, LyCORIS, ...) and LoRA options sdspool cannot honour are refused.
pub fn take_loras(info: &mut Infotext) -> Result<LoraUse, Refused> {
    let mut used = LoraUse::default();
    if let Some((prompt, tags)) = take_lora_tags(&info.prompt).map_err(|message| Refused {
        setting: "Prompt".into(),
        message,
    })? {
        info.prompt = prompt;
        used.tags = tags;
    }
    if let Some(i) = info.settings.iter().position(|(k, _)| k == "Lora hashes") {
        let (_, value) = info.settings.remove(i);
        for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, hash) = pair.split_once(':').ok_or_else(|| Refused {
                setting: "Lora hashes".into(),
                message: format!("{value:?} is not `name: hash, ...`"),
            })?;
            used.hashes
                .push((name.trim().to_string(), hash.trim().to_ascii_lowercase()));
        }
    }
    Ok(used)
}

/// A `<lora:name:weight>` tag: the LoRA's name and weight.
pub type LoraTag = (String, f64);

/// `text` without its `<lora:name:weight>` tags (trimmed), and the tags' `(name, weight)` in
/// order; `None` when it has none. AUTOMATIC1111's rule for extra networks in prompts: other
/// networks, and LoRA options sdspool cannot honour, are refused with the reason.
pub fn take_lora_tags(text: &str) -> Result<Option<(String, Vec<LoraTag>)>, String> {
    let mut tags = Vec::new();
    let mut prompt = String::new();
    let mut rest = text;
    while let Some(((kind, args), start, end)) = extra_network_at(rest) {
        prompt.push_str(&rest[..start]);
        if kind != "lora" {
            return Err(format!(
                "uses the extra network `<{kind}:{args}>`; sdspool applies only LoRAs (fused into the model, or per job from `loras.dirs`)"
            ));
        }
        let parts: Vec<&str> = args.split(':').collect();
        let weights: Result<Vec<f64>, _> = parts[1..].iter().map(|w| w.trim().parse()).collect();
        let weights = weights.map_err(|_| {
            format!(
                "`<lora:{args}>` has an option sdspool cannot honour (only `<lora:name:weight>`)"
            )
        })?;
        let weight = weights.first().copied().unwrap_or(1.0);
        if weights.iter().any(|w| *w != weight) {
            return Err(format!(
                "`<lora:{args}>` weights the text encoder and the UNet differently; sdspool applies a LoRA at one weight"
            ));
        }
        tags.push((parts[0].trim().to_string(), weight));
        rest = &rest[end..];
    }
    if tags.is_empty() {
        return Ok(None);
    }
    prompt.push_str(rest);
    Ok(Some((prompt.trim().to_string(), tags)))
}

/// The first `<word:args>` in `text` (AUTOMATIC1111's `<(\w+):([^>]+)>`): (word, args), where
/// it starts and where it ends.
fn extra_network_at(text: &str) -> Option<((&str, &str), usize, usize)> {
    let mut from = 0;
    while let Some(open) = text[from..].find('<').map(|i| i + from) {
        let after = &text[open + 1..];
        let word_len = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if word_len > 0
            && after[word_len..].starts_with(':')
            && let Some(close) = after[word_len + 1..].find(['>', '<'])
            && after[word_len + 1 + close..].starts_with('>')
            && close > 0
        {
            let args = &after[word_len + 1..word_len + 1 + close];
            let end = open + 1 + word_len + 1 + close + 1;
            return Some(((&after[..word_len], args), open, end));
        }
        from = open + 1;
    }
    None
}

/// `fused` as `name weight, ...` (or `none`), for messages.
pub fn fused_list(fused: &[LoraSource]) -> String {
    let l: Vec<String> = fused
        .iter()
        .map(|l| format!("{} {}", l.name, l.weight))
        .collect();
    if l.is_empty() {
        "none".to_string()
    } else {
        l.join(", ")
    }
}

/// Whether every `<lora:name:weight>` tag names a LoRA fused into `model` at that weight; the
/// reason when one does not.
pub fn tags_fused(tags: &[LoraTag], model: &str, fused: &[LoraSource]) -> Result<(), String> {
    for (name, weight) in tags {
        match fused.iter().find(|l| l.name == *name) {
            Some(l) if (l.weight - weight).abs() < 1e-6 => {}
            _ => {
                return Err(format!(
                    "uses `<lora:{name}:{weight}>`, which is not fused into model `{model}` \
                     (its LoRAs: {}; `sdspool import --lora` makes a model with it)",
                    fused_list(fused)
                ));
            }
        }
    }
    Ok(())
}

impl LoraUse {
    /// Checks the LoRAs against those fused into the job's model (`fused`, from its provenance
    /// file): the same names at the same weights, and hashes that agree where both are known.
    pub fn check(&self, model: &str, fused: &[LoraSource]) -> Result<(), Refused> {
        let refuse = |setting: &str, message: String| Refused {
            setting: setting.into(),
            message,
        };
        tags_fused(&self.tags, model, fused).map_err(|m| refuse("Prompt", m))?;
        if let Some(l) = fused
            .iter()
            .find(|l| !self.tags.iter().any(|(n, _)| *n == l.name))
        {
            return Err(refuse(
                "Prompt",
                format!(
                    "does not use LoRA `{}`, which model `{model}` has fused at {} (its LoRAs: {})",
                    l.name,
                    l.weight,
                    fused_list(fused)
                ),
            ));
        }
        for (name, hash) in &self.hashes {
            let known = fused.iter().find(|l| l.name == *name);
            if let Some(own) = known.and_then(LoraSource::a1111_short_hash)
                && !own.starts_with(hash.as_str())
            {
                return Err(refuse(
                    "Lora hashes",
                    format!(
                        "gives {name}: {hash}, but the LoRA `{name}` fused into model `{model}` is {own}"
                    ),
                ));
            }
            if known.is_none() {
                return Err(refuse(
                    "Lora hashes",
                    format!("names LoRA `{name}`, which is not fused into model `{model}`"),
                ));
            }
        }
        Ok(())
    }
}

/// Why an infotext cannot make a job: the setting (or `Prompt`) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub setting: String,
    pub message: String,
}

/// The job fields `info` gives, as YAML text of a job file: its model and refiner matched by
/// name or checkpoint hash against `models`; without `RNG`, AUTOMATIC1111's default, GPU
/// (`rng: philox`). Its LoRAs are taken out first ([`take_loras`]); `Lora hashes` left in is
/// refused.
pub fn job_yaml<M: ModelCatalog + ?Sized>(info: &Infotext, models: &M) -> Result<String, Refused> {
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
    if let Some(model) = match_model(
        models,
        get("Model"),
        get("Model hash"),
        ("Model", "Model hash"),
    )? {
        yaml.push_str(&format!("model: {}\n", q(model)));
    }
    if get("RNG").is_none() && !info.settings.is_empty() {
        yaml.push_str("rng: philox\n");
    }
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
                let kind = a1111::from_sampler_and_schedule(v, get("Schedule type"))
                    .map_err(|e| refuse(e.field, e.message))?;
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
            "Model" | "Model hash" => continue, // matched above
            "Refiner" => {
                // `name [short hash]`, as AUTOMATIC1111 writes a checkpoint's short title.
                let (name, hash) = match v.strip_suffix(']').and_then(|x| x.rsplit_once(" [")) {
                    Some((n, h)) => (n, Some(h)),
                    None => (v, None),
                };
                match match_model(models, Some(name), hash, ("Refiner", "Refiner"))? {
                    Some(m) => format!("refiner: {}", q(m)),
                    None => continue,
                }
            }
            "Refiner switch at" => format!("refiner_start: {}", number(key, v)?),
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
        seed_resize_from_h,
        refiner,
        refiner_start
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

    #[test]
    fn refiner_and_a_missing_rng_read_as_automatic1111_means_them() {
        let text = "a cat\nSteps: 20, Sampler: Euler, Schedule type: Automatic, CFG scale: 5, \
                    Seed: 1, Size: 1024x768, Model: base, Refiner: refiner [0123456789], \
                    Refiner switch at: 0.75";
        let yaml = job_yaml(&parse(text), &["base", "refiner"]).unwrap();
        for want in [
            "model: \"base\"",
            "refiner: \"refiner\"",
            "refiner_start: 0.75",
            "rng: philox",
            "scheduler: euler",
        ] {
            assert!(yaml.contains(want), "{want} in {yaml}");
        }
        let e = job_yaml(&parse(text), &["base"]).unwrap_err();
        assert_eq!(e.setting, "Refiner");
        let yaml = job_yaml(&parse(&format!("{text}, RNG: CPU")), &["base", "refiner"]).unwrap();
        assert!(
            yaml.contains("rng: torch_cpu") && !yaml.contains("philox"),
            "{yaml}"
        );
    }

    #[test]
    fn lora_tags_leave_the_prompt_as_automatic1111_takes_them_out() {
        let mut info = parse(
            "<lora:a_b:0.5> a cat, <lora:c:1:1>\nSteps: 1, Seed: 1, Lora hashes: \"a_b: ABC, c: def\"",
        );
        let used = take_loras(&mut info).unwrap();
        assert_eq!(info.prompt, "a cat,");
        assert_eq!(
            used.tags,
            [("a_b".to_string(), 0.5), ("c".to_string(), 1.0)]
        );
        assert_eq!(
            used.hashes,
            [
                ("a_b".to_string(), "abc".to_string()),
                ("c".to_string(), "def".to_string())
            ]
        );
        assert!(info.settings.iter().all(|(k, _)| k != "Lora hashes"));
        // Not a tag: no colon, or a bracket inside.
        let mut info = parse("a <cat> and <x:<y>>\nSteps: 1, Seed: 1, Size: 8x8");
        assert_eq!(take_loras(&mut info).unwrap(), LoraUse::default());
        let mut info = parse("<lora:a:0.5:0.7> a cat\nSteps: 1, Seed: 1, Size: 8x8");
        assert_eq!(take_loras(&mut info).unwrap_err().setting, "Prompt");
        let mut info = parse("<lora:a:te=0.5> a cat\nSteps: 1, Seed: 1, Size: 8x8");
        assert_eq!(take_loras(&mut info).unwrap_err().setting, "Prompt");
    }
}
