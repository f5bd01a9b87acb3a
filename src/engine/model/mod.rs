//! Diffusion model folders: their files ([`layout`]), the model family they hold and the
//! graph contract of each family ([`family`]), the parts and how to feed them ([`signature`]),
//! and a loaded model whose sessions are reused across jobs.

mod channels;
pub mod checkpoint_hash;
pub mod config;
pub mod family;
pub mod layout;
pub mod lora_variant;
pub mod profile;
pub mod provenance;
pub mod signature;

use std::path::Path;

use crate::runtime::{LoadedSession, Runtime, RuntimeError};
pub use family::Family;
pub use layout::{LayoutError, ModelFolder, SideError, TokenizerFiles};
pub use lora_variant::LoraVariant;
pub use signature::{Component, Elem, Feeding, Signature, SignatureError};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model `{model}`: {source}")]
    Layout {
        model: String,
        #[source]
        source: LayoutError,
    },
    #[error("model `{model}`: {source}")]
    Runtime {
        model: String,
        #[source]
        source: RuntimeError,
    },
    #[error("model `{model}`: {source}")]
    Signature {
        model: String,
        #[source]
        source: SignatureError,
    },
}

/// One loaded component: its session, the checked signature and how to feed it.
#[derive(Debug)]
pub struct Part {
    pub component: Component,
    pub loaded: LoadedSession,
    pub signature: Signature,
    pub feeding: Feeding,
}

impl Part {
    pub fn file(&self) -> &Path {
        &self.loaded.file
    }
}

/// A diffusion model with its sessions created on one device.
#[derive(Debug)]
pub struct SdModel {
    pub name: String,
    pub folder: ModelFolder,
    /// The family's first text encoder (the SDXL refiner's only one is `text_encoder_2`: see
    /// [`Part::component`]).
    pub text_encoder: Part,
    /// SDXL base's second text encoder.
    pub text_encoder_2: Option<Part>,
    pub unet: Part,
    pub vae_decoder: Part,
    pub vae_encoder: Option<Part>,
    /// Channels of the latents the UNet denoises and the VAE decodes (4 for SD's VAE).
    pub latent_channels: usize,
    /// LoRAs applied when the sessions were created (not fused into the folder), in order.
    pub loras: Vec<provenance::LoraSource>,
}

impl SdModel {
    /// Opens the folder, creates every session on `device_id`, and checks the signatures
    /// against the folder's family, then the parts together: the family's own rule (SD: the
    /// text encoder's hidden size is what the UNet's cross-attention takes) and one latent
    /// channel count throughout.
    pub fn load(
        runtime: &Runtime,
        name: &str,
        root: &Path,
        device_id: i32,
    ) -> Result<SdModel, ModelError> {
        SdModel::load_with(runtime, name, root, device_id, None)
    }

    /// [`SdModel::load`] with `loras` applied to the text encoders and the UNet as their
    /// sessions are created.
    pub fn load_with(
        runtime: &Runtime,
        name: &str,
        root: &Path,
        device_id: i32,
        loras: Option<&LoraVariant>,
    ) -> Result<SdModel, ModelError> {
        let folder = ModelFolder::open(root).map_err(|source| ModelError::Layout {
            model: name.to_string(),
            source,
        })?;
        let family = folder.family;
        let part = |c: Component, file: &Path| {
            let target = PartTarget {
                model: name,
                family,
                component: c,
                file,
                device_id,
            };
            load_part_with(runtime, &target, loras)
        };
        let first_encoder = family.required_parts()[0];
        let text_encoder = part(first_encoder, &folder.text_encoder)?;
        let text_encoder_2 = match &folder.text_encoder_2 {
            Some(f) => Some(part(Component::TextEncoder2, f)?),
            None => None,
        };
        let unet = part(Component::Unet, &folder.unet)?;
        let vae_decoder = part(Component::VaeDecoder, &folder.vae_decoder)?;
        let vae_encoder = match &folder.vae_encoder {
            Some(f) => Some(part(Component::VaeEncoder, f)?),
            None => None,
        };
        let signature_err = |source| ModelError::Signature {
            model: name.to_string(),
            source,
        };
        let latent_channels = channels::latent_channels(
            &folder,
            family.graph(),
            &unet,
            &vae_decoder,
            vae_encoder.as_ref(),
        )
        .map_err(signature_err)?;
        let model = SdModel {
            name: name.to_string(),
            folder,
            text_encoder,
            text_encoder_2,
            unet,
            vae_decoder,
            vae_encoder,
            latent_channels,
            loras: loras.map(|l| l.sources.clone()).unwrap_or_default(),
        };
        family.check_model(&model).map_err(signature_err)?;
        Ok(model)
    }

