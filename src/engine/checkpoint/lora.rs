//! Whether a LoRA file fits a checkpoint, from both headers: its key layout (kohya /
//! AUTOMATIC1111 `lora_unet_…​.lora_down.weight` / `.lora_up.weight` / `.alpha`, or diffusers /
//! PEFT `unet.….lora_A.weight` / `.lora_B.weight`), its family (SDXL LoRAs have two text
//! encoders: `lora_te1_` / `lora_te2_` / `text_encoder_2.`), and every layer it changes being a
//! layer of the checkpoint with the same width.

use std::collections::BTreeMap;

use super::names::{self, Component};
use super::{CheckpointError, Family, Header};

/// The key layout of a LoRA file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraLayout {
    Kohya,
    Diffusers,
}

/// A LoRA file that fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraFit {
    pub layout: LoraLayout,
    /// Layers it changes.
    pub layers: usize,
}

/// What a LoRA tensor is to its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// kohya `lora_down`, PEFT `lora_A`: `[rank, in]` or `[rank, in, kh, kw]`.
    Down,
    /// kohya `lora_up`, PEFT `lora_B`: `[out, rank]` or `[out, rank, 1, 1]`.
    Up,
    /// kohya's scalar `alpha` (the delta is scaled by alpha / rank).
    Alpha,
}

/// One parsed key: component, module path with `_` for `.`, role.
struct Entry {
    component: Component,
    module: String,
    role: Role,
}

fn parse_kohya(key: &str) -> Option<Entry> {
    const PREFIXES: [(&str, Component); 4] = [
        ("lora_unet_", Component::Unet),
        ("lora_te1_", Component::TextEncoder),
        ("lora_te2_", Component::TextEncoder2),
        ("lora_te_", Component::TextEncoder),
    ];
    let (prefix, component) = PREFIXES.iter().find(|(p, _)| key.starts_with(p))?;
    let rest = &key[prefix.len()..];
    let (module, role) = [
        (".lora_down.weight", Role::Down),
        (".lora_up.weight", Role::Up),
        (".alpha", Role::Alpha),
    ]
    .into_iter()
    .find_map(|(suffix, role)| rest.strip_suffix(suffix).map(|m| (m, role)))?;
    Some(Entry {
        component: *component,
        module: module.to_string(),
        role,
    })
}

fn parse_diffusers(key: &str) -> Option<Entry> {
    let (component, rest) = [
        ("unet.", Component::Unet),
        ("text_encoder_2.", Component::TextEncoder2),
        ("text_encoder.", Component::TextEncoder),
    ]
    .into_iter()
    .find_map(|(p, c)| key.strip_prefix(p).map(|r| (c, r)))?;
    let (module, role) = [
        (".lora_A.weight", Role::Down),
        (".lora_B.weight", Role::Up),
        (".lora.down.weight", Role::Down),
        (".lora.up.weight", Role::Up),
        (".alpha", Role::Alpha),
    ]
    .into_iter()
    .find_map(|(suffix, role)| rest.strip_suffix(suffix).map(|m| (m, role)))?;
    Some(Entry {
        component,
        module: module.replace('.', "_"),
        role,
    })
}

fn mismatch(lora: &Header, family: Family, reason: String, keys: Vec<String>) -> CheckpointError {
    CheckpointError::LoraMismatch {
        path: lora.path.clone(),
        family,
        reason,
        keys,
    }
}

/// (component, layer with `_` for `.`, the key as [`names::layers`] holds it) -> its tensors' roles and keys.
pub(super) type Groups = BTreeMap<(Component, String), Vec<(Role, String)>>;

type Parsed = (LoraLayout, Groups);

