//! Stable Diffusion model folders: their files ([`layout`]), the signature every session must
//! have ([`signature`]), and a loaded model whose sessions are reused across jobs.

pub mod layout;
pub mod signature;

use std::path::Path;

use crate::runtime::{LoadedSession, Runtime, RuntimeError};
pub use layout::{LayoutError, ModelFolder, TokenizerFiles};
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

/// A Stable Diffusion model with its sessions created on one device.
#[derive(Debug)]
pub struct SdModel {
    pub name: String,
    pub folder: ModelFolder,
    pub text_encoder: Part,
    pub unet: Part,
    pub vae_decoder: Part,
    pub vae_encoder: Option<Part>,
}

impl SdModel {
    /// Opens the folder, creates every session on `device_id`, and checks the signatures,
    /// including that the text encoder's hidden size is what the UNet's cross-attention takes.
    pub fn load(
        runtime: &Runtime,
        name: &str,
        root: &Path,
        device_id: i32,
    ) -> Result<SdModel, ModelError> {
        let folder = ModelFolder::open(root).map_err(|source| ModelError::Layout {
            model: name.to_string(),
            source,
        })?;
        let part = |c: Component, file: &Path| load_part(runtime, name, c, file, device_id);
        let text_encoder = part(Component::TextEncoder, &folder.text_encoder)?;
        let unet = part(Component::Unet, &folder.unet)?;
        let vae_decoder = part(Component::VaeDecoder, &folder.vae_decoder)?;
        let vae_encoder = match &folder.vae_encoder {
            Some(f) => Some(part(Component::VaeEncoder, f)?),
            None => None,
        };
        check_hidden_size(name, &text_encoder, &unet)?;
        Ok(SdModel {
            name: name.to_string(),
            folder,
            text_encoder,
            unet,
            vae_decoder,
            vae_encoder,
        })
    }

    pub fn parts(&self) -> impl Iterator<Item = &Part> {
        [&self.text_encoder, &self.unet, &self.vae_decoder]
            .into_iter()
            .chain(self.vae_encoder.as_ref())
    }

    /// float32 or float16, as the UNet takes it.
    pub fn precision(&self) -> Elem {
        self.unet.feeding.float
    }
}

/// Creates and checks one component's session.
pub fn load_part(
    runtime: &Runtime,
    model: &str,
    component: Component,
    file: &Path,
    device_id: i32,
) -> Result<Part, ModelError> {
    let loaded = runtime
        .session(file, device_id)
        .map_err(|source| ModelError::Runtime {
            model: model.to_string(),
            source,
        })?;
    let signature = Signature::of(&loaded.session);
    let feeding =
        signature::check(component, file, &signature).map_err(|source| ModelError::Signature {
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

fn check_hidden_size(model: &str, text_encoder: &Part, unet: &Part) -> Result<(), ModelError> {
    let hidden = text_encoder
        .signature
        .output("last_hidden_state")
        .and_then(|p| p.dims.last().copied());
    let cross = unet
        .signature
        .input("encoder_hidden_states")
        .and_then(|p| p.dims.last().copied());
    if let (Some(h), Some(c)) = (hidden, cross)
        && h >= 0
        && c >= 0
        && h != c
    {
        return Err(ModelError::Signature {
            model: model.to_string(),
            source: SignatureError {
                file: unet.file().to_path_buf(),
                field: "input 'encoder_hidden_states'".into(),
                problem: format!(
                    "takes hidden size {c}, but the text encoder {} produces {h}: the two do not belong to the same pipeline",
                    text_encoder.file().display()
                ),
            },
        });
    }
    Ok(())
}