    /// The model family the folder holds.
    pub fn family(&self) -> Family {
        self.folder.family
    }

    pub fn parts(&self) -> impl Iterator<Item = &Part> {
        std::iter::once(&self.text_encoder)
            .chain(self.text_encoder_2.as_ref())
            .chain([&self.unet, &self.vae_decoder])
            .chain(self.vae_encoder.as_ref())
    }

    /// Replaces the VAE decoder by `folder`'s `vae_decoder/model.onnx` (checked against the
    /// family), whose config's `force_upcast` then applies.
    pub fn replace_vae_decoder(
        &mut self,
        runtime: &Runtime,
        folder: &Path,
        device_id: i32,
    ) -> Result<(), ModelError> {
        let layout_err = |source| ModelError::Layout {
            model: self.name.clone(),
            source,
        };
        let file = folder.join(Component::VaeDecoder.dir()).join("model.onnx");
        if !file.is_file() {
            return Err(layout_err(LayoutError::Missing {
                path: file,
                what: "the replacement VAE decoder (`vae:` of the model's configuration)".into(),
            }));
        }
        let force_upcast = layout::vae_force_upcast(folder).map_err(layout_err)?;
        let part = load_part(
            runtime,
            &self.name,
            self.family(),
            Component::VaeDecoder,
            &file,
            device_id,
        )?;
        self.vae_decoder = part;
        self.folder.vae_force_upcast = force_upcast;
        Ok(())
    }

    /// Whether the VAE decoder cannot decode this model: an SDXL-class VAE that overflows in
    /// float16 (`force_upcast`, which diffusers honours by decoding in float32) loaded as a
    /// float16 graph.
    pub fn vae_needs_upcast(&self) -> bool {
        matches!(self.family(), Family::Sdxl | Family::SdxlRefiner)
            && self.folder.vae_force_upcast
            && self.vae_decoder.feeding.float == Elem::F16
    }

    /// float32 or float16, as the UNet takes it.
    pub fn precision(&self) -> Elem {
        self.unet.feeding.float
    }
}

/// Creates one component's session and checks it against `family`'s graph.
pub fn load_part(
    runtime: &Runtime,
    model: &str,
    family: Family,
    component: Component,
    file: &Path,
    device_id: i32,
) -> Result<Part, ModelError> {
    let target = PartTarget {
        model,
        family,
        component,
        file,
        device_id,
    };
    load_part_with(runtime, &target, None)
}

/// The session [`load_part_with`] creates.
pub struct PartTarget<'a> {
    pub model: &'a str,
    pub family: Family,
    pub component: Component,
    pub file: &'a Path,
    pub device_id: i32,
}

/// [`load_part`] with the initializers `loras` replaces in this part (its TensorRT engines
/// cached apart from the model's own).
pub fn load_part_with(
    runtime: &Runtime,
    target: &PartTarget,
    loras: Option<&LoraVariant>,
) -> Result<Part, ModelError> {
    let PartTarget {
        model,
        family,
        component,
        file,
        device_id,
    } = *target;
    let mut plan = profile::session_plan(runtime.execution(), model, component, file);
    let initializers = loras.map_or(&[][..], |l| l.part(component.dir()));
    if let (Some(l), Some(trt)) = (loras, plan.tensorrt.as_mut())
        && !initializers.is_empty()
    {
        trt.name = format!("{model}+lora-{}/{}", l.id, component.dir());
    }
    let loaded = runtime
        .session_overriding(file, device_id, &plan, initializers)
        .map_err(|source| ModelError::Runtime {
            model: model.to_string(),
            source,
        })?;
    if let Some(l) = loras.filter(|_| !initializers.is_empty()) {
        tracing::info!(model, component = %component, loras = %l.tags(), weights = initializers.len(), "LoRAs applied to the session");
    }
    let signature = Signature::of(&loaded.session);
    let feeding = family
        .check(component, file, &signature)
        .map_err(|source| ModelError::Signature {
            model: model.to_string(),
            source,
        })?;
    tracing::info!(model, component = %component, file = %file.display(), providers = %loaded.providers, "session ready");
    Ok(Part {
        component,
        loaded,
        signature,
        feeding,
    })
}