/// The layout and the keys grouped per (component, layer); a key of neither layout is refused.
pub(super) fn parse(lora: &Header, family: Family) -> Result<Parsed, CheckpointError> {
    let layout = if lora.tensors.keys().any(|k| k.starts_with("lora_")) {
        LoraLayout::Kohya
    } else {
        LoraLayout::Diffusers
    };
    let mut groups = Groups::new();
    let mut unknown = Vec::new();
    for key in lora.tensors.keys() {
        let entry = match layout {
            LoraLayout::Kohya => parse_kohya(key),
            LoraLayout::Diffusers => parse_diffusers(key),
        };
        match entry {
            Some(e) => groups
                .entry((e.component, e.module))
                .or_default()
                .push((e.role, key.clone())),
            None => unknown.push(key.clone()),
        }
    }
    if !unknown.is_empty() || groups.is_empty() {
        return Err(mismatch(
            lora,
            family,
            format!(
                "{} keys are in no LoRA layout sdspool imports (kohya lora_unet_/lora_te_….lora_down.weight/.lora_up.weight/.alpha, or diffusers unet./text_encoder.….lora_A.weight/.lora_B.weight)",
                if groups.is_empty() {
                    lora.tensors.len()
                } else {
                    unknown.len()
                }
            ),
            if unknown.is_empty() {
                lora.first_keys(6)
            } else {
                unknown.into_iter().take(6).collect()
            },
        ));
    }
    Ok((layout, groups))
}

fn family_problem(lora: &Header, family: Family) -> Option<String> {
    let keys = || lora.tensors.keys();
    let xl = keys().any(|k| {
        k.starts_with("lora_te1_") || k.starts_with("lora_te2_") || k.starts_with("text_encoder_2.")
    });
    let sd = keys().any(|k| k.starts_with("lora_te_") || k.starts_with("text_encoder."));
    if family.is_xl() && sd && !xl {
        Some(
            "a LoRA for SD 1.x/2.x (one text encoder: lora_te_ / text_encoder. keys), not SDXL"
                .into(),
        )
    } else if !family.is_xl() && xl {
        Some("a LoRA for SDXL (two text encoders: lora_te1_/lora_te2_/text_encoder_2. keys), not SD 1.x/2.x".into())
    } else {
        None
    }
}

/// Checks `lora` against the checkpoint `checkpoint` of family `family`.
pub fn check(
    lora: &Header,
    checkpoint: &Header,
    family: Family,
) -> Result<LoraFit, CheckpointError> {
    if let Some(reason) = family_problem(lora, family) {
        return Err(mismatch(lora, family, reason, lora.first_keys(6)));
    }
    let (layout, groups) = parse(lora, family)?;
    let targets = names::layers(checkpoint, family);
    let mut bad = Vec::new();
    let mut cross = None;
    for ((component, module), keys) in &groups {
        let layer = targets.get(component).and_then(|m| m.get(module));
        for (role, key) in keys {
            let Some(shape) = lora.shape(key) else {
                continue;
            };
            let fits = match (role, layer) {
                (_, None) => false,
                (Role::Alpha, Some(_)) => true,
                (Role::Down, Some(l)) => shape.get(1) == Some(&l.out_in[1]),
                (Role::Up, Some(l)) => shape.first() == Some(&l.out_in[0]),
            };
            if *role == Role::Down && module.ends_with("attn2_to_k") {
                cross.get_or_insert(shape.get(1).copied());
            }
            if !fits {
                bad.push(key.clone());
            }
        }
    }
    if !bad.is_empty() {
        let total: usize = groups.values().map(Vec::len).sum();
        let mut reason = format!(
            "{} of its {total} tensors match no layer of this checkpoint",
            bad.len()
        );
        let want = super::family::cross_attention_width(checkpoint);
        if let Some(Some(width)) = cross
            && Some(width) != want
        {
            reason += &format!(
                " (its cross-attention input is {width} wide, the checkpoint's {}: a LoRA for another family)",
                want.map_or("unknown".into(), |w| w.to_string())
            );
        }
        return Err(mismatch(
            lora,
            family,
            reason,
            bad.into_iter().take(6).collect(),
        ));
    }
    Ok(LoraFit {
        layout,
        layers: groups.len(),
    })
}
