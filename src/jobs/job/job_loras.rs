//! LoRAs a job applies itself: `<lora:name:weight>` tags naming LoRAs that are not fused into the
//! job's model. They are applied when the model's sessions are created (see
//! [`crate::engine::model::lora_variant`]), which needs a model imported through a template (its
//! `sdspool-weights.json`) and the LoRA file in `loras.dirs` (`name.safetensors`, as
//! AUTOMATIC1111's Lora folder), fitting the model. A job has one set: every prompt names the same.

use super::fields::{Checks, Field};
use super::infotext;
use super::{JobError, JobLora};
use crate::engine::checkpoint::weights_map::WeightsMap;
use crate::engine::checkpoint::{header, lora};
use crate::engine::model::lora_variant;
use crate::engine::model::provenance::LoraSource;
use crate::jobs::settings::JobSettings;

pub use infotext::LoraTag as Tag;

/// The tags of `tags` naming no LoRA fused into `model`; a tag naming a fused LoRA at another
/// weight, or one LoRA twice, is refused.
pub fn unfused(tags: &[Tag], model: &str, fused: &[LoraSource]) -> Result<Vec<Tag>, String> {
    let mut own: Vec<Tag> = Vec::new();
    for (name, weight) in tags {
        match fused.iter().find(|l| l.name == *name) {
            Some(l) if (l.weight - weight).abs() < 1e-6 => {}
            Some(_) => {
                return Err(format!(
                    "uses `<lora:{name}:{weight}>`, but model `{model}` has LoRA `{name}` fused at \
                     another weight, which is the one it applies (its LoRAs: {})",
                    infotext::fused_list(fused)
                ));
            }
            None if own.iter().any(|(n, _)| n == name) => {
                return Err(format!("names LoRA `{name}` twice"));
            }
            None => own.push((name.clone(), *weight)),
        }
    }
    Ok(own)
}

fn tag_list(tags: &[Tag]) -> String {
    if tags.is_empty() {
        return "none".into();
    }
    tags.iter()
        .map(|(n, w)| format!("<lora:{n}:{w}>"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The job's LoRAs from the unfused tags of each prompt (where it is written, its tags): all
/// prompts must name the same; each LoRA must be found and fit `model`, and agree with the
/// hashes an infotext gives for it (`hashes`: name, short hash, as `Lora hashes` writes them).
pub fn resolve(
    sets: &[(Field, Vec<Tag>)],
    hashes: &[(String, String)],
    model: &str,
    config: &dyn JobSettings,
    checks: &Checks,
) -> Result<Vec<JobLora>, JobError> {
    let Some((first_at, first)) = sets.first() else {
        return Ok(Vec::new());
    };
    if let Some((at, tags)) = sets.iter().find(|(_, t)| t != first) {
        return Err(checks.error(
            at,
            format!(
                "applies the LoRAs {}, but `{}` applies {}; a job applies one set of LoRAs \
                 to all its prompts (make one job per set)",
                tag_list(tags),
                first_at.describe(),
                tag_list(first)
            ),
        ));
    }
    if first.is_empty() {
        return Ok(Vec::new());
    }
    let err = |message: String| checks.error(first_at, message);
    let model_config = &config.models()[model];
    let provenance = model_config
        .provenance()
        .map_err(|e| err(format!("model `{model}`: {e}")))?;
    let fused = infotext::fused_list(provenance.as_ref().map_or(&[][..], |p| &p.loras[..]));
    let folder = &model_config.path;
    let map = WeightsMap::read(folder)
        .map_err(|e| err(format!("model `{model}`: {e}")))?
        .ok_or_else(|| {
            err(format!(
                "uses {}, not fused into model `{model}` (its LoRAs: {fused}), and the model \
                 cannot take LoRAs per job: its folder has no sdspool-weights.json (import the \
                 checkpoint with `sdspool import --route template`, or fuse the LoRA with `--lora`)",
                tag_list(first)
            ))
        })?;
    let checkpoint = map.header(folder);
    first
        .iter()
        .map(|(name, weight)| {
            let tag = format!("<lora:{name}:{weight}>");
            let dirs = &config.loras().dirs;
            let file = config.loras().find(name).ok_or_else(|| {
                err(format!(
                    "uses `{tag}`, which is not fused into model `{model}` (its LoRAs: {fused}), \
                     and no {name}.safetensors \
                     is in the LoRA folders (`loras.dirs`: {})",
                    if dirs.is_empty() {
                        "none configured".to_string()
                    } else {
                        dirs.iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ))
            })?;
            let fits = header::read(&file)
                .and_then(|h| lora::check(&h, &checkpoint, map.family()).map(|_| ()));
            fits.map_err(|e| err(format!("uses `{tag}`: {e}")))?;
            if let Some((_, want)) = hashes.iter().find(|(n, _)| n == name) {
                let info = Field::named("infotext");
                let own = lora_variant::a1111_hash(&file).map_err(|e| {
                    checks.error(&info, format!("{}: cannot hash: {e}", file.display()))
                })?;
                if want.is_empty() || !own.starts_with(want.as_str()) {
                    return Err(checks.error(
                        &info,
                        format!(
                            "`Lora hashes` gives {name}: {want}, but {} is {}",
                            file.display(),
                            &own[..12]
                        ),
                    ));
                }
            }
            Ok(JobLora {
                name: name.clone(),
                file,
                weight: *weight,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::provenance::Sha256Hex;

    fn fused(name: &str, weight: f64) -> LoraSource {
        LoraSource {
            name: name.into(),
            file: format!("{name}.safetensors"),
            sha256: Sha256Hex::try_from("ab".repeat(32)).unwrap(),
            weight,
            addnet_sha256: None,
        }
    }

    #[test]
    fn tags_of_fused_loras_at_their_weight_are_not_applied_again() {
        let tags = vec![("detail".to_string(), 0.8), ("style".to_string(), 0.5)];
        let own = unfused(&tags, "m", &[fused("detail", 0.8)]).unwrap();
        assert_eq!(own, [("style".to_string(), 0.5)]);
        assert!(unfused(&tags, "m", &[]).unwrap().len() == 2);
    }

    #[test]
    fn a_fused_lora_at_another_weight_or_a_lora_named_twice_is_refused() {
        let e = unfused(&[("detail".into(), 0.5)], "m", &[fused("detail", 0.8)]).unwrap_err();
        assert!(
            e.contains("fused at another weight") && e.contains("detail 0.8"),
            "{e}"
        );
        let twice = [("s".to_string(), 0.5), ("s".to_string(), 0.7)];
        let e = unfused(&twice, "m", &[]).unwrap_err();
        assert!(e.contains("names LoRA `s` twice"), "{e}");
    }
}
